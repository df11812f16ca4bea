"""The TensorRT QDQ-placement checker, on small hand-built ONNX graphs (opset 13).

One valid, TensorRT-ready graph; then one mutation per rule, asserting that exactly that rule fires on the
right node.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_toolkit.export.checks import (
    RULES,
    Violation,
    check_qdq_placement,
    format_violations,
    summarize_qdq,
    violations_to_dict,
    violations_to_json,
)

OPSET = 13
RNG = np.random.default_rng(0)


def _init(name: str, value: np.ndarray | float | int, dtype: type | None = None) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "qdq_test", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def _qdq(tensor: str, prefix: str, axis: int | None = None) -> list[onnx.NodeProto]:
    """QuantizeLinear -> DequantizeLinear on ``tensor`` with initializers ``{prefix}_scale``/``{prefix}_zp``."""
    kwargs = {} if axis is None else {"axis": axis}
    return [
        helper.make_node("QuantizeLinear", [tensor, f"{prefix}_scale", f"{prefix}_zp"], [f"{prefix}_q"],
                         name=f"q_{prefix}", **kwargs),
        helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_scale", f"{prefix}_zp"], [f"{prefix}_dq"],
                         name=f"dq_{prefix}", **kwargs),
    ]


def _int8_weight(shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(-127, 128, size=shape).astype(np.int8)


def valid_model() -> onnx.ModelProto:
    """A TensorRT-ready graph.

    x -QDQ-> conv1 (float weight -> Q -> DQ axis 0 -> Identity) -> relu1 -QDQ-> conv2 (int8 weight -> DQ axis 0)
    -> add(conv2, dequantized relu1: the residual branch) -> relu2 -> flatten -QDQ-> matmul (int8 (K, N) -> DQ
    axis 1) -> y. The relu1 scale is a Constant node behind an Identity.
    """
    nodes = [
        *_qdq("x", "x"),
        *_qdq("w1", "w1", axis=0),
        helper.make_node("Identity", ["w1_dq"], ["w1_dq_id"], name="w1_identity"),
        helper.make_node("Conv", ["x_dq", "w1_dq_id", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Constant", [], ["r1_scale_const"], name="r1_scale_const",
                         value=_init("r1_scale_value", 0.04, np.float32)),
        helper.make_node("Identity", ["r1_scale_const"], ["r1_scale"], name="r1_scale_identity"),
        *_qdq("r1", "r1"),
        helper.make_node("DequantizeLinear", ["w2", "w2_scale", "w2_zp"], ["w2_dq"], name="dq_w2", axis=0),
        helper.make_node("Conv", ["r1_dq", "w2_dq", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1_dq"], ["a"], name="residual_add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten", axis=1),
        *_qdq("f", "f"),
        helper.make_node("DequantizeLinear", ["w3", "w3_scale", "w3_zp"], ["w3_dq"], name="dq_w3", axis=1),
        helper.make_node("MatMul", ["f_dq", "w3_dq"], ["y"], name="matmul"),
    ]
    initializers = [
        _init("x_scale", 0.02, np.float32), _init("x_zp", 0, np.int8),
        _init("w1", RNG.standard_normal((4, 3, 3, 3)), np.float32),
        _init("w1_scale", [0.01, 0.02, 0.03, 0.04], np.float32), _init("w1_zp", np.zeros(4), np.int8),
        _init("b1", np.zeros(4), np.float32),
        _init("r1_zp", 0, np.int8),
        _init("w2", _int8_weight((4, 4, 3, 3))),
        _init("w2_scale", [0.01, 0.01, 0.02, 0.02], np.float32), _init("w2_zp", np.zeros(4), np.int8),
        _init("b2", np.zeros(4), np.float32),
        _init("f_scale", 0.05, np.float32), _init("f_zp", 0, np.int8),
        _init("w3", _int8_weight((256, 10))),
        _init("w3_scale", np.full(10, 0.003), np.float32), _init("w3_zp", np.zeros(10), np.int8),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])]
    return _model(nodes, inputs, outputs, initializers)


# -- helpers to mutate the valid model -----------------------------------------------------------------------


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _remove_node(model: onnx.ModelProto, name: str) -> None:
    model.graph.node.remove(_node(model, name))


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray | float | int, dtype: type | None = None) -> None:
    old = next(t for t in model.graph.initializer if t.name == name)
    old.CopyFrom(_init(name, value, dtype))


def _set_axis(model: onnx.ModelProto, name: str, axis: int) -> None:
    node = _node(model, name)
    for attr in node.attribute:
        if attr.name == "axis":
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute("axis", axis))


def _found(model: onnx.ModelProto) -> list[tuple[str, str]]:
    return [(v.rule, v.node) for v in check_qdq_placement(model)]


# -- the valid graph -----------------------------------------------------------------------------------------


def test_valid_graph_is_valid_onnx_and_runs() -> None:
    model = valid_model()
    onnx.checker.check_model(model, full_check=True)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)})
    assert y.shape == (1, 10)


def test_valid_graph_has_no_violations() -> None:
    assert check_qdq_placement(valid_model()) == []


def test_summary_counts_qdq_and_quantized_ops() -> None:
    summary = summarize_qdq(valid_model())
    assert summary["quantize_linear"] == 4
    assert summary["dequantize_linear"] == 6
    assert summary["quantized_ops"] == {"Conv": 2, "ConvTranspose": 0, "MatMul": 1, "Gemm": 0}
    assert summary["quantized_op_count"] == 3
    assert summary["float_op_count"] == 0


def test_unquantized_layer_is_float_by_choice() -> None:
    model = valid_model()
    _remove_node(model, "q_x")
    _remove_node(model, "dq_x")
    _remove_node(model, "q_w1")
    _remove_node(model, "dq_w1")
    _node(model, "conv1").input[0] = "x"
    _node(model, "w1_identity").input[0] = "w1"
    assert check_qdq_placement(model) == []
    summary = summarize_qdq(model)
    assert summary["quantized_ops"]["Conv"] == 1
    assert summary["float_ops"]["Conv"] == 1


def test_path_input(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(valid_model(), path)
    assert check_qdq_placement(path) == []
    assert check_qdq_placement(str(path)) == []
    assert summarize_qdq(path)["quantized_op_count"] == 3


# -- one graph per rule --------------------------------------------------------------------------------------


def test_missing_zero_point_on_q_means_uint8() -> None:
    model = valid_model()
    for name in ("q_x", "dq_x"):
        del _node(model, name).input[2]
    assert _found(model) == [("zero-point-dtype", "q_x")]


def test_uint8_zero_point() -> None:
    model = valid_model()
    _set_init(model, "x_zp", 0, np.uint8)
    assert _found(model) == [("zero-point-dtype", "q_x"), ("zero-point-dtype", "dq_x")]


def test_uint8_weight_without_zero_point() -> None:
    model = valid_model()
    _set_init(model, "w2", np.zeros((4, 4, 3, 3)), np.uint8)
    del _node(model, "dq_w2").input[2]
    assert _found(model) == [("zero-point-dtype", "dq_w2")]


def test_nonzero_zero_point() -> None:
    model = valid_model()
    _set_init(model, "w1_zp", [0, 1, 0, 0], np.int8)
    found = check_qdq_placement(model)
    assert [(v.rule, v.node) for v in found] == [("zero-point-value", "q_w1"), ("zero-point-value", "dq_w1")]
    assert found[0].tensor == "w1_zp"


def test_scale_computed_at_run_time() -> None:
    model = valid_model()
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "x_scale"))
    model.graph.initializer.append(_init("inv_127", 1 / 127, np.float32))
    model.graph.node.insert(0, helper.make_node("ReduceMax", ["x"], ["x_amax"], name="amax", keepdims=0))
    model.graph.node.insert(1, helper.make_node("Mul", ["x_amax", "inv_127"], ["x_scale"], name="scale_mul"))
    found = check_qdq_placement(model)
    assert [(v.rule, v.node) for v in found] == [("scale-not-constant", "q_x"), ("scale-not-constant", "dq_x")]
    assert "Mul 'scale_mul'" in found[0].message


@pytest.mark.parametrize("bad", [0.0, -0.5, np.nan, np.inf])
def test_scale_not_positive(bad: float) -> None:
    model = valid_model()
    _set_init(model, "w2_scale", [0.01, bad, 0.02, 0.02], np.float32)
    assert _found(model) == [("scale-not-positive", "dq_w2")]


def test_scale_not_positive_in_constant_node() -> None:
    model = valid_model()
    constant = _node(model, "r1_scale_const")
    constant.attribute[0].t.CopyFrom(_init("r1_scale_value", -0.04, np.float32))
    assert _found(model) == [("scale-not-positive", "q_r1"), ("scale-not-positive", "dq_r1")]


def test_activation_per_channel() -> None:
    model = valid_model()
    _set_init(model, "x_scale", [0.02, 0.03, 0.04], np.float32)
    _set_init(model, "x_zp", np.zeros(3), np.int8)
    _set_axis(model, "q_x", 1)
    _set_axis(model, "dq_x", 1)
    onnx.checker.check_model(model, full_check=True)
    assert _found(model) == [("activation-per-channel", "q_x"), ("activation-per-channel", "dq_x")]


def test_conv_weight_on_wrong_axis() -> None:
    model = valid_model()
    _set_axis(model, "dq_w2", 1)  # (4, 4, 3, 3) kernel: axis 1 is the input channels
    found = check_qdq_placement(model)
    assert [(v.rule, v.node) for v in found] == [("weight-axis", "dq_w2")]
    assert "axis 0" in found[0].message and "conv2" in found[0].message


def test_matmul_weight_on_wrong_axis() -> None:
    model = valid_model()
    _set_init(model, "w3", _int8_weight((10, 10)))
    _set_axis(model, "dq_w3", 0)
    # reshape the flattened activation to 10 features so the graph stays consistent
    _node(model, "matmul").input[0] = "f_dq_10"
    model.graph.initializer.append(_init("shape_10", [-1, 10], np.int64))
    model.graph.node.insert(
        len(model.graph.node) - 1, helper.make_node("Reshape", ["f_dq", "shape_10"], ["f_dq_10"], name="reshape")
    )
    assert _found(model) == [("weight-axis", "dq_w3")]


def test_matmul_weight_negative_axis_is_the_last_axis() -> None:
    model = valid_model()
    _set_axis(model, "dq_w3", -1)
    assert check_qdq_placement(model) == []


def test_weight_scale_size() -> None:
    model = valid_model()
    _set_init(model, "w2_scale", [0.01, 0.02], np.float32)
    _set_init(model, "w2_zp", np.zeros(2), np.int8)
    found = check_qdq_placement(model)
    assert [(v.rule, v.node) for v in found] == [("weight-scale-size", "dq_w2")]
    assert found[0].tensor == "w2_scale"


def test_weight_qdq_missing() -> None:
    model = valid_model()
    _remove_node(model, "dq_w2")
    _node(model, "conv2").input[1] = "w2_float"
    model.graph.initializer.append(_init("w2_float", RNG.standard_normal((4, 4, 3, 3)), np.float32))
    found = check_qdq_placement(model)
    assert [(v.rule, v.node) for v in found] == [("weight-qdq-missing", "conv2")]
    assert found[0].tensor == "w2_float"


def test_data_input_not_quantized() -> None:
    model = valid_model()
    _remove_node(model, "q_x")
    _remove_node(model, "dq_x")
    _node(model, "conv1").input[0] = "x"
    found = check_qdq_placement(model)
    assert [(v.rule, v.node) for v in found] == [("input-qdq-missing", "conv1")]
    assert found[0].tensor == "x"


def test_matmul_second_activation_not_quantized() -> None:
    nodes = [*_qdq("a", "a"), helper.make_node("MatMul", ["a_dq", "b"], ["y"], name="attn_matmul")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in ("a", "b")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])]
    model = _model(nodes, inputs, outputs, [_init("a_scale", 0.1, np.float32), _init("a_zp", 0, np.int8)])
    found = check_qdq_placement(model)
    assert [(v.rule, v.node, v.tensor) for v in found] == [("input-qdq-missing", "attn_matmul", "b")]


def test_q_feeding_a_non_dq_node() -> None:
    model = valid_model()
    model.graph.node.append(helper.make_node("MaxPool", ["x_q"], ["x_pool"], name="pool", kernel_shape=[2, 2]))
    model.graph.output.append(helper.make_tensor_value_info("x_pool", TensorProto.INT8, None))
    found = check_qdq_placement(model)
    assert [(v.rule, v.node) for v in found] == [("q-not-followed-by-dq", "q_x")]
    assert "MaxPool" in found[0].message


def test_shape_op_between_q_and_dq_is_flagged_with_a_fix() -> None:
    """tf2onnx's transpose optimizer can leave Q -> Transpose -> DQ when its q_dq_optimizer is dropped."""
    model = valid_model()
    model.graph.node.insert(
        [n.name for n in model.graph.node].index("dq_r1"),
        helper.make_node("Transpose", ["r1_q"], ["r1_q_t"], name="r1_transpose", perm=[0, 1, 3, 2]),
    )
    _node(model, "dq_r1").input[0] = "r1_q_t"
    onnx.checker.check_model(model, full_check=True)
    found = check_qdq_placement(model)
    assert [(v.rule, v.node) for v in found] == [("q-not-followed-by-dq", "q_r1")]
    assert "Transpose 'r1_transpose'" in found[0].message and "move shape-only ops" in found[0].message


