"""--logits last: logits [B, 1, V] for each row's last token, as onnxruntime-genai samples them.

onnxruntime-genai pads a batch of prompts on the right, so the rows of a batch must each be read
at their own last token, not at the batch's last column; these tests put batches of unequal
prompts through genai and through plain sessions and compare every row with the same prompt
alone and with transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from builder import BuildOptions
from builder.verify import (
    REPEATING_PROMPT,
    dequantized_reference,
    genai_batch_greedy,
    genai_engine_greedy,
    genai_speculative_greedy,
    index_dtype,
    onnx_logits,
    onnx_session,
    torch_logits,
)

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ([5, 17, 99, 120, 33, 8, 41, 200, 201, 202], [7, 300, 12])


def logits_dims(result) -> list:
    model = onnx.load(str(result.model_path), load_external_data=False)
    out = next(o for o in model.graph.output if o.name == "logits")
    return [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]


@pytest.mark.parametrize(
    "options,positions",
    [
        ({"ep": "cpu"}, 1),  # genai folders: the last token only
        ({"ep": "cpu", "logits": "all"}, "sequence_length"),
        ({"ep": "webgpu"}, 1),  # captured: the selection without Shape
        ({"ep": "webgpu", "graph_capture": "off"}, 1),
        ({"ep": "webgpu", "target_ort": "1.27"}, "sequence_length"),  # not run there with it
        ({"ep": "webgpu", "target_ort": "1.25"}, "sequence_length"),  # every onnxruntime-webgpu target
        ({"ep": "webgpu", "logits": "all"}, "sequence_length"),
        # genai 0.11, the newest for onnxruntime 1.23, fails on [B, 1, V]; 0.12 (onnxruntime >= 1.24.1) reads it
        ({"ep": "cpu", "target_ort": "1.23"}, "sequence_length"),
        ({"ep": "cpu", "target_ort": "1.24"}, 1),
        ({"ep": "dml"}, 1),  # its default target: onnxruntime-directml 1.24, with genai-directml 0.12.2
        ({"ep": "dml", "target_ort": "1.23"}, "sequence_length"),
        ({"ep": "cpu", "format": "transformers.js"}, "num_logits"),  # as many as num_logits_to_keep says
        ({"ep": "cpu", "format": "transformers.js", "logits": "all"}, "sequence_length"),
    ],
)
def test_which_positions_get_logits(built, options, positions):
    result = built("qwen3", precision="int4", **options)
    assert logits_dims(result)[1] == positions
    recorded = {1: "last", "num_logits": "num_logits_to_keep"}.get(positions, "all")
    assert result.report["target"]["logits"] == recorded


def installed_genai(root: Path, version: str) -> dict:
    """An environment where importlib.metadata finds onnxruntime-genai `version` before the venv's."""
    info = root / f"onnxruntime_genai-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: onnxruntime-genai\nVersion: {version}\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}


@pytest.mark.parametrize(
    "genai, target_ort, recorded",
    [
        ("0.12.1", None, "all"),  # fails on last-token logits beside onnxruntime 1.24.1, as 0.8-0.11 do beside any
        ("0.11.4", None, "all"),
        ("0.12.2", None, "last"),  # the first that reads them
        ("0.12.1", "1.32", "last"),  # a named target is another machine's runtime: this genai does not run it
    ],
)
def test_an_installed_genai_that_fails_on_last_token_logits_gets_every_position(
    checkpoint, tmp_path, genai, target_ort, recorded
):
    """pip keeps onnxruntime-genai 0.8-0.12.1 beside onnxruntime 1.24 and newer (0.12.1 with 1.24.1 is
    the pair it installs), and the default build, targeting that onnxruntime, had last-token logits:
    scripts/generate.py then failed with "Got invalid dimensions for output: logits", and the rebuild
    its error suggested wrote the same folder."""
    out = tmp_path / "out"
    named = ["--target-ort", target_ort] if target_ort else []
    build = [sys.executable, "-m", "builder", "-m", str(checkpoint("qwen3")), "-p", "int4", "-o", str(out), *named]
    made = subprocess.run(build, capture_output=True, text=True, env=installed_genai(tmp_path / "site", genai))
    assert made.returncode == 0, made.stderr
    report = json.loads((out / "build_report.json").read_text())
    assert report["target"]["logits"] == recorded
    note = f"--logits auto: every position, since the installed onnxruntime-genai {genai} fails on last-token logits"
    assert any(n.startswith(note) for n in report["notes"]) is (recorded == "all"), report["notes"]


