"""quant.quantize_blockwise: bit-identical to ONNX Runtime's quantizer, and what MatMulNBits computes.

The reference is ORT's own quantize_matmul_4bits / quantize_matmul_8bits
(onnxruntime.capi._pybind_state, i.e. MLAS MlasQuantizeBlockwise), wrapped by
quant.ort_quantize_blockwise to take our [N, K] weights.
"""

from __future__ import annotations

import dataclasses
import warnings

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import quant.blockwise
from quant import (
    QuantizedWeight,
    QuantScheme,
    dequantize_blockwise,
    ort_quantize_blockwise,
    pack_zero_points,
    quantize_blockwise,
    unpack_zero_points,
)

BLOCK_SIZES = (16, 32, 64, 128, 256)


def assert_identical(ours: QuantizedWeight, ref: QuantizedWeight):
    assert ours.k == ref.k
    for field in ("packed", "scales", "zero_points"):
        a, b = getattr(ours, field), getattr(ref, field)
        if b is None:
            assert a is None, field
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, (field, a.shape, b.shape, a.dtype, b.dtype)
        # Bytes, not values: scales must match to the bit, the sign of a zero scale included.
        if a.tobytes() != b.tobytes():
            bad = np.argwhere(a.view(np.uint8) != b.view(np.uint8))[:5]
            pytest.fail(f"{field} differs from ORT at {bad.tolist()}")


def random_weight(rng, n, k, symmetric, dtype=np.float32):
    w = rng.standard_normal((n, k)) * rng.uniform(0.001, 2.0, (n, 1))
    if not symmetric:  # off-centre rows, so zero points vary
        w += rng.uniform(-1.5, 1.5, (n, 1)) * np.abs(w).mean(axis=1, keepdims=True)
    return w.astype(dtype)


