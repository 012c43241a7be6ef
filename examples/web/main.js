// Loads a folder built with `--format transformers.js` from /models/NAME/ and
// streams greedy text. Query parameters:
//   model=NAME          the folder (serve.py serves each OUT_DIR as /models/<its name>/, lists them at /models.json)
//   device=webgpu|wasm  default webgpu when the browser has it, else wasm
//   dtype=q4|q4f16|...  default: the one in the folder's config.json
//   prompt=TEXT or ids=1,2,3, max_new_tokens=N, min_new_tokens=N
//   ids=1,2,3;4,5       a batch of prompts (padded on the left, as transformers.js pads one)
//   autorun=1           generate at once; report=1 also POSTs the result to /result
//   verbose=1           ONNX Runtime's verbose log (which EP runs each node) goes into the result
// A mistake (in the address, or a folder that cannot run here) shows as one `error: ` line in the
// status line, naming the bad input and what to do; report=1 POSTs it as {error}. The stack, if any,
// goes to the console (and the report's logs).
import {
    AutoModelForCausalLM, AutoTokenizer, Tensor, TextStreamer, env,
} from '/node_modules/@huggingface/transformers/dist/transformers.js';
import { DTYPES, leftPadded, newerRuntime, rowsOf } from './batch.js';

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

const BUILD = 'python -m builder -m CHECKPOINT --format transformers.js -o OUT';
const DEVICES = ['webgpu', 'wasm'];
const F16_DTYPES = ['fp16', 'q4f16', 'q2f16', 'q1f16'];  // fp16 activations: WebGPU needs shader-f16
const MAX_NEW_TOKENS = 64;  // the default, cut to what the folder's context leaves

/** A mistake the page explains in full: its message is the one line the user sees. */
class PageError extends Error {}

/** A query parameter, null when absent or empty. */
function param(key) {
    const value = params.get(key);
    return value === null || value.trim() === '' ? null : value.trim();
}

function firstLine(error) {
    return String(error?.message ?? error).trim().split('\n')[0];
}

/** A whole-number query parameter of `least` or more; `fallback` when absent. */
function count(key, least, fallback) {
    const text = param(key);
    if (text === null) return fallback;
    if (!/^\d+$/.test(text) || Number(text) < least) {
        throw new PageError(`${key}=${text} is not a whole number of ${least} or more: fix it in the address, e.g. ${key}=${Math.max(least, 16)}`);
    }
    return Number(text);
}

/** The query parameters that need no model, checked before anything loads. */
function readParams() {
    const device = param('device');
    if (device !== null && !DEVICES.includes(device)) {
        throw new PageError(`device=${device} is not a device of this page: pass device=webgpu or device=wasm, or leave it out (webgpu when the browser has it)`);
    }
    let ids = null;  // one list of token ids a prompt
    const text = param('ids');
    if (text !== null) {
        if (!/^\d+(,\d+)*(;\d+(,\d+)*)*$/.test(text)) {
            throw new PageError(`ids=${text} is not a comma-separated list of token ids (a batch: lists separated by ;): `
                + 'fix it in the address, e.g. ids=1,2,3 or ids=1,2,3;4,5, or pass prompt=TEXT instead');
        }
        ids = text.split(';').map((row) => row.split(',').map(Number));
    }
    // param() reads an empty prompt= as absent, which generated from the textarea's "Hello".
    if (params.has('prompt') && params.get('prompt').trim() === '') {
        throw new PageError('prompt= is empty: pass the text to continue, e.g. prompt=Hello, or ids=1,2,3');
    }
    if (ids && param('prompt') !== null) {  // ids= won silently
        throw new PageError('pass the prompt as prompt=TEXT or as ids=1,2,3, not both (a batch: ids=1,2,3;4,5)');
    }
    const explicit = param('max_new_tokens') !== null;
    const max_new_tokens = count('max_new_tokens', 1, MAX_NEW_TOKENS);
    const min_new_tokens = count('min_new_tokens', 0, 0);
    if (min_new_tokens > max_new_tokens) {
        throw new PageError(`min_new_tokens=${min_new_tokens} is more than max_new_tokens=${max_new_tokens}: lower it or raise max_new_tokens`);
    }
    return { device, ids, max_new_tokens, explicit, min_new_tokens, dtype: param('dtype') };
}

