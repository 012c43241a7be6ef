"""Make a copy of a built model folder whose genai_config.json has other session options.

    python scripts/with_session_options.py SRC DST intra_op_num_threads=0 [key=value ...]

The weights and tokenizer are symlinked, not copied, so a variant costs nothing.
Used by the benchmarks to run one graph under several session settings (for
instance the reference builder's model with our thread setting), which separates
what the graph does from what the session options do. value -: remove the key.
enable_cpu_mem_arena / enable_mem_pattern take true or false (written as JSON booleans), and
graph_optimization_level one of ORT_DISABLE_ALL, ORT_ENABLE_BASIC, ORT_ENABLE_EXTENDED, ORT_ENABLE_ALL
(genai's names; it refuses onnxruntime's integers).
`provider.KEY=VALUE` sets an option of the folder's execution provider (e.g.
provider.enableGraphCapture=0), `search.KEY=VALUE` a search default (search.max_length=1024).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from variant_folder import destination_refusal, fail, source_refusal, usage, write_whole

MARK = ".with_session_options"  # in each folder this script makes: one it may write again


def _refusal(pair: str) -> str | None:
    """Why the entry `pair` is refused, or None."""
    key, eq, value = pair.partition("=")
    if not eq or not key:
        return f"{pair!r} is not KEY=VALUE; pass e.g. intra_op_num_threads=0 (VALUE - removes the key)"
    if key.startswith(("provider.", "search.")) and not key.split(".", 1)[1]:
        return f"{pair!r} names no key after {key!r}; pass e.g. provider.enableGraphCapture=0 or search.max_length=1024"
    if value == "-":
        return None
    if key.startswith("search."):
        kind = SEARCH_TYPES.get(key.split(".", 1)[1], (int, float, bool))
        found = _search_value(value)
        if found is None or not isinstance(found, kind) or (bool not in kind and isinstance(found, bool)):
            wanted = "true or false" if kind == (bool,) else "an integer" if kind == (int,) else "a number"
            return f"{pair!r}: {key} takes {wanted}, e.g. search.max_length=1024"
    elif key in INTEGER_OPTIONS and not value.lstrip("-").isdigit():
        return f"{pair!r}: {key} takes an integer"  # written as text, genai refused the whole file
    elif key in BOOLEAN_OPTIONS and value not in ("true", "false"):
        return f"{pair!r}: {key} takes true or false"
    elif key == "graph_optimization_level" and value not in GRAPH_OPTIMIZATION_LEVELS:
        return f"{pair!r}: graph_optimization_level takes one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
    return None


# genai_config.json's search entries genai reads, and their JSON types (genai refuses the file otherwise).
SEARCH_TYPES = {
    **{k: (int,) for k in ("max_length", "min_length", "num_beams", "num_return_sequences", "top_k", "batch_size")},
    **{k: (int, float) for k in ("temperature", "top_p", "repetition_penalty", "length_penalty", "diversity_penalty")},
    **{k: (bool,) for k in ("do_sample", "early_stopping", "past_present_share_buffer")},
}
INTEGER_OPTIONS = ("intra_op_num_threads", "inter_op_num_threads")
# Session options genai (0.18) reads as JSON booleans: "false" as text makes it refuse the whole file
# ("Expected a bool but saw a string"). Its other on/off options (disable_cpu_ep_fallback, ...) it reads as text.
BOOLEAN_OPTIONS = ("enable_cpu_mem_arena", "enable_mem_pattern")
# genai reads graph_optimization_level by name, not as onnxruntime's integer; any other value it refuses.
GRAPH_OPTIMIZATION_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


def _search_value(text: str) -> int | float | bool | None:
    """A search option's value (a JSON number or true/false), or None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, (int, float, bool)) else None


def main(argv: list[str]) -> int:
    code = usage(argv, __doc__, "KEY=VALUE")
    if code is not None:
        return code
    for pair in argv[2:]:
        if why := _refusal(pair):
            return fail(why)
    src, dst = Path(argv[0]).resolve(), Path(argv[1])
    refusal = source_refusal(src, "genai_config.json")
    if refusal:
        return fail(refusal)
    try:
        config = json.loads((src / "genai_config.json").read_text())
        options = config["model"]["decoder"].setdefault("session_options", {})
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        print(
            f"error: {src / 'genai_config.json'} is not a genai config ({type(e).__name__}: {e}); rebuild it",
            file=sys.stderr,
        )
        return 2
    if any(p.startswith("provider.") for p in argv[2:]) and not options.get("provider_options"):
        print(
            f"error: {src} runs on the CPU provider, which has no provider options to set; "
            "provider.KEY=VALUE is for cuda, webgpu and dml folders",
            file=sys.stderr,
        )
        return 2
    # It writes DST's genai_config.json: never the source's (it edited it in place), nor that of a
    # folder it did not make.
    refusal = destination_refusal(src, dst, MARK, same_source=True)
    if refusal:
        return fail(refusal)
    if code := write_whole(dst, lambda: write(src, dst, argv[2:], config, options)):
        return code
    print(f"{dst}: session_options {json.dumps(options)}")
    return 0


def write(src: Path, dst: Path, pairs: list[str], config: dict, options: dict) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / MARK).write_text(f"{src}\n")
    for item in src.iterdir():
        link = dst / item.name
        if item.name not in ("genai_config.json", MARK) and not link.exists():
            link.symlink_to(item)
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key.startswith(("provider.", "search.")):
            section, key = key.split(".", 1)
            table = (
                config.setdefault("search", {})
                if section == "search"
                else next(iter(options["provider_options"][0].values()))
            )
            if value == "-":
                table.pop(key, None)
            else:
                table[key] = _search_value(value) if section == "search" else value
            continue
        if value == "-":
            options.pop(key, None)
        elif key in BOOLEAN_OPTIONS:
            options[key] = value == "true"
        elif key == "graph_optimization_level":
            options[key] = value
        else:
            options[key] = int(value) if value.lstrip("-").isdigit() else value
    (dst / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
