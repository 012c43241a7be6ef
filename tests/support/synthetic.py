"""Deterministic random-weight Hugging Face checkpoints for tests and benchmarks.

Nothing can be downloaded here, so every checkpoint the tests and benchmarks use is
made by this module: config.json, generation_config.json, safetensors weights laid out
exactly as the hub does (names, shapes, sharding, index) and a small Qwen-style
byte-level BPE tokenizer shipped in ``tests/support/synthetic_tokenizer/``.

Weights are written by a streaming safetensors writer: each tensor is generated from its
own seeded generator (seed derived from the base seed and the tensor name), so the bytes
depend only on (config, dtype, seed), not on sharding or order, and a 4B model never has
to fit in memory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import struct
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TOKENIZER_DIR = Path(__file__).with_name("synthetic_tokenizer")

# Shipped tokenizer: 477 byte-level BPE tokens, then the special tokens appended at the
# end like Qwen does (151643.. on the real vocab). test_synthetic checks these numbers.
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 477, 478, 479
TOKENIZER_VOCAB_SIZE = 480
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------


def _tiny(arch: str, model_type: str, **dims) -> dict:
    """A tiny config in the key style of published hub config.json files (rope_theta,
    rope_scaling, torch_dtype), which is what the ONNX builder has to read."""
    cfg = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": TOKENIZER_VOCAB_SIZE,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "pad_token_id": ENDOFTEXT_ID,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-06,
        "max_position_embeddings": 256,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": "bfloat16",
    }
    cfg.update(dims)
    return cfg


# Sizes keep every matmul's input dim a multiple of 32 (int4 block 32) and head_dim >= 16.
TINY_CONFIGS: dict[str, dict] = {
    # head_dim * heads (128) != hidden (64): catches code that assumes hidden/heads.
    "qwen3": _tiny(
        "Qwen3ForCausalLM",
        "qwen3",
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        attention_bias=False,
        tie_word_embeddings=True,
        max_window_layers=2,
        use_sliding_window=False,
        sliding_window=None,
    ),
    "qwen3-1kv": _tiny(
        "Qwen3ForCausalLM",
        "qwen3",
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        attention_bias=False,
        tie_word_embeddings=True,
        max_window_layers=2,
        use_sliding_window=False,
        sliding_window=None,
    ),
    # Qwen3-0.6B's attention (16 query heads, 8 KV heads of 128) at a tiny width: the WebGPU EP
    # picks its attention kernels by head count and size, which the 32-wide tiny heads leave untried.
    "qwen3-0.6b-attention": _tiny(
        "Qwen3ForCausalLM",
        "qwen3",
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        attention_bias=False,
        tie_word_embeddings=True,
        max_window_layers=2,
        use_sliding_window=False,
        sliding_window=None,
        rope_theta=1000000.0,
    ),
    "qwen3-untied": _tiny(
        "Qwen3ForCausalLM",
        "qwen3",
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        attention_bias=False,
        tie_word_embeddings=False,
        max_window_layers=2,
        use_sliding_window=False,
        sliding_window=None,
    ),
    # Llama 3.x style rope scaling, shrunk so that all three frequency bands
    # (kept / interpolated / divided by factor) occur with head_dim 32.
    "llama": _tiny(
        "LlamaForCausalLM",
        "llama",
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        attention_bias=False,
        mlp_bias=False,
        pretraining_tp=1,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    # Qwen2 always has q/k/v biases (no attention_bias key on the hub).
    "qwen2": _tiny(
        "Qwen2ForCausalLM",
        "qwen2",
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_window_layers=2,
        use_sliding_window=False,
        sliding_window=None,
        rope_theta=1000000.0,
    ),
    # sliding_window 8 is shorter than the test prompts, so the window really bites.
    "mistral": _tiny(
        "MistralForCausalLM",
        "mistral",
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        tie_word_embeddings=False,
        sliding_window=8,
    ),
    "mistral-nosw": _tiny(
        "MistralForCausalLM",
        "mistral",
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        tie_word_embeddings=False,
        sliding_window=None,
    ),
    # Keys as in Qwen/Qwen3-30B-A3B's config.json (transformers 5 accepts num_experts
    # and saves it back as num_local_experts).
    "qwen3-moe": _tiny(
        "Qwen3MoeForCausalLM",
        "qwen3_moe",
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        attention_bias=False,
        tie_word_embeddings=False,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=64,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=True,
        output_router_logits=False,
        router_aux_loss_coef=0.001,
        max_window_layers=2,
        use_sliding_window=False,
        sliding_window=None,
    ),
    # Keys as in the hub's Gemma 3 text configs (google/gemma-3-1b-it; 4B-27B add linear rope
    # scaling on the global layers): hidden_activation, query_pre_attn_scalar, rope_local_base_freq,
    # sliding_window_pattern. Pattern 3 -> layers 0, 1 slide (window 6 < the 12-token test prompt),
    # layer 2 is global. query_pre_attn_scalar != head_dim (as in 27B: 168 vs 128) and sqrt(96) is
    # not exact, so a wrong attention or embedding scale shows in the logits.
    "gemma3": {
        k: v
        for k, v in _tiny(
            "Gemma3ForCausalLM",
            "gemma3_text",
            hidden_size=96,
            intermediate_size=192,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=48,
            attention_bias=False,
            tie_word_embeddings=True,
            sliding_window=6,
            sliding_window_pattern=3,
            rope_theta=1000000.0,
            rope_local_base_freq=10000.0,
            rope_scaling={"rope_type": "linear", "factor": 8.0},
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
        ).items()
        if k != "hidden_act"
    },  # Gemma 3 configs name it hidden_activation only
}


# The tiny sparse block the Qwen3.5-MoE and Qwen3-Next configs share: 4 experts, top 2, a shared expert.
_QWEN35_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=96)


def _qwen35_text(arch: str, model_type: str, **dims) -> dict:
    """A Qwen3.5-family text config in the key style of the hub's (rope_parameters with
    partial_rotary_factor and mRoPE sections, linear_* keys). Tiny dims: Hk=2 < Hv=4 key/value
    heads, dk=16 != dv=32, head_dim 64 with a quarter of it rotary (GroupQueryAttention wants the
    rotary half-width, 8 here, to be a multiple of 8)."""
    cfg = _tiny(
        arch,
        model_type,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        attention_bias=False,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=32,
        linear_conv_kernel_dim=4,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
    )
    for key in ("rope_theta", "rope_scaling", "torch_dtype"):
        cfg.pop(key)
    cfg.update(dims)
    return cfg


def _conditional(arch: str, model_type: str, text: dict) -> dict:
    """A ConditionalGeneration config: the text model nested under text_config (as on the hub) next to
    a small vision config; make_checkpoint writes a few vision and MTP tensors that a text-only
    build must skip."""
    return {
        "architectures": [arch],
        "model_type": model_type,
        "text_config": text,
        "vision_config": {
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": text["hidden_size"],
            "patch_size": 16,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
        },
        "tie_word_embeddings": text["tie_word_embeddings"],
        "image_token_id": 248056,
        "video_token_id": 248057,
        "vision_start_token_id": 248053,
        "vision_end_token_id": 248054,
        "torch_dtype": "bfloat16",
    }


TINY_CONFIGS.update(
    {
        # Released layout: nested text_config, model.language_model.* weights, tied; layers [L, L, L, F].
        "qwen3_5": _conditional(
            "Qwen3_5ForConditionalGeneration",
            "qwen3_5",
            _qwen35_text(
                "Qwen3_5ForCausalLM",
                "qwen3_5_text",
                tie_word_embeddings=True,
                layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
            ),
        ),
        # Text-only checkpoint, untied; no layer_types, so full_attention_interval 2 decides [L, F, L, F].
        "qwen3_5-text": _qwen35_text(
            "Qwen3_5ForCausalLM", "qwen3_5_text", tie_word_embeddings=False, full_attention_interval=2
        ),
        # MoE: every layer sparse (4 experts, top 2, always renormalized) plus a shared expert with a
        # sigmoid gate; layers [L, F, L, L].
        "qwen3_5-moe": _conditional(
            "Qwen3_5MoeForConditionalGeneration",
            "qwen3_5_moe",
            _qwen35_text(
                "Qwen3_5MoeForCausalLM",
                "qwen3_5_moe_text",
                tie_word_embeddings=False,
                layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"],
                **_QWEN35_MOE,
            ),
        ),
        # Text-only MoE (what transformers' Qwen3_5MoeForCausalLM.save_pretrained writes): model.* weights,
        # flat qwen3_5_moe_text config, experts stored one by one; layers [L, L, L, F] as on the hub.
        "qwen3_5-moe-text": _qwen35_text(
            "Qwen3_5MoeForCausalLM",
            "qwen3_5_moe_text",
            tie_word_embeddings=False,
            layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
            **_QWEN35_MOE,
        ),
        # Qwen3-Next: fused interleaved in_proj_qkvz / in_proj_ba, MoE with a dense layer 1 (mlp_only_layers).
        "qwen3-next": _qwen35_text(
            "Qwen3NextForCausalLM",
            "qwen3_next",
            tie_word_embeddings=False,
            full_attention_interval=4,
            **_QWEN35_MOE,
            decoder_sparse_step=1,
            mlp_only_layers=[1],
            norm_topk_prob=True,
        ),
    }
)
# YaRN as Qwen3's model cards tell users to add it (factor 4 over the original window), the
# window shrunk to 32 positions so that prompts run past it; with head_dim 32 the ramp blends
# dims 0-2 and interpolates the rest; attention_factor 1 + 0.1 ln 4 scales cos and sin.
TINY_CONFIGS["qwen3-yarn"] = {
    **TINY_CONFIGS["qwen3"],
    "max_position_embeddings": 128,
    "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
}
# YaRN with every optional key given: attention_factor (which wins over mscale / mscale_all_dim),
# beta_fast / beta_slow narrowed so the ramp falls inside the 16 frequencies, untruncated.
TINY_CONFIGS["llama-yarn"] = {
    **TINY_CONFIGS["llama"],
    "max_position_embeddings": 128,
    "rope_scaling": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32,
        "attention_factor": 1.5,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
        "beta_fast": 4.0,
        "beta_slow": 0.5,
        "truncate": False,
    },
}
# Gemma 3 4B-27B: the tiny Gemma 3 text model under text_config beside a one-layer SigLIP vision
# tower and its projector (written with transformers' own shapes), model.language_model.* weights
# as transformers 5 saves them; the text_config leaves sizes to Gemma3TextConfig's defaults as the
# hub's does (num_attention_heads 8 here), and the image token lies inside the vocabulary as there.
TINY_CONFIGS["gemma3-vl"] = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "text_config": {
        k: v
        for k, v in TINY_CONFIGS["gemma3"].items()
        if k not in ("architectures", "num_attention_heads", "bos_token_id", "eos_token_id", "pad_token_id")
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    },
    "mm_tokens_per_image": 4,
    "boi_token_index": 470,
    "eoi_token_index": 471,
    "image_token_index": 472,
    "bos_token_id": TINY_CONFIGS["gemma3"]["bos_token_id"],
    "eos_token_id": TINY_CONFIGS["gemma3"]["eos_token_id"],
    "pad_token_id": TINY_CONFIGS["gemma3"]["pad_token_id"],
    "torch_dtype": "bfloat16",
}
for _cfg in (TINY_CONFIGS["qwen3_5"], TINY_CONFIGS["qwen3_5-moe"]):
    _cfg["text_config"].pop("architectures")
TINY_CONFIGS["qwen3_5-moe"]["text_config"].pop("intermediate_size")  # as in Qwen3.5-MoE's config.json
TINY_CONFIGS["qwen3_5-moe-text"].pop("intermediate_size")


def text_config(config: dict) -> dict:
    """The decoder's config: ConditionalGeneration configs nest it under text_config."""
    return config.get("text_config") or config


