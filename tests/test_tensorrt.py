"""Tests of qdq_toolkit.export.tensorrt.

CPU tests run everywhere and check what a user without TensorRT relies on: the module imports, the errors say what
is missing and how to install it, arguments are validated, and nothing is written (an existing engine stays
byte-identical). GPU tests (marked ``gpu``; tests/conftest.py skips them without an NVIDIA GPU and TensorRT) build a
real engine from a small QDQ ONNX model made here with onnx.helper and compare it with ONNX Runtime. TensorRT is
never mocked.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_toolkit.export.tensorrt import (
    INSTALL_COMMAND,
    TensorRTError,
    TensorRTRunner,
    TensorRTUnavailableError,
    build_engine,
    load_engine,
    profile_batch_range,
    run_engine,
    tensorrt_status,
)

CHANNELS, CLASSES, SIZE = 8, 10, 16


def make_qdq_onnx(path: Path, *, seed: int = 0) -> Path:
    """A TensorRT-style QDQ model: per-tensor Q/DQ on the input, per-channel (axis 0) Q/DQ on the Conv weights,
    int8 zero points 0, then Relu, GlobalAveragePool, Flatten and a float Gemm. Dynamic batch axis "batch"."""
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0.0, 0.3, (CHANNELS, 3, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0.0, 0.1, (CHANNELS,)).astype(np.float32)
    w_scale = (np.abs(conv_w).reshape(CHANNELS, -1).max(axis=1) / 127.0).astype(np.float32)
    fc_w = rng.normal(0.0, 0.3, (CHANNELS, CLASSES)).astype(np.float32)
    fc_b = rng.normal(0.0, 0.1, (CLASSES,)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(np.array(1.0 / 127.0, dtype=np.float32), "x_scale"),  # inputs lie in [-1, 1]
        numpy_helper.from_array(np.array(0, dtype=np.int8), "x_zero_point"),
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(CHANNELS, dtype=np.int8), "w_zero_point"),
        numpy_helper.from_array(conv_b, "conv_b"),
        numpy_helper.from_array(fc_w, "fc_w"),
        numpy_helper.from_array(fc_b, "fc_b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero_point"], ["input_q"], name="input_q"),
        helper.make_node(
            "DequantizeLinear", ["input_q", "x_scale", "x_zero_point"], ["input_dq"], name="input_dq"
        ),
        helper.make_node(
            "QuantizeLinear", ["conv_w", "w_scale", "w_zero_point"], ["conv_w_q"], name="w_q", axis=0
        ),
        helper.make_node(
            "DequantizeLinear", ["conv_w_q", "w_scale", "w_zero_point"], ["conv_w_dq"], name="w_dq", axis=0
        ),
        helper.make_node(
            "Conv",
            ["input_dq", "conv_w_dq", "conv_b"],
            ["conv"],
            name="conv",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=initializers,
    )
    # IR version 8 (opset 13 era) is read by every TensorRT 10/11 ONNX parser and ONNX Runtime release.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def random_batch(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (batch, 3, SIZE, SIZE)).astype(np.float32)


def onnxruntime_logits(onnx_path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": batch})[0]


def directory_snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


@pytest.fixture
def qdq_onnx(tmp_path: Path) -> Path:
    return make_qdq_onnx(tmp_path / "model.onnx")


@pytest.fixture
def without_tensorrt() -> str:
    """The reason TensorRT is unusable here; these tests cover the path users without a GPU take."""
    reason = tensorrt_status()
    if reason is None:
        pytest.skip("TensorRT and a GPU are usable here; this test covers machines without them")
    return reason


# ---------------------------------------------------------------------------------------------------------------
# CPU: no TensorRT needed.
# ---------------------------------------------------------------------------------------------------------------


def test_importing_the_module_imports_no_gpu_package():
    code = textwrap.dedent(
        """
        import sys
        import qdq_toolkit.export.tensorrt
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("tensorrt", "cuda", "pycuda"))
        print(",".join(loaded))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert result.stdout.strip() == ""


