"""The build plan: every decision about one build, made once, before any node is written.

A family contributes what only it knows (its spec from config.json, the
projections it has, which of them may be packed into one MatMul); the plan
resolves options, target, weight formats, layout, dtypes, accuracy level and
context length from those in one pass, top to bottom. Blocks, genai_config.json,
the build report and verify read the plan; nothing decides twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto

from builder.kit.checkpoint_fit import (
    check_checkpoint_layers,
    layer_prefix,
    untie_a_differing_lm_head,
    window_difference,
)
from builder.kit.errors import BuilderError
from builder.kit.genai_config import (
    GENAI_MODEL_TYPES,
    search_source,
    search_values,
    settled_search,
    unexpressed_generation_keys,
)
from builder.kit.hf_config import check_generation_config, check_keys, unread_keys
from builder.kit.layout import GQA_ROTARY_HEAD_MULTIPLE, Layout, choose_layout, family_adjusted
from builder.kit.options import BuildOptions
from builder.kit.selection import format_for, module_matches, patterns_matching_nothing
from builder.kit.spec import DecoderSpec
from builder.kit.targets import (
    FEATURES,
    GENAI_LAST_LOGITS_ORT,
    NEWEST_KNOWN_ORT,
    WEBGPU_LAST_MONOLITHIC,
    WEBGPU_LEVEL4_WRONG_BLOCK,
    Target,
    installed_genai_without_last_logits,
)
from quant import QuantScheme

# GroupQueryAttention's seqlens_k and total_sequence_length are int32.
MAX_CONTEXT = 2**31 - 1


@dataclass(frozen=True)
class BuildPlan:
    options: BuildOptions
    target: Target
    spec: Any  # the family's DecoderSpec (or a subclass)
    layout: Layout
    formats: Mapping[str, QuantScheme]  # HF module name -> weight format, every projection
    accuracy_level: int
    context_length: int
    genai_type: str  # model.type in genai_config.json
    architecture: str  # the HF architectures name being built
    # The residual stream's dtype (--residual-dtype, resolved): the activations', or float32 under
    # fp16 activations, where the residual adds and hidden-size norms run in float32
    # (builder.kit.blocks.Emitter).
    residual_dtype: np.dtype
    last_logits: bool = False  # logits [B, 1, V] for each row's last token (--logits)
    # A num_logits_to_keep input says how many trailing positions get logits, 0 all (transformers.js
    # asks for 1 when it generates, 0 when it scores).
    logits_to_keep: bool = False
    int32_inputs: bool = False  # input_ids and attention_mask are int32 (--int32-inputs)
    # Batches come padded on the left (transformers.js): the graph moves the pads where
    # GroupQueryAttention expects them (builder.kit.blocks.left_padding).
    left_padding: bool = False
    # Batches come padded on the right (onnxruntime-genai) and the recurrent layers keep the pads
    # out of their state (builder.kit.blocks.right_padding; --padded-batches). None: the model has
    # no recurrent layer, or pads on the left.
    right_padding: bool | None = None
    # The accuracy_level of MatMulNBits whose in-width is no multiple of their block, where the target
    # computes those wrong at accuracy_level (split_block_level); None: accuracy_level, as every other.
    split_block_level: int | None = None
    notes: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())  # printed on their own line, kept in the report's notes
    # The options with --int8-layers/--float-layers in the names projections go by here
    # (module_pattern), which is what formats were matched with and verify matches with; `options`
    # keeps them as given, for the report (batch compares a job's options with it).
    selection: BuildOptions | None = None

    @property
    def io_dtype(self) -> np.dtype:
        return self.target.io_dtype

    @property
    def io_type(self) -> int:
        return self.target.io_onnx_type

    @property
    def index_type(self) -> int:
        """ONNX type of input_ids and attention_mask."""
        return TensorProto.INT32 if self.int32_inputs else TensorProto.INT64

    def fmt(self, module: str) -> QuantScheme:
        """The weight format of a projection the family declared."""
        try:
            return self.formats[module]
        except KeyError:
            raise KeyError(
                f"{module!r} is not among the projections the family declared (projection_modules)"
            ) from None

    def packed(self, group: str) -> bool:
        """Whether a pack group (e.g. model.layers.0.self_attn.qkv_proj) is one MatMul."""
        return group in self.layout.packed


def make_plan(options: BuildOptions, checkpoint, family) -> BuildPlan:
    """Resolve a build. `family` is the architecture builder: make_spec(config, target),
    weight(layer, suffix), projection_modules(spec), pack_groups(spec), adjust_layout(layout,
    options) and genai_type are all it is asked for."""
    try:
        return _make_plan(options, checkpoint, family)
    except BuilderError as refused:
        # The spec's and the families' refusals say "config.json: ..." without knowing where it is;
        # the user may hold several (a batch, the hub cache), so the error names the file.
        text, directory = str(refused), getattr(checkpoint, "directory", None)
        if directory is None or not text.startswith("config.json"):
            raise
        raise BuilderError(f"{Path(directory) / 'config.json'}{text[len('config.json') :]}") from None


def _make_plan(options: BuildOptions, checkpoint, family) -> BuildPlan:
    options = options.validated()
    config = checkpoint.config
    check_keys(family.config_keys, config)
    try:
        target = Target.from_options(options)
    except BuilderError as refused:
        # "-p fp32 -e cuda: build fp16 or int4" sent a Qwen3.5 user to a build its family
        # refuses for cuda anyway: a family that cannot build for the EP at all says so first.
        try:
            family.make_spec(config, Target.unchecked(options))
        except BuilderError as family_refusal:
            raise family_refusal from None
        raise refused from None
    spec = family.make_spec(config, target)
    if not isinstance(spec, DecoderSpec):  # a make_spec that changed super()'s spec and forgot `return spec`
        raise BuilderError(
            f"{type(family).__name__}.make_spec returned {type(spec).__name__}, not a DecoderSpec: return the spec, "
            "e.g. super().make_spec(config, target) changed (docs/architecture.md, make_spec)"
        )
    if target.graph_capture and spec.sliding_layers:
        # Sliding-window layers under capture: on the plugin EP (H200 and lavapipe) genai's
        # greedy tokens of tiny Mistral/Gemma 3 left transformers' once the sequence passed
        # the window, while plain sessions of the same graphs matched. The EP's GQA picks its
        # windowed kernel and writes its lengths on the host, so a replay repeats the recorded
        # step's window; a bias input cannot stand in, its width must follow the length
        # (docs/packing.md#graph-capture).
        if options.graph_capture == "on":
            raise BuilderError(
                "--graph-capture on: this model has sliding-window layers, which gave wrong "
                "tokens past the window with capture on the WebGPU plugin EP; use "
                "--graph-capture off or auto"
            )
        target = dataclasses.replace(target, graph_capture=False)
        target_notes = (
            "graph capture is off: this model has sliding-window layers, which a captured replay "
            "attends as the recorded step did (docs/packing.md#graph-capture)",
        )
    else:
        target_notes = ()
    if target.graph_capture and spec.head_dim % GQA_ROTARY_HEAD_MULTIPLE:
        # Such heads take RotaryEmbedding nodes fed by position_ids (choose_layout), which no
        # capture-ready graph here has been run with.
        if options.graph_capture == "on":
            raise BuilderError(
                f"--graph-capture on: head_dim {spec.head_dim} is no multiple of {GQA_ROTARY_HEAD_MULTIPLE}, so "
                "the rotary runs in RotaryEmbedding nodes outside GroupQueryAttention, which capture-ready "
                "graphs do not take; use --graph-capture off or auto"
            )
        target = dataclasses.replace(target, graph_capture=False)
        target_notes += (
            f"graph capture is off: head_dim {spec.head_dim} is no multiple of {GQA_ROTARY_HEAD_MULTIPLE}, so "
            "the rotary runs outside GroupQueryAttention, from position_ids",
        )
    described = getattr(family, "config", None) or config  # the config make_spec read
    layers_source = "config.json's num_hidden_layers"
    if described.get("num_hidden_layers") != spec.num_layers:
        layers_source = f"{type(family).__name__}.make_spec's num_layers"
    warnings = [
        *checkpoint.read_warnings,
        *check_checkpoint_layers(checkpoint, family, spec.num_layers, layers_source),
    ]
    if options.format == "genai":
        # family.config: the config make_genai_config writes from, so both settle the same num_beams
        target, beam_notes = settle_beam_search(options, target, checkpoint, described, spec, warnings)
        target_notes += beam_notes
    untied = untie_a_differing_lm_head(checkpoint, family, spec, options.page_cache)
    if untied:
        warnings.append(untied)
    if options.format == "genai" and family.genai_type not in GENAI_MODEL_TYPES:
        warnings.append(
            f"{type(family).__name__}.genai_type {family.genai_type!r} is no model type onnxruntime-genai "
            "0.18 opens: it will refuse this folder (Unsupported model_type); a family whose decoder is "
            "Llama-like says genai_type = 'llama', or the type of the model it follows"
        )
    unread = unread_keys(config, family.config_keys)
    if unread:
        warnings.append(
            f"config.json sets {', '.join(unread)}, which {type(family).__name__} does not read: if "
            f"{'they change' if len(unread) > 1 else 'it changes'} what the model computes, this build "
            "computes something else (--verify compares it with transformers); a family that honours "
            f"{'them names them' if len(unread) > 1 else 'it names it'} in its config_keys"
        )
    residual, residual_note = resolve_residual_dtype(target, options, family, warnings)
    target_notes += residual_note
    genai_version = old_genai_installed(options)
    if options.logits == "auto" and genai_version is not None and target_reads_last_logits(options, target):
        target_notes += (
            f"--logits auto: every position, since the installed onnxruntime-genai {genai_version} fails on "
            "last-token logits; with onnxruntime-genai 0.12.2 or newer a rebuild gets them (a faster prefill)",
        )
    if options.target_ort and target.ort_version > NEWEST_KNOWN_ORT:
        newest = ".".join(map(str, NEWEST_KNOWN_ORT))
        warnings.append(
            f"--target-ort {options.target_ort} is newer than any ONNX Runtime this builder knows "
            f"({newest}); the graph uses what {newest} runs"
        )
    unused = options.unused_flags()
    if unused:
        warnings.append(f"-p {options.precision} stores float weights: {', '.join(unused)} had no effect on this build")
    config_only = options.genai_config_only_flags()
    if config_only:
        warnings.append(
            f"{', '.join(config_only)} had no effect on this build: "
            f"{'they go' if len(config_only) > 1 else 'it goes'} into genai_config.json, "
            f"which --format {options.format} does not write"
        )
    context = resolve_context_length(options, spec, target, list(family.rotary(spec).values()))
    if options.max_length and options.max_length > context and options.format == "genai":
        raise BuilderError(
            f"--max-length {options.max_length} is larger than the context length "
            f"{context}; lower it or raise --context-length"
        )
    window_warning = window_difference(options, config, family, spec, target, context)
    if window_warning:
        warnings.append(window_warning)
    if spec.sliding_layers and not target.supports("gqa_window"):
        first = FEATURES["gqa_window"][target.ep]
        raise BuilderError(
            f"{target.runtime}: this model has sliding-window layers, and before ONNX Runtime "
            f"{first[0]}.{first[1]} GroupQueryAttention attended one position more than local_window_size "
            f"says, so the model would compute something else; target {first[0]}.{first[1]} or newer "
            f"(--target-ort {first[0]}.{first[1]}, or install a newer runtime)"
        )
    if target.ep == "dml" and spec.sliding_layers and context > spec.sliding_window:
        # DmlOperatorGroupQueryAttention never reads local_window_size: past the window its
        # attention would cover the whole sequence, silently. A context within the window is exact.
        raise BuilderError(
            f"-e dml: DirectML's GroupQueryAttention ignores local_window_size, so this model's "
            f"sliding-window layers (window {spec.sliding_window}) would attend to every earlier token once "
            f"a sequence passes {spec.sliding_window}; build with --context-length {spec.sliding_window} "
            "(or less) for dml, or build for cpu, cuda or webgpu"
        )
    modules = family.projection_modules(spec)
    selection = dataclasses.replace(
        options,
        int8_layers=[module_pattern(p, family) for p in options.int8_layers],
        float_layers=[module_pattern(p, family) for p in options.float_layers],
    )
    given = dict(zip(selection.int8_layers + selection.float_layers, options.int8_layers + options.float_layers))
    unmatched = [given[p] for p in patterns_matching_nothing(modules, selection)]
    if unmatched:
        unselectable = unselectable_modules(unmatched, checkpoint, family, modules)
        if unselectable:
            raise BuilderError(unselectable)
        example = layer_zero_projection(modules)
        # A name copied from model.safetensors.index.json names the tensor, not its module.
        tensors = [p for p in unmatched if p.endswith((".weight", ".bias"))]
        drop = f" ({', '.join(tensors)}: drop the .weight or .bias, patterns name modules)" if tensors else ""
        raise BuilderError(
            f"--int8-layers/--float-layers pattern(s) {unmatched} match no projection{drop}; "
            f"names look like lm_head, {example} or '*.{example.rsplit('.', 1)[-1]}'"
        )
    formats = {m: format_for(m, selection) for m in modules}
    eight_bit = sorted(m for m, f in formats.items() if f.quantized and f.bits == 8 and m != "model.embed_tokens")
    slow_int8 = slow_int8_level(options, target, bool(eight_bit))
    if slow_int8:
        warnings.append(slow_int8)
    if eight_bit and not target.supports("matmul_nbits_8bit"):
        first = FEATURES["matmul_nbits_8bit"][target.ep]
        if options.precision == "int8":
            said, instead = "-p int8", "build -p int4"
        else:
            shown = ", ".join(eight_bit[:3]) + (f" and {len(eight_bit) - 3} more" if len(eight_bit) > 3 else "")
            said, instead = f"--int8-layers ({shown})", "drop --int8-layers"
        raise BuilderError(
            f"{said}: {target.runtime}'s MatMulNBits has no 8-bit kernel (from ONNX Runtime {first[0]}.{first[1]}), "
            f"so the folder would not load; {instead}, or target {first[0]}.{first[1]} or newer "
            f"(--target-ort {first[0]}.{first[1]}, or install a newer runtime)"
        )
    odd_zero_points = webgpu_odd_zero_point_rows(formats, target, spec.hidden_size)
    if float_embedding_below(formats, target) or odd_zero_points:
        # Saying model.embed_tokens in --float-layers keeps the plan, the report and verify's reference in
        # step with the graph's float Gather.
        selection = dataclasses.replace(
            selection, float_layers=[*selection.float_layers, module_pattern("model.embed_tokens", family)]
        )
        size = f"{spec.vocab_size * spec.hidden_size * target.io_dtype.itemsize / 1e6:.1f} MB"
        if odd_zero_points:
            embed = formats["model.embed_tokens"]
            warnings.append(
                f"{target.runtime}'s GatherBlockQuantized fails on int4 zero points for rows of an odd number of "
                f"blocks (hidden_size {spec.hidden_size} in blocks of {embed.block_size}: {odd_zero_points}; "
                f"'scales and zero_points must have the same shape'): model.embed_tokens is a float table, {size}; "
                "--symmetric, or a --block-size that splits the row into an even number of blocks, keeps the "
                "int4 one"
            )
        else:
            first = FEATURES["gather_block_quantized"][target.ep]
            warnings.append(
                f"{target.runtime} has no int4 embedding table (GatherBlockQuantized with its bits attribute, from "
                f"ONNX Runtime {first[0]}.{first[1]}): model.embed_tokens is a float table, {size}; target "
                f"{first[0]}.{first[1]} or newer for the int4 one"
            )
        formats = {m: format_for(m, selection) for m in modules}
    embed = formats.get("model.embed_tokens")
    if options.precision == "int4" and embed is not None and embed.quantized and embed.bits == 8:
        warnings.append(
            "--int8-layers: model.embed_tokens stays float (no 8-bit GatherBlockQuantized here: it is "
            "not verified on every EP); leave it int4, or name it in --float-layers"
        )
    groups = family.pack_groups(spec)
    chosen = choose_layout(options, target, spec.qk_norm, groups, formats, spec.head_dim)
    adjusted = family.adjust_layout(chosen, options)
    layout = family_adjusted(chosen, adjusted, groups, formats, spec.qk_norm, type(family).__name__)
    layout = without_silu(layout, options, family, spec, warnings)
    moot = moot_head_norm(options, layout)
    if moot:
        warnings.append(moot)
    right_padding = wants_right_padding(options, target, family, spec)
    if right_padding is False and options.padded_batches == "auto":
        warnings.append(
            "--padded-batches auto is off for graph-capture builds (it cost up to 7% of a captured "
            "decode step): the recurrent layers take in the pads of genai's right-padded batches, so in a "
            "batch of unequal prompts the shorter rows decode wrong tokens; --padded-batches on keeps "
            "them right (docs/packing.md#padded-batches)"
        )
    if right_padding is None and options.padded_batches == "on":
        warnings.append(
            "--padded-batches on: this model has no recurrent layer, and attention reads a padded "
            "batch from attention_mask already; nothing to change"
        )
    level = target.default_accuracy_level if options.accuracy_level is None else options.accuracy_level
    names = config.get("architectures") or ["?"]
    return BuildPlan(
        options=options,
        target=target,
        spec=spec,
        layout=layout,
        formats=formats,
        accuracy_level=level,
        split_block_level=split_block_level(target, level, formats),
        context_length=context,
        genai_type=family.genai_type,
        architecture=names[0] if isinstance(names, list) else str(names),
        last_logits=wants_last_logits(options, target),
        logits_to_keep=options.format == "transformers.js" and options.logits == "auto",
        # auto is int64: on an H100 a capture build decoded 4.5% faster with int64 input_ids than with
        # int32 (docs/webgpu-decode.md, session 28), on an H200 level in the longest run.
        int32_inputs=options.int32_inputs == "on",
        left_padding=options.format == "transformers.js",
        right_padding=right_padding,
        residual_dtype=residual,
        notes=target_notes + tuple(layout.notes),
        warnings=tuple(warnings),
        selection=selection,
    )


def split_block_level(target: Target, level: int, formats: Mapping[str, QuantScheme]) -> int | None:
    """The accuracy level for MatMulNBits whose in-width is no multiple of their block, where the
    target computes those wrong at `level` (WEBGPU_LEVEL4_WRONG_BLOCK); None where it computes them right."""
    blocked = any(f.quantized and f.block_size == WEBGPU_LEVEL4_WRONG_BLOCK for f in formats.values())
    return 0 if target.ep == "webgpu" and level == 4 and blocked else None


def wrong_on_webgpu(plan: BuildPlan, split_nodes: list[str]) -> list[str]:
    """The MatMulNBits of a build that the WebGPU EP computes wrong: split_nodes (those whose in-width
    is no multiple of their block of WEBGPU_LEVEL4_WRONG_BLOCK) where they kept level 4. A webgpu build
    has none (split_block_level); another EP's may, which transformers.js runs on WebGPU where asked."""
    level = plan.accuracy_level if plan.split_block_level is None else plan.split_block_level
    return list(split_nodes) if level == 4 else []


