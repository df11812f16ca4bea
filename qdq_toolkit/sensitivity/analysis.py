"""Per-layer sensitivity to quantization: which quantized layers lose the most signal, ranked.

For every layer that ``quantize_model`` would quantize (same mode, spec, cases), :func:`analyze_sensitivity`
measures the signal-to-quantization-noise ratio (SQNR, dB) of the layer's output with only its own QDQ on, against
the FP32 output, and splits it into input-only and weight-only, as AIMET's QuantAnalyzer splits weights and
activations (aimet_tensorflow ``quant_analyzer.py``). SQNR is ``10 log10(sum y^2 / sum (y_q - y)^2)`` over all the
data, the definition of ONNX Runtime's ``qdq_loss_debug.compute_signal_to_quantization_noice_ratio``; the sums are
streamed, so memory stays flat however much data passes.

Cost (``bench/sensitivity.py``; ResNet50 64x64, all 55 quantized layers, 2026-12-01 on a busy 2-core machine: the
SQNR pass took 2.9x one compiled FP32 forward pass over the same data, 3.9x in an earlier run):

* one calibration pass (the toolkit's :func:`~qdq_toolkit.calibrate`, the model in float): about one FP32 pass;
  ``calibration_batches`` limits it to the first batches;
* one SQNR pass: one FP32 forward pass that also returns every quantized layer's FP32 inputs and output (taps on
  the model's own graph), and next to each layer, in the same compiled graph, the layer recomputed with its
  quantized inputs and with its quantized weights (quantized once, not per batch): 2 more layer evaluations per
  layer, i.e. about 2 more FP32 passes in all, whatever the number of layers. The error with both on is the sum
  of the two errors, ``y(q(x), q(W)) - y = W dx + dW x + dW dx`` without the second-order ``dW dx`` term, for
  layers linear in input and kernel (Conv/Dense without a fused activation); a layer with a fused activation is
  recomputed a third time with both quantized;
* the model-level figures (SQNR of the model's output and accuracy with only that layer quantized) need one full
  evaluation of the model per layer. They are computed for the ``output_metrics`` most sensitive layers of the
  ranking (default 5; ``"all"`` for every layer), in one extra pass over the data that runs the FP32 model once and
  the quantized model once per such layer (plus once with every layer quantized, the PTQ accuracy).

Not covered: the internal ``pointwise_input`` quantizer of a SeparableConv (its figures are those of its input and
its two kernels).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from qdq_toolkit.sensitivity._data import as_batches, count_correct

#: Ranks are by ``sqnr_db``, lowest (most sensitive) first.
DEFAULT_OUTPUT_METRICS = 5


def _db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _json_db(value: float | None):
    """JSON has no infinity: an exact output (no noise at all) is written as null with ``exact: true``."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 4)


@dataclass(frozen=True)
class LayerSensitivity:
    """The figures of one quantized layer.

    Attributes:
        layer: the layer's path (``"conv1"``, ``"backbone/conv1"`` in a nested model), as a spec names it.
        layer_class: its Keras class name.
        quantize_inputs: indices of the inputs that get QDQ; ``quantize_weights``: per-channel weight QDQ.
        compute_ops: the INT8 compute ops (Conv/MatMul) the layer becomes in ONNX when quantized (0 for pooling,
            Add, ...).
        sqnr_db: SQNR of the layer's output with its input and weight QDQ on (inf: no error at all).
        sqnr_input_db / sqnr_weight_db: with only the input QDQ / only the weight QDQ on (None: not quantized).
        output_sqnr_db: SQNR of the model's output with only this layer quantized (None: not computed).
        accuracy: top-1 accuracy with only this layer quantized (None: not computed or no labels).
    """

    layer: str
    layer_class: str
    quantize_inputs: tuple[int, ...]
    quantize_weights: bool
    compute_ops: int
    sqnr_db: float
    sqnr_input_db: float | None
    sqnr_weight_db: float | None
    output_sqnr_db: float | None = None
    accuracy: float | None = None

    def as_dict(self) -> dict:
        return {
            "layer": self.layer,
            "class": self.layer_class,
            "quantize_inputs": list(self.quantize_inputs),
            "quantize_weights": self.quantize_weights,
            "compute_ops": self.compute_ops,
            "sqnr_db": _json_db(self.sqnr_db),
            "exact": math.isinf(self.sqnr_db) and self.sqnr_db > 0,
            "sqnr_input_db": _json_db(self.sqnr_input_db),
            "sqnr_weight_db": _json_db(self.sqnr_weight_db),
            "output_sqnr_db": _json_db(self.output_sqnr_db),
            "accuracy": self.accuracy,
        }


