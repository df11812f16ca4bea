"""Evaluate models: top-1/top-5 accuracy and latency of Keras models, ONNX models and TensorRT engines.

The same dataset goes through every model; the comparison report (FP32 baseline / PTQ INT8 / QAT INT8 ...)
shows accuracy, its delta to the baseline, latency per batch size and file size, as Markdown, JSON and an
accuracy-vs-latency plot::

    from qdq_toolkit.evaluate import digits_dataset, evaluate_models

    report = evaluate_models(
        {"fp32": "fp32.keras", "qat": "qat.onnx", "qat-trt": "qat.plan"},   # backend chosen by extension
        digits_dataset(),
        baseline="fp32",
        batch_sizes=(1, 8, 32),
    )
    print(report.to_markdown())
    report.write_json("report.json")
    report.write_plot("report.png")

The command line does the same: ``python -m qdq_toolkit.evaluate --help``.

Modules: :mod:`~qdq_toolkit.evaluate.backends` (Keras, ONNX Runtime on CPU, TensorRT on GPU),
:mod:`~qdq_toolkit.evaluate.metrics` (top-k from streamed scores), :mod:`~qdq_toolkit.evaluate.latency`
(warm-up, timed runs, median/p90; the methodology is documented there), :mod:`~qdq_toolkit.evaluate.datasets`,
:mod:`~qdq_toolkit.evaluate.evaluator` (the run) and :mod:`~qdq_toolkit.evaluate.report`. Importing this
package imports neither TensorFlow, ONNX Runtime nor TensorRT; each is imported when first needed.
"""

from __future__ import annotations

from qdq_toolkit.evaluate.backends import (
    BACKEND_KINDS,
    ENGINE_SUFFIXES,
    KERAS_SUFFIXES,
    ONNX_SUFFIXES,
    Backend,
    KerasBackend,
    OnnxRuntimeBackend,
    TensorRTBackend,
    backend_kind_for_path,
    check_model_path,
    load_backend,
)
from qdq_toolkit.evaluate.datasets import (
    DIGITS_SPLITS,
    EvalDataset,
    array_dataset,
    digits_dataset,
    imagenet_eval_dataset,
)
from qdq_toolkit.evaluate.errors import EvaluationError
from qdq_toolkit.evaluate.evaluator import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_EVAL_BATCH_SIZE,
    ModelSet,
    SkippedModel,
    environment_info,
    evaluate_models,
    open_models,
)
from qdq_toolkit.evaluate.latency import (
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    LatencyStats,
    latency_batch,
    latency_stats,
    measure_latencies,
    measure_latency,
)
from qdq_toolkit.evaluate.metrics import AccuracyResult, TopKAccumulator, top_k_accuracy, top_k_correct
from qdq_toolkit.evaluate.report import (
    REPORT_FORMAT,
    ComparisonReport,
    ModelResult,
    format_size,
    write_atomically,
)

__all__ = [
    "BACKEND_KINDS",
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_EVAL_BATCH_SIZE",
    "DEFAULT_RUNS",
    "DEFAULT_WARMUP",
    "DIGITS_SPLITS",
    "ENGINE_SUFFIXES",
    "KERAS_SUFFIXES",
    "ONNX_SUFFIXES",
    "REPORT_FORMAT",
    "AccuracyResult",
    "Backend",
    "ComparisonReport",
    "EvalDataset",
    "EvaluationError",
    "KerasBackend",
    "LatencyStats",
    "ModelResult",
    "ModelSet",
    "OnnxRuntimeBackend",
    "SkippedModel",
    "TensorRTBackend",
    "TopKAccumulator",
    "array_dataset",
    "backend_kind_for_path",
    "check_model_path",
    "digits_dataset",
    "environment_info",
    "evaluate_models",
    "format_size",
    "imagenet_eval_dataset",
    "latency_batch",
    "latency_stats",
    "load_backend",
    "measure_latencies",
    "measure_latency",
    "open_models",
    "top_k_accuracy",
    "top_k_correct",
    "write_atomically",
]
