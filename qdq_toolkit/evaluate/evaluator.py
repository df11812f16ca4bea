"""Run several models on one dataset: accuracy in one pass over the data, then latency, into a report.

::

    from qdq_toolkit.evaluate import digits_dataset, evaluate_models

    report = evaluate_models(
        {"fp32": "fp32.keras", "ptq": "ptq.onnx", "qat": "qat.onnx", "qat-trt": "qat.plan"},
        digits_dataset(),
        baseline="fp32",
        batch_sizes=(1, 8, 32),
    )
    print(report.to_markdown())

The dataset is read once: every batch goes through every model before the next batch is read (ImageNet JPEGs
are decoded once, not once per model). A TensorRT engine on a machine without TensorRT or a GPU becomes a
skipped row with the reason; every other model is still evaluated.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdq_toolkit._progress import progress_bar
from qdq_toolkit._validation import check_count, check_positive_int
from qdq_toolkit.evaluate.backends import (
    Backend,
    KerasBackend,
    backend_kind_for_path,
    check_model_path,
    load_backend,
)
from qdq_toolkit.evaluate.datasets import EvalDataset
from qdq_toolkit.evaluate.errors import EvaluationError
from qdq_toolkit.evaluate.latency import DEFAULT_RUNS, DEFAULT_WARMUP, measure_latencies
from qdq_toolkit.evaluate.metrics import TopKAccumulator
from qdq_toolkit.evaluate.report import STATUS_EVALUATED, STATUS_SKIPPED, ComparisonReport, ModelResult

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_EVAL_BATCH_SIZE",
    "ModelSet",
    "SkippedModel",
    "environment_info",
    "evaluate_models",
    "open_models",
]

DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 8, 32)
"""Batch sizes timed unless told otherwise."""

DEFAULT_EVAL_BATCH_SIZE = 32
"""Images per batch in the accuracy pass."""

ModelSource = Any
"""A :class:`~qdq_toolkit.evaluate.backends.Backend`, a ``keras.Model``, or the path of a model file."""

SkipCallback = Callable[[str, str], None]
"""Called with ``(model name, reason)`` when a model is skipped."""


@dataclass(frozen=True)
class SkippedModel:
    """A model that cannot run here (a TensorRT engine without TensorRT or a GPU), with the reason."""

    name: str
    kind: str
    path: Path | None
    reason: str

    @property
    def file_size(self) -> int | None:
        """Bytes on disk, or ``None``."""
        return self.path.stat().st_size if self.path is not None and self.path.is_file() else None


class ModelSet:
    """Models opened for evaluation, in the order given: the backends that loaded and the ones skipped.

    A context manager: leaving it closes the backends it opened (never the ones passed in already open).
    """

    def __init__(self) -> None:
        self._entries: list[tuple[str, Backend | SkippedModel]] = []
        self._owned: list[Backend] = []

    def _add(self, name: str, entry: Backend | SkippedModel, *, owned: bool) -> None:
        if name in self.names:
            raise EvaluationError(f"two models are named {name!r}; give every model its own name")
        self._entries.append((name, entry))
        if owned and isinstance(entry, Backend):
            self._owned.append(entry)

    @property
    def names(self) -> list[str]:
        """Every model's name, in order."""
        return [name for name, _ in self._entries]

    @property
    def backends(self) -> dict[str, Backend]:
        """The models that loaded, by name."""
        return {name: entry for name, entry in self._entries if isinstance(entry, Backend)}

    @property
    def skipped(self) -> dict[str, SkippedModel]:
        """The models that cannot run here, by name."""
        return {name: entry for name, entry in self._entries if isinstance(entry, SkippedModel)}

    def entries(self) -> Iterator[tuple[str, Backend | SkippedModel]]:
        """``(name, backend or skipped model)`` in order."""
        return iter(list(self._entries))

    def close(self) -> None:
        """Close the backends this set opened."""
        owned, self._owned = self._owned, []
        for backend in reversed(owned):
            with contextlib.suppress(Exception):
                backend.close()

    def __enter__(self) -> ModelSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _named_sources(
    models: Mapping[str, ModelSource] | Sequence[tuple[str, ModelSource]],
) -> list[tuple[str, Any]]:
    items = list(models.items()) if isinstance(models, Mapping) else list(models)
    if not items:
        raise EvaluationError("no model to evaluate; give at least one")
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and item[0].strip()):
            raise EvaluationError(
                f"models must be given as {{name: model}} or (name, model) pairs, got {item!r}"
            )
    return items


