"""The types of the config.json keys a build reads, checked once when the file is read, and
the decoder keys no part of a build reads.

Families read their keys with plain `config.get`; a value of the wrong type (a
string head count, a null eps, NaN) would otherwise surface as a traceback deep
in a spec, or as a wrong number. One table here covers the built-in families; a
family outside it lists the keys it adds in its `config_keys`, with the checkers
below (integer(), number(), boolean, ...), and they are checked when it plans.

A number or flag in config.json that neither table lists nor NEVER_CHANGE_LOGITS
names may change what the model computes (Granite's residual_multiplier under a
Llama family): the plan warns about it rather than build another model in silence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from builder.kit.errors import BUILD_FROM_FLOAT, BuilderError


def integer(minimum: int = 1) -> Callable[[Any], bool]:
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= minimum

    check.expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    return check


def number(above: float | None = 0.0, at_most: float | None = None) -> Callable[[Any], bool]:
    def check(v):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return False
        return (above is None or v > above) and (at_most is None or v <= at_most)

    check.expected = (
        "a finite number"
        if above is None
        else f"a number in (0, {at_most}]"
        if at_most is not None
        else "a positive number"
    )
    return check


def boolean(v) -> bool:
    return isinstance(v, bool)


boolean.expected = "true or false"


def early_stopping_value(v) -> bool:
    return isinstance(v, bool) or v == "never"


early_stopping_value.expected = 'true, false or "never"'


def string(v) -> bool:
    return isinstance(v, str)


string.expected = "a string"


def mapping(v) -> bool:
    return isinstance(v, dict)


mapping.expected = "an object"


def string_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


string_list.expected = "a list of strings"


def integer_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


integer_list.expected = "a list of non-negative integers"


def token_ids(v) -> bool:
    one = integer(0)
    return one(v) or (isinstance(v, list) and all(one(x) for x in v))


token_ids.expected = "a token id or a list of token ids"

# key -> (check, null allowed). Null is allowed where transformers reads None as "use the
# default" and hub files write it (head_dim, sliding_window, rope_scaling, ...); elsewhere
# a null is a broken file, and guessing a default would build a silently different model.
KEYS: dict[str, tuple[Callable[[Any], bool], bool]] = {
    "hidden_size": (integer(1), False),
    "num_hidden_layers": (integer(1), False),
    "num_attention_heads": (integer(1), False),
    "num_key_value_heads": (integer(1), True),
    "head_dim": (integer(1), True),
    "intermediate_size": (integer(1), False),
    "vocab_size": (integer(1), False),
    "max_position_embeddings": (integer(1), False),
    "rms_norm_eps": (number(), False),
    "rope_theta": (number(), False),
    "rope_local_base_freq": (number(), False),
    "partial_rotary_factor": (number(0.0, 1.0), False),
    # llama3 and yarn scaling read it before rope_scaling's own (transformers' standardize_rope_params)
    "original_max_position_embeddings": (integer(1), False),
    "rope_scaling": (mapping, True),
    "rope_parameters": (mapping, True),
    "hidden_act": (string, False),
    "hidden_activation": (string, True),
    "tie_word_embeddings": (boolean, False),
    "attention_bias": (boolean, False),
    "mlp_bias": (boolean, True),
    "attn_output_gate": (boolean, True),  # Qwen3.5 and transformers gate whatever it says
    "use_bidirectional_attention": (boolean, True),
    "use_sliding_window": (boolean, False),
    "sliding_window": (integer(0), True),  # 0 and null: no window (families treat both so)
    "max_window_layers": (integer(0), True),
    "layer_types": (string_list, True),
    "query_pre_attn_scalar": (number(), False),
    "num_experts": (integer(0), True),
    "num_local_experts": (integer(0), True),
    "num_experts_per_tok": (integer(0), True),
    "moe_intermediate_size": (integer(0), True),
    "decoder_sparse_step": (integer(1), True),
    "mlp_only_layers": (integer_list, True),
    "norm_topk_prob": (boolean, True),
    "shared_expert_intermediate_size": (integer(0), True),
    # Qwen3.5 / Qwen3-Next: Gated DeltaNet layers, and every Nth layer full attention.
    "full_attention_interval": (integer(1), False),
    "linear_num_key_heads": (integer(1), False),
    "linear_num_value_heads": (integer(1), False),
    "linear_key_head_dim": (integer(1), False),
    "linear_value_head_dim": (integer(1), False),
    "linear_conv_kernel_dim": (integer(2), False),
    "bos_token_id": (token_ids, True),
    "eos_token_id": (token_ids, True),
    "pad_token_id": (token_ids, True),
}

# Inside rope_scaling / rope_parameters (Gemma 3 nests one such object per layer type).
ROPE_KEYS: dict[str, tuple[Callable[[Any], bool], bool]] = {
    "rope_type": (string, True),
    "type": (string, True),
    "rope_theta": (number(), False),
    "factor": (number(), False),
    "low_freq_factor": (number(), False),
    "high_freq_factor": (number(), False),
    "original_max_position_embeddings": (integer(1), False),
    "partial_rotary_factor": (number(0.0, 1.0), False),
    # yarn; null reads as unset, where transformers derives or defaults the value
    "attention_factor": (number(), True),
    "beta_fast": (number(), True),
    "beta_slow": (number(), True),
    "mscale": (number(None), True),
    "mscale_all_dim": (number(None), True),
    # transformers truncates unless told not to, and a null reads as "not to": say which
    "truncate": (boolean, False),
}
# A null yarn factor is the ratio of max_position_embeddings to original_max_position_embeddings.
YARN_ROPE_KEYS = {**ROPE_KEYS, "factor": (number(), True)}


def _check(table: dict, values: dict, where: str, file: str = "config.json") -> None:
    for key, (check, null_ok) in table.items():
        if key not in values:
            continue
        value = values[key]
        if value is None:
            if null_ok:
                continue
            raise BuilderError(f"{where}: {key} is null; it must be {check.expected} (fix or re-download {file})")
        if not check(value):
            raise BuilderError(
                f"{where}: {key} = {value!r} is not valid; it must be {check.expected} (fix or re-download {file})"
            )


def check_keys(table: dict, config: dict, where: str = "config.json") -> None:
    """Check the decoder's keys that `table` lists (key -> (checker, null allowed)), as KEYS are."""
    _check(table, decoder_section(config), where)


