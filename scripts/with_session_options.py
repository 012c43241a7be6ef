"""Make a copy of a built model folder whose genai_config.json has other session options.

    python scripts/with_session_options.py SRC DST intra_op_num_threads=0 [key=value ...]

The weights and tokenizer are symlinked, not copied, so a variant costs nothing.
Used by the benchmarks to run one graph under several session settings (for
instance the reference builder's model with our thread setting), which separates
what the graph does from what the session options do. value -: remove the key.
`provider.KEY=VALUE` sets an option of the folder's execution provider (e.g.
provider.enableGraphCapture=0), `search.KEY=VALUE` a search default (search.max_length=1024).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MARK = ".with_session_options"  # in each folder this script makes: one it may write again


def _refusal(pair: str) -> str | None:
    """Why the entry `pair` is refused, or None."""
    key, eq, value = pair.partition("=")
    if not eq or not key:
        return f"{pair!r} is not KEY=VALUE; pass e.g. intra_op_num_threads=0 (VALUE - removes the key)"
    if key.startswith(("provider.", "search.")) and not key.split(".", 1)[1]:
        return f"{pair!r} names no key after {key!r}; pass e.g. provider.enableGraphCapture=0 or search.max_length=1024"
    if key.startswith("search.") and _search_value(value) is None:
        return f"{pair!r}: {key} takes a number or true/false, e.g. search.max_length=1024"
    return None


def _search_value(text: str) -> int | float | bool | None:
    """A search option's value (a JSON number or true/false), or None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, (int, float, bool)) else None


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    if len(argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        print("error: pass SRC, DST and at least one KEY=VALUE", file=sys.stderr)
        return 2
    for pair in argv[2:]:
        if why := _refusal(pair):
            print(f"error: {why}", file=sys.stderr)
            return 2
    src, dst = Path(argv[0]).resolve(), Path(argv[1])
    if not (src / "genai_config.json").is_file():
        print(f"error: {src} has no genai_config.json; pass a built model folder", file=sys.stderr)
        return 2
    config = json.loads((src / "genai_config.json").read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    if any(p.startswith("provider.") for p in argv[2:]) and not options.get("provider_options"):
        print(
            f"error: {src} runs on the CPU provider, which has no provider options to set; "
            "provider.KEY=VALUE is for cuda, webgpu and dml folders",
            file=sys.stderr,
        )
        return 2
    # It writes DST's genai_config.json: never the source's (it edited it in place), nor that of a
    # folder it did not make.
    if dst.resolve() == src or (dst.is_dir() and any(dst.iterdir()) and not (dst / MARK).is_file()):
        print(f"error: {dst} is the source or a folder this script did not make; pass a new folder", file=sys.stderr)
        return 2
    dst.mkdir(parents=True, exist_ok=True)
    (dst / MARK).write_text(f"{src}\n")
    for item in src.iterdir():
        link = dst / item.name
        if item.name not in ("genai_config.json", MARK) and not link.exists():
            link.symlink_to(item)
    for pair in argv[2:]:
        key, _, value = pair.partition("=")
        if key.startswith(("provider.", "search.")):
            section, key = key.split(".", 1)
            if section == "search":
                config.setdefault("search", {})[key] = _search_value(value)
            else:
                provider = options["provider_options"][0]
                next(iter(provider.values()))[key] = value
            continue
        if value == "-":
            options.pop(key, None)
        else:
            options[key] = int(value) if value.lstrip("-").isdigit() else value
    (dst / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n")
    print(f"{dst}: session_options {json.dumps(options)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
