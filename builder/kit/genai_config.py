"""genai_config.json: what onnxruntime-genai needs to run the folder.

Search defaults (do_sample, temperature, top_k, ...) are what transformers 5's generate() uses: a
checkpoint with a generation_config.json gets that file's values and transformers' defaults for the
keys it leaves out, never config.json's; only a checkpoint without the file has its generation keys
read from config.json (transformers' loader falls back to it then). Token ids come from
generation_config.json, else config.json (chat models end turns with a token config.json does not
name, and genai needs an eos either way); the eos ids also get the tokenizer's eos_token where those
leave it out (turn_end_id), since genai stops at nothing else.
"""

from __future__ import annotations

import json
from typing import Any

CONFIG_NAME = "genai_config.json"  # the file onnxruntime-genai reads in a model folder

# The model.type values onnxruntime-genai 0.18 opens as a language model (the names in its
# library's model-type tables); it refuses a folder with any other ("Unsupported model_type").
GENAI_MODEL_TYPES = frozenset(
    "chatglm decoder ernie4_5 gemma gemma2 gemma3_text gemma3_vl_text gemma4_text gpt2 gptoss granite "
    "granitemoehybrid hunyuandensev1 internlm2 lfm2 lfm2_audio_text lfm2_moe lfm2_vl_text llama mistral "
    "mistral3_text nemotron olmo phi phi3 phi3small phimoe qwen2 qwen2_5_vl_text qwen3 qwen3_5_moe_text "
    "qwen3_5_text qwen3_vl_text smollm3".split()
)

from builder.kit.errors import BuilderError
from builder.kit.hf_config import check_generation_config, check_search_keys


def _picked(config: dict, generation: dict, key: str, default=None) -> tuple[Any, str]:
    """(value, the file it came from) of a token id: generation_config.json's, else config.json's.
    Search keys do not fall back key by key (search_values): transformers reads them from config.json
    only when there is no generation_config.json."""
    value = generation.get(key)
    return (value, "generation_config.json") if value is not None else (config.get(key, default), "config.json")


# The search keys genai_config.json writes, with transformers 5's defaults for them
# (GenerationConfig._get_default_generation_params), which generate() uses for a key left unset.
SEARCH_DEFAULTS = {
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "num_beams": 1,
    "min_length": 0,
    "early_stopping": False,
}


def search_source(generation: dict | None) -> str:
    """The file search_values reads: config.json for a checkpoint without generation_config.json."""
    return "config.json" if generation is None else "generation_config.json"


def search_values(config: dict, generation: dict | None, config_path: str = "config.json") -> dict[str, Any]:
    """The search keys transformers' generate() uses. generation None: the checkpoint has no
    generation_config.json, and transformers 5.25 then builds its generation config from config.json
    (GenerationMixin's fallback); with the file, config.json's generation keys are never read
    (Qwen3Config(top_k=3) keeps no top_k), so a key the file leaves out takes the default."""
    if generation is None:
        # The same check generation_config.json gets: config.json's repetition_penalty 0 was written
        # as it was, and genai then repeated one token to max_length where transformers refuses it.
        check_search_keys(config, config_path)
    source = config if generation is None else generation
    return {key: default if source.get(key) is None else source[key] for key, default in SEARCH_DEFAULTS.items()}


# Where the README says what genai's beam search does to the recurrent state.
BEAM_SEARCH_SECTION = "README.md#qwen35-and-qwen3-next-hybrid-linear-attention"

# onnxruntime-genai 0.18 refuses to create a generator for more beams ("num_beams (33) must be in
# [1, 32]", Generator::Generator; the same bound on cuda).
MAX_GENAI_BEAMS = 32


