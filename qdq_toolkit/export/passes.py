"""ONNX rewrite passes run on every export: Q/DQ moved to where TensorRT fuses them, names made stable, fp16.

* :func:`sink_qdq_below_shape_ops`: per-tensor quantizers below the shape-only ops tf2onnx leaves between a Q
  and its DQ or between a DQ and its compute op;
* :func:`fold_weight_shape_ops`: weight reshapes/transposes folded into the constant weight, so the weight DQ
  feeds the compute op directly, per channel on TensorRT's axis;
* :func:`convert_to_fp16`: float parts in float16, Q/DQ in float32;
* :func:`canonicalize_generated_names`: tf2onnx's generated names renumbered so exports are byte-identical;
* :func:`finalize`: all of the above plus the validity checks, in the order every export path uses.

Which ops are compute ops, their weight axes and the shape-only ops come from :mod:`qdq_toolkit.tensorrt_rules`;
the graph is read through :class:`qdq_toolkit.export.graph_index.GraphIndex`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import onnx
from onnx import helper, numpy_helper

from qdq_toolkit.export._common import ExportError
from qdq_toolkit.export.fold_batchnorm import fold_batchnorm
from qdq_toolkit.export.graph_index import DQ, GraphIndex, Q, is_per_tensor
from qdq_toolkit.tensorrt_rules import COMPUTE_OPS, SHAPE_ONLY_OPS, weight_axis

#: Ops ONNX Runtime's float16 converter must leave in float32: at opset 13, QuantizeLinear takes float32 input
#: and DequantizeLinear returns float32 (the type of its scale). Casts are inserted around them.
FP16_KEEP_FLOAT32_OPS = (Q, DQ)


def sink_qdq_below_shape_ops(model: onnx.ModelProto) -> int:
    """Move per-tensor quantizers below shape-only ops (Transpose, Reshape, ...) so each DequantizeLinear feeds
    its compute op directly. Returns the number of rewrites.

    tf2onnx puts layout Transposes/Reshapes (NHWC -> NCHW) between a quantizer and the Conv it belongs to, and its
    transpose optimizer can even push them between a QuantizeLinear and its DequantizeLinear. A per-tensor Q/DQ
    commutes exactly with any data movement, so the rewrites below change no value, and they give TensorRT the
    ``Q -> DQ -> Conv`` pattern its QDQ fusion matches:

    * ``Q -> S -> DQ``  becomes ``S -> Q -> DQ``;
    * ``Q -> DQ -> S -> op`` becomes ``S -> Q -> DQ -> op``.

    A zero-valued constant ``Pad`` after a DequantizeLinear (Conv1D's causal padding) moves the same way: QDQ(0) is
    0, so padding before or after the quantizer gives the same tensor.

    Per-channel (weight) quantizers are left alone: moving them would change their axis.
    """
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    rewrites = 0
    changed = True
    while changed:
        changed = False
        index = GraphIndex(graph)
        consumers, made_by = index.consumers, index.producer
        for node in graph.node:
            if node.op_type not in (Q, DQ) or is_per_tensor(index.params(node)) is not True:
                continue
            users = consumers.get(node.output[0], [])
            if node.op_type == "DequantizeLinear" and len(users) > 1:
                # A Shape op only reads the shape, which Q/DQ keeps: let it read the float tensor before Q.
                quantizer = made_by.get(node.input[0])
                for user in users:
                    if user.op_type == "Shape" and quantizer is not None:
                        user.input[0] = quantizer.input[0]
                users = [user for user in users if user.op_type != "Shape"]
            if len(users) != 1 or users[0].input[0] != node.output[0]:
                continue
            if users[0].op_type not in SHAPE_ONLY_OPS and not (
                node.op_type == "DequantizeLinear" and _is_zero_pad(users[0], index)
            ):  # a Pad between Q and DQ pads int8 values: left alone
                continue
            shape_op = users[0]
            if node.op_type == "QuantizeLinear":  # Q -> S -> DQ  =>  S -> Q -> DQ
                first = node
            else:  # Q -> DQ -> S  =>  S -> Q -> DQ, only for a private Q/DQ pair
                first = made_by.get(node.input[0])
                if first is None or first.op_type != "QuantizeLinear" or len(consumers.get(first.output[0], [])) != 1:
                    continue
            if node.output[0] in graph_outputs:
                continue
            source, result = first.input[0], shape_op.output[0]
            shape_op.input[0] = source
            shape_op.output[0] = f"{result}__before_qdq"
            first.input[0] = shape_op.output[0]
            node.output[0] = result  # Q: DQ now reads it; DQ: the op after S now reads it
            rewrites += 1
            changed = True
            break
        if changed:
            topological_sort(graph)
    return rewrites


def _is_zero_pad(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """A ``Pad`` in constant mode whose pad value is 0 (absent, or a constant equal to 0)."""
    if node.op_type != "Pad":
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("mode", b"constant") not in (b"constant", "constant"):
        return False
    if len(node.input) < 3 or not node.input[2]:
        return True
    value = index.constant(node.input[2])
    return value is not None and value.value is not None and bool((value.value == 0).all())


def _apply_shape_op(node: onnx.NodeProto, array, constants: dict):
    """NumPy version of a shape-only op whose extra inputs are constants (None if it cannot be done)."""
    import numpy as np

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Identity":
        return array
    if node.op_type == "Transpose":
        return np.transpose(array, attrs.get("perm"))
    if node.op_type == "Reshape":
        shape = constants.get(node.input[1])
        if shape is None:
            return None
        shape = [array.shape[i] if (d == 0 and not attrs.get("allowzero")) else int(d) for i, d in enumerate(shape)]
        return array.reshape(shape)
    if node.op_type in ("Squeeze", "Unsqueeze"):
        axes = constants.get(node.input[1]) if len(node.input) > 1 else attrs.get("axes")
        if axes is None:
            return np.squeeze(array) if node.op_type == "Squeeze" else None
        axes = tuple(int(a) for a in np.ravel(axes))
        return np.squeeze(array, axis=axes) if node.op_type == "Squeeze" else np.expand_dims(array, axes)
    if node.op_type == "Flatten":
        axis = attrs.get("axis", 1) % max(array.ndim, 1)
        return array.reshape(int(np.prod(array.shape[:axis])), -1)
    return None


def fold_weight_shape_ops(model: onnx.ModelProto) -> int:
    """Turn ``W -> Q -> DQ(axis a) -> Reshape/Transpose/... -> Conv`` into ``W' -> Q -> DQ(axis b) -> Conv``.

    tf2onnx quantizes the TensorFlow kernel layout (e.g. depthwise HWC1, Conv1D WIO) and then reshapes/transposes
    the dequantized weight into ONNX's layout. TensorRT wants the weight DequantizeLinear to feed the layer
    directly, per channel on its output-channel axis. Since the weight is a constant, the shape ops are applied to
    it (and to the per-element scales) ahead of time. The integer values and scales of every weight element are
    unchanged, so the rewrite is exact; a depthwise kernel with depth_multiplier > 1 gets each input channel's scale
    repeated for its output channels. Returns the number of weights folded.
    """
    import numpy as np

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    constants = {name: numpy_helper.to_array(init) for name, init in initializers.items()}
    folded = 0
    index = GraphIndex(graph)
    consumers, made_by = index.consumers, index.producer
    for op in list(graph.node):
        if op.op_type not in COMPUTE_OPS or len(op.input) < 2:
            continue
        chain, current = [], made_by.get(op.input[1])
        while current is not None and current.op_type in SHAPE_ONLY_OPS:
            chain.append(current)
            current = made_by.get(current.input[0])
        dq = current
        if not chain or dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = made_by.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in constants:
            continue
        if any(len(consumers.get(node.output[0], [])) != 1 for node in [q, dq, *chain]):
            continue
        weight, scale = constants[q.input[0]], constants.get(q.input[1])
        zero_point = constants.get(q.input[2]) if len(q.input) > 2 else None
        if scale is None or zero_point is None or scale.size == 1:
            continue
        axis = {a.name: a.i for a in q.attribute}.get("axis", 1) % weight.ndim
        shape = [1] * weight.ndim
        shape[axis] = -1
        element_scale = np.broadcast_to(scale.reshape(shape), weight.shape)
        new_weight, new_scale = weight, element_scale
        for node in reversed(chain):
            new_weight = _apply_shape_op(node, new_weight, constants)
            new_scale = _apply_shape_op(node, new_scale, constants)
            if new_weight is None:
                break
        if new_weight is None:
            continue
        new_axis = weight_axis(op.op_type, new_weight.ndim, {a.name: a.i for a in op.attribute})
        others = tuple(i for i in range(new_scale.ndim) if i != new_axis)
        new_channel_scale = new_scale.max(axis=others)
        if not np.array_equal(np.broadcast_to(np.expand_dims(new_channel_scale, others), new_scale.shape), new_scale):
            continue  # the scales do not line up with TensorRT's channel axis: leave the graph as it is
        prefix = q.name or q.output[0]
        weight_name, scale_name, zp_name = (f"{prefix}__folded_{kind}" for kind in ("weight", "scale", "zero_point"))
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(new_weight, dtype=weight.dtype), weight_name),
                numpy_helper.from_array(np.ascontiguousarray(new_channel_scale, dtype=scale.dtype), scale_name),
                numpy_helper.from_array(np.zeros(new_channel_scale.shape, dtype=zero_point.dtype), zp_name),
            ]
        )
        for node in (q, dq):
            del node.input[1:]
            node.input.extend([scale_name, zp_name])
            for attribute in node.attribute:
                if attribute.name == "axis":
                    attribute.i = new_axis
        q.input[0] = weight_name
        dq.output[0] = op.input[1]
        for node in chain:
            graph.node.remove(node)
        folded += 1
    if folded:
        _drop_unused_initializers(graph)
        topological_sort(graph)
    return folded


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _find_tensorflow_ops(model: onnx.ModelProto) -> list[str]:
    standard = {"", "ai.onnx", "ai.onnx.ml"}
    return sorted({f"{node.op_type} ({node.domain})" for node in model.graph.node if node.domain not in standard})


def _rename_io(model: onnx.ModelProto, wanted_outputs: Sequence[str]) -> None:
    """Give the graph outputs the model's output names (tf2onnx may keep 'Identity:0'-style names) and call the
    dynamic first dimension of every input and output ``batch``."""
    graph = model.graph
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    for output, wanted in zip(graph.output, wanted_outputs, strict=False):
        if output.name == wanted:
            continue
        old = output.name
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = wanted
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = wanted
        output.name = wanted


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable otherwise)."""
    available = {i.name for i in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            names = ", ".join(node.name or node.op_type for node in remaining[:5])
            raise ExportError(f"The ONNX graph has a cycle or a missing input around: {names}.")
        pending = remaining
    del graph.node[:]
    graph.node.extend(ordered)


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Float parts of the graph in float16; Q/DQ and their scales stay float32 with Casts around them.

    Model inputs and outputs stay float32 so callers feed the same data. Uses ONNX Runtime's float16 converter.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=sorted({*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FLOAT32_OPS}),
    )
    _remove_cast_round_trips(converted.graph)
    topological_sort(converted.graph)  # the converter appends the input/output Casts at the end
    return converted


def _remove_cast_round_trips(graph: onnx.GraphProto) -> None:
    """Drop ``Cast(float32 -> float16) -> Cast(-> float32)`` pairs, which the converter leaves between a float32
    graph input and a float32 QuantizeLinear: they only lose precision."""
    producers = GraphIndex(graph).producer
    float32 = onnx.TensorProto.FLOAT
    graph_outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.op_type != "Cast" or helper.get_attribute_value(node.attribute[0]) != float32:
            continue
        first = producers.get(node.input[0])
        if first is None or first.op_type != "Cast" or node.output[0] in graph_outputs:
            continue
        source = first.input[0]
        source_is_float32 = any(i.name == source and i.type.tensor_type.elem_type == float32 for i in graph.input)
        if not source_is_float32:
            continue
        for consumer in graph.node:
            for index, name in enumerate(consumer.input):
                if name == node.output[0]:
                    consumer.input[index] = source
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | graph_outputs
    for node in list(graph.node):
        if node.op_type == "Cast" and not any(out in used for out in node.output):
            graph.node.remove(node)


_GENERATED_ID = re.compile(r"__(\d+)")


def canonicalize_generated_names(model: onnx.ModelProto) -> None:
    """Renumber the ``name__123`` suffixes tf2onnx generates, in order of first appearance in the graph.

    tf2onnx merges duplicate constants (e.g. identical zero points) and which duplicate survives can change from
    one conversion to the next; renumbering makes two exports of the same model byte-identical.
    """
    graph = model.graph
    numbers: dict[str, str] = {}
    keep = {value.name for value in [*graph.input, *graph.output]}  # the model's own input/output names

    def renumber(match: re.Match) -> str:
        return "__" + numbers.setdefault(match.group(1), str(len(numbers) + 1))

    def rename(name: str) -> str:
        return _GENERATED_ID.sub(renumber, name) if name and name not in keep else name

    for node in graph.node:
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
        node.name = rename(node.name)
    for tensor in [*graph.initializer, *graph.value_info]:
        tensor.name = rename(tensor.name)
    ordered = sorted(graph.initializer, key=lambda init: init.name)
    del graph.initializer[:]
    graph.initializer.extend(ordered)


def finalize(
    model: onnx.ModelProto, output_names: Sequence[str], fp16: bool, fold_bn: bool = False
) -> onnx.ModelProto:
    """Clean-ups and validity checks shared by every export path; ``fold_bn`` folds the BatchNorms into the
    convolutions (:func:`~qdq_toolkit.export.fold_batchnorm.fold_batchnorm`) before the float16 conversion, whose
    Casts between a weight's DequantizeLinear and its convolution the fold would not look through."""
    leftover = _find_tensorflow_ops(model)
    if leftover:
        raise ExportError(
            f"The converted graph still contains non-ONNX ops: {', '.join(leftover)}. tf2onnx could not convert them; "
            "try a newer --opset or leave the layers that produce them unquantized."
        )
    sink_qdq_below_shape_ops(model)
    fold_weight_shape_ops(model)
    _rename_io(model, output_names)
    if fold_bn:
        fold_batchnorm(model)
    if fp16:
        model = convert_to_fp16(model)
    canonicalize_generated_names(model)
    model.producer_name = "qdq_toolkit"
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"The exported ONNX graph is not valid: {exc}") from None
    return model