def test_help_names_every_webgpu_target_that_keeps_all_positions(built):
    """--help said auto keeps every position for "onnxruntime-webgpu 1.27 targets", while every webgpu
    target up to 1.27 (the onnxruntime-webgpu package: 1.25 here) gets all of them."""
    assert logits_dims(built("qwen3", precision="int4", ep="webgpu", target_ort="1.25"))[1] == "sequence_length"
    help_text = " ".join(BuildOptions.__dataclass_fields__["logits"].metadata["help"].split())
    assert "except webgpu targets up to 1.27, the onnxruntime-webgpu package" in help_text


@pytest.mark.parametrize("logits", ["last", "all"])
def test_genai_batch_rows_match_transformers(built, checkpoint, logits):
    """Each row of a right-padded batch gets its own prompt's last-token logits, and decodes the
    tokens it decodes alone."""
    result = built("qwen3", precision="fp32", logits=logits)
    batch, batch_tokens = genai_batch_greedy(result.output, PROMPTS, 4)
    reference = dequantized_reference(checkpoint("qwen3"), BuildOptions(model="x", precision="fp32"))
    for row, prompt in enumerate(PROMPTS):
        expected = torch_logits(reference, np.array([prompt]), [])[0][0, -1]
        np.testing.assert_allclose(batch[row], expected, rtol=0, atol=1e-4)
        alone, alone_tokens = genai_batch_greedy(result.output, [prompt], 4)
        np.testing.assert_allclose(batch[row], alone[0], rtol=0, atol=1e-5)
        assert batch_tokens[row] == alone_tokens[0]


@pytest.mark.parametrize("ep", ["cpu", "webgpu"])
def test_last_equals_the_last_row_of_all(built, ep):
    """Same numbers as every-position logits at the prompt's last token and at each decode step
    (the webgpu builds run on the CPU EP here: the captured form's selection is plain ONNX)."""
    ids, steps = np.arange(3, 14)[None], [5, 9, 2]
    last = onnx_logits(onnx_session(built("qwen3", precision="fp32", ep=ep, logits="last").output), ids, steps)
    every = onnx_logits(onnx_session(built("qwen3", precision="fp32", ep=ep, logits="all").output), ids, steps)
    assert last[0].shape == (1, 1, every[0].shape[-1])
    np.testing.assert_allclose(last[0], every[0][:, -1:], rtol=0, atol=1e-6)
    for a, b in zip(last[1:], every[1:]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("ep", ["cpu", "webgpu"])
def test_padded_rows_in_a_plain_session(built, ep):
    """Right-padded batch through onnxruntime directly: row b is read at its own last token."""
    session = onnx_session(built("qwen3", precision="fp32", ep=ep, logits="last").output)
    every = onnx_session(built("qwen3", precision="fp32", logits="all").output)
    width = max(map(len, PROMPTS))
    ids = np.array([p + [0] * (width - len(p)) for p in PROMPTS])
    mask = np.array([[1] * len(p) + [0] * (width - len(p)) for p in PROMPTS])

    def feed(s):  # in the types each graph declares
        out = {}
        for i in s.get_inputs():
            if i.name.startswith("past_key_values."):
                out[i.name] = np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32)
            else:
                out[i.name] = {"input_ids": ids, "attention_mask": mask}[i.name].astype(index_dtype(i))
        return out

    got = session.run(["logits"], feed(session))[0]
    full = every.run(["logits"], feed(every))[0]
    assert got.shape == (2, 1, full.shape[-1])
    for row, prompt in enumerate(PROMPTS):
        np.testing.assert_allclose(got[row, 0], full[row, len(prompt) - 1], rtol=0, atol=1e-5)


def test_ngram_speculation_needs_every_position_and_keeps_the_greedy_tokens(built, checkpoint):
    """genai 0.18 verifies its n-gram drafts in one run and reads a logits row for each: a --logits all
    build gives transformers' greedy tokens with drafts accepted, the default last-token build is refused
    (what README and scripts/generate.py --ngram tell a user)."""
    from builder.verify import transformers_greedy

    reference = dequantized_reference(checkpoint("qwen3"), BuildOptions(model="x", precision="fp32"))
    folder = built("qwen3", precision="fp32", logits="all").output
    tokens, stats = genai_speculative_greedy(folder, REPEATING_PROMPT, 24, ngram_size=3)
    assert tokens == transformers_greedy(reference, REPEATING_PROMPT, 24)
    assert stats["draft_tokens_accepted"] > 0 and stats["target_verify_forward_passes"] > 0, stats
    with pytest.raises(RuntimeError, match="last-token-only logits"):
        genai_speculative_greedy(built("qwen3", precision="fp32").output, REPEATING_PROMPT, 24, ngram_size=3)


