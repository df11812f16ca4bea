"""On real data (scikit-learn's digits), QAT fine-tuning keeps the FP32 accuracy within 1 point."""

from examples.digits_qat import run


def test_qat_reaches_fp32_accuracy_minus_one_point():
    result = run(fp32_epochs=30, qat_epochs=5)
    assert result.fp32_accuracy > 0.95, "the FP32 baseline must be a real, trained model"
    assert result.qat_accuracy >= result.fp32_accuracy - 0.01, (result.fp32_accuracy, result.qat_accuracy)