def _fmt_db(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "exact" if value > 0 else "-inf"
    return f"{value:.1f}" if abs(value) >= 0.05 else "0.0"


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


@dataclass(frozen=True)
class SensitivityReport:
    """The result of :func:`analyze_sensitivity`: one row per quantized layer, most sensitive (lowest SQNR) first.

    ``print(report)`` shows a table; :meth:`as_dict` is JSON-ready (``{"layers": [{"layer": path, "sqnr_db": ...},
    ...], ...}``); :meth:`write_plot`, :meth:`write_markdown`, :meth:`write_json` write files.
    """

    layers: tuple[LayerSensitivity, ...]
    fp32_accuracy: float | None
    ptq_accuracy: float | None
    num_samples: int
    num_batches: int
    calibration_method: str
    timings: dict = field(default_factory=dict)

    @property
    def ranking(self) -> list[str]:
        """Layer paths, most sensitive first."""
        return [row.layer for row in self.layers]

    def layer(self, path: str) -> LayerSensitivity:
        for row in self.layers:
            if row.layer == path:
                return row
        raise KeyError(f"no quantized layer '{path}' in the report; layers: {', '.join(self.ranking)}")

    def as_dict(self) -> dict:
        return {
            "layers": [row.as_dict() for row in self.layers],
            "fp32_accuracy": self.fp32_accuracy,
            "ptq_accuracy": self.ptq_accuracy,
            "num_samples": self.num_samples,
            "num_batches": self.num_batches,
            "calibration_method": self.calibration_method,
            "timings_s": {key: round(value, 3) for key, value in self.timings.items()},
        }

    def _rows(self) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
        header = ("#", "layer", "class", "SQNR (dB)", "input only", "weight only", "model output SQNR", "top-1 (%)")
        rows = [
            (
                str(rank),
                row.layer,
                row.layer_class,
                _fmt_db(row.sqnr_db),
                _fmt_db(row.sqnr_input_db),
                _fmt_db(row.sqnr_weight_db),
                _fmt_db(row.output_sqnr_db),
                _fmt_pct(row.accuracy),
            )
            for rank, row in enumerate(self.layers, 1)
        ]
        return header, rows

    def _summary(self) -> str:
        parts = [f"{len(self.layers)} quantized layer(s), {self.num_samples} samples, calibration {self.calibration_method}"]
        if self.fp32_accuracy is not None:
            parts.append(f"FP32 top-1 {_fmt_pct(self.fp32_accuracy)} %")
        if self.ptq_accuracy is not None:
            parts.append(f"PTQ (all layers) top-1 {_fmt_pct(self.ptq_accuracy)} %")
        return "; ".join(parts)

    def table(self) -> str:
        header, rows = self._rows()
        widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]
        lines = [f"sensitivity, most sensitive first: {self._summary()}"]
        for line in (header, *rows):
            lines.append("  ".join(cell.rjust(w) if i not in (1, 2) else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_markdown(self) -> str:
        header, rows = self._rows()
        out = [f"Sensitivity, most sensitive first ({self._summary()}). SQNR of each layer's output with only its "
               "own QDQ on; \"model output\" and top-1 with only that layer quantized (\"-\": not computed).", ""]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("--:" if i not in (1, 2) else ":--" for i in range(len(header))) + "|")
        out += ["| " + " | ".join(f"`{c}`" if i == 1 else c for i, c in enumerate(row)) + " |" for row in rows]
        return "\n".join(out) + "\n"

    def to_png(self, max_layers: int | None = 40) -> bytes:
        """A horizontal bar chart of the ranking (PNG bytes): SQNR with all of the layer's QDQ on, and the
        input-only / weight-only split as markers."""
        import io

        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        rows = list(self.layers[:max_layers] if max_layers else self.layers)
        finite = [v for row in rows for v in (row.sqnr_db, row.sqnr_input_db, row.sqnr_weight_db) if v is not None and math.isfinite(v)]
        top = (max(finite) if finite else 60.0) + 5.0

        def clip(value):
            return None if value is None else (top if value == math.inf else max(value, 0.0))

        figure = Figure(figsize=(8, 0.28 * len(rows) + 1.7))
        axes = figure.subplots()
        positions = np.arange(len(rows))[::-1]
        axes.barh(positions, [clip(row.sqnr_db) for row in rows], color="#4c72b0", label="input + weight QDQ")
        for attr, marker, label in (("sqnr_input_db", "o", "input only"), ("sqnr_weight_db", "x", "weight only")):
            points = [(p, clip(getattr(row, attr))) for p, row in zip(positions, rows, strict=True) if getattr(row, attr) is not None]
            if points:
                axes.scatter([v for _, v in points], [p for p, _ in points], marker=marker, color="#dd8452" if marker == "o" else "#222222", label=label, zorder=3, s=18)
        axes.set_yticks(positions, [row.layer for row in rows], fontsize=7)
        axes.set_xlabel("SQNR of the layer's output (dB, higher is better)")
        shown = f" (the {len(rows)} most sensitive of {len(self.layers)})" if len(rows) < len(self.layers) else ""
        figure.suptitle(f"Per-layer quantization sensitivity{shown}", fontsize=9)
        axes.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
        axes.grid(axis="x", alpha=0.3)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        return buffer.getvalue()

    def write_plot(self, path, *, force: bool = False, max_layers: int | None = 40):
        from qdq_toolkit._files import write_atomically

        return write_atomically(path, self.to_png(max_layers), force=force)

    def write_markdown(self, path, *, force: bool = False):
        from qdq_toolkit._files import write_atomically

        return write_atomically(path, self.to_markdown(), force=force)

    def write_json(self, path, *, force: bool = False):
        from qdq_toolkit._files import write_atomically

        return write_atomically(path, json.dumps(self.as_dict(), indent=2) + "\n", force=force)


# ------------------------------------------------------------------------------------------------ the analysis
@dataclass
class _Sums:
    signal: float = 0.0
    noise_input: float = 0.0
    noise_weight: float = 0.0
    noise_both: float = 0.0


def _float_observer(wrapper, slot, tensor) -> None:
    """With this observer set, a wrapper computes in float (see ``QDQWrapper.set_observer``)."""


class QuantizedCopy:
    """A quantized copy of an FP32 model (``quantize_model``) with its activation ranges calibrated, whose
    wrappers can be switched to float one by one: the copy the analysis and :func:`auto_exclude` evaluate.

    Calibration runs the model in float, so each range depends only on the data, not on which other layers are
    quantized: a layer left in float later does not change the others' ranges.
    """

    def __init__(self, model, *, quantization_mode, quantization_spec, custom_qdq_cases, custom_wrappers,
                 calibration_method, calibration_batches, batches, progress):
        from qdq_toolkit.calibration import calibrate
        from qdq_toolkit.cases import iter_layers
        from qdq_toolkit.quantize import plan_quantization, quantize_model
        from qdq_toolkit.wrappers import DEFAULT_REGISTRY

        self.model = model
        registry = DEFAULT_REGISTRY.with_wrappers(custom_wrappers)
        self.plans = plan_quantization(model, quantization_mode, quantization_spec, custom_qdq_cases, registry)
        if not self.plans:
            raise ValueError(
                f"Nothing to analyze: no layer of model '{model.name}' would be quantized (quantization_mode="
                f"{quantization_mode!r}). Supported classes: "
                f"{', '.join(registry.supported_classes())}; with quantization_mode='partial', add the layers to the "
                "quantization_spec."
            )
        self.quantized = quantize_model(
            model, quantization_mode, quantization_spec, custom_qdq_cases, custom_wrappers=custom_wrappers,
            activation_range="fixed",
        )
        self.fp32_layers = {ref.path: ref.layer for ref in iter_layers(model) if id(ref.layer) in self.plans}
        self.wrappers = {}
        for ref in iter_layers(self.quantized):
            wrapped = getattr(ref.layer, "layer", None)
            if wrapped is not None and hasattr(ref.layer, "activation_ranges"):
                prefix = ref.path.rpartition("/")[0]
                self.wrappers[f"{prefix}/{wrapped.name}" if prefix else wrapped.name] = ref.layer
        self.calibration = None
        if any(w.activation_ranges() for w in self.wrappers.values()):
            self.calibration = calibrate(
                self.quantized, batches.inputs(), calibration_method, max_batches=calibration_batches, progress=progress
            )

    def paths(self) -> list[str]:
        return [path for path in self.fp32_layers if path in self.wrappers]

    def set_float(self, paths) -> None:
        """Run the wrappers of ``paths`` in float and every other wrapper quantized."""
        floating = set(paths)
        for path, wrapper in self.wrappers.items():
            wrapper.set_observer(_float_observer if path in floating else None)

    def reset(self) -> None:
        self.set_float(())

    def compute_ops(self, path: str) -> int:
        wrapper = self.wrappers[path]
        return len(wrapper.kernel_axes) if wrapper.quantize_weights and wrapper.quantize_inputs else 0


def _weight_quantized_copy(layer, wrapper):
    """A copy of the FP32 ``layer`` whose kernels are the wrapper's quantized kernels (quantized once)."""
    copy = layer.__class__.from_config(layer.get_config())
    copy.build(layer.input.shape)
    copy.set_weights(layer.get_weights())
    wrapper.set_observer(None)
    for name in wrapper.kernel_axes:
        getattr(copy, name).assign(wrapper.quantized_kernel(name, training=False))
    return copy


def _is_bilinear(layer) -> bool:
    """Whether the layer's output is linear in its input and in its kernels apart from a bias (no activation)."""
    import keras

    activation = getattr(layer, "activation", None)
    return activation is None or activation is keras.activations.linear


def _quantized_inputs(wrapper, inputs):
    if wrapper.multi_input:
        values = list(inputs)
        for index in wrapper.quantize_inputs:
            values[index] = wrapper.quantize_activation(f"input_{index}", values[index], training=False)
        return values
    return wrapper.quantize_activation("input", inputs[0], training=False)


def _layer_input(inputs, wrapper):
    return list(inputs) if wrapper.multi_input else inputs[0]


def _sqnr_step(copy: QuantizedCopy, taps, paths: Sequence[str]):
    """The compiled function of the SQNR pass: ``x -> (model outputs, per-layer sums [n, 4])``."""
    import tensorflow as tf

    weight_copies = {}
    for path in paths:
        wrapper = copy.wrappers[path]
        if wrapper.quantize_weights:
            weight_copies[path] = _weight_quantized_copy(copy.fp32_layers[path], wrapper)
    copy.reset()

    bilinear = {path: _is_bilinear(copy.fp32_layers[path]) for path in paths}

    def power(value):  # sum of squares in one kernel (l2_loss is sum(x**2) / 2), no squared temporary
        return 2.0 * tf.cast(tf.nn.l2_loss(value), tf.float64)

    @tf.function(reduce_retracing=True)
    def step(x):
        outputs, captured = taps.run(x)
        zero = tf.constant(0.0, tf.float64)
        rows = []
        for path in paths:
            wrapper, layer = copy.wrappers[path], copy.fp32_layers[path]
            sums = [zero] * 4
            for inputs, output in captured.get(path, []):
                error_in = error_w = None
                if wrapper.quantize_inputs:
                    quantized_in = _quantized_inputs(wrapper, inputs)
                    error_in = layer(quantized_in, training=False) - output
                if path in weight_copies:
                    error_w = weight_copies[path](_layer_input(inputs, wrapper), training=False) - output
                if error_in is not None and error_w is not None:
                    if bilinear[path]:  # y(q(x), q(W)) - y = W dx + dW x + dW dx: the last term is second order
                        error_both = error_in + error_w
                    else:
                        error_both = weight_copies[path](quantized_in, training=False) - output
                else:
                    error_both = error_in if error_in is not None else error_w
                values = [
                    power(output),
                    zero if error_in is None else power(error_in),
                    zero if error_w is None else power(error_w),
                    power(error_both),
                ]
                sums = [total + value for total, value in zip(sums, values, strict=True)]
            rows.append(tf.stack(sums))
        return outputs, tf.stack(rows)

    return step


def _bar(total, desc, progress):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not progress, leave=False)