def test_dangling_q() -> None:
    model = valid_model()
    model.graph.node.append(
        helper.make_node("QuantizeLinear", ["r2", "f_scale", "f_zp"], ["r2_q"], name="q_dangling")
    )
    assert _found(model) == [("q-not-followed-by-dq", "q_dangling")]


def test_q_as_graph_output() -> None:
    model = valid_model()
    model.graph.node.append(helper.make_node("Identity", ["x_q"], ["x_q_out"], name="out_identity"))
    model.graph.output.append(helper.make_tensor_value_info("x_q_out", TensorProto.INT8, [1, 3, 8, 8]))
    assert _found(model) == [("q-graph-output", "q_x")]


def test_dq_scale_differs_from_its_q() -> None:
    model = valid_model()
    _node(model, "dq_r1").input[1] = "r1_other_scale"
    model.graph.initializer.append(_init("r1_other_scale", 0.08, np.float32))
    found = check_qdq_placement(model)
    assert [(v.rule, v.node) for v in found] == [("qdq-mismatch", "dq_r1")]
    assert "q_r1" in found[0].message


# -- other layer types and weight layouts --------------------------------------------------------------------


def _single_layer_model(
    op_type: str, weight: np.ndarray, axis: int, x_shape: list[int], y_shape: list[int], **attrs: int
) -> onnx.ModelProto:
    """x -QDQ-> op_type(x, int8 weight -> DQ(axis)) -> y."""
    channels = weight.shape[axis]
    nodes = [
        *_qdq("x", "x"),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["w_dq"], name="dq_w", axis=axis),
        helper.make_node(op_type, ["x_dq", "w_dq"], ["y"], name="layer", **attrs),
    ]
    initializers = [
        _init("x_scale", 0.02, np.float32), _init("x_zp", 0, np.int8), _init("w", weight),
        _init("w_scale", np.full(channels, 0.01), np.float32), _init("w_zp", np.zeros(channels), np.int8),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]
    return _model(nodes, inputs, outputs, initializers)


