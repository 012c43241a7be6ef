// Greedy generation from a folder built with --format transformers.js, in Node
// (transformers.js 4 on onnxruntime-node's CPU EP). Prints one JSON line.
//
//   node examples/web/generate.mjs OUT_DIR [--prompt TEXT | --ids 1,2,3] [--max-new-tokens N]
//                                          [--dtype q4] [--device cpu]
//
// --prompt (or --ids) given more than once is a batch, padded on the left as transformers.js pads
// one; the JSON line then holds one entry a prompt under "rows".
// --dtype defaults to the one in the folder's config.json (transformers.js_config.dtype).
// The tests pass --ids and --min-new-tokens so that a random model cannot stop early.
// A mistake (no folder, a folder that is not a transformers.js build, a bad option, a prompt
// that does not fit the build's context, a dtype the folder lacks, a browser-only device) is one
// `error: ` line on stderr and exit 2; so is a failure inside transformers.js, whose own logging
// (ONNX Runtime's error lines, the tensors given to the model) is held back while it loads and runs.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import { DTYPES, leftPadded, newerRuntime, rowsOf } from './batch.js';

const USAGE = `usage: node examples/web/generate.mjs OUT_DIR [--prompt TEXT | --ids 1,2,3] [--max-new-tokens N]
                                       [--min-new-tokens N] [--dtype q4] [--device cpu] [--encode TEXT]

Greedy generation with transformers.js 4 (onnxruntime-node, CPU) from OUT_DIR, a folder built
with python -m builder -m CHECKPOINT --format transformers.js -o OUT_DIR. Prints one JSON line.

  --prompt TEXT         text to continue (default: Hello); given again, a batch of prompts,
                        padded on the left (the JSON line lists them under "rows")
  --ids 1,2,3           token ids to continue, in place of --prompt; repeatable as --prompt
  --max-new-tokens N    new tokens at most (default: 16)
  --min-new-tokens N    new tokens at least (default: 0)
  --dtype DTYPE         weights to load: fp32, fp16, q4, q4f16 or int8, a file the folder holds
                        (default: transformers.js_config.dtype of config.json)
  --device DEVICE       transformers.js device in Node: cpu, webgpu, or cuda where onnxruntime-node
                        has its CUDA libraries (default: cpu); wasm is the browser's (serve.py)
  --encode TEXT         also print the token ids the folder's tokenizer gives TEXT ("encoded"), to
                        compare its tokenizer with another's`;

const BUILD = 'python -m builder -m CHECKPOINT --format transformers.js -o OUT_DIR';

// transformers.js devices of onnxruntime-web, which Node does not have.
const BROWSER_DEVICES = ['wasm', 'webnn', 'webnn-npu', 'webnn-gpu', 'webnn-cpu'];

class UsageError extends Error {}

function fail(message) {
    console.error(`error: ${message}`);
    process.exit(2);
}

function firstLine(error) {
    return String(error?.message ?? error).trim().split('\n')[0];
}

function list(items, last = 'or') {
    return items.length < 2 ? items.join('') : `${items.slice(0, -1).join(', ')} ${last} ${items.at(-1)}`;
}

function count(option, text, least) {
    const value = Number(text);
    if (!/^\d+$/.test(text) || value < least) {
        throw new UsageError(`${option} ${text} is not a whole number of ${least} or more`);
    }
    return value;
}

