"""Dataset readers: the small real dataset used on CPU and the ImageNet TFRecords of the ResNet-50 walkthrough.

Two sources, one shape of output -- float32 NHWC images and int32 class labels:

* :func:`load_digits` -- scikit-learn's copy of the UCI "Optical Recognition of Handwritten Digits" test set:
  1797 greyscale 8x8 images of the digits 0-9 (10 classes, about 180 per class) written by 43 people.
  The data ships *inside* the scikit-learn wheel (``sklearn/datasets/data/digits.csv.gz``), so nothing is
  downloaded. It needs the ``examples`` extra: ``pip install "qdq-toolkit[examples]"``.
* :func:`imagenet_dataset` -- a ``tf.data`` pipeline over ImageNet ILSVRC2012 TFRecords in the layout written by
  the TPU / Inception ``build_imagenet_data.py`` script (and by this repository's ``data/prepare_imagenet.py``),
  preprocessed for ResNet-50 as ``keras.applications.ResNet50`` expects.

:func:`iterate_batches` walks either source as NumPy ``(images, labels)`` batches, for calibration and
evaluation loops that want plain arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from qdq_toolkit._validation import check_positive_int

__all__ = [
    "DIGITS_CLASS_NAMES",
    "DigitsData",
    "IMAGENET_LABEL_OFFSET",
    "IMAGENET_NUM_CLASSES",
    "IMAGENET_SPLITS",
    "ImageSplit",
    "imagenet_dataset",
    "imagenet_files",
    "imagenet_synsets",
    "iterate_batches",
    "load_digits",
    "preprocess_imagenet_eval",
    "preprocess_imagenet_train",
    "resize_shorter_side",
]

# ----------------------------------------------------------------------------------------------------------
# The small real dataset: handwritten digits
# ----------------------------------------------------------------------------------------------------------

DIGITS_CLASS_NAMES: tuple[str, ...] = tuple(str(digit) for digit in range(10))
"""Class names of the digits dataset; label ``k`` is the digit ``k``."""

_DIGITS_NATIVE_SIZE = 8
_DIGITS_MAX_VALUE = 16.0  # pixels are counts of set bits in 4x4 blocks of the 32x32 scans: 0..16

_EXAMPLES_EXTRA_HINT = 'pip install "qdq-toolkit[examples]"'


@dataclass(frozen=True)
class ImageSplit:
    """One split of an in-memory image dataset.

    Attributes:
        images: float32 array of shape ``(N, H, W, C)`` with values in ``[0, 1]``.
        labels: int32 array of shape ``(N,)`` with class indices.
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(images, labels)`` NumPy batches in order; the last batch may be smaller."""
        return iterate_batches((self.images, self.labels), batch_size=batch_size)

    def as_dataset(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
        """Return a batched, prefetched ``tf.data.Dataset`` of ``(images, labels)`` over this split.

        Args:
            batch_size: images per batch; the last batch may be smaller.
            shuffle: reshuffle the whole split every epoch (``seed`` makes the order reproducible).
            seed: seed of the shuffle.
        """
        _check_positive_int("batch_size", batch_size)
        dataset = tf.data.Dataset.from_tensor_slices((self.images, self.labels))
        if shuffle:
            dataset = dataset.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


@dataclass(frozen=True)
class DigitsData:
    """The digits dataset split into train / (optional) validation / test.

    Attributes:
        train: the training split.
        val: the validation split, or ``None`` when ``val_fraction`` was 0.
        test: the held-out test split.
        class_names: ``("0", ..., "9")``; label ``k`` is the digit ``k``.
        image_size: height and width of every image.
        channels: 1 (greyscale) or 3 (the grey value repeated, for RGB models).
    """

    train: ImageSplit
    val: ImageSplit | None
    test: ImageSplit
    class_names: tuple[str, ...]
    image_size: int
    channels: int

    @property
    def num_classes(self) -> int:
        """Number of classes (10)."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(image_size, image_size, channels)``, e.g. for ``keras.Input``."""
        return (self.image_size, self.image_size, self.channels)