async function fetchJSON(url) {
    try {
        const response = await fetch(url);
        return response.ok ? await response.json() : null;
    } catch {
        return null;
    }
}

/** serve.py's /models.json: {NAME: {folder, dtype, dtypes, files}}; null from another server. */
async function servedModels() {
    const listing = await fetchJSON('/models.json');
    return listing?.models ?? null;
}

function servedNames(served) {
    const names = Object.keys(served ?? {});
    return names.length ? `served: ${names.join(', ')} (e.g. ?model=${encodeURIComponent(names[0])})` : 'serve.py serves none';
}

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

/**
 * The checkpoint `model` was built from, as -m takes it from anywhere: the resolved path the report
 * records (options.model may be relative to where the build ran), or the hub id where that path is
 * the Hugging Face cache's.
 */
function checkpointOf(model) {
    const o = model.report?.options ?? {};
    const resolved = model.report?.checkpoint?.path;
    const hub = resolved?.split('/').at(-2) === 'snapshots' && /^[^./~][^/]*\/[^/]+$/.test(o.model ?? '');
    return hub ? o.model : resolved ?? o.model ?? 'CHECKPOINT';
}

/** The builder command that makes `model` again, as build_report.json says it was built, with `change`. */
function rebuild(model, change = {}) {
    const o = model.report?.options ?? {};
    const parts = ['python -m builder -m', checkpointOf(model)];
    const precision = change.precision ?? o.precision;
    if (precision) parts.push('-p', precision);
    const ep = change.ep ?? o.ep;
    if (ep) parts.push('-e', ep);
    if (o.family) parts.push('--family', o.family);  // a family of the user's own built it
    const io = change.io_dtype ?? (o.io_dtype && o.io_dtype !== 'auto' ? o.io_dtype : null);
    if (io) parts.push('--io-dtype', io);
    if (o.int8_layers?.length) parts.push('--int8-layers', o.int8_layers.join(','));
    const float = [...new Set([...(o.float_layers ?? []), ...(change.float_layers ?? [])])];
    if (float.length) parts.push('--float-layers', float.join(','));
    parts.push('--format transformers.js -o', model.folder ?? o.output ?? 'OUT', '--overwrite');
    return parts.join(' ') + (o.model ? ' (build_report.json lists its other options)' : '');
}

