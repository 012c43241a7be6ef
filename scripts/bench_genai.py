"""Time prefill and decode of built model folders through onnxruntime-genai, interleaved.

    python scripts/bench_genai.py NAME=DIR [NAME=DIR ...] --prompt 128 --new 64 --rounds 5

Every model runs on the provider its folder was built for (--provider runs them all on another;
folders built for different providers need it).

Every round runs every model once, in a shuffled order, so drift of the
machine (clocks, other load) hits all models alike; the report gives medians
and the ratio of each model to the first. Models that fail to load are
reported as such (with the error), not dropped silently, and the exit status is 1.
Each round that ends is a line on stderr; the table goes to stdout.

On webgpu every timed run is a process of its own (--process-per-run, the default
there): onnxruntime-genai creates one WebGPU context per process, with the global
provider options (maxNumPendingDispatches, validationMode, ...) of the first model
it loads, and keeps it until exit, so in one process every later model would run
with the first one's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from builder.ep_runtime import folder_provider
from builder.kit.options import EPS


def load(path: str, provider: str):
    import onnxruntime_genai as og

    from builder.ep_runtime import genai_model  # registers the WebGPU plugin EP when installed

    return genai_model(og, path, provider)


def run_once(
    model, prompt_len: int, new_tokens: int, vocab: int = 400, max_length: int | None = None
) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) for one greedy generation.

    max_length: the generator's max_length (the KV buffers' size); default prompt + new.
    Generation stops after new_tokens either way.
    """
    import onnxruntime_genai as og

    prompt = [(7 * i + 3) % vocab + 1 for i in range(prompt_len)]
    params = og.GeneratorParams(model)
    total = prompt_len + new_tokens
    if max_length == -1:  # the folder's own search.max_length sizes the KV buffers
        params.set_search_options(do_sample=False, min_length=total)
    else:
        params.set_search_options(do_sample=False, max_length=max(max_length or total, total), min_length=total)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(prompt)
    generator.generate_next_token()  # the first token closes the prefill
    first = time.perf_counter()
    steps = 0
    while steps < new_tokens - 1 and not generator.is_done():
        generator.generate_next_token()
        steps += 1
    end = time.perf_counter()
    return first - start, steps / (end - first) if steps else float("nan")


def bench(
    models: dict[str, str],
    provider: str,
    prompt_len: int,
    new_tokens: int,
    rounds: int,
    warmup: int = 1,
    reload: bool = True,
    max_length: int | None = None,
    process_per_run: bool | None = None,
) -> dict:
    """Interleaved timing of every model; see the module docstring.

    reload: load every model afresh for each timed run. On the 2-core machine one
    session of a model stayed 2-5% faster or slower than another session of the very
    same files for its whole life (8/8 rounds), so timings of long-lived sessions
    compare session placement as much as models. Fresh sessions average that out.
    """
    if process_per_run is None:  # see the module docstring
        process_per_run = provider == "webgpu"
    if process_per_run:
        return bench_in_processes(models, provider, prompt_len, new_tokens, rounds, max_length)
    errors = {}
    loaded = {}
    for name, path in models.items():
        try:
            loaded[name] = load(path, provider)
        except Exception as e:  # a model that does not load is a result, not a crash
            errors[name] = str(e).splitlines()[0][:300]
    names = list(loaded)
    samples = {name: {"prefill_s": [], "decode_tok_s": []} for name in names}
    # A seeded shuffle per round varies each model's position and predecessor.
    rng = random.Random(0)
    for r in range(warmup + rounds):
        if r:  # a real-size model takes minutes a round, in silence
            progress(r - warmup, rounds, names, errors)
        for name in rng.sample(names, len(names)):
            try:
                if reload and r >= warmup:
                    loaded[name] = None  # free the old session before the new one is made
                    loaded[name] = load(models[name], provider)
                    run_once(loaded[name], 16, 4, max_length=max_length)  # first-run allocations out of the timed run
                prefill, decode = run_once(loaded[name], prompt_len, new_tokens, max_length=max_length)
            except Exception as e:  # a model that fails to run is a result too; the others go on
                errors[name] = str(e).splitlines()[0][:300]
                names.remove(name)
                samples.pop(name)
                loaded.pop(name, None)
                continue
            if r >= warmup:
                samples[name]["prefill_s"].append(prefill)
                samples[name]["decode_tok_s"].append(decode)
    progress(rounds, rounds, names, errors)
    return report(models, provider, prompt_len, new_tokens, rounds, max_length, samples, errors, reload)