def _qwen3_real(hidden, inter, layers, heads, window_layers) -> dict:
    """config.json of the published Qwen3 dense instruct checkpoints."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": 40960,
        "max_window_layers": window_layers,
        "model_type": "qwen3",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    }


# Written by scripts/make_checkpoint.py into each folder it fills: only such a folder (or an empty
# one) is written over or removed by the scripts, never a checkpoint of the user's.
MADE_MARK = ".made-by-make_checkpoint"

REAL_CONFIGS: dict[str, dict] = {
    "qwen3-0.6b": _qwen3_real(hidden=1024, inter=3072, layers=28, heads=16, window_layers=28),
    "qwen3-1.7b": _qwen3_real(hidden=2048, inter=6144, layers=28, heads=16, window_layers=28),
    "qwen3-4b": _qwen3_real(hidden=2560, inter=9728, layers=36, heads=32, window_layers=36),
}


def _qwen35_real(hidden, inter, layers, heads, kv_heads, value_heads, tied) -> dict:
    """config.json of the published Qwen3.5 dense checkpoints (Qwen3_5ForConditionalGeneration)."""
    text = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_output_gate": True,
        "bos_token_id": 248044,
        "dtype": "bfloat16",
        "eos_token_id": 248044,
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "layer_types": (["linear_attention"] * 3 + ["full_attention"]) * (layers // 4),
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": value_heads,
        "linear_value_head_dim": 128,
        "max_position_embeddings": 262144,
        "model_type": "qwen3_5_text",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": tied,
        "use_cache": True,
        "vocab_size": 248320,
        "rope_parameters": {
            "mrope_interleaved": True,
            "mrope_section": [11, 11, 10],
            "rope_type": "default",
            "rope_theta": 10000000,
            "partial_rotary_factor": 0.25,
        },
    }
    cfg = _conditional("Qwen3_5ForConditionalGeneration", "qwen3_5", text)
    cfg["vision_config"] = {
        "depth": 1,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "out_hidden_size": hidden,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
    }  # a stand-in: the builder skips the vision tower
    return cfg


# Random weights with the real dims, for benchmarks (not checked against the hub's file layout).
# google/gemma-3-1b-it's config.json (transformers 4.50), for speed runs of Gemma 3 builds.
GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "eos_token_id": [1, 106],
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "initializer_range": 0.02,
    "intermediate_size": 6912,
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 26,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "use_cache": True,
    "vocab_size": 262144,
}
REAL_SHAPE_CONFIGS: dict[str, dict] = {
    "qwen3.5-0.8b": _qwen35_real(hidden=1024, inter=3584, layers=24, heads=8, kv_heads=2, value_heads=16, tied=True),
    "qwen3.5-4b": _qwen35_real(hidden=2560, inter=9216, layers=32, heads=16, kv_heads=4, value_heads=32, tied=True),
    "gemma3-1b": GEMMA3_1B,
}

_QWEN3_GENERATION = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "4.51.0",
}
REAL_GENERATION_CONFIGS: dict[str, dict] = {name: dict(_QWEN3_GENERATION) for name in REAL_CONFIGS}
# The hub files of Qwen3-0.6B and Qwen3-1.7B store lm_head.weight (a copy of the
# embedding) although tie_word_embeddings is true: 311 tensors, 1503300328 bytes for
# 0.6B; 1.7B's second shard is that tensor alone. Qwen3-4B's 398 tensors have none.
HUB_TIED_LM_HEAD = {"qwen3-0.6b", "qwen3-1.7b"}

# Qwen's save_pretrained used a 4 GB shard limit: 0.6B -> 1 file, 1.7B -> 2, 4B -> 3.
HUB_SHARD_SIZE = 4_000_000_000


def default_generation_config(config: dict) -> dict:
    """Qwen3-style sampling defaults with the config's own special token ids, so that
    the builder's handling of generation_config.json is exercised on tiny models too."""
    config = {**config, **text_config(config)}  # Gemma 3 4B-27B name the ids at the top level
    eos = config["eos_token_id"]
    eos = list(eos) if isinstance(eos, list) else [eos]
    pad = config.get("pad_token_id")
    if pad is not None and pad not in eos:
        eos.append(pad)
    gen = {k: v for k, v in _QWEN3_GENERATION.items() if k != "transformers_version"}
    gen.update(bos_token_id=config.get("bos_token_id"), eos_token_id=eos, pad_token_id=pad)
    return gen


