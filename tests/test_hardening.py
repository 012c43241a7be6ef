"""Bad or unusual inputs a new user may give (issue 15): each ends in one line naming the
input and what to do (exit 2, no traceback, nothing left behind), or builds and says
what was odd about it. Complements test_errors.py; the property-based version of the
corrupt-file cases is test_fuzz_inputs.py."""

from __future__ import annotations

import errno
import fnmatch
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_errors import ROOT, assert_clean_failure, cli

from builder import BuildOptions
from builder.kit.checkpoint import Checkpoint
from builder.kit.errors import BuilderError
from support.fake_terminal import FakeTerminal
from support.hidden_modules import interrupted_init
from support.processes import wait_for_file
from support.synthetic import TINY_CONFIGS, make_checkpoint


def plain_cli(*args):
    """The CLI without the --quiet that test_errors.cli adds (a test passes the flags it means)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "builder", *map(str, args)],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])


# ---- safetensors headers ----------------------------------------------------------


def read_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


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
    save_file(
        {"a": np.zeros((0, 4), np.float32), "b": np.ones((2, 2), np.float16)}, str(path), metadata={"format": "pt"}
    )
    from builder.kit.safetensors_format import parse_header

    table = parse_header(path)["tensors"]
    assert table["a"]["shape"] == [0, 4] and table["b"]["dtype"] == "F16"
    assert Checkpoint(folder).tensor("model.norm.weight").shape == (64,)


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
# Headers the format forbids, besides CORRUPT_HEADERS: without its check, each was taken or crashed.
MALFORMED_TABLES = {
    "space before the brace": (" " + json.dumps({"a": F32_2}), 8, "does not start with '{'"),
    "metadata of a number": ({"__metadata__": {"format": 1}, "a": F32_2}, 8, "__metadata__ is not an object of str"),
    "entry of a number": ({"a": 5}, 0, "the entry for 'a' is not an object"),
    "three data offsets": ({"a": {**F32_2, "data_offsets": [0, 8, 8]}}, 8, "expected [begin, end]"),
    "a shape of booleans": ({"a": {**F32_2, "shape": [True, 2]}}, 8, "expected a list of non-negative integers"),
    "half a byte of F4": ({"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}, 1, "1.5 bytes"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_TABLES))
def test_a_header_the_format_forbids_is_refused(tmp_path, case):
    from builder.kit.safetensors_format import parse_header

    header, data_bytes, fragment = MALFORMED_TABLES[case]
    path = tmp_path / "model.safetensors"
    write_safetensors(path, header, b"\0" * data_bytes)
    with pytest.raises(BuilderError, match="corrupt safetensors header") as info:
        parse_header(path)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "length,size,fragment",
    [(2**40, 100, "header length is implausible"), (100, 10, "file ends inside the header")],
)
def test_a_header_length_past_the_file_is_refused_without_reading_it(tmp_path, length, size, fragment):
    """A length of a terabyte was read as asked for: f.read allocates what it is told first."""
    from builder.kit.safetensors_format import parse_header

    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", length) + b"{" * size)
    with pytest.raises(BuilderError, match="not a readable safetensors file") as info:
        parse_header(path)
    assert fragment in str(info.value)


# ---- shard index --------------------------------------------------------------------


@pytest.fixture
def sharded(tmp_path):
    folder = make_checkpoint(tmp_path / "sharded", TINY_CONFIGS["qwen3"], shard_size_bytes=40_000)
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


@pytest.mark.parametrize(
    "weight_map,fragment",
    [
        (["model-00001-of-00002.safetensors"], "not a mapping"),
        ("model.safetensors", "not a mapping"),
        (None, "not a mapping"),
        ({}, "empty"),
        ({"model.norm.weight": 3}, "not a file name"),
        ({"model.norm.weight": "../../etc/passwd"}, "not a file name"),
        # Each names the folder or nothing, or is no file name on some system: "missing" misled.
        *[({"model.norm.weight": name}, "not a file name") for name in ("", ".", "..", "a\\b.safetensors", "a\0b")],
    ],
)
def test_index_weight_map_malformed(sharded, tmp_path, weight_map, fragment):
    index = sharded / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(BuilderError, match=fragment):
        Checkpoint(sharded)


def test_an_index_that_maps_a_tensor_twice_is_refused(sharded):
    """json.loads keeps the last of two entries silently: which shard the tensor is read from
    would be a guess."""
    index = sharded / "model.safetensors.index.json"
    shards = _shards(sharded)
    first, last = shards[0].name, shards[-1].name
    index.write_text(f'{{"weight_map": {{"model.norm.weight": "{first}", "model.norm.weight": "{last}"}}}}')
    with pytest.raises(BuilderError, match="key 'model.norm.weight' appears twice"):
        Checkpoint(sharded)


def test_index_weight_map_not_a_mapping_cli(sharded, tmp_path):
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a", "b"]}))
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", sharded, "-o", out), "model.safetensors.index.json", "weight_map", out=out)


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("model-*.safetensors"))


def test_model_safetensors_beside_an_index_is_the_one_read(sharded, tmp_path):
    """save_pretrained unsharded over a sharded save (or the reverse) leaves both in the folder;
    transformers loads model.safetensors, so the build must too (it read the shards, and --verify
    then blamed the builder), and say that the other save is there."""
    other = make_checkpoint(tmp_path / "other", TINY_CONFIGS["qwen3"], seed=1)
    (sharded / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    both, alone = cli("-m", sharded, "-o", tmp_path / "both"), cli("-m", other, "-o", tmp_path / "alone")
    assert both.returncode == alone.returncode == 0, both.stderr
    assert "holds both model.safetensors and model.safetensors.index.json" in both.stderr
    same = [(tmp_path / d / "model.onnx.data").read_bytes() for d in ("both", "alone")]
    assert same[0] == same[1]
    for shard in _shards(sharded):  # sharded then unsharded: the old index names shards now gone
        shard.unlink()
    assert Checkpoint(sharded).tensor("model.norm.weight").shape == (64,)


def test_a_tensor_the_index_leaves_out_is_read_from_its_shard(sharded):
    """transformers loads every tensor of each shard the index names; a tensor the map omits
    (lm_head, say) was taken as absent, and the model built tied to the embedding instead."""
    index = sharded / "model.safetensors.index.json"
    content = json.loads(index.read_text())
    content["weight_map"].pop("model.norm.weight")
    index.write_text(json.dumps(content))
    assert Checkpoint(sharded).has("model.norm.weight")


def test_a_tensor_in_two_shards_is_refused(sharded, tmp_path):
    """Two copies of a tensor: transformers takes the last file's, the index may name the other;
    either way the folder holds two saves, and a build of one of them is a guess."""
    from safetensors.numpy import load_file, save_file

    first, last = _shards(sharded)[0], _shards(sharded)[-1]
    tensors = load_file(str(last))
    name = next(iter(load_file(str(first))))
    tensors[name] = load_file(str(first))[name]
    save_file(tensors, str(last))
    with pytest.raises(BuilderError, match=f"{name}.*stored twice.*{first.name} and {last.name}"):
        Checkpoint(sharded)
    (sharded / "model.safetensors.index.json").unlink()  # no index: both sets are globbed
    with pytest.raises(BuilderError, match="stored twice"):
        Checkpoint(sharded)


def test_an_index_entry_no_shard_holds_is_refused(sharded):
    index = sharded / "model.safetensors.index.json"
    content = json.loads(index.read_text())
    content["weight_map"]["lm_head.weight"] = _shards(sharded)[0].name
    index.write_text(json.dumps(content))
    with pytest.raises(BuilderError, match="maps tensor 'lm_head.weight' to .* no shard it names holds it"):
        Checkpoint(sharded)


def test_a_tied_model_that_stores_only_its_lm_head_builds(ckpt, tmp_path):
    """safetensors' save_model keeps one name of a shared tensor, here lm_head.weight; transformers
    ties the embedding to it, and the build refused the checkpoint as incomplete."""
    from safetensors.numpy import load_file, save_file

    other = tmp_path / "lm-head-only"
    shutil.copytree(ckpt, other)
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["lm_head.weight"] = tensors.pop("model.embed_tokens.weight")
    save_file(tensors, str(other / "model.safetensors"), metadata={"format": "pt"})
    for folder in (ckpt, other):
        assert cli("-m", folder, "-o", tmp_path / f"{folder.name}-out").returncode == 0
    same = [(tmp_path / f"{folder.name}-out" / "model.onnx.data").read_bytes() for folder in (ckpt, other)]
    assert same[0] == same[1]


def test_rows_past_the_end_are_clamped_to_the_tensor(ckpt):
    """checkpoint_fit's _same_values reads blocks of rows whose last ends past the tensor: the read must stop
    at the tensor's end, not run on into the next tensor's bytes."""
    checkpoint = Checkpoint(ckpt)
    name = "model.embed_tokens.weight"
    whole = checkpoint.tensor(name)
    total = len(whole)
    tail = checkpoint.rows(name, total - 2, total + 5)
    assert tail.shape == (2, *whole.shape[1:]) and np.array_equal(tail.view(np.uint16), whole[-2:].view(np.uint16))
    beyond = checkpoint.locate(name, total + 3, total + 9)
    assert (beyond.start, beyond.stop, beyond.length) == (total, total, 0)
    assert checkpoint.rows(name, total + 3, total + 9).shape == (0, *whole.shape[1:])


def test_a_scalar_tensor_reads_as_one_row_of_shape_nothing(ckpt):
    """A 0-d tensor (a stored scale) is one row: read whole it keeps its shape (), and until read it is unread."""
    from safetensors.numpy import load_file, save_file

    weights = ckpt / "model.safetensors"
    save_file({**load_file(str(weights)), "scale": np.array(2.5, np.float32)}, str(weights), metadata={"format": "pt"})
    checkpoint = Checkpoint(ckpt)
    assert checkpoint.rows_total("scale") == 1
    checkpoint.locate("scale", 0, 0)
    assert checkpoint.unread_rows("scale") == [(0, 1)]
    value = checkpoint.tensor("scale")
    assert value.shape == () and value.dtype == np.float32 and float(value) == 2.5
    assert checkpoint.unread_rows("scale") == []


def test_the_first_fingerprint_is_kept_for_the_build(ckpt):
    """A build takes the fingerprint before it reads the weights: a file changed afterwards must not
    change what the build records (the next run sees the change and rebuilds)."""
    checkpoint = Checkpoint(ckpt)
    first = checkpoint.fingerprint()
    (ckpt / "config.json").write_text((ckpt / "config.json").read_text() + "\n")
    assert checkpoint.fingerprint() == first
    assert Checkpoint(ckpt).fingerprint() != first


def test_configured_tie_reads_the_text_config_first_and_only_booleans(tmp_path):
    """verify and batch_ray's memory estimate ask whether config.json ties the lm_head: a multimodal
    config says it in text_config, and a value that is no boolean (or no config) says nothing."""
    from builder.kit.checkpoint import configured_tie

    cases = [
        ({"tie_word_embeddings": True}, True),
        ({"tie_word_embeddings": False, "text_config": {"tie_word_embeddings": True}}, True),
        ({"tie_word_embeddings": True, "text_config": {"tie_word_embeddings": False}}, False),
        ({"tie_word_embeddings": False, "text_config": {"hidden_size": 8}}, False),
        ({"tie_word_embeddings": 1}, None),
        ({"tie_word_embeddings": None, "text_config": {"tie_word_embeddings": "true"}}, None),
        ({}, None),
        ([{"tie_word_embeddings": True}], None),
    ]
    for config, tied in cases:
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert configured_tie(tmp_path) is tied, config
    assert configured_tie(tmp_path / "nowhere") is None and configured_tie(None) is None


# ---- config.json values -------------------------------------------------------------


def set_config(ckpt: Path, **values) -> None:
    path = ckpt / "config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "key,value,fragment",
    [
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
    ],
)
def test_config_value_of_wrong_type(ckpt, key, value, fragment):
    set_config(ckpt, **{key: value})
    with pytest.raises(BuilderError) as info:
        Checkpoint(ckpt)
    assert fragment in str(info.value) and "config.json" in str(info.value)


@pytest.mark.parametrize(
    "values",
    [
        {"num_hidden_layers": 1, "num_key_value_heads": 1},  # a positive integer includes 1
        {"sliding_window": 0, "max_window_layers": 0},  # 0: no window
        {"pad_token_id": 0, "bos_token_id": [0], "eos_token_id": [0, 1]},  # Gemma pads with id 0
        {"partial_rotary_factor": 1.0},  # the whole head: (0, 1] includes 1
        {"linear_conv_kernel_dim": 2},
        {"rope_scaling": {"rope_type": "yarn", "factor": None, "mscale": -1.0, "mscale_all_dim": 0}},
        {"rope_scaling": {"type": "yarn", "factor": None}},  # the old spelling of rope_type
    ],
)
def test_config_values_at_the_edge_of_their_range_are_taken(values):
    from builder.kit.hf_config import check_config

    config = {**TINY_CONFIGS["qwen3"], **values}
    assert check_config(dict(config)) == config


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("rms_norm_eps", 0, "rms_norm_eps = 0 is not valid; it must be a positive number"),
        ("partial_rotary_factor", 0.0, "partial_rotary_factor = 0.0 is not valid; it must be a number in (0, 1.0]"),
        ("rope_theta", math.inf, "rope_theta = inf is not valid; it must be a positive number"),
        ("linear_conv_kernel_dim", 1, "linear_conv_kernel_dim = 1 is not valid; it must be an integer >= 2"),
        ("pad_token_id", -1, "pad_token_id = -1 is not valid; it must be a token id or a list of token ids"),
    ],
)
def test_config_values_just_outside_their_range_are_refused(key, value, fragment):
    from builder.kit.hf_config import check_config

    with pytest.raises(BuilderError) as info:
        check_config({**TINY_CONFIGS["qwen3"], key: value})
    assert str(info.value) == f"config.json: {fragment} (fix or re-download config.json)"


@pytest.mark.parametrize(
    "values,fragment",
    [
        ({"rope_theta": 1e-50}, "rope_theta = 1e-50 gives rotary frequencies that float32 cannot hold"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 1e-50}}, "with linear rope scaling (factor 1e-50)"),
    ],
)
def test_a_rope_whose_float32_frequencies_are_not_finite_is_refused(ckpt, tmp_path, values, fragment):
    """A positive rope_theta below float32's range is 0 there, and 1 / 0 ** x made the rotary cache NaN:
    the folder was written, with numpy's RuntimeWarnings from rope.py and no word of the builder's."""
    set_config(ckpt, **values)
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, "-e", "webgpu")
    assert_clean_failure(proc, fragment, "NaN", "config.json", out=out)
    assert "RuntimeWarning" not in proc.stderr, proc.stderr


def test_a_rope_theta_beyond_float32_builds_as_transformers_runs_it(ckpt, tmp_path):
    """Past 3.4e38 theta is inf in float32, in transformers too: every frequency but the first is 0.
    Finite, so it builds (and verifies); numpy's overflow warnings no longer come with it."""
    set_config(ckpt, rope_theta=1e39)
    proc = cli("-m", ckpt, "-o", tmp_path / "out", "-p", "fp32", "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "warning" not in proc.stderr, proc.stderr


def test_config_wrong_type_cli(ckpt, tmp_path):
    set_config(ckpt, num_attention_heads="4")
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "num_attention_heads = '4'", out=out)
    set_config(ckpt, num_attention_heads=4, rms_norm_eps=None)
    assert_clean_failure(cli("-m", ckpt, "-o", out), "rms_norm_eps is null", out=out)


def test_head_dim_that_attention_cannot_run_is_refused_before_building(ckpt, tmp_path):
    """hidden 48 over 4 heads: the folder was written, then GroupQueryAttention refused head_size 12
    when run and generate.py blamed the runtime's version."""
    set_config(ckpt, hidden_size=48, head_dim=None)
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "head_dim 12 (hidden_size / num_attention_heads", out=out)


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


def test_no_architectures_says_what_to_add_or_pass(ckpt, tmp_path):
    """The error listed the supported families without saying what to do about it."""
    set_config(ckpt, architectures=None)
    out = tmp_path / "out"
    assert_clean_failure(
        cli("-m", ckpt, "-o", out), "has no 'architectures' entry", '"architectures": ["Qwen3ForCausalLM"]', "--family"
    )
    assert cli("-m", ckpt, "-o", out, "--family", "Qwen3ForCausalLM").returncode == 0


def test_generation_config_wrong_type(ckpt, tmp_path):
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": "x", "top_k": 50}))
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "generation_config.json", "eos_token_id", out=out)


def test_special_token_ids_outside_the_vocabulary_are_named(ckpt, tmp_path):
    """An eos id no logit can reach was written into genai_config.json without a word: generation
    then never stopped at it (and genai 0.18 refuses a generator for it: it is left out)."""
    vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    # 479: the tokenizer's eos (<|im_end|>), which genai_config.json would add, with a warning, if left out
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": [479, vocab], "pad_token_id": 2}))
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: eos_token_id {vocab} (generation_config.json) is outside the vocabulary (0 .. {vocab - 1}): "
        "transformers never stops at it, and onnxruntime-genai refuses every generation with it: "
        f"genai_config.json leaves out eos_token_id {vocab}; check generation_config.json"
    ], proc.stderr
    assert json.loads((out / "genai_config.json").read_text())["model"]["eos_token_id"] == 479
    assert warnings[0].removeprefix("warning: ") in json.loads((out / "build_report.json").read_text())["notes"]


