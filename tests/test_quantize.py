"""quantize_model: cloning (nested models too), the untouched caller, training, saving, and clear errors."""

import subprocess
import sys

import keras
import numpy as np
import pytest

from qdq_toolkit import (
    CustomQDQInsertionCase,
    QDQWrapper,
    QuantizationSpec,
    QuantizationSpecError,
    plan_quantization,
    quantize_model,
    quantized_layers,
)
from qdq_toolkit.cases import ModelStructureError

L = keras.layers


def nested_model():
    """Functional model holding a nested Sequential and a nested Functional model."""
    block_in = keras.Input((8, 8, 8))
    block_x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(block_in)
    block = keras.Model(block_in, L.Add(name="add")([block_in, block_x]), name="block")
    head = keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu", name="fc"), L.Dense(3, name="logits")], name="head")

    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = block(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, head(x), name="net")


def test_a_bare_name_is_the_top_level_layer_else_the_one_nested_layer_of_that_name():
    plan = lambda spec: sorted(p.path for p in plan_quantization(nested_model(), "partial", spec).values())  # noqa: E731
    assert plan(QuantizationSpec().add("conv")) == ["conv"]  # not block/conv as well
    assert plan(QuantizationSpec().add("fc")) == ["head/fc"]  # only one nested layer has the name
    assert plan(QuantizationSpec().add("block/conv")) == ["block/conv"]


def test_a_bare_name_two_nested_layers_share_is_refused_with_their_paths():
    def branch(name):
        inp = keras.Input((8, 8, 3))
        return keras.Model(inp, L.Conv2D(4, 3, name="stem")(inp), name=name)

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, L.Concatenate()([branch("left")(inputs), branch("right")(inputs)]))
    with pytest.raises(QuantizationSpecError, match=r"'stem' names 2 layers of nested models \(left/stem, right/stem\)"):
        quantize_model(model, "partial", QuantizationSpec().add("stem"))
    assert [w.name for w in quantized_layers(quantize_model(model, "partial", QuantizationSpec().add("right/stem")))] == [
        "quant_stem"
    ]


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype(np.float32), rng.integers(0, 3, size=n)


def test_nested_models_are_quantized_inside():
    qmodel = quantize_model(nested_model())
    paths = sorted(w.name for w in quantized_layers(qmodel))
    assert paths == ["quant_conv", "quant_conv", "quant_fc", "quant_gap", "quant_logits"]
    assert isinstance(qmodel.get_layer("block").get_layer("quant_conv"), QDQWrapper)
    assert isinstance(qmodel.get_layer("head").get_layer("quant_fc"), QDQWrapper)


def test_nested_layers_can_be_selected_by_path():
    spec = QuantizationSpec().add("block/add", quantization_index=[0]).add("block/conv", quantize_input=False)
    qmodel = quantize_model(nested_model(), "partial", spec)
    block = qmodel.get_layer("block")
    assert [(w.name, w.quantize_inputs, w.quantize_weights) for w in quantized_layers(block)] == [
        ("quant_conv", (), True),
        ("quant_add", (0,), False),
    ]
    assert not any(isinstance(layer, QDQWrapper) for layer in qmodel.layers)


def test_the_callers_model_weights_and_spec_are_untouched():
    model = nested_model()
    spec = QuantizationSpec().add("Add", is_keras_class=True, quantization_index=[1])
    spec_before = spec.copy()
    weights_before = [w.copy() for w in model.get_weights()]
    layers_before = [type(layer) for layer in model.layers]

    qmodel = quantize_model(model, quantization_spec=spec)
    x, y = data()
    qmodel.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, y, epochs=2, batch_size=16, verbose=0)

    assert spec == spec_before
    assert [type(layer) for layer in model.layers] == layers_before
    for before, after in zip(weights_before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    trained_kernel = qmodel.get_layer("quant_conv").layer.kernel.numpy()
    assert not np.array_equal(trained_kernel, model.get_layer("conv").kernel.numpy()), "the clone trained on its own copy"
    # the clone starts from the caller's weights: an untrained quantized model is close to the float model
    fresh = quantize_model(model)
    assert np.abs(fresh.predict(x, verbose=0) - model.predict(x, verbose=0)).max() < 0.5


def test_training_updates_ranges_and_inference_does_not():
    model = nested_model()
    qmodel = quantize_model(model, activation_range="max")
    x, y = data()
    first = qmodel.get_layer("quant_conv")
    first.activation_ranges()["input"].assign(123.0)  # replaced by the first observed batch
    qmodel.predict(x, verbose=0)
    assert float(first.activation_ranges()["input"].numpy()) == 123.0
    qmodel.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    assert float(first.activation_ranges()["input"].numpy()) == pytest.approx(np.abs(x).max(), rel=1e-6)


def test_default_ema_tracking_follows_the_batches():
    qmodel = quantize_model(nested_model())
    first = qmodel.get_layer("quant_conv")
    x, y = data(64)
    x[32:] *= 3.0  # the second batch has a wider range
    qmodel.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    expected = 0.99 * np.abs(x[:32]).max() + 0.01 * np.abs(x[32:]).max()
    assert float(first.activation_ranges()["input"].numpy()) == pytest.approx(expected, rel=1e-5)


def test_keras_round_trip_gives_identical_outputs(tmp_path):
    qmodel = quantize_model(nested_model(), quantization_spec=QuantizationSpec().add("block/add", quantization_index=[1]))
    x, y = data()
    qmodel.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "qat.keras"
    qmodel.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qmodel.predict(x, verbose=0))
    assert [(w.name, w.quantize_inputs, w.quantize_weights) for w in quantized_layers(loaded)] == [
        (w.name, w.quantize_inputs, w.quantize_weights) for w in quantized_layers(qmodel)
    ]
    for a, b in zip(loaded.weights, qmodel.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)  # and it keeps training


