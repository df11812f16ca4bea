"""Command line: ``python -m qdq_toolkit.evaluate`` -- compare models on one dataset (accuracy and latency).

Run ``python -m qdq_toolkit.evaluate --help`` for the options, examples and exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Before anything imports TensorFlow: keep its C++ start-up chatter out of the report.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from qdq_toolkit._cli import (  # noqa: E402
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOTHING_EVALUATED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_batch_sizes_argument,
    check_output_path,
    native_stderr_silenced,
    non_negative_int,
    positive_int,
    progress_printer,
    progress_wanted,
    write_atomically,
)
from qdq_toolkit.evaluate.backends import check_model_path  # noqa: E402
from qdq_toolkit.evaluate.errors import EvaluationError  # noqa: E402
from qdq_toolkit.evaluate.evaluator import (  # noqa: E402
    DEFAULT_BATCH_SIZES,
    DEFAULT_EVAL_BATCH_SIZE,
    ModelSet,
    evaluate_models,
    open_models,
)
from qdq_toolkit.evaluate.latency import DEFAULT_RUNS, DEFAULT_WARMUP  # noqa: E402

PROG = "python -m qdq_toolkit.evaluate"

DESCRIPTION = """\
Compare models on the same dataset: top-1/top-5 accuracy, the accuracy delta to a baseline (percentage
points), top-1 agreement with the baseline, latency per batch size (median and 90th percentile of timed runs,
warm-up excluded) and file size. The backend follows the file extension:

  .keras / .h5       Keras (TensorFlow; the GPU when TensorFlow sees one)
  .onnx              ONNX Runtime, CPUExecutionProvider
  .plan / .engine    TensorRT engine (NVIDIA GPU). Without TensorRT or a GPU the engine is reported as
                     skipped with the reason, and the other models are still evaluated.

The Markdown table always goes to stdout; --markdown, --json and --plot also write it to files (atomically;
never over an existing file unless --force). Progress bars go to stderr when it is a terminal (not with
--quiet)."""

EPILOG = f"""\
datasets:
  digits     scikit-learn's handwritten digits (needs scikit-learn: pip install "qdq-toolkit[examples]"),
             the test split of qdq_toolkit.data.load_digits by default; image size and channels follow the
             models' input shape unless --image-size / --channels say otherwise. Runs on a CPU.
  imagenet   ImageNet TFRecords (--data-dir) as written by data/prepare_imagenet.py: validation-*-of-*
             shards, evaluation preprocessing of the ResNet-50 example (shorter side to 256, central 224
             crop, keras.applications.resnet50.preprocess_input unless --preprocess none).

examples:
  {PROG} --dataset digits --model fp32=fp32.keras --model qat=qat.onnx \\
      --batch-sizes 1,8,32 --markdown report.md --json report.json --plot report.png
  {PROG} --dataset imagenet --data-dir /data/imagenet --max-samples 5000 \\
      --model fp32=resnet50.keras --model ptq=ptq.onnx --model qat=qat.onnx --model qat-trt=qat.plan --baseline fp32

