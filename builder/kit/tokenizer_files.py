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


def check_tokenizer_files(source: Path, vocab_size: int | None = None, genai: bool = False) -> list[str]:
    """Refuse JSON tokenizer files that do not parse, or hold no JSON object, and a
    generation_config.json whose values genai_config.json could not take; before any weight is
    read. They were copied as they were: the build published with exit 0 (and passed --verify,
    which feeds token ids), and genai then failed to load the folder, while a rebuild copied the
    same file again; a generation_config.json of `[1]` was copied while its defaults were dropped.
    Returns the warnings for what loads but is wrong (tokens past `vocab_size`; genai: what genai's
    tokenizer encodes otherwise than transformers), from the same parse: a tokenizer.json is tens of MB."""
    warnings = []
    for name in TOKENIZER_FILES:
        path = Path(source) / name
        if path.exists() and not path.is_file():  # it was skipped, and the build warned it was "not found"
            raise BuilderError(f"{path} is not a file; put the checkpoint's {name} there, or remove it")
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
        else:
            _check_tokenizer_shape(name, value, path)
        if name == "tokenizer.json" and vocab_size is not None:
            past = _ids_past_the_vocabulary(value, path, vocab_size)
            warnings += [past] if past else []
        if name == "tokenizer.json" and genai:
            metaspace = _metaspace_warning(value, path)
            warnings += [metaspace] if metaspace else []
    return warnings


def _metaspace_warning(tokenizer: dict, path: Path) -> str | None:
    """The warning for a Metaspace pre-tokenizer that adds a leading '▁' (transformers 5 writes one for
    every SentencePiece BPE tokenizer it saves: Llama 2, Mistral, their fine-tunes), or None.
    onnxruntime-genai 0.18 puts '▁' before every stretch of text between special or added tokens, where
    Metaspace leaves it off a stretch that starts with a space, and with prepend_scheme "first" off all
    but the text's first: a Mistral prompt "<s>[INST] hi [/INST]" encoded to one token more in genai
    ('[INST]', '▁', '▁h', ...) than in transformers ('[INST]', '▁h', ...), chat template included."""
    pre = tokenizer.get("pre_tokenizer")
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    for step in steps if isinstance(steps, list) else []:
        if not (isinstance(step, dict) and step.get("type") == "Metaspace"):
            continue
        scheme = step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never")
        if scheme == "never":
            return None
        unlike = "that starts with a space" + (" or follows a special or added token" if scheme == "first" else "")
        return (
            f"{path} splits words with a Metaspace pre-tokenizer (prepend_scheme {scheme!r}), which "
            "onnxruntime-genai 0.18's tokenizer does not follow: it puts a '▁' before every stretch of text "
            f"between special or added tokens, where transformers leaves it off a stretch {unlike}, so "
            "a prompt such as '<s>[INST] hi [/INST]' (chat templates included) gets a token more in genai; the "
            "model runs, but where the ids must be transformers', encode with transformers and pass the ids "
            "to the generator (append_tokens)"
        )
    return None


def _is_token(value) -> bool:  # "<s>", or an AddedToken written out: {"content": "<s>", ...}
    return (
        value is None or isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("content"), str))
    )


# tokenizer_config.json keys, and the values transformers and onnxruntime-genai's tokenizer take.
_CONFIG_VALUES = {
    "model_max_length": ("a number", lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))),
    "chat_template": ("text, or a list of named templates", lambda v: v is None or isinstance(v, (str, list))),
    **{
        key: ('a token: text or {"content": ...}', _is_token)
        for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
    },
    **{
        key: ("true or false", lambda v: v is None or isinstance(v, bool)) for key in ("add_bos_token", "add_eos_token")
    },
}


def _check_tokenizer_shape(name: str, value: dict, path: Path) -> None:
    """Refuse what genai's tokenizer cannot load though the JSON parses: the build published it
    with exit 0 and genai failed at the first prompt, and a rebuild copied it again."""
    fix = "re-download it, or fix the file"
    if name == "tokenizer.json" and not isinstance(value.get("model"), dict):
        raise BuilderError(
            f'{path} has no "model" object, so it is not a Hugging Face tokenizers file and genai cannot load it; {fix}'
        )
    if name == "tokenizer_config.json":
        for key, (expected, fits) in _CONFIG_VALUES.items():
            if key in value and not fits(value[key]):
                raise BuilderError(f"{path}: {key} is {json.dumps(value[key])}, not {expected}; {fix}")


