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

roundf rounds half away from zero; numpy rounds half to even, so the rounding
here is done with trunc (see `_block_params`). MLAS multiplies by the reciprocal
(not w / scale) and adds zp as a separate float32 operation (no fused
multiply-add), which numpy's element-wise multiply and add reproduce exactly;
the tests pin all of this down against ORT.

Speed, with numpy only: each chunk of rows is first copied into a plane-major
layout: 8- or 16-byte words of G values (G = 4 or 8 for bf16/fp16), plane p
holding values [p*G, (p+1)*G) of every block. The block max/min is then a
reduction across planes, and every other pass runs over long contiguous rows,
which numpy vectorizes; reducing each block's own 32 values is one short inner
loop per block, about 10x slower. bf16 becomes float32 by a 16-bit shift of its
bits (exact). The calling thread and `set_num_threads` - 1 helpers (by default the
cores this process may run on; numpy releases the GIL in its loops) each take the
next chunk when done with one, so a core that other work slows down takes fewer;
helpers and workspaces are kept between calls.

Layout (MatMulNBits): B is uint8 [N, n_blocks, block_size * bits / 8], two 4-bit
values per byte, the first in the low nibble. Zero points are uint8
[N, ceil(n_blocks * bits / 8)], for 4 bits two per byte, low nibble first, and
an odd last block's missing partner nibble is 8 (what ORT leaves there). K that is
not a multiple of block_size is padded with zeros, as ORT's MatMulNBitsQuantizer
does; the padded values quantize to exactly zp and dequantize to 0.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .scheme import QuantizedWeight, QuantScheme

if sys.byteorder != "little":  # the nibble packing reads byte pairs as uint16
    raise ImportError("quant.blockwise needs a little-endian machine")

# Chunk of rows one thread processes at once, in float32 values: 2 MB, about a core's
# L2 cache (2 MB here), which holds it between the element-wise passes. Measured on
# Qwen3-4B down_proj and gate_proj bf16 with 2 threads on 2 cores (how builds run):
# 512K values beat 256K by 10-20% and 1M, 2M (int4/b32 sym and asym, int4/b128,
# int8/b32); fewer chunks also mean fewer numpy calls, each taking the GIL. One
# thread alone had measured 256K best (of 64K-640K), by less.
_CHUNK_VALUES = 512 * 1024
_F32 = np.float32
# The largest float32 below 0.5: trunc(x + _ALMOST_HALF) == roundf(x) for every
# float32 x >= 0 (x + 0.5 would round 0.49999997 up to 1).
_ALMOST_HALF = np.nextafter(_F32(0.5), _F32(0))
_SCALE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

_threads: int | None = None


# Where numpy would warn, with a line of our source, about blocks that are not plain numbers. A block of
# subnormals has a scale whose reciprocal overflows (w * inf), an all-zero asymmetric block computes 0 / 0
# for a zero point it then discards: their bytes are still ORT's (tests/test_quant.py). A NaN or Inf
# weight, or one beyond float16 for float16 scales, makes its block's scale NaN or Inf, which the build's
# NaN/Inf check reports by tensor name on one line. A new errstate each time: one instance cannot be
# entered by two threads at once.
def _nonfinite_ok() -> np.errstate:
    return np.errstate(divide="ignore", over="ignore", invalid="ignore")


def set_num_threads(threads: int | None) -> None:
    """Threads quantize_blockwise spreads its chunks over (None: the cores this process may use)."""
    global _threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} must be a positive integer or None")
    _threads = threads


def get_num_threads() -> int:
    if _threads is not None:
        return _threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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


def as_weight(weight) -> np.ndarray:
    """weight as a 2-D float32/float16/bfloat16 numpy array (no copy where possible)."""
    a = np.asarray(weight)
    if a.dtype.name != "bfloat16" and a.dtype not in (np.float32, np.float16):
        raise TypeError(
            f"weight has dtype {a.dtype}; expected float32, float16 or bfloat16 "
            "(numpy, ml_dtypes.bfloat16 for bfloat16)"
        )
    if a.ndim != 2:
        raise ValueError(f"weight must be 2-D [N, K] (out_features, in_features); got shape {a.shape}")
    return a


