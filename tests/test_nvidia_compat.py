"""qdq_toolkit.nvidia_compat: scripts written against NVIDIA's documented TF2 toolkit API run after one change,
the import prefix ``tensorflow_quantization`` -> ``qdq_toolkit.nvidia_compat``.

The two walkthroughs of NVIDIA's documentation ("Add New Layer Support", "Add Custom QDQ Insertion Case",
docs.nvidia.com, TensorFlow Quantization Toolkit) are rewritten here as small scripts that import
``tensorflow_quantization``; each test swaps the prefix, runs the script, and checks the QDQ placement it
produces on the exported ONNX graph.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import warnings
import zipfile

import keras
import numpy as np
import onnx
import pytest

import qdq_toolkit.nvidia_compat as tq
from qdq_toolkit import QuantizationSpec as NativeSpec
from qdq_toolkit import QuantizationSpecError
from qdq_toolkit import quantize_model as native_quantize_model
from qdq_toolkit.export.checks import check_qdq_placement
from qdq_toolkit.nvidia_compat import custom_qdq_cases, utils
from qdq_toolkit.nvidia_compat.quantize import LayerNameNotFoundWarning
from qdq_toolkit.wrappers import QDQWrapper

L = keras.layers
PREFIX = "tensorflow_quantization"
pytestmark = pytest.mark.filterwarnings("ignore::qdq_toolkit.export.UnobservedRangeWarning")


def migrate(script: str) -> str:
    """The whole migration: the import prefix."""
    return script.replace(PREFIX, "qdq_toolkit.nvidia_compat")


def run_script(script: str, **names) -> dict:
    namespace = {"__name__": "nvidia_script", **names}
    exec(compile(migrate(script), "nvidia_script.py", "exec"), namespace)  # noqa: S102 - the test's own script
    return namespace


# ------------------------------------------------------------------------------------------- ONNX helpers
SKIPPED = {"QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


class Graph:
    def __init__(self, path):
        self.model = onnx.load(os.fspath(path))
        graph = self.model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.constants = {init.name for init in graph.initializer} | {
            out for node in graph.node if node.op_type == "Constant" for out in node.output
        }

    def nodes(self, op_type: str) -> list[onnx.NodeProto]:
        return [node for node in self.model.graph.node if node.op_type == op_type]

    def from_dq(self, name: str) -> bool:
        """Whether tensor ``name`` comes from a DequantizeLinear (through shape-only ops)."""
        node = self.producer.get(name)
        while node is not None and node.op_type in SKIPPED - {"QuantizeLinear", "DequantizeLinear"}:
            node = self.producer.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    def source_op(self, name: str) -> str:
        """The op type that computed tensor ``name``, looking through Q/DQ and shape-only ops."""
        node = self.producer.get(name)
        while node is not None and node.op_type in SKIPPED:
            node = self.producer.get(node.input[0])
        return node.op_type if node is not None else "graph input"

    def dequantized_inputs(self, node: onnx.NodeProto) -> tuple[int, ...]:
        return tuple(i for i, name in enumerate(node.input) if self.from_dq(name))

    def residual_adds(self) -> list[onnx.NodeProto]:
        """Add nodes of two computed tensors (a BatchNorm's Add has a constant input)."""
        return [n for n in self.nodes("Add") if not any(i in self.constants for i in n.input)]


def wrapped(model: keras.Model) -> dict[str, QDQWrapper]:
    return {layer.layer.name: layer for layer in model.layers if isinstance(layer, QDQWrapper)}


# ------------------------------------------------------------------------------------------- module layout
NVIDIA_NAMES = {
    "": [
        "G_NUM_BITS", "G_NARROW_RANGE", "G_SYMMETRIC", "QuantizationSpec", "quantize_model", "BaseQuantizeWrapper",
        "WeightedBaseQuantizeWrapper", "NonWeightedBaseQuantizeWrapper", "CustomQDQInsertionCase",
        "CreateAssetsFolders", "convert_saved_model_to_onnx", "convert_keras_model_to_onnx", "utils", "__version__",
    ],
    ".quantize": ["LayerConfig", "QuantizationSpec", "quantize_model"],
    ".quantize_wrapper_base": ["BaseQuantizeWrapper"],
    ".quantize_wrappers": [
        "WeightedBaseQuantizeWrapper", "NonWeightedBaseQuantizeWrapper",
        "NonWeightedBaseQuantizeWrapperForMultipleInputs", "DISABLED_LAYER_QUANTIZATION_DEFAULT",
        "Conv2DQuantizeWrapper", "DenseQuantizeWrapper", "DepthwiseConv2DQuantizeWrapper",
        "AveragePooling2DQuantizeWrapper", "GlobalAveragePooling2DQuantizeWrapper", "MaxPooling2DQuantizeWrapper",
        "BatchNormalizationQuantizeWrapper", "MultiplyQuantizeWrapper", "ConcatenateQuantizeWrapper",
        "AddQuantizeWrapper",
    ],
    ".custom_qdq_case_base": ["CustomQDQInsertionCase"],
    ".custom_qdq_cases": [
        "BNQDQCase", "ResidualConnectionQDQCase", "MaxPoolQDQCase", "ResNetV1QDQCase", "ResNetV2QDQCase",
        "EfficientNetQDQCase", "MobileNetQDQCase", "InceptionQDQCase", "is_parent_type", "is_parent_pattern",
        "check_is_quantizable_by_layer_name",
    ],
    ".utils": [
        "CreateAssetsFolders", "Folder", "ensure_and_clean_dir", "convert_saved_model_to_onnx",
        "convert_keras_model_to_onnx", "KerasModelTraveller", "find_my_predecessors", "find_my_successors",
    ],
}  # fmt: skip

# NVIDIA's documented signatures (positional parameters, in order)
NVIDIA_PARAMETERS = {
    "quantize_model": ["model", "quantization_mode", "quantization_spec", "custom_qdq_cases"],
    "QuantizationSpec.add": ["self", "name", "is_keras_class", "quantize_input", "quantize_weight", "quantization_index"],
    "utils.convert_saved_model_to_onnx": ["saved_model_dir", "onnx_model_path", "opset"],
    "utils.convert_keras_model_to_onnx": ["keras_model", "onnx_model_path", "opset"],
    "utils.find_my_predecessors": ["model", "current_layer_name"],
    "utils.find_my_successors": ["model", "current_layer_name"],
    "utils.KerasModelTraveller.get_layer_names": ["self", "keras_model", "filter_by_class"],
    "CustomQDQInsertionCase.case": ["self", "keras_model", "qspec"],
}


@pytest.mark.parametrize("module", list(NVIDIA_NAMES))
def test_every_documented_name_is_where_nvidia_has_it(module):
    imported = importlib.import_module("qdq_toolkit.nvidia_compat" + module)
    missing = [name for name in NVIDIA_NAMES[module] if not hasattr(imported, name)]
    assert missing == []


def test_signatures_are_nvidias():
    for dotted, expected in NVIDIA_PARAMETERS.items():
        target = tq
        for part in dotted.split("."):
            target = getattr(target, part)
        positional = [
            p.name for p in inspect.signature(target).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        assert positional == expected, dotted
    assert (tq.G_NUM_BITS, tq.G_NARROW_RANGE, tq.G_SYMMETRIC) == (8, True, True)
    config = tq.LayerConfig()
    assert (config.name, config.is_keras_class, config.quantize_input, config.quantize_weight) == (None, False, True, True)
    assert tq.quantize_wrappers.DISABLED_LAYER_QUANTIZATION_DEFAULT == (
        "MaxPooling2D", "BatchNormalization", "Multiply", "Concatenate", "Add",
    )  # fmt: skip


# --------------------------------------------------------------------- walkthrough 1: "Add New Layer Support"
NEW_LAYER_SCRIPT = '''
from tensorflow_quantization import NonWeightedBaseQuantizeWrapper, quantize_model, utils


class GlobalMaxPool2DQuantizeWrapper(NonWeightedBaseQuantizeWrapper):
    """GlobalMaxPool2D has no weights: QDQ on its input, named <layer class>QuantizeWrapper."""

    def __init__(self, layer, **kwargs):
        super().__init__(layer, **kwargs)

    def build(self, input_shape):
        super().build(input_shape)

    def call(self, inputs, training=None):
        return super().call(inputs, training=training)


q_model = quantize_model(model)
utils.convert_keras_model_to_onnx(q_model, onnx_path)
'''


def pooled_model() -> keras.Model:
    inputs = keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.ReLU(name="relu")(x)
    x = L.GlobalMaxPool2D(name="pool")(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x), name="pooled")


@pytest.mark.slow
def test_new_layer_walkthrough_quantizes_the_new_layer_in_onnx(tmp_path):
    model = pooled_model()
    assert "pool" not in wrapped(tq.quantize_model(model))  # no wrapper for it yet: it stays float

    out = run_script(NEW_LAYER_SCRIPT, model=model, onnx_path=tmp_path / "pooled.onnx")
    wrappers = wrapped(out["q_model"])
    assert type(wrappers["pool"]).__name__ == "GlobalMaxPool2DQuantizeWrapper"
    assert isinstance(wrappers["pool"], tq.BaseQuantizeWrapper)
    assert wrappers["pool"].quantize_inputs == (0,)
    assert "pool" not in wrapped(native_quantize_model(model))  # the native API is not affected

    graph = Graph(tmp_path / "pooled.onnx")
    assert check_qdq_placement(graph.model) == []
    (pool,) = graph.nodes("GlobalMaxPool")
    assert graph.from_dq(pool.input[0]) and graph.source_op(pool.input[0]) == "Relu"
    (conv,) = graph.nodes("Conv")
    assert graph.dequantized_inputs(conv)[:2] == (0, 1)
    (head,) = graph.nodes("MatMul")
    assert graph.dequantized_inputs(head) == (0, 1)
    assert graph.source_op(head.input[0]) == "GlobalMaxPool"  # the head reads the pooled tensor through its own QDQ


# A layer of the user's own, with a kernel read in call(): the weighted variant of the walkthrough.
@keras.saving.register_keras_serializable(package="test_nvidia_compat")
class ChannelMix(L.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units))

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.kernel)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