def split_block_note(plan: BuildPlan, split_nodes: list[str]) -> tuple[str | None, bool]:
    """What the build says of its MatMulNBits in blocks of WEBGPU_LEVEL4_WRONG_BLOCK whose in-width is
    no multiple of it, and whether as a warning: a webgpu build's took split_block_level (a note; a warning
    where --accuracy-level asked for another); a transformers.js folder of another EP that kept level 4
    computes wrong on WebGPU, where transformers.js runs any folder when asked (a warning)."""
    if not split_nodes:
        return None, False
    count = f"{len(split_nodes)} MatMulNBits whose in-width is no multiple of {WEBGPU_LEVEL4_WRONG_BLOCK}"
    shown = ", ".join(split_nodes[:2]) + (f" and {len(split_nodes) - 2} more" if len(split_nodes) > 2 else "")
    evidence = "(docs/packing.md#accuracy-level-on-webgpu-in-blocks-of-256-session-42)"
    if plan.split_block_level is not None:
        note = (
            f"accuracy level {plan.split_block_level} on the {count} ({shown}): onnxruntime's WebGPU EP computes "
            f"those wrong at level {plan.accuracy_level} (logits unrelated to the model's); the others keep "
            f"{plan.accuracy_level}, as all do with --block-size 128 or less {evidence}"
        )
        return note, plan.options.accuracy_level is not None
    if plan.options.format != "transformers.js" or not wrong_on_webgpu(plan, split_nodes):
        return None, False
    return (
        f"the {count} ({shown}) run at accuracy level 4, which onnxruntime-web's WebGPU EP computes wrong: this "
        f"folder generates wrong tokens wherever transformers.js runs it on WebGPU (examples/web refuses it "
        f"there); Node and wasm run it right. For WebGPU, build with -e webgpu (those take level 0 there) or "
        f"--block-size 128 or less {evidence}"
    ), True


