"""Weight quantization for MatMulNBits (int4/int8, block-wise), bit-identical to ONNX Runtime's."""

from .blockwise import (
    QuantizedWeight,
    QuantScheme,
    dequantize_blockwise,
    pack_zero_points,
    quantize_blockwise,
    unpack_zero_points,
)
from .ort_reference import ort_quantize_blockwise

__all__ = [
    "QuantScheme",
    "QuantizedWeight",
    "quantize_blockwise",
    "dequantize_blockwise",
    "pack_zero_points",
    "unpack_zero_points",
    "ort_quantize_blockwise",
]