def test_tokens_past_the_embedding_rows_are_named(ckpt, tmp_path):
    """A token added to the tokenizer without resize_token_embeddings (or another model's tokenizer)
    built without a word; onnxruntime's Gather then failed on a prompt holding it, and an int4 build
    ran on for it without an error."""
    vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    path = ckpt / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    tokenizer["added_tokens"].append({"id": vocab, "content": "<|tool|>", "special": True})
    path.write_text(json.dumps(tokenizer))
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "tokenizer.json has 1 token(s) with ids past the model's vocabulary" in warnings[0]
    assert f"(0 .. {vocab - 1}): '<|tool|>' ({vocab})" in warnings[0] and "resize_token_embeddings" in warnings[0]
    assert warnings[0].removeprefix("warning: ") in json.loads((out / "build_report.json").read_text())["notes"]
    # A Unigram tokenizer lists its tokens in id order.
    tokenizer["added_tokens"].pop()
    tokenizer["model"] = {"type": "Unigram", "vocab": [[f"t{i}", 0.0] for i in range(vocab + 2)]}
    path.write_text(json.dumps(tokenizer))
    from builder.kit.tokenizer_files import check_tokenizer_files

    [warning] = check_tokenizer_files(ckpt, vocab)
    assert "has 2 token(s)" in warning
    assert check_tokenizer_files(ckpt, vocab + 2) == []


def test_config_is_a_folder(ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").mkdir()
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "config.json", out=out)


# ---- weights the build takes but warns about ------------------------------------------


def poke(ckpt: Path, tensor: str, index: int, bits: int) -> None:
    """Overwrite one bf16 value of `tensor` in place with the raw bits given."""
    path = ckpt / "model.safetensors"
    header, _ = read_safetensors(path)
    assert header[tensor]["dtype"] == "BF16"
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    with open(path, "r+b") as f:
        f.seek(8 + n + header[tensor]["data_offsets"][0] + 2 * index)
        f.write(struct.pack("<H", bits))


@pytest.mark.parametrize("options", [["-p", "int4"], ["-p", "int8"], ["-p", "fp32"], ["-p", "int4", "--no-symmetric"]])
def test_nan_and_inf_weights_are_named(ckpt, tmp_path, options):
    """One warning line each; quantized builds printed numpy's RuntimeWarning with a source line first
    (asymmetric ones, and an Inf in a projection, still did: "invalid value encountered in cast")."""
    poke(ckpt, "model.layers.1.mlp.up_proj.weight", 70, 0x7FC0)  # NaN
    poke(ckpt, "model.layers.0.input_layernorm.weight", 3, 0x7F80)  # +Inf
    poke(ckpt, "model.layers.0.self_attn.o_proj.weight", 9, 0xFF80)  # -Inf
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, *options)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr
    named = ("model.layers.1.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight", "self_attn.o_proj.weight")
    assert all(name in warnings[0] for name in named), warnings[0]
    assert "NaN or Inf" in warnings[0] and "RuntimeWarning" not in proc.stderr, proc.stderr
    notes = json.loads((out / "build_report.json").read_text())["notes"]
    assert any("model.layers.1.mlp.up_proj.weight" in n for n in notes)


def test_verify_of_a_checkpoint_with_nan_weights_blames_the_checkpoint(ckpt, tmp_path):
    """Its logits are NaN in transformers too; --verify asked the user to report a builder bug."""
    poke(ckpt, "model.layers.1.mlp.up_proj.weight", 70, 0x7FC0)  # NaN
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, "-p", "fp32", "--verify")
    assert_clean_failure(proc, "--verify failed", "weights hold NaN or Inf values", "check the checkpoint", out=out)
    assert "report" not in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize("ep", ["cpu", "webgpu"])
def test_a_weight_beyond_float16_is_named_once_without_numpy_s_warning(ckpt, tmp_path, ep):
    """A weight beyond float16's range (1e6 here) printed numpy's RuntimeWarning with its source
    line (checkpoint.py's cast, the quantizer's scale) before the builder's own warning."""
    poke(ckpt, "model.layers.1.mlp.up_proj.weight", 70, 0x4974)  # bf16 0x4974 = 999,424
    proc = cli("-m", ckpt, "-o", tmp_path / "out", "-p", "fp16" if ep == "cpu" else "int4", "-e", ep)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "astype" not in proc.stderr, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "model.layers.1.mlp.up_proj.weight" in warnings[0], proc.stderr


def _assert_named_beyond_float16(proc, out, tensor):
    """A build that went on, without numpy's RuntimeWarning, and named the tensor once, in its warning
    and in build_report.json's notes."""
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and tensor in warnings[0] and "beyond the float16 range" in warnings[0], proc.stderr
    assert any(tensor in n for n in json.loads((out / "build_report.json").read_text())["notes"])


@pytest.mark.parametrize(
    "options",
    [["-p", "int4", "-e", "webgpu"], ["-p", "int8", "-e", "webgpu"], ["-p", "int4", "-e", "webgpu", "--no-symmetric"]]
    + [["-p", "int4", "--io-dtype", "fp16"], ["-p", "int4"]],
)
def test_a_weight_that_dequantizes_beyond_float16_is_named(ckpt, tmp_path, options):
    """99,840 keeps a finite fp16 scale (12,480 at int4, 780 at int8), so the scales passed the check, but
    MatMulNBits dequantizes (q - zp) * scale into the fp16 activations' dtype on the GPU (webgpu's
    dequantize_packed8xU4), where it is inf: built in silence, where -p fp16 named the same weight.
    fp32 activations hold it, and stay silent."""
    tensor = "model.layers.1.mlp.up_proj.weight"
    poke(ckpt, tensor, 70, 0x47C3)  # bf16 0x47C3 = 99,840
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, *options)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    if options == ["-p", "int4"]:  # cpu: fp32 activations
        assert warnings == [], proc.stderr
        return
    _assert_named_beyond_float16(proc, out, tensor)


@pytest.mark.parametrize(
    "options,bits",
    [
        (["-p", "fp16"], 0x4974),
        (["-p", "int4", "--io-dtype", "fp16"], 0x4974),
        (["-p", "int8", "--io-dtype", "fp16"], 0x47C3),
    ],
)
def test_an_expert_weight_beyond_float16_is_named(tmp_path, options, bits):
    """MoE experts were checked in float32 only: an expert weight past 65504 built with exit 0 and no
    warning, into an inf weight (fp16) or scale (int4), and its logits were NaN. 99,840 (0x47C3) keeps
    a finite int8 scale, but dequantizes past 65504."""
    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3-moe"])
    tensor = "model.layers.0.mlp.experts.1.down_proj.weight"
    poke(ckpt, tensor, 5, bits)  # bf16 0x4974 = 999,424
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, *options)
    _assert_named_beyond_float16(proc, out, tensor)


@pytest.mark.parametrize("options", [["-p", "fp16"], ["-p", "int4", "-e", "webgpu"]])
def test_a_one_plus_w_norm_beyond_float16_is_named(tmp_path, options):
    """Gemma 3 adds 1 to its norm weights in float32 and casts the sum to the activations' dtype: a q_norm
    weight past 65504 became an inf scale with numpy's RuntimeWarning (emitter.py's cast) and no warning
    of the builder's, and every logit of the fp16 graph was NaN."""
    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["gemma3"])
    tensor = "model.layers.0.self_attn.q_norm.weight"
    poke(ckpt, tensor, 3, 0x47C3)  # bf16 0x47C3 = 99,840
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, *options)
    _assert_named_beyond_float16(proc, out, tensor)


def test_finite_weights_no_warning(ckpt, tmp_path):
    proc = cli("-m", ckpt, "-o", tmp_path / "out")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def test_layers_beyond_num_hidden_layers_are_reported(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", {**TINY_CONFIGS["qwen3"], "num_hidden_layers": 3})
    set_config(ckpt, num_hidden_layers=2)
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert (
        "warning: the checkpoint has layer(s) 2 (model.layers.2.*) beyond config.json's num_hidden_layers = 2"
        in proc.stderr
    )
    report = json.loads((out / "build_report.json").read_text())
    assert report["model"]["layers"] == 2 and any("beyond" in n for n in report["notes"])


def add_tensors(ckpt: Path, tensors: dict[str, np.ndarray]) -> None:
    """More tensors in the checkpoint's model.safetensors."""
    from safetensors.numpy import load_file, save_file

    weights = ckpt / "model.safetensors"
    save_file({**load_file(str(weights)), **tensors}, str(weights), metadata={"format": "pt"})


def test_tensors_the_family_does_not_build_are_refused(ckpt, tmp_path):
    """They were dropped in silence: a Llama checkpoint with MLP biases built with exit 0 and wrong
    logits (Qwen3's MLP has no biases, and its config says nothing of them)."""
    add_tensors(ckpt, {"model.layers.0.mlp.down_proj.bias": np.ones(64, np.float32)})
    out = tmp_path / "out"
    assert_clean_failure(
        cli("-m", ckpt, "-o", out),
        "holds 1 tensor(s) that Qwen3Builder does not build: model.layers.0.mlp.down_proj.bias",
        "nothing was written",
        out=out,
    )


def no_weights_built(monkeypatch) -> None:
    """Fail the test if the build gets as far as reading weights."""
    import builder.pipeline as pipeline

    def no_build(*args, **kwargs):
        raise AssertionError("the build started reading weights")

    monkeypatch.setattr(pipeline, "reading_ahead", no_build)


@pytest.mark.parametrize("read_ahead_mb", [0, 256])
def test_unused_tensors_are_refused_before_the_weights_are_built(ckpt, tmp_path, monkeypatch, read_ahead_mb):
    """The forecast walks the whole graph first: when it completes, the refusal comes then, not
    after every weight was converted (a 70B checkpoint with a stray tensor), with the read-ahead
    off too."""
    from builder import build

    add_tensors(ckpt, {"model.layers.0.mlp.down_proj.bias": np.ones(64, np.float32)})
    no_weights_built(monkeypatch)
    with pytest.raises(BuilderError, match="does not build: model.layers.0.mlp.down_proj.bias"):
        build(model=str(ckpt), output=str(tmp_path / "out"), read_ahead_mb=read_ahead_mb, show_progress=False)


def replace_tensor(ckpt: Path, name: str, value: np.ndarray | None) -> None:
    """model.safetensors with `name` replaced by `value`, or left out for None."""
    from safetensors.numpy import load_file, save_file

    weights = ckpt / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors[name]
    if value is not None:
        tensors[name] = value
    save_file(tensors, str(weights), metadata={"format": "pt"})


@pytest.mark.parametrize("read_ahead_mb", [0, 256])
@pytest.mark.parametrize(
    "value,words",
    [
        (None, "tensor 'model.layers.1.mlp.down_proj.weight' is missing from the checkpoint in"),
        (np.ones((64, 8), np.float32), "tensor 'model.layers.1.mlp.down_proj.weight' has shape [64, 8] but"),
        (np.ones((64, 128), np.float64), "tensor 'model.layers.1.mlp.down_proj.weight' in model.safetensors has "),
    ],
    ids=["missing", "shape", "dtype"],
)
def test_a_last_layer_tensor_the_checkpoint_lacks_is_refused_before_any_weight_is_built(
    ckpt, tmp_path, monkeypatch, read_ahead_mb, value, words
):
    """The build met it at the last layer, after quantizing every layer before it (minutes on a
    large checkpoint); the forecast meets it first, read-ahead on or off."""
    from builder import build

    name = "model.layers.1.mlp.down_proj.weight"
    replace_tensor(ckpt, name, value)
    no_weights_built(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(BuilderError) as e:
        build(model=str(ckpt), output=str(out), read_ahead_mb=read_ahead_mb, show_progress=False)
    assert words in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))


def test_a_missing_tensor_is_refused_before_the_checkpoint_is_hashed(ckpt, tmp_path, monkeypatch):
    """--checkpoint-hash reads every weight byte first; a tensor the build would miss stops it before."""
    from builder import build

    replace_tensor(ckpt, "model.layers.1.mlp.down_proj.weight", None)

    def no_hashing(self, hash_weights):
        assert not hash_weights, "the checkpoint was hashed"

    monkeypatch.setattr(Checkpoint, "fingerprint", no_hashing)
    with pytest.raises(BuilderError, match="'model.layers.1.mlp.down_proj.weight' is missing from the checkpoint"):
        build(model=str(ckpt), output=str(tmp_path / "out"), checkpoint_hash=True, show_progress=False)


def test_a_family_failing_on_the_forecasts_zeros_still_builds(ckpt, tmp_path):
    """The forecast hands a family zeros for weights; an error raised on those values is the family's,
    not the checkpoint's, so it only ends the forecast, and the build (real weights) goes on. So does
    a tensor the family probes for and does without."""
    from architectures.qwen3 import Qwen3Builder
    from builder import build

    class ZeroShy(Qwen3Builder):
        def weight(self, layer, suffix):
            name = super().weight(layer, suffix)
            if layer == 1 and suffix == "mlp.down_proj.weight":
                try:
                    self.checkpoint.tensor(name.replace(".weight", ".bias"))
                except BuilderError:
                    pass  # no bias: fine
                if not self.checkpoint.tensor(name).any():
                    raise BuilderError("all zeros")
            return name

    result = build(model=str(ckpt), output=str(tmp_path / "out"), family=ZeroShy, show_progress=False)
    assert (result.output / "model.onnx").is_file()


def test_another_family_than_the_checkpoint_is_refused(ckpt, tmp_path):
    """A Qwen3 checkpoint through LlamaBuilder left out every q_norm/k_norm and published."""
    from architectures.llama import LlamaBuilder
    from builder import build

    with pytest.raises(BuilderError, match=r"holds 4 tensor\(s\) that LlamaBuilder does not build: "):
        build(model=str(ckpt), output=str(tmp_path / "out"), family=LlamaBuilder, show_progress=False)
    assert not (tmp_path / "out").exists()


def test_another_family_than_the_checkpoint_says_to_drop_family_not_the_tensors(tmp_path):
    """--family LlamaForCausalLM on a Qwen2 checkpoint (q/k/v biases) advised removing the biases
    from the checkpoint, which would publish a model other than Qwen2's; the fix is the family."""
    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen2"])
    proc = cli("-m", ckpt, "-o", tmp_path / "out", "--family", "LlamaForCausalLM")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "LlamaBuilder does not build: model.layers.0.self_attn.k_proj.bias" in proc.stderr
    assert "--family LlamaForCausalLM builds another model than Qwen2ForCausalLM, one without them: drop --family" in (
        proc.stderr
    )
    assert "remove them from the checkpoint" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_tensors_left_out_on_purpose_still_build(tmp_path):
    """Older conversions store the rotary inv_freq buffer, and tied models may store lm_head."""
    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"], tied_lm_head=True)
    add_tensors(ckpt, {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)})
    proc = cli("-m", ckpt, "-o", tmp_path / "out")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def test_a_family_that_drops_the_checkpoint_s_window_says_so(tmp_path):
    """--family LlamaForCausalLM on a Mistral v0.1 checkpoint built without its sliding window in
    silence, and --verify, comparing with MistralForCausalLM, failed asking for a bug report."""
    windowed = make_checkpoint(tmp_path / "mistral", TINY_CONFIGS["mistral"], dtype="float32")
    unwindowed = make_checkpoint(tmp_path / "nosw", TINY_CONFIGS["mistral-nosw"], dtype="float32")
    # Qwen2's window starts at max_window_layers, here past the last layer: none, as transformers has it.
    layers = TINY_CONFIGS["qwen2"]["num_hidden_layers"]
    qwen2 = {**TINY_CONFIGS["qwen2"], "use_sliding_window": True, "sliding_window": 8, "max_window_layers": layers}
    no_window_layer = make_checkpoint(tmp_path / "qwen2", qwen2, dtype="float32")
    warning = (
        "--family LlamaForCausalLM (LlamaBuilder) builds no sliding window (every layer attends to the whole "
        "context), where MistralForCausalLM has a sliding window of 8 tokens on every layer: past 8 tokens"
    )
    as_llama = cli("-m", windowed, "-o", tmp_path / "llama", "-p", "fp32", "--family", "LlamaForCausalLM")
    assert as_llama.returncode == 0 and warning in as_llama.stderr, as_llama.stderr
    for model, family in [
        (windowed, ()),
        (windowed, ("--family", "MistralForCausalLM")),
        (unwindowed, ("--family", "LlamaForCausalLM")),
        (no_window_layer, ("--family", "Qwen2ForCausalLM")),
        (no_window_layer, ("--family", "architectures.qwen2:Qwen2Builder")),  # the same family as module:Class
    ]:
        proc = cli("-m", model, "-o", tmp_path / "out", "-p", "fp32", "--overwrite", *family)
        assert proc.returncode == 0 and "sliding_window" not in proc.stderr, proc.stderr
    verified = cli("-m", windowed, "-o", tmp_path / "v", "-p", "fp32", "--family", "LlamaForCausalLM", "--verify")
    assert_clean_failure(
        verified,
        "--verify failed: logits differ from transformers",
        "--family LlamaForCausalLM builds the checkpoint as another model than MistralForCausalLM",
        out=tmp_path / "v",
    )
    assert "report this" not in verified.stderr


def test_a_family_that_adds_a_window_the_checkpoint_lacks_says_so(tmp_path):
    """MistralForCausalLM windows every layer (4096 where config.json sets no sliding_window, as
    transformers' MistralConfig does), so forced onto a Llama it built a window LlamaForCausalLM
    does not have, in silence; a family given in Python was not warned either way."""
    from architectures.llama import LlamaBuilder
    from builder import build

    llama = make_checkpoint(tmp_path / "llama", TINY_CONFIGS["llama"], dtype="float32")
    long_context = ("--context-length", "8192", "--allow-long-context")
    as_mistral = cli("-m", llama, "-o", tmp_path / "m", "-p", "fp32", "--family", "MistralForCausalLM", *long_context)
    assert as_mistral.returncode == 0, as_mistral.stderr
    assert (
        "--family MistralForCausalLM (MistralBuilder) builds a sliding window of 4096 tokens on every layer, where "
        "LlamaForCausalLM has no sliding window (every layer attends to the whole context): past 4096 tokens"
    ) in as_mistral.stderr, as_mistral.stderr
    # Within its context length a window of 4096 never applies: nothing to warn of.
    short = cli("-m", llama, "-o", tmp_path / "s", "-p", "fp32", "--family", "MistralForCausalLM")
    assert short.returncode == 0 and "window" not in short.stderr, short.stderr
    windowed = make_checkpoint(tmp_path / "mistral", TINY_CONFIGS["mistral"], dtype="float32")
    result = build(model=str(windowed), output=str(tmp_path / "p"), precision="fp32", family=LlamaBuilder)
    warned = [note for note in result.report["notes"] if "LlamaBuilder builds no sliding window" in note]
    assert len(warned) == 1 and "build it with the family registered for MistralForCausalLM" in warned[0], warned
    with pytest.raises(BuilderError) as failed:
        build(model=str(windowed), output=str(tmp_path / "v"), precision="fp32", family=LlamaBuilder, verify=True)
    assert "LlamaBuilder builds the checkpoint as another model than MistralForCausalLM" in str(failed.value)
    assert "report this" not in str(failed.value)


