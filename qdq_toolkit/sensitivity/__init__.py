"""Which layers hurt: per-layer quantization sensitivity, automatic exclusion, Keras-vs-ONNX layer parity.

* :func:`analyze_sensitivity` -- the SQNR of every quantized layer with only its own QDQ on (``analysis``);
* :func:`auto_exclude` -- the smallest set of layers to leave in float within an accuracy budget (``exclusion``);
* :func:`compare_layers` -- per-layer parity of a Keras model and its ONNX export in ONNX Runtime (``parity``);
* ``python -m qdq_toolkit.sensitivity`` -- the command line (``__main__``).

Names are loaded on first use, so ``--help`` starts without TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LayerSensitivity": "qdq_toolkit.sensitivity.analysis",
    "SensitivityReport": "qdq_toolkit.sensitivity.analysis",
    "analyze_sensitivity": "qdq_toolkit.sensitivity.analysis",
    "AccuracyBudgetWarning": "qdq_toolkit.sensitivity.exclusion",
    "ExclusionResult": "qdq_toolkit.sensitivity.exclusion",
    "auto_exclude": "qdq_toolkit.sensitivity.exclusion",
    "LayerParity": "qdq_toolkit.sensitivity.parity",
    "ParityReport": "qdq_toolkit.sensitivity.parity",
    "compare_layers": "qdq_toolkit.sensitivity.parity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qdq_toolkit.sensitivity' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
