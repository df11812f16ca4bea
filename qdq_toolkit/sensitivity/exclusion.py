"""``auto_exclude``: the smallest set of layers to leave in float so that PTQ stays within an accuracy budget.

The search is greedy from the sensitivity ranking (:func:`~qdq_toolkit.analyze_sensitivity`, most sensitive first)
and every candidate is checked by measuring accuracy, never predicted:

1. the PTQ model with every layer quantized (0 layers excluded);
2. exponential search over the prefix length of the ranking: 1, 2, 4, ... most sensitive layers in float, until
   the accuracy is within the budget (or ``max_excluded`` is reached);
3. binary search between the last prefix that failed and the first that passed;
4. pruning: each excluded layer but the last, least sensitive first, is put back (quantized) if the accuracy stays
   within the budget without it.

Each step is one evaluation pass over the data; ``max_evaluations`` (default 10) caps them, and the FP32 accuracy
is measured by the sensitivity pass itself. All candidates share one calibration: ranges are calibrated with the
model in float, so a layer left in float does not change any other layer's range, and the returned model gets
exactly the ranges a fresh calibration would give.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

import numpy as np

from qdq_toolkit.sensitivity._data import as_batches, count_correct
from qdq_toolkit.sensitivity.analysis import QuantizedCopy, SensitivityReport, _bar, _num_batches, rank_layers

DEFAULT_MAX_EVALUATIONS = 10


class AccuracyBudgetWarning(UserWarning):
    """No set of excluded layers tried kept the quantized model within the accuracy budget."""


@dataclass(frozen=True)
class ExclusionStep:
    """One evaluation of the search: which layers were in float and the accuracy measured."""

    phase: str
    excluded: tuple[str, ...]
    accuracy: float
    within_budget: bool

    def as_dict(self) -> dict:
        return {"phase": self.phase, "excluded": list(self.excluded), "accuracy": self.accuracy,
                "within_budget": self.within_budget}


@dataclass(frozen=True)
class ExclusionResult:
    """What :func:`auto_exclude` found.

    Attributes:
        excluded: paths of the layers left in float, most sensitive first.
        quantization_spec: a :class:`~qdq_toolkit.QuantizationSpec` (the caller's entries plus one
            ``quantize_input=False, quantize_weight=False`` entry per excluded layer): pass it to
            ``quantize_model`` for QAT, or save it with ``spec.save("spec.json")``.
        model: the calibrated PTQ model with those layers in float.
        fp32_accuracy / accuracy: top-1 of the FP32 model and of ``model``.
        within_budget: whether ``accuracy >= fp32_accuracy - max_accuracy_drop``.
        steps: every evaluation, in order.
        int8_compute_ops / compute_ops: Conv/MatMul ops that run in INT8 (input and weight quantized) / all of
            them, as ``summarize_qdq`` counts them on the exported ONNX.
        report: the sensitivity ranking the search started from.
    """

    excluded: tuple[str, ...]
    quantization_spec: object
    model: object
    fp32_accuracy: float
    accuracy: float
    max_accuracy_drop: float
    within_budget: bool
    steps: tuple[ExclusionStep, ...]
    int8_compute_ops: int
    compute_ops: int
    report: SensitivityReport

    @property
    def int8_fraction(self) -> float:
        return self.int8_compute_ops / self.compute_ops if self.compute_ops else 0.0

    @property
    def num_evaluations(self) -> int:
        return len(self.steps)

    def as_dict(self) -> dict:
        return {
            "excluded": list(self.excluded),
            "fp32_accuracy": self.fp32_accuracy,
            "accuracy": self.accuracy,
            "accuracy_drop": self.fp32_accuracy - self.accuracy,
            "max_accuracy_drop": self.max_accuracy_drop,
            "within_budget": self.within_budget,
            "int8_compute_ops": self.int8_compute_ops,
            "compute_ops": self.compute_ops,
            "num_evaluations": self.num_evaluations,
            "steps": [step.as_dict() for step in self.steps],
            "quantization_spec": self.quantization_spec.to_dict(),
        }

    def table(self) -> str:
        verdict = "within" if self.within_budget else "NOT within"
        lines = [
            f"auto_exclude: {len(self.excluded)} layer(s) left in float, top-1 {100 * self.accuracy:.2f} % vs FP32 "
            f"{100 * self.fp32_accuracy:.2f} % ({verdict} the budget of {100 * self.max_accuracy_drop:.2f} pp); "
            f"{self.int8_compute_ops}/{self.compute_ops} compute ops INT8; {self.num_evaluations} evaluation(s)",
        ]
        for index, step in enumerate(self.steps, 1):
            names = ", ".join(step.excluded) if step.excluded else "(none)"
            mark = "ok" if step.within_budget else "--"
            lines.append(f"  {index:2d}. {step.phase:<11} {100 * step.accuracy:6.2f} %  {mark}  float: {names}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_markdown(self) -> str:
        lines = [self.table().splitlines()[0], "", "| # | phase | top-1 (%) | within budget | layers in float |",
                 "|--:|:--|--:|:--|:--|"]
        for index, step in enumerate(self.steps, 1):
            names = ", ".join(f"`{n}`" for n in step.excluded) or "(none)"
            lines.append(f"| {index} | {step.phase} | {100 * step.accuracy:.2f} | {'yes' if step.within_budget else 'no'} | {names} |")
        return "\n".join(lines) + "\n"

    def write_json(self, path, *, force: bool = False):
        from qdq_toolkit._files import write_atomically

        return write_atomically(path, json.dumps(self.as_dict(), indent=2) + "\n", force=force)


def _accuracy(copy: QuantizedCopy, batches, excluded, *, progress: bool, desc: str) -> float:
    copy.set_float(excluded)
    correct = total = 0
    try:
        with _bar(_num_batches(batches), desc, progress) as bar:
            for x, y in batches:
                if len(x) == 0:
                    continue
                correct += count_correct(np.asarray(copy.quantized(x, training=False)), y)
                total += len(x)
                bar.update(1)
    finally:
        copy.reset()
    return correct / total


def _exclusion_spec(quantization_spec, excluded):
    from qdq_toolkit.spec import QuantizationSpec

    if isinstance(quantization_spec, (str, os.PathLike)):
        quantization_spec = QuantizationSpec.load(quantization_spec)
    spec = quantization_spec.copy() if quantization_spec is not None else QuantizationSpec()
    for path in excluded:
        spec.add(path, quantize_input=False, quantize_weight=False)
    return spec


def auto_exclude(
    model,
    data,
    *,
    max_accuracy_drop: float = 0.01,
    quantization_mode: str = "full",
    quantization_spec=None,
    custom_qdq_cases=None,
    custom_wrappers=None,
    calibration_method: str = "max",
    calibration_batches: int | None = None,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    max_excluded: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> ExclusionResult:
    """Find the fewest layers to leave in float so that the calibrated PTQ model is within ``max_accuracy_drop``
    (a fraction: 0.01 is 1 percentage point of top-1) of the FP32 model on ``data``.

    Args:
        model: the FP32 Keras model; never modified.
        data: labelled data (``(x, y)`` arrays, a ``tf.data.Dataset`` of ``(x, y)`` batches, or a list of them);
            labels are required.
        max_accuracy_drop: the budget, a fraction in [0, 1].
        quantization_mode, quantization_spec, custom_qdq_cases, custom_wrappers: as for ``quantize_model``.
        calibration_method, calibration_batches: as for :func:`~qdq_toolkit.analyze_sensitivity`.
        max_evaluations: at most this many accuracy evaluations (each one pass over ``data``).
        max_excluded: never leave more than this many layers in float (default: no limit).

    Returns:
        An :class:`ExclusionResult`. If no set tried meets the budget, an :class:`AccuracyBudgetWarning` says so
        and the result (``within_budget=False``) holds the most accurate set found.

    Raises:
        ValueError: labels are missing, no layer would be quantized, or an argument is out of range.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"auto_exclude expects the FP32 keras.Model, got {type(model).__name__}.")
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) or not 0.0 <= max_accuracy_drop <= 1.0:
        raise ValueError(
            f"max_accuracy_drop must be a fraction in [0, 1] (0.01 = 1 percentage point), got {max_accuracy_drop!r}."
        )
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) or max_evaluations < 1:
        raise ValueError(f"max_evaluations must be a positive integer, got {max_evaluations!r}.")
    if max_excluded is not None and (isinstance(max_excluded, bool) or not isinstance(max_excluded, int) or max_excluded < 0):
        raise ValueError(f"max_excluded must be an integer >= 0 or None, got {max_excluded!r}.")
    batches = as_batches(data, batch_size)
    first = next(iter(batches), None)
    if first is not None and first[1] is None:
        raise ValueError(
            "auto_exclude measures accuracy, so it needs labels: pass (x, y) arrays or batches of (x, y). "
            "For the SQNR ranking alone (no labels), use analyze_sensitivity."
        )
    copy, report = rank_layers(
        model, batches, quantization_mode=quantization_mode, quantization_spec=quantization_spec,
        custom_qdq_cases=custom_qdq_cases, custom_wrappers=custom_wrappers, calibration_method=calibration_method,
        calibration_batches=calibration_batches, progress=progress,
    )
    fp32_accuracy = report.fp32_accuracy
    if fp32_accuracy is None:
        raise ValueError("auto_exclude needs a label for every sample; some batches have none.")
    ranking = report.ranking
    target = fp32_accuracy - max_accuracy_drop
    limit = len(ranking) if max_excluded is None else min(max_excluded, len(ranking))
    steps: list[ExclusionStep] = []
    known: dict[tuple[str, ...], float] = {}

    def measure(excluded: tuple[str, ...], phase: str) -> bool | None:
        """Accuracy with ``excluded`` in float; None when the evaluation budget is spent."""
        if excluded in known:
            return known[excluded] >= target
        if len(steps) >= max_evaluations:
            return None
        accuracy = _accuracy(copy, batches, excluded, progress=progress, desc=f"evaluating, {len(excluded)} in float")
        known[excluded] = accuracy
        steps.append(ExclusionStep(phase, excluded, accuracy, accuracy >= target))
        return accuracy >= target

    best: tuple[str, ...] | None = None
    ok = measure((), "all INT8")
    if ok:
        best = ()
    else:
        failed, size = 0, 1
        while ok is False and failed < limit:  # exponential search over the prefix length
            size = min(size, limit)
            ok = measure(tuple(ranking[:size]), "exponential")
            if ok:
                best = tuple(ranking[:size])
            elif ok is False:
                failed, size = size, size * 2
        passed = len(best) if best is not None else None
        while passed is not None and passed - failed > 1:  # binary search between the last fail and first pass
            middle = (failed + passed) // 2
            ok = measure(tuple(ranking[:middle]), "binary")
            if ok is None:
                break
            if ok:
                passed, best = middle, tuple(ranking[:middle])
            else:
                failed = middle
        if best:  # pruning: put back layers the budget does not need, least sensitive first
            for path in reversed(best[:-1]):
                trial = tuple(p for p in best if p != path)
                ok = measure(trial, "pruning")
                if ok is None:
                    break
                if ok:
                    best = trial
    within = best is not None
    if best is None:
        best = max(known, key=lambda excluded: (known[excluded], -len(excluded)))
        warnings.warn(
            f"auto_exclude: no set of layers tried keeps top-1 within {100 * max_accuracy_drop:.2f} pp of FP32 "
            f"({100 * fp32_accuracy:.2f} %): the best, {len(best)} layer(s) in float, reaches {100 * known[best]:.2f} %"
            f" after {len(steps)} evaluation(s). Raise max_excluded / max_evaluations, or fine-tune with QAT.",
            AccuracyBudgetWarning,
            stacklevel=2,
        )
    spec = _exclusion_spec(quantization_spec, best)
    final = _final_model(copy, model, quantization_mode, spec, custom_qdq_cases, custom_wrappers)
    int8_ops, all_ops = compute_op_counts(final, custom_wrappers)
    return ExclusionResult(
        excluded=best, quantization_spec=spec, model=final, fp32_accuracy=fp32_accuracy, accuracy=known[best],
        max_accuracy_drop=float(max_accuracy_drop), within_budget=within, steps=tuple(steps),
        int8_compute_ops=int8_ops, compute_ops=all_ops, report=report,
    )


