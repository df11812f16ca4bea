"""BatchNorm folding into ConvTranspose (TensorRT has no Q/DQ ConvTranspose + BN fusion) and the export option.

Hand-built graphs ``DQ(x) -> ConvTranspose(DQ(int8 weight, axis 1)) -> Mul(a) -> Add(b) -> Relu`` are folded and run
in ONNX Runtime against the unfolded graph; a tiny Keras Conv2DTranspose -> BatchNormalization -> ReLU model is
exported with and without ``fold_batchnorm`` (API and CLI).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_toolkit.export.checks import check_qdq_placement
from qdq_toolkit.export.fold_batchnorm import fold_batchnorm
from qdq_toolkit.export.fusion import predict_fusion

C_IN, C_OUT = 3, 5  # different, so a factor applied along the wrong weight axis cannot even broadcast
#: positive, negative, zero, tiny and large factors, one per output channel
FACTORS = np.array([1.7, -0.4, 0.0, 3e-3, -2.5], np.float32)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _convtranspose_bn(
    *, bias: bool, stored_int8: bool, group: int = 1, factors=FACTORS, c_in: int = C_IN
) -> onnx.ModelProto:
    """x -> Q/DQ -> ConvTranspose(stride 2, weight DQ per channel on axis 1 [, bias]) -> Mul -> Add -> Relu -> y.

    ``stored_int8``: the weight is ``DQ(int8 initializer)``; else ``DQ(Q(float initializer))`` as tf2onnx writes it.
    """
    rng = np.random.default_rng(0)
    c_out = len(factors)
    weight = rng.normal(size=(c_in, c_out // group, 3, 3)).astype(np.float32)
    channels = weight.shape[1]
    scale = (np.abs(weight).max(axis=(0, 2, 3)) / 127).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.float32(0.03), "x_s"),
        numpy_helper.from_array(np.int8(0), "x_zp"),
        numpy_helper.from_array(scale, "w_s"),
        numpy_helper.from_array(np.zeros(channels, np.int8), "w_zp"),
        numpy_helper.from_array(np.asarray(factors, np.float32).reshape(1, -1, 1, 1), "a"),
        numpy_helper.from_array(rng.normal(size=(1, c_out, 1, 1)).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["x_dq"], name="dq_x"),
    ]
    if stored_int8:
        q = np.clip(np.rint(weight / scale.reshape(1, -1, 1, 1)), -127, 127).astype(np.int8)
        inits.append(numpy_helper.from_array(q, "w_q"))
    else:
        inits.append(numpy_helper.from_array(weight, "w"))
        nodes.append(helper.make_node("QuantizeLinear", ["w", "w_s", "w_zp"], ["w_q"], name="q_w", axis=1))
    nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], name="dq_w", axis=1))
    conv_inputs = ["x_dq", "w_dq"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=c_out).astype(np.float32), "bias"))
        conv_inputs.append("bias")
    nodes += [
        helper.make_node(
            "ConvTranspose", conv_inputs, ["up"], name="up", strides=[2, 2], pads=[1, 1, 0, 0], group=group
        ),
        helper.make_node("Mul", ["up", "a"], ["bn_mul"], name="bn_mul"),
        helper.make_node("Add", ["bn_mul", "b"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "convtranspose_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c_in, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, c_out, None, None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _input(c_in: int = C_IN) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(2, c_in, 6, 6)).astype(np.float32)


def _rules(model) -> list[str]:
    return sorted(finding.rule for finding in predict_fusion(model).findings)


@pytest.mark.parametrize("stored_int8", [True, False], ids=["int8-initializer", "quantize-linear"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_convtranspose_fold_is_exact(bias, stored_int8):
    model = _convtranspose_bn(bias=bias, stored_int8=stored_int8)
    assert _rules(model) == ["batchnorm-not-fused"]
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == 2
    onnx.checker.check_model(folded)
    assert [node.op_type for node in folded.graph.node if node.name not in ("q_x", "dq_x")] == [
        "DequantizeLinear", "ConvTranspose", "Relu"
    ]
    expected, got = _run(model, _input()), _run(folded, _input())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert check_qdq_placement(folded) == []
    assert _rules(folded) == []
    assert next(p for p in predict_fusion(folded).predictions if p.node == "up").precision == "int8"

    # The int8 values only change sign along axis 1 (the output channel) and stay in the narrow range.
    weights = {init.name: numpy_helper.to_array(init) for init in folded.graph.initializer}
    dq = next(node for node in folded.graph.node if node.op_type == "DequantizeLinear" and node.name == "dq_w")
    q, scale = weights[dq.input[0]], weights[dq.input[1]]
    assert helper.get_attribute_value(dq.attribute[0]) == 1 and q.dtype == np.int8 and q.shape == (C_IN, C_OUT, 3, 3)
    assert q.min() >= -127 and q.max() <= 127 and np.all(scale > 0)
    assert np.all(q[:, 2] == 0)  # the zero factor
    original_scale = numpy_helper.to_array(next(init for init in model.graph.initializer if init.name == "w_s"))
    np.testing.assert_allclose(scale[[0, 1, 4]], original_scale[[0, 1, 4]] * np.abs(FACTORS[[0, 1, 4]]), rtol=1e-6)


def test_grouped_convtranspose_and_minus_128_are_left_alone():
    """group > 1: output channel g * (C_out/group) + j is not one axis-1 slice; -128 cannot flip sign in int8."""
    grouped = _convtranspose_bn(bias=False, stored_int8=True, group=2, factors=np.r_[FACTORS, 1.1], c_in=4)
    _run(grouped, _input(4))  # a valid graph
    before = grouped.SerializeToString()
    assert fold_batchnorm(grouped) == 0 and grouped.SerializeToString() == before
    assert "batchnorm-not-fused" in _rules(grouped)

    wide = _convtranspose_bn(bias=False, stored_int8=True)
    q_init = next(init for init in wide.graph.initializer if init.name == "w_q")
    q = numpy_helper.to_array(q_init).copy()
    q[0, 1, 0, 0] = -128  # channel 1 has a negative factor
    q_init.CopyFrom(numpy_helper.from_array(q, "w_q"))
    before = wide.SerializeToString()
    assert fold_batchnorm(wide) == 0 and wide.SerializeToString() == before
    q[0, 1, 0, 0], q[0, 0, 0, 0] = -127, -128  # -128 under a positive factor stays -128: foldable
    q_init.CopyFrom(numpy_helper.from_array(q, "w_q"))
    expected = _run(wide, _input())
    assert fold_batchnorm(wide) == 2
    got = _run(wide, _input())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_cpu_target_folds_convtranspose_batchnorm_too():
    """The ONNX Runtime CPU target folds with the same pass; it runs a ConvTranspose in float with its activation
    Q/DQ dropped, so compare on inputs already on the activation grid (scale 0.03)."""
    from qdq_toolkit.export.cpu_target import to_cpu_target

    model = _convtranspose_bn(bias=True, stored_int8=False)
    cpu = to_cpu_target(model)
    assert not {"Mul", "Add"} & {node.op_type for node in cpu.graph.node}
    x = (np.clip(np.rint(_input() / np.float32(0.03)), -128, 127) * np.float32(0.03)).astype(np.float32)
    expected = _run(model, x)
    np.testing.assert_allclose(_run(cpu, x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


# ---------------------------------------------------------------------------------------------------- Keras
@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A tiny quantized, calibrated Conv2DTranspose -> BatchNormalization -> ReLU model (and one without BN),
    exported by default, with fold_batchnorm=False and with fold_batchnorm=True."""
    import keras

    from qdq_toolkit import calibrate, quantize_model
    from qdq_toolkit.export import export_saved_model, keras_to_onnx

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(16, 6, 6, 3)).astype(np.float32)
    root = tmp_path_factory.mktemp("fold_bn")

    def build(with_bn: bool):
        inputs = keras.Input((6, 6, 3), name="image")
        x = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", use_bias=False, name="up")(inputs)
        if with_bn:
            x = keras.layers.BatchNormalization(name="bn")(x)
        model = keras.Model(inputs, keras.layers.ReLU(name="relu")(x))
        if with_bn:  # trained-looking statistics, with negative scales
            gamma = np.array([1.5, -0.7, 0.4, -2.0], np.float32)
            model.get_layer("bn").set_weights([gamma, rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)])
        qat = quantize_model(model)
        calibrate(qat, data, batch_size=8, progress=False)
        return qat

    qat, plain = build(True), build(False)
    paths = {}
    paths["default"] = keras_to_onnx(qat, root / "default.onnx").path
    paths["explicit"] = keras_to_onnx(qat, root / "explicit.onnx", fold_batchnorm=False).path
    paths["folded"] = keras_to_onnx(qat, root / "folded.onnx", fold_batchnorm=True).path
    paths["plain"] = keras_to_onnx(plain, root / "plain.onnx").path
    paths["plain_folded"] = keras_to_onnx(plain, root / "plain_folded.onnx", fold_batchnorm=True).path
    qat.save(root / "qat.keras")
    paths["keras"] = root / "qat.keras"
    paths["saved_model"] = export_saved_model(qat, root / "saved_model")
    return {"root": root, "paths": paths, "x": data[:4], "qat": qat}