@pytest.mark.parametrize(
    ("op_type", "shape", "x_shape", "y_shape", "attrs", "good_axis", "bad_axis"),
    [
        ("ConvTranspose", (4, 2, 3, 3), [1, 4, 5, 5], [1, 2, 7, 7], {}, 1, 0),
        ("Gemm", (6, 5), [2, 6], [2, 5], {}, 1, 0),
        ("Gemm", (5, 6), [2, 6], [2, 5], {"transB": 1}, 0, 1),
        ("Conv", (4, 2, 3, 3), [1, 2, 5, 5], [1, 4, 3, 3], {}, 0, 1),
    ],
)
def test_weight_axis_per_layer_type(op_type, shape, x_shape, y_shape, attrs, good_axis, bad_axis) -> None:
    good = _single_layer_model(op_type, _int8_weight(shape), good_axis, x_shape, y_shape, **attrs)
    onnx.checker.check_model(good, full_check=True)
    assert check_qdq_placement(good) == []
    assert summarize_qdq(good)["quantized_ops"][op_type] == 1
    bad = _single_layer_model(op_type, _int8_weight(shape), bad_axis, x_shape, y_shape, **attrs)
    assert _found(bad) == [("weight-axis", "dq_w")]


@pytest.mark.parametrize(("dq_axis", "expected"), [(0, []), (1, [("weight-axis", "dq_w")])])
def test_weight_axis_is_mapped_through_transpose(dq_axis: int, expected: list) -> None:
    """An (N, K) weight -> DQ -> Transpose -> MatMul is per channel on axis 0 of the stored weight."""
    model = _single_layer_model("MatMul", _int8_weight((5, 6)), 0, [2, 6], [2, 5])
    _set_axis(model, "dq_w", dq_axis)
    _node(model, "layer").input[1] = "w_t"
    model.graph.node.insert(2, helper.make_node("Transpose", ["w_dq"], ["w_t"], name="w_transpose", perm=[1, 0]))
    if dq_axis == 1:
        _set_init(model, "w_scale", np.full(6, 0.01), np.float32)
        _set_init(model, "w_zp", np.zeros(6), np.int8)
    assert _found(model) == expected
    assert summarize_qdq(model)["quantized_ops"]["MatMul"] == 1