WEIGHTED_LAYER_SCRIPT = '''
import keras
from tensorflow_quantization import WeightedBaseQuantizeWrapper, quantize_model, utils


@keras.saving.register_keras_serializable(package="my_project")
class ChannelMixQuantizeWrapper(WeightedBaseQuantizeWrapper):
    def __init__(self, layer, **kwargs):
        super().__init__(layer, kernel_type="kernel", **kwargs)


q_model = quantize_model(model)
q_model.compile("sgd", "mse")
q_model.fit(x, y, batch_size=16, epochs=1, verbose=0)
utils.convert_keras_model_to_onnx(q_model, onnx_path)
'''


def qdq(x, amax):
    scale = amax / 127.0
    return np.clip(np.round(x / scale), -127, 127) * scale


@pytest.mark.slow
def test_weighted_new_layer_quantizes_input_and_kernel(tmp_path):
    inputs = keras.Input((6,), name="features")
    hidden = L.Dense(8, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, ChannelMix(4, name="mix")(hidden))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype(np.float32), rng.normal(size=(32, 4)).astype(np.float32)

    out = run_script(WEIGHTED_LAYER_SCRIPT, model=model, x=x, y=y, onnx_path=tmp_path / "mix.onnx")
    q_model = out["q_model"]
    mix = wrapped(q_model)["mix"]
    assert type(mix).__name__ == "ChannelMixQuantizeWrapper" and mix.quantize_weights
    assert isinstance(mix.layer.kernel, keras.Variable)  # restored after each call

    # the layer computes matmul(QDQ(input), per-channel QDQ(kernel)), with the range the training step kept
    hidden_out = keras.Model(q_model.input, q_model.get_layer("quant_hidden").output)(x).numpy()
    kernel = mix.layer.kernel.numpy()
    want = qdq(hidden_out, float(mix.activation_ranges()["input"].numpy())) @ qdq(kernel, np.abs(kernel).max(axis=0))
    np.testing.assert_allclose(q_model(x).numpy(), want, rtol=1e-5, atol=1e-5)

    graph = Graph(tmp_path / "mix.onnx")
    assert check_qdq_placement(graph.model) == []
    matmuls = graph.nodes("MatMul")
    assert len(matmuls) == 2 and all(graph.dequantized_inputs(node) == (0, 1) for node in matmuls)

    path = tmp_path / "mix.keras"
    q_model.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path)(x).numpy(), q_model(x).numpy())


