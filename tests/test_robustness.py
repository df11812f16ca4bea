"""Robustness: bad input, faults and scale, with nothing lost.

Every bad input gives a clear error -- on the command line exactly one ``error:`` line, no traceback, no
TensorFlow log noise, a non-zero exit code -- and leaves every existing file as it was: the tests snapshot the
working directory (file names, hidden temporary files included, and their bytes) before and after.

The matrix (input -> where it is tested). Rows marked "elsewhere" were covered before this file and are not
repeated here.

| input | export CLI | evaluate CLI | Python API |
|---|---|---|---|
| missing .keras / SavedModel / ONNX | elsewhere: test_export_cli::test_bad_paths_give_one_line | elsewhere: test_evaluate::test_cli_bad_path_and_unknown_extension | elsewhere: test_export::test_bad_inputs, test_evaluate::test_load_backend_errors |
| corrupt .keras (not a zip) | elsewhere: test_export_cli | ``test_evaluate_cli_bad_input`` | elsewhere: test_evaluate::test_load_backend_errors |
| truncated .keras, a zip that is no Keras archive, truncated weights | ``test_export_cli_bad_input`` | ``test_evaluate_cli_bad_input`` | ``test_python_api_bad_files`` |
| corrupt SavedModel (bad saved_model.pb, no variables), a file given as SavedModel | ``test_export_cli_bad_input`` | a directory: ``test_evaluate_cli_bad_input`` | ``test_python_api_bad_files`` |
| corrupt / truncated / empty ONNX | ``test_export_cli_bad_input`` (--check) | ``test_evaluate_cli_bad_input`` | ``test_python_api_bad_files`` |
| not a Keras model | - | - | ``test_not_a_keras_model`` (quantize_model: elsewhere, test_quantize::test_not_a_model) |
| subclassed model | - | - | ``test_subclassed_models``; quantize_model: elsewhere, test_quantize::test_subclassed_model_is_refused_with_the_fix |
| nested models | - | - | ``test_nested_models_calibrate_export_and_run``; quantizing: elsewhere, test_quantize |
| empty dataset | - | ``test_evaluate_cli_bad_input`` (empty shard, no shard) | ``test_calibrate_on_empty_data``, ``test_evaluate_on_empty_data`` |
| NaN / Inf in calibration data | - | - | ``test_calibrate_on_non_finite_data`` (NaN in the first batch: elsewhere, test_calibrate) |
| all-zero weights, dead channel, all-zero activations | - | - | ``test_dead_channels_and_zero_weights_keep_scales_positive`` |
| unsupported layer asked for by name | - | - | ``test_an_unsupported_layer_asked_for_by_name`` (by class: elsewhere, test_quantize::test_class_without_wrapper) |
| unknown CLI flags | ``test_unknown_cli_flags`` | ``test_unknown_cli_flags`` | - |
| output directory not writable | ``test_unwritable_output_directory`` | ``test_unwritable_output_directory`` | ``test_unwritable_output_directory`` |
| output exists, no --force | elsewhere: test_export_cli::test_refuses_to_overwrite_without_force | elsewhere: test_evaluate::test_cli_refuses_to_overwrite_outputs_without_force | elsewhere: test_export::test_refuses_to_overwrite_and_leaves_the_file_as_it_was |

Faults: ``test_sigint_during_export_keeps_the_previous_output`` (a real SIGINT to the CLI; the in-process version
is test_export::test_an_interrupted_export_leaves_no_partial_file_and_the_previous_intact).
Scale: ``test_mirrored_strategy_exports_the_same_scales_as_one_device``, ``test_calibration_memory_is_flat_in_the_number_of_batches``.
Determinism: ``test_exports_in_two_processes_are_byte_identical`` (in one process: test_export::
test_exporting_the_same_model_twice_gives_identical_bytes).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf

from qdq_toolkit import QuantizationSpec, QuantizationSpecError, quantize_model, quantized_layers
from qdq_toolkit.calibration import calibrate
from qdq_toolkit.cases import ModelStructureError
from qdq_toolkit.evaluate import EvalDataset, EvaluationError, array_dataset, evaluate_models, load_backend
from qdq_toolkit.export import check_qdq_placement, export_saved_model, keras_to_onnx, saved_model_to_onnx
from qdq_toolkit.export.checks import load_onnx_model
from qdq_toolkit.export.onnx import onnx_scales
from qdq_toolkit.quantizers import MIN_AMAX

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).parent / "scripts"
L = keras.layers

#: The one error line of a CLI: ours ("error: ...") or argparse's ("python -m qdq_toolkit.export: error: ...").
ERROR_LINE = re.compile(r"^(?:python -m qdq_toolkit\.\w+: )?error: ")
#: What TensorFlow's native logging (absl) writes to stderr: it must not bury the error line.
NATIVE_LOG_LINE = re.compile(r"^(?:[IWEF]\d{4} |WARNING: All log messages before absl)")
#: ONNX Runtime vs Keras on the same QDQ model (as in test_export): TensorFlow and ONNX Runtime sum convolutions in
#: different orders, which can move a value across a rounding boundary of the next quantizer (one int8 step). The
#: models here agree far closer on this machine (max differences 0.0 and 6e-8).
ONNX_ATOL = 2e-2


# ------------------------------------------------------------------------------------------------------ helpers
def child_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no TF_CPP_MIN_LOG_LEVEL set by the tests, the repository importable."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def run_cli(module: str, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"qdq_toolkit.{module}", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=child_env(),
        timeout=timeout,
    )


def assert_clear_cli_error(result: subprocess.CompletedProcess, code: int, contains: str) -> str:
    """Exit ``code``, exactly one error line (containing ``contains``), no traceback, no native log lines."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert len(errors) == 1, result.stderr[-3000:]
    assert contains in errors[0], errors[0]
    noise = [line for line in lines if NATIVE_LOG_LINE.match(line)]
    assert not noise, noise
    return errors[0]


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every path under ``directory`` (hidden ones included) with the bytes of each file (``None`` for a dir)."""
    return {
        str(path.relative_to(directory)): None if path.is_dir() else path.read_bytes()
        for path in sorted(directory.rglob("*"))
    }


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def activation_ranges(model) -> dict[str, float]:
    return {
        f"{wrapper.name}/{slot}": float(var.numpy())
        for wrapper in quantized_layers(model)
        for slot, var in wrapper.activation_ranges().items()
    }


def images(n: int, shape=(8, 8, 1), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A small trained QAT model (conv, batch norm, depthwise conv, residual add, dense) as .keras, SavedModel and
    ONNX, and broken copies of each."""
    keras.utils.set_random_seed(0)
    inputs = L.Input((8, 8, 1), name="image")
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    y = L.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
    x = L.Add(name="add")([x, y])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(10, name="logits")(x), name="small")
    qmodel = quantize_model(model)
    qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(images(64), np.random.default_rng(1).integers(0, 10, 64), epochs=1, verbose=0)

    root = tmp_path_factory.mktemp("robustness")
    good = root / "good"
    good.mkdir()
    qmodel.save(good / "qat.keras")
    export_saved_model(qmodel, good / "saved")
    keras_to_onnx(qmodel, good / "qat.onnx")

    bad = root / "bad"
    bad.mkdir()
    keras_bytes = (good / "qat.keras").read_bytes()
    onnx_bytes = (good / "qat.onnx").read_bytes()
    (bad / "truncated.keras").write_bytes(keras_bytes[: len(keras_bytes) // 2])
    (bad / "not_a_zip.keras").write_bytes(b"this is not a zip archive")
    with zipfile.ZipFile(bad / "not_keras.keras", "w") as archive:
        archive.writestr("notes.txt", "a zip file, but not a Keras archive")
    with zipfile.ZipFile(good / "qat.keras") as source, zipfile.ZipFile(bad / "bad_weights.keras", "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            target.writestr(item, data[:100] if item.filename.endswith(".h5") else data)
    shutil.copytree(good / "saved", bad / "corrupt_pb")
    (bad / "corrupt_pb" / "saved_model.pb").write_bytes(b"\x08garbage" * 16)
    shutil.copytree(good / "saved", bad / "no_variables")
    shutil.rmtree(bad / "no_variables" / "variables")
    (bad / "truncated.onnx").write_bytes(onnx_bytes[:2000])
    (bad / "empty.onnx").write_bytes(b"")
    (bad / "text.onnx").write_text("hello, I am not an ONNX model\n")
    (bad / "imagenet_empty").mkdir()
    (bad / "imagenet_empty" / "validation-00000-of-00001").write_bytes(b"")  # a valid TFRecord file, 0 records
    (bad / "imagenet_none").mkdir()
    tiny = keras.Sequential([L.Input((8, 8, 3)), L.GlobalAveragePooling2D(), L.Dense(1000)], name="tiny")
    tiny.save(bad / "imagenet_tiny.keras")
    return SimpleNamespace(model=qmodel, good=good, bad=bad)


@pytest.fixture
def workdir(artifacts, tmp_path):
    """A directory holding the broken inputs, a good model and earlier outputs (which must survive)."""
    shutil.copytree(artifacts.bad, tmp_path, dirs_exist_ok=True)
    shutil.copy(artifacts.good / "qat.keras", tmp_path / "model.keras")
    shutil.copy(artifacts.good / "qat.onnx", tmp_path / "out.onnx")  # the previous export
    (tmp_path / "report.json").write_text('{"previous": "report"}\n')
    return tmp_path


# ------------------------------------------------------------------------------------------------- bad input: CLI
EXPORT_CASES = {
    "truncated-keras": (["--keras-model", "truncated.keras"], "not a .keras file"),
    "zip-but-not-keras": (["--keras-model", "not_keras.keras"], "cannot load Keras model"),
    "keras-with-truncated-weights": (["--keras-model", "bad_weights.keras"], "cannot load Keras model"),
    "keras-model-is-a-directory": (["--keras-model", "corrupt_pb"], "pass it with --saved-model"),
    "savedmodel-corrupt-pb": (["--saved-model", "corrupt_pb"], "Cannot load SavedModel"),
    "savedmodel-without-variables": (["--saved-model", "no_variables"], "Cannot load SavedModel"),
    "savedmodel-is-a-file": (["--saved-model", "model.keras"], "is a file, not a SavedModel directory"),
    "check-truncated-onnx": (["--check", "truncated.onnx"], "not a valid ONNX model"),
    "check-empty-onnx": (["--check", "empty.onnx"], "not a valid ONNX model"),
    "check-text-file": (["--check", "text.onnx"], "not a valid ONNX model"),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_cli_bad_input(workdir, case):
    args, message = EXPORT_CASES[case]
    if args[0] != "--check":
        args = [*args, "--output", "out.onnx", "--force"]  # even with --force, a failed export replaces nothing
    before = snapshot(workdir)
    assert_clear_cli_error(run_cli("export", *args, cwd=workdir), 1, message)
    assert snapshot(workdir) == before


EVALUATE_CASES = {
    "not-a-zip-keras": (["--model", "not_a_zip.keras"], "not a .keras archive"),
    "truncated-keras": (["--model", "truncated.keras"], "not a .keras archive"),
    "zip-but-not-keras": (["--model", "not_keras.keras"], "cannot load Keras model"),
    "truncated-onnx": (["--model", "truncated.onnx"], "ONNX Runtime cannot load"),
    "empty-onnx": (["--model", "empty.onnx"], "ONNX Runtime cannot load"),
    "savedmodel-directory": (["--model", "corrupt_pb"], "is a directory, not a model file"),
    "second-model-missing": (["--model", "out.onnx", "--model", "missing.onnx"], "does not exist"),
    "imagenet-no-shards": (
        ["--model", "imagenet_tiny.keras", "--dataset", "imagenet", "--data-dir", "imagenet_none"],
        "No 'validation' TFRecord shards",
    ),
    "imagenet-empty-shard": (
        ["--model", "imagenet_tiny.keras", "--dataset", "imagenet", "--data-dir", "imagenet_empty"],
        "yielded no image; check that its files hold records",
    ),
}


@pytest.mark.parametrize("case", list(EVALUATE_CASES))
def test_evaluate_cli_bad_input(workdir, case):
    args, message = EVALUATE_CASES[case]
    if "--dataset" not in args:
        args = ["--dataset", "digits", *args]
    before = snapshot(workdir)
    result = run_cli("evaluate", *args, "--json", "report.json", "--markdown", "report.md", "--force", cwd=workdir)
    assert_clear_cli_error(result, 1, message)
    assert result.stdout == ""  # no report
    assert snapshot(workdir) == before  # report.json as it was, no report.md


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        ("export", ["--keras-model", "model.keras", "--output", "out.onnx", "--force", "--no-such-flag"], "--no-such-flag"),
        ("export", ["--keras-model", "model.keras", "--outptu", "new.onnx"], "--outptu"),
        ("export", ["--keras-model", "model.keras", "--output", "new.onnx", "--opset", "thirteen"], "--opset"),
        ("evaluate", ["--dataset", "digits", "--model", "out.onnx", "--json", "report.json", "--no-such-flag"], "--no-such-flag"),
        ("evaluate", ["--dataset", "digits", "--model", "out.onnx", "--jsno", "new.json"], "--jsno"),
    ],
    ids=["export-unknown", "export-misspelt", "export-bad-value", "evaluate-unknown", "evaluate-misspelt"],
)
def test_unknown_cli_flags(workdir, module, args, message):
    before = snapshot(workdir)
    result = run_cli(module, *args, cwd=workdir, timeout=60)
    assert_clear_cli_error(result, 2, message)
    assert result.stderr.startswith("usage: ")  # argparse shows the usage above its error line
    assert snapshot(workdir) == before


def unwritable_directory(root: Path) -> Path:
    """A directory this process cannot create files in: a read-only one, or, as root (who ignores permission
    bits), /sys (sysfs refuses new files even to root)."""
    locked = root / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    for candidate in (locked, Path("/sys")):
        probe = candidate / ".write_probe"
        try:
            probe.open("xb").close()
        except OSError:
            return candidate
        probe.unlink()
    pytest.skip("no directory here refuses new files")


def test_unwritable_output_directory(artifacts, workdir, tmp_path_factory):
    locked = unwritable_directory(tmp_path_factory.mktemp("unwritable"))
    locked_before = sorted(path.name for path in locked.iterdir())
    before = snapshot(workdir)
    target = locked / "model.onnx"
    line = assert_clear_cli_error(
        run_cli("export", "--keras-model", "model.keras", "--output", target, cwd=workdir), 1, f"cannot write {target}"
    )
    assert "choose another output path" in line
    report = locked / "report.json"
    result = run_cli("evaluate", "--dataset", "digits", "--model", "out.onnx", "--no-latency", "--json", report, cwd=workdir)
    assert_clear_cli_error(result, 1, f"cannot write {report}")
    with pytest.raises(PermissionError, match=f"cannot write {re.escape(str(locked))}/a.onnx"):
        keras_to_onnx(artifacts.model, locked / "a.onnx")
    assert snapshot(workdir) == before
    assert sorted(path.name for path in locked.iterdir()) == locked_before  # no output, no temporary file


# ------------------------------------------------------------------------------------------ bad input: Python API
def test_python_api_bad_files(workdir):
    before = snapshot(workdir)
    with pytest.raises(ValueError, match=r"Cannot load SavedModel .*corrupt_pb.*model\.export"):
        saved_model_to_onnx(workdir / "corrupt_pb", workdir / "out.onnx", force=True)
    with pytest.raises(ValueError, match="Cannot load SavedModel"):
        saved_model_to_onnx(workdir / "no_variables", workdir / "out.onnx", force=True)
    with pytest.raises(ValueError, match="is a file, not a SavedModel directory"):
        saved_model_to_onnx(workdir / "model.keras", workdir / "new.onnx")
    with pytest.raises(TypeError, match=r"got PosixPath\. To export a file, load it first: qdq_toolkit\.load_model\(path\)"):
        keras_to_onnx(workdir / "model.keras", workdir / "new.onnx")
    for name in ("truncated.onnx", "empty.onnx", "text.onnx"):
        with pytest.raises(ValueError, match="not a valid ONNX model"):
            load_onnx_model(workdir / name)
        with pytest.raises(EvaluationError, match="ONNX Runtime cannot load"):
            load_backend(workdir / name)
    for name in ("truncated.keras", "not_keras.keras", "bad_weights.keras"):
        with pytest.raises(EvaluationError, match="cannot load Keras model"):
            load_backend(workdir / name)
    assert snapshot(workdir) == before


def test_not_a_keras_model(tmp_path):
    layer = L.Dense(3)
    with pytest.raises(TypeError, match=r"calibrate expects the keras\.Model returned by .*quantize_model"):
        calibrate(layer, np.zeros((4, 3), np.float32), batch_size=2, progress=False)
    with pytest.raises(TypeError, match=r"calibrate expects .*got builtins\.NoneType"):
        calibrate(None, np.zeros((4, 3), np.float32), batch_size=2, progress=False)
    with pytest.raises(TypeError, match="keras_to_onnx expects a keras.Model, got Dense"):
        keras_to_onnx(layer, tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="export_saved_model expects a keras.Model, got dict"):
        export_saved_model({"weights": []}, tmp_path / "saved")
    dataset = array_dataset(np.zeros((2, 8, 8, 1)), np.zeros(2, int))
    with pytest.raises(TypeError, match="KerasBackend takes a keras.Model or the path of a .keras file, got object"):
        evaluate_models({"m": object()}, dataset, latency=False)
    assert list(tmp_path.iterdir()) == []


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flatten = L.Flatten()
        self.dense = L.Dense(10)

    def call(self, inputs):
        return self.dense(self.flatten(inputs))


def test_subclassed_models(tmp_path):
    model = Subclassed(name="sub")
    x = images(16)
    model(x[:1])
    with pytest.raises(ModelStructureError, match=r"no defined inputs .*export_saved_model.*saved_model_to_onnx"):
        keras_to_onnx(model, tmp_path / "sub.onnx")
    with pytest.raises(ModelStructureError, match="subclassed keras.Model"):
        calibrate(model, x, batch_size=8, progress=False)
    with pytest.raises(ModelStructureError, match="never built"):
        keras_to_onnx(keras.Sequential([L.Dense(3)]), tmp_path / "seq.onnx")
    assert list(tmp_path.iterdir()) == []
    # the route the message gives works, and the evaluator takes the model as it is
    saved_model_to_onnx(export_saved_model(model, tmp_path / "saved"), tmp_path / "sub.onnx")
    np.testing.assert_allclose(run_onnx(tmp_path / "sub.onnx", x), model.predict(x, verbose=0), atol=1e-5)
    report = evaluate_models({"sub": model}, array_dataset(x, np.zeros(16, int)), latency=False)
    assert report.results[0].accuracy.samples == 16


def nested_model():
    block_in = L.Input((8, 8, 8))
    block_x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(block_in)
    block = keras.Model(block_in, L.Add(name="add")([block_in, block_x]), name="block")
    head = keras.Sequential([L.Input((8,)), L.Dense(16, activation="relu", name="fc"), L.Dense(3, name="logits")], name="head")
    inputs = L.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = block(L.ReLU(name="relu")(x))
    return keras.Model(inputs, head(L.GlobalAveragePooling2D(name="gap")(x)), name="net")


def test_nested_models_calibrate_export_and_run(tmp_path):
    keras.utils.set_random_seed(2)
    spec = QuantizationSpec().add("block/add", quantization_index=[0])  # the residual branch, by nested path
    qmodel = quantize_model(nested_model(), quantization_spec=spec)
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype(np.float32)
    report = calibrate(qmodel, x, "max", batch_size=16, progress=False)
    assert {row.layer for row in report.rows} >= {"block/quant_conv", "block/quant_add", "head/quant_fc"}
    result = keras_to_onnx(qmodel, tmp_path / "nested.onnx")
    assert result.violations == [] and check_qdq_placement(onnx.load(result.path)) == []
    assert result.num_quantize_linear == len(onnx_scales(onnx.load(result.path))) > 5
    np.testing.assert_allclose(run_onnx(result.path, x), qmodel.predict(x, verbose=0), atol=ONNX_ATOL)


def small_float_model():
    keras.utils.set_random_seed(1)
    inputs = L.Input((6, 6, 2), name="image")
    x = L.Conv2D(4, 3, activation="relu", name="conv1")(inputs)
    x = L.Conv2D(4, 3, name="conv2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(3, name="logits")(x))


@pytest.mark.parametrize(
    "kind",
    ["generator-of-nothing", "empty-array", "empty-tf-data", "batches-without-samples"],
)
def test_calibrate_on_empty_data(kind):
    qmodel = quantize_model(small_float_model())
    before = activation_ranges(qmodel)
    empty = np.zeros((0, 6, 6, 2), np.float32)
    data, batch_size = {
        "generator-of-nothing": (lambda: (iter(()), None)),
        "empty-array": (lambda: (empty, 8)),
        "empty-tf-data": (lambda: (tf.data.Dataset.from_tensor_slices((empty, np.zeros(0))).batch(8), None)),
        "batches-without-samples": (lambda: ((empty for _ in range(3)), None)),
    }[kind]()
    message = "held no sample" if kind == "batches-without-samples" else "calibration data is empty"
    with pytest.raises(ValueError, match=message):
        calibrate(qmodel, data, "entropy", batch_size=batch_size, progress=False)
    assert activation_ranges(qmodel) == before
    assert all(wrapper._observer is None for wrapper in quantized_layers(qmodel))


def test_evaluate_on_empty_data(artifacts):
    with pytest.raises(ValueError, match="the dataset is empty"):
        array_dataset(np.zeros((0, 8, 8, 1)), np.zeros(0, int))
    nothing = EvalDataset("none", "a reader that yields nothing", (8, 8, 1), 10, None, None, lambda size: iter(()))
    with pytest.raises(EvaluationError, match=r"the dataset \(a reader that yields nothing\) yielded no image"):
        evaluate_models({"qat": artifacts.good / "qat.onnx"}, nothing, latency=False)


@pytest.mark.parametrize(("method", "bad"), [("entropy", np.inf), ("percentile", -np.inf), ("max", np.nan)])
def test_calibrate_on_non_finite_data(method, bad):
    qmodel = quantize_model(small_float_model())
    before = activation_ranges(qmodel)

    def batches():
        rng = np.random.default_rng(0)
        for index in range(4):
            batch = rng.normal(size=(8, 6, 6, 2)).astype(np.float32)
            if index == 2:  # two good batches were already collected: the failure must still change nothing
                batch[5, 1, 1, 0] = bad
            yield batch

    with pytest.raises(ValueError) as raised:
        calibrate(qmodel, batches(), method, progress=False)
    message = str(raised.value)
    kind = "1 NaN, 0 +/-Inf" if np.isnan(bad) else "0 NaN, 1 +/-Inf"
    assert message.startswith("Calibration data gives non-finite activations at quant_conv1/input in batch 3: ")
    assert f"({kind})" in message and "Check the calibration data for NaN/Inf" in message
    assert "\n" not in message and "\x1b" not in message  # one plain line, not Keras' wrapped call report
    assert activation_ranges(qmodel) == before
    assert all(wrapper._observer is None for wrapper in quantized_layers(qmodel))


def test_dead_channels_and_zero_weights_keep_scales_positive(tmp_path):
    """A dead output channel (all-zero kernel slice), a layer with all-zero weights and a layer whose input is all
    zeros: every range stays > 0 through calibration and training, the export passes the placement checker and
    ONNX Runtime reproduces Keras."""
    keras.utils.set_random_seed(3)
    inputs = L.Input((8, 8, 3), name="image")
    live = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_dead_channel")(inputs)
    zeros = L.Conv2D(4, 3, padding="same", name="conv_zero_weights")(live)
    after = L.Conv2D(4, 3, padding="same", name="conv_zero_input")(zeros)
    merged = L.Concatenate(name="concat")([L.GlobalAveragePooling2D(name="gap1")(live), L.GlobalAveragePooling2D(name="gap2")(after)])
    model = keras.Model(inputs, L.Dense(5, name="logits")(merged))
    kernel, bias = model.get_layer("conv_dead_channel").get_weights()
    kernel[..., 2], bias[2] = 0.0, 0.0  # channel 2 is always 0: dead weights and a dead activation channel
    model.get_layer("conv_dead_channel").set_weights([kernel, bias])
    model.get_layer("conv_zero_weights").set_weights([np.zeros_like(w) for w in model.get_layer("conv_zero_weights").get_weights()])
    kernel, bias = model.get_layer("logits").get_weights()
    kernel[:, 1] = 0.0  # a dead Dense output column
    model.get_layer("logits").set_weights([kernel, bias])

    qmodel = quantize_model(model)
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype(np.float32)
    report = calibrate(qmodel, x, "entropy", batch_size=16, progress=False)
    zero_input = next(row for row in report.rows if row.layer == "quant_conv_zero_input")
    assert zero_input.max_abs == 0.0 and zero_input.amax == pytest.approx(MIN_AMAX)
    assert all(np.isfinite(row.amax) and row.amax > 0 for row in report.rows)
    stored = activation_ranges(qmodel)
    assert {f"{row.layer}/{row.slot}": row.amax for row in report.rows} == stored, "the report shows what is stored"

    # a short fine-tuning (the all-zero layer frozen, so its output stays zero) keeps every range > 0
    qmodel.get_layer("quant_conv_zero_weights").trainable = False
    qmodel.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, np.arange(64) % 5, batch_size=16, epochs=1, verbose=0)
    ranges = activation_ranges(qmodel)
    assert all(np.isfinite(value) and value >= np.float32(MIN_AMAX) for value in ranges.values()), ranges
    assert ranges["quant_conv_zero_input/input"] == pytest.approx(MIN_AMAX)
    assert not qmodel.get_layer("quant_conv_zero_weights").layer.kernel.numpy().any()

    result = keras_to_onnx(qmodel, tmp_path / "dead.onnx")
    exported = onnx.load(result.path)
    assert result.violations == [] and check_qdq_placement(exported) == []
    scales = np.concatenate([np.asarray(values) for values in onnx_scales(exported).values()])
    assert len(onnx_scales(exported)) == result.num_quantize_linear
    assert np.isfinite(scales).all() and (scales > 0).all()
    # the floors show up as the smallest scales: zero weights, the dead channel and the all-zero input
    assert scales.min() == pytest.approx(MIN_AMAX / 127, rel=1e-3)
    onnx_out = run_onnx(result.path, x)
    assert np.isfinite(onnx_out).all()
    np.testing.assert_allclose(onnx_out, qmodel.predict(x, verbose=0), atol=ONNX_ATOL)


def test_an_unsupported_layer_asked_for_by_name():
    model = nested_model()
    weights = [w.copy() for w in model.get_weights()]
    layer_types = [type(layer) for layer in model.layers]
    spec = QuantizationSpec().add("relu")
    spec_before = spec.copy()
    with pytest.raises(
        QuantizationSpecError, match=r"layer 'relu' \(ReLU\) has no QDQ wrapper\. Supported classes: .*custom_wrappers"
    ):
        quantize_model(model, quantization_spec=spec)
    assert spec == spec_before
    assert [type(layer) for layer in model.layers] == layer_types
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))
    # in "partial" mode too, and inside a nested model named by its path
    inner = keras.Sequential([L.Input((4, 4, 2)), L.Flatten(name="flat"), L.Dense(2, name="fc")], name="inner")
    inputs = L.Input((4, 4, 2), name="image")
    outer = keras.Model(inputs, inner(inputs), name="outer")
    with pytest.raises(QuantizationSpecError, match=r"layer 'inner/flat' \(Flatten\) has no QDQ wrapper"):
        quantize_model(outer, "partial", QuantizationSpec().add("inner/flat"))