def load_digits(
    image_size: int = _DIGITS_NATIVE_SIZE,
    channels: int = 1,
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
) -> DigitsData:
    """Load scikit-learn's handwritten digits as float32 NHWC images in ``[0, 1]``, split stratified by class.

    The dataset is the test part of the UCI ML "Optical Recognition of Handwritten Digits" data set
    (Alpaydin & Kaynak, 1998) as shipped inside scikit-learn: 1797 images of 8x8 pixels, 10 classes (the
    digits 0-9, 174 to 183 images each). Nothing is downloaded.

    Pixels (integers 0..16) are divided by 16. With ``image_size > 8`` the images are upsampled with bilinear
    interpolation (``tf.image.resize``) so that image models such as ResNet-50 (at 32x32, say) can take them;
    with ``channels=3`` the grey value is repeated into R, G and B. Memory is ``1797 * image_size**2 *
    channels * 4`` bytes (0.2 GB at 64x64x3, 1.1 GB at 224x224x3).

    The split is stratified, so every split has the same class proportions, and deterministic: the same
    ``seed`` always yields the same arrays.

    Args:
        image_size: height and width of the returned images; at least 8 (the native size).
        channels: 1 for greyscale or 3 for RGB-shaped images.
        seed: seed of the stratified split.
        test_fraction: fraction of all images held out as the test split, in ``(0, 1)``.
        val_fraction: fraction of all images used as a validation split, in ``[0, 1)``; 0 (the default)
            means no validation split (``val`` is ``None``).

    Returns:
        A :class:`DigitsData` with ``train``, ``val`` and ``test`` splits and the class names.

    Raises:
        ImportError: scikit-learn is not installed (it comes with the ``examples`` extra).
        ValueError: an argument is out of range.
    """
    _check_positive_int("image_size", image_size)
    if image_size < _DIGITS_NATIVE_SIZE:
        raise ValueError(
            f"image_size={image_size} is smaller than the digits' native 8x8; pass image_size >= 8."
        )
    if channels not in (1, 3):
        raise ValueError(f"channels={channels!r} is not supported; pass 1 (greyscale) or 3 (RGB-shaped).")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must be strictly between 0 and 1, e.g. 0.2.")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} must be in [0, 1), e.g. 0.1 (or 0 for no split).")
    if test_fraction + val_fraction >= 1.0:
        raise ValueError(
            f"test_fraction + val_fraction = {test_fraction + val_fraction:g} leaves no training images; "
            "make their sum smaller than 1."
        )

    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ImportError(
            "The digits dataset comes from scikit-learn, which is not installed. "
            f"Install the examples extra: {_EXAMPLES_EXTRA_HINT}"
        ) from exc

    bunch = sklearn_load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / _DIGITS_MAX_VALUE)[..., np.newaxis]
    labels = np.asarray(bunch.target, dtype=np.int32)

    indices = np.arange(labels.shape[0])
    train_idx, test_idx = train_test_split(
        indices, test_size=test_fraction, random_state=seed, stratify=labels, shuffle=True
    )
    val_idx: np.ndarray | None = None
    if val_fraction > 0.0:
        # val_fraction is a fraction of *all* images; re-express it relative to what is left after the test split.
        train_idx, val_idx = train_test_split(
            train_idx,
            test_size=val_fraction / (1.0 - test_fraction),
            random_state=seed,
            stratify=labels[train_idx],
            shuffle=True,
        )

    def make_split(split_indices: np.ndarray) -> ImageSplit:
        split_images = _resize_digits(images[split_indices], image_size)
        if channels == 3:
            split_images = np.repeat(split_images, 3, axis=-1)
        return ImageSplit(images=np.ascontiguousarray(split_images), labels=labels[split_indices].copy())

    return DigitsData(
        train=make_split(train_idx),
        val=make_split(val_idx) if val_idx is not None else None,
        test=make_split(test_idx),
        class_names=DIGITS_CLASS_NAMES,
        image_size=image_size,
        channels=channels,
    )


