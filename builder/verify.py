"""Parity of a built model with transformers.

The reference is the transformers model in float32 with every quantized
projection replaced by its dequantized weight, i.e. the exact numbers the
graph multiplies by. Differences then measure the graph, not quantization
noise, so the bounds can be tight.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from builder.interruptible import import_native, interruptible
from builder.kit.errors import BuilderError
from builder.kit.genai_config import CONFIG_NAME
from builder.kit.options import BuildOptions

# What --verify holds at its peak: torch and transformers (~0.3 GB), and the model in float32 beside
# the ONNX sessions of the graph. Counted over the checkpoint's parameters that the reference loads
# (reference_params): Gemma 3 4B-27B's loads its vision tower too, Qwen3.5's neither it nor MTP. Peaks of
# the whole process measured: Qwen3-0.6B shape 7.47 GB at fp32 (6.04 int4), Qwen3-1.7B 15.3 GB,
# Qwen3.5-0.8B 7.46 GB, a Gemma 3 4B shape cut to two layers 14.2 GB (1.28B parameters with its
# vision tower). 8 B a built parameter undercounted them by up to 2x (1.5x the Qwen3-0.6B shape, 2x
# the Gemma one); 13 B a checkpoint parameter covers each with a margin.
VERIFY_BASE_BYTES = 0.3e9
VERIFY_BYTES_PER_PARAM = 13


def reference_params(arch) -> int:
    """Parameters of the checkpoint that the transformers reference of architecture builder `arch`
    loads: all but those under its family's reference_leaves_out, and but what the build leaves out
    for transformers' reasons (arch.left_out less not_built): a tied lm_head stored beside the
    embedding, which transformers ties to it, and layers beyond num_hidden_layers, never loaded."""
    leaves_out = arch.reference_leaves_out
    not_built = getattr(arch, "not_built", ())
    left_out = getattr(arch, "left_out", lambda name: False)

    def held(name: str) -> bool:
        if leaves_out and name.startswith(leaves_out):
            return False
        return not left_out(name) or bool(not_built and name.startswith(not_built))  # Gemma 3's vision tower

    return sum(math.prod(shape) for name, shape in arch.checkpoint.shapes().items() if held(name))


def verify_memory_bytes(params: int) -> int:
    return int(VERIFY_BASE_BYTES + VERIFY_BYTES_PER_PARAM * params)


def check_verify_memory(params: int, available: int | None) -> None:
    """Refuse --verify up front where its estimate exceeds the memory available: the check ran
    after the whole build and was killed for memory (exit 137, no message, the build lost)."""
    need = verify_memory_bytes(params)
    if available is not None and need > available:
        raise BuilderError(
            f"--verify needs about {need / 1e9:.1f} GB here (transformers holds the checkpoint's "
            f"{params / 1e9:.2f}B parameters in float32 beside the graph), and {available / 1e9:.1f} GB is "
            "available: drop --verify, or "
            "verify on a machine with more memory (nothing was built)"
        )


def missing_modules(modules) -> list[str]:
    """Those of `modules` that are not installed (or whose lookup fails), for a one-line refusal
    before code that imports them: the scripts beside the builder that need the test venv too."""
    import importlib.util

    missing = []
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                missing.append(module)
        except ImportError:
            missing.append(module)
    return missing


def require_verify_extras() -> None:
    """--verify runs transformers: refuse before building when a plain install lacks it, or
    when it is installed but fails to import (a torch that transformers does not match, a
    broken install), which otherwise surfaced as a traceback once the whole build was done."""
    missing = missing_modules(("torch", "transformers"))
    if missing:
        raise BuilderError(
            f"--verify needs {' and '.join(missing)}, which a plain install leaves out: "
            f"{verify_install_command()}, or drop --verify"
        )
    failed = _verify_import_failure()
    if failed:
        raise BuilderError(
            f"--verify cannot import {failed}; reinstall it, for instance with the verify extra: "
            f"{verify_install_command()}, or drop --verify"
        )


@functools.cache
def _verify_import_failure() -> str | None:
    """What verify imports, imported now; a failure as 'transformers (ImportError: ...)'. Cached:
    a batch asks once a job, and a module that fails to import runs again on each attempt."""
    import importlib

    # What dequantized_reference and _transformers_errors_only import, as they import it.
    for module, name in (
        ("torch", None),
        ("transformers", "AutoModelForCausalLM"),
        ("transformers", "GenerationConfig"),
        ("transformers.utils", "logging"),
    ):
        try:
            imported = importlib.import_module(module)
            if name:
                getattr(imported, name)
        except Exception as err:  # noqa: BLE001 - any failure here is the install's, named below
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return f"{module.split('.')[0]} ({type(err).__name__}{': ' + first if first else ''})"
    return None


def verify_install_command() -> str:
    """The pip command for the verify extra, spelled out: 'builder[verify]' would name an
    unrelated package on PyPI, which shares this project's name."""
    import importlib.metadata
    import shlex

    try:
        wanted = importlib.metadata.requires("builder") or []
    except importlib.metadata.PackageNotFoundError:
        wanted = []
    in_extra = re.compile(r"""extra\s*==\s*["']verify["']""")
    extra = [r.split(";")[0].strip().replace(" ", "") for r in wanted if in_extra.search(r)]
    # PyPI's Linux torch is the CUDA build (several GB); verify needs the CPU one, first.
    torch = next((r for r in extra if re.match(r"torch\b", r)), "torch")
    cpu_torch = f"pip install {shlex.quote(torch)} --index-url https://download.pytorch.org/whl/cpu && "
    if not extra:  # run from a checkout without installing it
        return cpu_torch + "pip install -e '.[verify]' in the builder's source folder"
    return cpu_torch + "pip install " + " ".join(shlex.quote(r) for r in extra if r != torch)


