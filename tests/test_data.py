"""Dataset readers: the digits loader, the ImageNet TFRecord reader and the ImageNet preparation script."""

from __future__ import annotations

import collections
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from qdq_toolkit import data

REPO_ROOT = Path(__file__).resolve().parents[1]
PREPARE_SCRIPT = REPO_ROOT / "data" / "prepare_imagenet.py"
SYNSETS = ("n01440764", "n01443537")


# ----------------------------------------------------------------------------------------------------------
# Digits
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> data.DigitsData:
    return data.load_digits()


def test_digits_shapes_dtype_range_and_labels(digits: data.DigitsData) -> None:
    assert len(digits.train) + len(digits.test) == 1797
    assert len(digits.test) == pytest.approx(0.2 * 1797, abs=1)
    assert digits.val is None
    assert digits.class_names == tuple("0123456789") and digits.num_classes == 10
    assert digits.input_shape == (8, 8, 1)
    for split in (digits.train, digits.test):
        assert split.images.shape == (len(split), 8, 8, 1)
        assert split.images.dtype == np.float32
        assert split.labels.dtype == np.int32
        assert split.images.min() == 0.0 and split.images.max() == 1.0
        assert set(np.unique(split.labels)) == set(range(10))


def test_digits_are_sklearn_pixels_over_16(digits: data.DigitsData) -> None:
    from sklearn.datasets import load_digits as sklearn_load_digits

    raw = sklearn_load_digits()
    originals = {
        (img / 16.0).astype(np.float32).tobytes(): int(lbl)
        for img, lbl in zip(raw.images, raw.target, strict=True)
    }
    for image, label in zip(digits.test.images[:50], digits.test.labels[:50], strict=True):
        assert originals[image[..., 0].tobytes()] == label


def test_digits_split_is_stratified_and_deterministic(digits: data.DigitsData) -> None:
    again = data.load_digits()
    np.testing.assert_array_equal(again.train.images, digits.train.images)
    np.testing.assert_array_equal(again.test.labels, digits.test.labels)
    other = data.load_digits(seed=1)
    assert not np.array_equal(other.test.labels, digits.test.labels)

    overall = np.bincount(np.concatenate([digits.train.labels, digits.test.labels]), minlength=10)
    np.testing.assert_allclose(np.bincount(digits.test.labels, minlength=10), overall * 0.2, atol=1.0)


def test_digits_validation_split() -> None:
    split = data.load_digits(test_fraction=0.2, val_fraction=0.1)
    assert split.val is not None
    assert len(split.train) + len(split.val) + len(split.test) == 1797
    assert len(split.val) == pytest.approx(0.1 * 1797, abs=1)
    assert set(np.unique(split.val.labels)) == set(range(10))


def test_digits_resized_to_rgb(digits: data.DigitsData) -> None:
    big = data.load_digits(image_size=32, channels=3)
    assert big.input_shape == (32, 32, 3)
    assert big.train.images.shape == (len(digits.train), 32, 32, 3)
    assert big.train.images.dtype == np.float32
    assert 0.0 <= big.train.images.min() and big.train.images.max() <= 1.0
    np.testing.assert_array_equal(big.train.labels, digits.train.labels)  # same seed, same split
    np.testing.assert_array_equal(big.train.images[..., 0], big.train.images[..., 2])
    # Bilinear upsampling keeps the picture: averaging 4x4 blocks gives back roughly the 8x8 original.
    pooled = big.test.images[..., :1].reshape(-1, 8, 4, 8, 4, 1).mean(axis=(2, 4))
    own = np.abs(pooled - digits.test.images).mean()
    shifted = np.abs(pooled - np.roll(digits.test.images, 1, axis=0)).mean()
    assert own < 0.1 and own < shifted / 3


@pytest.mark.parametrize(
    "kwargs",
    [{"channels": 2}, {"image_size": 4}, {"test_fraction": 0.0}, {"val_fraction": 0.9}, {"image_size": 8.5}],
)
def test_digits_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        data.load_digits(**kwargs)


