"""Bad or unusual inputs a new user may give (issue 15): each ends in one line naming the
input and what to do (exit 2, no traceback, nothing left behind), or builds and says
what was odd about it. Complements test_errors.py; the property-based version of the
corrupt-file cases is test_fuzz_inputs.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from builder.checkpoint import Checkpoint
from builder.errors import BuilderError
from builder.synthetic import TINY_CONFIGS, make_checkpoint
from test_errors import assert_clean_failure, cli


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])


# ---- safetensors headers ----------------------------------------------------------

def read_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors(path: Path, header: dict | str, data: bytes) -> None:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def edit_header(ckpt: Path, edit) -> None:
    """edit(header, tensors) may change the header dict in place and return new data bytes."""
    path = ckpt / "model.safetensors"
    header, data = read_safetensors(path)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    new = edit(header, tensors)
    write_safetensors(path, header, data if new is None else new)


def by_offset(tensors: dict) -> list[str]:
    return sorted(tensors, key=lambda k: tensors[k]["data_offsets"][0])


def _overlap(header, tensors):
    second = by_offset(tensors)[1]
    tensors[second]["data_offsets"] = [x - 2 for x in tensors[second]["data_offsets"]]


def _short(header, tensors):
    # Offsets that cover less than shape x dtype: shrink one tensor and shift the rest.
    names = by_offset(tensors)
    victim = names[3]
    for name in names[3:]:
        b, e = tensors[name]["data_offsets"]
        tensors[name]["data_offsets"] = [b - (0 if name == victim else 2), e - 2]


def _gap(header, tensors):
    last = by_offset(tensors)[-1]
    tensors[last]["data_offsets"] = [x + 2 for x in tensors[last]["data_offsets"]]


def _unknown_dtype(header, tensors):
    tensors[by_offset(tensors)[0]]["dtype"] = "Q4_K"


def _no_dtype(header, tensors):
    del tensors[by_offset(tensors)[0]]["dtype"]


def _string_shape(header, tensors):
    tensors[by_offset(tensors)[0]]["shape"] = ["64", "480"]


def _negative_offset(header, tensors):
    tensors[by_offset(tensors)[0]]["data_offsets"] = [-4, 0]


CORRUPT_HEADERS = {
    "overlapping offsets": (_overlap, "overlaps"),
    "offsets shorter than shape x dtype": (_short, "span"),
    "gap between tensors": (_gap, "unowned"),
    "unknown dtype": (_unknown_dtype, "Q4_K"),
    "entry without dtype": (_no_dtype, "no 'dtype'"),
    "shape of strings": (_string_shape, "shape"),
    "negative offset": (_negative_offset, "data_offsets"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_HEADERS))
def test_corrupt_header_refused(ckpt, case):
    edit, fragment = CORRUPT_HEADERS[case]
    edit_header(ckpt, edit)
    with pytest.raises(BuilderError, match="model.safetensors") as info:
        Checkpoint(ckpt)
    assert fragment in str(info.value) and "re-download" in str(info.value)
    assert "\n" not in str(info.value)


def test_safetensors_library_agrees(ckpt, tmp_path):
    """What we refuse here, the safetensors library refuses too: the checks are not
    stricter than the format (a valid file from the library loads in both)."""
    from safetensors import SafetensorError, safe_open
    with safe_open(ckpt / "model.safetensors", "np") as f:
        assert set(f.keys()) == set(Checkpoint(ckpt).names())
    for case, (edit, _) in sorted(CORRUPT_HEADERS.items()):
        folder = make_checkpoint(tmp_path / case.replace(" ", "_"), TINY_CONFIGS["qwen3"])
        edit_header(folder, edit)
        with pytest.raises(SafetensorError):
            with safe_open(folder / "model.safetensors", "np") as f:
                f.keys()


def test_bytes_after_the_last_tensor(ckpt):
    edit_header(ckpt, lambda header, tensors: read_safetensors(ckpt / "model.safetensors")[1] + b"\0" * 16)
    with pytest.raises(BuilderError, match="cover .* bytes"):
        Checkpoint(ckpt)


def test_duplicate_tensor_name(ckpt):
    path = ckpt / "model.safetensors"
    header, data = read_safetensors(path)
    name = by_offset({k: v for k, v in header.items() if k != "__metadata__"})[0]
    text = json.dumps(header)
    # The same name again, pointing at the same bytes: json.loads alone would keep one silently.
    text = text[:-1] + f", {json.dumps(name)}: {json.dumps(header[name])}}}"
    write_safetensors(path, text, data)
    with pytest.raises(BuilderError, match="listed twice"):
        Checkpoint(ckpt)


def test_entry_without_dtype_cli(ckpt, tmp_path):
    edit_header(ckpt, _no_dtype)
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "model.safetensors", "no 'dtype'", out=out)


def test_valid_header_with_empty_tensor_and_metadata(tmp_path):
    """Zero-size tensors and __metadata__ are valid safetensors, as the library writes them."""
    from safetensors.numpy import save_file
    folder = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    path = tmp_path / "extra.safetensors"
    save_file({"a": np.zeros((0, 4), np.float32), "b": np.ones((2, 2), np.float16)}, str(path),
              metadata={"format": "pt"})
    from builder.checkpoint import _parse_header
    table = _parse_header(path)["tensors"]
    assert table["a"]["shape"] == [0, 4] and table["b"]["dtype"] == "F16"
    assert Checkpoint(folder).tensor("model.norm.weight").shape == (64,)


# ---- shard index --------------------------------------------------------------------

@pytest.fixture
def sharded(tmp_path):
    folder = make_checkpoint(tmp_path / "sharded", TINY_CONFIGS["qwen3"], shard_size_bytes=40_000)
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


@pytest.mark.parametrize("weight_map,fragment", [
    (["model-00001-of-00002.safetensors"], "not a mapping"),
    ("model.safetensors", "not a mapping"),
    (None, "not a mapping"),
    ({}, "empty"),
    ({"model.norm.weight": 3}, "not a file name"),
    ({"model.norm.weight": "../../etc/passwd"}, "not a file name"),
])
def test_index_weight_map_malformed(sharded, tmp_path, weight_map, fragment):
    index = sharded / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(BuilderError, match=fragment):
        Checkpoint(sharded)


def test_index_weight_map_not_a_mapping_cli(sharded, tmp_path):
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a", "b"]}))
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", sharded, "-o", out), "model.safetensors.index.json", "weight_map", out=out)
