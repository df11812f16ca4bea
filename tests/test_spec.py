"""QuantizationSpec: NVIDIA-compatible arguments, parallel lists, validation, and the modes that read it."""

import keras
import pytest

from qdq_toolkit import LayerSpec, QuantizationSpec, quantize_model, quantized_layers

L = keras.layers


def test_add_single_and_parallel_lists():
    spec = QuantizationSpec()
    spec.add("conv1", quantize_weight=False).add(["add", "add_1"], quantization_index=[[1], None])
    spec.add(["MaxPooling2D", "dense"], is_keras_class=[True, False], quantize_input=[True, False])
    assert spec.entries == (
        LayerSpec("conv1", quantize_weight=False),
        LayerSpec("add", quantization_index=(1,)),
        LayerSpec("add_1"),
        LayerSpec("MaxPooling2D", is_keras_class=True),
        LayerSpec("dense", quantize_input=False),
    )


def test_flat_index_list_applies_to_every_name_and_classes_may_be_given_as_objects():
    spec = QuantizationSpec().add(["a", "b"], quantization_index=[1, 0])
    assert [e.quantization_index for e in spec] == [(0, 1), (0, 1)]
    spec = QuantizationSpec().add(L.Add, is_keras_class=True, quantization_index=1)
    assert spec.entries == (LayerSpec("Add", is_keras_class=True, quantization_index=(1,)),)


def test_adding_a_name_again_replaces_its_entry():
    spec = QuantizationSpec().add("conv").add("conv", quantize_input=False)
    assert spec.entries == (LayerSpec("conv", quantize_input=False),)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": ["a", "b"], "quantize_input": [True]}, ValueError, "quantize_input has 1 values but 2 names"),
        ({"name": "a", "quantize_input": "yes"}, TypeError, "quantize_input must be True or False"),
        ({"name": 3}, TypeError, "name must be a layer name"),
        ({"name": []}, ValueError, "empty list"),
        ({"name": "a", "quantization_index": -1}, ValueError, "negative"),
        ({"name": "a", "quantization_index": []}, ValueError, "quantize_input=False"),
        ({"name": "a", "quantization_index": "0"}, TypeError, "list of ints"),
    ],
)
def test_bad_arguments_are_explained(kwargs, error, message):
    spec = QuantizationSpec().add("kept")
    with pytest.raises(error, match=message):
        spec.add(**kwargs)
    assert spec.entries == (LayerSpec("kept"),), "a failed add must not change the spec"


def _model():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    y = L.Conv2D(4, 3, padding="same", name="conv_b")(x)
    x = L.Add(name="add")([x, y])
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(2, name="dense")(x))


def _plan(qmodel):
    return {w.layer.name: (w.quantize_inputs, w.quantize_weights) for w in quantized_layers(qmodel)}


def test_full_mode_defaults_and_overrides():
    assert _plan(quantize_model(_model())) == {
        "conv_a": ((0,), True),
        "conv_b": ((0,), True),
        "gap": ((0,), False),
        "dense": ((0,), True),
    }
    spec = (
        QuantizationSpec()
        .add("conv_a", quantize_input=False)
        .add("dense", quantize_input=False, quantize_weight=False)
        .add("MaxPooling2D", is_keras_class=True)
        .add("add", quantization_index=[1])
    )
    assert _plan(quantize_model(_model(), "full", spec)) == {
        "conv_a": ((), True),
        "conv_b": ((0,), True),
        "add": ((1,), False),
        "pool": ((0,), False),
        "gap": ((0,), False),
    }


def test_partial_mode_quantizes_only_the_spec():
    spec = QuantizationSpec().add(["conv_b", "add"]).add("Dense", is_keras_class=True, quantize_input=False)
    assert _plan(quantize_model(_model(), "partial", spec)) == {
        "conv_b": ((0,), True),
        "add": ((0, 1), False),
        "dense": ((), True),
    }
    assert _plan(quantize_model(_model(), "partial")) == {}


def test_a_name_entry_beats_a_class_entry():
    spec = QuantizationSpec().add("conv_a", quantize_weight=False).add("Conv2D", is_keras_class=True, quantize_input=False)
    assert _plan(quantize_model(_model(), "partial", spec)) == {"conv_a": ((0,), False), "conv_b": ((), True)}
