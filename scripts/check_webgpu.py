"""Run tiny builds on the WebGPU EP and compare them with transformers (GPU machine).

    python scripts/check_webgpu.py --json $OUT/webgpu-parity.json [--target-ort 1.27] [--only qwen3]

For each case, two checks against transformers running the same (dequantized) weights:
- `nmse`, `argmax_agree`: logits of a 12-token prefill (`--prompt-tokens`) + 4 decode steps through
  onnxruntime's WebGpuExecutionProvider (plain session, no capture);
- `genai_*`: onnxruntime-genai runs the folder as a user would, its genai_config
  included, so graph capture is on where the build asks for it: 16 greedy tokens (`--new-tokens`) must
  equal transformers' greedy tokens, and the logits behind each genai token are compared
  with transformers' at the same positions (`genai_nmse`, `genai_argmax_agree`);
- `genai_batch_tokens_equal`: a genai batch of two prompts of unequal length (right-padded,
  as genai pads them): each row's 12 greedy tokens equal transformers' for that prompt alone
  (for a hybrid only where its recurrent layers keep the pads out of their state,
  --padded-batches; a capture build's default lets them in, and its row says so).
- `ngram_tokens_equal`, `engine_tokens_equal` (--logits all builds only, the two onnxruntime-genai
  0.18 APIs that need every position): 24 greedy tokens with n-gram speculation (ngram_size 3, a
  repeating prompt) equal transformers', `ngram_drafts_accepted` of them drafted; and og.Engine's
  greedy tokens for the batch's prompts, as one engine's requests, equal transformers' (in a child
  process: on a graph-capture build the Engine crashed its process, so only the capture-off case
  is expected to pass).
- `as_built_*` (int4 and int8 cases): the rows above build at accuracy level 0, where the EP must
  compute what transformers does on the dequantized weights. A user's webgpu build takes level 4
  (int8 activations), so each quantized case is built again at the target's default level
  (`as_built_accuracy_level`), and its logits through a plain WebGPU session (`as_built_nmse`) and
  through genai (`as_built_genai_nmse`) must stay under AS_BUILT_CPU_RATIO times the CPU EP's NMSE on
  the same folder and inputs (`as_built_cpu_nmse`, `as_built_cpu_genai_nmse`: the same int8 rounding
  of the same graph), and under ACTIVATION_QUANTIZED_NMSE (alone where the CPU EP cannot run the
  folder: fused-norm). Tokens are not compared there: int8 activations flip near-ties.
- Long prompts: the tiny checkpoints take 256 positions (the YaRN ones 128); `--max-positions 8192 --prompt-tokens 3000`
  makes them with more, so the checks above run over thousands of positions, past the EP's
  attention tiles and up to the static KV buffers graph capture sizes at max_length (4096 by default).
  The qwen3-0.6b-attention cases have Qwen3-0.6B's 16 query and 8 KV heads of 128.
- Long generations: `--max-positions 8192 --new-tokens 4000` has genai decode 4000 greedy tokens (16
  by default), each a replay of the captured step on a capture build, up to position 4011 of the
  4096-slot buffers. Its prompt stays short, so this runs on SwiftShader too, whose prefill attention
  is wrong from 32 tokens but whose decode steps are right over long pasts
  (docs/packing.md#webgpu-without-a-gpu).
The exit status is 1 when any case fails (an error, tokens that differ where they must equal, or
an as-built NMSE over its bound), each named on stderr; the JSON holds every row either way.
Where tokens part, `genai_first_mismatch` and `genai_mismatch_gap` (per batch row:
`genai_batch_divergence`, the same pair) give the first new token that differs and how far
transformers' logit for its own token was above genai's choice (a near-tie when small).
A batch row that parts from transformers' is run again alone through genai on the same EP:
`genai_batch_rows_equal_alone` (None for rows that did not part) is true where the batch row equals
that run (the pads stayed out of it: the EP's rounding flipped a near-tie), and false where the two
differ (pads reaching the row, or a near-tie that batching rounds the other way). The case fails
either way.
The WebGPU plugin EP is registered when installed (builder/ep_runtime.py). Builds that the
runtime refuses are reported with the error.

With no GPU, `--swiftshader` runs the cases on Chromium's SwiftShader Vulkan driver (a CPU
device; Debian's chromium package ships it, scripts/setup.sh installs that) through the plugin
EP: SwiftShader has no shader-f16, so int4/int8 cases take fp32 activations and fp16 cases are
left out. Slow, and says nothing of speed; the numbers and tokens are the EP's own.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # synthetic checkpoints

from builder.verify import missing_modules, verify_install_command

# Its reference is transformers' and its tiny checkpoints come from support.synthetic (torch); a plain
# install, where --verify's warning sends a webgpu build here, has neither: say so in one line.
if missing := missing_modules(("torch", "transformers", "tokenizers", "onnxruntime_genai")):
    print(
        f"check_webgpu.py: error: it needs {', '.join(missing)}, which a plain install leaves out: run "
        f"bash scripts/setup.sh and then .venv/bin/python scripts/check_webgpu.py, or {verify_install_command()}",
        file=sys.stderr,
    )
    raise SystemExit(2)

from builder import BuilderError, BuildOptions
from builder.kit.genai_config import resolved_max_length
from builder.kit.targets import Target
from builder.pipeline import build_from_flags  # its refusals name the builder's flags
from builder.verify import (
    ACTIVATION_QUANTIZED_NMSE,
    REPEATING_PROMPT,
    compare,
    dequantized_reference,
    genai_batch_greedy,
    genai_greedy_logits,
    genai_speculative_greedy,
    onnx_logits,
    onnx_session,
    torch_step_logits,
    transformers_greedy,
    verify_build,
)
from support.swiftshader import swiftshader_env, swiftshader_icd
from support.synthetic import TINY_CONFIGS, make_checkpoint, text_config

CASES = [  # (tiny config, precision, extra build options)
    ("qwen3", "int4", {}),
    ("qwen3", "fp16", {}),
    ("qwen3", "fp32", {}),
    ("qwen3", "int8", {}),
    ("qwen3", "int4", {"graph_capture": "off"}),
    ("qwen3", "int4", {"qkv_packing": "separate", "mlp_packing": "separate", "silu": "sigmoid-mul"}),
    ("qwen3", "int4", {"qkv_packing": "packed-split", "mlp_packing": "packed"}),
    ("qwen3", "int4", {"qkv_packing": "fused-norm"}),
    ("qwen3", "fp32", {"logits": "all"}),  # genai's Engine and speculation read every position
    # og.Engine runs no capture build (it crashed on one): capture off (its int64 inputs are the default)
    ("qwen3", "int4", {"logits": "all", "graph_capture": "off"}),
    ("llama", "int4", {}),
    # At level 4 (as_built_*), blocks of 128 took the EP's int8-activation (DP4A) kernel on an H100 where
    # the tiny cases in blocks of 32 did not; in blocks of 256 the nodes whose in-width (128) it computes
    # wrong take level 0 and down_proj (256) keeps 4 (docs/packing.md).
    ("llama", "int4", {"block_size": 128}),
    ("llama", "int4", {"block_size": 256}),
    ("qwen3-yarn", "int4", {}),  # YaRN: cos/sin caches scaled by its attention factor, under capture
    ("qwen3-untied", "int4", {}),
    ("qwen2", "int4", {}),
    ("mistral", "int4", {}),
    ("gemma3", "int4", {}),  # fp16 blocks, fp32 residual stream (its fp16 stream overflows on real checkpoints)
    ("gemma3", "int4", {"io_dtype": "fp32"}),
    ("gemma3", "int4", {"residual_dtype": "fp16"}),  # the all-fp16 graph
    ("gemma3", "fp16", {}),
    ("mistral", "fp32", {}),
    ("gemma3", "fp32", {}),
    ("gemma3-vl", "int4", {}),  # Gemma 3 4B-27B's text model (Gemma3ForConditionalGeneration)
    ("gemma3-vl", "fp32", {}),
    ("qwen3-moe", "int4", {}),
    ("qwen3_5", "fp32", {}),
    ("qwen3_5", "int4", {}),
    ("qwen3_5", "fp32", {"qkv_packing": "fused-norm"}),
    ("qwen3_5", "int4", {"qkv_packing": "fused-norm"}),
    ("qwen3_5", "fp32", {"padded_batches": "on"}),  # a batch's pads kept out of the recurrent state
    ("qwen3_5", "int4", {"padded_batches": "on"}),
    ("qwen3_5", "int4", {"qkv_packing": "fused-norm", "padded_batches": "on"}),
    ("qwen3_5-text", "int4", {"padded_batches": "on"}),
    ("qwen3_5-text", "int4", {}),
    ("qwen3_5-moe", "int4", {}),
    ("qwen3-next", "int4", {}),
    ("qwen3-0.6b-attention", "int4", {}),  # Qwen3-0.6B's attention heads, for --max-positions runs
    ("qwen3-0.6b-attention", "fp16", {}),
]
PROMPT = [5, 17, 42, 99, 120, 7, 64, 300]
# as_built_checks: how far over the CPU EP's NMSE on the same level-4 folder and inputs the EP's may go.
# Measured (session 43): on an H100 (fp16 activations) every quantized case at 0.01-0.47x; on SwiftShader
# (fp32 activations, where the EP quantizes them at every step) up to 2.7x plainly (Mistral) and 4.7x
# through genai (text Qwen3.5, mostly from one sensitive position). The EP's wrong level-4 kernel
# in blocks of 256 gave 1,100-3,800x (NMSE 1.5-1.9 against the CPU EP's 4.9e-4 to 1.6e-3).
AS_BUILT_CPU_RATIO = 10
EP = "WebGpuExecutionProvider"
BATCH = ([5, 17, 99, 120, 33, 8, 41, 200, 201, 202], [7, 300, 12])
# Every new token genai generates after the prompt (16 greedy; the batch's rows take 12).
GENAI_NEW_TOKENS = 16


def divergence(reference, prompt: list[int], ours: list[int], theirs: list[int]) -> tuple:
    """(index of the first new token where genai left transformers, or None; how many logits
    transformers preferred its own token there over genai's). A gap near the quantization noise
    is a near-tie that any rounding can flip; a large one is a wrong graph."""
    new = len(prompt)
    index = next((i for i, (a, b) in enumerate(zip(ours[new:], theirs[new:])) if a != b), None)
    if index is None:
        return None, None
    logits = torch_step_logits(reference, theirs, new)[index]
    return index, round(float(logits[theirs[new + index]] - logits[ours[new + index]]), 5)


def every_position_apis(
    folder: Path, reference, batch: list[list[int]], batch_expected: list[list[int]], prompt_tokens: int
) -> dict:
    """genai's n-gram speculation and og.Engine on a --logits all build; each failure is its row's."""
    row = {}
    try:
        if len(REPEATING_PROMPT) > prompt_tokens:  # a shorter one would not repeat
            raise RuntimeError(f"not run: its prompt has {len(REPEATING_PROMPT)} tokens (--prompt-tokens)")
        tokens, stats = genai_speculative_greedy(folder, REPEATING_PROMPT, 24, ngram_size=3, provider="webgpu")
        row["ngram_tokens_equal"] = tokens == transformers_greedy(reference, REPEATING_PROMPT, 24)
        row["ngram_drafts_accepted"] = f"{stats['draft_tokens_accepted']}/{stats['draft_tokens_evaluated']}"
    except Exception as e:
        row["ngram_error"] = str(e).splitlines()[0][:300]
    try:
        row["engine_tokens_equal"] = engine_in_child(folder, batch, 12) == batch_expected
    except Exception as e:
        row["engine_error"] = str(e).splitlines()[0][:300]
    return row


def as_built_in_child(case_args: list[str], new_tokens: int = GENAI_NEW_TOKENS) -> dict:
    """as_built_checks of the case these arguments name, in a process of its own: its plain WebGPU
    session must not follow this process's genai (see run_cases). Its time limit grows with the
    tokens genai decodes there: SwiftShader took up to 200 ms a step by token 1500, and the CPU EP
    then steps through the same tokens."""
    command = [sys.executable, __file__, *case_args, "--as-built-part"]
    limit = 600 + max(0, new_tokens - GENAI_NEW_TOKENS)
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"as_built_error": f"no row after {limit} s"}
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode or not lines:
        why = next((ln for ln in reversed(child.stderr.splitlines()) if ln.strip()), "no message")
        return {"as_built_error": f"exit {child.returncode}: {why[:300]}"}
    return json.loads(lines[-1])


def engine_in_child(folder: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """og.Engine's greedy tokens, from a child process: on a graph-capture build genai 0.18's Engine
    took its process down (SIGSEGV or SIGABRT, on SwiftShader), and the row must still be written."""
    code = (
        "import json, sys; from builder.verify import genai_engine_greedy; "
        "print(json.dumps(genai_engine_greedy(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), 'webgpu')))"
    )
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    child = subprocess.run(
        [sys.executable, "-c", code, str(folder), json.dumps(prompts), str(new_tokens)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        timeout=300,
    )
    if child.returncode < 0:
        raise RuntimeError(f"the process died of {signal.Signals(-child.returncode).name}")
    if child.returncode:
        raise RuntimeError(next((ln for ln in reversed(child.stderr.splitlines()) if ln.strip()), "no message"))
    lines = [line for line in child.stdout.splitlines() if line.startswith("[")]
    if not lines:
        raise RuntimeError("the engine's process printed no tokens")
    return json.loads(lines[-1])


def with_positions(config: dict, positions: int | None) -> dict:
    """A tiny config whose model takes `positions` positions (its own where None)."""
    if positions is None:
        return config
    config = copy.deepcopy(config)
    text_config(config)["max_position_embeddings"] = positions
    return config


def positions_needed(
    prompt_tokens: int, max_positions: int | None, configs: set[str], new_tokens: int = GENAI_NEW_TOKENS
) -> str | None:
    """Why a run's prompts would not fit the models of these tiny configs (None where they do): the
    prompt and genai's new tokens must fit the webgpu builds' max_length, their context up to 4096."""
    if max_positions:
        room, where = resolved_max_length(None, max_positions), f"--max-positions {max_positions}"
    else:
        positions, config = min((text_config(TINY_CONFIGS[c])["max_position_embeddings"], c) for c in configs)
        room, where = resolved_max_length(None, positions), f"{config}'s {positions} positions"
    if prompt_tokens + new_tokens <= room:
        return None
    fix = "" if max_positions else "; pass --max-positions to make the checkpoints with more"
    return (
        f"--prompt-tokens {prompt_tokens} and genai's {new_tokens} new tokens do not fit the builds' "
        f"max_length of {room} ({where}){fix}"
    )


def case_options(
    work: Path, config: str, precision: str, extra: dict, target_ort: str | None, max_positions: int | None = None
) -> BuildOptions:
    """A case's build at accuracy level 0, its tiny checkpoint made in `work` if not there yet."""
    ckpt = work / config
    if not ckpt.exists():
        make_checkpoint(ckpt, with_positions(TINY_CONFIGS[config], max_positions))
    name = "-".join([config, precision] + [f"{k}={v}" for k, v in extra.items()] + [str(target_ort)])
    return BuildOptions(
        model=str(ckpt),
        precision=precision,
        ep="webgpu",
        target_ort=target_ort,
        output=str(work / name),
        accuracy_level=0,
        **extra,
    )


def run_case(
    work: Path,
    config: str,
    precision: str,
    extra: dict,
    target_ort: str | None,
    prompt_tokens: int = 12,
    max_positions: int | None = None,
    new_tokens: int = GENAI_NEW_TOKENS,
) -> dict:
    """One case's row at accuracy level 0. prompt_tokens: the plain session's prompt length, and a
    cap on genai's prompts; new_tokens: genai's greedy tokens on its single prompt."""
    options = case_options(work, config, precision, extra, target_ort, max_positions)
    ckpt = Path(options.model)
    row = {"config": config, "precision": precision, **extra, "target_ort": target_ort}
    # The onnxruntime that ran the row: a 1.27 build's check must not pass on the plugin EP's runtime.
    row["onnxruntime"] = onnxruntime.__version__
    row["prompt_tokens"] = prompt_tokens
    row["genai_new_tokens"] = new_tokens
    if max_positions:
        row["max_positions"] = max_positions
    try:
        result = build_from_flags(options, show_progress=False)
        layout = result.report["layout"]
        row["layout"] = f"{layout['qkv_packing']}/{layout['mlp_packing']}/{layout['silu']}"
        row["runtime"] = result.report["target"]["runtime"]
        row["graph_capture"] = result.report["target"]["graph_capture"]
        row["nodes"] = result.report["nodes"]["total"]
        parity = verify_build(
            result.output,
            ckpt,
            options,
            prompt_length=prompt_tokens,
            decode_steps=4,
            provider=EP,
        )
        row.update(parity.as_dict())
        prompt, batch = genai_prompts(prompt_tokens)
        ours, logits = genai_greedy_logits(result.output, prompt, new_tokens, provider="webgpu")
        io_dtype = np.dtype(result.report["target"]["io_dtype"])  # the scales' dtype, as built
        reference = dequantized_reference(ckpt, options, io_dtype=io_dtype)
        theirs = transformers_greedy(reference, prompt, new_tokens)
        row["genai_tokens_equal"] = ours == theirs
        row["genai_first_mismatch"], row["genai_mismatch_gap"] = divergence(reference, prompt, ours, theirs)
        genai = compare(torch_step_logits(reference, ours, len(prompt)), logits)
        row["genai_nmse"], row["genai_argmax_agree"] = genai.nmse, genai.argmax_agree
        if result.report["target"]["recurrent_padding"] == "absorbed":
            row["genai_batch"] = "not checked: the recurrent state takes in the pads (--padded-batches)"
        else:
            row.update(batch_checks(result, reference, batch, prompt_tokens))
    except Exception as e:
        row["error"] = str(e).splitlines()[0][:300]
    return row


def batch_checks(result, reference, batch: list[list[int]], prompt_tokens: int) -> dict:
    """genai's batch of unequal prompts against transformers' rows, and on a --logits all build the
    APIs that read every position."""
    _, rows = genai_batch_greedy(result.output, batch, 12, provider="webgpu")
    expected = [transformers_greedy(reference, p, 12)[len(p) :] for p in batch]
    row = {"genai_batch_tokens_equal": rows == expected}
    row["genai_batch_divergence"] = [divergence(reference, p, p + r, p + e) for p, r, e in zip(batch, rows, expected)]
    if rows != expected:
        row["genai_batch_rows_equal_alone"] = [
            None if r == e else genai_greedy_logits(result.output, p, len(r), provider="webgpu")[0][len(p) :] == r
            for p, r, e in zip(batch, rows, expected)
        ]
    if result.report["target"]["logits"] == "all":
        row.update(every_position_apis(result.output, reference, batch, expected, prompt_tokens))
    return row


def as_built_checks(options: BuildOptions, prompt_tokens: int, new_tokens: int = GENAI_NEW_TOKENS) -> dict:
    """The quantized case again at the target's own accuracy level, as a user builds it. The row
    above is at level 0, where the EP computes what transformers does on the dequantized weights
    and tokens must equal; level 4 (webgpu's default) quantizes activations to int8, which moves
    near-tied tokens, so here the logits are held to the CPU EP's on the same folder (the same
    quantization of the same graph) and to ACTIVATION_QUANTIZED_NMSE. Level 4 in blocks of 256
    gave logits unrelated to the model's on the EP alone (docs/packing.md), which level 0 cannot show."""
    options = dataclasses.replace(options, accuracy_level=None, output=f"{options.output}-as-built")
    ckpt = Path(options.model)
    row = {}
    try:
        result = build_from_flags(options, show_progress=False)
        level = result.report["target"]["accuracy_level"]
        row["as_built_accuracy_level"] = level
        if level == 0:
            return row  # the row above is the default build's
        webgpu = verify_build(result.output, ckpt, options, prompt_length=prompt_tokens, decode_steps=4, provider=EP)
        row["as_built_nmse"], row["as_built_argmax_agree"] = webgpu.nmse, webgpu.argmax_agree
        prompt, _ = genai_prompts(prompt_tokens)
        ours, logits = genai_greedy_logits(result.output, prompt, new_tokens, provider="webgpu")
        io_dtype = np.dtype(result.report["target"]["io_dtype"])
        reference = dequantized_reference(ckpt, options, io_dtype=io_dtype)
        expected = torch_step_logits(reference, ours, len(prompt))
        row["as_built_genai_nmse"] = compare(expected, logits).nmse
        try:  # the CPU EP on the same inputs: the plain session's, then genai's tokens one step at a time
            cpu = verify_build(result.output, ckpt, options, prompt_length=prompt_tokens, decode_steps=4)
            row["as_built_cpu_nmse"] = cpu.nmse
            steps = onnx_logits(onnx_session(result.output), np.array([prompt]), ours[len(prompt) : -1])
            row["as_built_cpu_genai_nmse"] = compare(expected, [x.reshape(-1, x.shape[-1])[-1] for x in steps]).nmse
        except Exception as e:  # fused-norm's GroupQueryAttention has no CPU kernel: the absolute bound alone
            row["as_built_cpu_error"] = str(e).splitlines()[0][:300]
    except Exception as e:
        row["as_built_error"] = str(e).splitlines()[0][:300]
    return row


def genai_prompts(prompt_tokens: int) -> tuple[list[int], list[list[int]]]:
    """genai's prompt and batch: the fixed short ones, cut to prompt_tokens; past 12 tokens, a
    prompt of prompt_tokens random ones and a batch of it and its first half, so a GPU run can
    check prefill attention over several tiles through genai as well."""
    if prompt_tokens <= 12:
        return PROMPT[:prompt_tokens], [list(p[:prompt_tokens]) for p in BATCH]
    # ids 10..399: ordinary tokens of every tiny tokenizer, none of them a pad, bos or eos id
    prompt = [int(t) for t in np.random.default_rng(7).integers(10, 400, size=prompt_tokens)]
    return prompt, [prompt, prompt[: prompt_tokens // 2 + 1]]


def without_f16(cases: list) -> list:
    """The cases an adapter without shader-f16 runs: fp32 activations for int4/int8, no fp16
    builds, each resulting build once."""
    kept, seen = [], set()
    for index, (config, precision, extra) in enumerate(cases):
        if precision == "fp16":
            continue
        if precision in ("int4", "int8"):
            extra = {**extra, "io_dtype": "fp32"}
            extra.pop("residual_dtype", None)  # fp32 activations keep the residual stream in fp32
        key = (config, precision, tuple(sorted(extra.items())))
        if key not in seen:
            seen.add(key)
            kept.append((index, config, precision, extra))
    return kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    parser.add_argument("--target-ort", default=None, help="Build every case for this runtime (e.g. 1.27).")
    parser.add_argument("--only", action="append", help="Run only these tiny configs.")
    parser.add_argument(
        "--swiftshader",
        action="store_true",
        help="Run on Chromium's SwiftShader Vulkan (CPU; no GPU needed): fp32 activations, no fp16 cases.",
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=12,
        help="The plain session's prompt length (default 12; its tokens are random), and a cap on "
        "genai's prompts (8 and 10 tokens; n-gram drafting, whose prompt has 11, is left out below "
        "that); above 12, genai's prompt and longer batch row have this many random tokens too, "
        "the shorter row half. The tiny models take 256 positions, the YaRN ones 128 (--max-positions). On SwiftShader "
        "onnxruntime's "
        "WebGPU prefill attention goes wrong from 32 tokens on the plugin EP and from 5 on onnxruntime-webgpu 1.27.",
    )
    parser.add_argument(
        "--max-positions",
        type=int,
        help="Make the tiny checkpoints with this many positions (max_position_embeddings; default their "
        "own), for --prompt-tokens or --new-tokens in the thousands. The builds' max_length is that, up to 4096.",
    )
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=GENAI_NEW_TOKENS,
        help=f"genai's greedy tokens on its single prompt (default {GENAI_NEW_TOKENS}), each compared with "
        "transformers'; thousands (with --max-positions) decode through the captured step up to the end of "
        "the KV buffers. The batch keeps 12.",
    )
    parser.add_argument(
        "--as-built",
        choices=("on", "off"),
        default="on",
        help="on (default): check each int4 and int8 case at the target's default accuracy level too, as "
        "a user builds it (the as_built_* keys); off: at accuracy level 0 only, one build a case.",
    )
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--as-built-part", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        config, precision, extra = CASES[args.case]
        if args.swiftshader:
            extra = next((e for i, _, _, e in without_f16(CASES) if i == args.case), None)
            if extra is None:
                print(
                    f"error: --swiftshader runs no case {args.case} (an fp16 build, or the same build as an "
                    "earlier case once fp32 activations are set)",
                    file=sys.stderr,
                )
                return 2
        if args.as_built_part:
            options = case_options(Path(args.work), config, precision, extra, args.target_ort, args.max_positions)
            print(json.dumps(as_built_checks(options, args.prompt_tokens, args.new_tokens)))
            return 0
        row = run_case(
            Path(args.work),
            config,
            precision,
            extra,
            args.target_ort,
            args.prompt_tokens,
            args.max_positions,
            args.new_tokens,
        )
        if args.as_built == "on" and precision in ("int4", "int8") and "error" not in row:
            row.update(as_built_in_child(sys.argv[1:], args.new_tokens))
        print(json.dumps(row))
        return 0
    unknown = sorted(set(args.only or ()) - {config for config, _, _ in CASES})
    if unknown:
        names = ", ".join(sorted({c for c, _, _ in CASES}))
        print(f"error: --only {unknown[0]} names no case; cases: {names}", file=sys.stderr)
        return 2
    # Each was every case's error, a build each, and the run then blamed WebGPU: "no case ran on WebGPU".
    if args.prompt_tokens < 1:
        print("error: --prompt-tokens must be at least 1", file=sys.stderr)
        return 2
    if args.max_positions is not None and args.max_positions < 1:
        print("error: --max-positions must be at least 1", file=sys.stderr)
        return 2
    if args.new_tokens < 1:
        print("error: --new-tokens must be at least 1", file=sys.stderr)
        return 2
    configs = {config for config, _, _ in CASES if not args.only or config in args.only}
    if why := positions_needed(args.prompt_tokens, args.max_positions, configs, args.new_tokens):
        print(f"error: {why}", file=sys.stderr)
        return 2
    if args.target_ort is not None:
        try:
            options = BuildOptions(model=str(REPO), precision="int4", ep="webgpu", target_ort=args.target_ort)
            Target.from_options(options.validated())
        except BuilderError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    cases = without_f16(CASES) if args.swiftshader else [(i, *case) for i, case in enumerate(CASES)]
    env = None
    if args.swiftshader:
        icd = swiftshader_icd()
        if icd is None or not icd.is_file():
            print(
                f"error: --swiftshader: no vk_swiftshader_icd.json found ({icd or 'no Chromium'}); install chromium "
                "(Debian's package ships SwiftShader) or set SWIFTSHADER_ICD to one",
                file=sys.stderr,
            )
            return 2
        env = swiftshader_env(icd)
    if args.json:  # found unwritable only after the whole run, its rows lost
        try:
            Path(args.json).write_text("[]")
        except OSError as e:
            print(f"error: --json {args.json}: {e.strerror or e}; pass a file in an existing folder", file=sys.stderr)
            return 2
    # Each case's build is kept in here until the run ends (tens of MB a case, GBs in all); a
    # `timeout` or Ctrl-C removes it too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="check_webgpu-"))
    try:
        return run_cases(args, cases, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_cases(args, cases, work: Path, env) -> int:
    rows, failed = [], []
    for i, config, precision, extra in cases:
        if args.only and config not in args.only:
            continue
        # One process per case: with the plugin EP, a second plain onnxruntime session in a
        # process where onnxruntime-genai had opened the EP fell back to the CPU (GPU machine,
        # 2026-12-03), and the check must not mix up the two.
        command = [sys.executable, __file__, "--case", str(i), "--work", str(work)]
        if args.target_ort:
            command += ["--target-ort", args.target_ort]
        command += ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
        command += ["--as-built", args.as_built]
        if args.max_positions:
            command += ["--max-positions", str(args.max_positions)]
        if args.swiftshader:
            command.append("--swiftshader")
        child = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
        row = (
            json.loads(lines[-1])
            if lines
            else {
                "config": config,
                "precision": precision,
                **extra,
                "error": f"exit {child.returncode}: {child.stderr[-300:]}",
            }
        )
        rows.append(row)
        if why := row_failures(row):
            name = "-".join([config, precision, *(f"{k}={v}" for k, v in extra.items())])
            failed.append((name + (f" (target ORT {args.target_ort})" if args.target_ort else ""), why))
        print(json.dumps(row), flush=True)
        if args.json:  # written as it goes: a run stopped at its time limit keeps what it did
            Path(args.json).write_text(json.dumps(rows, indent=2))
    if rows and all("error" in row for row in rows):  # no WebGPU runtime, say: nothing was checked
        print(f"error: no case ran on WebGPU ({rows[0]['error'][:200]})", file=sys.stderr)
        return 1
    if failed:  # a run whose tokens differ is no pass, whatever the other rows did
        for name, why in failed:
            print(f"FAILED {name}: {'; '.join(why)}", file=sys.stderr)
        print(f"error: {len(failed)} of {len(rows)} case(s) failed their check", file=sys.stderr)
        return 1
    return 0


def row_failures(row: dict) -> list[str]:
    """What a row failed of the checks the docstring promises (empty: it passed)."""
    why = [f"error: {row['error'][:200]}"] if "error" in row else []
    for key, what in (
        ("genai_tokens_equal", "genai's greedy tokens differ from transformers'"),
        ("genai_batch_tokens_equal", "genai's batch rows differ from transformers'"),
        ("ngram_tokens_equal", "n-gram speculation's tokens differ from transformers'"),
    ):
        if row.get(key) is False:
            why.append(what)
    # og.Engine crashed its process on a capture build (see the docstring): expected to pass only without.
    if row.get("engine_tokens_equal") is False and not row.get("graph_capture"):
        why.append("og.Engine's tokens differ from transformers'")
    if "as_built_error" in row:
        why.append(f"as built (default accuracy level): {row['as_built_error'][:200]}")
    for key, cpu_key in (("as_built_nmse", "as_built_cpu_nmse"), ("as_built_genai_nmse", "as_built_cpu_genai_nmse")):
        if key not in row:
            continue
        limit, bound = ACTIVATION_QUANTIZED_NMSE, f"{ACTIVATION_QUANTIZED_NMSE} (the CPU EP cannot run the folder)"
        if cpu_key in row:
            limit = min(limit, AS_BUILT_CPU_RATIO * row[cpu_key])
            bound = f"{limit:.3g} ({AS_BUILT_CPU_RATIO}x the CPU EP's {row[cpu_key]:.3g} on the same folder "
            bound += f"and inputs, at most {ACTIVATION_QUANTIZED_NMSE})"
        if not row[key] < limit:  # NaN fails too
            why.append(f"{key} {row[key]:.3g} at accuracy level {row['as_built_accuracy_level']} is over {bound}")
    return why


if __name__ == "__main__":
    sys.exit(main())