@dataclass
class ParityResult:
    max_abs: float  # over prefill and every decode step
    max_abs_prefill: float
    max_abs_decode: float
    argmax_agree: float  # fraction of positions whose top token agrees
    nmse: float  # sum((ref - ours)^2) / sum(ref^2), all steps together
    steps: int
    ref_max_abs: float = 0.0  # the largest |logit| of the reference
    median_nmse: float = 0.0  # the median over positions of each position's NMSE
    # transformers' own model run in float16 against its float32 run, on the same inputs and positions: how
    # far float16 rounding alone takes the logits (None: not run, or it failed or overflowed).
    fp16_reference_nmse: float | None = None
    fp16_reference_median_nmse: float | None = None

    def as_dict(self) -> dict:
        return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in self.__dict__.items()}


def dequantized_reference(
    checkpoint_dir: str | Path,
    options: BuildOptions,
    io_dtype=np.float32,
    family=None,
    formats=None,
    logits_only: bool = False,
):
    """transformers model (fp32) holding the weights the built graph uses. family: the builder
    class that built it (default: the one registered for the checkpoint's config.json). formats:
    its plan's weight format by module (default: planned here from options, a BuildOptions).
    logits_only: the model is only run forward (--verify), so the checkpoint's generation_config.json,
    which only generate() reads, is not loaded."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.utils import logging as transformers_logging

    import quant
    from architectures.registry import family_for
    from builder.kit.checkpoint import Checkpoint, configured_tie

    transformers_logging.disable_progress_bar()  # its bars garble progress lines and batch logs
    if family is None:
        # The checkpoint's config.json names the family (a ConditionalGeneration checkpoint loads
        # as its text model, whose config has no architectures entry).
        family = family_for(options, Checkpoint(Path(checkpoint_dir)).config)
    try:
        model_class = family.reference_class() or AutoModelForCausalLM
        # transformers validates generation_config.json as it loads the model, and refuses values
        # the build takes (max_new_tokens: -1, num_return_sequences without beams): --verify failed
        # after the whole build, blaming config.json or the model_type, over a file logits never read.
        skipped = {"generation_config": GenerationConfig()} if logits_only else {}
        model, loading = model_class.from_pretrained(
            str(checkpoint_dir), dtype=torch.float32, output_loading_info=True, **skipped
        )
    except (ValueError, KeyError, TypeError, OSError, ImportError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, ImportError):
            why = "it needs a package that is not installed: install it, or drop --verify"
        elif isinstance(e, OSError) and "not a valid JSON file" in first:
            # transformers reads its JSON as plain UTF-8, where the build's reader also takes a file
            # that begins with a byte-order mark (an editor's save); the layout advice below sent the
            # user to the weights.
            why = (
                "transformers' JSON reader refuses a file the build read (one that begins with a UTF-8 "
                "byte-order mark, say): save it as plain UTF-8 JSON, or drop --verify"
            )
        elif isinstance(e, OSError):  # the files: weights under names transformers does not read
            why = (
                "verify compares the graph with transformers, which reads model.safetensors or an index "
                "of shards: give the checkpoint that layout, or drop --verify"
            )
        elif isinstance(e, TypeError):  # transformers' config classes check their fields' types
            why = "transformers refuses the checkpoint's config.json: fix the key it names, or drop --verify"
        else:  # a model_type transformers does not know
            why = (
                "verify compares the graph with transformers, so it needs a model transformers knows (a family "
                "of a model_type transformers lacks returns its model class from reference_class()): drop --verify"
            )
        raise BuilderError(f"--verify: transformers cannot load {checkpoint_dir} ({first}); {why}") from None
    except Exception as e:  # transformers fails any way on a config it reads otherwise (text_config: {})
        first = (str(e).strip().splitlines() or [""])[0]
        raise BuilderError(
            f"--verify: transformers failed to load {checkpoint_dir} ({type(e).__name__}: {first}); "
            "check its config.json, or drop --verify"
        ) from None
    planned = family(Checkpoint(Path(checkpoint_dir)), options)
    if formats is None:
        formats = planned.plan.formats
    fused = fused_formats(planned, formats)
    missing = set(loading.get("missing_keys") or [])
    if "lm_head.weight" in missing and configured_tie(Path(checkpoint_dir)) is not False:
        # A config that omits tie_word_embeddings without an lm_head in the checkpoint: the
        # builder ties it to the embedding (architectures/base.py), transformers made it random.
        # One that says false reads it under another name (a family's weight()): it stays
        # missing, for prepare_reference to fill or the refusal below to name.
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
        missing.discard("lm_head.weight")
    model.eval()
    with torch.no_grad():
        # First what transformers could not find under the family's names (renamed weights, MoE
        # experts), so that the passes below round and dequantize those too: loaded after them, a
        # family's renamed Linears stayed float and a correct int4 build failed verify.
        before = {k: p.detach().clone() for k, p in model.named_parameters() if k in missing}
        family.prepare_reference(model, options, io_dtype)
        after = dict(model.named_parameters())
        unfilled = sorted(k for k, v in before.items() if k in after and torch.equal(after[k], v))
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    with torch.no_grad():
        embed_fmt, head_fmt = formats["model.embed_tokens"], formats["lm_head"]
        int4_embed = embed_fmt.quantized and embed_fmt.bits == 4
        if tied and (embed_fmt.quantized or head_fmt.quantized) and not (int4_embed and head_fmt == embed_fmt):
            # The graph shares the table only as one int4 format (or all float); otherwise the
            # embedding gathers from its own table (int4, or float: int8 tables stay float).
            embedding = model.get_input_embeddings().weight
            model.get_output_embeddings().weight = torch.nn.Parameter(embedding.detach().clone())
            tied = False
        if not tied and int4_embed:
            # int4 builds gather from their own int4 table (GatherBlockQuantized).
            weight = model.get_input_embeddings().weight
            weight.copy_(
                torch.from_numpy(
                    quant.dequantize(
                        quant.quantize(weight.detach().numpy(), embed_fmt, scale_dtype=io_dtype), embed_fmt
                    )
                )
            )
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            # The plan's formats name every projection the graph stores; a Linear they leave out
            # (a router, a shared-expert gate, linear attention's b/a gates) stays float there.
            # A multimodal model's text Linears are model.language_model.* (Gemma 3 4B-27B loads
            # whole); the plan names them as the text model does.
            text_name = name.replace("model.language_model.", "model.", 1)
            fmt = formats.get(name, formats.get(text_name))
            # A fused Linear (Phi-3's qkv_proj) whose parts the family reads as RowSlices: each part's rows
            # in that part's format.
            parts = fused.get(f"{name}.weight") or fused.get(f"{text_name}.weight") or [(0, None, fmt)]
            weight = module.weight.detach().numpy()  # float32, shares the parameter's memory
            for start, stop, part in parts:
                if part is not None and part.quantized:
                    rows = weight[start:stop]
                    rows[...] = quant.dequantize(quant.quantize(rows, part, scale_dtype=io_dtype), part)
                elif io_dtype == np.float16:
                    weight[start:stop] = weight[start:stop].astype(np.float16).astype(np.float32)
    if unfilled:
        # Those weights are random in the reference: a family that reads them under other names
        # (a subclass's weight()) was blamed as a wrong graph.
        shown = ", ".join(unfilled[:3]) + (f" and {len(unfilled) - 3} more" if len(unfilled) > 3 else "")
        raise BuilderError(
            f"--verify: transformers' {type(model).__name__} found no {shown} in the checkpoint, so its "
            "reference would hold random weights there; if the builder family reads them under other "
            "names, load them in its prepare_reference() (architectures/base.py), or drop --verify"
        )
    return model


def fused_formats(family, formats: dict) -> dict[str, list[tuple[int, int, object]]]:
    """{checkpoint tensor: [(start, stop, weight format), ...]} for the projections a family reads as
    row slices of one tensor (architectures.base weight() returning a linear.RowSlice): transformers
    holds such a tensor as one Linear, which the plan's formats, keyed by the projections, do not name."""
    from builder.kit.linear import RowSlice

    parts: dict[str, list] = {}
    for module, fmt in formats.items():
        found = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module)
        layer, suffix = (int(found[1]), f"{found[2]}.weight") if found else (None, f"{module}.weight")
        try:
            source = family.weight(layer, suffix)
        except Exception:  # a projection the family names otherwise: the module name stands
            continue
        if isinstance(source, RowSlice):
            parts.setdefault(source.tensor, []).append((source.start, source.stop, fmt))
    return parts