/** Why the folder failed to load or run on `device`, as one line with what to do. */
function explain(error, { model, device, fellBack, adapter }) {
    const message = firstLine(error);
    const { name } = model;
    if (error instanceof PageError) return message;
    const builtFor = model.report?.options?.ep;
    if (device === 'wasm' && builtFor && !['cpu', 'webgpu'].includes(builtFor)
        && /GatherBlockQuantized|Could not find an implementation|NOT_IMPLEMENTED|not supported/i.test(message)) {
        // Rebuilding it for its own EP, as the messages below say, fails alike (a cuda build's
        // GroupQueryAttention takes the Q/K norms, which onnxruntime's CPU kernel refuses).
        const embedding = model.report?.options?.precision === 'int4' ? { float_layers: ['model.embed_tokens'] } : {};
        return `${name} does not run on wasm (${message}): it was built for ${builtFor} (-e ${builtFor}), whose graph `
            + `onnxruntime-web's CPU build need not run; rebuild it for the browser with -e webgpu`
            + `${embedding.float_layers ? ' and a float embedding (wasm has no GatherBlockQuantized kernel)' : ''}: `
            + rebuild(model, { ep: 'webgpu', ...embedding });
    }
    if (device === 'wasm' && /GatherBlockQuantized/.test(message)) {
        const why = fellBack ? 'the page runs on wasm because this browser has no WebGPU; ' : '';
        // Not to WebGPU where it computes wrong there (wrongOnWebgpu): the page would send it back here.
        const or = wrongOnWebgpu(model) ? '' : adapter ? ', or leave device=wasm out to run on WebGPU' : ', or open the page in a browser with WebGPU';
        return `${name} does not load on wasm: onnxruntime-web's CPU build has no GatherBlockQuantized kernel for its int4 embedding; `
            + `${why}rebuild it with a float embedding, --float-layers model.embed_tokens: ${rebuild(model, { float_layers: ['model.embed_tokens'] })}${or}`;
    }
    if (/requires f16 but the device does not support it|does not support fp16/.test(message)) {
        return f16Message(model, adapter);
    }
    if (error?.name === 'ModelFileNotFoundError' || /file was not found locally/.test(message)) {
        const file = /"([^"]+)"/.exec(message)?.[1] ?? 'a file';
        const configured = model.config['transformers.js_config']?.dtype;
        if (model.dtype !== configured && typeof configured === 'string' && /\/onnx\/model/.test(file)) {
            return dtypeMessage(model, [configured], file);  // the dtype= asked for weights the folder lacks
        }
        return `${name} does not load: ${file} is missing; rebuild it with ${rebuild(model)}`;
    }
    const unknown = /Unsupported model type:? "?([\w.-]+)/.exec(message);
    if (unknown) {  // a rebuild writes the same config.json: say what would change it
        return `${name} does not load: its config.json says model_type ${unknown[1]}, which transformers.js does not `
            + `know; the builder family that made it names a model_type transformers.js knows for the same `
            + `architecture in its model_config() (docs/architecture.md)`;
    }
    const newer = newerRuntime(message);
    if (newer) {  // the graph's nodes are newer than this page's onnxruntime-web: the files are whole
        const target = model.report?.target?.ort_version;
        return `${name} does not load in transformers.js on ${device} (${newer.what}): it was built for ONNX Runtime `
            + `${target ?? 'newer than this page runs'}, whose nodes this page's onnxruntime-web does not run; `
            + (newer.moe ? 'a MoE model\'s quantized experts run in onnxruntime-genai (--format genai); its -p fp32 or fp16 builds run here'
                : `rebuild it without --target-ort: ${rebuild(model)}`);
    }
    if (/cos_cache dimension 0 shall not be less than total_sequence_length/.test(message)) {
        return `${name} ran past its context (${message}): lower max_new_tokens or shorten the prompt`;
    }
    return `${name} does not run in transformers.js on ${device} (${message}): a file of it may be missing or damaged; rebuild it with ${rebuild(model)}`;
}

// onnxruntime's WebGPU EP computes MatMulNBits in blocks of 256 wrong at accuracy level 4 where the in-width
// is no multiple of 256 (docs/packing.md, "Accuracy level on webgpu in blocks of 256"): a -e webgpu build
// takes level 0 there, another EP's keeps 4, and its build_report.json names those nodes (wrong_on_webgpu).

/** Whether the weights the page would load have MatMulNBits that the WebGPU EP computes wrong. */
function wrongOnWebgpu(model) {
    const report = model.report;
    return report?.format?.dtype === model.dtype && (report?.wrong_on_webgpu?.length ?? 0) > 0;
}

function blockMessage(model, adapter) {
    const { ep, precision } = model.report.target;
    const io = precision === 'int8' || !adapter.shader_f16 ? 'fp32' : undefined;  // q4f16 needs shader-f16
    const count = model.report.wrong_on_webgpu.length;
    return `${model.name} computes wrong on WebGPU: it was built -e ${ep} in blocks of 256, and ${count} of its MatMulNBits `
        + `(in-widths no multiple of 256) run at accuracy level 4, which onnxruntime-web's WebGPU EP gets wrong (tokens `
        + `unrelated to the model's); pass device=wasm, or rebuild it for WebGPU (those take level 0 there): `
        + `${rebuild(model, { ep: 'webgpu', io_dtype: io })}`;
}

