#!/usr/bin/env python3
"""Convert the raw ImageNet ILSVRC2012 images into sharded TFRecords for qdq_toolkit.data.imagenet_dataset.

Input (downloaded and extracted by hand, see data/README.md):

  --train-dir   one sub-directory per synset: <train-dir>/n01440764/n01440764_10026.JPEG, ...
  --val-dir     the 50,000 validation images in one flat directory: ILSVRC2012_val_00000001.JPEG, ...
                (or already sorted into per-synset sub-directories; then omit --val-labels)
  --val-labels  which synset each validation image shows, in one of these formats:
                  * LOC_val_solution.csv (Kaggle "ImageNet Object Localization Challenge"):
                      ImageId,PredictionString / ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...
                  * a text file with one synset per line in image order (line 1 is ILSVRC2012_val_00000001),
                    e.g. imagenet_2012_validation_synset_labels.txt of the TensorFlow models / TPU repositories
                  * a text or CSV file of "<image name> <synset>" pairs, one per line
                  * the ILSVRC2012 development kit from image-net.org (ILSVRC2012_devkit_t12.tar.gz, or the
                    directory it extracts to): its ground truth ids are mapped to synsets with its meta.mat
                    (needs scipy, which scikit-learn brings)

Output (--output-dir), the layout of the TPU / Inception build_imagenet_data.py script:

  train-00000-of-01024 ... train-01023-of-01024          training images, shuffled across shards
  validation-00000-of-00128 ... validation-00127-of-00128  validation images in file-name order
  synsets.txt                                            synsets in label order (line 1 is label 1)

Each record is a tf.train.Example with image/encoded (JPEG bytes), image/class/label (int64, 1..1000: the index
of the synset in sorted order plus one, 0 being reserved for "background" in that convention),
image/class/synset, image/filename, image/format, image/colorspace, image/channels, image/height and
image/width. The few ImageNet files that are PNG or CMYK JPEG in disguise are re-encoded as RGB JPEG (quality
100, no chroma subsampling), as build_imagenet_data.py does; they are found by reading each file's header, not
from a fixed list.

Shards are written by --workers threads, each shard to a temporary file renamed into place when complete.
Existing shards of a split are never overwritten unless --force is given; --force also removes that split's
shards from an earlier conversion with another shard count, so the reader never mixes two conversions.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import re
import sys
import tarfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRAIN_SPLIT = "train"
VAL_SPLIT = "validation"
SYNSETS_FILE = "synsets.txt"
LABEL_OFFSET = 1  # build_imagenet_data.py convention: label = sorted synset index + 1 (0 is "background")
TRAIN_SHUFFLE_SEED = 12345  # the seed build_imagenet_data.py shuffles the training files with
JPEG_QUALITY = 100  # of re-encoded PNG / CMYK files, as build_imagenet_data.py
IMAGE_SUFFIXES = (".jpeg", ".jpg")
SYNSET_PATTERN = re.compile(r"^n\d{8}$")
VAL_NAME_PATTERN = "ILSVRC2012_val_{index:08d}"
DEVKIT_META = "data/meta.mat"
DEVKIT_GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"

# JPEG start-of-frame markers (SOF0..SOF15 without DHT 0xC4, JPG 0xC8 and DAC 0xCC): they carry the image size
# and the number of colour components.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RST0..7, SOI: no length field


class PrepareError(Exception):
    """A problem with the user's input or output paths; main() prints it as one line and exits with 1."""


@dataclass(frozen=True)
class ImageEntry:
    """One image to convert: its file and its synset."""

    path: Path
    synset: str


@dataclass(frozen=True)
class ShardJob:
    """One output shard: its final path and the images that go into it."""

    path: Path
    entries: tuple[ImageEntry, ...]


# ----------------------------------------------------------------------------------------------------------
# Listing the inputs
# ----------------------------------------------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _check_dir(path: Path, flag: str) -> None:
    if not path.exists():
        raise PrepareError(
            f"{flag} {path} does not exist; pass the directory the archive was extracted into."
        )
    if not path.is_dir():
        raise PrepareError(
            f"{flag} {path} is not a directory; pass the directory the archive was extracted into."
        )


