"""A small ResNet trained on the digits, and a copy of it that PTQ ruins: the models the sensitivity tests, the
benchmark and the README example use.

:func:`inject_outlier_channel` makes a realistic PTQ failure without changing what the model computes: it scales
one channel of a BatchNormalization's output up by a large factor (its gamma and beta), and the matching input
channel of the convolution that reads it (through a ReLU, which commutes with a positive scale) down by the same
factor. The FP32 outputs stay the same, but that convolution's per-tensor input range is now set by the one huge
channel, so int8 rounds every other channel to a few levels -- the outlier-channel failure known from real
networks (e.g. the activation outliers of Bondarenko et al., 2021, "Understanding and Overcoming the Challenges of
Efficient Transformer Quantization").

    python -m examples.sensitivity_digits            # trains, injects, prints the sensitivity table
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from qdq_toolkit.data import DigitsData, load_digits  # noqa: E402

#: (filters, stride) of each residual block: the default two blocks give 6 convolutions and a Dense (7 compute ops);
#: ``BENCH_BLOCKS`` gives 10 convolutions and a Dense (11), so one layer left in float still leaves 91 % INT8.
DEFAULT_BLOCKS = ((16, 1), (32, 2))
BENCH_BLOCKS = ((16, 1), (16, 1), (32, 2), (32, 1))


def small_resnet(input_shape=(8, 8, 1), num_classes: int = 10, blocks=DEFAULT_BLOCKS) -> keras.Model:
    """Stem conv, residual blocks (conv-BN-ReLU-conv-BN + shortcut; a 1x1 projection where the shape changes),
    global average pooling, dense. BatchNorm momentum 0.9: a digits run is a few hundred steps, too few for the
    default 0.99 moving statistics to catch up."""
    layers = keras.layers

    def batchnorm(name):
        return layers.BatchNormalization(momentum=0.9, name=name)

    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(blocks[0][0], 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.ReLU(name="stem_relu")(batchnorm("stem_bn")(x))
    for block, (filters, stride) in enumerate(blocks, start=1):
        shortcut = x
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"block{block}_conv1")(x)
        y = layers.ReLU(name=f"block{block}_relu1")(batchnorm(f"block{block}_bn1")(y))
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv2")(y)
        y = batchnorm(f"block{block}_bn2")(y)
        if stride != 1 or filters != x.shape[-1]:
            shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"block{block}_proj")(x)
            shortcut = batchnorm(f"block{block}_proj_bn")(shortcut)
        x = layers.ReLU(name=f"block{block}_out")(layers.Add(name=f"block{block}_add")([y, shortcut]))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name="digits_resnet")


def train(data: DigitsData, *, epochs: int = 40, seed: int = 0, blocks=DEFAULT_BLOCKS) -> keras.Model:
    """The FP32 model trained on the digits' training split (Adam with cosine decay)."""
    keras.utils.set_random_seed(seed)
    model = small_resnet(data.input_shape, data.num_classes, blocks)
    steps = epochs * int(np.ceil(len(data.train) / 64))
    model.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(data.train.images, data.train.labels, epochs=epochs, batch_size=64, verbose=0)
    return model


def inject_outlier_channel(
    model: keras.Model, batchnorm: str = "block1_bn1", conv: str = "block1_conv2", channel: int = 0, factor: float = 500.0
) -> keras.Model:
    """A copy of ``model`` computing the same function, with channel ``channel`` of ``batchnorm``'s output scaled by
    ``factor`` and ``conv``'s matching input weights divided by it (``batchnorm -> ReLU -> conv``)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    bn, target = copy.get_layer(batchnorm), copy.get_layer(conv)
    gamma, beta = bn.gamma.numpy(), bn.beta.numpy()
    gamma[channel] *= factor
    beta[channel] *= factor
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    kernel = target.kernel.numpy()
    kernel[..., channel, :] /= factor
    target.kernel.assign(kernel)
    return copy


def main(argv: list[str] | None = None) -> int:
    from qdq_toolkit import analyze_sensitivity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    data = load_digits(test_fraction=0.25)
    broken = inject_outlier_channel(train(data, epochs=args.epochs))
    print(analyze_sensitivity(broken, (data.test.images, data.test.labels)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