def test_status_names_what_is_missing_and_how_to_install(without_tensorrt):
    assert isinstance(without_tensorrt, str)
    assert INSTALL_COMMAND in without_tensorrt
    assert "NVIDIA GPU" in without_tensorrt
    if not _importable("tensorrt"):
        assert "`tensorrt` Python package cannot be imported" in without_tensorrt


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_unavailable_error_is_a_runtime_error():
    assert issubclass(TensorRTUnavailableError, TensorRTError)
    assert issubclass(TensorRTUnavailableError, RuntimeError)


def test_build_without_tensorrt_explains_and_writes_nothing(without_tensorrt, qdq_onnx, tmp_path):
    engine = tmp_path / "engines" / "model.engine"
    before = directory_snapshot(tmp_path)
    with pytest.raises(TensorRTUnavailableError) as caught:
        build_engine(qdq_onnx, engine, batch_sizes=(1, 4, 16))
    message = str(caught.value)
    assert INSTALL_COMMAND in message
    assert "NVIDIA GPU" in message
    assert not engine.exists()
    assert not engine.parent.exists(), "the engine directory must not be created before a successful build"
    assert directory_snapshot(tmp_path) == before, "no temporary or partial file may be left behind"


def test_build_refuses_a_missing_onnx_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "model.engine")
    assert not (tmp_path / "model.engine").exists()


def test_build_refuses_a_directory_as_onnx_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file"):
        build_engine(tmp_path, tmp_path / "model.engine")


@pytest.mark.parametrize(
    ("batch_sizes", "error", "words"),
    [
        ((), ValueError, "empty"),
        ([0], ValueError, "not positive"),
        ((8, -1), ValueError, "not positive"),
        ((1, 2.5), TypeError, "not an integer"),
        (("8",), TypeError, "not an integer"),
        ((True,), TypeError, "not an integer"),
        (8, TypeError, "sequence"),
        ("1,8", TypeError, "sequence"),
    ],
)
def test_build_validates_batch_sizes_before_anything_else(qdq_onnx, tmp_path, batch_sizes, error, words):
    engine = tmp_path / "model.engine"
    with pytest.raises(error, match=words):
        build_engine(qdq_onnx, engine, batch_sizes=batch_sizes)
    assert not engine.exists()


@pytest.mark.parametrize("workspace_gib", [0, -1, float("nan"), float("inf")])
def test_build_validates_workspace(qdq_onnx, tmp_path, workspace_gib):
    with pytest.raises(ValueError, match="workspace_gib"):
        build_engine(qdq_onnx, tmp_path / "model.engine", workspace_gib=workspace_gib)


def test_build_refuses_to_write_over_its_own_onnx_file(qdq_onnx):
    original = qdq_onnx.read_bytes()
    with pytest.raises(ValueError, match="ONNX file itself"):
        build_engine(qdq_onnx, qdq_onnx, force=True)
    assert qdq_onnx.read_bytes() == original


def test_build_refuses_a_directory_as_engine_path(qdq_onnx, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        build_engine(qdq_onnx, tmp_path)


def test_build_never_overwrites_an_engine_without_force(qdq_onnx, tmp_path):
    # The overwrite rule is checked before TensorRT availability, so this holds on every machine.
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"the user's existing engine")
    before = directory_snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="--force"):
        build_engine(qdq_onnx, engine)
    assert directory_snapshot(tmp_path) == before


def test_force_without_tensorrt_leaves_the_existing_engine_intact(without_tensorrt, qdq_onnx, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"the user's existing engine")
    before = directory_snapshot(tmp_path)
    with pytest.raises(TensorRTUnavailableError):
        build_engine(qdq_onnx, engine, force=True)
    assert directory_snapshot(tmp_path) == before


def test_engine_path_in_a_missing_folder_passes_the_path_checks(without_tensorrt, qdq_onnx, tmp_path):
    """A new folder for the engine is fine (it is created when the engine is written); refused before any build, the
    call leaves no folder behind. A file in the way of the folder is refused first."""
    with pytest.raises(TensorRTUnavailableError):
        build_engine(qdq_onnx, tmp_path / "runs" / "x" / "model.engine")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        build_engine(qdq_onnx, qdq_onnx / "model.engine")


