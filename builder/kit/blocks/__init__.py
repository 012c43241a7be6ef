"""Reusable layer blocks. A family picks and configures them; each emits its nodes from the plan.

- emitter: what every block writes with (graph, projections, plan, names, shared inputs,
  the RMSNorm and skip-RMSNorm nodes)
- attention: GroupQueryAttention with its packing, Q/K-norm and rotary variants; KV I/O
- gated_attention: attention with a sigmoid output gate from q_proj (Qwen3.5, Qwen3-Next)
- linear_attention: Gated DeltaNet on com.microsoft LinearAttention (Qwen3.5, Qwen3-Next)
- mlp: the dense gated MLP (SiLU or GELU)
- moe: sparse experts as com.microsoft MoE / QMoE
- embedding: token embeddings, lm_head and logits (GatherBlockQuantized sharing int4 bytes)
- left_padding: left-padded batches (transformers.js) reordered for GroupQueryAttention
- right_padding: genai's right-padded batches kept out of the recurrent layers' state (--padded-batches)
"""

from builder.kit.blocks.attention import Attention
from builder.kit.blocks.emitter import Emitter
from builder.kit.blocks.mlp import DenseMLP
from builder.kit.blocks.moe import MoeSpec, SparseMoE

__all__ = ["Attention", "DenseMLP", "Emitter", "MoeSpec", "SparseMoE"]
