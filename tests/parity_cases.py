"""HF architecture -> the tiny configs (support.synthetic.TINY_CONFIGS) its parity tests run.

tests/test_registry.py fails when a registered architecture is missing here, so
no family can be added without fp32, quantized and genai parity tests.
"""

PARITY_CASES: dict[str, list[str]] = {
    # head_dim != hidden/heads, one KV head, untied embeddings.
    "Qwen3ForCausalLM": ["qwen3", "qwen3-1kv", "qwen3-untied"],
    # Llama-3 rope scaling with all three frequency bands in use.
    "LlamaForCausalLM": ["llama"],
    # q/k/v biases: one packed bias Add before the Split (or three Adds when separate).
    "Qwen2ForCausalLM": ["qwen2"],
    # sliding_window 8 under a 12-token prompt + decode, and the same model without a window.
    "MistralForCausalLM": ["mistral", "mistral-nosw"],
    # 4 experts, top-2, normalized top-k weights: MoE (fp32) / QMoE (int4, int8) nodes.
    "Qwen3MoeForCausalLM": ["qwen3-moe"],
    # (1 + w) norms, four per layer, scaled embedding, FastGelu, query_pre_attn_scalar, sliding
    # window 6 with local rope on layers 0-1, linear rope scaling on the global layer 2.
    "Gemma3ForCausalLM": ["gemma3"],
}

ALL_CASES = [name for names in PARITY_CASES.values() for name in names]