exit codes:
  {EXIT_OK}    success: every model was evaluated, or at least one was and the others were skipped because
       TensorRT or a GPU is missing here (a warning on stderr names each skipped model and the reason)
  {EXIT_ERROR}    error: missing or unreadable model file, unknown extension, corrupt model, model and dataset
       that do not fit, dataset not found, or an output file that exists without --force (nothing written)
  {EXIT_USAGE}    usage error: invalid or inconsistent options
  {EXIT_NOTHING_EVALUATED}    no model could be evaluated here (every model was a skipped TensorRT engine); nothing written
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); output files are only ever complete or absent"""


def _model_spec(text: str) -> tuple[str | None, str]:
    """``NAME=PATH`` or ``PATH`` (named later, see :func:`_name_models`)."""
    name, sep, path = text.partition("=")
    if sep and name.strip() and os.sep not in name and "/" not in name:
        if not path:
            raise argparse.ArgumentTypeError(f"{text!r} has no path after '='; give NAME=PATH")
        return name.strip(), path
    if not text:
        raise argparse.ArgumentTypeError("empty model; give NAME=PATH or PATH")
    return None, text


def _name_models(specs: list[tuple[str | None, str]]) -> list[tuple[str, str]]:
    """Name unnamed models after their file's stem, or the whole file name when two stems are the same."""
    stems = [Path(path).stem for name, path in specs if name is None]
    named = []
    for name, path in specs:
        if name is None:
            stem = Path(path).stem
            name = Path(path).name if stems.count(stem) > 1 else stem
        named.append((name, path))
    return named


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m qdq_toolkit.evaluate``."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("dataset")
    data.add_argument("--dataset", required=True, choices=("digits", "imagenet"), help="which dataset to use")
    data.add_argument("--data-dir", type=Path, help="ImageNet: directory of the TFRecord shards")
    data.add_argument(
        "--split",
        help="digits: test (default) or train; imagenet: validation (default) or train (no augmentation)",
    )
    data.add_argument(
        "--max-samples", type=positive_int, metavar="N", help="evaluate only the first N images"
    )
    data.add_argument(
        "--image-size",
        type=positive_int,
        metavar="N",
        help="image height and width (default: the models' input size; "
        "8 for digits, 224 for imagenet when the models leave it open)",
    )
    data.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="digits: 1 (greyscale) or 3 (RGB-shaped); default: the models'",
    )
    data.add_argument(
        "--preprocess",
        choices=("resnet50", "none"),
        default="resnet50",
        help="imagenet: keras.applications.resnet50.preprocess_input (default) or none (RGB in [0, 255])",
    )
    data.add_argument(
        "--label-offset",
        type=non_negative_int,
        metavar="K",
        help="imagenet: subtracted from image/class/label (default 1, the build_imagenet_data.py convention)",
    )

    models = parser.add_argument_group("models")
    models.add_argument(
        "--model",
        dest="models",
        action="append",
        type=_model_spec,
        required=True,
        metavar="NAME=PATH",
        help="a model to evaluate (repeat for each); PATH is a .keras, .onnx or .plan/.engine file; without "
        "NAME= the file's stem is the name",
    )
    models.add_argument(
        "--baseline", metavar="NAME", help="the model the deltas refer to (default: the first evaluated)"
    )
    models.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice, one per physical core)",
    )

    timing = parser.add_argument_group("latency")
    add_batch_sizes_argument(
        timing,
        default=DEFAULT_BATCH_SIZES,
        help=f"batch sizes to time (default {','.join(map(str, DEFAULT_BATCH_SIZES))})",
    )
    timing.add_argument(
        "--warmup",
        type=non_negative_int,
        default=DEFAULT_WARMUP,
        metavar="N",
        help=f"untimed warm-up runs per model and batch size, excluded from the statistics (default {DEFAULT_WARMUP})",
    )
    timing.add_argument(
        "--runs",
        type=positive_int,
        default=DEFAULT_RUNS,
        metavar="N",
        help=f"timed runs per model and batch size (default {DEFAULT_RUNS})",
    )
    timing.add_argument("--no-latency", action="store_true", help="measure accuracy only")
    timing.add_argument(
        "--no-interleave",
        action="store_true",
        help="time the models one after another instead of round-robin",
    )
    timing.add_argument(
        "--eval-batch-size",
        type=positive_int,
        default=DEFAULT_EVAL_BATCH_SIZE,
        metavar="N",
        help=f"images per batch in the accuracy pass (default {DEFAULT_EVAL_BATCH_SIZE})",
    )

    output = parser.add_argument_group("output")
    output.add_argument("--json", type=Path, metavar="PATH", help="write the report as JSON")
    output.add_argument("--markdown", type=Path, metavar="PATH", help="write the Markdown table")
    output.add_argument("--plot", type=Path, metavar="PATH", help="write an accuracy-vs-latency PNG plot")
    output.add_argument("--force", action="store_true", help="overwrite existing output files")
    output.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")
    output.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    return parser


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Option combinations argparse cannot check; exits with code 2 through ``parser.error``."""
    if args.dataset == "imagenet":
        if args.data_dir is None:
            parser.error("--dataset imagenet needs --data-dir (the directory of the TFRecord shards)")
        if args.channels not in (None, 3):
            parser.error("ImageNet images have 3 channels; drop --channels")
        if args.split not in (None, "validation", "train"):
            parser.error(f"unknown imagenet split {args.split!r}; choose validation or train")
    else:
        for flag, value in (("--data-dir", args.data_dir), ("--label-offset", args.label_offset)):
            if value is not None:
                parser.error(f"{flag} only applies to --dataset imagenet")
        if args.split not in (None, "test", "train"):
            parser.error(f"unknown digits split {args.split!r}; choose test or train")
        if args.image_size is not None and args.image_size < 8:
            parser.error("--image-size must be at least 8 for digits (their native size)")
    args.models = _name_models(args.models)
    names = [name for name, _ in args.models]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        parser.error(f"model names must be unique; repeated: {', '.join(repeated)} (use NAME=PATH)")
    if args.baseline is not None and args.baseline not in names:
        parser.error(f"--baseline {args.baseline!r} is not one of the models: {', '.join(names)}")
    if args.plot is not None and args.no_latency:
        parser.error("--plot shows accuracy against latency; drop --no-latency or --plot")
    outputs = [
        path.expanduser().resolve() for path in (args.json, args.markdown, args.plot) if path is not None
    ]
    if len(set(outputs)) != len(outputs):
        parser.error("--json, --markdown and --plot must be different files")


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before any work when an output cannot be written (exists without --force, a directory, not writable).

    Missing directories are fine: they are created when the file is written.
    """
    model_files = {Path(path).expanduser().resolve() for _, path in args.models}
    for flag, path in (("--json", args.json), ("--markdown", args.markdown), ("--plot", args.plot)):
        if path is None:
            continue
        if path.expanduser().resolve() in model_files:
            raise CliError(f"{flag} {path.expanduser()} is one of the model files; choose another path")
        try:
            check_output_path(path, args.force)
        except OSError as exc:
            raise CliError(f"{flag}: {exc}") from None


