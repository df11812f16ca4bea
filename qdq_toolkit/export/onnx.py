"""Quantized Keras model -> SavedModel -> ONNX (opset 13 by default), with the QDQ graph TensorRT wants.

Conversion goes through tf2onnx's lower-level steps instead of ``tf2onnx.convert.from_keras`` (which raises on
Keras 3 models, tensorflow-onnx #2448) and ``from_function`` (which hides failed rewrites behind
``continue_on_error=True`` and cannot drop optimizers):

1. a concrete function with an explicit input signature: dynamic batch, the model's own input names;
2. tf2onnx freezes it (variables become constants, so weight ranges ``max |w|`` fold into constant scales);
3. tf2onnx converts with ``continue_on_error=False`` and without its ``q_dq_optimizer`` and
   ``const_dequantize_optimizer`` passes, which would fold the weight Q/DQ pairs TensorRT needs into plain
   float weights;
4. clean-ups: per-tensor QuantizeLinear moved below shape-only ops that tf2onnx's transpose optimizer left between
   a Q and its DQ; outputs renamed to the model's output names; optionally float16 for the float parts;
5. checks: no TensorFlow op left, ``onnx.checker`` passes; the TensorRT QDQ placement rules are checked and
   returned with the result (see :mod:`qdq_toolkit.export.checks`).

Files are written atomically (temporary file + rename) and never overwrite an existing file unless
``force=True``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from qdq_toolkit._files import check_output_path, write_atomically
from qdq_toolkit.export.checks import Violation, check_qdq_placement, constant_array

DEFAULT_OPSET = 13
#: Ops ONNX Runtime's float16 converter must leave in float32: at opset 13, QuantizeLinear takes float32 input
#: and DequantizeLinear returns float32 (the type of its scale). Casts are inserted around them.
FP16_KEEP_FLOAT32_OPS = ("QuantizeLinear", "DequantizeLinear")
#: Ops that only move or reshape data: a per-tensor Q/DQ commutes with them.
SHAPE_ONLY_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})

Progress = Callable[[str], None]


class ExportError(RuntimeError):
    """The conversion failed or produced a graph that is not valid; the message says what and how to fix it."""


@dataclass
class ExportResult:
    """What :func:`keras_to_onnx` / :func:`saved_model_to_onnx` wrote and found."""

    path: Path
    opset: int
    fp16: bool
    inputs: list[str]
    outputs: list[str]
    violations: list[Violation] = field(default_factory=list)
    num_quantize_linear: int = 0
    num_dequantize_linear: int = 0
    unobserved_ranges: list[str] = field(default_factory=list)


class UnobservedRangeWarning(UserWarning):
    """A quantized activation is exported with a range that no data ever set (the initial amax 1.0)."""


def unobserved_ranges(model) -> list[str]:
    """``"layer/slot"`` for every activation range of ``model`` that neither calibration nor training set."""
    from qdq_toolkit.cases import iter_layers
    from qdq_toolkit.wrappers import QDQWrapper

    return [
        f"{ref.path}/{slot}"
        for ref in iter_layers(model)
        if isinstance(ref.layer, QDQWrapper)
        for slot in ref.layer.unobserved_ranges()
    ]


_RANGE_STEPS = re.compile(r"^(?P<layer>.+)/(?P<slot>input(?:_\d+)?)_steps(?::\d+)?$")


def _unobserved_in_saved_model(loaded) -> list[str]:
    """:func:`unobserved_ranges` read from a loaded SavedModel: the wrappers' ``<slot>_steps`` variables at 0."""
    names = []
    for variable in getattr(loaded, "variables", ()):
        match = _RANGE_STEPS.match(variable.name)
        if match and variable.shape.rank == 0 and float(variable.numpy()) == 0.0:
            names.append(f"{match['layer']}/{match['slot']}")
    return sorted(set(names))


def _warn_unobserved(names: list[str]) -> None:
    if not names:
        return
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    warnings.warn(
        f"{len(names)} activation range(s) were never observed and export with the initial amax 1.0 "
        f"(scale 1/127): {shown}. Calibrate (qdq_toolkit.calibrate) or fine-tune the quantized model before "
        "exporting it for TensorRT.",
        UnobservedRangeWarning,
        stacklevel=3,
    )


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