def onnx_session(model_dir: str | Path, provider: str = "CPUExecutionProvider"):
    ort = import_native("onnxruntime")

    from builder.ep_runtime import ort_session

    so = ort.SessionOptions()
    so.log_severity_level = 3
    path = Path(model_dir)
    path = path if path.suffix == ".onnx" else path / "model.onnx"  # a folder, or the model file itself
    # onnxruntime loads a model in C++ (about 10 s for a 0.6B fp32 graph on a 2-core machine, minutes for larger ones),
    # where Ctrl-C, SIGTERM and SIGHUP waited for it.
    return interruptible(ort_session, path, provider, session_options=so)


def index_dtype(spec) -> type:
    """numpy dtype of an input_ids / attention_mask input (a session's NodeArg): int32 in
    --int32-inputs builds, else int64."""
    return np.int32 if spec.type == "tensor(int32)" else np.int64


def onnx_logits(session, input_ids: np.ndarray, decode_tokens: list[int]) -> list[np.ndarray]:
    """Logits of a prefill over input_ids [1, S], then one decode step per token.

    Every cache input starts empty: past_key_values.{i}.key/value with no past positions, and
    the recurrent states of linear-attention layers (genai's past.{i}.conv, past.{i}.recurrent;
    transformers.js's past_conv.{i}, past_recurrent.{i}) as zeros of their declared shapes. Each
    step feeds back each present output as the matching past input.
    """
    inputs = {i.name: i for i in session.get_inputs()}
    feed = {}
    for name, info in inputs.items():
        dtype = np.float16 if "float16" in info.type else np.float32
        if name.startswith("past_key_values."):
            feed[name] = np.zeros((1, info.shape[1], 0, info.shape[3]), dtype)
        elif name.startswith(("past.", "past_conv.", "past_recurrent.")):
            feed[name] = np.zeros([1] + list(info.shape[1:]), dtype)
    index = {name: index_dtype(inputs[name]) for name in ("input_ids", "attention_mask")}
    ids = input_ids.astype(index["input_ids"])
    position = 0
    outputs = []
    for step in range(len(decode_tokens) + 1):
        length = position + ids.shape[1]
        feed["input_ids"] = ids
        feed["attention_mask"] = np.ones((1, length), index["attention_mask"])
        if "position_ids" in inputs:
            feed["position_ids"] = np.arange(position, length, dtype=np.int64)[None]
        if "num_logits_to_keep" in inputs:  # transformers.js folders: 0 keeps every position
            feed["num_logits_to_keep"] = np.array(0, np.int64)
        names = [o.name for o in session.get_outputs()]
        result = dict(zip(names, session.run(names, feed)))
        outputs.append(result["logits"].astype(np.float32))
        for name, value in result.items():
            if name.startswith("present."):
                rest = name[len("present.") :]
                feed[f"past_key_values.{rest}" if f"past_key_values.{rest}" in inputs else f"past.{rest}"] = value
            elif name.startswith(("present_conv.", "present_recurrent.")):  # transformers.js's names
                feed["past_" + name[len("present_") :]] = value
        position = length
        if step < len(decode_tokens):
            ids = np.array([[decode_tokens[step]]], index["input_ids"])
    return outputs