def written_num_beams(
    search: dict, hybrid: bool, graph_capture: bool, source: str = "generation_config.json"
) -> tuple[int, str | None]:
    """(the num_beams genai_config.json gets, a warning when that is not the checkpoint's). The plan
    (capture, warnings) and make_genai_config both ask this, so the folder is what the plan said.
    search: settled by written_sampling first (its do_sample); source: the file search came from
    (search_source)."""
    beams = int(search["num_beams"])
    if beams <= 1:
        return beams, None
    where = f"{source} sets num_beams {beams}"
    if hybrid:
        # genai 0.18's beam search reorders the KV cache but not the recurrent state.
        return 1, (
            f"{where}, but onnxruntime-genai 0.18's beam search does not reorder the recurrent state of "
            f"linear-attention layers, so its beams diverge from transformers' ({BEAM_SEARCH_SECTION}): "
            "genai_config.json gets num_beams 1"
        )
    if search["do_sample"]:
        # generators.cpp refuses top_k/top_p with beams: every default generation would fail.
        return 1, (
            f"{where} with do_sample true (transformers' beam sampling), which onnxruntime-genai has no "
            "search for: genai_config.json gets num_beams 1, so the folder samples without beams"
        )
    if graph_capture:
        # genai turns past_present_share_buffer off for beams, and refuses capture without it.
        return 1, (
            f"{where} (beam search), which onnxruntime-genai runs only without graph capture: with "
            "--graph-capture on genai_config.json gets num_beams 1; build with --graph-capture off "
            "for beam search"
        )
    if beams > MAX_GENAI_BEAMS:
        return MAX_GENAI_BEAMS, (
            f"{where}, which transformers runs and onnxruntime-genai refuses (it takes at most "
            f"{MAX_GENAI_BEAMS} beams, and failed every generation): genai_config.json gets num_beams "
            f"{MAX_GENAI_BEAMS}, the widest beam search genai runs"
        )
    return beams, None


def written_sampling(search: dict, vocab_size: int, source: str = "generation_config.json") -> tuple[dict, list[str]]:
    """(the do_sample, top_k and top_p genai_config.json gets, warnings where they are not the
    checkpoint's). onnxruntime-genai throws on every sampled generation for a top_p outside [0, 1] or
    a top_k past the vocabulary (Generator::InitializeSamplingMethod), where transformers' warpers read
    top_p > 1 as no top-p filtering and clamp top_k to the vocabulary: those are written as
    transformers runs them. genai also skips a top_p of 0 whenever top_k > 1 and samples from the
    top_k, where transformers' top-p keeps the one most likely token. A negative temperature or top_p
    means nothing to either (transformers' warpers refuse them; genai would sample from the inverted
    distribution), so the build is refused."""
    for key in ("temperature", "top_p"):
        if search[key] < 0:
            raise BuilderError(
                f"{source} sets {key} {search[key]}, which no sampler reads (transformers' generate refuses "
                f"a negative {key}); fix {key} there (temperature > 0, top_p in (0, 1]) and build again"
            )
    written = {"do_sample": bool(search["do_sample"]), "top_k": int(search["top_k"]), "top_p": float(search["top_p"])}
    warnings = []
    if written["do_sample"] and search["temperature"] == 0:
        # genai samples nothing at temperature 0 (InitializeSamplingMethod picks greedy search).
        written["do_sample"] = False
        warnings.append(
            f"{source} sets do_sample true with temperature 0, which transformers' generate refuses (it asks "
            "for do_sample false, greedy search) and onnxruntime-genai runs as greedy search: "
            "genai_config.json gets do_sample false"
        )
    if written["top_p"] > 1:
        written["top_p"] = 1.0
        warnings.append(
            f"{source} sets top_p {search['top_p']}, which transformers reads as 1.0 (no top-p filtering) and "
            "onnxruntime-genai refuses when sampling: genai_config.json gets top_p 1.0"
        )
    if written["top_p"] == 0 and written["top_k"] > 1:
        written["top_k"] = 1
        warnings.append(
            f"{source} sets top_p 0 with top_k {search['top_k']}: transformers' top-p keeps the most likely "
            f"token alone, where onnxruntime-genai ignores a top_p of 0 and samples from the top {search['top_k']}: "
            "genai_config.json gets top_k 1 (the most likely token)"
        )
    elif written["top_k"] > vocab_size:
        written["top_k"] = vocab_size
        warnings.append(
            f"{source} sets top_k {search['top_k']}, past the vocabulary ({vocab_size}), which transformers "
            f"clamps and onnxruntime-genai refuses when sampling: genai_config.json gets top_k {vocab_size}"
        )
    return written, warnings


