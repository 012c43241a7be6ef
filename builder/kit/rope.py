"""Rotary embedding caches (cos/sin [max_len, rotary_dim/2]) from a HF config.

Computed in float32 the way transformers computes them, so they agree with the
reference model's before the final cast to within an ulp (numpy's and torch's
float32 pow differ in the last bit for some rope_theta, 1e6 and 5e5 among them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from builder.kit.errors import BuilderError

LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
SUPPORTED = ("default", "linear", "llama3", "yarn")
# Scalings whose pre-scaling window transformers takes from a top-level original_max_position_embeddings
# before the one inside rope_scaling (modeling_rope_utils standardize_rope_params: Phi-3 keeps it there).
WINDOWED = ("llama3", "yarn")


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention scale, 0.1 * mscale * ln(scale) + 1 (transformers' yarn_get_mscale)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


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
    # YaRN: the correction range between beta_fast and beta_slow rotations within the original window,
    # floored/ceiled to whole dims where `truncate`, and cos and sin both scaled by attention_factor.
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float = 1.0
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
        if rope_type not in SUPPORTED:
            raise BuilderError(
                f"config.json: rope type {rope_type!r} is not supported yet (supported: {', '.join(SUPPORTED)}); "
                "this builder cannot build the model"
            )
        # transformers refuses these scalings without their parameters (modeling_rope_utils); filling
        # them in here would build a model its authors did not train. YaRN's factor may be null (it is
        # then the ratio of the two windows), but the key must be there, as transformers requires.
        original = params.get("original_max_position_embeddings")
        if rope_type in WINDOWED and config.get("original_max_position_embeddings") is not None:
            original = config["original_max_position_embeddings"]
        # A top-level window counts as given: a llama3 scaling that kept it there alone was refused as
        # lacking it, though transformers builds the model with it.
        given = {**params, "original_max_position_embeddings": original}
        needed = {"linear": ("factor",), "llama3": LLAMA3_KEYS, "yarn": ("factor",)}.get(rope_type, ())
        missing = [key for key in needed if key not in given or (given[key] is None and rope_type != "yarn")]
        if missing:
            raise BuilderError(
                f"config.json: {rope_type} rope scaling needs {', '.join(needed)}; it lacks {', '.join(missing)} "
                "(fix or re-download config.json)"
            )
        max_positions = config.get("max_position_embeddings", 8192)
        values = dict(
            theta=float(theta),
            rotary_dim=rotary_dim,
            rope_type=rope_type,
            factor=float(params.get("factor") or 1.0),  # yarn: set below, a null one included
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(original if original is not None else max_positions),
            original_given=original is not None,
        )
        if rope_type == "yarn":
            values.update(cls._yarn_params(params, max_positions, values["original_max_position_embeddings"]))
        spec = cls(**values)
        spec._check_frequencies()
        return spec

    def _check_frequencies(self) -> None:
        """Refuse a rope_theta (or scaling factor) whose float32 frequencies, computed as transformers
        computes them, are not finite: a theta below 1.4e-45 is 0 in float32, 1 / 0 ** x is inf and the
        rotary cache NaN, which a build wrote with numpy's RuntimeWarning and no word of its own."""
        inv = self.inv_freq()
        if np.isfinite(inv).all():
            return
        scaled = f" with {self.rope_type} rope scaling (factor {self.factor:g})" if self.rope_type != "default" else ""
        raise BuilderError(
            f"config.json: rope_theta = {self.theta:g}{scaled} gives rotary frequencies that float32 cannot hold, "
            "so the rotary cache would be NaN (fix or re-download config.json)"
        )

    @staticmethod
    def _yarn_params(params: dict, max_positions: int, original: int) -> dict:
        """YaRN's numbers as transformers' _compute_yarn_parameters derives them (null and 0 read
        as unset where it tests them for truth)."""
        factor = params["factor"]
        if factor is None:  # DeepSeek-V3 style: the ratio of the scaled window to the original
            factor = max_positions / original
        attention_factor = params.get("attention_factor")
        if attention_factor is None:
            mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
            if mscale and mscale_all_dim:
                attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
            else:
                attention_factor = yarn_mscale(factor)
        return dict(
            factor=float(factor),
            attention_factor=float(attention_factor),
            beta_fast=float(params.get("beta_fast") or 32),
            beta_slow=float(params.get("beta_slow") or 1),
            truncate=bool(params.get("truncate", True)),
        )

    def inv_freq(self) -> np.ndarray:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # see _check_frequencies
            return self._inv_freq()

    def _inv_freq(self) -> np.ndarray:
        # A theta beyond float32 (3.4e38) is inf there: its powers are too, and the frequencies past the
        # first 0, in transformers as here.
        exponents = np.arange(0, self.rotary_dim, 2, dtype=np.int64).astype(np.float32) / self.rotary_dim
        # float64 pow rounded once: numpy's float32 pow takes other code paths on other CPUs (SVML with
        # AVX-512), and a build's bytes should not depend on the machine that made it.
        powers = (np.float64(np.float32(self.theta)) ** exponents.astype(np.float64)).astype(np.float32)
        inv = (1.0 / powers).astype(np.float32)
        if self.rope_type == "linear":
            return (inv / np.float32(self.factor)).astype(np.float32)
        if self.rope_type == "llama3":
            return self._llama3(inv)
        if self.rope_type == "yarn":
            return self._yarn(powers, inv)
        return inv

    def _yarn(self, powers: np.ndarray, extrapolation: np.ndarray) -> np.ndarray:
        # float32 where transformers computes in torch float32, double for its Python scalars (the
        # correction range): the blend then matches its inv_freq to the ulp of the powers (numpy's and
        # torch's float32 pow differ in the last bit for some bases, as for the other rope types).
        dim = self.rotary_dim

        def correction_dim(rotations: float) -> float:
            window = self.original_max_position_embeddings
            return (dim * math.log(window / (rotations * 2 * math.pi))) / (2 * math.log(self.theta))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # transformers' guard against dividing by zero
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
        keep = (1 - ramp).astype(np.float32)  # the share of each original (extrapolated) frequency
        interpolation = (1.0 / (np.float32(self.factor) * powers)).astype(np.float32)
        return (interpolation * (1 - keep) + extrapolation * keep).astype(np.float32)

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
        """Positions the model was trained (or scaled) for: linear, llama3 and yarn scaling stretch
        the original window by `factor`, and config.json may list either length. Without
        original_max_position_embeddings, max_position_embeddings is already the scaled length."""
        if self.rope_type in ("linear", "llama3", "yarn") and self.original_given:
            return max(max_position_embeddings, int(self.original_max_position_embeddings * self.factor))
        return max_position_embeddings

    def cache_bytes(self, max_len: int, dtype) -> int:
        """Bytes of the cos and sin caches `caches` returns."""
        return 2 * max_len * (self.rotary_dim // 2) * np.dtype(dtype).itemsize

    def caches(self, max_len: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin [max_len, rotary_dim/2], computed in slices of positions so the float32
        temporaries stay small next to the caches themselves. YaRN's attention_factor scales both,
        as transformers scales its cos and sin: GroupQueryAttention and RotaryEmbedding rotate
        with the caches as given, so the scaled q and k follow."""
        inv = self.inv_freq()
        scale = np.float32(self.attention_factor)
        cos = np.empty((max_len, inv.size), dtype)
        sin = np.empty((max_len, inv.size), dtype)
        step = max(1, (1 << 20) // max(inv.size, 1))
        for start in range(0, max_len, step):
            stop = min(start + step, max_len)
            positions = np.arange(start, stop, dtype=np.int64).astype(np.float32)
            freqs = np.outer(positions, inv).astype(np.float32).astype(np.float64)
            # float64 cos and sin rounded once to float32, for the same reason as the powers: float32
            # np.cos differs in the last bit between AVX2 and AVX-512 machines.
            cos[start:stop] = np.cos(freqs).astype(np.float32) * scale
            sin[start:stop] = np.sin(freqs).astype(np.float32) * scale
        return cos, sin