def test_digits_without_sklearn_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "qdq-toolkit\[examples\]"'):
        data.load_digits()


def test_numpy_batches_from_arrays_and_datasets(digits: data.DigitsData) -> None:
    batches = list(digits.test.batches(100))
    assert [len(labels) for _, labels in batches] == [100, 100, 100, len(digits.test) - 300]
    np.testing.assert_array_equal(np.concatenate([images for images, _ in batches]), digits.test.images)
    assert len(list(data.iterate_batches((digits.test.images, digits.test.labels), 64, max_batches=2))) == 2

    from_dataset = list(data.iterate_batches(digits.test.as_dataset(128)))
    assert all(isinstance(images, np.ndarray) for images, _ in from_dataset)
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in from_dataset]), digits.test.labels)
    with pytest.raises(ValueError, match="batch_size"):
        list(data.iterate_batches((digits.test.images, digits.test.labels)))


# ----------------------------------------------------------------------------------------------------------
# ImageNet TFRecord reader, on shards written here in the build_imagenet_data.py layout
# ----------------------------------------------------------------------------------------------------------


def _synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth RGB test picture (gradients plus a little noise) that JPEG keeps recognisable."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [(x * (3 + seed) + y * 2) % 256, (y * (5 + seed)) % 256, (x + y + 40 * seed) % 256]
    image = np.stack(channels, axis=-1) + rng.integers(0, 8, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray) -> bytes:
    return tf.io.encode_jpeg(image, quality=95).numpy()


