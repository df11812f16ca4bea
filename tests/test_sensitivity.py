"""Sensitivity analysis, automatic exclusion and Keras-vs-ONNX parity on real data (scikit-learn's digits).

One small ResNet is trained once per module; the "broken" model is the same function with an outlier channel
injected (examples/sensitivity_digits.py), which ruins the per-tensor input range of ``block1_conv2`` under PTQ.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from examples.sensitivity_digits import inject_outlier_channel, train
from qdq_toolkit import (
    AccuracyBudgetWarning,
    QuantizationSpec,
    analyze_sensitivity,
    auto_exclude,
    calibrate,
    compare_layers,
    quantize_model,
)
from qdq_toolkit.data import load_digits
from qdq_toolkit.export import keras_to_onnx, summarize_qdq
from qdq_toolkit.quantize import quantized_layers
from qdq_toolkit.sensitivity.__main__ import EXIT_BUDGET_NOT_MET, EXIT_ERROR, EXIT_OK, main

ROOT = Path(__file__).resolve().parents[1]
OUTLIER_LAYER = "block1_conv2"


@pytest.fixture(scope="module")
def digits():
    return load_digits(test_fraction=0.25)


@pytest.fixture(scope="module")
def fp32(digits):
    return train(digits, epochs=8)


@pytest.fixture(scope="module")
def broken(fp32):
    return inject_outlier_channel(fp32)


@pytest.fixture(scope="module")
def test_data(digits):
    return digits.test.images, digits.test.labels


@pytest.fixture(scope="module")
def broken_report(broken, test_data):
    return analyze_sensitivity(broken, test_data, output_metrics=1, batch_size=150, progress=False)


@pytest.fixture(scope="module")
def exclusion(broken, test_data):
    return auto_exclude(broken, test_data, max_accuracy_drop=0.01, batch_size=150, progress=False)


def _sqnr(reference, actual) -> float:
    reference, actual = np.asarray(reference, np.float64), np.asarray(actual, np.float64)
    return 10 * math.log10(np.sum(reference**2) / np.sum((actual - reference) ** 2))


def test_the_outlier_model_computes_the_same_function(fp32, broken, test_data):
    x = test_data[0][:64]
    assert np.allclose(fp32.predict(x, verbose=0), broken.predict(x, verbose=0), atol=1e-4)


def test_ranking_puts_the_outlier_layer_first_and_its_input_is_the_cause(broken_report):
    report = broken_report
    assert report.ranking[0] == OUTLIER_LAYER
    worst = report.layers[0]
    assert worst.sqnr_db < 10.0 and worst.sqnr_input_db < worst.sqnr_weight_db
    assert all(row.sqnr_db > 25.0 for row in report.layers[1:])
    assert [row.sqnr_db for row in report.layers] == sorted(row.sqnr_db for row in report.layers)
    # model-level figures only for the top of the ranking (output_metrics=1): quantizing that layer alone is fatal
    assert worst.accuracy < report.fp32_accuracy - 0.3 and worst.output_sqnr_db < 10.0
    assert all(row.accuracy is None and row.output_sqnr_db is None for row in report.layers[1:])
    assert report.ptq_accuracy < report.fp32_accuracy - 0.05
    assert report.fp32_accuracy > 0.9


def test_sqnr_agrees_with_a_direct_computation(fp32, test_data):
    """The stem convolution reads the image: quantize both by hand (max calibration) and compare the figures."""
    x = test_data[0]
    report = analyze_sensitivity(fp32, (x,), output_metrics=0, batch_size=200, progress=False)
    row = report.layer("stem_conv")
    conv = fp32.get_layer("stem_conv")
    kernel = conv.kernel.numpy()
    reference = keras.ops.convert_to_numpy(conv(x))
    step = np.abs(x).max() / 127
    x_q = np.clip(np.round(x / step), -127, 127) * step
    scale = np.abs(kernel).max(axis=(0, 1, 2)) / 127
    kernel_q = np.round(kernel / scale) * scale

    def run(inputs, weights):
        return keras.ops.convert_to_numpy(keras.ops.conv(inputs, weights, padding="same"))

    assert row.sqnr_input_db == pytest.approx(_sqnr(reference, run(x_q, kernel)), abs=0.05)
    assert row.sqnr_weight_db == pytest.approx(_sqnr(reference, run(x, kernel_q)), abs=0.05)
    assert row.sqnr_db == pytest.approx(_sqnr(reference, run(x_q, kernel_q)), abs=0.05)
    assert row.compute_ops == 1 and row.layer_class == "Conv2D"


def test_report_outputs(broken_report, tmp_path):
    data = broken_report.as_dict()
    assert data["layers"][0]["layer"] == OUTLIER_LAYER
    assert set(data["layers"][0]) >= {"layer", "sqnr_db", "sqnr_input_db", "sqnr_weight_db", "output_sqnr_db", "accuracy"}
    json.dumps(data)  # strictly JSON-serializable (no NaN/inf)
    text = str(broken_report)
    assert OUTLIER_LAYER in text.splitlines()[2]
    png = broken_report.write_plot(tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError):
        broken_report.write_plot(tmp_path / "s.png")
    broken_report.write_plot(tmp_path / "s.png", force=True)
    assert "| 1 | `block1_conv2` |" in broken_report.to_markdown()


def test_labels_missing_gives_sqnr_only_and_auto_exclude_asks_for_them(broken, test_data):
    x = test_data[0][:300]
    report = analyze_sensitivity(broken, [x[:150], x[150:]], output_metrics=1, progress=False)
    assert report.fp32_accuracy is None and report.ptq_accuracy is None
    assert report.ranking[0] == OUTLIER_LAYER and report.layers[0].output_sqnr_db is not None
    assert report.layers[0].accuracy is None
    with pytest.raises(ValueError, match="labels"):
        auto_exclude(broken, (x,), progress=False)


def test_nothing_to_quantize_is_a_clear_error():
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.ReLU()(keras.layers.Flatten()(inputs)))
    data = (np.ones((4, 8, 8, 1), np.float32), np.zeros(4, np.int64))
    for function in (analyze_sensitivity, auto_exclude):
        with pytest.raises(ValueError, match="no layer .* would be quantized"):
            function(model, data, progress=False)


def test_bad_data_is_refused(broken, test_data):
    with pytest.raises(TypeError, match="one-shot iterator"):
        analyze_sensitivity(broken, (batch for batch in [test_data]), progress=False)
    with pytest.raises(ValueError, match="one label per sample"):
        analyze_sensitivity(broken, (test_data[0], test_data[1][:10]), progress=False)
    with pytest.raises(ValueError, match="fraction"):
        auto_exclude(broken, test_data, max_accuracy_drop=1.5, progress=False)


def test_auto_exclude_recovers_the_outlier_model(exclusion, broken):
    result = exclusion
    assert result.excluded == (OUTLIER_LAYER,)
    assert result.within_budget and result.accuracy >= result.fp32_accuracy - 0.01
    assert result.steps[0].excluded == () and result.steps[0].accuracy < result.fp32_accuracy - 0.05
    assert result.num_evaluations <= 10
    assert result.int8_compute_ops == result.compute_ops - 1
    wrapped = {wrapper.layer.name for wrapper in quantized_layers(result.model)}
    assert OUTLIER_LAYER not in wrapped and "block1_conv1" in wrapped
    assert all(not w.unobserved_ranges() for w in quantized_layers(result.model))  # calibrated
    assert not any(isinstance(layer, keras.layers.Wrapper) for layer in broken.layers)  # FP32 model untouched


def test_auto_exclude_model_accuracy_and_int8_count_hold_on_the_export(exclusion, test_data, tmp_path):
    result = exclusion
    scores = result.model.predict(test_data[0], verbose=0)
    assert np.mean(np.argmax(scores, 1) == test_data[1]) == pytest.approx(result.accuracy, abs=1e-9)
    export = keras_to_onnx(result.model, tmp_path / "ptq.onnx")
    summary = summarize_qdq(export.path)
    assert summary["quantized_op_count"] == result.int8_compute_ops
    assert summary["quantized_op_count"] + summary["float_op_count"] == result.compute_ops


def test_the_spec_round_trips_into_quantize_model(exclusion, broken, tmp_path):
    path = exclusion.quantization_spec.save(tmp_path / "spec.json")
    loaded = QuantizationSpec.load(path)
    assert loaded == exclusion.quantization_spec
    assert QuantizationSpec.from_dict(json.loads(path.read_text())) == loaded
    from_file = {w.layer.name for w in quantized_layers(quantize_model(broken, quantization_spec=str(path)))}
    assert from_file == {w.layer.name for w in quantized_layers(exclusion.model)}
    with pytest.raises(FileExistsError):
        loaded.save(path)


def test_spec_files_are_checked(tmp_path):
    spec = QuantizationSpec().add(["add", "add_1"], quantization_index=[[1], None]).add("Conv2D", is_keras_class=True, quantize_weight=False)
    assert QuantizationSpec.from_dict(spec.to_dict()) == spec
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a QuantizationSpec"):
        QuantizationSpec.load(bad)
    data = spec.to_dict()
    data["entries"][0]["quantize_inputs"] = True
    with pytest.raises(ValueError, match="unknown key"):
        QuantizationSpec.from_dict(data)
    data = spec.to_dict()
    data["entries"][0]["quantization_index"] = [-1]
    with pytest.raises(ValueError, match="negative"):
        QuantizationSpec.from_dict(data)


def test_a_budget_that_cannot_be_met_warns_and_returns_the_best(fp32, test_data):
    twice = inject_outlier_channel(inject_outlier_channel(fp32), "block2_bn1", "block2_conv2")
    with pytest.warns(AccuracyBudgetWarning, match="no set of layers"):
        result = auto_exclude(twice, test_data, max_accuracy_drop=0.01, max_excluded=1, batch_size=150, progress=False)
    assert not result.within_budget
    assert len(result.excluded) == 1 and result.excluded[0] in {"block1_conv2", "block2_conv2"}
    assert result.accuracy == max(step.accuracy for step in result.steps)
    assert result.accuracy < result.fp32_accuracy - 0.01


@pytest.fixture(scope="module")
def ptq_export(fp32, digits, tmp_path_factory):
    model = quantize_model(fp32)
    calibrate(model, digits.train.images, batch_size=256, progress=False)
    path = keras_to_onnx(model, tmp_path_factory.mktemp("parity") / "ptq.onnx").path
    return model, path


def test_compare_layers_agrees_on_a_faithful_export(ptq_export, test_data):
    model, path = ptq_export
    report = compare_layers(model, path, test_data[0][:200], batch_size=100, progress=False)
    assert report.first_parting is None
    assert len(report.compared) >= len(model.layers) - 2  # the input layer aside, every layer has its tensor
    assert min(row.sqnr_db for row in report.compared) > 50.0
    assert report.as_dict()["layers"][0]["layer"] == "quant_stem_conv"


def test_compare_layers_finds_the_layer_whose_weights_are_wrong(ptq_export, test_data, tmp_path):
    model, path = ptq_export
    proto = onnx.load(path)
    for initializer in proto.graph.initializer:
        if "/quant_block1_conv2_1/" in initializer.name:
            weights = onnx.numpy_helper.to_array(initializer) * 1.2
            initializer.CopyFrom(onnx.numpy_helper.from_array(weights.astype(np.float32), initializer.name))
            break
    else:
        pytest.fail("no weight initializer of quant_block1_conv2 in the export")
    broken_path = tmp_path / "broken.onnx"
    onnx.save(proto, broken_path)
    report = compare_layers(model, broken_path, test_data[0][:200], batch_size=100, progress=False)
    assert report.first_parting == "quant_block1_conv2"
    before = report.layers[: [row.layer for row in report.layers].index("quant_block1_conv2")]
    assert before and all(row.sqnr_db > 50.0 for row in before if row.sqnr_db is not None)
    assert "PARTS HERE" in str(report)


@pytest.fixture(scope="module")
def broken_file(broken, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "broken.keras"
    broken.save(path)
    return path


def test_cli_help_is_quick_and_documents_exit_codes():
    done = subprocess.run([sys.executable, "-m", "qdq_toolkit.sensitivity", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == EXIT_OK
    assert "exit codes:" in done.stdout and "--max-accuracy-drop" in done.stdout and "--spec-out" in done.stdout


def test_cli_end_to_end(broken_file, tmp_path, capsys):
    spec, report, plot = tmp_path / "spec.json", tmp_path / "s.json", tmp_path / "s.png"
    argv = ["--keras-model", str(broken_file), "--dataset", "digits", "--max-accuracy-drop", "1",
            "--spec-out", str(spec), "--json", str(report), "--plot", str(plot), "-q"]
    assert main(argv) == EXIT_OK
    assert f"`{OUTLIER_LAYER}`" in capsys.readouterr().out
    assert QuantizationSpec.load(spec).get(OUTLIER_LAYER).quantize_input is False
    payload = json.loads(report.read_text())
    assert payload["sensitivity"]["layers"][0]["layer"] == OUTLIER_LAYER
    assert payload["exclusion"]["excluded"] == [OUTLIER_LAYER]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main(argv) == EXIT_ERROR  # the outputs exist: refused before any work
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err


def test_cli_errors_are_one_line(broken_file, tmp_path, capsys):
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x=np.zeros((8, 8, 8, 1), np.float32))
    assert main(["--keras-model", str(broken_file), "--data", str(unlabelled), "--max-accuracy-drop", "1", "-q"]) == EXIT_ERROR
    assert "needs labels" in capsys.readouterr().err
    assert main(["--keras-model", str(tmp_path / "missing.keras"), "--dataset", "digits", "-q"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "does not exist" in err[0]
    inputs = keras.Input((8, 8, 1))
    plain = tmp_path / "plain.keras"
    keras.Model(inputs, keras.layers.Flatten()(inputs)).save(plain)
    assert main(["--keras-model", str(plain), "--dataset", "digits", "-q"]) == EXIT_ERROR
    assert "Nothing to analyze" in capsys.readouterr().err


def test_cli_budget_not_met_exits_3_and_still_writes_the_best_spec(fp32, test_data, tmp_path, capfd):
    twice = inject_outlier_channel(inject_outlier_channel(fp32), "block2_bn1", "block2_conv2")
    path, data, spec = tmp_path / "twice.keras", tmp_path / "d.npz", tmp_path / "spec.json"
    twice.save(path)
    np.savez(data, x=test_data[0], y=test_data[1])
    code = main(["--keras-model", str(path), "--data", str(data), "--max-accuracy-drop", "1", "--max-excluded", "1",
                 "-q", "--batch-size", "150", "--spec-out", str(spec)])
    assert code == EXIT_BUDGET_NOT_MET
    assert "warning: no set of layers" in capfd.readouterr().err
    assert len(QuantizationSpec.load(spec)) == 1


def test_layers_of_a_nested_model_are_analyzed_by_path(test_data):
    keras.utils.set_random_seed(1)
    inner = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(4, 3, padding="same", name="conv")], name="inner")
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(inner(x))
    model = keras.Model(inputs, keras.layers.Dense(10, name="dense")(x))
    report = analyze_sensitivity(model, (test_data[0][:64],), output_metrics="all", progress=False)
    assert set(report.ranking) == {"conv", "inner/conv", "gap", "dense"}
    nested = report.layer("inner/conv")
    assert 20.0 < nested.sqnr_db < 70.0 and nested.output_sqnr_db is not None


def test_the_resnet_workflow_loads_a_spec_file(tmp_path):
    from examples.digits_qat import small_cnn
    from examples.resnet50 import workflow

    spec = QuantizationSpec().add("conv1", quantize_input=False, quantize_weight=False).save(tmp_path / "spec.json")
    config = workflow.cpu_config(tmp_path / "run", arch="small_cnn")
    config.spec, config.calibration_batches = spec, 2
    model = small_cnn((8, 8, 1))
    quantized, _ = workflow.ptq_model(model, workflow.load_data(config), config)
    wrapped = {w.layer.name for w in quantized_layers(quantized)}
    assert "conv1" not in wrapped and {"conv0", "conv2"} <= wrapped
