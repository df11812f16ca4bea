"""QAT under Keras mixed-precision policies: QDQ in float32, the rest in the policy's dtype, float32 export.

On CPU, ``mixed_bfloat16`` trains at float32 speed; ``mixed_float16`` runs too (TensorFlow has CPU kernels for
float16 convolutions) but about 20x slower here, so it is tested on a few batches only (loss scaling included).
"""

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from examples.digits_qat import small_cnn, train_fp32
from qdq_toolkit import quantize_model, quantized_layers
from qdq_toolkit.data import load_digits
from qdq_toolkit.export import keras_to_onnx
from qdq_toolkit.export.onnx import onnx_scales


@pytest.fixture(scope="module")
def digits():
    return load_digits(test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def fp32_model(digits):
    return train_fp32(digits)  # the quick start's 30 epochs


def under_policy(policy: str, fp32: keras.Model, input_shape, num_classes) -> keras.Model:
    """The same network built under ``policy`` (as a user does: set the policy, build, load the weights)."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = small_cnn(input_shape, num_classes)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    model.set_weights(fp32.get_weights())
    return model


def onnx_predict(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


@pytest.fixture(scope="module")
def bf16_qat(digits, fp32_model):
    qat = quantize_model(under_policy("mixed_bfloat16", fp32_model, digits.input_shape, digits.num_classes))
    qat.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(digits.train.images, digits.train.labels, epochs=2, batch_size=64, verbose=0)
    return qat


def test_bfloat16_qat_computes_in_bfloat16_and_keeps_float32_ranges(bf16_qat):
    wrappers = quantized_layers(bf16_qat)
    assert {w.compute_dtype for w in wrappers} == {"bfloat16"}
    assert {w.layer.compute_dtype for w in wrappers} == {"bfloat16"}
    for wrapper in wrappers:
        assert wrapper.unobserved_ranges() == []  # every range trained
        for amax in wrapper.activation_ranges().values():
            assert amax.dtype == "float32"
    assert quantized_layers(bf16_qat)[0].layer.kernel.dtype == "float32"


@pytest.mark.parametrize("fp16", [False, True])
def test_bfloat16_qat_exports_float32_with_its_trained_scales_and_onnx_runtime_agrees(
    digits, bf16_qat, tmp_path, fp16
):
    result = keras_to_onnx(bf16_qat, tmp_path / "qat.onnx", fp16=fp16)
    assert result.violations == []
    graph = onnx.load(result.path)
    types = {v.type.tensor_type.elem_type for v in [*graph.graph.value_info, *graph.graph.input, *graph.graph.output]}
    types |= {init.data_type for init in graph.graph.initializer}
    assert onnx.TensorProto.BFLOAT16 not in types
    assert (onnx.TensorProto.FLOAT16 in types) == fp16
    # the activation scales are the trained float32 ranges / 127, exactly what TensorRT's Q/DQ compute with
    ranges = sorted(float(a.numpy()) / 127 for w in quantized_layers(bf16_qat) for a in w.activation_ranges().values())
    per_tensor = sorted(v[0] for v in onnx_scales(graph).values() if len(v) == 1)
    np.testing.assert_allclose(per_tensor, ranges, rtol=1e-7)
    images = digits.test.images
    keras_top1 = np.asarray(bf16_qat.predict(images, verbose=0)).argmax(1)
    onnx_top1 = onnx_predict(result.path, images).argmax(1)
    agreement = float((keras_top1 == onnx_top1).mean())
    assert agreement >= 0.97, f"ONNX Runtime agrees with the bfloat16 QAT model on {agreement:.1%} of digits"
    assert float((onnx_top1 == digits.test.labels).mean()) > 0.5  # a trained model, not chance


def test_float16_qat_trains_with_the_loss_scale_optimizer(digits, fp32_model):
    qat = quantize_model(under_policy("mixed_float16", fp32_model, digits.input_shape, digits.num_classes))
    assert {w.compute_dtype for w in quantized_layers(qat)} == {"float16"}
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1e-3))
    qat.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.numpy().copy() for w in qat.trainable_weights]
    qat.fit(digits.train.images[:64], digits.train.labels[:64], epochs=1, batch_size=32, verbose=0)
    assert int(optimizer.iterations.numpy()) == 2
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, qat.trainable_weights, strict=True))
    for wrapper in quantized_layers(qat):
        for slot, amax in wrapper.activation_ranges().items():
            assert amax.dtype == "float32" and np.isfinite(amax.numpy()) and float(amax.numpy()) > 0, slot
        assert wrapper.unobserved_ranges() == []


def test_float64_qat_trains_in_float64_and_exports_its_float32_rebuild(digits, fp32_model, tmp_path):
    """A float64 model quantizes in float64 while it trains (ranges too) and exports as float32, which ONNX's
    QuantizeLinear takes and TensorRT computes in: the exported scales are its trained ranges rounded to float32."""
    qat = quantize_model(under_policy("float64", fp32_model, digits.input_shape, digits.num_classes))
    assert {w.compute_dtype for w in quantized_layers(qat)} == {"float64"}
    qat.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(digits.train.images, digits.train.labels, epochs=1, batch_size=64, verbose=0)
    ranges = [a for w in quantized_layers(qat) for a in w.activation_ranges().values()]
    assert {a.dtype for a in ranges} == {"float64"}
    assert all(w.unobserved_ranges() == [] for w in quantized_layers(qat))  # every range trained

    result = keras_to_onnx(qat, tmp_path / "qat.onnx")
    assert result.violations == []
    graph = onnx.load(result.path)
    types = {v.type.tensor_type.elem_type for v in [*graph.graph.value_info, *graph.graph.input, *graph.graph.output]}
    types |= {init.data_type for init in graph.graph.initializer}
    assert onnx.TensorProto.DOUBLE not in types
    per_tensor = sorted(v[0] for v in onnx_scales(graph).values() if len(v) == 1)
    want = sorted(float(np.float32(float(a.numpy()))) / 127 for a in ranges)
    np.testing.assert_allclose(per_tensor, want, rtol=1e-6)
    images = digits.test.images
    keras_top1 = np.asarray(qat.predict(images, verbose=0)).argmax(1)
    onnx_top1 = onnx_predict(result.path, images.astype(np.float32)).argmax(1)
    agreement = float((keras_top1 == onnx_top1).mean())
    assert agreement >= 0.97, f"ONNX Runtime agrees with the float64 QAT model on {agreement:.1%} of digits"
    assert float((onnx_top1 == digits.test.labels).mean()) > 0.5
