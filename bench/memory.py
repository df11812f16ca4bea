"""The memory and the speed of a QAT training step against FP32 (ResNet50 64x64, batch 32, ``weights=None``).

1. Peak memory: one fit (256 images, batch 32, 1 epoch) per process, FP32 and QAT processes alternating; the peak
   is the process's own VmHWM (``bench.run.bench_peaks``), beside the peak of the tensors TensorFlow's CPU
   allocator held at once. Ratios of the medians.
2. XLA's fixed cost: the RSS a process gains when it runs its first XLA-compiled function (the training weight QDQ
   is one), measured in a fresh process.
3. Train step: FP32 and QAT (calibrated first) ``train_on_batch`` rounds interleaved in one process
   (``bench.run.bench_train_step``); the median of the per-round ratios, with their spread and the ratio of medians.

Both the peaks and the step are also measured for QAT with every wrapper's ``recompute_quantized_in_backward``
off (``qat_stored``: the backward keeps the forward's quantized inputs and kernels instead of recomputing them),
which shows what the default's memory saving costs in step time, side by side.

``--baseline DIR`` also measures the peaks of another checkout of the toolkit (e.g. the main branch), in the same
alternation, to show the change side by side.

    python -m bench.memory [--quick] [--force] [--memory-rounds N] [--baseline DIR] [--json bench/memory.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
MEMORY_TARGET = 1.15
STEP_TARGET = 1.10


XLA_SCRIPT = """
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
x = tf.ones((64, 64))
tf.matmul(x, x)  # TensorFlow's own kernels warmed up
before = rss()
tf.function(lambda x: tf.round(x * 3.0) / 3.0, jit_compile=True)(x)
print(rss() - before)
"""


def bench_xla_fixed_cost(rounds: int) -> list[float]:
    """The RSS (MiB) a fresh process gains by running its first XLA-compiled function, once per round."""
    return [
        int(subprocess.run([sys.executable, "-c", XLA_SCRIPT], capture_output=True, text=True, check=True)
            .stdout.strip().splitlines()[-1]) / 1024
        for _ in range(rounds)
    ]


def render(results: dict, when: str, where: str, command: str, raw: str) -> str:
    from bench.run import spread, step_ratio

    memory, step = results["memory"], results["train_step"]
    median = statistics.median
    xla = results.get("xla_fixed_mib")
    lines = [
        "## Memory and speed of a QAT step",
        "",
        f"Measured {when} on {where}. These machines are shared: load moves step times more than peaks, and",
        "even on an idle machine step ratios move by about ±0.1 between runs.",
        f"Command: `{command}` (raw numbers in `{raw}`). ResNet50 64×64, batch 32, `weights=None`.",
        "",
        "| figure | ours | target |",
        "|---|---|---|",
        f"| peak RSS of a QAT fit ÷ FP32 fit (separate processes, VmHWM) | **{memory['ratio_of_medians']:.2f}** "
        f"({median(memory['qat_peak_mib']):.0f} MiB vs {median(memory['fp32_peak_mib']):.0f} MiB, "
        f"n={len(memory['qat_peak_mib'])} each) | ≤ {MEMORY_TARGET} |",
    ]
    if "baseline_ratio_of_medians" in memory:
        lines.append(
            f"| the same before this change (`{results.get('baseline', 'baseline')}`) | "
            f"{memory['baseline_ratio_of_medians']:.2f} ({median(memory['baseline_qat_peak_mib']):.0f} MiB vs "
            f"{median(memory['baseline_fp32_peak_mib']):.0f} MiB) | — |"
        )
    if "tensor_ratio_of_medians" in memory:
        lines.append(
            f"| peak of the tensors held at once (TensorFlow's CPU allocator), QAT ÷ FP32 | "
            f"{memory['tensor_ratio_of_medians']:.2f} ({median(memory['qat_tensor_peak_mib']):.0f} MiB vs "
            f"{median(memory['fp32_tensor_peak_mib']):.0f} MiB) | — |"
        )
    if "qat_stored_ratio_of_medians" in memory:
        lines.append(
            "| peak RSS of a QAT fit storing its quantized inputs and kernels for the backward (recompute off) ÷ FP32 | "
            f"{memory['qat_stored_ratio_of_medians']:.2f} ({median(memory['qat_stored_peak_mib']):.0f} MiB; tensors "
            f"{memory['qat_stored_tensor_ratio_of_medians']:.2f}, {median(memory['qat_stored_tensor_peak_mib']):.0f} MiB)"
            " | — |"
        )
    if xla:
        lines.append(
            f"| RSS a process gains when it runs its first XLA function (a small one), a fixed cost of the weight QDQ | "
            f"{median(xla):.0f} MiB (n={len(xla)}) | — |"
        )
    lines += [
        f"| QAT train step ÷ FP32 train step (calibrated first) | {step_ratio(step, 'qat')} | ≤ {STEP_TARGET} |",
        f"| the same, QAT from unobserved ranges | {step_ratio(step, 'qat_uncalibrated', bold=False)} | — |",
    ]
    if "qat_stored_s" in step:
        lines.append(
            "| QAT train step storing its quantized inputs and kernels for the backward (recompute off) ÷ FP32 | "
            f"{step_ratio(step, 'qat_stored', bold=False)} | — |"
        )
    lines += [
        "",
        f"Step times (s): FP32 {spread(step['fp32_s'])}; QAT {spread(step['qat_s'])}; "
        f"QAT uncalibrated {spread(step['qat_uncalibrated_s'])}"
        + (f"; QAT storing {spread(step['qat_stored_s'])}." if "qat_stored_s" in step else "."),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, not for the record)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "memory.json"), help="where the raw numbers go")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure the peaks of, side by side")
    parser.add_argument("--memory-rounds", type=int, help="fit processes per kind (default 3, --quick 1)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    args = parser.parse_args(argv)
    raw = Path(args.json)
    if raw.exists() and not args.force:
        print(f"error: {raw} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    if args.baseline is not None and not (args.baseline / "qdq_toolkit").is_dir():
        print(f"error: --baseline {args.baseline} holds no qdq_toolkit package", file=sys.stderr)
        return 1
    from bench.run import _shown, bench_peaks, bench_train_step, machine
    from bench.sections import write_section

    # Many short step rounds: the machine's speed drifts, and each round's ratio is taken between neighbours.
    memory_rounds, step_rounds, steps = (1, 2, 2) if args.quick else (3, 15, 2)
    memory_rounds = args.memory_rounds or memory_rounds
    results: dict = {"memory": bench_peaks(memory_rounds, args.baseline, stored=True)}
    print("XLA's fixed cost ...", file=sys.stderr, flush=True)
    results["xla_fixed_mib"] = bench_xla_fixed_cost(memory_rounds)
    if args.baseline is not None:
        results["baseline"] = str(args.baseline)
    print("train step ...", file=sys.stderr, flush=True)
    results["train_step"] = bench_train_step(step_rounds, steps, stored=True)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m bench.memory" + (" --quick" if args.quick else "")
    if args.memory_rounds:
        command += f" --memory-rounds {args.memory_rounds}"
    if args.baseline is not None:
        command += f" --baseline {args.baseline}"
    from qdq_toolkit._files import write_atomically

    write_atomically(
        raw, json.dumps({"date": when, "machine": machine(), "results": results}, indent=2).encode(), force=args.force
    )
    text = render(results, when, machine(), command, _shown(raw))
    if not args.quick:  # a smoke run is not for the record
        write_section("memory", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
