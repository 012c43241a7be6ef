r"""Build one checkpoint in each packing layout and time them side by side.

    python scripts/bench_layouts.py --checkpoint /tmp/ckpt/qwen3-0.6b --ep cpu --rounds 5 \
        --json docs/results/layouts-cpu.json [--extra reference=/path/to/reference/model]

Layouts are QKV/MLP[/SILU[/ORT[/HEAD_NORM]]] (see --layout); `auto` is included so the table
shows where the default lands. Timing is bench_genai.py's: interleaved rounds
through onnxruntime-genai, medians, ratios to the first model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_genai import bench, exit_status, markdown
from writable import can_write

from builder import BuilderError, BuildOptions
from builder.inspect import summarize
from builder.pipeline import build_from_flags  # its refusals name the builder's flags

LAYOUTS = {
    "cpu": ["auto", "packed-split/separate", "separate/separate", "separate/packed", "packed-split/packed/sigmoid-mul"],
    "webgpu": ["auto", "packed-split/packed", "separate/separate", "separate/packed"],
}


def parse_layout(text: str) -> dict:
    """'qkv/mlp[/silu[/target ort[/head norm]]]' or 'auto' -> build options ('auto' in a slot keeps the default)."""
    parts = text.split("/") if text != "auto" else []
    keys = ("qkv_packing", "mlp_packing", "silu", "target_ort", "head_norm")
    options = dict(zip(keys, parts))
    if options.get("target_ort") == "auto":
        options["target_ort"] = None
    return options


def model_name(text: str, resolved: str) -> str:
    """A row's name: the --layout text as given, with what it resolved to beside it when that differs.
    Keyed by the text, not the resolved layout, which leaves out the target ORT: two --layout values
    differing only there (.../sigmoid-mul/1.30 beside .../sigmoid-mul) would collapse into one row."""
    return text if text == resolved else f"{text} -> {resolved}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--ep", default="cpu", choices=sorted(LAYOUTS))
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--target-ort", default=None)
    parser.add_argument("--work", default="/tmp/bench-layouts", help="Where the builds go.")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--layout",
        action="append",
        metavar="QKV/MLP[/SILU[/ORT[/HEAD_NORM]]]",
        help="Layouts to build, e.g. separate/separate/sigmoid-mul, "
        "packed-split/separate/sigmoid-mul/1.30 (an older target ORT) or "
        "packed-split/separate/sigmoid-mul/auto/branchwise. Default: a set per EP.",
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="Other model folders to time alongside (e.g. the reference builder's).",
    )
    parser.add_argument("--json")
    parser.add_argument(
        "--markdown", metavar="PATH", help="Also write the table (with node counts) here, for docs/packing.md."
    )
    args = parser.parse_args()
    # Checked before any build: they failed only after every layout was built.
    if args.rounds < 1 or args.prompt < 1:
        parser.error("--rounds and --prompt must be at least 1")
    if args.new < 2:  # bench_genai times decode over the tokens after the first
        parser.error("--new must be at least 2 tokens: the first closes the prefill, the decode speed times the rest")
    long = next((t for t in args.layout or () if t.count("/") > 4), None)
    if long:  # the parts past the fifth were dropped without a word
        parser.error(f"--layout {long}: more than the 5 parts QKV/MLP/SILU/ORT/HEAD_NORM")
    bad = [e for e in args.extra if not all(e.partition("=")[::2])]
    if bad:
        parser.error(f"--extra {bad[0]!r} is not NAME=DIR")
    for extra in args.extra:  # each was read only once every layout was built
        folder = Path(extra.partition("=")[2])
        if not (folder / "genai_config.json").is_file():
            parser.error(f"--extra {extra}: {folder} is not a built genai folder (no genai_config.json); pass one")
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path and not can_write(Path(path)):  # a traceback after every build and timing
            parser.error(f"{flag} {path}: not a file this run can write; pass one under a folder you can write")
    given = (args.layout or LAYOUTS[args.ep]) + [e.partition("=")[0] for e in args.extra]
    twice = sorted({g for g in given if given.count(g) > 1})
    if twice:
        parser.error(f"{twice[0]!r} given twice (--layout / --extra names must differ): its rows would merge")
    try:
        return run(args)
    except BuilderError as e:  # a bad checkpoint, precision or layout, or Ctrl-C mid-build: the builder's one line
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


def run(args) -> int:
    models, layouts = {}, {}
    given = args.layout or LAYOUTS[args.ep]
    for i, text in enumerate(given):
        out = Path(args.work) / f"{args.ep}-{args.precision}-{text.replace('/', '-')}"
        # The builds show no progress of their own here: a real-size one takes a minute.
        print(f"[build] {i + 1} of {len(given)}: {text} -> {out}", file=sys.stderr, flush=True)
        options = {"target_ort": args.target_ort, **parse_layout(text)}
        result = build_from_flags(
            BuildOptions(
                model=args.checkpoint, precision=args.precision, ep=args.ep, output=str(out), overwrite=True, **options
            ),
            show_progress=False,
        )
        layout = result.report["layout"]
        resolved = f"{layout['qkv_packing']}/{layout['mlp_packing']}/{layout['silu']}/{layout['head_norm']}"
        name = model_name(text, resolved)
        models[name] = str(out)
        layouts[name] = {
            "given": text,
            "resolved": resolved,
            "layout": layout,
            "nodes": result.report["nodes"]["total"],
            "build_s": result.report["timings"]["total_s"],
        }
    for extra in args.extra:
        name, path = extra.split("=", 1)
        models[name] = path
        layouts[name] = {"nodes": summarize(Path(path))["nodes"]}

    report = bench(models, "cpu" if args.ep == "cpu" else args.ep, args.prompt, args.new, args.rounds)
    report["builds"] = layouts
    table = markdown(report) + "\n\nnodes: " + ", ".join(f"{k}: {v['nodes']}" for k, v in layouts.items())
    print(table)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return exit_status(report, len(models))


if __name__ == "__main__":
    from interrupt import run_main

    run_main(main, "the layouts built are under --work; no table, --json or --markdown was written")
