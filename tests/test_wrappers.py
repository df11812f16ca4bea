"""Every wrapper's numerics against a NumPy reference of symmetric int8 QDQ.

The reference quantizes the input per tensor and each kernel per output channel in NumPy, loads the quantized
kernels into a plain copy of the layer and runs it on the quantized input: the wrapper must give the same output.
"""

import keras
import numpy as np
import pytest

from qdq_toolkit import QDQWrapper, QuantizationSpec, quantize_model, quantized_layers
from tests.test_quantizers import reference_qdq

L = keras.layers

# (layer factory, input shapes, {kernel attribute: Keras output-channel axis})
WEIGHTED = [
    (lambda: L.Conv1D(5, 3, padding="same", activation="relu"), [(12, 4)], {"kernel": -1}),
    (lambda: L.Conv1D(5, 3, padding="causal", dilation_rate=2), [(12, 4)], {"kernel": -1}),
    (lambda: L.Conv2D(6, 3, strides=2, activation="relu"), [(9, 9, 3)], {"kernel": -1}),
    (lambda: L.Conv2D(6, 3, groups=3, padding="same"), [(8, 8, 6)], {"kernel": -1}),
    (lambda: L.Conv3D(4, 2), [(5, 5, 5, 2)], {"kernel": -1}),
    (lambda: L.Dense(7, activation="tanh"), [(10,)], {"kernel": -1}),
    (lambda: L.Dense(4), [(3, 10)], {"kernel": -1}),
    (lambda: L.DepthwiseConv2D(3, padding="same", activation="relu6"), [(8, 8, 5)], {"kernel": -2}),
    (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), [(8, 8, 3)], {"kernel": -2}),
    (lambda: L.DepthwiseConv1D(3), [(10, 4)], {"kernel": -2}),
    (lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same"), [(5, 5, 3)], {"kernel": -2}),
    (lambda: L.Conv1DTranspose(3, 3, strides=2), [(6, 2)], {"kernel": -2}),
]
INPUT_ONLY = [
    (lambda: L.AveragePooling2D(2), [(8, 8, 3)]),
    (lambda: L.GlobalAveragePooling2D(), [(8, 8, 3)]),
    (lambda: L.AveragePooling1D(2), [(8, 3)]),
    (lambda: L.MaxPooling2D(2), [(8, 8, 3)]),
    (lambda: L.GlobalMaxPooling1D(), [(8, 3)]),
    (lambda: L.BatchNormalization(), [(6, 6, 3)]),
]
MULTI_INPUT = [
    (lambda: L.Add(), [(6, 6, 3), (6, 6, 3)]),
    (lambda: L.Multiply(), [(6, 6, 3), (6, 6, 3)]),
    (lambda: L.Concatenate(), [(6, 6, 3), (6, 6, 2)]),
]


def _model(factory, shapes):
    inputs = [keras.Input(shape) for shape in shapes]
    layer = factory()
    outputs = layer(inputs if len(inputs) > 1 else inputs[0])
    model = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) + (1.5 if "variance" in w.path else 0) for w in model.weights])
    data = [rng.normal(0, 1.5, size=(2, *shape)).astype(np.float32) for shape in shapes]
    return model, layer, data


def _quantize_all(model, layer, index=None):
    spec = QuantizationSpec().add(layer.name, quantization_index=index)
    qmodel = quantize_model(model, "partial", spec)
    (wrapper,) = quantized_layers(qmodel)
    return qmodel, wrapper