def list_synset_dirs(root: Path, flag: str) -> list[ImageEntry]:
    """Images of a directory with one sub-directory per synset (``<root>/<synset>/*.JPEG``), sorted by path."""
    _check_dir(root, flag)
    tars = sorted(p.name for p in root.glob("*.tar"))
    if tars:
        raise PrepareError(
            f"{flag} {root} holds {len(tars)} .tar files (e.g. {tars[0]}): extract each into a directory of "
            "its name first (see data/README.md)."
        )
    entries: list[ImageEntry] = []
    for synset_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        entries.extend(
            ImageEntry(path, synset_dir.name) for path in sorted(synset_dir.iterdir()) if _is_image(path)
        )
    if not entries:
        raise PrepareError(
            f"{flag} {root} has no <synset>/*.JPEG images; it should hold one directory per synset, "
            "e.g. n01440764/n01440764_10026.JPEG."
        )
    return entries


def _first_token_synset(value: str, where: str) -> str:
    token = value.split()[0] if value.split() else ""
    if not SYNSET_PATTERN.match(token):
        raise PrepareError(f"{where}: expected a WordNet synset id like n01440764, found {token!r}.")
    return token


def _read_kaggle_csv(path: Path) -> dict[str, str]:
    labels: dict[str, str] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise PrepareError(
                f"{path} is not a Kaggle LOC_val_solution.csv (columns ImageId,PredictionString)."
            )
        for line_number, row in enumerate(reader, start=2):
            where = f"{path}:{line_number}"
            labels[Path(row["ImageId"]).stem] = _first_token_synset(row["PredictionString"] or "", where)
    return labels


def _read_devkit(path: Path) -> dict[str, str]:
    """Validation labels from the ILSVRC2012 development kit (archive or extracted directory)."""
    try:
        import scipy.io
    except ImportError as exc:
        raise PrepareError(
            "Reading the ILSVRC2012 devkit needs scipy (pip install scipy, or "
            'pip install "qdq-toolkit[examples]"), or pass a synset-per-line labels file instead.'
        ) from exc

    def read_member(name: str) -> bytes:
        if path.is_dir():
            member = path / name
            if not member.is_file():
                raise PrepareError(
                    f"{path} lacks {name}; pass the ILSVRC2012_devkit_t12 directory or archive."
                )
            return member.read_bytes()
        with tarfile.open(path) as archive:
            for info in archive.getmembers():
                if info.isfile() and info.name.endswith(name):
                    handle = archive.extractfile(info)
                    if handle is not None:
                        return handle.read()
        raise PrepareError(f"{path} lacks {name}; pass the ILSVRC2012_devkit_t12.tar.gz from image-net.org.")

    meta = scipy.io.loadmat(io.BytesIO(read_member(DEVKIT_META)), squeeze_me=True)["synsets"]
    id_to_synset = {
        int(ilsvrc_id): str(wnid)
        for ilsvrc_id, wnid, children in zip(
            meta["ILSVRC2012_ID"], meta["WNID"], meta["num_children"], strict=True
        )
        if int(children) == 0
    }
    labels: dict[str, str] = {}
    lines = read_member(DEVKIT_GROUND_TRUTH).decode().split()
    for index, value in enumerate(lines, start=1):
        if not value.isdigit() or int(value) not in id_to_synset:
            raise PrepareError(
                f"{path}: ground-truth id {value} (image {index}) is not a leaf synset in meta.mat."
            )
        labels[VAL_NAME_PATTERN.format(index=index)] = id_to_synset[int(value)]
    return labels