def test_verify_under_a_python_family_names_no_family_that_is_not_registered(tmp_path):
    """A family given in Python (or --family) on a checkpoint whose config.json names an architecture
    no family is registered for: verify's failure said to build with the family registered for that
    name, of which there is none (on the command line: to drop --family, which then fails)."""
    from architectures.llama import LlamaBuilder
    from builder import build

    windowed = make_checkpoint(tmp_path / "mistral", TINY_CONFIGS["mistral"], dtype="float32")
    config = json.loads((windowed / "config.json").read_text())
    (windowed / "config.json").write_text(json.dumps({**config, "architectures": ["MyMistralForCausalLM"]}))
    with pytest.raises(BuilderError) as failed:
        build(model=str(windowed), output=str(tmp_path / "v"), precision="fp32", family=LlamaBuilder, verify=True)
    message = str(failed.value)
    assert "LlamaBuilder builds the checkpoint as another model than MyMistralForCausalLM" in message, message
    assert "registered for MyMistralForCausalLM" not in message, message
    assert "without verify=True" in message, message
    # On the command line dropping --family fails there ("not supported"): not offered either.
    proc = cli("-m", windowed, "-o", tmp_path / "c", "-p", "fp32", "--family", "LlamaForCausalLM", "--verify")
    assert_clean_failure(
        proc,
        "--family LlamaForCausalLM builds the checkpoint as another model than MyMistralForCausalLM",
        "build with a family that builds it as transformers does, or without --verify",
        out=tmp_path / "c",
    )
    assert "drop --family" not in proc.stderr, proc.stderr


def test_a_config_family_that_fails_on_its_config_leaves_only_the_window_warning_out(tmp_path, monkeypatch):
    """The comparison builds config.json's family's spec only to warn: a (plugin) family registered
    for that name whose make_spec fails its own way must not fail a build with another family."""
    from architectures.llama import LlamaBuilder
    from architectures.mistral import MistralBuilder
    from builder import build

    def broken(self, config, target=None):
        raise RuntimeError("a plugin's own bug")

    windowed = make_checkpoint(tmp_path / "mistral", TINY_CONFIGS["mistral"], dtype="float32")
    monkeypatch.setattr(MistralBuilder, "make_spec", broken)
    result = build(model=str(windowed), output=str(tmp_path / "out"), precision="fp32", family=LlamaBuilder)
    assert (tmp_path / "out" / "model.onnx").is_file() and not any("window" in n for n in result.report["notes"])


@pytest.mark.parametrize("family", ["qwen3_5", "gemma3-vl"])
def test_a_stored_lm_head_of_a_tied_multimodal_checkpoint_builds(tmp_path, family):
    """Its text model sits under model.language_model, its tie flag in text_config; the copy is
    left out as in a flat checkpoint, and the build still matches transformers."""
    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS[family], dtype="float32", tied_lm_head=True)
    proc = cli("-m", ckpt, "-o", tmp_path / "out", "-p", "fp32", "--verify")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    verify = json.loads((tmp_path / "out" / "build_report.json").read_text())["verify"]
    assert verify["status"] == "passed" and verify["max_abs"] < 1e-4, verify


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "generation_config.json"])
def test_damaged_json_files_beside_the_weights_are_refused(ckpt, tmp_path, name):
    """They were copied as they were: exit 0 (--verify passed), genai could not load the
    folder, and a rebuild copied the same file again."""
    (ckpt / name).write_text('{"model": {')
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), f"{ckpt / name} is not valid JSON", "re-download it", out=out)


def test_a_tokenizer_file_that_is_a_folder_is_named(ckpt, tmp_path):
    """It was skipped, and the build warned that tokenizer.json was not found."""
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.json").mkdir()
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), f"{ckpt / 'tokenizer.json'} is not a file", out=out)


@pytest.mark.parametrize(
    "name,content,words",
    [
        ("generation_config.json", "[1]", "holds an array, not a JSON object"),
        ("tokenizer_config.json", '"text"', "holds a string, not a JSON object"),
        ("generation_config.json", '{"temperature": "hot"}', "temperature = 'hot' is not valid"),
        # parsed, but genai's tokenizer could not load them (exit 0, then a failure at the first prompt)
        ("tokenizer.json", '{"hello": 1}', 'has no "model" object'),
        ("tokenizer_config.json", '{"model_max_length": "x"}', 'model_max_length is "x", not a number'),
        ("tokenizer_config.json", '{"bos_token": 5}', "bos_token is 5, not a token"),
    ],
)
def test_json_files_beside_the_weights_that_hold_no_settings_are_refused(ckpt, tmp_path, name, content, words):
    """generation_config.json holding [1] was copied as it was and its defaults dropped (exit 0); a
    bad value in it was refused after every weight was written, and told to fix config.json."""
    (ckpt / name).write_text(content)
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out)
    assert_clean_failure(proc, str(ckpt / name), words, "re-download", out=out)
    assert "config.json)" not in proc.stderr.replace(name, "")  # names the file to fix
    assert "layer" not in proc.stderr  # refused before the weights


@pytest.mark.parametrize(
    "name,content,words",
    [
        ("tokenizer.json", "null", "holds null, not a JSON object"),
        ("special_tokens_map.json", "true", "holds a boolean, not a JSON object"),
        ("added_tokens.json", "3", "holds a number, not a JSON object"),
        # nested past Python's recursion limit: json raises RecursionError, not a JSONDecodeError
        ("tokenizer_config.json", "[" * 100_000 + "]" * 100_000, "is not valid JSON"),
        ("tokenizer.json", '{"model": null}', 'has no "model" object'),
        ("tokenizer_config.json", '{"model_max_length": true}', "model_max_length is true, not a number"),
        ("tokenizer_config.json", '{"add_bos_token": "yes"}', 'add_bos_token is "yes", not true or false'),
        ("tokenizer_config.json", '{"eos_token": {"id": 2}}', 'eos_token is {"id": 2}, not a token'),
    ],
)
def test_tokenizer_files_genai_cannot_load_are_refused_by_the_check(tmp_path, name, content, words):
    """The values the check above refuses through the command line, each of its kinds (a boolean
    is an int to Python, an AddedToken needs its content)."""
    from builder.kit.tokenizer_files import check_tokenizer_files

    (tmp_path / name).write_text(content)
    with pytest.raises(BuilderError) as caught:
        check_tokenizer_files(tmp_path)
    assert str(tmp_path / name) in str(caught.value) and words in str(caught.value)


def test_tokens_past_the_vocabulary_are_counted_and_shown_by_id(tmp_path):
    """Every id past the embedding counts, from the model's vocab and the added tokens alike; the
    warning shows the lowest three, in id order, whatever order the file lists them in."""
    from builder.kit.tokenizer_files import check_tokenizer_files

    vocab = {"a": 0, "z": 9, "y": 7, "b": 1}
    added = [{"id": 8, "content": "<x>"}, {"id": 6, "content": "<w>"}]
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "BPE", "vocab": vocab}, "added_tokens": added})
    )
    [warning] = check_tokenizer_files(tmp_path, 6)
    assert (
        "has 4 token(s) with ids past the model's vocabulary (0 .. 5): '<w>' (6), 'y' (7), '<x>' (8) ...; " in warning
    )
    [warning] = check_tokenizer_files(tmp_path, 7)
    assert "has 3 token(s) with ids past the model's vocabulary (0 .. 6): 'y' (7), '<x>' (8), 'z' (9); " in warning


def test_unreadable_files_beside_the_weights_are_one_line(ckpt, tmp_path, monkeypatch):
    """A tokenizer file another user owns (a shared cache) gave a PermissionError traceback.
    Simulated: the tests may run as root, whom permissions do not stop."""
    from builder import build

    real = Path.read_bytes

    def denied(path):
        if path.name == "tokenizer.json":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(
        BuilderError, match=r"could not read .*tokenizer.json \(Permission denied\); check its permissions"
    ):
        build(model=str(ckpt), output=str(tmp_path / "out"), show_progress=False)
    assert not (tmp_path / "out").exists()


def test_os_errors_no_check_foresaw_are_one_line(ckpt, tmp_path):
    """An output name longer than the file system allows gave an ENAMETOOLONG traceback."""
    out = tmp_path / ("y" * 256)
    proc = cli("-m", ckpt, "-o", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: could not access {out} (File name too long); check the path, its permissions and its disk"
    ]


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    import builder.pipeline
    from builder.cli import main

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(builder.pipeline, "build_from_flags", no_memory)
    assert main(["-m", "x", "--quiet"]) == 1
    assert (
        capsys.readouterr().err
        == "error: out of memory; close other programs, or lower --read-ahead-mb (batch: --jobs)\n"
    )


def test_full_disk_for_verify_copy_is_one_line(ckpt, tmp_path, monkeypatch):
    """--verify writes a copy of model.onnx beside it; a full disk there was a traceback."""
    import onnx

    from builder import build

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    with pytest.raises(BuilderError, match=r"verify: writing its copy of model.onnx beside it failed \(No space"):
        build(model=str(ckpt), output=str(tmp_path / "out"), verify=True, show_progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".builder-staging-*"))


def test_a_fifo_for_a_weight_file_is_refused_not_waited_on(ckpt, tmp_path):
    """open() of a FIFO blocks until a writer comes: the build hung forever."""
    import os

    (ckpt / "model.safetensors").unlink()
    os.mkfifo(ckpt / "model.safetensors")
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "model.safetensors is not a regular file", out=out)


def test_a_folder_that_cannot_be_listed_is_not_called_empty(ckpt, monkeypatch):
    """Without read permission on the folder (root ignores it, hence os.access stands in), its
    *.safetensors cannot be listed: 'no *.safetensors files' sent the user to convert .bin files."""
    import os

    (ckpt / "model.safetensors").unlink()
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(BuilderError, match=r"could not list .*ckpt \(Permission denied\); check its permissions"):
        Checkpoint(ckpt)
    monkeypatch.undo()
    with pytest.raises(BuilderError, match=r"no \*.safetensors files in .*ckpt"):
        Checkpoint(ckpt)


def test_a_config_that_is_no_object_is_refused(ckpt):
    for text in ("[1]", '"qwen3"', "null"):
        (ckpt / "config.json").write_text(text)
        with pytest.raises(BuilderError, match=r"config.json must hold a JSON object \(fix or re-download"):
            Checkpoint(ckpt)


def test_a_dangling_weight_link_asks_for_a_download(ckpt, tmp_path):
    """An HF cache snapshot whose blob is gone was called "not a regular file"."""
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").symlink_to(tmp_path / "gone")
    out = tmp_path / "out"
    assert_clean_failure(
        cli("-m", ckpt, "-o", out), "model.safetensors points to a file that is missing; re-download", out=out
    )


def test_a_stray_safetensors_beside_model_safetensors_is_not_read(ckpt, tmp_path):
    """Without an index every *.safetensors was read, so a second copy of the weights under other
    names (Mistral's consolidated.safetensors) was refused as tensors the build leaves out;
    transformers reads model.safetensors alone there."""
    from safetensors.numpy import save_file

    plain = cli("-m", ckpt, "-o", tmp_path / "plain")
    save_file({"tok_embeddings.weight": np.zeros((4, 4), np.float32)}, str(ckpt / "consolidated.safetensors"))
    stray = cli("-m", ckpt, "-o", tmp_path / "stray")
    assert plain.returncode == stray.returncode == 0, stray.stderr
    same = [(tmp_path / d / "model.onnx.data").read_bytes() for d in ("plain", "stray")]
    assert same[0] == same[1]


def test_a_peft_adapter_is_named_alone_and_beside_its_base(ckpt, tmp_path):
    """A LoRA fine-tune's output folder (adapter_config.json, adapter_model.safetensors) was met with
    'config.json is missing: not a Hugging Face checkpoint folder', and the same adapter saved beside
    its base model's weights was left out of the build without a word."""
    from safetensors.numpy import save_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "Q/B"}))
    lora = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({lora: np.zeros((8, 64), np.float32)}, str(adapter / "adapter_model.safetensors"))
    out = tmp_path / "out"
    assert_clean_failure(
        cli("-m", adapter, "-o", out),
        "holds a PEFT adapter (adapter_config.json, adapter_model.safetensors; base model 'Q/B') and no config.json",
        "merge_and_unload()",
        out=out,
    )
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(adapter / name, ckpt / name)
    proc = cli("-m", ckpt, "-o", out)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "also holds a PEFT adapter" in warnings[0] and "does not apply" in warnings[0]


def test_an_adapter_config_without_a_base_name_names_no_base(tmp_path):
    """base_model_name_or_path is null, a number or a list in hand-edited configs, and the file may
    hold no object at all: the adapter is named without a base model."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for config in ({"base_model_name_or_path": 7}, {"base_model_name_or_path": ["Q/B"]}, {}, ["Q/B"]):
        (adapter / "adapter_config.json").write_text(json.dumps(config))
        with pytest.raises(BuilderError, match=r"holds a PEFT adapter \(adapter_config.json\) and no config.json"):
            Checkpoint(adapter)


def test_fewer_layers_than_num_hidden_layers_refused_before_building(ckpt, tmp_path):
    set_config(ckpt, num_hidden_layers=10**9)  # would loop over a billion layers unchecked
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "num_hidden_layers = 1000000000", "model.layers.2.*", out=out)


@pytest.mark.parametrize("prefix", ["base_model.model.model.", "module.model.", ""])
def test_layers_under_another_prefix_are_named_with_it(ckpt, tmp_path, prefix):
    """A state dict saved from inside a wrapper (PEFT, DDP) or from the bare decoder holds every layer
    under another prefix: the build called it incomplete, which sent the user to download it again."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(ckpt / "model.safetensors")
    save_file(
        {prefix + name.removeprefix("model."): value for name, value in tensors.items()}, ckpt / "model.safetensors"
    )
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out)
    assert_clean_failure(proc, "no tensors model.layers.0.*", f"named {prefix}layers.N.* instead", out=out)
    assert "incomplete" not in proc.stderr


# ---- context length -------------------------------------------------------------------


def test_context_beyond_the_model_needs_the_flag(ckpt, tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(
        cli("-m", ckpt, "-o", out, "--context-length", "1000000000"),
        "supports (256 positions",
        "--allow-long-context",
        out=out,
    )
    assert_clean_failure(
        cli("-m", ckpt, "-o", out, "--context-length", str(2**31), "--allow-long-context"), "int32", out=out
    )


def test_linear_rope_scaling_without_an_original_window_supports_max_position_embeddings():
    """Gemma 3's configs list the scaled length (131072, factor 8) and no original window: the
    factor was applied to it again, so 8x the real context was built without --allow-long-context."""
    from builder.kit.rope import RopeSpec

    gemma = {"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    assert RopeSpec.from_config(gemma, 64).max_positions(131072) == 131072
    llama3 = {
        "max_position_embeddings": 8192,  # a config that lists the original window as max
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    assert RopeSpec.from_config(llama3, 64).max_positions(8192) == 65536


def test_partial_rotary_factor_inside_rope_parameters_is_read():
    """transformers 5 saves partial_rotary_factor inside rope_parameters (GLM 4, Phi-3): only the
    top level was read, so a family with partial rotary rotated whole heads, without a word."""
    import torch
    from transformers import Glm4Config
    from transformers.models.glm4.modeling_glm4 import Glm4RotaryEmbedding

    from builder.kit.rope import RopeSpec

    config = Glm4Config(
        hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_hidden_layers=1, vocab_size=64
    )
    saved = config.to_dict()
    assert "partial_rotary_factor" not in saved and saved["rope_parameters"]["partial_rotary_factor"] == 0.5
    spec = RopeSpec.from_config(saved, 32)
    assert spec.rotary_dim == 16
    assert torch.equal(torch.from_numpy(spec.inv_freq()), Glm4RotaryEmbedding(config).inv_freq)
    # As transformers: rope_parameters' value wins over a top-level one.
    assert RopeSpec.from_config({**saved, "partial_rotary_factor": 1.0}, 32).rotary_dim == 16
    assert RopeSpec.from_config({"partial_rotary_factor": 0.25}, 32).rotary_dim == 8


@pytest.mark.parametrize(
    "scaling,lacks",
    [
        ({"rope_type": "llama3", "factor": 8.0}, "low_freq_factor, high_freq_factor, original_max_position_embeddings"),
        ({"rope_type": "linear"}, "factor"),
    ],
)
def test_rope_scaling_without_its_parameters_is_refused(ckpt, tmp_path, scaling, lacks):
    """A llama3 scaling with its factor alone was built with low/high_freq_factor and the original
    window guessed (1, 4, max_position_embeddings), a model transformers refuses to load."""
    import re
    import shutil

    from builder.pipeline import build

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "rope_scaling": scaling}))
    message = f"{bad}/config.json: {scaling['rope_type']} rope scaling needs .*; it lacks {lacks} (fix or re-download"
    with pytest.raises(BuilderError, match=re.escape(message).replace(re.escape(".*"), ".*")):
        build(model=str(bad), output=str(tmp_path / "o"), show_progress=False)
    assert not (tmp_path / "o").exists()


