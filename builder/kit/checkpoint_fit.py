"""Whether a checkpoint fits the family that builds it, read from its config and tensor names
before anything is built: its layers against the config's count, a stored lm_head that differs
from a tied embedding, and a family that windows attention otherwise than the one config.json
names. make_plan turns the answers into refusals and warnings.
"""

from __future__ import annotations

import os

import numpy as np

from builder.kit.errors import BuilderError
from builder.kit.hf_config import decoder_section
from builder.kit.options import BuildOptions


def untie_a_differing_lm_head(checkpoint, family, spec, page_cache: bool = False) -> str | None:
    """transformers 5 ties the lm_head to the embedding only where the checkpoint lacks it or holds
    the same values (else: "we will NOT tie them"): a tied config whose checkpoint stores another
    lm_head.weight is built with that one, as transformers runs it. Returns the warning, if so."""
    if not spec.tie_word_embeddings:
        return None
    head, table = family.weight(None, "lm_head.weight"), family.weight(None, "model.embed_tokens.weight")
    shape = (spec.vocab_size, spec.hidden_size)
    if not checkpoint.has(head) or _same_values(checkpoint, head, table, shape, page_cache):
        return None
    spec.tie_word_embeddings = False
    return (
        f"config.json ties the embeddings (tie_word_embeddings), but the checkpoint's {head} differs from "
        f"{table}: built with its own {head}, as transformers runs it (set tie_word_embeddings to false to "
        "say so)"
    )


# Comparisons made in this process, by where the two tensors lie and their files' versions: a batch
# plans each job of a checkpoint for its up-to-date check, and --verify plans once more.
_SAME_VALUES: dict[tuple, bool] = {}


def _same_values(checkpoint, a: str, b: str, shape: tuple[int, ...], page_cache: bool, rows: int = 8192) -> bool:
    """Whether two checkpoint tensors hold the same values, read a block of rows at a time (through
    the page cache only with --page-cache, as the build's own reads)."""
    where = [checkpoint.locate(name, 0, None, shape) for name in (a, b)]
    try:
        key = tuple((str(w.file), w.begin, w.length, os.stat(w.file).st_mtime_ns) for w in where)
    except OSError:
        key = None
    if key in _SAME_VALUES:
        return _SAME_VALUES[key]
    same = True
    for start in range(0, shape[0], rows):
        x, y = (
            checkpoint.read(checkpoint.locate(name, start, start + rows, shape), page_cache=page_cache)
            for name in (a, b)
        )
        same = (
            np.array_equal(x.view(np.uint8), y.view(np.uint8))  # bit for bit, as stored
            if x.dtype == y.dtype
            else np.array_equal(x.astype(np.float32), y.astype(np.float32))
        )
        if not same:
            break
    if key is not None:
        _SAME_VALUES[key] = same
    return same


def layer_prefix(family) -> str | None:
    """The name prefix of the family's layer tensors (model.layers., model.language_model.layers.),
    or None for a naming that does not keep HF's model...layers.{i}.{suffix} shape."""
    probe = family.weight(0, "x")
    return probe[: -len("0.x")] if probe.endswith(".0.x") else None


def window_difference(options: BuildOptions, config: dict, family, spec, target, context: int) -> str | None:
    """A family that windows attention otherwise than the one config.json names (--family
    LlamaForCausalLM on a Mistral v0.1; MistralForCausalLM on a Llama, taking the absent
    sliding_window as transformers' 4096) builds what that family's transformers class computes,
    which --verify, comparing with the checkpoint's own class, then failed as a builder bug. A
    window no shorter than the context length changes nothing."""
    who = f"--family {options.family} ({type(family).__name__})" if options.family else type(family).__name__
    fix = "drop --family to build the checkpoint as its config.json names it"
    own = getattr(family, "config_class_spec", None)
    own = own(config, target) if own else None
    if own is not None:
        name, own_spec = own
        if windows(own_spec, context) == windows(spec, context):
            return None
        window = min(w for w, _ in (windows(spec, context), windows(own_spec, context)) if w)  # the one that acts
        if not options.family:
            fix = f"build it with the family registered for {name} to build it as its config.json names it"
        return (
            f"{who} builds {describe_windows(spec)}, where {name} has {describe_windows(own_spec)}: past {window} "
            f"tokens its logits differ from {name}'s (which --verify compares with); {fix}"
        )
    # config.json names no family registered here: its sliding_window is all there is to go by.
    decoder = decoder_section(config)
    window = decoder.get("sliding_window")
    named = config.get("architectures") or []
    # The family config.json names, given by another spelling (--family architectures.qwen2:Qwen2Builder),
    # is no other family: it leaves the window out where transformers does too.
    own_family = set(named) & set(getattr(family, "architectures", ()))
    if not options.family or options.family in named or own_family or spec.sliding_window:
        return None
    if decoder.get("use_sliding_window") is False:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or not 0 < window < context:
        return None
    own_name = ", ".join(map(str, named)) or "its own family"
    # No family here builds config.json's architecture (or it refuses this config): dropping --family
    # would fail, so the advice is a family that applies the window.
    return (
        f"config.json sets sliding_window = {window}, which {who} does not apply: every layer attends to the "
        f"whole context, so past {window} tokens its logits differ from {own_name}'s (which --verify compares "
        "with); a family that applies the window builds it as transformers runs it"
    )