def _resize_digits(images: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinearly upsample ``(N, 8, 8, 1)`` images in ``[0, 1]`` to ``image_size`` (a copy when unchanged)."""
    if image_size == _DIGITS_NATIVE_SIZE:
        return images.copy()
    resized = tf.image.resize(images, (image_size, image_size), method="bilinear").numpy()
    return np.clip(resized, 0.0, 1.0).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------------------
# ImageNet ILSVRC2012 TFRecords
# ----------------------------------------------------------------------------------------------------------

IMAGENET_SPLITS: tuple[str, ...] = ("train", "validation")
"""Split names of the TFRecord layout: files ``train-00000-of-01024`` ... and ``validation-00000-of-00128`` ...."""

IMAGENET_NUM_CLASSES = 1000

IMAGENET_LABEL_OFFSET = 1
"""What ``build_imagenet_data.py`` adds to a class index: ``image/class/label`` is 1..1000, with 0 reserved
for "background". :func:`imagenet_dataset` subtracts it, returning labels 0..999 -- the order of
``keras.applications`` ImageNet models (synsets sorted alphabetically)."""

# The keras.applications / TF official ResNet recipe: resize the shorter side to 256 and crop 224 (ratio 0.875).
_RESNET_RESIZE_MIN = 256
_RESNET_CROP_SIZE = 224

# tf.image.sample_distorted_bounding_box arguments of the TF official ResNet pipeline
# (tensorflow/models, official/.../resnet/imagenet_preprocessing.py).
_CROP_MIN_OBJECT_COVERED = 0.1
_CROP_ASPECT_RATIO_RANGE = (0.75, 1.33)
_CROP_AREA_RANGE = (0.05, 1.0)
_CROP_MAX_ATTEMPTS = 100

_FEATURE_ENCODED = "image/encoded"
_FEATURE_LABEL = "image/class/label"
_SYNSETS_FILE = "synsets.txt"
_PREPARE_HINT = "Write them with `python data/prepare_imagenet.py` (see data/README.md)."

Preprocess = str | Callable[[tf.Tensor], tf.Tensor] | None


def resize_shorter_side(image_size: int) -> int:
    """Shorter side an evaluation image is resized to before its central ``image_size`` crop.

    The ResNet recipe resizes to 256 and crops 224; other sizes keep that 256/224 ratio (rounded), e.g.
    ``resize_shorter_side(224) == 256``, ``resize_shorter_side(32) == 37``.
    """
    _check_positive_int("image_size", image_size)
    return int(round(image_size * _RESNET_RESIZE_MIN / _RESNET_CROP_SIZE))


def imagenet_files(data_dir: str | os.PathLike[str], split: str) -> list[str]:
    """Sorted paths of the TFRecord shards of ``split`` (files matching ``<split>-*-of-*``) in ``data_dir``.

    ``data_dir`` may be any path ``tf.io.gfile`` understands (a local directory, ``~/...``, ``gs://...``).

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"validation"``, or the files mix shard sets of different
            sizes (e.g. ``-of-01024`` and ``-of-00512``: two conversions into one directory).
        FileNotFoundError: ``data_dir`` does not exist or holds no shard of ``split``; the message names the
            glob that was tried and the files that are there.
    """
    if split not in IMAGENET_SPLITS:
        hint = " (did you mean 'validation'?)" if split in ("val", "valid", "test", "eval") else ""
        raise ValueError(f"Unknown ImageNet split {split!r}{hint}; pass one of {list(IMAGENET_SPLITS)}.")
    directory = os.path.expanduser(os.fspath(data_dir))
    if not tf.io.gfile.isdir(directory):
        raise FileNotFoundError(f"ImageNet TFRecord directory {directory!r} does not exist. {_PREPARE_HINT}")
    pattern = os.path.join(directory, f"{split}-*-of-*")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        present = sorted(tf.io.gfile.listdir(directory))
        if present:
            shown = ", ".join(present[:10]) + (f", ... ({len(present)} entries)" if len(present) > 10 else "")
            there = f"the directory holds: {shown}"
        else:
            there = "the directory is empty"
        raise FileNotFoundError(
            f"No {split!r} TFRecord shards in {directory!r}: the glob {pattern!r} matched nothing ({there}). "
            f"Expected files named like '{split}-00000-of-01024'. {_PREPARE_HINT}"
        )
    shard_counts = sorted({path.rsplit("-of-", 1)[-1] for path in files})
    if len(shard_counts) > 1:
        raise ValueError(
            f"The {split!r} shards in {directory!r} come from different conversions (shard counts "
            f"{', '.join(shard_counts)}); keep one set, e.g. re-run data/prepare_imagenet.py with --force."
        )
    return files


def imagenet_synsets(data_dir: str | os.PathLike[str]) -> tuple[str, ...]:
    """WordNet synset ids in label order (0-based label ``k`` is entry ``k``), from ``<data_dir>/synsets.txt``.

    ``data/prepare_imagenet.py`` writes that file next to the shards; each line is a synset id, optionally
    followed by a tab and a human-readable name.

    Raises:
        FileNotFoundError: the directory has no ``synsets.txt`` (TFRecords written by another tool).
    """
    path = os.path.join(os.path.expanduser(os.fspath(data_dir)), _SYNSETS_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path!r} does not exist; it is written by data/prepare_imagenet.py. For TFRecords made by "
            "another tool, the synsets sorted alphabetically give the same label order."
        )
    with tf.io.gfile.GFile(path, "r") as handle:
        return tuple(line.split("\t", 1)[0].strip() for line in handle if line.strip())


def preprocess_imagenet_eval(image_bytes: tf.Tensor, image_size: int = _RESNET_CROP_SIZE) -> tf.Tensor:
    """Evaluation preprocessing of ResNet: decode, resize, central crop -- *before* ``preprocess_input``.

    Decodes the JPEG to RGB, resizes it (bilinear, aspect preserving) so that its shorter side is
    :func:`resize_shorter_side` ``(image_size)`` (256 for 224), then takes the central ``image_size`` square.

    Returns:
        float32 RGB image of shape ``(image_size, image_size, 3)`` with values in ``[0, 255]``.
    """
    image = tf.io.decode_jpeg(image_bytes, channels=3)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    resize_min = resize_shorter_side(image_size)
    # Exactly `resize_min` on the shorter side (no float truncation to 255), the other side rounded.
    scale = tf.cast(resize_min, tf.float32) / tf.cast(tf.minimum(height, width), tf.float32)
    new_height = tf.where(
        height <= width, resize_min, tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32)
    )
    new_width = tf.where(
        width < height, resize_min, tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32)
    )
    image = tf.image.resize(image, tf.stack([new_height, new_width]), method="bilinear")
    top = (new_height - image_size) // 2
    left = (new_width - image_size) // 2
    image = tf.slice(image, tf.stack([top, left, 0]), [image_size, image_size, 3])
    image.set_shape([image_size, image_size, 3])
    return image


def preprocess_imagenet_train(
    image_bytes: tf.Tensor, image_size: int = _RESNET_CROP_SIZE, seed: int | None = None
) -> tf.Tensor:
    """Training augmentation of the TF official ResNet pipeline -- *before* ``preprocess_input``.

    Samples a crop window with ``tf.image.sample_distorted_bounding_box`` over the whole image (at least 10 %
    of it covered, aspect ratio 3/4..4/3, 5-100 % of the area), decodes only that window, flips it left-right
    at random and resizes it (bilinear) to ``image_size`` x ``image_size``.

    Returns:
        float32 RGB image of shape ``(image_size, image_size, 3)`` with values in ``[0, 255]``.
    """
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.io.extract_jpeg_shape(image_bytes),
        bounding_boxes=whole_image,
        seed=seed,
        min_object_covered=_CROP_MIN_OBJECT_COVERED,
        aspect_ratio_range=_CROP_ASPECT_RATIO_RANGE,
        area_range=_CROP_AREA_RANGE,
        max_attempts=_CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    offset_y, offset_x, _ = tf.unstack(begin)
    crop_height, crop_width, _ = tf.unstack(size)
    window = tf.stack([offset_y, offset_x, crop_height, crop_width])
    image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
    image = tf.image.random_flip_left_right(image, seed=seed)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    image.set_shape([image_size, image_size, 3])
    return image


def _resolve_preprocess(preprocess: Preprocess) -> Callable[[tf.Tensor], tf.Tensor]:
    """Map the ``preprocess`` argument of :func:`imagenet_dataset` to a function of a float32 RGB image."""
    if preprocess is None or preprocess == "none":
        return lambda image: image
    if preprocess == "resnet50":
        return keras.applications.resnet50.preprocess_input
    if callable(preprocess):
        return preprocess
    raise ValueError(
        f"Unknown preprocess={preprocess!r}; pass 'resnet50' (keras.applications.resnet50.preprocess_input), "
        "None (float32 RGB in [0, 255]) or a function of one float32 RGB image."
    )


def imagenet_dataset(
    data_dir: str | os.PathLike[str],
    split: str = "train",
    batch_size: int = 32,
    image_size: int = _RESNET_CROP_SIZE,
    shuffle: bool | None = None,
    repeat: bool = False,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    preprocess: Preprocess = "resnet50",
    *,
    augment: bool | None = None,
    drop_remainder: bool = False,
    shuffle_buffer: int = 10_000,
    seed: int | None = None,
    label_offset: int = IMAGENET_LABEL_OFFSET,
) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` of ``(images, labels)`` read from ImageNet TFRecord shards.

    The shards are the files ``<split>-NNNNN-of-MMMMM`` in ``data_dir`` (the layout of the TPU / Inception
    ``build_imagenet_data.py`` script and of ``data/prepare_imagenet.py``), each record a ``tf.train.Example``
    with ``image/encoded`` (JPEG bytes) and ``image/class/label`` (int64, 1..1000 in that convention). Other
    features (``image/class/synset``, sizes, boxes) may be present and are ignored.

    Preprocessing follows ResNet-50 of ``keras.applications``:

    * evaluation (``augment=False``, the default for ``"validation"``): decode, resize the shorter side to 256
      keeping the aspect ratio, central 224 crop (:func:`preprocess_imagenet_eval`);
    * training (``augment=True``, the default for ``"train"``): random crop from
      ``tf.image.sample_distorted_bounding_box``, random left-right flip, resize to 224
      (:func:`preprocess_imagenet_train`);
    * then ``keras.applications.resnet50.preprocess_input`` ("caffe" mode: RGB to BGR, minus the ImageNet
      channel means, no scaling).

    Another ``image_size`` scales the 256/224 ratio (:func:`resize_shorter_side`).

    Args:
        data_dir: directory of the shards (local or any ``tf.io.gfile`` path such as ``gs://...``).
        split: ``"train"`` or ``"validation"``.
        batch_size: images per batch.
        image_size: height and width of the output images.
        shuffle: shuffle the shard order and the records (through a buffer of ``shuffle_buffer`` records);
            defaults to ``True`` for ``"train"`` and ``False`` for ``"validation"``. Unshuffled, the order is
            deterministic.
        repeat: repeat forever (for ``model.fit(..., steps_per_epoch=...)``).
        num_parallel_calls: parallelism of reading and preprocessing.
        preprocess: ``"resnet50"`` (the default), ``None`` to get float32 RGB images in ``[0, 255]``, or a
            function applied to each float32 RGB ``(image_size, image_size, 3)`` image in ``[0, 255]`` (e.g.
            another model's ``keras.applications.<model>.preprocess_input``).
        augment: use the training augmentation; defaults to ``split == "train"``.
        drop_remainder: drop the last, smaller batch (static batch dimension).
        shuffle_buffer: records in the shuffle buffer (encoded JPEGs, about 110 kB each).
        seed: seed of shuffling and augmentation, for reproducible runs.
        label_offset: subtracted from ``image/class/label``; 1 for the ``build_imagenet_data.py`` convention,
            0 for TFRecords whose labels are already 0..999.

    Returns:
        A dataset of ``(images, labels)``: float32 ``(batch, image_size, image_size, 3)`` and int32
        ``(batch,)`` with labels 0..999. A record whose label is below ``label_offset`` fails at run time with
        an ``InvalidArgumentError`` that says so.

    Raises:
        ValueError: unknown ``split`` or ``preprocess``, or a non-positive size.
        FileNotFoundError: the directory or the split's shards are missing (see :func:`imagenet_files`).
    """
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("image_size", image_size)
    _check_positive_int("shuffle_buffer", shuffle_buffer)
    transform = _resolve_preprocess(preprocess)
    files = imagenet_files(data_dir, split)
    is_train = split == "train"
    shuffle = is_train if shuffle is None else shuffle
    augment = is_train if augment is None else augment

    feature_spec = {
        _FEATURE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        _FEATURE_LABEL: tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        features = tf.io.parse_single_example(record, feature_spec)
        raw_label = features[_FEATURE_LABEL]
        check = tf.debugging.assert_greater_equal(
            raw_label,
            tf.constant(label_offset, tf.int64),
            message=(
                f"image/class/label is below label_offset={label_offset}: these TFRecords do not use the "
                "1-based build_imagenet_data.py labels; pass label_offset=0 if their labels are 0..999"
            ),
        )
        with tf.control_dependencies([check]):
            label = tf.cast(raw_label - label_offset, tf.int32)
        if augment:
            image = preprocess_imagenet_train(features[_FEATURE_ENCODED], image_size, seed=seed)
        else:
            image = preprocess_imagenet_eval(features[_FEATURE_ENCODED], image_size)
        image = tf.cast(transform(image), tf.float32)
        image.set_shape([image_size, image_size, 3])
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, buffer_size=8 * 1024 * 1024),
        cycle_length=min(16, len(files)),
        num_parallel_calls=num_parallel_calls,
        deterministic=not shuffle,
    )
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(parse, num_parallel_calls=num_parallel_calls, deterministic=not shuffle)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------------------------------------
# NumPy iteration
# ----------------------------------------------------------------------------------------------------------


def iterate_batches(
    source: tf.data.Dataset | tuple[np.ndarray, np.ndarray] | Iterable[tuple[np.ndarray, np.ndarray]],
    batch_size: int | None = None,
    *,
    max_batches: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, labels)`` NumPy batches from a dataset or from in-memory arrays.

    Args:
        source: a batched ``tf.data.Dataset`` of ``(images, labels)`` (e.g. from :func:`imagenet_dataset`),
            a pair of arrays ``(images, labels)`` (e.g. ``(split.images, split.labels)``) cut into batches of
            ``batch_size``, or any iterable of ``(images, labels)`` batches.
        batch_size: batch size for a pair of arrays; must be ``None`` otherwise (the dataset is batched).
        max_batches: stop after this many batches (e.g. for a quick calibration); ``None`` for all.

    Raises:
        ValueError: ``batch_size`` is missing for arrays or given for a dataset, or a count is not positive.
    """
    if max_batches is not None:
        _check_positive_int("max_batches", max_batches)
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], np.ndarray):
        if batch_size is None:
            raise ValueError("Pass batch_size to iterate over a pair of arrays (images, labels).")
        _check_positive_int("batch_size", batch_size)
        images, labels = source
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} != {len(labels)}.")
        return _array_batches(images, labels, batch_size, max_batches)
    if batch_size is not None:
        raise ValueError(
            "batch_size only applies to a pair of arrays; a dataset is already batched (set it there)."
        )
    return _dataset_batches(source, max_batches)


def _array_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, max_batches: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for index, start in enumerate(range(0, len(labels), batch_size)):
        if max_batches is not None and index >= max_batches:
            return
        yield images[start : start + batch_size], labels[start : start + batch_size]


def _dataset_batches(
    source: tf.data.Dataset | Iterable[tuple[np.ndarray, np.ndarray]], max_batches: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    iterable = source.as_numpy_iterator() if isinstance(source, tf.data.Dataset) else source
    for index, batch in enumerate(iterable):
        if max_batches is not None and index >= max_batches:
            return
        images, labels = batch
        yield np.asarray(images), np.asarray(labels)


def _check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive int (bools are rejected)."""
    check_positive_int(name, value)
