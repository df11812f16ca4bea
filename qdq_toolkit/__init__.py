"""qdq_toolkit: quantization-aware training for TensorFlow 2 / Keras 3, exported as TensorRT-ready QDQ ONNX.

The public API, re-exported here::

    from qdq_toolkit import quantize_model, QuantizationSpec
    qat_model = quantize_model(model)          # QDQ on inputs and weights of convolutions, dense, average pooling
    qat_model.compile(...); qat_model.fit(...)  # fine-tune
    qat_model.save("qat.keras"); qdq_toolkit.load_model("qat.keras")  # exact round trip

Names are loaded on first use (PEP 562), so tools that need no TensorFlow (the ONNX checker, the CLI's
``--help``) start quickly.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CustomQDQInsertionCase": "qdq_toolkit.cases",
    "LayerNames": "qdq_toolkit.cases",
    "CalibrationReport": "qdq_toolkit.calibration",
    "calibrate": "qdq_toolkit.calibration",
    "NonFiniteActivationsError": "qdq_toolkit.calibration",
    "fit_distributed": "qdq_toolkit.distribute",
    "is_chief": "qdq_toolkit.distribute",
    "float32_model": "qdq_toolkit.precision",
    "inbound_layers": "qdq_toolkit.cases",
    "iter_layers": "qdq_toolkit.cases",
    "match_chain": "qdq_toolkit.cases",
    "outbound_layers": "qdq_toolkit.cases",
    "predict_fusion": "qdq_toolkit.export.fusion",
    "QuantizationSpecError": "qdq_toolkit.quantize",
    "load_model": "qdq_toolkit.quantize",
    "load_keras_file": "qdq_toolkit.quantize",
    "ModelFileError": "qdq_toolkit.quantize",
    "plan_quantization": "qdq_toolkit.quantize",
    "quantize_model": "qdq_toolkit.quantize",
    "quantized_layers": "qdq_toolkit.quantize",
    "RangeTracking": "qdq_toolkit.quantizers",
    "LayerSpec": "qdq_toolkit.spec",
    "QuantizationSpec": "qdq_toolkit.spec",
    "BUILTIN_WRAPPERS": "qdq_toolkit.wrappers",
    "QDQWrapper": "qdq_toolkit.wrappers",
    "WrapperRegistry": "qdq_toolkit.wrappers",
    "AccuracyBudgetWarning": "qdq_toolkit.sensitivity.exclusion",
    "ExclusionResult": "qdq_toolkit.sensitivity.exclusion",
    "LayerSensitivity": "qdq_toolkit.sensitivity.analysis",
    "ParityReport": "qdq_toolkit.sensitivity.parity",
    "SensitivityReport": "qdq_toolkit.sensitivity.analysis",
    "analyze_sensitivity": "qdq_toolkit.sensitivity.analysis",
    "auto_exclude": "qdq_toolkit.sensitivity.exclusion",
    "compare_layers": "qdq_toolkit.sensitivity.parity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qdq_toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
