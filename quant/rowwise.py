"""One scale per row, int8: the QMoE layout without block_size (ORT computes it in fp32).

MatMulNBits allows blocks of at most 256 values, so whole rows cannot go through
quant.blockwise; this is the same math (ORT's: symmetric scale = -extreme / 128;
asymmetric over [min(min, 0), max(max, 0)], zero point roundf(-min / scale)) over
whole rows. Layout: packed uint8 [N, K], scales [N], zero points uint8 [N].
"""

from __future__ import annotations

import numpy as np

from .blockwise import _ALMOST_HALF, _nonfinite_ok, as_weight
from .scheme import QuantizedWeight, QuantScheme


def _roundf(x: np.ndarray) -> np.ndarray:
    """C roundf of float32 values: halves away from zero (np.rint rounds them to even), and
    0.49999997 down (|x| + 0.5 rounds it up to 1 in float32; see blockwise._ALMOST_HALF)."""
    return np.sign(x) * np.trunc(np.abs(x) + _ALMOST_HALF)


def quantize_rowwise(weight, scheme: QuantScheme, scale_dtype=np.float32) -> QuantizedWeight:
    with _nonfinite_ok():  # NaN, Inf and subnormal rows, as in quantize_blockwise
        return _quantize_rows(as_weight(weight).astype(np.float32), scheme, scale_dtype)


def _quantize_rows(w: np.ndarray, scheme: QuantScheme, scale_dtype) -> QuantizedWeight:
    lo, hi = np.minimum(w.min(1), 0), np.maximum(w.max(1), 0)
    if scheme.symmetric:
        scale, zp = np.where(-lo > hi, lo, hi) / -128.0, np.full(len(w), 128.0, np.float32)
    else:
        scale = (hi - lo) / 255.0
        zp = np.clip(_roundf(-lo / np.where(scale == 0, 1, scale)), 0, 255)
    scale = scale.astype(scale_dtype)
    inv = np.where(scale == 0, 0, 1 / np.where(scale == 0, 1, scale.astype(np.float32)))
    q = np.clip(_roundf(w * inv[:, None] + zp[:, None]), 0, 255).astype(np.uint8)
    return QuantizedWeight(q, scale, None if scheme.symmetric else zp.astype(np.uint8), w.shape[1])


def dequantize_rowwise(q: QuantizedWeight, scheme: QuantScheme) -> np.ndarray:
    """float32 [N, K]: the values the QMoE kernel multiplies by."""
    zp = np.float32(128) if q.zero_points is None else q.zero_points.astype(np.float32)[:, None]
    return (q.packed.astype(np.float32) - zp) * q.scales.astype(np.float32)[:, None]
