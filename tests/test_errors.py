"""Every failure a user can cause: one-line error naming the input, non-zero
exit, and no output folder that looks complete."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.synthetic import TINY_CONFIGS, make_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None, preexec_fn=None, timeout=120):
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "builder", *map(str, args), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=full_env,
        preexec_fn=preexec_fn,
        timeout=timeout,
    )


def assert_clean_failure(proc, *fragments, out: Path | None = None):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(".builder-staging-*"))


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])


# ---- model input ----------------------------------------------------------


def test_missing_model_folder(tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", tmp_path / "nope", "-o", out), "does not exist", out=out)


def test_debug_shows_the_traceback_a_plain_run_leaves_out(tmp_path):
    """--debug is how a refusal's origin goes into a bug report: the traceback, then the same one line."""
    out = tmp_path / "out"
    plain = cli("-m", tmp_path / "nope", "-o", out)
    assert_clean_failure(plain, "does not exist", out=out)
    traced = cli("-m", tmp_path / "nope", "-o", out, "--debug")
    assert traced.returncode == plain.returncode and "Traceback (most recent call last)" in traced.stderr
    assert traced.stderr.strip().splitlines()[-1] == plain.stderr.strip().splitlines()[-1]


def test_model_path_is_a_file(tmp_path):
    file = tmp_path / "model.bin"
    file.write_text("x")
    assert_clean_failure(cli("-m", file, "-o", tmp_path / "out"), "is a file", out=tmp_path / "out")


def test_config_missing(ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    assert_clean_failure(cli("-m", ckpt, "-o", tmp_path / "out"), "config.json is missing", out=tmp_path / "out")


def test_a_folder_above_checkpoints_names_them(tmp_path):
    """A Trainer's output_dir holds checkpoint-N folders (or a download's parent folder one checkpoint):
    'config.json is missing: not a Hugging Face checkpoint folder' did not say where one was."""
    import shutil

    for step in (500, 1000):
        shutil.copytree(ROOT / "examples" / "tiny-qwen3", tmp_path / "run" / f"checkpoint-{step}")
    (tmp_path / "run" / "logs").mkdir()
    out = tmp_path / "out"
    assert_clean_failure(
        cli("-m", tmp_path / "run", "-o", out),
        "it holds checkpoint folders (checkpoint-1000, checkpoint-500): pass one of them, "
        f"e.g. -m {tmp_path / 'run' / 'checkpoint-1000'}",
        out=out,
    )


def test_many_checkpoints_inside_are_counted_and_a_built_folder_is_not_one(tmp_path):
    import shutil

    from builder import BuilderError
    from builder.kit.checkpoint import Checkpoint

    for step in (500, 1000, 1500):
        shutil.copytree(ROOT / "examples" / "tiny-qwen3", tmp_path / "run" / f"checkpoint-{step}")
    built = tmp_path / "run" / "onnx"  # a build's output has a config.json too (transformers.js)
    built.mkdir()
    (built / "config.json").write_text("{}")
    report = {"checkpoint": {"path": str(tmp_path / "run" / "checkpoint-2000")}, "options": {"model": "x"}}
    (built / "build_report.json").write_text(json.dumps(report))
    with pytest.raises(BuilderError, match=r"\(checkpoint-1500, checkpoint-1000, checkpoint-500\): pass one"):
        Checkpoint(tmp_path / "run")
    shutil.copytree(ROOT / "examples" / "tiny-qwen3", tmp_path / "run" / "checkpoint-2000")
    with pytest.raises(BuilderError, match=r"\(checkpoint-2000, checkpoint-1500, checkpoint-1000 and 1 more\)"):
        Checkpoint(tmp_path / "run")


def test_rows_read_in_any_order_or_twice_count_once(ckpt):
    """unread_rows: what the read ranges leave uncovered, however they overlap or nest."""
    from builder.kit.checkpoint import Checkpoint

    checkpoint = Checkpoint(ckpt)
    name = "model.embed_tokens.weight"
    total = checkpoint.rows_total(name)
    checkpoint.locate(name, 0, 0)  # a shape check: located, no rows
    assert checkpoint.unread_rows(name) == [(0, total)] and name in checkpoint.unread()
    for start, stop in [(10, 20), (0, 10), (30, None), (12, 14), (11, 25)]:
        checkpoint.locate(name, start, stop)
    assert checkpoint.unread_rows(name) == [(25, 30)]
    checkpoint.locate(name, 0, None)
    checkpoint.locate(name, 5, 6)  # inside a whole read
    assert checkpoint.unread_rows(name) == [] and name not in checkpoint.unread()


def test_config_not_json(ckpt, tmp_path):
    (ckpt / "config.json").write_text("{not json")
    assert_clean_failure(cli("-m", ckpt, "-o", tmp_path / "out"), "not valid JSON", out=tmp_path / "out")


def test_unsupported_architecture_lists_supported(ckpt, tmp_path):
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(config))
    proc = cli("-m", ckpt, "-o", tmp_path / "out")
    assert_clean_failure(proc, "GPTNeoXForCausalLM", "not supported", "Qwen3ForCausalLM", out=tmp_path / "out")