def test_llama3_scaling_with_its_original_window_at_the_top_level_builds_as_transformers_runs_it(tmp_path):
    """transformers takes a llama3 (or yarn) scaling's pre-scaling window from a top-level
    original_max_position_embeddings first (standardize_rope_params, the Phi-3 layout); a config
    that kept it there alone was refused as lacking it. A 40-token prompt and 24 decode steps run
    past that 16-position window and the 32 of max_position_embeddings, to the 64 it scales to."""
    from builder.pipeline import build
    from builder.verify import verify_build

    scaling = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    folder = make_checkpoint(tmp_path / "llama", {**TINY_CONFIGS["llama"], "max_position_embeddings": 32})
    config = json.loads((folder / "config.json").read_text())
    config.update(rope_scaling=scaling, original_max_position_embeddings=16)
    (folder / "config.json").write_text(json.dumps(config))
    options = BuildOptions(
        model=str(folder), output=str(tmp_path / "o"), precision="fp32", logits="all", context_length=64
    )
    result = build(options, show_progress=False)
    parity = verify_build(result.output, folder, options, prompt_length=40, decode_steps=24)
    assert parity.steps == 25 and parity.max_abs < 1e-4 and parity.argmax_agree == 1.0, parity


def test_a_tied_config_whose_checkpoint_holds_another_lm_head_is_built_with_it(tmp_path):
    """transformers 5 unties a checkpoint that stores both tables with different values; the build
    tied them and dropped lm_head.weight (verify: NMSE 1.05). Equal tables stay tied, as before."""
    from builder.pipeline import build

    untied = make_checkpoint(tmp_path / "untied", TINY_CONFIGS["qwen3-untied"])
    config = json.loads((untied / "config.json").read_text())
    (untied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    result = build(model=str(untied), output=str(tmp_path / "o"), precision="fp32", verify=True, show_progress=False)
    assert result.report["verify"]["status"] == "passed", result.report["verify"]
    assert [n for n in result.report["notes"] if n.startswith("config.json ties the embeddings")]
    same, plain = (
        build(
            model=str(make_checkpoint(tmp_path / name, TINY_CONFIGS["qwen3"], tied_lm_head=stored)),
            output=str(tmp_path / f"o-{name}"),
            show_progress=False,
        )
        for name, stored in (("stored", True), ("plain", False))
    )
    assert not [n for n in same.report["notes"] if n.startswith("config.json ties")]
    assert (same.output / "model.onnx.data").read_bytes() == (plain.output / "model.onnx.data").read_bytes()


def test_verify_fits_its_check_into_a_short_context(ckpt, tmp_path):
    """--verify ran a 16-token prompt and 4 decode steps whatever the context, and a context
    under 20 ended in GroupQueryAttention's cos_cache error as a traceback."""
    from builder import build

    result = build(model=str(ckpt), output=str(tmp_path / "o"), context_length=8, verify=True, show_progress=False)
    assert result.report["verify"]["status"] == "passed" and result.report["verify"]["steps"] == 2
    out = tmp_path / "one"
    assert_clean_failure(
        cli("-m", ckpt, "-o", out, "--context-length", "1", "--verify"), "at least 2 positions", out=out
    )
    # The same context from config.json, with no --context-length to refuse up front.
    set_config(ckpt, max_position_embeddings=1)
    assert_clean_failure(
        cli("-m", ckpt, "-o", out, "--verify"), "at least 2 positions", "max_position_embeddings gives 1", out=out
    )


def test_context_bounded_by_memory(ckpt, tmp_path, monkeypatch):
    import builder.kit.plan as plan
    from builder import build

    monkeypatch.setattr(plan, "available_memory_bytes", lambda: 1 << 20)
    with pytest.raises(BuilderError, match="GiB of rotary cache"):
        build(
            model=str(ckpt),
            output=str(tmp_path / "out"),
            context_length=100_000,
            allow_long_context=True,
            show_progress=False,
        )
    assert not (tmp_path / "out").exists()


def test_a_context_past_int32_names_where_it_came_from(ckpt, tmp_path):
    """A config.json claiming 3e9 positions was told to pass a smaller --context-length that
    nobody had passed."""
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 3_000_000_000}))
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out)
    assert_clean_failure(proc, "context length 3000000000 (config.json's max_position_embeddings) is more", out=out)
    proc = cli("-m", ckpt, "-o", out, "--context-length", "3000000000", "--allow-long-context")
    assert_clean_failure(proc, "context length 3000000000 (--context-length) is more", out=out)


def test_rotary_cache_sized_to_the_context_built(ckpt, tmp_path):
    import onnx

    from builder import build

    result = build(model=str(ckpt), output=str(tmp_path / "short"), context_length=48, show_progress=False)
    model = onnx.load(str(result.output / "model.onnx"), load_external_data=False)
    cos = next(t for t in model.graph.initializer if t.name == "cos_cache")
    assert list(cos.dims) == [48, 16]
    long = build(
        model=str(ckpt),
        output=str(tmp_path / "long"),
        context_length=1000,
        allow_long_context=True,
        show_progress=False,
    )
    assert long.report["model"]["context_length"] == 1000
    assert json.loads((long.output / "genai_config.json").read_text())["model"]["context_length"] == 1000


def test_rope_caches_in_slices_equal_one_pass():
    from builder.kit.rope import RopeSpec

    rope = RopeSpec(10000.0, 64)
    n = (1 << 20) // 32 * 2 + 5  # three slices
    positions = np.arange(n, dtype=np.float32)
    freqs = np.outer(positions, rope.inv_freq()).astype(np.float32).astype(np.float64)
    cos, sin = rope.caches(n, np.float16)
    assert np.array_equal(cos, np.cos(freqs).astype(np.float32).astype(np.float16))
    assert np.array_equal(sin, np.sin(freqs).astype(np.float32).astype(np.float16))


def test_rope_caches_are_the_same_on_any_cpu():
    # numpy's float32 cos/sin differ in the last bit between AVX2 and AVX-512 machines (the golden
    # hashes failed on whichever had not recorded them); the caches are double cos/sin rounded once,
    # so they equal the C library's double results rounded, entry for entry.
    import math

    from builder.kit.rope import RopeSpec

    rope = RopeSpec(1000000.0, 128)
    cos, sin = rope.caches(40960, np.float32)
    inv = rope.inv_freq()
    exponents = np.arange(0, 128, 2) / 128
    assert np.array_equal(inv, [np.float32(1 / np.float32(math.pow(np.float32(1000000.0), e))) for e in exponents])
    rows = np.random.default_rng(0).integers(0, 40960, 300)
    for row in rows:
        freqs = [float(np.float32(np.float32(row) * f)) for f in inv]
        assert np.array_equal(cos[row], [np.float32(math.cos(f)) for f in freqs])
        assert np.array_equal(sin[row], [np.float32(math.sin(f)) for f in freqs])


# ---- target versions ------------------------------------------------------------------


@pytest.mark.parametrize(
    "ep,version,ok",
    [
        ("cpu", "0.1", False),
        ("cpu", "1.16", False),
        ("cpu", "1.17", True),
        ("webgpu", "1.19", False),
        ("webgpu", "1.20", True),
    ],
)
def test_target_ort_floor(ep, version, ok):
    from builder.kit.options import BuildOptions
    from builder.kit.targets import Target

    options = BuildOptions(model="x", ep=ep, target_ort=version)
    if ok:
        assert Target.from_options(options).ort_version == tuple(int(v) for v in version.split("."))
    else:
        with pytest.raises(BuilderError, match=f"--target-ort {version}: -e {ep} builds need ONNX Runtime >="):
            Target.from_options(options)


def test_target_ort_floor_cli(ckpt, tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out, "--target-ort", "0.1"), "--target-ort 0.1", "1.17", out=out)


@pytest.mark.parametrize("version", ["1.31.0.5", "1.31.0rc1", "1.031", "1.", ".31", "1.31 ", "v1.31", "1,31"])
def test_target_ort_that_is_not_a_plain_version_is_refused(version):
    """Each built as 1.31, though the error for 'x' says 'a version like 1.27 or 1.27.0'."""
    with pytest.raises(BuilderError, match=r"--target-ort: .* is not a version like 1\.27 or 1\.27\.0"):
        BuildOptions(model="x", target_ort=version).validated()


@pytest.mark.parametrize(
    "version,parsed", [("1.27", (1, 27)), ("1.27.0", (1, 27)), ("1.27.1", (1, 27)), ("1.30", (1, 30)), ("2", (2, 0))]
)
def test_target_ort_versions_in_use_still_parse(version, parsed):
    from builder.kit.targets import Target

    assert Target.from_options(BuildOptions(model="x", target_ort=version).validated()).ort_version == parsed


def test_an_installed_runtime_with_a_suffixed_version_is_read_by_its_release(monkeypatch):
    """Only --target-ort is held to plain versions: installed builds carry .dev and +local tails."""
    import importlib.metadata

    from builder.kit.targets import installed_runtime_version

    monkeypatch.setattr(importlib.metadata, "version", lambda package: "1.23.0.dev20250101+cu121")
    assert installed_runtime_version("cpu") == (1, 23)


def test_the_printed_build_time_includes_making_the_report_and_publishing(ckpt, tmp_path, monkeypatch, capsys):
    """'6/6 done (0.2s)' was followed by 'built ... in 0.0s': the time printed was the report's
    total_s, taken before the report was made. The report's field stays what it was."""
    import re
    import time

    import builder.pipeline as pipeline
    from builder import build

    make_report = pipeline.make_report

    def slow_report(*args, **kwargs):
        time.sleep(1.0)
        return make_report(*args, **kwargs)

    monkeypatch.setattr(pipeline, "make_report", slow_report)
    result = build(model=str(ckpt), output=str(tmp_path / "out"), precision="fp32", show_progress=True)
    err = capsys.readouterr().err
    printed = float(re.search(r"built .* in ([0-9.]+)s ", err)[1])
    done = float(re.findall(r"done \(([0-9.]+)s\)", err)[-1])
    total_s = result.report["timings"]["total_s"]
    assert printed >= 1.0 and printed >= done, err
    assert total_s < printed - 0.9, (total_s, printed)


def test_the_reported_peak_memory_is_the_builds_not_the_python_sessions(ckpt, tmp_path):
    """build() in a session that held 600 MB before (a model loaded, an earlier build's verify)
    recorded 600 MB as the ~0.1 GB build's peak_rss_bytes, and batch shows a report's figure."""
    script = f"""
import json, numpy as np
from builder import build
held = np.ones(600 << 20, dtype=np.uint8)
del held
before = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]) * 1024
result = build(model={str(ckpt)!r}, output={str(tmp_path / "out")!r}, precision="fp32", show_progress=False)
print(json.dumps([before, result.report["peak_rss_bytes"]]))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    before, peak = json.loads(run.stdout.splitlines()[-1])
    assert before <= peak < before + (300 << 20), (before, peak)


# ---- output folders and full disks ----------------------------------------------------


@pytest.mark.parametrize(
    "where,fragment",
    [
        ("/proc/no-such/out", "No such file"),
        ("/sys/builder-out", "cannot create the output folder"),
        ("FILE/out", "is a file, not a folder"),
    ],
)
def test_output_folder_cannot_be_created(ckpt, tmp_path, where, fragment):
    if where.startswith("FILE"):
        (tmp_path / "FILE").write_text("x")
        where = str(tmp_path / where)
    proc = cli("-m", ckpt, "-o", where)
    assert_clean_failure(proc, "output folder", fragment)


def test_an_own_output_folder_in_a_folder_one_cannot_write_says_why_and_what_to_pass(ckpt, tmp_path, monkeypatch):
    """-o /models/alice, alice's own folder in a /models she cannot write: the error named only a
    hidden staging folder beside it."""
    from builder import build

    models, own = tmp_path / "models", tmp_path / "models" / "alice"
    own.mkdir(parents=True)
    models.chmod(0o555)
    if os.geteuid() == 0:  # no permission stops root: what mkdir tells any other user there
        real_mkdir = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if self.parent == models and not self.exists():  # an existing one is EEXIST first
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    try:
        with pytest.raises(BuilderError) as refused:
            build(model=str(ckpt), output=str(own), overwrite=True, show_progress=False)
        said = str(refused.value)
        assert f"cannot build into {own}: a build writes beside it, in {models}," in said, said
        assert f"pass a folder inside it, such as {own / 'my-model'}" in said, said
        assert not any(own.iterdir()) and sorted(p.name for p in models.iterdir()) == ["alice"]
        build(model=str(ckpt), output=str(own / "my-model"), show_progress=False)
        assert (own / "my-model" / "build_report.json").is_file()
    finally:
        models.chmod(0o755)


def test_output_names_no_folder(ckpt, tmp_path):
    assert_clean_failure(cli("-m", ckpt, "-o", "/"), "names no folder of its own", "such as out/my-model")
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "-m", str(ckpt), "-o", ".", "--overwrite"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert_clean_failure(proc, "output '.' names no folder of its own (a build replaces its whole output folder)")


def test_an_output_that_is_a_mount_point_is_refused_before_building(ckpt, tmp_path, monkeypatch):
    """The whole build ran, then renaming it over the mount point failed (EBUSY) with a message
    that did not say why."""
    from builder import build

    mount = tmp_path / "mnt"
    mount.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == mount or real(p))
    with pytest.raises(
        BuilderError, match=r"mnt is a mount point, which a build cannot replace.*such as .*mnt/my-model"
    ):
        build(model=str(ckpt), output=str(mount), overwrite=True, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "mnt"] and not any(mount.iterdir())


def test_a_bind_mount_of_the_same_file_system_at_the_output_is_refused_before_building(ckpt, tmp_path, monkeypatch):
    """os.path.ismount misses a bind mount whose source is on the output's own file system (same
    device number): the whole build ran, then its rename into place failed (EBUSY). Linux lists such
    a mount in /proc/self/mountinfo; making one needs CAP_SYS_ADMIN, which a test run may lack, so the
    table here is this process's own plus the line `mount --bind volume "m nt"` adds (a space in the
    name, which the table writes as \\040)."""
    from builder import build, output_dir

    mount = tmp_path / "m nt"
    mount.mkdir()
    assert not os.path.ismount(mount)  # what the check relied on
    table = tmp_path / "mountinfo"
    escaped = os.path.realpath(mount).replace(" ", "\\040")
    table.write_bytes(
        Path(output_dir.MOUNT_TABLE).read_bytes() + f"999 25 0:26 /volume {escaped} rw - ext4 /dev/sda1 rw\n".encode()
    )
    monkeypatch.setattr(output_dir, "MOUNT_TABLE", str(table))
    with pytest.raises(BuilderError, match="is a mount point") as refused:
        build(model=str(ckpt), output=str(mount), overwrite=True, show_progress=False)
    assert f"such as {mount / 'my-model'}" in str(refused.value)
    assert not any(mount.iterdir()) and not list(tmp_path.glob(".builder-staging-*"))
    assert not output_dir.is_mount_point(tmp_path / "volume")  # only the folder the table names


def test_disk_full_while_copying_the_tokenizer(ckpt, tmp_path):
    import resource
    import signal

    tokenizer = ckpt / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text() + " " * (2 << 20))  # bigger than the model files

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, preexec_fn=small_files)
    assert_clean_failure(proc, f"copying the tokenizer files into {out} failed", "file-size limit", out=out)


def test_disk_full_while_writing_genai_config(ckpt, tmp_path, monkeypatch):
    import errno

    from builder import build

    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "genai_config.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(BuilderError, match="No space left on device.*free disk space"):
        build(model=str(ckpt), output=str(tmp_path / "out"), show_progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".builder-staging-*"))


# ---- terminal messages ------------------------------------------------------------------


def test_warning_and_error_start_on_their_own_line():
    import re

    from builder.kit import progress as progress_module

    term = FakeTerminal()
    progress = progress_module.Progress(4, label="m", stream=term)
    progress.step("layer 1/2")
    progress.warn("something odd")
    # The progress line is cleared before the warning and redrawn after it.
    assert "\r\033[Kwarning: something odd\n\r\033[Km [" in term.text
    progress.step("layer 2/2")
    progress_module.end_line()  # what the CLI does before printing an error
    assert re.search(r"layer 2/2 \(\d+\.\ds\)\n$", term.text), term.text
    progress_module.end_line()  # nothing open: nothing written
    assert term.text.endswith(")\n")


def test_a_dumb_terminal_gets_a_logs_lines(monkeypatch):
    """TERM=dumb (Emacs' shell buffer) shows escapes as text: each redraw's '\\r\\033[K' stacked up as
    '^[[K' in one growing line. It gets what a log gets, a line per step, and no escape."""
    from builder.kit import progress as progress_module

    monkeypatch.setenv("TERM", "dumb")
    term = FakeTerminal()
    progress = progress_module.Progress(2, label="m", stream=term)
    progress.step("layer 1/1")
    progress.warn("something odd")
    progress.step("done")
    progress.finish("built m")
    progress_module.end_line()
    lines = term.text.splitlines()
    assert "\033" not in term.text and "\r" not in term.text, repr(term.text)
    assert [line.split(" (")[0] for line in lines] == [
        "m [############------------] 1/2 layer 1/1",
        "warning: something odd",
        "m [########################] 2/2 done",
        "built m",
    ], lines


def test_the_progress_line_stays_one_terminal_row(monkeypatch):
    """An 80-column terminal wrapped 'qwen3-4b-instruct-2507-int4-webgpu [...] 2/40 layer 1/36 (..)',
    and a wrapped line is not cleared by the next redraw: a copy stacked up each step. A long
    name gives way first, so the counts stay; a log keeps the whole line."""
    import io

    from builder.kit import progress as progress_module

    monkeypatch.setenv("COLUMNS", "80")
    name = "qwen3-4b-instruct-2507-int4-webgpu-transformers-js"
    term = FakeTerminal()
    progress = progress_module.Progress(40, label=name, stream=term)
    progress.step("reading the checkpoint")
    progress.step("layer 1/36 (mlp, attention)")
    progress.show("[running] " + ", ".join(f"job-{i} {i} s" for i in range(20)))
    rows = term.text.split("\r\033[K")[1:]
    assert len(rows) == 3 and all(len(row) <= 79 for row in rows), rows
    assert "2/40 layer 1/36 (mlp, attention)" in rows[1] and rows[1].startswith("qwen3-4b-...")
    assert rows[2].endswith("...")
    log = io.StringIO()
    progress_module.Progress(40, label=name, stream=log).step("layer 1/36 (mlp, attention)")
    assert log.getvalue().startswith(name + " [")


def test_a_narrow_terminal_keeps_the_name_and_counts_before_the_bar(monkeypatch):
    """At 40 columns (a split tmux pane) the 26-character bar left 'o... [####----] 1/6 ...': no
    name, and a short one ('o1') lengthened into 'o...'. The bar gives way first there."""
    import re

    from builder.kit import progress as progress_module

    def rows(columns: int, label: str) -> list[str]:
        monkeypatch.setenv("COLUMNS", str(columns))
        term = FakeTerminal()
        progress = progress_module.Progress(6, label=label, stream=term)
        progress.step("layer 1/2")
        drawn = term.text.split("\r\033[K")[1:]
        assert all(len(row) < columns for row in drawn), drawn
        return drawn

    assert re.fullmatch(r"o1 1/6 layer 1/2 \(\d\.\ds\)", rows(40, "o1")[0])
    assert re.fullmatch(r"qwen3-0\.6b-int4\.\.\. 1/6 layer 1/2 \(\d\.\ds\)", rows(40, "qwen3-0.6b-int4-webgpu")[0])
    # where the bar fits beside the name, or 8 characters of it, it stays
    assert re.fullmatch(r"o1 \[#{4}-{20}\] 1/6 layer 1/2 \(\d\.\ds\)", rows(60, "o1")[0])
    assert re.fullmatch(
        r"qwen3-0\.\.\.\. \[#{4}-{20}\] 1/6 layer 1/2 \(\d\.\ds\)", rows(60, "qwen3-0.6b-int4-webgpu")[0]
    )
    assert re.fullmatch(
        r"qwen3-0\.6b-int4-webgpu \[#{4}-{20}\] 1/6 layer 1/2 \(\d\.\ds\)", rows(80, "qwen3-0.6b-int4-webgpu")[0]
    )


def test_a_long_step_keeps_counting_on_a_terminal_and_prints_once_in_a_log():
    """verify's line stood still for minutes at 8B: on a terminal a ticking step redraws its
    elapsed time; a log (batch, CI) still gets one line for it."""
    import io
    import re
    import time

    from builder.kit import progress as progress_module

    def ticks() -> list[float]:
        return [float(x) for x in re.findall(r"1/3 verifying against transformers \((\d+\.\d)s\)", term.text)]

    term = FakeTerminal()
    progress = progress_module.Progress(3, label="m", stream=term)
    with progress.ticking("verifying against transformers", every_s=0.05):
        deadline = time.monotonic() + 60  # a hang guard, not a timing bound: a busy machine only ticks later
        while len(ticks()) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    seconds = ticks()
    assert len(seconds) >= 4 and seconds == sorted(seconds) and seconds[-1] > seconds[0], term.text
    time.sleep(0.2)  # the ticker has stopped with the step
    assert term.text.count("verifying") == len(seconds)
    progress.finish("done")

    log = io.StringIO()
    progress = progress_module.Progress(3, label="m", stream=log)
    with progress.ticking("verifying against transformers", every_s=0.05):
        time.sleep(0.3)
    assert log.getvalue().count("verifying") == 1


def test_the_progress_bar_counts_clamps_and_fits_its_row(monkeypatch):
    import io
    import os
    import re

    from builder.kit import progress as progress_module

    log = io.StringIO()
    progress = progress_module.Progress(0, label="m", stream=log)  # a build of no steps is still one
    progress.step("a")
    progress.step("b")  # more steps than counted: the bar stays full, the count says so
    first, second = log.getvalue().splitlines()
    assert re.fullmatch(r"m \[#{24}\] 1/1 a \(\d+\.\ds\)", first) and second.startswith("m [" + "#" * 24 + "] 2/1 b (")
    log = io.StringIO()
    progress_module.Progress(4, label="m", stream=log).step("layer 1/3")
    assert log.getvalue().startswith("m [" + "#" * 6 + "-" * 18 + "] 1/4 layer 1/3 (")

    monkeypatch.setenv("COLUMNS", "80")
    term = FakeTerminal()
    progress = progress_module.Progress(4, label="x" * 200, stream=term)
    assert progress.columns() == 79
    tail = " [######------------------] 1/4 step (0.0s)"
    progress.label = "x" * (79 - len(tail))  # exactly the room left: kept whole
    progress.step("step")
    progress.label = "y" * 200
    progress.step("step")
    progress.show("z" * 79)  # a row's full width is no wrap
    rows = term.text.split("\r\033[K")[1:]
    room = 79 - len(tail)
    assert re.fullmatch("x" * room + r" \[#{6}-{18}\] 1/4 step \(\d\.\ds\)", rows[0]), rows[0]
    assert re.fullmatch("y" * (room - 3) + r"\.\.\. \[#{12}-{12}\] 2/4 step \(\d\.\ds\)", rows[1]), rows[1]
    assert rows[2] == "z" * 79

    # COLUMNS first, as shutil reads it; else the stream's terminal; a size of 0 (a fresh pty) is none
    class SizedTerminal(FakeTerminal):
        def fileno(self):
            return 99

    size = [os.terminal_size((120, 40))]
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: size[0])
    progress = progress_module.Progress(4, stream=SizedTerminal())
    assert progress.columns() == 79
    monkeypatch.delenv("COLUMNS")
    assert progress.columns() == 119
    size[0] = os.terminal_size((0, 0))
    assert progress.columns() == 79  # shutil's fallback, 80


def test_quiet_progress_writes_nothing_but_warnings(capsys):
    from builder.kit import progress as progress_module

    term = FakeTerminal()
    progress = progress_module.Progress(3, label="m", stream=term, enabled=False)
    progress.step("a")
    progress.show("[running] job-1")
    with progress.ticking("verifying", every_s=0.01):
        pass
    progress.warn("something odd")
    progress.finish("built")
    assert term.text == "" and capsys.readouterr().err == "warning: something odd\n"
    silent = progress_module.SilentProgress()
    silent.step("a")
    silent.finish("built")
    assert capsys.readouterr().err == ""

    term = FakeTerminal()
    progress = progress_module.Progress(3, label="m", stream=term)
    progress.step("a")
    progress.finish("built")
    progress_module.end_line()  # the finish closed the line: nothing more to end
    assert term.text.endswith("\r\033[Kbuilt\n")


def test_quiet_prints_the_folder_alone_as_its_help_says(ckpt, tmp_path):
    """--help said only "No progress display"; the summary line, verify's numbers with it, goes too."""
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, "-p", "fp32", "--verify", "--quiet")
    assert proc.returncode == 0 and proc.stdout == f"{out}\n" and proc.stderr == "", (proc.stdout, proc.stderr)
    assert json.loads((out / "build_report.json").read_text())["verify"]["status"] == "passed"
    help_text = " ".join(cli("--help").stdout.split())
    assert "no summary line: stdout gets the output folder alone" in help_text
    assert "build_report.json holds the timings and --verify's numbers" in help_text


