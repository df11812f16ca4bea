"""Running a serialized TensorRT engine on NumPy batches: :class:`TensorRTRunner`, :func:`load_engine`,
:func:`run_engine`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdq_toolkit.export.tensorrt.callbacks import make_logger
from qdq_toolkit.export.tensorrt.cuda import CudaPython, PyCuda, cuda_backend
from qdq_toolkit.export.tensorrt.errors import TensorRTError
from qdq_toolkit.export.tensorrt.stack import require_stack

__all__ = ["TensorRTRunner", "TensorSpec", "load_engine", "run_engine"]

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
        stack = require_stack()
        self._path = path
        self._trt = stack.trt
        self._closed = False
        self._cuda: CudaPython | PyCuda | None = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._buffers: dict[str, _DeviceBuffer] = {}
        try:
            # PyCUDA must make its context current before TensorRT touches the GPU.
            self._cuda = cuda_backend(stack)
            self._logger = make_logger(self._trt, verbose=verbose)
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