function parse(argv) {
    const args = { folder: null, prompts: [], ids: [], encode: null, max_new_tokens: 16, min_new_tokens: 0, dtype: undefined, device: 'cpu' };
    for (let i = 0; i < argv.length; ++i) {
        const a = argv[i];
        const next = () => {
            if (i + 1 >= argv.length) throw new UsageError(`${a} needs a value; see --help`);
            return argv[++i];
        };
        if (a === '--prompt') {
            const prompt = next();
            if (!prompt) throw new UsageError("--prompt '' is empty: pass the text to continue, e.g. --prompt Hello, or --ids 1,2,3");
            args.prompts.push(prompt);
        }
        else if (a === '--ids') {
            const text = next();
            if (!/^\d+(,\d+)*$/.test(text)) throw new UsageError(`--ids ${text} is not a comma-separated list of token ids, e.g. --ids 1,2,3`);
            args.ids.push(text.split(',').map(Number));
        }
        else if (a === '--max-new-tokens') args.max_new_tokens = count(a, next(), 1);
        else if (a === '--min-new-tokens') args.min_new_tokens = count(a, next(), 0);
        else if (a === '--dtype') args.dtype = next();
        else if (a === '--device') args.device = next();
        else if (a === '--encode') args.encode = next();
        else if (a.startsWith('-') && a !== '-') throw new UsageError(`unknown option ${a}; see --help`);
        else if (!args.folder) args.folder = a;
        else throw new UsageError(`unexpected argument ${a}: pass one OUT_DIR; see --help`);
    }
    if (!args.folder) throw new UsageError(`pass OUT_DIR, a folder built with ${BUILD}`);
    if (args.prompts.length && args.ids.length) {
        throw new UsageError('pass the prompts as --prompt TEXT or as --ids 1,2,3, not both (each one given is a row of the batch)');
    }
    if (!args.prompts.length && !args.ids.length) args.prompts.push('Hello');
    if (args.min_new_tokens > args.max_new_tokens) {  // generate() stopped at the max without a word
        throw new UsageError(`--min-new-tokens ${args.min_new_tokens} is more than --max-new-tokens ${args.max_new_tokens}`);
    }
    return args;
}

/** The folder's build_report.json, or {} without one. */
function report(folder) {
    try {
        return JSON.parse(fs.readFileSync(path.join(folder, 'build_report.json'), 'utf8')) ?? {};
    } catch {
        return {};
    }
}

/**
 * The checkpoint `folder` was built from, as -m takes it from anywhere: the resolved path its
 * build_report.json records (options.model may be relative to where the build ran), or the hub id
 * where that path is the Hugging Face cache's; null without a report.
 */
function checkpointOf(folder) {
    const built = report(folder);
    const given = built.options?.model;
    const resolved = built.checkpoint?.path;
    if (resolved && path.basename(path.dirname(resolved)) === 'snapshots' && /^[^./~][^/]*\/[^/]+$/.test(given ?? '')) {
        return given;
    }
    return resolved ?? given ?? null;
}

/** The command that rebuilds `folder`: its checkpoint, precision and EP (or `ep`) from build_report.json. */
function rebuild(shown, folder, ep = null) {
    const options = report(folder).options ?? {};
    const model = checkpointOf(folder) ?? 'CHECKPOINT';
    const family = options.family ? ` --family ${options.family}` : '';  // a family of the user's own built it
    // The options that change which weights it writes, as the page's rebuild() keeps them: without
    // --io-dtype fp32 an int4 webgpu folder comes back as q4f16, which the q4 folder was built to avoid.
    const io = options.io_dtype && options.io_dtype !== 'auto' ? ` --io-dtype ${options.io_dtype}` : '';
    const int8 = options.int8_layers?.length ? ` --int8-layers ${options.int8_layers.join(',')}` : '';
    const float = options.float_layers?.length ? ` --float-layers ${options.float_layers.join(',')}` : '';
    const more = model !== 'CHECKPOINT' ? ` -p ${options.precision} -e ${ep ?? options.ep}${family}${io}${int8}${float}` : '';
    const others = model !== 'CHECKPOINT' ? ' (build_report.json lists its other options)' : '';
    return `rebuild it with python -m builder -m ${model}${more} --format transformers.js -o ${shown} --overwrite${others}`;
}

/**
 * A folder built for another EP than the CPU that failed on --device cpu: say so, and rebuild it for
 * the CPU (rebuilding it for its own EP, as the other messages would, fails alike).
 */