def test_hub_id_offline_and_not_cached(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = cli("-m", "Qwen/Qwen3-0.6B", "-o", tmp_path / "out", env=env)
    assert_clean_failure(
        proc, "Qwen/Qwen3-0.6B", "not in the Hugging Face cache", "HF_HUB_OFFLINE", out=tmp_path / "out"
    )

    assert "if you meant a local folder" not in proc.stderr


@pytest.mark.parametrize("fmt", ["genai", "transformers.js"])
def test_a_built_folder_passed_as_the_model_names_its_checkpoint(ckpt, tmp_path, fmt):
    """A transformers.js build (config.json, no weights beside it) got 'convert .bin files with
    save_pretrained', a genai build 'not a Hugging Face checkpoint folder'."""
    assert cli("-m", ckpt, "-o", tmp_path / "built", "--format", fmt).returncode == 0
    proc = cli("-m", tmp_path / "built", "-o", tmp_path / "again")
    assert_clean_failure(
        proc,
        f"{tmp_path / 'built'} is a folder this builder wrote (its build_report.json), not a checkpoint; "
        f"build from the checkpoint it was built from: {ckpt}",
        out=tmp_path / "again",
    )
    # built from a hub id: the id, not the cache folder it resolved to (and no -m: batch says model:)
    report = json.loads((tmp_path / "built" / "build_report.json").read_text())
    report["checkpoint"]["path"] = str(tmp_path / "hf" / "models--org--tiny" / "snapshots" / ("0" * 40))
    report["options"]["model"] = "org/tiny"
    (tmp_path / "built" / "build_report.json").write_text(json.dumps(report))
    assert "build from the checkpoint it was built from: org/tiny" in cli("-m", tmp_path / "built").stderr


def test_a_mistyped_local_path_that_reads_as_a_hub_id_names_the_folder(tmp_path):
    """examples/tiny-qwen (for examples/tiny-qwen3, run from the repository) got only the hub's
    advice: download a repository that does not exist."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = cli("-m", "examples/tiny-qwen", "-o", tmp_path / "out", env=env)
    assert_clean_failure(
        proc,
        "'examples/tiny-qwen' is not in the Hugging Face cache",
        "if you meant a local folder: examples/ here has no tiny-qwen; did you mean examples/tiny-qwen3?",
        out=tmp_path / "out",
    )


# ---- weights --------------------------------------------------------------


def test_truncated_safetensors(ckpt, tmp_path):
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_clean_failure(
        cli("-m", ckpt, "-o", tmp_path / "out"), "model.safetensors", "re-download", out=tmp_path / "out"
    )


def test_corrupt_safetensors_header(ckpt, tmp_path):
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"#" * 32
    weights.write_bytes(bytes(data))
    assert_clean_failure(cli("-m", ckpt, "-o", tmp_path / "out"), "model.safetensors", out=tmp_path / "out")


def _rewrite(ckpt: Path, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(ckpt / "model.safetensors")
    edit(tensors)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor(ckpt, tmp_path):
    _rewrite(ckpt, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    assert_clean_failure(
        cli("-m", ckpt, "-o", tmp_path / "out"), "model.layers.1.mlp.down_proj.weight", "missing", out=tmp_path / "out"
    )


def test_missing_lm_head_of_an_untied_model(tmp_path):
    """It was built silently with the embedding as lm_head, and --verify then blamed the builder."""
    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3-untied"])
    _rewrite(ckpt, lambda t: t.pop("lm_head.weight"))
    proc = cli("-m", ckpt, "-o", tmp_path / "out")
    assert_clean_failure(proc, "'lm_head.weight' is missing", "tie_word_embeddings to false", out=tmp_path / "out")
    config = json.loads((ckpt / "config.json").read_text())
    del config["tie_word_embeddings"]  # not said: tied, as the checkpoint shows
    (ckpt / "config.json").write_text(json.dumps(config))
    assert cli("-m", ckpt, "-o", tmp_path / "out").returncode == 0


def test_tensor_shape_does_not_fit_config(ckpt, tmp_path):
    import torch

    _rewrite(ckpt, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(100, 64)))
    assert_clean_failure(
        cli("-m", ckpt, "-o", tmp_path / "out"),
        "model.layers.0.mlp.up_proj.weight",
        "[100, 64]",
        "[192, 64]",
        out=tmp_path / "out",
    )


def test_unsupported_dtype(ckpt, tmp_path):
    import torch

    _rewrite(
        ckpt, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(192, 64, dtype=torch.float64))
    )
    assert_clean_failure(
        cli("-m", ckpt, "-o", tmp_path / "out"),
        "model.layers.0.mlp.up_proj.weight",
        "F64",
        "save it in one of those",  # not "quantized": a float64 tensor is no quantized one
        out=tmp_path / "out",
    )


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "int8", "uint8"])
def test_quantized_weights_without_a_quantization_config_say_which_checkpoint_to_build(ckpt, tmp_path, dtype):
    """An FP8 (or bitsandbytes int8/uint8) checkpoint whose config.json lost its quantization_config:
    refused by a weight's dtype, which said only "quantized checkpoints are not supported", not
    what to build instead."""
    import torch

    def to_quantized(tensors):
        for name in [n for n in tensors if n.endswith("_proj.weight")]:
            tensors[name] = tensors[name].float().to(getattr(torch, dtype))
            tensors[name.removesuffix("weight") + "weight_scale_inv"] = torch.ones(1, 1)

    _rewrite(ckpt, to_quantized)
    stored = {"float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "int8": "I8", "uint8": "U8"}[dtype]
    for precision in ("int4", "fp32"):
        out = tmp_path / f"out-{precision}"
        proc = cli("-m", ckpt, "-p", precision, "-o", out)
        assert proc.returncode == 2
        assert_clean_failure(proc, "_proj.weight'", f"has dtype {stored}", "float checkpoint", "-p", out=out)


@pytest.mark.parametrize("method", ["gptq", "awq", "fp8"])
def test_a_prequantized_checkpoint_is_refused_by_its_config(ckpt, tmp_path, method):
    """GPTQ/AWQ store qweight/scales where the float weights were: the build said q_proj.weight was
    missing from an "incomplete" checkpoint, sending the user to re-download it."""
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4}
    (ckpt / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_clean_failure(
        cli("-m", ckpt, "-o", out), f"quantization_config (quant_method '{method}')", "float checkpoint", out=out
    )


def test_a_gptq_checkpoint_without_a_quantization_config_is_refused_by_its_tensors(ckpt, tmp_path):
    """AutoGPTQ and AutoAWQ wrote their settings to quantize_config.json / quant_config.json, not to
    config.json: the build called such a checkpoint incomplete ("q_proj.weight is missing"), which
    sent the user to download it again."""
    import torch

    def to_gptq(tensors):
        for name in [n for n in tensors if n.endswith("_proj.weight")]:
            rows, cols = tensors.pop(name).shape
            stem = name.removesuffix(".weight")
            tensors[f"{stem}.qweight"] = torch.zeros(cols // 8, rows, dtype=torch.int32)
            tensors[f"{stem}.qzeros"] = torch.zeros(1, rows // 8, dtype=torch.int32)
            tensors[f"{stem}.scales"] = torch.ones(1, rows, dtype=torch.float16)

    _rewrite(ckpt, to_gptq)
    (ckpt / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128}))
    out = tmp_path / "out"
    assert_clean_failure(cli("-m", ckpt, "-o", out), "q_proj.qweight", "quantized", "float checkpoint", "-p", out=out)


def test_index_names_missing_shard(tmp_path):
    big = make_checkpoint(tmp_path / "sharded", TINY_CONFIGS["qwen3"], shard_size_bytes=40_000)
    shards = sorted(big.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    assert_clean_failure(cli("-m", big, "-o", tmp_path / "out"), shards[-1].name, "missing", out=tmp_path / "out")


# ---- options --------------------------------------------------------------


@pytest.mark.parametrize(
    "flags,fragment",
    [
        (["--block-size", "48"], "--block-size"),
        (["-p", "int3"], "--precision"),
        (["-e", "tpu"], "--ep"),
        (["--no-such-option"], "unrecognized arguments"),
        (["--intra-op-threads", "-2"], "--intra-op-threads"),
        (["--intra-op-threads", "99999"], "a thread count up to 1024"),  # the runtime started them all
        (["-o", ""], "-o/--output is empty"),  # it built into out/... instead
        (["-o", "-"], "-o -: the output is a folder, not a stream"),  # it built a folder named '-'
        (["-p", "fp32", "--residual-dtype", "fp16"], "residual stream is never narrower than the activations"),
        (["--residual-dtype", "fp16"], "activations are float32 (-p int4 -e cpu)"),  # cpu int4's io dtype
    ],
)
def test_invalid_option_values(ckpt, tmp_path, flags, fragment):
    """One line each: argparse's own errors came after its 20-line usage."""
    output = [] if "-o" in flags else ["-o", tmp_path / "out"]  # a second -o is refused as such
    proc = cli("-m", ckpt, *output, *flags)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["-m", "A", "-m", "B"], "-m/--model given twice (A, B); keep one"),  # built B
        (["-m", "A", "-p", "int4", "-p", "fp16"], "-p/--precision given twice (int4, fp16); keep one"),
        (["-m", "A", "--block-size", "32", "--block-size", "64"], "--block-size given twice (32, 64); keep one"),
        (
            ["-m", "A", "--symmetric", "--no-symmetric"],
            "--symmetric/--no-symmetric given twice (--symmetric, --no-symmetric); keep one",
        ),
        (["batch", "x.yaml", "-j", "1", "--jobs", "2"], "-j/--jobs given twice (1, 2); keep one"),
        (["inspect", "x", "--layer", "1", "--layer", "2"], "--layer given twice (1, 2); keep one"),
    ],
)
def test_a_single_value_option_given_twice_with_two_values_is_refused(args, message, capsys):
    """argparse kept the last one in silence: a -p fp16 added to a long command line won."""
    from builder import cli as builder_cli

    with pytest.raises(SystemExit) as stopped:
        builder_cli.main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_an_option_given_twice_alike_and_list_options_repeated_still_parse():
    from builder.cli import build_parser

    args = build_parser().parse_args(
        ["-m", "A", "-p", "int4", "-p", "int4", "--no-symmetric", "--no-symmetric"]
        + ["--int8-layers", "lm_head,*.v_proj", "--int8-layers", "*.down_proj"]
    )
    assert (args.model, args.precision, args.symmetric) == ("A", "int4", False)
    assert args.int8_layers == ["lm_head", "*.v_proj", "*.down_proj"]  # each adds patterns
    assert not any(name.startswith("_") for name in vars(args))  # the parse's own notes are gone


def test_a_model_given_twice_is_refused_before_building(ckpt, tmp_path):
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, "-m", tmp_path / "other")
    assert_clean_failure(proc, f"-m/--model given twice ({ckpt}, {tmp_path / 'other'}); keep one", out=out)


