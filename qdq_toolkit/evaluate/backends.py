"""Backends: one small interface over a Keras model, an ONNX model in ONNX Runtime and a TensorRT engine.

Every backend takes one NumPy batch of images (NHWC, the layout the toolkit exports) and returns the classifier's
scores as a ``(batch, num_classes)`` float array::

    with load_backend("qat.onnx") as backend:       # backend chosen by the file extension
        scores = backend.predict(images)             # (N, C) logits or probabilities
        print(backend.name, backend.kind, backend.file_size)

Heavy libraries are imported only by the backend that needs them: TensorFlow/Keras by :class:`KerasBackend`,
ONNX Runtime by :class:`OnnxRuntimeBackend`, TensorRT (through :mod:`qdq_toolkit.export.tensorrt`) by
:class:`TensorRTBackend`. Without TensorRT or a GPU, :class:`TensorRTBackend` raises
:class:`~qdq_toolkit.export.tensorrt.TensorRTUnavailableError`, whose message lists what is missing; the
evaluator reports such a model as skipped and evaluates the others.

Batches of any size are accepted: a backend whose model only takes certain batch sizes (an engine's optimization
profile, an ONNX model with a fixed batch dimension) splits larger batches and pads smaller ones by repeating the
last image, returning scores for the real images only.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qdq_toolkit._validation import check_count
from qdq_toolkit.evaluate.errors import EvaluationError

__all__ = [
    "BACKEND_KINDS",
    "ENGINE_SUFFIXES",
    "KERAS_SUFFIXES",
    "ONNX_SUFFIXES",
    "Backend",
    "KerasBackend",
    "OnnxRuntimeBackend",
    "TensorRTBackend",
    "backend_kind_for_path",
    "check_model_path",
    "load_backend",
]

KERAS_SUFFIXES: tuple[str, ...] = (".keras", ".h5")
"""Files loaded by :class:`KerasBackend` (``model.save("m.keras")``; ``.h5`` is Keras' legacy format)."""

ONNX_SUFFIXES: tuple[str, ...] = (".onnx",)
"""Files run by :class:`OnnxRuntimeBackend`."""

ENGINE_SUFFIXES: tuple[str, ...] = (".plan", ".engine")
"""Serialized TensorRT engines, run by :class:`TensorRTBackend`."""

BACKEND_KINDS: tuple[str, ...] = ("keras", "onnxruntime", "tensorrt")
"""The values of :attr:`Backend.kind`."""

_SUFFIX_KINDS = {
    **dict.fromkeys(KERAS_SUFFIXES, "keras"),
    **dict.fromkeys(ONNX_SUFFIXES, "onnxruntime"),
    **dict.fromkeys(ENGINE_SUFFIXES, "tensorrt"),
}

_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}

Shape = tuple[int | None, ...]


def _supported_suffixes() -> str:
    keras = "/".join(KERAS_SUFFIXES)
    onnx = "/".join(ONNX_SUFFIXES)
    engine = "/".join(ENGINE_SUFFIXES)
    return f"{keras} (Keras), {onnx} (ONNX Runtime) or {engine} (TensorRT engine)"


def backend_kind_for_path(path: str | os.PathLike[str]) -> str:
    """The backend kind a model file is run with, from its extension (case-insensitive).

    Raises:
        EvaluationError: the extension is not one of :data:`KERAS_SUFFIXES`, :data:`ONNX_SUFFIXES` or
            :data:`ENGINE_SUFFIXES`.
    """
    suffix = Path(path).suffix.lower()
    kind = _SUFFIX_KINDS.get(suffix)
    if kind is None:
        what = f"extension {suffix!r}" if suffix else "no extension"
        raise EvaluationError(
            f"model file {os.fspath(path)} has {what}; give a {_supported_suffixes()} file "
            "(a SavedModel directory must be exported to ONNX first: python -m qdq_toolkit.export)"
        )
    return kind


