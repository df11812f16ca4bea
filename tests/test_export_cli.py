"""``python -m qdq_toolkit.export`` driven as a user would: by subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "qdq_toolkit.export", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def assert_one_line_error(result, code=1, contains=""):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert contains in errors[0], errors[0]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A small trained QAT model saved as .keras and as a SavedModel."""
    import keras
    import numpy as np

    from qdq_toolkit import quantize_model
    from qdq_toolkit.export import export_saved_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    qmodel = quantize_model(model)
    qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    qmodel.fit(rng.uniform(size=(64, 8, 8, 1)), rng.integers(0, 10, 64), epochs=1, verbose=0)
    root = tmp_path_factory.mktemp("cli")
    qmodel.save(root / "qat.keras")
    export_saved_model(qmodel, root / "saved")
    return root


def test_help_documents_exit_codes():
    result = cli("--help")
    assert result.returncode == 0
    for code in ("0", "1", "2", "3", "4", "130"):
        assert f"\n  {code} " in result.stdout
    assert "--force" in result.stdout


def test_export_keras_file_with_check(artifacts, tmp_path):
    out = tmp_path / "model.onnx"
    result = cli("--keras-model", artifacts / "qat.keras", "--output", out, "--check")
    assert result.returncode == 0, result.stderr
    assert "no violations" in result.stdout
    assert "converting to ONNX" in result.stderr and "I0000" not in result.stderr  # progress, no TF log noise
    onnx.checker.check_model(onnx.load(out))


def test_warns_in_one_line_about_ranges_no_data_ever_set(tmp_path):
    import keras

    from qdq_toolkit import quantize_model

    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(x)))
    quantize_model(model).save(tmp_path / "uncalibrated.keras")  # saved straight away: no data ever seen
    result = cli("--keras-model", tmp_path / "uncalibrated.keras", "--output", tmp_path / "model.onnx", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: 2 activation range(s) never observed, exported with amax 1.0 (quant_conv/input, quant_logits/input); "
        "calibrate or fine-tune before exporting"
    ]
    assert (tmp_path / "model.onnx").exists()


def test_export_saved_model_fp16(artifacts, tmp_path):
    out = tmp_path / "model16.onnx"
    result = cli("--saved-model", artifacts / "saved", "--output", out, "--fp16", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    model = onnx.load(out)
    assert any(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)


def test_refuses_to_overwrite_without_force(artifacts, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    assert_one_line_error(cli("--keras-model", artifacts / "qat.keras", "--output", out), contains="--force")
    assert out.read_bytes() == b"keep me"
    assert cli("--keras-model", artifacts / "qat.keras", "--output", out, "--force", "-q").returncode == 0
    onnx.checker.check_model(onnx.load(out))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keras-model", "missing.keras", "--output", "x.onnx"], "does not exist"),
        (["--saved-model", "missing_dir", "--output", "x.onnx"], "does not exist"),
        (["--check", "missing.onnx"], "missing.onnx"),
        (["--keras-model", "corrupt.keras", "--output", "x.onnx"], "not a .keras file"),
        (["--saved-model", ".", "--output", "x.onnx"], "not a SavedModel directory"),
        (["--check", "corrupt.keras"], "not a valid ONNX model"),
        (["--keras-model", "corrupt.keras", "--output", "corrupt.keras/x.onnx"], "is a file, not a directory"),
    ],
)
def test_bad_paths_give_one_line(tmp_path, args, message):
    (tmp_path / "corrupt.keras").write_bytes(b"not a zip")
    result = cli(*args, cwd=tmp_path)
    assert_one_line_error(result, contains=message)
    assert not (tmp_path / "x.onnx").exists()


def test_usage_errors_exit_2(tmp_path):
    assert cli("--no-such-flag").returncode == 2
    assert cli().returncode == 2
    assert cli("--keras-model", "a.keras", "--saved-model", "b").returncode == 2


def test_engine_without_tensorrt_keeps_the_onnx(artifacts, tmp_path):
    from qdq_toolkit.export.tensorrt import tensorrt_status

    if tensorrt_status() is None:
        pytest.skip("TensorRT and a GPU are usable here; this test covers machines without them")
    out, engine = tmp_path / "model.onnx", tmp_path / "model.plan"
    result = cli("--keras-model", artifacts / "qat.keras", "--output", out, "--engine", engine, "--batch", "1,4,8")
    assert result.returncode == 4, result.stderr
    assert "pip install" in result.stderr and "Traceback" not in result.stderr
    assert out.exists() and not engine.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_output_folders_are_created(artifacts, tmp_path):
    """``--output runs/x/model.onnx`` creates ``runs/x`` (as tf2onnx does); a refused engine creates no folder."""
    from qdq_toolkit.export.tensorrt import tensorrt_status

    result = cli("--keras-model", artifacts / "qat.keras", "--output", "runs/x/model.onnx", "--engine",
                 "runs/y/model.plan", "--batch", "1,4", "-q", cwd=tmp_path)
    assert result.returncode == (0 if tensorrt_status() is None else 4), result.stderr
    onnx.checker.check_model(onnx.load(tmp_path / "runs" / "x" / "model.onnx"))
    if tensorrt_status() is not None:
        assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["x"], "no folder for an engine not built"


def test_check_reports_violations_with_exit_3(tmp_path):
    weight = numpy_helper.from_array(__import__("numpy").ones((2, 1, 1, 1), "float32"), "w")
    scale = numpy_helper.from_array(__import__("numpy").array(0.1, "float32"), "s")
    zero = numpy_helper.from_array(__import__("numpy").array(3, "int8"), "zp")  # non-zero zero point
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
            helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"),
            helper.make_node("Conv", ["xd", "w"], ["y"], name="conv"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [weight, scale, zero],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    table = cli("--check", path)
    assert table.returncode == 3
    assert "zero-point-value" in table.stdout and "weight-qdq-missing" in table.stdout
    report = json.loads(cli("--check", path, "--json").stdout)
    assert report["ok"] is False and report["summary"]["by_rule"]["zero-point-value"] == 2
