// Greedy generation from a folder built with --format transformers.js, in Node
// (transformers.js 4 on onnxruntime-node's CPU EP). Prints one JSON line.
//
//   node examples/web/generate.mjs OUT_DIR [--prompt TEXT | --ids 1,2,3] [--max-new-tokens N]
//                                          [--dtype q4] [--device cpu]
//
// --dtype defaults to the one in the folder's config.json (transformers.js_config.dtype).
// The tests pass --ids and --min-new-tokens so that a random model cannot stop early.
// A mistake (no folder, a folder that is not a transformers.js build, a bad option) is one
// `error: ` line on stderr and exit 2.
import fs from 'node:fs';
import path from 'node:path';

const USAGE = `usage: node examples/web/generate.mjs OUT_DIR [--prompt TEXT | --ids 1,2,3] [--max-new-tokens N]
                                       [--min-new-tokens N] [--dtype q4] [--device cpu]

Greedy generation with transformers.js 4 (onnxruntime-node, CPU) from OUT_DIR, a folder built
with python -m builder -m CHECKPOINT --format transformers.js -o OUT_DIR. Prints one JSON line.

  --prompt TEXT         text to continue (default: Hello)
  --ids 1,2,3           token ids to continue, in place of --prompt
  --max-new-tokens N    new tokens at most (default: 16)
  --min-new-tokens N    new tokens at least (default: 0)
  --dtype DTYPE         weights to load (default: transformers.js_config.dtype of config.json)
  --device DEVICE       transformers.js device (default: cpu)`;

const BUILD = 'python -m builder -m CHECKPOINT --format transformers.js -o OUT_DIR';

class UsageError extends Error {}

function fail(message) {
    console.error(`error: ${message}`);
    process.exit(2);
}

function firstLine(error) {
    return String(error?.message ?? error).trim().split('\n')[0];
}

function count(option, text, least) {
    const value = Number(text);
    if (!/^\d+$/.test(text) || value < least) {
        throw new UsageError(`${option} ${text} is not a whole number of ${least} or more`);
    }
    return value;
}

function parse(argv) {
    const args = { folder: null, prompt: 'Hello', ids: null, max_new_tokens: 16, min_new_tokens: 0, dtype: undefined, device: 'cpu' };
    for (let i = 0; i < argv.length; ++i) {
        const a = argv[i];
        const next = () => {
            if (i + 1 >= argv.length) throw new UsageError(`${a} needs a value; see --help`);
            return argv[++i];
        };
        if (a === '--prompt') args.prompt = next();
        else if (a === '--ids') {
            const text = next();
            if (!/^\d+(,\d+)*$/.test(text)) throw new UsageError(`--ids ${text} is not a comma-separated list of token ids, e.g. --ids 1,2,3`);
            args.ids = text.split(',').map(Number);
        }
        else if (a === '--max-new-tokens') args.max_new_tokens = count(a, next(), 1);
        else if (a === '--min-new-tokens') args.min_new_tokens = count(a, next(), 0);
        else if (a === '--dtype') args.dtype = next();
        else if (a === '--device') args.device = next();
        else if (a.startsWith('-') && a !== '-') throw new UsageError(`unknown option ${a}; see --help`);
        else if (!args.folder) args.folder = a;
        else throw new UsageError(`unexpected argument ${a}: pass one OUT_DIR; see --help`);
    }
    if (!args.folder) throw new UsageError(`pass OUT_DIR, a folder built with ${BUILD}`);
    if (args.min_new_tokens > args.max_new_tokens) {  // generate() stopped at the max without a word
        throw new UsageError(`--min-new-tokens ${args.min_new_tokens} is more than --max-new-tokens ${args.max_new_tokens}`);
    }
    return args;
}

/** The command that rebuilds `folder`: its checkpoint, precision and EP from build_report.json. */
function rebuild(shown, folder) {
    let options = {};
    try {
        options = JSON.parse(fs.readFileSync(path.join(folder, 'build_report.json'), 'utf8')).options ?? {};
    } catch {
        // no report: the placeholder command below
    }
    const model = options.model ?? 'CHECKPOINT';
    const more = options.model ? ` -p ${options.precision} -e ${options.ep}` : '';
    const others = options.model ? ' (build_report.json lists its other options)' : '';
    return `rebuild it with python -m builder -m ${model}${more} --format transformers.js -o ${shown} --overwrite${others}`;
}

/** Refuses a folder that transformers.js cannot load as a --format transformers.js build. */
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
    if (config && typeof config === 'object' && config['transformers.js_config']) return config['transformers.js_config'];
    if (fs.existsSync(path.join(folder, 'genai_config.json'))) {
        fail(`${shown} is an onnxruntime-genai folder, not a transformers.js one: run it with python scripts/generate.py ${shown}, `
            + `or build one for this script with ${BUILD}`);
    }
    fail(`${shown} is not a transformers.js folder (no config.json with a "transformers.js_config" entry); `
        + `pass a folder built with ${BUILD}`);
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
const built = checkFolder(args.folder, folder);

let transformers;
try {
    transformers = await import('@huggingface/transformers');
} catch (e) {
    if (e?.code !== 'ERR_MODULE_NOT_FOUND') throw e;
    fail(`@huggingface/transformers is not installed: run npm install --ignore-scripts in ${path.dirname(new URL(import.meta.url).pathname)} `
        + '(or bash scripts/setup.sh)');
}
const { AutoModelForCausalLM, AutoTokenizer, Tensor, env } = transformers;

// A local folder only: never the hub.
env.allowRemoteModels = false;
env.localModelPath = path.dirname(folder) + path.sep;
const id = path.basename(folder);

let tokenizer, model;
try {
    tokenizer = await AutoTokenizer.from_pretrained(id);
    model = await AutoModelForCausalLM.from_pretrained(id, { dtype: args.dtype, device: args.device });
} catch (e) {
    if (args.dtype && built.dtype && args.dtype !== built.dtype) {  // rebuilding as it was would not help
        fail(`${args.folder} does not load in transformers.js with --dtype ${args.dtype} (${firstLine(e)}): it holds `
            + `${built.dtype} weights; drop --dtype, or build the ${args.dtype} weights into another folder`);
    }
    fail(`${args.folder} does not load in transformers.js (${firstLine(e)}): a file of it is missing or damaged, `
        + `or --device asks for what it lacks; ${rebuild(args.folder, folder)}`);
}
let ids, tokens;
try {
    ids = args.ids ?? Array.from(tokenizer.encode(args.prompt));
    const input_ids = new Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
    const attention_mask = new Tensor('int64', new BigInt64Array(ids.length).fill(1n), [1, ids.length]);
    const output = await model.generate({
        input_ids, attention_mask, do_sample: false,
        max_new_tokens: args.max_new_tokens, min_new_tokens: args.min_new_tokens,
    });
    tokens = Array.from(output.data, Number);
} catch (e) {
    fail(`${args.folder} does not run in transformers.js (${firstLine(e)}); `
        + rebuild(args.folder, folder));
}
console.log(JSON.stringify({
    dtype: model.sessions.model.config?.dtype ?? args.dtype,
    device: args.device,
    prompt_ids: ids,
    tokens,
    text: tokenizer.decode(tokens.slice(ids.length), { skip_special_tokens: false }),
    encoded_hello: Array.from(tokenizer.encode('Hello world')),
}));
await model.dispose();