def _example(jpeg: bytes, label: int, synset: str) -> bytes:
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "image/class/synset": tf.train.Feature(bytes_list=tf.train.BytesList(value=[synset.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_shard(path: Path, records: list[tuple[bytes, int]]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for jpeg, label in records:
            writer.write(_example(jpeg, label, SYNSETS[(label - 1) % len(SYNSETS)]))


# (height, width) of the validation images; image_size 32 resizes the shorter side to 37.
VAL_SIZES = [(37, 50), (60, 37), (74, 100), (45, 45), (40, 64)]
VAL_LABELS_1_BASED = [1, 1000, 2, 3, 500]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenet_tfrecords")
    records = [
        (_jpeg(_synthetic_image(h, w, i)), lbl)
        for i, ((h, w), lbl) in enumerate(zip(VAL_SIZES, VAL_LABELS_1_BASED, strict=True))
    ]
    _write_shard(root / "validation-00000-of-00002", records[:3])
    _write_shard(root / "validation-00001-of-00002", records[3:])
    _write_shard(
        root / "train-00000-of-00001", [(_jpeg(_synthetic_image(48, 64, 7 + i)), 1 + i) for i in range(6)]
    )
    return root


def _decoded(index: int) -> np.ndarray:
    h, w = VAL_SIZES[index]
    return tf.io.decode_jpeg(_jpeg(_synthetic_image(h, w, index)), channels=3).numpy().astype(np.float32)


def test_resize_shorter_side_keeps_the_resnet_ratio() -> None:
    assert data.resize_shorter_side(224) == 256
    assert data.resize_shorter_side(32) == 37
    assert data.resize_shorter_side(299) == 342


def test_imagenet_validation_labels_become_zero_based(shard_dir: Path) -> None:
    dataset = data.imagenet_dataset(shard_dir, "validation", batch_size=2, image_size=32)
    batches = list(data.iterate_batches(dataset))
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert [b[0].shape for b in batches] == [(2, 32, 32, 3), (2, 32, 32, 3), (1, 32, 32, 3)]
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert collections.Counter(labels.tolist()) == collections.Counter(v - 1 for v in VAL_LABELS_1_BASED)
    again = np.concatenate([b[1] for b in data.iterate_batches(dataset)])
    np.testing.assert_array_equal(again, labels)  # unshuffled validation order is deterministic


def test_imagenet_eval_preprocessing_is_center_crop_then_resnet50_preprocess_input(shard_dir: Path) -> None:
    dataset = data.imagenet_dataset(shard_dir, "validation", batch_size=8, image_size=32)
    ((images, labels),) = list(data.iterate_batches(dataset))
    by_label = dict(zip(labels.tolist(), images, strict=True))

    def expected(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        top, left = (h - 32) // 2, (w - 32) // 2
        crop = image[top : top + 32, left : left + 32].copy()
        return keras.applications.resnet50.preprocess_input(crop)  # caffe: BGR, minus the ImageNet means

    # Shorter side already 37 (= 256/224 * 32): only the central crop.
    np.testing.assert_allclose(by_label[0], expected(_decoded(0)), atol=1e-3)
    np.testing.assert_allclose(by_label[999], expected(_decoded(1)), atol=1e-3)
    # 74x100: shorter side resized to 37 keeping the aspect ratio (-> 37x50), then the central crop.
    resized = tf.image.resize(_decoded(2), (37, 50), method="bilinear").numpy()
    np.testing.assert_allclose(by_label[1], expected(resized), atol=1e-3)


def test_imagenet_without_preprocess_gives_rgb_0_255(shard_dir: Path) -> None:
    dataset = data.imagenet_dataset(shard_dir, "validation", batch_size=8, image_size=32, preprocess=None)
    ((images, labels),) = list(data.iterate_batches(dataset))
    crop = _decoded(0)[2:34, 9:41]  # 37x50 -> central 32x32, RGB
    np.testing.assert_allclose(images[labels.tolist().index(0)], crop, atol=1e-3)


def test_imagenet_train_pipeline_augments_to_the_requested_size(shard_dir: Path) -> None:
    dataset = data.imagenet_dataset(
        shard_dir, "train", batch_size=4, image_size=24, seed=3, drop_remainder=True
    )
    ((images, labels),) = list(data.iterate_batches(dataset))
    assert dataset.element_spec[0].shape.as_list() == [4, 24, 24, 3]
    assert images.shape == (4, 24, 24, 3)
    assert set(labels.tolist()) <= set(range(6))
    # caffe preprocess_input of pixels in [0, 255]: BGR minus the means.
    assert images.min() >= -123.68 - 1e-3 and images.max() <= 255 - 103.939 + 1e-3
    repeated = data.imagenet_dataset(shard_dir, "train", batch_size=4, image_size=24, repeat=True)
    assert len(list(data.iterate_batches(repeated, max_batches=5))) == 5


def test_imagenet_rejects_zero_based_labels_unless_told(tmp_path: Path) -> None:
    _write_shard(tmp_path / "validation-00000-of-00001", [(_jpeg(_synthetic_image(40, 40, 0)), 0)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="label_offset=0"):
        list(data.iterate_batches(data.imagenet_dataset(tmp_path, "validation", batch_size=1, image_size=32)))
    dataset = data.imagenet_dataset(tmp_path, "validation", batch_size=1, image_size=32, label_offset=0)
    assert next(data.iterate_batches(dataset))[1].tolist() == [0]


def test_imagenet_errors_say_what_is_wrong(tmp_path: Path, shard_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist.*prepare_imagenet"):
        data.imagenet_dataset(tmp_path / "missing", "validation")
    (tmp_path / "val-00000-of-00001").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"validation-\*-of-\*.*val-00000-of-00001"):
        data.imagenet_dataset(tmp_path, "validation")
    with pytest.raises(ValueError, match="did you mean 'validation'"):
        data.imagenet_dataset(shard_dir, "val")
    with pytest.raises(ValueError, match="preprocess"):
        data.imagenet_dataset(shard_dir, "validation", preprocess="resnet")
    (tmp_path / "validation-00000-of-00002").write_bytes(b"")
    (tmp_path / "validation-00000-of-00004").write_bytes(b"")
    with pytest.raises(ValueError, match="different conversions"):
        data.imagenet_files(tmp_path, "validation")


# ----------------------------------------------------------------------------------------------------------
# data/prepare_imagenet.py
# ----------------------------------------------------------------------------------------------------------


def _load_prepare_module():
    spec = importlib.util.spec_from_file_location("prepare_imagenet", PREPARE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def _run_prepare(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, str(PREPARE_SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


# Validation images 1..4 show these synsets (image 3 is stored as CMYK JPEG when Pillow is there).
RAW_VAL_SYNSETS = [SYNSETS[1], SYNSETS[0], SYNSETS[1], SYNSETS[0]]


@pytest.fixture(scope="module")
def raw_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny raw ILSVRC2012 tree: 2 synsets x 3 training images, 4 validation images and a labels file."""
    root = tmp_path_factory.mktemp("raw_imagenet")
    for s, synset in enumerate(SYNSETS):
        (root / "train" / synset).mkdir(parents=True)
        for i in range(3):
            image = _synthetic_image(30 + 4 * i, 40, 10 * s + i)
            path = root / "train" / synset / f"{synset}_{i}.JPEG"
            # One PNG with a .JPEG name, as n02105855_2933.JPEG in the real data.
            path.write_bytes(tf.io.encode_png(image).numpy() if (s, i) == (1, 2) else _jpeg(image))
    (root / "val").mkdir()
    for index in range(1, 5):
        image = _synthetic_image(36, 44, 20 + index)
        path = root / "val" / f"ILSVRC2012_val_{index:08d}.JPEG"
        if index == 3 and importlib.util.find_spec("PIL") is not None:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(image).convert("CMYK").save(buffer, format="JPEG", quality=95)
            path.write_bytes(buffer.getvalue())
        elif index == 4:
            path.write_bytes(tf.io.encode_jpeg(image[..., :1], quality=95).numpy())  # greyscale, kept as is
        else:
            path.write_bytes(_jpeg(image))
    (root / "val_labels.txt").write_text("".join(f"{s}\n" for s in RAW_VAL_SYNSETS))
    return root


@pytest.fixture(scope="module")
def prepared(raw_imagenet: Path) -> Path:
    out = raw_imagenet / "tfrecords"
    result = _run_prepare(
        "--train-dir", raw_imagenet / "train", "--val-dir", raw_imagenet / "val",
        "--val-labels", raw_imagenet / "val_labels.txt", "--output-dir", out,
        "--train-shards", "2", "--val-shards", "2", "--workers", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def _records(path: Path) -> list[dict[str, object]]:
    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        "image/class/synset": tf.io.FixedLenFeature([], tf.string),
        "image/filename": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
    }
    dataset = tf.data.TFRecordDataset(sorted(str(p) for p in path.parent.glob(path.name)))
    return [tf.io.parse_single_example(r, spec) for r in dataset]


def test_prepare_writes_the_imagenet_layout(prepared: Path, raw_imagenet: Path) -> None:
    names = sorted(p.name for p in prepared.iterdir())
    assert names == [
        "synsets.txt", "train-00000-of-00002", "train-00001-of-00002",
        "validation-00000-of-00002", "validation-00001-of-00002",
    ]  # fmt: skip
    assert data.imagenet_synsets(prepared) == SYNSETS
    records = _records(prepared / "*-of-*")
    assert len(records) == 10
    for record in records:
        # Labels are 1-based sorted-synset indices; every image is now an RGB (or greyscale) JPEG.
        assert (
            int(record["image/class/label"])
            == SYNSETS.index(record["image/class/synset"].numpy().decode()) + 1
        )
        encoded = record["image/encoded"].numpy()
        assert encoded[:2] == b"\xff\xd8"
        decoded = tf.io.decode_jpeg(encoded, channels=3)
        assert decoded.shape[:2] == (int(record["image/height"]), int(record["image/width"]))
    by_name = {r["image/filename"].numpy().decode(): r for r in records}
    png = tf.io.decode_jpeg(by_name[f"{SYNSETS[1]}_2.JPEG"]["image/encoded"], channels=3).numpy()
    # The PNG, re-encoded as JPEG at quality 100, still shows the same picture.
    assert np.abs(png.astype(int) - _synthetic_image(38, 40, 12).astype(int)).mean() < 3
    # The CMYK JPEG (when Pillow could write one) is now a 3-component JPEG showing the same picture.
    cmyk_raw = (raw_imagenet / "val" / "ILSVRC2012_val_00000003.JPEG").read_bytes()
    cmyk_new = by_name["ILSVRC2012_val_00000003.JPEG"]["image/encoded"].numpy()
    assert _load_prepare_module().jpeg_header(cmyk_new)[2] == 3
    before = tf.io.decode_image(cmyk_raw, channels=3).numpy().astype(int)
    after = tf.io.decode_jpeg(cmyk_new, channels=3).numpy().astype(int)
    assert np.abs(after - before).mean() < 6


def test_prepared_shards_read_back_with_the_reader(prepared: Path) -> None:
    dataset = data.imagenet_dataset(prepared, "validation", batch_size=4, image_size=32)
    ((images, labels),) = list(data.iterate_batches(dataset))
    assert images.shape == (4, 32, 32, 3)
    assert sorted(labels.tolist()) == sorted(SYNSETS.index(s) for s in RAW_VAL_SYNSETS)
    train = data.imagenet_dataset(prepared, "train", batch_size=6, image_size=32)
    ((_, train_labels),) = list(data.iterate_batches(train))
    assert sorted(train_labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_prepare_refuses_to_overwrite_without_force(prepared: Path, raw_imagenet: Path) -> None:
    before = {p.name: p.read_bytes() for p in prepared.iterdir()}
    result = _run_prepare(
        "--val-dir", raw_imagenet / "val", "--val-labels", raw_imagenet / "val_labels.txt",
        "--output-dir", prepared, "--val-shards", "2",
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "--force" in result.stderr
    assert {p.name: p.read_bytes() for p in prepared.iterdir()} == before


def test_prepare_force_replaces_a_split(tmp_path: Path, raw_imagenet: Path) -> None:
    mod = _load_prepare_module()
    out = tmp_path / "out"
    common = ["--val-dir", str(raw_imagenet / "val"), "--val-labels", str(raw_imagenet / "val_labels.txt")]
    assert mod.main([*common, "--output-dir", str(out), "--val-shards", "2", "--workers", "1"]) == 0
    assert mod.main([*common, "--output-dir", str(out), "--val-shards", "1", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["synsets.txt", "validation-00000-of-00001"]
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary files left


def test_prepare_accepts_a_validation_dir_sorted_by_synset(tmp_path: Path, raw_imagenet: Path) -> None:
    mod = _load_prepare_module()
    sorted_val = tmp_path / "val"
    for index, synset in enumerate(RAW_VAL_SYNSETS, start=1):
        name = f"ILSVRC2012_val_{index:08d}.JPEG"
        (sorted_val / synset).mkdir(parents=True, exist_ok=True)
        (sorted_val / synset / name).write_bytes((raw_imagenet / "val" / name).read_bytes())
    assert (
        mod.main(["--val-dir", str(sorted_val), "--output-dir", str(tmp_path / "out"), "--val-shards", "1"])
        == 0
    )
    dataset = data.imagenet_dataset(tmp_path / "out", "validation", batch_size=4, image_size=32)
    ((_, labels),) = list(data.iterate_batches(dataset))
    assert labels.tolist() == [SYNSETS.index(s) for s in sorted(RAW_VAL_SYNSETS)]  # file order: by directory


def test_prepare_reads_the_common_validation_label_formats(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    mod = _load_prepare_module()
    expected = {f"ILSVRC2012_val_{i:08d}": s for i, s in enumerate(RAW_VAL_SYNSETS, start=1)}

    kaggle = tmp_path / "LOC_val_solution.csv"
    kaggle.write_text(
        "ImageId,PredictionString\n"
        + "".join(f"{name},{s} 1 2 30 40 {s} 5 6 7 8\n" for name, s in reversed(expected.items()))
    )
    pairs = tmp_path / "val.txt"
    pairs.write_text("".join(f"{name}.JPEG {s}\n" for name, s in expected.items()))
    assert mod.read_val_labels(kaggle) == expected
    assert mod.read_val_labels(pairs) == expected

    # The image-net.org devkit: ground truth as ILSVRC2012 ids, mapped to synsets by meta.mat.
    devkit = tmp_path / "ILSVRC2012_devkit_t12"
    (devkit / "data").mkdir(parents=True)
    synsets = np.zeros(
        3, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    )
    synsets[:] = [(2, SYNSETS[0], "tench", 0), (1, SYNSETS[1], "goldfish", 0), (3, "n00000001", "fish", 2)]
    scipy_io.savemat(devkit / "data" / "meta.mat", {"synsets": synsets})
    ids = {SYNSETS[0]: 2, SYNSETS[1]: 1}
    (devkit / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{ids[s]}\n" for s in RAW_VAL_SYNSETS)
    )
    archive = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(devkit, arcname=devkit.name)
    assert mod.read_val_labels(archive) == expected
    assert mod.read_val_labels(devkit) == expected
    with pytest.raises(mod.PrepareError, match="devkit"):
        mod.read_val_labels(devkit / "data" / "ILSVRC2012_validation_ground_truth.txt")


@pytest.mark.parametrize(
    "case",
    [
        "missing_train_dir",
        "missing_val_dir",
        "missing_labels",
        "nothing_to_convert",
        "too_many_shards",
        "tar_in_train",
    ],
)
def test_prepare_input_errors_are_one_line_and_non_zero(
    case: str, tmp_path: Path, raw_imagenet: Path
) -> None:
    out = ["--output-dir", tmp_path / "out"]
    val = ["--val-dir", raw_imagenet / "val", "--val-labels", raw_imagenet / "val_labels.txt"]
    args, needle = {
        "missing_train_dir": (["--train-dir", tmp_path / "nope"], "does not exist"),
        "missing_val_dir": (
            ["--val-dir", tmp_path / "nope", "--val-labels", raw_imagenet / "val_labels.txt"],
            "does not exist",
        ),
        "missing_labels": (
            ["--val-dir", raw_imagenet / "val", "--val-labels", tmp_path / "nope.txt"],
            "does not exist",
        ),
        "nothing_to_convert": ([], "nothing to convert"),
        "too_many_shards": ([*val, "--val-shards", "128"], "--val-shards 4 or fewer"),
        "tar_in_train": (["--train-dir", tmp_path], "extract"),
    }[case]
    if case == "tar_in_train":
        (tmp_path / "n01440764.tar").write_bytes(b"")
    result = _run_prepare(*args, *out)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_help_documents_the_options() -> None:
    result = _run_prepare("--help")
    assert result.returncode == 0
    for text in (
        "--train-dir",
        "--val-labels",
        "--force",
        "--workers",
        "LOC_val_solution.csv",
        "train-00000-of-01024",
    ):
        assert text in result.stdout


def test_prepare_stops_on_a_broken_image_without_leaving_partial_shards(
    tmp_path: Path, raw_imagenet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = _load_prepare_module()
    val = tmp_path / "val"
    val.mkdir()
    for index in (1, 2):
        name = f"ILSVRC2012_val_{index:08d}.JPEG"
        (val / name).write_bytes((raw_imagenet / "val" / name).read_bytes())
    (val / "ILSVRC2012_val_00000003.JPEG").write_bytes(b"this is not an image")
    out = tmp_path / "out"
    args = [
        "--val-dir",
        str(val),
        "--val-labels",
        str(raw_imagenet / "val_labels.txt"),
        "--output-dir",
        str(out),
    ]
    assert mod.main([*args, "--val-shards", "1"]) == 1
    assert "error: cannot decode" in capsys.readouterr().err
    assert not list(out.glob("*validation*"))  # neither a shard nor a temporary file
