"""TensorFlow side of the export: a Keras model or a SavedModel signature -> a raw ONNX graph through tf2onnx.

Conversion goes through tf2onnx's lower-level steps instead of ``tf2onnx.convert.from_keras`` (which raises on
Keras 3 models, tensorflow-onnx #2448) and ``from_function`` (which hides failed rewrites behind
``continue_on_error=True`` and cannot drop optimizers):

1. a concrete function with an explicit input signature: dynamic batch, the model's own input names;
2. tf2onnx freezes it (variables become constants, so weight ranges ``max |w|`` fold into constant scales);
3. tf2onnx converts with ``continue_on_error=False`` and without its ``q_dq_optimizer`` and
   ``const_dequantize_optimizer`` passes, which would fold the weight Q/DQ pairs TensorRT needs into plain
   float weights.

The clean-up passes on the result live in :mod:`qdq_toolkit.export.passes`.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from qdq_toolkit.export._common import ExportError, Progress
from qdq_toolkit.export._common import say as _say


def keras_serving_function(model):
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


def check_has_inputs(model) -> None:
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


def load_saved_model_function(saved_model_dir: Path, signature: str):
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


def convert_function(concrete_function, opset: int, progress: Progress | None) -> onnx.ModelProto:
    """Freeze ``concrete_function`` and convert it with tf2onnx, keeping weight Q/DQ pairs."""
    import tensorflow as tf
    from tf2onnx import optimizer, tf_loader
    from tf2onnx import utils as tf2onnx_utils
    from tf2onnx.convert import _convert_common, tensor_names_from_structed

    import qdq_toolkit.export.tf2onnx_ops  # noqa: F401 - registers the Erfc handler (exact GELU) with tf2onnx

    # tf2onnx names the nodes it creates from a process-wide counter; start it afresh so that exporting the same
    # model twice (in one process or two) gives byte-identical files.
    tf2onnx_utils.INTERNAL_NAME = 1
    captured = {id(t) for t in concrete_function.graph.internal_captures}  # constants a layer made in build()
    input_names = [t.name for t in concrete_function.inputs if t.dtype != tf.resource and id(t) not in captured]
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