def test_nvidias_own_wrapper_code_for_a_native_class_computes_what_the_native_wrapper_does():
    inputs = keras.Input((6, 6, 3))
    x = L.DepthwiseConv2D(3, name="depthwise")(inputs)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="pointwise")(x))
    native = native_quantize_model(model)

    class DepthwiseConv2DQuantizeWrapper(tq.WeightedBaseQuantizeWrapper):  # as NVIDIA writes it (Keras 2's name)
        def __init__(self, layer, **kwargs):
            super().__init__(layer, kernel_type="depthwise_kernel", **kwargs)

    compat = tq.quantize_model(model)
    depthwise = wrapped(compat)["depthwise"]
    assert type(depthwise) is DepthwiseConv2DQuantizeWrapper and dict(depthwise.kernel_axes) == {"kernel": -2}
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(compat(x).numpy(), native(x).numpy())
    assert not np.array_equal(compat(x).numpy(), model(x).numpy())  # it does quantize


class PropertyKernel(L.Layer):
    def build(self, input_shape):
        self._kernel = self.add_weight(name="kernel", shape=(input_shape[-1], 2))

    @property
    def kernel(self):
        return self._kernel

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.kernel)


class PropertyKernelQuantizeWrapper(tq.WeightedBaseQuantizeWrapper):
    pass


