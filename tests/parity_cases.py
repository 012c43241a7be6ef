"""HF architecture -> the tiny configs (builder.synthetic.TINY_CONFIGS) its parity tests run.

tests/test_registry.py fails when a registered architecture is missing here, so
no family can be added without fp32, quantized and genai parity tests.
"""

PARITY_CASES: dict[str, list[str]] = {
    # head_dim != hidden/heads, one KV head, untied embeddings.
    "Qwen3ForCausalLM": ["qwen3", "qwen3-1kv", "qwen3-untied"],
    # Llama-3 rope scaling with all three frequency bands in use.
    "LlamaForCausalLM": ["llama"],
}

ALL_CASES = [name for names in PARITY_CASES.values() for name in names]
