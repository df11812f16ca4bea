"""The memory-saving training path (recompute the QDQ in the backward pass) has the gradients of the plain one."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from qdq_toolkit import quantize_model, quantized_layers


def build():
    keras.utils.set_random_seed(11)
    inputs = keras.Input((9, 9, 3))
    x = keras.layers.Conv2D(5, 3, name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.Conv2DTranspose(4, 3, strides=2, name="transpose")(x)
    x = keras.layers.Conv2D(4, 1, activation="relu", name="conv_relu")(x)  # recomputing would redo the conv: not
    x = keras.layers.Flatten()(x)
    return quantize_model(keras.Model(inputs, keras.layers.Dense(3, name="dense")(x)), activation_range="max")


@pytest.mark.parametrize("graph", [False, True])
def test_recomputing_backward_gives_the_gradients_and_ranges_of_the_plain_one(graph):
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 9, 9, 3)).astype(np.float32))
    upstream = tf.constant(np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32))
    results = []
    for recompute in (True, False):
        model = build()
        wrappers = quantized_layers(model)
        if not recompute:
            for wrapper in wrappers:
                wrapper.recompute_quantized_in_backward = False
        recomputing = sorted(w.name for w in wrappers if w._recomputes_in_backward())
        assert recomputing == ([] if not recompute else ["quant_conv", "quant_dense", "quant_depthwise", "quant_transpose"])

        def step(x, model=model):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(model(x, training=True) * upstream)
            return tape.gradient(loss, [x, *model.trainable_variables])

        gradients = (tf.function(step) if graph else step)(x)
        ranges = {w.name: [float(v.numpy()) for v in w.activation_ranges().values()] for w in wrappers}
        steps = {w.name: [float(s.numpy()) for _, s in w._ranges.values()] for w in wrappers}
        results.append(([g.numpy() for g in gradients], ranges, steps))
    (got, got_ranges, got_steps), (want, want_ranges, want_steps) = results
    assert got_ranges == want_ranges
    assert got_steps == want_steps and all(s == [1.0] for s in got_steps.values())  # updated once per step
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert all(np.abs(g).max() > 0 for g in got)
