"""The packing policy: how attention and MLP projections are laid out.

`auto` resolves through AUTO_LAYOUT, a table keyed by execution provider (webgpu
split by runtime: `Target.layout_key`). Each
entry names the measurement behind it (docs/packing.md). Explicit choices are
checked against what the target runtime runs (builder.kit.targets), and a packed
layout falls back to separate projections when the projections do not share
one weight format (the llama.cpp lesson: V often gets more bits).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from builder.kit.errors import BuilderError
from builder.kit.options import HEAD_NORMS, MLP_PACKINGS, QKV_PACKINGS, SILU_FORMS, BuildOptions
from builder.kit.targets import Target
from quant import QuantScheme


@dataclass(frozen=True)
class PackGroup:
    """Projections that may be written as one MatMul: `modules` concatenated along N.

    policy: "qkv" and "mlp" follow --qkv-packing / --mlp-packing; "always" packs
    whenever the formats agree (e.g. a linear-attention layer's in_proj_qkvz).
    """

    name: str
    modules: tuple[str, ...]
    policy: str


# ep -> (qkv packing, mlp packing, silu form, evidence). fused-norm entries fall back
# to packed-split where the target runtime lacks GQA's q/k-norm inputs.
AUTO_LAYOUT: dict[str, tuple[str, str, str, str]] = {
    # CPU (this 2-core machine), Qwen3-0.6B int4 through onnxruntime-genai, fresh session
    # per run, shuffled order: every packing/SiLU layout decoded within 2% of the others,
    # inside the noise floor (two identical builds measured 1.1% apart); Sigmoid+Mul over
    # QuickGelu because long-lived-session runs put QuickGelu 4% behind. The head-norm
    # form is what mattered, at 1.7B (see choose_layout). docs/packing.md#cpu.
    "cpu": ("packed-split", "separate", "sigmoid-mul", "docs/packing.md#cpu"),
    # WebGPU on onnxruntime 1.31 + the plugin EP 0.4.0 (H200), Qwen3-0.6B int4, capture on,
    # 256+128 tokens, paired fresh sessions: sigmoid-mul 1.018x, fused-norm 0.98-1.0x of this
    # row (noise ~5%). The runtime fuses this graph into MatMulNBitsQkv / GQA with the q/k
    # norms folded in / MatMulNBitsMlp (QuickGelu included), so no layout runs fewer kernels.
    "webgpu": ("separate", "separate", "quickgelu", "docs/packing.md#webgpu-plugin-ep"),
    # WebGPU (onnxruntime-webgpu 1.27, H100), Qwen3-0.6B int4, 512+128 tokens,
    # interleaved runs: packed-split decoded at 0.93x and 0.89x of separate q/k/v (paired
    # medians; ORT's run-time fusion matches three MatMulNBits, not MatMul + Split), packed
    # gate_up at 0.86-0.91x, Sigmoid+Mul at 0.97-1.0x of QuickGelu. docs/packing.md#webgpu.
    "webgpu-1.27": ("separate", "separate", "quickgelu", "docs/packing.md#webgpu"),
    # CUDA: the reference builder's layout (packed QKV, norm inside GQA); fused QKV gave
    # +4-5% in llama.cpp (REFERENCE 4). Not measured here: no onnxruntime-gpu on the GPU machine.
    "cuda": ("fused-norm", "separate", "quickgelu", "reference builder's cuda layout; not measured here"),
    # DirectML: GQA there takes neither packed QKV nor rotary: the reference builder's
    # layout (separate projections + RotaryEmbedding). Not measured here (no DirectML).
    "dml": ("separate", "separate", "sigmoid-mul", "reference builder's dml layout; not measured here"),
}


@dataclass(frozen=True)
class Layout:
    qkv: str  # packed-split | separate | fused-norm
    mlp: str  # packed | separate
    head_norm: str  # branchwise | reshape-sln | gqa (only with qk-norm)
    rotary_in_gqa: bool
    packed_qkv_into_gqa: bool  # no Split: GQA reads the packed QKV (no QK-norm, rotary in GQA)
    silu: str = "quickgelu"  # quickgelu (QuickGelu alpha=1 is exactly SiLU, one node) or sigmoid-mul
    notes: tuple[str, ...] = field(default=())
    packed: frozenset[str] = field(default=frozenset())  # PackGroup names written as one MatMul

    def describe(self) -> dict:
        return {
            "qkv_packing": self.qkv,
            "mlp_packing": self.mlp,
            "head_norm": self.head_norm,
            "rotary_in_gqa": self.rotary_in_gqa,
            "packed_qkv_into_gqa": self.packed_qkv_into_gqa,
            "silu": self.silu,
            "notes": list(self.notes),
        }


# GroupQueryAttention applies its rotary (cos/sin caches) only to a head size that is a multiple of
# 16 (onnxruntime's CheckRotaryCaches refuses the node at run time otherwise); such heads take
# RotaryEmbedding nodes before it instead (the layout of runtimes without rotary in GQA).
GQA_ROTARY_HEAD_MULTIPLE = 16


def choose_layout(
    options: BuildOptions,
    target: Target,
    qk_norm: bool,
    groups: list[PackGroup],
    formats: dict[str, QuantScheme],
    head_dim: int = 128,
) -> Layout:
    """Resolve the packing options for one model, and which pack groups are packed.

    A group is packed when its policy says so and its projections share one weight
    format; this is the only place that falls back to separate projections.
    """

    def mixed(group: PackGroup) -> bool:
        return len({formats[m] for m in group.modules}) > 1

    qkv_groups = [g for g in groups if g.policy == "qkv"]
    mlp_groups = [g for g in groups if g.policy == "mlp"]
    notes: list[str] = []
    auto_qkv, auto_mlp, auto_silu, evidence = AUTO_LAYOUT[target.layout_key]
    rotary_in_gqa = target.supports("gqa_rotary")
    if rotary_in_gqa and head_dim % GQA_ROTARY_HEAD_MULTIPLE:
        rotary_in_gqa = False
        notes.append(
            f"rotary in RotaryEmbedding nodes: GroupQueryAttention's own needs a head size that is a multiple "
            f"of {GQA_ROTARY_HEAD_MULTIPLE} (head_dim {head_dim})"
        )

    qkv = options.qkv_packing
    if qkv == "auto":
        qkv = auto_qkv
        if qkv == "fused-norm" and not (qk_norm and target.supports("gqa_qk_norm") and rotary_in_gqa):
            qkv = "packed-split"
        notes.append(f"qkv_packing auto -> {qkv} ({evidence})")
    elif qkv == "fused-norm":
        if not qk_norm:
            raise BuilderError(
                "--qkv-packing fused-norm needs a QK-norm model (e.g. Qwen3); "
                "this model has no q_norm/k_norm: use packed-split or separate"
            )
        if not target.supports("gqa_qk_norm"):
            raise BuilderError(
                f"--qkv-packing fused-norm is not run by {target.ep} on ONNX Runtime "
                f"{target.version_text} (GroupQueryAttention q_norm_weight/k_norm_weight "
                "need cuda or webgpu, ORT >= 1.28); use packed-split or separate"
            )
        if not rotary_in_gqa:  # the norms inside GQA would come after the RotaryEmbedding nodes
            raise BuilderError(
                f"--qkv-packing fused-norm needs GroupQueryAttention's own rotary, which needs a head size "
                f"that is a multiple of {GQA_ROTARY_HEAD_MULTIPLE} (head_dim {head_dim}); use packed-split or separate"
            )
    if qkv != "separate" and not target.supports("gqa_packed_qkv") and options.qkv_packing == "auto":
        qkv = "separate"
    if qkv != "separate" and any(mixed(g) for g in qkv_groups) and not all(mixed(g) for g in qkv_groups):
        notes.append("q/k/v projections differ in weight format in some layers; those layers use separate projections")

    mlp = options.mlp_packing
    if mlp == "auto":
        mlp = auto_mlp
        notes.append(f"mlp_packing auto -> {mlp} ({evidence})")
    if mlp == "packed" and any(mixed(g) for g in mlp_groups) and not all(mixed(g) for g in mlp_groups):
        notes.append(
            "gate/up projections differ in weight format in some layers; those layers use separate projections"
        )

    if not qk_norm:
        head_norm = "none"
    elif qkv == "fused-norm":
        head_norm = "gqa"
    elif options.head_norm == "branchwise":
        if not target.supports("branchwise_rmsnorm"):
            raise BuilderError(
                f"--head-norm branchwise: BranchwiseRMSNorm is not run by {target.ep} on ONNX "
                f"Runtime {target.version_text} (cpu, ORT >= 1.31 only); use reshape-sln"
            )
        head_norm = "branchwise"
    else:
        # auto: Qwen3-1.7B int4 cpu decoded 1.13x faster with Reshape/SLN/Reshape than with
        # BranchwiseRMSNorm (5/5 fresh sessions; docs/packing.md#cpu), despite 2 more nodes.
        head_norm = "reshape-sln"
    packed_into_gqa = qkv == "packed-split" and not qk_norm and rotary_in_gqa
    silu = options.silu
    if silu == "auto":
        silu = auto_silu if target.supports("quick_gelu") else "sigmoid-mul"
    elif silu == "quickgelu" and not target.supports("quick_gelu"):
        raise BuilderError(f"--silu quickgelu: QuickGelu is not verified on {target.ep}; use sigmoid-mul")
    packed = packed_groups(groups, formats, qkv, mlp)
    # Where the formats differ in every layer, no group is packed: "packed-split" (and, without QK-norm,
    # GroupQueryAttention reading the packed QKV) was reported over a graph of separate projections.
    if qkv != "separate" and qkv_groups and not any(g.name in packed for g in qkv_groups):
        notes.append(f"q/k/v projections differ in weight format in every layer: qkv_packing {qkv} -> separate")
        qkv, packed_into_gqa = "separate", False
    if mlp == "packed" and mlp_groups and not any(g.name in packed for g in mlp_groups):
        notes.append("gate/up projections differ in weight format in every layer: mlp_packing packed -> separate")
        mlp = "separate"
    return Layout(qkv, mlp, head_norm, rotary_in_gqa, packed_into_gqa, silu, tuple(notes), packed)


def packed_groups(groups: list[PackGroup], formats: dict[str, QuantScheme], qkv: str, mlp: str) -> frozenset[str]:
    """The groups written as one MatMul under these packings: those whose policy the packing asks
    for and whose projections share one weight format."""
    wanted = {"qkv": qkv != "separate", "mlp": mlp == "packed", "always": True}
    return frozenset(g.name for g in groups if wanted[g.policy] and len({formats[m] for m in g.modules}) == 1)


def family_adjusted(
    chosen: Layout,
    adjusted: Layout,
    groups: list[PackGroup],
    formats: dict[str, QuantScheme],
    qk_norm: bool,
    family: str = "the family",
) -> Layout:
    """A family's adjust_layout result with its packing labels and its packed groups agreeing.

    The blocks read `packed` (which groups are one MatMul) and the report the labels: a family that
    changed the labels (qkv="separate") built the graph the labels had said before, and one that
    changed the groups reported a packing its graph did not have. Whichever the family changed
    decides the other. (Where a model has no group of a policy, as MoE layers have no gate/up pair,
    the label is the policy resolved, with nothing to pack.)
    """
    hook = f"{family}.adjust_layout"
    if not isinstance(adjusted, Layout):
        raise BuilderError(
            f"{hook} returned {type(adjusted).__name__}, not a Layout: return the layout it is given, changed "
            'with dataclasses.replace(layout, mlp="packed"), or as it is (docs/architecture.md, adjust_layout)'
        )
    # A label no block reads was reported as the packing while the graph was another (mlp="fused"
    # built separate projections; a group name that no pack_groups gives packed nothing).
    for field_name, value, allowed in (
        ("qkv", adjusted.qkv, [q for q in QKV_PACKINGS if q != "auto"]),
        ("mlp", adjusted.mlp, [m for m in MLP_PACKINGS if m != "auto"]),
        ("head_norm", adjusted.head_norm, ["none", "gqa", *(h for h in HEAD_NORMS if h != "auto")]),
        ("silu", adjusted.silu, ["none", *(f for f in SILU_FORMS if f != "auto")]),
    ):
        if value not in allowed:
            raise BuilderError(
                f"{hook} set {field_name}={value!r}, which no block writes; use one of {', '.join(allowed)}"
            )
    if adjusted.qkv == "fused-norm" and chosen.qkv != "fused-norm":
        # Its Q/K norms inside GroupQueryAttention (head_norm "gqa") need a target that runs them, which
        # only --qkv-packing fused-norm checks; the label alone built packed-split and reported fused-norm.
        raise BuilderError(
            f"{hook} set qkv='fused-norm', which only --qkv-packing fused-norm chooses (it checks that the "
            f"target runs GroupQueryAttention's Q/K norms); a family may set packed-split or separate"
        )
    names = {g.name for g in groups}
    unknown = sorted(set(adjusted.packed) - names)
    if unknown:
        example = f" (such as {min(names)})" if names else ""
        raise BuilderError(
            f"{hook} packs {', '.join(unknown[:3])}{' and more' if len(unknown) > 3 else ''}, which is no group "
            f"its pack_groups gives{example}: nothing would be packed there"
        )
    qkv, mlp, packed = adjusted.qkv, adjusted.mlp, frozenset(adjusted.packed)
    if packed == chosen.packed and (qkv, mlp) != (chosen.qkv, chosen.mlp):
        packed = packed_groups(groups, formats, qkv, mlp)
    if packed != chosen.packed or (qkv, mlp) != (chosen.qkv, chosen.mlp):
        # The labels follow the groups packed, whichever the family set: a packed-split whose q/k/v
        # differ in format in every layer packs nothing (choose_layout's rule).
        by_policy = {p: [g for g in groups if g.policy == p] for p in ("qkv", "mlp")}
        qkv_packed = any(g.name in packed for g in by_policy["qkv"])
        if by_policy["qkv"] and not qkv_packed and qkv == "packed-split":
            qkv = "separate"
        elif qkv_packed and qkv == "separate":
            qkv = "packed-split"
        if by_policy["mlp"]:
            mlp = "packed" if any(g.name in packed for g in by_policy["mlp"]) else "separate"
    into_gqa = adjusted.packed_qkv_into_gqa
    if qkv != chosen.qkv:
        into_gqa = qkv == "packed-split" and not qk_norm and adjusted.rotary_in_gqa
    # The report's notes said "auto -> separate (evidence)" over a packing the family chose.
    notes = list(adjusted.notes)
    for policy, before, now in (("qkv", chosen.qkv, qkv), ("mlp", chosen.mlp, mlp)):
        if now != before:
            notes = [n for n in notes if not n.startswith(f"{policy}_packing auto ->")]
            notes.append(f"{policy}_packing {now}: chosen by {family}'s adjust_layout (the target's choice: {before})")
    return replace(adjusted, qkv=qkv, mlp=mlp, packed=packed, packed_qkv_into_gqa=into_gqa, notes=tuple(notes))
