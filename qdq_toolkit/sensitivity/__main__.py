"""``python -m qdq_toolkit.sensitivity``: which layers hurt under PTQ, and which to leave in float.

Examples::

    python -m qdq_toolkit.sensitivity --keras-model fp32.keras --dataset digits --plot sensitivity.png
    python -m qdq_toolkit.sensitivity --keras-model fp32.keras --data val.npz --max-accuracy-drop 0.5 \\
        --spec-out spec.json --json sensitivity.json --markdown sensitivity.md
    python -m examples.resnet50.workflow --cpu --spec spec.json    # QAT with those layers left in float
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from qdq_toolkit._cli import (
    EXIT_BUDGET_NOT_MET,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    check_output_path,
    native_stderr_silenced,
    progress_printer,
    run_cli,
)

PROG = "python -m qdq_toolkit.sensitivity"

EPILOG = f"""\
data:
  --dataset digits   scikit-learn's handwritten digits (shipped with scikit-learn), the --split split of
                     qdq_toolkit.data.load_digits (seed 0, test fraction 0.25 as the examples train), at the
                     model's input size and channels
  --data FILE.npz    arrays 'x' (or 'images') and 'y' (or 'labels'); without labels only the SQNR ranking is
                     computed (no accuracies, and no --max-accuracy-drop / --spec-out)

exit codes:
  {EXIT_OK}    success
  {EXIT_ERROR}    error: bad path, unreadable model or data, nothing to quantize, an output that exists without --force
  {EXIT_USAGE}    bad command-line usage
  {EXIT_BUDGET_NOT_MET}    no set of layers tried meets --max-accuracy-drop (the best set found is still written)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); no partial output is left behind

Outputs are written atomically and never overwrite existing files unless --force is given. The spec file loads with
qdq_toolkit.QuantizationSpec.load(path), quantize_model(model, quantization_spec=path) and the ResNet workflow's
--spec option.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog=PROG,
        description="Rank the layers of an FP32 Keras model by their sensitivity to int8 quantization (SQNR of "
        "each layer with only its own QDQ on) and, with --max-accuracy-drop, find the fewest layers to leave in "
        "float so that calibrated PTQ stays within the budget.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--keras-model", metavar="FILE", required=True, help="the FP32 Keras model (.keras)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=("digits",), help="a dataset that ships with a package")
    source.add_argument("--data", metavar="FILE.npz", help="arrays x (images) and y (labels)")
    parser.add_argument("--split", choices=("train", "test"), default="test", help="--dataset digits: the split (default test)")
    parser.add_argument(
        "--max-accuracy-drop", type=float, metavar="PP",
        help="find layers to leave in float so top-1 stays within PP percentage points of FP32 (e.g. 0.5)",
    )
    parser.add_argument("--max-excluded", type=int, metavar="N", help="leave at most N layers in float")
    parser.add_argument("--calibration-method", default="max", choices=("max", "percentile", "entropy", "mse"))
    parser.add_argument("--output-metrics", default="5", metavar="N|all",
                        help="model-output SQNR and accuracy for the N most sensitive layers (default 5; 'all')")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--plot", metavar="FILE", help="write the ranking as a PNG bar chart")
    parser.add_argument("--spec-out", metavar="FILE", help="write the QuantizationSpec that leaves the layers in float "
                        "(JSON; implies --max-accuracy-drop 1 when not given)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress messages or bars")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log output")
    return parser


def _output_metrics(text: str):
    if text == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise CliError(f"--output-metrics must be a number of layers >= 0 or 'all', got '{text}'")
    return value


