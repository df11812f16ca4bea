"""What TensorRT will run in INT8, and what in a QDQ ONNX graph splits its fusions: a predictor for any ONNX file.

For each Conv / ConvTranspose / MatMul / Gemm, :func:`predict_fusion` says the precision TensorRT runs it in (int8
only when both its data and weight inputs - or both activation inputs of an attention MatMul - come from int8
DequantizeLinear nodes; otherwise float, with the reason), which epilogue nodes fuse into it (bias, BatchNorm,
activation) and which residual Add. It reports what breaks a fusion as :class:`Finding` objects with a rule id
(:data:`FUSION_RULES`) and a severity: ``error`` (TensorRT rejects the graph or computes something else: every
:func:`~qdq_toolkit.export.checks.check_qdq_placement` violation) or ``warning`` (it runs, but slower).

The rules come from :mod:`qdq_toolkit.tensorrt_rules` (sources listed there). BatchNorm after a convolution, as
Keras 3 exports it (a Mul and an Add by per-channel constants between the Conv and its activation): TensorRT's
developer guide says "Batch normalization is fused with convolution and ReLU [...] no need to simulate BN-folding",
and NVIDIA ModelOpt's ``get_fusible_backbone`` (modelopt/onnx/quantization/graph_utils.py) lists
``Conv -> ConstMul -> BiasAdd -> Relu`` as a backbone TensorRT fuses, so a Conv's Mul/Add by constants is predicted
fused. For ConvTranspose the TensorRT team wrote "We have no support for Q/DQ + convTranspose + BN fusion yet"
(NVIDIA/TensorRT#3412, 2023): predicted not fused (a warning). Neither is verified on a GPU here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from qdq_toolkit.export.checks import (
    RULES,
    Violation,
    check_qdq_placement,
    format_violations,
    is_compute_layer,
    layer_inputs,
    load_onnx_model,
    summarize_qdq,
    violations_to_dict,
)
from qdq_toolkit.export.graph_index import DQ, GraphIndex, Q
from qdq_toolkit.tensorrt_rules import COMPUTE_OPS, EPILOGUE_STEPS, INT8, SHAPE_ONLY_OPS, is_activation

__all__ = [
    "FUSION_RULES",
    "Finding",
    "FusionReport",
    "Prediction",
    "check_report",
    "keras_layer_name",
    "predict_fusion",
]

ERROR = "error"
WARNING = "warning"
NOT_VERIFIED = "not verified on a GPU here"

#: Rule id -> (severity, what the rule demands). The placement rules of :data:`checks.RULES` are all errors.
FUSION_RULES: dict[str, tuple[str, str]] = {
    **{rule: (ERROR, text) for rule, text in RULES.items()},
    "qdq-before-epilogue": (
        WARNING,
        "No Q/DQ between a compute op and its bias / BatchNorm / activation: TensorRT then runs the epilogue as a "
        "separate kernel instead of fusing it.",
    ),
    "batchnorm-not-fused": (
        WARNING,
        "TensorRT has no Q/DQ ConvTranspose + BatchNorm fusion (NVIDIA/TensorRT#3412): fold the BatchNorm into the "
        "kernel: export with --fold-batchnorm / fold_batchnorm=True.",
    ),
    "residual-branch-qdq": (
        WARNING,
        "A residual Add fuses into the convolution producing one input only when that input has no Q/DQ: keep the "
        "Q/DQ on the other input (the shortcut) only.",
    ),
    "residual-input-not-quantized": (
        WARNING,
        "The other input of a residual Add fused into an INT8 convolution must be quantized, or the fused kernel "
        "writes float.",
    ),
    "concat-scales-differ": (
        WARNING,
        "Every input of an int8 Concat must carry the same scale (tensorrt_rules.SCALE_SHARING_OPS), or TensorRT "
        "requantizes each input before writing the concatenation.",
    ),
    "redundant-qdq": (
        WARNING,
        "A DequantizeLinear feeding a QuantizeLinear with the same scale requantizes to the same values: remove the "
        "second pair.",
    ),
    "requantization": (
        WARNING,
        "A Q -> DQ -> Q chain with different scales makes TensorRT requantize in a separate kernel and round twice: "
        "give the tensor one quantizer.",
    ),
}

INT8_PRECISION = "int8"
FLOAT_PRECISION = "float"
_KERAS_SCOPE = re.compile(r"^(?P<name>.+)_\d+$")


@dataclass(frozen=True)
class Finding:
    """One thing that makes TensorRT reject a graph (``error``) or run it slower (``warning``).

    Attributes:
        rule: a key of :data:`FUSION_RULES`.
        node: the node concerned (``<unnamed OpType #i>`` when it has no name).
        severity: ``"error"`` or ``"warning"``.
        message: what is wrong and what TensorRT needs instead.
        op_type: that node's ONNX op.
        tensor: the tensor concerned, when there is one.
        keras_layer: the Keras layer the node came from, when the graph came from Keras.
    """

    rule: str
    node: str
    severity: str
    message: str
    op_type: str = ""
    tensor: str | None = None
    keras_layer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The finding as a JSON-ready dict (``keras_layer`` only when known)."""
        data = asdict(self)
        if data["keras_layer"] is None:
            del data["keras_layer"]
        return data


@dataclass(frozen=True)
class Prediction:
    """How TensorRT is expected to run one compute op.

    Attributes:
        node / op_type: the compute op.
        precision: ``"int8"`` or ``"float"``.
        reason: why (which inputs are or are not dequantized int8).
        epilogue: the nodes predicted fused into its kernel after it (bias, BatchNorm, activation), in order.
        residual_add: the residual Add predicted fused into it, if any.
        output: ``"int8"`` when the fused kernel's output goes straight into a QuantizeLinear, else ``"float"``.
        keras_layer: the Keras layer, when the graph came from Keras.
    """

    node: str
    op_type: str
    precision: str
    reason: str
    epilogue: tuple[str, ...] = ()
    residual_add: str | None = None
    output: str = FLOAT_PRECISION
    keras_layer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The prediction as a JSON-ready dict."""
        data = asdict(self)
        data["epilogue"] = list(self.epilogue)
        if data["keras_layer"] is None:
            del data["keras_layer"]
        return data


@dataclass(frozen=True)
class FusionReport:
    """Predictions for every compute op and the findings of one graph (see :func:`predict_fusion`)."""

    predictions: tuple[Prediction, ...]
    findings: tuple[Finding, ...]
    residual_adds: int = 0
    residual_adds_fused: int = 0
    notes: tuple[str, ...] = field(default=())
    violations: tuple[Violation, ...] = field(default=())

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    def counts(self) -> dict[str, Any]:
        """INT8/total per op family, fused/total residual Adds, findings by severity."""
        conv = [p for p in self.predictions if p.op_type in ("Conv", "ConvTranspose")]
        gemm = [p for p in self.predictions if p.op_type in ("MatMul", "Gemm")]
        return {
            "convolutions": len(conv),
            "convolutions_int8": sum(p.precision == INT8_PRECISION for p in conv),
            "matmuls": len(gemm),
            "matmuls_int8": sum(p.precision == INT8_PRECISION for p in gemm),
            "residual_adds": self.residual_adds,
            "residual_adds_fused": self.residual_adds_fused,
            "findings": len(self.findings),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
        }

    def summary_line(self) -> str:
        """``"52/53 convolutions INT8, 16/16 residual Adds fused, 0 findings"`` (MatMul/Gemm when there are any)."""
        c = self.counts()
        parts = [f"{c['convolutions_int8']}/{c['convolutions']} convolutions INT8"]
        if c["matmuls"]:
            parts.append(f"{c['matmuls_int8']}/{c['matmuls']} MatMul/Gemm INT8")
        parts.append(f"{c['residual_adds_fused']}/{c['residual_adds']} residual Adds fused")
        findings = f"{c['findings']} finding{'s' if c['findings'] != 1 else ''}"
        if c["findings"]:
            findings += f" ({c['errors']} errors, {c['warnings']} warnings)"
        parts.append(findings)
        return ", ".join(parts)

    def format_findings(self, severities: Sequence[str] = (ERROR, WARNING)) -> str:
        """The findings of the given severities as an aligned table (empty string when there are none)."""
        rows = [
            (f.severity, f.rule, f.node, f.keras_layer or "-", f.message) for f in self.findings if f.severity in severities
        ]
        return _table(("SEVERITY", "RULE", "NODE", "KERAS LAYER", "MESSAGE"), rows)

    def format_predictions(self) -> str:
        """One line per compute op: precision, fused epilogue and residual Add, output precision, reason."""
        rows = [
            (
                p.node,
                p.keras_layer or "-",
                p.op_type,
                p.precision.upper(),
                " + ".join(p.epilogue) or "-",
                p.residual_add or "-",
                p.output.upper(),
                p.reason,
            )
            for p in self.predictions
        ]
        return _table(("NODE", "KERAS LAYER", "OP", "PRECISION", "EPILOGUE", "RESIDUAL ADD", "OUTPUT", "REASON"), rows)

    def to_dict(self) -> dict[str, Any]:
        """``{"fusion_summary": counts, "findings": [...], "predictions": [...], "notes": [...]}``."""
        return {
            "fusion_summary": {**self.counts(), "line": self.summary_line()},
            "findings": [f.to_dict() for f in self.findings],
            "predictions": [p.to_dict() for p in self.predictions],
            "notes": list(self.notes),
        }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]

    def line(row: Sequence[str]) -> str:
        cells = [str(cell).ljust(w) for cell, w in zip(row, widths, strict=False)]
        return "  ".join([*cells, str(row[-1])]).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths] + ["-" * len(header[-1])]), *map(line, rows)])


def keras_layer_name(node_name: str) -> str | None:
    """The Keras layer an ONNX node came from, or None when the name is not a Keras 3 scope.

    Keras 3 scopes every op as ``<model>_1/<layer>_1/...``; a QDQ wrapper is ``quant_<layer>``, so the layer the
    user named is returned without that prefix.
    """
    parts = node_name.split("/")
    if len(parts) < 3 or not _KERAS_SCOPE.match(parts[0]):
        return None
    match = _KERAS_SCOPE.match(parts[1])
    if match is None:
        return None
    name = match["name"]
    return name.removeprefix("quant_") or name


# ------------------------------------------------------------------------------------------------- analysis
class _Analysis:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.index = GraphIndex(model.graph)
        self.findings: list[Finding] = []
        self.has_qdq = any(self.index.is_op(n, DQ) for n in self.index.nodes)
        self.branch_end: dict[str, onnx.NodeProto] = {}  # tensor ending a fusible epilogue -> its compute op
        self.int8: dict[int, bool] = {}

    def finding(self, rule: str, node: onnx.NodeProto, message: str, tensor: str | None = None) -> None:
        label = self.index.label(node)
        self.findings.append(
            Finding(rule, label, FUSION_RULES[rule][0], message, node.op_type, tensor, keras_layer_name(node.name))
        )

    # -- precision -------------------------------------------------------------------------------------------
    def _is_int8(self, dq: onnx.NodeProto) -> bool:
        return self.index.params(dq).quant_dtype in (INT8.onnx_dtype, 0) and self._zero_point_ok(dq)

    def _zero_point_ok(self, dq: onnx.NodeProto) -> bool:
        zp = self.index.params(dq).zero_point
        return zp is None or zp.value is None or not np.any(zp.value != 0)

    def precision(self, op: onnx.NodeProto) -> tuple[str, str]:
        data_dq, weight_dq, _ = layer_inputs(self.index, op)
        weight = op.input[1]
        attention = COMPUTE_OPS[op.op_type].activation_weight and not self.index.is_constant_expr(weight)
        second = "second activation input" if attention else "weight"
        if data_dq is None and weight_dq is None:
            behind_cast = self.index.source_node(op.input[0], SHAPE_ONLY_OPS | {"Cast"})
            if self.index.is_op(behind_cast, DQ):
                return FLOAT_PRECISION, (
                    "its inputs reach it from DequantizeLinear through a Cast (an fp16 export at an opset whose "
                    f"DequantizeLinear returns float32): whether TensorRT fuses DQ -> Cast -> {op.op_type} is "
                    f"{NOT_VERIFIED}"
                )
            return FLOAT_PRECISION, "no Q/DQ on its inputs"
        if data_dq is None:
            return FLOAT_PRECISION, f"{second} is dequantized but the data input {op.input[0]!r} is not"
        if weight_dq is None:
            return FLOAT_PRECISION, f"data input is dequantized but the {second} {weight!r} is not"
        if not (self._is_int8(data_dq) and self._is_int8(weight_dq)):
            return FLOAT_PRECISION, "its inputs are dequantized from a type other than int8 with zero point 0"
        if attention:
            return INT8_PRECISION, "attention MatMul: both activation inputs are dequantized int8"
        return INT8_PRECISION, "data and weight inputs are dequantized int8"

    # -- epilogue --------------------------------------------------------------------------------------------
    def _single_consumer(self, tensor: str) -> onnx.NodeProto | None:
        consumers = self.index.consumers.get(tensor, [])
        if len(consumers) != 1 or tensor in self.index.graph_outputs:
            return None
        return consumers[0]

    def is_constant(self, name: str) -> bool:
        """A constant, or a dequantized constant (a quantized bias or weight: still a build-time value)."""
        if self.index.is_constant_expr(name):
            return True
        dq = self._dequantized(name)
        return dq is not None and self.index.is_weight_qdq(dq)

    def _others_constant(self, node: onnx.NodeProto, tensor: str) -> bool:
        others = [name for name in node.input if name and name != tensor]
        return bool(others) and all(self.is_constant(name) for name in others)

    def _epilogue_step(self, node: onnx.NodeProto, tensor: str) -> str | None:
        """The epilogue step ``node`` is when it reads ``tensor`` (``bias``, ``batchnorm``, ``activation``)."""
        if not self.index.is_op(node, node.op_type):
            return None
        if node.op_type == "BatchNormalization" and node.input[0] == tensor:
            return "batchnorm"
        if node.op_type in EPILOGUE_STEPS["batchnorm"] and self._others_constant(node, tensor):
            return "bias" if node.op_type == "Add" else "batchnorm"
        if is_activation(node.op_type) and node.input[0] == tensor and self._others_constant_or_none(node, tensor):
            return "activation"
        return None

    def _others_constant_or_none(self, node: onnx.NodeProto, tensor: str) -> bool:
        others = [name for name in node.input[1:] if name]
        return all(self.is_constant(name) for name in others)

    def _swish(self, tensor: str) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
        """``Mul(t, Sigmoid(t))`` reading ``tensor``: the Sigmoid and the Mul."""
        consumers = self.index.consumers.get(tensor, [])
        if len(consumers) != 2 or tensor in self.index.graph_outputs:
            return None
        sigmoid = next((n for n in consumers if n.op_type == "Sigmoid"), None)
        mul = next((n for n in consumers if n.op_type == "Mul"), None)
        if sigmoid is None or mul is None or self._single_consumer(sigmoid.output[0]) is not mul:
            return None
        return (sigmoid, mul) if set(mul.input) == {tensor, sigmoid.output[0]} else None

    def epilogue(self, op: onnx.NodeProto) -> tuple[list[onnx.NodeProto], str, bool]:
        """The fused epilogue nodes, the tensor after them, and whether a Q reads that tensor."""
        spec = COMPUTE_OPS[op.op_type]
        tensor, fused = op.output[0], []
        while True:
            swish = self._swish(tensor)
            if swish is not None:
                fused += swish
                tensor = swish[1].output[0]
                continue
            nxt = self._single_consumer(tensor)
            if nxt is None:
                break
            step = self._epilogue_step(nxt, tensor)
            if step == "batchnorm" and not spec.fuses_batchnorm:
                self.finding(
                    "batchnorm-not-fused",
                    nxt,
                    f"{nxt.op_type} {self.index.label(nxt)!r} after {op.op_type} {self.index.label(op)!r} is a "
                    "BatchNorm (by per-channel constants); TensorRT has no Q/DQ ConvTranspose + BatchNorm fusion "
                    f"(NVIDIA/TensorRT#3412), so it runs as a separate kernel ({NOT_VERIFIED}). Fold the BatchNorm "
                    "into the kernel: export with --fold-batchnorm / fold_batchnorm=True (group-1 ConvTranspose).",
                )
                break
            if step is None:
                break
            fused.append(nxt)
            tensor = nxt.output[0]
        consumer = self._single_consumer(tensor)
        if consumer is not None and self.index.is_op(consumer, Q):
            self._check_qdq_before_epilogue(op, consumer)
            return fused, tensor, True
        return fused, tensor, False

    def _check_qdq_before_epilogue(self, op: onnx.NodeProto, q: onnx.NodeProto) -> None:
        dqs = [n for n in self.index.consumers.get(q.output[0], []) if self.index.is_op(n, DQ)]
        for dq in dqs:
            for user in self.index.consumers.get(dq.output[0], []):
                step = self._epilogue_step(user, dq.output[0])
                if step is not None or self._swish(dq.output[0]) is not None:
                    what = step or "activation"
                    self.finding(
                        "qdq-before-epilogue",
                        q,
                        f"QuantizeLinear {self.index.label(q)!r} quantizes the output of {op.op_type} "
                        f"{self.index.label(op)!r} before its {what} {user.op_type} {self.index.label(user)!r}: "
                        "TensorRT runs that epilogue as a separate kernel. Quantize the input of the next compute "
                        "op instead (after the activation).",
                        q.input[0],
                    )
                    return

    # -- residual Adds ---------------------------------------------------------------------------------------
    def _dequantized(self, tensor: str) -> onnx.NodeProto | None:
        source = self.index.source_node(tensor, SHAPE_ONLY_OPS)
        return source if self.index.is_op(source, DQ) else None

    def _quantized_branch(self, tensor: str) -> onnx.NodeProto | None:
        """The compute op whose fused-branch output reaches ``tensor`` through a Q/DQ pair, if any."""
        dq = self._dequantized(tensor)
        q = self.index.feeding_q(dq) if dq is not None else None
        if q is None:
            return None
        return self.branch_end.get(q.input[0])

    def activation_tail(self, tensor: str) -> tuple[list[onnx.NodeProto], bool]:
        """The activations fused after a residual Add reading ``tensor``, and whether a Q reads their output."""
        tail: list[onnx.NodeProto] = []
        while True:
            swish = self._swish(tensor)
            nxt = self._single_consumer(tensor)
            if swish is not None:
                tail += swish
                tensor = swish[1].output[0]
            elif nxt is not None and self._epilogue_step(nxt, tensor) == "activation":
                tail.append(nxt)
                tensor = nxt.output[0]
            else:
                return tail, nxt is not None and self.index.is_op(nxt, Q)

    def residual_adds(self, fused_into: dict[int, tuple[str, list[onnx.NodeProto], bool]]) -> tuple[int, int]:
        total = fused = 0
        for add in self.index.nodes_of("Add"):
            inputs = [name for name in add.input if name]
            if len(inputs) < 2 or any(self.is_constant(name) for name in inputs):
                continue
            direct = [(i, self.branch_end[name]) for i, name in enumerate(inputs) if name in self.branch_end]
            direct = [(i, op) for i, op in direct if COMPUTE_OPS[op.op_type].fuses_residual]
            behind_qdq = [(i, op) for i, name in enumerate(inputs) if (op := self._quantized_branch(name)) is not None]
            if not direct and not behind_qdq:
                continue  # not a residual Add of a convolution
            total += 1
            label = self.index.label(add)
            if not direct:
                i, op = behind_qdq[0]
                self.finding(
                    "residual-branch-qdq",
                    add,
                    f"input {i} of Add {label!r} is the output of {op.op_type} {self.index.label(op)!r} (through its "
                    "epilogue) behind a Q/DQ pair, and no input is left unquantized: TensorRT cannot fuse the Add "
                    "into that convolution. Remove the Q/DQ from the convolution branch; keep it on the shortcut.",
                    inputs[i],
                )
                continue
            chosen = next(((i, op) for i, op in direct if self.int8.get(id(op))), direct[-1])
            i_fused, op_fused = chosen
            if not self.int8.get(id(op_fused)):
                continue  # a float convolution: nothing is lost in int8 terms
            missing = [i for i in range(len(inputs)) if i != i_fused and self._dequantized(inputs[i]) is None]
            if missing:
                self.finding(
                    "residual-input-not-quantized",
                    add,
                    f"Add {label!r} fuses into {op_fused.op_type} {self.index.label(op_fused)!r} (input {i_fused}) but "
                    f"input(s) {', '.join(map(str, missing))} are not quantized: the fused INT8 kernel then writes "
                    "float and the other branch stays float. Add Q/DQ (int8, per tensor) on the other input.",
                    inputs[missing[0]],
                )
                continue
            fused += 1
            fused_into[id(op_fused)] = (label, *self.activation_tail(add.output[0]))
        return total, fused

    # -- scale sharing ---------------------------------------------------------------------------------------
    def concat_scales(self) -> None:
        for concat in self.index.nodes_of("Concat"):
            dqs = [self._dequantized(name) for name in concat.input if name]
            if len(dqs) < 2 or any(dq is None or self.index.is_weight_qdq(dq) for dq in dqs):
                continue
            scales = [self.index.params(dq).scale for dq in dqs]
            if any(scale is None or scale.value is None or scale.value.size != 1 for scale in scales):
                continue
            values = sorted({float(scale.value.reshape(-1)[0]) for scale in scales})
            if len(values) > 1:
                self.finding(
                    "concat-scales-differ",
                    concat,
                    f"the {len(dqs)} inputs of Concat {self.index.label(concat)!r} are dequantized with "
                    f"{len(values)} different scales ({', '.join(f'{v:g}' for v in values[:4])}): TensorRT "
                    "requantizes them to one scale before concatenating. Give every input the same quantizer.",
                )

    # -- Q/DQ chains -----------------------------------------------------------------------------------------
    def requantization(self) -> None:
        for q in self.index.nodes_of(Q):
            if len(q.input) < 2:
                continue
            dq = self._dequantized(q.input[0])
            if dq is None or self.index.is_weight_qdq(dq):
                continue
            first, second = self.index.params(dq), self.index.params(q)
            same = (
                first.scale is not None
                and second.scale is not None
                and first.scale.value is not None
                and second.scale.value is not None
                and np.array_equal(first.scale.value.reshape(-1), second.scale.value.reshape(-1))
            )
            rule = "redundant-qdq" if same else "requantization"
            what = "the same scale" if same else "a different scale"
            self.finding(
                rule,
                q,
                f"QuantizeLinear {self.index.label(q)!r} re-quantizes the output of DequantizeLinear "
                f"{self.index.label(dq)!r} with {what}: "
                + ("remove this second Q/DQ pair." if same else "TensorRT requantizes in a separate kernel and "
                   "rounds twice; quantize the tensor once."),
                q.input[0],
            )


def predict_fusion(model: onnx.ModelProto | str | os.PathLike[str]) -> FusionReport:
    """Predict TensorRT's precision and fusions for every compute op of a QDQ ONNX model, with the findings.

    Args:
        model: a loaded ``onnx.ModelProto`` or the path of an ``.onnx`` file.

    Returns:
        A :class:`FusionReport`: one :class:`Prediction` per Conv/ConvTranspose/MatMul/Gemm in graph order, and
        the findings: every :func:`~qdq_toolkit.export.checks.check_qdq_placement` violation as an ``error``, then
        the fusion findings (``warning``). Predictions are not verified on a GPU here.
    """
    proto = load_onnx_model(model)
    analysis = _Analysis(proto)
    index = analysis.index
    violations = check_qdq_placement(proto)
    for violation in violations:
        node = next((n for n in index.nodes if index.label(n) == violation.node), None)
        keras = keras_layer_name(node.name) if node is not None else None
        analysis.findings.append(
            Finding(violation.rule, violation.node, ERROR, violation.message, violation.op_type, violation.tensor, keras)
        )
    compute = [n for n in index.nodes if is_compute_layer(n) and index.is_op(n, n.op_type) and n.op_type in COMPUTE_OPS]
    partial: list[tuple[onnx.NodeProto, str, str, list[onnx.NodeProto], bool]] = []
    for op in compute:
        precision, reason = analysis.precision(op)
        analysis.int8[id(op)] = precision == INT8_PRECISION
        epilogue, end, quantized_out = analysis.epilogue(op)
        if analysis._single_consumer(end) is not None and not quantized_out:
            analysis.branch_end[end] = op
        elif quantized_out:
            analysis.branch_end[end] = op  # behind the Q: a residual Add reading it through Q/DQ is reported
        partial.append((op, precision, reason, epilogue, quantized_out))
    fused_into: dict[int, tuple[str, list[onnx.NodeProto], bool]] = {}
    total, fused = analysis.residual_adds(fused_into) if analysis.has_qdq else (0, 0)
    analysis.requantization()
    analysis.concat_scales()
    notes = []
    batchnorm_convs = 0
    predictions = []
    for op, precision, reason, epilogue, quantized_out in partial:
        residual, tail, tail_quantized = fused_into.get(id(op), (None, [], False))
        if residual is not None:  # the kernel ends after the Add and its activation
            epilogue, quantized_out = [*epilogue, *tail], tail_quantized
        if op.op_type == "Conv" and any(n.op_type == "Mul" and n not in tail for n in epilogue):
            batchnorm_convs += 1
        predictions.append(
            Prediction(
                node=index.label(op),
                op_type=op.op_type,
                precision=precision,
                reason=reason,
                epilogue=tuple(index.label(n) for n in epilogue),
                residual_add=residual,
                output=INT8_PRECISION if quantized_out and precision == INT8_PRECISION else FLOAT_PRECISION,
                keras_layer=keras_layer_name(op.name),
            )
        )
    if batchnorm_convs:
        notes.append(
            f"{batchnorm_convs} convolution(s) have a Mul/Add by constants in their epilogue (a Keras BatchNorm): "
            "predicted folded into the convolution (TensorRT guide: BN is fused with convolution and ReLU; ModelOpt's "
            f"get_fusible_backbone: Conv -> ConstMul -> BiasAdd -> Relu), {NOT_VERIFIED}."
        )
    return FusionReport(tuple(predictions), tuple(analysis.findings), total, fused, tuple(notes), tuple(violations))


def check_report(
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    model_path: str | os.PathLike[str] | None = None,
    as_json: bool = False,
    verbose: bool = False,
) -> tuple[str, FusionReport]:
    """The ``--check`` report of a model: text (or JSON) and the :class:`FusionReport` it was made from.

    The text is the placement table of :func:`~qdq_toolkit.export.checks.format_violations`, the fusion warnings,
    the notes, the per-layer predictions when ``verbose``, and the summary line. The JSON object keeps the keys of
    :func:`~qdq_toolkit.export.checks.violations_to_dict` and adds ``"findings"`` (errors and warnings, each with
    ``rule``, ``node``, ``severity``, ``message`` and ``keras_layer`` where known), ``"predictions"`` (per compute
    op: ``node``, ``op_type``, ``precision``, ``reason``, ``epilogue``, ``residual_add``, ``output``),
    ``"fusion_summary"`` and ``"notes"``.
    """
    proto = load_onnx_model(model)
    report = predict_fusion(proto)
    summary = summarize_qdq(proto)
    if as_json:
        data = violations_to_dict(list(report.violations), summary, model_path=model_path)
        data.update(report.to_dict())
        return json.dumps(data, indent=2), report
    parts = [format_violations(list(report.violations), summary)]
    warnings_table = report.format_findings((WARNING,))
    if warnings_table:
        parts.append(warnings_table)
    parts += [f"note: {note}" for note in report.notes]
    if verbose and report.predictions:
        parts.append(report.format_predictions())
    parts.append(report.summary_line())
    return "\n".join(parts), report
