"""The Llama-style decoder every built-in family derives from.

A subclass says what differs from Llama: config keys (`make_spec`), tensor
names (`weight`), and the blocks it overrides (`attention`, `mlp`, ...).
Graph structure follows what ONNX Runtime runs fused:

    Gather(Block Quantized) -> SimplifiedLayerNorm
    per layer: QKV projection(s) [-> Split] [-> per-head Q/K RMSNorm] -> GroupQueryAttention
               -> o_proj -> SkipSimplifiedLayerNorm -> gate/up -> SiLU * up -> down_proj
               -> SkipSimplifiedLayerNorm
    lm_head (MatMulNBits or MatMul) -> logits
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from builder.kit.checkpoint import Checkpoint
from builder.kit.errors import BuilderError
from builder.kit.graph import MS_DOMAIN, Graph
from builder.kit.layout import Layout, choose_layout
from builder.kit.linear import Projections, QuantizedTensor
from builder.kit.options import BuildOptions
from builder.kit.progress import Progress
from builder.kit.rope import RopeSpec
from builder.kit.targets import Target
from builder.kit.selection import format_for, patterns_matching_nothing
from quant import QuantScheme


@dataclass
class DecoderSpec:
    """The dimensions of a decoder, normalized from its HF config."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    rope: RopeSpec
    qk_norm: bool = False
    attention_bias: bool = False
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] = field(default=())
    attention_scale: float | None = None   # default 1/sqrt(head_dim); Gemma: query_pre_attn_scalar**-0.5

    @classmethod
    def from_config(cls, config: dict, **overrides) -> "DecoderSpec":
        def need(key):
            if key not in config:
                raise BuilderError(f"config.json has no {key!r}; it is required for this architecture")
            value = config[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise BuilderError(f"config.json: {key} = {value!r} must be a positive number")
            return value

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        head_dim = int(config.get("head_dim") or hidden // heads)
        act = config.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise BuilderError(f"config.json: hidden_act {act!r} is not supported (only silu MLPs)")
        values = dict(
            hidden_size=hidden,
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            intermediate_size=int(need("intermediate_size")),
            vocab_size=int(need("vocab_size")),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
            rope=RopeSpec.from_config(config, head_dim),
        )
        values.update(overrides)
        spec = cls(**values)
        if spec.num_heads % spec.num_kv_heads:
            raise BuilderError(f"config.json: num_attention_heads {spec.num_heads} is not a multiple of "
                               f"num_key_value_heads {spec.num_kv_heads}")
        return spec


class DecoderBuilder:
    """Builds a Llama-style decoder; subclass it for other families."""

    architectures: tuple[str, ...] = ()
    genai_type = "llama"      # model.type in genai_config.json
    qk_norm = False           # per-head RMSNorm on Q and K (Qwen3, Gemma 3)
    attention_bias = False    # q/k/v projections have biases (Qwen2)
    projections = Projections  # writes weights; a family may change how (Gemma's 1 + w norms)

    def __init__(self, checkpoint: Checkpoint, options: BuildOptions):
        self.checkpoint = checkpoint
        self.options = options.validated()
        self.config = checkpoint.config
        self.target = Target.from_options(self.options)
        self.spec = self.make_spec(self.config)
        if not self.checkpoint.has("lm_head.weight") and not self.spec.tie_word_embeddings:
            # Some configs omit tie_word_embeddings while the weights are tied.
            self.spec.tie_word_embeddings = True
        self.context_length = self.options.context_length or self.spec.max_position_embeddings
        self.io_dtype = self.target.io_dtype
        self.io_type = self.target.io_onnx_type
        level = self.options.accuracy_level
        self.accuracy_level = self.target.default_accuracy_level if level is None else level
        self._check_layer_patterns()
        self.layout = self.choose_layout()

    @classmethod
    def from_pretrained(cls, model: str, options: BuildOptions | None = None, **option_values):
        """A builder for a local folder or hub id; options as BuildOptions or keywords."""
        options = options or BuildOptions.from_mapping({"model": model, **option_values}, "from_pretrained()")
        options.model = model
        return cls(Checkpoint.open(model), options)

    # ---- hooks for subclasses -----------------------------------------------

    def make_spec(self, config: dict) -> DecoderSpec:
        return DecoderSpec.from_config(config, qk_norm=self.qk_norm,
                                       attention_bias=bool(config.get("attention_bias", self.attention_bias)))

    def weight(self, layer: int | None, suffix: str) -> str:
        """The checkpoint's name of a tensor (Hugging Face naming)."""
        return f"model.layers.{layer}.{suffix}" if layer is not None else suffix

    def projection_modules(self) -> list[str]:
        modules = []
        for i in range(self.spec.num_layers):
            for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
                modules.append(f"model.layers.{i}.{proj}")
        return ["model.embed_tokens"] + modules + ["lm_head"]

    def fmt(self, module: str) -> QuantScheme:
        return format_for(module, self.options)

    @classmethod
    def prepare_reference(cls, model, options: BuildOptions, io_dtype=np.float32) -> None:
        """builder.verify's hook: after it swaps nn.Linear weights for their dequantized
        values, give the transformers model the other weights the graph changes (e.g.
        fused MoE expert tensors). Nothing to do for dense decoders."""

    # ---- layout -------------------------------------------------------------

    def _check_layer_patterns(self) -> None:
        unmatched = patterns_matching_nothing(self.projection_modules(), self.options)
        if unmatched:
            raise BuilderError(f"--int8-layers/--float-layers pattern(s) {unmatched} match no projection; "
                               "names look like lm_head, model.layers.0.self_attn.v_proj or '*.v_proj'")

    def choose_layout(self) -> Layout:
        qkv = [[self.fmt(f"model.layers.{i}.self_attn.{p}_proj") for p in "qkv"]
               for i in range(self.spec.num_layers)]
        mlp = [[self.fmt(f"model.layers.{i}.mlp.{p}_proj") for p in ("gate", "up")]
               for i in range(self.spec.num_layers)]
        return choose_layout(self.options, self.target, self.spec.qk_norm, qkv, mlp)

    # ---- the graph ----------------------------------------------------------

    def build_graph(self, graph: Graph, progress: Progress) -> None:
        self.graph = graph
        self.proj = self.projections(graph, self.checkpoint, self.io_dtype, self.accuracy_level)
        s = self.spec
        self.make_inputs()
        self.make_attention_metadata()
        progress.step("lm_head and embeddings")
        lm_head = self.make_lm_head_weight()
        hidden = self.make_embedding(lm_head)
        residual = hidden
        hidden = self.graph.op("SimplifiedLayerNormalization",
                               [hidden, self.norm_weight(0, "input_layernorm.weight")],
                               "/model/layers.0/input_layernorm/LayerNorm", axis=-1, epsilon=s.rms_norm_eps)
        for i in range(s.num_layers):
            progress.step(f"layer {i + 1}/{s.num_layers}")
            hidden, residual = self.decoder_layer(i, hidden, residual)
        self.make_logits(hidden, lm_head)

    def decoder_layer(self, i: int, hidden: str, residual: str) -> tuple[str, str]:
        """One layer: normalized input in, (next layer's normalized input, residual) out."""
        attn = self.attention(i, hidden)
        hidden, residual = self.skip_norm(attn, residual, self.norm_weight(i, "post_attention_layernorm.weight"),
                                          f"/model/layers.{i}/post_attention_layernorm")
        return self.skip_norm(self.mlp(i, hidden), residual, *self.next_norm(i))

    def next_norm(self, i: int) -> tuple[str, str]:
        """(weight, node name) of the norm after layer i: the next input_layernorm or model.norm."""
        if i + 1 < self.spec.num_layers:
            return self.norm_weight(i + 1, "input_layernorm.weight"), f"/model/layers.{i + 1}/input_layernorm"
        return self.norm_weight(None, "model.norm.weight"), "/model/norm"

    # ---- inputs -------------------------------------------------------------

    def make_inputs(self) -> None:
        s, g = self.spec, self.graph
        g.add_input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
        g.add_input("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])
        if not self.layout.rotary_in_gqa:
            g.add_input("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
        for i in range(s.num_layers):
            for kind in ("key", "value"):
                g.add_input(f"past_key_values.{i}.{kind}", self.io_type,
                            ["batch_size", s.num_kv_heads, "past_sequence_length", s.head_dim])
        g.add_output("logits", self.io_type, ["batch_size", "sequence_length", s.vocab_size])
        for i in range(s.num_layers):
            for kind in ("key", "value"):
                g.add_output(f"present.{i}.{kind}", self.io_type,
                             ["batch_size", s.num_kv_heads, "total_sequence_length", s.head_dim])

    def make_attention_metadata(self) -> None:
        """seqlens_k (tokens seen - 1, per batch row) and total_sequence_length for GQA."""
        g = self.graph
        base = "/model/attn_mask_reformat"
        total = g.op("ReduceSum", ["attention_mask", g.constant([1])], f"{base}/ReduceSum", keepdims=0)
        minus_one = g.op("Sub", [total, g.constant(1)], f"{base}/Sub")
        self.seqlens_k = g.op("Cast", [minus_one], f"{base}/Cast_seqlens", to=TensorProto.INT32)
        shape = g.op("Shape", ["attention_mask"], f"{base}/Shape")
        length = g.op("Gather", [shape, g.constant(1)], f"{base}/Gather", axis=0)
        self.total_seq_len = g.op("Cast", [length], f"{base}/Cast_total", to=TensorProto.INT32)
        cos, sin = self.spec.rope.caches(self.context_length, self.io_dtype)
        self.cos_cache = g.initializer("cos_cache", cos)
        self.sin_cache = g.initializer("sin_cache", sin)

    # ---- embeddings and lm_head --------------------------------------------

    def make_lm_head_weight(self) -> QuantizedTensor | str:
        """The lm_head weight: quantized (and shared with the embedding when tied) or float [H, V]."""
        s = self.spec
        source = "model.embed_tokens.weight" if s.tie_word_embeddings else "lm_head.weight"
        fmt = self.fmt("lm_head")
        if fmt.quantized:
            return self.proj.quantized_weight("lm_head", [source], fmt, [(s.vocab_size, s.hidden_size)])
        if s.tie_word_embeddings and not self.fmt("model.embed_tokens").quantized:
            return "model.embed_tokens.weight"  # the Gather's float table, transposed in the graph
        weight = self.proj.float_rows([source], [(s.vocab_size, s.hidden_size)])
        return self.graph.initializer("lm_head.weight", np.ascontiguousarray(weight.T))

    def make_embedding(self, lm_head: QuantizedTensor | str) -> str:
        """Token embeddings: int4 GatherBlockQuantized, or a float Gather.

        Tied int4 models read the lm_head's MatMulNBits bytes (one copy on disk);
        untied ones quantize their own table. int8 tables stay float: 8-bit
        GatherBlockQuantized is not verified on every EP here.
        """
        s, g = self.spec, self.graph
        fmt = self.fmt("model.embed_tokens")
        shape = (s.vocab_size, s.hidden_size)
        if fmt.quantized and fmt.bits == 4:
            if s.tie_word_embeddings and isinstance(lm_head, QuantizedTensor) and lm_head.format == fmt:
                return self.gather_quantized(lm_head)
            if not s.tie_word_embeddings:
                table = self.proj.quantized_weight("model.embed_tokens", ["model.embed_tokens.weight"], fmt, [shape])
                return self.gather_quantized(table)
        table = self.proj.float_initializer("model.embed_tokens.weight", "model.embed_tokens.weight", shape)
        return g.op("Gather", [table, "input_ids"], "/model/embed_tokens/Gather", axis=0)

    def gather_quantized(self, q: QuantizedTensor) -> str:
        s, g = self.spec, self.graph
        n_blocks = -(-s.hidden_size // q.format.block_size)
        flat = n_blocks * q.format.block_size // 2
        data = g.op("Reshape", [q.b, g.constant([s.vocab_size, flat])], "/model/embed_tokens/Reshape")
        inputs = [data, "input_ids", q.scales] + ([q.zero_points] if q.zero_points else [])
        out = g.op("GatherBlockQuantized", inputs, "/model/embed_tokens/GatherBlockQuantized",
                   domain=MS_DOMAIN, bits=4, block_size=q.format.block_size, gather_axis=0, quantize_axis=1)
        if n_blocks * q.format.block_size != s.hidden_size:
            # Rows are padded to whole blocks; the padding is not part of the embedding.
            out = g.op("Slice", [out, g.constant([0]), g.constant([s.hidden_size]), g.constant([-1])],
                       "/model/embed_tokens/Slice")
        return out

    def make_logits(self, hidden: str, lm_head: QuantizedTensor | str) -> None:
        g = self.graph
        if isinstance(lm_head, QuantizedTensor):
            out = self.proj.matmul_nbits(hidden, "/lm_head/MatMulNBits", lm_head)
        elif lm_head == "model.embed_tokens.weight":
            transposed = g.op("Transpose", [lm_head], "/lm_head/Transpose", perm=[1, 0])
            out = g.op("MatMul", [hidden, transposed], "/lm_head/MatMul")
        else:
            out = g.op("MatMul", [hidden, lm_head], "/lm_head/MatMul")
        # Nothing reads the projection's output yet, so renaming it costs no Identity node.
        assert g.nodes[-1].output[0] == out
        g.nodes[-1].output[0] = "logits"

    # ---- norms --------------------------------------------------------------

    def norm_weight(self, layer: int | None, suffix: str) -> str:
        name = self.weight(layer, suffix)
        shape = (self.spec.hidden_size,)
        return self.graph.initializer(name, self.proj.float_rows([name], [shape]))

    def skip_norm(self, x: str, residual: str, weight: str, name: str) -> tuple[str, str]:
        """SkipSimplifiedLayerNormalization: returns (normalized, new residual sum)."""
        out, _, _, total = self.graph.node(
            "SkipSimplifiedLayerNormalization", [x, residual, weight], f"{name}/SkipLayerNorm",
            outputs=[f"{name}/output_0", "", "", f"{name}/output_3"], domain=MS_DOMAIN,
            epsilon=self.spec.rms_norm_eps)
        return out, total

    def head_norm(self, x: str, weight_name: str, heads: int, name: str) -> str:
        """RMSNorm over each head of x [B, S, heads*D] with a [D] scale."""
        g, d = self.graph, self.spec.head_dim
        weight = g.initializer(weight_name, self.proj.float_rows([weight_name], [(d,)]))
        if self.layout.head_norm == "branchwise":
            return g.op("BranchwiseRMSNorm", [x, weight], f"{name}/BranchwiseRMSNorm", domain=MS_DOMAIN,
                        num_branches=heads, epsilon=self.spec.rms_norm_eps)
        split = g.op("Reshape", [x, g.constant([0, 0, heads, d])], f"{name}/Reshape_in")
        normed = g.op("SimplifiedLayerNormalization", [split, weight], f"{name}/LayerNorm",
                      axis=-1, epsilon=self.spec.rms_norm_eps)
        return g.op("Reshape", [normed, g.constant([0, 0, heads * d])], f"{name}/Reshape_out")

    # ---- attention ----------------------------------------------------------

    def attention(self, i: int, x: str) -> str:
        s, g, layout = self.spec, self.graph, self.layout
        base = f"/model/layers.{i}/attn"
        names = [self.weight(i, f"self_attn.{p}_proj.weight") for p in "qkv"]
        shapes = [(s.num_heads * s.head_dim, s.hidden_size)] + [(s.num_kv_heads * s.head_dim, s.hidden_size)] * 2
        biases = [self.weight(i, f"self_attn.{p}_proj.bias") for p in "qkv"] if s.attention_bias else None
        fmts = [self.fmt(f"model.layers.{i}.self_attn.{p}_proj") for p in "qkv"]
        packed = layout.qkv != "separate" and len(set(fmts)) == 1

        key = value = ""
        if packed:
            qkv = self.proj.matmul(x, f"{base}/qkv_proj", names, shapes, fmts[0], biases)
            if layout.packed_qkv_into_gqa:
                query = qkv
            else:
                query, key, value = g.node("Split", [qkv, g.constant([r for r, _ in shapes])],
                                           f"{base}/qkv_proj/Split", outputs=3, axis=-1)
        else:
            query, key, value = (
                self.proj.matmul(x, f"{base}/{p}_proj", [names[j]], [shapes[j]], fmts[j],
                                 [biases[j]] if biases else None)
                for j, p in enumerate("qkv"))

        extra = {}
        if s.qk_norm and layout.head_norm == "gqa":
            q_w, k_w = (self.weight(i, f"self_attn.{p}_norm.weight") for p in "qk")
            extra = dict(q_norm=g.initializer(q_w, self.proj.float_rows([q_w], [(s.head_dim,)])),
                         k_norm=g.initializer(k_w, self.proj.float_rows([k_w], [(s.head_dim,)])))
        elif s.qk_norm:
            query = self.head_norm(query, self.weight(i, "self_attn.q_norm.weight"), s.num_heads, f"{base}/q_norm")
            key = self.head_norm(key, self.weight(i, "self_attn.k_norm.weight"), s.num_kv_heads, f"{base}/k_norm")

        if not layout.rotary_in_gqa:
            query, key = (g.op("RotaryEmbedding", [t, "position_ids", self.cos_cache, self.sin_cache],
                               f"{base}/{n}_rotary/RotaryEmbedding", domain=MS_DOMAIN,
                               num_heads=h, interleaved=0)
                          for t, n, h in ((query, "q", s.num_heads), (key, "k", s.num_kv_heads)))

        attn = self.group_query_attention(i, query, key, value, base, **extra)
        o_shape = [(s.hidden_size, s.num_heads * s.head_dim)]
        return self.proj.matmul(attn, f"{base}/o_proj", [self.weight(i, "self_attn.o_proj.weight")], o_shape,
                                self.fmt(f"model.layers.{i}.self_attn.o_proj"))

    def group_query_attention(self, i: int, query: str, key: str, value: str, base: str,
                              q_norm: str | None = None, k_norm: str | None = None) -> str:
        s, g = self.spec, self.graph
        rotary = self.layout.rotary_in_gqa
        inputs = [query, key, value, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                  self.seqlens_k, self.total_seq_len,
                  self.cos_cache if rotary else "", self.sin_cache if rotary else ""]
        attrs = {}
        if q_norm:
            inputs += ["", "", "", "", "", q_norm, k_norm]  # position_ids .. v_scale unused
            attrs["qk_norm_epsilon"] = s.rms_norm_eps
        window = s.sliding_window if i in s.sliding_layers else None
        out, _, _ = g.node("GroupQueryAttention", inputs, f"{base}/GroupQueryAttention",
                           outputs=[f"{base}/GroupQueryAttention/output_0", f"present.{i}.key",
                                    f"present.{i}.value"],
                           domain=MS_DOMAIN, num_heads=s.num_heads, kv_num_heads=s.num_kv_heads,
                           scale=s.attention_scale or 1.0 / math.sqrt(s.head_dim), do_rotary=int(rotary),
                           rotary_interleaved=0,
                           local_window_size=window, **attrs)
        return out

    # ---- MLP ----------------------------------------------------------------

    def silu(self, x: str, name: str) -> str:
        g = self.graph
        if self.layout.silu == "quickgelu":
            return g.op("QuickGelu", [x], f"{name}/QuickGelu", domain=MS_DOMAIN, alpha=1.0)
        return g.op("Mul", [x, g.op("Sigmoid", [x], f"{name}/Sigmoid")], f"{name}/Mul")

    def mlp(self, i: int, x: str) -> str:
        s, g = self.spec, self.graph
        base = f"/model/layers.{i}/mlp"
        names = [self.weight(i, f"mlp.{p}_proj.weight") for p in ("gate", "up")]
        shapes = [(s.intermediate_size, s.hidden_size)] * 2
        fmts = [self.fmt(f"model.layers.{i}.mlp.{p}_proj") for p in ("gate", "up")]
        if self.layout.mlp == "packed" and fmts[0] == fmts[1]:
            gate_up = self.proj.matmul(x, f"{base}/gate_up_proj", names, shapes, fmts[0])
            gate, up = g.node("Split", [gate_up, g.constant([s.intermediate_size] * 2)],
                              f"{base}/gate_up_proj/Split", outputs=2, axis=-1)
        else:
            gate, up = (self.proj.matmul(x, f"{base}/{p}_proj", [n], [sh], f)
                        for p, n, sh, f in zip(("gate", "up"), names, shapes, fmts))
        hidden = g.op("Mul", [self.silu(gate, f"{base}/act_fn"), up], f"{base}/Mul")
        return self.proj.matmul(hidden, f"{base}/down_proj", [self.weight(i, "mlp.down_proj.weight")],
                                [(s.hidden_size, s.intermediate_size)], self.fmt(f"model.layers.{i}.mlp.down_proj"))
