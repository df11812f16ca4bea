"""Finding TensorRT, the CUDA bindings (cuda-python or PyCUDA) and a GPU, lazily and without raising.

Importing this module imports none of them: :func:`probe` does, when an engine is built or loaded. Without them,
or without an NVIDIA GPU and driver, :func:`require_stack` raises :class:`TensorRTUnavailableError` listing every
missing piece, and :func:`tensorrt_status` returns that message instead.
"""

from __future__ import annotations

import ctypes.util
from dataclasses import dataclass
from typing import Any

from qdq_toolkit.export.tensorrt.errors import TensorRTUnavailableError

__all__ = [
    "INSTALL_COMMAND",
    "Stack",
    "cudart_error_name",
    "probe",
    "require_stack",
    "strong_typing_only",
    "tensorrt_status",
]

INSTALL_COMMAND = 'pip install "qdq-toolkit[trt]" --extra-index-url https://pypi.nvidia.com'
"""How to install TensorRT and cuda-python (the ``trt`` extra) on a machine with an NVIDIA GPU."""

_REQUIREMENTS = (
    "TensorRT engines need an NVIDIA GPU with its driver, TensorRT >= 10 and cuda-python (or PyCUDA). "
    f"On such a machine install them with: {INSTALL_COMMAND}"
)
_MIN_TENSORRT_MAJOR = 10


@dataclass(frozen=True)
class Stack:
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


def cudart_error_name(cudart: Any, error: Any) -> str:
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
            f"no usable CUDA GPU: cudaGetDeviceCount returned {cudart_error_name(cudart, error)} "
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


def probe() -> tuple[Stack | None, list[str]]:
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
    return Stack(trt=trt, cudart=cudart, pycuda_driver=pycuda_driver), []


def _unavailable_message(problems: list[str]) -> str:
    listed = "\n".join(f"  - {problem}" for problem in problems)
    return f"TensorRT cannot be used here:\n{listed}\n{_REQUIREMENTS}"


def tensorrt_status() -> str | None:
    """Say whether TensorRT engines can be built and run here, without raising.

    Returns:
        ``None`` when TensorRT >= 10, cuda-python (or PyCUDA) and a CUDA GPU are all usable; otherwise a message
        listing every missing piece and how to install it (for CLIs and reports).
    """
    _, problems = probe()
    return _unavailable_message(problems) if problems else None


def require_stack() -> Stack:
    stack, problems = probe()
    if stack is None:
        raise TensorRTUnavailableError(_unavailable_message(problems))
    return stack


def strong_typing_only(trt: Any) -> bool:
    """True for TensorRT 11+, where BuilderFlag.INT8/FP16 were removed and every network is strongly typed."""
    major = _major_version(str(getattr(trt, "__version__", "")))
    return (major is not None and major >= 11) or not hasattr(trt.BuilderFlag, "INT8")

