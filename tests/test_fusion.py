"""The fusion predictor on hand-built ONNX graphs: each fusion breaker is found, its fixed twin is clean.

Also: the rules table is what the checker and the passes read, ONNX Runtime's own quantize_static output gets
findings, and the ``--check`` CLI prints the summary line, the per-layer table, the JSON lists and honours
``--strict``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_toolkit.export.fusion import FUSION_RULES, keras_layer_name, predict_fusion
from qdq_toolkit.tensorrt_rules import COMPUTE_OPS, QUANTIZED_OP_TYPES, weight_axis

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
C = 4  # channels


def _init(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _qdq(tensor: str, prefix: str, scale: float = 0.02, axis: int | None = None) -> tuple[list, list]:
    kwargs = {} if axis is None else {"axis": axis}
    size = C if axis is not None else None
    nodes = [
        helper.make_node("QuantizeLinear", [tensor, f"{prefix}_s", f"{prefix}_zp"], [f"{prefix}_q"], name=f"q_{prefix}", **kwargs),
        helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_s", f"{prefix}_zp"], [f"{prefix}_dq"], name=f"dq_{prefix}", **kwargs),
    ]
    inits = [
        _init(f"{prefix}_s", np.full(size, scale) if size else scale),
        _init(f"{prefix}_zp", np.zeros(size) if size else 0, np.int8),
    ]
    return nodes, inits


class Graph:
    """A small graph builder: ``g.conv("x_dq", "c1")`` adds a Conv with a per-channel quantized weight."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def qdq(self, tensor, prefix, scale=0.02, axis=None) -> str:
        nodes, inits = _qdq(tensor, prefix, scale, axis)
        self.nodes += nodes
        self.inits += inits
        return f"{prefix}_dq"

    def node(self, op, inputs, output, name=None, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=name or output, **attrs))
        return output

    def const(self, name, value) -> str:
        self.inits.append(_init(name, value))
        return name

    def conv(self, data, out, op="Conv", quantize_weight=True) -> str:
        axis = 1 if op == "ConvTranspose" else 0
        self.const(f"{out}_w", RNG.standard_normal((C, C, 3, 3)))
        weight = self.qdq(f"{out}_w", f"{out}_w", 0.01, axis=axis) if quantize_weight else f"{out}_w"
        return self.node(op, [data, weight], out, pads=[1, 1, 1, 1])

    def batchnorm(self, tensor, out) -> str:
        mul = self.node("Mul", [tensor, self.const(f"{out}_gamma", RNG.random((1, C, 1, 1)) + 0.5)], f"{out}_mul")
        return self.node("Add", [mul, self.const(f"{out}_beta", RNG.random((1, C, 1, 1)))], out)

    def model(self, output) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "fusion",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 8, 8])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["n", "c", "h", "w"])],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        onnx.checker.check_model(model)
        return model


def rules(model) -> list[str]:
    return sorted(f.rule for f in predict_fusion(model).findings)


def prediction(model, node):
    return next(p for p in predict_fusion(model).predictions if p.node == node)


# --------------------------------------------------------------------------------------------- compute ops
def test_int8_needs_both_inputs_dequantized():
    g = Graph()
    c1 = g.conv(g.qdq("x", "x"), "c1")
    g.conv(c1, "c2")  # data input not quantized
    report = predict_fusion(g.model("c2"))
    first, second = report.predictions
    assert (first.precision, second.precision) == ("int8", "float")
    assert "data input 'c1' is not" in second.reason
    assert [f.rule for f in report.errors] == ["input-qdq-missing"]
    assert report.summary_line().startswith("1/2 convolutions INT8")

    g = Graph()
    g.conv(g.qdq("x", "x"), "c1", quantize_weight=False)
    assert prediction(g.model("c1"), "c1").precision == "float"
    assert rules(g.model("c1")) == ["weight-qdq-missing"]


def test_attention_matmul_with_two_activation_inputs():
    """``Q @ K^T``: both inputs are activations; int8 only when both are dequantized (as ModelOpt quantizes it)."""
    for quantize_both, expected in ((True, "int8"), (False, "float")):
        g = Graph()
        q = g.node("Relu", ["x"], "q")
        k = g.node("Transpose", [g.node("Sigmoid", ["x"], "k")], "kt", perm=[0, 1, 3, 2])
        k_in = g.qdq(k, "k") if quantize_both else k
        g.node("MatMul", [g.qdq(q, "q"), k_in], "scores")
        scaled = g.node("Mul", ["scores", g.const("inv_sqrt_d", 0.125)], "scaled")  # the 1/sqrt(d) epilogue
        model = g.model(g.node("Softmax", [scaled], "probs", axis=-1))
        p = prediction(model, "scores")
        assert p.precision == expected, p.reason
        assert ("attention MatMul" in p.reason) == quantize_both
        assert p.epilogue == ("scaled",)
        assert [f.severity for f in predict_fusion(model).findings] == ([] if quantize_both else ["error"])