def written_no_repeat_ngram_size(
    search: dict, ep: str, source: str = "generation_config.json"
) -> tuple[int, str | None]:
    """(the no_repeat_ngram_size genai_config.json gets, a warning when that is not the checkpoint's).
    onnxruntime-genai 0.18 bans repeated n-grams in its CPU search only (webgpu and dml folders search
    on the CPU); its CUDA search throws at the first token ("no_repeat_ngram_size is only supported for
    CPU search", Search::ApplyNoRepeatNgram, which Search_Cuda does not override)."""
    size = int(search["no_repeat_ngram_size"])
    if size <= 0 or ep != "cuda":
        return size, None
    return 0, (
        f"{source} sets no_repeat_ngram_size {size}, which onnxruntime-genai's CUDA search refuses (it "
        "bans repeated n-grams on the CPU only, and failed every generation): genai_config.json gets "
        "no_repeat_ngram_size 0, so the cuda folder generates without it"
    )


def beam_logits_processors(search: dict, beams: int, source: str = "generation_config.json") -> str | None:
    """A warning where beams meet a setting that changes the logits: onnxruntime-genai's beam search
    applies min_length, repetition_penalty and no_repeat_ngram_size to the logits and then takes their
    log-softmax (BeamSearch_Cpu::SelectTop), transformers' beam search the other way round, so the beam
    scores differ and the beams can end apart (greedy search agrees: its argmax is the same either way).
    search: as written (after written_no_repeat_ngram_size); beams: the num_beams written."""
    if beams <= 1:
        return None
    named = [
        f"{key} {search[key]}"
        for key, unset in (("min_length", 0), ("repetition_penalty", 1.0), ("no_repeat_ngram_size", 0))
        if search[key] != unset
    ]
    if not named:
        return None
    return (
        f"{source} sets num_beams {beams} with {', '.join(named)}, which onnxruntime-genai's beam search "
        "applies to the logits before their log-softmax and transformers' after it: the folder's beams can "
        "end apart from transformers' (no genai setting orders them as transformers does)"
    )


def settled_search(
    search: dict, vocab_size: int, hybrid: bool, graph_capture: bool, ep: str, source: str = "generation_config.json"
) -> tuple[dict, list[str]]:
    """(search as genai_config.json writes it, the warnings for what differs from the checkpoint's).
    The plan (warnings) and make_genai_config both ask this, so the folder is what the plan said."""
    sampling, warnings = written_sampling(search, vocab_size, source)
    settled = {**search, **sampling}
    ngram, ngram_warning = written_no_repeat_ngram_size(settled, ep, source)
    settled["no_repeat_ngram_size"] = ngram
    settled["num_beams"], beams_warning = written_num_beams(settled, hybrid, graph_capture, source)
    beams_processors = beam_logits_processors(settled, settled["num_beams"], source)
    return settled, [*warnings, *(w for w in (ngram_warning, beams_warning, beams_processors) if w)]


# generation_config.json keys that change what generate() picks and that genai's search has no
# setting for, with transformers' defaults (a value there, or None, [] or {}, changes nothing).
UNEXPRESSED_DEFAULTS = {
    "min_new_tokens": None,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "bad_words_ids": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "encoder_repetition_penalty": 1.0,
    "diversity_penalty": 0.0,
    "num_beam_groups": 1,
    "top_h": None,
    "exponential_decay_length_penalty": None,
    "guidance_scale": 1.0,  # transformers applies it when it is neither None nor 1
    "watermarking_config": None,
}


def unexpressed_generation_keys(generation: dict | None) -> str | None:
    """A warning naming the generation_config.json keys the folder generates without, if any."""
    named = [
        key
        for key, default in UNEXPRESSED_DEFAULTS.items()
        if key in (generation or {}) and generation[key] not in (None, [], {}, default)
    ]
    if (generation or {}).get("early_stopping") == "never":
        named.append('early_stopping "never" (written as false)')
    if not named:
        return None
    return (
        f"generation_config.json sets {', '.join(named)}, which onnxruntime-genai's search has no setting "
        "for: the folder generates without them"
    )


