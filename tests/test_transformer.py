"""Transformer layers: EinsumDense, MultiHeadAttention, Dense on token sequences, Embedding, exact GELU.

Placement is read on the exported ONNX graph: attention must be MatMul-based (no Einsum), every MatMul must have a
DequantizeLinear on both inputs, and the checker must find nothing. Numerics: with QDQ off (the calibration
observer set) every wrapper must compute exactly what the float layer computes, masks included.
"""

from __future__ import annotations

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qdq_toolkit import QuantizationSpec, calibrate, quantize_model
from qdq_toolkit.export.checks import check_qdq_placement
from qdq_toolkit.export.onnx import keras_to_onnx
from qdq_toolkit.quantize import quantized_layers
from qdq_toolkit.wrappers import (
    EinsumDenseQDQWrapper,
    EmbeddingQDQWrapper,
    MultiHeadAttentionQDQWrapper,
)

SEQ, DIM = 6, 16


def attention_model(seed: int = 0) -> keras.Model:
    """Tokens + boolean attention mask (and causal) -> MHA -> residual + LayerNorm -> Dense(gelu) -> EinsumDense head."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((SEQ, DIM), name="tokens")
    mask = keras.Input((SEQ, SEQ), name="mask", dtype="bool")
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")
    x = mha(tokens, tokens, attention_mask=mask, use_causal_mask=True)  # both masks, combined
    x = keras.layers.LayerNormalization(name="ln")(keras.layers.Add(name="residual")([x, tokens]))
    x = keras.layers.Dense(32, activation="gelu", name="ffn")(x)
    x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 4), bias_axes="d", name="head")(x)
    return keras.Model([tokens, mask], x)


def sample_inputs(count: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = rng.random((count, SEQ, SEQ)) > 0.3
    mask[:, :, 0] = True  # every query attends to at least one key
    return {"tokens": rng.normal(size=(count, SEQ, DIM)).astype("float32"), "mask": mask}


def qdq_off(model: keras.Model):
    for wrapper in quantized_layers(model):
        wrapper.set_observer(lambda *args: None)


def run_onnx(path, inputs: dict) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})[0]


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def assert_matmuls_quantized_on_both_inputs(model: onnx.ModelProto, expected: int) -> None:
    made_by = producers(model)
    matmuls = [node for node in model.graph.node if node.op_type == "MatMul"]
    assert len(matmuls) == expected
    for node in matmuls:
        sources = [made_by[name].op_type if name in made_by else "initializer" for name in node.input]
        assert sources == ["DequantizeLinear", "DequantizeLinear"], (node.name, sources)


@pytest.fixture(scope="module")
def float_model():
    return attention_model()


@pytest.fixture(scope="module")
def qat(float_model):
    model = quantize_model(float_model)
    calibrate(model, [sample_inputs(16, seed=2)], "max", progress=False)
    return model


@pytest.fixture(scope="module")
def qat_onnx(qat, tmp_path_factory):
    path = tmp_path_factory.mktemp("transformer") / "qat.onnx"
    result = keras_to_onnx(qat, path)
    return path, result


def test_full_mode_wraps_attention_dense_and_einsum_and_leaves_norm_softmax_gelu_float(qat):
    kinds = {layer.name: type(layer).__name__ for layer in qat.layers}
    assert kinds["quant_mha"] == "MultiHeadAttentionQDQWrapper"
    assert kinds["quant_ffn"] == "DenseQDQWrapper"
    assert kinds["quant_head"] == "EinsumDenseQDQWrapper"
    assert kinds["ln"] == "LayerNormalization" and kinds["residual"] == "Add"
    mha = qat.get_layer("quant_mha")
    # Self-attention: the query/key/value projections read one tensor, quantized once.
    assert sorted(mha.activation_ranges()) == sorted(
        ["query", "bmm1_query", "bmm1_key", "bmm2_probs", "bmm2_value", "output_input"]
    )


def test_with_qdq_off_every_wrapper_computes_the_float_layers(float_model, qat):
    inputs = sample_inputs()
    qdq_off(qat)
    try:
        np.testing.assert_allclose(qat(inputs).numpy(), float_model(inputs).numpy(), atol=2e-5)
    finally:
        for wrapper in quantized_layers(qat):
            wrapper.set_observer(None)


def test_qat_export_is_matmul_attention_with_dq_on_both_inputs(qat_onnx):
    path, result = qat_onnx
    model = onnx.load(path)
    ops = {node.op_type for node in model.graph.node}
    assert "Einsum" not in ops and "Erfc" not in ops
    assert {"Erf", "Softmax"} <= ops
    # q, k, v and output projections, the two attention matmuls, the FFN Dense and the EinsumDense head.
    assert_matmuls_quantized_on_both_inputs(model, expected=8)
    assert result.violations == [] and check_qdq_placement(model) == []
    # Softmax, LayerNorm's reductions and GELU's Erf stay float: nothing quantized feeds them.
    made_by = producers(model)
    for node in model.graph.node:
        if node.op_type in ("Softmax", "Erf", "ReduceMean"):
            assert made_by[node.input[0]].op_type != "DequantizeLinear", node.name


def test_self_attention_input_is_quantized_once(qat_onnx):
    model = onnx.load(qat_onnx[0])
    made_by = producers(model)

    def source(name):  # the tensor a value comes from, through data-movement ops (tf2onnx's Tensordot reshapes)
        while name in made_by and made_by[name].op_type in ("Reshape", "Transpose"):
            name = made_by[name].input[0]
        return name

    quantizers = [node for node in model.graph.node if node.op_type == "QuantizeLinear" and source(node.input[0]) == "tokens"]
    assert len(quantizers) == 1


def test_onnx_runtime_reproduces_the_keras_qat_model(qat, qat_onnx):
    inputs = sample_inputs(16, seed=3)
    keras_out = qat(inputs).numpy()
    onnx_out = run_onnx(qat_onnx[0], inputs)
    # One int8 step of one activation can differ (summation order); on average they agree closely.
    assert np.abs(onnx_out - keras_out).mean() < 0.02 * np.abs(keras_out).mean()


def test_exact_gelu_model_exports_in_fp32_and_matches(float_model, tmp_path):
    path = tmp_path / "fp32.onnx"
    keras_to_onnx(float_model, path)
    model = onnx.load(path)
    ops = {node.op_type for node in model.graph.node}
    assert "Erf" in ops and "Erfc" not in ops and "Einsum" not in ops
    inputs = sample_inputs()
    np.testing.assert_allclose(run_onnx(path, inputs), float_model(inputs).numpy(), atol=1e-4)


@pytest.mark.parametrize("opset", [17, 18])
def test_exact_gelu_converts_at_newer_opsets(opset, tmp_path):
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Activation("gelu")(inputs))
    path = tmp_path / "gelu.onnx"
    keras_to_onnx(model, path, opset=opset)
    x = np.linspace(-4, 4, 20, dtype="float32").reshape(4, 5)
    np.testing.assert_allclose(run_onnx_single(path, x), model(x).numpy(), atol=1e-6)


def run_onnx_single(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# ------------------------------------------------------------------------------------------------ masks
def masked_models(kind: str):
    keras.utils.set_random_seed(4)
    ids = keras.Input((SEQ,), dtype="int32", name="ids")
    x = keras.layers.Embedding(20, DIM, mask_zero=(kind == "padding"))(ids)
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha", dropout=0.1)
    if kind == "causal":
        x = mha(x, x, use_causal_mask=True)
    elif kind == "cross":
        memory = keras.layers.Dense(12, name="memory")(x)
        x = mha(x, memory, key=memory)
    else:
        x = mha(x, x)
    model = keras.Model(ids, keras.layers.Dense(3, name="out")(x))
    return model, quantize_model(model)


@pytest.mark.parametrize("kind", ["padding", "causal", "cross"])
def test_masks_and_cross_attention_match_the_float_layer(kind):
    model, qat = masked_models(kind)
    ids = np.random.default_rng(5).integers(1, 20, size=(4, SEQ)).astype("int32")
    ids[:, 4:] = 0  # padding at the end
    qdq_off(qat)
    np.testing.assert_allclose(qat(ids).numpy(), model(ids).numpy(), atol=2e-5)
    # The mask changes the result, so the comparison above would notice a wrapper that dropped it.
    if kind == "padding":
        unmasked, _ = masked_models("none")  # same seed, same weights, no padding mask
        assert np.abs(unmasked(ids).numpy() - model(ids).numpy()).max() > 1e-3
    if kind == "causal":
        changed = ids.copy()
        changed[:, -1] = 7
        np.testing.assert_allclose(qat(changed).numpy()[:, 0], qat(ids).numpy()[:, 0], atol=2e-5)  # 0 never sees 5
        assert np.abs(qat(changed).numpy()[:, -1] - qat(ids).numpy()[:, -1]).max() > 1e-4
    if kind == "cross":
        mha = qat.get_layer("quant_mha")
        assert "value" in mha.activation_ranges() and "key" not in mha.activation_ranges()  # key is value


# ------------------------------------------------------------------------------------------ EinsumDense
EQUATIONS = [
    ("abc,cde->abde", (SEQ, DIM), (None, 2, 4), "de"),  # MHA query projection: two output-feature axes
    ("abcd,cde->abe", (SEQ, 2, 8), (None, DIM), "e"),  # MHA output projection: two contracted axes
    ("abc,dc->abd", (SEQ, DIM), (None, 5), "d"),  # kernel stored (out, in)
    ("abc,cd->adb", (SEQ, DIM), (5, None), "d"),  # output features before the sequence axis
    ("...b,bc->...c", (SEQ, DIM), (7,), "c"),  # ellipsis
]


@pytest.mark.parametrize("equation,input_shape,output_shape,bias_axes", EQUATIONS)
def test_einsum_dense_is_one_matmul_quantized_per_output_feature(equation, input_shape, output_shape, bias_axes, tmp_path):
    keras.utils.set_random_seed(7)
    inputs = keras.Input(input_shape)
    layer = keras.layers.EinsumDense(equation, output_shape=output_shape, bias_axes=bias_axes)
    model = keras.Model(inputs, layer(inputs))
    qat = quantize_model(model)
    wrapper = qat.layers[-1]
    assert isinstance(wrapper, EinsumDenseQDQWrapper)
    x = np.random.default_rng(8).normal(size=(3, *inputs.shape[1:])).astype("float32")
    qdq_off(qat)
    np.testing.assert_allclose(qat(x).numpy(), model(x).numpy(), atol=1e-5)
    for w in quantized_layers(qat):
        w.set_observer(None)
    calibrate(qat, x, "max", batch_size=3, progress=False)
    path = tmp_path / "einsum.onnx"
    result = keras_to_onnx(qat, path)
    onnx_model = onnx.load(path)
    assert result.violations == []
    assert "Einsum" not in {node.op_type for node in onnx_model.graph.node}
    assert_matmuls_quantized_on_both_inputs(onnx_model, expected=1)
    # The weight DQ is per column of the 2-D (in_features, out_features) kernel: one scale per output feature.
    made_by = producers(onnx_model)
    matmul = next(node for node in onnx_model.graph.node if node.op_type == "MatMul")
    weight_dq = made_by[matmul.input[1]]
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in onnx_model.graph.initializer}
    kernel_letters = equation.split(",")[1].split("->")[0]
    out_features = int(np.prod([layer.kernel.shape[kernel_letters.index(c)] for c in bias_axes]))
    assert inits[weight_dq.input[1]].shape == (out_features,)
    axis = next(a.i for a in weight_dq.attribute if a.name == "axis")
    assert axis == 1
    np.testing.assert_allclose(run_onnx_single(path, x), qat(x).numpy(), atol=0.05)


def test_einsum_with_batch_axes_in_the_kernel_is_refused_with_the_fix():
    inputs = keras.Input((4, 3))
    layer = keras.layers.EinsumDense("abc,bcd->abd", output_shape=(4, 5))
    model = keras.Model(inputs, layer(inputs))
    with pytest.raises(ValueError, match="cannot be computed as one MatMul.*spec.add"):
        quantize_model(model)


# ------------------------------------------------------------------------------------------- Embedding
def test_embedding_is_float_by_default_and_weight_quantized_on_request(tmp_path):
    keras.utils.set_random_seed(9)
    ids = keras.Input((SEQ,), dtype="int32", name="ids")
    x = keras.layers.Embedding(30, 8, name="embed")(ids)
    model = keras.Model(ids, keras.layers.Dense(2, name="out")(x))
    assert not isinstance(quantize_model(model).get_layer("embed"), EmbeddingQDQWrapper)

    spec = QuantizationSpec()
    spec.add("embed")  # quantize_input=True by default: ids are integers and are never quantized
    qat = quantize_model(model, quantization_spec=spec)
    wrapper = qat.get_layer("quant_embed")
    assert isinstance(wrapper, EmbeddingQDQWrapper) and wrapper.activation_ranges() == {}
    table = model.get_layer("embed").embeddings.numpy()
    scale = np.abs(table).max(axis=0) / 127
    expected = np.round(table / scale) * scale
    sample = np.arange(SEQ, dtype="int32")[None]
    np.testing.assert_allclose(wrapper(sample).numpy()[0], expected[:SEQ], atol=1e-6)

    calibrate(qat, np.random.default_rng(0).integers(0, 30, (4, SEQ)).astype("int32"), batch_size=4, progress=False)
    path = tmp_path / "embed.onnx"
    assert keras_to_onnx(qat, path).violations == []
    onnx_model = onnx.load(path)
    made_by = producers(onnx_model)
    gather = next(node for node in onnx_model.graph.node if node.op_type == "Gather")
    assert made_by[gather.input[0]].op_type == "DequantizeLinear"
    assert made_by.get(gather.input[1]) is None or made_by[gather.input[1]].op_type != "DequantizeLinear"
    ids_batch = np.random.default_rng(1).integers(0, 30, (4, SEQ)).astype("int32")
    np.testing.assert_allclose(run_onnx_single(path, ids_batch), qat(ids_batch).numpy(), atol=1e-3)


def test_unsupported_attention_layout_is_refused_with_the_fix():
    inputs = keras.Input((4, 4, 8))
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, attention_axes=(1, 2), name="mha2d")
    model = keras.Model(inputs, layer(inputs, inputs))
    with pytest.raises(ValueError, match="mha2d.*spec.add"):
        quantize_model(model)


def test_a_saved_qat_transformer_loads_with_identical_outputs(qat, tmp_path):
    from qdq_toolkit import load_model

    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = load_model(path)
    inputs = sample_inputs(4, seed=11)
    np.testing.assert_array_equal(loaded(inputs).numpy(), qat(inputs).numpy())
    assert isinstance(loaded.get_layer("quant_mha"), MultiHeadAttentionQDQWrapper)


def test_padding_masks_pass_through_quantized_layers():
    """Embedding(mask_zero=True) -> Dense -> GlobalAveragePooling1D: the wrapped Dense keeps the padding mask and the
    wrapped pooling averages only the valid steps, so padding a sequence changes nothing, as in the float model."""
    import keras
    import numpy as np

    from qdq_toolkit import quantize_model

    tokens = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(20, 8, mask_zero=True, name="embed")(tokens)
    x = keras.layers.Dense(8, name="proj")(x)
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    model = keras.Model(tokens, pooled)
    qat = quantize_model(model)
    wrapped = {layer.name for layer in qat.layers if layer.name.startswith("quant_")}
    assert {"quant_proj", "quant_pool"} <= wrapped
    short = np.array([[3, 5, 7]], dtype="int32")
    padded = np.array([[3, 5, 7, 0, 0, 0]], dtype="int32")
    for m in (model, qat):
        np.testing.assert_allclose(m.predict(padded, verbose=0), m.predict(short, verbose=0), rtol=1e-6, atol=1e-6)
    # Without the mask the padded steps (Dense of the padding embedding) would enter the mean.
    steps = keras.Model(tokens, model.get_layer("proj").output).predict(padded, verbose=0)[0]
    assert not np.allclose(steps.mean(axis=0), steps[:3].mean(axis=0), atol=1e-4)
