"""The safetensors format read strictly: a file's header, and a sharded checkpoint's index.

A header that points at the wrong bytes would build a model from garbage without a word,
so both are checked at least as strictly as the safetensors library checks them.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from builder.kit import disk_io
from builder.kit.errors import BuilderError


def read_weight_map(index_path: Path) -> dict[str, str]:
    """The index's tensor name -> shard file name map, checked: a shard must be a plain file
    name in the checkpoint folder (the map is only ever written by save_pretrained)."""

    def invalid(why: str) -> BuilderError:
        return BuilderError(
            f"{index_path} is not a valid safetensors index ({why}); re-download the "
            "checkpoint, or delete the index if the folder holds a single model.safetensors"
        )

    try:
        index = json.loads(index_path.read_bytes(), object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as e:
        raise invalid(f"key {e.args[0]!r} appears twice") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise invalid(f"not JSON: {e}") from None
    except OSError as e:
        raise BuilderError(f"could not read {index_path} ({e.strerror or e})") from None
    if not isinstance(index, dict) or "weight_map" not in index:
        raise invalid("no 'weight_map'")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict):
        raise invalid(f"'weight_map' is a {type(weight_map).__name__}, not a mapping of tensor names to files")
    if not weight_map:
        raise invalid("'weight_map' is empty")
    for name, shard in weight_map.items():
        if (
            not isinstance(shard, str)
            or not shard
            or shard in (".", "..")
            or "/" in shard
            or "\\" in shard
            or "\0" in shard
        ):
            raise invalid(f"tensor {name!r} maps to {shard!r}, not a file name in the checkpoint folder")
    return weight_map


LFS_POINTER = b"https://git-lfs"  # after "version ": what `git clone` leaves without git-lfs


def header_bytes(file: Path) -> bytes:
    try:
        with open(file, "rb") as f:
            start = f.read(8)
            if start == b"version " and f.read(len(LFS_POINTER)) == LFS_POINTER:
                raise BuilderError(
                    f"{file} is a Git LFS pointer, not the weights: the checkpoint was cloned without "
                    "git-lfs; run `git lfs pull` in its folder, or download it with `hf download`"
                )
            (length,) = struct.unpack("<Q", start)
            if length > 100_000_000:
                raise ValueError("header length is implausible")
            header = f.read(length)
        if len(header) != length:
            raise ValueError("file ends inside the header")
        return header
    except (PermissionError, IsADirectoryError) as e:
        raise could_not_read(file, e) from None
    except (OSError, struct.error, ValueError) as e:
        raise BuilderError(
            f"{file} is not a readable safetensors file ({e}); it may be truncated or corrupt: re-download it"
        ) from None


def could_not_read(path: Path, error: OSError) -> BuilderError:
    """A checkpoint file the OS would not let us read (a shared cache owned by another user)."""
    advice = "check its permissions" if isinstance(error, PermissionError) else "check the file and its disk"
    return BuilderError(f"could not read {path} ({error.strerror or error}); {advice}")


# Every dtype the safetensors format defines, in bits per element: an entry with any other
# dtype is a corrupt header. Which of them a build can read is SUPPORTED_DTYPES.
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise _DuplicateKey(duplicate)
    return dict(pairs)


class _DuplicateKey(ValueError):
    pass


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_header(file: Path) -> dict:
    """Tensor table of a safetensors file, validated as strictly as the safetensors library.

    A header that points at the wrong bytes (overlapping or short offsets, a gap, a tail
    nobody owns) would build a model from garbage without a word, so every entry must
    have a known dtype and a shape, the entries must tile the data buffer exactly in
    offset order, and each must be exactly numel x itemsize bytes long.
    """
    raw = header_bytes(file)

    def corrupt(why: str) -> BuilderError:
        return BuilderError(f"{file} has a corrupt safetensors header ({why}); re-download it")

    if not raw.startswith(b"{"):  # the format's rule (safetensors 0.8 reads past leading spaces; no writer makes them)
        raise corrupt("it does not start with '{'")

    try:
        table = json.loads(raw, object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as e:
        raise corrupt(f"tensor {e.args[0]!r} is listed twice") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise corrupt(f"not JSON: {e}") from None
    if not isinstance(table, dict):
        raise corrupt("not a JSON object")
    metadata = table.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise corrupt("__metadata__ is not an object of strings")
    data_start = 8 + len(raw)
    st = file.stat()
    buffer = st.st_size - data_start
    spans = []
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise corrupt(f"the entry for {name!r} is not an object")
        for key in ("dtype", "shape", "data_offsets"):
            if key not in entry:
                raise corrupt(f"the entry for {name!r} has no {key!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
            raise corrupt(f"tensor {name!r} has dtype {dtype!r}, which safetensors does not define")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise corrupt(f"tensor {name!r} has shape {shape!r}; expected a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise corrupt(f"tensor {name!r} has data_offsets {offsets!r}; expected [begin, end] with 0 <= begin <= end")
        bits = math.prod(shape) * SAFETENSORS_DTYPE_BITS[dtype]
        if bits % 8 or offsets[1] - offsets[0] != bits // 8:
            raise corrupt(
                f"tensor {name!r} is {dtype} {shape}, {bits / 8:g} bytes, but its data_offsets "
                f"{offsets} span {offsets[1] - offsets[0]} bytes"
            )
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = "overlaps the tensor before it" if begin < position else f"leaves bytes {position}-{begin} unowned"
            raise corrupt(f"tensor {name!r} at data_offsets [{begin}, {end}] {what}")
        position = end
    if position > buffer:
        raise BuilderError(
            f"{file} is truncated ({st.st_size} bytes, the header says the data ends "
            f"at byte {data_start + position}); re-download it"
        )
    if position != buffer:
        raise corrupt(f"the tensors cover {position} bytes of a {buffer}-byte data buffer")
    # Reads check the file is still this one (disk_io.read_range's expect): a shard re-saved
    # during a build was read with the old header's offsets, mixing two checkpoints silently.
    return {"tensors": table, "data_start": data_start, "identity": disk_io.identity(st)}