def torch_logits(model, input_ids: np.ndarray, decode_tokens: list[int]) -> list[np.ndarray]:
    import torch

    if _window_of_one(model):
        return _uncached_logits(model, input_ids, decode_tokens)
    with torch.no_grad():
        out = model(torch.from_numpy(input_ids.astype(np.int64)), use_cache=True)
        logits = [out.logits.float().numpy()]
        for token in decode_tokens:
            # `cache`, not `past_key_values`: transformers 5.x warns on the old name and drops
            # it in 5.40 (the extras pin transformers to the 5.x range this was tested with).
            # Older transformers (the GPU machine's) name it past_key_values only.
            past = {"cache": out.cache} if hasattr(out, "cache") else {"past_key_values": out.past_key_values}
            out = model(torch.tensor([[token]]), use_cache=True, **past)
            logits.append(out.logits.float().numpy())
    return logits


def _window_of_one(model) -> bool:
    """transformers' sliding-window cache keeps keys[-window + 1:], every one of them at a window of
    1, while its mask takes it to hold none: its cached decode of such a model (Gemma 3 accepts one)
    is 10 logits off its own full forward, which the build matched to 6e-6."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "sliding_window", None) == 1


def _uncached_logits(model, input_ids: np.ndarray, decode_tokens: list[int]) -> list[np.ndarray]:
    """torch_logits' answer from a full forward per step: the prompt's logits, then each decode step's."""
    import torch

    ids = torch.from_numpy(input_ids.astype(np.int64))
    with torch.no_grad():
        logits = [model(ids, use_cache=False).logits.float().numpy()]
        for token in decode_tokens:
            ids = torch.cat([ids, torch.full((ids.shape[0], 1), token, dtype=ids.dtype)], dim=1)
            logits.append(model(ids, use_cache=False).logits[:, -1:].float().numpy())
    return logits


def genai_greedy(model_dir: str | Path, prompt: list[int], new_tokens: int, provider: str | None = None) -> list[int]:
    """Prompt + exactly new_tokens greedy tokens through onnxruntime-genai."""
    return genai_greedy_logits(model_dir, prompt, new_tokens, provider)[0]


def genai_greedy_logits(
    model_dir: str | Path, prompt: list[int], new_tokens: int, provider: str | None = None
) -> tuple[list[int], list[np.ndarray]]:
    """(prompt + exactly new_tokens greedy tokens, the logits that chose each new token [V]).

    Runs the folder as a user would, genai_config included (graph capture, when the
    folder asks for it). min_length masks EOS, so a random model cannot stop early on
    one side only.
    """
    og = import_native("onnxruntime_genai")

    from builder.ep_runtime import genai_model

    model = genai_model(og, model_dir, provider)
    params = og.GeneratorParams(model)
    total = len(prompt) + new_tokens
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    logits = []
    while not generator.is_done():
        # get_logits runs the model on pending tokens first; get_output("logits") would
        # return the previous step's buffer here.
        out = np.asarray(generator.get_logits(), np.float32)
        logits.append(out.reshape(-1, out.shape[-1])[-1])
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)], logits