def check_model_path(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """Check that ``path`` is an existing model file of a known kind, without loading it.

    Returns:
        The path and its backend kind (``"keras"``, ``"onnxruntime"`` or ``"tensorrt"``).

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        EvaluationError: ``path`` is a directory or has an unknown extension.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"model file {file} does not exist; check the path")
    if file.is_dir():
        raise EvaluationError(
            f"{file} is a directory, not a model file; give a {_supported_suffixes()} file "
            "(a SavedModel must be exported to ONNX first: python -m qdq_toolkit.export)"
        )
    return file, backend_kind_for_path(file)


class Backend(abc.ABC):
    """A classifier that maps a NumPy batch of images to a ``(batch, num_classes)`` array of scores.

    Subclasses implement :meth:`_run` for a batch size inside :attr:`batch_range`; :meth:`predict` validates the
    input and splits or pads batches outside that range. Backends are context managers: leaving the ``with``
    block calls :meth:`close`.

    Attributes:
        kind: ``"keras"``, ``"onnxruntime"`` or ``"tensorrt"``.
    """

    kind: ClassVar[str] = ""

    def __init__(self, name: str, path: Path | None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a backend needs a non-empty name, got {name!r}")
        self._name = name
        self._path = path
        self._closed = False

    # -- description ----------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The model's name in reports (``fp32``, ``qat``, ...)."""
        return self._name

    @property
    def path(self) -> Path | None:
        """The model file, or ``None`` for an in-memory Keras model."""
        return self._path

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the model consists of (an ONNX model may keep its weights in external data files)."""
        return (self._path,) if self._path is not None else ()

    @property
    def file_size(self) -> int | None:
        """Size on disk in bytes of :attr:`files`, or ``None`` for an in-memory model."""
        files = self.files
        if not files:
            return None
        return sum(file.stat().st_size for file in files if file.is_file())

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """Where the model runs: ``"CPU"`` or ``"GPU"``."""

    @property
    @abc.abstractmethod
    def input_shape(self) -> Shape | None:
        """Shape of the model's input, batch axis first, ``None`` for dimensions the model leaves open."""

    @property
    def batch_range(self) -> tuple[int, int | None]:
        """Smallest and largest batch size the model runs at once (``None``: no upper limit)."""
        shape = self.input_shape
        if shape and shape[0] is not None:
            return shape[0], shape[0]
        return 1, None

    def describe(self) -> str:
        """One line for reports, e.g. ``onnxruntime 1.23 (CPU, 2 intra-op threads)``."""
        return f"{self.kind} ({self.device})"

    def unsupported_batch_size(self, batch_size: int) -> str | None:
        """Why ``batch_size`` cannot be timed as one call of this model, or ``None`` when it can."""
        low, high = self.batch_range
        if batch_size < low or (high is not None and batch_size > high):
            upper = "any" if high is None else str(high)
            return (
                f"batch size {batch_size} is outside the {low}..{upper} batch sizes {self.name!r} runs "
                "(rebuild the engine or re-export the model with a dynamic batch dimension to time it)"
            )
        return None

    def __repr__(self) -> str:
        where = str(self._path) if self._path is not None else "in memory"
        return f"{type(self).__name__}({self._name!r}, {where})"

    # -- running --------------------------------------------------------------------------------------------------

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Scores of one batch of images.

        Args:
            batch: ``(N, H, W, C)`` images (any leading batch size N >= 1).

        Returns:
            float array of shape ``(N, num_classes)``.

        Raises:
            ValueError: the images do not have the shape the model takes, or the output is not ``(N, classes)``.
            EvaluationError: the backend was closed.
        """
        if self._closed:
            raise EvaluationError(f"{self!r} is closed; load the model again to run it")
        batch = self._check_batch(batch)
        count = batch.shape[0]
        low, high = self.batch_range
        if count >= low and (high is None or count <= high):
            return self._scores(self._run(batch), count)
        step = high if high is not None else count
        parts = []
        for start in range(0, count, step):
            chunk = batch[start : start + step]
            real = chunk.shape[0]
            if real < low:  # pad with copies of the last image, keep only the real scores
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], low - real, axis=0)])
            parts.append(self._scores(self._run(chunk), chunk.shape[0])[:real])
        return np.concatenate(parts)

    __call__ = predict

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> Any:
        """Run one batch whose size is inside :attr:`batch_range`; return the raw output."""

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.dtype.kind not in "biuf":
            raise TypeError(f"{self.name!r} takes numeric images, got dtype {batch.dtype}")
        if batch.ndim < 1 or batch.shape[0] < 1:
            raise ValueError(
                f"{self.name!r} got an empty batch of shape {batch.shape}; give at least one image"
            )
        expected = self.input_shape
        if expected is None:
            return batch
        fits = batch.ndim == len(expected) and all(
            want is None or want == got for want, got in zip(expected[1:], batch.shape[1:], strict=True)
        )
        if not fits:
            want = "x".join("?" if dim is None else str(dim) for dim in expected[1:])
            got = "x".join(str(dim) for dim in batch.shape[1:])
            raise ValueError(
                f"model {self.name!r} takes images of shape {want} (NHWC, ? = any) but got {got}; evaluate it on "
                "data of that shape (e.g. --image-size / --channels on the command line)"
            )
        return batch

    def _scores(self, output: Any, count: int) -> np.ndarray:
        scores = np.asarray(output)
        if scores.ndim >= 2 and scores.shape[0] == count and int(np.prod(scores.shape[1:-1])) == 1:
            scores = scores.reshape(count, scores.shape[-1])
        if scores.ndim != 2 or scores.shape[0] != count:
            raise ValueError(
                f"model {self.name!r} returned an output of shape {scores.shape} for {count} images; a classifier "
                f"must return ({count}, num_classes) scores"
            )
        if scores.dtype.kind != "f":
            scores = scores.astype(np.float32)
        return scores

    # -- lifetime -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release what the backend holds (sessions, GPU memory); safe to call twice."""
        self._closed = True

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------------
# Keras
# --------------------------------------------------------------------------------------------------------------


def _error_text(exc: BaseException) -> str:
    """``Type: message`` on one line, without a trailing period (the caller adds its own sentence)."""
    message = " ".join(str(exc).split()).rstrip(".")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _single(values: Any, what: str, owner: str) -> Any:
    """The only element of a list/tuple/dict output, or ``values`` itself when it is a single tensor."""
    if isinstance(values, dict):
        values = list(values.values())
    if isinstance(values, list | tuple):
        if len(values) != 1:
            raise EvaluationError(
                f"{owner} has {len(values)} {what}s; the evaluator runs single-input, single-output classifiers"
            )
        return values[0]
    return values


class KerasBackend(Backend):
    """A Keras model, in memory or loaded from a ``.keras`` file, run through a traced ``tf.function``.

    Loading a file imports :mod:`qdq_toolkit.wrappers` first, so QAT models saved by the toolkit (with their QDQ
    wrappers) load without ``custom_objects``. Inference runs in ``training=False`` mode on TensorFlow's default
    device (the GPU when TensorFlow sees one).
    """

    kind: ClassVar[str] = "keras"

    def __init__(self, model: Any, name: str | None = None, *, safe_mode: bool = True) -> None:
        """Wrap ``model``: a ``keras.Model`` or the path of a ``.keras`` file.

        Args:
            model: the model, or its file.
            name: the name in reports; defaults to the file's stem or the model's name.
            safe_mode: passed to ``keras.saving.load_model``; ``False`` allows ``Lambda`` layers from trusted files.

        Raises:
            FileNotFoundError: the file does not exist.
            EvaluationError: the file cannot be loaded, or the model has several inputs or outputs.
        """
        import keras
        import tensorflow as tf

        path: Path | None = None
        if isinstance(model, str | os.PathLike):
            path, kind = check_model_path(model)
            if kind != "keras":
                raise EvaluationError(
                    f"{path} is not a Keras file; KerasBackend loads {'/'.join(KERAS_SUFFIXES)} files "
                    "(use load_backend to pick the backend from the extension)"
                )
            model = self._load(path, safe_mode=safe_mode)
        elif not isinstance(model, keras.Model):
            raise TypeError(
                f"KerasBackend takes a keras.Model or the path of a .keras file, got {type(model).__name__}"
            )
        super().__init__(name or (path.stem if path is not None else model.name), path)
        self._model = model
        self._tf = tf
        self._input_shape = self._model_input_shape(model)
        self._input_dtype: Any = None
        if self._input_shape is not None:
            self._input_dtype = _single(model.inputs, "input", f"Keras model {self.name!r}").dtype
            signature = [tf.TensorSpec((None, *self._input_shape[1:]), self._input_dtype)]
            self._function = tf.function(self._call, input_signature=signature)
        else:  # a subclassed model that was never built: trace per input shape
            self._function = tf.function(self._call, reduce_retracing=True)
        self._device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"

    @staticmethod
    def _load(path: Path, *, safe_mode: bool) -> Any:
        from qdq_toolkit.quantize import ModelFileError, load_keras_file

        try:
            return load_keras_file(path, safe_mode=safe_mode)
        except ModelFileError as exc:
            raise EvaluationError(str(exc)) from exc

    def _model_input_shape(self, model: Any) -> Shape | None:
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            return None
        if not inputs:
            return None
        tensor = _single(inputs, "input", f"Keras model {self.name!r}")
        return tuple(None if dim is None else int(dim) for dim in tensor.shape)

    def _call(self, batch: Any) -> Any:
        return _single(self._model(batch, training=False), "output", f"Keras model {self.name!r}")

    @property
    def model(self) -> Any:
        """The wrapped ``keras.Model``."""
        return self._model

    @property
    def device(self) -> str:
        return self._device

    @property
    def input_shape(self) -> Shape | None:
        return self._input_shape

    def describe(self) -> str:
        return f"keras {self._keras_version()} / tensorflow {self._tf.__version__} ({self.device})"

    @staticmethod
    def _keras_version() -> str:
        import keras

        return str(keras.__version__)

    def _run(self, batch: np.ndarray) -> Any:
        tensor = self._tf.convert_to_tensor(batch)
        if self._input_dtype is not None and tensor.dtype != self._input_dtype:
            tensor = self._tf.cast(tensor, self._input_dtype)
        return self._function(tensor).numpy()

    def close(self) -> None:
        super().close()
        self._function = None


# --------------------------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------------------------


def _onnx_external_files(path: Path) -> tuple[Path, ...]:
    """The external data files an ONNX model references (empty for a self-contained file or on any doubt)."""
    try:
        import onnx

        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:
        return ()
    locations: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return tuple(path.parent / location for location in sorted(locations))


class OnnxRuntimeBackend(Backend):
    """An ONNX model run by ONNX Runtime on the CPU (``CPUExecutionProvider``).

    On the CPU, ONNX Runtime does not fuse TensorRT-style QDQ graphs into integer kernels: it is a faithful
    numerical reference for a QDQ model's accuracy, not a measure of INT8 speed.
    """

    kind: ClassVar[str] = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        *,
        intra_op_threads: int | None = None,
        output_name: str | None = None,
    ) -> None:
        """Open ``path`` in an ONNX Runtime inference session.

        Args:
            path: the ``.onnx`` file.
            name: the name in reports; defaults to the file's stem.
            intra_op_threads: threads inside one operator; ``None`` lets ONNX Runtime choose (one per
                physical core).
            output_name: which output holds the scores when the model has several; default the only one.

        Raises:
            FileNotFoundError: the file does not exist.
            EvaluationError: ONNX Runtime cannot load the file (not ONNX, corrupt, unsupported operators) or the
                model has several inputs, or outputs without ``output_name``.
        """
        file, kind = check_model_path(path)
        if kind != "onnxruntime":
            raise EvaluationError(f"{file} is not an .onnx file; OnnxRuntimeBackend runs ONNX models")
        super().__init__(name or file.stem, file)
        intra_op_threads = check_count("intra_op_threads", intra_op_threads, allow_none=True)
        import onnxruntime as ort

        self._ort_version = str(ort.__version__)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        self._threads = intra_op_threads
        try:
            self._session = ort.InferenceSession(
                os.fspath(file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise EvaluationError(
                f"ONNX Runtime cannot load {file}: {_error_text(exc)}. Is it a complete ONNX file? "
                "Re-export the model (python -m qdq_toolkit.export)"
            ) from exc
        model_input = _single(self._session.get_inputs(), "input", f"ONNX model {file}")
        self._input_name = str(model_input.name)
        self._input_dtype = _ONNX_DTYPES.get(str(model_input.type))
        if self._input_dtype is None:
            raise EvaluationError(
                f"ONNX model {file} takes {model_input.type} input {self._input_name!r}; the evaluator feeds "
                "float images"
            )
        self._input_shape: Shape = tuple(
            dim if isinstance(dim, int) and dim > 0 else None for dim in model_input.shape
        )
        outputs = [str(output.name) for output in self._session.get_outputs()]
        if output_name is None:
            self._output_name = _single(outputs, "output", f"ONNX model {file} (pass output_name)")
        elif output_name in outputs:
            self._output_name = output_name
        else:
            raise EvaluationError(
                f"ONNX model {file} has no output {output_name!r}; its outputs are {outputs}"
            )
        self._external = _onnx_external_files(file)

    @property
    def input_name(self) -> str:
        """The name of the model's input, read from the session."""
        return self._input_name

    @property
    def output_name(self) -> str:
        """The output that holds the scores."""
        return self._output_name

    @property
    def files(self) -> tuple[Path, ...]:
        return (*super().files, *self._external)

    @property
    def device(self) -> str:
        return "CPU"

    @property
    def input_shape(self) -> Shape:
        return self._input_shape

    def describe(self) -> str:
        threads = "default threads" if self._threads is None else f"{self._threads} intra-op threads"
        return f"onnxruntime {self._ort_version} (CPU, {threads})"

    def _run(self, batch: np.ndarray) -> Any:
        feed = {self._input_name: np.ascontiguousarray(batch, dtype=self._input_dtype)}
        return self._session.run([self._output_name], feed)[0]

    def close(self) -> None:
        super().close()
        self._session = None


# --------------------------------------------------------------------------------------------------------------
# TensorRT
# --------------------------------------------------------------------------------------------------------------


class TensorRTBackend(Backend):
    """A serialized TensorRT engine run on the GPU by :class:`qdq_toolkit.export.tensorrt.TensorRTRunner`.

    Timings include the host-to-device and device-to-host copies of every batch.
    """

    kind: ClassVar[str] = "tensorrt"

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        *,
        output_name: str | None = None,
        verbose: bool = False,
    ) -> None:
        """Load the engine at ``path``.

        Args:
            path: the ``.plan`` / ``.engine`` file written by ``build_engine``.
            name: the name in reports; defaults to the file's stem.
            output_name: which output holds the scores when the engine has several; default the only one.
            verbose: print TensorRT's verbose log.

        Raises:
            FileNotFoundError: the file does not exist.
            TensorRTUnavailableError: TensorRT, the CUDA bindings or a GPU is missing here (the message lists
                what and how to install it); the evaluator reports the model as skipped.
            EvaluationError: TensorRT cannot load the engine (corrupt, or built by another TensorRT version or
                for another GPU) or its inputs/outputs do not fit a classifier.
        """
        from qdq_toolkit.export.tensorrt import TensorRTError, TensorRTRunner, TensorRTUnavailableError

        file, kind = check_model_path(path)
        if kind != "tensorrt":
            raise EvaluationError(
                f"{file} is not a TensorRT engine; TensorRTBackend loads {'/'.join(ENGINE_SUFFIXES)} files"
            )
        super().__init__(name or file.stem, file)
        try:
            self._runner = TensorRTRunner(file, verbose=verbose)
        except TensorRTUnavailableError:
            raise
        except TensorRTError as exc:
            raise EvaluationError(f"cannot load TensorRT engine {file}: {exc}") from exc
        try:
            spec = _single(list(self._runner.inputs), "input", f"engine {file}")
            self._input_name = spec.name
            self._input_shape: Shape = tuple(dim if dim >= 0 else None for dim in spec.shape)
            outputs = [output.name for output in self._runner.outputs]
            if output_name is None:
                self._output_name = _single(outputs, "output", f"engine {file} (pass output_name)")
            elif output_name in outputs:
                self._output_name = output_name
            else:
                raise EvaluationError(
                    f"engine {file} has no output {output_name!r}; its outputs are {outputs}"
                )
        except BaseException:
            self._runner.close()
            raise

    @property
    def device(self) -> str:
        return "GPU"

    @property
    def input_shape(self) -> Shape:
        return self._input_shape

    @property
    def batch_range(self) -> tuple[int, int | None]:
        return self._runner.batch_range

    def describe(self) -> str:
        import tensorrt

        return f"tensorrt {tensorrt.__version__} (GPU, {self._runner.cuda_backend})"

    def _run(self, batch: np.ndarray) -> Any:
        return self._runner.run(batch)[self._output_name]

    def close(self) -> None:
        if not self._closed:
            self._runner.close()
        super().close()


# --------------------------------------------------------------------------------------------------------------
# Choosing a backend by file
# --------------------------------------------------------------------------------------------------------------


def load_backend(
    path: str | os.PathLike[str],
    name: str | None = None,
    *,
    intra_op_threads: int | None = None,
    output_name: str | None = None,
) -> Backend:
    """Open a model file with the backend its extension calls for.

    ``.keras``/``.h5`` → :class:`KerasBackend`, ``.onnx`` → :class:`OnnxRuntimeBackend` (CPU),
    ``.plan``/``.engine`` → :class:`TensorRTBackend` (GPU).

    Args:
        path: the model file.
        name: the name in reports; defaults to the file's stem.
        intra_op_threads: ONNX Runtime's intra-op threads (ignored by the other backends).
        output_name: which output holds the scores (ONNX and TensorRT, when the model has several).

    Raises:
        FileNotFoundError: the file does not exist.
        EvaluationError: unknown extension, or the file cannot be loaded.
        TensorRTUnavailableError: an engine on a machine without TensorRT or a GPU.
    """
    file, kind = check_model_path(path)
    if kind == "keras":
        return KerasBackend(file, name)
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(file, name, intra_op_threads=intra_op_threads, output_name=output_name)
    return TensorRTBackend(file, name, output_name=output_name)