def _ids_past_the_vocabulary(tokenizer: dict, path: Path, vocab_size: int) -> str | None:
    """The warning for tokens whose ids have no row in the model's embedding (a tokenizer of another
    model, or tokens added without resize_token_embeddings), or None. A prompt holding one failed in
    onnxruntime's Gather at the first generate, and an int4 build's GatherBlockQuantized ran on
    without an error for it, from no row of the table."""
    past = {}  # id -> token
    vocab = tokenizer.get("model", {}).get("vocab") if isinstance(tokenizer.get("model"), dict) else None
    pairs = []
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: token -> id
        pairs += list(vocab.items())
    elif isinstance(vocab, list):  # Unigram: [token, score] in id order
        pairs += [(entry[0] if isinstance(entry, list) and entry else "?", i) for i, entry in enumerate(vocab)]
    added = tokenizer.get("added_tokens")
    if isinstance(added, list):
        pairs += [(t.get("content"), t.get("id")) for t in added if isinstance(t, dict)]
    for token, token_id in pairs:
        if isinstance(token_id, int) and not isinstance(token_id, bool) and token_id >= vocab_size:
            past.setdefault(token_id, token)
    if not past:
        return None
    shown = ", ".join(f"{past[i]!r} ({i})" for i in sorted(past)[:3]) + (" ..." if len(past) > 3 else "")
    return (
        f"{path} has {len(past)} token(s) with ids past the model's vocabulary (0 .. {vocab_size - 1}): {shown}; "
        "the model has no embedding row for them, so a prompt holding one fails in onnxruntime or, in an int4 "
        "build, runs on without an error from no row of the table: use the checkpoint's own tokenizer, or resize "
        "the model's embeddings to the tokenizer (resize_token_embeddings) and save it again"
    )


def tokenizer_eos(source: Path) -> tuple[str, int] | None:
    """(the eos_token the checkpoint's tokenizer names, its id), or None where it names none or its id
    cannot be found. A chat template ends each turn with this token (Qwen's <|im_end|>, Llama 3's
    <|eot_id|>), which generation_config.json does not always list. The id comes from
    tokenizer_config.json's added_tokens_decoder, which transformers writes for every special token,
    before tokenizer.json (tens of MB to parse)."""
    config = _json_object(Path(source) / "tokenizer_config.json")
    token = _token_text(config.get("eos_token"))
    if token is None:
        token = _token_text(_json_object(Path(source) / "special_tokens_map.json").get("eos_token"))
    if token is None:
        return None
    decoder = config.get("added_tokens_decoder")
    for key, entry in decoder.items() if isinstance(decoder, dict) else ():
        if _token_text(entry) == token and str(key).isdigit():
            return token, int(key)
    token_id = _vocabulary_id(_json_object(Path(source) / "tokenizer.json"), token)
    return None if token_id is None else (token, token_id)


