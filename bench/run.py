"""Benchmarks measured side by side in one run; results go to BENCHMARKS.md (``make bench``).

Figures (ResNet50, ``weights=None``, on CPU):

1. QAT train step / FP32 train step, 64x64 inputs, batch 32. FP32 and QAT rounds are interleaved (this machine's
   step times jump between two levels): the median of the per-round ratios, with their min-max spread.
2. ``quantize_model(ResNet50)`` wall time (median of repeated runs after one warm-up).
3. Export time of the QAT model (``keras_to_onnx``) / tf2onnx's own FP32 conversion of the same model
   (``tf2onnx.convert.from_function``), interleaved, medians.
4. ONNX Runtime latency of the FP32 ONNX vs the QDQ ONNX (CPU, 224x224 batch 1 and 64x64 batch 32), interleaved.
5. Peak memory (max RSS) of a QAT fit vs an FP32 fit, each in its own process.

    python -m bench.run [--quick] [--output BENCHMARKS.md] [--force]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from bench.sections import BENCHMARKS, write_section

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return (
        f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"tf2onnx {tf2onnx.__version__}, ONNX Runtime {onnxruntime.__version__}"
    )


def step_ratio(train: dict, name: str, bold: bool = True) -> str:
    """The cell of a step ratio: the median of the per-round ratios, their spread, and the ratio of medians.

    Paired: each round's QAT time over the FP32 time measured next to it, so a drift of the machine's speed during
    the run (other tenants) cancels out, which it does not in the ratio of the two medians."""
    per_round = train[f"{name}_ratio_per_round"]
    paired = statistics.median(per_round)
    headline = f"**{paired:.2f}**" if bold else f"{paired:.2f}"
    return (
        f"{headline} (median of {len(per_round)} interleaved rounds, {min(per_round):.2f}–{max(per_round):.2f}; "
        f"ratio of medians {train[f'{name}_ratio_of_medians']:.2f})"
    )


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"


def resnet(size: int):
    import keras

    keras.utils.set_random_seed(0)
    return keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=1000)


#: The QAT models the benches train: ``qat`` is the default training path; ``qat_stored`` turns off every
#: wrapper's ``recompute_quantized_in_backward``, so the backward keeps the quantized inputs and kernels of the
#: forward instead of recomputing them (the memory-for-time trade the default makes, measured side by side).
QAT_KINDS = ("qat", "qat_stored")


def qat_resnet(fp32, kind: str = "qat"):
    """``quantize_model(fp32)`` with :class:`ResNetV1QDQCase`, on the training path ``kind`` (:data:`QAT_KINDS`)."""
    from custom_cases import ResNetV1QDQCase
    from qdq_toolkit import quantize_model, quantized_layers

    if kind not in QAT_KINDS:
        raise ValueError(f"unknown QAT kind {kind!r}; one of {QAT_KINDS}")
    model = quantize_model(fp32, custom_qdq_cases=[ResNetV1QDQCase()])
    if kind == "qat_stored":
        for wrapper in quantized_layers(model):
            wrapper.recompute_quantized_in_backward = False
    return model


def bench_train_step(rounds: int, steps: int, stored: bool = False) -> dict:
    """Seconds per training step: FP32, QAT calibrated first (the walkthrough's recipe) and QAT from unobserved
    ranges (its traced graph keeps a first-step select per quantizer), interleaved round by round; with ``stored``
    also ``qat_stored`` (calibrated, the backward keeps the forward's quantized tensors: :func:`qat_resnet`).

    The order within a round rotates (round ``r`` starts with model ``r mod n``), so that a bias of a position in
    the round -- e.g. the first model after a pause paying for cold caches -- falls on every model alike instead of
    on the same one: pairing the rounds cancels drift between rounds, not a bias within them."""
    import keras
    import numpy as np

    from qdq_toolkit.calibration import calibrate

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 64, 64, 3)).astype(np.float32)
    y = rng.integers(0, 1000, size=32)
    fp32 = resnet(64)
    models = {"fp32": fp32, "qat": qat_resnet(fp32), "qat_uncalibrated": qat_resnet(fp32)}
    if stored:
        models["qat_stored"] = qat_resnet(fp32, "qat_stored")
    for name in ("qat", "qat_stored"):
        if name in models:
            calibrate(models[name], x, batch_size=32, progress=False)
    for model in models.values():
        model.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy())
        for _ in range(3):  # trace and warm up
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    names = list(models)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            model = models[name]
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    result = {f"{name}_s": values for name, values in times.items()}
    for name in (n for n in models if n != "fp32"):
        result[f"{name}_ratio_of_medians"] = statistics.median(times[name]) / statistics.median(times["fp32"])
        result[f"{name}_ratio_per_round"] = [q / f for q, f in zip(times[name], times["fp32"], strict=True)]
    return result


def bench_quantize(repeats: int) -> dict:
    from custom_cases import ResNetV1QDQCase
    from qdq_toolkit import quantize_model

    model = resnet(64)
    quantize_model(model)  # warm-up: first Keras/TF calls
    plain, with_case = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        quantize_model(model)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        quantize_model(model, custom_qdq_cases=[ResNetV1QDQCase()])
        with_case.append(time.perf_counter() - start)
    return {"default_s": plain, "resnet_case_s": with_case}


def bench_export(repeats: int, workdir: Path) -> dict:
    import tensorflow as tf
    import tf2onnx

    from custom_cases import ResNetV1QDQCase
    from qdq_toolkit import quantize_model
    from qdq_toolkit.export import UnobservedRangeWarning, keras_to_onnx

    fp32 = resnet(64)
    qat = quantize_model(fp32, custom_qdq_cases=[ResNetV1QDQCase()])
    # Timing only: the graph (and its cost) is the same whatever the ranges, so they are left uncalibrated.
    warnings.filterwarnings("ignore", category=UnobservedRangeWarning)

    def tf2onnx_fp32(path: Path) -> None:
        spec = (tf.TensorSpec((None, 64, 64, 3), tf.float32, name="input"),)
        function = tf.function(lambda x: fp32(x, training=False), input_signature=spec)
        tf2onnx.convert.from_function(function, input_signature=spec, opset=13, output_path=str(path))

    ours, reference = [], []
    for index in range(repeats + 1):  # the first round warms both paths up and is not counted
        start = time.perf_counter()
        tf2onnx_fp32(workdir / f"fp32_{index}.onnx")
        ref_time = time.perf_counter() - start
        start = time.perf_counter()
        keras_to_onnx(qat, workdir / f"qat_{index}.onnx")
        our_time = time.perf_counter() - start
        if index:
            reference.append(ref_time)
            ours.append(our_time)
    return {
        "qat_export_s": ours,
        "tf2onnx_fp32_s": reference,
        "ratio_of_medians": statistics.median(ours) / statistics.median(reference),
    }


def bench_onnx_latency(workdir: Path, runs: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    from custom_cases import ResNetV1QDQCase
    from qdq_toolkit import quantize_model
    from qdq_toolkit.evaluate.latency import measure_latencies
    from qdq_toolkit.export import keras_to_onnx

    results = {}
    for size, batch in ((224, 1), (64, 32)):
        fp32 = resnet(size)
        qat = quantize_model(fp32, custom_qdq_cases=[ResNetV1QDQCase()])
        images = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
        qat.compile("sgd", "mse")
        qat.predict(images[:1], verbose=0)
        sessions = {}
        for name, model in (("fp32", fp32), ("qdq", qat)):
            path = keras_to_onnx(model, workdir / f"latency_{name}_{size}.onnx").path
            options = ort.SessionOptions()
            options.intra_op_num_threads = os.cpu_count() or 1
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def predictor(session):
            input_name = session.get_inputs()[0].name
            return lambda x: session.run(None, {input_name: x})

        stats = measure_latencies({name: predictor(s) for name, s in sessions.items()}, images, [batch], runs=runs)
        results[f"{size}x{size} batch {batch}"] = {
            name: {"median_ms": s[batch].median_ms, "p90_ms": s[batch].p90_ms} for name, s in stats.items()
        }
    return results


MEMORY_SCRIPT = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
from bench.run import resnet
model = resnet(64)
if sys.argv[1] != "fp32":
    try:
        from bench.run import qat_resnet
    except ImportError:  # a --baseline checkout older than qat_resnet: its default QAT model
        from custom_cases import ResNetV1QDQCase
        from qdq_toolkit import quantize_model
        def qat_resnet(model, kind):
            return quantize_model(model, custom_qdq_cases=[ResNetV1QDQCase()])
    model = qat_resnet(model, sys.argv[1])
model.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 64, 64, 3)).astype(np.float32); y = rng.integers(0, 1000, size=256)
model.fit(x, y, batch_size=32, epochs=1, verbose=0)
# VmHWM: this process's own peak RSS. (getrusage's ru_maxrss would include the peak of the parent that forked us.)
# Then the peak of the tensors TensorFlow's CPU allocator held at once (its own statistics).
import tensorflow as tf
hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(hwm, tf.config.experimental.get_memory_info("CPU:0")["peak"] // 1024)
"""


def fit_peaks_mib(kind: str, root: Path = ROOT) -> dict[str, float]:
    """A fresh process fits ResNet50 once, ``kind`` "fp32" or one of :data:`QAT_KINDS`, with the toolkit (and the
    ``bench`` package) found in ``root``: its VmHWM (``rss``) and the peak of the tensors TensorFlow's CPU allocator
    held at once (``tensors``), in MiB.

    The two differ by what is not a tensor: the allocator's pool (oneDNN builds use a pooling allocator that never
    returns memory to the system), the traced graphs, XLA's compiler and the Python heap."""
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, kind],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    )
    rss, tensors = result.stdout.strip().splitlines()[-1].split()
    return {"rss": int(rss) / 1024, "tensors": int(tensors) / 1024}  # KiB -> MiB


