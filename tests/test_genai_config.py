"""genai_config.json is right for the model and the EP."""

from __future__ import annotations

import json

import pytest

from builder import BuildOptions
from support.synthetic import IM_END_ID, REAL_GENERATION_CONFIGS, TINY_CONFIGS


def genai_config(result) -> dict:
    return json.loads(result.genai_config_path.read_text())


def test_values_come_from_config_and_generation_config(built, checkpoint):
    result = built("qwen3", precision="int4")
    config, model = TINY_CONFIGS["qwen3"], genai_config(result)["model"]
    generation = json.loads((checkpoint("qwen3") / "generation_config.json").read_text())
    search = genai_config(result)["search"]
    assert model["context_length"] == config["max_position_embeddings"] == search["max_length"]
    assert model["type"] == "qwen3" and model["vocab_size"] == config["vocab_size"]
    decoder = model["decoder"]
    assert (
        decoder["num_attention_heads"],
        decoder["num_key_value_heads"],
        decoder["head_size"],
        decoder["hidden_size"],
        decoder["num_hidden_layers"],
    ) == (4, 2, 32, 64, 2)
    eos = generation["eos_token_id"]
    # genai_config.json writes one id as a number and several as a list
    assert model["eos_token_id"] == (eos[0] if isinstance(eos, list) and len(eos) == 1 else eos)
    assert model["pad_token_id"] == generation.get("pad_token_id", config["pad_token_id"])
    assert model["bos_token_id"] == generation.get("bos_token_id", config["bos_token_id"])
    for key in ("do_sample", "temperature", "top_k", "top_p"):
        if key in generation:
            assert search[key] == generation[key], key
    assert search["past_present_share_buffer"] is True
    assert decoder["session_options"]["provider_options"] == []
    assert "position_ids" not in decoder["inputs"]


@pytest.mark.parametrize(
    "ep,options",
    [
        ("webgpu", {"enableGraphCapture": "1", "validationMode": "disabled"}),
        ("cuda", {"enable_cuda_graph": "0"}),
        ("dml", {"enable_graph_capture": "0"}),
    ],
)
def test_provider_options_per_ep(built, ep, options):
    config = genai_config(built("qwen3", precision="int4" if ep != "cuda" else "fp16", ep=ep))
    assert config["model"]["decoder"]["session_options"]["provider_options"] == [{ep: options}]
    assert ("position_ids" in config["model"]["decoder"]["inputs"]) == (ep == "dml")


@pytest.mark.parametrize(
    "ep,options,expected",
    [
        ("cpu", {}, 0),  # ONNX Runtime's default: one thread per physical core
        ("cpu", {"intra_op_threads": 3}, 3),
        ("cpu", {"intra_op_threads": -1}, None),  # leave it to onnxruntime-genai
        ("webgpu", {}, None),
        ("webgpu", {"intra_op_threads": 2}, 2),
    ],
)
def test_intra_op_threads_per_ep(built, ep, options, expected):
    session = genai_config(built("qwen3", precision="int4", ep=ep, **options))["model"]["decoder"]["session_options"]
    assert session.get("intra_op_num_threads") == expected


def test_genai_runs_with_the_thread_setting(built):
    """genai accepts the entry, and the thread count changes speed only: the same greedy tokens,
    and the same logits at each step (tokens alone could agree on a model that repeats one id)."""
    import numpy as np
    import onnxruntime_genai as og

    sequences, logits = [], []
    for threads in (0, 1):
        result = built("qwen3", precision="int4", intra_op_threads=threads)
        assert genai_config(result)["model"]["decoder"]["session_options"]["intra_op_num_threads"] == threads
        model = og.Model(str(result.output))
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=16)
        generator = og.Generator(model, params)
        generator.append_tokens([1, 2, 3, 4, 5, 6])
        steps = []
        while not generator.is_done():
            steps.append(np.array(generator.get_logits())[0, -1])
            generator.generate_next_token()
        sequences.append(list(generator.get_sequence(0)))
        logits.append(np.stack(steps))
    assert len(sequences[0]) == 16 and sequences[0] == sequences[1]
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-3)


def test_context_length_override_sizes_the_rotary_cache(built):
    import onnx

    result = built("qwen3", precision="fp32", context_length=64)
    assert genai_config(result)["model"]["context_length"] == 64
    model = onnx.load(str(result.model_path), load_external_data=False)
    cos = next(t for t in model.graph.initializer if t.name == "cos_cache")
    assert list(cos.dims) == [64, 16]


def test_sliding_window_models_run_past_the_window_in_genai(built, checkpoint):
    """GQA applies the window over the full shared KV buffer; a genai sliding_window
    entry would shrink the buffers to window + 16 and break longer generations."""
    from builder import BuildOptions
    from builder.verify import dequantized_reference, genai_greedy, transformers_greedy

    result = built("mistral", precision="fp32")
    assert "sliding_window" not in genai_config(result)["model"]["decoder"]
    window = TINY_CONFIGS["mistral"]["sliding_window"]
    prompt, new = [5, 17, 42, 99, 120, 7, 64, 300], 4 * window + 16
    ours = genai_greedy(result.output, prompt, new)
    reference = dequantized_reference(checkpoint("mistral"), BuildOptions(model="x", precision="fp32"))
    theirs = transformers_greedy(reference, prompt, new)
    assert ours == theirs


