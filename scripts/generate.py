"""Generate tokens from a built folder with onnxruntime-genai (greedy).

    python scripts/generate.py out/tiny-qwen3-int4-cpu --prompt "Hello" --max-new-tokens 16

webgpu folders need a WebGPU runtime: pip install onnxruntime-genai onnxruntime-ep-webgpu
(and on Linux the Vulkan loader); the plugin EP is registered here when it is installed.
cuda folders need onnxruntime-genai-cuda and an NVIDIA GPU; dml folders need
onnxruntime-genai-directml on Windows. Folders built with --format transformers.js run
with examples/web/generate.mjs instead.
"""

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, uninstalled

from builder.ep_runtime import folder_provider, genai_model  # noqa: E402
from builder.kit.errors import BuilderError  # noqa: E402
from builder.kit.options import EPS  # noqa: E402

# What onnxruntime-genai's RuntimeError says when its build lacks a provider's support,
# and what the user needs instead: {provider: (substrings, runtime, what to install)}.
_MISSING_RUNTIME = {
    "cuda": (
        ("Cuda interface not available", "libonnxruntime-genai-cuda"),
        "CUDA",
        "pip install onnxruntime-genai-cuda (in place of onnxruntime-genai) on a machine with an NVIDIA CUDA GPU",
    ),
    "dml": (
        ("not been built with DML support",),
        "DirectML",
        "pip install onnxruntime-genai-directml (in place of onnxruntime-genai) on Windows (DirectML is Windows-only)",
    ),
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of tokens") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of tokens; pass 1 or more")
    return value


def _non_empty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("is empty; pass some text to continue, e.g. --prompt 'Hello'")
    return text


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies under it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _is_transformers_js(folder: Path) -> bool:
    """A --format transformers.js build: config.json with a transformers.js_config entry."""
    try:
        return "transformers.js_config" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def _read_config(folder: Path) -> dict:
    """genai_config.json of a built folder, or a one-line BuilderError saying what is wrong with it."""
    path = folder / "genai_config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BuilderError(
                f"{path} is not valid JSON ({e}); rebuild the folder with python -m builder (--overwrite)"
            ) from None
    if not folder.is_dir():
        raise BuilderError(f"{folder} is not a folder; pass a folder built by python -m builder")
    if _is_transformers_js(folder):
        script = _shown(REPO / "examples" / "web" / "generate.mjs")
        raise BuilderError(
            f"{folder} was built with --format transformers.js, which onnxruntime-genai does not load: "
            f"run it with node {script} {folder} (README: Run it in the browser), "
            "or rebuild it without --format transformers.js for this script"
        )
    raise BuilderError(f"{folder} has no genai_config.json; pass a folder built by python -m builder")


def _open_model(og, folder: Path, provider: str, overridden: bool):
    """og.Model on `provider`; a missing CUDA or DirectML runtime becomes a one-line BuilderError."""
    try:
        return genai_model(og, folder, provider)
    except RuntimeError as e:
        substrings, runtime, install = _MISSING_RUNTIME.get(provider, ((), "", ""))
        if not any(s in str(e) for s in substrings):
            raise
        if overridden:
            subject, instead = f"--provider {provider} asks for {runtime}", "or pass another --provider"
        else:
            subject, instead = (
                f"{folder} was built for {runtime} (-e {provider})",
                "or rebuild it with -e cpu or -e webgpu",
            )
        raise BuilderError(
            f"{subject}, and the installed onnxruntime-genai has no {runtime} support: {install}, {instead}"
        ) from None


def _max_length(config: dict, folder: Path, prompt_tokens: int, max_new_tokens: int) -> int:
    """Prompt plus new tokens, or a BuilderError when that passes the folder's context_length."""
    context = config.get("model", {}).get("context_length")
    if context is None or prompt_tokens + max_new_tokens <= context:
        return prompt_tokens + max_new_tokens
    room = context - prompt_tokens
    if room < 1:
        raise BuilderError(
            f"--prompt takes {prompt_tokens} tokens, and {folder} has context_length {context} "
            "(the build's --context-length), which leaves no room for new tokens; pass a shorter --prompt"
        )
    raise BuilderError(
        f"--max-new-tokens {max_new_tokens} does not fit: {folder} has context_length {context} "
        f"(the build's --context-length) and --prompt takes {prompt_tokens} tokens, "
        f"so pass --max-new-tokens {room} or less"
    )


def generate(args) -> None:
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise BuilderError("onnxruntime-genai is not installed: pip install onnxruntime-genai") from None
    folder = Path(args.model_dir)
    config = _read_config(folder)
    provider = args.provider or folder_provider(folder)
    model = _open_model(og, folder, provider, overridden=args.provider is not None)
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.encode(args.prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=_max_length(config, folder, len(prompt), args.max_new_tokens))
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    start = time.perf_counter()
    new = []
    while not generator.is_done():
        generator.generate_next_token()
        new.append(int(generator.get_next_tokens()[0]))
    elapsed = time.perf_counter() - start
    print(f"prompt tokens: {[int(t) for t in prompt]}")
    print(f"new tokens:    {new}")
    print(f"text: {args.prompt}{tokenizer.decode(new)!r}")
    print(f"{len(new)} tokens in {elapsed:.3f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="A folder built by python -m builder.")
    parser.add_argument("--prompt", type=_non_empty, default="Hello")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=16, metavar="N")
    parser.add_argument(
        "--provider",
        choices=EPS,
        default=None,
        help="Override the folder's provider (default: the one it was built for).",
    )
    args = parser.parse_args()
    try:
        generate(args)
    except BuilderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
