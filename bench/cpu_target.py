"""The ONNX Runtime CPU target: INT8 latency vs FP32 beside ONNX Runtime's own quantize_static, fusion share, fidelity.

    python -m bench.cpu_target [--quick] [--force]

For ResNet50 (224x224, batch 1 and 8) and MobileNetV2 (224x224, batch 1), random weights (no download; latency
does not depend on the weights): quantize with the toolkit's placement (ResNetV1QDQCase / MobileNetQDQCase),
calibrate on random images, export the TensorRT-target ONNX and rewrite it for the CPU target; ONNX Runtime's own
``quantize_static`` (QDQ, uint8 activations, int8 per-channel weights, after ``quant_pre_process``) quantizes the
FP32 ONNX of the same model with the same images. The three models run in interleaved rounds with 2 intra-op
threads; medians. The fusion share counts the integer kernels in the model ONNX Runtime writes with
``SessionOptions.optimized_model_filepath``. Where the time goes: ONNX Runtime's profiler on each graph at batch 1
with one intra-op thread (so node times add up to the run), the convolution kernels against the rest and the
stem. Fidelity: the digits CNN of ``examples/digits_qat.py`` (QAT on real data), CPU target vs the Keras QAT model
and vs the TensorRT-target ONNX.

Raw numbers go to ``bench/cpu_target.json``; a Markdown section is printed (append it to BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "bench" / "cpu_target.json"
THREADS = 2
TARGET_RATIO = 0.30
TARGET_SHARE = 0.95


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _models(arch: str, size: int, workdir: Path, calibration_images: int):
    """``(fp32 path, trt path, cpu path, ort quantize_static path, calibration array)`` for one architecture."""
    import keras
    import numpy as np
    import onnx

    from qdq_toolkit import calibrate, quantize_model
    from qdq_toolkit.export import keras_to_onnx
    from qdq_toolkit.export.cpu_target import to_cpu_target

    if arch == "ResNet50":
        from custom_cases import ResNetV1QDQCase as Case

        fp32 = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3))
    else:
        from custom_cases import MobileNetQDQCase as Case

        fp32 = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3))
    images = np.random.default_rng(0).uniform(-1, 1, (calibration_images, size, size, 3)).astype(np.float32)
    quantized = quantize_model(fp32, custom_qdq_cases=[Case()])
    calibrate(quantized, images, "max", batch_size=8, progress=False)
    paths = {kind: workdir / f"{arch}_{kind}.onnx" for kind in ("fp32", "trt", "cpu", "ort")}
    say(f"{arch}: exporting FP32 and TensorRT-target ONNX")
    keras_to_onnx(fp32, paths["fp32"], force=True)
    keras_to_onnx(quantized, paths["trt"], force=True)
    say(f"{arch}: CPU target")
    started = time.perf_counter()
    cpu = to_cpu_target(onnx.load(paths["trt"]), images)
    rewrite_s = time.perf_counter() - started
    onnx.save(cpu, paths["cpu"])
    say(f"{arch}: ONNX Runtime quantize_static")
    _quantize_static(paths["fp32"], paths["ort"], images, workdir)
    return paths, images, rewrite_s


def _quantize_static(fp32: Path, output: Path, images, workdir: Path) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(fp32).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: images[i : i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.batches, None)

    prepared = workdir / f"{fp32.stem}_prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(
        str(prepared), str(output), Reader(), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
    )


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _latency(paths: dict, batch: int, size: int, rounds: int, runs: int) -> dict[str, list[float]]:
    """ms per batch for each model, ``rounds`` interleaved rounds of ``runs`` timed runs (after a warm-up)."""
    import numpy as np

    x = np.random.default_rng(1).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    sessions = {kind: _session(path) for kind, path in paths.items() if kind != "trt"}
    feeds = {kind: {s.get_inputs()[0].name: x} for kind, s in sessions.items()}
    for kind, session in sessions.items():
        for _ in range(3):
            session.run(None, feeds[kind])
    times: dict[str, list[float]] = {kind: [] for kind in sessions}
    for _ in range(rounds):
        for kind, session in sessions.items():
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, feeds[kind])
                times[kind].append((time.perf_counter() - start) * 1000)
    return times


def _profile(paths: dict, size: int, runs: int) -> dict:
    """Where each model's time goes, from ONNX Runtime's own profiler (batch 1, one intra-op thread, so that node
    times add up to the run): per op type, the median over ``runs`` runs of each node's kernel time, summed."""
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(1).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    result = {}
    with tempfile.TemporaryDirectory() as directory:
        for kind, path in paths.items():
            if kind == "trt":
                continue
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(directory) / kind)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x}
            for _ in range(3 + runs):
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
            per_node: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
            runs_us, first_conv = [], None
            for event in events:
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    if first_conv is None and "Conv" in event["args"]["op_name"]:
                        first_conv = (event["name"][: -len("_kernel_time")], event["args"]["op_name"])
                    per_node[(event["name"][: -len("_kernel_time")], event["args"]["op_name"])].append(event["dur"])
                elif event.get("cat") == "Session" and event["name"] == "model_run":
                    runs_us.append(event["dur"])
            node_ms = {key: statistics.median(values[3:] or values) / 1000 for key, values in per_node.items()}
            by_op: dict[str, float] = collections.defaultdict(float)
            for (_, op), ms in node_ms.items():
                by_op[op] += ms
            slowest = sorted(node_ms.items(), key=lambda item: -item[1])[:3]
            result[kind] = {
                "run_ms": statistics.median(runs_us[3:] or runs_us) / 1000,
                "by_op_ms": dict(sorted(by_op.items(), key=lambda item: -item[1])),
                "slowest_nodes": [{"node": node, "op": op, "ms": ms} for (node, op), ms in slowest],
                "first_conv": {"node": first_conv[0], "op": first_conv[1], "ms": node_ms[first_conv]} if first_conv else None,
            }
    return result