def _num_batches(batches) -> int | None:
    source = batches.source
    if isinstance(source, tuple):
        return math.ceil(len(source[0]) / batches.batch_size)
    try:
        return len(source)
    except TypeError:
        return None


def analyze_sensitivity(
    model,
    data,
    *,
    quantization_mode: str = "full",
    quantization_spec=None,
    custom_qdq_cases=None,
    calibration_method: str = "max",
    calibration_batches: int | None = None,
    custom_wrappers=None,
    output_metrics: int | str = DEFAULT_OUTPUT_METRICS,
    batch_size: int = 32,
    progress: bool = True,
) -> SensitivityReport:
    """Rank the layers ``quantize_model`` would quantize by how much quantizing each alone costs.

    Args:
        model: the FP32 Keras model (Functional or Sequential; nested models are fine). Never modified.
        data: labelled data: ``(x, y)`` arrays (cut into ``batch_size`` batches), a ``tf.data.Dataset`` of
            ``(x, y)`` batches or a list of such batches. Without labels (``x`` only) the accuracies are None.
            It is read several times, so a one-shot generator is refused.
        quantization_mode, quantization_spec, custom_qdq_cases, custom_wrappers: as for
            :func:`~qdq_toolkit.quantize_model`: they decide which layers are analyzed.
        calibration_method: how activation ranges are calibrated (:func:`~qdq_toolkit.calibrate`).
        calibration_batches: calibrate on the first batches only (default: all of ``data``).
        output_metrics: for how many of the most sensitive layers to measure the SQNR of the model's output and
            the accuracy with only that layer quantized (one evaluation of the quantized model per layer, in one
            extra pass; ``"all"`` for every layer, 0 for none, which also skips the PTQ accuracy).
        progress: show progress bars.

    Returns:
        A :class:`SensitivityReport`, most sensitive layer first.

    Raises:
        ValueError: no layer would be quantized, the data is empty, or an argument is out of range.
        TypeError: ``model`` is not a Keras model, or ``data`` of an unknown kind.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"analyze_sensitivity expects the FP32 keras.Model, got {type(model).__name__}.")
    if output_metrics != "all" and (isinstance(output_metrics, bool) or not isinstance(output_metrics, int) or output_metrics < 0):
        raise ValueError(f"output_metrics must be a number of layers >= 0 or 'all', got {output_metrics!r}.")
    batches = as_batches(data, batch_size)
    copy, report = rank_layers(
        model, batches, quantization_mode=quantization_mode, quantization_spec=quantization_spec,
        custom_qdq_cases=custom_qdq_cases, custom_wrappers=custom_wrappers, calibration_method=calibration_method,
        calibration_batches=calibration_batches, progress=progress,
    )
    rows = list(report.layers)
    count = len(rows) if output_metrics == "all" else min(output_metrics, len(rows))
    if not count:
        return report
    start = time.perf_counter()
    rows, ptq_accuracy = _output_metrics(copy, batches, rows, count, progress=progress)
    timings = {**report.timings, "output_metrics": time.perf_counter() - start}
    return replace(report, layers=tuple(rows), ptq_accuracy=ptq_accuracy, timings=timings)


def rank_layers(model, batches, *, calibration_method: str, calibration_batches, progress: bool, **quantization):
    """Quantize and calibrate a copy of ``model``, run the SQNR pass; returns the copy and the ranked report
    (without model-level figures). ``quantization``: quantize_model's mode, spec, cases and wrappers."""
    start = time.perf_counter()
    copy = QuantizedCopy(
        model, **quantization, calibration_method=calibration_method, calibration_batches=calibration_batches,
        batches=batches, progress=progress,
    )
    timings = {"quantize_and_calibrate": time.perf_counter() - start}
    rows, fp32_accuracy, num_samples, num_batches, sqnr_timings = sqnr_pass(copy, batches, progress=progress)
    timings.update(sqnr_timings)
    rows.sort(key=lambda row: (row.sqnr_db, row.layer))
    return copy, SensitivityReport(tuple(rows), fp32_accuracy, None, num_samples, num_batches, calibration_method, timings)