def decoder_section(config: dict) -> dict:
    """The keys that describe the decoder: text_config's where a multimodal checkpoint nests them."""
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


# Numbers and flags transformers writes that never change a causal decoder's logits: training
# settings, caching, token ids (genai_config.json copies those), heads a build leaves out, and the
# generation defaults and base attributes transformers 4 wrote into every config.json. A flag set
# to false is not listed: it turns off what the family does not do either.
NEVER_CHANGE_LOGITS = {
    "_sliding_window_pattern",  # Gemma 3: transformers' copy of sliding_window_pattern, which is read
    "chunk_size_feed_forward",  # feed-forward in chunks: the same product
    "is_llama_config",  # SmolLM2: a marker
    "unsloth_fixed",  # Unsloth's mirrors: a marker
    "use_bfloat16",
    "tf_legacy_loss",
    "add_cross_attention",
    "tie_encoder_decoder",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "remove_invalid_values",
    "use_cache",
    "initializer_range",
    "initializer_factor",
    "router_aux_loss_coef",
    "router_z_loss_coef",
    "output_router_logits",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "torchscript",
    "is_encoder_decoder",
    "is_decoder",
    "pretraining_tp",  # Llama's sliced matmuls in training: the same product
    "mtp_num_hidden_layers",  # Qwen3.5's multi-token-prediction head, not built (not_built)
    "mtp_use_dedicated_embeddings",
    "use_mrope",  # Qwen2: multimodal positions; text tokens get the plain ones
}