def read_val_labels(path: Path) -> dict[str, str]:
    """Map validation image names (without extension) to synsets, from any accepted labels format."""
    if not path.exists():
        raise PrepareError(
            f"--val-labels {path} does not exist; see data/README.md for the accepted formats."
        )
    if path.is_dir() or tarfile.is_tarfile(path):
        return _read_devkit(path)
    with path.open(newline="") as handle:
        first_line = handle.readline()
    if first_line.startswith("ImageId"):
        return _read_kaggle_csv(path)

    labels: dict[str, str] = {}
    index = 0
    with path.open() as handle:
        for line_number, raw in enumerate(handle, start=1):
            tokens = raw.replace(",", " ").split()
            if not tokens or tokens[0].startswith("#"):
                continue
            where = f"{path}:{line_number}"
            if len(tokens) == 1 and tokens[0].isdigit():
                raise PrepareError(
                    f"{where}: {path.name} holds numeric class ids, whose order is the devkit's meta.mat, not "
                    "the synsets'; pass the devkit archive ILSVRC2012_devkit_t12.tar.gz as --val-labels instead."
                )
            if len(tokens) == 1:
                index += 1
                labels[VAL_NAME_PATTERN.format(index=index)] = _first_token_synset(tokens[0], where)
            else:
                labels[Path(tokens[0]).stem] = _first_token_synset(tokens[1], where)
    if not labels:
        raise PrepareError(f"--val-labels {path} holds no labels.")
    return labels


def list_validation(val_dir: Path, labels_path: Path | None) -> list[ImageEntry]:
    """Validation images with their synsets, sorted by file name."""
    _check_dir(val_dir, "--val-dir")
    flat = sorted(p for p in val_dir.iterdir() if _is_image(p))
    if labels_path is None:
        if flat:
            raise PrepareError(
                f"--val-dir {val_dir} holds images directly; pass --val-labels to say which synset each shows."
            )
        return list_synset_dirs(val_dir, "--val-dir")
    if not flat:
        raise PrepareError(
            f"--val-dir {val_dir} holds no *.JPEG files directly (if it is sorted into synset "
            "directories, omit --val-labels)."
        )
    labels = read_val_labels(labels_path)
    unlabelled = [p.name for p in flat if p.stem not in labels]
    if unlabelled:
        raise PrepareError(
            f"{len(unlabelled)} validation images have no label in {labels_path} (e.g. {unlabelled[0]}); "
            "check that the labels file belongs to ILSVRC2012."
        )
    if len(labels) > len(flat):
        print(
            f"note: {labels_path} labels {len(labels)} images, {val_dir} holds {len(flat)}; converting those.",
            file=sys.stderr,
        )
    return [ImageEntry(p, labels[p.stem]) for p in flat]


# ----------------------------------------------------------------------------------------------------------
# Planning the output
# ----------------------------------------------------------------------------------------------------------


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``train-00000-of-01024``: the build_imagenet_data.py file name."""
    return f"{split}-{index:05d}-of-{num_shards:05d}"


def plan_shards(
    split: str, entries: Sequence[ImageEntry], num_shards: int, output_dir: Path
) -> list[ShardJob]:
    """Cut ``entries`` into ``num_shards`` contiguous, nearly equal shards."""
    if num_shards > len(entries):
        flag = "--train-shards" if split == TRAIN_SPLIT else "--val-shards"
        raise PrepareError(
            f"{flag} {num_shards} is more than the {len(entries)} {split} images; pass {flag} {len(entries)} or fewer."
        )
    bounds = [len(entries) * i // num_shards for i in range(num_shards + 1)]
    return [
        ShardJob(output_dir / shard_name(split, i, num_shards), tuple(entries[bounds[i] : bounds[i + 1]]))
        for i in range(num_shards)
    ]


def existing_shards(output_dir: Path, split: str) -> list[Path]:
    """Files in ``output_dir`` that the reader would take as shards of ``split``."""
    return sorted(output_dir.glob(f"{split}-*-of-*")) if output_dir.is_dir() else []


def synsets_text(synsets: Sequence[str]) -> str:
    return "".join(f"{synset}\n" for synset in synsets)


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """``(height, width, components)`` from a JPEG's start-of-frame segment, or None if it is not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i, size = 2, len(data)
    while i + 4 <= size:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if marker in _SOF_MARKERS:
            if i + 10 > size:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return height, width, data[i + 9]
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


