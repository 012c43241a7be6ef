"""Generate tokens from a built folder with onnxruntime-genai (greedy).

    python scripts/generate.py out/tiny-qwen3-int4-cpu --prompt "Hello" --max-new-tokens 16
"""

import argparse
import sys
import time

import onnxruntime_genai as og


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="A folder built by python -m builder.")
    parser.add_argument("--prompt", default="Hello")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--provider", default=None, help="Override the provider (e.g. cpu, webgpu).")
    args = parser.parse_args()

    config = og.Config(args.model_dir)
    if args.provider:
        config.clear_providers()
        if args.provider != "cpu":
            config.append_provider(args.provider)
    model = og.Model(config)
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