def test_writer_creates_missing_folders(tmp_path):
    from qdq_toolkit._files import write_atomically

    target = write_atomically(tmp_path / "runs" / "x" / "model.engine", memoryview(b"plan"))
    assert target.read_bytes() == b"plan"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.engine"], "no temporary file left"


@pytest.mark.parametrize(
    ("batch_sizes", "expected"),
    [
        ((1, 8, 32), (1, 8, 32)),
        ((32, 1), (1, 32, 32)),
        ((4,), (4, 4, 4)),
        ((1, 2, 4, 8), (1, 4, 8)),
        ((8, 8, 1), (1, 8, 8)),
        ([np.int64(2), 16], (2, 16, 16)),
    ],
)
def test_profile_batch_range(batch_sizes, expected):
    assert profile_batch_range(batch_sizes) == expected


def test_engine_writer_is_atomic_and_never_overwrites_without_force(tmp_path):
    # build_engine's last step (the toolkit's shared writer), exercised directly because it needs no GPU.
    from qdq_toolkit._files import write_atomically as _write_atomically

    target = tmp_path / "sub" / "model.engine"
    target.parent.mkdir()
    _write_atomically(target, memoryview(b"first"), force=False)
    assert target.read_bytes() == b"first"
    with pytest.raises(FileExistsError, match="--force"):
        _write_atomically(target, memoryview(b"second"), force=False)
    assert target.read_bytes() == b"first"
    _write_atomically(target, memoryview(b"third"), force=True)
    assert target.read_bytes() == b"third"
    assert sorted(path.name for path in target.parent.iterdir()) == ["model.engine"], "no partial file left"


def test_runner_refuses_a_missing_engine_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TensorRTRunner(tmp_path / "missing.engine")
    with pytest.raises(FileNotFoundError):
        run_engine(tmp_path / "missing.engine", random_batch(1))


