"""Block-wise int4/int8 weight quantization for com.microsoft MatMulNBits.

Bit-identical to ONNX Runtime's own quantizer (MLAS `MlasQuantizeBlockwise`,
reached from Python as `onnxruntime.capi._pybind_state.quantize_matmul_4bits`
/ `quantize_matmul_8bits`, what onnxruntime.quantization's MatMulNBitsQuantizer
uses), and much faster on our [N, K] bf16 weights: see scripts/bench_quant.py.

What ORT computes, per block of `block_size` consecutive values of one row of
the [N, K] weight (one column of the ONNX MatMul B = [K, N]), all in float32:

  symmetric   m     = max if |max| > |min| else min   (the signed extreme; ties pick min)
              scale = m / -2^(bits-1)                  (so scales can be negative)
              zp    = 2^(bits-1), implicit: MatMulNBits gets no zero_points input
  asymmetric  min, max widened to include 0
              scale = (max - min) / (2^bits - 1)
              zp    = clamp(roundf(0 - min / scale), 0, 2^bits - 1), or 0 when scale == 0
  both        scale is stored in the scale dtype first; the values are quantized with
              that stored scale (so with fp16 scales, with the fp16-rounded one):
              r = 1 / scale (0 when scale == 0)
              q = clamp(roundf(w * r + zp), 0, 2^bits - 1)

roundf rounds half away from zero; numpy and torch round half to even, so the
rounding here is done with trunc (see `_block_params`). MLAS multiplies by the
reciprocal (not w / scale) and adds zp as a separate float32 operation (no fused
multiply-add), which torch's element-wise mul_ and add_ reproduce exactly; the
tests pin all of this down against ORT.

Speed: each element-wise pass is one in-place torch op over a cache-sized chunk of
rows, spread over torch's intra-op threads (torch.get_num_threads(): lower it
when several builds share the cores, as builder.batch does; oversubscribed
OpenMP threads are much slower than fewer threads).

Layout (MatMulNBits): B is uint8 [N, n_blocks, block_size * bits / 8], two 4-bit
values per byte, the first in the low nibble. Zero points are uint8
[N, ceil(n_blocks * bits / 8)], for 4 bits two per byte, low nibble first, and
an odd last block's missing partner nibble is 8 (what ORT leaves there). K that is
not a multiple of block_size is padded with zeros, as ORT's MatMulNBitsQuantizer
does; the padded values quantize to exactly zp and dequantize to 0.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import torch

# Chunk of rows processed at once, in float32 values: ~2.5 MB, which the two
# cores' L2 caches (2 MB each) hold between the element-wise passes over it.
_CHUNK_VALUES = 640 * 1024
_F32 = np.float32
# The largest float32 below 0.5: trunc(x + _ALMOST_HALF) == roundf(x) for every
# float32 x >= 0 (x + 0.5 would round 0.49999997 up to 1).
_ALMOST_HALF = np.nextafter(_F32(0.5), _F32(0))
_SCALE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class QuantScheme:
    """How MatMulNBits weights are quantized: its `bits` and `block_size` attributes."""

    bits: int
    block_size: int
    symmetric: bool = True

    BITS = (4, 8)
    BLOCK_SIZES = (16, 32, 64, 128, 256)

    def __post_init__(self):
        # Integers only (numpy ones too), not bools or floats: they become shapes and attributes.
        if not _is_int(self.bits) or self.bits not in self.BITS:
            raise ValueError(f"QuantScheme.bits={self.bits!r} is not supported; allowed: {self.BITS}")
        if not _is_int(self.block_size) or self.block_size not in self.BLOCK_SIZES:
            raise ValueError(f"QuantScheme.block_size={self.block_size!r} is not supported; "
                             f"allowed: {self.BLOCK_SIZES} (powers of two from 16 to 256)")
        if not isinstance(self.symmetric, (bool, np.bool_)):
            raise ValueError(f"QuantScheme.symmetric={self.symmetric!r} must be True or False")
        # Plain Python values from here on (numpy ints would leak into ONNX attributes).
        object.__setattr__(self, "bits", int(self.bits))
        object.__setattr__(self, "block_size", int(self.block_size))
        object.__setattr__(self, "symmetric", bool(self.symmetric))

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    @property
    def mid(self) -> int:
        """The implicit zero point of symmetric quantization (8 or 128)."""
        return 1 << (self.bits - 1)

    @property
    def blob_size(self) -> int:
        """Bytes per block in MatMulNBits input B."""
        return self.block_size * self.bits // 8

    def n_blocks(self, k: int) -> int:
        return -(-k // self.block_size)


@dataclass
class QuantizedWeight:
    """MatMulNBits inputs B, scales and zero_points for one [N, K] weight."""

    packed: np.ndarray              # uint8 [N, n_blocks, blob_size]
    scales: np.ndarray              # float32 or float16 [N, n_blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(n_blocks * bits / 8)]; None when symmetric
    k: int                          # K (in_features) before padding to whole blocks

    @property
    def n(self) -> int:
        return self.packed.shape[0]


def pack_zero_points(zero_points: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [N, n_blocks] zero points -> the MatMulNBits zero_points layout."""
    zp = np.asarray(zero_points, dtype=np.uint8)
    if bits == 8:
        return np.ascontiguousarray(zp)
    if bits != 4:
        raise ValueError(f"bits={bits!r} is not supported; allowed: (4, 8)")
    if zp.shape[1] % 2:  # ORT leaves 8 in the unused high nibble
        zp = np.concatenate([zp, np.full((zp.shape[0], 1), 8, np.uint8)], axis=1)
    return zp[:, 0::2] | (zp[:, 1::2] << 4)


