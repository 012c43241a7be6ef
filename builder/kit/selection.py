"""Which weight format each projection gets (mixed precision).

A projection is named by its Hugging Face module name, e.g.
`model.layers.3.self_attn.v_proj` or `lm_head`. Patterns from
--int8-layers / --float-layers match the full name, its last component, or a
glob (`*.v_proj`, `model.layers.0.*`).
"""

from __future__ import annotations

import fnmatch

from builder.kit.options import BuildOptions
from quant import QuantScheme


def module_matches(module: str, patterns: list[str]) -> bool:
    leaf = module.rsplit(".", 1)[-1]
    return any(module == p or leaf == p or fnmatch.fnmatchcase(module, p) for p in patterns)


def format_for(module: str, options: BuildOptions) -> QuantScheme:
    """The format of one projection under the build options (QuantScheme.FLOAT: not quantized)."""
    if options.precision not in ("int4", "int8"):
        return QuantScheme.FLOAT
    if module_matches(module, options.float_layers):
        return QuantScheme.FLOAT
    kind = "int8" if options.precision == "int8" or module_matches(module, options.int8_layers) else "int4"
    return QuantScheme.from_kind(kind, options.block_size, options.symmetric)


def patterns_matching_nothing(modules: list[str], options: BuildOptions) -> list[str]:
    """Patterns that select no projection: almost always a typo worth refusing."""
    return [p for p in options.int8_layers + options.float_layers if not any(module_matches(m, [p]) for m in modules)]