def slow_int8_level(options: BuildOptions, target: Target, eight_bit: bool) -> str | None:
    """The warning for 8-bit MatMulNBits on cpu below accuracy level 4, or None. ONNX Runtime 1.32's cpu
    kernel computes 8-bit weights fast only with int8 activations (level 4); below it, a random-weight
    Qwen3-0.6B-shaped int8 build decoded at 0.028x (level 0) and 0.030x (level 1) of its level-4 speed,
    and an int4 one with --int8-layers '*.down_proj' at 0.35x (this 2-core machine, docs/packing.md).
    eight_bit: whether any projection is an 8-bit MatMulNBits (an int8 embedding is a float Gather)."""
    level = options.accuracy_level
    if target.ep != "cpu" or not eight_bit or level is None or level >= 4:
        return None
    if options.precision == "int8":
        what, cost = "-p int8", "an int8 Qwen3-0.6B shape decoded about 35x slower at level 0 or 1 than at 4"
    else:
        what, cost = "--int8-layers", "an int4 Qwen3-0.6B shape with int8 down_proj decoded at 0.35x at level 0"
    return (
        f"--accuracy-level {level} with {what} on cpu: onnxruntime's cpu MatMulNBits is fast on 8-bit weights "
        f"only at level 4 (int8 activations); {cost}. Leave --accuracy-level at its cpu default (4) unless "
        "the slower, closer logits are what you want"
    )


