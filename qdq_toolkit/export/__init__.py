"""Export: quantized Keras model -> SavedModel -> QDQ ONNX -> TensorRT engine, and TensorRT placement checks;
the ONNX Runtime CPU target (``target="onnxruntime"``, :mod:`qdq_toolkit.export.cpu_target`).

The command line is ``python -m qdq_toolkit.export --help``. TensorFlow and TensorRT are imported only when a
function needs them.
"""

from qdq_toolkit.export.checks import Violation, check_qdq_placement, format_violations, summarize_qdq
from qdq_toolkit.export.cpu_target import (
    CalibrationDataError,
    MissingRangesError,
    count_integer_kernels,
    to_cpu_target,
)
from qdq_toolkit.export.fold_batchnorm import fold_batchnorm
from qdq_toolkit.export.fusion import Finding, FusionReport, Prediction, predict_fusion
from qdq_toolkit.export.onnx import (
    ExportError,
    ExportResult,
    export_saved_model,
    keras_to_onnx,
    saved_model_to_onnx,
)
from qdq_toolkit.export.ranges import UnobservedRangeWarning, unobserved_ranges

__all__ = [
    "CalibrationDataError",
    "ExportError",
    "ExportResult",
    "Finding",
    "FusionReport",
    "Prediction",
    "UnobservedRangeWarning",
    "Violation",
    "check_qdq_placement",
    "export_saved_model",
    "count_integer_kernels",
    "fold_batchnorm",
    "format_violations",
    "keras_to_onnx",
    "predict_fusion",
    "MissingRangesError",
    "saved_model_to_onnx",
    "summarize_qdq",
    "to_cpu_target",
    "unobserved_ranges",
]
