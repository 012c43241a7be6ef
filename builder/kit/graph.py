"""A small ONNX graph writer that streams initializer bytes to disk.

Weights never stay in memory: `initializer()` appends their bytes to
model.onnx.data (builder.kit.data_file) at once and keeps only a TensorProto that points at the
offset. The ModelProto that is finally serialized holds nodes and offsets
only, so its size does not grow with the model.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import TensorProto, helper

from builder.kit.data_file import ExternalDataFile
from builder.kit.errors import BuilderError
from builder.kit.progress import Phases

MS_DOMAIN = "com.microsoft"
OPSET = 21
# Tensors smaller than this stay inside model.onnx; bigger ones go to the data file.
INLINE_LIMIT = 1024

NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
}


class Graph:
    """Nodes, streamed initializers and graph inputs/outputs of one model."""

    def __init__(self, data_file: ExternalDataFile, name: str = "main_graph"):
        self.data = data_file
        self.phases: Phases = getattr(data_file, "phases", None) or Phases()
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()
        self._initializer_names: set[str] = set()
        self._constants: dict[tuple, str] = {}

    # ---- nodes --------------------------------------------------------------

    def node(
        self, op_type: str, inputs: list[str], name: str, outputs: int | list[str] = 1, domain: str = "", **attrs
    ) -> list[str]:
        """Add a node named like the reference builder (`/model/layers.0/attn/...`)."""
        if name in self._names:
            raise ValueError(f"node name {name} used twice")
        self._names.add(name)
        if isinstance(outputs, int):
            outputs = [f"{name}/output_{i}" for i in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def op(self, op_type: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        """A single-output node; returns its output name."""
        return self.node(op_type, inputs, name, 1, domain, **attrs)[0]

    # ---- initializers -------------------------------------------------------

    def initializer(self, name: str, array: np.ndarray) -> str:
        """Store an array: small ones inline, big ones streamed to the data file."""
        array = np.ascontiguousarray(array)
        if array.nbytes < INLINE_LIMIT:
            self._add_initializer(onnx.numpy_helper.from_array(array, name))
            return name
        return self.streamed_initializer(name, NP_TO_ONNX[array.dtype], array.shape, [array])

    def streamed_initializer(self, name: str, onnx_type: int, shape, chunks) -> str:
        """Write an initializer whose bytes arrive as chunks (e.g. row blocks)."""
        offset, length = self.data.append(chunks)
        tensor = TensorProto(name=name, data_type=onnx_type, dims=list(shape))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data.path.name), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self._add_initializer(tensor)
        return name

    def _add_initializer(self, tensor: TensorProto) -> None:
        if tensor.name in self._initializer_names:
            raise ValueError(f"initializer {tensor.name} written twice")
        self._initializer_names.add(tensor.name)
        self.initializers.append(tensor)

    def constant(self, values, dtype=np.int64) -> str:
        """A small shared constant initializer, deduplicated by value."""
        given = np.asarray(values)
        if given.size and given.dtype.kind == "f" and np.dtype(dtype).kind in "iu":
            # A family's scale written with the default dtype became int64 (0.125 -> 0), and the graph
            # was published: onnxruntime refuses it (Mul bound to float and int64) when it loads.
            raise ValueError(
                f"graph constant {given.tolist()} is a float, but its dtype is {np.dtype(dtype).name} (the default, "
                "for shapes and indices): pass dtype=em.plan.io_dtype for a scale in the activations' dtype"
            )
        array = np.asarray(values, dtype=dtype)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            # A scale from config.json that was null or inf (a family's config.get(key, 1.0) returns
            # None for a null) would go into the graph as NaN and every logit with it.
            raise BuilderError(
                f"a constant of the graph is not finite ({array.tolist()}); check the config.json values it comes from"
            )
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            text = str(array.tolist()).replace(" ", "")
            name = f"/model/constants/{array.dtype.name}/{text}"
            self._constants[key] = self.initializer(name, array)
        return self._constants[key]

    # ---- inputs/outputs -----------------------------------------------------

    def add_input(self, name: str, onnx_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, onnx_type, shape))
        return name

    def add_output(self, name: str, onnx_type: int, shape: list) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, onnx_type, shape))
        return name

    # ---- finishing ----------------------------------------------------------

    def check_wiring(self) -> None:
        """Refuse a graph with a node input or a graph output that nothing defines: onnxruntime does
        not load it, and it was published all the same (a family's build_graph that skipped a block's
        declare_io), found only by --verify or the user."""
        defined = {v.name for v in self.inputs} | self._initializer_names | {""}  # "": an optional input left out
        defined.update(name for node in self.nodes for name in node.output)
        for node in self.nodes:
            missing = next((x for x in node.input if x not in defined), None)
            if missing is not None:
                raise BuilderError(
                    f"node {node.name} ({node.op_type}) reads {missing!r}, which no graph input, initializer "
                    "or node defines, so onnxruntime would not load the model; if a family's own build_graph "
                    "wrote it, check that it declares each block's inputs (declare_io)"
                )
        missing = [v.name for v in self.outputs if v.name not in defined]
        if missing:
            raise BuilderError(
                f"graph output(s) {missing} are written by no node, so onnxruntime would not load the model"
            )

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(n.op_type for n in self.nodes).items()))

    def to_model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name="builder",
        )
        # IR 10 is what ORT 1.20+ and onnxruntime-webgpu 1.27 read.
        model.ir_version = 10
        return model