def token_ids_past_the_vocabulary(
    config: dict, generation: dict | None, vocab_size: int, genai: bool = True
) -> list[str]:
    """Warnings for eos/bos/pad token ids that no logit can reach: generation would never stop at
    such an eos (genai_config.json leaves it out: onnxruntime-genai refuses every generator for it),
    and genai would feed such a bos or pad to the embedding's Gather. genai: the folder is genai's."""
    messages = []
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value, source = _picked(config, generation or {}, key)
        try:
            beyond = [i for i in _ids(value) if not 0 <= i < vocab_size]
        except (TypeError, ValueError):
            continue  # not ids at all: check_generation_config / the genai config refuse those
        if beyond:
            if key != "eos_token_id":
                consequence = "genai would feed it to the model"
            elif genai:
                consequence = (
                    "transformers never stops at it, and onnxruntime-genai refuses every generation with it: "
                    f"genai_config.json leaves out eos_token_id {', '.join(map(str, beyond))}"
                )
            else:
                consequence = "generation will not stop at it"
            messages.append(
                f"{key} {beyond[0]} ({source}) is outside the vocabulary (0 .. {vocab_size - 1}): "
                f"{consequence}; check {source}"
            )
    return messages


def turn_end_id(config: dict, generation: dict | None, tokenizer_eos: tuple[str, int] | None, vocab_size: int):
    """The tokenizer's eos id where genai_config.json adds it to the checkpoint's eos ids, else None.
    A chat template ends every turn with the tokenizer's eos_token; where generation_config.json (or
    config.json) leaves it out, genai generated past the end of each reply, writing the next turns
    itself. The reference builder adds it the same way (resolve_special_token_ids)."""
    if tokenizer_eos is None or not 0 <= tokenizer_eos[1] < vocab_size:
        return None
    try:
        listed = _ids(_picked(config, generation or {}, "eos_token_id")[0])
    except (TypeError, ValueError):
        return None  # not ids at all: check_generation_config refuses those
    return None if tokenizer_eos[1] in listed else tokenizer_eos[1]


def turn_end_warning(config: dict, generation: dict | None, tokenizer_eos, vocab_size: int) -> str | None:
    """The warning for a tokenizer eos that genai_config.json adds to the checkpoint's eos ids."""
    if turn_end_id(config, generation, tokenizer_eos, vocab_size) is None:
        return None
    value, source = _picked(config, generation or {}, "eos_token_id")
    listed = f"eos_token_id {json.dumps(value)}" if value is not None else "no eos_token_id"
    token, token_id = tokenizer_eos
    return (
        f"the tokenizer's eos_token {token!r} (id {token_id}), which ends each turn of a chat template, is "
        f"not among the ids the checkpoint stops at ({source}: {listed}): genai_config.json stops at it too, "
        f"so a reply ends at the end of its turn (transformers' generate() would run past it); add it to "
        f"{source}'s eos_token_id to silence this"
    )


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


# The default search.max_length. Every build shares past and present KV buffers, which
# onnxruntime-genai allocates at max_length before the first token (and a captured graph cannot
# grow). The reference writes the whole context: 40,960 for Qwen3, so opening a Qwen3-0.6B int4
# cpu folder took 9.4 GiB against 1.5 GiB at 4096, at the same decode speed (docs/packing.md#max-length).
DEFAULT_MAX_LENGTH = 4096


def search_max_length(plan) -> int:
    return resolved_max_length(plan.options.max_length, plan.context_length)


def resolved_max_length(max_length: int | None, context_length: int) -> int:
    """--max-length as written (checked against the context length by the plan), or its default."""
    return min(DEFAULT_MAX_LENGTH, context_length) if max_length is None else max_length


def resolved_intra_op_threads(threads: int | None, target) -> int:
    """--intra-op-threads as written, or the target's default (-1: genai_config.json leaves it out)."""
    return target.default_intra_op_threads if threads is None else threads