def test_default_export_is_unchanged(exports):
    paths = exports["paths"]
    assert paths["default"].read_bytes() == paths["explicit"].read_bytes()
    assert paths["plain"].read_bytes() == paths["plain_folded"].read_bytes()  # nothing to fold: the same bytes
    assert paths["folded"].read_bytes() != paths["default"].read_bytes()


def test_keras_convtranspose_batchnorm_folds(exports):
    paths = exports["paths"]
    unfolded, folded = onnx.load(paths["default"]), onnx.load(paths["folded"])
    ops = [node.op_type for node in unfolded.graph.node]
    assert ops.index("ConvTranspose") < ops.index("Mul")  # Keras 3's BatchNorm: Mul (and Add) after the kernel
    assert _rules(unfolded) == ["batchnorm-not-fused"]
    ops = [node.op_type for node in folded.graph.node]
    assert "Mul" not in ops and "Add" not in ops
    assert ops[ops.index("ConvTranspose") + 1] == "Relu"
    assert check_qdq_placement(folded) == [] and not predict_fusion(folded).findings
    expected, got = _run(unfolded, exports["x"]), _run(folded, exports["x"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_saved_model_export_folds_too(exports, tmp_path):
    from qdq_toolkit.export import saved_model_to_onnx

    paths = exports["paths"]
    folded = onnx.load(saved_model_to_onnx(paths["saved_model"], tmp_path / "sm.onnx", fold_batchnorm=True).path)
    assert not {"Mul", "Add"} & {node.op_type for node in folded.graph.node}
    assert not predict_fusion(folded).findings
    expected = _run(onnx.load(paths["default"]), exports["x"])
    np.testing.assert_allclose(_run(folded, exports["x"]), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_fold_happens_before_the_float16_conversion(exports, tmp_path):
    """With fp16 a Cast sits between a weight's DequantizeLinear and its convolution: the fold runs before it."""
    from qdq_toolkit.export import keras_to_onnx

    qat = exports["qat"]
    unfolded = onnx.load(keras_to_onnx(qat, tmp_path / "fp16.onnx", fp16=True).path)
    folded = onnx.load(keras_to_onnx(qat, tmp_path / "fp16_folded.onnx", fp16=True, fold_batchnorm=True).path)
    assert "Mul" in {node.op_type for node in unfolded.graph.node}
    assert not {"Mul", "Add"} & {node.op_type for node in folded.graph.node}
    assert not predict_fusion(folded).findings
    expected = _run(unfolded, exports["x"])  # both quantize the same float16-rounded input
    np.testing.assert_allclose(_run(folded, exports["x"]), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


def test_fold_batchnorm_must_be_a_bool(tmp_path):
    from qdq_toolkit.export import saved_model_to_onnx

    with pytest.raises(TypeError, match="fold_batchnorm must be True or False"):  # refused before loading anything
        saved_model_to_onnx(tmp_path / "missing", tmp_path / "x.onnx", fold_batchnorm="yes")


def test_cli_fold_batchnorm(exports, capsys):
    from qdq_toolkit.export.__main__ import main

    root, keras_file = exports["root"], str(exports["paths"]["keras"])
    status = main(["--keras-model", keras_file, "-o", str(root / "cli.onnx"), "--check", "--strict", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 3 and [f["rule"] for f in report["findings"]] == ["batchnorm-not-fused"]
    assert "--fold-batchnorm" in report["findings"][0]["message"]
    status = main(
        ["--keras-model", keras_file, "-o", str(root / "cli_folded.onnx"), "--fold-batchnorm", "--check", "--strict",
         "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["findings"] == []
    assert (root / "cli_folded.onnx").read_bytes() == exports["paths"]["folded"].read_bytes()