@pytest.mark.parametrize(
    "args,fragment",
    [
        ([], "required: -m/--model (see python -m builder --help)"),
        (["inspect"], "required: OUT (see python -m builder inspect --help)"),
        (["inspect", "x", "--layer", "a"], "--layer: invalid int value"),
        (
            ["batch", "x.yaml", "--jobs", "abc"],
            "-j/--jobs: invalid int value: 'abc' (see python -m builder batch --help)",
        ),
    ],
)
def test_usage_errors_are_one_line(args, fragment):
    proc = cli(*args)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("error: ") and fragment in proc.stderr


def test_quantization_options_on_a_float_build_are_named_as_unused(ckpt, tmp_path):
    """They were accepted in silence (and recorded, so batch rebuilt for them)."""
    plain = cli("-m", ckpt, "-o", tmp_path / "plain", "-p", "fp16")
    proc = cli(
        "-m",
        ckpt,
        "-o",
        tmp_path / "out",
        "-p",
        "fp16",
        "--block-size",
        "64",
        "--no-symmetric",
        "--accuracy-level",
        "2",
    )
    assert plain.returncode == 0 and proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warning == [
        "warning: -p fp16 stores float weights: --block-size 64, --no-symmetric, --accuracy-level 2 had no "
        "effect on this build"
    ]
    same = [(tmp_path / d / "model.onnx.data").read_bytes() for d in ("plain", "out")]
    assert same[0] == same[1]


def test_head_norm_the_layout_cannot_use_is_named(ckpt, tmp_path):
    """--head-norm was dropped in silence where GroupQueryAttention computes the Q/K norms
    (cuda's auto fused-norm) or the model has none."""
    moot = cli("-m", ckpt, "-o", tmp_path / "cuda", "-e", "cuda", "--head-norm", "reshape-sln")
    kept = cli(
        "-m", ckpt, "-o", tmp_path / "kept", "-e", "cuda", "--head-norm", "reshape-sln", "--qkv-packing", "packed-split"
    )
    asked = cli(
        "-m", ckpt, "-o", tmp_path / "asked", "-e", "cuda", "--head-norm", "reshape-sln", "--qkv-packing", "fused-norm"
    )
    llama = make_checkpoint(tmp_path / "llama", TINY_CONFIGS["llama"])
    no_norms = cli("-m", llama, "-o", tmp_path / "llama-out", "--head-norm", "reshape-sln")
    assert moot.returncode == kept.returncode == asked.returncode == no_norms.returncode == 0, (
        moot.stderr + kept.stderr + asked.stderr + no_norms.stderr
    )
    assert [line for line in moot.stderr.splitlines() if line.startswith("warning:")] == [
        "warning: --head-norm reshape-sln had no effect on this build: --qkv-packing fused-norm (auto "
        "picked it for this target) computes the Q/K norms inside GroupQueryAttention; add --qkv-packing "
        "packed-split to get it"
    ]
    assert "warning:" not in kept.stderr
    assert [line for line in asked.stderr.splitlines() if line.startswith("warning:")] == [
        "warning: --head-norm reshape-sln had no effect on this build: --qkv-packing fused-norm (as asked) "
        "computes the Q/K norms inside GroupQueryAttention; use --qkv-packing packed-split instead to get it"
    ]
    assert json.loads((tmp_path / "kept" / "build_report.json").read_text())["layout"]["head_norm"] == "reshape-sln"
    assert "warning: --head-norm reshape-sln had no effect on this build: this model has no q_norm/k_norm" in (
        no_norms.stderr
    )


def test_a_target_newer_than_any_known_runtime_is_named(ckpt, tmp_path):
    """--target-ort 2 built in silence, and the report claimed a runtime nobody has checked."""
    proc = cli("-m", ckpt, "-o", tmp_path / "out", "--target-ort", "2")
    assert proc.returncode == 0, proc.stderr
    assert "warning: --target-ort 2 is newer than any ONNX Runtime this builder knows (1.32)" in proc.stderr
    assert "warning" not in cli("-m", ckpt, "-o", tmp_path / "known", "--target-ort", "1.32").stderr


@pytest.mark.parametrize(
    "flags, warned",
    [
        (("-p", "int8", "--accuracy-level", "0"), "--accuracy-level 0 with -p int8 on cpu"),
        (("-p", "int8", "--accuracy-level", "1"), "--accuracy-level 1 with -p int8 on cpu"),
        (("--int8-layers", "*.down_proj", "--accuracy-level", "0"), "--accuracy-level 0 with --int8-layers on cpu"),
        (("-p", "int8", "--accuracy-level", "4"), None),
        (
            (
                "-p",
                "int8",
            ),
            None,
        ),
        (("--accuracy-level", "0"), None),  # int4 only: 0.63x, the known price of closer logits
        (("-p", "int8", "--accuracy-level", "0", "-e", "webgpu"), None),
    ],
)
def test_a_slow_int8_accuracy_level_on_cpu_is_named(ckpt, tmp_path, flags, warned):
    """-p int8 --accuracy-level 0 on cpu decoded 36x slower than the default, in silence: onnxruntime's
    cpu MatMulNBits computes 8-bit weights fast only with int8 activations (docs/packing.md)."""
    proc = cli("-m", ckpt, "-o", tmp_path / "out", *flags)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    if not warned:
        assert warnings == [], warnings
        return
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"warning: {warned}: onnxruntime's cpu MatMulNBits is fast on 8-bit weights")
    assert warnings[0].endswith(
        "Leave --accuracy-level at its cpu default (4) unless the slower, closer logits are what you want"
    )
    notes = json.loads((tmp_path / "out" / "build_report.json").read_text())["notes"]
    assert any(warned in note for note in notes), notes


def matmul_nbits_levels(folder: Path) -> dict[str, int]:
    """Each MatMulNBits node's accuracy_level, by node name."""
    import onnx

    (path,) = folder.rglob("*.onnx")  # model.onnx, or a transformers.js folder's onnx/model_*.onnx
    model = onnx.load(str(path), load_external_data=False)
    return {
        node.name: attr.i
        for node in model.graph.node
        if node.op_type == "MatMulNBits"
        for attr in node.attribute
        if attr.name == "accuracy_level"
    }


@pytest.mark.parametrize(
    "flags, levels, warned",
    [
        # (down_proj's level, every other MatMulNBits' level)
        (("-e", "webgpu", "--block-size", "256"), (0, 4), False),
        (("-e", "webgpu", "--block-size", "256", "-p", "int8", "--accuracy-level", "4"), (0, 4), True),
        (("-e", "webgpu", "--block-size", "256", "--accuracy-level", "0"), (0, 0), False),
        (("-e", "webgpu", "--block-size", "128"), (4, 4), False),
        (("-e", "cpu", "--block-size", "256"), (4, 4), False),
        # onnxruntime-web in transformers.js 4.3 too: in headless Chromium on SwiftShader its new tokens were wrong
        (("-e", "webgpu", "--block-size", "256", "--format", "transformers.js", "--io-dtype", "fp32"), (0, 4), False),
    ],
)
def test_webgpu_blocks_of_256_take_level_0_where_the_in_width_splits_one(tmp_path, flags, levels, warned):
    """The WebGPU EP computes MatMulNBits in blocks of 256 at level 4, its default, wrong where K is no
    multiple of 256: logits with nothing of the model's (tests/test_webgpu_swiftshader.py runs both
    levels; in the browser, transformers.js 4.3 generated none of transformers' new tokens). Those
    nodes (down_proj's K of 640 here) take 0 and the build says so; the rest keep the level."""
    config = dict(TINY_CONFIGS["qwen3"], hidden_size=256, intermediate_size=640, num_attention_heads=8)
    checkpoint = make_checkpoint(tmp_path / "ckpt", config)  # q/k/v, o, gate/up and lm_head read 256 wide
    proc = cli("-m", checkpoint, "-o", tmp_path / "out", *flags)
    assert proc.returncode == 0, proc.stderr
    nodes = matmul_nbits_levels(tmp_path / "out")
    down = {level for name, level in nodes.items() if "down_proj" in name}
    others = {level for name, level in nodes.items() if "down_proj" not in name}
    assert (down, others) == ({levels[0]}, {levels[1]}), nodes
    notes = json.loads((tmp_path / "out" / "build_report.json").read_text())["notes"]
    split = [note for note in notes if "whose in-width is no multiple of 256" in note]
    if levels[0] == levels[1]:
        assert split == [], notes
        return
    assert len(split) == 1 and split[0].startswith("accuracy level 0 on the 2 MatMulNBits"), notes
    assert "(/model/layers.0/mlp/down_proj/MatMulNBits, /model/layers.1/mlp/down_proj/MatMulNBits)" in split[0]
    assert "onnxruntime's WebGPU EP computes those wrong at level 4" in split[0]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ([f"warning: {split[0]}"] if warned else []), proc.stderr


