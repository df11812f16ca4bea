"""The memory and the speed of a QAT training step against FP32 (ResNet50 64x64, batch 32, ``weights=None``).

1. Peak memory: one fit (256 images, batch 32, 1 epoch) per process, FP32 and QAT processes alternating; the peak
   is the process's own VmHWM (as ``bench.run.bench_memory``). Ratio of the medians.
2. Train step: FP32 and QAT (calibrated first) ``train_on_batch`` rounds interleaved in one process
   (``bench.run.bench_train_step``); ratio of the medians, with the per-round spread.

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
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
MEMORY_TARGET = 1.15
STEP_TARGET = 1.10


def bench_peaks(rounds: int, baseline: Path | None) -> dict:
    roots = {"": ROOT} | ({"baseline_": baseline} if baseline else {})
    from bench.run import peak_mib

    peaks: dict[str, list[float]] = {}
    for index in range(rounds):
        for prefix, root in roots.items():
            for kind in ("fp32", "qat"):
                print(f"memory round {index + 1}/{rounds}: {prefix}{kind} ...", file=sys.stderr, flush=True)
                peaks.setdefault(f"{prefix}{kind}_peak_mib", []).append(peak_mib(kind, root))
    result = dict(peaks)
    for prefix in roots:
        qat, fp32 = peaks[f"{prefix}qat_peak_mib"], peaks[f"{prefix}fp32_peak_mib"]
        result[f"{prefix}ratio_of_medians"] = statistics.median(qat) / statistics.median(fp32)
    return result


def render(results: dict, when: str, where: str, command: str, raw: str) -> str:
    from bench.run import spread

    memory, step = results["memory"], results["train_step"]
    median = statistics.median
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
    per_round = step["qat_ratio_per_round"]
    lines += [
        f"| QAT train step ÷ FP32 train step (calibrated first, interleaved) | **{step['qat_ratio_of_medians']:.2f}** "
        f"(per-round {min(per_round):.2f}–{max(per_round):.2f}) | ≤ {STEP_TARGET} |",
        f"| the same, QAT from unobserved ranges | {step['qat_uncalibrated_ratio_of_medians']:.2f} | — |",
        "",
        f"Step times (s): FP32 {spread(step['fp32_s'])}; QAT {spread(step['qat_s'])}; "
        f"QAT uncalibrated {spread(step['qat_uncalibrated_s'])}.",
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
    from bench.run import _shown, bench_train_step, machine
    from bench.sections import write_section

    memory_rounds, step_rounds, steps = (1, 2, 2) if args.quick else (3, 7, 5)
    memory_rounds = args.memory_rounds or memory_rounds
    results: dict = {"memory": bench_peaks(memory_rounds, args.baseline)}
    if args.baseline is not None:
        results["baseline"] = str(args.baseline)
    print("train step ...", file=sys.stderr, flush=True)
    results["train_step"] = bench_train_step(step_rounds, steps)
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
