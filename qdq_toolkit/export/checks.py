"""TensorRT explicit-quantization rules, checked on an exported QDQ ONNX graph.

TensorRT builds an INT8 engine from an *explicitly* quantized ONNX graph: QuantizeLinear/DequantizeLinear
(Q/DQ) pairs mark where tensors are int8, and TensorRT fuses each DQ into the compute layer that follows it.
It only does so when the graph obeys the rules declared in :mod:`qdq_toolkit.tensorrt_rules` (symmetric int8 with
zero point 0, constant scales > 0, activations per tensor, weights per channel on each compute op's output-channel
axis, both inputs of a compute op dequantized, every QuantizeLinear feeding matching DequantizeLinear nodes).

:func:`check_qdq_placement` reports every breach of these rules as a :class:`Violation`;
:func:`summarize_qdq` counts the Q/DQ nodes and the quantized compute layers; :func:`format_violations` and
:func:`violations_to_json` turn the results into a table for people and JSON for machines.

Only the main graph is checked; a tensor read inside an If/Loop/Scan body counts as consumed by that node.
Identity and Constant nodes are followed everywhere. Between a DequantizeLinear and a compute layer the
shape-only ops TensorRT moves Q/DQ across (``tensorrt_rules.SHAPE_ONLY_OPS``) are followed too,
and a weight per-channel axis is mapped back through Transposes. Between a QuantizeLinear and its
DequantizeLinear they are not: ``Q -> Transpose -> DQ`` is reported, with the fix (move the Transpose above
the QuantizeLinear).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from qdq_toolkit.export.graph_index import (
    DQ,
    IDENTITY_ONLY,
    ONNX_DOMAINS,
    Constant,
    GraphIndex,
    Q,
    constant_array,
    dtype_name,
    fmt_values,
    int_attr,
    ints_attr,
    is_per_tensor,
    normalize_axis,
)
from qdq_toolkit.tensorrt_rules import COMPUTE_OPS, INT8, QUANTIZED_OP_TYPES, SHAPE_ONLY_OPS, weight_axis

__all__ = [
    "QUANTIZED_OP_TYPES",
    "RULES",
    "Violation",
    "check_qdq_placement",
    "constant_array",
    "format_violations",
    "load_onnx_model",
    "summarize_qdq",
    "violations_to_dict",
    "violations_to_json",
]

#: Rule id -> what the rule demands (the TensorRT requirement behind it).
RULES: dict[str, str] = {
    "zero-point-dtype": "Q/DQ must be int8: a zero point must be present on QuantizeLinear (ONNX defaults to "
    "uint8) and be int8; DequantizeLinear without a zero point must read an int8 tensor.",
    "zero-point-value": "Zero points must be constant and all 0 (TensorRT supports symmetric quantization only).",
    "scale-not-constant": "Scales must be constants (an initializer or a Constant node, possibly behind "
    "Identity); TensorRT cannot use scales computed at run time.",
    "scale-not-positive": "Every scale value must be finite and > 0.",
    "activation-per-channel": "Activations must be quantized per tensor (scalar scale); per-channel scales are "
    "for weights only.",
    "weight-axis": "Per-channel weight scales must be on the output-channel axis ("
    + "; ".join(op.weight_layout for op in COMPUTE_OPS.values())
    + ").",
    "weight-scale-size": "A per-channel weight scale must have one value per output channel.",
    "weight-qdq-missing": "The data input of Conv/ConvTranspose/MatMul/Gemm is quantized but its weight is a "
    "float constant: add QuantizeLinear/DequantizeLinear (int8, per channel) on the weight.",
    "input-qdq-missing": "One input of Conv/ConvTranspose/MatMul/Gemm is quantized but the other (the data "
    "input) is not: add QuantizeLinear/DequantizeLinear (int8, per tensor) on it.",
    "q-not-followed-by-dq": "A QuantizeLinear output must be consumed only by DequantizeLinear nodes.",
    "q-graph-output": "A QuantizeLinear output must not be a graph output.",
    "qdq-mismatch": "A DequantizeLinear must use the same scale, zero point and axis as the QuantizeLinear "
    "that feeds it.",
}



@dataclass(frozen=True)
class Violation:
    """One breach of a TensorRT explicit-quantization rule.

    Attributes:
        rule: rule id, a key of :data:`RULES`.
        node: name of the offending node (``<unnamed OpType #i>`` when the node has no name).
        op_type: ONNX op type of that node.
        message: what is wrong and what TensorRT needs instead.
        tensor: the tensor concerned (a scale, zero point, weight or output), when there is one.
    """

    rule: str
    node: str
    op_type: str
    message: str
    tensor: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """Return the violation as a JSON-ready dict."""
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_onnx_model(model: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    """Return ``model`` itself, or load it from an ``.onnx`` path.

    Raises:
        FileNotFoundError: the path does not exist, or an external-data file it names is missing.
        ValueError: the path is a directory, or the file is not a valid ONNX model.
        TypeError: ``model`` is neither a ModelProto nor a path.
    """
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"expected an onnx.ModelProto or a path to an .onnx file, got {type(model).__name__}")
    path = os.fspath(model)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ONNX model not found: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory; pass the path of an .onnx file")
    try:
        loaded = onnx.load(path)
    except DecodeError as exc:
        raise ValueError(
            f"{path!r} is not a valid ONNX model (protobuf decoding failed: {exc}); "
            "re-export it or check that the file is complete"
        ) from None
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{path!r} stores tensors in external data that cannot be found ({exc}); keep the data files "
            "next to the model"
        ) from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path!r} could not be loaded as an ONNX model: {exc}") from None
    if loaded.ir_version <= 0 or not loaded.HasField("graph"):
        raise ValueError(f"{path!r} is not a valid ONNX model (no IR version or no graph)")
    return loaded


# --------------------------------------------------------------------------------------------------------------
# Rules on single Q/DQ nodes


def _check_zero_point(index: GraphIndex, node: onnx.NodeProto) -> list[Violation]:
    """TensorRT: int8 only, symmetric — a constant int8 zero point equal to 0."""
    params = index.params(node)
    label, op = index.label(node), node.op_type
    out: list[Violation] = []
    int8 = INT8.onnx_dtype
    if params.zero_point_name is None:
        if index.is_op(node, Q) and params.quant_dtype != int8:
            out.append(
                Violation(
                    "zero-point-dtype",
                    label,
                    op,
                    f"QuantizeLinear has no zero point, so ONNX quantizes to {dtype_name(params.quant_dtype)}; "
                    "TensorRT needs int8: add an int8 zero point of 0",
                    node.output[0],
                )
            )
        elif index.is_op(node, DQ) and params.quant_dtype not in (0, int8):
            out.append(
                Violation(
                    "zero-point-dtype",
                    label,
                    op,
                    f"DequantizeLinear reads a {dtype_name(params.quant_dtype)} constant; TensorRT needs int8 "
                    "(store the weight as int8 with an int8 zero point of 0)",
                    node.input[0],
                )
            )
        return out
    zp = params.zero_point
    if zp is None:
        out.append(
            Violation(
                "zero-point-value",
                label,
                op,
                f"zero point {params.zero_point_name!r} is computed at run time; TensorRT needs a constant "
                "int8 zero point of 0",
                params.zero_point_name,
            )
        )
        return out
    if zp.dtype != int8:
        out.append(
            Violation(
                "zero-point-dtype",
                label,
                op,
                f"zero point {params.zero_point_name!r} is {dtype_name(zp.dtype)}; TensorRT needs int8 "
                "(symmetric quantization with a zero point of 0)",
                params.zero_point_name,
            )
        )
    if zp.value is not None and np.any(zp.value != 0):
        out.append(
            Violation(
                "zero-point-value",
                label,
                op,
                f"zero point {params.zero_point_name!r} is {fmt_values(zp.value)}, not all 0; TensorRT supports "
                "symmetric quantization only (zero point 0)",
                params.zero_point_name,
            )
        )
    return out


def _check_scale(index: GraphIndex, node: onnx.NodeProto) -> list[Violation]:
    """TensorRT: scales are build-time constants, finite and > 0."""
    params = index.params(node)
    label, op = index.label(node), node.op_type
    if params.scale is None:
        origin = index.origin(params.scale_name)
        return [
            Violation(
                "scale-not-constant",
                label,
                op,
                f"scale {params.scale_name!r} is {origin}, not a constant; TensorRT needs constant scales "
                "(an initializer or a Constant node) — freeze the calibrated ranges before export",
                params.scale_name,
            )
        ]
    value = params.scale.value
    if value is None:
        return []
    bad = ~np.isfinite(value) | (value <= 0)
    if not np.any(bad):
        return []
    return [
        Violation(
            "scale-not-positive",
            label,
            op,
            f"scale {params.scale_name!r} has {int(np.count_nonzero(bad))} of {value.size} value(s) that are "
            f"<= 0 or not finite ({fmt_values(value[bad])}); TensorRT needs every scale finite and > 0 "
            "(keep every calibrated amax > 0)",
            params.scale_name,
        )
    ]


def _check_activation_granularity(index: GraphIndex, node: onnx.NodeProto) -> list[Violation]:
    """TensorRT: activations are quantized per tensor; per-channel scales are for weights only."""
    params = index.params(node)
    if is_per_tensor(params) is not False or index.is_weight_qdq(node):
        return []
    size = params.scale.value.size if params.scale is not None and params.scale.value is not None else 0
    q = index.feeding_q(node) if index.is_op(node, DQ) else node
    activation = q.input[0] if q is not None else node.input[0]
    origin = index.origin(activation)
    note = ""
    if origin.startswith("undefined"):
        note = f" (its source is {origin})"
    elif origin.startswith("graph input"):
        note = " (a graph input; if it is a weight, store it as an initializer so TensorRT sees a constant)"
    return [
        Violation(
            "activation-per-channel",
            index.label(node),
            node.op_type,
            f"activation {activation!r}{note} is quantized per channel ({size} scales on axis {params.axis}); "
            "TensorRT quantizes activations per tensor — use a scalar scale and zero point",
            params.scale_name,
        )
    ]


def _check_q_consumers(index: GraphIndex, q: onnx.NodeProto) -> list[Violation]:
    """TensorRT: each QuantizeLinear is followed by DequantizeLinear nodes only, and is never a graph output."""
    consumers, is_output = index.consumers_through_identity(q.output[0])
    label = index.label(q)
    if is_output:
        return [
            Violation(
                "q-graph-output",
                label,
                q.op_type,
                f"quantized tensor {q.output[0]!r} is a graph output; TensorRT expects every QuantizeLinear to "
                "be followed by a DequantizeLinear — output the dequantized (float) tensor instead",
                q.output[0],
            )
        ]
    others = [n for n in consumers if not index.is_op(n, DQ)]
    if others:
        names = ", ".join(f"{n.op_type} {index.label(n)!r}" for n in others)
        hint = (
            "; move shape-only ops above the QuantizeLinear (they commute with per-tensor quantization)"
            if all(n.op_type in SHAPE_ONLY_OPS for n in others)
            else ""
        )
        return [
            Violation(
                "q-not-followed-by-dq",
                label,
                q.op_type,
                f"quantized tensor {q.output[0]!r} feeds {names}; TensorRT needs every QuantizeLinear to feed "
                f"DequantizeLinear nodes only{hint}",
                q.output[0],
            )
        ]
    if not consumers:
        return [
            Violation(
                "q-not-followed-by-dq",
                label,
                q.op_type,
                f"quantized tensor {q.output[0]!r} is never used; TensorRT needs every QuantizeLinear to feed a "
                "DequantizeLinear — remove the dangling QuantizeLinear",
                q.output[0],
            )
        ]
    return []


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    return a.size == b.size and bool(np.array_equal(a.reshape(-1), b.reshape(-1)))


def _check_pair(index: GraphIndex, dq: onnx.NodeProto) -> list[Violation]:
    """TensorRT: a Q/DQ pair is one quantization — the DQ repeats the Q's scale, zero point and axis."""
    q = index.feeding_q(dq)
    if q is None:
        return []
    qp, dp = index.params(q), index.params(dq)
    problems: list[str] = []
    if qp.scale is not None and dp.scale is not None:
        if qp.scale.value is not None and dp.scale.value is not None:
            if not _same_values(qp.scale.value, dp.scale.value):
                problems.append(f"scale {fmt_values(dp.scale.value)} vs {fmt_values(qp.scale.value)}")
    elif index.trace_back(qp.scale_name, IDENTITY_ONLY)[0] != index.trace_back(dp.scale_name, IDENTITY_ONLY)[0]:
        problems.append(f"scale tensor {dp.scale_name!r} vs {qp.scale_name!r}")
    if dp.zero_point_name is not None:
        q_zp = qp.zero_point
        if qp.zero_point_name is None:  # QuantizeLinear's default zero point: 0 of its output type
            q_zp = Constant(np.zeros((), dtype=np.uint8), qp.quant_dtype)
        d_zp = dp.zero_point
        if q_zp is not None and d_zp is not None:
            if q_zp.dtype and d_zp.dtype and q_zp.dtype != d_zp.dtype:
                problems.append(f"zero point type {dtype_name(d_zp.dtype)} vs {dtype_name(q_zp.dtype)}")
            elif q_zp.value is not None and d_zp.value is not None and not _same_values(q_zp.value, d_zp.value):
                problems.append(f"zero point {fmt_values(d_zp.value)} vs {fmt_values(q_zp.value)}")
    _, between = index.trace_back(dq.input[0], SHAPE_ONLY_OPS)
    same_layout = all(n.op_type == "Identity" for n in between)  # a Transpose in between moves the axis
    if same_layout and is_per_tensor(qp) is False and is_per_tensor(dp) is False:
        weight = index.constant(q.input[0])
        rank = weight.value.ndim if weight is not None and weight.value is not None else None
        if normalize_axis(qp.axis, rank) != normalize_axis(dp.axis, rank):
            problems.append(f"axis {dp.axis} vs {qp.axis}")
    if not problems:
        return []
    return [
        Violation(
            "qdq-mismatch",
            index.label(dq),
            dq.op_type,
            f"DequantizeLinear does not match its QuantizeLinear {index.label(q)!r}: {'; '.join(problems)}; "
            "TensorRT needs a Q/DQ pair to share one scale, zero point and axis",
            dq.input[0],
        )
    ]


# --------------------------------------------------------------------------------------------------------------
# Rules on compute layers


def _expected_weight_axis(node: onnx.NodeProto, rank: int | None) -> int | None:
    """The output-channel axis of the weight input as the layer sees it (the table's :func:`weight_axis`)."""
    return weight_axis(node.op_type, rank, {"transB": int_attr(node, "transB", 0)})


def _check_weight_axis(
    index: GraphIndex, layer: onnx.NodeProto, dq: onnx.NodeProto, chain: Sequence[onnx.NodeProto]
) -> list[Violation]:
    """TensorRT: per-channel weight scales lie on the output-channel axis, one value per output channel."""
    params = index.params(dq)
    if is_per_tensor(params) is not False or not index.is_weight_qdq(dq):
        return []
    if any(n.op_type not in ("Identity", "Transpose") for n in chain):
        return []  # a reshape between weight and layer: the axis cannot be mapped back
    weight = index.weight_constant(dq)
    shape = weight.value.shape if weight is not None and weight.value is not None else None
    rank = len(shape) if shape is not None else None
    expected = _expected_weight_axis(layer, rank)
    if expected is None:
        return []
    # Map the layer's output-channel axis back through the Transposes to the axis of the DQ's output.
    for node in chain:
        if node.op_type != "Transpose":
            continue
        perm = ints_attr(node, "perm")
        if perm is None:
            if rank is None:
                return []
            perm = list(reversed(range(rank)))
        expected = normalize_axis(expected, len(perm))
        if not 0 <= expected < len(perm):
            return []
        expected = perm[expected]
    expected = normalize_axis(expected, rank)
    actual = normalize_axis(params.axis, rank)
    value = params.scale.value if params.scale is not None else None
    size = int(value.size) if value is not None else 0
    where = f"{layer.op_type} {index.label(layer)!r}"
    weight_name = index.weight_name(dq)
    via = " of the stored weight, mapped through Transpose" if any(n.op_type == "Transpose" for n in chain) else ""
    if actual != expected:
        return [
            Violation(
                "weight-axis",
                index.label(dq),
                dq.op_type,
                f"weight {weight_name!r} of {where} is quantized per channel on axis {params.axis}; TensorRT "
                f"needs the output-channel axis {expected}{via} ({COMPUTE_OPS[layer.op_type].weight_layout})",
                weight_name,
            )
        ]
    if shape is not None and 0 <= expected < len(shape) and size != shape[expected]:
        return [
            Violation(
                "weight-scale-size",
                index.label(dq),
                dq.op_type,
                f"weight {weight_name!r} of {where} has {shape[expected]} output channels on axis {expected} "
                f"but its scale has {size} values; TensorRT needs one scale per output channel",
                params.scale_name,
            )
        ]
    return []


def layer_inputs(
    index: GraphIndex, layer: onnx.NodeProto
) -> tuple[onnx.NodeProto | None, onnx.NodeProto | None, list[onnx.NodeProto]]:
    """The DequantizeLinear behind the data input and behind the weight (None if absent), and the nodes
    between the weight's DequantizeLinear and the layer."""
    data_src = index.source_node(layer.input[0], SHAPE_ONLY_OPS)
    weight_name, chain = index.trace_back(layer.input[1], SHAPE_ONLY_OPS)
    weight_src = index.producer.get(weight_name)
    data_dq = data_src if index.is_op(data_src, DQ) else None
    weight_dq = weight_src if index.is_op(weight_src, DQ) else None
    return data_dq, weight_dq, chain


def _is_qdq(node: onnx.NodeProto) -> bool:
    return (
        node.op_type in (Q, DQ)
        and node.domain in ONNX_DOMAINS
        and len(node.input) >= 2
        and bool(node.input[0])
        and bool(node.input[1])
        and bool(node.output)
    )


def is_compute_layer(node: onnx.NodeProto) -> bool:
    return (
        node.op_type in QUANTIZED_OP_TYPES
        and node.domain in ONNX_DOMAINS
        and len(node.input) >= 2
        and bool(node.input[0])
        and bool(node.input[1])
    )


def _check_layer(index: GraphIndex, layer: onnx.NodeProto) -> list[Violation]:
    """TensorRT: Conv/ConvTranspose/MatMul/Gemm run in INT8 only with both data input and weight dequantized."""
    data_dq, weight_dq, chain = layer_inputs(index, layer)
    label, op = index.label(layer), layer.op_type
    if data_dq is not None and weight_dq is not None:
        return _check_weight_axis(index, layer, weight_dq, chain)
    if data_dq is not None:
        weight = layer.input[1]
        if index.is_constant_expr(weight):
            return [
                Violation(
                    "weight-qdq-missing",
                    label,
                    op,
                    f"data input {layer.input[0]!r} is quantized but weight {weight!r} is a float constant "
                    "without QuantizeLinear/DequantizeLinear; TensorRT runs the layer in INT8 only when the "
                    "weight is quantized too — add weight QDQ (int8, per channel on the output-channel axis)",
                    weight,
                )
            ]
        return [
            Violation(
                "input-qdq-missing",
                label,
                op,
                f"input 0 {layer.input[0]!r} is quantized but input 1 {weight!r} is not; TensorRT runs the "
                "layer in INT8 only when both inputs come from DequantizeLinear — add QuantizeLinear/"
                "DequantizeLinear (int8, per tensor) on input 1",
                weight,
            )
        ]
    if weight_dq is not None:
        return [
            Violation(
                "input-qdq-missing",
                label,
                op,
                f"weight {layer.input[1]!r} is quantized but data input {layer.input[0]!r} is not; TensorRT "
                "runs the layer in INT8 only when the data input comes from DequantizeLinear too — add "
                "QuantizeLinear/DequantizeLinear (int8, per tensor) on the data input",
                layer.input[0],
            )
        ]
    return []  # neither input quantized: the layer runs in float by choice


# --------------------------------------------------------------------------------------------------------------
# Public API


def check_qdq_placement(model: onnx.ModelProto | str | os.PathLike[str]) -> list[Violation]:
    """Check a QDQ ONNX model against TensorRT's explicit-quantization rules.

    Args:
        model: a loaded ``onnx.ModelProto`` or the path of an ``.onnx`` file.

    Returns:
        The violations in graph order (empty when the graph is TensorRT-ready). Rule ids are the keys of
        :data:`RULES`.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the path is a directory or the file is not a valid ONNX model.
        TypeError: ``model`` is neither a ModelProto nor a path.
    """
    index = GraphIndex(load_onnx_model(model).graph)
    found: list[Violation] = []
    for node in index.nodes:
        if _is_qdq(node):
            found += _check_zero_point(index, node)
            found += _check_scale(index, node)
            found += _check_activation_granularity(index, node)
            found += _check_q_consumers(index, node) if node.op_type == Q else _check_pair(index, node)
        elif is_compute_layer(node):
            found += _check_layer(index, node)
    # A weight DequantizeLinear shared by several layers is reported once (the first layer names it).
    unique: dict[tuple[str, str, str | None], Violation] = {}
    for violation in found:
        unique.setdefault((violation.rule, violation.node, violation.tensor), violation)
    return list(unique.values())


def summarize_qdq(model: onnx.ModelProto | str | os.PathLike[str]) -> dict[str, Any]:
    """Count the Q/DQ nodes and the quantized compute layers of a model.

    A Conv/ConvTranspose/MatMul/Gemm counts as quantized when both its data input and its weight come from
    DequantizeLinear (through Identity and shape-only ops), i.e. when TensorRT can run it in INT8.

    Returns:
        ``{"quantize_linear": int, "dequantize_linear": int,
        "quantized_ops": {op_type: int}, "quantized_op_count": int,
        "float_ops": {op_type: int}, "float_op_count": int}`` — ``float_ops`` are the compute layers that
        stay in floating point (at most one input quantized).
    """
    index = GraphIndex(load_onnx_model(model).graph)
    quantized = dict.fromkeys(QUANTIZED_OP_TYPES, 0)
    floating = dict.fromkeys(QUANTIZED_OP_TYPES, 0)
    for layer in filter(is_compute_layer, index.nodes):
        data_dq, weight_dq, _ = layer_inputs(index, layer)
        if data_dq is not None and weight_dq is not None:
            quantized[layer.op_type] += 1
        else:
            floating[layer.op_type] += 1
    return {
        "quantize_linear": len(index.nodes_of(Q)),
        "dequantize_linear": len(index.nodes_of(DQ)),
        "quantized_ops": quantized,
        "quantized_op_count": sum(quantized.values()),
        "float_ops": floating,
        "float_op_count": sum(floating.values()),
    }


def _rule_counts(violations: Iterable[Violation]) -> dict[str, int]:
    counts = Counter(v.rule for v in violations)
    ordered = {rule: counts.pop(rule, 0) for rule in RULES}
    ordered.update(sorted(counts.items()))  # rule ids this module does not know, if a caller adds any
    return ordered


def format_violations(violations: Sequence[Violation], summary: Mapping[str, Any] | None = None) -> str:
    """Render violations as an aligned plain-text table followed by a one-line summary.

    Args:
        violations: as returned by :func:`check_qdq_placement`.
        summary: optionally the :func:`summarize_qdq` result of the same model, for the quantized-op count.

    Returns:
        ``"no violations: N quantized ops checked"`` when ``violations`` is empty, else the table.
    """
    checked = f"{summary['quantized_op_count']} quantized ops checked" if summary is not None else None
    if not violations:
        return f"no violations: {checked}" if checked else "no violations"
    header = ("RULE", "NODE", "OP", "TENSOR", "MESSAGE")
    rows = [(v.rule, v.node, v.op_type, v.tensor or "-", v.message) for v in violations]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]

    def line(row: Sequence[str]) -> str:
        return "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]).rstrip()

    by_rule = ", ".join(f"{rule} {n}" for rule, n in _rule_counts(violations).items() if n)
    total = f"{len(violations)} violation{'s' if len(violations) != 1 else ''} ({by_rule})"
    lines = [line(header), line(["-" * w for w in widths] + ["-" * len(header[-1])])]
    lines += [line(row) for row in rows]
    lines.append(f"{total}; {checked}" if checked else total)
    return "\n".join(lines)


