"""Fit the same quantized model on one device and under MirroredStrategy over 2 logical CPUs; print JSON.

Run as a separate process: logical devices must be configured before TensorFlow initialises.

    python tests/scripts/mirrored_fit.py [ema|max|last|fixed] [--export DIR]

With ``--export DIR`` both trained models are also exported with ``keras_to_onnx`` (``DIR/single.onnx`` and
``DIR/mirrored.onnx``) and the JSON holds the QuantizeLinear scales of each file and the largest difference between
the two models' weights.
"""

import argparse
import json
from pathlib import Path

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from qdq_toolkit import quantize_model, quantized_layers  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("method", nargs="?", default="ema")
parser.add_argument("--export", type=Path, metavar="DIR", help="also export both models to ONNX in DIR")
args = parser.parse_args()
method = args.method


def build():
    keras.utils.set_random_seed(7)
    # Fixed input and model names: the two exports then have the same ONNX node names, so their scales can be
    # compared node by node.
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="net")


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

result = {
    "replicas": strategy.num_replicas_in_sync,
    "single": ranges(single),
    "mirrored": ranges(mirrored),
    "per_replica": per_replica,
    "first_layer_expected": float(np.abs(x).max()) if method == "max" else None,
}

if args.export is not None:
    import onnx

    from qdq_toolkit.export import keras_to_onnx
    from qdq_toolkit.export.onnx import onnx_scales

    result["scales"] = {}
    result["violations"] = {}
    for name, model in (("single", single), ("mirrored", mirrored)):
        exported = keras_to_onnx(model, args.export / f"{name}.onnx")
        result["scales"][name] = onnx_scales(onnx.load(exported.path))
        result["violations"][name] = len(exported.violations)
    relative = [
        float(np.max(np.abs(a.numpy() - b.numpy())) / max(float(np.max(np.abs(a.numpy()))), 1e-30))
        for a, b in zip(single.trainable_weights, mirrored.trainable_weights, strict=True)
    ]
    result["max_weight_rel_diff"] = max(relative)

print(json.dumps(result))