def settle_beam_search(options: BuildOptions, target: Target, checkpoint, config: dict, spec, warnings: list[str]):
    """(target, notes) once generation_config.json's search is settled: beams under --graph-capture
    auto turn capture off, since genai refuses capture for them; what genai_config.json cannot keep is
    a warning, before the build (settled_search decides, for make_genai_config too), and a sampling
    setting no sampler reads is refused."""
    read_json = getattr(checkpoint, "read_json", None)  # stand-in checkpoints have no files
    generation = read_json("generation_config.json") if read_json else None
    if generation is not None:
        generation = check_generation_config(generation, str(Path(checkpoint.directory) / "generation_config.json"))
    directory = getattr(checkpoint, "directory", None)
    config_path = str(Path(directory) / "config.json") if directory else "config.json"
    search, source = search_values(config, generation, config_path), search_source(generation)
    hybrid, vocab = bool(spec.linear_layers), spec.vocab_size
    notes = ()
    uncaptured = settled_search(search, vocab, hybrid, False, target.ep, source)[0]
    if target.graph_capture and options.graph_capture == "auto" and uncaptured["num_beams"] > 1:
        target = dataclasses.replace(target, graph_capture=False)
        notes = (
            f"graph capture is off: {source} sets num_beams {search['num_beams']} (beam search), "
            "which genai runs only without capture; --graph-capture on keeps capture and writes num_beams 1",
        )
    search_warnings = settled_search(search, vocab, hybrid, target.graph_capture, target.ep, source)[1]
    unexpressed = unexpressed_generation_keys(generation)
    warnings.extend(search_warnings + ([unexpressed] if unexpressed else []))
    return target, notes