def _fidelity() -> dict:
    """Digits CNN (examples/digits_qat.py): CPU target vs Keras QAT and vs the TensorRT-target ONNX."""
    import numpy as np
    import onnx

    from examples import digits_qat
    from qdq_toolkit.data import load_digits
    from qdq_toolkit.export import keras_to_onnx
    from qdq_toolkit.export.cpu_target import to_cpu_target

    result = digits_qat.run()
    data = load_digits(test_fraction=0.25, seed=0)
    x, labels = data.test.images.astype(np.float32), data.test.labels
    keras_top1 = result.qat_model.predict(x, verbose=0).argmax(1)
    with tempfile.TemporaryDirectory() as directory:
        trt_path = Path(directory) / "trt.onnx"
        keras_to_onnx(result.qat_model, trt_path)
        trt = onnx.load(trt_path)
    cpu = to_cpu_target(trt, data.train.images[:256].astype(np.float32))
    top1 = {}
    for kind, model in (("trt", trt), ("cpu", cpu)):
        session = _session_from_proto(model)
        top1[kind] = session.run(None, {session.get_inputs()[0].name: x})[0].argmax(1)
    return {
        "model": "digits CNN (examples/digits_qat.py), 450 test images",
        "agreement_cpu_vs_keras_qat": float((top1["cpu"] == keras_top1).mean()),
        "accuracy_keras_qat": float((keras_top1 == labels).mean()),
        "accuracy_trt_onnx": float((top1["trt"] == labels).mean()),
        "accuracy_cpu_target": float((top1["cpu"] == labels).mean()),
    }