# ------------------------------------------------------------------------------------- epilogue breakers
def test_qdq_between_conv_and_its_activation_breaks_the_epilogue():
    def build(broken: bool):
        g = Graph()
        bn = g.batchnorm(g.conv(g.qdq("x", "x"), "c1"), "bn1")
        relu_in = g.qdq(bn, "bn1") if broken else bn
        relu = g.node("Relu", [relu_in], "relu1")
        return g.conv(g.qdq(relu, "relu1"), "c2"), g

    out, g = build(broken=True)
    model = g.model(out)
    assert rules(model) == ["qdq-before-epilogue"]
    finding = predict_fusion(model).findings[0]
    assert finding.severity == "warning" and finding.node == "q_bn1"
    out, g = build(broken=False)
    model = g.model(out)
    assert rules(model) == []
    first = prediction(model, "c1")
    assert first.epilogue == ("bn1_mul", "bn1", "relu1") and first.output == "int8"
    assert any("not verified on a GPU" in note for note in predict_fusion(model).notes)


def test_conv_transpose_batchnorm_is_not_fused():
    """NVIDIA/TensorRT#3412: no Q/DQ + ConvTranspose + BN fusion; a Conv's BN folds."""
    for op, expected in (("ConvTranspose", ["batchnorm-not-fused"]), ("Conv", [])):
        g = Graph()
        out = g.node("Relu", [g.batchnorm(g.conv(g.qdq("x", "x"), "c1", op=op), "bn1")], "relu1")
        assert rules(g.model(out)) == expected, op


# -------------------------------------------------------------------------------------------- residuals
def _residual(branch_qdq: bool, shortcut_qdq: bool) -> onnx.ModelProto:
    g = Graph()
    x = g.node("Relu", [g.qdq("x", "x")], "x_relu")
    branch = g.batchnorm(g.conv(g.qdq(x, "in"), "c1"), "bn1")
    if branch_qdq:
        branch = g.qdq(branch, "branch")
    shortcut = g.qdq(x, "shortcut") if shortcut_qdq else x
    return g.model(g.node("Relu", [g.node("Add", [branch, shortcut], "add")], "out"))


def test_residual_add_fuses_when_only_the_shortcut_is_quantized():
    report = predict_fusion(_residual(branch_qdq=False, shortcut_qdq=True))
    assert report.findings == ()
    assert (report.residual_adds, report.residual_adds_fused) == (1, 1)
    fused = next(p for p in report.predictions if p.node == "c1")
    assert fused.residual_add == "add" and fused.epilogue == ("bn1_mul", "bn1", "out")  # the Add's Relu too
    assert "1/1 residual Adds fused, 0 findings" in report.summary_line()


def test_qdq_on_the_fused_branch_of_a_residual_add():
    report = predict_fusion(_residual(branch_qdq=True, shortcut_qdq=True))
    assert [f.rule for f in report.findings] == ["residual-branch-qdq"]
    assert (report.residual_adds, report.residual_adds_fused) == (1, 0)


def test_residual_add_whose_other_input_is_float():
    report = predict_fusion(_residual(branch_qdq=False, shortcut_qdq=False))
    assert [f.rule for f in report.findings] == ["residual-input-not-quantized"]
    assert report.findings[0].tensor == "x_relu"


# -------------------------------------------------------------------------------------------- Q/DQ chains
@pytest.mark.parametrize(("second_scale", "rule"), [(0.02, "redundant-qdq"), (0.05, "requantization")])
def test_requantization_chains(second_scale, rule):
    g = Graph()
    once = g.qdq("x", "x", 0.02)
    twice = g.qdq(once, "again", second_scale)
    broken = g.model(g.conv(twice, "c1"))
    assert rules(broken) == [rule]
    g = Graph()
    assert rules(g.model(g.conv(g.qdq("x", "x"), "c1"))) == []


@pytest.mark.parametrize(("second_scale", "expected"), [(0.05, ["concat-scales-differ"]), (0.02, [])])
def test_concat_inputs_share_one_scale(second_scale, expected):
    g = Graph()
    a = g.qdq(g.node("Relu", ["x"], "a"), "a", 0.02)
    b = g.qdq(g.node("Sigmoid", ["x"], "b"), "b", second_scale)
    out = g.conv(g.qdq(g.node("Concat", [a, b], "cat", axis=1), "cat"), "c1")
    g.inits[[t.name for t in g.inits].index("c1_w")] = _init("c1_w", RNG.standard_normal((C, 2 * C, 3, 3)))
    assert rules(g.model(out)) == expected