def without_silu(layout: Layout, options: BuildOptions, family, spec, warnings: list[str]) -> Layout:
    """layout.silu is "none" for a family whose MLPs have no SiLU (its hidden_acts), or a model whose
    blocks write none (writes_silu), where --silu would otherwise be taken, and reported, for a model
    it cannot change."""
    if layout.silu == "none":
        return layout
    if {"silu", "swish"} & set(family.hidden_acts):
        if writes_silu(family, spec):
            return layout
        # Qwen3-MoE with every layer sparse: "sigmoid-mul" (or the --silu given) was reported over a graph
        # with neither Sigmoid nor QuickGelu. A refusal would stop builds that ran before: a warning.
        why = "no layer writes a SiLU node (MoE experts apply theirs inside the MoE node)"
        if options.silu != "auto":
            warnings.append(f"--silu {options.silu} had no effect on this build: {why}")
        return dataclasses.replace(layout, silu="none", notes=layout.notes + (f"{why}: --silu does not apply",))
    acts = " or ".join(family.hidden_acts)
    if options.silu != "auto":
        raise BuilderError(
            f"--silu {options.silu}: {type(family).__name__}'s MLP has no SiLU ({acts}); leave --silu at auto"
        )
    return dataclasses.replace(
        layout, silu="none", notes=layout.notes + (f"MLP activation {acts}: --silu does not apply",)
    )


