"""calibrate(): activation ranges of a quantized Keras model from data, in one streaming pass."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from qdq_toolkit import calibrate, quantize_model, quantized_layers


def float_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 2), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def data(n=96, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 6, 6, 2)).astype(np.float32)


def layer_inputs(model, x):
    """The float activations entering each quantized layer, computed from the FP32 model directly."""
    names = ["conv1", "conv2", "gap", "logits"]
    probe = keras.Model(model.input, [model.get_layer(n).input for n in names])
    return dict(zip(names, probe.predict(x, verbose=0), strict=True))


def test_max_calibration_sets_each_range_to_the_float_max():
    model = float_model()
    qmodel = quantize_model(model)
    x = data()
    report = calibrate(qmodel, x, "max", batch_size=32, progress=False)
    expected = {name: np.abs(values).max() for name, values in layer_inputs(model, x).items()}
    got = {w.layer.name: float(w.activation_ranges()["input"].numpy()) for w in quantized_layers(qmodel)}
    assert got == pytest.approx(expected, rel=1e-6)
    assert report.num_batches == 3 and report.num_samples == 96
    assert report.as_dict()["ranges"]["quant_conv1/input"] == pytest.approx(expected["conv1"], rel=1e-6)
    assert "quant_gap" in report.table()


# MSE keeps a wide range here on purpose: clipping one value from 40 to ~4 costs more squared error than the
# coarser rounding of the other 18k values (its choice is checked against brute force in test_calibration_math).
@pytest.mark.parametrize(("method", "upper"), [("percentile", 20.0), ("entropy", 20.0), ("mse", 40.0)])
def test_histogram_methods_clip_below_the_max(method, upper):
    model = float_model()
    qmodel = quantize_model(model)
    x = data(256)
    x[0, 0, 0, 0] = 40.0  # one outlier: the histogram methods must not stretch the range to it
    report = calibrate(qmodel, tf.data.Dataset.from_tensor_slices((x, np.zeros(256))).batch(64), method, progress=False)
    first = next(row for row in report.rows if row.layer == "quant_conv1")
    assert first.max_abs == pytest.approx(40.0)
    assert 2.0 < first.amax < upper
    assert all(0 < row.amax <= row.max_abs + 1e-6 for row in report.rows)


def test_streams_a_generator_and_stops_at_max_batches():
    qmodel = quantize_model(float_model())

    def batches():
        rng = np.random.default_rng(3)
        while True:  # endless: only max_batches ends the pass
            yield rng.normal(size=(8, 6, 6, 2)).astype(np.float32)

    report = calibrate(qmodel, batches(), "entropy", max_batches=25, progress=False)
    assert report.num_batches == 25 and report.num_samples == 200


def test_calibrated_ranges_survive_ema_fine_tuning_start():
    qmodel = quantize_model(float_model())
    x = data()
    calibrate(qmodel, x, batch_size=32, progress=False)
    first = qmodel.get_layer("quant_conv1")
    calibrated = float(first.activation_ranges()["input"].numpy())
    qmodel.compile("sgd", "mse")
    qmodel.fit(x[:32] * 0.5, np.zeros((32, 3)), batch_size=32, epochs=1, verbose=0)
    observed = np.abs(x[:32] * 0.5).max()
    # EMA continues from the calibrated value instead of restarting from the first batch
    assert float(first.activation_ranges()["input"].numpy()) == pytest.approx(0.99 * calibrated + 0.01 * observed, rel=1e-5)


def test_bad_input_is_explained_and_leaves_no_observer():
    model = float_model()
    qmodel = quantize_model(model)
    with pytest.raises(ValueError, match="empty"):
        calibrate(qmodel, iter([]), progress=False)
    with pytest.raises(ValueError, match="unknown calibration method 'minmax'"):
        calibrate(qmodel, data(), "minmax", batch_size=8, progress=False)
    with pytest.raises(ValueError, match="quantize_model"):
        calibrate(model, data(), batch_size=8, progress=False)
    bad = data(16)
    bad[3, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite activations at quant_conv1/input"):
        calibrate(qmodel, bad, batch_size=8, progress=False)
    assert all(w._observer is None for w in quantized_layers(qmodel))
    before = [w.numpy() for w in qmodel.weights]
    np.testing.assert_array_equal(qmodel(data(4)).numpy(), qmodel(data(4)).numpy())
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, qmodel.weights, strict=True))
