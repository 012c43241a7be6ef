// Prefill and decode of transformers.js folders in Node (onnxruntime-node), side by side.
//
//   node scripts/bench_transformers_js.mjs NAME=DIR [NAME=DIR ...] [--prompt 512] [--new 32] [--rounds 3]
//                                          [--batch 1] [--device cpu]
//
// Each measurement runs in a fresh Node process (so its peak memory is its own): load the folder,
// generate 2 tokens (first-run allocations), then --new tokens from a prompt of --prompt ids; the
// prefill is the time to the first new token, the decode rate the steps after it. The models run
// in turn, their order reversed every other round, and
// each round's times are divided by the first model's, so the ratios pair up what ran together.
// --batch N sends N copies of the prompt, the last N-1 shortened by a quarter (padded on the left).
// Prints one line a measurement and a JSON summary (medians of the paired ratios) last.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const USAGE = 'usage: node scripts/bench_transformers_js.mjs NAME=DIR [NAME=DIR ...] [--prompt N] [--new N] '
    + '[--rounds N] [--batch N] [--device cpu]';

function fail(message) {
    console.error(`error: ${message}`);
    process.exit(2);
}

function parse(argv) {
    const args = { models: [], prompt: 512, new: 32, rounds: 3, batch: 1, device: 'cpu', child: null };
    for (let i = 0; i < argv.length; ++i) {
        const a = argv[i];
        const value = () => {
            if (i + 1 >= argv.length) fail(`${a} needs a value; ${USAGE}`);
            return argv[++i];
        };
        const count = (least) => {
            const text = value();
            if (!/^\d+$/.test(text) || Number(text) < least) fail(`${a} ${text} is not a whole number of ${least} or more`);
            return Number(text);
        };
        if (a === '--help' || a === '-h') {
            console.log(USAGE);
            process.exit(0);
        } else if (a === '--prompt') args.prompt = count(2);
        else if (a === '--new') args.new = count(2);
        else if (a === '--rounds') args.rounds = count(1);
        else if (a === '--batch') args.batch = count(1);
        else if (a === '--device') args.device = value();
        else if (a === '--child') args.child = value();
        else if (a.startsWith('-')) fail(`unknown option ${a}; ${USAGE}`);
        else {
            const [name, dir] = a.split(/=(.*)/s);
            if (!name || !dir) fail(`${a}: pass NAME=DIR, DIR a folder built with --format transformers.js`);
            if (fs.existsSync(path.join(dir, 'genai_config.json')) && !fs.existsSync(path.join(dir, 'config.json'))) {
                fail(`${a}: ${dir} is an onnxruntime-genai folder; this benchmark times --format transformers.js `
                    + 'folders (scripts/bench_genai.py times genai ones)');
            }
            args.models.push({ name, dir: path.resolve(dir) });
        }
    }
    if (!args.child && !args.models.length) fail(`pass NAME=DIR for each folder to time; ${USAGE}`);
    return args;
}

/** One measurement, in this process: {load_s, prefill_s, decode_tok_s, peak_rss_mb}. */
async function measure(dir, args) {
    const require = createRequire(path.join(ROOT, 'examples', 'web', 'package.json'));
    let entry;
    try {
        entry = require.resolve('@huggingface/transformers');
    } catch {
        fail('@huggingface/transformers is not installed: run bash scripts/setup.sh (npm install in examples/web)');
    }
    const { AutoModelForCausalLM, Tensor, env } = await import(pathToFileURL(entry).href);
    const { leftPadded } = await import(pathToFileURL(path.join(ROOT, 'examples', 'web', 'batch.js')).href);
    env.allowRemoteModels = false;
    env.localModelPath = path.dirname(dir) + path.sep;
    let started = performance.now();
    const model = await AutoModelForCausalLM.from_pretrained(dir, { device: args.device });
    const load_s = (performance.now() - started) / 1000;
    const rows = Array.from({ length: args.batch }, (_, r) => {
        const length = r === 0 ? args.prompt : Math.max(1, Math.round(args.prompt * 0.75));
        return Array.from({ length }, (_, i) => ((7 * i + 3 * r) % 400) + 1);
    });
    const batch = leftPadded(rows, 0);
    // generate() hands a streamer the prompt, then each step's new tokens: the times of those calls
    // split the prefill (to the first new token) from the decode steps after it.
    const stamps = [];
    const streamer = { put: () => stamps.push(performance.now()), end: () => {} };
    const generate = (n) => model.generate({
        input_ids: new Tensor('int64', batch.input_ids, batch.dims),
        attention_mask: new Tensor('int64', batch.attention_mask, batch.dims),
        do_sample: false, max_new_tokens: n, min_new_tokens: n, streamer,
    });
    await generate(2);  // first-run allocations out of the way
    stamps.length = 0;
    started = performance.now();
    await generate(args.new);
    const [first, last] = [stamps[1], stamps.at(-1)];  // stamps[0]: the prompt, before any run
    await model.dispose();
    return {
        load_s,
        prefill_s: (first - started) / 1000,
        decode_tok_s: (rows.length * (args.new - 1) * 1000) / (last - first),
        peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    };
}

const args = parse(process.argv.slice(2));
if (args.child) {
    try {
        console.log(JSON.stringify(await measure(args.child, args)));
    } catch (e) {  // uncaught, Node's last stderr line was its version banner, which the parent quoted
        console.error(`error: ${String(e?.message ?? e).split('\n')[0]}`);
        process.exit(1);
    }
    process.exit(0);
}

const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const results = Object.fromEntries(args.models.map((m) => [m.name, []]));
for (let round = 0; round < args.rounds; ++round) {
    const order = round % 2 ? [...args.models].reverse() : args.models;
    for (const model of order) {
        const child = spawnSync(process.execPath, [
            fileURLToPath(import.meta.url), '--child', model.dir, '--prompt', String(args.prompt), '--new', String(args.new),
            '--batch', String(args.batch), '--device', args.device,
        ], { encoding: 'utf8', maxBuffer: 1 << 26 });
        const line = child.stdout.trim().split('\n').at(-1);
        if (child.status !== 0 || !line?.startsWith('{')) {
            const why = (child.stderr.trim().split('\n').filter((l) => l.trim()).at(-1) ?? 'no output').trim().replace(/^error: /, '');
            fail(`${model.name} (${model.dir}) did not run (exit ${child.status}): ${why}`);
        }
        const row = JSON.parse(line);
        results[model.name].push(row);
        console.log(`round ${round + 1} ${model.name}: prefill ${row.prefill_s.toFixed(3)} s, `
            + `decode ${row.decode_tok_s.toFixed(1)} tok/s, peak RSS ${row.peak_rss_mb.toFixed(0)} MB`);
    }
}
const first = args.models[0].name;
const summary = {
    prompt: args.prompt, new: args.new, rounds: args.rounds, batch: args.batch, device: args.device,
    models: Object.fromEntries(args.models.map(({ name, dir }) => {
        const rows = results[name];
        const ratio = (key) => median(rows.map((r, i) => r[key] / results[first][i][key]));
        return [name, {
            folder: dir,
            prefill_s: median(rows.map((r) => r.prefill_s)),
            decode_tok_s: median(rows.map((r) => r.decode_tok_s)),
            peak_rss_mb: median(rows.map((r) => r.peak_rss_mb)),
            [`prefill_time_vs_${first}`]: ratio('prefill_s'),
            [`decode_rate_vs_${first}`]: ratio('decode_tok_s'),
            [`peak_rss_vs_${first}`]: ratio('peak_rss_mb'),
        }];
    })),
};
console.log(JSON.stringify(summary, null, 1));
