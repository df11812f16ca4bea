"""The evaluator's exception: a model, dataset or option that cannot be evaluated as given."""

from __future__ import annotations

__all__ = ["EvaluationError"]


class EvaluationError(Exception):
    """A model file, dataset or option cannot be evaluated as given; the message says what and how to fix it.

    Missing files raise :class:`FileNotFoundError` and existing outputs :class:`FileExistsError` instead; a
    TensorRT engine on a machine without TensorRT or a GPU raises
    :class:`qdq_toolkit.export.tensorrt.TensorRTUnavailableError`, which the evaluator turns into a skipped row.
    """
