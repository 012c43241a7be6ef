"""ONNX Runtime's own block quantizer, wrapped to our [N, K] interface.

The reference `quantize_blockwise` is tested against (and bench_quant.py times).
It calls what onnxruntime.quantization.matmul_nbits_quantizer calls for
MatMulNBits (QOperator format): quantize_matmul_4bits / quantize_matmul_8bits
from onnxruntime.capi._pybind_state, i.e. MLAS MlasQuantizeBlockwise<T, bits>.
Those take the ONNX MatMul B layout [K, N], float32 or float16 (the scales get
the input's dtype), and we pad K with zero rows to whole blocks first as that
quantizer does.
"""

from __future__ import annotations

import numpy as np

from .blockwise import as_weight
from .scheme import QuantizedWeight, QuantScheme


def ort_quantize_blockwise(weight, scheme: QuantScheme, scale_dtype=np.float32) -> QuantizedWeight:
    """ORT's quantizer on weight [N, K] (float32/float16/bfloat16 numpy array).

    The weight is converted to scale_dtype first: ORT quantizes float16 input
    into float16 scales and float32 into float32.
    """
    # Imported here so that importing quant does not load onnxruntime.
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    dtype = np.dtype(scale_dtype)
    w = as_weight(weight)
    n, k = w.shape
    nb = scheme.n_blocks(k)
    # [K, N] in the scale dtype (bf16 -> float32 is exact), zero rows padding K to whole blocks.
    w_t = np.zeros((nb * scheme.block_size, n), np.float16 if dtype == np.float16 else np.float32)
    w_t[:k] = w.T.astype(np.float32) if w.dtype.name == "bfloat16" else w.T
    packed = np.zeros((n, nb, scheme.blob_size), np.uint8)
    scales = np.zeros((n, nb), dtype)
    zero_points = np.zeros((n, -(-nb * scheme.bits // 8)), np.uint8)
    quantize = quantize_matmul_4bits if scheme.bits == 4 else quantize_matmul_8bits
    quantize(packed, w_t, scales, zero_points, scheme.block_size, n, w_t.shape[0], scheme.symmetric)
    return QuantizedWeight(packed, scales, None if scheme.symmetric else zero_points, k)
