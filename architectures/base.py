"""The Llama-style decoder every built-in family derives from.

A family says what differs from Llama: its spec from config.json (`make_spec`),
its tensor names (`weight`), and which blocks each layer is made of
(`mixer`, `feed_forward`). The blocks (builder.kit.blocks) write the nodes:

    Gather(Block Quantized) -> SimplifiedLayerNorm
    per layer: mixer (attention) -> SkipSimplifiedLayerNorm -> feed-forward (MLP / MoE)
               -> SkipSimplifiedLayerNorm
    lm_head (MatMulNBits or MatMul) -> logits

Every decision (target, formats, layout, dtypes, context) is made once, in the
BuildPlan (builder.kit.plan), before the first node.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from collections.abc import Mapping
from types import MappingProxyType

from builder.kit.blocks import Attention, DenseMLP, Emitter, embedding, left_padding
from builder.kit.blocks import attention as attention_io
from builder.kit.blocks.mlp import KIT_ACTIVATIONS
from builder.kit.checkpoint import Checkpoint
from builder.kit.checkpoint_fit import layer_prefix
from builder.kit.errors import BuilderError
from builder.kit.graph import Graph
from builder.kit.layout import Layout, PackGroup
from builder.kit.linear import Projections, RowSlice
from builder.kit.option_names import python_option_names
from builder.kit.options import BuildOptions, options_one_way
from builder.kit.plan import BuildPlan, has_recurrent_layers, make_plan
from builder.kit.progress import Progress
from builder.kit.spec import DecoderSpec
from builder.kit.targets import Target


class DecoderBuilder:
    """Builds a Llama-style decoder; subclass it for other families."""

    architectures: tuple[str, ...] = ()
    genai_type = "llama"  # model.type in genai_config.json
    qk_norm = False  # per-head RMSNorm on Q and K (Qwen3, Gemma 3)
    rotary_interleaved = False  # rotary on (x[2j], x[2j+1]) pairs rather than halves (Helium, GPT-J)
    # Whether config.json's partial_rotary_factor rotates only that share of each head (Qwen3.5);
    # transformers' Llama, Mistral and Qwen2/3 attention rotate the whole head whatever it says.
    partial_rotary = False
    attention_bias = False  # q/k/v projections have biases (Qwen2)
    # Whether config.json's attention_bias also puts a bias on o_proj: transformers' Llama, Granite
    # and Qwen3 attention do; Qwen2's q/k/v biases come without one.
    attention_out_bias = True
    # Whether config.json's mlp_bias puts biases on gate/up/down_proj, as in transformers' Llama;
    # families whose MLP never has them (Mistral, Qwen2/3, Qwen3.5) ignore the key, as transformers does.
    reads_mlp_bias = True
    projections = Projections  # writes weights; a family may change how
    # The family's transformers config class defaults for keys a config.json may leave out, where they
    # differ from DecoderSpec's fallbacks (head_dim = hidden / heads, as many KV heads as heads, 4096
    # positions): without them such a checkpoint's weights were refused as not matching its config,
    # or its context length was another than transformers runs.
    config_defaults: dict = {}
    python_caller = False  # made by from_pretrained(): errors name options as its keywords
    # Tensor name prefixes a family leaves out on purpose (Qwen3.5: its vision tower, MTP head).
    not_built: tuple[str, ...] = ()
    # Words for not_built's prefixes in the build report's note ("the vision tower"); a prefix
    # without words is named as it is.
    not_built_names: Mapping = MappingProxyType({})
    # Of those, the ones builder.verify's transformers reference does not load either, so --verify's
    # memory estimate leaves them out (Qwen3.5's ForCausalLM ignores model.visual.* and mtp.*; Gemma
    # 3's reference is the ConditionalGeneration model, vision tower included).
    reference_leaves_out: tuple[str, ...] = ()
    # config.json hidden_act values its MLP blocks write; a family whose feed_forward writes another
    # (a DenseMLP subclass with its own activation()) names it here. Without silu/swish among them,
    # --silu does not apply (plan: layout.silu "none").
    hidden_acts: tuple[str, ...] = ("silu", "swish")  # with feed_forward: the two change together
    # Why this family's residual stream may leave fp16's range (None: no known reason). Where it is
    # set, builds with fp16 activations keep the stream in fp32 (--residual-dtype auto).
    fp16_overflow: str | None = None
    # config.json keys this family reads that builder.kit.hf_config.KEYS does not list, as key ->
    # (checker, null allowed), e.g. {"logits_scaling": (hf_config.number(), False)}: their types are
    # checked when it plans, and the plan does not warn that they go unread.
    config_keys: Mapping = MappingProxyType({})  # a subclass assigns its own dict

    def __init__(self, checkpoint: Checkpoint, options: BuildOptions):
        self.checkpoint = checkpoint
        self.config = self.model_config(checkpoint.config)
        if not isinstance(self.config, Mapping):  # None (a forgotten return) fell back to config.json in silence
            raise BuilderError(
                f"{type(self).__name__}.model_config returned {type(self.config).__name__}, not a dict: return "
                "the config the outputs describe (the one it is given, or a changed copy: {**config, ...})"
            )
        self._options = options

    def model_config(self, config: dict) -> dict:
        """The config the outputs describe (genai_config's token ids, transformers.js' config.json):
        config.json's, or the family's view of it (Qwen3.5: its text model's, flat)."""
        return config

    @functools.cached_property
    def plan(self) -> BuildPlan:
        """Planned on first use (the hooks below run then), so a subclass may set its own
        attributes after super().__init__(). A refused build raises here."""
        if self.__dict__.get("_planning"):  # a hook that read self.plan ran into itself: RecursionError
            raise BuilderError(
                f"{type(self).__name__}: self.plan, self.spec and self.options are not made yet while the "
                "plan is (make_spec, mixer, feed_forward, pack_groups, adjust_layout run then): use the spec "
                "and options those hooks are given, or self.build_options"
            )
        self._check_class_attributes()
        self._check_weight_names()
        self._planning = True
        try:
            with python_option_names() if self.python_caller else contextlib.nullcontext():
                return make_plan(self._options, self.checkpoint, self)
        finally:
            self._planning = False

    def _check_class_attributes(self) -> None:
        """not_built, reference_leaves_out and hidden_acts are tuples of names: a string in their place
        (("model.visual.") without its comma) was read a character at a time, into a report note on
        "m*" tensors and a hidden_acts refusal that said it writes what it names. config_keys maps a
        key to (checker, null allowed)."""
        for attr in ("not_built", "reference_leaves_out", "hidden_acts"):
            value = getattr(self, attr)
            # A tuple: a list (or None) passed here and failed inside the builder's code, where
            # not_built and reference_leaves_out go to str.startswith, which takes no list.
            if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
                # hidden_acts names config.json hidden_act values, not the tensor prefixes the others do
                example = '("silu",)' if attr == "hidden_acts" else '("model.visual.",)'
                example = f"({value!r},)" if isinstance(value, str) else example
                raise BuilderError(
                    f"{type(self).__name__}.{attr} is {value!r}, not a tuple of names: write {example} "
                    "(docs/architecture.md)"
                )
        # config_keys' entries are unpacked and their checker's `expected` worded only when a config
        # has the key (or a bad value of it): a mistake there failed inside the builder's code.
        if not isinstance(self.config_keys, Mapping):
            raise BuilderError(
                f"{type(self).__name__}.config_keys is {self.config_keys!r}, not a dict: give "
                "{key: (checker, null allowed)}, or leave it out for none (docs/architecture.md)"
            )
        for key, entry in dict(self.config_keys).items():
            if not (
                isinstance(entry, tuple)
                and len(entry) == 2
                and callable(entry[0])
                and hasattr(entry[0], "expected")
                and isinstance(entry[1], bool)
            ):
                raise BuilderError(
                    f"{type(self).__name__}.config_keys[{key!r}] is {entry!r}: give (checker, null allowed) with a "
                    "checker of builder.kit.hf_config, e.g. (hf_config.number(), False), or one of yours with an "
                    ".expected that says what is valid (docs/architecture.md)"
                )

    def _check_weight_names(self) -> None:
        """weight() returns a tensor name for the names every build asks for (the embedding, the
        lm_head, a layer's: the layer checks probe weight(0, "x")). A weight() without return on one
        branch gave None, which was met with "tensor None is missing from the checkpoint ... re-download
        it", or a failure inside the builder's code."""
        for layer, suffix in ((None, "model.embed_tokens.weight"), (None, "lm_head.weight"), (0, "x")):
            name = self.weight(layer, suffix)
            if not isinstance(name, str | RowSlice) or not name:
                raise BuilderError(
                    f"{type(self).__name__}.weight({layer!r}, {suffix!r}) returned {name!r}, not a tensor name: return "
                    "the checkpoint's name as a str (or a builder.kit.linear.RowSlice of a fused tensor), for a "
                    "layer index and for None (docs/architecture.md, weight)"
                )

    @property
    def build_options(self) -> BuildOptions:
        """The options as given, readable before and while the plan is made (self.options is the
        plan's)."""
        return self._options

    @functools.cached_property
    def warnings(self) -> list[str]:
        """The plan's warnings, then those found while building (NaN/Inf tensors, a missing tokenizer)."""
        return list(self.plan.warnings)

    # The plan's decisions, for code that holds the family object (the app's output formats).
    options = property(lambda self: self.plan.options)
    spec = property(lambda self: self.plan.spec)
    target = property(lambda self: self.plan.target)
    layout = property(lambda self: self.plan.layout)
    io_dtype = property(lambda self: self.plan.io_dtype)
    context_length = property(lambda self: self.plan.context_length)

    @classmethod
    def from_pretrained(cls, model: str, options: BuildOptions | None = None, **option_values):
        """A builder for a local folder or hub id; options as BuildOptions or keywords."""
        call = f"{cls.__name__}.from_pretrained"
        with python_option_names():
            if options is None:
                option_values = {"model": model, **option_values}
            options = options_one_way(options, option_values, call, f"{call}(model, precision=...)")
            options = dataclasses.replace(options, model=model)  # the caller's stays as it was
            if options.family:
                from architectures.registry import family_named

                named = family_named(options.family, where=f"{call}(family=...)")
                if named is not cls:  # the report would name one family and the graph be another's
                    raise BuilderError(
                        f"{call}(family={options.family!r}): that names {named.__module__}.{named.__qualname__}, "
                        f"not {cls.__name__}; call {named.__name__}.from_pretrained, or drop family="
                    )
            arch = cls(Checkpoint.open(model), options)
        arch.python_caller = True  # its plan's and run()'s errors name keywords too
        return arch

    # ---- what the plan asks a family -----------------------------------------

    def config_class_spec(self, config: dict, target: Target) -> tuple[str, DecoderSpec] | None:
        """The architecture config.json names and the spec its registered family makes of the config,
        where this build runs another family (--family, or a class given in Python): make_plan compares
        their windows, since transformers, and so --verify, runs the checkpoint as config.json names
        it. None where this is that family, none is registered for it, or it refuses the config."""
        from architectures.registry import registered_for

        found = registered_for(config)
        if found is None or found[1] is type(self):
            return None
        name, family = found
        try:
            return name, family(self.checkpoint, self._options).make_spec(config, target)
        except Exception:  # a plugin registered for that name may fail its own way: the warning is all that is lost
            return None

    def make_spec(self, config: dict, target: Target | None = None) -> DecoderSpec:
        config = {**self.config_defaults, **config}
        act = config.get("hidden_act", "silu")
        if act not in self.hidden_acts:
            raise BuilderError(
                f"config.json: hidden_act {act!r} is not supported by {type(self).__name__} (its MLPs write "
                f"{' or '.join(self.hidden_acts)}), so this builder cannot build the model (a family of your own "
                "can: docs/architecture.md, hidden_acts)"
            )
        spec = DecoderSpec.from_config(
            config,
            qk_norm=self.qk_norm,
            # On for a family whose attention always has them, whatever config.json says (Qwen2's
            # transformers class ignores the key); config.json's key turns them on for the others.
            attention_bias=self.attention_bias or bool(config.get("attention_bias")),
            mlp_bias=self.reads_mlp_bias and bool(config.get("mlp_bias")),
        )
        if self.rotary_interleaved:
            spec.rope = dataclasses.replace(spec.rope, interleaved=True)
        if not self.partial_rotary:
            if spec.rope.rope_type != "default" and spec.rope.rotary_dim != spec.head_dim:
                # transformers' scaled rope (linear, llama3, yarn) makes cos/sin for that share of the
                # head, and these families' attention then fails to apply them to the whole head (5.25:
                # a size mismatch); only its default rope ignores the factor, as these families do.
                raise BuilderError(
                    f"config.json: {spec.rope.rope_type} rope scaling with partial_rotary_factor < 1 "
                    f"({spec.rope.rotary_dim} of head_dim {spec.head_dim}): {type(self).__name__} rotates the "
                    "whole head, and transformers cannot run this config either; remove partial_rotary_factor "
                    "(or build with a family that rotates part of the head: --family)"
                )
            spec.rope = dataclasses.replace(spec.rope, rotary_dim=spec.head_dim)
        lm_head = self.weight(None, "lm_head.weight")
        if not spec.tie_word_embeddings and not self.checkpoint.has(lm_head):
            if config.get("tie_word_embeddings") is False:  # said so, and the weight is not there
                raise BuilderError(
                    f"tensor {lm_head!r} is missing from the checkpoint in {self.checkpoint.directory}, and its "
                    "config.json sets tie_word_embeddings to false; the checkpoint is incomplete "
                    "(re-download it), or set tie_word_embeddings to true if the model shares its embedding"
                )
            # Some configs omit tie_word_embeddings while the weights are tied.
            spec.tie_word_embeddings = True
        table = self.weight(None, "model.embed_tokens.weight")
        if spec.tie_word_embeddings and not self.checkpoint.has(table) and self.checkpoint.has(lm_head):
            self.checkpoint.alias(table, lm_head)  # saved by safetensors' save_model: the lm_head's name kept
        return spec

    def left_out(self, name: str) -> bool:
        """Whether the build leaves checkpoint tensor `name` out on purpose: `not_built`; layers
        beyond num_hidden_layers (warned about by the plan); the rotary inv_freq buffer of older
        conversions (the graph has its own cache); a tied model's lm_head.weight (the same values
        as the embedding: the plan unties a checkpoint whose lm_head differs, as transformers does)."""
        spec = self.spec
        if name.startswith(self.not_built) or name.endswith(".rotary_emb.inv_freq"):
            return True
        if spec.tie_word_embeddings and name == self.weight(None, "lm_head.weight"):
            return True
        layers = layer_prefix(self)
        index = name[len(layers) :].split(".", 1)[0] if layers and name.startswith(layers) else ""
        return index.isdigit() and int(index) >= spec.num_layers

    def skipped_note(self) -> str | None:
        """The build report's note on what not_built left out of this checkpoint, or None when it
        holds none of it (a text-only checkpoint of a family whose hub files carry a vision tower)."""
        counts = collections.Counter(
            next(p for p in self.not_built if name.startswith(p))
            for name in self.checkpoint.names()
            if self.not_built and name.startswith(self.not_built)
        )
        if not counts:
            return None
        parts = [
            f"{self.not_built_names.get(p, 'the tensors')} ({p}*, {n} tensor{'s' * (n > 1)})" for p, n in counts.items()
        ]
        return f"text model only: not built from the checkpoint are {', '.join(parts)}"

    def unused_tensors(self) -> list[str]:
        """Checkpoint tensors the build has not read that it does not leave out on purpose.

        A model built without them computes something else (MLP biases in a family whose MLP has
        none, a checkpoint of another architecture): the build is refused rather than published.
        """
        return [name for name in self.checkpoint.unread() if not self.left_out(name)]

    def weight(self, layer: int | None, suffix: str) -> str:
        """The checkpoint's name of a tensor (Hugging Face naming)."""
        return f"model.layers.{layer}.{suffix}" if layer is not None else suffix

    def mixer(self, spec: DecoderSpec, i: int):
        """The token-mixing block of layer i (attention for every layer here)."""
        return Attention(
            qk_norm=spec.qk_norm, bias=spec.attention_bias, out_bias=spec.attention_bias and self.attention_out_bias
        )

    def feed_forward(self, spec: DecoderSpec, i: int):
        return DenseMLP(bias=spec.mlp_bias)

    def projection_modules(self, spec: DecoderSpec) -> list[str]:
        modules = []
        for i in range(spec.num_layers):
            mlp = self.feed_forward(spec, i)
            self._check_activation(mlp, i)
            modules += self.mixer(spec, i).modules(i) + mlp.modules(i)
        return [embedding.EMBED] + modules + [embedding.LM_HEAD]

    def _check_activation(self, block, i: int) -> None:
        """Refuse an MLP that writes an activation the family's hidden_acts does not name: a family
        that set hidden_acts = ("gelu",) and kept the default feed_forward built SiLU in silence."""
        if not isinstance(block, DenseMLP) or type(block).activation is not DenseMLP.activation:
            return  # an activation() of the family's own writes what it says
        writes = {KIT_ACTIVATIONS.get(act) for act in self.hidden_acts}
        if block.act not in writes:
            raise BuilderError(
                f"{type(self).__name__}.hidden_acts is {self.hidden_acts}, but its feed_forward for layer {i} is "
                f"{type(block).__name__}(act={block.act!r}), which writes {block.act}: return an MLP that writes "
                "what hidden_acts names from feed_forward (a DenseMLP subclass with its own activation() for "
                "one the kit lacks; docs/architecture.md)"
            )

    def pack_groups(self, spec: DecoderSpec) -> list[PackGroup]:
        return [
            g
            for i in range(spec.num_layers)
            for block in (self.mixer(spec, i), self.feed_forward(spec, i))
            for g in block.pack_groups(i)
        ]

    def adjust_layout(self, layout: Layout, options: BuildOptions) -> Layout:
        """A family's last word on the resolved layout (Gemma 3: no SiLU to choose)."""
        return layout

    def rotary(self, spec: DecoderSpec) -> dict:
        """Rotary caches the attention blocks read, by name."""
        return {"global": spec.rope}

    @classmethod
    def reference_class(cls):
        """builder.verify's hook: the transformers model class whose from_pretrained loads this
        family's checkpoints as the reference, or None for AutoModelForCausalLM. A family of a
        model_type transformers does not know returns its own class (imported inside the method:
        building must not import torch)."""
        return None

    @classmethod
    def prepare_reference(cls, model, options: BuildOptions, io_dtype=None) -> None:
        """builder.verify's hook, on transformers' float32 model before verify dequantizes its
        nn.Linear weights (fused ones part by part, through weight()'s RowSlices): load what
        transformers could not find in the checkpoint because this family reads it under other
        names (verify refuses while any stays as transformers left it; what is loaded here is
        then rounded like the rest), and give weights outside nn.Linear the values the graph
        uses (fused MoE expert tensors). Nothing to do for dense decoders."""

    # ---- the graph ----------------------------------------------------------

    def build_graph(self, graph: Graph, progress: Progress) -> None:
        plan, spec = self.plan, self.plan.spec
        proj = self.proj = self.projections(graph, self.checkpoint, plan.io_dtype, plan.accuracy_level)
        proj.split_block_level = plan.split_block_level
        em = self.emitter = Emitter(graph, proj, plan, self.weight)
        attention_io.declare_inputs(em)
        for i in range(spec.num_layers):
            mixer = self.mixer(spec, i)
            if hasattr(mixer, "declare_io"):  # a stateless block of a user's has nothing to declare
                mixer.declare_io(em, i)
        attention_io.attention_metadata(em, self.rotary(spec))
        if plan.left_padding:
            left_padding.prepare(em, whole_model=not has_recurrent_layers(self, spec))
        progress.step("lm_head and embeddings")
        lm_head = embedding.lm_head_weight(em)
        residual = self.embed(em, lm_head)
        hidden = self.input_norm(em, residual)
        for i in range(spec.num_layers):
            progress.step(f"layer {i + 1}/{spec.num_layers}")
            hidden, residual = self.decoder_layer(em, i, hidden, residual)
            if i == 0:  # a family's stream mistake shows in its first layer, before the rest is written
                em.check_stream(type(self).__name__, 1)
        self.logits(em, hidden, lm_head)

    def check_graph(self) -> None:
        """Refuse a finished graph that breaks what its options promise (the pipeline calls this after
        build_graph, also a family's own): a residual stream that is not the float32 one
        --residual-dtype fp32 asks for, or a --format transformers.js graph that reads left-padded
        batches as if they were not."""
        name, em = type(self).__name__, getattr(self, "emitter", None)
        if em is None or (self.plan.left_padding and not left_padding.active(em)):
            if self.plan.left_padding:
                raise BuilderError(
                    f"{name}: its build_graph does not prepare the graph for left-padded batches "
                    "(left_padding.prepare on self.emitter), so this --format transformers.js build would read "
                    "them wrong; write the model through the hooks (input_norm, decoder_layer, next_norm; "
                    "docs/architecture.md) rather than build_graph, or build --format genai"
                )
            return
        em.check_stream(name, self.plan.spec.num_layers)
        left_padding.check(em, name, self.plan.spec.num_layers)

    def input_norm(self, em: Emitter, embeddings: str) -> str:
        """The first layer's normalized input, from the embeddings (which are also its residual):
        layers.0.input_layernorm. A model with no norm before its first block returns
        em.to_block(embeddings, name)."""
        first = "/model/layers.0/input_layernorm"
        return em.to_block(em.rms_norm(embeddings, em.norm_weight(0, "input_layernorm.weight"), first), first)

    def embed(self, em: Emitter, lm_head) -> str:
        """The token embeddings: the hidden state that the first layer's norm and residual take."""
        return embedding.embedding(em, lm_head)

    def logits(self, em: Emitter, hidden: str, lm_head) -> None:
        """lm_head over the final norm's output, writing the graph's `logits` (Granite would scale
        `hidden` first, by 1 / logits_scaling, and call this)."""
        embedding.logits(em, hidden, lm_head)

    def decoder_layer(self, em: Emitter, i: int, hidden: str, residual: str) -> tuple[str, str]:
        """One layer: normalized input in, (next layer's normalized input, residual) out."""
        spec = em.spec
        mixed = self.mix(em, i, hidden)
        hidden, residual = em.skip_norm(
            mixed,
            residual,
            em.norm_weight(i, "post_attention_layernorm.weight"),
            f"/model/layers.{i}/post_attention_layernorm",
        )
        return em.skip_norm(self.feed_forward(spec, i)(em, i, hidden), residual, *self.next_norm(em, i))

    def mix(self, em: Emitter, i: int, hidden: str) -> str:
        """Layer i's mixer (attention, linear attention) on its normalized input. A family that
        writes its own decoder_layer calls this rather than mixer(spec, i) itself: for left-padded
        batches a hybrid's attention layers take their input reordered (kit/blocks/left_padding.py)."""
        return left_padding.mixer(em, self.mixer(em.spec, i), i, hidden)

    def next_norm(self, em: Emitter, i: int) -> tuple[str, str]:
        """(weight, node name) of the norm after layer i: the next input_layernorm or model.norm."""
        if i + 1 < em.spec.num_layers:
            return em.norm_weight(i + 1, "input_layernorm.weight"), f"/model/layers.{i + 1}/input_layernorm"
        return em.norm_weight(None, "model.norm.weight"), "/model/norm"