def _image_shape(args: argparse.Namespace, model_set: ModelSet) -> tuple[int, int]:
    """Image size and channels: the options, else the first model that states them, else the dataset default."""
    size, channels = args.image_size, args.channels
    for backend in model_set.backends.values():
        shape = backend.input_shape
        if shape is None or len(shape) != 4:
            continue
        height, width, depth = shape[1:]
        if size is None and height is not None and height == width:
            size = int(height)
        if channels is None and depth is not None:
            channels = int(depth)
        if size is not None and channels is not None:
            break
    if args.dataset == "imagenet":
        return size or 224, 3
    return size or 8, channels or 1


def _make_dataset(args: argparse.Namespace, image_size: int, channels: int) -> Any:
    from qdq_toolkit.evaluate.datasets import digits_dataset, imagenet_eval_dataset

    if args.dataset == "imagenet":
        return imagenet_eval_dataset(
            args.data_dir,
            args.split or "validation",
            image_size=image_size,
            preprocess=None if args.preprocess == "none" else args.preprocess,
            label_offset=args.label_offset,
            max_samples=args.max_samples,
        )
    return digits_dataset(
        args.split or "test", image_size=image_size, channels=channels, max_samples=args.max_samples
    )


def _warn_skipped(name: str, reason: str) -> None:
    indented = reason.strip().replace("\n", "\n    ")
    print(f"warning: model {name!r} skipped: {indented}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Evaluate as ``args`` say; returns the exit code. Raises on errors (``main`` prints them as one line)."""

    say = progress_printer(args.quiet, elapsed=False)
    _check_outputs(args)
    for _, path in args.models:  # every path before any slow import or load
        check_model_path(path)
    say(f"loading {len(args.models)} model(s) ...")

    with open_models(args.models, intra_op_threads=args.threads, on_skip=_warn_skipped) as model_set:
        if not model_set.backends:
            skipped = ", ".join(repr(name) for name in model_set.skipped)
            print(
                f"error: no model could be evaluated here (skipped: {skipped}; reasons above); nothing written",
                file=sys.stderr,
            )
            return EXIT_NOTHING_EVALUATED
        image_size, channels = _image_shape(args, model_set)
        dataset = _make_dataset(args, image_size, channels)
        say(f"evaluating {len(model_set.backends)} model(s) on {dataset.description}")
        report = evaluate_models(
            model_set,
            dataset,
            baseline=args.baseline,
            batch_sizes=args.batch_sizes,
            eval_batch_size=args.eval_batch_size,
            latency=not args.no_latency,
            warmup=args.warmup,
            runs=args.runs,
            interleave=not args.no_interleave,
            intra_op_threads=args.threads,
            progress=progress_wanted(args.quiet),
        )

    markdown = report.to_markdown()
    plot = report.to_png() if args.plot is not None else None  # render before writing anything
    for path, write in (
        (args.json, lambda p: report.write_json(p, force=args.force)),
        (args.markdown, lambda p: report.write_markdown(p, force=args.force)),
        (args.plot, lambda p: write_atomically(p, plot or b"", force=args.force)),
    ):
        if path is not None:
            say(f"wrote {write(path)}")
    sys.stdout.write(markdown)
    sys.stdout.flush()
    if report.skipped:
        names = ", ".join(repr(result.name) for result in report.skipped)
        print(
            f"warning: {len(report.skipped)} model(s) skipped ({names}); see the reasons above",
            file=sys.stderr,
        )
    return EXIT_OK


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return text if len(text) <= 600 else text[:597] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (see ``--help``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_usage(parser, args)
    try:
        # User errors (a bad file, a missing dataset, an existing output) are one line: TensorFlow's start-up log
        # is shown only for unexpected errors, where it may help a bug report.
        with native_stderr_silenced(not args.traceback, user_errors=(CliError, EvaluationError, OSError)):
            return run(args)
    except KeyboardInterrupt:
        print("error: interrupted; no partial output file was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.traceback:
            traceback.print_exc()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
