"""Top-1 / top-5 accuracy from classifier scores, streamed over batches.

Scores may be logits or probabilities: top-k membership does not change under a monotonic map such as softmax.

Ties follow ``tf.math.in_top_k`` (and hence Keras' ``top_k_categorical_accuracy``): a sample counts as correct at
``k`` when fewer than ``k`` classes score *strictly* higher than its true class, so classes tied at the boundary
all count as inside the top ``k``. A sample whose true-class score is NaN counts as wrong. With fewer than ``k``
classes every finite sample is correct at ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qdq_toolkit._validation import check_positive_int

__all__ = ["AccuracyResult", "TopKAccumulator", "top_k_accuracy", "top_k_correct"]


def _as_scores_and_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise one batch: scores ``(N, C)`` floats and labels ``(N,)`` integers in ``[0, C)``."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(
            f"scores must have shape (batch, num_classes), got {scores.shape}; flatten extra axes of the model's "
            "output (e.g. (N, 1, 1, C) -> (N, C)) before computing accuracy"
        )
    if scores.dtype.kind not in "fiu":
        raise TypeError(f"scores must be numbers, got dtype {scores.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"labels must be class indices of shape (batch,), got shape {labels.shape}; convert one-hot labels "
            "with labels.argmax(axis=-1)"
        )
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"{scores.shape[0]} score rows but {labels.shape[0]} labels; they must match one to one"
        )
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and labels.size and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        elif labels.size:
            raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
        else:
            labels = labels.astype(np.int64)
    num_classes = scores.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for scores of {num_classes} classes; got labels from "
            f"{int(labels.min())} to {int(labels.max())} (a label offset, or a model with another class count?)"
        )
    return scores, labels.astype(np.int64, copy=False)


def _check_k(k: int) -> int:
    return check_positive_int("k", k)


def top_k_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-sample top-``k`` correctness of one batch.

    Args:
        scores: ``(N, C)`` logits or probabilities.
        labels: ``(N,)`` integer class indices in ``[0, C)``.
        k: how many best classes count.

    Returns:
        A boolean array of shape ``(N,)``: ``True`` where fewer than ``k`` classes score strictly higher than the
        true class (and its score is not NaN).

    Raises:
        ValueError / TypeError: shapes, dtypes or label values that do not fit together.
    """
    k = _check_k(k)
    scores, labels = _as_scores_and_labels(scores, labels)
    if scores.shape[0] == 0:
        return np.zeros((0,), dtype=bool)
    true_scores = scores[np.arange(scores.shape[0]), labels]
    higher = (scores > true_scores[:, np.newaxis]).sum(axis=1)
    return (higher < k) & ~np.isnan(true_scores)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of samples whose true class is among the ``k`` best scores (``nan`` for an empty batch)."""
    correct = top_k_correct(scores, labels, k)
    return float(correct.mean()) if correct.size else float("nan")


@dataclass(frozen=True)
class AccuracyResult:
    """Accuracy over a whole dataset.

    Attributes:
        samples: number of samples seen.
        correct: ``{k: number of top-k correct samples}`` for every tracked ``k``.
    """

    samples: int
    correct: dict[int, int]

    def accuracy(self, k: int) -> float:
        """Top-``k`` accuracy as a fraction in ``[0, 1]`` (``nan`` when no sample was seen).

        Raises:
            KeyError: ``k`` was not tracked; the message lists the tracked values.
        """
        if k not in self.correct:
            raise KeyError(f"top-{k} accuracy was not tracked; tracked k values: {sorted(self.correct)}")
        return self.correct[k] / self.samples if self.samples else float("nan")

    @property
    def top1(self) -> float:
        """Top-1 accuracy as a fraction."""
        return self.accuracy(1)

    @property
    def top5(self) -> float:
        """Top-5 accuracy as a fraction."""
        return self.accuracy(5)

    def to_dict(self) -> dict[str, float | int | None]:
        """``{"samples": N, "top1": ..., "top5": ...}`` (fractions; ``None`` instead of NaN) for JSON."""
        out: dict[str, float | int | None] = {"samples": self.samples}
        for k in sorted(self.correct):
            value = self.accuracy(k)
            out[f"top{k}"] = None if np.isnan(value) else value
        return out


@dataclass
class TopKAccumulator:
    """Streams top-k accuracy over batches without keeping the scores.

    Example::

        accumulator = TopKAccumulator()
        for images, labels in batches:
            accumulator.update(backend.predict(images), labels)
        result = accumulator.result()   # result.top1, result.top5

    Attributes:
        ks: the ``k`` values tracked, ``(1, 5)`` by default.
        keep_predictions: also keep every sample's top-1 class (``predictions``), e.g. to compare two models
            sample by sample.
    """

    ks: Sequence[int] = (1, 5)
    keep_predictions: bool = False
    _samples: int = field(default=0, init=False, repr=False)
    _correct: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _predictions: list[np.ndarray] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        ks = tuple(_check_k(k) for k in self.ks)
        if not ks:
            raise ValueError("ks is empty; track at least one k, e.g. ks=(1, 5)")
        self.ks = tuple(sorted(set(ks)))
        self._correct = dict.fromkeys(self.ks, 0)

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add one batch of ``(N, C)`` scores and ``(N,)`` labels."""
        scores, labels = _as_scores_and_labels(scores, labels)
        for k in self.ks:
            self._correct[k] += int(top_k_correct(scores, labels, k).sum())
        self._samples += int(labels.shape[0])
        if self.keep_predictions:
            self._predictions.append(
                np.argmax(scores, axis=1).astype(np.int64) if scores.size else labels[:0]
            )

    @property
    def predictions(self) -> np.ndarray:
        """Top-1 class of every sample seen, in order.

        Raises:
            RuntimeError: the accumulator was made without ``keep_predictions=True``.
        """
        if not self.keep_predictions:
            raise RuntimeError(
                "predictions were not kept; create the TopKAccumulator with keep_predictions=True"
            )
        return np.concatenate(self._predictions) if self._predictions else np.zeros((0,), dtype=np.int64)

    def result(self) -> AccuracyResult:
        """The accuracy over every batch added so far."""
        return AccuracyResult(samples=self._samples, correct=dict(self._correct))