def open_models(
    models: Mapping[str, ModelSource] | Sequence[tuple[str, ModelSource]],
    *,
    intra_op_threads: int | None = None,
    on_skip: SkipCallback | None = None,
) -> ModelSet:
    """Open every model; TensorRT engines that cannot run here become :class:`SkippedModel` entries.

    Args:
        models: ``{name: model}`` or ``[(name, model)]``; a model is a :class:`Backend` (used as is), a
            ``keras.Model``, or a ``.keras`` / ``.onnx`` / ``.plan`` / ``.engine`` file.
        intra_op_threads: ONNX Runtime's intra-op threads for ``.onnx`` files (``None``: its default).
        on_skip: called with ``(name, reason)`` for every skipped model.

    Raises:
        FileNotFoundError: a model file does not exist.
        EvaluationError: unknown extension, a file that cannot be loaded, or repeated names.
    """
    items = _named_sources(models)
    # Check every path before loading anything, so that a typo in the last model fails in a second.
    for _, source in items:
        if isinstance(source, str | os.PathLike):
            check_model_path(source)
    model_set = ModelSet()
    try:
        for name, source in items:
            if isinstance(source, Backend):
                model_set._add(name, source, owned=False)
                continue
            entry = _open_one(name, source, intra_op_threads=intra_op_threads)
            model_set._add(name, entry, owned=isinstance(entry, Backend))
            if isinstance(entry, SkippedModel) and on_skip is not None:
                on_skip(name, entry.reason)
    except BaseException:
        model_set.close()
        raise
    return model_set


def _open_one(name: str, source: Any, *, intra_op_threads: int | None) -> Backend | SkippedModel:
    """A backend for a model file or ``keras.Model``; a TensorRT engine that cannot run here is a skipped model."""
    from qdq_toolkit.export.tensorrt import TensorRTUnavailableError

    if not isinstance(source, str | os.PathLike):
        return KerasBackend(source, name)
    try:
        return load_backend(source, name, intra_op_threads=intra_op_threads)
    except TensorRTUnavailableError as exc:
        return SkippedModel(name, backend_kind_for_path(source), Path(source).expanduser(), str(exc))