def test_phases_count_a_phase_that_raised_and_round_to_milliseconds():
    from builder.kit.progress import Phases

    phases = Phases()
    phases.add("read", 0.12345)
    phases.add("read", 0.00001)
    with pytest.raises(OSError), phases.timed("write"):
        raise OSError("disk full")
    report = phases.report()
    assert list(report) == ["read", "write"] and report["read"] == 0.123 and report["write"] >= 0


def test_missing_tokenizer_warning_is_one_plain_line(ckpt, tmp_path):
    (ckpt / "tokenizer.json").unlink()
    proc = cli("-m", ckpt, "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: tokenizer file(s) tokenizer.json"), proc.stderr
    assert "UserWarning" not in proc.stderr


def only_vocabulary_files(ckpt: Path) -> None:
    from tokenizers import Tokenizer

    Tokenizer.from_file(str(ckpt / "tokenizer.json")).model.save(str(ckpt))  # vocab.json, merges.txt
    (ckpt / "tokenizer.json").unlink()


def no_tokenizer_config(ckpt: Path) -> None:
    (ckpt / "tokenizer_config.json").unlink()
    (ckpt / "special_tokens_map.json").unlink()


@pytest.mark.parametrize("strip", [only_vocabulary_files, no_tokenizer_config])
def test_missing_tokenizer_files_get_advice_that_works(ckpt, tmp_path, strip):
    """With only vocab.json + merges.txt there was nothing to "copy into" the output, as the warning
    said; and genai's tokenizer cannot open a folder without tokenizer_config.json ("Failed to open a
    json file"), which a checkpoint with tokenizer.json alone has none of in its repository to copy.
    transformers writes what genai reads from them."""
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    strip(ckpt)
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, "-p", "fp32")
    assert proc.returncode == 0, proc.stderr
    advice = f"AutoTokenizer.from_pretrained('{ckpt}').save_pretrained('{out}')"
    assert advice in proc.stderr
    AutoTokenizer.from_pretrained(str(ckpt)).save_pretrained(str(out))
    theirs, ours = AutoTokenizer.from_pretrained(str(ckpt)), og.Tokenizer(og.Model(str(out)))
    for text in ("the river and the town", " naïve café — 你好", "<|im_start|>user\nhi<|im_end|>"):
        assert list(ours.encode(text)) == theirs.encode(text), text


def test_a_metaspace_tokenizer_is_warned_of_in_genai_folders(ckpt, tmp_path):
    """A tokenizer.json as transformers 5 saves Llama 2's and Mistral's (Metaspace pre-tokenizer):
    genai 0.18 puts a '▁' before every stretch of text between special tokens, so the chat prompt
    '<s>[INST] hi [/INST]' got one token more than in transformers, and the build said nothing."""
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    for f in (ckpt / "special_tokens_map.json", ckpt / "tokenizer_config.json", ckpt / "tokenizer.json"):
        f.unlink()
    for f in (Path(__file__).parent / "support" / "metaspace_tokenizer").glob("*.json"):
        shutil.copyfile(f, ckpt / f.name)
    proc = cli("-m", ckpt, "-o", tmp_path / "out", "-p", "fp32")
    assert proc.returncode == 0, proc.stderr
    (warning,) = [line for line in proc.stderr.splitlines() if "Metaspace" in line]
    assert warning.startswith(f"warning: {ckpt / 'tokenizer.json'} splits words with a Metaspace pre-tokenizer")
    assert "encode with transformers and pass the ids to the generator (append_tokens)" in warning
    # What it warns of: genai's ids are transformers' with a '▁' more after [INST].
    messages = json.dumps([{"role": "user", "content": "hi"}])
    theirs = AutoTokenizer.from_pretrained(str(ckpt)).apply_chat_template(json.loads(messages), tokenize=True)
    theirs = list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs)
    ours = og.Tokenizer(og.Model(str(tmp_path / "out")))
    ids = [int(i) for i in ours.encode(ours.apply_chat_template(messages, add_generation_prompt=False))]
    space = AutoTokenizer.from_pretrained(str(ckpt)).convert_tokens_to_ids("▁")
    assert ids == theirs[:2] + [space] + theirs[2:], (ids, theirs)
    js = cli("-m", ckpt, "-o", tmp_path / "js", "-p", "fp32", "--format", "transformers.js")
    assert js.returncode == 0 and "Metaspace" not in js.stderr, js.stderr


def test_a_missing_tokenizer_names_the_runtime_that_needs_it(ckpt, tmp_path):
    (ckpt / "tokenizer.json").unlink()
    for fmt, reader in (("genai", "onnxruntime-genai"), ("transformers.js", "transformers.js")):
        proc = cli("-m", ckpt, "-o", tmp_path / fmt, "--format", fmt)
        assert proc.returncode == 0, proc.stderr
        assert f"the model was built, but {reader} needs them to tokenize" in proc.stderr, proc.stderr


def test_tokenizer_advice_knows_sentencepiece_and_bpe_vocabularies(tmp_path):
    """transformers writes tokenizer.json from tokenizer.model (SentencePiece) as from vocab.json;
    without either there is nothing to make it from, and the files must come from the repository."""
    from builder.pipeline import _tokenizer_advice

    for copied in (["vocab.json", "merges.txt"], ["tokenizer.json"], ["tokenizer.json", "tokenizer.model"]):
        assert _tokenizer_advice(copied, tmp_path / "ckpt", tmp_path / "out").startswith(
            "transformers makes them from the checkpoint's vocabulary files: AutoTokenizer.from_pretrained("
        ), copied
    # transformers 5 without sentencepiece fails on tokenizer.model asking for tiktoken instead.
    assert _tokenizer_advice(
        ["tokenizer.model", "tokenizer_config.json"], tmp_path / "ckpt", tmp_path / "out"
    ).startswith(
        "transformers makes them from the checkpoint's vocabulary files (tokenizer.model needs the sentencepiece "
        "package: pip install sentencepiece): AutoTokenizer.from_pretrained("
    )
    advice = _tokenizer_advice(["tokenizer_config.json"], tmp_path / "ckpt", tmp_path / "out")
    assert advice == f"copy them from the model's original repository into {tmp_path / 'out'}"


def test_verify_memory_is_checked_only_where_verify_runs(ckpt, tmp_path, monkeypatch):
    """--verify runs on cpu alone: a webgpu build with it must not be refused for verify's memory."""
    import builder.verify
    from builder.pipeline import build

    def short(*args):
        raise BuilderError("short of memory to verify")

    monkeypatch.setattr(builder.verify, "check_verify_memory", short)
    result = build(model=str(ckpt), output=str(tmp_path / "out"), ep="webgpu", verify=True, show_progress=False)
    assert result.report["verify"]["status"] == "not run"
    with pytest.raises(BuilderError, match="short of memory to verify"):
        build(model=str(ckpt), output=str(tmp_path / "cpu"), verify=True, show_progress=False)


def test_the_progress_count_ends_at_its_total(ckpt, tmp_path, capsys):
    """The step count is planned up front (layers, the fixed steps, hashing): a build ends at n/n."""
    import re

    from builder.pipeline import build

    for options in ({}, {"checkpoint_hash": True}):
        result = build(model=str(ckpt), output=str(tmp_path / "out"), overwrite=True, **options)
        err = capsys.readouterr().err
        counts = re.findall(r"\] (\d+)/(\d+) ", err)
        assert counts and counts[-1][0] == counts[-1][1] and len(counts) == int(counts[-1][1]), counts
        megabytes = result.report["sizes"]["total_bytes"] / 1e6
        assert err.endswith(f" nodes, {megabytes:.1f} MB)\n") and 0.1 < megabytes < 10, err


