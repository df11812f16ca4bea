"""Export to ONNX: the graph TensorRT's explicit quantization wants, and fidelity to the Keras QAT model."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from examples.digits_qat import run
from qdq_toolkit import QuantizationSpec, quantize_model
from qdq_toolkit.data import load_digits
from qdq_toolkit.export import (
    ExportError,
    UnobservedRangeWarning,
    check_qdq_placement,
    export_saved_model,
    keras_to_onnx,
    saved_model_to_onnx,
    summarize_qdq,
    unobserved_ranges,
)

QUANTIZABLE = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@pytest.fixture(scope="module")
def trained():
    """The quick-start CNN trained on the digits, FP32 and QAT (about ten seconds)."""
    return run(fp32_epochs=30, qat_epochs=5)


@pytest.fixture(scope="module")
def real_inputs():
    data = load_digits(test_fraction=0.25, seed=0)
    images = np.concatenate([data.test.images, data.train.images])[:512]
    return images


@pytest.fixture(scope="module")
def qat_onnx(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "qat.onnx"
    result = keras_to_onnx(trained.qat_model, path)
    return result, onnx.load(path)


def run_onnx(path_or_model, images):
    data = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def constant(model, name):
    inits = {i.name: i for i in model.graph.initializer}
    return numpy_helper.to_array(inits[name])


def test_graph_is_what_tensorrt_wants(qat_onnx, trained):
    result, model = qat_onnx
    onnx.checker.check_model(model)
    assert result.violations == [] and check_qdq_placement(model) == []
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}, "no TensorFlow op may be left"
    made_by = producers(model)
    quantized = [node for node in model.graph.node if node.op_type in QUANTIZABLE]
    keras_layers = [layer for layer in trained.fp32_model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(quantized) == len(keras_layers) == 4
    for node in quantized:
        data, weight = (made_by.get(name) for name in node.input[:2])
        assert data is not None and data.op_type == "DequantizeLinear", node.name
        assert weight is not None and weight.op_type == "DequantizeLinear", node.name
        # weights: Q/DQ kept (not folded), per output channel on axis 0 (Conv) / 1 (MatMul), constant scales > 0
        weight_q = made_by[weight.input[0]]
        assert weight_q.op_type == "QuantizeLinear"
        axis = {a.name: a.i for a in weight.attribute}.get("axis", 1)
        scale = constant(model, weight.input[1])
        assert axis == (0 if node.op_type == "Conv" else 1)
        assert scale.ndim == 1 and scale.size > 1 and (scale > 0).all()
        # activations: per tensor
        assert constant(model, data.input[1]).size == 1
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = constant(model, node.input[2])
            assert zero_point.dtype == np.int8 and not zero_point.any()


def test_stable_names_and_dynamic_batch(qat_onnx, real_inputs):
    result, model = qat_onnx
    assert result.inputs == ["image"] and result.outputs == ["logits"]
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 37, 512):
        assert run_onnx(model, real_inputs[:batch]).shape == (batch, 10)


def test_onnx_runtime_reproduces_the_keras_qat_model(qat_onnx, trained, real_inputs):
    _, model = qat_onnx
    keras_logits = trained.qat_model.predict(real_inputs, verbose=0)
    onnx_logits = run_onnx(model, real_inputs)
    agreement = (keras_logits.argmax(1) == onnx_logits.argmax(1)).mean()
    max_diff = np.abs(keras_logits - onnx_logits).max()
    print(f"top-1 agreement {agreement:.4f}, max |logit diff| {max_diff:.2e}, logit range {np.ptp(keras_logits):.1f}")
    assert agreement >= 0.995
    # The only differences are float summation order inside convolutions, which can move a value across a
    # rounding boundary of the next quantizer: one int8 step of one activation, damped by the layers after it.
    assert max_diff < 0.05


def test_saved_model_path_gives_the_same_model(trained, real_inputs, tmp_path):
    saved = export_saved_model(trained.qat_model, tmp_path / "saved")
    result = saved_model_to_onnx(saved, tmp_path / "from_saved.onnx")
    assert result.violations == []
    direct = keras_to_onnx(trained.qat_model, tmp_path / "direct.onnx")
    np.testing.assert_allclose(run_onnx(result.path, real_inputs), run_onnx(direct.path, real_inputs), atol=1e-5)
    with pytest.raises(FileExistsError, match="force=True"):
        export_saved_model(trained.qat_model, saved)


def test_nothing_is_quantized_that_the_spec_left_alone(trained, tmp_path):
    spec = QuantizationSpec().add(["conv1", "logits"])
    partial = quantize_model(trained.fp32_model, "partial", spec)
    with pytest.warns(UnobservedRangeWarning, match="quant_conv1/input, quant_logits/input"):  # not calibrated
        model = onnx.load(keras_to_onnx(partial, tmp_path / "partial.onnx").path)
    made_by = producers(model)
    quantized = {
        node.name
        for node in model.graph.node
        if node.op_type in QUANTIZABLE and all(made_by.get(i) and made_by[i].op_type == "DequantizeLinear" for i in node.input[:2])
    }
    float_ops = [node.name for node in model.graph.node if node.op_type in QUANTIZABLE and node.name not in quantized]
    assert len(quantized) == 2 and all("conv1" in n or "logits" in n for n in quantized), quantized
    assert len(float_ops) == 2
    assert summarize_qdq(model)["dequantize_linear"] == 4  # two inputs and two weights


def test_ranges_no_data_ever_set_are_reported_at_export(trained, tmp_path):
    from qdq_toolkit import calibrate

    fresh = quantize_model(trained.fp32_model)
    expected = [f"quant_{name}/input" for name in ("conv0", "conv1", "conv2", "gap", "logits")]
    assert unobserved_ranges(fresh) == expected
    with pytest.warns(UnobservedRangeWarning, match=r"never observed .* Calibrate \(qdq_toolkit.calibrate\)"):
        result = keras_to_onnx(fresh, tmp_path / "fresh.onnx")
    assert result.unobserved_ranges == unobserved_ranges(fresh) and result.unobserved_ranges
    export_saved_model(fresh, tmp_path / "fresh_saved")
    with pytest.warns(UnobservedRangeWarning, match="never observed"):
        from_saved = saved_model_to_onnx(tmp_path / "fresh_saved", tmp_path / "fresh_saved.onnx")
    assert from_saved.unobserved_ranges == sorted(expected)

    calibrate(fresh, load_digits().train.images[:64], batch_size=32, progress=False)
    assert unobserved_ranges(fresh) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnobservedRangeWarning)
        assert keras_to_onnx(fresh, tmp_path / "calibrated.onnx").unobserved_ranges == []
        export_saved_model(fresh, tmp_path / "calibrated_saved")
        assert saved_model_to_onnx(tmp_path / "calibrated_saved", tmp_path / "calibrated_saved.onnx").unobserved_ranges == []


def test_other_opsets_on_request(trained, tmp_path, real_inputs):
    result = keras_to_onnx(trained.qat_model, tmp_path / "opset17.onnx", opset=17)
    model = onnx.load(result.path)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert result.violations == []
    for unsupported in (12, 19):  # 19: tf2onnx 1.17 converts up to opset 18
        with pytest.raises(ValueError, match="from 13 to 18"):
            keras_to_onnx(trained.qat_model, tmp_path / f"opset{unsupported}.onnx", opset=unsupported)


def test_fp16_export_keeps_scales_float32_and_accuracy(trained, tmp_path):
    data = load_digits(test_fraction=0.25, seed=0)
    for name, keras_model in (("qat", trained.qat_model), ("fp32", trained.fp32_model)):
        result = keras_to_onnx(keras_model, tmp_path / f"{name}16.onnx", fp16=True)
        model = onnx.load(result.path)
        assert result.violations == []
        float_types = {init.data_type for init in model.graph.initializer if init.data_type in (1, 10)}
        assert onnx.TensorProto.FLOAT16 in float_types
        for node in model.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                assert constant(model, node.input[1]).dtype == np.float32
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        accuracy = (run_onnx(model, data.test.images).argmax(1) == data.test.labels).mean()
        reference = trained.qat_accuracy if name == "qat" else trained.fp32_accuracy
        assert accuracy >= reference - 0.005, (name, accuracy, reference)


LAYER_ZOO = [
    ("conv_transpose", lambda x: keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same")(x), "ConvTranspose", 1),
    ("depthwise", lambda x: keras.layers.DepthwiseConv2D(3, padding="same")(x), "Conv", 0),
    ("depthwise_x2", lambda x: keras.layers.DepthwiseConv2D(3, depth_multiplier=2)(x), "Conv", 0),
    ("separable", lambda x: keras.layers.SeparableConv2D(6, 3, padding="same")(x), "Conv", 0),
    ("conv1d", lambda x: keras.layers.Conv1D(4, 3)(keras.layers.Reshape((64, 3))(x)), "Conv", 0),
    ("conv1d_causal", lambda x: keras.layers.Conv1D(4, 3, padding="causal")(keras.layers.Reshape((64, 3))(x)), "Conv", 0),
    ("dense3d", lambda x: keras.layers.Dense(5)(keras.layers.Reshape((64, 3))(x)), "MatMul", 1),
]


@pytest.mark.parametrize(("name", "block", "op_type", "axis"), LAYER_ZOO, ids=[z[0] for z in LAYER_ZOO])
def test_every_weighted_family_exports_with_tensorrt_axes(name, block, op_type, axis, tmp_path):
    inputs = keras.Input((8, 8, 3), name="image")
    model = keras.Model(inputs, block(inputs))
    qmodel = quantize_model(model)
    x = np.random.default_rng(0).uniform(-1, 1, size=(4, 8, 8, 3)).astype(np.float32)
    qmodel.compile("sgd", "mse")
    qmodel.fit(x, qmodel.predict(x, verbose=0), epochs=1, verbose=0)  # observe ranges
    result = keras_to_onnx(qmodel, tmp_path / f"{name}.onnx")
    assert result.violations == []
    onnx_model = onnx.load(result.path)
    made_by = producers(onnx_model)
    nodes = [n for n in onnx_model.graph.node if n.op_type == op_type]
    assert nodes
    for node in nodes:
        data_dq, weight_dq = made_by[node.input[0]], made_by[node.input[1]]
        assert data_dq.op_type == weight_dq.op_type == "DequantizeLinear", "DQ must feed the op directly"
        assert made_by[weight_dq.input[0]].input[0] in {i.name for i in onnx_model.graph.initializer}
        assert {a.name: a.i for a in weight_dq.attribute}.get("axis", 1) == axis
    np.testing.assert_allclose(run_onnx(onnx_model, x), qmodel.predict(x, verbose=0), atol=2e-2)


def test_refuses_to_overwrite_and_leaves_the_file_as_it_was(trained, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"user's file")
    with pytest.raises(FileExistsError, match="force"):
        keras_to_onnx(trained.qat_model, target)
    assert target.read_bytes() == b"user's file"
    keras_to_onnx(trained.qat_model, target, force=True)
    onnx.checker.check_model(onnx.load(target))


def test_an_interrupted_export_leaves_no_partial_file_and_the_previous_intact(trained, tmp_path):
    target = tmp_path / "model.onnx"
    keras_to_onnx(trained.qat_model, target)
    before = target.read_bytes()

    def interrupt(message):
        if message.startswith("writing"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        keras_to_onnx(trained.fp32_model, target, force=True, progress=interrupt)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_bad_inputs(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        saved_model_to_onnx(tmp_path / "missing", tmp_path / "a.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a SavedModel directory"):
        saved_model_to_onnx(tmp_path / "empty", tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="keras.Model"):
        keras_to_onnx("model.keras", tmp_path / "a.onnx")
    created = keras_to_onnx(trained.qat_model, tmp_path / "no" / "dir" / "a.onnx").path  # parents made, as tf2onnx does
    assert created == tmp_path / "no" / "dir" / "a.onnx" and onnx.load(created).graph.node
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        keras_to_onnx(trained.qat_model, created / "b.onnx")
    assert ExportError.__mro__[1] is RuntimeError


def test_exporting_the_same_model_twice_gives_identical_bytes(trained, tmp_path):
    first = keras_to_onnx(trained.qat_model, tmp_path / "first.onnx").path.read_bytes()
    keras_to_onnx(trained.fp32_model, tmp_path / "other.onnx")  # another conversion in between
    second = keras_to_onnx(trained.qat_model, tmp_path / "second.onnx").path.read_bytes()
    assert first == second


def pad_graph(pad_value_node, *, between_q_and_dq=False):
    """x -> Q -> DQ -> Pad -> Relu (or x -> Q -> Pad -> DQ -> Relu), per-tensor int8, pads of 1 on the last axis."""
    from onnx import TensorProto, helper

    scale, zero = numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")
    pads = numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 1], np.int64), "pads")
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q")
    if between_q_and_dq:
        pad = helper.make_node("Pad", ["xq", "pads", "pad_value"], ["padded"], name="pad")
        dq = helper.make_node("DequantizeLinear", ["padded", "s", "z"], ["xdq"], name="dq")
        nodes, last = [q, pad_value_node, pad, dq], "xdq"
    else:
        dq = helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"], name="dq")
        pad = helper.make_node("Pad", ["xdq", "pads", "pad_value"], ["padded"], name="pad")
        nodes, last = [q, dq, pad_value_node, pad], "padded"
    nodes.append(helper.make_node("Relu", [last], ["y"], name="relu"))
    graph = helper.make_graph(
        nodes,
        "pad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 6])],
        [scale, zero, pads],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize(
    "value_attribute",
    [{"value_float": 0.0}, {"value": numpy_helper.from_array(np.array(0.0, np.float32))}],
    ids=["value_float", "value"],
)
def test_a_zero_pad_after_dq_moves_above_the_quantizer(value_attribute):
    from onnx import helper

    from qdq_toolkit.export.onnx import sink_qdq_below_shape_ops

    model = pad_graph(helper.make_node("Constant", [], ["pad_value"], **value_attribute))
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    before = run_onnx(model, x)
    assert sink_qdq_below_shape_ops(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert producers(model)["y"].op_type == "Relu" and producers(model)[producers(model)["y"].input[0]].op_type == "DequantizeLinear"
    np.testing.assert_array_equal(run_onnx(model, x), before)


def test_a_pad_that_is_not_zero_or_sits_between_q_and_dq_stays():
    from onnx import helper

    from qdq_toolkit.export.onnx import sink_qdq_below_shape_ops

    one = pad_graph(helper.make_node("Constant", [], ["pad_value"], value_float=1.0))
    assert sink_qdq_below_shape_ops(one) == 0
    int8_zero = helper.make_node("Constant", [], ["pad_value"], value=numpy_helper.from_array(np.array(0, np.int8)))
    inside = pad_graph(int8_zero, between_q_and_dq=True)
    assert sink_qdq_below_shape_ops(inside) == 0
    onnx.checker.check_model(inside, full_check=True)
