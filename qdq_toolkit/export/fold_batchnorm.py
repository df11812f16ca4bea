"""Fold the BatchNormalization that Keras 3 leaves after a convolution into the convolution itself.

Keras 3's ``BatchNormalization`` reaches ONNX (through tf2onnx) as ``Conv -> Mul(a) -> Add(b)`` with per-channel
constants ``a = gamma / sqrt(var + eps)`` and ``b = beta - mean * a`` (never a BatchNormalization node, never
folded; see DESIGN.md, "Facts checked for the second round"). ONNX Runtime forms no QLinearConv through the
``Mul``/``Add`` (its Conv selector, ``qdq_selectors.cc`` ``ConvNodeGroupSelector``, wants the Q right after the
Conv), so the CPU target folds them first. TensorRT folds it for a Conv but has no Q/DQ ConvTranspose + BatchNorm
fusion (NVIDIA/TensorRT#3412), so the TensorRT target folds on request (``keras_to_onnx(..., fold_batchnorm=True)``,
``--fold-batchnorm``). :func:`fold_batchnorm` works on any ``onnx.ModelProto`` (it does not know about targets).

What is folded: a ``Conv`` or ``ConvTranspose`` whose output's only consumer is a ``Mul`` or ``Add`` by a constant
with one value per output channel (shape ``(C,)`` broadcast as ``(1, C, 1, 1)``, or a scalar), repeatedly, so
``Conv -> Mul -> Add`` becomes one ``Conv`` with a bias. The output channel is axis 0 of a Conv weight
``(M, C/group, kH, kW)`` and axis 1 of a ConvTranspose weight ``(C, M/group, kH, kW)``, the axes of TensorRT's
per-channel weight scales (:func:`qdq_toolkit.tensorrt_rules.weight_axis`). A ConvTranspose with ``group`` > 1 is
left alone: its output channel ``g * (M/group) + j`` is not one slice along axis 1, so the factors could not move
into axis-1 scales (the ``batchnorm-not-fused`` warning of the predictor then stays). The weight can be

* a float initializer (an FP32 model): ``W' = W * a`` per output channel;
* ``DequantizeLinear(int8 initializer)`` or ``DequantizeLinear(QuantizeLinear(float initializer))`` with a
  per-channel (on the output-channel axis) or per-tensor scale and zero point 0 (a QDQ model). The weight is
  rewritten as ``DequantizeLinear(int8 initializer)``: the int8 values are those the original QuantizeLinear
  produces (``rint(W / s)``, saturated), and the factor moves into the scale: ``s'[c] = s[c] * |a[c]|`` and
  ``q'[c] = sign(a[c]) * q[c]``. The dequantized weight ``q' s' = q s a`` is the folded weight up to the float32
  rounding of one product, so the fold is exact for per-channel symmetric int8: no value leaves the int8 grid
  and a negative factor only flips the signs (the values stay in [-127, 127], narrow range). A channel whose
  factor is 0 gets weights 0 and keeps its scale (a scale must stay > 0). A per-tensor weight scale becomes a
  per-channel one.

The bias absorbs the constant terms: ``B' = B * a + b``. A convolution whose quantized weight holds -128 next to
a negative factor (not narrow range: the flipped value would not fit) is left alone, as is any pattern that
does not match exactly (a Mul/Add with other consumers, a non-constant operand, a per-element constant).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qdq_toolkit.export.graph_index import GraphIndex, attribute, constant_array
from qdq_toolkit.tensorrt_rules import weight_axis

__all__ = ["fold_batchnorm"]

_AFFINE_OPS = ("Mul", "Add")
_CONV_OPS = ("Conv", "ConvTranspose")


def _channel_vector(value: np.ndarray | None, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as one float per output channel, if it broadcasts as a per-channel constant over a Conv output
    of rank ``rank`` (N, C, spatial...): a scalar, or C on the channel axis and 1 everywhere else."""
    if value is None or not np.issubdtype(value.dtype, np.floating):
        return None
    if value.size == 1:
        return np.full(channels, float(value.reshape(())), dtype=np.float64)
    shape = value.shape
    channel_index = len(shape) - (rank - 1)  # the constant's axis that lines up with the output's axis 1
    if channel_index < 0 or shape[channel_index] != channels or value.size != channels:
        return None
    return value.reshape(channels).astype(np.float64)