def make_genai_config(
    plan, config: dict, generation: dict | None, generation_path: str, tokenizer_eos: tuple[str, int] | None = None
) -> dict[str, Any]:
    """plan: the build's BuildPlan; config and generation: the checkpoint's config.json and
    generation_config.json (at generation_path, named in errors); tokenizer_eos: the tokenizer's
    eos_token and its id (tokenizer_files.tokenizer_eos), which the eos ids gain (turn_end_id)."""
    spec, target = plan.spec, plan.target
    search_keys = search_values(
        config, None if generation is None else check_generation_config(generation, generation_path)
    )
    search_keys = settled_search(
        search_keys, spec.vocab_size, bool(spec.linear_layers), target.graph_capture, target.ep
    )[0]
    generation = generation or {}

    def pick(key, default=None):
        return _picked(config, generation, key, default)[0]

    # An eos id past the vocabulary never stops transformers (no logit reaches it), and genai refuses
    # every generator for it: left out (token_ids_past_the_vocabulary warns).
    eos = [i for i in _ids(pick("eos_token_id")) if i < spec.vocab_size]
    # genai takes one bos and one pad id; a list (generation_config.json allows one) gives its
    # first, and an empty one counts as unset.
    bos = (_ids(pick("bos_token_id")) or eos or [0])[0]
    pad = (_ids(pick("pad_token_id")) or eos or [0])[0]
    # After the checkpoint's own ids, which bos and pad fall back to (turn_end_warning says so).
    turn_end = turn_end_id(config, generation, tokenizer_eos, spec.vocab_size)
    eos += [] if turn_end is None else [turn_end]

    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    if not plan.layout.rotary_in_gqa:
        inputs["position_ids"] = "position_ids"
    inputs.update(past_key_names="past_key_values.%d.key", past_value_names="past_key_values.%d.value")
    outputs = {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}
    if spec.linear_layers:
        # onnxruntime-genai 0.18 (qwen3_5_text) finds the recurrent layers by these templates and reads
        # the state shapes from the graph; KV inputs exist for the full-attention layers only.
        inputs.update(past_conv_names="past.%d.conv", past_recurrent_names="past.%d.recurrent")
        outputs.update(present_conv_names="present.%d.conv", present_recurrent_names="present.%d.recurrent")

    session_options = {
        "log_id": "onnxruntime-genai",
        "provider_options": [] if target.ep == "cpu" else [{target.ep: target.provider_options}],
    }
    threads = resolved_intra_op_threads(plan.options.intra_op_threads, target)
    if threads >= 0:
        session_options["intra_op_num_threads"] = threads
    decoder = {
        "session_options": session_options,
        "filename": "model.onnx",
        "head_size": spec.head_dim,
        "hidden_size": spec.hidden_size,
        "inputs": inputs,
        "outputs": outputs,
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
    }
    # No "sliding_window" entry even for windowed models: onnxruntime-genai 0.18 reads it
    # as a request for window-sized per-layer KV buffers, while our GQA nodes keep the
    # full-length shared buffer and apply the window themselves (local_window_size).
    # With the entry, generation failed once a sequence passed window + 16 tokens.

    model = {
        "bos_token_id": bos,
        "context_length": plan.context_length,
        "decoder": decoder,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": pad,
        "type": plan.genai_type,
        "vocab_size": spec.vocab_size,
    }
    search = {
        "diversity_penalty": 0.0,
        "do_sample": bool(search_keys["do_sample"]),
        # transformers' "never" (wait until no beam can improve) has no genai form; False is the nearest
        # (genai ported the length heuristic transformers applies for False).
        "early_stopping": search_keys["early_stopping"] is True,
        "length_penalty": float(search_keys["length_penalty"]),
        "max_length": search_max_length(plan),
        # genai's min_length counts the prompt too, as transformers' does.
        "min_length": int(search_keys["min_length"]),
        "no_repeat_ngram_size": int(search_keys["no_repeat_ngram_size"]),
        "num_beams": search_keys["num_beams"],
        "num_return_sequences": 1,
        # GroupQueryAttention reads and writes one max_length KV buffer in place.
        "past_present_share_buffer": True,
        "repetition_penalty": float(search_keys["repetition_penalty"]),
        "temperature": float(search_keys["temperature"]),
        "top_k": search_keys["top_k"],
        "top_p": search_keys["top_p"],
    }
    return {"model": model, "search": search}
