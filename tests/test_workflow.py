"""The walkthrough's code path end to end on CPU: FP32 -> PTQ -> QAT -> ONNX -> evaluation report.

The small CNN on the 8x8 digits runs the exact code of the ResNet-50 walkthrough in seconds; `make demo` runs the
same steps with ResNet50 (figures in examples/resnet50/README.md).
"""

import json

import pytest

from examples.resnet50 import workflow


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    config = workflow.cpu_config(tmp_path_factory.mktemp("wf") / "run", arch="small_cnn")
    result = workflow.run(config, say=lambda message: None)
    return config, result["report"]


def test_artifacts_are_written(small_run):
    config, _ = small_run
    names = {path.name for path in config.output_dir.iterdir()}
    expected = {"fp32.keras", "qat.keras", "fp32.onnx", "ptq.onnx", "qat.onnx", "qat_cpu.onnx", "calibration.json"}
    assert expected | {"report.md", "report.json", "report.png"} <= names
    assert (config.output_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    calibration = json.loads((config.output_dir / "calibration.json").read_text())
    assert calibration["method"] == "percentile" and calibration["ranges"]


def test_comparison_has_fp32_ptq_qat_and_qat_keeps_accuracy(small_run):
    _, report = small_run
    top1 = {result.name: result.top1() for result in report.evaluated}
    assert list(top1) == [
        "fp32 (ONNX Runtime)", "ptq (ONNX Runtime)", "qat (ONNX Runtime)", "qat (ONNX Runtime, CPU target)"
    ]
    assert top1["fp32 (ONNX Runtime)"] > 0.95
    assert top1["qat (ONNX Runtime)"] >= top1["fp32 (ONNX Runtime)"] - 0.005
    assert abs(top1["qat (ONNX Runtime, CPU target)"] - top1["qat (ONNX Runtime)"]) <= 0.005
    table = report.to_markdown()
    assert "ptq (ONNX Runtime)" in table and "Δ top-1 (pp)" in table


def test_engines_are_skipped_with_the_reason_here(small_run):
    from qdq_toolkit.export.tensorrt import tensorrt_status

    if tensorrt_status() is None:
        pytest.skip("TensorRT and a GPU are usable here; this test covers machines without them")
    config, _ = small_run
    assert any("TensorRT engines were not built" in note for note in config.notes)
    assert not list(config.output_dir.glob("*.plan"))


def test_existing_output_directory_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        workflow.run(workflow.cpu_config(tmp_path / "run", arch="small_cnn"), say=lambda message: None)
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"
