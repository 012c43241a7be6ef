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

from builder.kit.checkpoint import Checkpoint
from builder.kit.errors import BuilderError
from support.synthetic import TINY_CONFIGS, make_checkpoint
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
    from builder.kit.checkpoint import _parse_header
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


# ---- config.json values -------------------------------------------------------------

def set_config(ckpt: Path, **values) -> None:
    path = ckpt / "config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("key,value,fragment", [
    ("num_attention_heads", "4", "num_attention_heads = '4'"),
    ("rms_norm_eps", None, "rms_norm_eps is null"),
    ("hidden_size", 64.5, "hidden_size = 64.5"),
    ("num_hidden_layers", 0, "positive integer"),
    ("num_key_value_heads", True, "num_key_value_heads = True"),
    ("rope_theta", float("nan"), "rope_theta = nan"),
    ("rope_theta", "1e6", "rope_theta = '1e6'"),
    ("max_position_embeddings", -1, "max_position_embeddings"),
    ("tie_word_embeddings", "yes", "tie_word_embeddings"),
    ("head_dim", [16], "head_dim"),
    ("rope_scaling", "linear", "rope_scaling"),
    ("rope_scaling", {"rope_type": "linear", "factor": None}, "rope_scaling: factor is null"),
    ("partial_rotary_factor", 2, "partial_rotary_factor"),
    ("eos_token_id", "<eos>", "eos_token_id"),
    ("architectures", {"a": 1}, "architectures"),
])
def test_config_value_of_wrong_type(ckpt, key, value, fragment):
    set_config(ckpt, **{key: value})
    with pytest.raises(BuilderError) as info:
        Checkpoint(ckpt)
    assert fragment in str(info.value) and "config.json" in str(info.value)


def test_config_wrong_type_cli(ckpt, tmp_path):
    set_config(ckpt, num_attention_heads="4")
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "num_attention_heads = '4'", out=out)
    set_config(ckpt, num_attention_heads=4, rms_norm_eps=None)
    assert_clean_failure(cli("-m", ckpt, "-o", out), "rms_norm_eps is null", out=out)


def test_config_nulls_that_mean_default_still_build(tmp_path):
    """head_dim, sliding_window, rope_scaling are null in hub files: the default applies."""
    from builder import build
    qwen2 = make_checkpoint(tmp_path / "qwen2", TINY_CONFIGS["qwen2"])
    set_config(qwen2, head_dim=None, sliding_window=None, rope_scaling=None)
    result = build(model=str(qwen2), output=str(tmp_path / "out"), show_progress=False)
    assert result.report["model"]["head_dim"] == 128 // 4


def test_architectures_as_a_string(ckpt, tmp_path):
    set_config(ckpt, architectures="Qwen3ForCausalLM")
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "build_report.json").read_text())["checkpoint"]["architecture"] == "Qwen3ForCausalLM"
    from architectures.registry import builder_class_for
    assert builder_class_for({"architectures": "Qwen3ForCausalLM"}).__name__ == "Qwen3Builder"


def test_generation_config_wrong_type(ckpt, tmp_path):
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": "x", "top_k": 50}))
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "generation_config.json", "eos_token_id", out=out)


def test_config_is_a_folder(ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").mkdir()
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "config.json", out=out)
