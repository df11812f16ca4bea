"""The memory-saving training path (recompute the QDQ in the backward pass) has the gradients of the plain one."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from qdq_toolkit import quantize_model, quantized_layers
from qdq_toolkit.calibration import calibrate

INPUT = np.random.default_rng(0).normal(size=(4, 9, 9, 3))
UPSTREAM = np.random.default_rng(1).normal(size=(4, 3))


def build(dtype=None):
    keras.utils.set_random_seed(11)
    inputs = keras.Input((9, 9, 3), dtype=dtype)
    x = keras.layers.Conv2D(5, 3, name="conv", dtype=dtype)(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise", dtype=dtype)(x)
    x = keras.layers.Conv2DTranspose(4, 3, strides=2, name="transpose", dtype=dtype)(x)
    # an epilogue activation: recomputing would redo the conv, so this one keeps the plain path
    x = keras.layers.Conv2D(4, 1, activation="relu", name="conv_relu", dtype=dtype)(x)
    x = keras.layers.Flatten(dtype=dtype)(x)
    outputs = keras.layers.Dense(3, name="dense", dtype=dtype)(x)
    return quantize_model(keras.Model(inputs, outputs), activation_range="max")


def gradients_and_ranges(recompute: bool, graph: bool, dtype=None, calibrated=False):
    model = build(dtype)
    wrappers = quantized_layers(model)
    x = tf.constant(INPUT, dtype=dtype or "float32")
    if calibrated:  # observed ranges when the step is traced: the path without the first-step select
        calibrate(model, x.numpy(), batch_size=4, progress=False)
    if not recompute:
        for wrapper in wrappers:
            wrapper.recompute_quantized_in_backward = False
    recomputing = sorted(w.name for w in wrappers if w._recomputes_in_backward())
    assert recomputing == (["quant_conv", "quant_dense", "quant_depthwise", "quant_transpose"] if recompute else [])
    upstream = tf.constant(UPSTREAM, dtype=model.outputs[0].dtype)

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(model(x, training=True), upstream.dtype) * upstream)
        return tape.gradient(loss, [x, *model.trainable_variables])

    gradients = (tf.function(step) if graph else step)(x)
    ranges = {w.name: [float(v.numpy()) for v in w.activation_ranges().values()] for w in wrappers}
    steps = {w.name: [float(s.numpy()) for _, s in w._ranges.values()] for w in wrappers}
    return [g.numpy() for g in gradients], ranges, steps


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("calibrated", [False, True], ids=["unobserved", "calibrated"])
def test_recomputing_backward_gives_the_gradients_and_ranges_of_the_plain_one(graph, calibrated):
    got, got_ranges, got_steps = gradients_and_ranges(True, graph, calibrated=calibrated)
    want, want_ranges, want_steps = gradients_and_ranges(False, graph, calibrated=calibrated)
    assert got_ranges == want_ranges
    assert got_steps == want_steps
    assert all(s == [2.0 if calibrated else 1.0] for s in got_steps.values())  # updated once per step
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert all(np.abs(g).max() > 0 for g in got)


@pytest.mark.parametrize("dtype", ["float64", "mixed_bfloat16"])
def test_recomputing_backward_under_other_dtypes(dtype):
    """A float64 model quantizes in float64; a mixed-policy one in float32 with its layers computing in bfloat16."""
    previous = keras.config.dtype_policy()
    try:
        if dtype.startswith("mixed"):
            keras.config.set_dtype_policy(dtype)
            dtype_arg, tolerance = None, 1e-2
        else:
            dtype_arg, tolerance = dtype, 1e-12
        got, got_ranges, _ = gradients_and_ranges(True, True, dtype_arg)
        want, want_ranges, _ = gradients_and_ranges(False, True, dtype_arg)
    finally:
        keras.config.set_dtype_policy(previous)
    assert got_ranges == want_ranges
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=tolerance, atol=tolerance)
    assert all(np.abs(g).max() > 0 for g in got)