@pytest.mark.parametrize(("factory", "shapes", "kernels"), WEIGHTED)
def test_weighted_wrapper_matches_numpy_reference(factory, shapes, kernels):
    model, layer, data = _model(factory, shapes)
    qmodel, wrapper = _quantize_all(model, layer)
    amax = 2.0  # below the data's max: the input clipping is exercised
    wrapper.set_activation_range("input", amax)
    got = qmodel(data[0]).numpy()

    reference = layer.__class__.from_config(layer.get_config())
    reference.build(data[0].shape)
    weights = {w.path.split("/")[-1]: w.numpy() for w in layer.weights}
    for name, axis in kernels.items():
        w = weights[name]
        axis = axis % w.ndim
        channel_amax = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis))
        weights[name] = reference_qdq(w, channel_amax, axis=axis).astype(np.float32)
    reference.set_weights([weights[w.path.split("/")[-1]] for w in reference.weights])
    want = reference(reference_qdq(data[0], amax).astype(np.float32)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # and the quantization changed the result: the test would catch a wrapper that skips QDQ
    assert np.abs(model(data[0]).numpy() - got).max() > 1e-4


def test_separable_conv_quantizes_both_convolutions_and_the_intermediate():
    model, layer, data = _model(lambda: L.SeparableConv2D(4, 3, depth_multiplier=2, activation="relu"), [(8, 8, 3)])
    qmodel, wrapper = _quantize_all(model, layer)
    assert set(wrapper.activation_ranges()) == {"input", "pointwise_input"}
    wrapper.set_activation_range("input", 2.0)
    wrapper.set_activation_range("pointwise_input", 3.0)
    got = qmodel(data[0]).numpy()

    dw, pw, bias = (w.numpy() for w in layer.weights)
    dwq = reference_qdq(dw, np.abs(dw).max(axis=(0, 1, 3)), axis=2).astype(np.float32)
    pwq = reference_qdq(pw, np.abs(pw).max(axis=(0, 1, 2)), axis=3).astype(np.float32)
    depthwise = L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)
    pointwise = L.Conv2D(4, 1, activation="relu")
    mid = depthwise(reference_qdq(data[0], 2.0).astype(np.float32))
    depthwise.set_weights([dwq])
    mid = depthwise(reference_qdq(data[0], 2.0).astype(np.float32)).numpy()
    pointwise.build(mid.shape)
    pointwise.set_weights([pwq, bias])
    want = pointwise(reference_qdq(mid, 3.0).astype(np.float32)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("factory", "shapes"), INPUT_ONLY)
def test_input_wrapper_matches_numpy_reference(factory, shapes):
    model, layer, data = _model(factory, shapes)
    qmodel, wrapper = _quantize_all(model, layer)
    wrapper.set_activation_range("input", 1.7)
    got = qmodel(data[0]).numpy()
    want = model(reference_qdq(data[0], 1.7).astype(np.float32)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("factory", "shapes"), MULTI_INPUT)
@pytest.mark.parametrize("index", [None, [1]])
def test_multi_input_wrapper_quantizes_only_the_selected_inputs(factory, shapes, index):
    model, layer, data = _model(factory, shapes)
    qmodel, wrapper = _quantize_all(model, layer, index)
    slots = {"input_0", "input_1"} if index is None else {"input_1"}
    assert set(wrapper.activation_ranges()) == slots
    for slot in slots:
        wrapper.set_activation_range(slot, 1.3)
    got = qmodel(data).numpy()
    quantized = [reference_qdq(x, 1.3).astype(np.float32) if f"input_{i}" in slots else x for i, x in enumerate(data)]
    np.testing.assert_allclose(got, model(quantized).numpy(), rtol=1e-5, atol=1e-5)


@keras.saving.register_keras_serializable(package="tests")
class ChannelScale(keras.layers.Layer):
    """A user's own layer: multiplies each channel by a learned factor."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, inputs):
        return inputs * self.scale


@keras.saving.register_keras_serializable(package="tests")
class ChannelScaleQDQWrapper(QDQWrapper):
    """What the README shows: one class adds QDQ support for a new layer."""

    layer_classes = (ChannelScale,)
    default_quantize_input = True
    default_quantize_weight = True
    kernel_axes = {"scale": 0}

    def quantized_call(self, inputs, training=None, **kwargs):
        return inputs * self.quantized_kernel("scale")


def test_a_user_wrapper_adds_support_for_a_new_layer(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, ChannelScale(name="scale")(L.Conv2D(3, 1, name="conv")(inputs)))
    model.get_layer("scale").set_weights([np.array([0.5, -2.0, 3.0], np.float32)])
    with pytest.raises(ValueError, match="has no QDQ wrapper"):
        quantize_model(model, "partial", QuantizationSpec().add("scale"))

    qmodel = quantize_model(model, custom_wrappers=[ChannelScaleQDQWrapper])
    wrapper = qmodel.get_layer("quant_scale")
    assert isinstance(wrapper, ChannelScaleQDQWrapper)
    wrapper.set_activation_range("input", 1.0)
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32)
    conv_out = keras.Model(qmodel.input, qmodel.get_layer("quant_conv").output)(x).numpy()
    want = reference_qdq(conv_out, 1.0) * np.array([0.5, -2.0, 3.0])  # per-channel amax = |scale|: exact
    np.testing.assert_allclose(qmodel(x).numpy(), want, rtol=1e-5, atol=1e-6)

    path = tmp_path / "custom.keras"
    qmodel.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path)(x).numpy(), qmodel(x).numpy())