def test_a_kernel_behind_a_property_is_refused_with_the_fix():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, PropertyKernel(name="prop")(inputs))
    with pytest.raises(TypeError, match="read-only property.*Override quantized_call"):
        tq.quantize_model(model)


# ------------------------------------------------------------ walkthrough 2: "Add Custom QDQ Insertion Case"
def residual_model() -> keras.Model:
    inputs = keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    shortcut = L.ReLU(name="stem_relu")(x)
    x = L.Conv2D(8, 3, padding="same", name="block_conv1")(shortcut)
    x = L.BatchNormalization(name="block_bn1")(x)
    x = L.ReLU(name="block_relu1")(x)
    x = L.Conv2D(8, 3, padding="same", name="block_conv2")(x)
    x = L.BatchNormalization(name="block_bn2")(x)
    x = L.Add(name="block_add")([shortcut, x])
    x = L.ReLU(name="block_out")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x), name="tiny_resnet")


CUSTOM_CASE_SCRIPT = '''
import keras
from tensorflow_quantization import CustomQDQInsertionCase, QuantizationSpec, quantize_model, utils
from tensorflow_quantization.custom_qdq_cases import ResNetV1QDQCase, check_is_quantizable_by_layer_name

# 1. the default: no QDQ in front of the Add
default = quantize_model(model)
utils.convert_keras_model_to_onnx(default, assets.default.int8_onnx_model)

# 2. every Add by class through a QuantizationSpec: QDQ on both inputs (the walkthrough's "suboptimal" case)
qspec = QuantizationSpec()
qspec.add(name="Add", is_keras_class=True)
by_class = quantize_model(model, quantization_spec=qspec)
utils.convert_keras_model_to_onnx(by_class, assets.by_class.int8_onnx_model)

# 3. the ResNet case: QDQ on the residual input only
resnet = quantize_model(model, custom_qdq_cases=[ResNetV1QDQCase()])
utils.convert_keras_model_to_onnx(resnet, assets.resnet.int8_onnx_model)


# 4. a case of one's own, composed with the library's the way NVIDIA's cases are
class MaxPoolQDQCase(CustomQDQInsertionCase):
    def info(self):
        return "Quantize the input of MaxPooling layers, and the residual connections."

    def case(self, keras_model, qspec):
        special_qspec = QuantizationSpec()
        special_qspec.layers.extend(ResNetV1QDQCase().case(keras_model, qspec).layers)
        for layer in keras_model.layers:
            if isinstance(layer, keras.layers.MaxPooling2D) and check_is_quantizable_by_layer_name(qspec, layer.name):
                special_qspec.add(name=layer.name, quantize_input=True, quantize_weight=False)
        return special_qspec


own = quantize_model(model, custom_qdq_cases=[MaxPoolQDQCase()])
utils.convert_keras_model_to_onnx(own, assets.own.int8_onnx_model)
'''