function f16Message(model, adapter) {
    const gpu = adapter ? ` (${adapter.vendor} ${adapter.architecture})` : '';
    const what = model.requested ? `dtype=${model.requested} runs` : `${model.name} holds ${model.dtype} weights, which run`;
    const other = (model.held ?? []).find((d) => !F16_DTYPES.includes(d));
    // The builder refuses --io-dtype fp32 with -p fp16 (fp16 weights are fp16 activations): fp32 weights then.
    const fp16 = (model.report?.options?.precision ?? (model.dtype === 'fp16' ? 'fp16' : null)) === 'fp16';
    const fix = model.requested && other
        ? `pass dtype=${other} (${model.name} holds it too)`
        : fp16
            ? `rebuild it with fp32 weights, -p fp32 (or -p int4 --io-dtype fp32 for q4): ${rebuild(model, { precision: 'fp32' })}`
            : `rebuild it with fp32 activations, --io-dtype fp32: ${rebuild(model, { io_dtype: 'fp32' })}`;
    return `${what} fp16 activations, but this browser's WebGPU adapter${gpu} has no shader-f16: ${fix}`;
}

/** Checks the model name and dtype against what the server holds; returns what the page knows of it. */
async function describe(name, dtype) {
    const served = await servedModels();
    if (served && !(name in served)) {
        throw new PageError(`no model named "${name}" is served here; ${servedNames(served)}`);
    }
    const base = `/models/${encodeURIComponent(name)}/`;
    const config = await fetchJSON(base + 'config.json');
    if (!config) {
        throw new PageError(`no model named "${name}" is served here (${base}config.json is not found): `
            + 'pass ?model= the folder name that serve.py printed');
    }
    const built = config['transformers.js_config'];
    const entry = served?.[name];
    const model = {
        name,
        folder: entry?.folder,
        report: await fetchJSON(base + 'build_report.json'),
        config,
        dtype: dtype ?? (typeof built?.dtype === 'string' ? built.dtype : undefined),
        requested: dtype,
        held: entry?.dtypes ?? null,  // serve.py lists the onnx/ files; from another server the load tells
    };
    if (!built) {
        throw new PageError(`${name} is not a transformers.js build (its config.json has no "transformers.js_config" entry): build one with ${BUILD}, then serve OUT`);
    }
    if (dtype && model.held && !model.held.includes(dtype)) throw new PageError(dtypeMessage(model, model.held));
    return model;
}

function dtypeMessage(model, held, missing) {
    const { name, dtype } = model;
    const holds = `${name} holds ${held.join(', ') || 'no onnx/model*.onnx'}`;
    if (!Object.hasOwn(DTYPES, dtype)) {  // no folder of the builder's has it: building it is no answer
        const names = Object.keys(DTYPES);
        return `dtype=${dtype} is not one of ${names.slice(0, -1).join(', ')} or ${names.at(-1)}, the dtypes python -m builder writes; `
            + `${holds}: leave dtype out, or pass one of those`;
    }
    return `dtype=${dtype}: ${name} has no ${dtype} weights${missing ? ` (${missing} is missing)` : ''}; it holds ${held.join(', ') || 'none'}: `
        + `pass dtype=${held[0] ?? '...'} or leave dtype out, or build the ${dtype} weights (onnx/model${DTYPES[dtype].suffix}.onnx) `
        + `into another folder with python -m builder -m ${checkpointOf(model)} ${DTYPES[dtype].build} --format transformers.js -o OTHER_DIR`;
}

/** The tokens `model` takes, and the key that says so. */
function contextOf(model) {
    const config = { ...model.config, ...(model.config.text_config ?? {}) };
    // config.json's max_position_embeddings is the build's --context-length; a folder built before the
    // builder wrote it there has the checkpoint's, and build_report.json the build's.
    const built = model.report?.model?.context_length;
    const fromReport = Number.isInteger(built) && built > 0 && !(config.max_position_embeddings <= built);
    return fromReport ? { limit: built, key: 'context_length' }
        : { limit: config.max_position_embeddings, key: 'max_position_embeddings' };
}

/**
 * max_new_tokens for a prompt of `length` tokens: the address's, or the default cut to what the
 * context leaves (a folder built with --context-length 32 ran past it on the page's own default).
 */
function newTokens(model, options, length) {
    const { limit } = contextOf(model);
    if (options.explicit || !limit) return options.max_new_tokens;
    return Math.max(1, Math.min(options.max_new_tokens, limit - length + 1));
}

const ANY_PROMPT = 'max_new_tokens';  // checkPrompt's `what` before the prompt is known