def violations_to_dict(
    violations: Sequence[Violation],
    summary: Mapping[str, Any] | None = None,
    *,
    model_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Return violations and counts as a JSON-ready dict.

    Layout: ``{"model": path | None, "ok": bool, "summary": {"violations": int, "by_rule": {rule: int, ...},
    "quantize_linear": int, "dequantize_linear": int, "quantized_op_count": int, "quantized_ops": {...},
    ...}, "violations": [Violation.to_dict(), ...]}``. ``by_rule`` lists every rule id, with 0 when clean;
    the Q/DQ counts come from ``summary`` (a :func:`summarize_qdq` result) when given.
    """
    block: dict[str, Any] = {"violations": len(violations), "by_rule": _rule_counts(violations)}
    if summary is not None:
        block.update(summary)
    return {
        "model": os.fspath(model_path) if model_path is not None else None,
        "ok": not violations,
        "summary": block,
        "violations": [v.to_dict() for v in violations],
    }


def violations_to_json(
    violations: Sequence[Violation],
    summary: Mapping[str, Any] | None = None,
    *,
    model_path: str | os.PathLike[str] | None = None,
    indent: int | None = 2,
) -> str:
    """Return :func:`violations_to_dict` serialized as JSON."""
    return json.dumps(violations_to_dict(violations, summary, model_path=model_path), indent=indent)