def fidelity_from_demo(directory: Path) -> dict:
    """The digits ResNet50 of ``make demo`` (its ``qat.keras``, ``qat.onnx``, ``qat_cpu.onnx``): CPU target vs the
    Keras QAT model and vs the TensorRT-target ONNX, on the demo's held-out digits."""
    import numpy as np
    import onnx

    from qdq_toolkit import load_model
    from qdq_toolkit.data import load_digits

    data = load_digits(image_size=32, channels=3, seed=0, test_fraction=0.25)
    x, labels = data.test.images.astype(np.float32), data.test.labels
    keras_logits = load_model(directory / "qat.keras").predict(x, verbose=0)
    top1 = {"keras": keras_logits.argmax(1)}
    logits = {}
    for kind, name in (("trt", "qat.onnx"), ("cpu", "qat_cpu.onnx")):
        session = _session_from_proto(onnx.load(directory / name))
        logits[kind] = session.run(None, {session.get_inputs()[0].name: x})[0]
        top1[kind] = logits[kind].argmax(1)
    return {
        "model": f"digits ResNet50 of make demo ({directory}), {len(labels)} test images",
        "agreement_cpu_vs_keras_qat": float((top1["cpu"] == top1["keras"]).mean()),
        "agreement_trt_vs_keras_qat": float((top1["trt"] == top1["keras"]).mean()),
        "accuracy_keras_qat": float((top1["keras"] == labels).mean()),
        "accuracy_trt_onnx": float((top1["trt"] == labels).mean()),
        "accuracy_cpu_target": float((top1["cpu"] == labels).mean()),
        "max_abs_output_diff_cpu_vs_keras": float(np.abs(logits["cpu"] - keras_logits).max()),
        "output_span": float(keras_logits.max() - keras_logits.min()),
    }