@pytest.fixture(scope="module")
def custom_case_run(tmp_path_factory):
    assets = utils.CreateAssetsFolders(tmp_path_factory.mktemp("assets"))
    for name in ("default", "by_class", "resnet", "own"):
        assets.add_folder(name)
    model = residual_model()
    return model, assets, run_script(CUSTOM_CASE_SCRIPT, model=model, assets=assets)


def residual_add(assets, scenario: str) -> tuple[Graph, onnx.NodeProto]:
    graph = Graph(getattr(assets, scenario).int8_onnx_model)
    assert check_qdq_placement(graph.model) == []
    (add,) = graph.residual_adds()
    return graph, add


@pytest.mark.slow
def test_custom_case_walkthrough_places_qdq_on_the_residual_input_only(custom_case_run):
    model, assets, _ = custom_case_run
    shortcut = 0  # Add([shortcut, conv branch]): Keras' ResNet order

    graph, add = residual_add(assets, "default")
    assert graph.dequantized_inputs(add) == ()
    graph, add = residual_add(assets, "by_class")
    assert graph.dequantized_inputs(add) == (0, 1)
    graph, add = residual_add(assets, "resnet")
    assert graph.dequantized_inputs(add) == (shortcut,)
    assert graph.source_op(add.input[shortcut]) == "Relu"  # the shortcut, not the BatchNorm'd convolution branch

    graph, add = residual_add(assets, "own")
    assert graph.dequantized_inputs(add) == (shortcut,)
    (pool,) = graph.nodes("MaxPool")
    assert graph.from_dq(pool.input[0])
    graph = Graph(assets.resnet.int8_onnx_model)
    assert not graph.from_dq(graph.nodes("MaxPool")[0].input[0])


@pytest.mark.slow
def test_own_case_leaves_the_layers_the_user_named(custom_case_run):
    model, _, out = custom_case_run
    qspec = tq.QuantizationSpec()
    qspec.add("pool", quantize_input=False, quantize_weight=False)
    returned = out["MaxPoolQDQCase"]().case(model, qspec)
    assert isinstance(returned, tq.QuantizationSpec)
    assert [config.name for config in returned.layers] == ["block_add"]
    assert returned.layers[0].quantization_index == [0]
    returned = out["MaxPoolQDQCase"]().case(model, tq.QuantizationSpec())
    assert [config.name for config in returned.layers] == ["block_add", "pool"]

    q_model = tq.quantize_model(model, quantization_spec=qspec, custom_qdq_cases=[out["MaxPoolQDQCase"]()])
    assert "pool" not in wrapped(q_model) and wrapped(q_model)["block_add"].quantize_inputs == (0,)