/** Refuses a prompt that the model cannot take as it stands: ids out of its vocabulary, or too long. */
function checkPrompt(model, ids, max_new_tokens, what) {
    if (!ids.length) {  // generate() fed it as an empty tensor: "OrtRun() ERROR_CODE 9", blamed on the folder
        throw new PageError(`${what} is empty (it encodes to no tokens): type some text`);
    }
    const config = { ...model.config, ...(model.config.text_config ?? {}) };
    const vocab = config.vocab_size;
    const bad = vocab ? ids.find((id) => id >= vocab) : undefined;
    if (bad !== undefined) {
        throw new PageError(`${what}: token id ${bad} is outside ${model.name}'s vocabulary (ids 0 to ${vocab - 1}): fix it in the address`);
    }
    // The last new token is never fed back, so the graph sees the prompt and all but one of them.
    const { limit, key } = contextOf(model);
    if (limit && ids.length + max_new_tokens - 1 > limit) {
        if (ids.length > limit) {
            throw new PageError(`${what} has ${ids.length} tokens, more than ${model.name} takes (${key} ${limit}): shorten it`);
        }
        if (what === ANY_PROMPT) {  // no prompt yet: the bound for the shortest one
            throw new PageError(`max_new_tokens=${max_new_tokens} runs past ${model.name}'s context for any prompt: even one prompt token `
                + `plus the new ones but the last must fit in ${key} ${limit}: pass max_new_tokens=${limit} or less`);
        }
        throw new PageError(`max_new_tokens=${max_new_tokens} runs past ${model.name}'s context: the ${ids.length} prompt token${ids.length === 1 ? '' : 's'} plus the new ones `
            + `but the last must fit in ${key} ${limit}: pass max_new_tokens=${limit - ids.length + 1} or less, or shorten the prompt`);
    }
}