# --------------------------------------------------------------------------------------------- TensorFlow side
def _keras_serving_function(model):
    """A tf.function over the model in inference mode with a dynamic batch and the model's input names."""
    import tensorflow as tf

    specs = []
    for index, tensor in enumerate(model.inputs):
        name = _clean_name(getattr(tensor, "name", None) or f"input_{index}", f"input_{index}")
        shape = (None, *tuple(tensor.shape)[1:])
        specs.append(tf.TensorSpec(shape, tensor.dtype, name=name))
    output_names = [_clean_name(name, f"output_{i}") for i, name in enumerate(_output_names(model))]

    @tf.function(input_signature=specs)
    def serve(*inputs):
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return {name: tf.identity(out, name=name) for name, out in zip(output_names, outputs, strict=True)}

    return serve.get_concrete_function(), [spec.name for spec in specs], output_names


def _check_has_inputs(model) -> None:
    """Refuse, with the fix, a model whose inputs are unknown before it is called (subclassed, unbuilt)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        from qdq_toolkit.cases import ModelStructureError

        raise ModelStructureError(
            f"keras_to_onnx cannot trace model '{model.name}' ({type(model).__name__}): it has no defined inputs "
            "(a subclassed keras.Model, or a Sequential model that was never built). Build it with the Functional "
            "API or start the Sequential model with keras.Input(shape=...); or export it with "
            "export_saved_model(model, 'saved') and then saved_model_to_onnx('saved', 'model.onnx')."
        )


def _output_names(model) -> list[str]:
    """The names of the layers producing the outputs, without the ``quant_`` prefix of a QDQ wrapper, so the FP32
    and the quantized exports of one model have the same output names."""
    from qdq_toolkit.wrappers import QDQWrapper

    names = []
    for tensor in model.outputs:
        layer = tensor._keras_history.operation
        names.append(layer.layer.name if isinstance(layer, QDQWrapper) else layer.name)
    count = len(model.outputs)
    if len(names) != count or len(set(names)) != count:
        names = [f"output_{i}" for i in range(count)]
    return names


def _clean_name(name: str, fallback: str) -> str:
    name = str(name).split(":")[0].replace("/", "_")
    return name or fallback


def _load_saved_model_function(saved_model_dir: Path, signature: str):
    if saved_model_dir.is_file():
        raise ValueError(
            f"'{saved_model_dir}' is a file, not a SavedModel directory. Give the directory written by "
            "model.export(...) or tf.saved_model.save(...) (a .keras file goes to keras_to_onnx / --keras-model)."
        )
    if not saved_model_dir.is_dir():
        raise FileNotFoundError(f"SavedModel directory '{saved_model_dir}' does not exist.")
    if not (saved_model_dir / "saved_model.pb").exists():
        raise ValueError(
            f"'{saved_model_dir}' is not a SavedModel directory (no saved_model.pb). Give the directory written by "
            "model.export(...) or tf.saved_model.save(...)."
        )
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(saved_model_dir))
    except Exception as exc:  # noqa: BLE001 - TensorFlow raises many types for a corrupt SavedModel
        raise ValueError(
            f"Cannot load SavedModel '{saved_model_dir}': {str(exc).splitlines()[0]} (is it complete? Export it "
            "again with model.export(...))"
        ) from None
    signatures = dict(loaded.signatures)
    if signature not in signatures:
        raise ValueError(
            f"SavedModel '{saved_model_dir}' has no signature '{signature}'; it has: {', '.join(signatures) or 'none'}."
        )
    function = signatures[signature]
    input_specs = function.structured_input_signature[1]
    inputs = [spec.name or key for key, spec in sorted(input_specs.items())]
    outputs = sorted(function.structured_outputs)
    return loaded, function, inputs, outputs


def _convert(concrete_function, opset: int, progress: Progress | None) -> onnx.ModelProto:
    """Freeze ``concrete_function`` and convert it with tf2onnx, keeping weight Q/DQ pairs."""
    import tensorflow as tf
    from tf2onnx import optimizer, tf_loader
    from tf2onnx import utils as tf2onnx_utils
    from tf2onnx.convert import _convert_common, tensor_names_from_structed

    # tf2onnx names the nodes it creates from a process-wide counter; start it afresh so that exporting the same
    # model twice (in one process or two) gives byte-identical files.
    tf2onnx_utils.INTERNAL_NAME = 1
    input_names = [t.name for t in concrete_function.inputs if t.dtype != tf.resource]
    output_names = [t.name for t in concrete_function.outputs if t.dtype != tf.resource]
    _say(progress, "freezing the TensorFlow graph")
    with tf.device("/cpu:0"):
        frozen = tf_loader.from_function(concrete_function, input_names, output_names)
        optimizers = {
            name: factory
            for name, factory in optimizer._get_optimizers().items()
            if name not in ("q_dq_optimizer", "const_dequantize_optimizer")
        }
        _say(progress, f"converting to ONNX opset {opset} with tf2onnx")
        try:
            model, _ = _convert_common(
                frozen,
                name="qdq_toolkit",
                continue_on_error=False,
                opset=opset,
                input_names=input_names,
                output_names=output_names,
                tensors_to_rename=tensor_names_from_structed(concrete_function, input_names, output_names),
                optimizers=optimizers,
            )
        except Exception as exc:  # noqa: BLE001 - tf2onnx raises bare exceptions for unsupported ops
            raise ExportError(
                f"tf2onnx could not convert the model at opset {opset}: {type(exc).__name__}: {exc}. A newer opset "
                "(--opset 17) supports more ops; if a layer of yours is not convertible, leave it unquantized."
            ) from exc
    return model


# ----------------------------------------------------------------------------------------------- ONNX clean-up
def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    table: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            table.setdefault(name, []).append(node)
    return table


def _is_per_tensor(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> bool:
    scale = initializers.get(node.input[1])
    return scale is not None and numpy_helper.to_array(scale).size == 1


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
    initializers = {init.name: init for init in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    rewrites = 0
    changed = True
    while changed:
        changed = False
        consumers = _consumers(graph)
        made_by = {out: node for node in graph.node for out in node.output}
        for node in graph.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or not _is_per_tensor(node, initializers):
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
                node.op_type == "DequantizeLinear" and _is_zero_pad(users[0], initializers, made_by)
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


def _is_zero_pad(node: onnx.NodeProto, initializers: dict, made_by: dict) -> bool:
    """A ``Pad`` in constant mode whose pad value is 0 (absent, or a constant equal to 0)."""
    if node.op_type != "Pad":
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("mode", b"constant") not in (b"constant", "constant"):
        return False
    if len(node.input) < 3 or not node.input[2]:
        return True
    value = constant_array(node.input[2], initializers, made_by)
    return value is not None and bool((value == 0).all())


WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


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


def _output_channel_axis(op: onnx.NodeProto, rank: int) -> int:
    """The weight axis TensorRT quantizes per channel: Conv 0, ConvTranspose 1, MatMul last, Gemm by transB."""
    if op.op_type == "Conv":
        return 0
    if op.op_type == "ConvTranspose":
        return 1
    if op.op_type == "Gemm":
        return 0 if {a.name: a.i for a in op.attribute}.get("transB", 0) else 1
    return rank - 1


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
    consumers = _consumers(graph)
    made_by = {out: node for node in graph.node for out in node.output}
    for op in list(graph.node):
        if op.op_type not in WEIGHTED_OPS or len(op.input) < 2:
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
        new_axis = _output_channel_axis(op, new_weight.ndim)
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
    producers = {out: node for node in graph.node for out in node.output}
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


def finalize(model: onnx.ModelProto, output_names: Sequence[str], fp16: bool) -> onnx.ModelProto:
    """Clean-ups and validity checks shared by every export path."""
    leftover = _find_tensorflow_ops(model)
    if leftover:
        raise ExportError(
            f"The converted graph still contains non-ONNX ops: {', '.join(leftover)}. tf2onnx could not convert them; "
            "try a newer --opset or leave the layers that produce them unquantized."
        )
    sink_qdq_below_shape_ops(model)
    fold_weight_shape_ops(model)
    _rename_io(model, output_names)
    if fp16:
        model = convert_to_fp16(model)
    canonicalize_generated_names(model)
    model.producer_name = "qdq_toolkit"
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"The exported ONNX graph is not valid: {exc}") from None
    return model


def _write(model: onnx.ModelProto, path: Path, opset: int, fp16: bool, inputs, outputs, force, progress) -> ExportResult:
    violations = check_qdq_placement(model)
    _say(progress, f"writing {path}")
    write_atomically(path, model.SerializeToString(), force=force)
    counts = {op: sum(node.op_type == op for node in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
    return ExportResult(
        path=path,
        opset=opset,
        fp16=fp16,
        inputs=list(inputs),
        outputs=list(outputs),
        violations=violations,
        num_quantize_linear=counts["QuantizeLinear"],
        num_dequantize_linear=counts["DequantizeLinear"],
    )


def _check_opset(opset: int) -> int:
    if not isinstance(opset, int) or isinstance(opset, bool) or not 13 <= opset <= 21:
        raise ValueError(
            f"opset must be an integer from 13 to 21, got {opset!r}. Opset 13 is the first with per-channel "
            "QuantizeLinear/DequantizeLinear, which TensorRT's explicit quantization needs."
        )
    return opset


# ------------------------------------------------------------------------------------------------- public API
def keras_to_onnx(
    model,
    output: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a (quantized or float) Keras model straight to ONNX.

    The ONNX inputs are named after the Keras inputs and have a dynamic batch dimension; the outputs are named
    after the Keras outputs. Returns an :class:`ExportResult` with the TensorRT placement violations found (an
    empty list for a TensorRT-ready graph).

    Activation ranges that no data ever set (neither :func:`qdq_toolkit.calibrate` nor training) are listed in
    ``ExportResult.unobserved_ranges`` and reported with an :class:`UnobservedRangeWarning`: they export with the
    initial amax 1.0, which is rarely the tensor's range.

    Raises:
        TypeError: ``model`` is not a Keras model (load a ``.keras`` file first).
        ModelStructureError: the model has no defined inputs (subclassed, or an unbuilt Sequential).
        FileExistsError: ``output`` exists and ``force`` is false.
        ExportError: tf2onnx could not convert the model, or the result is not a valid ONNX graph.
    """
    import keras

    if not isinstance(model, keras.Model):
        hint = ""
        if isinstance(model, (str, os.PathLike)):
            hint = " To export a file, load it first: qdq_toolkit.load_model(path)."
        raise TypeError(f"keras_to_onnx expects a keras.Model, got {type(model).__name__}.{hint}")
    _check_has_inputs(model)
    from qdq_toolkit.precision import float32_model

    model = float32_model(model)  # a mixed-precision model exports as float32 (qdq_toolkit.precision)
    path = check_output_path(output, force)
    _check_opset(opset)
    unobserved = unobserved_ranges(model)
    _warn_unobserved(unobserved)
    _say(progress, "tracing the Keras model")
    function, inputs, outputs = _keras_serving_function(model)
    converted = finalize(_convert(function, opset, progress), outputs, fp16)
    result = _write(converted, path, opset, fp16, inputs, outputs, force, progress)
    result.unobserved_ranges = unobserved
    return result


