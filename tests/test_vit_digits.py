"""The ViT digits example, in a fast configuration: FP32 training, QAT, export, ONNX Runtime on real images.

Its targets, checked here as in the full run (``python -m examples.vit_digits.workflow``): QAT INT8 top-1 in ONNX
Runtime >= FP32 - 1 pp, and ONNX Runtime agreeing with the Keras QAT model on >= 99 % of the test images.
"""

from __future__ import annotations

import pytest

from examples.vit_digits.workflow import run


@pytest.fixture(scope="module")
def result():
    return run(epochs=15, qat_epochs=2, hidden=16, depth=1)


@pytest.mark.slow
def test_qat_int8_in_onnx_runtime_keeps_the_fp32_accuracy(result):
    assert result.fp32_keras_accuracy > 0.85  # a trained model, so the comparison means something
    assert result.fp32_onnx_accuracy == pytest.approx(result.fp32_keras_accuracy, abs=1 / result.test_images)
    assert result.qat_onnx_accuracy >= result.fp32_keras_accuracy - 0.01


@pytest.mark.slow
def test_onnx_runtime_reproduces_the_keras_qat_model_on_real_digits(result):
    assert result.qat_onnx_keras_agreement >= 0.99
    assert result.placement_violations == 0