def writes_silu(family, spec) -> bool:
    """Whether a block of the model writes SiLU in the layout's form; a block that writes none says
    `writes_silu = False` (attention; MoE experts, whose SwiGLU runs inside the MoE node)."""
    return any(
        getattr(block, "writes_silu", True)
        for i in range(spec.num_layers)
        for block in (family.mixer(spec, i), family.feed_forward(spec, i))
    )


def has_recurrent_layers(family, spec) -> bool:
    """Whether a mixer keeps a state across tokens (`recurrent = True`): the padding of a batch must
    not reach it as tokens (kit/blocks/left_padding.py, right_padding.py)."""
    return any(getattr(family.mixer(spec, i), "recurrent", False) for i in range(spec.num_layers))


def wants_right_padding(options: BuildOptions, target: Target, family, spec) -> bool | None:
    """--padded-batches resolved: None where nothing keeps a state across tokens (attention reads
    right padding from the mask) or the batch is padded on the left (transformers.js)."""
    if not has_recurrent_layers(family, spec) or options.format != "genai":
        return None
    return options.padded_batches == "on" or (options.padded_batches == "auto" and not target.graph_capture)


def wants_last_logits(options: BuildOptions, target: Target) -> bool:
    """--logits resolved. onnxruntime-genai reads logits [B, 1, V] as the last token's
    (Model::IsPruned) and samples from nothing else, so genai folders need no more;
    transformers.js pipelines are left with every position (docs/packing.md#last-token-logits)."""
    if options.logits != "auto":
        return options.logits == "last"
    return target_reads_last_logits(options, target) and old_genai_installed(options) is None


def target_reads_last_logits(options: BuildOptions, target: Target) -> bool:
    """Whether the runtime the target names runs a last-token graph through onnxruntime-genai."""
    # onnxruntime-webgpu 1.27 was not run with the selection's GatherND: it keeps every position.
    legacy_webgpu = target.ep == "webgpu" and target.ort_version <= WEBGPU_LAST_MONOLITHIC
    # Below 1.24 only genai <= 0.11 runs, which binds logits [B, S, V] and fails on a last-token graph.
    old_genai = target.ort_version < GENAI_LAST_LOGITS_ORT
    return options.format == "genai" and not legacy_webgpu and not old_genai