@pytest.mark.parametrize("ep", ["cpu", "webgpu"])
def test_max_length_defaults_to_4096_on_every_target(checkpoint, tmp_path, ep):
    """genai allocates the shared KV buffers at max_length up front: the whole 40,960 context of a
    Qwen3-0.6B took 9.4 GiB on cpu. A caller may still ask for up to context_length."""
    from builder import build

    ckpt = checkpoint("qwen3", max_position_embeddings=8192)
    result = build(model=str(ckpt), output=str(tmp_path / "a"), ep=ep, show_progress=False)
    config = genai_config(result)
    assert (config["model"]["context_length"], config["search"]["max_length"]) == (8192, 4096)
    whole = build(model=str(ckpt), output=str(tmp_path / "b"), ep=ep, max_length=8192, show_progress=False)
    assert genai_config(whole)["search"]["max_length"] == 8192


def test_token_id_lists_in_generation_config_take_their_first_id(checkpoint, tmp_path):
    """generation_config.json may hold a list for bos/pad (the checker accepts one); genai takes
    a single id, and an empty list is no id at all. Both crashed after every weight was built."""
    import shutil

    from builder import build

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint("qwen3"), folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    generation.update(bos_token_id=[7, 8], pad_token_id=[], eos_token_id=[5, 6])
    (folder / "generation_config.json").write_text(json.dumps(generation))
    result = build(model=str(folder), output=str(tmp_path / "out"), precision="fp32", show_progress=False)
    model = genai_config(result)["model"]
    # bos and pad from the checkpoint's ids; the tokenizer's eos (<|im_end|>) follows them
    assert (model["bos_token_id"], model["pad_token_id"], model["eos_token_id"]) == (7, 5, [5, 6, IM_END_ID])


def test_chat_template_file_wins_over_the_config_key_in_genai_too(checkpoint, tmp_path):
    """A checkpoint holding both chat_template.jinja and an older chat_template key in
    tokenizer_config.json: transformers formats prompts with the file, genai read the key."""
    import shutil

    import onnxruntime_genai as og
    import transformers

    from builder import build

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint("qwen3"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    newer = config["chat_template"].replace("assistant", "NEW-assistant")
    (folder / "chat_template.jinja").write_text(newer)
    messages = [{"role": "user", "content": "hi"}]
    expected = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert "NEW-assistant" in expected
    result = build(model=str(folder), output=str(tmp_path / "out"), precision="fp32", show_progress=False)
    tokenizer = og.Tokenizer(og.Model(str(result.output)))
    assert tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True) == expected


# generation_config.json contents of real checkpoints (the keys as their hub files spell them).
QWEN3_GENERATION = REAL_GENERATION_CONFIGS["qwen3-0.6b"]
GEMMA3_GENERATION = {
    "cache_implementation": "hybrid",
    "bos_token_id": 2,
    "eos_token_id": [1, 106],
    "pad_token_id": 0,
    "top_k": 64,
    "top_p": 0.95,
    "do_sample": True,
}


def planned(tmp_path, generation: dict | None, name: str = "qwen3", config: dict | None = None, **options):
    """(the plan, the genai_config.json it writes) for a tiny checkpoint with this
    generation_config.json (None: the checkpoint has none), without building its weights."""
    from architectures.registry import builder_class_for
    from builder.kit.checkpoint import Checkpoint
    from builder.kit.genai_config import make_genai_config
    from support.synthetic import make_checkpoint

    folder = make_checkpoint(
        tmp_path / "ckpt", {**TINY_CONFIGS[name], **(config or {})}, dtype="float32", generation_config=generation
    )
    if generation is None:
        (folder / "generation_config.json").unlink()
    ckpt = Checkpoint(folder)
    arch = builder_class_for(ckpt.config)(
        ckpt, BuildOptions(model=str(folder), output=str(tmp_path / "out"), **options)
    )
    written = make_genai_config(arch.plan, arch.config, ckpt.read_json("generation_config.json"), "g.json")
    return arch.plan, written


def ids(generation: dict) -> dict:
    return {**generation, "bos_token_id": 1, "eos_token_id": [2], "pad_token_id": 2}


def test_beams_turn_graph_capture_off_under_auto(tmp_path):
    """genai turns past_present_share_buffer off for num_beams > 1 and then refuses capture: every
    default generation of such a webgpu folder failed."""
    plan, written = planned(tmp_path, ids({"num_beams": 2}), ep="webgpu", precision="int4")
    assert not plan.target.graph_capture
    assert written["search"]["num_beams"] == 2
    assert written["model"]["decoder"]["session_options"]["provider_options"][0]["webgpu"]["enableGraphCapture"] == "0"
    assert any("graph capture is off: generation_config.json sets num_beams 2" in n for n in plan.notes)
    assert not [w for w in plan.warnings if "num_beams" in w]


def test_beams_of_a_checkpoint_without_generation_config_name_config_json(tmp_path):
    """Without generation_config.json the beams come from config.json, and the note said
    generation_config.json, a file the checkpoint does not have."""
    plan, written = planned(tmp_path, None, config={"num_beams": 2}, ep="webgpu", precision="int4")
    assert not plan.target.graph_capture and written["search"]["num_beams"] == 2
    assert any("graph capture is off: config.json sets num_beams 2" in n for n in plan.notes), plan.notes


