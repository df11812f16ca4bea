"""One worker of a 2-worker MultiWorkerMirroredStrategy QAT fit on 127.0.0.1; prints JSON on its last line.

    python tests/scripts/multiworker_fit.py INDEX PORT0,PORT1 OUTDIR [ema|max]

Both workers train the same quantized model with ``qdq_toolkit.distribute.fit_distributed`` on the same global
batches (each worker gets half of each one), then each trains a fresh copy in this process alone (no strategy)
on the same global batches, for comparison. Only the chief exports the distributed model to ``OUTDIR/qat.onnx``.
"""

import json
import os
import sys
from pathlib import Path

index, ports, outdir = int(sys.argv[1]), sys.argv[2].split(","), Path(sys.argv[3])
method = sys.argv[4] if len(sys.argv) > 4 else "max"
os.environ["TF_CONFIG"] = json.dumps(
    {
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    }
)

import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()  # first: it configures the collectives at start-up

import keras  # noqa: E402
import numpy as np  # noqa: E402

from qdq_toolkit import quantize_model, quantized_layers  # noqa: E402
from qdq_toolkit.distribute import fit_distributed, is_chief  # noqa: E402

GLOBAL_BATCH = 32


def build():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return quantize_model(
        keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="net"), activation_range=method
    )


rng = np.random.default_rng(0)
x = rng.normal(size=(128, 8, 8, 3)).astype(np.float32)
x[64:] *= 2.0  # later batches have wider ranges: the order and the reduction matter
y = rng.integers(0, 3, size=128)
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH, drop_remainder=True)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def state(model):
    return {
        f"{w.name}/{slot}": [float(amax.numpy()), float(w._ranges[slot][1].numpy())]
        for w in quantized_layers(model)
        for slot, amax in w.activation_ranges().items()
    }


with strategy.scope():
    distributed = build()
    optimizer = keras.optimizers.SGD(0.05)
fit_distributed(
    distributed, dataset, optimizer=optimizer, loss=loss, global_batch_size=GLOBAL_BATCH, epochs=2
)

alone = build()
fit_distributed(
    alone,
    dataset,
    optimizer=keras.optimizers.SGD(0.05),
    loss=loss,
    global_batch_size=GLOBAL_BATCH,
    epochs=2,
    strategy=tf.distribute.get_strategy(),
)

result = {
    "index": index,
    "chief": is_chief(strategy),
    "replicas": strategy.num_replicas_in_sync,
    "distributed": state(distributed),
    "alone": state(alone),
    "first_layer_expected": float(np.abs(x).max()),
    "max_weight_rel_diff": max(
        float(np.max(np.abs(a.numpy() - b.numpy())) / max(float(np.max(np.abs(b.numpy()))), 1e-30))
        for a, b in zip(distributed.trainable_weights, alone.trainable_weights, strict=True)
    ),
}
if is_chief(strategy):  # every worker holds the same model: only the chief writes files
    import onnx

    from qdq_toolkit.export import keras_to_onnx
    from qdq_toolkit.export.onnx import onnx_scales

    result["scales"] = onnx_scales(onnx.load(keras_to_onnx(distributed, outdir / "qat.onnx").path))
    result["alone_scales"] = onnx_scales(onnx.load(keras_to_onnx(alone, outdir / "alone.onnx").path))
print(json.dumps(result), flush=True)
