"""Synthetic checkpoints: hub layout, transformers compatibility, determinism."""

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from support import synthetic

TEXTS = [
    "hello world",
    "Hello world! The river was frozen for 42 days in 1987.\nIt's café ☕, 日本語 — ok?  two  spaces\t\ttabs",
    "<|im_start|>user\nWhere does the river go?<|im_end|>\n<|im_start|>assistant\n",
]


def _files(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.iterdir()) if f.is_file() and f.name != synthetic.MADE_MARK}


def _load(d):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(d, output_loading_info=True, dtype=torch.float32)
    return model.eval(), info


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_ids_match_constants():
    spec = json.loads((synthetic.TOKENIZER_DIR / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    assert added == dict(
        zip(synthetic.SPECIAL_TOKENS, (synthetic.ENDOFTEXT_ID, synthetic.IM_START_ID, synthetic.IM_END_ID))
    )
    assert len(spec["model"]["vocab"]) + len(added) == synthetic.TOKENIZER_VOCAB_SIZE
    for cfg in synthetic.TINY_CONFIGS.values():
        assert synthetic.text_config(cfg)["vocab_size"] == synthetic.TOKENIZER_VOCAB_SIZE


def test_tokenizer_rebuild_matches_shipped(tmp_path):
    synthetic.build_tokenizer(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((synthetic.TOKENIZER_DIR / name).read_text()), (
            name
        )


def test_tokenizer_transformers_roundtrip():
    tok = transformers.AutoTokenizer.from_pretrained(synthetic.TOKENIZER_DIR)
    assert len(tok) == synthetic.TOKENIZER_VOCAB_SIZE
    assert (tok.eos_token_id, tok.pad_token_id) == (synthetic.IM_END_ID, synthetic.ENDOFTEXT_ID)
    assert tok.convert_tokens_to_ids(synthetic.SPECIAL_TOKENS) == [
        synthetic.ENDOFTEXT_ID,
        synthetic.IM_START_ID,
        synthetic.IM_END_ID,
    ]
    raw = __import__("tokenizers").Tokenizer.from_file(str(synthetic.TOKENIZER_DIR / "tokenizer.json"))
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == raw.encode(text).ids  # transformers' Qwen2Tokenizer rebuilds the pipeline
        assert tok.decode(ids) == text
        assert max(ids) < synthetic.TOKENIZER_VOCAB_SIZE
    assert len(tok.encode("the river and the town")) < len("the river and the town") / 2  # merges work
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", list(synthetic.TINY_CONFIGS))
def test_tiny_config_loads_in_transformers(tmp_path, name):
    cfg = synthetic.TINY_CONFIGS[name]
    d = synthetic.make_checkpoint(tmp_path, cfg)
    model, info = _load(d)
    # A Qwen3.5 ConditionalGeneration checkpoint loads as its text model (vision and MTP tensors
    # ignored); Gemma 3's whole, its vision tower included.
    arch = cfg["architectures"][0]
    assert type(model).__name__ == (
        arch if arch.startswith("Gemma3") else arch.replace("ForConditionalGeneration", "ForCausalLM")
    )
    assert not any(info.values()), info  # missing / unexpected / mismatched keys, errors
    cfg = {**cfg, **synthetic.text_config(cfg)}

    names = set(load_file(d / "model.safetensors"))
    assert ("lm_head.weight" in names) != cfg["tie_word_embeddings"]  # tied: no lm_head, as on the hub
    for dim in ("hidden_size", "intermediate_size", "moe_intermediate_size"):
        assert cfg.get(dim, 32) % 32 == 0  # int4 block 32

    ids = torch.arange(3, 23).unsqueeze(0)
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 20, cfg["vocab_size"])
    assert torch.isfinite(logits).all() and logits.std() > 0.1  # layers matter, not a flat model

    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [synthetic.IM_END_ID, synthetic.ENDOFTEXT_ID]
    assert model.config.eos_token_id == synthetic.IM_END_ID


def test_writer_matches_safetensors_library(tmp_path):
    # Our streaming writer must produce exactly what safetensors.torch.save_file writes.
    cfg = synthetic.TINY_CONFIGS["qwen2"]
    synthetic.make_checkpoint(tmp_path / "a", cfg, tokenizer=False)
    tensors = {n: synthetic.make_tensor(n, s) for n, s in synthetic.weight_shapes(cfg)}
    save_file(tensors, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    assert filecmp.cmp(tmp_path / "ref.safetensors", tmp_path / "a" / "model.safetensors", shallow=False)
    with safe_open(tmp_path / "a" / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        for n, t in tensors.items():
            assert torch.equal(f.get_tensor(n), t)


def test_deterministic(tmp_path):
    cfg = synthetic.TINY_CONFIGS["qwen3-moe"]
    a = _files(synthetic.make_checkpoint(tmp_path / "a", cfg, seed=3))
    b = _files(synthetic.make_checkpoint(tmp_path / "b", cfg, seed=3))
    c = _files(synthetic.make_checkpoint(tmp_path / "c", cfg, seed=4))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]
    assert {k: v for k, v in a.items() if k != "model.safetensors"} == {
        k: v for k, v in c.items() if k != "model.safetensors"
    }


def test_float32_and_value_ranges(tmp_path):
    d = synthetic.make_checkpoint(tmp_path, synthetic.TINY_CONFIGS["qwen2"], dtype="float32")
    assert json.loads((d / "config.json").read_text())["torch_dtype"] == "float32"
    w = load_file(d / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in w.values())
    assert abs(w["model.norm.weight"].mean() - 1) < 0.05
    assert abs(w["model.layers.0.mlp.down_proj.weight"].std() - 256**-0.5) < 0.01
    assert w["model.layers.0.self_attn.q_proj.bias"].abs().max() > 0.05


def test_sharded_checkpoint(tmp_path):
    cfg = synthetic.TINY_CONFIGS["llama"]
    one = synthetic.make_checkpoint(tmp_path / "one", cfg)
    many = synthetic.make_checkpoint(tmp_path / "many", cfg, shard_size_bytes=200_000)

    index = json.loads((many / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n > 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(p.name for p in many.glob("*.safetensors")) == shards
    assert index["weight_map"] == dict(sorted(index["weight_map"].items()))
    assert set(index["weight_map"]) == {name for name, _ in synthetic.weight_shapes(cfg)}

    # Every name is in the file the index says; values do not depend on sharding.
    single = load_file(one / "model.safetensors")
    total = 0
    for shard in shards:
        tensors = load_file(many / shard)
        assert {k for k, v in index["weight_map"].items() if v == shard} == set(tensors)
        for k, t in tensors.items():
            assert torch.equal(t, single[k])
            total += t.numel() * t.element_size()
    assert index["metadata"]["total_size"] == total

    ids = torch.arange(40).unsqueeze(0)
    (m1, _), (m2, info) = _load(one), _load(many)
    assert not any(info.values()), info
    with torch.no_grad():
        assert torch.equal(m1(ids).logits, m2(ids).logits)


@pytest.mark.parametrize("name", ["qwen3", "qwen3_5", "gemma3-vl"])  # the last two nest the text model
def test_tied_lm_head_copy_loads(tmp_path, name):
    d = synthetic.make_checkpoint(tmp_path, synthetic.TINY_CONFIGS[name], tied_lm_head=True)
    w = load_file(d / "model.safetensors")
    embedding = next(n for n in w if n.endswith("embed_tokens.weight"))
    assert torch.equal(w["lm_head.weight"], w[embedding])
    model, info = _load(d)
    assert not any(info.values()), info
    # still tied
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


# Byte sizes of the published files: (safetensors files, tensor count).
HUB_FILES = {
    "qwen3-0.6b": ({"model.safetensors": 1503300328}, 311),
    "qwen3-1.7b": (
        {"model-00001-of-00002.safetensors": 3441185608, "model-00002-of-00002.safetensors": 622329984},
        311,
    ),
    "qwen3-4b": ({f"model-0000{i}-of-00003.safetensors": None for i in (1, 2, 3)}, 398),
}


@pytest.mark.parametrize("name", list(synthetic.REAL_CONFIGS))
def test_real_configs_match_hub_layout(name):
    cfg = synthetic.REAL_CONFIGS[name]
    files = synthetic.plan_files(cfg, tied_lm_head=name in synthetic.HUB_TIED_LM_HEAD)
    sizes, n_tensors = HUB_FILES[name]
    assert list(files) == list(sizes)
    assert sum(len(entries) for entries in files.values()) == n_tensors
    for fname, entries in files.items():
        header, _ = synthetic._header(entries, 2, "BF16")
        data = sum(2 * torch.Size(shape).numel() for _, shape in entries)
        assert sizes[fname] in (None, len(header) + data), fname
    if name == "qwen3-4b":
        assert sum(2 * torch.Size(s).numel() for e in files.values() for _, s in e) == 8044936192  # hub total_size
    # Shapes agree with transformers' own model (built on the meta device: no memory).
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert dict(synthetic.weight_shapes(cfg, tied_lm_head=True)) == expected
    gen = synthetic.REAL_GENERATION_CONFIGS[name]
    assert gen["eos_token_id"] == [151645, 151643] and gen["top_k"] == 20


def test_real_config_files_formatted_like_hub(tmp_path):
    # config.json / generation_config.json of Qwen3-1.7B on the hub: 726 and 239 bytes.
    tiny_weights = dict(
        synthetic.REAL_CONFIGS["qwen3-1.7b"],
        num_hidden_layers=1,
        vocab_size=64,
        hidden_size=32,
        intermediate_size=32,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=32,
    )
    d = synthetic.make_checkpoint(
        tmp_path, tiny_weights, generation_config=synthetic.REAL_GENERATION_CONFIGS["qwen3-1.7b"]
    )
    assert len((d / "generation_config.json").read_bytes()) == 239
    synthetic._write_json(tmp_path / "c.json", synthetic.REAL_CONFIGS["qwen3-1.7b"], end="")
    assert len((tmp_path / "c.json").read_bytes()) == 726


def test_shipped_example_is_up_to_date(tmp_path):
    shipped = ROOT / "examples" / "tiny-qwen3"
    fresh = synthetic.make_checkpoint(tmp_path, synthetic.TINY_CONFIGS["qwen3"], dtype="bfloat16", seed=0)
    assert _files(shipped) == _files(fresh)
    assert sum(len(b) for b in _files(shipped).values()) < 1_000_000


def test_cli(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_checkpoint.py"), "tiny-qwen3", str(tmp_path), "--seed", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "model.safetensors" in out and "wrote tiny-qwen3" in out
    assert _files(tmp_path) == _files(ROOT / "examples" / "tiny-qwen3")
    script = [sys.executable, str(ROOT / "scripts" / "make_checkpoint.py"), "tiny-llama"]
    again = subprocess.run([*script, str(tmp_path)], capture_output=True, text=True)  # over its own: fine
    assert again.returncode == 0 and json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"


def test_cli_reports_progress(tmp_path, monkeypatch, capsys):
    """make_checkpoint.py qwen3-4b wrote its 8 GB in 83 s without a word; now a line at each tenth
    of the weights (from PROGRESS_FROM_BYTES on, lowered here for the tiny checkpoint), counted in
    the bytes that land in the files."""
    import importlib.util

    calls = []
    synthetic.make_checkpoint(tmp_path / "lib", synthetic.TINY_CONFIGS["qwen3"], progress=lambda *a: calls.append(a))
    with open(tmp_path / "lib" / "model.safetensors", "rb") as f:
        weights = (tmp_path / "lib" / "model.safetensors").stat().st_size - 8 - int.from_bytes(f.read(8), "little")
    assert {total for _, total in calls} == {weights} and calls[-1][0] == weights
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))

    spec = importlib.util.spec_from_file_location("make_checkpoint", ROOT / "scripts" / "make_checkpoint.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "PROGRESS_FROM_BYTES", 0)
    monkeypatch.setattr(sys, "argv", ["make_checkpoint.py", "tiny-qwen3", str(tmp_path / "cli")])
    script.main()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" MB written ")[1].split(")")[0] for line in lines] == [f"({t}0%" for t in range(1, 10)], lines
    assert all(line.startswith("tiny-qwen3: ") for line in lines), lines


def test_cli_leaves_a_checkpoint_it_did_not_write_alone(tmp_path):
    """It wrote its config.json and weights over a user's checkpoint, and kept their other files
    beside them: a folder mixing two models."""
    import shutil

    mine = tmp_path / "mine"
    shutil.copytree(ROOT / "examples" / "tiny-qwen3", mine)
    (mine / "NOTES.md").write_text("my fine-tune")
    before = _files(mine)
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_checkpoint.py"), "tiny-llama", str(mine)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "holds files this script did not write" in run.stderr, run.stderr
    assert _files(mine) == before


def _make_checkpoint_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_checkpoint", ROOT / "scripts" / "make_checkpoint.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_cli_refuses_a_folder_it_cannot_create(tmp_path):
    """A folder under a file (or anywhere mkdir fails) was a NotADirectoryError traceback."""
    (tmp_path / "afile").write_text("")
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_checkpoint.py"), "tiny-qwen3", str(tmp_path / "afile" / "ck")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert f"cannot create {tmp_path / 'afile' / 'ck'} (Not a directory)" in run.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("failure", "code", "says"),
    [
        (OSError(28, "No space left on device"), 1, "error: cannot write {} (No space left on device)"),
        (KeyboardInterrupt(), 130, "make_checkpoint.py: error: interrupted; removed the partial checkpoint in {}"),
    ],
)
@pytest.mark.parametrize("existed", [False, True])
def test_cli_leaves_no_partial_checkpoint(tmp_path, monkeypatch, capsys, failure, code, says, existed):
    """A full disk or Ctrl-C in the middle of the weights left config.json beside a cut
    model.safetensors: a folder that looked like a checkpoint until a build read it."""
    script = _make_checkpoint_script()

    def cut_short(path, *args, **kwargs):
        path.write_bytes(b"\0" * 100)
        raise failure

    monkeypatch.setattr(synthetic, "write_safetensors", cut_short)
    out = tmp_path / "ck"
    if existed:
        out.mkdir()
    monkeypatch.setattr(sys, "argv", ["make_checkpoint.py", "tiny-qwen3", str(out)])
    ended = None
    try:  # a KeyboardInterrupt that got out would stop the whole test session
        script.main()
    except BaseException as e:
        ended = e
    assert isinstance(ended, SystemExit) and ended.code == code, repr(ended)
    assert (list(out.iterdir()) == []) if existed else not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says.format(out) in err[0], err


def test_bench_builders_does_not_remove_a_checkpoint_of_the_user_s(tmp_path):
    """Given --checkpoints with a folder of the size's name that was not the real config, it
    removed the folder (a user's notes with it) to make the random-weight one there."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_builders", ROOT / "scripts" / "bench_builders.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import shutil

    mine = tmp_path / "qwen3-0.6b"
    shutil.copytree(ROOT / "examples" / "tiny-qwen3", mine)
    (mine / "NOTES.md").write_text("my fine-tune")
    with pytest.raises(SystemExit, match="holds files scripts/make_checkpoint.py did not write"):
        bench.ensure_checkpoint("qwen3-0.6b", mine)
    assert (mine / "NOTES.md").read_text() == "my fine-tune"


def test_the_gemma3_1b_shape_plans_transformers_tensors():
    """scripts/make_checkpoint.py gemma3-1b (the webgpu Gemma 3 benchmark's checkpoint) crashed:
    the config leaves tie_word_embeddings to Gemma 3's default (true), and the stand-in walk took
    the model as untied."""
    cfg = synthetic.REAL_SHAPE_CONFIGS["gemma3-1b"]
    assert "tie_word_embeddings" not in cfg
    planned = {n: tuple(s) for entries in synthetic.plan_files(cfg).values() for n, s in entries}
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert planned == expected
