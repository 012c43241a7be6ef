"""What a build checks before it writes anything, from its plan and the checkpoint's headers:
that its weights fit the free space where it writes (verify's memory is builder.verify's)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from builder.formats.transformers_js import CHUNK_BYTES as TRANSFORMERS_JS_CHUNK_BYTES
from builder.kit.errors import BuilderError
from builder.kit.options import BuildOptions
from builder.output_dir import output_folder, remove_stale_staging


def built_weight_count(arch) -> int:
    """The checkpoint's weight elements this build reads (those its family does not leave out)."""
    return sum(math.prod(s) for n, s in arch.checkpoint.shapes().items() if not arch.left_out(n))


# Bytes a weight element takes in the output, by precision: int4/int8 values plus one fp16 scale
# per block (zero points ignored), float ones at their width.
def _bytes_per_weight(options: BuildOptions) -> float:
    if options.precision in ("int4", "int8"):
        return (4 if options.precision == "int4" else 8) / 8 + 2 / options.block_size
    return 2 if options.precision == "fp16" else 4


def bytes_needed(arch) -> int:
    """What a build writes at least: the weights it reads at its precision. Layers that stay float,
    norms, zero points and rotary caches only add to it (model files of a Qwen3-0.6B shape: 1.009x
    this at fp16, 1.03-1.18x at int4, 2.1x at int8, which keeps its embedding float)."""
    options = arch.plan.options
    need = int(built_weight_count(arch) * _bytes_per_weight(options))
    if options.format == "transformers.js" and need > TRANSFORMERS_JS_CHUNK_BYTES:
        need += need - TRANSFORMERS_JS_CHUNK_BYTES  # its data is split into 2 GB files by copying
    return need


def check_disk_space(arch, output: Path) -> None:
    """Refuse a build whose weights cannot fit the free space where it writes: it failed only
    when the disk filled, after minutes of streaming. An output this build replaces stays until
    the new one is in place, and a dead build's staging folder for it is swept first."""
    options = arch.plan.options
    need = bytes_needed(arch)
    output = output_folder(output)  # where a symlinked -o really writes
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if folder == output.parent:
            remove_stale_staging(output)
        usage = shutil.disk_usage(folder)
    except OSError:
        return  # the staging step names what is wrong with the folder
    free = usage.free
    if usage.total and need > free:  # total 0: /proc, /sys, which the staging step refuses in its words

        def size(n: float) -> str:
            return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"

        has, writes = size(free), size(need)
        if has == writes:  # rounded alike ('has 0.1 MB free, and this build writes at least 0.1 MB')
            has, writes = f"{free:,} bytes", f"{need:,} bytes"
        raise BuilderError(
            f"{folder} has {has} free, and this build writes at least {writes} "
            f"({built_weight_count(arch):,} weights at -p {options.precision}); free space there or choose another "
            "-o/--output (nothing was built)"
        )