def unpack_zero_points(packed: np.ndarray, bits: int, n_blocks: int) -> np.ndarray:
    """MatMulNBits zero_points -> uint8 [N, n_blocks]."""
    packed = np.asarray(packed, dtype=np.uint8)
    if bits == 8:
        return packed[:, :n_blocks]
    if bits != 4:
        raise ValueError(f"bits={bits!r} is not supported; allowed: (4, 8)")
    both = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    return both[:, :n_blocks]


def _as_torch(weight) -> torch.Tensor:
    """A CPU torch view (no copy where possible) of a float32/float16/bfloat16 [N, K] weight."""
    if isinstance(weight, torch.Tensor):
        t = weight.detach()
        if t.device.type != "cpu":
            t = t.cpu()
    else:
        a = np.asarray(weight)
        bf16 = a.dtype.name == "bfloat16"  # ml_dtypes' bfloat16: same bits as torch's
        if not bf16 and a.dtype not in (np.float32, np.float16):
            raise TypeError(f"weight has dtype {a.dtype}; expected float32, float16 or bfloat16")
        if any(s < 0 for s in a.strides):  # torch.from_numpy takes no negative strides
            a = np.ascontiguousarray(a)
        with warnings.catch_warnings():  # read-only arrays (mmap'd files) are fine: we only read
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(a.view(np.int16) if bf16 else a)
        if bf16:
            t = t.view(torch.bfloat16)
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"weight has dtype {t.dtype}; expected float32, float16 or bfloat16")
    if t.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K] (out_features, in_features); got shape {tuple(t.shape)}")
    return t