def bench_peaks(rounds: int, baseline: Path | None = None, stored: bool = False) -> dict:
    """:func:`fit_peaks_mib` of FP32 and QAT fits, alternating, ``rounds`` of each (and of the toolkit in
    ``baseline``, keys prefixed ``baseline_``, in the same alternation; with ``stored`` also ``qat_stored`` fits of
    this checkout, keys ``qat_stored_...``); the ratios of the medians to FP32's."""
    roots = {"": ROOT} | ({"baseline_": baseline} if baseline else {})
    kinds = {"": ("fp32", *QAT_KINDS) if stored else ("fp32", "qat"), "baseline_": ("fp32", "qat")}
    peaks: dict[str, list[float]] = {}
    for index in range(rounds):
        for prefix, root in roots.items():
            for kind in kinds[prefix]:
                print(f"memory round {index + 1}/{rounds}: {prefix}{kind} ...", file=sys.stderr, flush=True)
                fit = fit_peaks_mib(kind, root)
                peaks.setdefault(f"{prefix}{kind}_peak_mib", []).append(fit["rss"])
                peaks.setdefault(f"{prefix}{kind}_tensor_peak_mib", []).append(fit["tensors"])
    result = dict(peaks)
    for prefix in roots:
        for kind in kinds[prefix][1:]:
            for figure in ("peak", "tensor_peak"):
                qat, fp32 = peaks[f"{prefix}{kind}_{figure}_mib"], peaks[f"{prefix}fp32_{figure}_mib"]
                name = "ratio_of_medians" if figure == "peak" else "tensor_ratio_of_medians"
                # the default path's keys keep their names ("ratio_of_medians"); the stored path's are prefixed
                key = f"{prefix}{name}" if kind == "qat" else f"{prefix}{kind}_{name}"
                result[key] = statistics.median(qat) / statistics.median(fp32)
    return result


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (as BENCHMARKS.md names it)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def render(results: dict, when: str, where: str, command: str, raw_path: str = "bench/results.json") -> str:
    train, quant, export, latency, memory = (
        results[k] for k in ("train_step", "quantize_model", "export", "onnx_latency", "memory")
    )
    lines = [
        "## Training, quantize_model, export, memory (`bench.run`)",
        "",
        f"Measured {when} on {where}.",
        f"Command: `{command}` (all figures from this one run; raw numbers in `{raw_path}`).",
        "",
        "| figure | ours | target (DESIGN.md) | peers (DESIGN.md) |",
        "|---|---|---|---|",
        f"| QAT train step ÷ FP32 train step (ResNet50 64×64, batch 32, calibrated first) | {step_ratio(train, 'qat')} "
        "| ≤ 1.25 | NVIDIA 1.44, TFMOT 4.20 |",
        f"| the same, QAT from unobserved ranges | {step_ratio(train, 'qat_uncalibrated', bold=False)} | — | — |",
        f"| `quantize_model(ResNet50)` | **{statistics.median(quant['default_s']):.2f} s** "
        f"(with ResNetV1QDQCase {statistics.median(quant['resnet_case_s']):.2f} s) | ≤ 1.0 s | NVIDIA 1.6 s, TFMOT 4.3 s |",
        f"| export time ÷ tf2onnx FP32 conversion | **{export['ratio_of_medians']:.2f}** "
        f"({statistics.median(export['qat_export_s']):.2f} s vs {statistics.median(export['tf2onnx_fp32_s']):.2f} s) "
        "| ≤ 1.1 | NVIDIA 1.23, TFMOT 1.62 |",
        f"| peak RSS of a QAT fit ÷ FP32 fit | **{memory['ratio_of_medians']:.2f}** "
        f"({statistics.median(memory['qat_peak_mib']):.0f} MiB vs {statistics.median(memory['fp32_peak_mib']):.0f} MiB) | — | — |",
        "",
        "Step times (s, median with min–max over interleaved rounds): "
        f"FP32 {spread(train['fp32_s'])}; QAT {spread(train['qat_s'])}; "
        f"QAT uncalibrated {spread(train['qat_uncalibrated_s'])}.",
        "",
        "## ONNX Runtime latency, CPU (ms per batch, median / p90, interleaved)",
        "",
        "| input | FP32 ONNX | QDQ ONNX | QDQ ÷ FP32 |",
        "|---|---|---|---|",
    ]
    for key, row in latency.items():
        lines.append(
            f"| {key} | {row['fp32']['median_ms']:.1f} / {row['fp32']['p90_ms']:.1f} | "
            f"{row['qdq']['median_ms']:.1f} / {row['qdq']['p90_ms']:.1f} | "
            f"{row['qdq']['median_ms'] / row['fp32']['median_ms']:.2f} |"
        )
    lines += [
        "",
        "The QAT fit's peak memory is measured again, with the training path of the second round, by `bench.memory`",
        "(its section below); TensorRT's engine has none of this cost, it is a training-time cost.",
        "",
        "ONNX Runtime on CPU does not fuse TensorRT-style QDQ graphs (no Q on convolution outputs) into integer",
        "kernels: it runs the Q/DQ pairs as extra float work, so the TensorRT-target file is slower there. It is the",
        "numerical reference for the TensorRT engine; the CPU target (`bench.cpu_target`, below) is the INT8 file for",
        "ONNX Runtime.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, not for the record)")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument(
        "--json",
        help="where the raw numbers go (default: bench/results.json for BENCHMARKS.md, else beside --output)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs (make bench passes it)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if args.json:
        raw = Path(args.json)
    elif output.resolve() == (ROOT / "BENCHMARKS.md").resolve():
        raw = ROOT / "bench" / "results.json"
    else:
        raw = output.with_suffix(".json")
    for path in (output, raw):
        if path.exists() and not args.force:
            print(f"error: {path} exists; pass --force to overwrite it", file=sys.stderr)
            return 1
    rounds, steps, repeats, runs = (2, 2, 2, 5) if args.quick else (7, 5, 5, 30)
    command = "make bench" + (" (--quick)" if args.quick else "")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print("train step ...", file=sys.stderr, flush=True)
        results["train_step"] = bench_train_step(rounds, steps)
        print("quantize_model ...", file=sys.stderr, flush=True)
        results["quantize_model"] = bench_quantize(repeats)
        print("export ...", file=sys.stderr, flush=True)
        results["export"] = bench_export(repeats, workdir)
        print("ONNX Runtime latency ...", file=sys.stderr, flush=True)
        results["onnx_latency"] = bench_onnx_latency(workdir, runs)
        print("memory ...", file=sys.stderr, flush=True)
        results["memory"] = bench_peaks(2)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = render(results, when, machine(), command, _shown(raw))
    from qdq_toolkit._files import write_atomically

    # The raw numbers first: the Markdown names that file, so it must exist once the Markdown does.
    write_atomically(
        raw, json.dumps({"date": when, "machine": machine(), "results": results}, indent=2).encode(), force=args.force
    )
    if output.resolve() == BENCHMARKS.resolve():
        write_section("core", text)  # the other modules' sections stay as they are
    else:
        write_atomically(output, text.encode(), force=args.force)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
