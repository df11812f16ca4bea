"""A small Vision Transformer on real digits: FP32 training, QAT fine-tuning, ONNX export, ONNX Runtime accuracy.

The 8x8 images of scikit-learn's handwritten digits (``qdq_toolkit.data.load_digits``, nothing downloaded) are cut
into 2x2 patches (16 tokens) by a strided Conv2D patch embedding, as in ViT; learned position embeddings are
added; pre-LayerNorm transformer blocks (MultiHeadAttention, then a GELU MLP) follow; the class comes from the
mean token. Then::

    FP32 fit -> quantize_model (default placement) -> calibrate (max) -> QAT fine-tune at a low learning rate
             -> keras_to_onnx (opset 13, TensorRT placement checked) -> ONNX Runtime accuracy and agreement

Run it from the repository root::

    python -m examples.vit_digits.workflow [--epochs 60] [--qat-epochs 6] [--json results.json] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from qdq_toolkit import calibrate, quantize_model  # noqa: E402
from qdq_toolkit._files import check_output_path, write_atomically  # noqa: E402
from qdq_toolkit.data import DigitsData, load_digits  # noqa: E402
from qdq_toolkit.export.onnx import keras_to_onnx  # noqa: E402

PATCH = 2


class PositionEmbedding(keras.layers.Layer):
    """A learned embedding per token position, added to the tokens (what keras-hub's PositionEmbedding does)."""

    def build(self, input_shape):
        self.positions = self.add_weight(
            name="positions", shape=tuple(input_shape[1:]), initializer=keras.initializers.RandomNormal(stddev=0.02)
        )

    def call(self, tokens):
        return tokens + self.positions


def vit(input_shape=(8, 8, 1), num_classes: int = 10, hidden: int = 32, heads: int = 4, depth: int = 2) -> keras.Model:
    """Patch embedding (Conv2D, stride 2) -> position embedding -> ``depth`` pre-LN blocks -> LN -> mean -> Dense."""
    layers = keras.layers
    images = keras.Input(input_shape, name="image")
    x = layers.Conv2D(hidden, PATCH, strides=PATCH, name="patch_embedding")(images)
    x = layers.Reshape((-1, hidden), name="tokens")(x)
    x = PositionEmbedding(name="position_embedding")(x)
    for block in range(depth):
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{block}_ln1")(x)
        h = layers.MultiHeadAttention(heads, hidden // heads, name=f"block{block}_attention")(h, h)
        x = layers.Add(name=f"block{block}_residual1")([x, h])
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{block}_ln2")(x)
        h = layers.Dense(2 * hidden, activation="gelu", name=f"block{block}_mlp1")(h)
        h = layers.Dense(hidden, name=f"block{block}_mlp2")(h)
        x = layers.Add(name=f"block{block}_residual2")([x, h])
    x = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = layers.GlobalAveragePooling1D(name="mean_token")(x)
    return keras.Model(images, layers.Dense(num_classes, name="logits")(x), name="vit_digits")


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


@dataclass(frozen=True)
class Result:
    fp32_keras_accuracy: float
    fp32_onnx_accuracy: float
    qat_keras_accuracy: float
    qat_onnx_accuracy: float
    qat_onnx_keras_agreement: float
    placement_violations: int
    test_images: int
    seconds: float

    @property
    def qat_minus_fp32_pp(self) -> float:
        return 100.0 * (self.qat_onnx_accuracy - self.fp32_keras_accuracy)

    def to_markdown(self) -> str:
        rows = [
            ("FP32", "Keras", self.fp32_keras_accuracy, ""),
            ("FP32", "ONNX Runtime", self.fp32_onnx_accuracy, ""),
            ("QAT INT8", "Keras", self.qat_keras_accuracy, ""),
            ("QAT INT8", "ONNX Runtime", self.qat_onnx_accuracy, f"{self.qat_minus_fp32_pp:+.2f} pp vs FP32"),
        ]
        lines = ["| model | runtime | top-1 | |", "|---|---|---|---|"]
        lines += [f"| {model} | {runtime} | {100 * acc:.2f} % | {note} |" for model, runtime, acc, note in rows]
        lines.append(
            f"\nONNX Runtime vs Keras QAT top-1 agreement: **{100 * self.qat_onnx_keras_agreement:.2f} %** "
            f"on {self.test_images} test images (target >= 99 %); QAT INT8 (ONNX Runtime) minus FP32: "
            f"**{self.qat_minus_fp32_pp:+.2f} pp** (target >= -1 pp); TensorRT placement violations: "
            f"{self.placement_violations}."
        )
        return "\n".join(lines)


def _onnx_predictions(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0].argmax(axis=1)


def run(
    epochs: int = 60,
    qat_epochs: int = 6,
    seed: int = 0,
    data: DigitsData | None = None,
    workdir: Path | None = None,
    hidden: int = 32,
    depth: int = 2,
) -> Result:
    """Train, fine-tune, export and evaluate; returns the accuracies (fractions) on the digits test split.

    ``hidden`` and ``depth`` size the model (the test runs a smaller one for fewer epochs).
    """
    start = time.perf_counter()
    data = data or load_digits(seed=seed, test_fraction=0.2)
    train, test = data.train, data.test
    keras.utils.set_random_seed(seed)
    fp32 = vit(data.input_shape, data.num_classes, hidden=hidden, heads=4, depth=depth)
    _compile(fp32, 3e-3)
    fp32.fit(train.images, train.labels, epochs=epochs, batch_size=64, verbose=0)

    qat = quantize_model(fp32)
    calibrate(qat, train.images[:512], "max", batch_size=128, progress=False)
    _compile(qat, 1e-4)
    qat.fit(train.images, train.labels, epochs=qat_epochs, batch_size=64, verbose=0)

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        fp32_path, qat_path = Path(tmp) / "fp32.onnx", Path(tmp) / "qat.onnx"
        keras_to_onnx(fp32, fp32_path)
        exported = keras_to_onnx(qat, qat_path)
        fp32_onnx = _onnx_predictions(fp32_path, test.images)
        qat_onnx = _onnx_predictions(qat_path, test.images)
    qat_keras = qat.predict(test.images, batch_size=256, verbose=0).argmax(axis=1)
    fp32_keras = fp32.predict(test.images, batch_size=256, verbose=0).argmax(axis=1)
    labels = test.labels
    return Result(
        fp32_keras_accuracy=float((fp32_keras == labels).mean()),
        fp32_onnx_accuracy=float((fp32_onnx == labels).mean()),
        qat_keras_accuracy=float((qat_keras == labels).mean()),
        qat_onnx_accuracy=float((qat_onnx == labels).mean()),
        qat_onnx_keras_agreement=float((qat_onnx == qat_keras).mean()),
        placement_violations=len(exported.violations),
        test_images=len(labels),
        seconds=time.perf_counter() - start,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="FP32 training epochs (default 60)")
    parser.add_argument("--qat-epochs", type=int, default=6, help="QAT fine-tuning epochs (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument("--force", action="store_true", help="overwrite the --json file if it exists")
    args = parser.parse_args(argv)
    try:
        if args.json is not None:
            check_output_path(args.json, args.force)
        print(f"training FP32 ({args.epochs} epochs), then QAT ({args.qat_epochs} epochs), exporting, evaluating ...")
        result = run(args.epochs, args.qat_epochs, args.seed)
        print(result.to_markdown())
        print(f"\n({result.seconds:.0f} s)")
        if args.json is not None:
            write_atomically(args.json, json.dumps(asdict(result), indent=2) + "\n", force=args.force)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        print("error: interrupted")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
