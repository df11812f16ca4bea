"""The QDQ math against a NumPy reference of symmetric int8 quantize/dequantize."""

import numpy as np
import pytest
import tensorflow as tf

from qdq_toolkit import quantizers
from qdq_toolkit.quantizers import RangeTracking


def reference_qdq(x, amax, axis=None):
    """Symmetric narrow-range int8 QDQ in NumPy: clip(round_half_even(x / s), -127, 127) * s, s = amax / 127."""
    x = np.asarray(x, np.float64)
    amax = np.asarray(amax, np.float64)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        amax = amax.reshape(shape)
    scale = amax / 127.0
    return np.clip(np.round(x / scale), -127, 127) * scale


def test_per_tensor_matches_reference_and_clips():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, size=(4, 7, 5)).astype(np.float32)
    amax = 3.0
    got = quantizers.qdq_per_tensor(tf.constant(x), tf.constant(amax)).numpy()
    want = reference_qdq(x, amax)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got.max() <= amax + 1e-6 and got.min() >= -amax - 1e-6
    # at most 255 distinct levels, all multiples of the scale
    levels = np.unique(np.round(got / (amax / 127)))
    assert levels.min() >= -127 and levels.max() <= 127
    assert (x > amax).any() and (x < -amax).any(), "the sample must exercise clipping on both sides"


def test_per_channel_matches_reference_for_every_axis():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    kernel[..., 2] *= 100.0  # channels with very different ranges
    for axis in range(4):
        got = quantizers.qdq_per_channel(tf.constant(kernel), axis).numpy()
        amax = np.abs(kernel).max(axis=tuple(i for i in range(4) if i != axis))
        np.testing.assert_allclose(got, reference_qdq(kernel, amax, axis=axis), rtol=1e-6, atol=1e-6)


def test_dead_channel_keeps_a_positive_range():
    kernel = np.ones((2, 2, 3, 4), np.float32)
    kernel[..., 1] = 0.0
    amax = quantizers.per_channel_amax(tf.constant(kernel), -1).numpy()
    assert (amax > 0).all()
    got = quantizers.qdq_per_channel(tf.constant(kernel), -1).numpy()
    np.testing.assert_array_equal(got[..., 1], 0.0)
    np.testing.assert_allclose(got[..., 0], 1.0)


def test_activation_gradient_is_clipped_straight_through():
    x = tf.constant([-5.0, -1.0, 0.3, 1.9, 2.5])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizers.qdq_per_tensor(x, tf.constant(2.0))
    grad = tape.gradient(y, x).numpy()
    np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0, 1.0, 0.0])


def test_weight_gradient_is_straight_through():
    kernel = tf.Variable(np.random.default_rng(2).normal(size=(3, 5)).astype(np.float32))
    upstream = np.random.default_rng(3).normal(size=(3, 5)).astype(np.float32)
    with tf.GradientTape() as tape:
        y = quantizers.qdq_per_channel(kernel, -1)
        loss = tf.reduce_sum(y * upstream)
    np.testing.assert_allclose(tape.gradient(loss, kernel).numpy(), upstream)


@pytest.mark.parametrize(
    ("method", "expected"),
    [("last", [2.0, 5.0, 1.0]), ("max", [2.0, 5.0, 5.0]), ("fixed", [1.0, 1.0, 1.0])],
)
def test_range_update_rules(method, expected):
    tracking = RangeTracking(method)
    amax, steps = tf.constant(1.0), tf.constant(0.0)
    seen = []
    for observed in (2.0, 5.0, 1.0):
        amax = quantizers.updated_amax(amax, steps, tf.constant(observed), tracking)
        steps += 1
        seen.append(float(amax))
    np.testing.assert_allclose(seen, expected)


def test_ema_starts_from_first_batch_and_ignores_non_finite():
    tracking = RangeTracking("ema", decay=0.9)
    amax = quantizers.updated_amax(tf.constant(1.0), tf.constant(0.0), tf.constant(4.0), tracking)
    assert float(amax) == pytest.approx(4.0)
    amax = quantizers.updated_amax(amax, tf.constant(1.0), tf.constant(2.0), tracking)
    assert float(amax) == pytest.approx(0.9 * 4.0 + 0.1 * 2.0)
    for bad in (np.nan, np.inf):
        assert float(quantizers.updated_amax(amax, tf.constant(2.0), tf.constant(bad), tracking)) == pytest.approx(3.8)
    zero = quantizers.updated_amax(tf.constant(1.0), tf.constant(0.0), tf.constant(0.0), tracking)
    assert float(zero) > 0


def test_range_tracking_rejects_bad_settings():
    with pytest.raises(ValueError, match="Use one of ema, max, last, fixed"):
        RangeTracking("minmax")
    with pytest.raises(ValueError, match="between 0 and 1"):
        RangeTracking("ema", decay=1.0)
    with pytest.raises(TypeError, match="activation_range"):
        RangeTracking.from_config(3)