function failOffItsEP(error, what) {
    const builtFor = report(folder).options?.ep;
    if (args.device !== 'cpu' || !builtFor || builtFor === 'cpu') return;
    // A file missing or cut short is the folder's fault on any EP (webgpu builds run on the CPU too):
    // only a kernel the CPU lacks is the EP's.
    if (!/Could not find an implementation|NOT_IMPLEMENTED|not supported|Type Error|type \(tensor/i.test(firstLine(error))) return;
    fail(`${args.folder} does not ${what} on the CPU (${firstLine(error)}): it was built for ${builtFor} `
        + `(-e ${builtFor}), whose graph the CPU need not run; run it with --device ${builtFor} where that is, or `
        + rebuild(args.folder, folder, 'cpu'));
}

/** Refuses a folder that transformers.js cannot load as a --format transformers.js build; returns its config.json. */
function checkFolder(shown, folder) {
    if (!fs.existsSync(folder)) fail(`${shown} does not exist; pass a folder built with ${BUILD}`);
    if (!fs.statSync(folder).isDirectory()) fail(`${shown} is not a folder; pass a folder built with ${BUILD}`);
    const configPath = path.join(folder, 'config.json');
    let config = null;
    if (fs.existsSync(configPath)) {
        try {
            config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
        } catch (e) {
            fail(`${path.join(shown, 'config.json')} is not valid JSON (${firstLine(e)}); ${rebuild(shown, folder)}`);
        }
    }
    if (config && typeof config === 'object' && config['transformers.js_config']) return config;
    if (fs.existsSync(path.join(folder, 'genai_config.json'))) {
        fail(`${shown} is an onnxruntime-genai folder, not a transformers.js one: run it with python scripts/generate.py ${shown}, `
            + `or build one for this script with ${BUILD}`);
    }
    fail(`${shown} is not a transformers.js folder (no config.json with a "transformers.js_config" entry); `
        + `pass a folder built with ${BUILD}`);
}

/** A number of the text model's config (text_config for multimodal checkpoints such as Qwen3.5). */
function textConfig(config, key) {
    const value = config.text_config?.[key] ?? config[key];
    return Number.isInteger(value) && value > 0 ? value : null;
}

/** Refuses a --dtype that is not a builder dtype, or whose weights the folder lacks. */
function checkDtype(shown, folder, dtype) {
    if (dtype === undefined) return;
    const holds = Object.keys(DTYPES).filter((d) => fs.existsSync(path.join(folder, 'onnx', `model${DTYPES[d].suffix}.onnx`)));
    const held = holds.length ? `${shown} holds ${list(holds, 'and')} weights` : `${shown} holds no onnx/model*.onnx`;
    if (!Object.hasOwn(DTYPES, dtype)) {
        fail(`--dtype ${dtype} is not one of ${list(Object.keys(DTYPES))}, the dtypes python -m builder writes; `
            + `${held}: drop --dtype, or pass one of those`);
    }
    if (holds.includes(dtype) || !holds.length) return;  // no weights at all: the load names the missing file
    const model = checkpointOf(folder) ?? 'CHECKPOINT';
    fail(`${shown} has no ${dtype} weights (onnx/model${DTYPES[dtype].suffix}.onnx) for --dtype ${dtype}: it holds `
        + `${list(holds, 'and')} weights; drop --dtype, or build the ${dtype} weights into another folder with `
        + `python -m builder -m ${model} ${DTYPES[dtype].build} --format transformers.js -o OTHER_DIR`);
}

/** Refuses token ids the embedding has no row for. */
function checkIds(shown, config, rows) {
    const vocab = textConfig(config, 'vocab_size');
    const bad = vocab === null ? undefined : rows.flat().find((t) => t >= vocab);
    if (bad !== undefined) {
        fail(`--ids has token id ${bad}, past the vocabulary of ${shown} (vocab_size ${vocab} in config.json): `
            + `pass ids from 0 to ${vocab - 1}`);
    }
}

/** Refuses a generation longer than the build's context, as scripts/generate.py does. */
function checkContext(shown, folder, config, args, promptTokens) {
    // config.json's max_position_embeddings is the build's --context-length; a folder built before the
    // builder wrote it there has the checkpoint's, and build_report.json the build's.
    let context = textConfig(config, 'max_position_embeddings');
    let [key, file] = ['max_position_embeddings', 'config.json'];
    const built = report(folder).model?.context_length;
    if (Number.isInteger(built) && built > 0 && (context === null || built < context)) {
        context = built;
        [key, file] = ['context_length', 'build_report.json'];
    }
    // The last new token is never fed back, so the graph sees the prompt and all but one of them.
    if (context === null || promptTokens + args.max_new_tokens - 1 <= context) return;
    const given = args.ids.length ? '--ids' : '--prompt';
    const taker = Math.max(args.ids.length, args.prompts.length) > 1 ? `the longest ${given}` : given;  // a batch
    const room = context - promptTokens + 1;
    if (room < 1) {
        fail(`${taker} takes ${promptTokens} tokens, and ${shown} has ${key} ${context} in ${file} (the build's --context-length), `
            + `which leaves no room for new tokens; pass a shorter ${given}, or rebuild with a larger --context-length`);
    }
    fail(`--max-new-tokens ${args.max_new_tokens} does not fit: ${shown} has ${key} ${context} in ${file} `
        + `(the build's --context-length) and ${taker} takes ${promptTokens} tokens, so pass --max-new-tokens ${room} or less`);
}

/**
 * Whether Dawn, the WebGPU of onnxruntime-node on Linux, can load the Vulkan loader: in ldconfig's
 * cache or on LD_LIBRARY_PATH. Without it Dawn prints a native warning and finds no adapter. true
 * elsewhere, and where ldconfig cannot say.
 */
function vulkanLoader() {
    if (process.platform !== 'linux') return true;
    const dirs = (process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean);
    if (dirs.some((dir) => fs.existsSync(path.join(dir, 'libvulkan.so.1')))) return true;
    for (const ldconfig of ['ldconfig', '/sbin/ldconfig']) {  // /sbin may be off a user's PATH
        const cache = spawnSync(ldconfig, ['-p'], { encoding: 'utf8' });
        if (cache.status === 0) return /libvulkan\.so\.1\b/.test(cache.stdout);
    }
    return true;
}

/** Refuses a --device that onnxruntime-node lacks here, before transformers.js fails on it. */
function checkDevice(shown, device, supported) {
    const node = supported.length ? supported : ['cpu'];
    if (BROWSER_DEVICES.includes(device)) {
        fail(`--device ${device} is a browser device (onnxruntime-web), which transformers.js in Node lacks: pass --device `
            + `${list(node)}, or run the folder in the browser with python examples/web/serve.py ${shown}`);
    }
    if (device === 'webgpu' && !vulkanLoader()) {
        fail('--device webgpu needs the Vulkan loader (libvulkan.so.1), which this machine lacks: install it and a GPU '
            + 'driver (Debian/Ubuntu: apt-get install libvulkan1), or pass --device cpu, or run the folder in a browser '
            + `with python examples/web/serve.py ${shown}`);
    }
    // auto and gpu: transformers.js picks one of the others itself.
    if (!node.includes(device) && !['auto', 'gpu'].includes(device)) {
        fail(`--device ${device} is not a device of transformers.js in Node: pass ${list(node)}`);
    }
    // auto and gpu try cuda first in Node: without its libraries they fail as cuda does.
    if (!['cuda', 'auto', 'gpu'].includes(device)) return;
    let bin = null;
    try {
        const ort = path.dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
        bin = path.join(ort, 'bin', 'napi-v6', process.platform, process.arch);
    } catch {
        return;  // transformers.js names what it lacks
    }
    if (!fs.existsSync(path.join(bin, `libonnxruntime_providers_cuda.so`))) {
        const tries = device === 'cuda' ? '' : ' (transformers.js tries cuda first for it)';
        fail(`--device ${device}${tries} needs onnxruntime-node's CUDA libraries, which are not in ${bin} (npm install `
            + '--ignore-scripts, as scripts/setup.sh runs it, leaves them out): pass --device cpu or webgpu, or run npm '
            + 'install in examples/web without --ignore-scripts');
    }
}

/**
 * Runs `work` with console.error/console.warn held back and ONNX Runtime's own log off: transformers.js
 * logs every input tensor before it rethrows a failed run, and ONNX Runtime prints its error lines,
 * hundreds of lines for one error that the caller reports on one line. What was held is printed
 * when `work` succeeds, and dropped when it throws.
 */
async function quietly(work) {
    const saved = { error: console.error, warn: console.warn };
    const held = [];
    console.error = (...a) => held.push(['error', a]);
    console.warn = (...a) => held.push(['warn', a]);
    let result;
    try {
        result = await work();
    } finally {
        Object.assign(console, saved);
    }
    for (const [level, a] of held) console[level](...a);
    return result;
}

let args;
try {
    const argv = process.argv.slice(2);
    if (argv.includes('--help') || argv.includes('-h')) {
        console.log(USAGE);
        process.exit(0);
    }
    if (argv.length === 0) {
        console.error(USAGE);
        throw new UsageError(`pass OUT_DIR, a folder built with ${BUILD}`);
    }
    args = parse(argv);
} catch (e) {
    if (!(e instanceof UsageError)) throw e;
    fail(e.message);
}
const folder = path.resolve(args.folder);
const config = checkFolder(args.folder, folder);
checkDtype(args.folder, folder, args.dtype);
if (BROWSER_DEVICES.includes(args.device)) checkDevice(args.folder, args.device, ['cpu', 'webgpu']);
if (args.ids.length) checkIds(args.folder, config, args.ids);

let transformers;
try {
    transformers = await import('@huggingface/transformers');
} catch (e) {
    if (e?.code !== 'ERR_MODULE_NOT_FOUND') throw e;
    fail(`@huggingface/transformers is not installed: run npm install --ignore-scripts in ${path.dirname(new URL(import.meta.url).pathname)} `
        + '(or bash scripts/setup.sh)');
}
const { AutoModelForCausalLM, AutoTokenizer, LogLevel, Tensor, env } = transformers;
checkDevice(args.folder, args.device, env.backends.onnx?.getSupportedDevices?.() ?? []);

// A local folder only: never the hub.
env.allowRemoteModels = false;
// The folder's own path as the id: transformers.js joins a name that reads as a hub id onto
// localModelPath, and takes any other as a path; a folder name such as my--model or "a b" is no hub id.
env.localModelPath = path.dirname(folder) + path.sep;
const id = folder;
// ONNX Runtime's log off (its errors come back as the exceptions reported below): the process-wide
// logger, set before the first session, and each session's.
env.backends.onnx?.setLogLevel?.(LogLevel?.NONE ?? 50);
const session_options = { logSeverityLevel: 4 };

let tokenizer, model;
try {
    tokenizer = await quietly(() => AutoTokenizer.from_pretrained(id));
    model = await quietly(() => AutoModelForCausalLM.from_pretrained(id, { dtype: args.dtype, device: args.device, session_options }));
} catch (e) {
    if (args.device === 'webgpu' && /WebGPU adapter|No supported adapters/i.test(firstLine(e))) {  // the machine, not the folder
        const why = firstLine(e).replace(/^.*was false\.\s*/, '');  // past ONNX Runtime's source location
        fail(`--device webgpu: ${why}: Node finds no WebGPU adapter on this machine (a GPU with Vulkan, Metal or `
            + `D3D12); pass --device cpu, or run the folder in a browser with python examples/web/serve.py ${args.folder}`);
    }
    if (/Failed to load (shared )?library/i.test(firstLine(e))) {  // the EP's libraries, not the folder
        fail(`--device ${args.device}: ONNX Runtime could not load its execution provider (${firstLine(e)}); `
            + `install the libraries it needs (for cuda: the CUDA and cuDNN versions onnxruntime-node names), or pass --device cpu`);
    }
    const unknown = /Unsupported model type:? "?([\w.-]+)/.exec(firstLine(e));
    if (unknown) {  // a rebuild writes the same config.json: say what would change it
        fail(`${args.folder} does not load in transformers.js: its config.json says model_type ${unknown[1]}, which `
            + `transformers.js does not know; the builder family that made it names a model_type transformers.js `
            + `knows for the same architecture in its model_config() (docs/architecture.md)`);
    }
    const newer = newerRuntime(firstLine(e));
    if (newer) {  // the graph's ops are newer than this onnxruntime-node: the files are whole, the runtime is old
        const target = report(folder).target?.ort_version;
        fail(`${args.folder} does not load in transformers.js (${newer.what}): it was built for ONNX Runtime `
            + `${target ?? 'newer than this one'}, whose nodes the onnxruntime-node here does not run; run it with an `
            + `onnxruntime-node of that version, or `
            + (newer.moe ? `build it with --format genai for onnxruntime-genai (a MoE model's quantized experts need ONNX Runtime 1.31, `
                + `which transformers.js 4.3 does not ship; its -p fp32 or fp16 builds run here)`
                : `rebuild it without --target-ort, for transformers.js 4.3's onnxruntime-node 1.30`));
    }
    failOffItsEP(e, 'load');
    const device = args.device === 'cpu' ? '' : `, or --device ${args.device} does not run here (try --device cpu)`;
    fail(`${args.folder} does not load in transformers.js (${firstLine(e)}): a file of it is missing or damaged${device}; `
        + rebuild(args.folder, folder));
}
const rows = args.ids.length ? args.ids : args.prompts.map((prompt) => Array.from(tokenizer.encode(prompt)));
const empty = rows.findIndex((ids) => ids.length === 0);
if (empty >= 0) fail(`--prompt ${JSON.stringify(args.prompts[empty])} encodes to no tokens: pass text that does, or --ids 1,2,3`);
const batch = leftPadded(rows, tokenizer.pad_token_id ?? model.generation_config?.pad_token_id ?? 0);
const width = batch.dims[1];
checkContext(args.folder, folder, config, args, width);
let output;
try {
    output = await quietly(() => model.generate({
        input_ids: new Tensor('int64', batch.input_ids, batch.dims),
        attention_mask: new Tensor('int64', batch.attention_mask, batch.dims),
        do_sample: false,
        max_new_tokens: args.max_new_tokens, min_new_tokens: args.min_new_tokens,
    }));
} catch (e) {
    if (/cos_cache/.test(firstLine(e))) {  // a config.json that claims more context than the graph has
        fail(`${args.folder} does not run in transformers.js (${firstLine(e)}): ${width} + ${args.max_new_tokens} tokens `
            + `are past the context its graph was built for, which config.json's max_position_embeddings does not say; `
            + `pass a smaller --max-new-tokens, or ${rebuild(args.folder, folder)}`);
    }
    failOffItsEP(e, 'run');
    fail(`${args.folder} does not run in transformers.js (${firstLine(e)}); `
        + rebuild(args.folder, folder));
}
const results = rowsOf(output, rows, model.generation_config?.eos_token_id).map((row) => ({
    ...row, text: tokenizer.decode(row.tokens.slice(row.prompt_ids.length), { skip_special_tokens: false }),
}));
console.log(JSON.stringify({
    dtype: model.sessions.model.config?.dtype ?? args.dtype,
    device: args.device,
    ...(results.length === 1 ? results[0] : { rows: results }),
    ...(args.encode === null ? {} : { encoded: Array.from(tokenizer.encode(args.encode)) }),
}));
await model.dispose();
