// Loads a folder built with `--format transformers.js` from /models/NAME/ and
// streams greedy text. Query parameters:
//   model=NAME          the folder (serve.py serves each OUT_DIR as /models/<its name>/)
//   device=webgpu|wasm  default webgpu when the browser has it, else wasm
//   dtype=q4|q4f16|...  default: the one in the folder's config.json
//   prompt=TEXT or ids=1,2,3, max_new_tokens=N, min_new_tokens=N
//   autorun=1           generate at once; report=1 also POSTs the result to /result
//   verbose=1           ONNX Runtime's verbose log (which EP runs each node) goes into the result
import {
    AutoModelForCausalLM, AutoTokenizer, Tensor, TextStreamer, env,
} from '/node_modules/@huggingface/transformers/dist/transformers.js';

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const logs = [];
for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
    const original = console[level].bind(console);
    console[level] = (...args) => {
        logs.push(`[${level}] ${args.map(String).join(' ')}`);
        original(...args);
    };
}

env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = '/models/';
env.useBrowserCache = false;
// onnxruntime-web's wasm from node_modules; transformers.js would fetch it from a CDN otherwise.
env.backends.onnx.wasm.wasmPaths = {
    mjs: '/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.mjs',
    wasm: '/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.wasm',
};
const verbose = params.get('verbose') === '1';
if (verbose) env.backends.onnx.logLevel = 'verbose';

async function adapterInfo() {
    if (!navigator.gpu) return null;
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return null;
    const info = adapter.info ?? {};
    return {
        vendor: info.vendor, architecture: info.architecture, device: info.device, description: info.description,
        shader_f16: adapter.features.has('shader-f16'),
    };
}

async function main() {
    const name = params.get('model');
    if (!name) throw new Error('add ?model=NAME to the address (NAME: a folder that serve.py serves)');
    const adapter = await adapterInfo();
    const device = params.get('device') ?? (adapter ? 'webgpu' : 'wasm');
    $('status').textContent = `loading ${name} on ${device}…`;
    const started = performance.now();
    const tokenizer = await AutoTokenizer.from_pretrained(name);
    const model = await AutoModelForCausalLM.from_pretrained(name, {
        device,
        dtype: params.get('dtype') ?? undefined,
        session_options: verbose ? { logSeverityLevel: 0, logVerbosityLevel: 0 } : {},
    });
    const loaded_s = (performance.now() - started) / 1000;
    const dtype = model.sessions.model.config?.dtype;
    $('status').textContent = `${name}: ${dtype} on ${device}` +
        (adapter ? ` (${adapter.vendor} ${adapter.architecture}, shader-f16: ${adapter.shader_f16})` : '');

    async function generate(prompt, ids) {
        ids = ids ?? Array.from(tokenizer.encode(prompt));
        const n = ids.length;
        $('output').textContent = '';
        const streamer = new TextStreamer(tokenizer, {
            skip_prompt: true,
            callback_function: (text) => { $('output').textContent += text; },
        });
        const t = performance.now();
        const output = await model.generate({
            input_ids: new Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, n]),
            attention_mask: new Tensor('int64', new BigInt64Array(n).fill(1n), [1, n]),
            do_sample: false,
            max_new_tokens: Number(params.get('max_new_tokens') ?? 64),
            min_new_tokens: Number(params.get('min_new_tokens') ?? 0),
            streamer,
        });
        const tokens = Array.from(output.data, Number);
        return { tokens, prompt_ids: ids, text: $('output').textContent, generate_s: (performance.now() - t) / 1000 };
    }

    const form = $('form');
    form.querySelector('button').disabled = false;
    form.addEventListener('submit', async (e) => {
        e.preventDefault();
        form.querySelector('button').disabled = true;
        try { await generate($('prompt').value); } finally { form.querySelector('button').disabled = false; }
    });
    if (params.get('prompt')) $('prompt').value = params.get('prompt');
    if (params.get('autorun') === '1' || params.get('report') === '1') {
        const ids = params.get('ids') ? params.get('ids').split(',').map(Number) : null;
        const result = await generate($('prompt').value, ids);
        return { model: name, device, dtype, adapter, loaded_s, ...result };
    }
    return null;
}

async function report(result) {
    if (params.get('report') !== '1') return;
    await fetch('/result', { method: 'POST', headers: { 'Content-Type': 'application/json' },
                             body: JSON.stringify({ ...result, logs }) });
}

main().then((result) => result && report(result)).catch(async (error) => {
    $('status').textContent = `error: ${error.message ?? error}`;
    await report({ error: String(error?.stack ?? error) });
});
