"""``python -m qdq_toolkit.export``: quantized Keras model / SavedModel -> QDQ ONNX -> TensorRT engine.

Examples::

    python -m qdq_toolkit.export --keras-model qat.keras --output qat.onnx --check
    python -m qdq_toolkit.export --saved-model qat_savedmodel --output qat.onnx --engine qat.plan --batch 1,8,32
    python -m qdq_toolkit.export --check qat.onnx --json
    python -m qdq_toolkit.export --keras-model unet_qat.keras --output unet.onnx --fold-batchnorm --check
    python -m qdq_toolkit.export --keras-model qat.keras --output qat_cpu.onnx --target onnxruntime --calibration-data x.npy
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from qdq_toolkit._cli import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NO_TENSORRT,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VIOLATIONS,
    CliError,
    add_batch_sizes_argument,
    check_output_path,
    native_stderr_silenced,
    progress_printer,
    run_cli,
)

EPILOG = f"""\
exit codes:
  {EXIT_OK}    success (and, with --check, no TensorRT placement violations)
  {EXIT_ERROR}    error: bad path, corrupt input, conversion failure, output exists without --force
  {EXIT_USAGE}    bad command-line usage
  {EXIT_VIOLATIONS}    --check found TensorRT QDQ placement errors, or with --strict also fusion warnings
       (the ONNX file is still written)
  {EXIT_NO_TENSORRT}    --engine asked for but TensorRT or a GPU is missing (the ONNX file is still written)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); no partial output is left behind

