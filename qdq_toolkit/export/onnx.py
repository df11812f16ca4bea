"""Quantized Keras model -> SavedModel -> ONNX (opset 13 by default), with the QDQ graph TensorRT wants.

The public export functions, one step per module:

1. :mod:`qdq_toolkit.export.convert`: the model (or a SavedModel signature) to a raw ONNX graph with tf2onnx,
   keeping the weight Q/DQ pairs TensorRT needs;
2. :mod:`qdq_toolkit.export.passes`: clean-ups: per-tensor quantizers moved below shape-only ops, weight reshapes
   folded into the weights, outputs renamed to the model's output names, optionally float16 for the float parts,
   stable names; then no TensorFlow op left and ``onnx.checker`` passes;
3. the TensorRT QDQ placement rules are checked and returned with the result (:mod:`qdq_toolkit.export.checks`);
   :mod:`qdq_toolkit.export.saved_model` writes SavedModels.

Files are written atomically (temporary file + rename) and never overwrite an existing file unless
``force=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from qdq_toolkit._files import check_output_path, write_atomically
from qdq_toolkit.export._common import ExportError, Progress  # noqa: F401 - ExportError: public name here
from qdq_toolkit.export._common import say as _say
from qdq_toolkit.export.checks import Violation, check_qdq_placement
from qdq_toolkit.export.convert import (
    check_has_inputs,
    convert_function,
    keras_serving_function,
    load_saved_model_function,
)
from qdq_toolkit.export.graph_index import GraphIndex
from qdq_toolkit.export.passes import (  # noqa: F401 - public names of this module before the split
    FP16_KEEP_FLOAT32_OPS,
    canonicalize_generated_names,
    convert_to_fp16,
    finalize,
    fold_weight_shape_ops,
    sink_qdq_below_shape_ops,
    topological_sort,
)
from qdq_toolkit.export.ranges import UnobservedRangeWarning, unobserved_ranges  # noqa: F401 - re-exported
from qdq_toolkit.export.ranges import unobserved_in_saved_model as _unobserved_in_saved_model
from qdq_toolkit.export.ranges import warn_unobserved as _warn_unobserved
from qdq_toolkit.export.saved_model import export_saved_model  # noqa: F401 - public name of this module
from qdq_toolkit.tensorrt_rules import SHAPE_ONLY_OPS  # noqa: F401 - public name of this module before the split

DEFAULT_OPSET = 13


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
    target: str = "tensorrt"


# --------------------------------------------------------------------------------------------- TensorFlow side
def _write(
    model: onnx.ModelProto, path: Path, opset: int, fp16: bool, inputs, outputs, force, progress, check: bool = True
) -> ExportResult:
    violations = check_qdq_placement(model) if check else []  # TensorRT's rules: not for the CPU target
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


TARGETS = ("tensorrt", "onnxruntime")


def _retarget(model: onnx.ModelProto, target: str, calibration_data, progress: Progress | None) -> onnx.ModelProto:
    """The TensorRT-target graph as is, or rewritten for ONNX Runtime's CPU integer kernels (see cpu_target)."""
    if target == "tensorrt":
        return model
    from qdq_toolkit.export.cpu_target import to_cpu_target

    _say(progress, "rewriting for the ONNX Runtime CPU target")
    return to_cpu_target(model, calibration_data, progress=progress)


def _finalize(model: onnx.ModelProto, outputs, fp16: bool, target: str, fold_bn: bool, progress) -> onnx.ModelProto:
    """:func:`finalize`, folding the BatchNorms for the TensorRT target when asked (the CPU target always folds)."""
    fold_bn = fold_bn and target == "tensorrt"
    if fold_bn:
        _say(progress, "folding BatchNorm into the convolutions")
    return finalize(model, outputs, fp16, fold_bn=fold_bn)


def _check_target(target: str, fp16: bool, fold_bn: bool = False) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if not isinstance(fold_bn, bool):
        raise TypeError(f"fold_batchnorm must be True or False, got {fold_bn!r}")
    if target == "onnxruntime" and fp16:
        raise ValueError("fp16 is for the TensorRT target; the ONNX Runtime CPU target runs integer kernels in uint8/int8")


