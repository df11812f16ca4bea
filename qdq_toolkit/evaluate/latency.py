"""Latency per batch size: warm-up excluded, median and 90th percentile of timed runs, throughput.

Methodology (what the numbers in a report mean):

* **What is timed.** One call of the predictor on one batch, host to host: the NumPy batch goes in, the NumPy
  scores come out. For ONNX Runtime that is ``session.run``; for a TensorRT engine it includes the host-to-device
  copy, ``execute_async_v3``, the device-to-host copy and the stream synchronisation; for Keras it is a traced
  ``tf.function`` call plus the conversion of its result to NumPy (which waits for the device). Data loading and
  preprocessing are never timed: the same batch of real dataset images is reused for every run.
* **Warm-up.** Each predictor first runs ``warmup`` untimed calls per batch size (graph tracing, memory
  allocation, kernel selection, caches). They are counted in :attr:`LatencyStats.warmup_runs` and excluded from
  every statistic.
* **Timed runs.** ``runs`` calls, each timed on its own with :func:`time.perf_counter` (monotonic, highest
  available resolution). Python's garbage collector is collected before and disabled during the timed runs, as
  :mod:`timeit` does, so a collection pause does not land inside one model's numbers.
* **Statistics.** Median and 90th percentile (linear interpolation between order statistics, NumPy's default) in
  milliseconds per batch, plus mean, standard deviation, minimum and maximum; throughput is
  ``batch_size / median`` in images per second.
* **Interleaving.** :func:`measure_latencies` times several predictors round-robin (one run of each in turn) by
  default, so that a slow drift of the machine (frequency scaling, a noisy neighbour, the two-level step times
  seen on shared CI machines) affects every model alike instead of whichever happened to run last.

These are benchmark numbers of this machine under its current load; compare models measured in the same run.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from qdq_toolkit._progress import progress_bar
from qdq_toolkit._validation import check_count

__all__ = [
    "DEFAULT_RUNS",
    "DEFAULT_WARMUP",
    "LatencyStats",
    "latency_batch",
    "latency_stats",
    "measure_latencies",
    "measure_latency",
]

DEFAULT_WARMUP = 5
"""Untimed calls per predictor and batch size before the timed runs."""

DEFAULT_RUNS = 30
"""Timed calls per predictor and batch size."""

Predictor = Callable[[np.ndarray], Any]
"""Anything that takes one NumPy batch and returns once the results are on the host, e.g. ``backend.predict``."""


@dataclass(frozen=True)
class LatencyStats:
    """Timings of one predictor at one batch size.

    Attributes:
        batch_size: images per call.
        warmup_runs: untimed calls made before the timed ones (excluded from every statistic).
        times_ms: the duration of every timed call, in milliseconds, in the order they ran.
    """

    batch_size: int
    warmup_runs: int
    times_ms: tuple[float, ...]

    @property
    def runs(self) -> int:
        """Number of timed calls."""
        return len(self.times_ms)

    def _times(self) -> np.ndarray:
        return np.asarray(self.times_ms, dtype=np.float64)

    @property
    def median_ms(self) -> float:
        """Median time per batch, in milliseconds."""
        return float(np.median(self._times()))

    @property
    def p90_ms(self) -> float:
        """90th percentile of the time per batch, in milliseconds (linear interpolation)."""
        return float(np.percentile(self._times(), 90))

    @property
    def mean_ms(self) -> float:
        """Mean time per batch, in milliseconds."""
        return float(np.mean(self._times()))

    @property
    def std_ms(self) -> float:
        """Standard deviation of the time per batch, in milliseconds."""
        return float(np.std(self._times()))

    @property
    def min_ms(self) -> float:
        """Fastest call, in milliseconds."""
        return float(np.min(self._times()))

    @property
    def max_ms(self) -> float:
        """Slowest call, in milliseconds."""
        return float(np.max(self._times()))

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        median = self.median_ms
        return self.batch_size * 1000.0 / median if median > 0 else float("inf")

    def to_dict(self, *, include_times: bool = False) -> dict[str, Any]:
        """Summary for JSON: batch size, counts, median/p90/mean/std/min/max in ms, throughput in images/s."""
        out: dict[str, Any] = {
            "batch_size": self.batch_size,
            "warmup_runs": self.warmup_runs,
            "runs": self.runs,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "mean_ms": self.mean_ms,
            "std_ms": self.std_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "throughput_images_per_s": self.throughput,
        }
        if include_times:
            out["times_ms"] = list(self.times_ms)
        return out


def _check_count(name: str, value: object, minimum: int) -> int:
    return check_count(name, value, minimum=minimum)  # type: ignore[return-value]


def latency_stats(times_ms: Sequence[float], batch_size: int, warmup_runs: int) -> LatencyStats:
    """Build :class:`LatencyStats` from measured times (milliseconds), e.g. ones timed elsewhere.

    Raises:
        ValueError: no time, a negative or non-finite time, or a bad count.
    """
    _check_count("batch_size", batch_size, 1)
    _check_count("warmup_runs", warmup_runs, 0)
    times = tuple(float(t) for t in times_ms)
    if not times:
        raise ValueError("no timed run: latency statistics need at least one time")
    if not all(np.isfinite(t) and t >= 0 for t in times):
        raise ValueError(f"times must be finite and non-negative milliseconds, got {times}")
    return LatencyStats(batch_size=int(batch_size), warmup_runs=int(warmup_runs), times_ms=times)


def latency_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    """The first ``batch_size`` images, repeated cyclically when there are fewer, as one contiguous batch.

    Raises:
        ValueError: ``images`` is empty or ``batch_size`` is not positive.
    """
    _check_count("batch_size", batch_size, 1)
    images = np.asarray(images)
    if images.ndim < 1 or images.shape[0] == 0:
        raise ValueError("no image to time with: give at least one image")
    if images.shape[0] >= batch_size:
        return np.ascontiguousarray(images[:batch_size])
    repeats = -(-batch_size // images.shape[0])
    return np.ascontiguousarray(np.concatenate([images] * repeats)[:batch_size])


@contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _timed_call(predict: Predictor, batch: np.ndarray, clock: Callable[[], float]) -> float:
    start = clock()
    predict(batch)
    return (clock() - start) * 1000.0


def measure_latency(
    predict: Predictor,
    batch: np.ndarray,
    *,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    on_run: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyStats:
    """Time ``predict(batch)``: ``warmup`` untimed calls, then ``runs`` calls timed one by one.

    Args:
        predict: returns once its results are on the host (``backend.predict`` does).
        batch: the input; its first axis is the batch size.
        warmup: untimed calls first (0 allowed).
        runs: timed calls (at least 1).
        on_run: called after every call, warm-up included (e.g. a progress bar's ``update``).
        clock: seconds as a float; :func:`time.perf_counter` unless testing.

    Returns:
        The statistics; ``warmup_runs == warmup`` and ``runs == runs``.
    """
    warmup = _check_count("warmup", warmup, 0)
    runs = _check_count("runs", runs, 1)
    batch = np.asarray(batch)
    if batch.ndim < 1 or batch.shape[0] < 1:
        raise ValueError(f"batch must hold at least one sample along axis 0, got shape {batch.shape}")
    for _ in range(warmup):
        predict(batch)
        if on_run is not None:
            on_run()
    times: list[float] = []
    with _gc_paused():
        for _ in range(runs):
            times.append(_timed_call(predict, batch, clock))
            if on_run is not None:
                on_run()
    return latency_stats(times, batch_size=int(batch.shape[0]), warmup_runs=warmup)


def measure_latencies(
    predictors: Mapping[str, Predictor],
    images: np.ndarray,
    batch_sizes: Sequence[int],
    *,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    interleave: bool = True,
    only: Mapping[str, Collection[int]] | None = None,
    progress: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[int, LatencyStats]]:
    """Time several predictors at several batch sizes on the same images.

    Args:
        predictors: ``{name: predict function}``.
        images: real input images; batches are their first ``batch_size`` (repeated when there are fewer).
        batch_sizes: batch sizes to time.
        warmup: untimed calls per predictor and batch size.
        runs: timed calls per predictor and batch size.
        interleave: time the predictors round-robin, one run each in turn (see the module notes); ``False`` runs
            each predictor's calls back to back.
        only: ``{name: batch sizes}`` restricting some predictors to those batch sizes (e.g. an engine's
            optimization profile); predictors not named are timed at every size.
        progress: show a tqdm progress bar on stderr.
        clock: seconds as a float; :func:`time.perf_counter` unless testing.

    Returns:
        ``{name: {batch_size: LatencyStats}}``; a size left out by ``only`` is absent from the inner dict.
    """
    warmup = _check_count("warmup", warmup, 0)
    runs = _check_count("runs", runs, 1)
    sizes = [_check_count("batch size", size, 1) for size in batch_sizes]
    if not sizes:
        raise ValueError("batch_sizes is empty; give at least one, e.g. (1, 8, 32)")
    restrict = dict(only or {})
    unknown = sorted(set(restrict) - set(predictors))
    if unknown:
        raise ValueError(
            f"`only` names unknown predictors {unknown}; the predictors are {sorted(predictors)}"
        )

    def timed_at(size: int) -> list[str]:
        return [name for name in predictors if name not in restrict or size in restrict[name]]

    results: dict[str, dict[int, LatencyStats]] = {name: {} for name in predictors}
    total = sum(len(timed_at(size)) for size in sizes) * (warmup + runs)
    with progress_bar(total=total, desc="latency", unit="run", enabled=progress) as bar:
        for size in sizes:
            names = timed_at(size)
            if not names:
                continue
            batch = latency_batch(images, size)
            if not interleave:
                for name in names:
                    bar.set_postfix_str(f"{name} batch {size}", refresh=False)
                    results[name][size] = measure_latency(
                        predictors[name], batch, warmup=warmup, runs=runs, on_run=bar.update, clock=clock
                    )
                continue
            bar.set_postfix_str(f"batch {size}", refresh=False)
            for name in names:
                for _ in range(warmup):
                    predictors[name](batch)
                    bar.update()
            times: dict[str, list[float]] = {name: [] for name in names}
            with _gc_paused():
                for _ in range(runs):
                    for name in names:
                        times[name].append(_timed_call(predictors[name], batch, clock))
                        bar.update()
            for name in names:
                results[name][size] = latency_stats(times[name], batch_size=size, warmup_runs=warmup)
    return results