def progress(done: int, rounds: int, names: list[str], errors: dict) -> None:
    """A line on stderr as each round ends (done 0: the warm-up), beside the table on stdout."""
    what = "warm-up round" if done == 0 else f"round {done} of {rounds}"
    failed = f"; failed: {', '.join(errors)}" if errors else ""
    print(f"[bench] {what} done: {len(names)} model(s) ran{failed}", file=sys.stderr, flush=True)


def run_in_process(path: str, provider: str, prompt_len: int, new_tokens: int, max_length: int | None):
    """(prefill seconds, decode tokens/s) of one run in a fresh Python process; raises on failure."""
    command = [sys.executable, __file__, f"child={path}", "--child", "--provider", provider]
    command += ["--prompt", str(prompt_len), "--new", str(new_tokens)]
    if max_length is not None:
        command += ["--max-length", str(max_length)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit {done.returncode}: {tail}")
    result = json.loads(lines[-1])
    return result["prefill_s"], result["decode_tok_s"]


def bench_in_processes(models, provider, prompt_len, new_tokens, rounds, max_length) -> dict:
    errors = {}
    names = list(models)
    samples = {name: {"prefill_s": [], "decode_tok_s": []} for name in names}
    rng = random.Random(0)
    for r in range(rounds):
        if r:
            progress(r, rounds, [n for n in names if n not in errors], errors)
        for name in rng.sample(names, len(names)):
            if name in errors:
                continue
            try:
                prefill, decode = run_in_process(models[name], provider, prompt_len, new_tokens, max_length)
            except Exception as e:
                errors[name] = str(e).splitlines()[0][:300]
                samples.pop(name)
                continue
            samples[name]["prefill_s"].append(prefill)
            samples[name]["decode_tok_s"].append(decode)
    progress(rounds, rounds, [n for n in names if n not in errors], errors)
    return report(models, provider, prompt_len, new_tokens, rounds, max_length, samples, errors, True, True)


def report(models, provider, prompt_len, new_tokens, rounds, max_length, samples, errors, reload, processes=False):
    names = [name for name in models if name in samples]
    results = {}
    for name in names:
        s = samples[name]
        results[name] = {
            "prefill_ms_median": 1000 * statistics.median(s["prefill_s"]),
            "decode_tok_s_median": statistics.median(s["decode_tok_s"]),
            "prefill_ms": [round(1000 * v, 2) for v in s["prefill_s"]],
            "decode_tok_s": [round(v, 2) for v in s["decode_tok_s"]],
        }
    if names:
        add_ratios(results, names[0])
    return {
        "provider": provider,
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "max_length": max_length,
        "fresh_session_per_run": reload,
        "process_per_run": processes,
        "models": models,
        "results": results,
        "load_errors": errors,  # failed to load or to run
    }


def add_ratios(results: dict, first: str) -> None:
    """Ratios to the first model. The paired ratio (median over rounds of this round's
    ratio) cancels drift that hits both models within a round; medians of each model
    alone do not, and on a noisy machine the two can disagree."""
    base = results[first]
    for r in results.values():
        r["decode_vs_first"] = r["decode_tok_s_median"] / base["decode_tok_s_median"]
        r["prefill_vs_first"] = r["prefill_ms_median"] / base["prefill_ms_median"]
        paired = [a / b for a, b in zip(r["decode_tok_s"], base["decode_tok_s"])]
        r["decode_paired_vs_first"] = statistics.median(paired)
        r["decode_rounds_faster_than_first"] = f"{sum(p > 1 for p in paired)}/{len(paired)}"


def markdown(report: dict) -> str:
    lines = [
        f"provider {report['provider']}, prompt {report['prompt_tokens']} tokens, "
        f"{report['new_tokens']} new tokens, {report['rounds']} interleaved rounds (medians)",
        "",
        "| model | decode tok/s | vs first | paired vs first | rounds faster | prefill ms | vs first |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"| {name} | {r['decode_tok_s_median']:.1f} | {r['decode_vs_first']:.3f} | "
            f"{r['decode_paired_vs_first']:.3f} | {r['decode_rounds_faster_than_first']} | "
            f"{r['prefill_ms_median']:.1f} | {r['prefill_vs_first']:.3f} |"
        )
    for name, error in report["load_errors"].items():
        lines.append(f"| {name} | failed to load or run: {error} | | | | | |")
    return "\n".join(lines)


def built_for(models: dict[str, str], parser: argparse.ArgumentParser) -> str:
    """The provider the folders were built for; one whose genai_config.json cannot be read fails in
    the table instead, as with --provider."""
    providers = {}
    for name, folder in models.items():
        try:
            providers[name] = folder_provider(folder)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
            continue
    if len(set(providers.values())) > 1:
        built = ", ".join(f"{name}={provider}" for name, provider in providers.items())
        parser.error(f"the folders were built for different providers ({built}); pass --provider to run all on one")
    return next(iter(providers.values()), "cpu")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="NAME=DIR")
    parser.add_argument(
        "--provider",
        choices=EPS,
        help="Run every model on this provider (default: the one the folders were built for).",
    )
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--keep-loaded",
        action="store_true",
        help="Time long-lived sessions instead of a fresh session per run (faster, noisier).",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="Generator max_length (KV buffer size); default prompt + new tokens; "
        "-1: the folder's genai_config search.max_length.",
    )
    parser.add_argument(
        "--process-per-run",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Run every timed generation in a fresh process (default: on for webgpu, see above).",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="Write the raw results here.")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1 (a median needs one)")
    if args.prompt < 1:
        parser.error("--prompt must be at least 1 token")
    if args.new < 2:  # the first new token closes the prefill; decode speed is timed over the rest
        parser.error("--new must be at least 2 tokens: the first closes the prefill, the decode speed times the rest")
    if args.max_length is not None and args.max_length < 1 and args.max_length != -1:  # ran as if not given
        parser.error(f"--max-length {args.max_length}: pass a length of 1 or more, or -1 for the folder's own")
    bad = [m for m in args.models if not m.partition("=")[0] or not m.partition("=")[2]]
    if bad:
        parser.error(f"{bad[0]!r} is not NAME=DIR; pass each model as a name and a built folder, e.g. a=out/tiny")
    names = [m.partition("=")[0] for m in args.models]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:  # the dict kept the last one: a model given first was not timed, and no row said so
        parser.error(f"{twice!r} names two models; give each NAME=DIR a name of its own")
    models = dict(m.split("=", 1) for m in args.models)
    for name, folder in models.items():
        if (Path(folder) / "config.json").is_file() and not (Path(folder) / "genai_config.json").is_file():
            parser.error(
                f"{name}={folder} has no genai_config.json (a transformers.js folder or a checkpoint?); "
                "this benchmark runs genai folders: scripts/bench_transformers_js.mjs times transformers.js ones"
            )
    if args.max_length not in (None, -1) and args.max_length < args.prompt + args.new:  # it ran with a bigger one
        parser.error(
            f"--max-length {args.max_length} is less than --prompt plus --new ({args.prompt + args.new}): "
            f"pass {args.prompt + args.new} or more, or leave it out"
        )
    if args.provider is None:  # it was cpu: a webgpu folder was timed on the CPU, and exit 0
        args.provider = built_for(models, parser)
    if args.json and not args.child:  # found unwritable only after the run, its results lost
        folder = Path(args.json).absolute().parent  # checked, not written: an earlier file stays until the end
        if not folder.is_dir() or not os.access(folder, os.W_OK) or Path(args.json).is_dir():
            parser.error(f"--json {args.json}: not a file this run can write; pass one in an existing folder")
    if args.keep_loaded and args.process_per_run:
        parser.error("--keep-loaded keeps sessions in this process; it cannot go with --process-per-run")
    if args.child:  # one timed run for bench_in_processes: load, a short first run, the timed run
        model = load(next(iter(models.values())), args.provider)
        run_once(model, 16, 4, max_length=args.max_length)
        prefill, decode = run_once(model, args.prompt, args.new, max_length=args.max_length)
        print(json.dumps({"prefill_s": prefill, "decode_tok_s": decode}))
        return 0
    try:
        report = bench(
            models,
            args.provider,
            args.prompt,
            args.new,
            args.rounds,
            reload=not args.keep_loaded,
            max_length=args.max_length,
            # --keep-loaded means long-lived sessions in this process, so no process per run.
            process_per_run=False if args.keep_loaded else args.process_per_run,
        )
    except KeyboardInterrupt:  # Ctrl-C of a run that takes too long: it was a traceback
        written = f"; nothing was written to {args.json}" if args.json else ""
        print(f"error: interrupted before the last round, so there is no table{written}", file=sys.stderr)
        return 130
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return exit_status(report, len(models))


def exit_status(report: dict, model_count: int) -> int:
    """1 with one error line naming the models that failed to load or run, else 0: the table shows
    why, the exit status tells a script (bench_layouts.py ends the same way)."""
    if not report["load_errors"]:
        return 0
    failed = ", ".join(report["load_errors"])
    print(
        f"error: {len(report['load_errors'])} of {model_count} models failed to load or run ({failed}); "
        "see the table for why",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
