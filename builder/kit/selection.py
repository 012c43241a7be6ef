"""Which weight format each projection gets (mixed precision).

A projection is named by its Hugging Face module name, e.g.
`model.layers.3.self_attn.v_proj` or `lm_head`. Patterns from
--int8-layers / --float-layers match the full name, its last component, or a
glob (`*.v_proj`, `model.layers.0.*`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from builder.kit.options import BuildOptions


@dataclass(frozen=True)
class WeightFormat:
    kind: str  # "float", "int4" or "int8"
    block_size: int = 32
    symmetric: bool = True

    @property
    def bits(self) -> int:
        return {"int4": 4, "int8": 8}[self.kind]

    @property
    def quantized(self) -> bool:
        return self.kind != "float"

    def __str__(self) -> str:
        if not self.quantized:
            return "float"
        return f"{self.kind}/b{self.block_size}/{'sym' if self.symmetric else 'asym'}"


def _matches(module: str, patterns: list[str]) -> bool:
    leaf = module.rsplit(".", 1)[-1]
    return any(module == p or leaf == p or fnmatch.fnmatchcase(module, p) for p in patterns)


def format_for(module: str, options: BuildOptions) -> WeightFormat:
    """The format of one projection under the build options."""
    if options.precision not in ("int4", "int8"):
        return WeightFormat("float")
    if _matches(module, options.float_layers):
        return WeightFormat("float")
    kind = "int8" if options.precision == "int8" or _matches(module, options.int8_layers) else "int4"
    return WeightFormat(kind, options.block_size, options.symmetric)


def patterns_matching_nothing(modules: list[str], options: BuildOptions) -> list[str]:
    """Patterns that select no projection: almost always a typo worth refusing."""
    return [p for p in options.int8_layers + options.float_layers if not any(_matches(m, [p]) for m in modules)]
