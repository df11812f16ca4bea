"""Quick start: quantization-aware training of a small CNN on real data, on CPU, in about ten seconds.

Trains a small CNN on scikit-learn's handwritten digits (1797 real 8x8 images shipped inside scikit-learn, no
download), quantizes it with ``quantize_model``, fine-tunes it briefly at a low learning rate, and prints the FP32
and QAT test accuracy::

    python -m examples.digits_qat
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from qdq_toolkit import quantize_model  # noqa: E402
from qdq_toolkit.data import DigitsData, load_digits  # noqa: E402


def small_cnn(input_shape: tuple[int, ...], num_classes: int = 10) -> keras.Model:
    """Conv-BN-ReLU x3 with a max pool, global average pooling and a dense classifier."""
    layers = keras.layers
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for index, filters in enumerate((32, 32, 64)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = layers.BatchNormalization(name=f"bn{index}")(x)
        x = layers.ReLU(name=f"relu{index}")(x)
        if index == 1:
            x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name="digits_cnn")


@dataclass(frozen=True)
class Result:
    fp32_model: keras.Model
    qat_model: keras.Model
    fp32_accuracy: float
    qat_accuracy: float


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def train_fp32(data: DigitsData, epochs: int = 30, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = small_cnn(data.input_shape, data.num_classes)
    _compile(model, 3e-3)
    model.fit(data.train.images, data.train.labels, epochs=epochs, batch_size=64, verbose=0)
    return model


def fine_tune_qat(model: keras.Model, data: DigitsData, epochs: int = 5, learning_rate: float = 1e-4) -> keras.Model:
    """Quantize (default placement) and fine-tune a few epochs at a learning rate well below the FP32 one."""
    qat_model = quantize_model(model)
    _compile(qat_model, learning_rate)
    qat_model.fit(data.train.images, data.train.labels, epochs=epochs, batch_size=64, verbose=0)
    return qat_model


def run(fp32_epochs: int = 30, qat_epochs: int = 5, seed: int = 0) -> Result:
    data = load_digits(test_fraction=0.25, seed=seed)
    fp32 = train_fp32(data, fp32_epochs, seed)
    qat = fine_tune_qat(fp32, data, qat_epochs)
    accuracy = [m.evaluate(data.test.images, data.test.labels, verbose=0)[1] for m in (fp32, qat)]
    return Result(fp32, qat, float(accuracy[0]), float(accuracy[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32-epochs", type=int, default=30)
    parser.add_argument("--qat-epochs", type=int, default=5)
    args = parser.parse_args(argv)
    result = run(args.fp32_epochs, args.qat_epochs)
    print(f"{'model':<10} {'test accuracy':>14}")
    print(f"{'FP32':<10} {result.fp32_accuracy:>13.2%}")
    print(f"{'QAT INT8':<10} {result.qat_accuracy:>13.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