def test_a_draft_model_verifies_one_token_a_run_on_a_last_token_build(built, tmp_path):
    """genai 0.18's draft-model speculation on a last-token target falls back to one target run per
    drafted token. The model itself as its draft (so its drafts are right): 6 target runs against 35."""
    import json
    import shutil

    runs, tokens = {}, {}
    for logits in ("all", "last"):
        folder = Path(shutil.copytree(built("qwen3", precision="fp32", logits=logits).output, tmp_path / logits))
        config = json.loads((folder / "genai_config.json").read_text())
        config["model"]["draft"] = config["model"]["decoder"]
        (folder / "genai_config.json").write_text(json.dumps(config))
        tokens[logits], stats = genai_speculative_greedy(folder, REPEATING_PROMPT, 29)
        runs[logits] = stats["target_forward_passes"]
    assert tokens["all"] == tokens["last"]
    assert runs["all"] * 3 < runs["last"], runs


def test_genai_engine_runs_every_position_builds_and_not_last_token_ones(built, checkpoint):
    """genai 0.18's Engine binds a [B, S, V] logits buffer of its own: a --logits all build gives each
    prompt transformers' greedy tokens, batched; the default last-token graph (logits [B, 1, V]) and
    an int32-input graph are refused by onnxruntime (what README tells a user)."""
    from builder.verify import transformers_greedy

    reference = dequantized_reference(checkpoint("qwen3"), BuildOptions(model="x", precision="fp32"))
    expected = [transformers_greedy(reference, p, 12)[len(p) :] for p in PROMPTS]
    assert genai_engine_greedy(built("qwen3", precision="fp32", logits="all").output, list(PROMPTS), 12) == expected
    with pytest.raises(RuntimeError, match="invalid dimensions for output: logits"):
        genai_engine_greedy(built("qwen3", precision="fp32").output, list(PROMPTS), 12)
    # It feeds int64 input_ids and mask whatever the graph takes (int32 in --int32-inputs on builds).
    with pytest.raises(RuntimeError, match=r"Actual: \(tensor\(int64\)\) , expected: \(tensor\(int32\)\)"):
        genai_engine_greedy(built("qwen3", precision="fp32", logits="all", int32_inputs="on").output, list(PROMPTS), 12)


@pytest.mark.parametrize("name", ["qwen3", "qwen3_5"])
def test_a_new_turn_on_the_same_generator_as_the_readme_says(built, checkpoint, name):
    """genai 0.18's append_tokens after generate_next_token does not run the last generated token
    (the README says so, and how to get transformers' logits anyway): the first assert fails once a
    genai release runs it, and the README's paragraph goes then. get_logits() first runs it, for a
    hybrid too (the README gave only rewind_to, which a hybrid refuses without a snapshot)."""
    import onnxruntime_genai as og

    result = built(name, precision="fp32")
    reference = dequantized_reference(checkpoint(name), BuildOptions(model="x", precision="fp32"))
    model = og.Model(str(result.output))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=64, do_sample=False)
    first, turn, third = [39, 363, 78], [100, 101, 102], [7, 8]

    def after_five(generator):
        generator.append_tokens(first)
        for _ in range(5):
            generator.generate_next_token()
        return [int(t) for t in generator.get_sequence(0)]

    def last_logits(generator):
        return np.array(generator.get_logits())[0, -1]

    def expected(tokens):
        return torch_logits(reference, np.array([tokens]), [])[0][0, -1]

    plain = og.Generator(model, params)
    sequence = after_five(plain)
    plain.append_tokens(turn)
    assert np.abs(last_logits(plain) - expected(sequence + turn)).max() > 1e-2  # the last token went unrun
    ran_first = og.Generator(model, params)
    assert after_five(ran_first) == sequence
    ran_first.get_logits()  # runs the pending token
    ran_first.append_tokens(turn)
    np.testing.assert_allclose(last_logits(ran_first), expected(sequence + turn), rtol=0, atol=1e-4)
    for _ in range(3):  # and a third turn on the state the second left
        ran_first.generate_next_token()
    ran_first.get_logits()
    ran_first.append_tokens(third)
    conversation = [int(t) for t in ran_first.get_sequence(0)]
    np.testing.assert_allclose(last_logits(ran_first), expected(conversation), rtol=0, atol=1e-4)
    rewound = og.Generator(model, params)
    assert after_five(rewound) == sequence
    if name == "qwen3_5":
        with pytest.raises(Exception, match="Recurrent states cannot be partially rewound"):
            rewound.rewind_to(len(sequence) - 1)
        snapshotted = og.Generator(model, params)  # a snapshot before the last step lacks the token before it
        snapshotted.append_tokens(first)
        for _ in range(5):
            snapshotted.snapshot_state()
            snapshotted.generate_next_token()
        snapshotted.rewind_to(len(sequence) - 1)
        snapshotted.append_tokens([sequence[-1], *turn])
        assert np.abs(last_logits(snapshotted) - expected(sequence + turn)).max() > 1e-2
        saved = og.Generator(model, params)  # get_logits() runs that token: the snapshot then holds it
        saved.append_tokens(first)
        for _ in range(5):
            saved.generate_next_token()
            saved.get_logits()
            saved.snapshot_state()
        assert [int(t) for t in saved.get_sequence(0)] == sequence
        for _ in range(3):
            saved.generate_next_token()
        saved.rewind_to(len(sequence))
        saved.append_tokens(turn)
        np.testing.assert_allclose(last_logits(saved), expected(sequence + turn), rtol=0, atol=1e-4)
        return
    rewound.rewind_to(len(sequence) - 1)
    rewound.append_tokens([sequence[-1], *turn])
    np.testing.assert_allclose(last_logits(rewound), expected(sequence + turn), rtol=0, atol=1e-4)


