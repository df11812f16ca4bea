"""Transformer benchmark: a 4-layer BERT (keras-hub BertBackbone, hidden 256, sequence 128, batch 8) + a small head.

Figures, measured side by side in one run (CPU):

1. QAT train step / FP32 train step: FP32 and QAT (calibrated first) rounds interleaved, medians of the rounds
   with their min-max spread; target <= 1.25.
2. ``quantize_model`` of the model: median wall time of repeated runs after one warm-up; target <= 1 s.

    python -m bench.transformer [--quick] [--force]

Raw numbers go to ``bench/transformer.json`` (never over an existing file without ``--force``); the Markdown
section for BENCHMARKS.md is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "bench" / "transformer.json"
LAYERS, HIDDEN, HEADS, INTERMEDIATE, SEQUENCE, BATCH, VOCAB = 4, 256, 4, 1024, 128, 8, 1000
TRAIN_STEP_TARGET, QUANTIZE_TARGET_S = 1.25, 1.0


def bert_classifier():
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        max_sequence_length=SEQUENCE,
    )
    names = ("token_ids", "segment_ids", "padding_mask")
    inputs = {name: keras.Input((SEQUENCE,), dtype="int32", name=name) for name in names}
    pooled = backbone(inputs)["pooled_output"]
    return keras.Model(inputs, keras.layers.Dense(2, name="classifier")(pooled), name="bert_classifier")


def batch():
    import numpy as np

    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(1, VOCAB, (BATCH, SEQUENCE)).astype("int32"),
        "segment_ids": np.zeros((BATCH, SEQUENCE), "int32"),
        "padding_mask": np.ones((BATCH, SEQUENCE), "int32"),
    }
    return x, rng.integers(0, 2, BATCH)


def bench_train_step(rounds: int, steps: int) -> dict:
    import keras

    from qdq_toolkit import calibrate, quantize_model

    x, y = batch()
    fp32 = bert_classifier()
    qat = quantize_model(fp32)
    calibrate(qat, [x], progress=False)
    models = {"fp32": fp32, "qat": qat}
    for model in models.values():
        model.compile(keras.optimizers.Adam(1e-5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for _ in range(3):  # trace and warm up
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    return {
        "fp32_s": times["fp32"],
        "qat_s": times["qat"],
        "ratio_of_medians": statistics.median(times["qat"]) / statistics.median(times["fp32"]),
        "ratio_per_round": [q / f for q, f in zip(times["qat"], times["fp32"], strict=True)],
    }


def bench_quantize(repeats: int) -> dict:
    import keras

    from qdq_toolkit import quantize_model

    model = bert_classifier()
    quantize_model(model)  # warm-up
    seconds, clone_seconds = [], []
    for _ in range(repeats):  # interleaved with Keras' own clone_model, the floor of any cloning quantizer
        start = time.perf_counter()
        quantize_model(model)
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        keras.models.clone_model(model, clone_function=lambda layer: layer.__class__.from_config(layer.get_config()))
        clone_seconds.append(time.perf_counter() - start)
    return {"quantize_model_s": seconds, "keras_clone_model_s": clone_seconds}


def render(results: dict, when: str, where: str, command: str) -> str:
    from bench.run import spread

    train, quantize = results["train_step"], results["quantize"]
    ratio = train["ratio_of_medians"]
    quantize_s = statistics.median(quantize["quantize_model_s"])
    clone_s = statistics.median(quantize["keras_clone_model_s"])
    lines = [
        "## Transformer (4-layer BERT)",
        "",
        f"Measured {when} on {where}. Command: `{command}`. The machine is shared with other jobs: step times "
        "vary between runs, which is why FP32 and QAT rounds are interleaved and medians are reported.",
        "",
        f"Model: keras-hub `BertBackbone` ({LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, intermediate "
        f"{INTERMEDIATE}, sequence {SEQUENCE}, built from its config) + Dense(2) on the pooled output; batch {BATCH}; "
        "QAT = `quantize_model` default placement (attention, projections and FFN Dense quantized; LayerNorm, "
        "Softmax, GELU, residual adds float), calibrated first; Adam.",
        "",
        "| figure | measured | target | |",
        "|---|---|---|---|",
        f"| QAT train step ÷ FP32 train step (ratio of medians) | **{ratio:.3f}** | ≤ {TRAIN_STEP_TARGET} | "
        f"{'met' if ratio <= TRAIN_STEP_TARGET else 'NOT met'} |",
        f"| `quantize_model` (s, median) | **{quantize_s:.3f}** | ≤ {QUANTIZE_TARGET_S} | "
        f"{'met' if quantize_s <= QUANTIZE_TARGET_S else 'NOT met'} |",
        f"| for reference: `keras.models.clone_model` of the same model (s, median) | {clone_s:.3f} | | |",
        "",
        f"FP32 step (s): {spread(train['fp32_s'])}; QAT step (s): {spread(train['qat_s'])}; per-round ratios: "
        + ", ".join(f"{r:.3f}" for r in train["ratio_per_round"])
        + f". `quantize_model` runs (s): {', '.join(f'{s:.3f}' for s in quantize['quantize_model_s'])}. "
        "Raw numbers: `bench/transformer.json`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, not for the record)")
    parser.add_argument("--force", action="store_true", help="overwrite bench/transformer.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench.run import machine
    from bench.sections import write_section
    from qdq_toolkit._files import check_output_path, write_atomically

    try:
        check_output_path(RAW, args.force)
    except FileExistsError as exc:
        print(f"error: {exc}")
        return 1
    rounds, steps, repeats = (2, 2, 2) if args.quick else (11, 4, 5)
    print(f"train steps: {rounds} interleaved rounds of {steps} steps ...", file=sys.stderr)
    results = {"train_step": bench_train_step(rounds, steps)}
    print(f"quantize_model: {repeats} runs ...", file=sys.stderr)
    results["quantize"] = bench_quantize(repeats)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["when"], results["machine"] = when, machine()
    write_atomically(RAW, json.dumps(results, indent=2) + "\n", force=args.force)
    command = "python -m bench.transformer" + (" --quick" if args.quick else "")
    text = render(results, when, results["machine"], command)
    if not args.quick:  # a smoke run is not for the record
        write_section("transformer", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
