"""Range reporting at export (qdq_toolkit.export.ranges): the Keras and the SavedModel paths report the same
unobserved ranges, for every slot a wrapper declares (SeparableConv's ``pointwise_input`` included)."""

from __future__ import annotations

import keras
import pytest

from qdq_toolkit import quantize_model
from qdq_toolkit.export import (
    UnobservedRangeWarning,
    export_saved_model,
    keras_to_onnx,
    saved_model_to_onnx,
    unobserved_ranges,
)
from qdq_toolkit.range_variables import (
    AMAX_SUFFIX,
    POINTWISE_INPUT_SLOT,
    STEPS_SUFFIX,
    input_slot,
    parse_range_variable,
)
from qdq_toolkit.wrappers import QDQWrapper


def test_parse_range_variable_reads_layer_slot_and_kind():
    assert parse_range_variable("quant_sep/pointwise_input_steps:0") == ("quant_sep", "pointwise_input", STEPS_SUFFIX)
    assert parse_range_variable("outer/quant_add/input_1_amax") == ("outer/quant_add", "input_1", AMAX_SUFFIX)
    assert parse_range_variable("quant_conv/kernel:0") is None
    assert parse_range_variable("input_steps") is None  # no layer scope
    assert parse_range_variable("quant_conv/_steps") is None  # no slot name


@pytest.fixture(scope="module")
def separable_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.SeparableConv2D(4, 3, padding="same", activation="relu", name="sep")(inputs)
    x = keras.layers.Add(name="add")([x, x])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))


def test_wrapper_variables_are_named_as_declared(separable_model):
    qat = quantize_model(separable_model)
    for layer in qat.layers:
        if not isinstance(layer, QDQWrapper):
            continue
        declared = {(slot, suffix) for slot in layer.range_slots() for suffix in (AMAX_SUFFIX, STEPS_SUFFIX)}
        names = [parse_range_variable(variable.path) for variable in layer.non_trainable_variables]
        parsed = {name[1:] for name in names if name is not None}
        assert declared <= parsed, layer.name
    sep = qat.get_layer("quant_sep")
    assert sep.range_slots() == ["input", POINTWISE_INPUT_SLOT]
    assert input_slot(1) == "input_1"


def test_saved_model_export_reports_the_separable_pointwise_range(separable_model, tmp_path):
    qat = quantize_model(separable_model)
    sep = qat.get_layer("quant_sep")
    sep.set_activation_range("input", 1.0)  # observed; its pointwise_input stays unobserved
    from_keras = unobserved_ranges(qat)
    assert "quant_sep/pointwise_input" in from_keras and "quant_sep/input" not in from_keras

    saved = export_saved_model(qat, tmp_path / "runs" / "saved")  # the writer creates missing parents
    with pytest.warns(UnobservedRangeWarning, match="quant_sep/pointwise_input"):
        result = saved_model_to_onnx(saved, tmp_path / "onnx" / "from_saved.onnx")
    assert result.unobserved_ranges == sorted(from_keras)
    with pytest.warns(UnobservedRangeWarning, match="quant_sep/pointwise_input"):
        assert keras_to_onnx(qat, tmp_path / "from_keras.onnx").unobserved_ranges == from_keras
