"""Building a TensorRT engine from a QDQ ONNX file (see the package docstring for the TensorRT rules followed)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from qdq_toolkit._files import check_output_path, write_atomically
from qdq_toolkit.export.tensorrt.callbacks import ProgressCallback, make_logger, make_progress_monitor
from qdq_toolkit.export.tensorrt.errors import TensorRTError
from qdq_toolkit.export.tensorrt.stack import require_stack, strong_typing_only

__all__ = ["build_engine", "profile_batch_range"]

_BYTES_PER_GIB = 1 << 30


def profile_batch_range(batch_sizes: Iterable[int]) -> tuple[int, int, int]:
    """The (min, opt, max) batch sizes of the optimization profile built for ``batch_sizes``.

    min and max are the smallest and largest size; opt is the middle of the sorted distinct sizes (the upper
    middle one for an even count): ``(1, 8, 32)`` → ``(1, 8, 32)``, ``(1, 32)`` → ``(1, 32, 32)``.

    Raises:
        TypeError: ``batch_sizes`` is not a collection of integers.
        ValueError: it is empty or holds a size below 1.
    """
    if isinstance(batch_sizes, (int, np.integer, str, bytes)) or not isinstance(batch_sizes, Iterable):
        raise TypeError(
            f"batch_sizes must be a sequence of positive integers such as (1, 8, 32), got {batch_sizes!r}"
        )
    sizes = list(batch_sizes)
    if not sizes:
        raise ValueError("batch_sizes is empty; give at least one batch size, e.g. (1, 8, 32)")
    for size in sizes:
        if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
            raise TypeError(f"batch size {size!r} is not an integer; give whole numbers such as (1, 8, 32)")
        if size < 1:
            raise ValueError(f"batch size {size} is not positive; every batch size must be at least 1")
    distinct = sorted({int(size) for size in sizes})
    return distinct[0], distinct[len(distinct) // 2], distinct[-1]


def _workspace_bytes(workspace_gib: float | None) -> int | None:
    if workspace_gib is None:
        return None
    if isinstance(workspace_gib, bool) or not isinstance(
        workspace_gib, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"workspace_gib must be a number of GiB such as 4, got {workspace_gib!r}")
    if not math.isfinite(workspace_gib) or workspace_gib <= 0:
        raise ValueError(f"workspace_gib must be a positive number of GiB, got {workspace_gib}")
    return max(1, int(workspace_gib * _BYTES_PER_GIB))


def _existing_onnx_file(onnx_path: str | os.PathLike[str]) -> Path:
    path = Path(onnx_path)
    if not path.exists():
        raise FileNotFoundError(
            f"ONNX file {path} does not exist; export the model first, then build its engine"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file; give the path of the exported .onnx file")
    return path


def _writable_engine_path(engine_path: str | os.PathLike[str], onnx_file: Path, *, force: bool) -> Path:
    """The engine path, after refusing the ONNX file itself, then as every output is checked (``check_output_path``)."""
    target = Path(engine_path)
    if target.is_file() and target.resolve() == onnx_file.resolve():
        raise ValueError(
            f"the engine path {target} is the ONNX file itself; choose another path, e.g. model.engine"
        )
    return check_output_path(target, force)


def _onnx_qdq_node_count(onnx_file: Path) -> int | None:
    try:
        import onnx

        model = onnx.load(str(onnx_file), load_external_data=False)
    except Exception:
        return None  # TensorRT's parser will report what is wrong with the file
    return sum(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def _parser_error_text(error: Any) -> str:
    """One line per IParserError: node index, name and operator when known, code, description."""

    def call(method: str) -> Any:
        try:
            return getattr(error, method)()
        except Exception:
            return None

    node, name, operator = call("node"), call("node_name"), call("node_operator")
    where = ""
    if isinstance(node, int) and node >= 0:
        label = " ".join(str(part) for part in (operator, f"'{name}'" if name else None) if part)
        where = f"node {node}" + (f" ({label})" if label else "") + ": "
    code, description = call("code"), call("desc")
    return f"{where}{code}: {description}" if code is not None else f"{where}{description or error}"


def _parser_failure(onnx_file: Path, parser: Any, logger: Any) -> TensorRTError:
    lines = [f"TensorRT's ONNX parser rejected {onnx_file}:"]
    count = int(parser.num_errors)
    lines += [f"  - {_parser_error_text(parser.get_error(index))}" for index in range(count)]
    if count == 0:
        lines += [f"  - {message}" for message in logger.errors] or ["  - (the parser gave no reason)"]
    lines.append(
        "Check the graph with the toolkit's TensorRT checks (qdq_toolkit.export.checks): TensorRT needs opset >= 13, "
        "int8 Q/DQ with zero point 0, and operators it supports."
    )
    return TensorRTError("\n".join(lines))


def _add_batch_profile(
    trt: Any,
    builder: Any,
    network: Any,
    config: Any,
    profile: tuple[int, int, int],
    report: ProgressCallback,
) -> None:
    """Give every input with a dynamic batch dimension the (min, opt, max) batch profile."""
    low, opt, high = profile
    optimization_profile = builder.create_optimization_profile()
    dynamic: list[str] = []
    fixed: list[str] = []
    for index in range(int(network.num_inputs)):
        tensor = network.get_input(index)
        shape = tuple(int(dim) for dim in tensor.shape)
        if not shape:
            continue
        other_dynamic = [axis for axis, dim in enumerate(shape[1:], start=1) if dim < 0]
        if other_dynamic:
            raise ValueError(
                f"input {tensor.name!r} has shape {shape}: axes {other_dynamic} are dynamic, but only the batch "
                "axis (0) may be; export the ONNX with fixed spatial/channel sizes"
            )
        if shape[0] < 0:
            rest = shape[1:]
            # IOptimizationProfile.set_shape raises RuntimeError on inconsistent shapes (pyCore.cpp).
            optimization_profile.set_shape(tensor.name, (low, *rest), (opt, *rest), (high, *rest))
            dynamic.append(tensor.name)
        else:
            fixed.append(f"{tensor.name} (batch {shape[0]})")
    if dynamic:
        if int(config.add_optimization_profile(optimization_profile)) < 0:
            raise TensorRTError(f"TensorRT refused the batch profile min={low}, opt={opt}, max={high}")
        report(f"batch profile for {', '.join(dynamic)}: min={low}, opt={opt}, max={high}")
    if fixed:
        message = (
            f"ONNX inputs with a fixed batch size: {', '.join(fixed)}; the engine accepts only that batch there and "
            "batch_sizes does not apply to them. Export the ONNX with a dynamic batch dimension to use batch_sizes."
        )
        warnings.warn(message, stacklevel=3)
        report(message)


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    batch_sizes: Iterable[int] = (1, 8, 32),
    workspace_gib: float | None = None,
    fp16: bool = False,
    force: bool = False,
    verbose: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Build a TensorRT engine from a QDQ ONNX file and write it to ``engine_path``.

    Checks run cheapest first and before anything is written: the arguments, then the overwrite rule (an existing
    ``engine_path`` is refused unless ``force``), then TensorRT availability. The engine is written to a
    temporary file in the same directory and moved into place, so a failed build never leaves a partial engine.

    Args:
        onnx_path: the QDQ ONNX file (opset >= 13).
        engine_path: where to write the serialized engine (its directory is created if needed).
        batch_sizes: the batch sizes the engine must accept; see :func:`profile_batch_range` for the profile.
        workspace_gib: cap on TensorRT's builder workspace in GiB; ``None`` keeps TensorRT's default (the GPU's
            memory).
        fp16: let layers without Q/DQ run in FP16. TensorRT 10 sets BuilderFlag.FP16; TensorRT 11 removed the
            flag and takes the precision from the ONNX file, so there it has effect only through an ONNX file exported
            with ``fp16=True`` (``--fp16``), which the export CLI passes along.
        force: overwrite an existing ``engine_path``.
        verbose: print TensorRT's verbose log to stderr (warnings and errors are always printed).
        progress: called with one line per stage (parsing, TensorRT build phases, writing).

    Returns:
        The path of the written engine.

    Raises:
        FileNotFoundError: ``onnx_path`` does not exist.
        TypeError, ValueError: bad ``batch_sizes``/``workspace_gib``, or an input with a dynamic non-batch axis.
        FileExistsError: ``engine_path`` exists and ``force`` is False (the file is left untouched).
        TensorRTUnavailableError: TensorRT, cuda-python or a GPU is missing.
        TensorRTError: the ONNX parser or the builder failed; the message carries TensorRT's errors.
    """
    onnx_file = _existing_onnx_file(onnx_path)
    profile = profile_batch_range(batch_sizes)
    workspace = _workspace_bytes(workspace_gib)
    target = _writable_engine_path(engine_path, onnx_file, force=force)
    trt = require_stack().trt
    report: ProgressCallback = progress if progress is not None else (lambda _message: None)

    strongly_typed = strong_typing_only(trt)
    if _onnx_qdq_node_count(onnx_file) == 0:
        message = (
            f"{onnx_file} has no QuantizeLinear/DequantizeLinear nodes, so the engine will not run in INT8; "
            "export the quantization-aware model (quantize_model) rather than the float one"
        )
        warnings.warn(message, stacklevel=2)
        report(message)

    logger = make_logger(trt, verbose=verbose)
    builder = trt.Builder(logger)
    # Flags 0: explicit batch is implicit since 10.0 (EXPLICIT_BATCH is deprecated in 10.x, absent in 11.x).
    # On 10.x this network is weakly typed; on 11.x createNetworkV2(0) is strongly typed (11.0 release notes).
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    report(f"parsing {onnx_file}")
    # parse_from_file resolves external weight files relative to the ONNX file (pyOnnx.cpp).
    parsed = parser.parse_from_file(str(onnx_file))
    if not parsed or int(parser.num_errors) > 0:
        raise _parser_failure(onnx_file, parser, logger)

    config = builder.create_builder_config()
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if strongly_typed:
        report(
            "TensorRT >= 11: strongly typed network, every precision taken from the ONNX file"
            + (" (fp16: export with --fp16 so the float parts are float16 there)" if fp16 else "")
        )
    else:
        # TensorRT 10.x weak typing: INT8 must be enabled for the Q/DQ layers to run in INT8; no calibrator is set,
        # so the scales come only from the graph (explicit quantization). Deprecated in 10.12, removed in 11.0.
        config.set_flag(trt.BuilderFlag.INT8)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        report(
            "TensorRT 10: INT8"
            + (" + FP16" if fp16 else "")
            + " builder flags, scales from the ONNX Q/DQ nodes"
        )
    _add_batch_profile(trt, builder, network, config, profile, report)

    monitor = None
    if progress is not None and hasattr(trt, "IProgressMonitor"):
        monitor = make_progress_monitor(trt, report)
        config.progress_monitor = monitor
    report("building the engine (this can take a few minutes)")
    plan = builder.build_serialized_network(network, config)  # IHostMemory, or None on failure
    if monitor is not None and monitor.callback_error is not None:
        raise monitor.callback_error
    if plan is None:
        details = "\n".join(f"  - {message}" for message in logger.errors) or "  - (TensorRT logged no error)"
        raise TensorRTError(f"TensorRT could not build an engine from {onnx_file}:\n{details}")
    data = memoryview(plan)  # IHostMemory exposes the buffer protocol
    if data.nbytes == 0:
        raise TensorRTError(f"TensorRT returned an empty engine for {onnx_file}")

    report(f"writing {target} ({data.nbytes / 2**20:.1f} MiB)")
    write_atomically(target, data, force=force)  # creates missing parent directories
    return target