@pytest.mark.parametrize(
    "config, flags, warned",
    [
        ({}, ("-e", "cpu", "--block-size", "256", "--format", "transformers.js"), True),
        ({}, ("-e", "cpu", "--block-size", "256", "--format", "transformers.js", "-p", "int8"), True),
        ({}, ("-e", "cpu", "--block-size", "256", "--format", "transformers.js", "--accuracy-level", "0"), False),
        ({}, ("-e", "cpu", "--block-size", "128", "--format", "transformers.js"), False),
        # every in-width a multiple of 256: the WebGPU EP computes it right at level 4
        (
            dict(hidden_size=256, intermediate_size=512, num_attention_heads=8),
            ("-e", "cpu", "--block-size", "256", "--format", "transformers.js"),
            False,
        ),
    ],
)
def test_a_transformers_js_folder_wrong_on_webgpu_is_named(tmp_path, config, flags, warned):
    """A -e cpu transformers.js folder in blocks of 256 keeps level 4 (Node and wasm compute it right), but
    transformers.js runs any folder on WebGPU where asked, and examples/web does wherever the browser has
    it: there such folders left transformers' greedy tokens at the first new token, in silence (headless
    Chromium on SwiftShader, Llama, Gemma 3 and Qwen3.5 shapes, int4 and int8; right on wasm and at level 0).
    The build warns, and its report names the nodes, which the page reads."""
    checkpoint = make_checkpoint(tmp_path / "ckpt", dict(TINY_CONFIGS["qwen3"], **config))
    proc = cli("-m", checkpoint, "-o", tmp_path / "out", *flags)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "wrong tokens wherever transformers.js" in line]
    assert len(warnings) == warned, proc.stderr
    wrong = json.loads((tmp_path / "out" / "build_report.json").read_text())["wrong_on_webgpu"]
    assert bool(wrong) == warned, wrong
    if warned:
        # tiny Qwen3: q/k/v, gate/up and lm_head read 64, o_proj 128, down_proj 192; 2 layers
        assert len(wrong) == 11 and "/model/layers.0/attn/o_proj/MatMulNBits" in wrong, wrong
        assert warnings[0].startswith("warning: the 11 MatMulNBits whose in-width is no multiple of 256 (")
        assert ") run at accuracy level 4, which onnxruntime-web's WebGPU EP computes wrong" in warnings[0]
        assert "For WebGPU, build with -e webgpu (those take level 0 there) or --block-size 128 or less" in warnings[0]
        assert set(matmul_nbits_levels(tmp_path / "out").values()) == {4}  # as before: right in Node and on wasm


def test_impossible_combination_refused_up_front(ckpt, tmp_path):
    proc = cli("-m", ckpt, "-o", tmp_path / "out", "-p", "fp32", "-e", "cuda")
    assert_clean_failure(proc, "-p fp32 -e cuda cannot work", out=tmp_path / "out")


def test_unknown_option_key_in_python_api(ckpt):
    from builder import BuilderError, build

    with pytest.raises(BuilderError, match="unknown option 'int4_block_size'"):
        build(model=str(ckpt), int4_block_size=32)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"block_size": "32"}, "BuildOptions(block_size='32'): must be an integer"),  # was "'32' is not valid"
        ({"overwrite": "no"}, "BuildOptions(overwrite='no'): must be True or False"),  # replaced the build
        ({"verify": "no"}, "BuildOptions(verify='no'): must be True or False"),  # verified
        ({"precision": None}, "BuildOptions(precision=None): must be text"),  # built fp16
        ({"max_length": 64.5}, "BuildOptions(max_length=64.5): must be an integer or None"),  # genai refused it
        ({"ep": None}, "BuildOptions(ep=None): must be text"),  # KeyError
        ({"int8_layers": "lm_head"}, "BuildOptions(int8_layers='lm_head'): must be a list of names"),  # TypeError
        ({"target_ort": 1.30}, "(a float drops digits: 1.30 reads 1.3); write '1.30'"),
    ],
)
def test_python_options_of_the_wrong_type_are_named(ckpt, tmp_path, values, message):
    """BuildOptions set in Python meet no parser: these crashed deep inside, misled, or built
    something other than asked."""
    from builder import BuilderError, BuildOptions, build

    out = tmp_path / "out"
    with pytest.raises(BuilderError) as caught:
        build(BuildOptions(model=str(ckpt), output=str(out), **values), show_progress=False)
    assert message in str(caught.value)
    # The same as keywords: build(block_size="32") was converted as YAML's text is, and built.
    with pytest.raises(BuilderError) as caught:
        build(model=str(ckpt), output=str(out), show_progress=False, **values)
    assert message in str(caught.value)
    assert not out.exists()


@pytest.mark.parametrize(
    "values, message",
    [
        ({"model": ""}, "no model given"),
        ({"family": "  "}, "--family: empty"),
        ({"context_length": 0}, "--context-length: 0 must be a positive integer"),
        ({"verify": True, "context_length": 1}, "--verify needs a context of at least 2 positions"),
        ({"precision": "fp16", "int8_layers": ["lm_head"]}, "only apply to int4 and int8 builds"),
        ({"precision": "fp32", "float_layers": ["lm_head"]}, "only apply to int4 and int8 builds"),
        ({"precision": "int8", "int8_layers": ["lm_head"]}, "--int8-layers has no effect in an int8 build"),
        ({"read_ahead_mb": -1}, "--read-ahead-mb: -1 must be 0 (off) or a size in MB"),
        ({"max_length": 0}, "--max-length: 0 must be a positive integer"),
        ({"intra_op_threads": 1025}, "--intra-op-threads: 1025 is not valid"),
        ({"context_length": True}, "BuildOptions(context_length=True): must be an integer or None"),
        ({"family": dict}, "must be text or None; a class goes to build(..., family=MyBuilder)"),
    ],
)
def test_option_values_no_build_could_use_are_refused_before_it(values, message):
    from builder import BuilderError, BuildOptions

    with pytest.raises(BuilderError) as caught:
        BuildOptions(**{"model": "m", **values}).validated()
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "values",
    [
        {"max_length": 64, "context_length": 64},  # the whole context
        {"max_length": 100, "context_length": 10, "format": "transformers.js"},  # no genai_config.json: a warning
        {"intra_op_threads": -1},  # onnxruntime-genai's default
        {"intra_op_threads": 1024},
        {"read_ahead_mb": 0},  # off
    ],
)
def test_option_values_at_their_limits_are_taken(values):
    from builder import BuildOptions

    assert BuildOptions(model="m", **values).validated() == BuildOptions(model="m", **values)


def test_python_callers_are_told_the_keywords_they_pass(ckpt, tmp_path):
    """build(precision="int3") was answered "--precision: 'int3' is not valid", and "pass
    --overwrite" to a caller who has no command line: the Python entry points name keywords,
    the command line keeps its flags."""
    from architectures import Qwen3Builder
    from builder import BuilderError, build
    from builder.pipeline import run

    out = tmp_path / "out"
    cases = [
        ({"precision": "int3"}, "precision: 'int3' is not valid; choose one of int4"),
        ({"precision": "fp32", "ep": "cuda"}, "precision='fp32' ep='cuda' cannot work"),
        ({"max_length": 50, "context_length": 10}, "max_length=50 is larger than context_length=10; lower it"),
    ]
    for values, message in cases:
        with pytest.raises(BuilderError) as caught:
            build(model=str(ckpt), output=str(out), show_progress=False, **values)
        assert message in str(caught.value) and "--" not in str(caught.value)
        with pytest.raises(BuilderError) as caught:
            _ = Qwen3Builder.from_pretrained(str(ckpt), output=str(out), **values).plan
        assert message in str(caught.value)
    out.mkdir()
    with pytest.raises(BuilderError, match="pass overwrite=True to replace it"):
        run(Qwen3Builder.from_pretrained(str(ckpt), output=str(out)), show_progress=False)
    from builder.kit.option_names import keyword_names

    assert keyword_names("--no-symmetric: x; to run it: python -m builder batch f") == (
        "symmetric=False: x; to run it: python -m builder batch f"
    )
    # The command line and batch files keep the flags.
    assert_clean_failure(cli("-m", ckpt, "-o", out, "-p", "fp32", "-e", "cuda"), "-p fp32 -e cuda cannot work")
    assert_clean_failure(cli("-m", ckpt, "-o", out), "pass --overwrite")


