"""Copying the tokenizer files onnxruntime-genai reads next to the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from builder.kit.errors import BuilderError
from builder.kit.hf_config import check_generation_config
from builder.kit.safetensors_format import could_not_read

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


def check_tokenizer_files(source: Path) -> None:
    """Refuse JSON tokenizer files that do not parse, or hold no JSON object, and a
    generation_config.json whose values genai_config.json could not take; before any weight is
    read. They were copied as they were: the build published with exit 0 (and passed --verify,
    which feeds token ids), and genai then failed to load the folder, while a rebuild copied the
    same file again; a generation_config.json of `[1]` was copied while its defaults were dropped."""
    for name in TOKENIZER_FILES:
        path = Path(source) / name
        if not name.endswith(".json") or not path.is_file():
            continue
        what = "sampling defaults" if name == "generation_config.json" else "tokenizer"
        try:
            value = json.loads(path.read_bytes())
        except OSError as e:
            raise could_not_read(path, e) from None
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
            raise BuilderError(
                f"{path} is not valid JSON ({e}); the checkpoint's {what} file is damaged: "
                "re-download it, or fix or remove the file"
            ) from None
        if not isinstance(value, dict):
            kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
            kind = kinds.get(type(value), "a number")
            raise BuilderError(
                f"{path} holds {kind}, not a JSON object; the checkpoint's {what} file is damaged: "
                "re-download it, or fix or remove the file"
            )
        if name == "generation_config.json":
            check_generation_config(value, str(path))


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
