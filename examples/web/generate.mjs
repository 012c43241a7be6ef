// Greedy generation from a folder built with --format transformers.js, in Node
// (transformers.js 4 on onnxruntime-node's CPU EP). Prints one JSON line.
//
//   node examples/web/generate.mjs OUT_DIR [--prompt TEXT | --ids 1,2,3] [--max-new-tokens N]
//                                          [--dtype q4] [--device cpu]
//
// --dtype defaults to the one in the folder's config.json (transformers.js_config.dtype).
// The tests pass --ids and --min-new-tokens so that a random model cannot stop early.
import path from 'node:path';
import { AutoModelForCausalLM, AutoTokenizer, Tensor, env } from '@huggingface/transformers';

function parse(argv) {
    const args = { folder: null, prompt: 'Hello', ids: null, max_new_tokens: 16, min_new_tokens: 0, dtype: undefined, device: 'cpu' };
    for (let i = 0; i < argv.length; ++i) {
        const a = argv[i];
        const next = () => argv[++i];
        if (a === '--prompt') args.prompt = next();
        else if (a === '--ids') args.ids = next().split(',').map(Number);
        else if (a === '--max-new-tokens') args.max_new_tokens = Number(next());
        else if (a === '--min-new-tokens') args.min_new_tokens = Number(next());
        else if (a === '--dtype') args.dtype = next();
        else if (a === '--device') args.device = next();
        else if (!args.folder) args.folder = a;
        else throw new Error(`unknown argument ${a}`);
    }
    if (!args.folder) throw new Error('usage: node generate.mjs OUT_DIR [--prompt TEXT | --ids 1,2,3] [--max-new-tokens N]');
    return args;
}

const args = parse(process.argv.slice(2));
const folder = path.resolve(args.folder);
// A local folder only: never the hub.
env.allowRemoteModels = false;
env.localModelPath = path.dirname(folder) + path.sep;
const id = path.basename(folder);

const tokenizer = await AutoTokenizer.from_pretrained(id);
const model = await AutoModelForCausalLM.from_pretrained(id, { dtype: args.dtype, device: args.device });
const ids = args.ids ?? Array.from(tokenizer.encode(args.prompt));
const input_ids = new Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
const attention_mask = new Tensor('int64', new BigInt64Array(ids.length).fill(1n), [1, ids.length]);
const output = await model.generate({
    input_ids, attention_mask, do_sample: false,
    max_new_tokens: args.max_new_tokens, min_new_tokens: args.min_new_tokens,
});
const tokens = Array.from(output.data, Number);
console.log(JSON.stringify({
    dtype: model.sessions.model.config?.dtype ?? args.dtype,
    device: args.device,
    prompt_ids: ids,
    tokens,
    text: tokenizer.decode(tokens.slice(ids.length), { skip_special_tokens: false }),
    encoded_hello: Array.from(tokenizer.encode('Hello world')),
}));
await model.dispose();