def test_python_paths_and_tuples_mean_what_they_say(ckpt, tmp_path):
    """A Path output failed after the whole build (its report could not be written), a tuple of
    patterns in the plan."""
    from builder import BuildOptions, build

    options = BuildOptions(model=ckpt, output=tmp_path / "out", float_layers=("lm_head",))
    result = build(options, show_progress=False)
    report = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert result.output == tmp_path / "out" and report["options"]["float_layers"] == ["lm_head"]
    # The caller's options stay as given: build() turned them into text and a list (setattr).
    assert options.output == tmp_path / "out" and options.float_layers == ("lm_head",)
    assert options.model is ckpt


def test_python_numpy_integers_and_booleans_mean_what_they_say(ckpt, tmp_path):
    """A notebook's sweep over np.array([32, 64]) (or a DataFrame's column) passed np.int64(64), which
    was refused as "must be an integer"; np.bool_(False) as "must be True or False"."""
    import numpy as np

    from builder import BuilderError, build

    values = {"block_size": np.int64(64), "max_length": np.int32(100), "symmetric": np.bool_(False)}
    result = build(model=str(ckpt), output=str(tmp_path / "out"), show_progress=False, **values)
    report = json.loads(result.report_path.read_text())
    assert report["options"]["block_size"] == 64 and report["options"]["symmetric"] is False
    genai = json.loads(result.genai_config_path.read_text())
    assert genai["search"]["max_length"] == 100
    for wrong in ({"block_size": np.float64(64.0)}, {"symmetric": np.int64(0)}):  # not integers, not booleans
        with pytest.raises(BuilderError, match="must be"):
            build(model=str(ckpt), output=str(tmp_path / "wrong"), show_progress=False, **wrong)
    assert not (tmp_path / "wrong").exists()


def test_python_build_takes_its_options_one_way(ckpt, tmp_path):
    """Keywords beside a BuildOptions, and a second family, were dropped in silence; a dict or a
    path in place of the options was an AttributeError."""
    from builder import BuilderError, BuildOptions, build

    options = BuildOptions(model=str(ckpt), output=str(tmp_path / "out"))
    with pytest.raises(BuilderError, match=r"options given both as a BuildOptions and as keywords \(precision\)"):
        build(options, precision="fp32")
    with pytest.raises(BuilderError, match=r"family given both as BuildOptions\(family='Nope'\)"):
        build(BuildOptions(model=str(ckpt), family="Nope"), family="Qwen3ForCausalLM")
    with pytest.raises(BuilderError, match=r"build\(dict\): pass a BuildOptions, or the options as keywords"):
        build({"model": str(ckpt)})
    assert not (tmp_path / "out").exists()


def test_an_int8_embedding_alone_is_no_slow_int8_build(ckpt, tmp_path):
    """An int8 embedding stays a float Gather (warned of): with no 8-bit MatMulNBits in the graph,
    the slow-below-level-4 warning, read from the flags, was false."""
    proc = cli("-m", ckpt, "-o", tmp_path / "out", "--int8-layers", "model.embed_tokens", "--accuracy-level", "0")
    assert proc.returncode == 0, proc.stderr
    assert "model.embed_tokens stays float" in proc.stderr and "MatMulNBits is fast on 8-bit" not in proc.stderr


def test_layer_pattern_matching_nothing(ckpt, tmp_path):
    proc = cli("-m", ckpt, "-o", tmp_path / "out", "--int8-layers", "lm_haed")
    assert_clean_failure(proc, "lm_haed", "match no projection", out=tmp_path / "out")
    # a tensor's name, as model.safetensors.index.json lists it, says what to drop
    proc = cli("-m", ckpt, "-o", tmp_path / "out", "--float-layers", "model.layers.0.mlp.down_proj.weight")
    assert_clean_failure(
        proc,
        "(model.layers.0.mlp.down_proj.weight: drop the .weight or .bias, patterns name modules)",
        out=tmp_path / "out",
    )


def test_an_unquoted_layer_pattern_the_shell_expanded_is_named(ckpt, tmp_path):
    """`--int8-layers *` reaches the builder as the file names of the current folder (cli's cwd is the
    repository): the option took the first, and the rest were 'unrecognized arguments', no word of why."""
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, "--int8-layers", "README.md", "docs", "pyproject.toml")
    assert_clean_failure(
        proc, "unrecognized arguments: docs pyproject.toml", "quote each --int8-layers pattern", out=out
    )
    # Words that are no files here get argparse's error alone.
    proc = cli("-m", ckpt, "-o", out, "--float-layers", "lm_head", "stray")
    assert_clean_failure(proc, "unrecognized arguments: stray", out=out)
    assert "quote" not in proc.stderr


def test_one_pattern_in_both_layer_lists(ckpt, tmp_path):
    """Float won silently; one pattern in both lists is a slip, not a precedence question."""
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, "--int8-layers", "*.q_proj", "--float-layers", "*.q_proj,lm_head")
    assert_clean_failure(proc, "*.q_proj given to both --int8-layers and --float-layers", out=out)
    # An empty value (an unset shell variable) built everything int4, as if the flag were absent.
    assert_clean_failure(cli("-m", ckpt, "-o", out, "--float-layers", ""), "--float-layers: no pattern in ''", out=out)


def test_model_under_an_unknown_users_home(tmp_path):
    proc = cli("-m", "~no-such-user-here/model", "-o", tmp_path / "out")
    assert_clean_failure(proc, "'~no-such-user-here/model'", "no home folder", out=tmp_path / "out")


# ---- output folder ----------------------------------------------------------


def test_existing_output_needs_overwrite(ckpt, tmp_path):
    out = tmp_path / "out"
    assert cli("-m", ckpt, "-o", out).returncode == 0
    first = (out / "build_report.json").read_text()
    proc = cli("-m", ckpt, "-o", out)
    assert_clean_failure(proc, str(out), "--overwrite")
    assert (out / "build_report.json").read_text() == first
    assert cli("-m", ckpt, "-o", out, "--overwrite").returncode == 0
    assert (out / "model.onnx").is_file()


def test_overwrite_keeps_what_the_build_did_not_write(ckpt, tmp_path):
    """A user's notes in a finished output, and a checkpoint copied into it and built from:
    --overwrite deleted both with the old build."""
    import shutil

    out = tmp_path / "out"
    assert cli("-m", ckpt, "-o", out).returncode == 0
    (out / "NOTES.txt").write_text("mine")
    shutil.copytree(ckpt, out / "ckpt")
    # Built from the copy inside it, the output is refused before it is looked into.
    for model, why in ((ckpt, "did not write (NOTES.txt, ckpt/)"), (out / "ckpt", "contains the checkpoint")):
        proc = cli("-m", model, "-o", out, "--overwrite")
        assert_clean_failure(proc, why)
        assert (out / "NOTES.txt").read_text() == "mine" and (out / "ckpt" / "config.json").is_file()
    (out / "NOTES.txt").unlink()
    shutil.rmtree(out / "ckpt")
    assert cli("-m", ckpt, "-o", out, "--overwrite").returncode == 0