def stopping_at_the_third_token(folder, tmp_path, prompt):
    """A copy of `folder` whose genai_config.json ends generation at the token genai picks third after
    `prompt` (a random model never picks its real end tokens on cue), and that token."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 3, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    *before, end = [int(t) for t in generator.get_sequence(0)][len(prompt) :]
    assert end not in before  # else it would stop earlier
    copy = tmp_path / "stops"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "genai_config.json").read_text())
    config["model"]["eos_token_id"] = end
    (copy / "genai_config.json").write_text(json.dumps(config))
    return copy, end


@pytest.mark.parametrize("name", ["qwen3", "qwen3_5"])
def test_a_new_turn_after_genai_stopped_at_an_end_token(built, checkpoint, tmp_path, name):
    """A chat loop runs `while not generator.is_done()` until the model's end token. genai 0.18 then
    keeps that token out of the sequence, and every token in it has run: the next turn appends as it
    is ([end, *turn] keeps the end token, as a chat template writes it), and get_logits() first, the
    README's way after a turn the caller cut short, would run the end token where no token is, in the
    recurrent state as well (measured: 1.4 on Qwen3, 6.1 on Qwen3.5; the README said to call it)."""
    import onnxruntime_genai as og

    result = built(name, precision="fp32")
    reference = dequantized_reference(checkpoint(name), BuildOptions(model="x", precision="fp32"))
    system, user, turn = [478, 30, 31, 479, 10], [478, 40, 41, 479, 10, 478, 50, 10], [478, 60, 61, 479, 10]
    folder, end = stopping_at_the_third_token(result.output, tmp_path, system + user)
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=64, do_sample=False)

    def answered(generator):
        generator.append_tokens(user)
        while not generator.is_done():
            generator.generate_next_token()
        sequence = [int(t) for t in generator.get_sequence(0)]
        assert int(generator.get_next_tokens()[0]) == end and len(sequence) == len(system + user) + 2  # not in it
        return sequence

    def started():
        generator = og.Generator(model, params)
        generator.append_tokens(system)
        return generator

    def last_logits(generator):
        return np.array(generator.get_logits())[0, -1]

    def expected(tokens):
        return torch_logits(reference, np.array([tokens]), [])[0][0, -1]

    kept = started()
    sequence = answered(kept)
    kept.append_tokens([end, *turn])
    np.testing.assert_allclose(last_logits(kept), expected(sequence + [end, *turn]), rtol=0, atol=1e-4)
    as_is = started()
    assert answered(as_is) == sequence
    as_is.append_tokens(turn)
    np.testing.assert_allclose(last_logits(as_is), expected(sequence + turn), rtol=0, atol=1e-4)
    ran_first = started()
    assert answered(ran_first) == sequence
    ran_first.get_logits()  # runs the end token at the next position, which the sequence does not hold
    ran_first.append_tokens(turn)
    assert np.abs(last_logits(ran_first) - expected(sequence + turn)).max() > 1e-1
    # genai's model-chat.py --rewind drops each answer by rewinding to the system prompt: a hybrid
    # needs a snapshot there, taken once the prompt has run (append_tokens runs it).
    rewound = started()
    rewound.snapshot_state()
    assert answered(rewound) == sequence
    rewound.rewind_to(len(system))
    rewound.append_tokens(turn)
    np.testing.assert_allclose(last_logits(rewound), expected(system + turn), rtol=0, atol=1e-4)