def test_webgpu_verify_says_it_did_not_run(ckpt, tmp_path):
    proc = cli("-m", ckpt, "-o", tmp_path / "out", "-e", "webgpu", "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "warning: --verify did not run: the graph targets webgpu" in proc.stderr
    # check_webgpu.py runs its own cases, not this folder: a plugin family's build needs the cpu check
    assert "-e cpu with --verify checks the same checkpoint and quantization here" in proc.stderr
    assert "scripts/check_webgpu.py runs the builder's own families on a GPU" in proc.stderr
    from builder.verify import verify_output

    for ep in ("cuda", "dml"):  # they were sent to the webgpu script too
        reason = verify_output(tmp_path, ckpt, None, ep, False)["reason"]
        assert "check_webgpu" not in reason and "-e cpu with --verify checks the same checkpoint" in reason


def test_mistyped_command_is_named(tmp_path, ckpt):
    proc = cli("bacth", tmp_path / "jobs.yaml")
    assert_clean_failure(proc, "unknown command 'bacth'", "did you mean 'batch'")
    assert proc.returncode == 2
    assert_clean_failure(cli(ckpt), "pass it with -m: python -m builder -m")  # the model without -m
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("jobs: []\n")  # `batch` left out: it was sent to -m, which refused a file
    assert_clean_failure(cli(jobs), f"to run a batch file: python -m builder batch {jobs}")
    assert_clean_failure(cli("-m", jobs), f"python -m builder batch {jobs}")
    assert_clean_failure(cli("batch.yaml"), "to run a batch file: python -m builder batch batch.yaml")


# ---- inspect ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_folder(tmp_path_factory):
    from builder import build

    root = tmp_path_factory.mktemp("inspect")
    ckpt = make_checkpoint(root / "ckpt", TINY_CONFIGS["qwen3"])
    return build(model=str(ckpt), output=str(root / "out"), show_progress=False).output


def test_inspect_truncated_model(built_folder, tmp_path):
    data = (built_folder / "model.onnx").read_bytes()
    from builder.inspect import summarize

    for cut in [0, 1, 7, 100, len(data) // 3, len(data) // 2, len(data) - 5]:
        path = tmp_path / "model.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(BuilderError, match="truncated or not ONNX"):
            summarize(path)
    assert_clean_failure(plain_cli("inspect", tmp_path / "model.onnx"), "truncated or not ONNX")
    # onnx.load reads *.json as protobuf JSON, whose errors span lines: still one line here.
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    proc = plain_cli("inspect", tmp_path / "config.json")
    assert_clean_failure(proc, "not a readable ONNX model")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_inspect_the_data_file_or_a_transformers_js_onnx_folder(built_folder, tmp_path):
    """The data file was called truncated ("rebuild it"), and a transformers.js folder's onnx/,
    which holds the model, was "not found"."""
    from builder import build
    from builder.inspect import summarize

    assert_clean_failure(
        plain_cli("inspect", built_folder / "model.onnx.data"), "holds a model's weights, not its graph"
    )
    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    tjs = build(model=str(ckpt), output=str(tmp_path / "tjs"), format="transformers.js", show_progress=False)
    assert summarize(tjs.output / "onnx")["by_op_type"] == summarize(tjs.output)["by_op_type"]
    counts = summarize(tjs.output)["by_op_type"]
    (tjs.output / "build_report.json").unlink()  # as the hub has it: was "model.onnx not found"
    assert summarize(tjs.output)["by_op_type"] == counts


def test_inspect_a_damaged_report_or_a_folder_of_models(built_folder, tmp_path):
    """A build_report.json with files: [...] or a number for the model was an AttributeError or
    TypeError traceback; a folder of two models was "model.onnx not found"."""
    import shutil

    from builder.inspect import summarize

    folder = tmp_path / "out"
    shutil.copytree(built_folder, folder)
    counts = summarize(folder)["by_op_type"]
    for files in (["model.onnx"], {"model": 5}):
        (folder / "build_report.json").write_text(json.dumps({"files": files}))
        assert summarize(folder)["by_op_type"] == counts
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.onnx", "b.onnx"):
        shutil.copyfile(built_folder / "model.onnx", two / name)
    assert_clean_failure(plain_cli("inspect", two), "holds 2 models (a.onnx, b.onnx); pass the one to inspect")


def test_inspect_a_batch_output_root_names_its_builds(built_folder, tmp_path):
    """A batch's output root was "ROOT/model.onnx not found; pass a built output folder", as if a build
    there had lost its model: it holds builds, one folder down."""
    import shutil

    root = tmp_path / "root"
    for name in ("qwen3-int4-cpu", "qwen3-int4-webgpu"):
        shutil.copytree(built_folder, root / name)
    (root / "jobs-summary.json").write_text("{}")
    builds = f"{root / 'qwen3-int4-cpu'} {root / 'qwen3-int4-webgpu'}"
    proc = plain_cli("inspect", root)
    assert_clean_failure(proc, f"{root} holds no model, only builds in its folders: python -m builder inspect {builds}")
    assert proc.returncode == 2
    assert plain_cli("inspect", *builds.split()).returncode == 0  # the command it gives runs


def test_flags_before_the_command_belong_to_it(built_folder, tmp_path):
    """`--quiet batch` and `--quiet inspect` were refused ("unrecognized arguments: --quiet")."""
    for flag in ("--debug", "--quiet"):
        proc = plain_cli(flag, "inspect", built_folder)
        assert proc.returncode == 0 and "nodes" in proc.stdout, proc.stderr
    jobs = tmp_path / "b.yaml"
    jobs.write_text(f"jobs:\n  - {{model: {built_folder.parent / 'ckpt'}, output: {tmp_path / 'o'}}}\n")
    proc = plain_cli("--quiet", "batch", jobs, "--dry-run")  # after the command: tests/test_batch.py
    assert proc.returncode == 0 and "build o" in proc.stdout, proc.stderr


def test_inspect_of_something_that_exists_but_is_no_file_says_what_it_is(tmp_path):
    """/dev/null was 'not found'."""
    assert_clean_failure(
        plain_cli("inspect", "/dev/null"),
        "/dev/null is a device, not an ONNX model file; pass a built output folder or its model.onnx",
    )
    (tmp_path / "model.onnx").mkdir()
    assert_clean_failure(plain_cli("inspect", tmp_path), f"{tmp_path / 'model.onnx'} is a folder, not an ONNX model")
    assert_clean_failure(plain_cli("inspect", tmp_path / "absent"), f"{tmp_path / 'absent'} not found")


def test_inspect_a_layer_the_model_does_not_have(built_folder):
    assert_clean_failure(plain_cli("inspect", built_folder, "--layer", "99"), "--layer 99", "has layers 0-1")


def test_inspect_counts_and_orders_ops_and_picks_one_layer_of_a_graph_named_otherwise(tmp_path, capsys):
    """Node counts, op types by count, the one layer asked for (layers.1, not layers.10 too), and a
    graph whose nodes name no layers (another builder's) is summarized, not refused."""
    import onnx
    from onnx import TensorProto, helper

    from builder.inspect import main, summarize

    def graph(names: list[tuple[str, str]]) -> Path:
        nodes, last = [], "x"
        for i, (op, name) in enumerate(names):
            nodes.append(helper.make_node(op, [last], [f"t{i}"], name=name))
            last = f"t{i}"
        info = helper.make_tensor_value_info
        g = helper.make_graph(nodes, "g", [info("x", TensorProto.FLOAT, [1])], [info(last, TensorProto.FLOAT, [1])])
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    ops = [("Relu", "/model/layers.1/a"), ("Neg", "/model/layers.1/b"), ("Neg", "/model/layers.10/c")]
    ops += [("Neg", f"/model/layers.{i}/d") for i in (0, 2, 3, 4, 5, 6, 7, 8, 9)]
    path = graph(ops)
    s = summarize(path, layer=1)
    assert s["nodes"] == 12 and s["layer_1"] == ["Relu", "Neg"]
    assert list(s["by_op_type"].items()) == [("Neg", 11), ("Relu", 1)]
    assert main([str(path), "--layer", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: 12 nodes",
        "      11  Neg",
        "       1  Relu",
        "  layer 1: Relu -> Neg",
    ]
    foreign_path = graph([("Relu", "relu_0"), ("Neg", "neg_0")])
    foreign = summarize(foreign_path)
    assert foreign["nodes"] == 2 and foreign["layer_0"] == []
    # Its text said "  layer 0: " and nothing, as if layer 0 had no nodes.
    assert main([str(foreign_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "  layer 0: (no node is named /model/layers.0/...)"
    # A folder of several models whose build report names one: that one.
    folder = tmp_path / "two"
    folder.mkdir()
    path.rename(folder / "a.onnx")
    graph([("Relu", "/model/layers.0/r")]).rename(folder / "b.onnx")
    (folder / "build_report.json").write_text(json.dumps({"files": {"model": "b.onnx"}}))
    assert summarize(folder)["by_op_type"] == {"Relu": 1}
    # A model cut before its opset imports (they follow the graph) holds no model to count.
    cut = onnx.load(str(folder / "b.onnx"))
    cut.ClearField("opset_import")
    onnx.save(cut, str(tmp_path / "cut.onnx"))
    with pytest.raises(BuilderError, match="holds no ONNX graph"):
        summarize(tmp_path / "cut.onnx")
    # transformers.js splits its data into model.onnx_data_1, _2, ...
    (tmp_path / "model.onnx_data_1").write_bytes(b"\0" * 64)
    with pytest.raises(BuilderError, match="holds a model's weights, not its graph"):
        summarize(tmp_path / "model.onnx_data_1")


def test_inspect_into_a_closed_pipe(built_folder):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # Enough output to fill the pipe, so the write after `head` left really fails.
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "inspect", "--json", *[str(built_folder)] * 200],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=root,
    )
    proc.stdout.read(100)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def _into(stdout, *args, unbuffered=False):
    """The builder with its stdout on `stdout` and buffered as it is for a user, or as PYTHONUNBUFFERED
    (which CI sets) leaves it: a buffered write fails at exit, an unbuffered one inside main."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return subprocess.Popen(
        [sys.executable, "-m", "builder", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=ROOT
    )


def test_a_full_disk_under_stdout_is_one_error_line(ckpt, built_folder, tmp_path):
    """`python -m builder ... > log` on a full disk: the path, inspect's counts, --dry-run's lines
    met ENOSPC in the interpreter's final flush ('Exception ignored ... OSError', exit 120), or
    unbuffered in main's 'could not access (No space left on device); check the path' (exit 2)."""
    out = tmp_path / "out"
    batch_file = tmp_path / "b.yaml"
    batch_file.write_text(f"jobs:\n  - {{model: {ckpt}, output: {out}}}\n")
    runs = {
        "build": (["-m", ckpt, "-o", out, "--quiet"], f"error: built {out}, but could not write to stdout"),
        "inspect": (["inspect", built_folder], "error: could not write to stdout"),
        "dry-run": (["batch", batch_file, "--dry-run"], "error: could not write to stdout"),
    }
    for name, (args, error) in runs.items():
        with open("/dev/full", "w") as full:
            proc = _into(full, *args)
            err = proc.communicate(timeout=120)[1].decode()
        assert proc.returncode == 1, (name, err)
        assert err == f"{error} (No space left on device); free space on the disk it goes to\n", (name, err)
    assert (out / "build_report.json").is_file()  # built, as the line says


def test_a_batch_whose_log_is_on_a_full_disk_says_so(ckpt, tmp_path):
    """`batch FILE > log` on a full disk lost every line and exited 0 without a word."""
    batch_file = tmp_path / "b.yaml"
    batch_file.write_text(f"output_root: out\njobs:\n  - {{model: {ckpt}, output: a}}\n")
    with open("/dev/full", "w") as full:
        proc = _into(full, "batch", batch_file)
        err = proc.communicate(timeout=120)[1].decode()
    summary = tmp_path / "out" / "b-summary.json"
    assert proc.returncode == 1, err
    assert err == (
        "error: could not write to stdout (No space left on device); free space on the disk it goes to; "
        f"the summary: {summary}\n"
    ), err
    assert json.loads(summary.read_text())["counts"]["built"] == 1


def test_a_reader_gone_before_the_path_is_printed_ends_quietly(ckpt, built_folder, tmp_path):
    """`python -m builder ... | true`: the reader left before the path came, and the buffered path met
    the closed pipe in the interpreter's final flush: 'Exception ignored ... BrokenPipeError', exit 120."""
    for args in (["-m", ckpt, "-o", tmp_path / "out", "--quiet"], ["inspect", built_folder]):
        proc = _into(subprocess.PIPE, *args)
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141, err
        assert err == "", err


def test_an_unbuffered_stdout_cut_short_is_not_a_success(built_folder):
    """With PYTHONUNBUFFERED a write into a pipe whose reader left is short, and Python's text layer
    drops the rest in silence: `inspect --json ... | head -c 100` ended 0 as if all was written."""
    proc = _into(subprocess.PIPE, "inspect", "--json", *[built_folder] * 200, unbuffered=True)
    proc.stdout.read(100)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == "", err


# ---- Ctrl-C while Python imports ----------------------------------------------------


@pytest.mark.parametrize("after_module", ["builder.kit.errors", "onnx"])
def test_ctrl_c_during_imports(ckpt, tmp_path, after_module):
    """-X importtime reports each module as it finishes importing: interrupt right there."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "builder", "-m", str(ckpt), "-o", str(tmp_path / "out")],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.rstrip().split("|")[-1].strip() == after_module:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "Traceback" not in rest and "error: interrupted" in rest, rest
    assert not (tmp_path / "out").exists()


# onnxruntime loading a large model stays in C++ for seconds to minutes. This stand-in stays in C
# for good: it locks a pthread mutex it already holds, a wait no signal ends, so Python could run
# a Ctrl-C's handler only once the call returned.
HELD_IN_C_SITECUSTOMIZE = """
import atexit, ctypes, os
import builder.ep_runtime

# Run only by a normal exit, the one that aborted once a load was cut short (os._exit skips it).
atexit.register(lambda: open(os.environ["HELD_IN_C_EXITED"], "w").close())

def _held(*args, **kwargs):
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeros: PTHREAD_MUTEX_INITIALIZER on glibc
    libc.pthread_mutex_lock(mutex)
    open(os.environ["HELD_IN_C_STARTED"], "w").close()
    libc.pthread_mutex_lock(mutex)

builder.ep_runtime.ort_session = _held
"""


# A SIGINT in the first ~0.3 s of a build's load check, as onnxruntime's C extension answers it.
INIT_INTERRUPTED_SITECUSTOMIZE = interrupted_init("onnxruntime.capi.onnxruntime_pybind11_state")


def test_ctrl_c_while_onnxruntime_initialises_is_a_clean_interrupt(ckpt, tmp_path):
    """A Ctrl-C in the first moment of the load check (15 of 32 SIGINTs sent 10-20 ms after the
    staging folder of a tiny build appeared) ended in 'ImportError: initialization failed', a
    traceback and exit 1, as if onnxruntime were broken."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(INIT_INTERRUPTED_SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "builder", "-m", str(ckpt), "-o", str(out), "-p", "int4", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: build interrupted; removed the partial output ") and last.endswith(
        f"nothing was written to {out}"
    ), done.stderr
    assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))


# The onnx-builder command is a script that runs sys.exit(builder.cli.program()).
ONNX_BUILDER_SCRIPT = "import sys; from builder.cli import program; sys.exit(program())"
ENTRY_POINTS = {"-m builder": ["-m", "builder"], "onnx-builder": ["-c", ONNX_BUILDER_SCRIPT]}


# A Ctrl-C while onnx's C extension initialises (python -m builder imports onnx in its first ~0.15 s):
# that initialisation calls Python's enum code, where Python runs the signal's handler. Here SIGINT
# comes from there, the first time, as it did for 3 of 78 SIGINTs sent 140-270 ms after start.
SIGNAL_IN_ONNX_INIT_SITECUSTOMIZE = """
import enum, importlib.machinery, signal, sys

_in_init = []

class _OnnxInit:
    def find_spec(self, name, path=None, target=None):
        if name != "onnx.onnx_cpp2py_export":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        real = spec.loader

        class Loader:
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                _in_init.append(True)
                try:
                    real.exec_module(module)
                finally:
                    _in_init.clear()

        spec.loader = Loader()
        return spec

_enum_call = enum.EnumType.__call__

def _call(cls, *args, **kwargs):
    if _in_init:
        _in_init.clear()
        signal.raise_signal(signal.SIGINT)
    return _enum_call(cls, *args, **kwargs)

enum.EnumType.__call__ = _call
sys.meta_path.insert(0, _OnnxInit())
"""


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_ctrl_c_while_onnx_initialises_is_a_clean_interrupt(ckpt, tmp_path, entry):
    """The KeyboardInterrupt that the Ctrl-C raised inside onnx's initialisation aborted the process
    ("Fatal Python error: Aborted", a traceback, SIGABRT; SIGSEGV at times)."""
    import signal

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SIGNAL_IN_ONNX_INIT_SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, *ENTRY_POINTS[entry], "-m", str(ckpt), "-o", str(out), "-p", "int4", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job's ignored SIGINT
    )
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: interrupted", done.stderr
    assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_ends_verify_while_onnxruntime_loads_the_model(ckpt, tmp_path, sig, entry):
    """Ctrl-C while --verify's onnxruntime session loaded a 0.6B fp32 model took about 10 s to act
    (the load held the main thread), longer for larger models; then the process aborted at exit
    (SIGABRT) once a load was cut short. Now the load runs where the wait on it is interrupted, and
    the process ends without the exit that aborted: the onnx-builder command exited normally, as
    only python -m builder did not."""
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HELD_IN_C_SITECUSTOMIZE)
    started, out = tmp_path / "started", tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(root), str(root / "tests")]),
        "HELD_IN_C_STARTED": str(started),
        "HELD_IN_C_EXITED": str(tmp_path / "exited"),
    }
    proc = subprocess.Popen(
        [sys.executable, *ENTRY_POINTS[entry], "-m", str(ckpt), "-o", str(out), "-p", "fp32", "--verify"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for_file(started, proc, "the load never started")  # the build itself, then the held load
        proc.send_signal(getattr(signal, sig))
        code = proc.wait(timeout=60)  # without the thread, the held load never returns
    finally:
        proc.kill()
    rest = proc.stderr.read()
    assert code == (130 if sig == "SIGINT" else 143), rest
    assert "Traceback" not in rest and "terminate called" not in rest, rest
    assert "build interrupted; removed the partial output" in rest, rest
    assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))
    assert not (tmp_path / "exited").exists(), "the process took the normal exit, which aborts after a cut-short load"


def test_a_python_build_loads_the_model_in_the_calling_thread(ckpt, tmp_path, monkeypatch):
    """builder.build() in a user's program, which ends with its own normal exit (no os._exit): a
    load that a Ctrl-C left running in another thread aborted that exit when it returned during it
    (SIGABRT, 'terminate called without an active exception'). There the load runs in the calling
    thread, as before; only the command line and a batch's build processes wait on it elsewhere."""
    import threading

    import builder.ep_runtime
    from builder import build

    real, threads = builder.ep_runtime.ort_session, []

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(builder.ep_runtime, "ort_session", recorded)
    build(model=str(ckpt), output=str(tmp_path / "out"), precision="fp32", verify=True)
    assert threads == [threading.current_thread()]


# ---- the hub cache (made by hand in huggingface_hub's layout; nothing is downloaded) --------


def hub_cache(home: Path, repo_id: str, source: Path, names: list[str] | None = None) -> Path:
    """HF_HOME/hub/models--org--name with refs/main and one snapshot holding `names` of source."""
    import shutil

    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for path in sorted(source.iterdir()):
        if names is None or path.name in names:
            shutil.copyfile(path, snapshot / path.name)
    return snapshot


def test_a_cache_folder_and_its_snapshot_are_told_apart(ckpt, tmp_path):
    """-m models--org--tiny (the cache's repo folder) said only that config.json was missing, and a
    snapshot folder named its output after the revision's hash."""
    from builder.kit.model_source import model_name
    from builder.pipeline import default_output

    snapshot = hub_cache(tmp_path / "hf", "org/tiny", ckpt)
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", snapshot.parent.parent, "-o", out), "cache folder", "'org/tiny'", out=out)
    assert model_name(str(snapshot)) == "tiny"
    assert default_output(BuildOptions(model=str(snapshot))) == Path("out/tiny-int4-cpu")
    assert model_name(str(ckpt)) == "ckpt" and model_name("Qwen/Qwen3-4B") == "Qwen3-4B"
    # A folder of one's own that happens to be called snapshots is not the cache's
    assert model_name(str(tmp_path / "backups" / "snapshots" / "v1")) == "v1"


def test_a_git_lfs_pointer_says_to_pull_the_weights(ckpt, tmp_path):
    """A clone without git-lfs leaves pointer files: the message said the header length was implausible."""
    (ckpt / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123\n"
    )
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "Git LFS pointer", "git lfs pull", out=out)


