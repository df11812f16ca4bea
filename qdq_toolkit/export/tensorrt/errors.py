"""The errors of the TensorRT package: one for any TensorRT/CUDA failure, one for "TensorRT cannot be used here"."""

from __future__ import annotations

__all__ = ["TensorRTError", "TensorRTUnavailableError"]


class TensorRTError(RuntimeError):
    """TensorRT or CUDA failed while building, loading or running an engine; the message says what and why."""


class TensorRTUnavailableError(TensorRTError):
    """TensorRT cannot be used here: a package is missing or no NVIDIA GPU/driver is usable.

    The message lists every missing piece and the install command.
    """