# ---- bit-exactness against ORT ---------------------------------------------------


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_matches_ort_float32(bits, symmetric, block_size):
    rng = np.random.default_rng(block_size * 10 + bits + symmetric)
    scheme = QuantScheme(bits, block_size, symmetric)
    for k in (block_size * 4, block_size * 3 + 5, block_size // 2 + 1):  # K % block_size != 0: padded
        w = random_weight(rng, 48, k, symmetric)
        assert_identical(quantize_blockwise(w, scheme), ort_quantize_blockwise(w, scheme))
        assert_identical(quantize_blockwise(torch.from_numpy(w), scheme), ort_quantize_blockwise(w, scheme))


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_matches_ort_float16(bits, symmetric, block_size):
    """float16 scales: ORT quantizes float16 input and rounds the scale to float16 before using it."""
    rng = np.random.default_rng(block_size * 10 + bits + symmetric + 1)
    scheme = QuantScheme(bits, block_size, symmetric)
    for k in (block_size * 4, block_size * 2 + 3):
        w16 = random_weight(rng, 48, k, symmetric, np.float16)
        ref = ort_quantize_blockwise(w16, scheme, np.float16)
        assert ref.scales.dtype == np.float16
        assert_identical(quantize_blockwise(w16, scheme, np.float16), ref)
        assert_identical(quantize_blockwise(torch.from_numpy(w16), scheme, np.float16), ref)
        # The same numbers in float32 give the same result: only the scale dtype matters.
        assert_identical(quantize_blockwise(w16.astype(np.float32), scheme, np.float16), ref)


@pytest.mark.parametrize("scale_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_bfloat16_matches_ort_on_float32_upcast(bits, symmetric, scale_dtype):
    rng = np.random.default_rng(bits + 2 * symmetric)
    scheme = QuantScheme(bits, 32, symmetric)
    # bf16 as checkpoints hold it: the top 16 bits of float32 (torch.bfloat16's bits).
    w = torch.from_numpy(random_weight(rng, 64, 32 * 5 + 7, symmetric)).to(torch.bfloat16)
    w32 = w.float().numpy()
    if scale_dtype == np.float16:
        # ORT's float16 path takes float16 input: keep the bf16 numbers float16 can hold.
        w32 = np.where(w32.astype(np.float16).astype(np.float32) == w32, w32, np.float32(0))
        w = torch.from_numpy(w32).to(torch.bfloat16)
        assert (w32 != 0).mean() > 0.9
    w = w.view(torch.int16).numpy().view(ml_dtypes.bfloat16)  # quant takes numpy only
    ref = ort_quantize_blockwise(w32, scheme, scale_dtype)
    assert_identical(quantize_blockwise(w, scheme, scale_dtype), ref)
    assert_identical(quantize_blockwise(w32.astype(ml_dtypes.bfloat16), scheme, scale_dtype), ref)


def test_many_chunks_with_padding(monkeypatch):
    """Row chunks reuse one buffer: the zero padding of K must be restored for every chunk."""
    monkeypatch.setattr(quant.blockwise, "_CHUNK_VALUES", 4096)
    rng = np.random.default_rng(7)
    for scheme in (QuantScheme(4, 32, True), QuantScheme(4, 64, False), QuantScheme(8, 16, False)):
        w = random_weight(rng, 203, 300, scheme.symmetric)
        assert_identical(quantize_blockwise(w, scheme), ort_quantize_blockwise(w, scheme))


def test_padding_is_zero_after_a_longer_row_used_the_workspace():
    """Workspaces are kept between calls by (rows, padded K, scheme, dtype): a weight with
    K = 290 after one with K = 300 (both padded to 320) reuses the padding buffer, whose
    columns 290..299 still hold the first weight's values unless they are zeroed again.
    Within one call every chunk has the same K, so only consecutive calls show it."""
    rng = np.random.default_rng(12)
    for scheme in (QuantScheme(4, 32, True), QuantScheme(4, 32, False), QuantScheme(8, 32, True)):
        longer = random_weight(rng, 40, 300, scheme.symmetric) * 100  # stale values would set the scales
        shorter = random_weight(rng, 40, 290, scheme.symmetric)
        quantize_blockwise(longer, scheme)
        assert_identical(quantize_blockwise(shorter, scheme), ort_quantize_blockwise(shorter, scheme))


def test_non_contiguous_and_read_only_inputs():
    rng = np.random.default_rng(8)
    scheme = QuantScheme(4, 32, False)
    base = random_weight(rng, 80, 200, False)
    ref = ort_quantize_blockwise(base[::2, 7:135], scheme)
    assert_identical(quantize_blockwise(base[::2, 7:135], scheme), ref)
    assert_identical(quantize_blockwise(torch.from_numpy(base)[::2, 7:135], scheme), ref)
    flipped = base[::-1]
    assert_identical(quantize_blockwise(flipped, scheme), ort_quantize_blockwise(flipped, scheme))
    frozen = base.copy()
    frozen.flags.writeable = False
    assert_identical(quantize_blockwise(frozen, scheme), ort_quantize_blockwise(base, scheme))


# ---- edge cases --------------------------------------------------------------------


@pytest.mark.parametrize("scale_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_zero_and_single_value_blocks(bits, symmetric, scale_dtype):
    rng = np.random.default_rng(3)
    scheme = QuantScheme(bits, 16, symmetric)
    w = random_weight(rng, 12, 16 * 6 + 3, symmetric).astype(np.float16).astype(np.float32)
    w[0] = 0.0  # all-zero row
    w[1] = -0.0  # all negative zeros: the zero scale's sign follows the first value
    w[2, :16] = 0.0
    w[2, 16] = -0.0  # a block of +0 with one -0 in the middle
    w[3, 16:32] = 0.0
    w[3, 16] = -0.0  # ... and starting with -0
    w[4, 32:48] = 0.0
    w[4, 40] = 0.75  # single positive value
    w[5, 32:48] = 0.0
    w[5, 47] = -3.5  # single negative value, last in the block
    w[6, 96:] = 0.0
    w[6, 97] = 1.25  # single value in the partial (padded) last block
    w[7, :16] = 2.0  # constant blocks
    w[7, 16:32] = -2.0
    w[8, :16] = np.where(np.arange(16) % 2, 1.5, -1.5)  # |max| == |min|: ORT picks min
    w[9, :16] = np.abs(w[9, :16])  # all positive: asymmetric zero point 0
    w[10, :16] = -np.abs(w[10, :16])  # all negative: asymmetric zero point qmax
    ref = ort_quantize_blockwise(w, scheme, scale_dtype)
    assert_identical(quantize_blockwise(w, scheme, scale_dtype), ref)
    if symmetric:
        assert np.signbit(ref.scales[0, 0]) and not np.signbit(ref.scales[1, 0])  # +0/-8, -0/-8


@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_subnormal_blocks_match_ort_without_numpy_warnings(bits, symmetric):
    """A block of subnormals (bf16 keeps float32's range, so checkpoints can hold them) has a scale whose
    reciprocal overflows: numpy printed "overflow encountered in divide" and "invalid value encountered in
    multiply" (0 * inf), each with a line of quant/blockwise.py, into a build's output."""
    w = np.zeros((4, 64), np.float32)
    w[0, :32] = 1e-39  # a whole block of subnormals
    w[1, 3] = -2e-39  # one subnormal among zeros
    w[2, 32:] = np.linspace(-5e-40, 7e-40, 32, dtype=np.float32)
    scheme = QuantScheme(bits, 32, symmetric)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = quantize_blockwise(w, scheme)
    assert_identical(ours, ort_quantize_blockwise(w, scheme))


@pytest.mark.parametrize("scale_dtype", [np.float32, np.float16])
@pytest.mark.parametrize(
    "scheme",
    [QuantScheme(4, 32, True), QuantScheme(4, 32, False), QuantScheme(8, 32, False), QuantScheme(8, method="rowwise")]
    + [QuantScheme(8, symmetric=False, method="rowwise")],
    ids=str,
)
def test_nan_and_inf_weights_give_non_finite_scales_without_numpy_warnings(scheme, scale_dtype):
    """What the build's NaN/Inf check reads: the scale of a block holding NaN or Inf is not finite, and the
    others are untouched. Asymmetric and row-wise schemes printed numpy's "invalid value encountered in
    cast/multiply" with a source line of quant/ before the build's own warning."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    clean = quant.quantize(w, scheme, scale_dtype)
    w[1, 3], w[2, 40] = np.nan, -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quant.quantize(w, scheme, scale_dtype)
    finite = np.isfinite(q.scales.astype(np.float32)).reshape(4, -1)
    assert not finite[1].all() and not finite[2].all() and finite[[0, 3]].all()
    assert np.array_equal(q.scales[[0, 3]], clean.scales[[0, 3]])


def _tie_rows(bits, symmetric):
    """Blocks (one per row, 32 values) whose values land exactly on x.5 before rounding.

    Scales come out as exactly 1, so w * (1/scale) + zp is exact and each x.5 is
    a true tie, plus neighbours one float32 ulp either side.
    """
    rng = np.random.default_rng(bits * 2 + symmetric)
    half = 1 << (bits - 1)
    rows = []
    for _ in range(24):
        if symmetric:
            lo, hi = -half, half - 1  # m = -half: scale = 1
        else:
            lo = -int(rng.integers(0, (1 << bits) - 1))
            hi = lo + (1 << bits) - 1  # max - min = qmax: scale = 1, zp = -lo
        ties = np.arange(lo, hi) + 0.5
        picks = rng.choice(ties, 30).astype(np.float32)
        nudge = rng.choice([-1, 0, 0, 1], 30)
        picks = np.where(
            nudge < 0, np.nextafter(picks, -np.inf), np.where(nudge > 0, np.nextafter(picks, np.inf), picks)
        ).astype(np.float32)
        rows.append(np.concatenate([[lo, hi], picks]).astype(np.float32))
    if not symmetric:
        # Zero point exactly on a tie: min = -2.5, max = qmax - 2.5 -> zp = roundf(2.5) = 3.
        rows.append(np.concatenate([[-2.5, (1 << bits) - 3.5], np.linspace(-2.5, 12.5, 30)]).astype(np.float32))
        # Zero point 0 (no negative values): ties at 0.5 and just below it.
        below_half = np.nextafter(np.float32(0.5), np.float32(0))
        r = np.concatenate(
            [[0.0, (1 << bits) - 1.0], np.full(10, 0.5), np.full(10, below_half), np.arange(10) + 0.5]
        ).astype(np.float32)
        rows.append(r)
    return np.stack(rows)


@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_rounding_ties_half_away_from_zero(bits, symmetric):
    scheme = QuantScheme(bits, 32, symmetric)
    w = _tie_rows(bits, symmetric)
    ref = ort_quantize_blockwise(w, scheme)
    assert_identical(quantize_blockwise(w, scheme), ref)
    assert_identical(
        quantize_blockwise(w.astype(np.float16), scheme, np.float16),
        ort_quantize_blockwise(w.astype(np.float16), scheme, np.float16),
    )
    # ORT rounds ties away from zero (C roundf), not to even as numpy/torch do.
    assert np.all(ref.scales[:24] == 1)
    deq = dequantize_blockwise(ref, scheme)
    exact_ties = (w[:24, 2:] % 1) == 0.5
    assert np.array_equal(deq[:24, 2:][exact_ties], np.floor(w[:24, 2:][exact_ties]) + 1)
    if not symmetric:
        zp = unpack_zero_points(ref.zero_points, bits, 1)
        assert zp[24, 0] == 3 and zp[25, 0] == 0
        assert np.all(deq[25, 2:22] == np.repeat([1.0, 0.0], 10))  # 0.5 -> 1, 0.49999997 -> 0


def test_reciprocal_multiply_then_add():
    """ORT computes roundf(float32(w * float32(1 / scale)) + zp): not w / scale, and no fused multiply-add.

    The second value of each block is picked where those formulas round to different integers.
    """
    f32 = np.float32
    rng = np.random.default_rng(0)
    rows, kinds = [], []
    while len(rows) < 40:
        m = f32(-rng.uniform(0.5, 2.0))  # the block's extreme: scale = m / -8 > 0
        s = f32(m / f32(-8))
        r = f32(f32(1) / s)
        tie = f32((rng.integers(-7, 7) + 0.5) * s)
        for c in (tie.view(np.int32) + np.arange(-64, 65, dtype=np.int32)).view(np.float32):
            ours = np.floor(np.float64(f32(c * r) + f32(8)) + 0.5)
            div = np.floor(np.float64(f32(c / s) + f32(8)) + 0.5)
            fma = np.floor(np.float64(f32(np.float64(c) * np.float64(r) + 8.0)) + 0.5)
            kind = "div" if ours != div else "fma" if ours != fma else None
            if kind and abs(c) < abs(m) and ours < 16 and kinds.count(kind) < 20:
                rows.append(np.concatenate([[m, c], np.zeros(14)]).astype(np.float32))
                kinds.append(kind)
                break
    w = np.stack(rows)
    scheme = QuantScheme(4, 16, True)
    ref = ort_quantize_blockwise(w, scheme)
    assert_identical(quantize_blockwise(w, scheme), ref)
    r = f32(1) / ref.scales[:, 0]
    mul_add = np.floor((w[:, 1] * r + f32(8)).astype(np.float64) + 0.5)
    div_add = np.floor((w[:, 1] / ref.scales[:, 0] + f32(8)).astype(np.float64) + 0.5)
    q_ort = ref.packed[:, 0, 0] >> 4
    assert np.array_equal(q_ort, mul_add)
    fma_add = np.floor((w[:, 1].astype(np.float64) * r + 8).astype(f32).astype(np.float64) + 0.5)
    kinds = np.array(kinds)
    assert np.all((q_ort != div_add)[kinds == "div"]) and np.all((q_ort != fma_add)[kinds == "fma"])


@pytest.mark.parametrize("zp", [0, 1, 2, 3, 7, 8, 15, 100, 127, 128, 254, 255])
def test_offset_rounding_identity(zp):
    """The identity quant.blockwise relies on: trunc(y + (zp + 0.5)) == roundf(y + zp), both clamped.

    Checked on every float32 within 256 ulps of each tie and power of two in range
    (where the two float32 adds could disagree), and on random values.
    """
    qmax = 255
    anchors = np.concatenate([np.arange(-1, qmax + 2) + 0.5, 2.0 ** np.arange(-3, 9), [0.0]]) - zp
    ulps = np.arange(-256, 257, dtype=np.int32)
    y = np.concatenate(
        [
            (anchors[:, None].astype(np.float32).view(np.int32) + ulps).ravel().view(np.float32),
            np.random.default_rng(zp).uniform(-zp - 2, qmax - zp + 2, 200_000).astype(np.float32),
        ]
    )
    y = y[np.isfinite(y)]
    # ORT: roundf(float32(y + zp)), roundf exact in float64.
    x = (y + np.float32(zp)).astype(np.float64)
    expect = np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), 0, qmax)
    offset = quant.blockwise._ALMOST_HALF if zp == 0 else np.float32(zp + 0.5)
    got = np.clip(np.trunc(y + offset), 0, qmax)
    assert got.dtype == np.float32 and np.array_equal(got, expect)


# ---- MatMulNBits -------------------------------------------------------------------


def matmul_nbits(q: QuantizedWeight, scheme: QuantScheme, a: np.ndarray) -> np.ndarray:
    """Y = A @ B with a one-node com.microsoft MatMulNBits model on the CPU provider."""
    n, nb, blob = q.packed.shape
    elem = TensorProto.FLOAT16 if q.scales.dtype == np.float16 else TensorProto.FLOAT
    inits = [
        helper.make_tensor("B", TensorProto.UINT8, q.packed.shape, q.packed.tobytes(), raw=True),
        helper.make_tensor("scales", elem, q.scales.shape, q.scales.tobytes(), raw=True),
    ]
    inputs = ["A", "B", "scales"]
    if q.zero_points is not None:
        inits.append(
            helper.make_tensor("zero_points", TensorProto.UINT8, q.zero_points.shape, q.zero_points.tobytes(), raw=True)
        )
        inputs.append("zero_points")
    node = helper.make_node(
        "MatMulNBits",
        inputs,
        ["Y"],
        domain="com.microsoft",
        K=q.k,
        N=n,
        bits=scheme.bits,
        block_size=scheme.block_size,
        accuracy_level=0,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", elem, [None, q.k])],
        [helper.make_tensor_value_info("Y", elem, [None, n])],
        inits,
    )
    model = helper.make_model(
        graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": a})[0]


@pytest.mark.parametrize("block_size", [16, 32, 128, 256])
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_dequantize_equals_matmul_nbits(bits, symmetric, block_size):
    rng = np.random.default_rng(bits * block_size + symmetric)
    scheme = QuantScheme(bits, block_size, symmetric)
    k = block_size * 2 + block_size // 2 + 3  # partial last block
    w = random_weight(rng, 40, k, symmetric)
    w[0] = 0.0
    q = quantize_blockwise(w, scheme)
    deq = dequantize_blockwise(q, scheme)
    assert deq.shape == (40, k) and deq.dtype == np.float32
    y = matmul_nbits(q, scheme, np.eye(k, dtype=np.float32))  # I @ B = B = deq^T
    np.testing.assert_allclose(y, deq.T, rtol=1e-6, atol=1e-7)
    # Sanity: the error is at most one step (half a step, plus up to half for the clamp
    # at the top: symmetric has 2^(bits-1) - 1 steps above zero, asymmetric a rounded zp).
    step = np.repeat(np.abs(q.scales.astype(np.float32)), block_size, axis=1)[:, :k]
    assert np.all(np.abs(deq - w) <= step * 1.0001)


@pytest.mark.parametrize("bits,symmetric", [(4, True), (8, False)])
def test_dequantize_equals_matmul_nbits_float16(bits, symmetric):
    rng = np.random.default_rng(11)
    scheme = QuantScheme(bits, 32, symmetric)
    k = 32 * 3 + 8
    q = quantize_blockwise(random_weight(rng, 24, k, symmetric, np.float16), scheme, np.float16)
    deq = dequantize_blockwise(q, scheme)
    y = matmul_nbits(q, scheme, np.eye(k, dtype=np.float16))
    # float16 output: MLAS may round (q - zp) * scale to float16 its own way.
    np.testing.assert_allclose(y.astype(np.float32), deq.T, rtol=1e-3, atol=1e-7)


# ---- packing helpers and input checks ---------------------------------------------


def test_zero_point_packing_round_trip():
    zp = np.random.default_rng(0).integers(0, 16, (5, 7)).astype(np.uint8)
    packed = pack_zero_points(zp, 4)
    assert packed.shape == (5, 4)
    assert np.all(packed[:, 0] == (zp[:, 0] | (zp[:, 1] << 4)))  # low nibble first
    assert np.all(packed[:, 3] >> 4 == 8)  # odd count: ORT's filler nibble
    assert np.array_equal(unpack_zero_points(packed, 4, 7), zp)
    zp8 = np.random.default_rng(1).integers(0, 256, (5, 7)).astype(np.uint8)
    assert np.array_equal(unpack_zero_points(pack_zero_points(zp8, 8), 8, 7), zp8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bits=3, block_size=32), r"bits=3 .*allowed: \(4, 8\)"),
        (dict(bits=2, block_size=32), r"bits=2 .*allowed: \(4, 8\)"),
        (dict(bits=16, block_size=32), r"bits=16 .*allowed"),
        (dict(bits=True, block_size=32), r"bits=True .*allowed"),
        (dict(bits=4.0, block_size=32), r"bits=4.0 .*allowed"),
        (dict(bits=np.int64(8), block_size=np.int32(64), symmetric=np.bool_(True)), None),  # numpy values are fine
        (dict(bits=4, block_size=8), r"block_size=8 .*allowed: \(16, 32, 64, 128, 256\)"),
        (dict(bits=4, block_size=48), r"block_size=48 .*allowed"),
        (dict(bits=8, block_size=512), r"block_size=512 .*allowed"),
        (dict(bits=4, block_size=0), r"block_size=0 .*allowed"),
        (dict(bits=4, block_size=32.0), r"block_size=32.0 .*allowed"),
        (dict(bits=4, block_size=32, symmetric="yes"), r"symmetric='yes' must be True or False"),
    ],
)
def test_invalid_scheme(kwargs, match):
    if match is None:
        scheme = QuantScheme(**kwargs)
        # As plain Python values: numpy ones leaked into the ONNX attributes.
        assert scheme.blob_size == 64 and [type(v) for v in (scheme.bits, scheme.block_size, scheme.symmetric)] == [
            int,
            int,
            bool,
        ]
        return
    with pytest.raises(ValueError, match=match):
        QuantScheme(**kwargs)


def test_invalid_inputs():
    scheme = QuantScheme(4, 32)
    w = np.zeros((4, 64), np.float32)
    with pytest.raises(ValueError, match="scale_dtype=float64 is not supported; allowed: float32, float16"):
        quantize_blockwise(w, scheme, np.float64)
    with pytest.raises(TypeError, match="float64"):
        quantize_blockwise(w.astype(np.float64), scheme)
    with pytest.raises(TypeError, match="int32"):
        quantize_blockwise(torch.zeros(4, 64, dtype=torch.int32), scheme)
    with pytest.raises(ValueError, match=r"2-D \[N, K\]"):
        quantize_blockwise(np.zeros((2, 4, 64), np.float32), scheme)
    with pytest.raises(ValueError, match="K=0"):
        quantize_blockwise(np.zeros((4, 0), np.float32), scheme)
    with pytest.raises(TypeError, match="QuantScheme"):
        quantize_blockwise(w, (4, 32))
    q = quantize_blockwise(w, scheme)
    with pytest.raises(ValueError, match="does not match"):
        dequantize_blockwise(q, QuantScheme(8, 32))
    # K of three blocks against packed data of two: a [4, 64] weight came back for a [4, 96] one.
    with pytest.raises(ValueError, match=r"packed shape \(4, 2, 16\) does not match .* with K=96"):
        dequantize_blockwise(dataclasses.replace(q, k=96), scheme)


def test_shapes_and_dtypes():
    for scheme, zp_cols in ((QuantScheme(4, 32, False), 2), (QuantScheme(8, 32, False), 3)):
        q = quantize_blockwise(np.ones((6, 70), np.float32), scheme, np.float16)
        assert q.packed.shape == (6, 3, scheme.blob_size) and q.packed.dtype == np.uint8
        assert q.scales.shape == (6, 3) and q.scales.dtype == np.float16
        assert q.zero_points.shape == (6, zp_cols) and q.zero_points.dtype == np.uint8
        assert q.k == 70 and q.n == 6
    q = quantize_blockwise(torch.ones(0, 70), QuantScheme(4, 32))
    assert q.packed.shape == (0, 3, 16) and q.scales.shape == (0, 3) and q.zero_points is None


# ---- one scheme type, the method registry, threads ---------------------------------


def test_scheme_says_float_int4_int8_and_rowwise():
    import quant

    assert not QuantScheme.FLOAT.quantized and QuantScheme.FLOAT.kind == "float" and str(QuantScheme.FLOAT) == "float"
    assert QuantScheme.from_kind("float", 64, False) == QuantScheme.FLOAT
    # One float scheme, whatever else it is given: equal schemes are packed together.
    assert QuantScheme(8, 64, False, method="float") == QuantScheme.FLOAT
    int4 = QuantScheme.from_kind("int4", 32, True)
    assert int4 == QuantScheme(4, 32, True) and int4.kind == "int4" and str(int4) == "int4/b32/sym"
    assert QuantScheme.from_kind("int8", 64, False) == QuantScheme(8, 64, False)  # --no-symmetric
    assert str(QuantScheme(8, 128, False)) == "int8/b128/asym"
    row = QuantScheme(8, symmetric=False, method="rowwise")
    assert (
        row.block_size == 0 and row.kind == "int8" and str(row) == "int8/row/asym" and row != QuantScheme(8, 32, False)
    )
    with pytest.raises(ValueError, match=r"bits=4 .*allowed: \(8,\)"):
        QuantScheme(4, method="rowwise")
    with pytest.raises(ValueError, match="method='gptq' is not supported"):
        QuantScheme(4, 32, method="gptq")
    with pytest.raises(ValueError, match="FLOAT is not a quantization"):
        quant.quantize(np.ones((2, 32), np.float32), QuantScheme.FLOAT)
    with pytest.raises(TypeError, match="scheme must be a QuantScheme, got tuple"):
        quant.quantize(np.ones((2, 32), np.float32), (4, 32))
    assert quant.BLOCK_SIZES == BLOCK_SIZES and set(quant.methods()) >= {"blockwise", "rowwise"}


def test_quantize_dispatches_on_the_method():
    import quant

    rng = np.random.default_rng(5)
    w = random_weight(rng, 16, 96, True)
    scheme = QuantScheme(4, 32, True)
    assert_identical(quant.quantize(w, scheme), ort_quantize_blockwise(w, scheme))
    assert np.array_equal(
        quant.dequantize(quant.quantize(w, scheme), scheme), dequantize_blockwise(quantize_blockwise(w, scheme), scheme)
    )
    for symmetric in (True, False):
        row = QuantScheme(8, symmetric=symmetric, method="rowwise")
        q = quant.quantize(w.astype(ml_dtypes.bfloat16), row, np.float16)
        assert q.packed.shape == (16, 96) and q.scales.shape == (16,) and q.scales.dtype == np.float16
        assert (q.zero_points is None) == symmetric
        deq = quant.dequantize(q, row)
        w_bf16 = w.astype(ml_dtypes.bfloat16).astype(np.float32)
        step = np.abs(q.scales.astype(np.float32))[:, None]
        assert deq.shape == w.shape and np.all(np.abs(deq - w_bf16) <= step * 1.0001)


def test_rowwise_rounds_as_c_roundf():
    """0.49999997 became 1 (|x| + 0.5 rounds up in float32) where ORT's roundf gives 0, as
    quant.blockwise already did; ties still go away from zero."""
    from quant.rowwise import _roundf

    x = np.array([np.nextafter(np.float32(0.5), np.float32(0)), 0.5, 1.5, 2.5, -0.5, -2.5, 254.5], np.float32)
    assert _roundf(x).tolist() == [0, 1, 2, 3, -1, -3, 255]
    # Through the quantizer: an all-positive row (zero point 0, scale 1) holding 0.49999997.
    row = np.array([[255.0, float(x[0]), 1.0, 3.0]], np.float32)
    q = quant.quantize(row, QuantScheme(8, symmetric=False, method="rowwise"), np.float32)
    assert q.scales.tolist() == [1.0] and q.zero_points.tolist() == [0] and q.packed.tolist() == [[255, 0, 1, 3]]


@pytest.mark.parametrize("scale_dtype", [np.float32, np.float16])
def test_rowwise_values_and_zero_points_as_the_qmoe_kernel_reads_them(scale_dtype):
    """Rows chosen so the scales are exact: asymmetric ranges widened to take in 0 (an all-positive
    row gets zero point 0, an all-negative one 255), zero points rounded as roundf, symmetric
    scales of -extreme / 128 with zero point 128, and every value back within half a step."""
    rows = np.array([[-1.5, 0.0, 253.5], [1.0, 2.0, 255.0], [-255.0, -3.0, -1.0], [-1.0, 0.5, 0.25]], np.float32)
    asym = quant.quantize(rows, QuantScheme(8, symmetric=False, method="rowwise"), scale_dtype)
    assert asym.scales.dtype == scale_dtype and asym.scales[:3].tolist() == [1.0, 1.0, 1.0]
    assert asym.zero_points.tolist() == [2, 0, 255, 170]
    assert asym.packed[:3].tolist() == [[1, 2, 255], [1, 2, 255], [0, 252, 254]]
    sym = quant.quantize(rows[3:], QuantScheme(8, symmetric=True, method="rowwise"), scale_dtype)
    assert asym.k == sym.k == 3
    assert sym.zero_points is None and sym.scales.tolist() == [1 / 128] and sym.packed.tolist() == [[0, 192, 160]]
    for scheme, q in (
        (QuantScheme(8, symmetric=False, method="rowwise"), asym),
        (QuantScheme(8, method="rowwise"), sym),
    ):
        w = rows if q is asym else rows[3:]
        step = np.abs(q.scales.astype(np.float32))[:, None]
        assert np.all(np.abs(quant.dequantize(q, scheme) - w) <= step * 0.5001)


def test_a_new_method_is_one_registration():
    import quant
    from quant.scheme import _METHODS

    def quantize_sign(weight, scheme, scale_dtype):
        w = np.asarray(weight, np.float32)
        return QuantizedWeight((w > 0).astype(np.uint8), np.abs(w).max(1).astype(scale_dtype), None, w.shape[1])

    def dequantize_sign(q, scheme):
        return (q.packed * 2.0 - 1.0).astype(np.float32) * q.scales.astype(np.float32)[:, None]

    quant.register(quant.Method("sign-test", quantize_sign, dequantize_sign, bits=(8,), block_sizes=None))
    try:
        scheme = QuantScheme(8, method="sign-test")
        w = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
        assert np.array_equal(quant.dequantize(quant.quantize(w, scheme), scheme), [[2, -2], [3, 3]])
        with pytest.raises(ValueError, match="already registered"):
            quant.register(quant.Method("sign-test", quantize_sign, dequantize_sign))
        # "float" names QuantScheme.FLOAT, which a method of that name could never be chosen over.
        with pytest.raises(ValueError, match="'float' is already registered"):
            quant.register(quant.Method("float", quantize_sign, dequantize_sign))
    finally:
        del _METHODS["sign-test"]
        _METHODS.pop("float", None)


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_do_not_change_the_bytes(monkeypatch, threads):
    import quant

    monkeypatch.setattr(quant.blockwise, "_CHUNK_VALUES", 2048)
    rng = np.random.default_rng(9)
    w = random_weight(rng, 301, 200, False).astype(ml_dtypes.bfloat16)
    scheme = QuantScheme(4, 32, False)
    quant.set_num_threads(threads)
    try:
        assert quant.get_num_threads() == threads
        assert_identical(quantize_blockwise(w, scheme), ort_quantize_blockwise(w, scheme))
    finally:
        quant.set_num_threads(None)
    with pytest.raises(ValueError, match="positive integer"):
        quant.set_num_threads(0)


def test_calls_from_several_threads_at_once(monkeypatch):
    """The helper threads and workspaces kept between calls are shared safely: builds
    running in threads of one process (batch) quantize side by side."""
    from concurrent.futures import ThreadPoolExecutor

    import quant

    monkeypatch.setattr(quant.blockwise, "_CHUNK_VALUES", 2048)
    rng = np.random.default_rng(10)
    cases = [
        (
            random_weight(rng, 97 + i, 64 * (1 + i % 3), i % 2 == 0).astype(ml_dtypes.bfloat16),
            QuantScheme(4, 32, i % 2 == 0),
        )
        for i in range(6)
    ]
    want = [ort_quantize_blockwise(w, s) for w, s in cases]
    quant.set_num_threads(3)
    try:
        with ThreadPoolExecutor(4) as callers:
            for _ in range(3):
                got = list(callers.map(lambda case: quantize_blockwise(*case), cases))
                for g, r in zip(got, want):
                    assert_identical(g, r)
    finally:
        quant.set_num_threads(None)


_INTERRUPTED_START = """
import sys, threading, numpy as np
import quant
start = threading.Thread.start
def interrupted_start(self):
    start(self)
    if self.name.startswith("quant"):
        raise KeyboardInterrupt  # where Ctrl-C's handler raises it: while Thread.start waits
threading.Thread.start = interrupted_start
quant.set_num_threads(2)
try:
    quant.quantize_blockwise(np.ones((64, 1 << 15), np.float32), quant.QuantScheme(4, 32, True))
except KeyboardInterrupt:
    print("interrupted", flush=True)
if sys.argv[1:] != ["again"]:
    raise SystemExit(0)  # the hang was at exit: a second call started a thread that woke the lost one
threading.Thread.start = start
q = quant.quantize_blockwise(np.ones((64, 1 << 15), np.float32), quant.QuantScheme(4, 32, True))
print("again", q.packed.shape, flush=True)
"""


def test_ctrl_c_while_a_helper_thread_starts_lets_the_process_exit():
    """A KeyboardInterrupt after the pool started a helper thread but before it recorded it left
    that thread waiting for work: Python's exit waited for it forever (a build hung after Ctrl-C).
    The pool is shut down then, and the next call makes a new one."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for args, printed in (([], ["interrupted"]), (["again"], ["interrupted", "again (64, 1024, 16)"])):
        try:
            run = subprocess.run(
                [sys.executable, "-c", _INTERRUPTED_START, *args], capture_output=True, text=True, cwd=root, timeout=30
            )
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"the process did not exit after the interrupt; it printed {e.stdout!r}")
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == printed, run.stdout


@pytest.mark.parametrize("shape", [(1, 1), (127, 3), (128, 256), (300, 257)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_float_weights_are_transposed_strip_by_strip_exactly(shape, dtype):
    """A float MatMul's weight is W^T, copied in row strips (the whole-matrix copy was 3-6x slower)."""
    from builder.kit.linear import transposed

    w = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    out = transposed(w)
    assert out.flags.c_contiguous and out.dtype == dtype
    np.testing.assert_array_equal(out, w.T)


def test_strided_columns_of_whole_blocks():
    """A weight whose columns are not adjacent in memory (every other column, or a transposed
    view) and whose K is whole blocks needs no padding, yet cannot be read as words in place:
    it goes through the padding buffer as a padded one does."""
    rng = np.random.default_rng(9)
    base = random_weight(rng, 64, 256, True)
    for scheme in (QuantScheme(4, 32, True), QuantScheme(8, 64, False)):
        for view in (base[:, ::2], base.T[:, :64], base.astype(ml_dtypes.bfloat16)[:, 1::2]):
            assert view.shape[1] % scheme.block_size == 0 and not view.flags.c_contiguous
            assert_identical(quantize_blockwise(view, scheme), ort_quantize_blockwise(view.astype(np.float32), scheme))