def saved_model_to_onnx(
    saved_model_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    signature: str = "serving_default",
    force: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Convert a SavedModel (e.g. from :func:`export_saved_model` or ``model.export``) to ONNX.

    Activation ranges of a quantized model that no data ever set are reported as by :func:`keras_to_onnx`.
    """
    path = check_output_path(output, force)
    _check_opset(opset)
    _say(progress, f"loading SavedModel {saved_model_dir}")
    loaded, function, inputs, outputs = _load_saved_model_function(Path(saved_model_dir), signature)
    unobserved = _unobserved_in_saved_model(loaded)
    _warn_unobserved(unobserved)
    converted = finalize(_convert(function, opset, progress), outputs, fp16)
    result = _write(converted, path, opset, fp16, inputs, outputs, force, progress)
    result.unobserved_ranges = unobserved
    return result


def export_saved_model(model, directory: str | os.PathLike, *, force: bool = False, progress: Progress | None = None) -> Path:
    """``model.export(directory)`` (a TensorFlow SavedModel with a ``serving_default`` signature), atomically.

    The SavedModel is written to a temporary directory beside ``directory`` and renamed into place. An existing
    ``directory`` is replaced only with ``force=True``.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"export_saved_model expects a keras.Model, got {type(model).__name__}.")
    directory = Path(directory)
    if directory.exists() and not force:
        raise FileExistsError(f"'{directory}' already exists; pass force=True (--force) to replace it.")
    if not directory.parent.exists():
        raise FileNotFoundError(f"The parent directory of '{directory}' does not exist; create it first.")
    temp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        _say(progress, f"writing SavedModel {directory}")
        model.export(str(temp / "saved_model"), format="tf_saved_model", verbose=False)
        if directory.exists():  # force=True: swap in the new directory, then remove the old one
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old / "previous")
            os.replace(temp / "saved_model", directory)
            shutil.rmtree(old)
        else:
            os.replace(temp / "saved_model", directory)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return directory


def onnx_scales(model: onnx.ModelProto) -> dict[str, list[float]]:
    """``{QuantizeLinear node name: scale values}``: handy to compare exports (e.g. one device vs. several)."""
    initializers = {init.name: init for init in model.graph.initializer}
    made_by = {out: node for node in model.graph.node for out in node.output}
    scales = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        value = constant_array(node.input[1], initializers, made_by)
        if value is not None:
            scales[node.name] = value.ravel().tolist()
    return scales
