"""keras-hub backbones in small configurations (built from config, no weights download): BertBackbone and
ViTBackbone quantize, export to ONNX with TensorRT's placement, and run in ONNX Runtime like in Keras."""

from __future__ import annotations

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qdq_toolkit import calibrate, quantize_model
from qdq_toolkit.export.checks import check_qdq_placement
from qdq_toolkit.export.onnx import keras_to_onnx
from qdq_toolkit.quantize import quantized_layers
from qdq_toolkit.wrappers import NestedLayersQDQWrapper

keras_hub = pytest.importorskip("keras_hub")

SEQ = 8
BERT_INPUTS = ("token_ids", "segment_ids", "padding_mask")


def matmul_sources(model: onnx.ModelProto, op_type: str = "MatMul") -> list[list[str]]:
    made_by = {out: node for node in model.graph.node for out in node.output}
    return [
        [made_by[name].op_type if name in made_by else "initializer" for name in node.input[:2]]
        for node in model.graph.node
        if node.op_type == op_type
    ]


def qdq_off_matches_float(qat, model, inputs, pick=lambda out: out) -> None:
    for wrapper in quantized_layers(qat):
        wrapper.set_observer(lambda *args: None)
    try:
        np.testing.assert_allclose(pick(qat(inputs)), pick(model(inputs)), atol=1e-5)
    finally:
        for wrapper in quantized_layers(qat):
            wrapper.set_observer(None)


def bert_inputs(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    padding = np.ones((count, SEQ), "int32")
    padding[:, 6:] = 0
    return {
        "token_ids": rng.integers(1, 50, (count, SEQ)).astype("int32"),
        "segment_ids": np.zeros((count, SEQ), "int32"),
        "padding_mask": padding,
    }


def test_bert_backbone_quantizes_exports_and_runs(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=SEQ
    )
    qat = quantize_model(backbone)
    encoders = [layer for layer in qat.layers if isinstance(layer, NestedLayersQDQWrapper)]
    assert len(encoders) == 1
    # Inside each encoder: attention, the two feed-forward Dense layers; LayerNorms and dropout stay float.
    assert sorted(encoders[0]._inner) == [
        "_feedforward_intermediate_dense",
        "_feedforward_output_dense",
        "_self_attention_layer",
    ]
    # Calibrated before any call: the inner wrappers exist (built) as soon as the quantized model does.
    calibrate(qat, [bert_inputs(16, 2)], progress=False)
    assert not any(wrapper.unobserved_ranges() for wrapper in quantized_layers(qat))
    qdq_off_matches_float(qat, backbone, bert_inputs(4, 1), pick=lambda out: out["sequence_output"].numpy())

    # keras_to_onnx takes list inputs: a Functional model around the backbone's dict inputs.
    inputs = [keras.Input((SEQ,), dtype="int32", name=name) for name in BERT_INPUTS]
    model = keras.Model(inputs, qat(dict(zip(BERT_INPUTS, inputs, strict=True)))["sequence_output"])
    path = tmp_path / "bert.onnx"
    result = keras_to_onnx(model, path)
    onnx_model = onnx.load(path)
    assert result.violations == [] and check_qdq_placement(onnx_model) == []
    assert "Einsum" not in {node.op_type for node in onnx_model.graph.node}
    sources = matmul_sources(onnx_model)
    assert len(sources) == 8  # per layer: q, k, v, scores, context, output projection, two FFN Dense
    assert all(pair == ["DequantizeLinear", "DequantizeLinear"] for pair in sources)

    data = bert_inputs(16, 3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, data)[0]
    keras_out = model([data[name] for name in BERT_INPUTS]).numpy()
    assert np.abs(onnx_out - keras_out).mean() < 0.02 * np.abs(keras_out).mean()


def test_vit_backbone_quantizes_exports_and_runs(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(8, 8, 1), patch_size=2, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    qat = quantize_model(backbone)
    images = np.random.default_rng(4).normal(size=(16, 8, 8, 1)).astype("float32")
    calibrate(qat, images, batch_size=8, progress=False)
    qdq_off_matches_float(qat, backbone, images[:4], pick=lambda out: out.numpy())
    path = tmp_path / "vit.onnx"
    result = keras_to_onnx(qat, path)
    onnx_model = onnx.load(path)
    assert result.violations == [] and result.unobserved_ranges == []
    assert matmul_sources(onnx_model, "Conv") == [["DequantizeLinear", "DequantizeLinear"]]  # patch embedding
    sources = matmul_sources(onnx_model)
    assert len(sources) == 8 and all(pair == ["DequantizeLinear", "DequantizeLinear"] for pair in sources)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: images})[0]
    keras_out = qat(images).numpy()
    assert np.abs(onnx_out - keras_out).mean() < 0.02 * np.abs(keras_out).mean()
