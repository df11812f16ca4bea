"""CUDA device memory, copies and a stream for running engines: cuda-python first, PyCUDA as a fallback.

Every call's status is checked and a failure raises :class:`TensorRTError` naming the CUDA call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from qdq_toolkit.export.tensorrt.errors import TensorRTError
from qdq_toolkit.export.tensorrt.stack import Stack, cudart_error_name

__all__ = ["CudaPython", "PyCuda", "cuda_backend"]


class CudaPython:
    """Device memory, copies and one stream through cuda-python's runtime API (as in common_runtime.py)."""

    name = "cuda-python"

    def __init__(self, cudart: Any) -> None:
        self._cudart = cudart
        self._stream = self._call("cudaStreamCreate", cudart.cudaStreamCreate())

    def _call(self, what: str, result: tuple[Any, ...]) -> Any:
        error, values = result[0], result[1:]
        if error != self._cudart.cudaError_t.cudaSuccess:
            raise TensorRTError(f"CUDA call {what} failed: {cudart_error_name(self._cudart, error)}")
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


class PyCuda:
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


def cuda_backend(stack: Stack) -> CudaPython | PyCuda:
    if stack.cudart is not None:
        return CudaPython(stack.cudart)
    return PyCuda(stack.pycuda_driver)