def old_genai_installed(options: BuildOptions) -> str | None:
    """The installed onnxruntime-genai's version where it fails on last-token logits and the build targets
    the installed onnxruntime (no --target-ort), so that genai is what runs the folder: pip keeps genai
    0.8-0.12.1 beside onnxruntime 1.24 and newer."""
    return None if options.target_ort else installed_genai_without_last_logits()


def resolve_residual_dtype(target: Target, options: BuildOptions, family, warnings: list[str]) -> tuple:
    """--residual-dtype resolved: (dtype, notes). Under fp16 activations, auto keeps the residual
    stream in float32 for a family whose stream leaves fp16's range (its fp16_overflow): the
    reference builder's layout for Gemma 2/3 (layernorm_attrs cast use_fp32), where a sum past
    65504 would be inf and every later norm NaN. On real Gemma 3 weights the overflow is there, in
    the residual adds, not in the projections (onnxruntime#29611: MatMulNBits partial sums of
    gemma-3-270m peak near 324), so the blocks stay fp16, on webgpu too. An all-fp16 graph of
    such a family is warned of."""
    if target.io_dtype != np.float16:
        if options.residual_dtype == "fp16":
            fix = " (or build with --io-dtype fp16)" if options.precision in ("int4", "int8") else ""
            raise BuilderError(
                f"--residual-dtype fp16: this build's activations are {np.dtype(target.io_dtype).name} "
                f"(-p {options.precision} -e {target.ep}), and the residual stream is never narrower than "
                f"the activations; drop --residual-dtype{fix}"
            )
        if options.residual_dtype == "fp32":
            warnings.append(
                f"--residual-dtype fp32 had no effect: this build's activations are "
                f"{np.dtype(target.io_dtype).name} throughout"
            )
        return np.dtype(target.io_dtype), ()
    reason = family.fp16_overflow
    if options.residual_dtype == "fp32" or (options.residual_dtype == "auto" and reason):
        why = f": {reason}" if options.residual_dtype == "auto" else " (--residual-dtype fp32)"
        return np.dtype(np.float32), (
            f"residual stream and hidden-size norms in fp32, blocks in fp16{why}; "
            "--residual-dtype fp16 for the all-fp16 graph",
        )
    if reason:
        warnings.append(
            f"this build computes in fp16, its residual stream too (--residual-dtype fp16): {reason}; "
            "check its output before deploying it, or leave --residual-dtype at auto (fp32 for this family)"
        )
    return np.dtype(target.io_dtype), ()


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolve_context_length(options: BuildOptions, spec, target: Target, ropes: list) -> int:
    """--context-length, bounded by what the model supports and by what memory holds.

    The rotary caches are [context, rotary_dim / 2] each and are computed before any
    weight is read: an unbounded length (a typo, or a config claiming 10^9 positions)
    would take the machine's memory before any other check could run.
    """
    requested = options.context_length
    supported = spec.rope.max_positions(spec.max_position_embeddings)
    if requested is not None and requested > supported and not options.allow_long_context:
        raise BuilderError(
            f"--context-length {requested} is more than this model supports ({supported} "
            "positions: config.json's max_position_embeddings and rope scaling); pass "
            "--allow-long-context to build it anyway, or a smaller --context-length"
        )
    context = requested or spec.max_position_embeddings
    source = "--context-length" if requested else "config.json's max_position_embeddings"
    if options.verify and context < 2:
        # BuildOptions refuses --context-length 1 with --verify; a config.json of one position reached
        # verify's run, and GroupQueryAttention's cos_cache error came out as a traceback.
        raise BuilderError(
            f"--verify needs a context of at least 2 positions (a prompt and one decode step), and {source} "
            f"gives {context}; drop --verify, or pass --context-length 2 --allow-long-context"
        )
    if context > MAX_CONTEXT:
        raise BuilderError(
            f"context length {context} ({source}) is more than GroupQueryAttention's int32 sequence "
            f"lengths hold ({MAX_CONTEXT}); pass a smaller --context-length"
        )
    # Every cache the family's blocks read (family.rotary: Gemma 3 has two), each this long.
    need = sum(r.cache_bytes(context, target.io_dtype) for r in ropes)
    available = available_memory_bytes()
    if available is not None and need > available // 2:
        raise BuilderError(
            f"context length {context} ({source}) x rotary dim {spec.rope.rotary_dim} (config.json's "
            f"head_dim) needs {need / 2**30:.1f} GiB of rotary cache, more than half the "
            f"{available / 2**30:.1f} GiB of memory available; pass a smaller --context-length"
        )
    return context


