"""The one weight-format type (QuantScheme) and the registry of quantization methods.

A method is a module of quant/ with a quantize and a dequantize function, made
known by one `register(Method(...))` line in quant/__init__.py. `quantize` and
`dequantize` here dispatch on `scheme.method`, so callers never name a method's
functions.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# MatMulNBits block sizes (powers of two from 16 to 256); --block-size takes these.
BLOCK_SIZES = (16, 32, 64, 128, 256)
BITS = (4, 8)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class Method:
    """A quantization method: its functions and the bits/block sizes it supports.

    block_sizes None: the method has no blocks (its schemes carry block_size 0).
    """

    name: str
    quantize: Callable  # (weight [N, K], scheme, scale_dtype) -> QuantizedWeight
    dequantize: Callable  # (QuantizedWeight, scheme) -> float32 [N, K]
    bits: tuple[int, ...] = BITS
    block_sizes: tuple[int, ...] | None = BLOCK_SIZES


_METHODS: dict[str, Method] = {}
FLOAT_METHOD = "float"


def register(method: Method) -> Method:
    if method.name in _METHODS or method.name == FLOAT_METHOD:
        raise ValueError(f"quantization method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def methods() -> tuple[str, ...]:
    return tuple(_METHODS)


@dataclass(frozen=True)
class QuantScheme:
    """How one weight is stored: float (not quantized), or `bits` with a method's layout.

    method "blockwise": MatMulNBits (one scale per `block_size` values of a row);
    "rowwise": one scale per row (QMoE without block_size); "float": not quantized
    (QuantScheme.FLOAT). Equal schemes compare equal, so they can be packed together.
    """

    bits: int
    block_size: int = 32
    symmetric: bool = True
    method: str = "blockwise"

    def __post_init__(self):
        if self.method == FLOAT_METHOD:
            # One float scheme: the other fields mean nothing for it.
            for name, value in (("bits", 0), ("block_size", 0), ("symmetric", True)):
                object.__setattr__(self, name, value)
            return
        method = _METHODS.get(self.method)
        if method is None:
            raise ValueError(
                f"QuantScheme.method={self.method!r} is not supported; allowed: {(FLOAT_METHOD, *_METHODS)}"
            )
        # Integers only (numpy ones too), not bools or floats: they become shapes and attributes.
        if not _is_int(self.bits) or self.bits not in method.bits:
            raise ValueError(f"QuantScheme.bits={self.bits!r} is not supported; allowed: {method.bits}")
        if method.block_sizes is None:
            object.__setattr__(self, "block_size", 0)
        elif not _is_int(self.block_size) or self.block_size not in method.block_sizes:
            raise ValueError(
                f"QuantScheme.block_size={self.block_size!r} is not supported; "
                f"allowed: {method.block_sizes} (powers of two from 16 to 256)"
            )
        if not isinstance(self.symmetric, (bool, np.bool_)):
            raise ValueError(f"QuantScheme.symmetric={self.symmetric!r} must be True or False")
        # Plain Python values from here on (numpy ints would leak into ONNX attributes).
        object.__setattr__(self, "bits", int(self.bits))
        object.__setattr__(self, "block_size", int(self.block_size))
        object.__setattr__(self, "symmetric", bool(self.symmetric))

    @classmethod
    def from_kind(
        cls, kind: str, block_size: int = 32, symmetric: bool = True, method: str = "blockwise"
    ) -> QuantScheme:
        """The scheme of a kind: float, int4 or int8 (the --precision / --int8-layers words)."""
        if kind == "float":
            return cls.FLOAT
        if kind not in ("int4", "int8"):
            raise ValueError(f"weight kind {kind!r} is not supported; allowed: float, int4, int8")
        return cls(int(kind[3:]), block_size, symmetric, method)

    @property
    def quantized(self) -> bool:
        return self.method != FLOAT_METHOD

    @property
    def kind(self) -> str:
        return f"int{self.bits}" if self.quantized else "float"

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

    def __str__(self) -> str:
        if not self.quantized:
            return "float"
        blocks = f"b{self.block_size}" if self.block_size else "row"
        return f"{self.kind}/{blocks}/{'sym' if self.symmetric else 'asym'}"


QuantScheme.FLOAT = QuantScheme(0, 0, True, FLOAT_METHOD)


@dataclass
class QuantizedWeight:
    """Quantized [N, K] weight: for "blockwise" the MatMulNBits inputs B, scales and zero_points.

    blockwise: packed uint8 [N, n_blocks, blob_size], scales [N, n_blocks], zero points
    packed uint8 [N, ceil(n_blocks * bits / 8)]. rowwise: packed uint8 [N, K * bits / 8],
    scales [N], zero points uint8 [N]. zero_points is None when symmetric.
    """

    packed: np.ndarray
    scales: np.ndarray  # float32 or float16
    zero_points: np.ndarray | None
    k: int  # K (in_features) before padding to whole blocks

    @property
    def n(self) -> int:
        return self.packed.shape[0]


def _method(scheme) -> Method:
    if not isinstance(scheme, QuantScheme):
        raise TypeError(f"scheme must be a QuantScheme, got {type(scheme).__name__}")
    if not scheme.quantized:
        raise ValueError("QuantScheme.FLOAT is not a quantization; keep the weight as it is")
    return _METHODS[scheme.method]


def quantize(weight, scheme: QuantScheme, scale_dtype=np.float32) -> QuantizedWeight:
    """Quantize a Hugging Face nn.Linear weight [N, K] (float32/float16/bfloat16 numpy array)."""
    return _method(scheme).quantize(weight, scheme, scale_dtype)


def dequantize(q: QuantizedWeight, scheme: QuantScheme) -> np.ndarray:
    """float32 [N, K]: the values the ONNX Runtime kernel multiplies by."""
    return _method(scheme).dequantize(q, scheme)
