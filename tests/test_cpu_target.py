"""The ONNX Runtime CPU target: integer kernels, fidelity on real digits, ranges, bad input, the CLI, BN folding."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_toolkit.export.cpu_target import (
    CalibrationDataError,
    MissingRangesError,
    count_integer_kernels,
    to_cpu_target,
)
from qdq_toolkit.export.fold_batchnorm import fold_batchnorm

ROOT = Path(__file__).resolve().parents[1]


def _run(model: onnx.ModelProto, x: np.ndarray, outputs=None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, {session.get_inputs()[0].name: x})


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    """A small residual CNN (Conv-BN-ReLU, Conv-BN + shortcut Add, pooling, Dense) trained on the real digits,
    quantized and fine-tuned; its TensorRT-target ONNX (twice: default and target="tensorrt") and CPU target."""
    import keras

    from qdq_toolkit import quantize_model
    from qdq_toolkit.data import load_digits
    from qdq_toolkit.export import keras_to_onnx

    keras.utils.set_random_seed(0)
    data = load_digits(test_fraction=0.25, seed=0)
    layers = keras.layers
    inputs = keras.Input(data.input_shape, name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(momentum=0.9, name="stem_bn")(x))
    y = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv_a")(x)
    y = layers.ReLU(name="relu_a")(layers.BatchNormalization(momentum=0.9, name="bn_a")(y))
    y = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv_b")(y)
    y = layers.BatchNormalization(momentum=0.9, name="bn_b")(y)
    x = layers.ReLU(name="block_relu")(layers.Add(name="add")([x, y]))
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, layers.Dense(10, name="logits")(x))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(data.train.images, data.train.labels, epochs=20, batch_size=64, verbose=0)
    qat = quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), loss)
    qat.fit(data.train.images, data.train.labels, epochs=2, batch_size=64, verbose=0)
    root = tmp_path_factory.mktemp("cpu_target")
    default = keras_to_onnx(qat, root / "default.onnx")
    explicit = keras_to_onnx(qat, root / "tensorrt.onnx", target="tensorrt")
    calibration = data.train.images[:256].astype(np.float32)
    cpu = keras_to_onnx(qat, root / "cpu.onnx", target="onnxruntime", calibration_data=calibration)
    qat.save(root / "qat.keras")
    np.save(root / "calibration.npy", calibration)
    return {
        "root": root,
        "data": data,
        "keras_logits": qat.predict(data.test.images, verbose=0),
        "default": default,
        "explicit": explicit,
        "cpu": cpu,
        "qat": qat,
        "calibration": calibration,
    }


def test_tensorrt_target_is_the_default_and_unchanged(residual):
    assert residual["default"].target == residual["explicit"].target == "tensorrt"
    assert residual["default"].path.read_bytes() == residual["explicit"].path.read_bytes()
    assert residual["cpu"].path.read_bytes() != residual["default"].path.read_bytes()


def test_onnx_runtime_fuses_every_quantized_conv_and_matmul(residual):
    model = onnx.load(residual["cpu"].path)
    counts = count_integer_kernels(model)
    assert counts["quantized"] == 4  # three Conv and the Dense MatMul
    assert counts["share"] >= 0.95, counts
    assert counts["float_compute_left"] == 0, counts["op_counts"]
    assert counts["op_counts"].get("QLinearAdd") == 1, counts["op_counts"]  # DQ on both Add inputs, Q after
    # the TensorRT-target graph of the same model gets no integer kernel at all
    assert count_integer_kernels(onnx.load(residual["default"].path))["integer_kernels"] == 0
    # u8 activations, every activation Q has one consumer
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    zero_points = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            assert zero_points[node.input[2]].data_type == TensorProto.UINT8
            assert consumers[node.output[0]] == 1


def test_fidelity_on_real_digits(residual):
    data = residual["data"]
    labels = data.test.labels
    keras_top1 = residual["keras_logits"].argmax(1)
    cpu = _run(onnx.load(residual["cpu"].path), data.test.images.astype(np.float32))[0].argmax(1)
    trt = _run(onnx.load(residual["default"].path), data.test.images.astype(np.float32))[0].argmax(1)
    assert (cpu == keras_top1).mean() >= 0.99
    assert abs((cpu == labels).mean() - (trt == labels).mean()) <= 0.005
    assert (trt == labels).mean() > 0.9  # a trained model, so agreement means something


def test_trained_ranges_are_reused(residual):
    """Every activation range of the TensorRT graph reappears on the same tensor of the CPU graph: amax/127 with
    zero point 128, or amax/255 with zero point 0 for a tensor known to be >= 0 (after a ReLU)."""
    trt = onnx.load(residual["default"].path)
    cpu = onnx.load(residual["cpu"].path)
    trt_values = {init.name: numpy_helper.to_array(init) for init in trt.graph.initializer}
    cpu_values = {init.name: numpy_helper.to_array(init) for init in cpu.graph.initializer}
    checked = 0
    for node in trt.graph.node:
        scale = trt_values.get(node.input[1]) if node.op_type == "QuantizeLinear" else None
        if scale is None or scale.size != 1 or node.input[0] in trt_values:
            continue
        safe = node.input[0].replace(":", "_").replace("/", "_")
        placed, zero_point = cpu_values[f"{safe}__cpu_scale"], int(cpu_values[f"{safe}__cpu_zero_point"])
        amax = float(scale) * 127
        assert float(placed) == pytest.approx(amax / (255 if zero_point == 0 else 127), rel=1e-6), node.input[0]
        assert zero_point in (0, 128)
        checked += 1
    assert checked >= 5


def test_missing_ranges_need_calibration_data(residual, tmp_path):
    from qdq_toolkit.export import keras_to_onnx

    target = tmp_path / "cpu.onnx"
    with pytest.raises(MissingRangesError, match="calibration-data") as error:
        keras_to_onnx(residual["qat"], target, target="onnxruntime")
    assert "conv_b" in str(error.value) or "add" in str(error.value)  # names the tensors without a range
    assert not target.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((4, 8, 8, 1), np.float64), "dtype float64.*float32"),
        (np.zeros((4, 8, 8), np.float32), r"shape \(4, 8, 8\).*\(N, 8, 8, 1\)"),
        (np.zeros((4, 9, 8, 1), np.float32), r"\(N, 8, 8, 1\)"),
        ({"pixels": np.zeros((4, 8, 8, 1), np.float32)}, "'image'.*unknown: pixels"),
    ],
)
def test_bad_calibration_data_names_the_expected_input(residual, data, message):
    with pytest.raises(CalibrationDataError, match=message):
        to_cpu_target(onnx.load(residual["default"].path), data)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "qdq_toolkit.export", *map(str, args)], capture_output=True, text=True, env=env,
        timeout=600,
    )


def test_cli_with_and_without_calibration_data(residual, tmp_path):
    root = residual["root"]
    output = tmp_path / "cpu.onnx"
    without = _cli("--keras-model", root / "qat.keras", "-o", output, "--target", "onnxruntime", "-q")
    assert without.returncode == 1, without.stderr
    errors = [line for line in without.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--calibration-data" in errors[0], without.stderr
    assert "Traceback" not in without.stderr and not output.exists()

    with_data = _cli(
        "--keras-model", root / "qat.keras", "-o", output, "--target", "onnxruntime",
        "--calibration-data", root / "calibration.npy", "-q",
    )
    assert with_data.returncode == 0, with_data.stderr
    model = onnx.load(output)
    assert count_integer_kernels(model)["share"] >= 0.95
    x = residual["data"].test.images[:64].astype(np.float32)
    np.testing.assert_array_equal(_run(model, x)[0], _run(onnx.load(residual["cpu"].path), x)[0])


# ------------------------------------------------------------------------------------------- BatchNorm folding
def _conv_bn_model(quantized: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """x -> Conv(W [per-channel QDQ]) -> Mul(a) -> Add(b) -> y, with negative, zero and positive factors."""
    rng = np.random.default_rng(0)
    channels = 6
    weight = rng.normal(size=(channels, 3, 3, 3)).astype(np.float32)
    factor = np.array([1.7, -0.4, 0.0, -2.5, 0.9, 3e-3], np.float32).reshape(1, channels, 1, 1)
    shift = rng.normal(size=(1, channels, 1, 1)).astype(np.float32)
    initializers = [numpy_helper.from_array(factor, "a"), numpy_helper.from_array(shift, "b")]
    nodes = []
    if quantized:
        scale = (np.abs(weight).reshape(channels, -1).max(1) / 127).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(scale, "w_scale"),
            numpy_helper.from_array(np.zeros(channels, np.int8), "w_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zero"], ["w_q"], axis=0),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=0),
        ]
        weight_name = "w_dq"
    else:
        initializers.append(numpy_helper.from_array(weight, "w"))
        weight_name = "w"
    nodes += [
        helper.make_node("Conv", ["x", weight_name], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["conv", "a"], ["scaled"]),
        helper.make_node("Add", ["scaled", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, channels, 8, 8])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model, rng.normal(size=(4, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("quantized", [True, False], ids=["qdq-weights", "float-weights"])
def test_batchnorm_fold_is_exact(quantized):
    model, x = _conv_bn_model(quantized)
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == 2
    onnx.checker.check_model(folded)
    assert [node.op_type for node in folded.graph.node if node.op_type in ("Mul", "Add")] == []
    expected, = _run(model, x)
    got, = _run(folded, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    if quantized:  # the int8 values only change sign, and stay in the narrow range
        weights = {init.name: numpy_helper.to_array(init) for init in folded.graph.initializer}
        q = next(value for value in weights.values() if value.dtype == np.int8 and value.ndim == 4)
        assert q.min() >= -127 and q.max() <= 127
        assert np.all(q[2] == 0)  # the zero factor


# ---------------------------------------------------------------------------------------------- Pad folding
@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """ResNet50's stem in miniature (ZeroPadding2D -> strided Conv -> BN -> ReLU -> ZeroPadding2D -> MaxPool),
    plus a ZeroPadding2D -> MaxPool on a tensor of either sign, which must keep its Pad; calibrated on digits (as
    RGB: with one channel tf2onnx writes a Reshape instead of the layout Transpose, a case the fold leaves)."""
    import keras

    from qdq_toolkit import calibrate, quantize_model
    from qdq_toolkit.data import load_digits
    from qdq_toolkit.export import keras_to_onnx

    keras.utils.set_random_seed(0)
    data = load_digits(test_fraction=0.25, seed=0, channels=3)
    layers = keras.layers
    inputs = keras.Input(data.input_shape, name="image")
    x = layers.ZeroPadding2D(3, name="stem_pad")(inputs)
    x = layers.Conv2D(8, 5, strides=2, use_bias=False, name="stem")(x)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    x = layers.MaxPooling2D(3, strides=2, name="pool")(layers.ZeroPadding2D(1, name="pool_pad")(x))
    x = layers.Conv2D(8, 1, name="signed")(x)  # no ReLU: a tensor of either sign
    x = layers.MaxPooling2D(2, name="signed_pool")(layers.ZeroPadding2D(1, name="signed_pad")(x))
    x = layers.Conv2D(8, 1, activation="relu", name="head")(x)
    model = keras.Model(inputs, layers.Dense(10, name="logits")(layers.GlobalAveragePooling2D(name="gap")(x)))
    quantized = quantize_model(model)
    calibration = data.train.images[:128].astype(np.float32)
    calibrate(quantized, calibration, "max", batch_size=64, progress=False)
    trt = onnx.load(keras_to_onnx(quantized, tmp_path_factory.mktemp("padded") / "trt.onnx").path)
    return trt, calibration, data.test.images.astype(np.float32)


def test_zero_pads_move_into_the_conv_and_the_max_pool_exactly(padded, monkeypatch):
    """The stem's Pad (before the layout Transpose) and the Pad before a MaxPool of a ReLU output disappear; the
    outputs equal those of the same graph with the Pads kept, bit for bit. The Pad before a MaxPool of a signed
    tensor stays (MaxPool would pad with -inf, not 0)."""
    from qdq_toolkit.export import cpu_target

    trt, calibration, x = padded
    pads_before = [node for node in trt.graph.node if node.op_type == "Pad"]
    assert len(pads_before) == 3
    folded = to_cpu_target(trt, calibration)
    kept = [node for node in folded.graph.node if node.op_type == "Pad"]
    assert len(kept) == 1 and "signed_pad" in kept[0].output[0], [node.output[0] for node in kept]
    pads = {
        node.op_type: next(list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "pads")
        for node in folded.graph.node
        if node.op_type in ("Conv", "MaxPool") and any(a.name == "pads" and any(helper.get_attribute_value(a)) for a in node.attribute)
    }
    assert pads == {"Conv": [3, 3, 3, 3], "MaxPool": [1, 1, 1, 1]}, pads
    # ONNX Runtime runs it with the one float Pad left
    optimized = count_integer_kernels(folded)
    assert optimized["share"] == 1.0 and optimized["op_counts"].get("Pad") == 1, optimized["op_counts"]

    monkeypatch.setattr(cpu_target, "_fold_zero_pads", lambda graph, rules: None)
    unfolded = to_cpu_target(trt, calibration)
    assert sum(node.op_type == "Pad" for node in unfolded.graph.node) == 3
    np.testing.assert_array_equal(_run(folded, x)[0], _run(unfolded, x)[0])
