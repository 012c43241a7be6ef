"""Every build option, in one typed place.

The CLI (`python -m builder --help`), the Python API and the YAML batch files
all read this schema: a field's name is its YAML key, its `flags` are its CLI
spellings, and its `help` is the help text. Validation lives here too, so a
misspelled or out-of-range option is refused the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Any

from builder.kit.errors import BuilderError, shown
from quant import BLOCK_SIZES

# Past the largest machines' logical CPUs: the runtime starts every thread asked for, and
# 99,999 of them took 16.5 GB before the first token.
MAX_INTRA_OP_THREADS = 1024

PRECISIONS = ("int4", "int8", "fp16", "fp32", "bf16")
EPS = ("cpu", "cuda", "webgpu", "dml")
QKV_PACKINGS = ("auto", "packed-split", "separate", "fused-norm")
MLP_PACKINGS = ("auto", "packed", "separate")
SILU_FORMS = ("auto", "quickgelu", "sigmoid-mul")
HEAD_NORMS = ("auto", "reshape-sln", "branchwise")
FORMATS = ("genai", "transformers.js")
IO_DTYPES = ("auto", "fp16", "fp32")
RESIDUAL_DTYPES = ("auto", "fp16", "fp32")
GRAPH_CAPTURE = ("auto", "on", "off")
LOGITS = ("auto", "last", "all")
INT32_INPUTS = ("auto", "on", "off")
PADDED_BATCHES = ("auto", "on", "off")


def _opt(
    *flags: str,
    help: str,
    choices: tuple | None = None,
    metavar: str | None = None,
    cli: bool = True,
    rebuild: str = "compare",
) -> dict:
    """An option's CLI flags and help; rebuild: how batch decides that an existing output still
    fits a job with this option: "compare" its value as written, "resolved" compare what the plan
    resolves it to (auto, or a default left unwritten, against the value written out), "never"
    (it does not change the built files: where they go, how the checkpoint is read; the model is
    compared by its checkpoint's fingerprint, not by how its path is spelled)."""
    return {"flags": flags, "help": help, "choices": choices, "metavar": metavar, "cli": cli, "rebuild": rebuild}


@dataclass
class BuildOptions:
    model: str = field(
        default="",
        metadata=_opt(
            "-m",
            "--model",
            metavar="PATH_OR_ID",
            help="Hugging Face checkpoint: a local folder (config.json + *.safetensors) or a hub id "
            "such as Qwen/Qwen3-4B, resolved through the Hugging Face cache.",
            rebuild="never",
        ),
    )
    family: str | None = field(
        default=None,
        metadata=_opt(
            "--family",
            metavar="NAME",
            help="The builder class to build with instead of the one registered for config.json's "
            "architectures: an HF architecture name a family is registered under (LlamaForCausalLM), "
            "or module:Class of your own, imported from the current folder or PYTHONPATH "
            "(my_families.helium:HeliumBuilder; docs/architecture.md); in a batch file, imported from "
            "the folder the batch runs in.",
        ),
    )
    precision: str = field(
        default="int4",
        metadata=_opt(
            "-p",
            "--precision",
            choices=PRECISIONS,
            help="Weight precision. int4/int8 use MatMulNBits; fp16/fp32 keep float weights. "
            "bf16 is refused on every target for now (no target was verified to load it).",
        ),
    )
    ep: str = field(
        default="cpu",
        metadata=_opt("-e", "--ep", choices=EPS, help="Execution provider the model is built for."),
    )
    output: str | None = field(
        default=None,
        metadata=_opt(
            "-o",
            "--output",
            metavar="DIR",
            help="Output folder. Default: out/<model name>-<precision>-<ep> in lower case, "
            "plus -transformers-js for that format.",
            rebuild="never",
        ),
    )
    format: str = field(
        default="genai",
        metadata=_opt(
            "--format",
            choices=FORMATS,
            help="Output folder layout. genai: model.onnx, model.onnx.data and genai_config.json "
            "for onnxruntime-genai. transformers.js: onnx/model{suffix}.onnx with its "
            "external data and config.json with a transformers.js_config entry, for "
            "transformers.js 4 in the browser or Node (suffix from precision and "
            "activations: '' fp32, _fp16, _q4f16, _q4, _int8).",
        ),
    )
    io_dtype: str = field(
        default="auto",
        metadata=_opt(
            "--io-dtype",
            choices=IO_DTYPES,
            help="Activation dtype (inputs, outputs, KV cache) of an int4/int8 build. fp32 on "
            "webgpu serves GPUs without shader-f16 (e.g. SwiftShader in headless Chromium). "
            "auto: fp32 on cpu, fp16 on GPU EPs (where a family's residual stream overflows fp16, "
            "as Gemma 3's, --residual-dtype keeps that in fp32). fp16 and fp32 builds keep their own dtype.",
            rebuild="resolved",
        ),
    )
    residual_dtype: str = field(
        default="auto",
        metadata=_opt(
            "--residual-dtype",
            choices=RESIDUAL_DTYPES,
            help="dtype of the residual stream (the sums between blocks and the hidden-size norms) "
            "in a build with fp16 activations. fp32: those adds and norms run in float32, each "
            "block (attention, MLP) casts its input to fp16 and its output back, as the reference "
            "builder writes Gemma 2/3; sums past fp16's 65504 stay finite. auto: fp32 for a family "
            "whose residual stream overflows fp16 (Gemma 3), else fp16. Builds with fp32 "
            "activations keep everything in fp32.",
            rebuild="resolved",
        ),
    )
    block_size: int = field(
        default=32,
        metadata=_opt(
            "--block-size", choices=BLOCK_SIZES, help="Quantization block size along the input dimension (int4/int8)."
        ),
    )
    symmetric: bool = field(
        default=True,
        metadata=_opt(
            "--symmetric", help="Symmetric quantization (no zero points). --no-symmetric stores a zero point per block."
        ),
    )
    accuracy_level: int | None = field(
        default=None,
        metadata=_opt(
            "--accuracy-level",
            choices=(0, 1, 2, 3, 4),
            help="MatMulNBits accuracy_level: the lowest precision the kernel may compute in "
            "(4 = int8 activations; on cpu, 8-bit weights run fast only at 4). Default: 4 for cpu and webgpu, "
            "0 for cuda and dml. On webgpu with --block-size 256, projections whose in-width is no multiple "
            "of 256 take 0: the WebGPU EP computes them wrong at 4.",
            rebuild="resolved",
        ),
    )
    int8_layers: list[str] = field(
        default_factory=list,
        metadata=_opt(
            "--int8-layers",
            metavar="PATTERN",
            help="Projections kept at int8 in an int4 build: Hugging Face module names or "
            "glob patterns, e.g. lm_head or '*.v_proj'. Repeat or separate by commas.",
            rebuild="resolved",  # the format each projection gets, not the patterns' order or spelling
        ),
    )
    float_layers: list[str] = field(
        default_factory=list,
        metadata=_opt(
            "--float-layers",
            metavar="PATTERN",
            help="Projections kept in float (the model's activation dtype) in an int4/int8 build, "
            "e.g. lm_head, or model.embed_tokens for a float embedding table (int4 builds "
            "gather from an int4 table otherwise). Same pattern syntax as --int8-layers; where "
            "patterns of both match a projection, it stays float.",
            rebuild="resolved",  # as --int8-layers
        ),
    )
    qkv_packing: str = field(
        default="auto",
        metadata=_opt(
            "--qkv-packing",
            choices=QKV_PACKINGS,
            help="Attention projection layout. packed-split: one QKV MatMul, Split, per-head "
            "Q/K norm, GroupQueryAttention. separate: three MatMuls. fused-norm: packed "
            "MatMul with the Q/K norm inside GroupQueryAttention (cuda/webgpu, ORT >= 1.28). "
            "auto: the measured best for the EP and --target-ort (see docs/packing.md).",
            rebuild="resolved",
        ),
    )
    mlp_packing: str = field(
        default="auto",
        metadata=_opt(
            "--mlp-packing",
            choices=MLP_PACKINGS,
            help="MLP layout: packed (one gate_up MatMul + Split) or separate gate and up "
            "MatMuls. auto: the measured best for the EP.",
            rebuild="resolved",
        ),
    )
    silu: str = field(
        default="auto",
        metadata=_opt(
            "--silu",
            choices=SILU_FORMS,
            help="How the MLP's SiLU is written: quickgelu (one com.microsoft QuickGelu node, "
            "alpha=1) or sigmoid-mul (Sigmoid and Mul). Same numbers; auto: the measured "
            "best for the EP (docs/packing.md).",
            rebuild="resolved",
        ),
    )
    head_norm: str = field(
        default="auto",
        metadata=_opt(
            "--head-norm",
            choices=HEAD_NORMS,
            help="Form of the per-head RMSNorms (the Q/K norms of QK-norm models, unless "
            "--qkv-packing fused-norm puts them inside GroupQueryAttention, and Qwen3.5's linear "
            "attention norms): reshape-sln (Reshape, SimplifiedLayerNormalization, Reshape; every "
            "EP) or branchwise (one com.microsoft BranchwiseRMSNorm; cpu, ORT >= 1.31). auto: "
            "reshape-sln, measured faster on cpu, but branchwise for the hybrids (Qwen3.5, "
            "Qwen3-Next) on cpu targets that run it (not --format transformers.js, whose "
            "onnxruntime-node 1.30 lacks it), measured faster on Qwen3.5 (docs/packing.md).",
            rebuild="resolved",
        ),
    )
    target_ort: str | None = field(
        default=None,
        metadata=_opt(
            "--target-ort",
            metavar="VERSION",
            help="ONNX Runtime version the model must run on. Ops or inputs that version rejects "
            "are never emitted. For webgpu it also names the runtime: 1.28 and later is "
            "onnxruntime with the WebGPU plugin EP (onnxruntime-ep-webgpu, what "
            "onnxruntime-genai >= 0.18 users install), 1.27 and earlier the onnxruntime-webgpu "
            "package (its last release is 1.27). Default: the installed runtime for the EP "
            "(onnxruntime, onnxruntime-gpu, onnxruntime + onnxruntime-ep-webgpu or "
            "onnxruntime-webgpu, onnxruntime-directml), else the release this builder's table names "
            "for it (cpu, cuda, webgpu: 1.31, webgpu with the plugin EP; 1.32 changes none of the "
            "graphs; dml: 1.24, the newest onnxruntime-directml on PyPI). With --format transformers.js it is the "
            "onnxruntime-web (webgpu) or onnxruntime-node (others) inside your transformers.js; "
            "default: what transformers.js 4.3 pins (onnxruntime-node 1.30, onnxruntime-web 1.31).",
            rebuild="resolved",
        ),
    )
    graph_capture: str = field(
        default="auto",
        metadata=_opt(
            "--graph-capture",
            choices=GRAPH_CAPTURE,
            help="Write a graph the runtime can capture and replay for each decode step "
            "(genai_config enableGraphCapture; every node on the GPU, attention-mask "
            "arithmetic in int32 without Shape). auto: on where the target runtime captures "
            "(webgpu with the plugin EP) unless the model has sliding-window layers, a head_dim that is "
            "no multiple of 16, or a generation_config.json with num_beams > 1 and do_sample false (beam "
            "search; beam sampling gets num_beams 1, as do the models with recurrent layers, Qwen3.5 and "
            "Qwen3-Next, so those keep capture); off elsewhere. "
            "off: the uncaptured graph, for beam search (onnxruntime-genai refuses capture "
            "with num_beams > 1), for its og.Engine (it crashed on a capture build), and for profiling "
            "or debugging one kernel at a time; it decoded 0.78x as fast (docs/packing.md#graph-capture).",
            rebuild="resolved",
        ),
    )
    max_length: int | None = field(
        default=None,
        metadata=_opt(
            "--max-length",
            metavar="N",
            help="search.max_length in genai_config.json: prompt plus generated tokens when the "
            "caller sets none. onnxruntime-genai allocates the shared KV buffers at this "
            "length up front (with graph capture they cannot grow). Default: 4096, or "
            "--context-length if smaller (docs/packing.md#max-length). At most --context-length; "
            "a caller may still ask for more up to it.",
            rebuild="resolved",
        ),
    )
    logits: str = field(
        default="auto",
        metadata=_opt(
            "--logits",
            choices=LOGITS,
            help="Which positions get logits. last: each batch row's last token of the call (the "
            "one onnxruntime-genai samples from; it pads batched prompts on the right), so a "
            "prompt skips the lm_head for its other tokens: prefill of Qwen3-0.6B int4 took "
            "0.32x the time on webgpu and 0.70-0.83x on cpu (Qwen3.5-0.8B 0.60x), decode unchanged "
            "(docs/packing.md#last-token-logits). all: every position, for scoring a whole text "
            "(perplexity), for onnxruntime-genai's og.Engine (it refuses last-token graphs; on webgpu "
            "build it with --graph-capture off too) and its "
            "speculative decoding (with last-token logits it refuses n-gram drafts and verifies a "
            "draft model's tokens one run each). auto: last for "
            "--format genai builds (except webgpu targets up to 1.27, the onnxruntime-webgpu package, not run "
            "with it, and targets "
            "below 1.24, whose onnxruntime-genai (0.11 and older) fails on it, and builds for the installed "
            "onnxruntime beside an onnxruntime-genai older than 0.12.2, which fails on it too, which get all); "
            "--format transformers.js builds get a "
            "num_logits_to_keep input instead, which transformers.js sets to 1 when it generates "
            "and to 0 (every position) when it scores.",
            rebuild="resolved",
        ),
    )
    int32_inputs: str = field(
        default="auto",
        metadata=_opt(
            "--int32-inputs",
            choices=INT32_INPUTS,
            help="input_ids and attention_mask as int32 instead of int64, with the same logits. "
            "onnxruntime-genai holds its tokens as int32 and casts them for an int64 graph (on webgpu "
            "in a second onnxruntime session), yet on the WebGPU plugin EP a capture build of Qwen3 "
            "int4 decoded 0.95-0.97x as fast with int32 input_ids on an H100 (0.6B and 4B; 1.00-1.06x on "
            "an H200: docs/webgpu-decode.md). auto: off, the int64 that other callers of an LLM "
            "graph feed too (onnxruntime-genai's og.Engine among them). Not with --format "
            "transformers.js, which feeds int64.",
            rebuild="resolved",
        ),
    )
    padded_batches: str = field(
        default="auto",
        metadata=_opt(
            "--padded-batches",
            choices=PADDED_BATCHES,
            help="For models with recurrent layers (Gated DeltaNet: Qwen3.5, Qwen3-Next): keep the "
            "pad tokens of onnxruntime-genai's right-padded batches out of each row's conv and "
            "recurrent state, so every row of a batch of unequal prompts decodes as it would alone "
            "(without it the shorter rows' tokens go wrong). Three small ops in each recurrent layer "
            "of every step, and a few shared: decode of Qwen3.5-0.8B int4 0.98x on cpu (2 cores), "
            "0.93x on webgpu with graph capture (plugin EP, H200; at 4B 0.97x, within the noise; "
            "docs/packing.md#padded-batches). "
            "auto: on, except for graph-capture builds (which mostly serve one sequence at a time; "
            "their build warns). --format genai only (transformers.js folders handle their left "
            "padding themselves).",
            rebuild="resolved",
        ),
    )
    context_length: int | None = field(
        default=None,
        metadata=_opt(
            "--context-length",
            metavar="N",
            help="Longest sequence the model serves (rotary cache size and genai context_length; "
            "and the most search.max_length may be). "
            "Default: the config's max_position_embeddings. More than the model supports "
            "(max_position_embeddings, or its rope scaling's length) needs --allow-long-context.",
            rebuild="resolved",
        ),
    )
    allow_long_context: bool = field(
        default=False,
        metadata=_opt(
            "--allow-long-context",
            help="Accept a --context-length beyond what the model supports. The model was not "
            "trained for those positions, and onnxruntime-genai allocates the KV cache for "
            "the whole length.",
            rebuild="resolved",  # it only permits a length: the context length it resolves to is compared
        ),
    )
    intra_op_threads: int | None = field(
        default=None,
        metadata=_opt(
            "--intra-op-threads",
            metavar="N",
            help="intra_op_num_threads written to genai_config.json: the threads ONNX Runtime "
            "splits each operator over. 0: ONNX Runtime's default, one per physical core. "
            "-1: write nothing, so onnxruntime-genai uses its fallback (half the logical "
            "CPUs, at most 16). At most 1024. Default: 0 for cpu (genai's fallback left half of a "
            "machine without SMT idle; docs/packing.md#threads), -1 for the GPU EPs.",
            rebuild="resolved",
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=_opt(
            "--overwrite",
            help="Replace the output folder if it exists, was made by this builder and holds only "
            "what its build wrote (anything else is named and kept).",
            rebuild="never",
        ),
    )
    verify: bool = field(
        default=False,
        metadata=_opt(
            "--verify",
            help="Before publishing the folder, compare its logits with transformers "
            "running the same (dequantized) weights; a mismatch fails the build. "
            "Needs transformers. cpu builds only: other EPs record 'not run'.",
            rebuild="never",
        ),
    )
    checkpoint_hash: bool = field(
        default=False,
        metadata=_opt(
            "--checkpoint-hash",
            help="Identify the checkpoint in build_report.json by a SHA-256 of its weight files "
            "(reads them once more) instead of their size, mtime and inode, so a batch rerun "
            "rebuilds exactly when the weights' bytes changed (or config.json, generation_config.json "
            "or a tokenizer file). Hub-cache files are always "
            "identified by the hash the cache stores them under.",
        ),
    )

    read_ahead_mb: int = field(
        default=256,
        metadata=_opt(
            "--read-ahead-mb",
            metavar="MB",
            help="Checkpoint bytes read ahead of the build on a second thread, so reading overlaps "
            "quantizing and writing (peak memory grows by up to this much). 0: read as the "
            "build goes.",
            rebuild="never",
        ),
    )

    page_cache: bool = field(
        default=False,
        metadata=_opt(
            "--page-cache",
            help="Read the checkpoint through the page cache, leaving it there for the next build "
            "of the same checkpoint (batch sets this on every job whose checkpoint a later job "
            "reads). Default: bytes the cache lacks are read with O_DIRECT, which spares the CPU "
            "the cost of filling the cache.",
            rebuild="never",
        ),
    )

    # ---- validation -------------------------------------------------------

    def validated(self) -> BuildOptions:
        """Check every value; return the checked options, a copy (a Path as text, a tuple or list
        as a new list): build() turned the caller's Path into text and tuple into a list."""
        return dataclasses.replace(self, **self._taken_as_meant())._checked()

    def _checked(self) -> BuildOptions:
        self._check_types()
        if not self.model:
            raise BuilderError("no model given: pass -m/--model with a local folder or a hub id")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                allowed = ", ".join(str(c) for c in choices)
                raise BuilderError(f"{_flag(f)}: {shown(value)} is not valid; choose one of {allowed}")
        if self.family is not None and not self.family.strip():
            raise BuilderError(
                "--family: empty; give a registered architecture name (LlamaForCausalLM) or module:Class"
            )
        if self.context_length is not None and self.context_length < 1:
            raise BuilderError(f"--context-length: {self.context_length} must be a positive integer")
        if self.verify and self.context_length == 1:
            raise BuilderError(
                "--verify needs a context of at least 2 positions (a prompt and one decode step); "
                "raise --context-length or drop --verify"
            )
        if self.precision in ("fp16", "fp32", "bf16") and (self.int8_layers or self.float_layers):
            raise BuilderError("--int8-layers/--float-layers only apply to int4 and int8 builds")
        both = sorted(set(self.int8_layers) & set(self.float_layers))
        if both:
            raise BuilderError(
                f"{', '.join(both)} given to both --int8-layers and --float-layers; keep each pattern in one of them"
            )
        if self.precision == "int8" and self.int8_layers:
            raise BuilderError("--int8-layers has no effect in an int8 build; drop it or build int4")
        if self.output is not None and not str(self.output).strip():
            raise BuilderError("-o/--output is empty; name a folder, or leave -o out for out/<model>-<precision>-<ep>")
        if self.output is not None and str(self.output).strip() == "-":
            # "-" reads as standard output, which a folder of files cannot go to: it built ./-
            raise BuilderError("-o -: the output is a folder, not a stream; name a folder (-o ./- if one named '-')")
        if self.read_ahead_mb < 0:
            raise BuilderError(f"--read-ahead-mb: {self.read_ahead_mb} must be 0 (off) or a size in MB")
        if self.max_length is not None and self.max_length < 1:
            raise BuilderError(f"--max-length: {self.max_length} must be a positive integer")
        # Only genai_config.json holds it; other formats warn that it had no effect instead.
        given = self.max_length is not None and self.context_length is not None
        if given and self.max_length > self.context_length and self.format == "genai":
            raise BuilderError(
                f"--max-length {self.max_length} is larger than --context-length "
                f"{self.context_length}; lower it or raise --context-length"
            )
        if self.intra_op_threads is not None and not -1 <= self.intra_op_threads <= MAX_INTRA_OP_THREADS:
            raise BuilderError(
                f"--intra-op-threads: {self.intra_op_threads} is not valid; use a thread count up to "
                f"{MAX_INTRA_OP_THREADS}, 0 (ONNX Runtime's default) or -1 (onnxruntime-genai's default)"
            )
        if self.io_dtype != "auto" and self.precision in ("fp16", "fp32") and self.io_dtype != self.precision:
            raise BuilderError(
                f"--io-dtype {self.io_dtype} contradicts -p {self.precision} (float weights are "
                f"stored in the activation dtype); use -p {self.io_dtype} or drop --io-dtype"
            )
        if self.padded_batches == "on" and self.format != "genai":
            raise BuilderError(
                f"--padded-batches on: --format {self.format} folders move their own (left) padding; "
                "drop --padded-batches or build --format genai"
            )
        if self.int32_inputs == "on" and self.format != "genai":
            raise BuilderError(
                f"--int32-inputs on: --format {self.format} feeds int64 input_ids; drop "
                "--int32-inputs or build --format genai"
            )
        if self.target_ort is not None:
            parse_version(self.target_ort, "--target-ort")
        return self

    def _taken_as_meant(self) -> dict[str, Any]:
        """Paths as text, tuples as lists and numpy's integers and booleans (a notebook's sweep over
        np.arange, a DataFrame's column) as Python's, what they mean; lists copied, so that the
        plan's options share nothing the caller may change."""
        values = {}
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if isinstance(value, os.PathLike) and f.name in ("model", "output"):
                values[f.name] = os.fspath(value)
            elif isinstance(value, tuple | list) and kind.startswith("list"):
                values[f.name] = list(value)
            elif kind.startswith("int") and isinstance(value, numbers.Integral) and type(value) not in (int, bool):
                values[f.name] = int(value)  # np.int64(64) was refused as "must be an integer"
            elif (
                kind.startswith("bool")
                and type(value).__module__ == "numpy"
                and type(value).__name__ in ("bool", "bool_")
            ):
                values[f.name] = bool(value)  # np.bool_ (its type is named bool from numpy 2)
        return values

    def _check_types(self) -> None:
        """Values set in Python, where no parser converted them: a string block size was refused
        as "'32' is not valid" while naming 32 as valid, overwrite="no" replaced a build, a Path
        output failed after the whole build."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if value is None and "None" in kind:
                continue
            if kind.startswith("list"):
                fits, expected = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of names"
            elif kind.startswith("bool"):
                fits, expected = isinstance(value, bool), "True or False"
            elif kind.startswith("int"):
                fits, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
            else:
                fits, expected = isinstance(value, str), "text"
            if not fits:
                hint = ""
                if f.name == "family" and isinstance(value, type):
                    hint = "; a class goes to build(..., family=MyBuilder)"
                elif f.name == "target_ort" and isinstance(value, float):
                    hint = " (a float drops digits: 1.30 reads 1.3); write '1.30'"
                raise BuilderError(
                    f"BuildOptions({f.name}={shown(value)}): must be {expected}"
                    f"{' or None' if 'None' in kind else ''}{hint}"
                )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], where: str = "options") -> BuildOptions:
        """Build options from YAML/dict keys (CLI long names, '-' or '_')."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in known:
                raise BuilderError(
                    f"{where}: unknown option {raw_key!r}; known options: "
                    + ", ".join(sorted(k.replace("_", "-") for k in known))
                )
            kwargs[key] = _coerce(known[key], value, where)
        return cls(**kwargs)

    @classmethod
    def from_keywords(cls, values: dict[str, Any], where: str) -> BuildOptions:
        """Build options from Python keywords (build(), from_pretrained()): field names, each value
        of its field's type, as BuildOptions(...) takes them. (from_mapping converted YAML's text,
        so build(block_size="64") passed where BuildOptions(block_size="64") was refused.)"""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in known]
        if unknown:
            raise BuilderError(f"{where}: unknown option {unknown[0]!r}; known options: " + ", ".join(sorted(known)))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def inert_options(self) -> list[str]:
        """The options this build cannot use, as field names: set or not, they do not change
        it (a float precision stores no blocks, zero points or MatMulNBits; a transformers.js
        folder has no genai_config.json)."""
        inert = list(QUANTIZATION_ONLY) if self.precision in ("fp16", "fp32", "bf16") else []
        return inert + (list(GENAI_CONFIG_ONLY) if self.format != "genai" else [])

    def genai_config_only_flags(self) -> list[str]:
        """The options given that only genai_config.json holds, as typed, where the format
        writes no genai_config.json (they were taken and dropped in silence)."""
        if self.format == "genai":
            return []
        given = [n for n in GENAI_CONFIG_ONLY if getattr(self, n) is not None]
        return [f"--{n.replace('_', '-')} {getattr(self, n)}" for n in given]

    def unused_flags(self) -> list[str]:
        """The inert options given other than their defaults, as the flags a user typed."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        shown = []
        for name in (n for n in self.inert_options() if n in QUANTIZATION_ONLY):
            value = getattr(self, name)
            if value != defaults[name]:
                flag = "--no-symmetric" if name == "symmetric" and not value else f"--{name.replace('_', '-')} {value}"
                shown.append(flag)
        return shown


def options_one_way(options: Any, values: dict[str, Any], call: str, example: str) -> BuildOptions:
    """The options of a Python call that takes them as a BuildOptions or as keywords (build(),
    from_pretrained()): keywords beside a BuildOptions were dropped in silence, and a dict in its
    place failed deep inside."""
    if options is not None and not isinstance(options, BuildOptions):
        raise BuilderError(
            f"{call}({type(options).__name__}): pass a BuildOptions, or the options as keywords: {example}"
        )
    if options is not None and values:
        raise BuilderError(
            f"{call}(): options given both as a BuildOptions and as keywords ({', '.join(values)}); "
            "use one, e.g. dataclasses.replace(options, ...)"
        )
    return options if options is not None else BuildOptions.from_keywords(values, f"{call}()")


# What only int4/int8 builds use (--int8-layers/--float-layers with a float precision are refused).
QUANTIZATION_ONLY = ("block_size", "symmetric", "accuracy_level")
# Options by how batch compares them with an existing output (see _opt's rebuild).
NOT_IN_OUTPUT = frozenset(f.name for f in dataclasses.fields(BuildOptions) if f.metadata["rebuild"] == "never")
RESOLVED_BY_PLAN = frozenset(f.name for f in dataclasses.fields(BuildOptions) if f.metadata["rebuild"] == "resolved")
# What only genai_config.json holds.
GENAI_CONFIG_ONLY = ("max_length", "intra_op_threads")


def _flag(f: dataclasses.Field) -> str:
    return f.metadata["flags"][-1]


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    """YAML gives us scalars; make them the field's type or say which key is wrong."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    name = f.name.replace("_", "-")
    if value is None:
        return None if "None" in kind else f.default
    if kind.startswith("list"):
        items = value if isinstance(value, list) else str(value).split(",")
        return [str(v).strip() for v in items if str(v).strip()]
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise BuilderError(f"{where}: {name} must be true or false, got {shown(value)}")
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise BuilderError(f"{where}: {name} must be an integer, got {shown(value)}")
        try:
            return int(value)
        except ValueError:
            raise BuilderError(f"{where}: {name} must be an integer, got {shown(value)}") from None
    if isinstance(value, bool) and "on" in (f.metadata.get("choices") or ()):
        # YAML 1.1 reads a bare on/off as true/false; the user meant the choice.
        return "on" if value else "off"
    return str(value)


def parse_version(text: str, what: str = "version") -> tuple[int, int]:
    """'1.27' or '1.27.0' -> (1, 27); '2' -> (2, 0). Nothing else: 1.31.0.5 and 1.31.0rc1 read
    as 1.31, a runtime they do not name, and 1.031 as 1.31 too."""
    number = r"(0|[1-9][0-9]*)"
    match = re.fullmatch(rf"{number}(?:\.{number}(?:\.{number})?)?", str(text))
    if not match:
        raise BuilderError(f"{what}: {text!r} is not a version like 1.27 or 1.27.0")
    return int(match[1]), int(match[2] or 0)