def genai_batch_greedy(
    model_dir: str | Path, prompts: list[list[int]], new_tokens: int, provider: str | None = None
) -> tuple[np.ndarray, list[list[int]]]:
    """One genai batch of prompts of unequal length, right-padded with the folder's pad token as
    genai pads them: the logits after the prompts [B, V] and each row's new_tokens greedy tokens."""
    import json

    og = import_native("onnxruntime_genai")

    from builder.ep_runtime import genai_model

    pad = json.loads((Path(model_dir) / CONFIG_NAME).read_text())["model"]["pad_token_id"]
    model = genai_model(og, model_dir, provider)
    params = og.GeneratorParams(model)
    width = max(map(len, prompts))
    total = width + new_tokens
    params.set_search_options(do_sample=False, max_length=total, min_length=total, batch_size=len(prompts))
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([p + [pad] * (width - len(p)) for p in prompts], np.int32))
    first = np.asarray(generator.get_logits(), np.float32).reshape(len(prompts), -1)
    tokens: list[list[int]] = [[] for _ in prompts]
    for _ in range(new_tokens):
        generator.generate_next_token()
        for row, token in enumerate(generator.get_next_tokens()):
            tokens[row].append(int(token))
    return first, tokens


# A prompt that repeats itself, so n-gram lookups hit (and a tiny random model loops on it).
REPEATING_PROMPT = [5, 9, 13, 5, 9, 13, 5, 9, 13, 5, 9]


def genai_speculative_greedy(
    model_dir: str | Path, prompt: list[int], new_tokens: int, ngram_size: int = 0, provider: str | None = None
) -> tuple[list[int], dict]:
    """(prompt + exactly new_tokens greedy tokens, the speculation stats) through onnxruntime-genai 0.18
    speculating: with n-grams of `ngram_size` tokens, or with the draft model the folder's
    genai_config.json names. Both verify several tokens a run, so they need `--logits all`."""
    og = import_native("onnxruntime_genai")

    from builder.ep_runtime import genai_model

    model = genai_model(og, model_dir, provider)
    params = og.GeneratorParams(model)
    total = len(prompt) + new_tokens
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    if ngram_size:
        params.set_speculative_options(ngram_size=ngram_size)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompt, np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)], generator.get_speculative_stats()


def genai_engine_greedy(
    model_dir: str | Path, prompts: list[list[int]], new_tokens: int, provider: str | None = None
) -> list[list[int]]:
    """Each prompt's new_tokens greedy tokens through onnxruntime-genai 0.18's og.Engine (static
    batching), all prompts in one engine. It binds a [B, S, V] logits buffer of its own, so it
    needs `--logits all`; a failed step raises the engine's own RuntimeError."""
    og = import_native("onnxruntime_genai")

    from builder.ep_runtime import genai_model

    engine = og.Engine(genai_model(og, model_dir, provider))
    events = engine.create_event_buffer(64)
    requests = []
    for prompt in prompts:
        request = engine.create_request()
        turn = og.TurnOptions(request)
        turn.set_do_sample(False)
        turn.set_max_generated_tokens(new_tokens)
        turn.set_min_generated_tokens(new_tokens)  # EOS masked, as transformers_greedy does
        request.begin_turn(np.array(prompt, np.int32), turn)
        requests.append(request)
    tokens: list[list[int]] = [[] for _ in prompts]
    while engine.has_pending_requests():
        for event in engine.run(events):
            if event.error_code != og.EngineErrorCode.NONE:
                engine.run(events)  # an unhealthy engine raises its cause on the next step
                raise RuntimeError(f"the engine failed ({event.error_code}) without a cause")
            if event.token is not None:
                tokens[next(i for i, r in enumerate(requests) if r == event.request)].append(int(event.token))
    return tokens


def torch_step_logits(model, tokens: list[int], prompt_length: int) -> list[np.ndarray]:
    """transformers' logits at positions prompt_length-1 .. len(tokens)-2: the ones that
    chose tokens[prompt_length:], one full forward pass (no cache)."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([tokens]))
    logits = out.logits[0].float().numpy()
    return [logits[i] for i in range(prompt_length - 1, len(tokens) - 1)]


def transformers_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    """The same generation through transformers (min_new_tokens masks EOS alike)."""
    import torch

    with torch.no_grad():
        return model.generate(
            torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=not _window_of_one(model),
        )[0].tolist()


def _same_positions(expected: list[np.ndarray], actual: list[np.ndarray]) -> list[np.ndarray]:
    """expected cut to the positions actual holds: a --logits last build returns the prefill's last
    position only."""
    return [e[:, -a.shape[1] :] if a.ndim == 3 and a.shape[1] < e.shape[1] else e for e, a in zip(expected, actual)]


def position_nmse(expected: list[np.ndarray], actual: list[np.ndarray]) -> np.ndarray:
    """Each position's NMSE (its squared error over its squared reference), prefill then decode steps."""
    rows = [
        (e.astype(np.float64).reshape(-1, e.shape[-1]), a.reshape(-1, a.shape[-1])) for e, a in zip(expected, actual)
    ]
    err = np.concatenate([np.square(e - a).sum(-1) for e, a in rows])
    ref = np.concatenate([np.square(e).sum(-1) for e, _ in rows])
    return err / np.maximum(ref, 1e-30)