def test_per_tensor_weight_is_accepted() -> None:
    model = valid_model()
    _set_init(model, "w2_scale", 0.01, np.float32)
    _set_init(model, "w2_zp", 0, np.int8)
    assert check_qdq_placement(model) == []


def test_shared_weight_dq_is_reported_once() -> None:
    model = valid_model()
    _set_axis(model, "dq_w2", 1)
    model.graph.node.append(helper.make_node("Conv", ["r1_dq", "w2_dq", "b2"], ["c3"], name="conv3", pads=[1] * 4))
    model.graph.output.append(helper.make_tensor_value_info("c3", TensorProto.FLOAT, None))
    assert _found(model) == [("weight-axis", "dq_w2")]


# -- loading errors ------------------------------------------------------------------------------------------


def test_missing_path(tmp_path) -> None:
    path = tmp_path / "nope.onnx"
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        check_qdq_placement(path)


def test_garbage_file(tmp_path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00\xffthis is not an onnx model\x13\x37" * 8)
    with pytest.raises(ValueError, match="garbage.onnx.*not a valid ONNX model") as info:
        check_qdq_placement(path)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_empty_file(tmp_path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.onnx"):
        summarize_qdq(path)


def test_directory(tmp_path) -> None:
    with pytest.raises(ValueError, match="directory"):
        check_qdq_placement(tmp_path)


def test_wrong_type() -> None:
    with pytest.raises(TypeError, match="ModelProto"):
        check_qdq_placement(42)  # type: ignore[arg-type]


# -- reports -------------------------------------------------------------------------------------------------


def test_format_clean() -> None:
    model = valid_model()
    assert format_violations([], summarize_qdq(model)) == "no violations: 3 quantized ops checked"
    assert format_violations([]) == "no violations"


def test_format_table_is_aligned() -> None:
    model = valid_model()
    _set_init(model, "x_zp", 3, np.int8)
    _set_axis(model, "dq_w2", 1)
    violations = check_qdq_placement(model)
    text = format_violations(violations, summarize_qdq(model))
    lines = text.splitlines()
    assert lines[0].split() == ["RULE", "NODE", "OP", "TENSOR", "MESSAGE"]
    starts = [lines[0].index(col) for col in ("NODE", "OP", "TENSOR", "MESSAGE")]
    for row, violation in zip(lines[2:-1], violations, strict=True):
        cells = (violation.node, violation.op_type, violation.tensor or "-", violation.message)
        assert [row.index(cell, start) for cell, start in zip(cells, starts, strict=True)] == starts
    assert lines[-1] == (
        "3 violations (zero-point-value 2, weight-axis 1); 3 quantized ops checked"
    )


def test_json_report() -> None:
    model = valid_model()
    _set_init(model, "x_zp", 3, np.int8)
    violations = check_qdq_placement(model)
    report = json.loads(violations_to_json(violations, summarize_qdq(model), model_path="m.onnx"))
    assert report["model"] == "m.onnx" and report["ok"] is False
    summary = report["summary"]
    assert summary["violations"] == 2
    assert set(summary["by_rule"]) == set(RULES)
    assert summary["by_rule"]["zero-point-value"] == 2
    assert sum(summary["by_rule"].values()) == 2
    assert (summary["quantize_linear"], summary["dequantize_linear"], summary["quantized_op_count"]) == (4, 6, 3)
    assert report["violations"][0] == {
        "rule": "zero-point-value", "node": "q_x", "op_type": "QuantizeLinear",
        "message": violations[0].message, "tensor": "x_zp",
    }
    clean = violations_to_dict([])
    assert clean["ok"] is True and clean["summary"]["violations"] == 0


def test_violation_is_frozen_and_every_rule_is_documented() -> None:
    violation = Violation("weight-axis", "n", "DequantizeLinear", "m")
    with pytest.raises(AttributeError):
        violation.rule = "other"  # type: ignore[misc]
    assert all(text.strip() for text in RULES.values())
