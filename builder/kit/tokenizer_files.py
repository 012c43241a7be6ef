"""Copying the tokenizer files onnxruntime-genai reads next to the model."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
# genai's tokenizer needs these two; the others are copied when present.
REQUIRED = ("tokenizer.json", "tokenizer_config.json")


def copy_tokenizer_files(source: Path, destination: Path) -> tuple[list[str], list[str]]:
    """Copy what exists; return (copied, missing required files)."""
    copied = []
    for name in TOKENIZER_FILES:
        path = Path(source) / name
        if path.is_file():
            shutil.copyfile(path, Path(destination) / name)
            copied.append(name)
    missing = [name for name in REQUIRED if name not in copied]
    return copied, missing