def compare(expected: list[np.ndarray], actual: list[np.ndarray]) -> ParityResult:
    expected = _same_positions(expected, actual)
    diffs = [float(np.abs(e - a).max()) for e, a in zip(expected, actual)]
    agree = np.concatenate([(e.argmax(-1) == a.argmax(-1)).ravel() for e, a in zip(expected, actual)])
    err = sum(float(np.square(e.astype(np.float64) - a).sum()) for e, a in zip(expected, actual))
    ref = sum(float(np.square(e.astype(np.float64)).sum()) for e in expected)
    peak = max(float(np.abs(e).max()) for e in expected)
    return ParityResult(
        max(diffs),
        diffs[0],
        max(diffs[1:], default=0.0),
        float(agree.mean()),
        err / max(ref, 1e-30),
        len(diffs),
        peak,
        float(np.median(position_nmse(expected, actual))),
    )


def with_fp16_reference(parity: ParityResult, expected, fp16_reference, actual) -> ParityResult:
    """parity with how far transformers' own float16 run (fp16_reference, None where it did not run) is from
    its float32 one, over the positions the graph returned (actual)."""
    if fp16_reference is None:
        return parity
    expected, fp16_reference = _same_positions(expected, actual), _same_positions(fp16_reference, actual)
    reference = compare(expected, fp16_reference)
    parity.fp16_reference_nmse, parity.fp16_reference_median_nmse = reference.nmse, reference.median_nmse
    return parity


def fp16_logits(model, input_ids: np.ndarray, decode_tokens: list[int]) -> list[np.ndarray] | None:
    """torch_logits of the reference model cast to float16 in place (its weights are already rounded to
    float16, so only the arithmetic changes), or None where transformers fails or overflows in float16 (a
    Gemma 3 residual stream past 65504)."""
    try:
        logits = torch_logits(model.half(), input_ids, decode_tokens)
    except Exception:  # noqa: BLE001 - an op without a float16 CPU kernel, say: the NMSE bound alone holds then
        return None
    return logits if all(np.isfinite(x).all() for x in logits) else None


def verify_build(
    model_dir: str | Path,
    checkpoint_dir: str | Path,
    options: BuildOptions,
    prompt_length: int = 8,
    decode_steps: int = 4,
    seed: int = 0,
    provider: str = "CPUExecutionProvider",
) -> ParityResult:
    """Prefill + decode (fixed random tokens) parity against transformers."""
    return verify_models([model_dir], checkpoint_dir, options, prompt_length, decode_steps, seed, provider)[0]


def verify_models(
    models: list,
    checkpoint_dir,
    options: BuildOptions,
    prompt_length=8,
    decode_steps=4,
    seed=0,
    provider="CPUExecutionProvider",
    family=None,
    formats=None,
) -> list[ParityResult]:
    """verify_build for several graphs of one build (same inputs and outputs), loading the
    transformers reference once (family, formats: as in dequantized_reference)."""
    sessions = [onnx_session(m, provider) for m in models]
    session = sessions[0]
    vocab = session.get_outputs()[0].shape[-1]
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(1, prompt_length))
    tokens = [int(t) for t in rng.integers(0, vocab, size=decode_steps)]
    dtype = (
        np.float16
        if "float16" in session.get_inputs()[0].type or "float16" in session.get_outputs()[0].type
        else np.float32
    )
    with _transformers_errors_only():
        reference = dequantized_reference(checkpoint_dir, options, dtype, family, formats, logits_only=True)
        try:
            expected = torch_logits(reference, ids, tokens)
        except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
            # transformers' own model failing on the checkpoint (a config it loads but cannot run,
            # e.g. Qwen3-MoE's layer_types with a sliding window): the check cannot be made.
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise BuilderError(
                f"--verify: transformers' model of {checkpoint_dir} fails when it runs ({type(e).__name__}: "
                f"{first}), so there is nothing to compare with: drop --verify, or fix what its config.json "
                "asks of transformers"
            ) from None
        # A graph with float16 activations is held to what float16 does to transformers' own model (see
        # FP16_NOISE_RATIO), run after the float32 logits since it casts the reference in place.
        fp16 = fp16_logits(reference, ids, tokens) if dtype == np.float16 else None
    results = []
    for session in sessions:
        actual = onnx_logits(session, ids, tokens)
        results.append(with_fp16_reference(compare(expected, actual), expected, fp16, actual))
    return results


@contextlib.contextmanager
def _transformers_errors_only():
    """transformers' warnings while it computes the reference ("falling back to its reference
    PyTorch implementation" for Qwen3.5, twice a build) are about its own speed, not the build:
    they printed through --quiet. The caller's verbosity comes back afterwards."""
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)