@pytest.mark.slow
def test_a_compat_model_saves_and_loads_without_the_compat_package(custom_case_run, tmp_path):
    _, _, out = custom_case_run
    q_model = out["resnet"]
    x = np.random.default_rng(1).normal(size=(2, 12, 12, 3)).astype(np.float32)
    q_model.save(tmp_path / "resnet.keras")
    np.testing.assert_array_equal(keras.models.load_model(tmp_path / "resnet.keras")(x).numpy(), q_model(x).numpy())
    with zipfile.ZipFile(tmp_path / "resnet.keras") as archive:
        config = json.loads(archive.read("config.json"))
    registered = {layer["registered_name"] for layer in config["config"]["layers"] if layer.get("registered_name")}
    # only qdq_toolkit's own wrappers, which its CLIs and evaluator register: no import of nvidia_compat needed
    assert registered and all(name.startswith("qdq_toolkit>") for name in registered), registered


# --------------------------------------------------------------------------------------------- the spec
def test_layers_is_a_list_of_layer_configs_that_quantize_model_reads():
    model = residual_model()
    qspec = tq.QuantizationSpec()
    qspec.add(["stem_conv", "block_add"], quantize_weight=[False, True], quantization_index=[None, [1]])
    assert qspec.layers == [
        tq.LayerConfig("stem_conv", False, True, False, None),
        tq.LayerConfig("block_add", False, True, True, [1]),
    ]
    qspec.layers.append(tq.LayerConfig(name="pool", quantize_weight=False))
    batchnorms = custom_qdq_cases.BNQDQCase().case(model, qspec).layers
    assert batchnorms == []  # every BatchNorm of this model follows a convolution
    qspec.layers.extend(batchnorms)
    qspec.layers.append(tq.LayerConfig(name="block_conv1", quantize_input=False))
    qspec.layers.append(tq.LayerConfig(name="block_conv1", quantize_input=True, quantize_weight=False))  # later wins
    before = [tq.LayerConfig(**vars(config)) for config in qspec.layers]

    q_model = tq.quantize_model(model, quantization_spec=qspec, custom_qdq_cases=[custom_qdq_cases.ResNetV1QDQCase()])
    layers = wrapped(q_model)
    assert (layers["stem_conv"].quantize_inputs, layers["stem_conv"].quantize_weights) == ((0,), False)
    assert layers["block_add"].quantize_inputs == (1,)  # the user's entry beats the case's (0,)
    assert layers["pool"].quantize_inputs == (0,)
    assert (layers["block_conv1"].quantize_inputs, layers["block_conv1"].quantize_weights) == ((0,), False)
    assert qspec.layers == before  # NVIDIA's quantize_model appends the cases' entries to it; this one does not

    qspec.layers.append(tq.LayerConfig(name="head", quantize_input="yes"))
    with pytest.raises(TypeError, match=r"layers\[5\].*quantize_input must be True or False"):
        tq.quantize_model(model, quantization_spec=qspec)


def test_a_layer_name_the_model_lacks_warns_and_the_rest_applies():
    model = residual_model()
    qspec = tq.QuantizationSpec()
    qspec.add("block_addd", quantization_index=[1])
    qspec.add("stem_conv", quantize_weight=False)
    with pytest.warns(LayerNameNotFoundWarning, match=r"'block_addd'.*Closest layer names: block_add") as caught:
        q_model = tq.quantize_model(model, quantization_spec=qspec)
    assert caught[0].filename == __file__  # points at the caller's line
    assert wrapped(q_model)["stem_conv"].quantize_weights is False

    with pytest.raises(QuantizationSpecError, match="no layer named 'block_addd'"):  # the native API keeps raising
        native_quantize_model(model, quantization_spec=qspec.to_native())

    class Typo(tq.CustomQDQInsertionCase):
        def case(self, keras_model, qspec):
            returned = tq.QuantizationSpec()
            returned.add("no_such_layer")
            return returned

    with pytest.warns(LayerNameNotFoundWarning, match="Typo: there is no layer named 'no_such_layer'"):
        tq.quantize_model(model, custom_qdq_cases=[Typo()])