def _never_changes_logits(key: str) -> bool:
    return (
        key in NEVER_CHANGE_LOGITS or "dropout" in key or key.endswith(("_pdrop", "_token_id", "_token_ids"))
    )  # *_pdrop: Phi-3's and GPT-2's dropout probabilities


def unread_keys(config: dict, known=()) -> list[str]:
    """The decoder's numbers and flags that no table lists (KEYS, `known`: a family's own) and that
    are not known to leave the logits as they are, in the file's order."""
    return [
        key
        for key, value in decoder_section(config).items()
        if isinstance(value, (bool, int, float))
        and value is not False
        and key not in KEYS
        and key not in known
        and not _never_changes_logits(key)
    ]


def check_config(config: dict, where: str = "config.json") -> dict:
    """Refuse a config.json whose known keys have the wrong type; returns it with
    `architectures` as a list (a plain string names one architecture)."""
    architectures = config.get("architectures")
    if isinstance(architectures, str):
        config["architectures"] = [architectures]
    elif architectures is not None and not string_list(architectures):
        raise BuilderError(
            f"{where}: architectures = {architectures!r} is not valid; it must be a list of "
            'class names such as ["Qwen3ForCausalLM"]'
        )
    sections = [(config, where)]
    if isinstance(config.get("text_config"), dict):  # multimodal checkpoints nest the decoder's keys
        sections.append((config["text_config"], f"{where} text_config"))
    for values, place in sections:
        _refuse_prequantized(values, place)
        _check(KEYS, values, place)
        for rope_key in ("rope_scaling", "rope_parameters"):
            rope = values.get(rope_key)
            if not isinstance(rope, dict):
                continue
            nested = [(v, f"{place} {rope_key}.{k}") for k, v in rope.items() if isinstance(v, dict)]
            for params, label in [(rope, f"{place} {rope_key}")] + nested:
                yarn = params.get("rope_type", params.get("type")) == "yarn"
                _check(YARN_ROPE_KEYS if yarn else ROPE_KEYS, params, label)
    return config


def _refuse_prequantized(values: dict, place: str) -> None:
    """GPTQ, AWQ, FP8, bitsandbytes... checkpoints store other tensors (qweight, scales,
    weight_scale_inv) under the float names' layers: refused by what config.json says, rather than
    by a tensor that seems to be missing from an "incomplete" checkpoint."""
    quant = values.get("quantization_config")
    if quant is None:
        return
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    named = f" (quant_method {method!r})" if isinstance(method, str) else ""
    raise BuilderError(
        f"{place} has a quantization_config{named}: its weights are already quantized, which the "
        f"builder does not read; {BUILD_FROM_FLOAT}"
    )


# generation_config.json: the keys genai_config.json copies (null: take config.json's).
GENERATION_KEYS: dict[str, tuple[Callable[[Any], bool], bool]] = {
    "bos_token_id": (token_ids, True),
    "eos_token_id": (token_ids, True),
    "pad_token_id": (token_ids, True),
    "do_sample": (boolean, True),
    "temperature": (number(None), True),
    "top_p": (number(None), True),
    "top_k": (integer(0), True),
    "repetition_penalty": (number(), True),
    "length_penalty": (number(None), True),
    "no_repeat_ngram_size": (integer(0), True),
    "num_beams": (integer(1), True),
    "min_length": (integer(0), True),
    "early_stopping": (early_stopping_value, True),
}


def check_generation_config(generation: dict, where: str = "generation_config.json") -> dict:
    _check(GENERATION_KEYS, generation, where, "generation_config.json")
    return generation


def check_search_keys(config: dict, where: str = "config.json") -> None:
    """config.json's search keys, as check_generation_config checks generation_config.json's: a checkpoint
    without that file has its search read from config.json (genai_config.search_values)."""
    search = {key: rule for key, rule in GENERATION_KEYS.items() if not key.endswith("_token_id")}
    _check(search, config, where)
