"""Weight quantization, bit-identical to ONNX Runtime's; numpy only, the leaf of the package graph.

One scheme type (QuantScheme, float included) and one entry point per direction:
quant.quantize(weight, scheme, scale_dtype) and quant.dequantize(q, scheme) dispatch
on scheme.method. Adding a method: a module here with its quantize/dequantize
functions, and one `register(Method(...))` line below.
"""

from .blockwise import (
    dequantize_blockwise,
    get_num_threads,
    pack_zero_points,
    quantize_blockwise,
    set_num_threads,
    unpack_zero_points,
)
from .ort_reference import ort_quantize_blockwise
from .rowwise import dequantize_rowwise, quantize_rowwise
from .scheme import BITS, BLOCK_SIZES, Method, QuantizedWeight, QuantScheme, dequantize, methods, quantize, register

register(Method("blockwise", quantize_blockwise, dequantize_blockwise, bits=BITS, block_sizes=BLOCK_SIZES))
register(Method("rowwise", quantize_rowwise, dequantize_rowwise, bits=(8,), block_sizes=None))

__all__ = [
    "BITS",
    "BLOCK_SIZES",
    "Method",
    "QuantScheme",
    "QuantizedWeight",
    "quantize",
    "dequantize",
    "register",
    "methods",
    "quantize_blockwise",
    "dequantize_blockwise",
    "quantize_rowwise",
    "dequantize_rowwise",
    "pack_zero_points",
    "unpack_zero_points",
    "set_num_threads",
    "get_num_threads",
    "ort_quantize_blockwise",
]
