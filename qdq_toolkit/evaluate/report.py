"""The comparison report: one row per model, as a Markdown table, JSON and an accuracy-vs-latency PNG.

Each row holds the model's name, backend, top-1/top-5 accuracy, their difference to the baseline model in
percentage points, how often its top-1 class agrees with the baseline's, the median / 90th-percentile latency
per batch size and the file size. Models that could not run here (a TensorRT engine without a GPU) stay in the
report as *skipped* rows with the reason.

Files are written atomically (a temporary file in the same directory, then renamed) and never replace an
existing file unless ``force=True``.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdq_toolkit.evaluate.errors import EvaluationError
from qdq_toolkit.evaluate.latency import LatencyStats
from qdq_toolkit.evaluate.metrics import AccuracyResult

__all__ = [
    "REPORT_FORMAT",
    "STATUS_EVALUATED",
    "STATUS_SKIPPED",
    "ComparisonReport",
    "ModelResult",
    "format_size",
    "write_atomically",
]

from qdq_toolkit._files import write_atomically  # noqa: E402 - re-exported

REPORT_FORMAT = "qdq_toolkit.evaluate/1"
"""The ``format`` field of the JSON report; bumped when its layout changes incompatibly."""

STATUS_EVALUATED = "evaluated"
STATUS_SKIPPED = "skipped"

_KIND_MARKERS = {"keras": "o", "onnxruntime": "s", "tensorrt": "^"}


# --------------------------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------------------------


def format_size(size: int | None) -> str:
    """Bytes as a short human-readable size: ``"812 B"``, ``"83.1 KiB"``, ``"97.8 MiB"``; ``"—"`` for ``None``."""
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # unreachable; keeps type checkers content


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return _one_line(text).replace("|", "\\|")


def _percent(fraction: float | None) -> str:
    return "—" if fraction is None or math.isnan(fraction) else f"{100.0 * fraction:.2f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _ms(value: float) -> str:
    """Milliseconds with three significant digits, trailing zeros kept: ``0.0579``, ``0.200``, ``4.24``, ``123``."""
    return f"{value:.0f}" if value >= 100 else f"{value:#.3g}"


def _reason_lines(name: str, reason: str) -> list[str]:
    """A Markdown list item for a skipped model; the reason's own ``- item`` lines become a nested list."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()] or ["no reason given"]
    out = [f"- `{name}`: {lines[0]}"]
    return out + [f"  {line}" for line in lines[1:]]


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelResult:
    """What was measured for one model.

    Attributes:
        name: the model's name (``fp32``, ``ptq``, ``qat`` ...).
        kind: the backend kind: ``"keras"``, ``"onnxruntime"`` or ``"tensorrt"``.
        status: ``"evaluated"`` or ``"skipped"``.
        path: the model file, or ``None`` for an in-memory model.
        file_size: bytes on disk, or ``None``.
        backend: the backend's one-line description (library version, device, threads).
        device: ``"CPU"`` or ``"GPU"`` (``None`` when skipped).
        reason: why the model was skipped.
        accuracy: top-1/top-5 over the dataset (``None`` when skipped).
        agreement: fraction of samples whose top-1 class equals the baseline model's (``None`` without one).
        latency: ``{batch size: LatencyStats}``.
        latency_skipped: ``{batch size: why it was not timed}`` (e.g. outside an engine's batch range).
    """

    name: str
    kind: str
    status: str
    path: str | None = None
    file_size: int | None = None
    backend: str | None = None
    device: str | None = None
    reason: str | None = None
    accuracy: AccuracyResult | None = None
    agreement: float | None = None
    latency: Mapping[int, LatencyStats] = field(default_factory=dict)
    latency_skipped: Mapping[int, str] = field(default_factory=dict)

    @property
    def evaluated(self) -> bool:
        """True when the model ran (it was not skipped)."""
        return self.status == STATUS_EVALUATED

    def top1(self) -> float | None:
        """Top-1 accuracy as a fraction, or ``None`` when skipped."""
        return None if self.accuracy is None else _none_if_nan(self.accuracy.top1)

    def top5(self) -> float | None:
        """Top-5 accuracy as a fraction, or ``None`` when skipped."""
        return None if self.accuracy is None else _none_if_nan(self.accuracy.top5)