LOAD_IN_A_FRESH_PROCESS = """
import sys
import numpy as np
{imports}
x = np.load(sys.argv[2])
np.save(sys.argv[3], {load}(sys.argv[1]).predict(x, verbose=0))
"""


@pytest.mark.parametrize(
    ("imports", "load"),
    [
        ("import qdq_toolkit", "qdq_toolkit.load_model"),
        ("import keras\nfrom qdq_toolkit import quantize_model", "keras.models.load_model"),
    ],
    ids=["qdq_toolkit.load_model", "keras-after-a-from-import"],
)
def test_a_saved_model_loads_in_a_new_process(tmp_path, imports, load):
    """Nothing of this process (its imported wrappers) helps: the documented ways to load must register them."""
    qmodel = quantize_model(nested_model())
    x, y = data(32)
    qmodel.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, y, epochs=1, verbose=0)
    qmodel.save(tmp_path / "qat.keras")
    np.save(tmp_path / "x.npy", x)
    script = LOAD_IN_A_FRESH_PROCESS.format(imports=imports, load=load)
    args = [sys.executable, "-c", script, str(tmp_path / "qat.keras"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), qmodel.predict(x, verbose=0))


def test_sequential_model():
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, name="d1"), L.Dense(2, name="d2")])
    qmodel = quantize_model(model)
    assert isinstance(qmodel, keras.Sequential)
    assert [w.name for w in quantized_layers(qmodel)] == ["quant_d1", "quant_d2"]


# ------------------------------------------------------------------------------------------------------ errors
class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


def test_subclassed_model_is_refused_with_the_fix():
    model = Subclassed()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(ModelStructureError, match="Functional API"):
        quantize_model(model)


def test_not_a_model():
    with pytest.raises(TypeError, match="expects a keras.Model"):
        quantize_model(L.Dense(3))


def test_unbuilt_sequential():
    with pytest.raises(ModelStructureError, match="not built"):
        quantize_model(keras.Sequential([L.Dense(3)]))


def test_already_quantized():
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(quantize_model(nested_model()))


def test_unknown_layer_name_lists_the_closest():
    with pytest.raises(QuantizationSpecError, match=r"no layer named 'gapp'.*Closest layer names: gap"):
        quantize_model(nested_model(), quantization_spec=QuantizationSpec().add("gapp"))


def test_class_name_given_as_layer_name_is_pointed_out():
    with pytest.raises(QuantizationSpecError, match="is_keras_class=True"):
        quantize_model(nested_model(), quantization_spec=QuantizationSpec().add("MaxPooling2D"))


def test_unknown_class_lists_the_closest():
    with pytest.raises(QuantizationSpecError, match=r"not a Keras layer class.*Conv2D"):
        quantize_model(nested_model(), quantization_spec=QuantizationSpec().add("Conv2d", is_keras_class=True))


def test_quantization_index_out_of_range():
    with pytest.raises(QuantizationSpecError, match=r"has 2 input\(s\), indices 0..1"):
        quantize_model(nested_model(), quantization_spec=QuantizationSpec().add("block/add", quantization_index=[2]))
    with pytest.raises(QuantizationSpecError, match=r"has 1 input\(s\)"):
        quantize_model(nested_model(), quantization_spec=QuantizationSpec().add("gap", quantization_index=[1]))


def test_unknown_mode():
    with pytest.raises(ValueError, match="Unknown quantization_mode 'fulll'"):
        quantize_model(nested_model(), "fulll")


def test_class_without_wrapper():
    with pytest.raises(QuantizationSpecError, match=r"class 'ReLU' \(ReLU\) has no QDQ wrapper.*custom_wrappers"):
        quantize_model(nested_model(), quantization_spec=QuantizationSpec().add("ReLU", is_keras_class=True))
    # turning a class *off* needs no wrapper
    quantize_model(nested_model(), quantization_spec=QuantizationSpec().add("ReLU", True, False, False))


def test_cases_are_checked_and_never_override_the_user():
    class QuantizeAllAdds(CustomQDQInsertionCase):
        def case(self, keras_model, qspec):
            return QuantizationSpec().add("block/add").add("gap", quantize_input=False)

    user = QuantizationSpec().add("gap")
    qmodel = quantize_model(nested_model(), "partial", user, [QuantizeAllAdds()])
    assert sorted(w.name for w in quantized_layers(qmodel)) == ["quant_add", "quant_gap"]
    with pytest.raises(TypeError, match="instances"):
        quantize_model(nested_model(), custom_qdq_cases=[QuantizeAllAdds])


class _ForgetfulDense(keras.layers.Dense):
    """A custom layer whose get_config drops an argument that changes its weights (use_bias)."""

    def get_config(self):
        config = super().get_config()
        del config["use_bias"]
        return config


def test_a_layer_whose_copy_has_other_weights_is_named_in_the_error():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, _ForgetfulDense(3, use_bias=False, name="forgetful")(inputs))
    with pytest.raises(ValueError, match=r"layer 'forgetful' \(_ForgetfulDense\) has 2 weights where the layer has 1"):
        quantize_model(model)
