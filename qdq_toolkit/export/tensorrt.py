"""Build TensorRT INT8 engines from QDQ ONNX files, and run them.

TensorRT rules this module follows (checked against NVIDIA's TensorRT documentation, the Python binding sources
``python/src/infer/pyCore.cpp`` / ``python/src/parsers/pyOnnx.cpp`` and ``samples/python/common_runtime.py`` of the
NVIDIA/TensorRT repository; the call sites below say where TensorRT 10 and 11 differ):

* **Explicit quantization only.** INT8 comes from the QuantizeLinear/DequantizeLinear pairs of the ONNX graph
  (symmetric int8, zero point 0, per-channel only for weights). No calibrator is ever attached.
* **Explicit batch.** Since TensorRT 10.0 every network is "explicit batch": the ``EXPLICIT_BATCH`` creation flag
  is deprecated and ignored in 10.x and gone from the 11.x Python API, so networks are created with flags ``0``.
* **TensorRT 10.x (weakly typed).** ``BuilderFlag.INT8`` is set so the Q/DQ layers run in INT8, and
  ``BuilderFlag.FP16`` too when ``fp16=True``; everything else runs in FP32. Those flags were deprecated in 10.12.
* **TensorRT 11.x (strongly typed).** 11.0 removed ``BuilderFlag.INT8``/``FP16`` and the calibrator APIs; every
  network is strongly typed (``create_network(0)`` already is; ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is
  kept but ignored). Precision therefore comes from the ONNX file alone: Q/DQ nodes for INT8, tensor types for
  FP16. ``fp16=True`` sets no flag there: the float parts run in FP16 when the ONNX file was exported with
  ``fp16=True`` (``--fp16``, which the export CLI passes to both steps), and in FP32 otherwise.
* **One optimization profile** covers the dynamic batch dimension of every input: min = smallest of
  ``batch_sizes``, opt = the middle of the sorted distinct sizes (the upper middle one for an even count, so
  ``(1, 8, 32)`` → 8 and ``(1, 32)`` → 32), max = largest. Only the batch dimension may be dynamic.
* **Execution** uses the name-based API of TensorRT 10 and 11: ``set_input_shape``, ``get_tensor_shape``,
  ``set_tensor_address`` and ``execute_async_v3`` on a CUDA stream. Device memory and copies go through cuda-python
  (``cuda.bindings.runtime`` from cuda-python 12.6 on, the only path in 13.x; ``cuda.cudart`` before) — what
  NVIDIA's own samples use — or through PyCUDA when cuda-python is not installed.
* **Lazy imports.** Importing this module never imports tensorrt, cuda-python or PyCUDA. They are imported when an
  engine is built or loaded; without them, or without an NVIDIA GPU and driver, those calls raise
  :class:`TensorRTUnavailableError` and :func:`tensorrt_status` reports why without raising.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdq_toolkit._files import write_atomically

__all__ = [
    "INSTALL_COMMAND",
    "ProgressCallback",
    "TensorRTError",
    "TensorRTRunner",
    "TensorRTUnavailableError",
    "TensorSpec",
    "build_engine",
    "load_engine",
    "profile_batch_range",
    "run_engine",
    "tensorrt_status",
]

INSTALL_COMMAND = 'pip install "qdq-toolkit[trt]" --extra-index-url https://pypi.nvidia.com'
"""How to install TensorRT and cuda-python (the ``trt`` extra) on a machine with an NVIDIA GPU."""

_REQUIREMENTS = (
    "TensorRT engines need an NVIDIA GPU with its driver, TensorRT >= 10 and cuda-python (or PyCUDA). "
    f"On such a machine install them with: {INSTALL_COMMAND}"
)
_MIN_TENSORRT_MAJOR = 10
_BYTES_PER_GIB = 1 << 30

ProgressCallback = Callable[[str], None]
"""Receives one human-readable line per build stage (parsing, each TensorRT build phase, writing)."""


class TensorRTError(RuntimeError):
    """TensorRT or CUDA failed while building, loading or running an engine; the message says what and why."""


class TensorRTUnavailableError(TensorRTError):
    """TensorRT cannot be used here: a package is missing or no NVIDIA GPU/driver is usable.

    The message lists every missing piece and the install command.
    """


# --------------------------------------------------------------------------------------------------------------
# Finding TensorRT, the CUDA bindings and a GPU (all lazily).
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stack:
    """The imported modules an engine needs: tensorrt plus one of the two CUDA bindings."""

    trt: Any
    cudart: Any | None  # cuda-python's runtime module, preferred
    pycuda_driver: Any | None  # pycuda.driver, used only when cuda-python is not installed


def _major_version(version: str) -> int | None:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _import_tensorrt() -> tuple[Any | None, str | None]:
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError when its shared libraries cannot be loaded
        return None, f"the `tensorrt` Python package cannot be imported ({type(exc).__name__}: {exc})"
    version = str(getattr(trt, "__version__", ""))
    major = _major_version(version)
    if major is not None and major < _MIN_TENSORRT_MAJOR:
        return None, (
            f"tensorrt {version} is too old: this toolkit uses the name-based I/O API of TensorRT >= "
            f"{_MIN_TENSORRT_MAJOR}"
        )
    return trt, None


def _import_cudart() -> Any | None:
    try:
        # cuda-python >= 12.6 (and the only location in 13.x).
        from cuda.bindings import runtime as cudart
    except Exception:
        try:
            # cuda-python < 12.6, as in the older NVIDIA/TensorRT samples/python/common_runtime.py.
            from cuda import cudart
        except Exception:
            return None
    return cudart


def _import_pycuda_driver() -> Any | None:
    try:
        import pycuda.driver as driver
    except Exception:
        return None
    return driver


def _cudart_error_name(cudart: Any, error: Any) -> str:
    try:
        name = cudart.cudaGetErrorName(error)[1]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return repr(error)


def _cudart_gpu_problem(cudart: Any) -> str | None:
    try:
        error, count = cudart.cudaGetDeviceCount()
    except Exception as exc:
        return f"the CUDA runtime could not be queried ({type(exc).__name__}: {exc}); is the NVIDIA driver installed?"
    if error != cudart.cudaError_t.cudaSuccess:
        return (
            f"no usable CUDA GPU: cudaGetDeviceCount returned {_cudart_error_name(cudart, error)} "
            "(no NVIDIA GPU, no driver, or a driver older than the CUDA runtime)"
        )
    if int(count) < 1:
        return "no CUDA GPU is visible (cudaGetDeviceCount returned 0; check CUDA_VISIBLE_DEVICES)"
    return None


def _pycuda_gpu_problem(driver: Any) -> str | None:
    try:
        driver.init()
        count = driver.Device.count()
    except Exception as exc:
        return f"no usable CUDA GPU: PyCUDA could not initialise CUDA ({type(exc).__name__}: {exc})"
    if int(count) < 1:
        return "no CUDA GPU is visible (PyCUDA found 0 devices; check CUDA_VISIBLE_DEVICES)"
    return None


def _probe() -> tuple[_Stack | None, list[str]]:
    """Import what an engine needs and look for a GPU; return the stack, or every problem found."""
    problems: list[str] = []
    trt, trt_problem = _import_tensorrt()
    if trt_problem is not None:
        problems.append(trt_problem)

    cudart = _import_cudart()
    pycuda_driver = None if cudart is not None else _import_pycuda_driver()
    if cudart is not None:
        gpu_problem = _cudart_gpu_problem(cudart)
    elif pycuda_driver is not None:
        gpu_problem = _pycuda_gpu_problem(pycuda_driver)
    else:
        problems.append(
            "neither cuda-python nor PyCUDA is installed (cuda-python comes with the `trt` extra)"
        )
        # Without bindings the GPU cannot be queried; still say whether a driver is there at all.
        gpu_problem = (
            None if ctypes.util.find_library("cuda") else "no NVIDIA driver was found (libcuda is missing)"
        )
    if gpu_problem is not None:
        problems.append(gpu_problem)

    if problems:
        return None, problems
    return _Stack(trt=trt, cudart=cudart, pycuda_driver=pycuda_driver), []


def _unavailable_message(problems: list[str]) -> str:
    listed = "\n".join(f"  - {problem}" for problem in problems)
    return f"TensorRT cannot be used here:\n{listed}\n{_REQUIREMENTS}"


def tensorrt_status() -> str | None:
    """Say whether TensorRT engines can be built and run here, without raising.

    Returns:
        ``None`` when TensorRT >= 10, cuda-python (or PyCUDA) and a CUDA GPU are all usable; otherwise a message
        listing every missing piece and how to install it (for CLIs and reports).
    """
    _, problems = _probe()
    return _unavailable_message(problems) if problems else None


def _require_stack() -> _Stack:
    stack, problems = _probe()
    if stack is None:
        raise TensorRTUnavailableError(_unavailable_message(problems))
    return stack


def _strong_typing_only(trt: Any) -> bool:
    """True for TensorRT 11+, where BuilderFlag.INT8/FP16 were removed and every network is strongly typed."""
    major = _major_version(str(getattr(trt, "__version__", "")))
    return (major is not None and major >= 11) or not hasattr(trt.BuilderFlag, "INT8")


# --------------------------------------------------------------------------------------------------------------
# TensorRT callbacks (classes are defined once tensorrt is imported, since they subclass its interfaces).
# --------------------------------------------------------------------------------------------------------------

_SEVERITY_TAGS = {0: "internal error", 1: "error", 2: "warning", 3: "info", 4: "verbose"}


def _make_logger(trt: Any, *, verbose: bool) -> Any:
    """An ILogger that prints to stderr (warnings and up, everything when verbose) and keeps the errors.

    ILogger.Severity values: INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4 (pyCore.cpp); a Python
    subclass must call ``trt.ILogger.__init__`` and implement ``log(severity, msg)``.
    """

    class _CollectingLogger(trt.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self._threshold = 4 if verbose else 2

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level <= 1:
                self.errors.append(str(msg))
            if level <= self._threshold:
                print(f"[TensorRT {_SEVERITY_TAGS.get(level, level)}] {msg}", file=sys.stderr, flush=True)

    return _CollectingLogger()


def _make_progress_monitor(trt: Any, report: ProgressCallback) -> Any:
    """An IProgressMonitor (TensorRT >= 10.0) forwarding the top-level build phases to ``report``.

    ``step_complete`` must return True, or TensorRT cancels the build (pyCore.cpp treats an exception the same
    way), so an error raised by ``report`` is kept and re-raised after the build.
    """

    class _ProgressMonitor(trt.IProgressMonitor):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.callback_error: BaseException | None = None
            self._top_level: dict[str, int] = {}

        def _emit(self, message: str) -> None:
            if self.callback_error is not None:
                return
            try:
                report(message)
            except Exception as exc:  # never let it cancel the TensorRT build
                self.callback_error = exc

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self._top_level[phase_name] = int(num_steps)
                self._emit(f"TensorRT: {phase_name}")

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self._top_level.get(phase_name)
            if total is not None and total > 1:
                self._emit(f"TensorRT: {phase_name} {int(step) + 1}/{total}")
            return True

        def phase_finish(self, phase_name: str) -> None:
            self._top_level.pop(phase_name, None)

    return _ProgressMonitor()


# --------------------------------------------------------------------------------------------------------------
# Building.
# --------------------------------------------------------------------------------------------------------------


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


def _exists_message(target: Path) -> str:
    return (
        f"engine file {target} already exists and was left untouched; pass force=True "
        "(--force on the command line) to overwrite it, or choose another path"
    )


def _writable_engine_path(engine_path: str | os.PathLike[str], onnx_file: Path, *, force: bool) -> Path:
    target = Path(engine_path)
    if target.is_dir():
        raise IsADirectoryError(
            f"{target} is a directory; give the engine file to write, e.g. {target / 'model.engine'}"
        )
    if target.exists() and target.resolve() == onnx_file.resolve():
        raise ValueError(
            f"the engine path {target} is the ONNX file itself; choose another path, e.g. model.engine"
        )
    if target.exists() and not force:
        raise FileExistsError(_exists_message(target))
    return target


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
    trt = _require_stack().trt
    report: ProgressCallback = progress if progress is not None else (lambda _message: None)

    strongly_typed = _strong_typing_only(trt)
    if _onnx_qdq_node_count(onnx_file) == 0:
        message = (
            f"{onnx_file} has no QuantizeLinear/DequantizeLinear nodes, so the engine will not run in INT8; "
            "export the quantization-aware model (quantize_model) rather than the float one"
        )
        warnings.warn(message, stacklevel=2)
        report(message)

    logger = _make_logger(trt, verbose=verbose)
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
        monitor = _make_progress_monitor(trt, report)
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
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, data, force=force)
    return target


# --------------------------------------------------------------------------------------------------------------
# CUDA memory: cuda-python first, PyCUDA as a fallback. Every call's status is checked.
# --------------------------------------------------------------------------------------------------------------


class _CudaPython:
    """Device memory, copies and one stream through cuda-python's runtime API (as in common_runtime.py)."""

    name = "cuda-python"

    def __init__(self, cudart: Any) -> None:
        self._cudart = cudart
        self._stream = self._call("cudaStreamCreate", cudart.cudaStreamCreate())

    def _call(self, what: str, result: tuple[Any, ...]) -> Any:
        error, values = result[0], result[1:]
        if error != self._cudart.cudaError_t.cudaSuccess:
            raise TensorRTError(f"CUDA call {what} failed: {_cudart_error_name(self._cudart, error)}")
        return values[0] if len(values) == 1 else (values or None)

    @property
    def stream_handle(self) -> int:
        return int(self._stream)  # int(cudaStream_t) is the handle's address (cuda-python "Tips and Tricks")

    def malloc(self, nbytes: int) -> int:
        return int(self._call(f"cudaMalloc({nbytes} bytes)", self._cudart.cudaMalloc(nbytes)))

    def free(self, pointer: int) -> None:
        self._call("cudaFree", self._cudart.cudaFree(pointer))

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        result = self._cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, self._stream)
        self._call("cudaMemcpyAsync (host to device)", result)

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        result = self._cudart.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, self._stream)
        self._call("cudaMemcpyAsync (device to host)", result)

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", self._cudart.cudaStreamSynchronize(self._stream))

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            self._call("cudaStreamDestroy", self._cudart.cudaStreamDestroy(stream))