# --verify bounds. The reference holds the dequantized weights, so the bound only has to
# absorb kernel arithmetic, and verify checks a copy of the graph whose MatMulNBits and QMoE
# compute at accuracy_level 0: int8 activations (level 4, the cpu default) are quantization
# noise, not the graph, and the Gated DeltaNet state carries them from token to token (NMSE
# up to 2.2e-2 at level 4 on the tiny hybrids, 1.5e-2 on a Qwen3.5-0.8B shape). At level 0 the
# tiny families gave NMSE 3e-13..2e-11 (int4 and int8); block-wise int8 experts quantize their
# activations whatever the level (1.7e-4 qwen3-moe, 1.5e-3 qwen3_5-moe). A wrong graph (a
# misplaced norm, wrong rotary or window) is far from that, but not always near NMSE 1: on a tiny
# checkpoint with transformers' own init (std 0.02), attention moves the logits so little that
# interleaved rotary built as halves gave NMSE 8.5e-5 (max |d| 6e-3). So a graph with fp32
# activations that computes exactly at level 0 is held to fp32's bound, as an fp32 build is:
# max |d| 1.5e-5 and NMSE 6.7e-12 on a Qwen3-0.6B-shaped int4 build (9.1e-6 / 3.2e-12 fp32),
# 1.2e-4 / 1.2e-10 on a Qwen3.5-0.8B-shaped one. max |d| grows with the logits while NMSE does
# not (the same Qwen3.5 build with its final norm x10, logits up to 115: 1.2e-3 / 1.2e-10), so
# its bound is 1e-3 or 1e-4 of the largest logit, whichever is larger.
# fp16 activations round at every op (NMSE 1e-6..1.4e-4 on the tiny families): 1e-2 for those.
# Block-wise int8 experts have no exact kernel, and in the hybrid MoE families the Gated DeltaNet
# state carries their noise on: NMSE 1.5e-3 (int8), 1.1e-2 (int4 with --int8-layers '*.experts'),
# 2.7e-2 (int8 --no-symmetric) on tiny Qwen3.5-MoE; those graphs get 1e-1, still 10x under a wrong one.
FP32_MAX_ABS = 1e-3
FP32_MAX_REL = 1e-4  # of the largest |logit|, where that allows more than FP32_MAX_ABS
FP32_NMSE = 1e-6
FP16_NMSE = 1e-2
ACTIVATION_QUANTIZED_NMSE = 1e-1
EXACT_LEVEL_OPS = ("MatMulNBits", "QMoE")
VERIFY_POSITIONS = 20  # a 16-token prompt and 4 decode steps, fewer where the context is shorter

# fp16 activations: NMSE 1e-2 alone let wrong graphs through. With Qwen3's q_norm and k_norm weights
# swapped (which only the rotary pairs see: a q.k product is otherwise symmetric in the two scales) the
# tiny Qwen3 cases gave NMSE 1.3e-3..2.9e-3, gemma3 2.5e-3, a 28-layer Qwen3-0.6B shape (vocab 4096)
# 3.7e-3, all under 1e-2.
# So a graph with fp16 activations is also held to what fp16 does to transformers' own model on the same
# weights and inputs: the median over positions of each position's NMSE (a median, so that one position
# on a near-tie does not decide) under FP16_NOISE_RATIO times transformers' fp16 median, or under
# FP16_MEDIAN_NMSE, where any rounding passes. Measured with a scratch harness over every registered tiny
# case, the same shapes widened to hidden 512 x 8 layers (vocab 2048) and the Qwen3-0.6B shape (28
# layers, vocab 4096), as fp16 and as int4 with fp16 activations, over verify's 20 positions and the 5
# of a --logits last build, at 12-16 input seeds; the ratio is the median position NMSE over
# transformers' fp16 one:
#   correct graphs: dense families 0.15-1.4x (median NMSE up to 6.6e-5), Qwen3.5 without experts
#     0.2-4.0x (up to 1.7e-4);
#   q_norm/k_norm swapped: dense 263-2500x (median NMSE 1.2e-3 and up); rotary sin negated, interleaved
#     rotary for halves, rope_theta 1e4 read as 1e6, attention scale x sqrt(2), input and
#     post-attention norms swapped, final norm dropped: dense 713x and up, Qwen3.5 40x and up;
#   not caught: every norm's epsilon 1e-5 for 1e-6 on the dense families (0.2-11x: these weights hardly
#     see it), and mostly the q/k swap on Qwen3.5 (2.4-46x), whose partial rotary leaves few pairs to see it.
# Graphs that route experts (MoE, QMoE) keep the NMSE bound alone: fp16 rounding flips a near-tied
# expert in the graph and not in transformers' run (or the reverse), and the flip moves the later
# positions through attention and the linear-attention state: correct builds reached 1200x there (and
# NMSE 4.4e-2 on Qwen3-Next and Qwen3.5-MoE shapes at some seeds; verify's seed 0 is clear of that).
# Where transformers cannot run the model in fp16 (an op without a CPU kernel, a Gemma 3 stream past
# fp16's range) the NMSE bound alone holds too.
FP16_NOISE_RATIO = 30
FP16_MEDIAN_NMSE = 1e-4


