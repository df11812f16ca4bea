"""The data the sensitivity tools read: ``(x, y)`` arrays, a ``tf.data.Dataset`` or a re-iterable of batches.

Every tool passes over the data more than once (calibration, then the SQNR pass, then evaluations), so a one-shot
iterator (a generator) is refused with a message saying what to pass instead. Labels are optional: without them
the SQNR figures are computed and the accuracies are ``None``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batches:
    """A re-iterable source of ``(x, labels or None)`` NumPy batches."""

    source: object
    batch_size: int | None

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        source = self.source
        if isinstance(source, tuple) and source and isinstance(source[0], np.ndarray):
            images = source[0]
            labels = source[1] if len(source) > 1 else None
            for start in range(0, len(images), self.batch_size):
                stop = start + self.batch_size
                yield images[start:stop], None if labels is None else labels[start:stop]
            return
        import tensorflow as tf

        iterable = source.as_numpy_iterator() if isinstance(source, tf.data.Dataset) else source
        for element in iterable:
            if isinstance(element, (tuple, list)):
                x = np.asarray(element[0])
                y = np.asarray(element[1]) if len(element) > 1 and element[1] is not None else None
            elif isinstance(element, dict):
                raise TypeError(
                    "dict batches are not supported: give batches as x or (x, y) arrays for a single-input model."
                )
            else:
                x, y = np.asarray(element), None
            yield x, y

    def inputs(self) -> Iterator[np.ndarray]:
        """Only the model inputs, as :func:`qdq_toolkit.calibrate` reads them."""
        for x, _ in self:
            yield x


def as_batches(data, batch_size: int = 32, *, what: str = "data") -> Batches:
    """Check ``data`` and wrap it as :class:`Batches`.

    Accepted: a tuple ``(x, y)`` or ``(x,)`` of NumPy arrays (cut into ``batch_size`` batches), an ``x`` array
    alone, a ``tf.data.Dataset`` of batches (``x`` or ``(x, y)``), or a list (any re-iterable) of such batches.

    Raises:
        TypeError: ``data`` is a one-shot iterator or of an unknown kind.
        ValueError: arrays of different lengths, an empty array, or a bad batch size.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if isinstance(data, np.ndarray):
        data = (data,)
    if isinstance(data, tuple) and data and len(data) <= 2 and all(isinstance(item, np.ndarray) for item in data):
        if len(data[0]) == 0:
            raise ValueError(f"{what} is empty: give at least one sample.")
        if len(data) == 2 and len(data[1]) != len(data[0]):
            raise ValueError(f"{what}: x has {len(data[0])} samples but y has {len(data[1])}; give one label per sample.")
        return Batches(data, batch_size)
    if iter_once(data):
        raise TypeError(
            f"{what} is a one-shot iterator (e.g. a generator), but the analysis reads the data several times. "
            "Pass (x, y) arrays, a tf.data.Dataset or a list of (x, y) batches."
        )
    try:
        iter(data)
    except TypeError:
        raise TypeError(
            f"{what} must be (x, y) arrays, a tf.data.Dataset or a list of (x, y) batches, got "
            f"{type(data).__name__}."
        ) from None
    return Batches(data, None)


def iter_once(data) -> bool:
    try:
        return iter(data) is data
    except TypeError:
        return False


def class_labels(labels: np.ndarray, num_outputs: int) -> np.ndarray:
    """Integer class labels from integer labels or one-hot rows."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == num_outputs and num_outputs > 1:
        return np.argmax(labels, axis=1)
    return labels.reshape(-1).astype(np.int64)


def count_correct(outputs: np.ndarray, labels: np.ndarray) -> int:
    """Top-1 hits of a batch of scores ``(N, classes)`` against ``labels``."""
    outputs = np.asarray(outputs)
    if outputs.ndim != 2:
        raise ValueError(
            f"accuracy needs a model whose output is (batch, classes) scores, got output shape {outputs.shape}; "
            "pass data without labels to get the SQNR figures only."
        )
    truth = class_labels(labels, outputs.shape[1])
    if truth.shape[0] != outputs.shape[0]:
        raise ValueError(f"a batch has {outputs.shape[0]} samples but {truth.shape[0]} labels.")
    return int(np.sum(np.argmax(outputs, axis=1) == truth))