def _check_opset(opset: int) -> int:
    """13 (the first opset with per-channel QuantizeLinear/DequantizeLinear) up to the newest tf2onnx converts."""
    from tf2onnx.constants import OPSET_TO_IR_VERSION

    newest = max(OPSET_TO_IR_VERSION)  # tf2onnx 1.17: 18 ("Opset 19 is not supported yet")
    if not isinstance(opset, int) or isinstance(opset, bool) or not 13 <= opset <= newest:
        raise ValueError(
            f"opset must be an integer from 13 to {newest}, got {opset!r}. Opset 13 is the first with per-channel "
            f"QuantizeLinear/DequantizeLinear, which TensorRT's explicit quantization needs; {newest} is the newest "
            "opset the installed tf2onnx converts to."
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
    target: str = "tensorrt",
    calibration_data=None,
    fold_batchnorm: bool = False,
) -> ExportResult:
    """Export a (quantized or float) Keras model straight to ONNX.

    ``target="onnxruntime"`` rewrites the TensorRT-target graph into the one ONNX Runtime's CPU execution provider
    runs as integer kernels (:mod:`qdq_toolkit.export.cpu_target`); ``calibration_data`` (an array, or
    ``{input name: array}``) supplies the ranges the TensorRT graph never needed.

    ``fold_batchnorm=True`` folds the BatchNorm after each convolution (Keras 3 exports it as a ``Mul`` and an
    ``Add`` by per-channel constants) into the convolution's weight scales and bias, exactly
    (:mod:`qdq_toolkit.export.fold_batchnorm`). TensorRT fuses that BatchNorm into a Conv itself, but has no Q/DQ
    ConvTranspose + BatchNorm fusion (NVIDIA/TensorRT#3412): fold for models with Conv2DTranspose/Conv3DTranspose
    followed by BatchNormalization (the checker's ``batchnorm-not-fused`` warning). The ONNX Runtime target always
    folds. Off by default: the default export is unchanged.

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
    check_has_inputs(model)
    from qdq_toolkit.precision import float32_model

    model = float32_model(model)  # a mixed-precision model exports as float32 (qdq_toolkit.precision)
    path = check_output_path(output, force)
    _check_opset(opset)
    _check_target(target, fp16, fold_batchnorm)
    unobserved = unobserved_ranges(model)
    _warn_unobserved(unobserved)
    _say(progress, "tracing the Keras model")
    function, inputs, outputs = keras_serving_function(model)
    converted = _finalize(convert_function(function, opset, progress), outputs, fp16, target, fold_batchnorm, progress)
    converted = _retarget(converted, target, calibration_data, progress)
    result = _write(converted, path, opset, fp16, inputs, outputs, force, progress, check=target == "tensorrt")
    result.unobserved_ranges, result.target = unobserved, target
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
    target: str = "tensorrt",
    calibration_data=None,
    fold_batchnorm: bool = False,
) -> ExportResult:
    """Convert a SavedModel (e.g. from :func:`export_saved_model` or ``model.export``) to ONNX.

    ``target``, ``calibration_data`` and ``fold_batchnorm`` as for :func:`keras_to_onnx`.

    Activation ranges of a quantized model that no data ever set are reported as by :func:`keras_to_onnx`.
    """
    path = check_output_path(output, force)
    _check_opset(opset)
    _check_target(target, fp16, fold_batchnorm)
    _say(progress, f"loading SavedModel {saved_model_dir}")
    loaded, function, inputs, outputs = load_saved_model_function(Path(saved_model_dir), signature)
    unobserved = _unobserved_in_saved_model(loaded)
    _warn_unobserved(unobserved)
    converted = _finalize(convert_function(function, opset, progress), outputs, fp16, target, fold_batchnorm, progress)
    converted = _retarget(converted, target, calibration_data, progress)
    result = _write(converted, path, opset, fp16, inputs, outputs, force, progress, check=target == "tensorrt")
    result.unobserved_ranges, result.target = unobserved, target
    return result


def onnx_scales(model: onnx.ModelProto) -> dict[str, list[float]]:
    """``{QuantizeLinear node name: scale values}``: handy to compare exports (e.g. one device vs. several)."""
    index = GraphIndex(model.graph)
    scales = {}
    for node in index.nodes_of("QuantizeLinear"):
        scale = index.constant(node.input[1])
        if scale is not None and scale.value is not None:
            scales[node.name] = scale.value.ravel().tolist()
    return scales
