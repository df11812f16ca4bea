"""Evaluation datasets: the same labelled images for every model of a comparison.

* :func:`digits_dataset` -- the small real dataset that runs on a CPU: scikit-learn's handwritten digits
  (:func:`qdq_toolkit.data.load_digits`), its test split by default.
* :func:`imagenet_eval_dataset` -- ImageNet TFRecords in the layout of the ResNet-50 example
  (``validation-00000-of-00128`` ...), preprocessed for evaluation as :func:`qdq_toolkit.data.imagenet_dataset`
  does (shorter side resized to 256, central 224 crop, ``keras.applications.resnet50.preprocess_input``).
* :func:`array_dataset` -- any in-memory ``(images, labels)`` pair.

An :class:`EvalDataset` hands out NumPy ``(images, labels)`` batches in a fixed order, capped at ``max_samples``.
TensorFlow is imported only when a digits or ImageNet dataset is made.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qdq_toolkit._validation import check_count, check_positive_int
from qdq_toolkit.evaluate.errors import EvaluationError

__all__ = [
    "DIGITS_SPLITS",
    "EvalDataset",
    "array_dataset",
    "digits_dataset",
    "imagenet_eval_dataset",
]

DIGITS_SPLITS: tuple[str, ...] = ("test", "train")
"""Splits of :func:`digits_dataset` (the split of :func:`qdq_toolkit.data.load_digits` with its default seed)."""

BatchFactory = Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]]


def _check_max_samples(max_samples: int | None) -> int | None:
    return check_count("max_samples", max_samples, allow_none=True)


@dataclass(frozen=True)
class EvalDataset:
    """Labelled images to evaluate models on, handed out as NumPy batches in a fixed order.

    Attributes:
        name: short name (``"digits"``, ``"imagenet"``, ``"arrays"``).
        description: one line for reports, e.g. ``"digits, test split"``.
        image_shape: ``(height, width, channels)`` of every image.
        num_classes: number of classes, when known (the models' outputs are checked against it).
        num_samples: images evaluated (after ``max_samples``) when known before reading; for ImageNet it is
            ``max_samples`` (an upper bound) or ``None``.
        max_samples: the cap on images read, or ``None`` for all.
    """

    name: str
    description: str
    image_shape: tuple[int, int, int]
    num_classes: int | None
    num_samples: int | None
    max_samples: int | None
    make_batches: BatchFactory = field(repr=False)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(images, labels)`` batches of ``batch_size`` (the last one smaller), at most ``max_samples``."""
        check_positive_int("batch_size", batch_size)
        remaining = self.max_samples
        for images, labels in self.make_batches(int(batch_size)):
            if remaining is not None:
                if remaining <= 0:
                    return
                images, labels = images[:remaining], labels[:remaining]
                remaining -= len(labels)
            if len(labels):
                yield np.asarray(images), np.asarray(labels)

    def sample_images(self, count: int) -> np.ndarray:
        """The first ``count`` images (fewer when the dataset is smaller), e.g. to time models with.

        Raises:
            EvaluationError: the dataset holds no image.
        """
        for images, _ in self.batches(count):
            return images
        raise EvaluationError(f"dataset {self.description} holds no image")

    def to_dict(self) -> dict[str, Any]:
        """Description for JSON reports."""
        return {
            "name": self.name,
            "description": self.description,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "max_samples": self.max_samples,
        }


def array_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    name: str = "arrays",
    description: str | None = None,
    num_classes: int | None = None,
    max_samples: int | None = None,
) -> EvalDataset:
    """An :class:`EvalDataset` over in-memory NHWC ``images`` and integer ``labels``.

    Raises:
        ValueError: the arrays do not fit together (count, rank) or are empty.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC with shape (N, H, W, C), got shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"labels must have shape ({images.shape[0]},) to match the images, got {labels.shape}"
        )
    if images.shape[0] == 0:
        raise ValueError("the dataset is empty; give at least one image")
    max_samples = _check_max_samples(max_samples)
    total = int(images.shape[0])
    count = total if max_samples is None else min(total, max_samples)

    def make_batches(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            yield images[start:stop], labels[start:stop]

    return EvalDataset(
        name=name,
        description=description or f"{name} ({total} images)",
        image_shape=(int(images.shape[1]), int(images.shape[2]), int(images.shape[3])),
        num_classes=num_classes,
        num_samples=count,
        max_samples=max_samples,
        make_batches=make_batches,
    )


def digits_dataset(
    split: str = "test",
    *,
    image_size: int = 8,
    channels: int = 1,
    seed: int = 0,
    test_fraction: float = 0.2,
    max_samples: int | None = None,
) -> EvalDataset:
    """scikit-learn's handwritten digits (1797 images, 10 classes), one split of :func:`~qdq_toolkit.data.load_digits`.

    Args:
        split: ``"test"`` (the held-out images, the default) or ``"train"``.
        image_size: height and width; 8 is native, larger sizes are bilinear upsamplings.
        channels: 1 (greyscale) or 3 (grey repeated, for RGB models).
        seed: seed of the stratified split; keep the one the models were trained with.
        test_fraction: fraction of images in the test split; keep the one the models were trained with.
        max_samples: evaluate only the first this many images.

    Raises:
        EvaluationError: unknown split.
        ValueError: a size or fraction out of range (from :func:`~qdq_toolkit.data.load_digits`).
        ImportError: scikit-learn is not installed.
    """
    if split not in DIGITS_SPLITS:
        raise EvaluationError(f"unknown digits split {split!r}; choose one of {list(DIGITS_SPLITS)}")
    max_samples = _check_max_samples(max_samples)
    from qdq_toolkit import data

    digits = data.load_digits(
        image_size=image_size, channels=channels, seed=seed, test_fraction=test_fraction
    )
    part = digits.test if split == "test" else digits.train
    shape = f"{image_size}x{image_size}x{channels}"
    return array_dataset(
        part.images,
        part.labels,
        name="digits",
        description=f"scikit-learn digits, {split} split ({len(part)} images, {shape})",
        num_classes=digits.num_classes,
        max_samples=max_samples,
    )


def imagenet_eval_dataset(
    data_dir: str | os.PathLike[str],
    split: str = "validation",
    *,
    image_size: int = 224,
    preprocess: Any = "resnet50",
    label_offset: int | None = None,
    max_samples: int | None = None,
) -> EvalDataset:
    """ImageNet TFRecords of the ResNet-50 example, with the evaluation preprocessing, in file order.

    Args:
        data_dir: directory of the ``<split>-NNNNN-of-MMMMM`` shards (``data/prepare_imagenet.py`` writes them).
        split: ``"validation"`` (the default) or ``"train"`` (read without augmentation).
        image_size: crop size (224 for ResNet-50); the shorter side is first resized to ``image_size * 256/224``.
        preprocess: ``"resnet50"`` (``keras.applications.resnet50.preprocess_input``), ``None`` for RGB in
            ``[0, 255]``, or a function of one float32 RGB image.
        label_offset: subtracted from ``image/class/label``; ``None`` uses the reader's default (1, the
            ``build_imagenet_data.py`` convention).
        max_samples: evaluate only the first this many images.

    Raises:
        FileNotFoundError: the directory or its shards are missing (the message says how to write them).
        ValueError: unknown split or preprocessing, bad sizes.
    """
    max_samples = _check_max_samples(max_samples)
    from qdq_toolkit import data

    files = data.imagenet_files(data_dir, split)  # fails now, not in the middle of a run
    offset = data.IMAGENET_LABEL_OFFSET if label_offset is None else label_offset
    if not (preprocess is None or preprocess in ("resnet50", "none") or callable(preprocess)):
        raise ValueError(
            f"unknown preprocess={preprocess!r}; pass 'resnet50', None (RGB in [0, 255]) or a function of one image"
        )

    def make_batches(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        dataset = data.imagenet_dataset(
            data_dir,
            split,
            batch_size=batch_size,
            image_size=image_size,
            shuffle=False,
            augment=False,
            preprocess=preprocess,
            label_offset=offset,
        )
        return data.iterate_batches(dataset)

    return EvalDataset(
        name="imagenet",
        description=(
            f"ImageNet {split} TFRecords in {os.fspath(data_dir)} ({len(files)} shards, {image_size}x{image_size}x3, "
            f"preprocess={preprocess if isinstance(preprocess, str | None) else 'custom'})"
        ),
        image_shape=(image_size, image_size, 3),
        num_classes=data.IMAGENET_NUM_CLASSES,
        num_samples=max_samples,
        max_samples=max_samples,
        make_batches=make_batches,
    )