class ShardWriter:
    """Encodes images as tf.train.Example records and writes shards atomically (TensorFlow imported lazily)."""

    def __init__(self, label_of: dict[str, int], stop: threading.Event) -> None:
        import tensorflow as tf  # deferred: --help and input errors should not wait for TensorFlow

        self._tf = tf
        self._label_of = label_of
        self._stop = stop

    def _feature(self, value: int | bytes) -> Any:
        tf = self._tf
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def encode(self, entry: ImageEntry) -> bytes:
        """One serialized tf.train.Example; PNG / CMYK / unreadable-header files are re-encoded as RGB JPEG."""
        tf = self._tf
        data = entry.path.read_bytes()
        header = jpeg_header(data)
        if header is None or header[2] not in (1, 3) or header[0] == 0:
            try:
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
            except tf.errors.InvalidArgumentError as exc:
                raise PrepareError(
                    f"cannot decode {entry.path}: not a valid image ({exc.message.splitlines()[0]})"
                ) from exc
            data = tf.io.encode_jpeg(
                image, format="rgb", quality=JPEG_QUALITY, chroma_downsampling=False
            ).numpy()
            height, width = int(image.shape[0]), int(image.shape[1])
        else:
            height, width = header[0], header[1]
        example = tf.train.Example(
            features=tf.train.Features(
                feature={
                    "image/height": self._feature(height),
                    "image/width": self._feature(width),
                    "image/colorspace": self._feature(b"RGB"),
                    "image/channels": self._feature(3),
                    "image/class/label": self._feature(self._label_of[entry.synset]),
                    "image/class/synset": self._feature(entry.synset.encode()),
                    "image/format": self._feature(b"JPEG"),
                    "image/filename": self._feature(entry.path.name.encode()),
                    "image/encoded": self._feature(data),
                }
            )
        )
        return example.SerializeToString()

    def write(self, job: ShardJob, on_image: Callable[[], None]) -> None:
        """Write one shard to a hidden temporary file, then rename it into place; no partial shard remains."""
        temp = job.path.with_name(f".{job.path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            with self._tf.io.TFRecordWriter(str(temp)) as writer:
                for entry in job.entries:
                    if self._stop.is_set():
                        raise InterruptedError("conversion stopped")
                    writer.write(self.encode(entry))
                    on_image()
            os.replace(temp, job.path)
        finally:
            if temp.exists():
                temp.unlink()


def write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


def run_jobs(
    jobs: Sequence[ShardJob], writer: ShardWriter, workers: int, stop: threading.Event, desc: str
) -> None:
    """Write ``jobs`` with ``workers`` threads and a progress bar; the first failure stops the rest."""
    from tqdm import tqdm

    total = sum(len(job.entries) for job in jobs)
    with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True) as progress:
        lock = threading.Lock()

        def on_image() -> None:
            with lock:
                progress.update(1)

        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard")
        futures: list[Future[None]] = []
        try:
            futures = [executor.submit(writer.write, job, on_image) for job in jobs]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            if failed:
                stop.set()
                wait(futures)
                raise failed[0].exception()  # type: ignore[misc]
        except BaseException:
            stop.set()
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python data/prepare_imagenet.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--train-dir", type=Path, help="extracted training images: <train-dir>/<synset>/*.JPEG"
    )
    parser.add_argument("--val-dir", type=Path, help="extracted validation images: ILSVRC2012_val_*.JPEG")
    parser.add_argument(
        "--val-labels",
        type=Path,
        help="synset of each validation image: LOC_val_solution.csv, a synset-per-line text file, "
        "'<image> <synset>' pairs, or the ILSVRC2012 devkit archive/directory",
    )
    parser.add_argument(
        "--output-dir", type=Path, required=True, help="where the TFRecord shards go (created)"
    )
    parser.add_argument(
        "--train-shards", type=int, default=1024, help="number of training shards (default 1024)"
    )
    parser.add_argument(
        "--val-shards", type=int, default=128, help="number of validation shards (default 128)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(16, os.cpu_count() or 1),
        help="threads writing shards in parallel (default: number of CPUs, at most 16)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=TRAIN_SHUFFLE_SEED,
        help="seed of the training-image shuffle (default 12345)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite existing shards (and remove that split's shards of another shard count) and synsets.txt",
    )
    return parser


def prepare(args: argparse.Namespace) -> None:
    """Check every input, then convert validation and training images; raises PrepareError on bad input."""
    if args.train_dir is None and args.val_dir is None:
        raise PrepareError("nothing to convert: pass --train-dir, --val-dir (with --val-labels), or both.")
    if args.val_labels is not None and args.val_dir is None:
        raise PrepareError("--val-labels needs --val-dir (the directory of the validation images).")
    for flag, value in (
        ("--train-shards", args.train_shards),
        ("--val-shards", args.val_shards),
        ("--workers", args.workers),
    ):
        if value < 1:
            raise PrepareError(f"{flag} must be at least 1, got {value}.")
    output_dir: Path = args.output_dir
    if output_dir.exists() and not output_dir.is_dir():
        raise PrepareError(f"--output-dir {output_dir} exists and is not a directory; pass a directory path.")

    splits: dict[str, list[ImageEntry]] = {}
    if args.val_dir is not None:
        splits[VAL_SPLIT] = list_validation(args.val_dir, args.val_labels)
    if args.train_dir is not None:
        train = list_synset_dirs(args.train_dir, "--train-dir")
        random.Random(args.seed).shuffle(train)  # mix classes across shards, as build_imagenet_data.py
        splits[TRAIN_SPLIT] = train

    # Labels: synsets in sorted order, 1-based. The training directories define them when given.
    if TRAIN_SPLIT in splits:
        synsets = sorted({entry.synset for entry in splits[TRAIN_SPLIT]})
        if VAL_SPLIT in splits:
            unknown = sorted({entry.synset for entry in splits[VAL_SPLIT]} - set(synsets))
            if unknown:
                raise PrepareError(
                    f"{len(unknown)} validation synsets have no training directory (e.g. {unknown[0]}); "
                    "--train-dir and --val-labels must describe the same classes."
                )
    else:
        synsets = sorted({entry.synset for entry in splits[VAL_SPLIT]})
    label_of = {synset: index + LABEL_OFFSET for index, synset in enumerate(synsets)}

    jobs: dict[str, list[ShardJob]] = {}
    for split, entries in splits.items():
        num_shards = args.train_shards if split == TRAIN_SPLIT else args.val_shards
        jobs[split] = plan_shards(split, entries, num_shards, output_dir)

    synsets_path = output_dir / SYNSETS_FILE
    if not args.force:
        for split in jobs:
            found = existing_shards(output_dir, split)
            if found:
                raise PrepareError(
                    f"{output_dir} already holds {len(found)} {split} shards (e.g. {found[0].name}); "
                    "pass --force to overwrite them, or choose another --output-dir."
                )
        if synsets_path.exists() and synsets_path.read_text() != synsets_text(synsets):
            raise PrepareError(
                f"{synsets_path} lists other classes than this conversion would (an earlier conversion of "
                "other data); pass --force to replace it, or choose another --output-dir."
            )

    output_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    writer = ShardWriter(label_of, stop)
    write_atomically(synsets_path, synsets_text(synsets))
    for split in (VAL_SPLIT, TRAIN_SPLIT):
        if split not in jobs:
            continue
        new_paths = {job.path for job in jobs[split]}
        run_jobs(jobs[split], writer, args.workers, stop, desc=split)
        stale = [path for path in existing_shards(output_dir, split) if path not in new_paths]
        for path in stale:  # only reached with --force: shards of an earlier conversion with another count
            path.unlink()
        if stale:
            print(f"removed {len(stale)} {split} shards of an earlier conversion (--force)", file=sys.stderr)
        images = sum(len(job.entries) for job in jobs[split])
        print(
            f"wrote {images} {split} images into {len(jobs[split])} shards in {output_dir}", file=sys.stderr
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prepare(args)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # unreadable input, full disk, ...: one line, not a traceback
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; completed shards were kept, no partial shard was left.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
