"""The packing policy: how attention and MLP projections are laid out.

`auto` resolves through AUTO_LAYOUT, a table keyed by execution provider. Each
entry names the measurement behind it (docs/packing.md). Explicit choices are
checked against what the target runtime runs (builder.kit.targets), and a packed
layout falls back to separate projections when the projections do not share
one weight format (the llama.cpp lesson: V often gets more bits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from builder.kit.errors import BuilderError
from builder.kit.options import BuildOptions
from builder.kit.targets import Target
from quant import QuantScheme

# ep -> (qkv packing, mlp packing, silu form, evidence). fused-norm entries fall back
# to packed-split where the target runtime lacks GQA's q/k-norm inputs.
AUTO_LAYOUT: dict[str, tuple[str, str, str, str]] = {
    # CPU (this 2-core machine), Qwen3-0.6B int4 through onnxruntime-genai, fresh session
    # per run, shuffled order: every packing/SiLU layout decoded within 2% of the others,
    # inside the noise floor (two identical builds measured 1.1% apart); Sigmoid+Mul over
    # QuickGelu because long-lived-session runs put QuickGelu 4% behind. The head-norm
    # form is what mattered, at 1.7B (see choose_layout). docs/packing.md#cpu.
    "cpu": ("packed-split", "separate", "sigmoid-mul", "docs/packing.md#cpu"),
    # WebGPU (onnxruntime-webgpu 1.27, H100), Qwen3-0.6B int4, 512+128 tokens,
    # interleaved runs: packed-split decoded at 0.93x and 0.89x of separate q/k/v (paired
    # medians; ORT's run-time fusion matches three MatMulNBits, not MatMul + Split), packed
    # gate_up at 0.86-0.91x, Sigmoid+Mul at 0.97-1.0x of QuickGelu. docs/packing.md#webgpu.
    "webgpu": ("separate", "separate", "quickgelu", "docs/packing.md#webgpu"),
    # CUDA: the reference builder's layout (packed QKV, norm inside GQA); fused QKV gave
    # +4-5% in llama.cpp (REFERENCE 4). Not measured here: no onnxruntime-gpu on the GPU machine.
    "cuda": ("fused-norm", "separate", "quickgelu", "REFERENCE.md section 4; not measured here"),
    # DirectML: GQA there takes neither packed QKV nor rotary: the reference builder's
    # layout (separate projections + RotaryEmbedding). Not measured here (no DirectML).
    "dml": ("separate", "separate", "sigmoid-mul", "reference builder's dml layout; not measured here"),
}


@dataclass(frozen=True)
class Layout:
    qkv: str          # packed-split | separate | fused-norm
    mlp: str          # packed | separate
    head_norm: str    # branchwise | reshape-sln | gqa (only with qk-norm)
    rotary_in_gqa: bool
    packed_qkv_into_gqa: bool  # no Split: GQA reads the packed QKV (no QK-norm, rotary in GQA)
    silu: str = "quickgelu"    # quickgelu (QuickGelu alpha=1 is exactly SiLU, one node) or sigmoid-mul
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> dict:
        return {"qkv_packing": self.qkv, "mlp_packing": self.mlp, "head_norm": self.head_norm,
                "rotary_in_gqa": self.rotary_in_gqa, "packed_qkv_into_gqa": self.packed_qkv_into_gqa,
                "silu": self.silu, "notes": list(self.notes)}


def choose_layout(options: BuildOptions, target: Target, qk_norm: bool,
                  qkv_formats: list[list[QuantScheme]], mlp_formats: list[list[QuantScheme]]) -> Layout:
    """Resolve the packing options for one model.

    qkv_formats / mlp_formats: per layer, the formats of [q, k, v] / [gate, up].
    """
    notes: list[str] = []
    auto_qkv, auto_mlp, auto_silu, evidence = AUTO_LAYOUT[target.ep]
    rotary_in_gqa = target.supports("gqa_rotary")

    qkv = options.qkv_packing
    if qkv == "auto":
        qkv = auto_qkv
        if qkv == "fused-norm" and not (qk_norm and target.supports("gqa_qk_norm")):
            qkv = "packed-split"
        notes.append(f"qkv_packing auto -> {qkv} ({evidence})")
    elif qkv == "fused-norm":
        if not qk_norm:
            raise BuilderError("--qkv-packing fused-norm needs a QK-norm model (e.g. Qwen3); "
                               "this model has no q_norm/k_norm: use packed-split or separate")
        if not target.supports("gqa_qk_norm"):
            raise BuilderError(f"--qkv-packing fused-norm is not run by {target.ep} on ONNX Runtime "
                               f"{target.version_text} (GroupQueryAttention q_norm_weight/k_norm_weight "
                               "need cuda or webgpu, ORT >= 1.28); use packed-split or separate")
    if qkv != "separate" and not target.supports("gqa_packed_qkv") and options.qkv_packing == "auto":
        qkv = "separate"
    if qkv != "separate" and any(len(set(f)) > 1 for f in qkv_formats):
        notes.append("q/k/v projections differ in weight format in some layers; those layers use "
                     "separate projections")

    mlp = options.mlp_packing
    if mlp == "auto":
        mlp = auto_mlp
        notes.append(f"mlp_packing auto -> {mlp} ({evidence})")
    if mlp == "packed" and any(len(set(f)) > 1 for f in mlp_formats):
        notes.append("gate/up projections differ in weight format in some layers; those layers use "
                     "separate projections")

    if not qk_norm:
        head_norm = "none"
    elif qkv == "fused-norm":
        head_norm = "gqa"
    elif options.head_norm == "branchwise":
        if not target.supports("branchwise_rmsnorm"):
            raise BuilderError(f"--head-norm branchwise: BranchwiseRMSNorm is not run by {target.ep} on ONNX "
                               f"Runtime {target.version_text} (cpu, ORT >= 1.31 only); use reshape-sln")
        head_norm = "branchwise"
    else:
        # auto: Qwen3-1.7B int4 cpu decoded 1.13x faster with Reshape/SLN/Reshape than with
        # BranchwiseRMSNorm (5/5 fresh sessions; docs/packing.md#cpu), despite 2 more nodes.
        head_norm = "reshape-sln"
    packed_into_gqa = (qkv == "packed-split" and not qk_norm and rotary_in_gqa)
    silu = options.silu
    if silu == "auto":
        silu = auto_silu if target.supports("quick_gelu") else "sigmoid-mul"
    elif silu == "quickgelu" and not target.supports("quick_gelu"):
        raise BuilderError(f"--silu quickgelu: QuickGelu is not verified on {target.ep}; use sigmoid-mul")
    return Layout(qkv, mlp, head_norm, rotary_in_gqa, packed_into_gqa, silu, tuple(notes))
