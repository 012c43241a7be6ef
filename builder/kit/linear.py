"""Emitting projections: float MatMul or MatMulNBits, packed or not.

Packing several projections (q/k/v, gate/up) concatenates their output rows.
MatMulNBits quantizes each row independently, so the packed bytes are exactly
the concatenation of each projection's own quantization: we quantize and
stream one projection (and one row chunk) at a time.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from onnx import TensorProto

import quant
from builder.kit.checkpoint import Checkpoint, to_float
from builder.kit.errors import BuilderError
from builder.kit.graph import MS_DOMAIN, NP_TO_ONNX, Graph
from builder.kit.targets import WEBGPU_LEVEL4_WRONG_BLOCK
from quant import QuantScheme

# Rows quantized at once: bounds temporaries to ~16M float32 values (64 MB).
CHUNK_VALUES = 16 * 1024 * 1024
# Rows of W transposed at a time: numpy's whole-matrix W.T copy walks W column by column, 5.6x
# slower in fp16 and 3.1x in fp32 than 128-row strips on a [9728, 2560] MLP weight (this machine).
TRANSPOSE_ROWS = 128


def transposed(w: np.ndarray) -> np.ndarray:
    """W^T as a C-contiguous array (a float MatMul's [K, N] weight from HF's [N, K])."""
    out = np.empty((w.shape[1], w.shape[0]), dtype=w.dtype)
    for start in range(0, w.shape[0], TRANSPOSE_ROWS):
        out[:, start : start + TRANSPOSE_ROWS] = w[start : start + TRANSPOSE_ROWS].T
    return out


class RowSlice(NamedTuple):
    """Rows [start, stop) of a checkpoint tensor whose whole shape config.json implies is
    `tensor_shape`; usable wherever a projection takes a tensor name.

    Lets a packed projection take its rows from anywhere: Qwen3-Next's fused, interleaved
    in_proj_qkvz is read group by group into the same [q | k | v | z] order as Qwen3.5's
    split tensors, so both layouts stream the same bytes.
    """

    tensor: str
    start: int
    stop: int
    tensor_shape: tuple[int, ...]


Source = str | RowSlice


def check_shape(checkpoint, source: Source, shape: tuple[int, ...]) -> None:
    """The checkpoint's one-line error when `source` is not `shape` (no data read)."""
    if not isinstance(source, RowSlice):
        checkpoint.rows(source, 0, 0, expect_shape=shape)
        return
    checkpoint.rows(source.tensor, 0, 0, expect_shape=source.tensor_shape)
    whole = source.tensor_shape
    if not 0 <= source.start <= source.stop <= whole[0] or (source.stop - source.start, *whole[1:]) != tuple(shape):
        raise BuilderError(
            f"rows {source.start}:{source.stop} of tensor {source.tensor!r} {list(whole)} "
            f"are not the [{', '.join(map(str, shape))}] the projection needs"
        )


def read_whole(checkpoint, source: Source, shape: tuple[int, ...]):
    """A whole tensor, or a RowSlice's rows, after the shape check."""
    if not isinstance(source, RowSlice):
        return checkpoint.tensor(source, expect_shape=shape)
    check_shape(checkpoint, source, shape)
    return checkpoint.rows(source.tensor, source.start, source.stop)


def source_name(source: Source) -> str:
    return source.tensor if isinstance(source, RowSlice) else source


FLOAT16_MAX = float(np.finfo(np.float16).max)


def largest_dequantized(q: quant.QuantizedWeight, fmt: QuantScheme) -> np.ndarray:
    """float32 [N, blocks] (rowwise: [N]): the largest |value| of each block, (q - zp) * scale at the
    q farthest from the zero point (0 or qmax; symmetric: 0, mid steps away)."""
    scales = np.abs(q.scales.astype(np.float32))
    if q.zero_points is None:
        return scales * np.float32(fmt.mid)
    zp = q.zero_points
    if fmt.method == "blockwise":
        zp = quant.unpack_zero_points(zp, fmt.bits, scales.shape[1])
    zp = zp.astype(np.float32)
    return scales * np.maximum(zp, np.float32(fmt.qmax) - zp)