def moot_head_norm(options: BuildOptions, layout: Layout) -> str | None:
    """The warning for a --head-norm the layout cannot use, or None. It was dropped in silence,
    also when auto picked fused-norm for the target and the user had asked for reshape-sln."""
    if options.head_norm == "auto" or layout.head_norm == options.head_norm:
        return None
    flag = f"--head-norm {options.head_norm} had no effect on this build"
    if layout.head_norm == "none":
        return f"{flag}: this model has no q_norm/k_norm"
    if options.qkv_packing == "auto":
        how, fix = "auto picked it for this target", "add --qkv-packing packed-split"
    else:
        how, fix = "as asked", "use --qkv-packing packed-split instead"
    return (
        f"{flag}: --qkv-packing fused-norm ({how}) computes the Q/K norms inside GroupQueryAttention; {fix} to get it"
    )


def float_embedding_below(formats: dict, target) -> bool:
    """Whether the int4 embedding table of `formats` is one `target` cannot load (gather_block_quantized)."""
    embed = formats.get("model.embed_tokens")
    return embed is not None and embed.quantized and embed.bits == 4 and not target.supports("gather_block_quantized")


def webgpu_odd_zero_point_rows(formats: dict, target, hidden_size: int) -> int:
    """The blocks of an int4 embedding row with zero points where the WebGPU EP cannot gather them (an
    odd number), else 0. The WebGPU plugin EP 0.4.0 (onnxruntime 1.31.1, on an H100) failed every such
    gather ("scales and zero_points must have the same shape": two zero points share a byte), at hidden
    sizes 37 to 72 in blocks of 16 to 256, where the CPU EP ran them; even counts ran on both."""
    embed = formats.get("model.embed_tokens")
    if target.ep != "webgpu" or embed is None or not embed.quantized or embed.bits != 4 or embed.symmetric:
        return 0
    blocks = -(-hidden_size // embed.block_size)
    return blocks if blocks % 2 else 0


def layer_zero_projection(modules: list[str]) -> str:
    """A projection of layer 0, to show what --int8-layers/--float-layers names look like."""
    return next((m for m in modules if ".layers.0." in m), "model.layers.0.self_attn.v_proj")


def unselectable_modules(patterns: list[str], checkpoint, family, modules: list[str]) -> str | None:
    """Why patterns that select no projection still name checkpoint tensors, or None: part of a
    projection chosen whole (one expert of a layer's experts) or a module the build never quantizes
    (a router, in_proj_a/b). Such a real name was refused as a typo ("match no projection")."""
    names = getattr(checkpoint, "names", None)
    tensors = [n.removesuffix(".weight") for n in names()] if names else []
    for pattern in patterns:
        ours = module_pattern(pattern, family)
        named = [t for t in tensors if module_matches(t, [pattern]) or module_matches(t, [ours])]
        if not named:
            continue
        whole = next((m for t in named for m in modules if module_pattern(t, family).startswith(m + ".")), None)
        if whole:
            return (
                f"--int8-layers/--float-layers pattern {pattern!r} names part of {whole} "
                f"({named[0]}), which is chosen whole: pass {whole} or '*.{whole.rsplit('.', 1)[-1]}'"
            )
        example = layer_zero_projection(modules)
        return (
            f"--int8-layers/--float-layers pattern {pattern!r} names {named[0]}, which this family never "
            "quantizes (it stays in float at every -p): leave it out; the patterns choose among the quantized "
            f"projections, such as lm_head or '*.{example.rsplit('.', 1)[-1]}'"
        )
    return None


def module_pattern(pattern: str, family) -> str:
    """A --int8-layers/--float-layers pattern in the names projections go by here
    (model.layers.N..., model.embed_tokens), also when it is written in the checkpoint's own:
    a ConditionalGeneration checkpoint keeps its text model under model.language_model., and
    those names were refused as matching nothing."""
    embed = family.weight(None, "model.embed_tokens.weight")
    # Only namings that keep HF's own tails (a plugin may name its tensors any way at all).
    layers = layer_prefix(family) or "model.layers."
    if layers != "model.layers." and pattern.startswith(layers):
        return "model.layers." + pattern[len(layers) :]
    text = embed[: -len("embed_tokens.weight")] if embed.endswith(".embed_tokens.weight") else "model."
    if text != "model." and pattern.startswith(text):  # model.language_model.*, ...embed_tokens
        return "model." + pattern[len(text) :]
    inner = text[len("model.") :] if text.startswith("model.") else ""
    if inner and pattern.startswith("*." + inner):  # *.language_model.layers.0.*
        return "*." + pattern[len("*." + inner) :]
    return pattern