async function main(state) {
    const options = readParams();
    const name = param('model');
    if (!name) {
        throw new PageError(`add ?model=NAME to the address (NAME: a folder that serve.py serves); ${servedNames(await servedModels())}`);
    }
    state.name = name;
    const model = await describe(name, options.dtype);
    state.model = model;
    const adapter = await adapterInfo();
    const fellBack = !options.device && !adapter;
    const device = options.device ?? (adapter ? 'webgpu' : 'wasm');
    Object.assign(state, { device, fellBack, adapter });
    if (device === 'webgpu' && !adapter) {
        throw new PageError('device=webgpu, but this browser has no WebGPU adapter: leave device out to run on wasm, '
            + 'or enable WebGPU (Chromium: --enable-unsafe-webgpu, or chrome://flags)');
    }
    // Known to hold the weights (the listing, or the config's own dtype): refuse before loading.
    const known = model.held?.includes(model.dtype) || !model.requested;
    if (device === 'webgpu' && !adapter.shader_f16 && F16_DTYPES.includes(model.dtype) && known) {
        throw new PageError(f16Message(model, adapter));
    }
    if (device === 'webgpu' && wrongOnWebgpu(model)) throw new PageError(blockMessage(model, adapter));
    for (const row of options.ids ?? []) checkPrompt(model, row, newTokens(model, options, row.length), `ids=${param('ids')}`);
    const autorun = params.get('autorun') === '1' || params.get('report') === '1';
    // A prompt the page already has (the address's, or the box's on autorun) is checked as it encodes, below,
    // still before the weights load: a one-token stand-in would name the wrong count and a bound that prompt
    // exceeds. One still to be typed has a token at least: a max_new_tokens past the context even then is refused now.
    const promptKnown = Boolean(options.ids || autorun || param('prompt'));
    if (!promptKnown) checkPrompt(model, [0], newTokens(model, options, 1), ANY_PROMPT);
    $('status').textContent = `loading ${name} on ${device}${fellBack ? ' (this browser has no WebGPU)' : ''}…`;
    const started = performance.now();
    // Its URL path as the id: transformers.js joins a name that reads as a hub id onto localModelPath
    // and fetches any other as it is, so a folder named my--model or "a b" was asked for at /my--model/.
    const where = env.localModelPath + encodeURIComponent(name);  // a name with # or ? is no URL path as it is
    const tokenizer = await AutoTokenizer.from_pretrained(where);
    if ((autorun || param('prompt')) && !options.ids) {  // before the weights load, as ids= is
        const text = param('prompt') ? params.get('prompt') : $('prompt').value;
        const ids = Array.from(tokenizer.encode(text));
        checkPrompt(model, ids, newTokens(model, options, ids.length), 'the prompt');
    }
    const loaded = await AutoModelForCausalLM.from_pretrained(where, {
        device,
        dtype: options.dtype ?? undefined,
        session_options: verbose ? { logSeverityLevel: 0, logVerbosityLevel: 0 } : {},
    });
    const loaded_s = (performance.now() - started) / 1000;
    const dtype = loaded.sessions.model.config?.dtype;
    $('status').textContent = `${name}: ${dtype} on ${device}` +
        (adapter ? ` (${adapter.vendor} ${adapter.architecture}, shader-f16: ${adapter.shader_f16})` : ' (no WebGPU)');

    async function generate(prompt, rows) {
        rows = rows ?? [Array.from(tokenizer.encode(prompt))];
        const max_new_tokens = newTokens(model, options, Math.max(...rows.map((ids) => ids.length)));
        for (const ids of rows) {
            checkPrompt(model, ids, max_new_tokens, rows === options.ids ? `ids=${param('ids')}` : 'the prompt');
        }
        const batch = leftPadded(rows, tokenizer.pad_token_id ?? loaded.generation_config?.pad_token_id ?? 0);
        $('output').textContent = '';
        // TextStreamer takes one sequence: a batch's texts are shown when it is done.
        const streamer = rows.length > 1 ? undefined : new TextStreamer(tokenizer, {
            skip_prompt: true,
            skip_special_tokens: false,  // as rowsOf's text below and generate.mjs's show them
            callback_function: (text) => { $('output').textContent += text; },
        });
        const t = performance.now();
        const output = await loaded.generate({
            input_ids: new Tensor('int64', batch.input_ids, batch.dims),
            attention_mask: new Tensor('int64', batch.attention_mask, batch.dims),
            do_sample: false,
            max_new_tokens,
            min_new_tokens: Math.min(options.min_new_tokens, max_new_tokens),
            streamer,
        });
        const generate_s = (performance.now() - t) / 1000;
        const results = rowsOf(output, rows, loaded.generation_config?.eos_token_id).map((row) => ({
            ...row, text: tokenizer.decode(row.tokens.slice(row.prompt_ids.length), { skip_special_tokens: false }),
        }));
        if (rows.length === 1) return { ...results[0], generate_s };
        $('output').textContent = results.map((row) => row.text).join('\n');
        return { rows: results, generate_s };
    }

    const form = $('form');
    const button = form.querySelector('button');
    button.disabled = false;
    const ready = $('status').textContent;
    form.addEventListener('submit', async (e) => {
        e.preventDefault();
        button.disabled = true;
        try {
            await generate($('prompt').value);
            $('status').textContent = ready;
            $('status').classList.remove('error');
        } catch (error) {
            fail(error, state);
        } finally {
            button.disabled = false;
        }
    });
    if (param('prompt')) $('prompt').value = params.get('prompt');
    if (autorun) {
        const result = await generate($('prompt').value, options.ids);
        return { model: name, device, dtype, adapter, loaded_s, ...result };
    }
    return null;
}

async function report(result) {
    if (params.get('report') !== '1') return;
    await fetch('/result', { method: 'POST', headers: { 'Content-Type': 'application/json' },
                             body: JSON.stringify({ ...result, logs }) });
}

/** Shows `error` as one line in the status; the stack goes to the console. Returns the line. */
function fail(error, state) {
    const line = state.model ? explain(error, state) : firstLine(error);
    if (!(error instanceof PageError)) console.error(error?.stack ?? String(error));
    $('status').textContent = `error: ${line}`;
    $('status').classList.add('error');
    return line;
}

const state = {};
main(state).then((result) => result && report(result)).catch(async (error) => {
    const line = fail(error, state);
    await report({ error: line, query: location.search, model: state.name ?? null, device: state.device ?? null });
});
