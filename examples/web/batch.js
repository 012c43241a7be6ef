// A batch of prompts for transformers.js generate(), and its rows back out of what it returns;
// shared by generate.mjs (Node) and main.js (the page), as are their reading of a load error and
// the dtypes a folder may hold.

// The dtypes python -m builder writes (builder/formats/transformers_js.py DTYPES): their file
// suffix (transformers.js DEFAULT_DTYPE_SUFFIX_MAPPING) and the build options that make them.
export const DTYPES = {
    fp32: { suffix: '', build: '-p fp32' },
    fp16: { suffix: '_fp16', build: '-p fp16' },
    q4: { suffix: '_q4', build: '-p int4 --io-dtype fp32' },
    q4f16: { suffix: '_q4f16', build: '-p int4 -e webgpu' },
    int8: { suffix: '_int8', build: '-p int8 --io-dtype fp32' },
};

/**
 * The inputs of a batch of prompts (token id lists), padded on the left with `pad` as
 * transformers.js's text-generation pipeline pads one, so each row's new tokens follow its
 * prompt: { input_ids, attention_mask } (BigInt64Array), dims [rows, width].
 */
export function leftPadded(rows, pad) {
    const width = Math.max(...rows.map((ids) => ids.length));
    const input_ids = new BigInt64Array(rows.length * width).fill(BigInt(pad));
    const attention_mask = new BigInt64Array(rows.length * width);
    rows.forEach((ids, r) => {
        input_ids.set(ids.map(BigInt), r * width + width - ids.length);
        attention_mask.fill(1n, r * width + width - ids.length, (r + 1) * width);
    });
    return { input_ids, attention_mask, dims: [rows.length, width] };
}

/**
 * Each row of generate()'s output without its padding: its prompt and the tokens generated after
 * it. generate() stops a batch only when every row's last token is an end token, so a row that
 * ended before the others is cut after its first new end token, where it would have stopped alone.
 */
export function rowsOf(output, rows, eos) {
    const generated = Array.from(output.data, Number);
    const length = output.dims.at(-1);
    const width = Math.max(...rows.map((ids) => ids.length));
    const ends = [eos ?? []].flat();
    return rows.map((ids, r) => {
        const tokens = generated.slice(r * length + width - ids.length, (r + 1) * length);
        const end = tokens.findIndex((t, k) => k >= ids.length && ends.includes(t));
        return { prompt_ids: ids, tokens: end >= 0 ? tokens.slice(0, end + 1) : tokens };
    });
}

/**
 * What of an ONNX Runtime load error says the graph's nodes are newer than the runtime (the folder
 * was built with a higher --target-ort), and whether a MoE node is among them; null otherwise.
 */
export function newerRuntime(message) {
    const found = /(Unrecognized attribute[^)]*|[^(]*is not a registered function\/op|Could not find an implementation for [^)]*)/i
        .exec(message);
    return found ? { what: found[1].trim(), moe: /QMoE|\bMoE\b/.test(message) } : null;
}
