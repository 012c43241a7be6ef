#!/usr/bin/env python
"""Write a deterministic random-weight HF checkpoint (see tests/support/synthetic.py).

    python scripts/make_checkpoint.py qwen3-4b /tmp/ckpt/qwen3-4b [--seed N] [--dtype float32]

Names: the real Qwen3 configs (qwen3-0.6b, qwen3-1.7b, qwen3-4b) in the hub's file layout; the real
Qwen3.5 configs (qwen3.5-0.8b, qwen3.5-4b: Qwen3_5ForConditionalGeneration, with a stand-in vision
tower) in one file or 4 GB shards; Gemma 3 1B's (gemma3-1b); and the tiny test configs, as
tiny-<name> (tiny-qwen3, tiny-llama, tiny-qwen3-moe, tiny-qwen3_5, ...).
"""

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic checkpoints

from builder.verify import missing_modules, verify_install_command

# support.synthetic writes weights with torch and the tokenizer with tokenizers, which a plain install
# (scripts/quickstart.sh's venv) leaves out: one line that says what to install, not a traceback.
if missing := missing_modules(("torch", "tokenizers")):
    print(
        f"make_checkpoint.py: error: it needs {' and '.join(missing)}, which a plain install leaves out: run "
        f"bash scripts/setup.sh and then .venv/bin/python scripts/make_checkpoint.py, or {verify_install_command()}",
        file=sys.stderr,
    )
    raise SystemExit(2)

from support import synthetic

# Checkpoints from this size on report their progress: qwen3-4b's 8 GB took 83 s here, in silence.
PROGRESS_FROM_BYTES = 100_000_000


class Progress:
    """synthetic.make_checkpoint's progress(done, total): a line on stderr at each tenth written."""

    def __init__(self, name: str):
        self.name, self.start, self.tenths = name, time.perf_counter(), 0

    def __call__(self, done: int, total: int) -> None:
        tenths = done * 10 // total if total >= PROGRESS_FROM_BYTES else 0
        if self.tenths < tenths < 10:  # the last line is main()'s
            self.tenths = tenths
            print(
                f"{self.name}: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB written ({tenths}0%) "
                f"in {time.perf_counter() - self.start:.0f} s",
                file=sys.stderr,
                flush=True,
            )


def main() -> None:
    names = (
        list(synthetic.REAL_CONFIGS)
        + list(synthetic.REAL_SHAPE_CONFIGS)
        + [f"tiny-{n}" for n in synthetic.TINY_CONFIGS]
    )
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=names)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["bfloat16", "float16", "float32"],
        help="dtype of the stored weights (default: bfloat16, as the hub's Qwen3 files)",
    )
    args = ap.parse_args()
    # A checkpoint goes into a new or empty folder, or over one this script wrote (its config.json and
    # shards, and MADE_MARK, written first so that an interrupted run can be repeated): never into a
    # file, a built model's folder or a checkpoint of the user's.
    if args.out_dir.exists() and not args.out_dir.is_dir():
        ap.error(f"{args.out_dir} is a file; pass a folder")
    if (args.out_dir / "build_report.json").exists() or (args.out_dir / "genai_config.json").exists():
        ap.error(f"{args.out_dir} holds a built model; pass another folder")
    if args.out_dir.is_dir() and any(args.out_dir.iterdir()) and not (args.out_dir / synthetic.MADE_MARK).is_file():
        # It replaced a user's config.json and weights, and kept their other files beside them.
        ap.error(
            f"{args.out_dir} holds files this script did not write (a checkpoint of yours?); pass a new or empty folder"
        )
    created = not args.out_dir.exists()
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the way, or a place this user cannot write
        ap.error(f"cannot create {args.out_dir} ({e.strerror or e}); pass a folder in a place you can write")

    # A run that fails or is stopped leaves no checkpoint behind: its config.json beside cut weights
    # looked like one, and a build found out only when it read them. Whatever the folder holds is
    # this script's (new, empty or made by it), so all of it goes.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.perf_counter()
    try:
        (args.out_dir / synthetic.MADE_MARK).write_text(f"{args.name} {args.dtype} seed {args.seed}\n")
        out = write(args)
    except BaseException as e:
        if created:
            shutil.rmtree(args.out_dir, ignore_errors=True)
        else:
            for item in args.out_dir.iterdir():
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)
        if isinstance(e, KeyboardInterrupt):
            print(
                f"make_checkpoint.py: error: interrupted; removed the partial checkpoint in {args.out_dir}",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
        if isinstance(e, OSError):
            print(
                f"make_checkpoint.py: error: cannot write {args.out_dir} ({e.strerror or e}); "
                "removed the partial checkpoint: free some space or pass another folder",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    elapsed = time.perf_counter() - start

    total = 0
    for f in sorted(out.iterdir()):
        if f.is_file():
            total += f.stat().st_size
            print(f"  {f.stat().st_size:>14,d}  {f.name}")
    print(f"wrote {args.name} ({args.dtype}, seed {args.seed}) to {out}: {total / 1e6:,.1f} MB in {elapsed:.1f} s")


def write(args) -> Path:
    progress = Progress(args.name)
    if args.name in synthetic.REAL_CONFIGS:  # hub file layout, quirks included
        return synthetic.make_real_checkpoint(
            args.name, args.out_dir, dtype=args.dtype, seed=args.seed, progress=progress
        )
    if args.name in synthetic.REAL_SHAPE_CONFIGS:  # the real config and dims; file layout not the hub's
        return synthetic.make_checkpoint(
            args.out_dir, synthetic.REAL_SHAPE_CONFIGS[args.name], dtype=args.dtype, seed=args.seed, progress=progress
        )
    config = synthetic.TINY_CONFIGS[args.name.removeprefix("tiny-")]
    return synthetic.make_checkpoint(args.out_dir, config, dtype=args.dtype, seed=args.seed, progress=progress)


if __name__ == "__main__":
    main()