def exact_compute_copy(model_file: Path) -> Path | None:
    """A copy of the graph beside it (same external data) with accuracy_level 0, or None when
    no node computes below fp32's precision there."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    changed = False
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type in EXACT_LEVEL_OPS and attr.name == "accuracy_level" and attr.i != 0:
                attr.i, changed = 0, True
    if not changed:
        return None
    copy = model_file.with_name(f".verify-{model_file.name}")
    try:
        onnx.save(model, str(copy))
    except OSError as e:
        copy.unlink(missing_ok=True)
        raise BuilderError(
            f"--verify: writing its copy of {model_file.name} beside it failed ({e.strerror or e}); free "
            "disk space (the copy is the size of model.onnx) or build without --verify"
        ) from None
    return copy


def routes_experts(model_file: Path) -> bool:
    """Whether the graph routes tokens to experts (an MoE or QMoE node), whose top-k choice float16
    rounding can flip on a near-tie."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    return any(node.op_type in ("MoE", "QMoE") for node in model.graph.node)


def fp16_bound(parity: ParityResult, model_file: Path) -> tuple[str, bool]:
    """The bound a graph with float16 activations is held to, and whether parity meets it (see
    FP16_NOISE_RATIO)."""
    reference = parity.fp16_reference_median_nmse
    if reference is None or routes_experts(model_file):
        return f"nmse < {FP16_NMSE}", parity.nmse < FP16_NMSE
    limit = max(FP16_MEDIAN_NMSE, FP16_NOISE_RATIO * reference)
    bound = f"nmse < {FP16_NMSE}, median position nmse < {limit:.3g} = max({FP16_MEDIAN_NMSE}, "
    bound += f"{FP16_NOISE_RATIO}x transformers' fp16 {reference:.3g})"
    return bound, parity.nmse < FP16_NMSE and parity.median_nmse < limit


def quantizes_activations_always(model_file: Path) -> bool:
    """Whether a node of the graph quantizes its activations at every accuracy level: QMoE with
    block-wise 8-bit experts (onnxruntime has no fp32 kernel for them)."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    for node in model.graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type == "QMoE" and attrs.get("expert_weight_bits") == 8 and attrs.get("block_size"):
            return True
    return False


def verify_not_run(ep: str) -> str | None:
    """Why --verify does not run for a graph of this EP, as its report records it, or None where it
    runs (batch asks too: a verify: true that would not run is no reason to rebuild)."""
    if ep == "cpu":
        return None
    # check_webgpu.py builds and runs its own tiny cases of the registered families, not this
    # folder: a plugin family's webgpu build was sent to a script that cannot take it.
    elsewhere = "-e cpu with --verify checks the same checkpoint and quantization here; " + (
        "scripts/check_webgpu.py runs the builder's own families on a GPU"
        if ep == "webgpu"
        else f"the {ep} graph itself runs only where its EP is"
    )
    return f"the graph targets {ep}, whose kernels this machine may not have; {elsewhere}"


def verify_output(
    folder: str | Path,
    checkpoint_dir: str | Path,
    options: BuildOptions,
    ep: str,
    fp32_io: bool,
    family=None,
    context_length: int | None = None,
    formats=None,
) -> dict:
    """The --verify check of one build, as it goes into the build report (family: the builder
    class that built it, whose prepare_reference the reference gets; context_length: the
    positions the graph holds, which the check's prompt and decode steps must fit; formats: its
    plan's weight formats)."""
    not_run = verify_not_run(ep)
    if not_run:
        return {"status": "not run", "reason": not_run}
    positions = max(2, VERIFY_POSITIONS if context_length is None else min(VERIFY_POSITIONS, context_length))
    decode_steps = max(1, min(4, positions // 5))
    model_file = Path(folder)
    model_file = model_file if model_file.suffix == ".onnx" else model_file / "model.onnx"
    exact = exact_compute_copy(model_file)
    try:
        models = [exact, model_file] if exact else [model_file]
        parities = verify_models(
            models,
            checkpoint_dir,
            options,
            positions - decode_steps,
            decode_steps=decode_steps,
            family=family,
            formats=formats,
        )
    finally:
        if exact:
            exact.unlink(missing_ok=True)
    parity = parities[0]
    if quantizes_activations_always(model_file):
        bound, passed = f"nmse < {ACTIVATION_QUANTIZED_NMSE}", parity.nmse < ACTIVATION_QUANTIZED_NMSE
    elif fp32_io:
        limit = max(FP32_MAX_ABS, FP32_MAX_REL * parity.ref_max_abs)
        bound = f"max_abs < {limit:.3g}, nmse < {FP32_NMSE}"
        passed = parity.max_abs < limit and parity.nmse < FP32_NMSE
    else:
        bound, passed = fp16_bound(parity, model_file)
    result = {"status": "passed" if passed else "failed", "bound": bound, "fp32_io": fp32_io, **parity.as_dict()}
    if exact:
        # What the build's own accuracy level adds, for information: not part of the check.
        result["checked_at_accuracy_level"] = 0
        result["as_built"] = {
            k: v for k, v in parities[1].as_dict().items() if k in ("max_abs", "nmse", "argmax_agree")
        }
    return result
