"""Fit the same quantized model on one device and under MirroredStrategy over 2 logical CPUs; print JSON.

Run as a separate process: logical devices must be configured before TensorFlow initialises.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from qdq_toolkit import quantize_model, quantized_layers  # noqa: E402

method = sys.argv[1] if len(sys.argv) > 1 else "ema"


def build():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


rng = np.random.default_rng(0)
x = rng.normal(size=(128, 8, 8, 3)).astype(np.float32)
x[64:] *= 2.0  # later batches have wider ranges, so the order and the reduction matter
y = rng.integers(0, 3, size=128)


def fit(qmodel):
    qmodel.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)


def ranges(qmodel):
    out = {}
    for wrapper in quantized_layers(qmodel):
        for slot, var in wrapper.activation_ranges().items():
            out[f"{wrapper.name}/{slot}"] = float(var.numpy())
    return out


single = quantize_model(build(), activation_range=method)
fit(single)

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = quantize_model(build(), activation_range=method)
fit(mirrored)

per_replica = {}
for wrapper in quantized_layers(mirrored):
    for slot, var in wrapper.activation_ranges().items():
        values = [float(v.numpy()) for v in strategy.experimental_local_results(var.value)]
        per_replica[f"{wrapper.name}/{slot}"] = values

print(
    json.dumps(
        {
            "replicas": strategy.num_replicas_in_sync,
            "single": ranges(single),
            "mirrored": ranges(mirrored),
            "per_replica": per_replica,
            "first_layer_expected": float(np.abs(x).max()) if method == "max" else None,
        }
    )
)