def test_overwrite_of_a_transformers_js_folder_knows_its_own_files(ckpt, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        proc = cli("-m", ckpt, "-o", out, "--format", "transformers.js", "--overwrite")
        assert proc.returncode == 0, proc.stderr
    (out / "onnx" / "model_fp16.onnx").write_bytes(b"another build's")
    proc = cli("-m", ckpt, "-o", out, "--format", "transformers.js", "--overwrite")
    assert_clean_failure(proc, "(onnx/model_fp16.onnx)")


def test_overwrite_knows_the_generation_config_a_transformers_js_build_writes(ckpt, tmp_path):
    """Built from a checkpoint without generation_config.json, the folder has one the builder
    wrote, which the report's file lists leave out: --overwrite refused its own file."""
    (ckpt / "generation_config.json").unlink()
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(
        json.dumps({**config, "bos_token_id": None, "eos_token_id": 479, "pad_token_id": 477})
    )
    out = tmp_path / "out"
    for _ in range(2):
        proc = cli("-m", ckpt, "-o", out, "--format", "transformers.js", "--overwrite")
        assert proc.returncode == 0, proc.stderr
    # transformers.js takes the ids from it: config.json's, each that is set
    assert json.loads((out / "generation_config.json").read_text()) == {"eos_token_id": 479, "pad_token_id": 477}


def test_overwrite_of_a_build_whose_report_names_no_files_still_keeps_a_users_files(ckpt, tmp_path):
    """Reports from before the file lists: the builder's usual files are replaced, anything else kept."""
    out = tmp_path / "out"
    assert cli("-m", ckpt, "-o", out).returncode == 0
    report = json.loads((out / "build_report.json").read_text())
    del report["files"]
    (out / "build_report.json").write_text(json.dumps(report))
    (out / "notes.txt").write_text("mine")
    assert_clean_failure(cli("-m", ckpt, "-o", out, "--overwrite"), "did not write (notes.txt)")
    (out / "notes.txt").unlink()
    assert cli("-m", ckpt, "-o", out, "--overwrite").returncode == 0


def test_output_that_is_or_holds_the_checkpoint_is_refused_first(ckpt):
    """-o CKPT was told to pass --overwrite, which then refused the folder (not made here)."""
    for out in (ckpt, ckpt.parent):
        proc = cli("-m", ckpt, "-o", out)
        assert_clean_failure(proc, f"-o/--output {out} ", "choose an output outside the checkpoint")
        assert "--overwrite" not in proc.stderr
    assert (ckpt / "config.json").is_file()


def test_never_deletes_a_folder_it_did_not_make(ckpt, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = cli("-m", ckpt, "-o", out, "--overwrite")
    # what to do, too: it said only that it refused
    assert_clean_failure(proc, "not made by this builder", "choose another -o/--output, or empty it yourself")
    assert (out / "notes.txt").read_text() == "mine"


# ---- disk full, interruption ----------------------------------------------


def test_write_error_while_streaming_leaves_nothing(ckpt, tmp_path):
    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, "-p", "fp32", preexec_fn=small_files)
    # EFBIG is a size limit, not a full disk; the file is named where the user will look for it.
    assert_clean_failure(proc, f"writing {out}/model.onnx.data failed", "file-size limit", out=out)
    assert "free disk space" not in proc.stderr and ".builder-staging" not in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_interrupt_mid_build_removes_partial_output(tmp_path, sig):
    """SIGHUP too: a closed terminal or ssh session left a 209 MB staging folder behind."""
    config = {**TINY_CONFIGS["qwen3"], "num_hidden_layers": 24, "hidden_size": 256, "intermediate_size": 1024}
    ckpt = make_checkpoint(tmp_path / "ckpt", config)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A shell's background job inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler; give the child the default so the test does not depend
    # on how pytest itself was started (it failed under `nohup ... &`).
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "-m", str(ckpt), "-o", str(out), "-p", "fp32"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in proc.stderr:  # wait until weights are being written
        if "layer 2/" in line:
            break
    # Freeze the build so it cannot finish before the signal lands, then deliver it.
    proc.send_signal(signal.SIGSTOP)
    assert list(tmp_path.glob(".builder-staging-*")), "the build should be staged while running"
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + sig, rest  # 130, 143, 129: as a shell reports the signal
    assert "interrupted" in rest and "Traceback" not in rest
    assert f"nothing was written to {out}" in rest  # it had no output to leave 'as it was'
    assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))


# ---- tokenizer --------------------------------------------------------------


def test_missing_tokenizer_still_builds_and_warns(ckpt, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).unlink()
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "tokenizer.json" in proc.stderr and "genai needs them" in proc.stderr
    report = json.loads((out / "build_report.json").read_text())
    assert any("tokenizer.json" in note for note in report["notes"])
    assert (out / "model.onnx").is_file()
    # A transformers.js folder is read by transformers.js, which fetches the same two files.
    proc = cli("-m", ckpt, "-o", tmp_path / "js", "--format", "transformers.js")
    assert proc.returncode == 0, proc.stderr
    assert "but transformers.js needs them to tokenize" in proc.stderr and "onnxruntime-genai" not in proc.stderr


def test_verify_flag_checks_parity_and_records_it(ckpt, tmp_path):
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, "-p", "fp32", "--verify")
    assert proc.returncode == 0, proc.stderr
    verify = json.loads((out / "build_report.json").read_text())["verify"]
    assert verify["status"] == "passed" and verify["max_abs"] < 1e-4
    shown = subprocess.run(  # without --quiet: the result is on the build's last line
        [sys.executable, "-m", "builder", "-m", str(ckpt), "-o", str(tmp_path / "shown"), "-p", "fp32", "--verify"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert "verified against transformers: max_abs" in shown.stderr.splitlines()[-1], shown.stderr
    out2 = tmp_path / "out2"
    assert cli("-m", ckpt, "-o", out2, "-e", "webgpu", "--verify").returncode == 0
    assert json.loads((out2 / "build_report.json").read_text())["verify"]["status"] == "not run"


@pytest.mark.parametrize(
    "generation",
    [{"max_new_tokens": -1}, {"do_sample": False, "num_return_sequences": 4}, {"watermarking_config": {"bogus": 1}}],
)
def test_verify_does_not_read_generation_config(tmp_path, generation):
    """transformers validates generation_config.json as it loads the reference, and refused these
    values, which the build takes: --verify failed after the whole build, blaming config.json or a
    model_type transformers lacks, over a file the logits it compares never depend on."""
    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"], generation_config=generation)
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, "-p", "fp32", "--verify")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "build_report.json").read_text())["verify"]["status"] == "passed"


def test_verify_with_a_package_that_fails_to_import_is_refused_before_building(ckpt, tmp_path):
    """An installed transformers that raised on import passed the find_spec check, and the build
    ran to its end to fail in verify with a traceback."""
    shim = tmp_path / "shim" / "transformers"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("cannot import name X from torch")\n')
    out = tmp_path / "out"
    path = f"{shim.parent}{os.pathsep}{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    proc = cli("-m", ckpt, "-o", out, "-p", "fp32", "--verify", env={"PYTHONPATH": path})
    assert proc.returncode == 2, proc.stderr
    assert_clean_failure(
        proc,
        "--verify cannot import transformers (ImportError: cannot import name X from torch); reinstall it",
        "pip install",
        "or drop --verify",
        out=out,
    )


def test_verify_checks_the_graph_at_accuracy_level_0(checkpoint, tmp_path):
    """int8 activations (the cpu default, level 4) are noise the Gated DeltaNet state carries
    from token to token: a default Qwen3.5 build failed --verify at NMSE 1.4e-2 before verify
    checked a level-0 copy of the graph. The as-built figure stays in the report."""
    from builder import build

    out = tmp_path / "out"
    verify = build(
        model=str(checkpoint("qwen3_5")), output=str(out), precision="int4", verify=True, show_progress=False
    )
    verify = verify.report["verify"]
    assert verify["status"] == "passed" and verify["checked_at_accuracy_level"] == 0, verify
    assert verify["nmse"] < 1e-9 and verify["argmax_agree"] == 1.0, verify
    assert verify["as_built"]["nmse"] > 1e3 * verify["nmse"], verify
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # the copy is gone


