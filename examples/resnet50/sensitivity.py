"""The sensitivity plot and table of the ResNet-50 demo (CPU mode): which layers of the digits ResNet50 lose most
under int8, with ``ResNetV1QDQCase`` placement as the workflow quantizes it.

    python -m examples.resnet50.sensitivity                      # trains the demo's FP32 ResNet50 (as make demo)
    python -m examples.resnet50.sensitivity --fp32 runs/resnet50-cpu/fp32.keras   # or reuses the workflow's
    python -m examples.resnet50.sensitivity --arch small_cnn     # the workflow's quick CNN (seconds, not minutes)

Writes ``sensitivity.png`` and ``sensitivity.md`` (and ``sensitivity.json``) to ``--output-dir`` (default
``examples/resnet50/``; existing files only with ``--force``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.resnet50.sensitivity", description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, help="the workflow's fp32.keras (default: train it as the workflow does)")
    parser.add_argument("--arch", choices=("resnet50", "small_cnn"), default="resnet50",
                        help="the workflow's CPU-mode model to train when --fp32 is not given (default resnet50)")
    parser.add_argument("--output-dir", type=Path, default=HERE)
    parser.add_argument("--output-metrics", type=int, default=5, help="model-level figures for the N most sensitive layers")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)

    import keras

    from custom_cases import ResNetV1QDQCase
    from examples.resnet50 import workflow
    from qdq_toolkit import analyze_sensitivity
    from qdq_toolkit._files import check_output_path
    from qdq_toolkit.data import load_digits

    stem = "sensitivity" if args.arch == "resnet50" or args.fp32 else f"sensitivity_{args.arch}"
    outputs = {suffix: args.output_dir / f"{stem}.{suffix}" for suffix in ("png", "md", "json")}
    for path in outputs.values():
        check_output_path(path, args.force)
    config = workflow.cpu_config(force=True, arch=args.arch)
    workflow.make_reproducible(config)
    if args.fp32 is not None:
        model = keras.models.load_model(args.fp32)
    else:
        print(f"training the demo's FP32 {args.arch} on the digits (as the workflow does)", file=sys.stderr)
        model = workflow.baseline_model(config, workflow.load_data(config), say=lambda m: print(m, file=sys.stderr))
    digits = load_digits(image_size=config.image_size, channels=config.channels, seed=config.seed, test_fraction=0.25)
    report = analyze_sensitivity(
        model,
        (digits.test.images, digits.test.labels),
        custom_qdq_cases=[ResNetV1QDQCase()],
        calibration_method=config.calibration_method,
        output_metrics=args.output_metrics,
        progress=sys.stderr.isatty(),
    )
    report.write_plot(outputs["png"], force=args.force, max_layers=30)
    report.write_markdown(outputs["md"], force=args.force)
    report.write_json(outputs["json"], force=args.force)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