def _check_outputs(args) -> None:
    paths = [p for p in (args.markdown, args.json, args.plot, args.spec_out) if p]
    if len({Path(p).resolve() for p in paths}) != len(paths):
        raise CliError("--markdown, --json, --plot and --spec-out must be different files")
    for path in paths:
        try:
            check_output_path(path, args.force)
        except (FileExistsError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise CliError(str(exc)) from None


def _load_data(args, model):
    import numpy as np

    if args.data:
        path = Path(args.data)
        if not path.is_file():
            raise CliError(f"data file '{path}' does not exist")
        try:
            with np.load(path) as arrays:
                names = set(arrays.files)
                x_key = next((k for k in ("x", "images") if k in names), None)
                y_key = next((k for k in ("y", "labels") if k in names), None)
                if x_key is None:
                    raise CliError(f"{path} has no array 'x' (or 'images'); it has {sorted(names)}")
                x = arrays[x_key].astype(np.float32)
                y = arrays[y_key] if y_key else None
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {path}: {exc}") from None
        return (x, y) if y is not None else (x,)
    from qdq_toolkit.data import load_digits

    shape = model.input_shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
        raise CliError(f"--dataset digits needs a model with square image inputs (N, S, S, C); this one takes {shape}")
    if shape[3] not in (1, 3):
        raise CliError(f"--dataset digits gives 1 or 3 channels; the model takes {shape[3]}")
    digits = load_digits(image_size=int(shape[1]), channels=int(shape[3]), test_fraction=0.25)
    split = digits.test if args.split == "test" else digits.train
    return split.images, split.labels


def _run(args, say) -> int:
    from qdq_toolkit.quantize import ModelFileError, load_keras_file

    output_metrics = _output_metrics(args.output_metrics)
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
    drop = args.max_accuracy_drop
    if drop is None and args.spec_out:
        drop = 1.0
    if args.max_excluded is not None and args.max_excluded < 0:
        raise CliError(f"--max-excluded must be at least 0, got {args.max_excluded}")
    if drop is not None and not 0.0 <= drop <= 100.0:
        raise CliError(f"--max-accuracy-drop is in percentage points, between 0 and 100; got {drop}")
    _check_outputs(args)
    say(f"loading {args.keras_model}")
    try:
        model = load_keras_file(Path(args.keras_model))
    except (FileNotFoundError, ModelFileError) as exc:
        raise CliError(str(exc)) from None
    data = _load_data(args, model)
    if drop is not None and len(data) == 1:
        raise CliError("--max-accuracy-drop and --spec-out measure accuracy: the data needs labels ('y' in the .npz)")
    progress = not args.quiet and sys.stderr.isatty()
    from qdq_toolkit.sensitivity.analysis import analyze_sensitivity
    from qdq_toolkit.sensitivity.exclusion import AccuracyBudgetWarning, auto_exclude

    exclusion = None
    try:
        if drop is None:
            say(f"analyzing {model.name} on {len(data[0])} samples")
            report = analyze_sensitivity(
                model, data, calibration_method=args.calibration_method, output_metrics=output_metrics,
                batch_size=args.batch_size, progress=progress,
            )
        else:
            say(f"analyzing {model.name} on {len(data[0])} samples, then searching for the layers to leave in float "
                f"(budget {drop:g} pp)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AccuracyBudgetWarning)  # reported below as one line
                exclusion = auto_exclude(
                    model, data, max_accuracy_drop=drop / 100.0, calibration_method=args.calibration_method,
                    max_excluded=args.max_excluded, batch_size=args.batch_size, progress=progress,
                )
            report = exclusion.report
    except (ValueError, TypeError) as exc:
        raise CliError(" ".join(str(exc).split())) from None

    markdown = report.to_markdown() + ("\n" + exclusion.to_markdown() if exclusion else "")
    payload = {"sensitivity": report.as_dict(), "exclusion": exclusion.as_dict() if exclusion else None}
    plot = report.to_png() if args.plot else None
    from qdq_toolkit._files import write_atomically

    for path, content in (
        (args.json, json.dumps(payload, indent=2) + "\n"),
        (args.markdown, markdown),
        (args.plot, plot),
    ):
        if path:
            say(f"wrote {write_atomically(path, content, force=args.force)}")
    if args.spec_out:
        say(f"wrote {exclusion.quantization_spec.save(args.spec_out, force=args.force)}")
    sys.stdout.write(markdown)
    sys.stdout.flush()
    if exclusion is not None and not exclusion.within_budget:
        print(
            f"warning: no set of layers tried keeps top-1 within {drop:g} pp of FP32; the best found "
            f"({len(exclusion.excluded)} in float, top-1 {100 * exclusion.accuracy:.2f} % vs {100 * exclusion.fp32_accuracy:.2f} %) "
            "was written",
            file=sys.stderr,
        )
        return EXIT_BUDGET_NOT_MET
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    say = progress_printer(args.quiet)

    def body() -> int:
        with native_stderr_silenced(not args.verbose):
            return _run(args, say)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