class QuantizedTensor:
    """Initializer names of one streamed MatMulNBits weight."""

    def __init__(self, b: str, scales: str, zero_points: str | None, n: int, k: int, fmt: QuantScheme):
        self.b, self.scales, self.zero_points = b, scales, zero_points
        self.n, self.k, self.format = n, k, fmt


class Projections:
    """Writes the weights and nodes of linear projections into a graph."""

    def __init__(self, graph: Graph, checkpoint: Checkpoint, io_dtype: np.dtype, accuracy_level: int):
        self.graph = graph
        self.checkpoint = checkpoint
        self.io_dtype = np.dtype(io_dtype)
        self.accuracy_level = accuracy_level
        self.nonfinite: list[str] = []  # checkpoint tensors holding NaN or Inf, in the order met
        # The level of MatMulNBits whose K is no multiple of their block (the plan's split_block_level,
        # which the family sets after making this; None: accuracy_level), and the names of those in blocks
        # of WEBGPU_LEVEL4_WRONG_BLOCK, whatever their level.
        self.split_block_level: int | None = None
        self.split_block_nodes: list[str] = []

    def check_finite(self, tensor: str, values: np.ndarray) -> None:
        """Note `tensor` if `values` (floats derived from it, as written) hold NaN or Inf.

        Quantized weights are checked through their block scales: a block's max and
        min propagate NaN and Inf, so a scale is non-finite exactly when its block is,
        and the check reads 1/block_size of the values instead of all of them.
        """
        if tensor not in self.nonfinite and not np.isfinite(values).all():
            self.nonfinite.append(tensor)

    def check_quantized(self, tensor: str, q: quant.QuantizedWeight, fmt: QuantScheme) -> None:
        """check_finite for a quantized weight: its scales, and with fp16 activations the largest value
        each block dequantizes to. A weight past 65504 keeps a finite fp16 scale up to 8x that (int4) or 128x
        (int8), but is no fp16 value: MatMulNBits dequantizes into the activations' dtype on the GPU (webgpu's
        dequantize_packed8xU4), where it is inf, and its products overflow fp16 outputs anywhere. An fp16
        float build of the same weight is named by the same check."""
        self.check_finite(tensor, q.scales)
        if self.io_dtype != np.float16 or tensor in self.nonfinite:
            return
        # One reduction bounds every block ((q - zp) is at most qmax steps): the exact look is for the
        # rare chunk past it, not on every chunk of every fp16 build.
        if float(np.abs(q.scales).max(initial=0)) * fmt.qmax > FLOAT16_MAX:
            with np.errstate(over="ignore"):
                self.check_finite(tensor, largest_dequantized(q, fmt).astype(np.float16))

    # ---- weights ------------------------------------------------------------

    def quantized_weight(
        self, name: str, tensors: list[Source], fmt: QuantScheme, shapes: list[tuple[int, int]]
    ) -> QuantizedTensor:
        """Quantize [N_i, K] tensors, stacked along N, straight into the data file."""
        k = shapes[0][1]
        n = sum(s[0] for s in shapes)
        n_blocks = -(-k // fmt.block_size)
        blob = fmt.block_size * fmt.bits // 8
        scales, zero_points = [], []

        def packed_chunks():
            phases = self.graph.phases
            for tensor, start, stop in self.row_chunks(tensors, shapes, k):
                rows = self.checkpoint.rows(tensor, start, stop)
                with phases.timed("quantize"):
                    q = quant.quantize(rows, fmt, scale_dtype=self.io_dtype)
                    self.check_quantized(tensor, q, fmt)
                del rows
                scales.append(q.scales)
                if q.zero_points is not None:
                    zero_points.append(q.zero_points)
                yield q.packed

        for tensor, shape in zip(tensors, shapes):
            check_shape(self.checkpoint, tensor, shape)  # before writing
        b = self.graph.streamed_initializer(f"{name}.qweight", TensorProto.UINT8, [n, n_blocks, blob], packed_chunks())
        s = self.graph.initializer(f"{name}.scales", np.concatenate(scales).reshape(n, n_blocks))
        zp = None
        if zero_points:
            zp_all = np.concatenate(zero_points)
            zp = self.graph.initializer(f"{name}.qzeros", zp_all.reshape(n, -1))
        return QuantizedTensor(b, s, zp, n, k, fmt)

    def float32(self, tensor: Source, shape: tuple[int, ...]) -> np.ndarray:
        """One whole tensor (or RowSlice) as float32 (bf16/fp16 widen exactly), checked for NaN/Inf."""
        values = to_float(read_whole(self.checkpoint, tensor, shape))
        self.check_finite(source_name(tensor), values)
        return values

    def float_rows(self, tensors: list[Source], shapes: list[tuple[int, ...]]) -> np.ndarray:
        """Tensors (or RowSlices) stacked along their first axis, in the activation dtype."""
        parts = []
        for tensor, shape in zip(tensors, shapes):
            stored = read_whole(self.checkpoint, tensor, shape)
            with self.graph.phases.timed("convert"):
                parts.append(to_float(stored, self.io_dtype))
                self.check_finite(source_name(tensor), parts[-1])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def float_initializer(self, name: str, tensor: str, shape: tuple[int, ...]) -> str:
        """A float tensor as it is stored (no transpose), streamed in row chunks."""
        self.checkpoint.rows(tensor, 0, 0, expect_shape=shape)

        def chunks():
            for tensor_, start, stop in self.row_chunks([tensor], [shape], int(np.prod(shape[1:]))):
                rows = self.checkpoint.rows(tensor_, start, stop)
                with self.graph.phases.timed("convert"):
                    values = to_float(rows, self.io_dtype)
                    self.check_finite(tensor, values)
                del rows
                yield values

        return self.graph.streamed_initializer(name, self.io_onnx_type, shape, chunks())

    @staticmethod
    def row_chunks(tensors: list[Source], shapes: list[tuple[int, ...]], row_values: int):
        """(tensor, start, stop) of the row chunks the streaming writers read, in order
        (also what builder.kit.readahead forecasts); a RowSlice's rows are its tensor's."""
        rows_per_chunk = max(1, CHUNK_VALUES // max(1, row_values))
        for tensor, shape in zip(tensors, shapes):
            offset = tensor.start if isinstance(tensor, RowSlice) else 0
            for start in range(0, shape[0], rows_per_chunk):
                yield source_name(tensor), offset + start, offset + min(start + rows_per_chunk, shape[0])

    # ---- nodes --------------------------------------------------------------

    def matmul(
        self,
        x: str,
        name: str,
        tensors: list[Source],
        shapes: list[tuple[int, int]],
        fmt: QuantScheme,
        biases: list[str] | None = None,
    ) -> str:
        """x @ W^T for the projections `tensors` packed along N; returns the output name."""
        if fmt.quantized:
            q = self.quantized_weight(name.lstrip("/").replace("/", "."), tensors, fmt, shapes)
            out = self.matmul_nbits(x, name + "/MatMulNBits", q)
        else:
            weight = self.float_rows(tensors, shapes)
            w_name = self.graph.initializer(name.lstrip("/").replace("/", ".") + ".weight", transposed(weight))
            del weight
            out = self.graph.op("MatMul", [x, w_name], name + "/MatMul")
        if biases:
            bias = self.float_rows(biases, [(s[0],) for s in shapes])
            b_name = self.graph.initializer(name.lstrip("/").replace("/", ".") + ".bias", bias)
            out = self.graph.op("Add", [out, b_name], name + "/BiasAdd")
        return out

    def matmul_nbits(self, x: str, node_name: str, q: QuantizedTensor) -> str:
        inputs = [x, q.b, q.scales] + ([q.zero_points] if q.zero_points else [])
        level = self.accuracy_level
        if q.k % q.format.block_size:
            if self.split_block_level is not None:
                level = self.split_block_level
            if q.format.block_size == WEBGPU_LEVEL4_WRONG_BLOCK:
                self.split_block_nodes.append(node_name)
        return self.graph.op(
            "MatMulNBits",
            inputs,
            node_name,
            domain=MS_DOMAIN,
            K=q.k,
            N=q.n,
            bits=q.format.bits,
            block_size=q.format.block_size,
            accuracy_level=level,
        )

    @property
    def io_onnx_type(self) -> int:
        return NP_TO_ONNX[self.io_dtype]