def test_training_weight_path_is_bit_identical_to_the_exported_op():
    rng = np.random.default_rng(5)
    # one XLA function serves every kernel: shapes of several ranks with the same axis (depthwise 2-D, then 1-D
    # convolution kernels, both axis 2) must each keep their own trace
    for shape, axis in (((3, 3, 16, 32), -1), ((5, 7), 1), ((3, 3, 8, 2), 2), ((5, 8, 4), 2), ((3, 3, 4, 1), 2)):
        kernel = tf.constant((rng.normal(size=shape) * rng.uniform(0.01, 10, size=shape[axis]).reshape(
            [-1 if i == axis % len(shape) else 1 for i in range(len(shape))])).astype(np.float32))
        exported = quantizers.qdq_per_channel(kernel, axis, training=False).numpy()
        trained, ranges = quantizers.qdq_per_channel_training(kernel, axis)
        np.testing.assert_array_equal(trained.numpy(), exported)
        # the backward pass recomputes the QDQ with the forward's ranges: the same kernel, bit for bit
        recomputed, given = quantizers.qdq_per_channel_training(kernel, axis, ranges)
        np.testing.assert_array_equal(recomputed.numpy(), exported)
        np.testing.assert_array_equal(given.numpy(), ranges.numpy())
        # the ranges may come in as one value per channel in any layout, e.g. per_channel_amax's 1-D result
        flat = quantizers.per_channel_amax(kernel, axis)
        np.testing.assert_array_equal(quantizers.qdq_per_channel_training(kernel, axis, flat)[0].numpy(), exported)
        channels = [-1 if i == axis % len(shape) else 1 for i in range(len(shape))]
        np.testing.assert_array_equal(ranges.numpy(), np.reshape(np.abs(kernel.numpy()).max(
            axis=tuple(i for i in range(len(shape)) if i != axis % len(shape))), channels))
    variable = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(quantizers.qdq_per_channel(variable, 2, training=True) * 3.0)
    np.testing.assert_array_equal(tape.gradient(loss, variable).numpy(), np.full(kernel.shape, 3.0, np.float32))


def test_training_quantizes_with_the_range_so_far_then_updates_it():
    amax, steps = tf.Variable(1.0), tf.Variable(0.0)
    step = tf.function(lambda x: quantizers.qdq_tracked(x, amax, steps, RangeTracking("max")))
    x = tf.constant([0.5, -3.0, 2.0])
    # never observed: the first step uses its own batch's max
    np.testing.assert_allclose(step(x).numpy(), reference_qdq(x.numpy(), 3.0), atol=1e-6)
    assert float(amax.numpy()) == 3.0 and float(steps.numpy()) == 1.0
    # afterwards each step uses the range tracked up to the previous step (here 3.0, clipping the 5.0)...
    wide = tf.constant([5.0, -1.0, 0.25])
    np.testing.assert_allclose(step(wide).numpy(), reference_qdq(wide.numpy(), 3.0), atol=1e-6)
    # ...and the stored range includes this step's batch
    assert float(amax.numpy()) == 5.0 and float(steps.numpy()) == 2.0


def test_training_activation_path_matches_the_registered_v4_op_and_its_gradient():
    """The training QDQ keeps a boolean mask instead of its float input: same values, same gradient as V4's."""
    rng = np.random.default_rng(6)
    x = rng.normal(0, 2, size=(64, 33)).astype(np.float32)
    x[0, :4] = [3.0, -3.0, 3.0000002, -2.9999998]  # on and just beyond the range's edges
    upstream = tf.constant(rng.normal(size=x.shape).astype(np.float32))
    results = []
    for training in (False, True):
        variable = tf.Variable(x)
        with tf.GradientTape() as tape:
            y = quantizers.qdq_per_tensor(variable, tf.constant(3.0), training=training)
            loss = tf.reduce_sum(y * upstream)
        results.append((y.numpy(), tape.gradient(loss, variable).numpy()))
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_array_equal(results[1][1], results[0][1])
    assert (results[1][1] == 0).any() and (results[1][1] != 0).any()


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_half_precision_is_quantized_in_float32(dtype):
    """No float16/bfloat16 QDQ kernel exists on CPU: the arithmetic runs in float32 and the result is cast back."""
    rng = np.random.default_rng(7)
    x = tf.cast(tf.constant(rng.normal(0, 2, size=(4, 9)).astype(np.float32)), dtype)
    for training in (False, True):
        got = quantizers.qdq_per_tensor(x, tf.constant(2.5), training=training)
        assert got.dtype == dtype
        want = tf.cast(quantizers.qdq_per_tensor(tf.cast(x, tf.float32), tf.constant(2.5)), dtype)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    kernel = tf.cast(tf.constant(rng.normal(size=(3, 5)).astype(np.float32)), dtype)
    got = quantizers.qdq_per_channel(kernel, -1)
    assert got.dtype == dtype
    want = tf.cast(quantizers.qdq_per_channel(tf.cast(kernel, tf.float32), -1), dtype)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