@pytest.mark.parametrize("name", ["qwen3", "gemma3"])
def test_verify_of_a_float_embedding_under_a_tied_int4_lm_head(checkpoint, tmp_path, name):
    """--float-layers model.embed_tokens (the README's advice for wasm) on a tied model: the
    reference must keep its embedding float while the lm_head is int4, as the graph does."""
    from builder import build

    result = build(
        model=str(checkpoint(name)),
        output=str(tmp_path / "out"),
        precision="int4",
        float_layers=["model.embed_tokens"],
        accuracy_level=0,
        verify=True,
        show_progress=False,
    )
    assert result.report["model"]["tied_embeddings"]
    verify = result.report["verify"]
    assert verify["status"] == "passed" and verify["nmse"] < 1e-9, verify


def test_failed_verify_is_a_failed_build(ckpt, tmp_path, monkeypatch):
    """A model whose logits disagree with transformers is not published."""
    import builder.verify as verify
    from builder import BuilderError, build
    from builder.verify import ParityResult

    monkeypatch.setattr(verify, "verify_models", lambda *a, **k: [ParityResult(5.0, 5.0, 1.0, 0.5, 0.3, 5)] * 2)
    out = tmp_path / "out"
    with pytest.raises(BuilderError, match="verify failed"):
        build(model=str(ckpt), output=str(out), precision="int4", verify=True, show_progress=False)
    assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))


@pytest.mark.parametrize(
    "max_abs,nmse,peak,passed",
    [
        (1.2e-3, 1.2e-10, 115.0, True),  # a correct graph with large logits: max |d| grows with them
        (1.2e-3, 1.2e-10, 5.0, False),  # the same difference where the logits are small
        (6e-3, 8.5e-5, 0.5, False),  # interleaved rotary built as halves, on std-0.02 weights
        (9e-6, 1e-7, 30.0, True),
        (9e-6, 2e-6, 30.0, False),  # small everywhere, but a tenth of the logits' scale off in NMSE
    ],
)
def test_the_fp32_activation_bound_scales_with_the_logits(ckpt, tmp_path, monkeypatch, max_abs, nmse, peak, passed):
    """max |d| < 1e-3 failed a correct Qwen3.5-0.8B-shaped int4 build whose logits reached 115
    (max |d| 1.2e-3, NMSE 1.2e-10): the bound is also 1e-4 of the largest logit, and NMSE < 1e-6."""
    import builder.verify as verify
    from builder import BuilderError, build
    from builder.verify import ParityResult

    result = ParityResult(max_abs, max_abs, max_abs, 1.0, nmse, 5, peak)
    monkeypatch.setattr(verify, "verify_models", lambda *a, **k: [result] * 2)
    options = dict(model=str(ckpt), output=str(tmp_path / "out"), precision="int4", verify=True, show_progress=False)
    if passed:
        assert build(**options).report["verify"]["bound"] == f"max_abs < {max(1e-3, 1e-4 * peak):.3g}, nmse < 1e-06"
    else:
        with pytest.raises(BuilderError, match="verify failed"):
            build(**options)


def test_compare_reports_each_figure_over_the_positions_a_build_returns():
    """A --logits last build returns the prompt's last position only: it is compared with the
    reference's last one, the decode figure takes only the decode steps, NMSE is squared error
    over the reference's energy, and the largest |logit| is a magnitude (here a negative one)."""
    import numpy as np

    from builder.verify import compare

    prompt = np.array([[[1.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, -8.0, 0]]], np.float32)
    step = np.array([[[0, 0, 0, 2.0]]], np.float32)
    ours_prompt = np.array([[[0, 0, -3.0, 0]]], np.float32)  # 5 off at the last position; same top token
    ours_step = np.array([[[3.0, 0, 0, 2.0]]], np.float32)  # 3 off, and another top token
    p = compare([prompt, step], [ours_prompt, ours_step])
    assert (p.max_abs, p.max_abs_prefill, p.max_abs_decode, p.steps) == (5.0, 5.0, 3.0, 2)
    assert p.argmax_agree == 0.5 and p.ref_max_abs == 8.0
    assert p.nmse == pytest.approx((5.0**2 + 3.0**2) / (8.0**2 + 2.0**2))


def test_verify_fits_its_prompt_and_decode_steps_into_the_context(tmp_path, monkeypatch):
    """20 positions, 4 of them decode steps, where the context allows; a short context keeps one
    decode step (a context of 4 checked none: the cache path went unchecked)."""
    import builder.verify as verify
    from builder.verify import ParityResult

    asked = []

    def verify_models(models, checkpoint, options, prompt_length, decode_steps, **_):
        asked.append((prompt_length, decode_steps))
        return [ParityResult(0.0, 0.0, 0.0, 1.0, 0.0, decode_steps + 1, 1.0)]

    monkeypatch.setattr(verify, "verify_models", verify_models)
    monkeypatch.setattr(verify, "exact_compute_copy", lambda model_file: None)
    monkeypatch.setattr(verify, "quantizes_activations_always", lambda model_file: False)
    for context in (None, 4096, 10, 8, 4, 2):
        assert verify.verify_output(tmp_path, tmp_path, None, "cpu", True, context_length=context)["status"] == "passed"
    assert asked == [(16, 4), (16, 4), (8, 2), (7, 1), (3, 1), (1, 1)]


@pytest.mark.parametrize(
    "attrs,exact,quantized",
    [
        (dict(expert_weight_bits=4, block_size=32, accuracy_level=4), True, False),
        (dict(expert_weight_bits=8, accuracy_level=4), True, False),  # per-channel int8 experts: exact at 0
        (dict(expert_weight_bits=8, block_size=32, accuracy_level=4), True, True),  # no fp32 kernel at any level
        (dict(expert_weight_bits=4, block_size=32, accuracy_level=0), False, False),
    ],
)
def test_qmoe_is_checked_at_level_0_and_only_block_wise_int8_quantizes_activations(tmp_path, attrs, exact, quantized):
    """QMoE computes at its accuracy level as MatMulNBits does: left at 4, MoE builds were checked
    with int8 activations; only block-wise 8-bit experts quantize their activations at every level."""
    import onnx
    from onnx import TensorProto, helper

    from builder.verify import exact_compute_copy, quantizes_activations_always

    node = helper.make_node("QMoE", ["x"], ["y"], domain="com.microsoft", **attrs)
    info = helper.make_tensor_value_info
    graph = helper.make_graph([node], "g", [info("x", TensorProto.FLOAT, [1])], [info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert quantizes_activations_always(path) is quantized
    copy = exact_compute_copy(path)
    assert (copy is not None) is exact
    if copy:
        levels = [a.i for a in onnx.load(str(copy)).graph.node[0].attribute if a.name == "accuracy_level"]
        assert copy.parent == tmp_path and levels == [0]


def test_help_lists_every_option_and_exits_zero():
    import dataclasses

    from builder.kit.options import BuildOptions

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in ([], ["inspect"], ["batch"]):
        proc = subprocess.run(
            [sys.executable, "-m", "builder", *command, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
        if not command:
            for f in dataclasses.fields(BuildOptions):
                assert f.metadata["flags"][-1] in proc.stdout, f.name


def test_a_build_larger_than_the_free_space_is_refused_before_it_writes(ckpt, tmp_path, monkeypatch):
    """A build that could not fit failed only when the disk filled, after streaming for minutes."""
    import shutil as shutil_module

    import builder.pipeline as pipeline
    import builder.preflight as preflight
    from builder.kit.errors import BuilderError

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage._replace(free=100_000))
    out = tmp_path / "out"
    with pytest.raises(BuilderError, match=r"has 0\.1 MB free, and this build writes at least .* MB \("):
        pipeline.build(model=str(ckpt), output=str(out), precision="fp32", show_progress=False)
    assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))
    from support.fingerprints import count_fingerprints

    hashed = count_fingerprints(monkeypatch)
    with pytest.raises(BuilderError, match="free space there"):  # before --checkpoint-hash reads the weights
        pipeline.build(model=str(ckpt), output=str(out), precision="fp32", checkpoint_hash=True, show_progress=False)
    assert True not in hashed
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage._replace(free=10**12))
    assert pipeline.build(model=str(ckpt), output=str(out), precision="fp32", show_progress=False).output == out