def _session_from_proto(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(quick: bool) -> dict:
    import onnx

    from qdq_toolkit.export.cpu_target import count_integer_kernels

    rounds, runs = (2, 3) if quick else (7, 10)
    cases = [("ResNet50", 224, (1, 8)), ("MobileNetV2", 224, (1,))]
    results = {"threads": THREADS, "rounds": rounds, "runs_per_round": runs, "cases": []}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        for arch, size, batches in cases:
            paths, _, rewrite_s = _models(arch, size, workdir, 8 if quick else 32)
            say(f"{arch}: ONNX Runtime profile, batch 1, one thread")
            results.setdefault("profiles", {})[arch] = _profile(paths, size, 3 if quick else 10)
            fusion = {kind: count_integer_kernels(onnx.load(paths[kind]), threads=THREADS) for kind in ("cpu", "ort")}
            for kind in fusion:
                fusion[kind].pop("op_counts")
            for batch in batches:
                say(f"{arch} batch {batch}: latency, {rounds} interleaved rounds of {runs} runs")
                times = _latency(paths, batch, size, rounds, runs)
                medians = {kind: statistics.median(values) for kind, values in times.items()}
                results["cases"].append(
                    {
                        "model": arch, "input": f"{size}x{size}", "batch": batch, "rewrite_s": rewrite_s,
                        "median_ms": medians,
                        "ratio_cpu_target": medians["cpu"] / medians["fp32"],
                        "ratio_quantize_static": medians["ort"] / medians["fp32"],
                        "fusion": fusion, "raw_ms": times,
                    }
                )
    say("fidelity on the digits")
    results["fidelity"] = _fidelity()
    results["load"] = f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
    return results


_KINDS = {"fp32": "FP32", "cpu": "CPU target", "ort": "quantize_static"}


def _render_profiles(profiles: dict) -> list[str]:
    """Where the time goes (ONNX Runtime's profiler, batch 1, one thread): the compute kernels' share, the
    rest, and the first convolution (the stem), per model."""
    if not profiles:
        return []
    lines = [
        "",
        "Where the time goes (`SessionOptions.enable_profiling`, batch 1, **one** intra-op thread so that node times "
        "add up to the run; medians of each node over the runs):",
        "",
        "| model | graph | run (ms) | Conv / QLinearConv kernels (ms) | everything else (ms) | first conv, the stem (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for arch, kinds in profiles.items():
        for kind, profile in kinds.items():
            conv = sum(ms for op, ms in profile["by_op_ms"].items() if "Conv" in op)
            rest = sum(profile["by_op_ms"].values()) - conv
            stem = profile.get("first_conv") or {}
            lines.append(
                f"| {arch} | {_KINDS.get(kind, kind)} | {profile['run_ms']:.1f} | {conv:.1f} | {rest:.1f} | "
                f"{stem.get('ms', float('nan')):.2f} ({stem.get('op', '?')}) |"
            )
    return lines


def render(results: dict, when: str, where: str, command: str) -> str:
    lines = [
        "## ONNX Runtime CPU target (INT8 on x86)",
        "",
        f"Measured {when} on {where}.",
        f"Command: `{command}` (raw numbers in `bench/cpu_target.json`). {results['threads']} intra-op threads; "
        f"{results['rounds']} interleaved rounds of {results['runs_per_round']} runs, medians. Load average "
        f"before / after the run: {results.get('load', '?')}; these machines are shared, so absolute times are noisy and "
        "the ratios (same run, interleaved) less so.",
        "",
        f"| model | FP32 ONNX (ms) | CPU target INT8 (ms) | CPU target ÷ FP32 (target ≤ {TARGET_RATIO:.2f}) "
        "| ORT quantize_static (ms) | quantize_static ÷ FP32 | integer kernels / quantized Conv+MatMul "
        f"(target ≥ {TARGET_SHARE:.0%}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in results["cases"]:
        medians, fusion = case["median_ms"], case["fusion"]
        lines.append(
            f"| {case['model']} {case['input']} batch {case['batch']} | {medians['fp32']:.1f} | {medians['cpu']:.1f} "
            f"| **{case['ratio_cpu_target']:.2f}** | {medians['ort']:.1f} | {case['ratio_quantize_static']:.2f} "
            f"| **{fusion['cpu']['integer_kernels']}/{fusion['cpu']['quantized']}** "
            f"(quantize_static {fusion['ort']['integer_kernels']}/{fusion['ort']['quantized']}) |"
        )
    lines += _render_profiles(results.get("profiles", {}))
    fidelity = results["fidelity"]
    lines += [
        "",
        f"Fidelity on real data ({fidelity['model']}): CPU target vs Keras QAT top-1 agreement "
        f"**{fidelity['agreement_cpu_vs_keras_qat']:.2%}** (target ≥ 99 %); accuracy CPU target "
        f"{fidelity['accuracy_cpu_target']:.2%}, TensorRT-target ONNX {fidelity['accuracy_trt_onnx']:.2%}, Keras QAT "
        f"{fidelity['accuracy_keras_qat']:.2%} (target: within 0.5 pp of the TensorRT-target ONNX).",
        "",
        "The CPU target is the toolkit's own TensorRT-target QDQ graph rewritten for ONNX Runtime's CPU execution "
        "provider (`target=\"onnxruntime\"`, `qdq_toolkit/export/cpu_target.py`): trained ranges reused, the "
        "missing ones calibrated, BatchNorm folded. The models have random weights (latency does not depend on "
        "them); the fidelity figures come from a trained model on real digits.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, not for the record)")
    parser.add_argument("--force", action="store_true", help=f"overwrite {RAW.relative_to(ROOT)}")
    parser.add_argument(
        "--demo-dir", type=Path, help="only the fidelity of the demo's digits ResNet50 (a make demo output directory)"
    )
    args = parser.parse_args(argv)
    if args.demo_dir is not None:
        fidelity = fidelity_from_demo(args.demo_dir)
        print(json.dumps(fidelity, indent=2))
        return 0
    if RAW.exists() and not args.force:
        print(f"error: {RAW.relative_to(ROOT)} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    sys.path.insert(0, str(ROOT))
    from bench.run import machine
    from bench.sections import write_section
    from qdq_toolkit._files import write_atomically

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = run(args.quick)
    results["when"], results["machine"] = when, machine()
    write_atomically(RAW, json.dumps(results, indent=2), force=args.force)
    command = "python -m bench.cpu_target" + (" --quick" if args.quick else "")
    text = render(results, when, results["machine"], command)
    if not args.quick:  # a smoke run is not for the record
        write_section("cpu_target", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