def test_graph_capture_on_keeps_capture_and_writes_one_beam(tmp_path):
    plan, written = planned(tmp_path, ids({"num_beams": 3}), ep="webgpu", precision="int4", graph_capture="on")
    assert plan.target.graph_capture
    assert written["search"]["num_beams"] == 1
    assert written["model"]["decoder"]["session_options"]["provider_options"][0]["webgpu"]["enableGraphCapture"] == "1"
    (warning,) = [w for w in plan.warnings if "num_beams" in w]
    assert "num_beams 3" in warning and "--graph-capture off" in warning


def test_beams_without_capture_are_written_as_set(tmp_path):
    plan, written = planned(tmp_path, ids({"num_beams": 2}))
    assert written["search"]["num_beams"] == 2 and not plan.warnings


def test_sampled_beams_become_sampling(tmp_path):
    """transformers' beam sampling: genai refuses top_k/top_p with beams ("TopK and TopP cannot be
    used with a beam search"), so every default generation of the folder failed."""
    import onnxruntime_genai as og

    from builder import build
    from support.synthetic import make_checkpoint

    generation = ids({"num_beams": 2, "do_sample": True, "top_k": 5, "temperature": 0.7})
    folder = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"], dtype="float32", generation_config=generation)
    result = build(model=str(folder), output=str(tmp_path / "out"), precision="fp32", show_progress=False)
    search = genai_config(result)["search"]
    assert (search["num_beams"], search["do_sample"], search["top_k"], search["temperature"]) == (1, True, 5, 0.7)
    (warning,) = [n for n in result.report["notes"] if "num_beams" in n]
    assert "do_sample" in warning and "without beams" in warning
    model = og.Model(str(result.output))
    generator = og.Generator(model, og.GeneratorParams(model))
    generator.append_tokens([1, 2, 3])
    generator.generate_next_token()  # the folder's own search settings
    assert len(generator.get_sequence(0)) == 4


def test_sampled_beams_leave_graph_capture_on(tmp_path):
    """--help and the README said auto capture is off for a generation_config.json with num_beams > 1;
    beam sampling (do_sample true) is written as one beam, so a webgpu build keeps capture."""
    from builder import build
    from support.synthetic import make_checkpoint

    generation = ids({"num_beams": 2, "do_sample": True, "top_k": 5, "temperature": 0.7})
    folder = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"], generation_config=generation)
    result = build(model=str(folder), output=str(tmp_path / "out"), ep="webgpu", show_progress=False)
    assert result.report["target"]["graph_capture"] is True
    config = genai_config(result)
    assert config["search"]["num_beams"] == 1
    assert config["model"]["decoder"]["session_options"]["provider_options"][0]["webgpu"]["enableGraphCapture"] == "1"
    help_text = " ".join(BuildOptions.__dataclass_fields__["graph_capture"].metadata["help"].split())
    assert "num_beams > 1 and do_sample false (beam search; beam sampling gets num_beams 1" in help_text


def test_hybrid_models_get_one_beam(tmp_path):
    """genai 0.18 does not reorder the recurrent state when it reselects beams (README)."""
    plan, written = planned(tmp_path, ids({"num_beams": 2}), name="qwen3_5-text")
    assert written["search"]["num_beams"] == 1
    (warning,) = [w for w in plan.warnings if "num_beams" in w]
    assert "recurrent state" in warning and "README.md#qwen35-and-qwen3-next-hybrid-linear-attention" in warning


def test_search_keys_come_from_generation_config_only(tmp_path):
    """transformers 5 reads config.json's generation keys only for a checkpoint without
    generation_config.json; with the file, a key it leaves out takes transformers' default."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    sampling = {"top_k": 3, "temperature": 0.3, "repetition_penalty": 1.3, "do_sample": True}
    defaults = GenerationConfig._get_default_generation_params()
    for case, generation in (("with", ids({"top_p": 0.9})), ("without", None)):
        _, written = planned(tmp_path / case, generation, config=sampling)
        search = written["search"]
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / case / "ckpt").generation_config
        keys = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "num_beams", "min_length")
        for key in (*keys, "early_stopping"):
            theirs = getattr(loaded, key)
            assert search[key] == (defaults[key] if theirs is None else theirs), (case, key)
        assert search["top_k"] == (50 if case == "with" else 3)


def test_early_stopping_is_the_checkpoints(tmp_path):
    """genai's beam search reads early_stopping; transformers' default is false (genai's own default
    and the value once written for every folder is true, which stops beams sooner)."""
    from builder.kit.errors import BuilderError

    for case, generation, expected in (("unset", ids({}), False), ("set", ids({"early_stopping": True}), True)):
        _, written = planned(tmp_path / case, generation)
        assert written["search"]["early_stopping"] is expected, case
    plan, written = planned(tmp_path / "never", ids({"early_stopping": "never", "num_beams": 2}))
    assert written["search"]["early_stopping"] is False
    assert any('early_stopping "never" (written as false)' in w for w in plan.warnings), plan.warnings
    with pytest.raises(BuilderError, match="early_stopping"):
        planned(tmp_path / "bad", ids({"early_stopping": "yes"}))


def test_token_ids_still_fall_back_to_config(tmp_path):
    _, written = planned(tmp_path, {"top_k": 5})
    model = written["model"]
    config = TINY_CONFIGS["qwen3"]
    assert (model["eos_token_id"], model["bos_token_id"]) == (config["eos_token_id"], config["bos_token_id"])


def test_min_length_is_written(tmp_path):
    """genai's search.min_length counts the prompt, as transformers' min_length does."""
    from builder.kit.errors import BuilderError

    _, written = planned(tmp_path / "a", ids({"min_length": 12}))
    assert written["search"]["min_length"] == 12
    with pytest.raises(BuilderError, match="min_length"):
        planned(tmp_path / "b", ids({"min_length": "12"}))


def genai_chosen_tokens(folder, prompt: list[int]) -> tuple[list[int], list[int]]:
    """(each token genai chose, its final sequence) with the folder's genai_config.json alone deciding:
    nothing is set at run time."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    generator = og.Generator(model, og.GeneratorParams(model))
    generator.append_tokens(prompt)
    chosen = []
    while not generator.is_done():
        generator.generate_next_token()
        chosen.append(int(generator.get_next_tokens()[0]))
    return chosen, [int(t) for t in generator.get_sequence(0)]


