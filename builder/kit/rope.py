"""Rotary embedding caches (cos/sin [max_len, rotary_dim/2]) from a HF config.

Computed in float32 the way transformers computes them, so positions agree
with the reference model bit for bit before the final cast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from builder.kit.errors import BuilderError

LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class RopeSpec:
    theta: float
    rotary_dim: int
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    # Whether config.json names the pre-scaling window: only then is `factor` x that window a
    # length the model supports (Gemma 3's linear scaling lists the scaled length alone).
    original_given: bool = False
    # Rotate the pairs (x[2j], x[2j+1]) (GPT-J, Helium) rather than the halves (x[j], x[j + d/2]);
    # config.json does not say which: the family does (DecoderBuilder.rotary_interleaved).
    interleaved: bool = False

    @classmethod
    def from_config(cls, config: dict, head_dim: int) -> RopeSpec:
        # transformers 5 writes `rope_parameters`; hub configs carry rope_theta + rope_scaling. With
        # both, transformers takes rope_scaling whole (modeling_rope_utils convert_rope_params_to_dict).
        params = dict(config.get("rope_scaling") or config.get("rope_parameters") or {})
        theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
        rope_type = params.get("rope_type", params.get("type", "default")) or "default"
        # Where transformers 5 keeps it (the top level as well, in configs written before it)
        rotary_dim = int(head_dim * params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
        if rope_type not in ("default", "linear", "llama3"):
            raise BuilderError(
                f"config.json: rope type {rope_type!r} is not supported yet (supported: default, linear, llama3); "
                "this builder cannot build the model"
            )
        # transformers refuses these scalings without their parameters (modeling_rope_utils); filling
        # them in here would build a model its authors did not train.
        needed = {"linear": ("factor",), "llama3": LLAMA3_KEYS}.get(rope_type, ())
        missing = [key for key in needed if params.get(key) is None]
        if missing:
            raise BuilderError(
                f"config.json: {rope_type} rope scaling needs {', '.join(needed)}; it lacks {', '.join(missing)} "
                "(fix or re-download config.json)"
            )
        return cls(
            theta=float(theta),
            rotary_dim=rotary_dim,
            rope_type=rope_type,
            factor=float(params.get("factor", 1.0)),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings", config.get("max_position_embeddings", 8192))
            ),
            original_given=params.get("original_max_position_embeddings") is not None,
        )

    def inv_freq(self) -> np.ndarray:
        exponents = np.arange(0, self.rotary_dim, 2, dtype=np.int64).astype(np.float32) / self.rotary_dim
        inv = (1.0 / (np.float32(self.theta) ** exponents)).astype(np.float32)
        if self.rope_type == "linear":
            return (inv / np.float32(self.factor)).astype(np.float32)
        if self.rope_type == "llama3":
            return self._llama3(inv)
        return inv

    def _llama3(self, inv: np.ndarray) -> np.ndarray:
        old = self.original_max_position_embeddings
        low_wavelen = old / self.low_freq_factor
        high_wavelen = old / self.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
        smooth = (old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)

    def max_positions(self, max_position_embeddings: int) -> int:
        """Positions the model was trained (or scaled) for: linear and llama3 scaling stretch
        the original window by `factor`, and config.json may list either length. Without
        original_max_position_embeddings, max_position_embeddings is already the scaled length."""
        if self.rope_type in ("linear", "llama3") and self.original_given:
            return max(max_position_embeddings, int(self.original_max_position_embeddings * self.factor))
        return max_position_embeddings

    def cache_bytes(self, max_len: int, dtype) -> int:
        """Bytes of the cos and sin caches `caches` returns."""
        return 2 * max_len * (self.rotary_dim // 2) * np.dtype(dtype).itemsize

    def caches(self, max_len: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin [max_len, rotary_dim/2], computed in slices of positions so the float32
        temporaries stay small next to the caches themselves."""
        inv = self.inv_freq()
        cos = np.empty((max_len, inv.size), dtype)
        sin = np.empty((max_len, inv.size), dtype)
        step = max(1, (1 << 20) // max(inv.size, 1))
        for start in range(0, max_len, step):
            stop = min(start + step, max_len)
            positions = np.arange(start, stop, dtype=np.int64).astype(np.float32)
            freqs = np.outer(positions, inv).astype(np.float32)
            cos[start:stop] = np.cos(freqs)
            sin[start:stop] = np.sin(freqs)
        return cos, sin