def _json_object(path: Path) -> dict:
    """The file's JSON object, or {} for a file that is missing or holds none (check_tokenizer_files
    refuses those that are damaged)."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _token_text(value) -> str | None:  # "<s>", or an AddedToken written out: {"content": "<s>", ...}
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _vocabulary_id(tokenizer: dict, token: str) -> int | None:
    """The id tokenizer.json gives `token`: an added token's, else the model vocabulary's."""
    for entry in tokenizer.get("added_tokens") or ():
        if isinstance(entry, dict) and entry.get("content") == token and isinstance(entry.get("id"), int):
            return entry["id"]
    model = tokenizer.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict) and isinstance(vocab.get(token), int):
        return vocab[token]
    if isinstance(vocab, list):  # Unigram: [token, score] in id order
        return next((i for i, entry in enumerate(vocab) if isinstance(entry, list) and entry[:1] == [token]), None)
    return None


def copy_tokenizer_files(
    source: Path, destination: Path, keep_named_templates: bool = False, reads_template_file: bool = True
) -> tuple[list[str], list[str]]:
    """Copy what exists; return (copied, missing required files). keep_named_templates: the folder's
    reader takes a list of named chat templates (transformers.js does; genai's tokenizer does not).
    reads_template_file: the folder's reader finds chat_template.jinja on its own (genai's tokenizer
    does; transformers.js 4's AutoTokenizer reads tokenizer_config.json's chat_template only)."""
    copied = []
    for name in TOKENIZER_FILES:
        path = Path(source) / name
        if path.is_file():
            shutil.copyfile(path, Path(destination) / name)
            copied.append(name)
    template = Path(source) / "chat_template.jinja"
    if "tokenizer_config.json" in copied and template.is_file():
        _template_file_first(Path(destination) / "tokenizer_config.json", template, always=not reads_template_file)
    elif "tokenizer_config.json" in copied and not keep_named_templates:
        _default_template_only(Path(destination) / "tokenizer_config.json")
    missing = [name for name in REQUIRED if name not in copied]
    return copied, missing


def _named_templates(source: Path) -> dict[str, str] | None:
    """tokenizer_config.json's chat templates by name, when it holds a list of them (and no
    chat_template.jinja, which transformers takes first, replaces it)."""
    path = Path(source) / "tokenizer_config.json"
    if (Path(source) / "chat_template.jinja").is_file() or not path.is_file():
        return None
    try:
        templates = json.loads(path.read_bytes()).get("chat_template")
    except (ValueError, RecursionError, OSError, AttributeError):
        return None  # check_tokenizer_files refuses it
    return _by_name(templates) if isinstance(templates, list) else None


def _by_name(templates: list) -> dict[str, str]:
    return {t["name"]: t["template"] for t in templates if isinstance(t, dict) and {"name", "template"} <= t.keys()}


def named_templates_warning(source: Path) -> str | None:
    """What a genai folder's tokenizer_config.json leaves out of a list of named chat templates: genai's
    tokenizer cannot load a list ("type must be string, but is array"), so the copy keeps the template
    transformers uses when none is named, "default"."""
    templates = _named_templates(source)
    if templates is None:
        return None
    others = ", ".join(repr(name) for name in templates if name != "default")
    where = f"{Path(source) / 'tokenizer_config.json'} holds named chat templates"
    if "default" not in templates:
        return (
            f"{where} ({others}) and none named 'default', which is the one transformers applies unless "
            "asked for another: the genai folder's tokenizer_config.json has no chat_template (genai's "
            "tokenizer reads one text only); apply the chat template yourself (template_str= in "
            "og.Tokenizer.apply_chat_template), or add one named default"
        )
    if not others:
        return None
    return (
        f"{where}: the genai folder's tokenizer_config.json keeps 'default' only (genai's tokenizer reads "
        f"one text), so {others} are left out; pass one with template_str= to "
        "og.Tokenizer.apply_chat_template"
    )


def _default_template_only(config_path: Path) -> None:
    """Replace a list of named chat templates with the "default" one's text (or none), for genai."""
    config = json.loads(config_path.read_bytes())
    if not isinstance(config.get("chat_template"), list):
        return
    templates = _by_name(config["chat_template"])
    if "default" in templates:
        config["chat_template"] = templates["default"]
    else:
        del config["chat_template"]
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _template_file_first(config_path: Path, template: Path, always: bool = False) -> None:
    """transformers takes chat_template.jinja over tokenizer_config.json's chat_template, while genai
    reads the config's first: a checkpoint with both (an older key left beside the newer file)
    formatted prompts one way in transformers and another in genai. The copy's key now holds the file.
    always: write the key where the config has none too, for a reader that never opens the file:
    transformers 5 saves the template in chat_template.jinja alone, and transformers.js 4's tokenizer
    then had no chat template ("tokenizer.chat_template is not set")."""
    config = json.loads(config_path.read_bytes())
    if "chat_template" not in config and not always:
        return
    config["chat_template"] = template.read_text(encoding="utf-8")
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