class _PyCuda:
    """The same operations through PyCUDA, on device 0's primary context (the one TensorRT's runtime API uses)."""

    name = "pycuda"

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self._allocations: dict[int, Any] = {}
        self._context: Any = None
        self._stream: Any = None
        self._guard("cuInit", driver.init)
        context = self._guard("cuDevicePrimaryCtxRetain", lambda: driver.Device(0).retain_primary_context())
        try:
            self._guard("cuCtxPushCurrent", context.push)
        except TensorRTError:
            with contextlib.suppress(Exception):
                context.detach()
            raise
        self._context = context
        try:
            self._stream = self._guard("cuStreamCreate", driver.Stream)
        except TensorRTError:
            with contextlib.suppress(Exception):
                self.close()
            raise

    @staticmethod
    def _guard(what: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as exc:
            raise TensorRTError(f"CUDA call {what} (PyCUDA) failed: {type(exc).__name__}: {exc}") from exc

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def malloc(self, nbytes: int) -> int:
        allocation = self._guard(f"cuMemAlloc({nbytes} bytes)", lambda: self._driver.mem_alloc(nbytes))
        pointer = int(allocation)
        self._allocations[pointer] = allocation
        return pointer

    def free(self, pointer: int) -> None:
        allocation = self._allocations.pop(pointer)
        self._guard("cuMemFree", allocation.free)

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        allocation = self._allocations[pointer]
        self._guard(
            "cuMemcpyHtoDAsync", lambda: self._driver.memcpy_htod_async(allocation, array, self._stream)
        )

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        allocation = self._allocations[pointer]
        self._guard(
            "cuMemcpyDtoHAsync", lambda: self._driver.memcpy_dtoh_async(array, allocation, self._stream)
        )

    def synchronize(self) -> None:
        self._guard("cuStreamSynchronize", self._stream.synchronize)

    def close(self) -> None:
        self._stream = None
        if self._context is not None:
            context, self._context = self._context, None
            self._guard("cuCtxPopCurrent", context.pop)
            self._guard("cuDevicePrimaryCtxRelease", context.detach)


def _cuda_backend(stack: _Stack) -> _CudaPython | _PyCuda:
    if stack.cudart is not None:
        return _CudaPython(stack.cudart)
    return _PyCuda(stack.pycuda_driver)


# --------------------------------------------------------------------------------------------------------------
# Running.
# --------------------------------------------------------------------------------------------------------------

_NUMPY_TYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


def _numpy_dtype(trt: Any, data_type: Any, tensor_name: str) -> np.dtype[Any]:
    for member_name, numpy_type in _NUMPY_TYPES.items():
        member = getattr(trt.DataType, member_name, None)
        if member is not None and data_type == member:
            return np.dtype(numpy_type)
    raise TensorRTError(
        f"engine tensor {tensor_name!r} has TensorRT type {data_type}, which has no NumPy equivalent (BF16/FP8/FP4/"
        "INT4); keep the model's inputs and outputs float32 and put reduced precision inside the graph"
    )


@dataclass(frozen=True)
class TensorSpec:
    """An engine input or output: its name, its shape (-1 on dynamic axes) and its NumPy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


@dataclass
class _DeviceBuffer:
    pointer: int
    capacity: int


class TensorRTRunner:
    """Runs a serialized TensorRT engine on NumPy batches; a context manager that frees the GPU memory it holds.

    ``run`` (or calling the runner) takes one array for single-input engines, or a dict keyed by input name, and
    returns a dict of output arrays. Device buffers grow only when a larger batch than any before arrives. The
    runner is not thread-safe; use one per thread.

    Example::

        with TensorRTRunner("model.engine") as runner:
            logits = runner(images)["logits"]
    """

    def __init__(self, engine_path: str | os.PathLike[str], *, verbose: bool = False) -> None:
        """Load ``engine_path``.

        Raises:
            FileNotFoundError: the engine file does not exist.
            TensorRTUnavailableError: TensorRT, cuda-python/PyCUDA or a GPU is missing.
            TensorRTError: the engine cannot be deserialized (built by another TensorRT version or for another GPU)
                or uses I/O this runner does not support.
        """
        path = Path(engine_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"engine file {path} does not exist; build it first with build_engine (python -m qdq_toolkit.export)"
            )
        stack = _require_stack()
        self._path = path
        self._trt = stack.trt
        self._closed = False
        self._cuda: _CudaPython | _PyCuda | None = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._buffers: dict[str, _DeviceBuffer] = {}
        try:
            # PyCUDA must make its context current before TensorRT touches the GPU.
            self._cuda = _cuda_backend(stack)
            self._logger = _make_logger(self._trt, verbose=verbose)
            self._runtime = self._trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                errors = "; ".join(self._logger.errors) or "no reason logged"
                raise TensorRTError(
                    f"TensorRT could not load {path} ({errors}). Engines only load with the TensorRT version and GPU "
                    "model they were built with: rebuild it here with build_engine (--force to overwrite)."
                )
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise TensorRTError(
                    f"TensorRT could not create an execution context for {path} (out of GPU memory?)"
                )
            self._inputs, self._outputs = self._describe_io()
            self._input_ranges = self._profile_ranges()
            self._batch_range = self._common_batch_range()
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise

    # -- description ----------------------------------------------------------------------------------------------

    def _describe_io(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        trt, engine = self._trt, self._engine
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        for index in range(int(engine.num_io_tensors)):
            name = engine.get_tensor_name(index)
            spec = TensorSpec(
                name=name,
                shape=tuple(int(dim) for dim in engine.get_tensor_shape(name)),
                dtype=_numpy_dtype(trt, engine.get_tensor_dtype(name), name),
            )
            location = getattr(trt, "TensorLocation", None)
            if location is not None and engine.get_tensor_location(name) == location.HOST:
                raise TensorRTError(
                    f"engine tensor {name!r} lives in host memory (a shape tensor); not supported"
                )
            mode = engine.get_tensor_mode(name)
            if mode == trt.TensorIOMode.INPUT:
                inputs.append(spec)
            elif mode == trt.TensorIOMode.OUTPUT:
                outputs.append(spec)
        if not inputs or not outputs:
            raise TensorRTError(f"engine {self._path} has {len(inputs)} inputs and {len(outputs)} outputs")
        return tuple(inputs), tuple(outputs)

    def _profile_ranges(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """(min shape, max shape) of every input in optimization profile 0, the one a new context uses."""
        ranges = {}
        for spec in self._inputs:
            if any(dim < 0 for dim in spec.shape):
                minimum, _optimum, maximum = self._engine.get_tensor_profile_shape(spec.name, 0)
                ranges[spec.name] = (tuple(int(d) for d in minimum), tuple(int(d) for d in maximum))
            else:
                ranges[spec.name] = (spec.shape, spec.shape)
        return ranges

    def _common_batch_range(self) -> tuple[int, int]:
        batched = [self._input_ranges[spec.name] for spec in self._inputs if spec.shape]
        if not batched:
            return (1, 1)
        return max(low[0] for low, _ in batched), min(high[0] for _, high in batched)

    @property
    def engine_path(self) -> Path:
        """The engine file this runner loaded."""
        return self._path

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The engine's inputs, in engine order."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The engine's outputs, in engine order."""
        return self._outputs

    @property
    def batch_range(self) -> tuple[int, int]:
        """The smallest and largest batch size the engine's optimization profile accepts."""
        return self._batch_range

    @property
    def cuda_backend(self) -> str:
        """Which CUDA binding moves the data: ``"cuda-python"`` or ``"pycuda"``."""
        return self._cuda.name if self._cuda is not None else "closed"

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"batch {self._batch_range[0]}..{self._batch_range[1]}"
        return f"TensorRTRunner({str(self._path)!r}, {state})"

    # -- running --------------------------------------------------------------------------------------------------

    def _as_arrays(self, inputs: np.ndarray | Mapping[str, Any]) -> dict[str, np.ndarray]:
        names = [spec.name for spec in self._inputs]
        if isinstance(inputs, Mapping):
            missing = [name for name in names if name not in inputs]
            unknown = [str(key) for key in inputs if key not in names]
            if missing or unknown:
                raise ValueError(
                    f"the engine's inputs are {names}; missing {missing}, unknown {unknown}. Pass a dict with exactly "
                    "those names."
                )
            given = dict(inputs)
        else:
            if len(names) != 1:
                raise ValueError(
                    f"the engine has {len(names)} inputs {names}; pass a dict keyed by input name"
                )
            given = {names[0]: inputs}
        arrays = {}
        for spec in self._inputs:
            array = np.asarray(given[spec.name])
            if array.dtype.kind not in "biuf":
                raise TypeError(
                    f"input {spec.name!r} has dtype {array.dtype}; give numbers (the engine wants {spec.dtype})"
                )
            arrays[spec.name] = np.ascontiguousarray(array, dtype=spec.dtype)
        return arrays

    def _check_shapes(self, arrays: dict[str, np.ndarray]) -> None:
        low, high = self._batch_range
        batches = set()
        for spec in self._inputs:
            shape = arrays[spec.name].shape
            if len(shape) != len(spec.shape):
                raise ValueError(
                    f"input {spec.name!r} must have {len(spec.shape)} dimensions {spec.shape} (-1 = any), got {shape}"
                )
            minimum, maximum = self._input_ranges[spec.name]
            for axis, (size, fixed) in enumerate(zip(shape, spec.shape, strict=True)):
                if fixed >= 0 and size != fixed:
                    raise ValueError(
                        f"input {spec.name!r} must have shape {spec.shape} (-1 = any), got {shape}"
                    )
                if axis > 0 and not minimum[axis] <= size <= maximum[axis]:
                    raise ValueError(
                        f"input {spec.name!r} axis {axis} is {size}; the engine accepts {minimum[axis]} to "
                        f"{maximum[axis]} there"
                    )
            if shape:
                batches.add(shape[0])
        if len(batches) > 1:
            raise ValueError(f"all inputs must have the same batch size, got {sorted(batches)}")
        for batch in batches:
            if not low <= batch <= high:
                raise ValueError(
                    f"batch size {batch} is outside the engine's optimization profile, which accepts batches of "
                    f"{low} to {high}; split the batch, or rebuild the engine with build_engine(batch_sizes=...) "
                    "covering this size"
                )

    def _buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for ``name``, re-allocated only when it must grow."""
        current = self._buffers.get(name)
        needed = max(nbytes, 1)
        if current is not None and current.capacity >= needed:
            return current.pointer
        if current is not None:
            del self._buffers[name]
            self._cuda.free(current.pointer)
        pointer = self._cuda.malloc(needed)
        self._buffers[name] = _DeviceBuffer(pointer=pointer, capacity=needed)
        return pointer

    def run(self, inputs: np.ndarray | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run one batch and return the outputs by name.

        Args:
            inputs: one array (single-input engines) or a dict ``{input name: array}``; arrays are converted to the
                engine's input dtype.

        Raises:
            ValueError: wrong input names or shapes, or a batch size outside the engine's profile.
            TensorRTError: TensorRT or a CUDA call failed.
        """
        if self._closed:
            raise TensorRTError(f"{self!r} is closed; create a new TensorRTRunner to run the engine again")
        arrays = self._as_arrays(inputs)
        self._check_shapes(arrays)
        context = self._context
        for spec in self._inputs:
            shape = arrays[spec.name].shape
            if not context.set_input_shape(spec.name, shape):
                raise ValueError(
                    f"TensorRT rejected shape {shape} for input {spec.name!r}: {self._logged_errors()}"
                )

        results: dict[str, np.ndarray] = {}
        for spec in self._outputs:
            shape = tuple(int(dim) for dim in context.get_tensor_shape(spec.name))
            if any(dim < 0 for dim in shape):
                raise TensorRTError(f"output {spec.name!r} has a data-dependent shape {shape}; not supported")
            results[spec.name] = np.empty(shape, dtype=spec.dtype)

        enqueued = False
        try:
            for spec in self._inputs:
                array = arrays[spec.name]
                pointer = self._buffer(spec.name, array.nbytes)
                self._address(spec.name, pointer)
                enqueued = True
                self._cuda.to_device(pointer, array)
            for spec in self._outputs:
                self._address(spec.name, self._buffer(spec.name, results[spec.name].nbytes))
            if not context.execute_async_v3(self._cuda.stream_handle):
                raise TensorRTError(f"TensorRT execute_async_v3 failed: {self._logged_errors()}")
            for spec in self._outputs:
                self._cuda.to_host(results[spec.name], self._buffers[spec.name].pointer)
            self._cuda.synchronize()
        except BaseException:
            if enqueued:  # let pending copies finish before their host arrays or buffers go away
                with contextlib.suppress(Exception):
                    self._cuda.synchronize()
            raise
        return results

    __call__ = run

    def _address(self, name: str, pointer: int) -> None:
        if not self._context.set_tensor_address(name, pointer):
            raise TensorRTError(f"TensorRT set_tensor_address failed for {name!r}: {self._logged_errors()}")

    def _logged_errors(self) -> str:
        errors = self._logger.errors
        return "; ".join(errors[-5:]) if errors else "TensorRT logged no error"

    # -- lifetime -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the execution context, the engine and the GPU memory; safe to call twice.

        Raises:
            TensorRTError: a CUDA call failed while freeing (every resource is still attempted).
        """
        if self._closed:
            return
        self._closed = True
        first_error: BaseException | None = None
        # TensorRT objects first (they may hold memory in the CUDA context), then our buffers, stream and context.
        self._context = None
        self._engine = None
        self._runtime = None
        cuda, self._cuda = self._cuda, None
        if cuda is None:
            return
        for buffer in self._buffers.values():
            try:
                cuda.free(buffer.pointer)
            except Exception as exc:
                first_error = first_error or exc
        self._buffers.clear()
        try:
            cuda.close()
        except Exception as exc:
            first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # do not hide the error that is already propagating
            self.close()


def load_engine(engine_path: str | os.PathLike[str], *, verbose: bool = False) -> TensorRTRunner:
    """Load a serialized engine for running; use the result as a context manager (``with load_engine(p) as r:``)."""
    return TensorRTRunner(engine_path, verbose=verbose)


def run_engine(
    engine_path: str | os.PathLike[str],
    batch: np.ndarray | Mapping[str, Any],
    *,
    verbose: bool = False,
) -> dict[str, np.ndarray]:
    """Load ``engine_path``, run one batch and free everything; convenient for one-off checks, slow in loops."""
    with TensorRTRunner(engine_path, verbose=verbose) as runner:
        return runner.run(batch)