def _along(vector: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """``vector`` shaped to broadcast along ``axis`` of an ``ndim``-dimensional weight."""
    return vector.reshape((1,) * axis + (-1,) + (1,) * (ndim - axis - 1))


class _Weight:
    """A convolution weight, read as float or as (int8 values, per-channel scale) along its output-channel axis
    ``axis`` (Conv 0, ConvTranspose 1: :func:`qdq_toolkit.tensorrt_rules.weight_axis`)."""

    def __init__(self, conv, initializers, made_by, consumers, axis: int):
        self.axis = axis
        self.float_weight = None
        self.quantized = None  # (q int8, scale per channel float64, dq node)
        name = conv.input[1]
        if name in initializers:
            self.float_weight = numpy_helper.to_array(initializers[name])
            return
        dq = made_by.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or len(consumers.get(name, [])) != 1:
            return
        scale = constant_array(dq.input[1], initializers, made_by)
        zero_point = constant_array(dq.input[2], initializers, made_by) if len(dq.input) > 2 and dq.input[2] else None
        if scale is None or (zero_point is not None and np.any(zero_point != 0)):
            return
        source = dq.input[0]
        if source in initializers:
            q = numpy_helper.to_array(initializers[source])
        else:
            quantizer = made_by.get(source)
            if quantizer is None or quantizer.op_type != "QuantizeLinear" or quantizer.input[0] not in initializers:
                return
            if len(consumers.get(source, [])) != 1 or quantizer.input[1] != dq.input[1]:
                return
            weight = numpy_helper.to_array(initializers[quantizer.input[0]]).astype(np.float32)
            q_scale = scale.astype(np.float32)
            if q_scale.size > 1:
                q_scale = _along(q_scale, axis, weight.ndim)
            q = np.clip(np.rint(weight / q_scale), -128, 127).astype(np.int8)  # QuantizeLinear's own arithmetic
        if q.dtype != np.int8:
            return
        if q.ndim <= axis:
            return
        channels = q.shape[axis]
        dq_axis = attribute(dq, "axis", 1)
        if scale.size == 1:
            per_channel = np.full(channels, float(scale.reshape(())), dtype=np.float64)
        elif scale.size == channels and dq_axis in (axis, axis - q.ndim):
            per_channel = scale.astype(np.float64).reshape(channels)
        else:
            return
        self.quantized = (q, per_channel, dq)

    @property
    def usable(self) -> bool:
        return self.float_weight is not None or self.quantized is not None

    @property
    def array(self) -> np.ndarray:
        return self.float_weight if self.float_weight is not None else self.quantized[0]

    @property
    def channels(self) -> int:
        return self.array.shape[self.axis]


def _match(conv, initializers, made_by, consumers, graph_outputs):
    """``(affine node, weight, per-channel vector)`` when ``conv`` starts a foldable chain, else None."""
    if conv.op_type not in _CONV_OPS or conv.output[0] in graph_outputs:
        return None
    if conv.op_type == "ConvTranspose" and attribute(conv, "group", 1) != 1:
        return None  # output channel g * (C_out / group) + j: not one factor per weight slice along axis 1
    users = consumers.get(conv.output[0], [])
    if len(users) != 1 or users[0].op_type not in _AFFINE_OPS or len(users[0].input) != 2:
        return None
    affine = users[0]
    other = [name for name in affine.input if name != conv.output[0]]
    if len(other) != 1:
        return None
    bias_name = conv.input[2] if len(conv.input) > 2 else ""
    if bias_name and bias_name not in initializers:
        return None  # a computed bias: not ours to fold
    weight = _Weight(conv, initializers, made_by, consumers, weight_axis(conv.op_type, None))
    if not weight.usable:
        return None
    rank = weight.array.ndim
    vector = _channel_vector(constant_array(other[0], initializers, made_by), weight.channels, rank)
    if vector is None:
        return None
    if affine.op_type == "Mul" and weight.quantized is not None:
        flipped = np.take(weight.quantized[0], np.flatnonzero(vector < 0), axis=weight.axis)
        if np.any(flipped == -128):
            return None  # -(-128) does not fit in int8
    return affine, weight, vector


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold every ``Conv/ConvTranspose -> Mul/Add by per-channel constants`` chain of ``model`` into the
    convolution, in place (a ConvTranspose only with ``group`` 1).

    Returns the number of Mul/Add nodes folded away. The folded Conv writes the last folded node's output
    tensor, so consumers and graph outputs keep their names.
    """
    graph = model.graph
    folded = 0
    while True:
        index = GraphIndex(graph)
        initializers, made_by, consumers = index.initializers, index.producer, index.consumers
        graph_outputs = index.graph_outputs
        for conv in graph.node:
            match = _match(conv, initializers, made_by, consumers, graph_outputs)
            if match is not None:
                _fold_one(graph, conv, *match, initializers, made_by)
                folded += 1
                break
        else:
            break
    if folded:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        for node in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.output[0] not in used]:
            graph.node.remove(node)  # the weight quantizers whose int8 values were taken over
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        keep = [init for init in graph.initializer if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return folded


def _replace_initializer(graph, array: np.ndarray, name: str) -> str:
    for init in list(graph.initializer):
        if init.name == name:
            graph.initializer.remove(init)
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _fold_one(graph, conv, affine, weight: _Weight, vector: np.ndarray, initializers, made_by) -> None:
    channels = weight.channels
    bias_name = conv.input[2] if len(conv.input) > 2 else ""
    bias = (
        numpy_helper.to_array(initializers[bias_name]).astype(np.float64)
        if bias_name
        else np.zeros(channels, dtype=np.float64)
    )
    prefix = (conv.name or conv.output[0]).replace("/", "_").replace(":", "_")
    if affine.op_type == "Add":
        new_bias = bias + vector
    else:
        new_bias = bias * vector
        if weight.float_weight is not None:
            factor = _along(vector, weight.axis, weight.float_weight.ndim)
            new_weight = (weight.float_weight.astype(np.float64) * factor).astype(weight.float_weight.dtype)
            conv.input[1] = _replace_initializer(graph, new_weight, f"{prefix}__bn_folded_weight")
        else:
            q, scale, dq = weight.quantized
            sign = _along(np.where(vector < 0, -1, 1).astype(np.int16), weight.axis, q.ndim)
            new_q = (q.astype(np.int16) * sign).astype(np.int8)
            new_q[np.broadcast_to(_along(vector == 0, weight.axis, q.ndim), q.shape)] = 0
            new_scale = np.where(vector == 0, scale, scale * np.abs(vector)).astype(np.float32)
            names = [
                _replace_initializer(graph, new_q, f"{prefix}__bn_folded_weight"),
                _replace_initializer(graph, new_scale, f"{prefix}__bn_folded_scale"),
                _replace_initializer(graph, np.zeros(channels, dtype=np.int8), f"{prefix}__bn_folded_zero_point"),
            ]
            del dq.input[:]
            dq.input.extend(names)
            del dq.attribute[:]
            dq.attribute.append(helper.make_attribute("axis", weight.axis))
    new_bias_name = _replace_initializer(graph, new_bias.astype(np.float32), f"{prefix}__bn_folded_bias")
    if len(conv.input) > 2:
        conv.input[2] = new_bias_name
    else:
        conv.input.append(new_bias_name)
    conv.output[0] = affine.output[0]
    graph.node.remove(affine)
