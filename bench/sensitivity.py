"""Sensitivity benchmarks (issue #13): the cost of the SQNR ranking, the greedy search's evaluations, the recovery
of a model PTQ ruins.

1. ResNet50 (``weights=None``, 64x64x3, 10 classes; random inputs -- the cost does not depend on the values), every
   quantized layer (``quantization_mode="full"``, 55 layers): the SQNR pass (one compiled graph: the FP32 forward
   pass with taps plus each layer recomputed with quantized inputs and with quantized weights) / one FP32 forward
   pass (the same model compiled with ``tf.function``) over the same batches, interleaved rounds, medians. The
   one-off costs are reported beside it: tracing the SQNR graph, and calibration (``qdq_toolkit.calibrate``, eager).
   Also the peak RSS after one pass and after a pass over 4x the data (flat memory), and the cost of the
   model-level figures of one layer (``output_metrics``) in FP32 passes.
2. The digits ResNet (``examples/sensitivity_digits.py``, 4 residual blocks, 11 compute ops) trained on the digits
   and the same model with an outlier channel injected before ``block1_conv2``: ``auto_exclude(max_accuracy_drop=
   0.01)`` -- evaluations used, FP32 / PTQ / recovered top-1 on the test split, and the INT8 share of compute ops
   counted by ``summarize_qdq`` on the exported ONNX; also the search on the clean model with a 0 pp budget.

    python -m bench.sensitivity [--quick] [--force]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "bench" / "sensitivity.json"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_resnet50_cost(num_samples: int, rounds: int, memory: bool) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from qdq_toolkit.sensitivity._data import as_batches
    from qdq_toolkit.sensitivity._taps import LayerTaps
    from qdq_toolkit.sensitivity.analysis import QuantizedCopy, _output_metrics, _sqnr_step, sqnr_pass

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    x = np.random.default_rng(0).uniform(0, 1, (num_samples, 64, 64, 3)).astype(np.float32)
    batches = as_batches((x,), 32)
    start = time.perf_counter()
    copy = QuantizedCopy(
        model, quantization_mode="full", quantization_spec=None, custom_qdq_cases=None, custom_wrappers=None,
        calibration_method="max", calibration_batches=None, batches=batches, progress=False,
    )
    quantize_and_calibrate = time.perf_counter() - start
    paths = copy.paths()
    fp32 = tf.function(lambda v: model(v, training=False), reduce_retracing=True)
    start = time.perf_counter()
    fp32(x[:32])
    fp32_trace = time.perf_counter() - start
    step = _sqnr_step(copy, LayerTaps(model, paths), paths)
    start = time.perf_counter()
    step(x[:32])
    sqnr_trace = time.perf_counter() - start

    def timed(function) -> float:
        start = time.perf_counter()
        for batch, _ in batches:
            function(batch)
        return time.perf_counter() - start

    fp32_times, sqnr_times = [], []
    for _ in range(rounds):
        fp32_times.append(timed(fp32))
        sqnr_times.append(timed(step))
    eager_fp32 = timed(lambda batch: model(batch, training=False))
    result = {
        "num_samples": num_samples,
        "batch_size": 32,
        "quantized_layers": len(paths),
        "fp32_pass_s": fp32_times,
        "sqnr_pass_s": sqnr_times,
        "ratio_of_medians": statistics.median(sqnr_times) / statistics.median(fp32_times),
        "ratio_per_round": [s / f for s, f in zip(sqnr_times, fp32_times, strict=True)],
        "sqnr_trace_s": sqnr_trace,
        "fp32_trace_s": fp32_trace,
        "quantize_and_calibrate_s": quantize_and_calibrate,
        "eager_fp32_pass_s": eager_fp32,
    }
    rows = sqnr_pass(copy, batches, progress=False)[0]
    start = time.perf_counter()
    _output_metrics(copy, batches, sorted(rows, key=lambda r: r.sqnr_db), 1, progress=False)
    # one pass runs the FP32 model (eager) once and the quantized model twice (the layer alone, and all layers)
    result["one_layer_output_metrics_s"] = time.perf_counter() - start
    if memory:
        sqnr_pass(copy, batches, progress=False)
        result["peak_rss_after_1x_mib"] = _rss_mib()
        many = [batch for _ in range(4) for batch in batches]
        sqnr_pass(copy, as_batches(many), progress=False)
        result["peak_rss_after_4x_mib"] = _rss_mib()
    return result


def bench_digits(epochs: int, workdir: Path) -> dict:
    import warnings

    from examples.sensitivity_digits import BENCH_BLOCKS, inject_outlier_channel, train
    from qdq_toolkit import auto_exclude
    from qdq_toolkit.data import load_digits
    from qdq_toolkit.export import keras_to_onnx, summarize_qdq

    data = load_digits(test_fraction=0.25)
    test = (data.test.images, data.test.labels)
    fp32 = train(data, epochs=epochs, blocks=BENCH_BLOCKS)
    broken = inject_outlier_channel(fp32)
    results = {}
    for name, model, budget in (("outlier", broken, 0.01), ("clean_zero_budget", fp32, 0.0)):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = auto_exclude(model, test, max_accuracy_drop=budget, batch_size=150, progress=False)
        elapsed = time.perf_counter() - start
        summary = summarize_qdq(keras_to_onnx(found.model, workdir / f"{name}.onnx").path)
        int8, floating = summary["quantized_op_count"], summary["float_op_count"]
        results[name] = {
            "max_accuracy_drop": budget,
            "fp32_accuracy": found.fp32_accuracy,
            "ptq_accuracy": found.steps[0].accuracy,
            "accuracy": found.accuracy,
            "within_budget": found.within_budget,
            "excluded": list(found.excluded),
            "evaluations": found.num_evaluations,
            "onnx_int8_compute_ops": int8,
            "onnx_compute_ops": int8 + floating,
            "onnx_int8_fraction": int8 / (int8 + floating),
            "keras_int8_compute_ops": found.int8_compute_ops,
            "seconds": elapsed,
        }
    return results


def render(results: dict, when: str, machine: str, command: str) -> str:
    cost, digits = results["resnet50"], results["digits"]
    outlier, clean = digits["outlier"], digits["clean_zero_budget"]
    fp32_median = statistics.median(cost["fp32_pass_s"])
    lines = [
        "## Sensitivity analysis",
        "",
        f"Measured {when} on {machine}. Command: `{command}` (raw numbers in `bench/sensitivity.json`). The machine "
        "was shared with other jobs during the run (load well above its 2 cores), so absolute times are noisy; "
        "ratios come from interleaved rounds of the same run.",
        "",
        "| figure | ours | target (issue #13) |",
        "|---|---|---|",
        f"| SQNR ranking of ResNet50 (all {cost['quantized_layers']} quantized layers, 64×64, {cost['num_samples']} "
        f"images, batch 32) ÷ one FP32 forward pass over the same data | **{cost['ratio_of_medians']:.2f}** "
        f"(per round {min(cost['ratio_per_round']):.2f}–{max(cost['ratio_per_round']):.2f}) | ≤ 3 |",
        f"| greedy search evaluations, outlier digits ResNet, 1 pp budget | **{outlier['evaluations']}** | ≤ 10 |",
        f"| greedy search evaluations, clean digits ResNet, 0 pp budget | **{clean['evaluations']}** | ≤ 10 |",
        f"| outlier model: top-1 FP32 / PTQ / after `auto_exclude(0.01)` | {100 * outlier['fp32_accuracy']:.2f} / "
        f"{100 * outlier['ptq_accuracy']:.2f} / **{100 * outlier['accuracy']:.2f}** % | PTQ loses ≥ 5 pp; recovered within 1 pp |",
        f"| outlier model: compute ops left INT8 (counted on the exported ONNX) | **{outlier['onnx_int8_compute_ops']}/"
        f"{outlier['onnx_compute_ops']} = {100 * outlier['onnx_int8_fraction']:.1f} %** (in float: "
        f"{', '.join(outlier['excluded']) or 'none'}) | ≥ 90 % |",
        "",
        f"One-off costs beside the ratio: tracing the SQNR graph {cost['sqnr_trace_s']:.1f} s (the FP32 function "
        f"{cost['fp32_trace_s']:.1f} s); `quantize_model` + calibration (`calibrate`, eager, all the data) "
        f"{cost['quantize_and_calibrate_s']:.1f} s = {cost['quantize_and_calibrate_s'] / fp32_median:.1f} compiled "
        f"FP32 passes (an eager FP32 pass took {cost['eager_fp32_pass_s']:.1f} s). The model-level figures "
        f"(`output_metrics`) of one layer cost {cost['one_layer_output_metrics_s']:.1f} s = "
        f"{cost['one_layer_output_metrics_s'] / fp32_median:.1f} compiled FP32 passes (eager: the FP32 model once, "
        "the quantized model with only that layer on and with all on); the default computes them for the 5 most "
        "sensitive layers in one such pass.",
    ]
    if "peak_rss_after_4x_mib" in cost:
        lines.append(
            f"Peak RSS after an SQNR pass over the data: {cost['peak_rss_after_1x_mib']:.0f} MiB; after a pass over "
            f"4× the data: {cost['peak_rss_after_4x_mib']:.0f} MiB (the sums stream; nothing is kept per batch)."
        )
    lines.append(
        f"Clean digits ResNet with a 0 pp budget: PTQ top-1 {100 * clean['ptq_accuracy']:.2f} % vs FP32 "
        f"{100 * clean['fp32_accuracy']:.2f} %, {len(clean['excluded'])} layer(s) left in float, top-1 "
        f"{100 * clean['accuracy']:.2f} % ({'within' if clean['within_budget'] else 'not within'} the budget)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="less data and training (a smoke run, not the record)")
    parser.add_argument("--force", action="store_true", help="overwrite bench/sensitivity.json")
    args = parser.parse_args(argv)
    if RAW.exists() and not args.force:
        print(f"error: {RAW} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    from bench.run import machine
    from bench.sections import write_section
    from qdq_toolkit._files import write_atomically

    samples, rounds, epochs = (64, 2, 15) if args.quick else (192, 9, 40)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("ResNet50 SQNR cost ...", file=sys.stderr, flush=True)
        results["resnet50"] = bench_resnet50_cost(samples, rounds, memory=not args.quick)
        print("digits ResNet search ...", file=sys.stderr, flush=True)
        results["digits"] = bench_digits(epochs, Path(tmp))
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m bench.sensitivity" + (" --quick" if args.quick else "")
    results["measured"] = when
    write_atomically(RAW, json.dumps(results, indent=2) + "\n", force=args.force)
    text = render(results, when, machine(), command)
    if not args.quick:  # a smoke run is not for the record
        write_section("sensitivity", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