def test_hub_id_from_a_complete_cache_builds_offline(ckpt, tmp_path):
    hub_cache(tmp_path / "hf", "org/tiny", ckpt)
    out = tmp_path / "out"
    proc = cli("-m", "org/tiny", "-o", out, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.onnx").is_file()


def test_hub_cache_with_only_config_offline(ckpt, tmp_path):
    hub_cache(tmp_path / "hf", "org/tiny", ckpt, ["config.json"])  # what AutoConfig leaves behind
    out = tmp_path / "out"
    proc = cli("-m", "org/tiny", "-o", out, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert_clean_failure(
        proc, "only part of 'org/tiny'", "*.safetensors missing", "HF_HUB_OFFLINE", "hf download org/tiny", out=out
    )


def test_a_complete_earlier_snapshot_is_named_where_refs_main_names_a_partial_one(ckpt, tmp_path):
    """A repository's new commit moves refs/main when a download of it starts: one cut short left the
    hub id refused as partly cached, with the complete earlier snapshot beside it unnamed."""
    earlier = hub_cache(tmp_path / "hf", "org/tiny", ckpt)
    partial = earlier.parent / ("1" * 40)
    partial.mkdir()
    shutil.copyfile(ckpt / "config.json", partial / "config.json")
    (earlier.parent.parent / "refs" / "main").write_text("1" * 40)
    out = tmp_path / "out"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = cli("-m", "org/tiny", "-o", out, env=env)
    assert_clean_failure(proc, "only part of 'org/tiny'", f"complete earlier snapshot of it, which -m {earlier} builds")
    assert cli("-m", earlier, "-o", out, env=env).returncode == 0
    # refs/main gone: the hub id is not in the cache, and the complete snapshot is named all the same
    (earlier.parent.parent / "refs" / "main").unlink()
    proc = cli("-m", "org/tiny", "-o", tmp_path / "out2", env=env)
    assert_clean_failure(proc, "not in the Hugging Face cache", f"-m {earlier} builds", out=tmp_path / "out2")


def test_hub_cache_missing_one_shard_offline(tmp_path):
    sharded = make_checkpoint(tmp_path / "sharded", TINY_CONFIGS["qwen3"], shard_size_bytes=40_000)
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    keep = [p.name for p in sharded.iterdir() if p.name != shards[-1]]
    hub_cache(tmp_path / "hf", "org/sharded", sharded, keep)
    out = tmp_path / "out"
    proc = cli("-m", "org/sharded", "-o", out, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert_clean_failure(proc, f"{shards[-1]} missing", out=out)


def test_partial_hub_cache_is_completed_when_online(ckpt, tmp_path, monkeypatch):
    """Online, the missing files are fetched (snapshot_download stands in for the hub here)."""
    import shutil

    import huggingface_hub

    snapshot = hub_cache(tmp_path / "hf", "org/tiny", ckpt, ["config.json"])
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, ignore_patterns=None, local_files_only=False):
        # Mistral's second copy of the weights (consolidated.safetensors) is never fetched.
        assert ignore_patterns == ["consolidated*"]
        calls.append(local_files_only)
        if not local_files_only:  # "the hub": copies what the cache lacks
            for path in ckpt.iterdir():
                if not (snapshot / path.name).exists():
                    shutil.copyfile(path, snapshot / path.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    checkpoint = Checkpoint.open("org/tiny")
    assert calls == [True, False]
    assert checkpoint.directory == snapshot and checkpoint.has("model.norm.weight")
    assert Checkpoint.open("org/tiny").directory == snapshot and calls[2:] == [True]  # complete: no hub call


@pytest.mark.parametrize(
    "value,offline",
    [("no", False), ("off", False), ("FALSE", False), ("0", False), ("yes", True), ("On", True), ("1", True)],
)
def test_hf_hub_offline_is_read_as_huggingface_hub_reads_it(monkeypatch, value, offline):
    """HF_HUB_OFFLINE=no was taken as offline, and a model the cache lacked was refused."""
    import huggingface_hub.constants

    from builder.kit.model_source import hub_offline

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is offline
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", value)  # the older name huggingface_hub reads too
    assert hub_offline() is offline


def test_partial_hub_cache_hub_unreachable(ckpt, tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = hub_cache(tmp_path / "hf", "org/tiny", ckpt, ["config.json"])
    # What huggingface_hub does without network: fall back to the (partial) cached snapshot.
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(snapshot))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(BuilderError, match=r"\*.safetensors missing .* hf download org/tiny"):
        Checkpoint.open("org/tiny")


def fake_hub(monkeypatch, snapshot: Path, online=None, offline: bool = False) -> list[bool]:
    """snapshot_download serving `snapshot` from the cache, and online calling `online(snapshot)` first
    (it may fill the snapshot or raise what the hub raised); returns each call's local_files_only."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, allow_patterns=None, ignore_patterns=None, local_files_only=False):
        calls.append(local_files_only)
        if not local_files_only and online is not None:
            online(snapshot)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return calls


def test_a_cache_lacking_only_tokenizer_files_is_completed_online_and_used_offline(ckpt, tmp_path, monkeypatch):
    """Weights and config cached, tokenizer files not (a script that loaded the model alone): online
    they are fetched; offline the cache is built from as it is (the build warns of the tokenizer)."""
    from builder.kit.model_source import cached_hub_snapshot, missing_files
    from builder.kit.tokenizer_files import REQUIRED

    weights_only = ["config.json", "model.safetensors"]
    snapshot = hub_cache(tmp_path / "hf", "org/tiny", ckpt, weights_only)
    assert missing_files(snapshot) == ([], list(REQUIRED))
    calls = fake_hub(monkeypatch, snapshot, offline=True)
    assert Checkpoint.open("org/tiny").directory == snapshot and calls == [True]
    assert cached_hub_snapshot("org/tiny") == snapshot  # the batch skip check needs the weights alone

    def fetch(folder):
        for name in REQUIRED:
            shutil.copyfile(ckpt / name, folder / name)

    calls = fake_hub(monkeypatch, snapshot, online=fetch)
    assert Checkpoint.open("org/tiny").directory == snapshot and calls == [True, False]
    assert all((snapshot / name).is_file() for name in REQUIRED)


def test_a_cache_lacking_weights_is_no_snapshot_for_the_batch_check(ckpt, tmp_path, monkeypatch):
    from builder.kit.model_source import cached_hub_snapshot

    snapshot = hub_cache(tmp_path / "hf", "org/tiny", ckpt, ["config.json", "tokenizer.json"])
    fake_hub(monkeypatch, snapshot)
    assert cached_hub_snapshot("org/tiny") is None
    shutil.copyfile(ckpt / "model.safetensors", snapshot / "model.safetensors")
    assert cached_hub_snapshot("org/tiny") == snapshot


def quantized(ckpt: Path) -> Path:
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


def hub_serving(ckpt: Path, snapshot: Path, monkeypatch) -> list[str]:
    """A stand-in for the hub that serves ckpt's files into snapshot; the names it fetched."""
    import huggingface_hub

    fetched = []

    def snapshot_download(repo_id, allow_patterns=None, ignore_patterns=None, local_files_only=False):
        if local_files_only:
            raise FileNotFoundError("not in the cache")
        snapshot.mkdir(parents=True, exist_ok=True)
        for path in ckpt.iterdir():
            if any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
                shutil.copyfile(path, snapshot / path.name)
                fetched.append(path.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return fetched


def test_a_quantized_hub_checkpoint_is_refused_before_its_weights_are_downloaded(ckpt, tmp_path, monkeypatch):
    """-m Qwen/Qwen3-4B-FP8 downloaded every weight shard (gigabytes) and was then refused by its
    config.json's quantization_config: config.json is now fetched alone and judged first."""
    fetched = hub_serving(quantized(ckpt), tmp_path / "hf" / "snapshot", monkeypatch)
    with pytest.raises(BuilderError, match=r"org/tiny's config.json has a quantization_config \(quant_method 'fp8'\)"):
        Checkpoint.open("org/tiny")
    assert fetched == ["config.json"]


def test_a_hub_checkpoint_no_family_builds_is_refused_before_its_weights_are_downloaded(ckpt, tmp_path, monkeypatch):
    """-m deepseek-ai/DeepSeek-V3 downloaded every weight shard (hundreds of GB) before the build
    found that no family builds its architecture; a supported one still downloads and builds."""
    from builder import build

    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "architectures": ["DeepseekV3ForCausalLM"]}))
    fetched = hub_serving(ckpt, tmp_path / "hf" / "unsupported", monkeypatch)
    options = BuildOptions(model="org/tiny", output=str(tmp_path / "out"), precision="fp32")
    with pytest.raises(BuilderError, match=r"org/tiny's config.json: architecture 'DeepseekV3ForCausalLM' is not supp"):
        build(options, show_progress=False)
    assert fetched == ["config.json"] and not (tmp_path / "out").exists()

    (ckpt / "config.json").write_text(json.dumps(config))
    fetched = hub_serving(ckpt, tmp_path / "hf" / "supported", monkeypatch)
    build(options, show_progress=False)
    assert "model.safetensors" in fetched and (tmp_path / "out" / "model.onnx").is_file()


def test_a_cached_quantized_config_is_refused_offline_not_sent_to_download_the_rest(ckpt, tmp_path, monkeypatch):
    """Offline, a cache holding a quantized checkpoint's config.json alone asked for the rest to be
    downloaded (gigabytes), which would then be refused."""
    snapshot = hub_cache(tmp_path / "hf", "org/tiny", quantized(ckpt), ["config.json"])
    calls = fake_hub(monkeypatch, snapshot, offline=True)
    with pytest.raises(BuilderError, match=r"org/tiny's config.json has a quantization_config") as e:
        Checkpoint.open("org/tiny")
    assert "download" not in str(e.value) and calls == [True]


def list_snapshot_files(snapshot: Path, source: Path) -> None:
    """The file listing huggingface_hub 2.x keeps of a snapshot it began to download (trees/<commit>.json):
    every file of source, whether the snapshot got it or not."""
    from huggingface_hub import _tree_cache as tree_cache  # a private module: this test follows its releases

    entries = {
        path.name: tree_cache.TreeCacheEntry(
            size=path.stat().st_size, blob_id="0" * 40, lfs_sha256=None, lfs_size=None, xet_hash=None
        )
        for path in source.iterdir()
    }
    tree_cache.write_tree_cache(str(snapshot.parent.parent), snapshot.name, entries)


def test_an_interrupted_download_is_judged_by_what_the_snapshot_holds(ckpt, tmp_path):
    """huggingface_hub 2.x refuses a snapshot its file listing calls incomplete: a download stopped in
    its weights read 'not in the Hugging Face cache', and one that lacked only tokenizer files, which the
    build warns of and goes on without, was refused."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    snapshot = hub_cache(tmp_path / "hf", "org/tiny", ckpt, ["config.json", "tokenizer_config.json"])
    list_snapshot_files(snapshot, ckpt)
    out = tmp_path / "out"
    proc = cli("-m", "org/tiny", "-o", out, env=env)
    assert_clean_failure(
        proc, f"the Hugging Face cache holds only part of 'org/tiny' (*.safetensors missing in {snapshot})", out=out
    )
    shutil.copyfile(ckpt / "model.safetensors", snapshot / "model.safetensors")  # tokenizer.json still missing
    proc = cli("-m", "org/tiny", "-o", out, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "tokenizer.json" in proc.stderr and (out / "model.onnx").is_file()


def test_a_cache_lacking_only_tokenizer_files_builds_without_network_as_it_does_offline(ckpt, tmp_path):
    """With no network and HF_HUB_OFFLINE unset, huggingface_hub 2.x refuses the snapshot its file listing
    calls incomplete, and the build was refused where HF_HUB_OFFLINE=1 built it with a warning."""
    snapshot = hub_cache(tmp_path / "hf", "org/tiny", ckpt, ["config.json", "model.safetensors"])
    list_snapshot_files(snapshot, ckpt)
    out = tmp_path / "out"
    unreachable = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    proc = cli("-m", "org/tiny", "-o", out, env=unreachable)
    assert proc.returncode == 0, proc.stderr
    assert "tokenizer file(s) tokenizer.json" in proc.stderr and (out / "model.onnx").is_file()


def test_a_weights_link_to_a_missing_blob_is_fetched_again(ckpt, tmp_path, monkeypatch):
    """An interrupted download leaves the snapshot's link to blobs/<hash> while the blob is still
    blobs/<hash>.incomplete: online the weights were taken as cached and the build failed on them
    instead of fetching them; offline the error now names the file."""
    snapshot = hub_cache(tmp_path / "hf", "org/tiny", ckpt)
    blob = snapshot.parent.parent / "blobs" / ("1" * 64)
    blob.parent.mkdir()
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(os.path.relpath(blob, snapshot))
    out = tmp_path / "out"
    proc = cli("-m", "org/tiny", "-o", out, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert_clean_failure(proc, f"only part of 'org/tiny' (model.safetensors missing in {snapshot})", out=out)

    def fetch(folder):  # what snapshot_download does online: downloads the blob the link points to
        shutil.copyfile(ckpt / "model.safetensors", blob)

    calls = fake_hub(monkeypatch, snapshot, online=fetch)
    assert Checkpoint.open("org/tiny").has("model.norm.weight") and calls == [True, False]


@pytest.mark.parametrize(
    "raised,fragment",
    [
        (type("RepositoryNotFoundError", (Exception,), {})("no such repo"), "was not found on the Hugging Face hub"),
        (Exception("404 Client Error: Not Found for url"), "was not found on the Hugging Face hub"),
        (type("GatedRepoError", (Exception,), {})("403 Forbidden"), "is gated on the Hugging Face hub"),
    ],
)
def test_the_hubs_refusals_are_told_apart(ckpt, tmp_path, monkeypatch, raised, fragment):
    snapshot = hub_cache(tmp_path / "hf", "org/tiny", ckpt, ["config.json"])

    def refuse(folder):
        raise raised

    fake_hub(monkeypatch, snapshot, online=refuse)
    with pytest.raises(BuilderError, match=fragment) as e:
        Checkpoint.open("org/tiny")
    assert "offline" not in str(e.value)


@pytest.fixture
def hub_refusing_tokens():
    """A hub at 127.0.0.1 that answers every request as huggingface.co answers a stale or mistyped token,
    on public repositories too: 401 'Invalid credentials in Authorization header'."""
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def refuse(self):
            body = b'{"error":"Invalid credentials in Authorization header"}'
            self.send_response(401)
            self.send_header("X-Error-Message", "Invalid credentials in Authorization header")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = refuse

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_refused_token_is_named_not_taken_for_no_network(ckpt, tmp_path, hub_refusing_tokens):
    """HF_TOKEN set to a stale token read 'the hub could not be reached (HfHubHTTPError); you may be
    offline', for a model the cache lacked and for one it held part of."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub_refusing_tokens}
    env["HF_TOKEN"] = "hf_stale"
    out = tmp_path / "out"
    refused = "the Hugging Face hub refused the access token sent to fetch 'org/tiny' (invalid credentials): "
    advice = "set HF_TOKEN to a valid token or unset it, or log in again (hf auth login)"
    proc = cli("-m", "org/tiny", "-o", out, env=env)
    assert_clean_failure(proc, refused, advice, out=out)
    assert "offline" not in proc.stderr
    snapshot = hub_cache(tmp_path / "hf", "org/tiny", ckpt, ["config.json"])
    list_snapshot_files(snapshot, ckpt)
    assert_clean_failure(cli("-m", "org/tiny", "-o", out, env=env), refused, advice, out=out)


def test_the_hubs_revision_is_not_asked_offline(monkeypatch):
    import huggingface_hub

    from builder.kit.model_source import hub_revision

    asked = []

    class FakeApi:
        def model_info(self, repo_id, timeout=None):
            asked.append(repo_id)
            return type("Info", (), {"sha": "a" * 40})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert hub_revision("org/tiny") == "a" * 40 and asked == ["org/tiny"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_revision("org/tiny") is None and asked == ["org/tiny"]


def test_model_paths_that_are_no_hub_id_are_refused_for_what_they_are(tmp_path, monkeypatch):
    from builder.kit.model_source import is_hub_id, resolve_model_dir

    monkeypatch.chdir(tmp_path)
    for name in ("jobs.YML", "jobs.yml"):
        (tmp_path / name).write_text("jobs: []")
        with pytest.raises(BuilderError, match=f"to run a batch file: python -m builder batch {name}"):
            resolve_model_dir(name)
    (tmp_path / "model.bin").write_text("x")
    with pytest.raises(BuilderError, match="is a file; pass the folder that holds config.json"):
        resolve_model_dir("model.bin")
    # ./name has one slash but is a path, not owner/name: no hub lookup, no 'nor a hub id'
    with pytest.raises(BuilderError, match="does not exist; pass a folder") as e:
        resolve_model_dir("./no-such-folder")
    assert "hub id (" not in str(e.value) and "nor a hub id" not in str(e.value)
    assert not is_hub_id("~no-such-user-here/model")


def test_an_unusable_hub_cache_is_named_and_an_unreachable_hub_still_reads_offline(tmp_path):
    """HF_HOME under a file read 'the hub could not be reached (NotADirectoryError); you may be
    offline'. The hub at a closed port stands for no network: hermetic, and its refusal is a
    ConnectionRefusedError, an OSError as the cache's errors are."""
    (tmp_path / "file").write_text("x")
    unreachable = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    out = tmp_path / "out"
    proc = cli("-m", "org/tiny", "-o", out, env={**unreachable, "HF_HOME": str(tmp_path / "file" / "hf")})
    assert_clean_failure(
        proc,
        f"the Hugging Face cache folder {tmp_path / 'file' / 'hf' / 'hub'} cannot be used to fetch 'org/tiny' "
        "(NotADirectoryError: ",
        "set HF_HOME or HF_HUB_CACHE to a writable folder, or pass a local folder",
        out=out,
    )
    assert "offline" not in proc.stderr
    proc = cli("-m", "org/tiny", "-o", out, env={**unreachable, "HF_HOME": str(tmp_path / "hf")})
    assert_clean_failure(proc, "the hub could not be reached", "you may be offline: run hf download org/tiny", out=out)


def test_network_errors_are_not_taken_for_the_caches(tmp_path):
    """Sockets raise OSErrors too, some with the errnos of file errors (EACCES from a firewall)."""
    import errno
    import socket

    from builder.kit.model_source import _local_cache_error, _os_error_text

    def raised_from(cause: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except BaseException as inner:
                raise FileNotFoundError("Cannot find the requested files in the local cache") from inner
        except BaseException as outer:
            return outer

    for network in (
        socket.gaierror(-2, "Name or service not known"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        PermissionError(errno.EACCES, "Permission denied"),  # connect() refused, no file named
        TimeoutError("timed out"),
    ):
        assert _local_cache_error(raised_from(network)) is None, network
    for local in (
        NotADirectoryError(errno.ENOTDIR, "Not a directory", str(tmp_path / "f" / "hub")),
        PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "hub")),
        OSError(errno.EROFS, "Read-only file system"),
        OSError(errno.ENOSPC, "No space left on device"),
    ):
        assert _local_cache_error(raised_from(local)) is local
    try:  # raised while handling it, with no 'from': __context__ alone links the two
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError:
            raise FileNotFoundError("Cannot find the requested files in the local cache")  # noqa: B904
    except FileNotFoundError as outer:
        assert _local_cache_error(outer) is outer.__context__
    error = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(tmp_path / "f" / "hub"))
    assert _os_error_text(error) == f"NotADirectoryError: {tmp_path / 'f' / 'hub'}: Not a directory"


@pytest.mark.parametrize(
    "model,fragment",
    [
        ("a/b/c", "nor a hub id"),
        ("Qwen/Qwen3 4B", "not a valid hub id"),
        ("Qwen/Qwen3@4B", "not a valid hub id"),
        ("org--x/y", "not a valid hub id"),
    ],
)
def test_invalid_hub_id_is_called_invalid(tmp_path, model, fragment):
    proc = cli("-m", model, "-o", tmp_path / "out", env={"HF_HOME": str(tmp_path / "hf")})
    assert_clean_failure(proc, fragment, out=tmp_path / "out")
    assert "offline" not in proc.stderr


@pytest.mark.parametrize(
    "model",
    ["org/tiny/", "hf://org/tiny", "https://huggingface.co/org/tiny", "https://huggingface.co/org/tiny/tree/main"],
)
def test_a_hub_address_or_url_names_the_hub_id_to_pass(tmp_path, model):
    """A model's URL copied from the browser, an hf:// address or owner/name/ read only 'nor a hub
    id: those are owner/name', in a build and in a batch file."""
    out = tmp_path / "out"
    proc = cli("-m", model, "-o", out, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert_clean_failure(proc, f"{model!r} does not exist", "for the hub's model: -m org/tiny)", out=out)
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"jobs:\n  - model: {model}\n")
    proc = cli("batch", jobs, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert_clean_failure(proc, "jobs[0].model: no folder", "for the hub's model write org/tiny)")


def test_only_a_models_address_is_read_as_a_hub_id():
    from builder.kit.model_source import hub_id_in

    assert hub_id_in("HF.co/Org/Name") == "Org/Name" and hub_id_in("https://hf.co/org/name/blob/main/x") == "org/name"
    for other in (
        "https://huggingface.co/datasets/org/name",
        "https://huggingface.co/org",
        "a/b/c",
        "./x/",
        "org/name",
    ):
        assert hub_id_in(other) is None, other


def test_download_hint_names_the_installed_cli(monkeypatch):
    import importlib.metadata

    from builder.kit.model_source import hub_download_command

    assert hub_download_command("org/m").startswith("hf download org/m --include")
    assert hub_download_command("org/m").endswith(" --exclude 'consolidated*'")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.30.2")
    assert hub_download_command("org/m").startswith("huggingface-cli download org/m")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.34.0")  # the first with hf
    assert hub_download_command("org/m").startswith("hf download org/m")


def test_broken_plugin_is_one_plain_warning_line(monkeypatch, capsys):
    import importlib.metadata

    import architectures.registry as registry

    class Broken:
        name, value = "broken", "broken_pkg:Builder"

        def load(self):
            raise ImportError("No module named 'broken_pkg'\n(with a second line)")

    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [Broken()])
    registry.load_plugins()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: architecture plugin 'broken'"), err
    assert "Qwen3ForCausalLM" in registry.registered()
    assert capsys.readouterr().err == ""  # once a process: every lookup of a family said it again


# ---- output paths -------------------------------------------------------------------------


def test_overwrite_through_a_symlink_replaces_what_it_points_to(ckpt, tmp_path):
    """Renaming over the link left the old int4 build at its target and a staging folder behind."""
    assert cli("-m", ckpt, "-o", tmp_path / "real").returncode == 0
    (tmp_path / "link").symlink_to("real")
    proc = cli("-m", ckpt, "-o", tmp_path / "link", "-p", "fp32", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "link").is_symlink()
    assert json.loads((tmp_path / "real" / "build_report.json").read_text())["target"]["precision"] == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "link", "real"]


