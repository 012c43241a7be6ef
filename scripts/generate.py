"""Generate tokens from a built folder with onnxruntime-genai (greedy).

    python scripts/generate.py out/tiny-qwen3-int4-cpu --prompt "Hello" --max-new-tokens 16

webgpu folders need a WebGPU runtime: pip install onnxruntime-genai onnxruntime-ep-webgpu
(and on Linux the Vulkan loader); the plugin EP is registered here when it is installed.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from builder.ep_runtime import folder_provider, genai_model  # noqa: E402
from builder.kit.errors import BuilderError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="A folder built by python -m builder.")
    parser.add_argument("--prompt", default="Hello")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--provider", default=None, help="Override the provider (e.g. cpu, webgpu).")
    args = parser.parse_args()

    try:
        import onnxruntime_genai as og
    except ImportError:
        print("error: onnxruntime-genai is not installed: pip install onnxruntime-genai", file=sys.stderr)
        return 2
    if not (Path(args.model_dir) / "genai_config.json").is_file():
        print(
            f"error: {args.model_dir} has no genai_config.json; pass a folder built by python -m builder",
            file=sys.stderr,
        )
        return 2
    try:
        model = genai_model(og, args.model_dir, args.provider or folder_provider(args.model_dir))
    except BuilderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.encode(args.prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + args.max_new_tokens)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