def test_min_length_holds_eos_back_in_genai_as_in_transformers(tmp_path):
    """search.min_length was written but never run: here genai masks eos below it, token for token as
    transformers' MinLengthLogitsProcessor does, with eos the token greedy picks at step 2."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from builder import build
    from support.synthetic import make_checkpoint

    prompt, new_tokens = [7, 300, 12], 8
    total = len(prompt) + new_tokens
    folder = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"], dtype="float32", generation_config=ids({}))
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        free = reference.generate(
            torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )[0].tolist()[len(prompt) :]
    eos = free[2]
    assert eos not in free[:2], free  # greedy reaches eos first at step 2

    def both(name: str, generation: dict) -> tuple[list[int], list[int], list[int]]:
        """(genai's chosen tokens, its sequence, transformers' new tokens), both from the checkpoint's file."""
        (folder / "generation_config.json").write_text(json.dumps({**ids(generation), "eos_token_id": [eos]}))
        result = build(
            model=str(folder), output=str(tmp_path / name), precision="fp32", max_length=total, show_progress=False
        )
        assert genai_config(result)["search"]["min_length"] == generation.get("min_length", 0)
        settings = GenerationConfig.from_pretrained(folder)
        settings.max_length = total  # the --max-length genai_config.json got
        with torch.no_grad():
            theirs = reference.generate(torch.tensor([prompt]), generation_config=settings)[0].tolist()
        return *genai_chosen_tokens(result.output, prompt), theirs[len(prompt) :]

    chosen, sequence, theirs = both("plain", {})
    assert chosen == theirs == free[:3]  # stops at eos after two tokens
    # genai leaves the eos it chose out of the sequence; transformers keeps it.
    assert sequence == prompt + chosen[:-1]

    min_length = len(prompt) + 3
    chosen, sequence, theirs = both("min-length", {"min_length": min_length})
    assert chosen == theirs, (chosen, theirs)
    # eos held back at step 2 (the sequence one short of min_length), then chosen at the first step it may be
    assert chosen[:2] == free[:2] and chosen[2] != eos and chosen[3:] == [eos], chosen
    assert len(sequence) == min_length


def test_generation_keys_genai_cannot_express_warn_once(tmp_path):
    generation = ids(
        {"min_p": 0.05, "suppress_tokens": [3], "typical_p": 1.0, "bad_words_ids": None, "cache_implementation": "x"}
    )
    plan, _ = planned(tmp_path, generation)
    (warning,) = [w for w in plan.warnings if "no setting" in w]
    assert warning.startswith("generation_config.json sets min_p, suppress_tokens, which onnxruntime-genai")


def test_the_other_logits_settings_of_transformers_warn_too(tmp_path):
    """top_h, exponential_decay_length_penalty, guidance_scale and watermarking_config change what
    transformers' generate() picks and were written away without a word."""
    generation = ids(
        {
            "top_h": 0.4,
            "exponential_decay_length_penalty": [5, 1.5],
            "guidance_scale": 1.5,
            "watermarking_config": {"greenlist_ratio": 0.25},
        }
    )
    plan, _ = planned(tmp_path / "set", generation)
    (warning,) = [w for w in plan.warnings if "no setting" in w]
    assert warning.startswith(
        "generation_config.json sets top_h, exponential_decay_length_penalty, guidance_scale, watermarking_config,"
    )
    plan, _ = planned(tmp_path / "unset", ids({"guidance_scale": 1.0, "top_h": None}))
    assert not [w for w in plan.warnings if "no setting" in w]  # 1.0 and None change nothing


@pytest.mark.parametrize("generation", [QWEN3_GENERATION, GEMMA3_GENERATION], ids=["qwen3", "gemma3"])
def test_real_generation_configs_do_not_warn(tmp_path, generation):
    plan, written = planned(tmp_path, generation, ep="webgpu", precision="int4")
    assert plan.target.graph_capture
    assert not [w for w in plan.warnings if "generation_config.json" in w]
    assert written["search"]["top_k"] == generation["top_k"]


