"""The types of the config.json keys a build reads, checked once when the file is read.

Families read their keys with plain `config.get`; a value of the wrong type (a
string head count, a null eps, NaN) would otherwise surface as a traceback deep
in a spec, or as a wrong number. One table here covers every family, so a new
family only adds the keys it reads that are not listed yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from builder.kit.errors import BuilderError


def _int(minimum: int) -> Callable[[Any], bool]:
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= minimum

    check.expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    return check


def _number(above: float | None = 0.0, at_most: float | None = None) -> Callable[[Any], bool]:
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


def _bool(v) -> bool:
    return isinstance(v, bool)


_bool.expected = "true or false"


def _str(v) -> bool:
    return isinstance(v, str)


_str.expected = "a string"


def _mapping(v) -> bool:
    return isinstance(v, dict)


_mapping.expected = "an object"


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_str_list.expected = "a list of strings"


def _int_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


_int_list.expected = "a list of non-negative integers"


def _token_ids(v) -> bool:
    one = _int(0)
    return one(v) or (isinstance(v, list) and all(one(x) for x in v))


_token_ids.expected = "a token id or a list of token ids"

# key -> (check, null allowed). Null is allowed where transformers reads None as "use the
# default" and hub files write it (head_dim, sliding_window, rope_scaling, ...); elsewhere
# a null is a broken file, and guessing a default would build a silently different model.
KEYS: dict[str, tuple[Callable[[Any], bool], bool]] = {
    "hidden_size": (_int(1), False),
    "num_hidden_layers": (_int(1), False),
    "num_attention_heads": (_int(1), False),
    "num_key_value_heads": (_int(1), True),
    "head_dim": (_int(1), True),
    "intermediate_size": (_int(1), False),
    "vocab_size": (_int(1), False),
    "max_position_embeddings": (_int(1), False),
    "rms_norm_eps": (_number(), False),
    "rope_theta": (_number(), False),
    "rope_local_base_freq": (_number(), False),
    "partial_rotary_factor": (_number(0.0, 1.0), False),
    "rope_scaling": (_mapping, True),
    "rope_parameters": (_mapping, True),
    "hidden_act": (_str, False),
    "hidden_activation": (_str, True),
    "tie_word_embeddings": (_bool, False),
    "attention_bias": (_bool, False),
    "use_bidirectional_attention": (_bool, True),
    "use_sliding_window": (_bool, False),
    "sliding_window": (_int(0), True),  # 0 and null: no window (families treat both so)
    "sliding_window_pattern": (_int(1), True),
    "max_window_layers": (_int(0), True),
    "layer_types": (_str_list, True),
    "query_pre_attn_scalar": (_number(), False),
    "num_experts": (_int(0), True),
    "num_local_experts": (_int(0), True),
    "num_experts_per_tok": (_int(0), True),
    "moe_intermediate_size": (_int(0), True),
    "decoder_sparse_step": (_int(1), True),
    "mlp_only_layers": (_int_list, True),
    "norm_topk_prob": (_bool, True),
    "shared_expert_intermediate_size": (_int(0), True),
    # Qwen3.5 / Qwen3-Next: Gated DeltaNet layers, and every Nth layer full attention.
    "full_attention_interval": (_int(1), False),
    "linear_num_key_heads": (_int(1), False),
    "linear_num_value_heads": (_int(1), False),
    "linear_key_head_dim": (_int(1), False),
    "linear_value_head_dim": (_int(1), False),
    "linear_conv_kernel_dim": (_int(2), False),
    "bos_token_id": (_token_ids, True),
    "eos_token_id": (_token_ids, True),
    "pad_token_id": (_token_ids, True),
}

# Inside rope_scaling / rope_parameters (Gemma 3 nests one such object per layer type).
ROPE_KEYS: dict[str, tuple[Callable[[Any], bool], bool]] = {
    "rope_type": (_str, True),
    "type": (_str, True),
    "rope_theta": (_number(), False),
    "factor": (_number(), False),
    "low_freq_factor": (_number(), False),
    "high_freq_factor": (_number(), False),
    "original_max_position_embeddings": (_int(1), False),
    "partial_rotary_factor": (_number(0.0, 1.0), False),
}


def _check(table: dict, values: dict, where: str) -> None:
    for key, (check, null_ok) in table.items():
        if key not in values:
            continue
        value = values[key]
        if value is None:
            if null_ok:
                continue
            raise BuilderError(f"{where}: {key} is null; it must be {check.expected} (fix or re-download config.json)")
        if not check(value):
            raise BuilderError(
                f"{where}: {key} = {value!r} is not valid; it must be {check.expected} (fix or re-download config.json)"
            )


def check_config(config: dict, where: str = "config.json") -> dict:
    """Refuse a config.json whose known keys have the wrong type; returns it with
    `architectures` as a list (a plain string names one architecture)."""
    architectures = config.get("architectures")
    if isinstance(architectures, str):
        config["architectures"] = [architectures]
    elif architectures is not None and not _str_list(architectures):
        raise BuilderError(
            f"{where}: architectures = {architectures!r} is not valid; it must be a list of "
            'class names such as ["Qwen3ForCausalLM"]'
        )
    sections = [(config, where)]
    if isinstance(config.get("text_config"), dict):  # multimodal checkpoints nest the decoder's keys
        sections.append((config["text_config"], f"{where} text_config"))
    for values, place in sections:
        _check(KEYS, values, place)
        for rope_key in ("rope_scaling", "rope_parameters"):
            rope = values.get(rope_key)
            if not isinstance(rope, dict):
                continue
            nested = [(v, f"{place} {rope_key}.{k}") for k, v in rope.items() if isinstance(v, dict)]
            for params, label in [(rope, f"{place} {rope_key}")] + nested:
                _check(ROPE_KEYS, params, label)
    return config


# generation_config.json: the keys genai_config.json copies (null: take config.json's).
GENERATION_KEYS: dict[str, tuple[Callable[[Any], bool], bool]] = {
    "bos_token_id": (_token_ids, True),
    "eos_token_id": (_token_ids, True),
    "pad_token_id": (_token_ids, True),
    "do_sample": (_bool, True),
    "temperature": (_number(None), True),
    "top_p": (_number(None), True),
    "top_k": (_int(0), True),
    "repetition_penalty": (_number(), True),
    "length_penalty": (_number(None), True),
    "no_repeat_ngram_size": (_int(0), True),
    "num_beams": (_int(1), True),
}


def check_generation_config(generation: dict, where: str = "generation_config.json") -> dict:
    _check(GENERATION_KEYS, generation, where)
    return generation