@dataclass(frozen=True)
class ComparisonReport:
    """Results of several models on one dataset, with a baseline to compare accuracy against.

    Attributes:
        results: one :class:`ModelResult` per model, in the order they were given.
        baseline: name of the baseline model (the deltas are relative to it), or ``None``.
        dataset: description of the dataset (name, description, image shape, classes, samples evaluated).
        batch_sizes: the batch sizes timed.
        settings: how the run was made (warm-up and timed runs, interleaving, evaluation batch size).
        environment: where it ran (platform, CPU count, library versions).
        created: when, as an ISO 8601 UTC timestamp.
    """

    results: tuple[ModelResult, ...]
    baseline: str | None
    dataset: Mapping[str, Any]
    batch_sizes: tuple[int, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""

    def __post_init__(self) -> None:
        names = [result.name for result in self.results]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise EvaluationError(f"model names must be unique; repeated: {duplicates}")
        if self.baseline is not None and self.baseline not in names:
            raise EvaluationError(f"baseline {self.baseline!r} is not one of the models {names}")

    # -- queries --------------------------------------------------------------------------------------------------

    def result(self, name: str) -> ModelResult:
        """The result of model ``name``.

        Raises:
            KeyError: no model has that name (the message lists the names).
        """
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no model named {name!r}; the report holds {[r.name for r in self.results]}")

    @property
    def evaluated(self) -> tuple[ModelResult, ...]:
        """The models that ran."""
        return tuple(result for result in self.results if result.evaluated)

    @property
    def skipped(self) -> tuple[ModelResult, ...]:
        """The models that could not run here, with their reasons."""
        return tuple(result for result in self.results if not result.evaluated)

    def delta_pp(self, name: str, k: int = 1) -> float | None:
        """Top-``k`` accuracy of ``name`` minus the baseline's, in percentage points.

        ``None`` without a baseline, or when either model was skipped.
        """
        if self.baseline is None:
            return None
        model, base = self.result(name), self.result(self.baseline)
        if model.accuracy is None or base.accuracy is None:
            return None
        value = 100.0 * (model.accuracy.accuracy(k) - base.accuracy.accuracy(k))
        return _none_if_nan(value)

    # -- JSON -----------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole report as JSON-ready data (fractions for accuracy, percentage points for deltas)."""
        models = []
        for result in self.results:
            accuracy = result.accuracy
            models.append(
                {
                    "name": result.name,
                    "backend": result.kind,
                    "backend_details": result.backend,
                    "device": result.device,
                    "path": result.path,
                    "file_size_bytes": result.file_size,
                    "status": result.status,
                    "skip_reason": result.reason,
                    "is_baseline": result.name == self.baseline,
                    "accuracy": None if accuracy is None else accuracy.to_dict(),
                    "delta_pp": {
                        "top1": self.delta_pp(result.name, 1),
                        "top5": self.delta_pp(result.name, 5),
                    },
                    "top1_agreement_with_baseline": result.agreement,
                    "latency": [result.latency[size].to_dict() for size in sorted(result.latency)],
                    "latency_skipped": [
                        {"batch_size": size, "reason": reason}
                        for size, reason in sorted(result.latency_skipped.items())
                    ],
                }
            )
        return {
            "format": REPORT_FORMAT,
            "created": self.created,
            "dataset": dict(self.dataset),
            "baseline": self.baseline,
            "batch_sizes": list(self.batch_sizes),
            "settings": dict(self.settings),
            "environment": dict(self.environment),
            "models": models,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text (NaN never appears: unknown values are ``null``)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    # -- Markdown -------------------------------------------------------------------------------------------------

    def to_markdown(self) -> str:
        """A readable Markdown report: the comparison table, skipped models with reasons, how it was measured."""
        sizes = self.batch_sizes
        header = ["Model", "Backend", "Top-1 (%)", "Δ top-1 (pp)", "Top-5 (%)", "Δ top-5 (pp)"]
        align = [":--", ":--", "--:", "--:", "--:", "--:"]
        if self.baseline is not None:
            header.append("Top-1 agreement (%)")
            align.append("--:")
        header += [f"Latency b={size} median / p90 (ms)" for size in sizes] + ["File size"]
        align += ["--:"] * len(sizes) + ["--:"]
        lines = [
            "# Model comparison",
            "",
            f"Dataset: {_cell(str(self.dataset.get('description', self.dataset.get('name', '?'))))}; "
            f"{self.dataset.get('samples', '?')} images evaluated.",
        ]
        if self.baseline is not None:
            lines.append(
                f"Baseline: `{self.baseline}` (Δ = accuracy minus the baseline's, in percentage points)."
            )
        lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        for result in self.results:
            lines.append("| " + " | ".join(self._markdown_row(result)) + " |")
        if self.skipped:
            lines += ["", "Skipped:"]
            for result in self.skipped:
                lines += _reason_lines(result.name, result.reason or "")
        notes = [
            f"- `{result.name}`, batch {size}: {_one_line(reason)}"
            for result in self.evaluated
            for size, reason in sorted(result.latency_skipped.items())
        ]
        if notes:
            lines += ["", "Batch sizes not timed:", *notes]
        lines += ["", *self._methodology_lines()]
        return "\n".join(lines) + "\n"

    def _markdown_row(self, result: ModelResult) -> list[str]:
        backend = f"{result.kind} ({result.device})" if result.device else result.kind
        is_base = result.name == self.baseline
        if not result.evaluated:
            cells = [_cell(result.name), _cell(backend), "skipped", "—", "—", "—"]
            if self.baseline is not None:
                cells.append("—")
            cells += ["—"] * len(self.batch_sizes)
            return [*cells, format_size(result.file_size)]
        cells = [
            _cell(result.name) + (" (baseline)" if is_base else ""),
            _cell(backend),
            _percent(result.top1()),
            "baseline" if is_base else _signed(self.delta_pp(result.name, 1)),
            _percent(result.top5()),
            "baseline" if is_base else _signed(self.delta_pp(result.name, 5)),
        ]
        if self.baseline is not None:
            cells.append(_percent(result.agreement))
        for size in self.batch_sizes:
            stats = result.latency.get(size)
            cells.append("—" if stats is None else f"{_ms(stats.median_ms)} / {_ms(stats.p90_ms)}")
        return [*cells, format_size(result.file_size)]

    def _methodology_lines(self) -> list[str]:
        settings = self.settings
        lines = []
        if settings.get("latency", True) and self.batch_sizes:
            order = (
                "interleaved round-robin across models"
                if settings.get("interleave", True)
                else "one model after another"
            )
            lines.append(
                f"Latency: milliseconds per batch, host to host, median and 90th percentile of "
                f"{settings.get('runs', '?')} timed runs (time.perf_counter) after {settings.get('warmup', '?')} "
                f"warm-up runs that are excluded; {order}; the same real images in every run. Throughput and "
                "the spread (mean, std, min, max) are in the JSON report."
            )
        else:
            lines.append("Latency: not measured.")
        if self.baseline is not None:
            lines.append(
                "Top-1 agreement: share of images whose top-1 class equals the baseline's. Top-k ties count as "
                "correct (as tf.math.in_top_k)."
            )
        env = self.environment
        if env:
            described = ", ".join(f"{key} {value}" for key, value in env.items() if value is not None)
            lines.append(f"Environment: {_one_line(described)}.")
        if self.created:
            lines.append(f"Created: {self.created}.")
        spaced: list[str] = []
        for line in lines:
            spaced += [line, ""]
        return spaced[:-1]

    # -- plot -----------------------------------------------------------------------------------------------------

    def plot_points(self) -> dict[int, list[tuple[ModelResult, LatencyStats]]]:
        """``{batch size: [(result, its latency)]}`` for the models that have both an accuracy and a timing."""
        points: dict[int, list[tuple[ModelResult, LatencyStats]]] = {}
        for size in self.batch_sizes:
            row = [
                (result, result.latency[size])
                for result in self.evaluated
                if result.top1() is not None and size in result.latency
            ]
            if row:
                points[size] = row
        return points

    def to_png(self) -> bytes:
        """Top-1 accuracy against median latency, one panel per batch size, as PNG bytes.

        Each model is a point at its median latency with a bar reaching to its 90th percentile; the baseline's
        accuracy is a dashed line. Uses matplotlib's Agg canvas directly, leaving pyplot's global backend alone.

        Raises:
            EvaluationError: no model has both an accuracy and a latency, or matplotlib is missing.
        """
        points = self.plot_points()
        if not points:
            raise EvaluationError(
                "nothing to plot: no evaluated model has both an accuracy and a latency (was latency measured?)"
            )
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise EvaluationError(
                "the accuracy-vs-latency plot needs matplotlib: pip install matplotlib (or the dev extra)"
            ) from exc

        panels = sorted(points)
        figure = Figure(figsize=(4.6 * len(panels), 4.0), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(1, len(panels), squeeze=False, sharey=True)[0]
        names = [result.name for result in self.evaluated]
        colors = {name: f"C{index % 10}" for index, name in enumerate(names)}
        baseline_top1 = None
        if self.baseline is not None:
            baseline_top1 = self.result(self.baseline).top1()
        for ax, size in zip(axes, panels, strict=True):
            medians = []
            for result, stats in points[size]:
                top1 = 100.0 * (result.top1() or 0.0)
                medians.append(stats.median_ms)
                ax.errorbar(
                    [stats.median_ms],
                    [top1],
                    xerr=[[0.0], [max(0.0, stats.p90_ms - stats.median_ms)]],
                    fmt=_KIND_MARKERS.get(result.kind, "D"),
                    color=colors[result.name],
                    markersize=8,
                    capsize=3,
                    label=f"{result.name} ({result.kind})",
                )
                ax.annotate(
                    result.name,
                    (stats.median_ms, top1),
                    textcoords="offset points",
                    xytext=(6, 6),
                    fontsize=8,
                )
            if baseline_top1 is not None:
                ax.axhline(100.0 * baseline_top1, color="0.5", linestyle="--", linewidth=1)
            if min(medians) > 0 and max(medians) / min(medians) > 20:
                ax.set_xscale("log")
            else:
                ax.set_xlim(left=0)
            ax.set_title(f"batch size {size}")
            ax.set_xlabel("median latency per batch (ms); bar to p90")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("top-1 accuracy (%)")
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            axes[0].legend(handles, labels, fontsize=8, loc="best")
        figure.suptitle(f"Accuracy vs latency — {self.dataset.get('name', 'dataset')}")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
        return buffer.getvalue()

    # -- files ----------------------------------------------------------------------------------------------------

    def write_json(self, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write :meth:`to_json` atomically; refuses to overwrite without ``force``."""
        return write_atomically(path, self.to_json(), force=force)

    def write_markdown(self, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write :meth:`to_markdown` atomically; refuses to overwrite without ``force``."""
        return write_atomically(path, self.to_markdown(), force=force)

    def write_plot(self, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write :meth:`to_png` atomically; refuses to overwrite without ``force``."""
        return write_atomically(path, self.to_png(), force=force)
