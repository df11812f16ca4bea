"""The ResNet-50 walkthrough notebook runs headless in CPU mode, and is stored without outputs."""

import os
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "resnet50" / "example_resnet50.ipynb"


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.slow
def test_notebook_executes_in_cpu_mode(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("QDQ_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("QDQ_NOTEBOOK_OUTPUT", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[2]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parents[2])}})
    client.execute()
    text = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/markdown", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "# Model comparison" in text
    assert "qat (ONNX Runtime)" in text and "ptq (ONNX Runtime)" in text
    assert "qat (ONNX Runtime, CPU target)" in text  # the INT8 model that is fast on this CPU
    violations = re.findall(r"TensorRT rule violations: (\d+)", text)
    assert violations == ["0", "0", "0"], violations  # fp32, ptq and qat; the CPU-target file is not checked
    for name in ("fp32.onnx", "ptq.onnx", "qat.onnx", "qat_cpu.onnx", "report.md", "qat.keras"):
        assert (tmp_path / "run" / name).exists(), name