def test_runner_without_tensorrt_explains(without_tensorrt, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not loaded without TensorRT")
    for load in (TensorRTRunner, load_engine, lambda path: run_engine(path, random_batch(1))):
        with pytest.raises(TensorRTUnavailableError, match="pip install"):
            load(engine)
    assert engine.read_bytes() == b"not loaded without TensorRT"


def test_the_test_model_is_a_valid_qdq_graph(qdq_onnx):
    """The GPU tests' reference: the model runs in ONNX Runtime at several batch sizes with int8 Q/DQ."""
    model = onnx.load(str(qdq_onnx))
    quantize = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert len(quantize) == 2
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    assert initializers["x_zero_point"].dtype == np.int8 and initializers["x_zero_point"] == 0
    assert initializers["w_zero_point"].dtype == np.int8 and not initializers["w_zero_point"].any()
    for batch in (1, 5):
        logits = onnxruntime_logits(qdq_onnx, random_batch(batch))
        assert logits.shape == (batch, CLASSES)
        assert np.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------------------------
# GPU: real TensorRT engines.
# ---------------------------------------------------------------------------------------------------------------

# INT8 convolution with int32 accumulation matches ONNX Runtime's float simulation of the same Q/DQ math up to
# float rounding; the float Gemm may run in TF32 on Ampere and later GPUs (about 1e-3 relative error).
TOLERANCE = {"rtol": 2e-2, "atol": 2e-2}
BATCH_SIZES = (1, 4, 16)


@pytest.fixture
def usable_tensorrt() -> None:
    reason = tensorrt_status()
    if reason is not None:
        pytest.fail(f"conftest found a GPU and TensorRT, but this module cannot use them:\n{reason}")


@pytest.fixture
def engine_file(usable_tensorrt, qdq_onnx, tmp_path) -> Path:
    stages: list[str] = []
    path = build_engine(qdq_onnx, tmp_path / "model.engine", batch_sizes=BATCH_SIZES, progress=stages.append)
    assert path.is_file() and path.stat().st_size > 0
    assert any("parsing" in stage for stage in stages) and any("writing" in stage for stage in stages)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.onnx"], "no temporary file left"
    return path


@pytest.mark.gpu
def test_engine_matches_onnxruntime_at_min_and_max_batch(engine_file, qdq_onnx):
    with TensorRTRunner(engine_file) as runner:
        assert runner.batch_range == (BATCH_SIZES[0], BATCH_SIZES[-1])
        assert [spec.name for spec in runner.inputs] == ["input"]
        assert [spec.name for spec in runner.outputs] == ["logits"]
        for batch_size in (
            1,
            BATCH_SIZES[-1],
            4,
            1,
        ):  # grows the buffers, then reuses them for smaller batches
            batch = random_batch(batch_size, seed=batch_size)
            got = runner(batch)["logits"]
            assert got.shape == (batch_size, CLASSES)
            np.testing.assert_allclose(got, onnxruntime_logits(qdq_onnx, batch), **TOLERANCE)
        by_name = runner.run({"input": random_batch(2)})["logits"]
        np.testing.assert_allclose(by_name, onnxruntime_logits(qdq_onnx, random_batch(2)), **TOLERANCE)


@pytest.mark.gpu
def test_runner_rejects_batches_outside_the_profile(engine_file):
    with load_engine(engine_file) as runner:
        with pytest.raises(ValueError, match=r"batches of 1 to 16"):
            runner(random_batch(BATCH_SIZES[-1] + 1))
        with pytest.raises(ValueError, match="inputs are"):
            runner({"image": random_batch(1)})
        with pytest.raises(ValueError, match="shape"):
            runner(np.zeros((1, 3, SIZE + 1, SIZE), dtype=np.float32))
        # A rejected call leaves the runner usable.
        assert runner(random_batch(1))["logits"].shape == (1, CLASSES)
    with pytest.raises(TensorRTError, match="closed"):
        runner(random_batch(1))


@pytest.mark.gpu
def test_run_engine_convenience(engine_file, qdq_onnx):
    batch = random_batch(3)
    got = run_engine(engine_file, batch)["logits"]
    np.testing.assert_allclose(got, onnxruntime_logits(qdq_onnx, batch), **TOLERANCE)


@pytest.mark.gpu
def test_rebuilding_needs_force(engine_file, qdq_onnx):
    first = engine_file.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        build_engine(qdq_onnx, engine_file, batch_sizes=BATCH_SIZES)
    assert engine_file.read_bytes() == first
    build_engine(qdq_onnx, engine_file, batch_sizes=(2, 8), force=True)
    with TensorRTRunner(engine_file) as runner:
        assert runner.batch_range == (2, 8)


# ---------------------------------------------------------------------------------------------------------------
# GPU: the toolkit's own export path (tf2onnx layout ops, folded weight DQ, --fp16 casts) parsed by TensorRT.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_qat():
    """The quick-start CNN fine-tuned with QAT on the digits (about ten seconds), and its held-out images."""
    from examples.digits_qat import run
    from qdq_toolkit.data import load_digits

    return run(fp32_epochs=30, qat_epochs=5).qat_model, load_digits(test_fraction=0.25).test.images


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32-float-parts", "fp16-float-parts"])
def test_engine_from_a_toolkit_export_agrees_with_onnxruntime(usable_tensorrt, digits_qat, fp16, tmp_path):
    from qdq_toolkit.export import keras_to_onnx

    model, images = digits_qat
    onnx_path = keras_to_onnx(model, tmp_path / "qat.onnx", fp16=fp16).path
    engine = build_engine(onnx_path, tmp_path / "qat.plan", batch_sizes=(1, 32, 64), fp16=fp16)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    agree = []
    with TensorRTRunner(engine) as runner:
        assert [spec.name for spec in runner.inputs] == [input_name]
        for start in range(0, len(images), 64):
            batch = images[start : start + 64].astype(np.float32)
            expected = session.run([output_name], {input_name: batch})[0].astype(np.float32)
            got = runner(batch)[output_name].astype(np.float32)
            assert got.shape == expected.shape
            # Same int8 math; TensorRT accumulates in another order (and in FP16 for the float parts with fp16).
            np.testing.assert_allclose(got, expected, atol=0.25 if fp16 else 0.1)
            agree.extend(got.argmax(1) == expected.argmax(1))
    assert len(agree) == len(images) and np.mean(agree) >= 0.99, np.mean(agree)
