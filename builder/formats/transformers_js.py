"""The transformers.js folder (@huggingface/transformers 4).

Layout, as transformers.js 4.3 loads a decoder-only model (src/models/session.js,
src/utils/model-loader.js, src/utils/dtypes.js):

    config.json                  the checkpoint's, plus a "transformers.js_config" entry
    generation_config.json       tokenizer files next to it
    onnx/model{suffix}.onnx      suffix from the dtype: '' fp32, _fp16, _q4f16, _q4, _int8
    onnx/model{suffix}.onnx_data, model{suffix}.onnx_data_1, ...   the external data chunks

transformers.js fetches each external data chunk whole (in the browser into one
ArrayBuffer), so data past CHUNK_BYTES goes into further chunks and
use_external_data_format says how many there are.

It also makes the first (empty) past tensors from the dims the graph declares:
the symbol `batch_size` becomes the batch, every other symbol 0. So each cache
input must declare its head count, head size and state dims as numbers; a
symbolic head size became 0 and GroupQueryAttention rejected it (REFERENCE 3e).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from onnx import TensorProto

from builder.kit.errors import BuilderError, write_failed

# (precision, activation dtype) -> transformers.js dtype and file suffix (DEFAULT_DTYPE_SUFFIX_MAPPING).
DTYPES: dict[tuple[str, str], tuple[str, str]] = {
    ("fp32", "float32"): ("fp32", ""),
    ("fp16", "float16"): ("fp16", "_fp16"),
    ("int4", "float16"): ("q4f16", "_q4f16"),  # 4-bit block weights, fp16 activations
    ("int4", "float32"): ("q4", "_q4"),  # 4-bit block weights, fp32 activations
    ("int8", "float32"): ("int8", "_int8"),
}

# The model_type values transformers.js 4.3.2 (examples/web/package.json) has a causal-LM class for
# (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES); AutoModelForCausalLM refuses any other ("Unsupported model type").
MODEL_TYPES = frozenset(
    "afmoe apertus arcee bloom codegen cohere cohere2 deepseek_v3 deepseek_v4 ernie4_5 exaone falcon falcon_h1 "
    "gemma gemma2 gemma3 gemma3_text gemma3n gemma4 glm glm_moe_dsa gpt2 gpt_bigcode gpt_neo gpt_neox gpt_oss "
    "gptj granite granitemoehybrid helium hrm_text hunyuan_v1_dense jais lfm2 lfm2_moe lfm3 llama llama4_text "
    "mbart ministral ministral3 mistral mistral4 mobilellm modernbert-decoder mpt nanochat nemotron_h olmo "
    "olmo2 olmo3 olmo_hybrid openelm opt phi phi3 phi3_v qwen2 qwen2_5_vl qwen2_moe qwen2_vl qwen3 qwen3_5 "
    "qwen3_5_moe qwen3_5_text qwen3_moe qwen3_next qwen3_vl qwen3_vl_moe smollm3 solar_open stablelm starcoder2 "
    "trocr vaultgemma youtu zaya".split()
)

# Text model types transformers.js 4.3 runs only under their multimodal parent's type (registry.js
# maps qwen3_5_moe to Qwen3_5MoeForCausalLM, and has no qwen3_5_moe_text): the folder's config.json
# nests the text config under that type, as the hub's checkpoints have it.
NESTED_TYPES = {"qwen3_5_moe_text": ("qwen3_5_moe", "Qwen3_5MoeForCausalLM")}

# Below 2 GiB: browsers fetch each chunk into one ArrayBuffer.
CHUNK_BYTES = 2_000_000_000

# onnxruntime-genai's names for the states of linear-attention layers (Qwen3.5, Qwen3-Next)
# -> transformers.js's (configs.js getCacheNames; modeling_utils.js getPastKeyValues maps
# present_conv.N to past_conv.N and present_recurrent.N to past_recurrent.N).
_STATE_RENAMES = [(re.compile(r"^(past|present)\.(\d+)\.(conv|recurrent)$"), r"\1_\3.\2")]

# Inputs transformers.js feeds to a decoder (modeling_utils.js decoder_forward,
# configs.js getCacheNames): anything else would be missing at run time.
_FED_INPUTS = re.compile(
    r"^(input_ids|attention_mask|position_ids|num_logits_to_keep"
    r"|past_key_values\.\d+\.(key|value)|past_conv\.\d+|past_recurrent\.\d+)$"
)


class TransformersJsFolder:
    name = "transformers.js"
    config_file = "config.json"  # transformers.js reads the model's config as the hub has it

    def __init__(self, arch):
        self.arch = arch
        io = np.dtype(arch.io_dtype).name
        key = (arch.options.precision, io)
        if key not in DTYPES:
            raise BuilderError(
                f"--format transformers.js has no dtype for -p {arch.options.precision} with {io} activations "
                "(transformers.js names fp32, fp16, q4, q4f16 and int8 files); "
                + ("add --io-dtype fp32" if arch.options.precision == "int8" else "choose another -p")
            )
        self.dtype, self.suffix = DTYPES[key]
        model_type = arch.config.get("model_type")
        model_type = NESTED_TYPES.get(model_type, (model_type,))[0]
        if model_type not in MODEL_TYPES:  # a fine-tune's own type, copied from its config.json
            own = type(arch).__module__.split(".")[0] == "architectures"  # a built-in family: no hook to name
            arch.warnings.append(
                f"config.json's model_type {model_type!r} is none transformers.js 4.3 has a model class for: "
                "it will refuse this folder (Unsupported model type)"
                + (
                    ""
                    if own
                    else "; the family names the type of the model it follows in its model_config() "
                    "(docs/architecture.md)"
                )
            )
        self.model_name = f"model{self.suffix}.onnx"
        self.model_file = f"onnx/{self.model_name}"
        self.data_file = f"onnx/{self.model_name}_data"
        self.chunks = [self.data_file]

    # ---- the graph ----------------------------------------------------------

    def finish_model(self, model, staging: Path) -> None:
        rename_states(model)
        check_inputs(model)
        self.chunks = split_external_data(model, staging / "onnx", self.model_name, CHUNK_BYTES)

    def data_files(self, staging: Path) -> list[str]:
        return list(self.chunks)

    # ---- configs ------------------------------------------------------------

    def write_configs(self, staging: Path, generation: dict | None) -> list[str]:
        # The family's transformers defaults for keys the checkpoint leaves out (Mistral's 8 KV heads,
        # Qwen3's head_dim 128): the graph was built with them, and transformers.js has its own.
        config = {**getattr(self.arch, "config_defaults", {}), **self.arch.config}
        names = config.get("architectures") or []
        if names and names[0].endswith("ForConditionalGeneration"):
            # Only the text model is built. Under its ForConditionalGeneration name transformers.js
            # would load the multimodal layout (onnx/embed_tokens + onnx/decoder_model_merged);
            # the ForCausalLM name keeps the one-session decoder (models/modeling_utils.js
            # resolveTypeConfig). A nested text_config stays: getCacheNames reads layer_types there.
            config["architectures"] = [names[0].replace("ForConditionalGeneration", "ForCausalLM")]
        layer_types = self.arch.spec.layer_types
        if layer_types:
            # Hybrid models: transformers.js finds each layer's cache inputs through layer_types
            # (configs.js getCacheNames), which configs may leave to full_attention_interval.
            if isinstance(config.get("text_config"), dict):
                config["text_config"] = {"layer_types": list(layer_types), **config["text_config"]}
            else:
                config.setdefault("layer_types", list(layer_types))
        # The graph's rotary cache ends at the build's context length; transformers.js does not
        # know it otherwise, and a longer generation fails inside onnxruntime (cos_cache).
        context = getattr(self.arch, "context_length", None)  # a stand-in arch may not plan one
        if context:
            config["max_position_embeddings"] = context
        nested = NESTED_TYPES.get(config.get("model_type"))
        if nested:
            text = {k: v for k, v in config.items() if k != "architectures"}
            config = {"model_type": nested[0], "architectures": [nested[1]], "text_config": text}
        config["transformers.js_config"] = {
            "dtype": self.dtype,
            "use_external_data_format": {self.model_name: len(self.chunks)},
        }
        (staging / self.config_file).write_text(json.dumps(config, indent=2) + "\n")
        written = [self.config_file]
        if generation is None:
            # transformers.js takes eos/bos from here; a checkpoint without the file
            # gets the ids its config.json names.
            generation = {
                k: self.arch.config[k]
                for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                if self.arch.config.get(k) is not None
            }
            (staging / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
            written.append("generation_config.json")
        return written

    def describe(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "model": self.model_file, "data": list(self.chunks)}


def rename_states(model) -> None:
    """Give recurrent-state inputs and outputs the names transformers.js feeds and reads."""

    def renamed(name: str) -> str:
        for pattern, replacement in _STATE_RENAMES:
            name = pattern.sub(replacement, name)
        return name

    graph = model.graph
    names = {v.name for v in list(graph.input) + list(graph.output)}
    mapping = {n: renamed(n) for n in names if renamed(n) != n}
    if not mapping:
        return
    for value in list(graph.input) + list(graph.output):
        value.name = mapping.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]


def check_inputs(model) -> None:
    """Every input is one transformers.js feeds, and every cache input has numeric dims
    except the batch (and the past sequence of a KV cache)."""
    for value in model.graph.input:
        name = value.name
        if not _FED_INPUTS.match(name):
            raise BuilderError(
                f"--format transformers.js: the graph input {name!r} is not one transformers.js "
                "feeds to a decoder; this architecture cannot be written in that format yet"
            )
        if not name.startswith("past_"):
            continue
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        free = {0, 2} if name.startswith("past_key_values.") else {0}
        bad = [i for i, d in enumerate(dims) if isinstance(d, str) and i not in free]
        if dims[0] != "batch_size" or bad:
            raise BuilderError(
                f"--format transformers.js: cache input {name} declares dims {dims}; transformers.js "
                "makes its first (empty) value from them and turns every symbol but batch_size "
                "into 0, so the model's fixed sizes must be numbers (builder bug, please report)"
            )


def split_external_data(model, folder: Path, model_name: str, limit: int) -> list[str]:
    """Move data past `limit` bytes into chunk files named as transformers.js loads them.

    The data file was written in one pass; chunk 0 keeps its first bytes (truncated
    in place), later chunks get copies of their ranges, and each tensor's location
    and offset are rewritten. Offsets stay 4096-aligned: chunks start at a tensor.
    """
    first = f"{model_name}_data"
    tensors = []
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {e.key: e for e in tensor.external_data}
        tensors.append((int(entries["offset"].value), int(entries["length"].value), entries))
    tensors.sort(key=lambda t: t[0])
    starts, chunk_of = [0], []
    for offset, length, _ in tensors:
        if offset + length - starts[-1] > limit and offset > starts[-1]:
            starts.append(offset)
        chunk_of.append(len(starts) - 1)
    if len(starts) == 1:
        return [f"onnx/{first}"]
    names = [first] + [f"{first}_{k}" for k in range(1, len(starts))]
    ends = starts[1:] + [os.path.getsize(folder / first)]
    try:
        with open(folder / first, "r+b") as source:
            for k in range(1, len(starts)):
                source.seek(starts[k])
                remaining = ends[k] - starts[k]
                with open(folder / names[k], "wb") as out:
                    while remaining:
                        block = source.read(min(remaining, 64 << 20))
                        out.write(block)
                        remaining -= len(block)
                    out.flush()
                    os.fsync(out.fileno())
            source.truncate(starts[1])
    except OSError as e:
        raise write_failed(folder, e, "writing the external data chunks in ") from None
    for (offset, _, entries), k in zip(tensors, chunk_of):
        entries["location"].value = names[k]
        entries["offset"].value = str(offset - starts[k])
    return [f"onnx/{n}" for n in names]
