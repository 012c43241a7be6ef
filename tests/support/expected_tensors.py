"""The tensors a checkpoint of a family must hold, derived from the family itself.

The family's builder runs its graph walk over a stand-in checkpoint that has every
tensor, answers each read with zeros and records (name, shape). So a new family
needs no list of tensor shapes here: what its blocks read is what a checkpoint for
it holds. Only the order is borrowed from transformers (the state_dict order that
save_pretrained shards by, with fused MoE experts stored one by one as on the hub).
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import numpy as np


class _Stand_inCheckpoint:
    def __init__(self, config: dict, layer_names: list[str]):
        self.config = config
        self.directory = Path(os.devnull)
        self.seen: dict[str, tuple[int, ...]] = {}
        self._layer_names = layer_names
        self.absent: set[str] = set()
        self.read_warnings: list[str] = []

    def names(self) -> list[str]:
        return self._layer_names  # one name a layer: what the plan's layer-count check looks at

    def has(self, name: str) -> bool:
        # Every tensor exists, so an untied config stays untied; but a tied model's lm_head, which a
        # hub checkpoint need not store (asked for, the plan would compare it with the embedding,
        # and the reads would count it as the family's).
        return name not in self.absent

    def rows(self, name, start, stop, expect_shape=None):
        if expect_shape is None:  # a chunk of a tensor whose shape was checked first
            assert name in self.seen, f"the family read {name} without saying its shape"
            shape = self.seen[name]
        else:
            shape = tuple(int(d) for d in expect_shape)
            self.seen.setdefault(name, shape)
        stop = shape[0] if stop is None else min(stop, shape[0])
        start = min(start, stop)
        # float16, the fp16 walk's own dtype, so nothing is converted (a Qwen3-4B walk took 82 s
        # through bf16 -> float32 copies)
        return np.zeros((stop - start, *shape[1:]) if shape else (), dtype=np.float16)

    def tensor(self, name, expect_shape=None):
        return self.rows(name, 0, None, expect_shape)


def read_by_family(config: dict) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor the registered family reads for this config (build order)."""
    return dict(_read_by_family(json.dumps(config, sort_keys=True)))


@functools.lru_cache(maxsize=32)
def _read_by_family(config_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Cached: the walk computes on zeros (a Qwen3-4B walk takes ~10 s), and a test that plans a
    # checkpoint's files and then checks its shapes asks for the same config twice.
    config = json.loads(config_json)
    from architectures.registry import builder_class_for
    from builder.kit.data_file import ExternalDataFile
    from builder.kit.graph import Graph
    from builder.kit.options import BuildOptions
    from builder.kit.progress import SilentProgress

    family = builder_class_for(config)
    naming = family.__new__(family)  # weight() names tensors from the layer alone
    layers = (config.get("text_config") or config)["num_hidden_layers"]  # ConditionalGeneration nests it
    stand_in = _Stand_inCheckpoint(config, [naming.weight(i, "x") for i in range(layers)])
    # fp16 on cpu: every option at its default, every tensor read as a float (no quantizer work).
    arch = family(stand_in, BuildOptions(model="stand-in", precision="fp16", ep="cpu"))
    if arch.make_spec(arch.config).tie_word_embeddings:  # the family's default too (Gemma 3 ties)
        stand_in.absent.add(arch.weight(None, "lm_head.weight"))
    data = ExternalDataFile(Path(os.devnull))
    try:
        arch.build_graph(Graph(data), SilentProgress())
    finally:
        data.abort()
    return tuple(stand_in.seen.items())


def transformers_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the state_dict of transformers' model of this config, in its order (meta
    device: no memory)."""
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def _hub_order(config: dict) -> list[str] | None:
    """transformers' state_dict order for this config, or None where it has no model of it."""
    try:
        return [name for name, _ in transformers_shapes(config)]
    except Exception:
        return None


def expected_tensors(config: dict, *, tied_lm_head: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every checkpoint tensor, in hub order. Tied models have no
    lm_head.weight unless tied_lm_head (a copy of the embedding, as in Qwen3-0.6B/1.7B)."""
    tensors = read_by_family(config)
    if tied_lm_head and "lm_head.weight" not in tensors:
        # Multimodal wrappers keep the text model under model.language_model.
        embedding = next(name for name in tensors if name.endswith("embed_tokens.weight"))
        tensors["lm_head.weight"] = tensors[embedding]
    order = _hub_order(config)
    if order is None:
        return list(tensors.items())
    rank = {name: i for i, name in enumerate(order)}

    def key(item):
        name = item[0]
        if name in rank:
            return (rank[name], 0, 0)
        # Hub files store experts one by one where transformers fuses them: sort each under
        # its fused tensor (mlp.experts.gate_up_proj / down_proj), by expert.
        m = re.match(r"(.*\.experts)\.(\d+)\.(\w+)_proj\.weight$", name)
        if m:
            fused = f"{m[1]}.{'down_proj' if m[3] == 'down' else 'gate_up_proj'}"
            proj = {"gate": 0, "up": 1, "down": 2}[m[3]]
            return (rank.get(fused, len(rank)), int(m[2]), proj)
        return (len(rank), 0, 0)

    return sorted(tensors.items(), key=key)