def _select(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.where(cond, a, b) for float32, branch-free on the bits.

    np.where (and torch.where) mispredict a branch per element on random masks:
    ~90 us per 20k blocks, more than the rest of the per-block math together.
    """
    ai, bi = a.view(np.int32), b.view(np.int32)
    mask = -cond.astype(np.int32)  # all ones where cond
    return (bi ^ ((ai ^ bi) & mask)).view(np.float32)


def _block_params(x: np.ndarray, mx: np.ndarray, mn: np.ndarray, scheme: QuantScheme, scale_dtype: np.dtype):
    """Per-block (stored scale, reciprocal, offset, zero point or None) from the block max/min, as MLAS has them.

    x is the chunk [R, n_blocks, block_size] (only its first column is read);
    the returned offset is added to w * r before truncation, see `_quantize_chunk`.
    """
    if scheme.symmetric:
        # |max| > |min| <=> max > -min, as max >= min.
        m = _select(mx > -mn, mx, mn)
        zero = m == 0
        if zero.any():
            # An all-zero block: MLAS scans with `<`/`>`, so both its min and max
            # are the first value, and the scale's zero sign follows it (+0 / -8 = -0).
            m[zero] = x[..., 0][zero]
        scale = m * _F32(-1.0 / scheme.mid)  # exact, same as m / -mid
        zp = None
    else:
        lo = np.minimum(mn, _F32(0))
        hi = np.maximum(mx, _F32(0))
        scale = (hi - lo) / _F32(scheme.qmax)
        scale += _F32(0)  # -0 -> +0: MLAS always gets +0 here (max - min of equal values)
        with np.errstate(divide="ignore", invalid="ignore"):
            zf = np.where(scale != 0, _F32(0) - lo / scale, lo)
        # roundf on [0, qmax]: see _ALMOST_HALF.
        zp = np.trunc(np.clip(zf, _F32(0), _F32(scheme.qmax)) + _ALMOST_HALF)
    stored = scale.astype(scale_dtype)
    s = stored.astype(np.float32)  # quantize with the scale MatMulNBits will use
    if s.all():
        r = _F32(1) / s
    else:
        r = np.zeros_like(s)
        np.divide(_F32(1), s, out=r, where=s != 0)
    # roundf(y + zp) == trunc(y + (zp + 0.5)) for any float32 y and integer zp >= 1:
    # adding 0.5 (an even number of ulps below 2^22) to y + zp commutes with float32
    # rounding, except across a power of two, where both sides give that power; below
    # 0.5, y + zp is exact. For zp == 0 (asymmetric) there is no prior add to round,
    # and trunc(y + _ALMOST_HALF) == roundf(y). Negative values clamp to 0 either way.
    if zp is None:
        offset = _F32(scheme.mid + 0.5)
    else:
        offset = np.where(zp == 0, _ALMOST_HALF, zp + _F32(0.5)).astype(np.float32)
    return stored, r, offset, zp


class _Workspace:
    """Scratch buffers for one chunk of rows, reused across chunks."""

    def __init__(self, rows: int, k_pad: int, scheme: QuantScheme):
        nb = k_pad // scheme.block_size
        self.x = torch.zeros(rows, nb, scheme.block_size)
        # 4 bits: the byte values lo + 16 * hi, as float32, before conversion to uint8.
        self.pairs = torch.empty(rows, nb, scheme.block_size // 2) if scheme.bits == 4 else None


def _quantize_chunk(w: torch.Tensor, scheme: QuantScheme, scale_dtype: np.dtype, ws: _Workspace,
                    packed: torch.Tensor, scales: np.ndarray, zero_points: np.ndarray | None) -> None:
    """Quantize rows w [R, K] into packed [R, n_blocks, blob], scales and zero_points [R, n_blocks].

    Every element-wise pass is one in-place torch op on an L2-sized chunk (torch's
    intra-op threads split it across cores); per-block math is numpy on [R, n_blocks].
    """
    R, K = w.shape
    x = ws.x[:R]
    nb, bs = x.shape[1], x.shape[2]
    x2 = x.view(R, nb * bs)
    if K == nb * bs:
        x2.copy_(w)  # bf16/fp16 -> fp32 is exact
    else:
        x2[:, :K].copy_(w)
        x2[:, K:].zero_()  # zero padding, like ORT (the tail was overwritten by the last chunk)
    xn = x.numpy()
    mx = torch.amax(x, -1).numpy()  # amax + amin: ~8x faster than torch.aminmax here
    mn = torch.amin(x, -1).numpy()
    stored, r, offset, zp = _block_params(xn, mx, mn, scheme, scale_dtype)
    scales[...] = stored
    if zero_points is not None:
        zero_points[...] = zp

    # q = clamp(roundf(w * r + zp)) as clamp(trunc(w * r + offset)), see _block_params.
    x.mul_(torch.from_numpy(r).unsqueeze(-1))
    if isinstance(offset, np.ndarray):
        x.add_(torch.from_numpy(offset).unsqueeze(-1))
    else:
        x.add_(float(offset))
    x.clamp_(0, scheme.qmax)  # before trunc or after: the same for these bounds
    if scheme.bits == 8:
        packed.view(R, nb, bs).copy_(x)  # float -> uint8 truncates
        return
    x.trunc_()
    # Two values per byte, the first in the low nibble: lo + 16 * hi, exact in float32.
    pairs = ws.pairs[:R]
    torch.add(x[..., 0::2], x[..., 1::2], alpha=16, out=pairs)
    packed.copy_(pairs)


def quantize_blockwise(weight, scheme: QuantScheme, scale_dtype=np.float32) -> QuantizedWeight:
    """Quantize a Hugging Face nn.Linear weight [N, K] (out_features, in_features) for MatMulNBits.

    weight: torch.Tensor or np.ndarray, float32 / float16 / bfloat16 (bfloat16 is
    widened to float32 exactly). scale_dtype: float32 or float16, the dtype of
    MatMulNBits' scales input (that of its activations).
    Bit-identical to ORT's quantize_matmul_4bits / quantize_matmul_8bits on the
    transposed weight [K, N] (float32 input for float32 scales, float16 input for
    float16 scales), padded with zero rows to whole blocks.
    """
    if not isinstance(scheme, QuantScheme):
        raise TypeError(f"scheme must be a QuantScheme, got {type(scheme).__name__}")
    scale_dtype = np.dtype(scale_dtype)
    if scale_dtype not in _SCALE_DTYPES:
        raise ValueError(f"scale_dtype={scale_dtype} is not supported; allowed: float32, float16")
    w = _as_torch(weight)
    n, k = w.shape
    if k == 0:
        raise ValueError("weight has K=0 columns; nothing to quantize")
    nb = scheme.n_blocks(k)
    k_pad = nb * scheme.block_size

    packed = torch.empty(n, nb, scheme.blob_size, dtype=torch.uint8)
    scales = np.empty((n, nb), scale_dtype)
    zp = None if scheme.symmetric else np.empty((n, nb), np.uint8)

    rows = max(1, min(n, _CHUNK_VALUES // k_pad))
    ws = _Workspace(rows, k_pad, scheme)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        _quantize_chunk(w[start:stop], scheme, scale_dtype, ws, packed[start:stop], scales[start:stop],
                        None if zp is None else zp[start:stop])
    return QuantizedWeight(packed=packed.numpy(), scales=scales,
                           zero_points=None if zp is None else pack_zero_points(zp, scheme.bits), k=k)


def dequantize_blockwise(q: QuantizedWeight, scheme: QuantScheme) -> np.ndarray:
    """float32 [N, K]: the weight values MatMulNBits multiplies with, (q - zp) * scale."""
    packed = np.asarray(q.packed, dtype=np.uint8)
    n, nb, blob = packed.shape
    if blob != scheme.blob_size or nb != scheme.n_blocks(q.k):
        raise ValueError(f"packed shape {packed.shape} does not match {scheme} with K={q.k}")
    if scheme.bits == 4:
        values = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, nb, scheme.block_size)
    else:
        values = packed
    if q.zero_points is None:
        zp = np.full((n, nb), scheme.mid, np.float32)
    else:
        zp = unpack_zero_points(q.zero_points, scheme.bits, nb).astype(np.float32)
    scale = np.asarray(q.scales).astype(np.float32)
    # (q - zp) is a small integer, exact in float32: one rounding, in the product.
    w = (values.astype(np.float32) - zp[..., None]) * scale[..., None]
    return np.ascontiguousarray(w.reshape(n, nb * scheme.block_size)[:, :q.k])
