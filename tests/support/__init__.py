"""Test support: seeded random checkpoints and a small tokenizer (not part of the installed package)."""