def environment_info() -> dict[str, Any]:
    """Where a run happens: platform, CPU, CPU count, Python and the versions of the libraries in use."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for module in ("tensorflow", "keras", "onnxruntime", "tensorrt"):
        loaded = sys.modules.get(module)
        version = getattr(loaded, "__version__", None) if loaded is not None else None
        if version is not None:
            info[module] = str(version)
    return info


def _check_positive(name: str, value: object) -> int:
    return check_positive_int(name, value, error=EvaluationError)


@dataclass(frozen=True)
class _Counts:
    """The checked counts of one evaluation."""

    eval_batch_size: int
    batch_sizes: tuple[int, ...]
    warmup: int
    runs: int


def _check_counts(
    eval_batch_size: object, batch_sizes: Sequence[int], *, latency: bool, warmup: object, runs: object
) -> _Counts:
    """Every count checked (batch sizes without repeats, order kept); ``warmup``/``runs`` only when timing."""
    eval_batch_size = _check_positive("eval_batch_size", eval_batch_size)
    sizes = tuple(_check_positive("batch size", size) for size in batch_sizes)
    if latency:
        if not sizes:
            raise EvaluationError(
                "batch_sizes is empty; give at least one batch size to time, e.g. (1, 8, 32)"
            )
        runs = _check_positive("runs", runs)
        warmup = check_count("warmup", warmup, minimum=0, error=EvaluationError)
    return _Counts(eval_batch_size, tuple(dict.fromkeys(sizes)), warmup, runs)  # type: ignore[arg-type]


def _choose_baseline(model_set: ModelSet, baseline: str | None) -> str | None:
    """The baseline asked for (it must be one of the models), else the first model that runs."""
    if baseline is not None and baseline not in model_set.names:
        raise EvaluationError(f"baseline {baseline!r} is not one of the models {model_set.names}")
    if baseline is None and model_set.backends:
        return next(iter(model_set.backends))
    return baseline


def _check_shapes(backends: Mapping[str, Backend], dataset: EvalDataset) -> None:
    for name, backend in backends.items():
        shape = backend.input_shape
        if shape is None:
            continue
        want = tuple(shape[1:])
        if len(want) != 3 or any(
            m is not None and m != d for m, d in zip(want, dataset.image_shape, strict=True)
        ):
            model_shape = "x".join("?" if dim is None else str(dim) for dim in want)
            data_shape = "x".join(str(dim) for dim in dataset.image_shape)
            raise EvaluationError(
                f"model {name!r} takes images of shape {model_shape} (NHWC, ? = any) but the dataset's images are "
                f"{data_shape}; evaluate it on a dataset of that shape (--image-size / --channels)"
            )


def _accuracy_pass(
    backends: Mapping[str, Backend],
    dataset: EvalDataset,
    *,
    eval_batch_size: int,
    keep_predictions: bool,
    progress: bool,
) -> dict[str, TopKAccumulator]:
    accumulators = {name: TopKAccumulator(keep_predictions=keep_predictions) for name in backends}
    with progress_bar(total=dataset.num_samples, desc="accuracy", unit="img", enabled=progress) as bar:
        for images, labels in dataset.batches(eval_batch_size):
            for name, backend in backends.items():
                try:
                    scores = backend.predict(images)
                except Exception as exc:
                    raise EvaluationError(
                        f"model {name!r} failed on a batch of shape {images.shape}: {type(exc).__name__}: {exc}"
                    ) from exc
                if dataset.num_classes is not None and scores.shape[1] != dataset.num_classes:
                    raise EvaluationError(
                        f"model {name!r} outputs {scores.shape[1]} scores per image but the dataset has "
                        f"{dataset.num_classes} classes; evaluate it on the dataset it was trained for"
                    )
                accumulators[name].update(scores, labels)
            bar.update(len(labels))
    if not any(accumulator.result().samples for accumulator in accumulators.values()):
        raise EvaluationError(
            f"the dataset ({dataset.description}) yielded no image; check that its files hold "
            "records (an empty or half-written TFRecord shard holds none) and that the split is the one you meant"
        )
    return accumulators


def _latency_pass(
    backends: Mapping[str, Backend],
    dataset: EvalDataset,
    counts: _Counts,
    *,
    interleave: bool,
    progress: bool,
) -> tuple[dict[str, dict[int, Any]], dict[str, dict[int, str]]]:
    """Time every backend at every batch size it supports: ``(timings, not timed with the reason)`` by name."""
    sizes = counts.batch_sizes
    not_timed: dict[str, dict[int, str]] = {name: {} for name in backends}
    only: dict[str, list[int]] = {}
    for name, backend in backends.items():
        for size in sizes:
            reason = backend.unsupported_batch_size(size)
            if reason is not None:
                not_timed[name][size] = reason
        only[name] = [size for size in sizes if size not in not_timed[name]]
    timings = measure_latencies(
        {name: backend.predict for name, backend in backends.items()},
        dataset.sample_images(max(sizes)),
        sizes,
        warmup=counts.warmup,
        runs=counts.runs,
        interleave=interleave,
        only=only,
        progress=progress,
    )
    return timings, not_timed


def _skipped_result(name: str, entry: SkippedModel) -> ModelResult:
    return ModelResult(
        name=name,
        kind=entry.kind,
        status=STATUS_SKIPPED,
        path=None if entry.path is None else str(entry.path),
        file_size=entry.file_size,
        reason=entry.reason,
    )


def _model_results(
    model_set: ModelSet,
    accumulators: Mapping[str, TopKAccumulator],
    timings: Mapping[str, dict[int, Any]],
    not_timed: Mapping[str, dict[int, str]],
    *,
    baseline: str | None,
    latency: bool,
) -> tuple[list[ModelResult], int]:
    """One :class:`ModelResult` per model, in order, and the number of images evaluated."""
    base_predictions = None
    if baseline is not None and baseline in accumulators and accumulators[baseline].keep_predictions:
        base_predictions = accumulators[baseline].predictions
    results = []
    samples = 0
    for name, entry in model_set.entries():
        if isinstance(entry, SkippedModel):
            results.append(_skipped_result(name, entry))
            continue
        accumulator = accumulators[name]
        accuracy = accumulator.result()
        samples = max(samples, accuracy.samples)
        agreement = None
        if base_predictions is not None and accumulator.keep_predictions:
            agreement = float(np.mean(accumulator.predictions == base_predictions))
        results.append(
            ModelResult(
                name=name,
                kind=entry.kind,
                status=STATUS_EVALUATED,
                path=None if entry.path is None else str(entry.path),
                file_size=entry.file_size,
                backend=entry.describe(),
                device=entry.device,
                accuracy=accuracy,
                agreement=agreement,
                latency=dict(timings.get(name, {})),
                latency_skipped=dict(not_timed.get(name, {})) if latency else {},
            )
        )
    return results, samples


def evaluate_models(
    models: ModelSet | Mapping[str, ModelSource] | Sequence[tuple[str, ModelSource]],
    dataset: EvalDataset,
    *,
    baseline: str | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    latency: bool = True,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    interleave: bool = True,
    intra_op_threads: int | None = None,
    progress: bool = False,
    on_skip: SkipCallback | None = None,
) -> ComparisonReport:
    """Top-1/top-5 accuracy and latency of several models on one dataset, as a :class:`ComparisonReport`.

    Args:
        models: a :class:`ModelSet` from :func:`open_models` (left open), or ``{name: model}`` /
            ``[(name, model)]`` where a model is a :class:`Backend`, a ``keras.Model`` or a model file
            (opened and closed here).
        dataset: the labelled images, e.g. :func:`digits_dataset` or :func:`imagenet_eval_dataset`.
        baseline: the model the accuracy deltas are relative to; default the first model that runs.
        batch_sizes: batch sizes to time.
        eval_batch_size: images per batch in the accuracy pass.
        latency: time the models (``False``: accuracy only).
        warmup: untimed calls per model and batch size before the timed runs.
        runs: timed calls per model and batch size.
        interleave: time the models round-robin (see :mod:`qdq_toolkit.evaluate.latency`).
        intra_op_threads: ONNX Runtime's intra-op threads for ``.onnx`` files opened here.
        progress: show tqdm progress bars on stderr.
        on_skip: called with ``(name, reason)`` for every model skipped when opened here.

    Raises:
        FileNotFoundError: a model file does not exist.
        EvaluationError: a model cannot be loaded or run on this dataset, an unknown baseline, bad counts.
    """
    counts = _check_counts(eval_batch_size, batch_sizes, latency=latency, warmup=warmup, runs=runs)
    with contextlib.ExitStack() as stack:
        if isinstance(models, ModelSet):
            model_set = models
        else:
            model_set = stack.enter_context(
                open_models(models, intra_op_threads=intra_op_threads, on_skip=on_skip)
            )
        baseline = _choose_baseline(model_set, baseline)
        backends = model_set.backends
        _check_shapes(backends, dataset)

        accumulators: dict[str, TopKAccumulator] = {}
        timings: dict[str, dict[int, Any]] = {}
        not_timed: dict[str, dict[int, str]] = {}
        if backends:
            accumulators = _accuracy_pass(
                backends,
                dataset,
                eval_batch_size=counts.eval_batch_size,
                keep_predictions=baseline in backends,
                progress=progress,
            )
            if latency:
                timings, not_timed = _latency_pass(
                    backends, dataset, counts, interleave=interleave, progress=progress
                )
        results, samples = _model_results(
            model_set, accumulators, timings, not_timed, baseline=baseline, latency=latency
        )

    return ComparisonReport(
        results=tuple(results),
        baseline=baseline,
        dataset={**dataset.to_dict(), "samples": samples},
        batch_sizes=counts.batch_sizes if latency else (),
        settings={
            "latency": latency,
            "warmup": counts.warmup if latency else None,
            "runs": counts.runs if latency else None,
            "interleave": interleave if latency else None,
            "eval_batch_size": counts.eval_batch_size,
            "intra_op_threads": intra_op_threads,
        },
        environment=environment_info(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
