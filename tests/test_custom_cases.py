"""custom_cases: QDQ placements on keras.applications models, in Keras and in the exported ONNX graph.

Expectations are computed here from the graph structure and Keras' layer names, independently of the rules in
custom_cases: the convolution branch of a residual Add is the input with the longest run of single-consumer layers
back to a branch point (and Keras names it ``*_3_bn``, ``*_3_conv``, ``*drop``, ``*_project_BN``); every other
input is quantized.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import keras
import onnx
import pytest

from custom_cases import (
    BNQDQCase,
    EfficientNetQDQCase,
    InceptionQDQCase,
    MaxPoolQDQCase,
    MobileNetQDQCase,
    ResidualConnectionQDQCase,
    ResNetV1QDQCase,
    ResNetV2QDQCase,
    RuleCase,
    SqueezeExciteQDQCase,
    residual_input_indices,
    residual_qdq_spec,
)
from qdq_toolkit import (
    QDQWrapper,
    QuantizationSpec,
    iter_layers,
    plan_quantization,
    quantize_model,
    quantized_layers,
)

L = keras.layers
REPO = Path(__file__).resolve().parents[1]
# The models here are checked for placement only, so their ranges are never calibrated (export says so by a warning).
pytestmark = pytest.mark.filterwarnings("ignore::qdq_toolkit.export.UnobservedRangeWarning")


# ---------------------------------------------------------------------------------------- independent oracle
def producers(layer) -> list:
    return [tensor._keras_history.operation for tensor in layer._inbound_nodes[0].input_tensors]


def single_consumer_run(layer) -> int:
    """Layers from ``layer`` back to the nearest branch point (a layer read by several, or with several inputs)."""
    run = 0
    while len(layer._outbound_nodes) == 1 and len(producers(layer)) == 1:
        run += 1
        layer = producers(layer)[0]
    return run


def expected_residual_inputs(add, main_suffix: str) -> tuple[int, ...]:
    """All inputs but the main (convolution) branch: the longest single-consumer run, named ``*main_suffix``."""
    inputs = producers(add)
    runs = [single_consumer_run(p) for p in inputs]
    main = max(range(len(inputs)), key=runs.__getitem__)
    assert runs.count(runs[main]) == 1 and runs[main] > 0, (add.name, runs)
    assert inputs[main].name.endswith(main_suffix), (add.name, inputs[main].name)
    return tuple(i for i in range(len(inputs)) if i != main)


DEFAULT_INPUT_CLASSES = (L.Conv2D, L.DepthwiseConv2D, L.Dense, L.GlobalAveragePooling2D, L.AveragePooling2D)


def expected_wrappers(model: keras.Model, family: str) -> dict[str, tuple[int, ...]]:
    """``{layer name: quantized input indices}`` that quantize_model(model, custom_qdq_cases=[family case]) gives."""
    family_spec = FAMILIES[family]
    expected = {}
    for layer in model.layers:
        kind = type(layer)
        if kind in DEFAULT_INPUT_CLASSES:
            expected[layer.name] = (0,)
        elif kind is L.Add and family_spec["main_suffix"]:
            expected[layer.name] = expected_residual_inputs(layer, family_spec["main_suffix"])
        elif kind is L.MaxPooling2D and family in ("ResNet50V2", "InceptionV3"):
            expected[layer.name] = (0,)
        elif kind is L.BatchNormalization and family == "ResNet50V2" and type(producers(layer)[0]) is not L.Conv2D:
            assert layer.name.endswith(("preact_bn", "post_bn")), layer.name
            expected[layer.name] = (0,)
        elif kind is L.Multiply and family == "EfficientNetB0":
            assert layer.name.endswith("se_excite"), layer.name
            expected[layer.name] = (0, 1)
    return expected


FAMILIES = {
    "ResNet50": {"build": keras.applications.ResNet50, "shape": (32, 32, 3), "case": ResNetV1QDQCase, "main_suffix": "_3_bn"},
    "ResNet50V2": {"build": keras.applications.ResNet50V2, "shape": (32, 32, 3), "case": ResNetV2QDQCase, "main_suffix": "_3_conv"},
    "EfficientNetB0": {"build": keras.applications.EfficientNetB0, "shape": (32, 32, 3), "case": EfficientNetQDQCase, "main_suffix": "drop"},
    "MobileNetV2": {"build": keras.applications.MobileNetV2, "shape": (32, 32, 3), "case": MobileNetQDQCase, "main_suffix": "_project_BN"},
    "InceptionV3": {"build": keras.applications.InceptionV3, "shape": (75, 75, 3), "case": InceptionQDQCase, "main_suffix": None},
}


class Zoo:
    """keras.applications models (weights=None), built, quantized and exported at most once per test module."""

    def __init__(self, tmp_dir: Path):
        self.tmp_dir = tmp_dir
        self._models: dict[str, keras.Model] = {}
        self._quantized: dict[str, keras.Model] = {}
        self._onnx: dict[str, onnx.ModelProto] = {}

    def model(self, family: str) -> keras.Model:
        if family not in self._models:
            spec = FAMILIES[family]
            # weights=None: nothing can be downloaded here; 10 classes keep the head small (faster export)
            self._models[family] = spec["build"](weights=None, input_shape=spec["shape"], classes=10)
        return self._models[family]

    def quantized(self, family: str) -> keras.Model:
        if family not in self._quantized:
            self._quantized[family] = quantize_model(self.model(family), custom_qdq_cases=[FAMILIES[family]["case"]()])
        return self._quantized[family]

    def onnx(self, family: str) -> onnx.ModelProto:
        if family not in self._onnx:
            from qdq_toolkit.export.onnx import keras_to_onnx

            result = keras_to_onnx(self.quantized(family), self.tmp_dir / f"{family}.onnx", opset=13)
            self._onnx[family] = onnx.load(result.path)
        return self._onnx[family]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("custom_cases"))


def wrapped(model: keras.Model) -> dict[str, QDQWrapper]:
    return {wrapper.layer.name: wrapper for wrapper in quantized_layers(model)}


# ------------------------------------------------------------------------------------------- Keras placements
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_case_places_exactly_the_expected_qdq(zoo, family):
    model, qmodel = zoo.model(family), zoo.quantized(family)
    expected = expected_wrappers(model, family)
    got = {name: wrapper.quantize_inputs for name, wrapper in wrapped(qmodel).items()}
    assert got == expected
    for wrapper in quantized_layers(qmodel):  # weights: exactly the convolutions and dense layers
        assert wrapper.quantize_weights == isinstance(wrapper.layer, (L.Conv2D, L.DepthwiseConv2D, L.Dense))


def test_families_have_the_patterns_the_cases_target(zoo):
    """Guards the test above against vacuous success: each family really has its patterns."""
    counts = {}
    for family in FAMILIES:
        classes = Counter(type(layer).__name__ for layer in zoo.model(family).layers)
        counts[family] = (classes["Add"], classes["MaxPooling2D"], classes["Multiply"])
    assert counts == {
        "ResNet50": (16, 1, 0),
        "ResNet50V2": (16, 4, 0),
        "EfficientNetB0": (9, 0, 16),
        "MobileNetV2": (10, 0, 0),
        "InceptionV3": (0, 4, 0),
    }
    v1 = wrapped(zoo.quantized("ResNet50"))
    assert v1["conv2_block1_add"].quantize_inputs == (0,)  # projection block: the Conv->BN shortcut is quantized
    assert v1["conv2_block2_add"].quantize_inputs == (0,)  # identity block: the shortcut
    assert "pool1_pool" not in v1  # MaxPooling is not part of ResNet v1's case
    v2 = wrapped(zoo.quantized("ResNet50V2"))
    assert v2["conv2_block1_out"].quantize_inputs == (0,)  # Conv shortcut vs Conv main branch: the shortcut
    assert v2["conv2_block1_preact_bn"].quantize_inputs == (0,) and "conv2_block1_1_bn" not in v2
    assert wrapped(zoo.quantized("EfficientNetB0"))["block2b_add"].quantize_inputs == (1,)  # Keras: add([x, inputs])


def test_info_names_the_rules():
    for case in (ResNetV1QDQCase(), ResNetV2QDQCase(), EfficientNetQDQCase(), MobileNetQDQCase(), InceptionQDQCase()):
        info = case.info()
        assert isinstance(info, str) and info.splitlines()[0] == info
    assert "residual_qdq_spec" in ResNetV1QDQCase().info()
    assert all(rule in ResNetV2QDQCase().info() for rule in ("residual", "batchnorm", "maxpool"))
    assert "squeeze_excite" in EfficientNetQDQCase().info()
    assert "maxpool" in InceptionQDQCase().info() and "residual" not in InceptionQDQCase().info()


# ------------------------------------------------------------------------------------------- the user wins
def test_user_spec_wins_and_the_case_skips_named_layers(zoo):
    model = zoo.model("ResNet50")
    user = (
        QuantizationSpec()
        .add("conv2_block1_add", quantization_index=[1])  # the case would say [0]
        .add("conv2_block2_add", quantize_input=False)  # the case would quantize input 0
    )
    before = user.copy()
    case_spec = ResNetV1QDQCase().case(model, user)
    assert user == before
    names = {entry.name for entry in case_spec}
    assert "conv2_block1_add" not in names and "conv2_block2_add" not in names and "conv2_block3_add" in names

    got = wrapped(quantize_model(model, custom_qdq_cases=[ResNetV1QDQCase()], quantization_spec=user))
    assert got["conv2_block1_add"].quantize_inputs == (1,)
    assert "conv2_block2_add" not in got
    assert got["conv2_block3_add"].quantize_inputs == (0,)


def test_user_class_entries_win_too(zoo):
    model = zoo.model("InceptionV3")
    user = QuantizationSpec().add("MaxPooling2D", is_keras_class=True, quantize_input=False, quantize_weight=False)
    assert len(InceptionQDQCase().case(model, user)) == 0
    plans = plan_quantization(model, custom_qdq_cases=[InceptionQDQCase()], quantization_spec=user)
    assert not any(isinstance(layer, L.MaxPooling2D) for layer in model.layers if id(layer) in plans)


def test_user_spec_wins_on_resnet_v2(zoo):
    model = zoo.model("ResNet50V2")
    user = QuantizationSpec().add("pool1_pool", quantize_input=False).add("conv2_block1_preact_bn", quantize_input=False)
    plans = {plan.path: plan for plan in plan_quantization(model, custom_qdq_cases=[ResNetV2QDQCase()], quantization_spec=user).values()}
    assert "pool1_pool" not in plans and "conv2_block1_preact_bn" not in plans
    assert plans["conv2_block2_preact_bn"].quantize_inputs == (0,) and plans["post_bn"].quantize_inputs == (0,)


def test_cases_compose(zoo):
    model = zoo.model("ResNet50")
    got = wrapped(quantize_model(model, custom_qdq_cases=[ResNetV1QDQCase(), InceptionQDQCase()]))
    expected = expected_wrappers(model, "ResNet50") | {"pool1_pool": (0,)}
    assert {name: w.quantize_inputs for name, w in got.items()} == expected


def all_add_inputs(model: keras.Model, qspec: QuantizationSpec | None) -> QuantizationSpec:
    spec = QuantizationSpec()
    for ref in iter_layers(model):
        if type(ref.layer) is L.Add:
            spec.add(ref.path, quantization_index=list(range(ref.num_inputs)))
    return spec


class AllAddInputsCase(RuleCase):
    """Every input of every Add quantized (to see which case wins)."""

    rules = (all_add_inputs,)


def test_a_later_case_wins_for_the_same_layer(zoo):
    model = zoo.model("MobileNetV2")
    add = model.get_layer("block_2_add")
    first = plan_quantization(model, custom_qdq_cases=[MobileNetQDQCase(), AllAddInputsCase()])
    second = plan_quantization(model, custom_qdq_cases=[AllAddInputsCase(), MobileNetQDQCase()])
    assert first[id(add)].quantize_inputs == (0, 1)
    assert second[id(add)].quantize_inputs == (0,)


# --------------------------------------------------------------------------------------- handmade residuals
def conv_bn(x, filters=4, name=None, relu=False):
    x = L.Conv2D(filters, 3, padding="same", name=f"{name}_conv" if name else None)(x)
    x = L.BatchNormalization(name=f"{name}_bn" if name else None)(x)
    return L.ReLU()(x) if relu else x


def add_of(branches, inputs) -> tuple[int, ...]:
    """The quantized inputs ResidualConnectionQDQCase chooses for Add(branches)."""
    model = keras.Model(inputs, L.Add(name="add")(branches))
    spec = ResidualConnectionQDQCase().case(model, QuantizationSpec())
    return spec.get("add").quantization_index


def test_projection_shortcut_is_quantized_whatever_the_input_order():
    for order in ((0, 1), (1, 0)):
        x = keras.Input((8, 8, 4))
        stem = L.ReLU()(x)
        shortcut = conv_bn(stem, name="shortcut")  # Conv -> BN, read from the block input
        main = conv_bn(conv_bn(stem, relu=True), name="main")  # the deeper branch: TensorRT fuses the add into it
        branches = [shortcut, main]
        assert add_of([branches[i] for i in order], x) == (order.index(0),)


def test_equally_deep_convolution_branches_fuse_the_last_input():
    x = keras.Input((8, 8, 4))
    assert add_of([conv_bn(x), conv_bn(x)], x) == (0,)
    assert add_of([conv_bn(x), conv_bn(x), conv_bn(x)], x) == (0, 1)


def test_no_convolution_branch_quantizes_every_input():
    x = keras.Input((8, 8, 4))
    y = L.ReLU()(x)
    z = L.Conv2D(4, 1)(y)  # a convolution, but its output is read twice (by the add and the pooling)
    pooled = L.MaxPooling2D(1)(z)
    assert add_of([x, y, z, pooled], x) == (0, 1, 2, 3)
    a, b = keras.Input((8,)), keras.Input((8,))
    assert add_of([a, b], [a, b]) == (0, 1)


def test_more_than_two_inputs_leave_only_the_deepest_convolution_branch():
    def branches():  # new layers for each Add: a branch read by two Adds would not be fusable
        x = keras.Input((8, 8, 4))
        return x, conv_bn(x), conv_bn(conv_bn(x, relu=True))

    x, shallow, deep = branches()
    assert add_of([x, deep, shallow], x) == (0, 2)
    x, shallow, deep = branches()
    assert add_of([shallow, x, deep], x) == (0, 1)


@pytest.mark.parametrize(
    ("tail", "is_branch"),
    [
        (lambda x: L.Conv2D(4, 1)(x), True),
        (lambda x: L.Activation("relu")(L.Conv2D(4, 1)(x)), True),
        (lambda x: L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 1)(x))), True),
        (lambda x: L.Dropout(0.2)(L.Activation("swish")(L.BatchNormalization()(L.Conv2D(4, 1)(x)))), True),
        (lambda x: L.Dropout(0.2)(L.BatchNormalization()(L.DepthwiseConv2D(1)(x))), True),
        (lambda x: L.BatchNormalization()(L.ReLU()(L.Conv2D(4, 1)(x))), False),  # BN after the activation
        (lambda x: L.MaxPooling2D(1)(L.Conv2D(4, 1)(x)), False),
        (lambda x: L.Dense(4)(x), False),
        (lambda x: L.Activation("softmax")(L.Conv2D(4, 1)(x)), False),  # no epilogue activation in TensorRT
        (lambda x: L.ReLU()(L.Conv2DTranspose(4, 1)(x)), True),
        (lambda x: L.BatchNormalization()(L.Conv2DTranspose(4, 1)(x)), False),  # no BN fusion (TensorRT#3412)
    ],
)
def test_what_counts_as_a_convolution_branch(tail, is_branch):
    x = keras.Input((8, 8, 4))
    shortcut = L.ReLU()(x)
    branch = tail(shortcut)
    assert add_of([shortcut, branch], x) == ((0,) if is_branch else (0, 1))


def test_a_branch_read_elsewhere_is_not_fused():
    x = keras.Input((8, 8, 4))
    bn = conv_bn(x)
    side = L.ReLU()(bn)  # the BN output is also read here, so it must be written to memory
    model = keras.Model(x, [L.Add(name="add")([x, bn]), side])
    assert residual_qdq_spec(model).get("add").quantization_index == (0, 1)
    assert residual_input_indices(model.get_layer("add")) == [0, 1]


# -------------------------------------------------------------------------- BN, SE and nested models
def test_batchnorm_rule():
    x = keras.Input((8, 8, 4))
    after_input = L.BatchNormalization(name="after_input")(x)
    after_conv = L.BatchNormalization(name="after_conv")(L.Conv2D(4, 1)(after_input))
    shared_conv = L.Conv2D(4, 1, name="shared_conv")(after_conv)
    after_shared = L.BatchNormalization(name="after_shared_conv")(shared_conv)  # the conv is read twice: no folding
    model = keras.Model(x, L.Add()([after_shared, shared_conv]))
    assert [entry.name for entry in BNQDQCase().case(model, QuantizationSpec())] == ["after_input", "after_shared_conv"]


def test_only_squeeze_excite_multiplies_are_quantized():
    x = keras.Input((8, 8, 4))
    features = L.Conv2D(4, 1, name="features")(x)
    gate = L.GlobalAveragePooling2D(keepdims=True)(features)
    gate = L.Conv2D(2, 1, activation="relu")(gate)
    gate = L.Conv2D(4, 1, activation="sigmoid")(gate)
    excite = L.Multiply(name="se_excite")([gate, features])  # gate first: order does not matter
    swish = L.Multiply(name="swish")([excite, L.Activation("sigmoid")(excite)])  # not a squeeze-excite
    model = keras.Model(x, swish)
    spec = SqueezeExciteQDQCase().case(model, QuantizationSpec())
    assert [(entry.name, entry.quantization_index) for entry in spec] == [("se_excite", (0, 1))]


def nested_model() -> keras.Model:
    block_in = keras.Input((8, 8, 4))
    main = conv_bn(conv_bn(block_in, relu=True), name="main")
    block = keras.Model(block_in, L.Add(name="add")([block_in, main]), name="block")
    pre = keras.Sequential([keras.Input((8, 8, 4)), L.BatchNormalization(name="pre_bn"), L.MaxPooling2D(1, name="pool")], name="pre")
    inputs = keras.Input((8, 8, 4))
    x = block(pre(inputs))
    outputs = L.Add(name="add")([x, L.Conv2D(4, 1, name="conv")(x)])  # same bare name as the nested add
    return keras.Model(inputs, outputs, name="net")


def test_nested_models_use_layer_paths():
    model = nested_model()
    spec = ResNetV2QDQCase().case(model, QuantizationSpec())
    entries = {entry.name: entry.quantization_index for entry in spec}
    assert entries == {"pre/pre_bn": None, "pre/pool": None, "block/add": (0,), "add": (0,)}

    qmodel = quantize_model(model, custom_qdq_cases=[ResNetV2QDQCase()])
    paths = {ref.path: ref.layer for ref in iter_layers(qmodel) if isinstance(ref.layer, QDQWrapper)}
    assert paths["block/quant_add"].quantize_inputs == (0,)
    assert paths["quant_add"].quantize_inputs == (0,)
    assert paths["pre/quant_pre_bn"].quantize_inputs == (0,)


def test_an_application_nested_in_another_model():
    backbone = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    inputs = keras.Input((32, 32, 3))
    outer = keras.Model(inputs, L.Activation("softmax")(backbone(inputs)), name="outer")
    expected = {
        f"{backbone.name}/{layer.name}": expected_residual_inputs(layer, "_project_BN")
        for layer in backbone.layers
        if type(layer) is L.Add
    }
    spec = MobileNetQDQCase().case(outer, QuantizationSpec())
    assert {entry.name: entry.quantization_index for entry in spec} == expected
    plans = {plan.path: plan.quantize_inputs for plan in plan_quantization(outer, custom_qdq_cases=[MobileNetQDQCase()]).values()}
    assert {path: plans[path] for path in expected} == expected


def test_nested_layers_named_by_the_user_are_skipped():
    model = nested_model()
    by_path = ResidualConnectionQDQCase().case(model, QuantizationSpec().add("block/add", quantize_input=False))
    assert [entry.name for entry in by_path] == ["add"]
    # a bare name is the top-level layer when there is one (as in quantize_model): the nested add keeps its QDQ
    by_bare_name = ResidualConnectionQDQCase().case(model, QuantizationSpec().add("add", quantize_input=False))
    assert [entry.name for entry in by_bare_name] == ["block/add"]
    planned = plan_quantization(model, "partial", QuantizationSpec().add("add", quantize_input=False), [ResidualConnectionQDQCase()])
    assert {plan.path: plan.quantize_inputs for plan in planned.values()} == {"block/add": (0,)}
    # else the one nested layer of that name
    assert len(MaxPoolQDQCase().case(model, QuantizationSpec())) == 1
    assert len(MaxPoolQDQCase().case(model, QuantizationSpec().add("pool", quantize_input=False))) == 0


def test_rule_case_checks_its_arguments():
    with pytest.raises(TypeError, match="expects a keras.Model"):
        ResNetV1QDQCase().case(L.Dense(2), QuantizationSpec())
    with pytest.raises(TypeError, match="QuantizationSpec or None"):
        ResNetV1QDQCase().case(nested_model(), {"add": [0]})
    assert len(MaxPoolQDQCase().case(nested_model(), None)) == 1


# ------------------------------------------------------------------------------------- the doc's example
def doc_example() -> str:
    text = (REPO / "docs" / "custom_cases.md").read_text()
    match = re.search(r"<!-- example: custom_cases/examples.py -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/custom_cases.md must show custom_cases/examples.py after its example marker"
    return match.group(1)


def test_the_doc_shows_the_example_that_runs(zoo):
    assert doc_example() == (REPO / "custom_cases" / "examples.py").read_text()
    from custom_cases.examples import FloatClassifierQDQCase, quantize_resnet_with_float_head

    model = zoo.model("ResNet50")
    got = {name: w.quantize_inputs for name, w in wrapped(quantize_resnet_with_float_head(model)).items()}
    expected = expected_wrappers(model, "ResNet50")
    del expected["avg_pool"], expected["predictions"]
    assert got == expected
    # the user still wins over the example case
    user = QuantizationSpec().add("predictions")
    assert [e.name for e in FloatClassifierQDQCase().case(model, user)] == ["avg_pool"]


# ------------------------------------------------------------------------------------------- ONNX placements
SHAPE_ONLY_OPS = {"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"}
ONNX_INPUTS_OF = {  # Keras layer class -> (ONNX op, inputs that read a DequantizeLinear when quantized)
    L.Conv2D: ("Conv", (0, 1)),
    L.DepthwiseConv2D: ("Conv", (0, 1)),
    L.Dense: ("MatMul", (0, 1)),
    L.GlobalAveragePooling2D: ("GlobalAveragePool", (0,)),
    L.AveragePooling2D: ("AveragePool", (0,)),
    L.MaxPooling2D: ("MaxPool", (0,)),
    L.BatchNormalization: ("Mul", (0,)),
    L.Multiply: ("Mul", (0, 1)),
}


def dequantized_inputs(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, int]]:
    """``(node, input index)`` for every input of a compute node that comes from a DequantizeLinear."""
    producer = {name: node for node in graph.node for name in node.output}

    def from_dq(name: str) -> bool:
        node = producer.get(name)
        while node is not None and node.op_type in SHAPE_ONLY_OPS:
            node = producer.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    skip = SHAPE_ONLY_OPS | {"QuantizeLinear", "DequantizeLinear"}
    return [(node, i) for node in graph.node if node.op_type not in skip for i, name in enumerate(node.input) if from_dq(name)]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_placements(zoo, family):
    from qdq_toolkit.export.checks import check_qdq_placement, summarize_qdq
    from qdq_toolkit.export.fusion import predict_fusion

    model, exported = zoo.model(family), zoo.onnx(family)
    expected = expected_wrappers(model, family)
    layers = {layer.name: layer for layer in model.layers}

    assert check_qdq_placement(exported) == []
    report = predict_fusion(exported)
    assert report.findings == ()
    convolutions = sum(isinstance(layer, (L.Conv2D, L.DepthwiseConv2D)) for layer in model.layers)
    assert report.counts()["convolutions_int8"] == report.counts()["convolutions"] == convolutions
    adds = sum(type(layer) is L.Add for layer in model.layers)
    assert report.residual_adds_fused == (adds if FAMILIES[family]["main_suffix"] else 0)
    assert all(p.keras_layer for p in report.predictions)
    summary = summarize_qdq(exported)
    compute_layers = sum(isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.Dense)) for layer in model.layers)
    assert summary["quantized_op_count"] == compute_layers
    assert summary["float_op_count"] == 0

    fed = dequantized_inputs(exported.graph)
    # every residual Add reads a DequantizeLinear on exactly the expected inputs
    for name, indices in expected.items():
        if type(layers[name]) is not L.Add:
            continue
        scope = re.compile(rf"(^|/)quant_{re.escape(name)}(_\d+)?/")
        adds = [node for node in exported.graph.node if node.op_type == "Add" and scope.search(node.name)]
        assert len(adds) == 1, (name, [node.name for node in adds])
        assert tuple(sorted(i for node, i in fed if node is adds[0])) == indices, name

    # nothing else is quantized: the dequantized inputs are exactly those of the expected layers
    wanted: Counter = Counter()
    for name, indices in expected.items():
        layer = layers[name]
        op_type, op_inputs = ("Add", indices) if type(layer) is L.Add else ONNX_INPUTS_OF[type(layer)]
        wanted.update((op_type, i) for i in op_inputs)
    assert Counter((node.op_type, i) for node, i in fed) == wanted