def test_transformers_js_folders_plan_no_beam_settings(tmp_path):
    plan, _ = planned(tmp_path, ids({"num_beams": 2, "do_sample": True, "min_p": 0.1}), format="transformers.js")
    assert not [w for w in plan.warnings if "generation_config.json" in w]


@pytest.mark.parametrize("with_default", [True, False], ids=["default", "no-default"])
def test_named_chat_templates_in_genai(checkpoint, tmp_path, with_default):
    """A list of named chat templates (NousResearch Hermes-2-Pro) was copied as it was, and genai's
    tokenizer then refused the folder ("type must be string, but is array"). transformers applies
    the one named default."""
    import shutil

    import onnxruntime_genai as og
    import transformers

    from builder import build

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint("qwen3"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    default, tools = config["chat_template"], config["chat_template"].replace("assistant", "TOOLS-assistant")
    named = [{"name": "tool_use", "template": tools}] + (
        [{"name": "default", "template": default}] if with_default else []
    )
    config["chat_template"] = named
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    result = build(model=str(folder), output=str(tmp_path / "out"), precision="fp32", show_progress=False)
    (warning,) = [n for n in result.report["notes"] if "named chat templates" in n]
    assert "'tool_use'" in warning and ("no chat_template" in warning) != with_default
    tokenizer = og.Tokenizer(og.Model(str(result.output)))
    messages = [{"role": "user", "content": "hi"}]
    if with_default:
        expected = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        assert tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True) == expected
    else:
        assert "chat_template" not in json.loads((result.output / "tokenizer_config.json").read_text())
    js = build(
        model=str(folder), output=str(tmp_path / "js"), precision="fp32", format="transformers.js", show_progress=False
    )
    assert json.loads((js.output / "tokenizer_config.json").read_text())["chat_template"] == named
    assert not [n for n in js.report["notes"] if "named chat templates" in n]