def _select(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.where(cond, a, b) for float32, branch-free on the bits.

    np.where mispredicts a branch per element on random masks: ~90 us per 20k
    blocks, more than the rest of the per-block math together.
    """
    ai, bi = a.view(np.int32), b.view(np.int32)
    mask = -cond.astype(np.int32)  # all ones where cond
    return (bi ^ ((ai ^ bi) & mask)).view(np.float32)


def _block_params(first: np.ndarray, mx: np.ndarray, mn: np.ndarray, scheme: QuantScheme, scale_dtype: np.dtype):
    """Per-block (stored scale, reciprocal, offset, zero point or None) from the block max/min, as MLAS has them.

    first: each block's first value; the returned offset is added to w * r before
    truncation, see `_quantize_chunk`.
    """
    if scheme.symmetric:
        # |max| > |min| <=> max > -min, as max >= min.
        m = _select(mx > -mn, mx, mn)
        zero = m == 0
        if zero.any():
            # An all-zero block: MLAS scans with `<`/`>`, so both its min and max
            # are the first value, and the scale's zero sign follows it (+0 / -8 = -0).
            m[zero] = first[zero]
        scale = m * _F32(-1.0 / scheme.mid)  # exact, same as m / -mid
        zp = None
    else:
        lo = np.minimum(mn, _F32(0))
        hi = np.maximum(mx, _F32(0))
        scale = (hi - lo) / _F32(scheme.qmax)
        scale += _F32(0)  # -0 -> +0: MLAS always gets +0 here (max - min of equal values)
        zf = np.where(scale != 0, _F32(0) - lo / scale, lo)  # lo / 0 is discarded: see _nonfinite_ok
        # roundf on [0, qmax]: see _ALMOST_HALF.
        zp = np.trunc(np.clip(zf, _F32(0), _F32(scheme.qmax)) + _ALMOST_HALF)
    stored = scale.astype(scale_dtype)  # inf beyond float16: see _nonfinite_ok
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


_executor: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """Helper threads kept between calls (a 4B build makes ~250 calls); a new pool in a
    forked child, whose copy of the old one has no threads."""
    global _executor
    workers = max(1, get_num_threads() - 1)
    with _executor_lock:
        if _executor is None or _executor[:2] != (os.getpid(), workers):
            _executor = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="quant"))
        return _executor[2]


def _submit(fn):
    pool = _pool()
    try:
        return pool.submit(fn)
    except BaseException:
        # Ctrl-C (KeyboardInterrupt, raised wherever the main thread is) inside submit() can come
        # after it started a helper thread and before the pool recorded it: Python's exit then never
        # tells that thread to stop and waits for it forever (a build hung after "interrupted").
        # Shutting the pool down wakes every thread of it, recorded or not; the next call makes another.
        global _executor
        with _executor_lock:
            if _executor is not None and _executor[2] is pool:
                _executor = None
        pool.shutdown(wait=False)
        raise


class _Workspaces:
    """Workspaces kept between calls, for the last few chunk shapes: fresh ones are
    mapped and zeroed page by page by the kernel on every call."""

    KEEP = 4

    def __init__(self):
        self._lock = threading.Lock()
        self._free: dict[tuple, list[_Workspace]] = {}

    def take(self, key) -> _Workspace:
        with self._lock:
            spare = self._free.pop(key, [])
            ws = spare.pop() if spare else None
            self._free[key] = spare  # now the most recent key
        return ws or _Workspace(*key)

    def give(self, key, ws: _Workspace) -> None:
        with self._lock:
            self._free.setdefault(key, []).append(ws)
            while len(self._free) > self.KEEP:
                del self._free[next(iter(self._free))]


class _Workspace:
    """One thread's buffers for chunks of up to `rows` rows, in the plane-major layout.

    A chunk of M blocks is P = block_size / G planes of M words; each word holds G
    consecutive values of one block (G * itemsize = 8 or 16 bytes). As float32 that
    is x [P, M * G]: x[p, m * G + g] is value p * G + g of block m.
    """

    def __init__(self, rows: int, k_pad: int, scheme: QuantScheme, dtype: np.dtype):
        self.raw = _UINT[dtype.itemsize]  # the input's bits: uint16 or uint32
        # 16-byte words (moved as complex128) for long blocks: wide elements copy faster,
        # and fewer planes mean fewer of them to transpose. 8 bytes (uint64) for short
        # blocks, where the per-word steps (max/min within a word, spreading the
        # scales) cost more than that saves. Measured on Qwen3-4B down_proj bf16.
        self.word = np.dtype(np.complex128 if scheme.block_size >= 64 else np.uint64)
        self.g = self.word.itemsize // dtype.itemsize  # values per word
        self.p = scheme.block_size // self.g  # planes
        self.nb = k_pad // scheme.block_size
        m = rows * self.nb  # blocks of a full chunk
        self.k_pad = k_pad
        self.pad = np.zeros((rows, k_pad), self.raw)  # for padded or scattered rows
        self.x = np.empty((self.p, m * self.g), np.float32)
        # 2-byte inputs are transposed as words first, then widened into x; fp32 words go straight to x.
        self.words = np.empty((self.p, m), self.word) if dtype.itemsize == 2 else None
        self.mxg = np.empty(m * self.g, np.float32)
        self.mng = np.empty(m * self.g, np.float32)
        self.mx = np.empty(m, np.float32)
        self.mn = np.empty(m, np.float32)
        self.rg = np.empty(m * self.g, np.float32)
        self.og = np.empty(m * self.g, np.float32)
        self.q = np.empty((self.p, m * self.g), np.uint8)
        if scheme.bits == 4:
            self.pair = np.empty((self.p, m * self.g // 2), np.uint16)
            self.nibbles = np.empty((self.p, m * self.g // 2), np.uint8)


_workspaces = _Workspaces()


def _spread(values: np.ndarray, out: np.ndarray, g: int) -> np.ndarray:
    """Each per-block value repeated g times, in out (column by column: ~3x faster than a broadcast)."""
    columns = out.reshape(-1, g)
    for i in range(g):
        columns[:, i] = values
    return out


def _quantize_chunk(
    w: np.ndarray,
    scheme: QuantScheme,
    scale_dtype: np.dtype,
    ws: _Workspace,
    packed: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
) -> None:
    """Quantize rows w [R, K] into packed [R, n_blocks, blob], scales and zero_points [R, n_blocks]."""
    R, K = w.shape
    g, p, nb = ws.g, ws.p, ws.nb
    m = R * nb
    bits = w.view(ws.raw)  # bf16/fp16 -> uint16, fp32 -> uint32: no copy
    if K != ws.k_pad or bits.strides[1] != bits.itemsize:
        pad = ws.pad[:R]
        pad[:, :K] = bits
        pad[:, K:] = 0  # zero padding, like ORT
        bits = pad
    words = bits.view(ws.word).reshape(R, nb, p)  # a bit copy, even as complex128: no arithmetic
    x = ws.x[:, : m * g]
    target = ws.words[:, :m] if ws.words is not None else x.view(ws.word)
    np.copyto(target.reshape(p, R, nb), words.transpose(2, 0, 1))  # the one transposing copy
    if w.dtype.name == "bfloat16":  # exact: bf16 is the top half of a float32
        np.left_shift(target.view(np.uint16), np.uint32(16), out=x.view(np.uint32), dtype=np.uint32)
    elif w.dtype == np.float16:
        np.copyto(x, target.view(np.float16))

    mxg = np.max(x, axis=0, out=ws.mxg[: m * g])
    mng = np.min(x, axis=0, out=ws.mng[: m * g])
    mx, mn = ws.mx[:m], ws.mn[:m]
    np.maximum(mxg[0::g], mxg[1::g], out=mx)
    np.minimum(mng[0::g], mng[1::g], out=mn)
    for i in range(2, g):
        np.maximum(mx, mxg[i::g], out=mx)
        np.minimum(mn, mng[i::g], out=mn)
    stored, r, offset, zp = _block_params(x[0, 0::g], mx, mn, scheme, scale_dtype)
    scales[...] = stored.reshape(R, nb)
    if zero_points is not None:
        zero_points[...] = zp.reshape(R, nb)

    # q = clamp(trunc(w * r + offset)) == clamp(roundf(w * r + zp)), see _block_params.
    np.multiply(x, _spread(r, ws.rg[: m * g], g), out=x)
    if isinstance(offset, np.ndarray):
        np.add(x, _spread(offset, ws.og[: m * g], g), out=x)
    else:
        np.add(x, offset, out=x)
    np.clip(x, _F32(0), _F32(scheme.qmax), out=x)  # before trunc or after: the same for these bounds
    q = ws.q[:, : m * g]
    np.copyto(q, x, casting="unsafe")  # float -> uint8 truncates
    if scheme.bits == 8:
        out = packed.reshape(R, -1).view(_UINT[g]).reshape(m, p)
        np.copyto(out, q.view(_UINT[g]).T)
        return
    # Two values per byte, the first in the low nibble. As uint16, a pair is lo | hi << 8
    # (lo, hi < 16); OR-ing in its shift right by 4 puts lo | hi << 4 in the low byte.
    pair = q.view(np.uint16)
    both = ws.pair[:, : m * g // 2]
    np.right_shift(pair, 4, out=both)
    np.bitwise_or(both, pair, out=both)
    nibbles = ws.nibbles[:, : m * g // 2]
    np.copyto(nibbles, both, casting="unsafe")  # the low byte
    out = packed.reshape(R, -1).view(_UINT[g // 2]).reshape(m, p)
    np.copyto(out, nibbles.view(_UINT[g // 2]).T)


def quantize_blockwise(weight, scheme: QuantScheme, scale_dtype=np.float32) -> QuantizedWeight:
    """Quantize a Hugging Face nn.Linear weight [N, K] (out_features, in_features) for MatMulNBits.

    weight: numpy array, float32 / float16 / bfloat16 (ml_dtypes; widened to float32
    exactly). scale_dtype: float32 or float16, the dtype of MatMulNBits' scales input
    (that of its activations).
    Bit-identical to ORT's quantize_matmul_4bits / quantize_matmul_8bits on the
    transposed weight [K, N] (float32 input for float32 scales, float16 input for
    float16 scales), padded with zero rows to whole blocks.
    """
    if not isinstance(scheme, QuantScheme):
        raise TypeError(f"scheme must be a QuantScheme, got {type(scheme).__name__}")
    if scheme.method != "blockwise":
        raise ValueError(f"quantize_blockwise got a {scheme.method!r} scheme ({scheme}); use quant.quantize")
    scale_dtype = np.dtype(scale_dtype)
    if scale_dtype not in _SCALE_DTYPES:
        raise ValueError(f"scale_dtype={scale_dtype} is not supported; allowed: float32, float16")
    w = as_weight(weight)
    n, k = w.shape
    if k == 0:
        raise ValueError("weight has K=0 columns; nothing to quantize")
    nb = scheme.n_blocks(k)
    k_pad = nb * scheme.block_size

    packed = np.empty((n, nb, scheme.blob_size), np.uint8)
    scales = np.empty((n, nb), scale_dtype)
    zp = None if scheme.symmetric else np.empty((n, nb), np.uint8)

    rows = max(1, min(n, _CHUNK_VALUES // k_pad))
    spans = [(start, min(start + rows, n)) for start in range(0, n, rows)]

    key = (rows, k_pad, scheme, w.dtype)
    todo = iter(spans)  # shared: each thread takes the next chunk when done (next() holds the GIL)

    def work():
        ws = _workspaces.take(key)
        try:
            for start, stop in todo:
                with _nonfinite_ok():
                    _quantize_chunk(
                        w[start:stop],
                        scheme,
                        scale_dtype,
                        ws,
                        packed[start:stop],
                        scales[start:stop],
                        None if zp is None else zp[start:stop],
                    )
        finally:
            _workspaces.give(key, ws)

    helpers = [_submit(work) for _ in range(min(get_num_threads(), len(spans)) - 1)]
    try:
        work()  # this thread works too
    finally:
        for done in helpers:
            done.result()
    return QuantizedWeight(
        packed=packed, scales=scales, zero_points=None if zp is None else pack_zero_points(zp, scheme.bits), k=k
    )


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
    return np.ascontiguousarray(w.reshape(n, nb * scheme.block_size)[:, : q.k])