def windows(spec, context: int) -> tuple:
    if not spec.sliding_layers or spec.sliding_window >= context:
        return None, ()
    return spec.sliding_window, tuple(sorted(spec.sliding_layers))


def describe_windows(spec) -> str:
    if not spec.sliding_layers:
        return "no sliding window (every layer attends to the whole context)"
    where = "every layer"
    if len(spec.sliding_layers) < spec.num_layers:
        runs: list[list[int]] = []
        for layer in sorted(spec.sliding_layers):
            if runs and layer == runs[-1][-1] + 1:
                runs[-1].append(layer)
            else:
                runs.append([layer])
        listed = ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs)
        where = f"layer{'s' * (len(spec.sliding_layers) > 1)} {listed}"
    return f"a sliding window of {spec.sliding_window} tokens on {where}"


def check_checkpoint_layers(
    checkpoint, family, num_layers: int, source: str = "config.json's num_hidden_layers"
) -> list[str]:
    """The checkpoint's layers against num_hidden_layers, from tensor names alone. `source`
    names where num_layers came from (a family's make_spec may change config.json's count).

    Fewer layers: refused now, before anything loops over a config's layer count. More:
    built as the config says, with a warning (a truncated config, or extra layers such
    as multi-token-prediction heads that this build leaves out).
    """
    prefix = layer_prefix(family)
    if prefix is None:
        return []  # a family with its own naming checks its own tensors
    found = set()
    for name in checkpoint.names():
        if name.startswith(prefix):
            index = name[len(prefix) :].split(".", 1)[0]
            if index.isdigit():
                found.add(int(index))
    n = num_layers
    missing = next((i for i in range(min(n, max(found, default=-1) + 2)) if i not in found), None)
    if missing is not None and missing < n:
        have = f"layers 0-{max(found)}" if found else "no layers"
        other = None if found else _other_layer_prefix(checkpoint, prefix)
        why = (
            f"its layers are named {other}N.* instead (a prefix that a wrapper added, such as PEFT's "
            "base_model.model., DDP's module. or torch.compile's _orig_mod., or one that was lost): save the "
            "model with its own save_pretrained and build that folder"
            if other
            else "the checkpoint is incomplete or does not match its config"
        )
        raise BuilderError(
            f"{source} = {n}, but the checkpoint in "
            f"{checkpoint.directory} has no tensors {prefix}{missing}.* ({have} named {prefix}N.*); {why}"
        )
    extra = sorted(i for i in found if i >= n)
    if extra:
        span = f"{extra[0]}" if len(extra) == 1 else f"{extra[0]}-{extra[-1]}"
        return [
            f"the checkpoint has layer(s) {span} ({prefix}{span}.*) beyond {source} = {n}; "
            "they are not part of this build"
        ]
    return []


def _other_layer_prefix(checkpoint, prefix: str) -> str | None:
    """The prefix the checkpoint's layer tensors carry where it is not the family's (`prefix`): a
    state dict saved from inside a wrapper (base_model.model.model.layers.), or from the bare
    decoder (layers.), which the build saw only as a checkpoint without layers."""
    tail = prefix.rstrip(".").rsplit(".", 1)[-1] + "."  # "layers."
    for name in checkpoint.names():
        if name.startswith(tail + "0."):
            return tail
        at = name.find("." + tail + "0.")
        if at >= 0:
            return name[: at + 1 + len(tail)]
    return None