def test_the_space_a_build_needs_counts_only_the_weights_it_reads(tmp_path):
    """Layers beyond num_hidden_layers, which the build leaves out, were counted, so a build was
    refused with twice the space it needed free (and verify's memory estimate asked for them too)."""
    import json

    from architectures.registry import builder_class_for
    from builder import BuildOptions
    from builder.kit.checkpoint import Checkpoint
    from builder.preflight import built_weight_count

    two = make_checkpoint(tmp_path / "two", {**TINY_CONFIGS["qwen3"], "num_hidden_layers": 2})
    config = json.loads((two / "config.json").read_text())
    (two / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    one = make_checkpoint(tmp_path / "one", {**TINY_CONFIGS["qwen3"], "num_hidden_layers": 1})

    def count(folder):
        ckpt = Checkpoint(folder)
        return built_weight_count(builder_class_for(ckpt.config)(ckpt, BuildOptions(model=str(folder))))

    assert count(two) == count(one) == sum(math.prod(s) for s in Checkpoint(one).shapes().values())


@pytest.mark.parametrize(
    "options,per_weight",
    [
        (dict(precision="int4", block_size=32), 0.5 + 2 / 32),  # the nibbles and an fp16 scale a block
        (dict(precision="int8", block_size=128), 1 + 2 / 128),
        (dict(precision="fp16"), 2),
        (dict(precision="fp32"), 4),
    ],
)
def test_the_bytes_a_build_needs_per_weight_include_the_scales_of_its_blocks(options, per_weight):
    """Left out, the scales (1/8 of an int4 block-32 build) made the estimate short of what the build writes."""
    from types import SimpleNamespace

    from builder import BuildOptions
    from builder.preflight import bytes_needed

    class Arch:
        plan = SimpleNamespace(options=BuildOptions(model="x", **options))
        checkpoint = SimpleNamespace(shapes=lambda: {"model.layers.0.mlp.up_proj.weight": (1000, 64)})

        def left_out(self, name):
            return False

    assert bytes_needed(Arch()) == int(64_000 * per_weight)


@pytest.mark.parametrize(
    "name,options",
    [
        ("qwen3", dict(precision="int4")),
        ("qwen3-untied", dict(precision="int8")),
        ("gemma3", dict(precision="fp16")),
        ("qwen3_5", dict(precision="fp32")),
        ("qwen3", dict(precision="int4", format="transformers.js")),
    ],
)
def test_the_space_a_build_needs_is_no_more_than_it_writes(built, checkpoint, name, options):
    """The check asked for 0.9x its estimate, so a build short of the space by up to 11% started
    and failed when the disk filled; the estimate is a lower bound, and it is asked for whole."""
    from architectures.registry import builder_class_for
    from builder import BuildOptions
    from builder.kit.checkpoint import Checkpoint
    from builder.preflight import bytes_needed

    result = built(name, **options)
    ckpt = Checkpoint(checkpoint(name))
    arch = builder_class_for(ckpt.config)(ckpt, BuildOptions(model=str(ckpt.directory), **options))
    written = sum(f.stat().st_size for f in result.output.rglob("model*.onnx*"))
    assert 0 < bytes_needed(arch) <= written


def test_the_space_check_counts_the_space_a_dead_build_of_the_output_held_as_free(tmp_path, monkeypatch):
    """A build killed with SIGKILL leaves its staging folder, the model's size, beside the output: the
    check sweeps it before it measures, or a rebuild needing that space was refused for it."""
    import shutil as shutil_module

    import builder.preflight as preflight
    from builder.kit.options import BuildOptions

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".builder-staging-out-{dead.stdout.strip()}-0123abcd"
    stale.mkdir()
    (stale / "model.onnx.data").write_bytes(b"\0" * 1000)
    usage = shutil_module.disk_usage(tmp_path)
    measured = []

    def disk_usage(path):
        measured.append(stale.exists())
        return usage._replace(free=10**12)

    class Arch:
        plan = type("Plan", (), {"options": BuildOptions(model="x", precision="fp32")})
        checkpoint = type("Checkpoint", (), {"shapes": staticmethod(lambda: {"w": (4, 4)})})

        def left_out(self, name):
            return False

    monkeypatch.setattr(preflight.shutil, "disk_usage", disk_usage)
    preflight.check_disk_space(Arch(), tmp_path / "out")
    assert measured == [False]


def test_the_space_check_measures_where_the_build_writes(ckpt, tmp_path, monkeypatch):
    """A symlinked -o writes beside the link's target, and a transformers.js build over 2 GB copies
    its data into 2 GB files: the check measured the link's folder, and counted the output once."""
    import shutil as shutil_module

    import builder.preflight as preflight
    from builder.kit.errors import BuilderError
    from builder.kit.options import BuildOptions
    from builder.pipeline import build

    usage = shutil_module.disk_usage(tmp_path)
    roomy, tight = tmp_path / "roomy", tmp_path / "tight"
    (roomy / "model").mkdir(parents=True)
    tight.mkdir()
    (tight / "link").symlink_to(roomy / "model")
    asked = []

    def disk_usage(path):
        asked.append(Path(path))
        return usage._replace(free=10**12 if Path(path) == roomy else 1000)

    monkeypatch.setattr(preflight.shutil, "disk_usage", disk_usage)
    result = build(model=str(ckpt), output=str(tight / "link"), overwrite=True, show_progress=False)
    assert asked == [roomy] and (roomy / "model" / "build_report.json").is_file(), result

    class Arch:  # 3e9 float weights of a transformers.js fp32 build: 10.8 GB, plus 8.8 GB of copies
        plan = type("Plan", (), {"options": BuildOptions(model="x", precision="fp32", format="transformers.js")})
        checkpoint = type("Ckpt", (), {"shapes": lambda self: {"w": (3, 10**9)}})()

        @staticmethod
        def left_out(name):
            return False

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage._replace(free=15 * 10**9))
    with pytest.raises(BuilderError, match=r"writes at least 22\.00 GB"):
        preflight.check_disk_space(Arch(), tmp_path / "web")


def test_free_space_and_the_space_needed_that_round_alike_are_shown_in_bytes(tmp_path, monkeypatch):
    """'has 0.1 MB free, and this build writes at least 0.1 MB' refused a build in numbers that
    read as enough."""
    import shutil as shutil_module

    import builder.preflight as preflight
    from builder.kit.errors import BuilderError
    from builder.kit.options import BuildOptions

    class Arch:
        plan = type("Plan", (), {"options": BuildOptions(model="x", precision="fp32")})
        checkpoint = type("Ckpt", (), {"shapes": lambda self: {"w": (300, 100)}})()

        @staticmethod
        def left_out(name):
            return False

    need = preflight.bytes_needed(Arch())
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage._replace(free=need - 1))
    with pytest.raises(BuilderError) as refused:
        preflight.check_disk_space(Arch(), tmp_path / "out")
    assert f"has {need - 1:,} bytes free, and this build writes at least {need:,} bytes (" in str(refused.value)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage._replace(free=need // 4))
    with pytest.raises(BuilderError, match=r"has 0\.\d MB free, and this build writes at least 0\.\d MB \("):
        preflight.check_disk_space(Arch(), tmp_path / "out")  # apart once rounded: MB as before


def test_verify_names_a_load_failure_transformers_raises_any_way(ckpt, tmp_path):
    """transformers fails on `"text_config": {}` in a Qwen3 config with an AttributeError, which
    --verify let through as a traceback; the build itself reads the decoder's keys at the top."""
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"] = {}
    (ckpt / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_clean_failure(
        cli("-m", ckpt, "-o", out, "-p", "fp32", "--verify"), "--verify: transformers failed to load", out=out
    )


def test_verify_of_a_config_json_transformers_cannot_parse_names_the_file(ckpt, tmp_path):
    """A config.json saved with a byte-order mark builds, but transformers' reader refuses it, and
    --verify blamed the weights' layout (model.safetensors or an index of shards)."""
    path = ckpt / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    out = tmp_path / "out"
    proc = cli("-m", ckpt, "-o", out, "-p", "fp32", "--verify")
    assert_clean_failure(proc, "config.json' is not a valid JSON file", "save it as plain UTF-8 JSON", out=out)
    assert "index of shards" not in proc.stderr
