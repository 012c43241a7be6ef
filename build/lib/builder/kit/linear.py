"""Emitting projections: float MatMul or MatMulNBits, packed or not.

Packing several projections (q/k/v, gate/up) concatenates their output rows.
MatMulNBits quantizes each row independently, so the packed bytes are exactly
the concatenation of each projection's own quantization: we quantize and
stream one projection (and one row chunk) at a time.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

import quant
from builder.kit.checkpoint import Checkpoint, to_float
from builder.kit.graph import MS_DOMAIN, NP_TO_ONNX, Graph
from quant import QuantScheme

# Rows quantized at once: bounds temporaries to ~16M float32 values (64 MB).
CHUNK_VALUES = 16 * 1024 * 1024


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

    # ---- weights ------------------------------------------------------------

    def quantized_weight(self, name: str, tensors: list[str], fmt: QuantScheme,
                         shapes: list[tuple[int, int]]) -> QuantizedTensor:
        """Quantize [N_i, K] tensors, stacked along N, straight into the data file."""
        k = shapes[0][1]
        n = sum(s[0] for s in shapes)
        n_blocks = -(-k // fmt.block_size)
        blob = fmt.block_size * fmt.bits // 8
        scales, zero_points = [], []

        def packed_chunks():
            rows_per_chunk = max(1, CHUNK_VALUES // k)
            for tensor, shape in zip(tensors, shapes):
                for start in range(0, shape[0], rows_per_chunk):
                    rows = self.checkpoint.rows(tensor, start, min(start + rows_per_chunk, shape[0]))
                    q = quant.quantize(rows, fmt, scale_dtype=self.io_dtype)
                    scales.append(q.scales)
                    if q.zero_points is not None:
                        zero_points.append(q.zero_points)
                    yield q.packed

        for tensor, shape in zip(tensors, shapes):
            self.checkpoint.rows(tensor, 0, 0, expect_shape=shape)  # shape check before writing
        b = self.graph.streamed_initializer(f"{name}.qweight", TensorProto.UINT8, [n, n_blocks, blob],
                                            packed_chunks())
        s = self.graph.initializer(f"{name}.scales", np.concatenate(scales).reshape(n, n_blocks))
        zp = None
        if zero_points:
            zp_all = np.concatenate(zero_points)
            zp = self.graph.initializer(f"{name}.qzeros", zp_all.reshape(n, -1))
        return QuantizedTensor(b, s, zp, n, k, fmt)

    def float_rows(self, tensors: list[str], shapes: list[tuple[int, ...]]) -> np.ndarray:
        """Tensors stacked along their first axis, in the activation dtype."""
        parts = [to_float(self.checkpoint.tensor(t, expect_shape=s), self.io_dtype) for t, s in zip(tensors, shapes)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def float_initializer(self, name: str, tensor: str, shape: tuple[int, ...]) -> str:
        """A float tensor as it is stored (no transpose), streamed in row chunks."""
        self.checkpoint.rows(tensor, 0, 0, expect_shape=shape)
        rows_per_chunk = max(1, CHUNK_VALUES // max(1, int(np.prod(shape[1:]))))

        def chunks():
            for start in range(0, shape[0], rows_per_chunk):
                rows = self.checkpoint.rows(tensor, start, start + rows_per_chunk)
                yield to_float(rows, self.io_dtype)

        return self.graph.streamed_initializer(name, self.io_onnx_type, shape, chunks())

    # ---- nodes --------------------------------------------------------------

    def matmul(self, x: str, name: str, tensors: list[str], shapes: list[tuple[int, int]],
               fmt: QuantScheme, biases: list[str] | None = None) -> str:
        """x @ W^T for the projections `tensors` packed along N; returns the output name."""
        if fmt.quantized:
            q = self.quantized_weight(name.lstrip("/").replace("/", "."), tensors, fmt, shapes)
            out = self.matmul_nbits(x, name + "/MatMulNBits", q)
        else:
            weight = self.float_rows(tensors, shapes)
            w_name = self.graph.initializer(name.lstrip("/").replace("/", ".") + ".weight",
                                            np.ascontiguousarray(weight.T))
            del weight
            out = self.graph.op("MatMul", [x, w_name], name + "/MatMul")
        if biases:
            bias = self.float_rows(biases, [(s[0],) for s in shapes])
            b_name = self.graph.initializer(name.lstrip("/").replace("/", ".") + ".bias", bias)
            out = self.graph.op("Add", [out, b_name], name + "/BiasAdd")
        return out

    def matmul_nbits(self, x: str, node_name: str, q: QuantizedTensor) -> str:
        inputs = [x, q.b, q.scales] + ([q.zero_points] if q.zero_points else [])
        return self.graph.op("MatMulNBits", inputs, node_name, domain=MS_DOMAIN,
                             K=q.k, N=q.n, bits=q.format.bits, block_size=q.format.block_size,
                             accuracy_level=self.accuracy_level)

    @property
    def io_onnx_type(self) -> int:
        return NP_TO_ONNX[self.io_dtype]