# --------------------------------------------------------------------------------------
# Weight layout
# --------------------------------------------------------------------------------------


GEMMA3_VISION = ("model.vision_tower.", "model.multi_modal_projector.")


def weight_shapes(config: dict, *, tied_lm_head: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every checkpoint tensor, in the model's state_dict order (the order
    save_pretrained shards in), derived from the registered family (support.expected_tensors)."""
    from support.expected_tensors import expected_tensors, transformers_shapes

    tensors = expected_tensors(config, tied_lm_head=tied_lm_head)
    if config["model_type"] == "gemma3":  # the vision tower and projector, as transformers shapes them
        tensors += [(n, s) for n, s in transformers_shapes(config) if n.startswith(GEMMA3_VISION)]
    elif "text_config" in config:  # a ConditionalGeneration checkpoint: vision and MTP tensors that a
        # text-only build must skip (transformers' *ForCausalLM ignores them too)
        h, vision = text_config(config)["hidden_size"], config["vision_config"]
        tensors += [
            ("model.visual.merger.linear_fc2.weight", (vision["out_hidden_size"], 4 * vision["hidden_size"])),
            ("mtp.fc.weight", (h, 2 * h)),
        ]
    return tensors


# --------------------------------------------------------------------------------------
# Streaming safetensors writer
# --------------------------------------------------------------------------------------

# name -> (torch dtype's name, safetensors dtype, itemsize). torch is imported where values are drawn,
# not here: the scripts that read this module's configs to check their arguments (bench_builders.py,
# check_webgpu.py) then refuse a bad one in a fraction of a second, not after torch's 2-3 s import.
_DTYPES = {
    "bfloat16": ("bfloat16", "BF16", 2),
    "float16": ("float16", "F16", 2),
    "float32": ("float32", "F32", 4),
}
_CHUNK = 1 << 22  # elements generated per step; fixed so values never depend on RAM or sharding


def _tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def _init(name: str, shape) -> tuple[float, float]:
    """(mean, std) of a tensor's values.

    Matrices get std 1/sqrt(fan_in): ~0.02 on real sizes (0.0198 for Qwen3-4B's hidden
    2560, like initializer_range), but on tiny models 0.02 would make every layer's
    output negligible next to the residual stream, and a tied model would just repeat
    its last input token whatever the attention does, so tests could not see bugs.
    Norm scales are 1 + noise and biases clearly non-zero, so that dropping either one
    changes the logits.
    """
    if name.endswith("norm.weight"):  # input_layernorm, q_norm, model.norm, ...
        return 1.0, 0.1
    if len(shape) == 1:  # biases
        return 0.0, 0.1
    return 0.0, shape[-1] ** -0.5


def tensor_chunks(name: str, shape, dtype: str, seed: int, lm_head_from: str | None = None):
    """Yield the tensor's values as flat chunks, drawn from its own seeded generator
    (lm_head_from: the tensor whose values lm_head.weight draws, a tied model's embedding)."""
    if lm_head_from and name == "lm_head.weight":
        name = lm_head_from
    import torch

    tdtype = getattr(torch, _DTYPES[dtype][0])
    mean, std = _init(name, shape)
    gen = torch.Generator().manual_seed(_tensor_seed(seed, name))
    n = math.prod(shape)
    for start in range(0, n, _CHUNK):
        yield torch.empty(min(_CHUNK, n - start), dtype=tdtype).normal_(mean, std, generator=gen)


def make_tensor(
    name: str, shape, dtype: str = "bfloat16", seed: int = 0, lm_head_from: str | None = None
) -> torch.Tensor:
    """The full tensor make_checkpoint writes under this name (for tests)."""
    import torch

    return torch.cat(list(tensor_chunks(name, shape, dtype, seed, lm_head_from))).reshape(shape)


def _header(entries, itemsize: int, st_dtype: str) -> tuple[bytes, list]:
    """safetensors header as the Rust library writes it: tensors sorted by name (single
    dtype), {"__metadata__"} first, compact JSON padded with spaces to 8 bytes."""
    entries = sorted(entries)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in entries:
        nbytes = itemsize * math.prod(shape)
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, entries


def write_safetensors(
    path: Path, entries, dtype: str, seed: int, lm_head_from: str | None = None, progress=None
) -> None:
    """Write one safetensors file tensor by tensor; memory use is one chunk. `progress(nbytes)`, if
    given, is called with the size of each chunk written."""
    import torch

    _, st_dtype, itemsize = _DTYPES[dtype]
    head, entries = _header(entries, itemsize, st_dtype)
    with open(path, "wb") as f:
        f.write(head)
        for name, shape in entries:
            for chunk in tensor_chunks(name, shape, dtype, seed, lm_head_from):
                data = chunk.view(torch.uint8).numpy().data
                f.write(data)
                if progress:
                    progress(data.nbytes)


def _shard(entries, itemsize: int, max_bytes: int) -> list[list]:
    """huggingface_hub's split_torch_state_dict_into_shards: fill shards in state_dict
    order, start a new one when the next tensor would overflow, oversize tensors alone."""
    shards, cur, cur_size = [], [], 0
    for name, shape in entries:
        size = itemsize * math.prod(shape)
        if size > max_bytes:
            shards.append([(name, shape)])
            continue
        if cur and cur_size + size > max_bytes:
            shards.append(cur)
            cur, cur_size = [], 0
        cur.append((name, shape))
        cur_size += size
    if cur:
        shards.append(cur)
    return shards


def plan_files(
    config: dict, dtype: str = "bfloat16", shard_size_bytes: int | None = None, *, tied_lm_head: bool = False
) -> dict[str, list]:
    """File name -> [(tensor name, shape)] as make_checkpoint writes them (no I/O).
    One file is model.safetensors; several use the hub's model-0000i-of-0000n names."""
    entries = weight_shapes(config, tied_lm_head=tied_lm_head)
    shards = _shard(entries, _DTYPES[dtype][2], shard_size_bytes or HUB_SHARD_SIZE)
    if len(shards) == 1:
        return {"model.safetensors": shards[0]}
    return {f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors": s for i, s in enumerate(shards)}


# --------------------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------------------


def _write_json(path: Path, obj, indent: int = 2, sort_keys: bool = True, end: str = "\n") -> None:
    # Default: transformers' formatting (to_json_file, the safetensors index).
    path.write_text(json.dumps(obj, indent=indent, sort_keys=sort_keys) + end)


def make_checkpoint(
    out_dir,
    config: dict,
    *,
    dtype: str = "bfloat16",
    seed: int = 0,
    shard_size_bytes: int | None = None,
    tokenizer: bool = True,
    generation_config: dict | None = None,
    tied_lm_head: bool = False,
    progress=None,
) -> Path:
    """Write a random-weight HF checkpoint for ``config`` into ``out_dir``.

    shard_size_bytes=None shards like the Qwen3 hub repos (4 GB files), so tiny models
    get a single model.safetensors and the real Qwen3 configs get the hub's file names.
    tied_lm_head also stores lm_head.weight (equal to the embedding) in a tied model.
    progress(done, total), if given, is called with the weight bytes written so far and in all
    as each chunk is written (a real-size checkpoint takes a minute or more).
    Same arguments -> identical bytes.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(config)
    cfg["torch_dtype"] = dtype  # describe the weights actually written
    if "dtype" in cfg:
        cfg["dtype"] = dtype
    # Formatted like Qwen3's hub files (byte-identical for the real configs).
    _write_json(out / "config.json", cfg, end="")
    gen = generation_config or default_generation_config(cfg)
    _write_json(out / "generation_config.json", gen, indent=4, sort_keys=False, end="")

    files = plan_files(cfg, dtype, shard_size_bytes, tied_lm_head=tied_lm_head)
    # A stored lm_head of a tied model is a copy of the embedding (model.language_model.* in
    # multimodal wrappers, whose tie_word_embeddings sits in text_config).
    from support.expected_tensors import read_by_family

    names = [name for entries in files.values() for name, _ in entries]
    lm_head_from = None
    if tied_lm_head and "lm_head.weight" not in read_by_family(cfg):
        lm_head_from = next(name for name in names if name.endswith("embed_tokens.weight"))
    itemsize = _DTYPES[dtype][2]
    total = sum(itemsize * math.prod(shape) for entries in files.values() for _, shape in entries)
    done = 0

    def written(nbytes: int) -> None:
        nonlocal done
        done += nbytes
        progress(done, total)

    for old in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()  # stale shards from an earlier run would confuse loaders
    for fname, entries in files.items():
        write_safetensors(out / fname, entries, dtype, seed, lm_head_from, progress=written if progress else None)
    if len(files) > 1:
        weight_map = {name: fname for fname, entries in files.items() for name, _ in entries}
        _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})

    if tokenizer:
        for f in sorted(TOKENIZER_DIR.iterdir()):
            if f.is_file():
                shutil.copyfile(f, out / f.name)
    return out


def make_real_checkpoint(name: str, out_dir, *, dtype: str = "bfloat16", seed: int = 0, progress=None) -> Path:
    """Random weights in the exact file layout of a published model (REAL_CONFIGS key)."""
    return make_checkpoint(
        out_dir,
        REAL_CONFIGS[name],
        dtype=dtype,
        seed=seed,
        generation_config=REAL_GENERATION_CONFIGS[name],
        tied_lm_head=name in HUB_TIED_LM_HEAD,
        progress=progress,
    )


# --------------------------------------------------------------------------------------
# Tokenizer (built once by build_tokenizer(); the files are shipped in synthetic_tokenizer/)
# --------------------------------------------------------------------------------------

# Qwen2/Qwen3 pre-tokenizer regex (as in their tokenizer.json).
_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501

_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = """\
The small town sat at the edge of a wide river, and every morning the people who lived
there walked down to the water to watch the boats go by. Some of them carried bread and
coffee, some carried nothing at all, and a few of the older men brought long wooden
fishing poles that they had made themselves many years before.

Hello world! This is a simple story about time, weather, work and the people of the town.
In the spring the rain came often, and the river rose until it touched the lowest steps
of the old stone bridge. In the summer the sun was hot and bright, the children swam in
the shallow water near the bank, and their parents sat in the shade and talked about the
market, the price of apples, and the news from the city.

The teacher at the school liked to say that a good question is worth more than a quick
answer. She asked her students to write one question every day in a small notebook. What
is the river made of? Why does the moon change its shape? How many stars can a person
count in one night? Where do the birds go when the weather turns cold?

One student, a quiet girl named Anna, wrote: "If I follow the river, where will it take
me?" The teacher smiled and said that the river would take her to the sea, and that the
sea would take her to every other place in the world, if she was patient and brave.

In the autumn the leaves turned red and gold, and the wind carried them across the roads
and into the open windows of the houses. The baker made apple cakes, the farmers brought
their last vegetables to the market, and the evenings grew long and dark. People lit
their lamps early and read books, played music, or told stories by the fire.

The winter of 1987 was the coldest anyone could remember. For 42 days the river was
covered with ice, and on the 7th of January the whole town went out to walk on it. They
laughed, they fell, they helped each other stand up again. Later, the mayor said it was
the best day the town had seen in 100 years, and nobody argued with him.

Numbers, names and dates: 0 1 2 3 4 5 6 7 8 9, 10, 25, 3.14, 2024-05-17, 12:30.
Questions and answers, lists and notes; commas, periods, colons: and (brackets) too.
It's, don't, we're, they've, I'm, you'll, she'd - the words that people use every day.

When Anna grew up, she did follow the river. She worked on a boat, then on a ship, and
she saw the cities and the mountains and the deserts she had read about as a child. But
every year, when the first snow fell, she came back to the small town by the river, and
she walked down to the water in the morning, just as she had done when she was young.
"""


def build_tokenizer(out_dir=TOKENIZER_DIR, vocab_size: int = ENDOFTEXT_ID) -> Path:
    """Train the byte-level BPE on _CORPUS and write the HF tokenizer files.

    Run once; the output is committed. The pipeline mirrors Qwen2's tokenizer.json
    (NFC, regex split + ByteLevel, ByteLevel decoder) so that both transformers'
    Qwen2Tokenizer and onnxruntime-extensions treat it as a Qwen tokenizer.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        special_tokens=[],
    )
    tok.train_from_iterator([_CORPUS], trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"corpus too small: got {tok.get_vocab_size()} tokens, want {vocab_size}")
    # Appended after training so they get the last ids, as in Qwen's vocab.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])

    # The Python API drops some flags when serializing; patch the JSON so it matches
    # Qwen2's tokenizer.json field for field (other readers may look at them).
    spec = json.loads(tok.to_str())
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    spec["decoder"] = dict(byte_level)
    spec["post_processor"] = dict(byte_level)
    spec["model"].update(continuing_subword_prefix="", end_of_word_suffix="")
    tok = Tokenizer.from_str(json.dumps(spec))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    _write_json(
        out / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": added,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": None,
            "chat_template": _CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 256,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    _write_json(
        out / "special_tokens_map.json",
        {
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "eos_token": {
                "content": "<|im_end|>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            },
            "pad_token": {
                "content": "<|endoftext|>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            },
        },
    )
    return out
