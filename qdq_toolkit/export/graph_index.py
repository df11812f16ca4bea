"""One index of an ONNX graph, shared by the export passes, the TensorRT checker and the fusion predictor.

Producers, consumers (a tensor read inside an If/Loop/Scan body counts as consumed by that node), constants
(initializers and Constant nodes, through Identity) and the resolved parameters of each QuantizeLinear /
DequantizeLinear. It reads the ``onnx.GraphProto`` in place and never changes it; a pass that rewrites the graph
builds a new index afterwards.

Why not onnx-ir (``onnx_ir``, checked with onnx-ir 1.1 on our ResNet50/MobileNetV2/EfficientNetB0/digits/...
exports): ``ir.to_proto(ir.from_proto(model))`` does not give back the same bytes (+0.3 to +15 kB per model), and
``Graph.sort()`` orders nodes differently from :func:`qdq_toolkit.export.passes.topological_sort`; the exports
must stay byte-identical, so the passes mutate the protobuf in place and this index reads it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from qdq_toolkit.tensorrt_rules import SHAPE_ONLY_OPS

Q = "QuantizeLinear"
DQ = "DequantizeLinear"
ONNX_DOMAINS = ("", "ai.onnx")
#: Ops whose output is a constant when all their inputs are (a weight prepared in the graph).
CONST_FOLDABLE_OPS = SHAPE_ONLY_OPS | {"Cast"}
IDENTITY_ONLY = frozenset({"Identity"})
#: QuantizeLinear/DequantizeLinear `axis` default since opset 13 (and the only meaning before it).
DEFAULT_QDQ_AXIS = 1

@dataclass(frozen=True)
class Constant:
    """A constant tensor: its value (None when unreadable, e.g. external data not loaded) and data type."""

    value: np.ndarray | None
    dtype: int  # onnx.TensorProto data type; 0 when unknown


@dataclass(frozen=True)
class QDQParams:
    """The resolved inputs and attributes of one QuantizeLinear/DequantizeLinear node."""

    scale_name: str
    scale: Constant | None  # None: the scale is not a constant
    zero_point_name: str | None  # None: no zero point input
    zero_point: Constant | None  # None: absent or not a constant
    axis: int
    quant_dtype: int  # data type of the quantized side; 0 when unknown


def tensor_to_constant(tensor: onnx.TensorProto) -> Constant:
    if tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.raw_data:
        return Constant(None, tensor.data_type)
    try:
        value = numpy_helper.to_array(tensor)
    except (ValueError, TypeError, OSError):
        return Constant(None, tensor.data_type)
    return Constant(np.asarray(value), tensor.data_type)


def constant_node_value(node: onnx.NodeProto) -> Constant:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return tensor_to_constant(attr.t)
        if attr.name == "value_float":
            return Constant(np.asarray(attr.f, dtype=np.float32), onnx.TensorProto.FLOAT)
        if attr.name == "value_floats":
            return Constant(np.asarray(list(attr.floats), dtype=np.float32), onnx.TensorProto.FLOAT)
        if attr.name == "value_int":
            return Constant(np.asarray(attr.i, dtype=np.int64), onnx.TensorProto.INT64)
        if attr.name == "value_ints":
            return Constant(np.asarray(list(attr.ints), dtype=np.int64), onnx.TensorProto.INT64)
    return Constant(None, 0)


def constant_array(name: str, initializers: dict, producers: dict) -> np.ndarray | None:
    """The value of ``name`` when it is an initializer or the output of a Constant node, else None.

    ``initializers``: ``{name: TensorProto}``; ``producers``: ``{output name: node}``.
    """
    if name in initializers:
        return tensor_to_constant(initializers[name]).value
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        return constant_node_value(node).value
    return None


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name`` (``onnx.helper.get_attribute_value``), or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def ints_attr(node: onnx.NodeProto, name: str) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == name:
            return [int(v) for v in attr.ints]
    return None


def normalize_axis(axis: int, rank: int | None) -> int:
    if axis < 0 and rank is not None:
        return axis + rank
    return axis


def dtype_name(dtype: int) -> str:
    if dtype == 0:
        return "unknown"
    return onnx.TensorProto.DataType.Name(dtype).lower()


def fmt_values(values: np.ndarray, limit: int = 4) -> str:
    flat = values.reshape(-1)
    shown = ", ".join(f"{v:g}" if np.issubdtype(flat.dtype, np.floating) else str(v) for v in flat[:limit])
    return f"[{shown}{', ...' if flat.size > limit else ''}]"


def outer_scope_inputs(node: onnx.NodeProto) -> set[str]:
    """Tensor names read inside the subgraphs (If/Loop/Scan bodies) of ``node``: it consumes them too."""
    names: set[str] = set()
    graphs = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    graphs += [g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]
    for graph in graphs:
        for inner in graph.node:
            names.update(inner.input)
            names.update(outer_scope_inputs(inner))
    return names


class GraphIndex:
    """Producers, consumers and constants of one ONNX graph, with the Q/DQ helpers the rules need."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.graph_inputs: frozenset[str] = frozenset(i.name for i in graph.input)
        self.graph_outputs: frozenset[str] = frozenset(o.name for o in graph.output)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self._labels: dict[int, str] = {}
        for index, node in enumerate(self.nodes):
            self._labels[id(node)] = node.name or f"<unnamed {node.op_type} #{index}>"
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in [*node.input, *outer_scope_inputs(node)]:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self._constant_cache: dict[str, Constant | None] = {}
        self._foldable_cache: dict[str, bool] = {}
        self._params_cache: dict[int, QDQParams] = {}

    # -- node helpers ------------------------------------------------------------------------------------------
    def label(self, node: onnx.NodeProto) -> str:
        return self._labels[id(node)]

    @staticmethod
    def is_op(node: onnx.NodeProto | None, op_type: str) -> bool:
        return node is not None and node.op_type == op_type and node.domain in ONNX_DOMAINS

    def nodes_of(self, op_type: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if self.is_op(n, op_type)]

    def trace_back(self, name: str, through: frozenset[str]) -> tuple[str, list[onnx.NodeProto]]:
        """Follow ``name`` up through producers whose op is in ``through`` (via their first input).

        Returns the tensor reached and the nodes passed, nearest to ``name`` first.
        """
        passed: list[onnx.NodeProto] = []
        seen: set[str] = set()
        while name not in seen:
            seen.add(name)
            node = self.producer.get(name)
            if node is None or node.domain not in ONNX_DOMAINS or node.op_type not in through or not node.input:
                break
            passed.append(node)
            name = node.input[0]
        return name, passed

    def source_node(self, name: str, through: frozenset[str]) -> onnx.NodeProto | None:
        return self.producer.get(self.trace_back(name, through)[0])

    def consumers_through_identity(self, name: str) -> tuple[list[onnx.NodeProto], bool]:
        """Non-Identity consumers of ``name`` (looking past Identity), and whether it reaches a graph output."""
        found: list[onnx.NodeProto] = []
        is_output = False
        pending, seen = [name], set()
        while pending:
            tensor = pending.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            is_output = is_output or tensor in self.graph_outputs
            for node in self.consumers.get(tensor, []):
                if self.is_op(node, "Identity"):
                    pending.extend(o for o in node.output if o)
                else:
                    found.append(node)
        return found, is_output

    # -- constants ---------------------------------------------------------------------------------------------
    def constant(self, name: str) -> Constant | None:
        """The constant behind ``name`` (initializer or Constant node, through Identity), else None."""
        if name in self._constant_cache:
            return self._constant_cache[name]
        source, _ = self.trace_back(name, IDENTITY_ONLY)
        result: Constant | None = None
        if source in self.initializers:
            result = tensor_to_constant(self.initializers[source])
        else:
            node = self.producer.get(source)
            if self.is_op(node, "Constant"):
                result = constant_node_value(node)
        self._constant_cache[name] = result
        return result

    def is_constant_expr(self, name: str) -> bool:
        """True when ``name`` is a constant or a shape op / Cast of constants (a weight, not an activation)."""
        if name in self._foldable_cache:
            return self._foldable_cache[name]
        self._foldable_cache[name] = False  # guards against cycles in malformed graphs
        result = self.constant(name) is not None
        if not result:
            node = self.producer.get(name)
            if node is not None and node.domain in ONNX_DOMAINS and node.op_type in CONST_FOLDABLE_OPS:
                result = all(self.is_constant_expr(i) for i in node.input if i)
        self._foldable_cache[name] = result
        return result

    # -- Q/DQ --------------------------------------------------------------------------------------------------
    def params(self, node: onnx.NodeProto) -> QDQParams:
        key = id(node)
        if key in self._params_cache:
            return self._params_cache[key]
        scale_name = node.input[1] if len(node.input) > 1 else ""
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        zero_point = self.constant(zp_name) if zp_name else None
        if zp_name is not None:
            quant_dtype = zero_point.dtype if zero_point is not None else 0
        elif self.is_op(node, Q):
            # Without a zero point, QuantizeLinear produces uint8 (opset 21 adds `output_dtype` to choose).
            quant_dtype = int_attr(node, "output_dtype", 0) or onnx.TensorProto.UINT8
        else:
            data = self.constant(node.input[0])
            quant_dtype = data.dtype if data is not None else 0
        params = QDQParams(
            scale_name=scale_name,
            scale=self.constant(scale_name) if scale_name else None,
            zero_point_name=zp_name,
            zero_point=zero_point,
            axis=int_attr(node, "axis", DEFAULT_QDQ_AXIS),
            quant_dtype=quant_dtype,
        )
        self._params_cache[key] = params
        return params

    def feeding_q(self, dq: onnx.NodeProto, through: frozenset[str] = SHAPE_ONLY_OPS) -> onnx.NodeProto | None:
        """The QuantizeLinear that feeds a DequantizeLinear (through ``through`` ops), if any."""
        node = self.source_node(dq.input[0], through)
        return node if self.is_op(node, Q) else None

    def origin(self, name: str) -> str:
        """Where a tensor comes from, for messages (looking past Identity)."""
        source, _ = self.trace_back(name, IDENTITY_ONLY)
        producer = self.producer.get(source)
        if producer is not None:
            return f"the output of {producer.op_type} {self.label(producer)!r}"
        if source in self.initializers:
            return f"initializer {source!r}"
        if source in self.graph_inputs:
            return f"graph input {source!r}"
        return (
            f"undefined ({source!r} is produced by no node, initializer or graph input — a conversion step "
            "probably failed; tf2onnx leaves such tensors behind with continue_on_error)"
        )

    def is_weight_qdq(self, node: onnx.NodeProto) -> bool:
        """True when a Q/DQ quantizes a constant: ``w -> Q -> DQ`` or ``int8 w -> DQ``."""
        if self.is_constant_expr(node.input[0]):
            return True
        if self.is_op(node, DQ):
            q = self.feeding_q(node)
            return q is not None and self.is_constant_expr(q.input[0])
        return False

    def weight_name(self, dq: onnx.NodeProto) -> str:
        """The name of the weight a weight DequantizeLinear reads (the float one behind a QuantizeLinear)."""
        q = self.feeding_q(dq, IDENTITY_ONLY)
        return q.input[0] if q is not None else dq.input[0]

    def weight_constant(self, dq: onnx.NodeProto) -> Constant | None:
        """The weight tensor a weight DequantizeLinear reads (the int8 constant or the float one behind Q)."""
        direct = self.constant(dq.input[0])
        if direct is not None:
            return direct
        q = self.feeding_q(dq, IDENTITY_ONLY)  # a Transpose/Reshape in between would change the shape
        return self.constant(q.input[0]) if q is not None else None


def is_per_tensor(params: QDQParams) -> bool | None:
    """True/False when the scale is known to be per tensor / per channel; None when it cannot be told."""
    if params.scale is None or params.scale.value is None:
        return None
    return int(params.scale.value.size) == 1