def test_an_output_that_is_a_loop_of_links_is_refused_as_one(ckpt, tmp_path):
    """realpath stops inside a loop: the whole build ran, and was then refused at the end as an
    output that 'became a symbolic link while the build ran', which it had been all along."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    proc = cli("-m", ckpt, "-o", tmp_path / "a")
    assert_clean_failure(proc, "loop of links", "-o/--output")
    assert proc.returncode == 2 and "while the build ran" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "ckpt"]


def test_an_output_name_with_bytes_that_are_no_utf8_builds(ckpt, tmp_path):
    """Linux takes any bytes in a name (-o $'out\\xff'); the staging name's length check encoded it
    as UTF-8 and the build ended in a UnicodeEncodeError traceback."""
    out = Path(os.fsdecode(bytes(tmp_path) + b"/out\xff"))
    proc = subprocess.run(  # cli() decodes strictly, and the output's name comes back on stdout
        [sys.executable, "-m", "builder", "-m", str(ckpt), "-o", str(out), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "build_report.json").is_file() and (out / "model.onnx").is_file()
    assert not list(tmp_path.glob(".builder-staging-*"))


@pytest.mark.parametrize("command", [[], ["batch"]])
def test_a_path_with_bytes_that_are_no_utf8_prints_on_a_strict_stdout(command, ckpt, tmp_path):
    """A UTF-8 locale other than C.UTF-8 (en_US.UTF-8), or PYTHONIOENCODING, encodes stdout strictly:
    printing the published output's path raised UnicodeEncodeError (a traceback and exit 1 after the
    build), and a batch stopped so before writing its summary. The path prints as its own bytes."""
    out = Path(os.fsdecode(bytes(tmp_path) + b"/out\xff"))
    if command:
        batch_file = tmp_path / "b.yaml"
        batch_file.write_text(f"jobs:\n  - model: {ckpt}\n    output: a\n")
        args = ["batch", str(batch_file), "--output-root", str(out)]
    else:
        args = ["-m", str(ckpt), "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", "builder", *args], cwd=ROOT, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    assert bytes(out) in proc.stdout


def test_a_quoted_tilde_in_the_output_is_the_home_folder(ckpt, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = cli("-m", ckpt, "-o", "~/built", env={"HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    assert (home / "built" / "build_report.json").is_file()


def test_checkpoint_hash_refuses_a_taken_output_before_reading_the_weights(ckpt, tmp_path, monkeypatch):
    """--checkpoint-hash read every weight byte (24 s at 8 GB, without a word) before saying the
    output folder already existed."""
    from builder.pipeline import build
    from support.fingerprints import count_fingerprints

    out = tmp_path / "out"
    build(model=str(ckpt), output=str(out), show_progress=False)
    hashed = count_fingerprints(monkeypatch)
    with pytest.raises(BuilderError, match="already exists; pass overwrite=True"):
        build(model=str(ckpt), output=str(out), checkpoint_hash=True, show_progress=False)
    assert True not in hashed
    result = build(model=str(ckpt), output=str(out), checkpoint_hash=True, overwrite=True, show_progress=False)
    assert True in hashed and result.report["checkpoint"]["fingerprint"]


def test_the_report_fingerprints_the_weights_as_the_build_read_them(ckpt, tmp_path, monkeypatch):
    """Weights re-saved after the build's last read of them, before its report: the report keeps the
    fingerprint of what was read, so the next batch run sees the new weights and rebuilds."""
    import builder.pipeline
    from builder.pipeline import build

    before = Checkpoint(ckpt).fingerprint()
    weights = ckpt / "model.safetensors"
    real = builder.pipeline.load_check

    def resave_then_check(*args, **kwargs):
        (tmp_path / "new.safetensors").write_bytes(weights.read_bytes())
        os.replace(tmp_path / "new.safetensors", weights)  # another file: a new inode and mtime
        return real(*args, **kwargs)

    monkeypatch.setattr(builder.pipeline, "load_check", resave_then_check)
    result = build(model=str(ckpt), output=str(tmp_path / "out"), show_progress=False)
    assert result.report["checkpoint"]["fingerprint"] == before != Checkpoint(ckpt).fingerprint()


def test_a_relative_model_path_is_named_and_recorded_from_anywhere(tmp_path, monkeypatch):
    """-m . named the output out/model-int4-cpu and -m .. out/..-int4-cpu; the report kept the path
    as typed, so its rebuild hints failed from another folder."""
    from builder.kit.options import BuildOptions
    from builder.pipeline import build, default_output

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root / "examples" / "tiny-qwen3")
    assert default_output(BuildOptions(model=".")) == Path("out/tiny-qwen3-int4-cpu")
    assert default_output(BuildOptions(model="..")) == Path("out/examples-int4-cpu")
    assert default_output(BuildOptions(model="Qwen/Qwen3-4B", ep="webgpu")) == Path("out/qwen3-4b-int4-webgpu")
    result = build(model=".", output=str(tmp_path / "o"), show_progress=False)
    assert result.report["checkpoint"]["path"] == str(root / "examples" / "tiny-qwen3")


def test_verify_that_cannot_fit_in_memory_is_refused_before_the_build(ckpt, tmp_path, monkeypatch):
    """--verify on a Qwen3-4B shape was killed for memory after its whole build (exit 137, no
    message); its estimate against the memory available is checked first."""
    import builder.kit.plan as plan
    from builder.pipeline import build

    monkeypatch.setattr(plan, "available_memory_bytes", lambda: 200_000_000)  # 0.2 GB: under the 0.3 GB base
    with pytest.raises(BuilderError, match=r"verify needs about 0\.\d GB here .* 0\.2 GB is available: drop"):
        build(model=str(ckpt), output=str(tmp_path / "o"), verify=True, show_progress=False)
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(plan, "available_memory_bytes", lambda: None)  # unknown: not refused
    assert build(model=str(ckpt), output=str(tmp_path / "o"), verify=True, show_progress=False).report["verify"]


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5-moe", "gemma3-vl"])
def test_verify_memory_counts_the_parameters_the_reference_loads(name, checkpoint):
    """The estimate counts what transformers' reference holds: Qwen3.5's ForCausalLM leaves the
    checkpoint's vision tower and MTP head unread (they were counted, so it erred high), Gemma 3's
    ConditionalGeneration reference loads its vision tower."""
    import torch
    from transformers import AutoModelForCausalLM

    from architectures.registry import builder_class_for
    from builder.kit.options import BuildOptions
    from builder.verify import reference_params

    ckpt = Checkpoint(checkpoint(name))
    family = builder_class_for(ckpt.config)
    arch = family(ckpt, BuildOptions(model=str(ckpt.directory)))
    model = (family.reference_class() or AutoModelForCausalLM).from_pretrained(str(ckpt.directory), dtype=torch.float32)
    loaded = sum(p.numel() for p in model.parameters())
    in_checkpoint = sum(math.prod(shape) for shape in ckpt.shapes().values())
    assert reference_params(arch) == loaded
    if name.startswith("qwen3_5"):
        assert loaded < in_checkpoint
    else:  # Gemma 3's reference loads the whole checkpoint, vision tower and projector included
        assert loaded == in_checkpoint


@pytest.mark.parametrize("stored", ["tied lm_head", "layers beyond num_hidden_layers"])
def test_verify_memory_leaves_out_what_the_reference_does_not_hold(tmp_path, stored):
    """A tied checkpoint that stores lm_head.weight too (transformers ties it to the embedding: one
    table) and layers beyond num_hidden_layers (never loaded) were counted at 13 B a parameter: a
    Gemma 3 4B with its lm_head stored was estimated 8.7 GB above what verify holds, and refused."""
    import torch
    from transformers import AutoModelForCausalLM

    from architectures.qwen3 import Qwen3Builder
    from builder.kit.options import BuildOptions
    from builder.verify import reference_params

    config = dict(TINY_CONFIGS["qwen3"])
    if stored == "tied lm_head":
        folder = make_checkpoint(tmp_path / "ckpt", config, tied_lm_head=True)
    else:
        folder = make_checkpoint(tmp_path / "ckpt", {**config, "num_hidden_layers": 3})
        set_config(folder, num_hidden_layers=2)
    ckpt = Checkpoint(folder)
    arch = Qwen3Builder(ckpt, BuildOptions(model=str(folder)))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    loaded = sum(p.numel() for p in model.parameters())  # a tied table is one parameter
    assert loaded < sum(math.prod(shape) for shape in ckpt.shapes().values())
    assert reference_params(arch) == loaded


@pytest.mark.parametrize("row", [0, 201, -1])
def test_a_stored_lm_head_that_differs_in_any_block_of_rows_is_not_the_embedding(tmp_path, row):
    """The tables are compared a block of rows at a time (8192 rows: a real vocabulary has many
    blocks): a difference in an early block must decide, not the last block's equality."""
    from safetensors.numpy import load_file, save_file

    from builder.kit.checkpoint_fit import _same_values

    folder = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"], dtype="float32", tied_lm_head=True)
    tensors = load_file(folder / "model.safetensors")
    shape = tensors["model.embed_tokens.weight"].shape
    assert shape[0] > 200 and np.array_equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"])
    args = ("lm_head.weight", "model.embed_tokens.weight", shape, False)
    assert _same_values(Checkpoint(folder), *args, rows=4)
    tensors["lm_head.weight"][row, 3] += 1.0
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert not _same_values(Checkpoint(folder), *args, rows=4)


def test_command_spellings_and_flags_written_before_the_command(tmp_path, capsys):
    """What a first word that is no command is taken for, and `--debug batch FILE`: the flags go to
    the command after them (read as a build, it asked for -m)."""
    from builder.cli import main, unknown_command

    assert "to run a batch file: python -m builder batch jobs.yml" in unknown_command("jobs.yml")
    assert "did you mean 'batch'?" in unknown_command("btach")
    # a hub id typed without -m, not a folder here
    assert "pass it with -m: python -m builder -m Qwen/Qwen3-0.6B" in unknown_command("Qwen/Qwen3-0.6B")
    missing = tmp_path / "missing.yaml"
    for flag in ("--debug", "--quiet"):
        assert main([flag, "batch", str(missing)]) != 0
        err = capsys.readouterr().err
        assert str(missing) in err and "-m/--model" not in err and "unrecognized" not in err, err


def test_the_verify_memory_estimate_covers_the_measured_peaks():
    """The peaks verify.py lists were measured whole-process: the estimate must not fall under them
    (8 B a parameter did, by up to 2x), and the refusal comes where the estimate passes what is free."""
    from builder.verify import check_verify_memory, verify_memory_bytes

    # (parameters the reference loads, peak measured): Qwen3-0.6B shape fp32, Qwen3-1.7B, the cut Gemma 3 4B
    for params, peak in ((596e6, 7.47e9), (1.72e9, 15.3e9), (1.28e9, 14.2e9)):
        assert verify_memory_bytes(int(params)) >= peak
    need = verify_memory_bytes(10**9)
    check_verify_memory(10**9, need)
    check_verify_memory(10**9, None)  # unknown: not refused
    with pytest.raises(BuilderError, match=rf"needs about {need / 1e9:.1f} GB here .* 1\.00B parameters"):
        check_verify_memory(10**9, need - 1)


def test_a_per_layer_type_rope_section_is_checked_as_the_top_one():
    """Gemma 3 nests one rope object per layer type in rope_parameters: each is checked, and named."""
    from builder.kit.hf_config import check_config

    nested = {"full_attention": {"rope_type": "linear", "factor": None}, "sliding_attention": {"rope_theta": 1e4}}
    with pytest.raises(BuilderError) as info:
        check_config({**TINY_CONFIGS["qwen3"], "rope_parameters": nested})
    assert str(info.value) == (
        "config.json rope_parameters.full_attention: factor is null; it must be a positive number "
        "(fix or re-download config.json)"
    )


def test_unrecognized_words_are_blamed_on_the_shell_only_when_each_is_a_file_here(tmp_path, monkeypatch):
    from builder.cli import unrecognized_arguments

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("")
    argv = ["-m", "m", "--int8-layers", "*.v_proj", "notes.txt"]
    assert "names of files here" in unrecognized_arguments(["notes.txt"], argv)
    # a typo beside a file name: not something the shell did
    assert unrecognized_arguments(["notes.txt", "--verfy"], argv + ["--verfy"]) == (
        "unrecognized arguments: notes.txt --verfy"
    )


def test_a_generation_config_of_zero_beams_is_refused():
    from builder.kit.hf_config import check_generation_config

    with pytest.raises(BuilderError) as info:
        check_generation_config({"num_beams": 0})
    assert str(info.value) == (
        "generation_config.json: num_beams = 0 is not valid; it must be a positive integer "
        "(fix or re-download generation_config.json)"
    )


def test_ctrl_c_during_a_build_is_one_line_and_exit_130(monkeypatch, capsys):
    import builder.pipeline
    from builder.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(builder.pipeline, "build_from_flags", interrupted)
    assert main(["-m", "some/model"]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"