Outputs are written atomically and never overwrite existing files unless --force is given.
Load .keras files of quantized models with this tool or with qdq_toolkit.load_model(path).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m qdq_toolkit.export",
        description="Export a quantized Keras model to TensorRT-ready QDQ ONNX (and optionally a TensorRT engine), "
        "or check an ONNX file against TensorRT's QDQ placement rules.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--saved-model", metavar="DIR", help="SavedModel directory (from model.export)")
    source.add_argument("--keras-model", metavar="FILE", help="Keras model file (.keras)")
    parser.add_argument("--output", "-o", metavar="FILE", help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=13, help="ONNX opset (13-18, the newest tf2onnx 1.17 converts; default 13)")
    parser.add_argument(
        "--fp16", action="store_true", help="write the float parts of the graph in float16 (Q/DQ scales stay float32)"
    )
    parser.add_argument(
        "--target",
        choices=("tensorrt", "onnxruntime"),
        default="tensorrt",
        help="tensorrt (default): QDQ for TensorRT; onnxruntime: the graph ONNX Runtime's CPU EP runs in integer",
    )
    parser.add_argument(
        "--calibration-data",
        metavar="FILE",
        help="--target onnxruntime: inputs for the ranges TensorRT never needed (.npy for a single-input model, "
        ".npz with one array per input name)",
    )
    parser.add_argument(
        "--fold-batchnorm",
        action="store_true",
        help="fold each BatchNorm (Mul/Add by per-channel constants) into the convolution before it, exactly; for "
        "ConvTranspose + BatchNorm, which TensorRT does not fuse under Q/DQ (--target onnxruntime always folds)",
    )
    parser.add_argument("--engine", metavar="FILE", help="also build a TensorRT engine (plan) from the ONNX file")
    add_batch_sizes_argument(
        parser, default=(1, 8, 32), help="engine batch sizes: min,opt,max profile (default 1,8,32)"
    )
    parser.add_argument(
        "--check",
        nargs="?",
        const="",
        metavar="ONNX",
        help="check TensorRT QDQ placement rules: of the exported file, or of ONNX when given alone",
    )
    parser.add_argument("--json", action="store_true", help="print the check report as JSON")
    parser.add_argument(
        "--strict", action="store_true", help="with --check: exit 3 on fusion warnings too, not only on errors"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress messages")
    parser.add_argument(
        "--verbose", action="store_true", help="show TensorFlow's own log output; with --check, a per-layer table"
    )
    return parser


def _check_file(path: str, as_json: bool, *, verbose: bool = False, strict: bool = False) -> int:
    from qdq_toolkit.export.checks import load_onnx_model
    from qdq_toolkit.export.fusion import check_report

    try:
        model = load_onnx_model(path)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    text, report = check_report(model, model_path=path, as_json=as_json, verbose=verbose)
    print(text)
    return EXIT_VIOLATIONS if report.errors or (strict and report.warnings) else EXIT_OK


def _load_keras(path: Path):
    from qdq_toolkit.quantize import ModelFileError, load_keras_file

    try:
        return load_keras_file(path)
    except (FileNotFoundError, ModelFileError) as exc:
        raise CliError(str(exc)) from None


def _load_calibration_data(path: str):
    """``--calibration-data``: a .npy array, or an .npz archive as ``{input name: array}``."""
    import numpy as np

    file = Path(path)
    if not file.is_file():
        raise CliError(f"calibration data '{path}' does not exist (give a .npy or .npz file)")
    try:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if file.suffix == ".npy":
            return np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read calibration data '{path}': {str(exc).splitlines()[0]}") from None
    raise CliError(f"calibration data '{path}' must be a .npy file (one input) or .npz (one array per input name)")


def _export(args, say) -> int:
    from qdq_toolkit.export.onnx import ExportError, keras_to_onnx, saved_model_to_onnx
    from qdq_toolkit.export.ranges import UnobservedRangeWarning

    if not args.output:
        raise CliError("--output is required with --saved-model/--keras-model (the ONNX file to write)")
    if args.check:
        raise CliError("--check takes no file when exporting: it checks the exported --output")
    if args.target == "onnxruntime" and (args.engine or args.check is not None or args.fp16):
        raise CliError("--engine, --check and --fp16 are for --target tensorrt")
    calibration_data = _load_calibration_data(args.calibration_data) if args.calibration_data else None
    sizes = args.batch_sizes if args.engine else ()
    try:  # refuse before doing any work
        output = check_output_path(args.output, args.force)
        if args.engine:
            engine = Path(args.engine)
            if engine.resolve() == output.resolve():
                raise CliError("--engine and --output must be different files")
            check_output_path(engine, args.force)
    except OSError as exc:  # exists without --force, a directory, not writable
        raise CliError(str(exc)) from None

    try:
        if args.keras_model:
            say(f"loading {args.keras_model}")
            model = _load_keras(Path(args.keras_model))
            with warnings.catch_warnings():  # reported below as one line
                warnings.simplefilter("ignore", UnobservedRangeWarning)
                result = keras_to_onnx(
                    model, output, opset=args.opset, fp16=args.fp16, force=args.force, progress=say,
                    target=args.target, calibration_data=calibration_data, fold_batchnorm=args.fold_batchnorm,
                )
        else:
            with warnings.catch_warnings():  # reported below as one line
                warnings.simplefilter("ignore", UnobservedRangeWarning)
                result = saved_model_to_onnx(
                    args.saved_model, output, opset=args.opset, fp16=args.fp16, force=args.force, progress=say,
                    target=args.target, calibration_data=calibration_data, fold_batchnorm=args.fold_batchnorm,
                )
    except (ExportError, ValueError, TypeError, OSError) as exc:  # OSError: e.g. the output cannot be written
        raise CliError(str(exc).splitlines()[0]) from None

    say(
        f"wrote {result.path} (opset {result.opset}{', fp16' if result.fp16 else ''}; inputs {', '.join(result.inputs)}; "
        f"outputs {', '.join(result.outputs)}; {result.num_quantize_linear} QuantizeLinear, "
        f"{result.num_dequantize_linear} DequantizeLinear)"
    )
    if result.unobserved_ranges:
        names = result.unobserved_ranges
        print(
            f"warning: {len(names)} activation range(s) never observed, exported with amax 1.0 "
            f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); calibrate or fine-tune before exporting",
            file=sys.stderr,
        )
    if result.num_dequantize_linear == 0:
        say("note: the model has no QDQ nodes, so this is a float export (quantize it with quantize_model first)")

    status = EXIT_OK
    if args.check is not None:
        status = _check_file(str(result.path), args.json, verbose=args.verbose, strict=args.strict)
    elif result.violations:
        say(f"warning: {len(result.violations)} TensorRT placement violation(s); run with --check to list them")

    if args.engine:
        from qdq_toolkit.export.tensorrt import TensorRTUnavailableError, build_engine

        try:
            build_engine(result.path, args.engine, batch_sizes=sizes, fp16=args.fp16, force=args.force, progress=say)
        except TensorRTUnavailableError as exc:
            print(f"error: engine not built: {' '.join(str(exc).split())}", file=sys.stderr)
            print(f"the ONNX file was written: {result.path}", file=sys.stderr)
            return EXIT_NO_TENSORRT
        except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as exc:
            raise CliError(f"engine not built: {str(exc).splitlines()[0]} (the ONNX file was written: {result.path})") from None
        say(f"wrote {args.engine}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    say = progress_printer(args.quiet or args.json)

    def body() -> int:
        if not (args.saved_model or args.keras_model):
            if not args.check:
                parser.print_usage(sys.stderr)
                print(
                    "error: give --saved-model DIR or --keras-model FILE with --output, or --check FILE.onnx",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            return _check_file(args.check, args.json, verbose=args.verbose, strict=args.strict)
        with native_stderr_silenced(not args.verbose):
            return _export(args, say)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