def sqnr_pass(copy: QuantizedCopy, batches, *, progress: bool = True):
    """The SQNR pass (see the module docstring); returns rows in graph order, the FP32 accuracy, counts and
    ``{"sqnr_pass": seconds, "sqnr_first_batch": seconds}`` (the first batch includes tracing the compiled step)."""
    from qdq_toolkit.sensitivity._taps import LayerTaps

    paths = copy.paths()
    taps = LayerTaps(copy.model, paths)
    step = _sqnr_step(copy, taps, paths)
    totals = np.zeros((len(paths), 4))
    correct = labelled = num_samples = num_batches = 0
    start = time.perf_counter()
    first_batch = 0.0
    with _bar(_num_batches(batches), "SQNR per layer", progress) as bar:
        for x, y in batches:
            if len(x) == 0:
                continue
            outputs, sums = step(x)
            totals += sums.numpy()
            if num_batches == 0:
                first_batch = time.perf_counter() - start  # includes tracing the compiled step
            if y is not None:
                correct += count_correct(outputs[0].numpy(), y)
                labelled += len(x)
            num_samples += len(x)
            num_batches += 1
            bar.update(1)
    elapsed = time.perf_counter() - start
    if num_batches == 0:
        raise ValueError("The data is empty: give at least one batch of samples.")
    rows = []
    for path, (signal, noise_in, noise_w, noise_both) in zip(paths, totals, strict=True):
        wrapper = copy.wrappers[path]
        rows.append(
            LayerSensitivity(
                layer=path,
                layer_class=type(copy.fp32_layers[path]).__name__,
                quantize_inputs=tuple(wrapper.quantize_inputs),
                quantize_weights=bool(wrapper.quantize_weights),
                compute_ops=copy.compute_ops(path),
                sqnr_db=_db(signal, noise_both),
                sqnr_input_db=_db(signal, noise_in) if wrapper.quantize_inputs else None,
                sqnr_weight_db=_db(signal, noise_w) if wrapper.quantize_weights else None,
            )
        )
    accuracy = correct / labelled if labelled == num_samples and labelled else None
    return rows, accuracy, num_samples, num_batches, {"sqnr_pass": elapsed, "sqnr_first_batch": first_batch}