def test_nvidia_modes_and_settings(monkeypatch):
    model = pooled_model()
    with pytest.raises(ValueError, match="partial.*neither was given"):
        tq.quantize_model(model, "partial")
    qspec = tq.QuantizationSpec()
    qspec.add("GlobalMaxPool2D", is_keras_class=True)  # an alias of GlobalMaxPooling2D
    assert set(wrapped(tq.quantize_model(model, "partial", qspec))) == {"pool"}
    monkeypatch.setattr(tq, "G_NUM_BITS", 4)  # NVIDIA's docs: set before calling quantize_model
    with pytest.raises(ValueError, match="G_NUM_BITS is 4.*int8"):
        tq.quantize_model(model)


# --------------------------------------------------------------------------------------------------- utils
def branching_model() -> keras.Model:
    inputs = keras.Input((8, 8, 3), name="image")
    a = L.Conv2D(4, 1, name="conv_a")(inputs)
    b = L.Conv2D(4, 1, name="conv_b")(inputs)
    bn = L.BatchNormalization(name="bn")(b)
    added = L.Add(name="add")([bn, a])
    relu = L.ReLU(name="relu")(added)
    inner_in = keras.Input((8, 8, 4), name="inner_in")
    inner = keras.Model(inner_in, L.Conv2D(2, 1, name="inner_conv")(inner_in), name="inner")
    return keras.Model(inputs, L.Dense(2, name="head")(L.Flatten(name="flat")(inner(relu))), name="branching")


def test_predecessors_and_successors_have_nvidias_shape_and_order():
    model = branching_model()
    preds = utils.find_my_predecessors(model, "add")
    assert [set(p) for p in preds] == [{"class", "module", "name", "layer"}] * 2
    assert [(p["class"], p["name"]) for p in preds] == [("BatchNormalization", "bn"), ("Conv2D", "conv_a")]
    assert preds[0]["layer"] is model.get_layer("bn") and preds[1]["module"] == type(model.get_layer("conv_a")).__module__
    assert [p["class"] for p in utils.find_my_predecessors(model, "conv_a")] == ["InputLayer"]

    succs = utils.find_my_successors(model, "image")
    order = [layer.name for layer in model.layers]
    assert sorted(s["name"] for s in succs) == ["conv_a", "conv_b"]
    assert [s["name"] for s in succs] == sorted(["conv_a", "conv_b"], key=order.index)  # model.layers order
    assert [s["name"] for s in utils.find_my_successors(model, "relu")] == ["inner"]
    assert utils.find_my_successors(model, "head") == []
    with pytest.raises(ValueError, match="no layer named 'ad'.*Closest names: add"):
        utils.find_my_predecessors(model, "ad")

    from qdq_toolkit.nvidia_compat.custom_qdq_cases import is_parent_pattern, is_parent_type

    assert is_parent_type("DepthwiseConv2D") and not is_parent_type("ReLU")
    assert is_parent_pattern(preds[0], ["BatchNorm", "Conv"]) and not is_parent_pattern(preds[1], ["BatchNorm", "Conv"])