def test_every_fusion_rule_has_a_severity_and_a_test():
    assert {severity for severity, _ in FUSION_RULES.values()} == {"error", "warning"}
    tested = {"qdq-before-epilogue", "batchnorm-not-fused", "residual-branch-qdq", "residual-input-not-quantized",
              "redundant-qdq", "requantization", "concat-scales-differ"}
    assert {rule for rule, (severity, _) in FUSION_RULES.items() if severity == "warning"} == tested


# ------------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("resnet50_1/quant_conv1_conv_1/convolution", "conv1_conv"),
        ("StatefulPartitionedCall/digits_cnn_1/quant_conv0_1/convolution", None),
        ("digits_cnn_1/bn0_1/batchnorm/mul_1", "bn0"),
        ("QuantLinearNode__3", None),
        ("/layer1/conv/Conv", None),
    ],
)
def test_keras_layer_names(name, layer):
    assert keras_layer_name(name) == layer


# -------------------------------------------------------------------------------------------- the table
def test_the_table_is_what_the_checker_and_passes_read():
    import qdq_toolkit.export.checks as checks
    import qdq_toolkit.export.onnx as export_onnx

    assert checks.QUANTIZED_OP_TYPES is QUANTIZED_OP_TYPES == tuple(COMPUTE_OPS)
    assert export_onnx.SHAPE_ONLY_OPS is checks.SHAPE_ONLY_OPS
    assert [weight_axis(op, 4) for op in ("Conv", "ConvTranspose", "MatMul")] == [0, 1, 3]
    assert weight_axis("Gemm", 2, {"transB": 1}) == 0 and weight_axis("Gemm", 2, {}) == 1
    assert weight_axis("Relu", 4) is None


# ---------------------------------------------------------------------------- ONNX Runtime's quantizer
def test_onnxruntime_quantize_static_output_gets_findings(tmp_path):
    """ORT's QDQ format quantizes outputs (Q/DQ between Conv and Relu) and uses uint8 activations by default."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    g = Graph()
    c1 = g.conv("x", "c1", quantize_weight=False)
    relu = g.node("Relu", [g.node("Add", [c1, g.const("c1_b", RNG.random((1, C, 1, 1)))], "c1_bias")], "relu")
    float_path = tmp_path / "float.onnx"
    onnx.save(g.model(g.conv(relu, "c2", quantize_weight=False)), float_path)
    for node in onnx.load(float_path).graph.node:
        assert node.op_type not in ("QuantizeLinear", "DequantizeLinear")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": RNG.standard_normal((1, C, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    # TensorRT-style settings (int8, symmetric, per channel): ORT still quantizes every output, so the Q/DQ
    # between the Conv and its bias Add splits the epilogue
    symmetric = tmp_path / "ort_int8.onnx"
    quantize_static(str(float_path), str(symmetric), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True})
    report = predict_fusion(symmetric)
    assert [(f.rule, f.severity) for f in report.findings] == [("qdq-before-epilogue", "warning")]
    assert [p.precision for p in report.predictions] == ["int8", "int8"]
    # ORT's defaults: uint8 activations, which TensorRT rejects (errors), so nothing runs in INT8
    default = tmp_path / "ort_uint8.onnx"
    quantize_static(str(float_path), str(default), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    report = predict_fusion(default)
    assert "zero-point-dtype" in {f.rule for f in report.errors}
    assert all(p.precision == "float" for p in report.predictions)


# ------------------------------------------------------------------------------------------------- CLI
def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "qdq_toolkit.export", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_check_summary_verbose_json_and_strict(tmp_path):
    path = tmp_path / "broken.onnx"
    onnx.save(_residual(branch_qdq=True, shortcut_qdq=True), path)
    table = _cli("--check", path, "--verbose")
    assert table.returncode == 0, table.stderr  # warnings only
    assert "residual-branch-qdq" in table.stdout
    assert "1/1 convolutions INT8, 0/1 residual Adds fused, 1 finding (0 errors, 1 warnings)" in table.stdout
    assert "PRECISION" in table.stdout and "REASON" in table.stdout  # the per-layer table
    strict = _cli("--check", path, "--json", "--strict")
    assert strict.returncode == 3  # --strict: warnings count
    report = json.loads(strict.stdout)
    assert report["ok"] is True and report["violations"] == []  # the old keys
    assert [f["rule"] for f in report["findings"]] == ["residual-branch-qdq"]
    assert set(report["findings"][0]) >= {"rule", "node", "severity", "message"}
    assert [(p["node"], p["op_type"], p["precision"]) for p in report["predictions"]] == [("c1", "Conv", "int8")]
    assert report["fusion_summary"]["residual_adds"] == 1