def _final_model(copy: QuantizedCopy, model, quantization_mode, spec, custom_qdq_cases, custom_wrappers):
    """``quantize_model`` with the exclusion spec, given the calibrated ranges (equal to a new calibration's)."""
    from qdq_toolkit.cases import iter_layers
    from qdq_toolkit.quantize import quantize_model

    final = quantize_model(model, quantization_mode, spec, custom_qdq_cases, custom_wrappers=custom_wrappers)
    for ref in iter_layers(final):
        wrapped = getattr(ref.layer, "layer", None)
        if wrapped is None or not hasattr(ref.layer, "activation_ranges"):
            continue
        prefix = ref.path.rpartition("/")[0]
        source = copy.wrappers[f"{prefix}/{wrapped.name}" if prefix else wrapped.name]
        ranges = source.activation_ranges()
        for slot in ref.layer.activation_ranges():
            ref.layer.set_activation_range(slot, float(ranges[slot].numpy()))
    return final


def compute_op_counts(quantized_model, custom_wrappers=None) -> tuple[int, int]:
    """``(INT8, all)`` Conv/MatMul compute ops of a quantized model, as ``summarize_qdq`` counts them in ONNX: a
    layer with kernels (one op per kernel) is INT8 when both its input and its kernels are quantized."""
    from qdq_toolkit.cases import iter_layers
    from qdq_toolkit.wrappers import DEFAULT_REGISTRY, QDQWrapper

    registry = DEFAULT_REGISTRY.with_wrappers(custom_wrappers)
    int8 = total = 0
    for ref in iter_layers(quantized_model):
        if isinstance(ref.layer, QDQWrapper):
            ops = len(ref.layer.kernel_axes)
            total += ops
            if ref.layer.quantize_weights and ref.layer.quantize_inputs:
                int8 += ops
        else:
            wrapper = registry.wrapper_for(type(ref.layer))
            total += len(wrapper.kernel_axes) if wrapper is not None else 0
    return int8, total