def test_keras_model_traveller_lists_layers_with_nested_models_expanded():
    model = branching_model()
    traveller = utils.KerasModelTraveller()
    names = traveller.get_layer_names(model)
    inner_at = [layer.name for layer in model.layers].index("inner")
    expected = [layer.name for layer in model.layers[:inner_at]]
    expected += ["inner_in", "inner_conv"] + [layer.name for layer in model.layers[inner_at + 1 :]]
    assert names == expected and names[0] == "image"
    assert traveller.get_layer_names(model) == names  # a fresh list each call
    convs = traveller.get_layer_names(model, filter_by_class=L.Conv2D)
    assert convs == [name for name in names if name in ("conv_a", "conv_b", "inner_conv")] and len(convs) == 3
    assert traveller.get_layer_names(model, filter_by_class=["Dense", L.Add]) == ["add", "head"]


def test_keras_model_traveller_prints_layer_information(capsys):
    utils.KerasModelTraveller(print_layer_config=True).get_layer_information(branching_model(), filter_by_class="Add")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"layer name:add, layer class:{L.Add}"
    assert "'name': 'add'" in printed[1] and printed[2] == "-----------------" and len(printed) == 3


def test_assets_folders_never_delete_without_being_asked(tmp_path):
    assets = utils.CreateAssetsFolders(tmp_path / "experiments")
    assets.add_folder("example")
    folder = assets.example
    assert os.path.isdir(folder.fp32) and os.path.isdir(folder.int8)
    assert folder.int8_onnx_model == os.path.join(tmp_path, "experiments", "example", "int8", "quantized.onnx")
    assert folder.fp32_saved_model == os.path.join(folder.fp32, "saved_model")
    with open(folder.int8_onnx_model, "w") as handle:
        handle.write("last run")

    again = utils.CreateAssetsFolders(tmp_path / "experiments")  # a second run of the same script
    again.add_folder("example")
    assert open(again.example.int8_onnx_model).read() == "last run"
    again.add_folder("example", force=True)  # NVIDIA's behaviour, when asked
    assert not os.path.exists(folder.int8_onnx_model) and os.path.isdir(folder.int8)

    with open(os.path.join(folder.fp32, "keep.txt"), "w") as handle:
        handle.write("x")
    with pytest.raises(FileExistsError, match="force=True"):
        utils.ensure_and_clean_dir(folder.fp32)
    utils.ensure_and_clean_dir(folder.fp32, do_clean_dir=False)
    assert os.listdir(folder.fp32) == ["keep.txt"]
    utils.ensure_and_clean_dir(folder.fp32, force=True)
    assert os.listdir(folder.fp32) == []
    for bad in ("../escape", "add_folder", ""):
        with pytest.raises(ValueError, match="add_folder"):
            assets.add_folder(bad)


@pytest.mark.slow
def test_saved_model_converter_and_no_silent_overwrite(tmp_path):
    model = pooled_model()
    q_model = tq.quantize_model(model)
    saved = tmp_path / "saved_model"
    q_model.export(str(saved), verbose=False)
    result = utils.convert_saved_model_to_onnx(str(saved), str(tmp_path / "q.onnx"), opset=17)
    assert result.violations == [] and result.num_dequantize_linear > 0
    exported = onnx.load(tmp_path / "q.onnx")
    assert {imp.version for imp in exported.opset_import if imp.domain in ("", "ai.onnx")} == {17}
    with pytest.raises(FileExistsError, match="force=True"):
        utils.convert_saved_model_to_onnx(str(saved), str(tmp_path / "q.onnx"))
    with pytest.raises(FileExistsError, match="force=True"):
        utils.convert_keras_model_to_onnx(q_model, str(tmp_path / "q.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert utils.convert_keras_model_to_onnx(q_model, str(tmp_path / "q.onnx"), force=True).violations == []


def test_native_spec_and_native_cases_are_accepted_too():
    import custom_cases

    model = residual_model()
    q_model = tq.quantize_model(
        model, quantization_spec=NativeSpec().add("stem_conv", quantize_weight=False), custom_qdq_cases=[custom_cases.ResNetV1QDQCase()]
    )
    layers = wrapped(q_model)
    assert layers["block_add"].quantize_inputs == (0,) and layers["stem_conv"].quantize_weights is False