def _output_metrics(copy: QuantizedCopy, batches, rows, count: int, *, progress: bool):
    """Model output SQNR and accuracy with only each of the first ``count`` layers quantized, and the PTQ accuracy."""
    configurations = [row.layer for row in rows[:count]] + [None]  # None: every layer quantized
    every = copy.paths()
    signal = 0.0
    noise = dict.fromkeys(configurations, 0.0)
    correct = dict.fromkeys(configurations, 0)
    labelled = total = 0
    try:
        with _bar(_num_batches(batches), f"model output, {count} layer(s) alone", progress) as bar:
            for x, y in batches:
                if len(x) == 0:
                    continue
                reference = np.asarray(copy.model(x, training=False), dtype=np.float64)
                signal += float(np.sum(reference**2))
                for target in configurations:
                    copy.set_float([p for p in every if p != target] if target is not None else [])
                    out = np.asarray(copy.quantized(x, training=False), dtype=np.float64)
                    noise[target] += float(np.sum((out - reference) ** 2))
                    if y is not None:
                        correct[target] += count_correct(out, y)
                if y is not None:
                    labelled += len(x)
                total += len(x)
                bar.update(1)
    finally:
        copy.reset()
    has_labels = labelled == total and total > 0
    updated = [
        replace(row, output_sqnr_db=_db(signal, noise[row.layer]), accuracy=correct[row.layer] / total if has_labels else None)
        if row.layer in noise else row
        for row in rows
    ]
    return updated, (correct[None] / total if has_labels else None)