# ------------------------------------------------------------------------------------------------------- faults
def deep_model(depth: int = 100) -> keras.Model:
    """A plain stack of small convolutions: tf2onnx needs a few seconds for it, a wide window for a signal."""
    inputs = L.Input((16, 16, 3), name="image")
    x = inputs
    for index in range(depth):
        x = L.Conv2D(8, 3, padding="same", activation="relu", name=f"conv{index}")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="deep")


@contextlib.contextmanager
def sigint_deliverable():
    """Start children with SIGINT deliverable, as from a terminal.

    A shell without job control starts background jobs with SIGINT ignored; a child inherits an ignored signal
    through exec, and Python then leaves SIGINT ignored instead of raising KeyboardInterrupt. Handlers (unlike
    SIG_IGN) are reset to the default by exec, so installing Python's handler here for the moment of the start is
    enough (no preexec_fn, which is unsafe in a process with threads).
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous == signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.mark.parametrize("stage", ["freezing", "converting"])
def test_sigint_during_export_keeps_the_previous_output(artifacts, tmp_path, stage):
    """Ctrl-C while the CLI exports over an existing file with --force: exit 130, the previous file byte-identical,
    no temporary file left. The signal is sent as soon as the CLI reports the stage on stderr; the stage after
    "converting" is "writing", seconds later for this model, so the signal always lands before the write."""
    keras.utils.set_random_seed(0)
    quantize_model(deep_model()).save(tmp_path / "deep.keras")
    previous = (artifacts.good / "qat.onnx").read_bytes()
    (tmp_path / "out.onnx").write_bytes(previous)
    before = snapshot(tmp_path)

    with sigint_deliverable():
        process = subprocess.Popen(
            [sys.executable, "-m", "qdq_toolkit.export", "--keras-model", "deep.keras", "--output", "out.onnx", "--force"],
            cwd=tmp_path,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stderr, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 240
    try:
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            if line is None:
                pytest.fail(f"the export ended before reporting '{stage}': {''.join(seen)}")
            seen.append(line)
            if stage in line:
                process.send_signal(signal.SIGINT)
                break
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    while (line := lines.get(timeout=10)) is not None:
        seen.append(line)
    stderr = "".join(seen)
    assert code == 130, stderr
    assert "interrupted: no partial output was left behind" in stderr
    assert "Traceback" not in stderr and "writing out.onnx" not in stderr
    assert (tmp_path / "out.onnx").read_bytes() == previous
    assert snapshot(tmp_path) == before  # nothing new, no .out.onnx.*.tmp
    # refusing a second export to an existing path without --force: test_export_cli::test_refuses_to_overwrite_...


# -------------------------------------------------------------------------------------------------- determinism
def test_exports_in_two_processes_are_byte_identical(artifacts, tmp_path):
    """Two separate processes (with different hash seeds, so set and dict orders of strings differ) export the same
    .keras file to byte-identical ONNX files."""
    shutil.copy(artifacts.good / "qat.keras", tmp_path / "qat.keras")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "qdq_toolkit.export", "--keras-model", "qat.keras", "--output", f"{name}.onnx", "-q"],
            cwd=tmp_path,
            env=child_env(PYTHONHASHSEED=seed),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, seed in (("first", "1"), ("second", "2"))
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    first, second = (tmp_path / "first.onnx").read_bytes(), (tmp_path / "second.onnx").read_bytes()
    assert len(first) > 1000 and first == second
    assert onnx_scales(onnx.load_from_string(first))  # a quantized graph, not an empty one


# -------------------------------------------------------------------------------------------------------- scale
def run_script(name: str, *args) -> dict:
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *map(str, args)],
        capture_output=True,
        text=True,
        env=child_env(TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


#: Relative tolerance between the scales exported after one-device and 2-replica training. The two runs see the same
#: data in the same order; the only difference is the order in which float32 sums are taken (each replica sums the
#: gradient of its half batch, then the halves are added). Over the 8 SGD steps that moves weights by a few float32
#: ulps of the largest weight (measured: max |dw| / max |w| = 2.8e-6), and a scale is max |w| / 127 per channel or a
#: moving average of max |x| -- so scales agree to ~1e-7 relative (measured 7e-8). 1e-5 leaves headroom for other
#: CPUs' summation orders yet is ~1000x finer than the 1/127 relative step of one int8 level: a replica computing
#: its range from its own half batch (instead of the MAX over replicas) would be off by far more (test_distribute).
MIRRORED_RTOL = 1e-5


def test_mirrored_strategy_exports_the_same_scales_as_one_device(tmp_path):
    out = run_script("mirrored_fit.py", "ema", "--export", tmp_path)
    assert out["replicas"] == 2
    assert out["violations"] == {"single": 0, "mirrored": 0}
    single, mirrored = out["scales"]["single"], out["scales"]["mirrored"]
    assert list(single) == list(mirrored)  # the same QuantizeLinear nodes, node by node
    sizes = sorted(len(values) for values in single.values())
    assert sizes == [1, 1, 1, 1, 3, 8, 8]  # 4 activations per tensor; conv1, conv2 (8 channels), logits (3)
    assert out["max_weight_rel_diff"] < MIRRORED_RTOL  # same training up to float summation order
    for name in single:
        np.testing.assert_allclose(mirrored[name], single[name], rtol=MIRRORED_RTOL, atol=0, err_msg=name)


@pytest.mark.slow
def test_calibration_memory_is_flat_in_the_number_of_batches():
    """calibrate() streams: its peak memory does not grow with the number of batches.

    tests/scripts/calibration_memory.py streams N = 100 and then 4N = 400 fresh 64x32x32x3 float32 batches
    (768 KiB each; 300 MiB for the 4N pass) from a generator through calibrate(method="entropy"), after a warm-up
    pass, and measures each pass's peak. It is a property test, not a timing one, and robust because:
    * the quantity compared is the *difference* between two passes of the same process and model, so everything
      allocated once (TensorFlow kernels, traced functions, the fixed-size histograms) cancels out;
    * tracemalloc counts exactly the bytes Python and NumPy hold: it does not see allocator caching, other
      processes or the machine's load, and is the same from run to run within a few hundred KiB;
    * what it guards against is proportional to the data: keeping each batch (or one of its activations) would
      add >= 3N x 768 KiB = 225 MiB to the 4N pass, 300x the one-batch bound below;
    * the resident set size (which also sees TensorFlow's C++ allocations) is checked with a bound 10x looser
      than the smallest such leak, since allocator pooling moves it by megabytes.
    """
    out = run_script("calibration_memory.py", 100, "entropy")
    small, large = out["passes"]
    batch = out["batch_bytes"]
    assert (small["batches"], large["batches"]) == (100, 400)
    assert large["streamed_bytes"] == 400 * batch == 400 * 64 * 32 * 32 * 3 * 4
    extra_data = large["streamed_bytes"] - small["streamed_bytes"]
    growth = large["traced_peak_bytes"] - small["traced_peak_bytes"]
    assert growth < batch, f"peak grew by {growth / 2**20:.2f} MiB for {extra_data / 2**20:.0f} MiB more data"
    assert small["traced_peak_bytes"] < 0.25 * small["streamed_bytes"]  # the pass never held a quarter of it
    if small["rss_peak_growth_bytes"] is not None:
        rss_growth = large["rss_peak_growth_bytes"] - small["rss_peak_growth_bytes"]
        assert rss_growth < 0.1 * extra_data, f"peak RSS grew by {rss_growth / 2**20:.1f} MiB"