def test_named_chat_templates_warning_names_only_what_genai_loses(tmp_path):
    """The warning lists the templates the genai folder leaves out: not 'default', which it keeps;
    none when 'default' is the only one, or when chat_template.jinja (which transformers takes first)
    replaces the list; an entry without its template is passed over, as transformers passes it."""
    from builder.kit.tokenizer_files import named_templates_warning

    def warning(templates, jinja=False):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}))
        (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
        if jinja:
            (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
        return named_templates_warning(tmp_path)

    default, tools = {"name": "default", "template": "a"}, {"name": "tool_use", "template": "b"}
    assert warning([default, tools]).endswith(
        ": the genai folder's tokenizer_config.json keeps 'default' only (genai's tokenizer reads one text), "
        "so 'tool_use' are left out; pass one with template_str= to og.Tokenizer.apply_chat_template"
    )
    assert warning([default]) is None
    assert warning([default, tools], jinja=True) is None
    assert "holds named chat templates ('tool_use') and none named 'default'" in warning([tools, {"name": "rag"}])


def test_top_p_past_one_and_top_k_past_the_vocabulary_are_written_as_transformers_runs_them(tmp_path):
    """genai throws on every sampled generation for top_p > 1 ("top_p must be between 0.0 and 1.0")
    or top_k > vocab_size, where transformers' warpers skip top_p >= 1 and clamp top_k."""
    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM

    from builder import build
    from support.synthetic import make_checkpoint

    vocab = TINY_CONFIGS["qwen3"]["vocab_size"]
    generation = ids({"do_sample": True, "top_p": 1.5, "top_k": vocab + 10, "temperature": 0.8})
    folder = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"], dtype="float32", generation_config=generation)
    result = build(model=str(folder), output=str(tmp_path / "out"), precision="fp32", show_progress=False)
    search = genai_config(result)["search"]
    assert (search["do_sample"], search["top_p"], search["top_k"], search["temperature"]) == (True, 1.0, vocab, 0.8)
    top_p, top_k = (next(n for n in result.report["notes"] if f"sets {k}" in n) for k in ("top_p", "top_k"))
    assert "top_p 1.5" in top_p and "gets top_p 1.0" in top_p
    assert f"top_k {vocab + 10}" in top_k and f"gets top_k {vocab}" in top_k
    model = og.Model(str(result.output))
    generator = og.Generator(model, og.GeneratorParams(model))
    generator.append_tokens([1, 2, 3])
    generator.generate_next_token()  # the folder's own search settings
    assert len(generator.get_sequence(0)) == 4
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert reference.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=1).shape == (1, 4)  # transformers runs it too


@pytest.mark.parametrize("key", ["temperature", "top_p"])
def test_a_negative_temperature_or_top_p_is_refused(tmp_path, key):
    """Both warpers of transformers refuse it; genai would sample from the inverted distribution."""
    from builder.kit.errors import BuilderError

    with pytest.raises(BuilderError, match=f"generation_config.json sets {key} -0.5, which no sampler reads"):
        planned(tmp_path, ids({"do_sample": True, key: -0.5}))


def built_with(tmp_path, generation: dict, **options):
    """(the checkpoint folder, the fp32 build of it) for this generation_config.json."""
    from builder import build
    from support.synthetic import make_checkpoint

    folder = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"], dtype="float32", generation_config=generation)
    options = {"precision": "fp32", **options}
    return folder, build(model=str(folder), output=str(tmp_path / "out"), show_progress=False, **options)


def transformers_tokens(folder, prompt: list[int], max_length: int) -> list[int]:
    """transformers' new tokens with the checkpoint's generation_config.json, to max_length in all."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    settings = GenerationConfig.from_pretrained(folder)
    settings.max_length = max_length  # the --max-length genai_config.json got
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return reference.generate(torch.tensor([prompt]), generation_config=settings)[0].tolist()[len(prompt) :]


def test_more_beams_than_genai_takes_are_written_as_its_widest(tmp_path):
    """genai refused to create a generator for num_beams 33 ("num_beams (33) must be in [1, 32]"),
    so every default generation of the folder failed; transformers runs 33 beams."""
    prompt = [7, 300, 12]
    folder, result = built_with(tmp_path, ids({"num_beams": 33}), max_length=8)
    assert genai_config(result)["search"]["num_beams"] == 32
    (warning,) = [n for n in result.report["notes"] if "num_beams" in n]
    assert "sets num_beams 33" in warning and "genai_config.json gets num_beams 32" in warning
    _, sequence = genai_chosen_tokens(result.output, prompt)
    assert len(sequence) == 8
    assert len(transformers_tokens(folder, prompt, 8)) == 5


def test_eos_ids_past_the_vocabulary_are_left_out(tmp_path):
    """genai refused to create a generator for an eos id past the vocabulary ("eos_token_id (480)
    must be in range [0, 480)"), where transformers runs and never stops at it; with it left out the
    folder stops where transformers does."""
    vocab = TINY_CONFIGS["qwen3"]["vocab_size"]
    prompt = [7, 300, 12]
    free, _ = built_with(tmp_path / "free", ids({}), max_length=12)
    stop = transformers_tokens(free, prompt, 12)[2]  # the token greedy picks third
    folder, result = built_with(tmp_path / "past", {**ids({}), "eos_token_id": [vocab, stop]}, max_length=12)
    assert genai_config(result)["model"]["eos_token_id"] == [stop, IM_END_ID]  # and the tokenizer's
    (warning,) = [n for n in result.report["notes"] if "outside the vocabulary" in n]
    assert f"eos_token_id {vocab} (generation_config.json)" in warning
    assert f"genai_config.json leaves out eos_token_id {vocab}" in warning
    chosen, _ = genai_chosen_tokens(result.output, prompt)
    assert chosen == transformers_tokens(folder, prompt, 12) and chosen[-1] == stop and len(chosen) == 3


def test_top_p_zero_is_the_most_likely_token_as_in_transformers(tmp_path):
    """transformers' top-p of 0 keeps the most likely token alone (greedy), where genai skipped a
    top_p of 0 with top_k > 1 and sampled from the top_k."""
    prompt = [7, 300, 12]
    generation = ids({"do_sample": True, "top_p": 0.0, "top_k": 50, "temperature": 0.9})
    folder, result = built_with(tmp_path, generation, max_length=20)
    search = genai_config(result)["search"]
    assert (search["do_sample"], search["top_p"], search["top_k"]) == (True, 0.0, 1)
    (warning,) = [n for n in result.report["notes"] if "top_p 0" in n]
    assert "top_k 50" in warning and "genai_config.json gets top_k 1" in warning
    chosen, _ = genai_chosen_tokens(result.output, prompt)
    assert chosen == transformers_tokens(folder, prompt, 20)
    assert len(set(chosen)) > 1  # a model that repeats one id would agree by chance


def test_sampling_at_temperature_zero_is_written_as_greedy(tmp_path):
    """transformers' generate refuses do_sample with temperature 0 and asks for greedy search, which
    genai runs for it: genai_config.json says so, and beams then stay beam search (genai ran them
    so; the beam-sampling rule wrote one beam)."""
    plan, written = planned(tmp_path / "a", ids({"do_sample": True, "temperature": 0.0}))
    assert (written["search"]["do_sample"], written["search"]["temperature"]) == (False, 0.0)
    (warning,) = [w for w in plan.warnings if "temperature 0" in w]
    assert "transformers' generate refuses" in warning and "genai_config.json gets do_sample false" in warning
    plan, written = planned(tmp_path / "b", ids({"do_sample": True, "temperature": 0.0, "num_beams": 2}))
    assert (written["search"]["do_sample"], written["search"]["num_beams"]) == (False, 2)
    assert not [w for w in plan.warnings if "beam sampling" in w]


@pytest.mark.parametrize("ep", ["cpu", "webgpu", "cuda"])
def test_no_repeat_ngram_size_is_left_out_of_cuda_folders(tmp_path, ep):
    """onnxruntime-genai 0.18 bans repeated n-grams in its CPU search alone (webgpu and dml search on
    the CPU); its CUDA search throws "no_repeat_ngram_size is only supported for CPU search" at the
    first token (the message is in libonnxruntime-genai-cuda.so 0.18)."""
    plan, written = planned(
        tmp_path, ids({"no_repeat_ngram_size": 3}), ep=ep, precision="fp16" if ep == "cuda" else "int4"
    )
    warnings = [w for w in plan.warnings if "no_repeat_ngram_size" in w]
    if ep == "cuda":
        assert written["search"]["no_repeat_ngram_size"] == 0
        (warning,) = warnings
        assert "sets no_repeat_ngram_size 3" in warning and "genai_config.json gets no_repeat_ngram_size 0" in warning
    else:
        assert written["search"]["no_repeat_ngram_size"] == 3 and not warnings


def test_no_repeat_ngram_size_runs_in_genai_as_in_transformers(tmp_path):
    """The cpu folder's no_repeat_ngram_size, token for token as transformers' greedy search."""
    prompt = [7, 300, 12]
    folder, result = built_with(tmp_path, ids({"no_repeat_ngram_size": 2}), max_length=40)
    chosen, _ = genai_chosen_tokens(result.output, prompt)
    assert chosen == transformers_tokens(folder, prompt, 40)
    assert len({tuple(chosen[i : i + 2]) for i in range(len(chosen) - 1)}) == len(chosen) - 1


def test_beams_with_logits_settings_warn_that_genai_orders_them_otherwise(tmp_path):
    """genai's beam search applies repetition_penalty (and min_length, no_repeat_ngram_size) to the
    logits before their log-softmax, transformers' after: here the beams part after 11 tokens. Greedy
    search agrees (the same argmax), so it does not warn."""
    prompt = [7, 300, 12]
    folder, result = built_with(tmp_path, ids({"num_beams": 3, "repetition_penalty": 1.3}), max_length=24)
    (warning,) = [n for n in result.report["notes"] if "log-softmax" in n]
    assert "sets num_beams 3 with repetition_penalty 1.3" in warning
    _, sequence = genai_chosen_tokens(result.output, prompt)
    theirs = transformers_tokens(folder, prompt, 24)
    assert sequence[len(prompt) :] != theirs and sequence[len(prompt) : len(prompt) + 11] == theirs[:11]
    plan, _ = planned(tmp_path / "greedy", ids({"repetition_penalty": 1.3, "min_length": 5}))
    assert not [w for w in plan.warnings if "log-softmax" in w]


def test_search_keys_read_from_config_json_are_checked(tmp_path):
    """Without generation_config.json the search comes from config.json, unchecked: repetition_penalty
    0 was written, genai then repeated one token to max_length, and transformers refuses it."""
    from builder.kit.errors import BuilderError

    with pytest.raises(BuilderError, match=r"config.json: repetition_penalty = 0 is not valid; it must be a positive"):
        planned(tmp_path, None, config={"repetition_penalty": 0})


def test_token_id_0_in_generation_config_is_the_checkpoints(tmp_path):
    """0 is a token id like any other (many vocabularies put <unk> or <pad> there): it must not fall
    back to config.json's ids as an unset key does."""
    _, written = planned(tmp_path, {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
    model = written["model"]
    assert (model["bos_token_id"], model["eos_token_id"], model["pad_token_id"]) == (0, 0, 0)


def test_bos_and_pad_fall_back_to_eos_where_no_file_names_them(tmp_path):
    config = {"bos_token_id": None, "pad_token_id": None, "eos_token_id": 7}
    _, written = planned(tmp_path, {"eos_token_id": [5, 6]}, config=config)
    model = written["model"]
    assert (model["bos_token_id"], model["eos_token_id"], model["pad_token_id"]) == (5, [5, 6], 5)


def test_zero_search_values_are_written_not_replaced_by_defaults(tmp_path):
    """top_k 0 turns transformers' top-k filter off, and a temperature of 0.0 is a value too: both
    are written as set, not as transformers' defaults for an unset key (50, 1.0)."""
    _, written = planned(tmp_path, ids({"top_k": 0, "temperature": 0.0}))
    assert (written["search"]["top_k"], written["search"]["temperature"]) == (0, 0.0)


def test_one_beam_in_a_hybrids_generation_config_is_no_warning(tmp_path):
    plan, written = planned(tmp_path, ids({"num_beams": 1}), name="qwen3_5-text")
    assert written["search"]["num_beams"] == 1 and not [w for w in plan.warnings if "num_beams" in w]


def test_negative_token_ids_are_outside_the_vocabulary():
    """genai would feed a bos or pad of -1 to the embedding's Gather as it does one past the end."""
    from builder.kit.genai_config import token_ids_past_the_vocabulary

    config = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    assert token_ids_past_the_vocabulary(config, {"pad_token_id": -1}, 480) == [
        "pad_token_id -1 (generation_config.json) is outside the vocabulary (0 .. 479): genai would feed it to "
        "the model; check generation_config.json"
    ]
    assert token_ids_past_the_vocabulary(config, {"eos_token_id": [2, 479]}, 480) == []


def test_intra_op_threads_0_is_written_for_a_gpu_ep_too(tmp_path):
    """0 asks for ONNX Runtime's default (a thread per physical core); left out, genai takes half the
    logical CPUs instead."""
    _, written = planned(tmp_path, ids({}), ep="webgpu", precision="int4", intra_op_threads=0)
    assert written["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 0


def test_accuracy_level_0_is_kept_not_taken_for_unset(tmp_path):
    """--accuracy-level 0 is a level (the closest logits), not "unset": on cpu, whose default is 4,
    the plan and every MatMulNBits it writes keep 0."""
    asked, _ = planned(tmp_path / "zero", None, accuracy_level=0)
    default, _ = planned(tmp_path / "default", None)
    assert (asked.accuracy_level, default.accuracy_level) == (0, 4)


def with_tokenizer_eos(folder, token: str, *, where: str = "tokenizer_config.json") -> None:
    """Name `token` as the checkpoint's eos_token in `where`, as a chat model's tokenizer names the
    token its template ends each turn with; the other file names none."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        config = json.loads(path.read_text())
        config.pop("added_tokens_decoder", None)  # the id then comes from tokenizer.json's vocabulary
        config["eos_token"] = {"content": token, "special": True} if name == where else None
        path.write_text(json.dumps(config))


def test_genai_stops_at_the_tokenizers_eos_that_generation_config_leaves_out(tmp_path):
    """A chat template ends each turn with the tokenizer's eos_token; where generation_config.json's
    eos_token_id leaves it out, genai_config.json stopped at the listed ids alone, so genai ran past
    the end of the reply to max_length (writing the next turns itself). The reference builder adds it."""
    prompt = [7, 300, 12]
    free, _ = built_with(tmp_path / "free", ids({}), max_length=12)
    chosen = transformers_tokens(free, prompt, 12)
    turn_end = chosen[2]  # the token greedy picks third, taken as the end of a turn
    assert turn_end not in chosen[:2] and 2 not in chosen and len(chosen) == 9, chosen
    vocab = json.loads((free / "tokenizer.json").read_text())["model"]["vocab"]
    token = next(text for text, i in vocab.items() if i == turn_end)
    from builder import build

    for where in ("tokenizer_config.json", "special_tokens_map.json"):
        folder = tmp_path / where
        folder.mkdir()
        for item in free.iterdir():
            (folder / item.name).write_bytes(item.read_bytes())
        with_tokenizer_eos(folder, token, where=where)
        result = build(
            model=str(folder), output=str(folder / "out"), precision="fp32", max_length=12, show_progress=False
        )
        model = genai_config(result)["model"]
        assert (model["eos_token_id"], model["pad_token_id"]) == ([2, turn_end], 2)  # pad: the checkpoint's
        (warning,) = [n for n in result.report["notes"] if "the tokenizer's eos_token" in n]
        assert f"{token!r} (id {turn_end})" in warning and "generation_config.json: eos_token_id [2]" in warning
        assert genai_chosen_tokens(result.output, prompt)[0] == chosen[:3]


def test_the_tokenizers_eos_joins_config_json_ids_without_generation_config(tmp_path):
    from support.synthetic import ENDOFTEXT_ID

    # Qwen-style: config.json names <|endoftext|>, the tokenizer ends turns with <|im_end|>
    plan, written = planned(tmp_path / "a", None, config={"eos_token_id": ENDOFTEXT_ID})
    assert written["model"]["eos_token_id"] == ENDOFTEXT_ID  # make_genai_config alone: no tokenizer given

    from builder import build
    from support.synthetic import make_checkpoint

    folder = make_checkpoint(tmp_path / "b", {**TINY_CONFIGS["qwen3"], "eos_token_id": ENDOFTEXT_ID}, dtype="float32")
    (folder / "generation_config.json").unlink()
    result = build(model=str(folder), output=str(tmp_path / "out"), precision="fp32", show_progress=False)
    assert genai_config(result)["model"]["eos_token_id"] == [ENDOFTEXT_ID, IM_END_ID]
    (warning,) = [n for n in result.report["notes"] if "the tokenizer's eos_token" in n]
    assert "(config.json: eos_token_id 477)" in warning


def test_a_tokenizer_eos_the_checkpoint_lists_changes_nothing(built):
    """The tiny checkpoints list <|im_end|> (the tokenizer's eos) first, as Qwen3's do: the folder keeps
    their order and says nothing."""
    result = built("qwen3", precision="int4")
    assert genai_config(result)["model"]["eos_token_id"] == [IM_END_ID, 477]
    assert not [n for n in result.report["notes"] if "the tokenizer's eos_token" in n]


def test_tokenizer_eos_reads_what_transformers_names(tmp_path):
    from builder.kit.tokenizer_files import tokenizer_eos
    from support.synthetic import TOKENIZER_DIR

    for item in TOKENIZER_DIR.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    assert tokenizer_eos(tmp_path) == ("<|im_end|>", IM_END_ID)  # from added_tokens_decoder
    with_tokenizer_eos(tmp_path, "<|endoftext|>", where="special_tokens_map.json")
    assert tokenizer_eos(tmp_path) == ("<|endoftext|>", 477)  # from tokenizer.json's added tokens
    with_tokenizer_eos(tmp_path, "\u0120river")
    assert tokenizer_eos(tmp_path) == ("\u0120river", 300)  # from its vocabulary
    for unknown in ("<|not a token|>", None):
        with_tokenizer_eos(tmp_path, unknown)
        assert tokenizer_eos(tmp_path) is None
    (tmp_path / "tokenizer_config.json").unlink()
    assert tokenizer_eos(tmp_path) is None
