"""The evaluator: metrics, latency statistics, backends, the comparison report and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qdq_toolkit.evaluate import (
    AccuracyResult,
    Backend,
    ComparisonReport,
    EvaluationError,
    KerasBackend,
    ModelResult,
    OnnxRuntimeBackend,
    TensorRTBackend,
    TopKAccumulator,
    array_dataset,
    evaluate_models,
    latency_batch,
    latency_stats,
    load_backend,
    measure_latencies,
    measure_latency,
    top_k_accuracy,
    top_k_correct,
    write_atomically,
)
from qdq_toolkit.export.tensorrt import TensorRTUnavailableError, tensorrt_status

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRT_UNAVAILABLE = tensorrt_status() is not None


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------

# 4 samples x 6 classes. Ranks of the true class (number of strictly higher scores):
#   sample 0: label 2, score 0.9 is the highest              -> rank 0: top-1 and top-5
#   sample 1: label 0, 0.1 < four others, > 0.0              -> rank 4: top-5 only
#   sample 2: label 5, 0.0 is the lowest of six              -> rank 5: neither
#   sample 3: label 1, 0.5 below 0.8 (class 4)               -> rank 1: top-5 only
SCORES = np.array(
    [
        [0.1, 0.2, 0.9, 0.3, 0.0, 0.4],
        [0.1, 0.5, 0.6, 0.7, 0.8, 0.0],
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],
        [0.1, 0.5, 0.2, 0.3, 0.8, 0.0],
    ],
    dtype=np.float32,
)
LABELS = np.array([2, 0, 5, 1])


def test_top_k_against_hand_computed_values() -> None:
    assert top_k_correct(SCORES, LABELS, 1).tolist() == [True, False, False, False]
    assert top_k_correct(SCORES, LABELS, 2).tolist() == [True, False, False, True]
    assert top_k_correct(SCORES, LABELS, 5).tolist() == [True, True, False, True]
    assert top_k_accuracy(SCORES, LABELS, 1) == pytest.approx(0.25)
    assert top_k_accuracy(SCORES, LABELS, 5) == pytest.approx(0.75)
    assert top_k_accuracy(SCORES, LABELS, 6) == pytest.approx(1.0)


def test_top_k_ties_count_as_in_top_k_like_in_top_k() -> None:
    tied = np.array([[1.0, 1.0, 1.0, 0.0]])
    for label in (0, 1, 2):  # no class scores strictly higher: top-1 for each of the tied classes
        assert top_k_correct(tied, [label], 1).tolist() == [True]
    assert top_k_correct(tied, [3], 3).tolist() == [False]
    assert top_k_correct(np.array([[np.nan, 1.0]]), [0], 2).tolist() == [False]


def test_accumulator_streams_batches_like_one_pass() -> None:
    accumulator = TopKAccumulator(keep_predictions=True)
    accumulator.update(SCORES[:1], LABELS[:1])
    accumulator.update(SCORES[1:], LABELS[1:])
    result = accumulator.result()
    assert result.samples == 4
    assert result.correct == {1: 1, 5: 3}
    assert (result.top1, result.top5) == (pytest.approx(0.25), pytest.approx(0.75))
    assert accumulator.predictions.tolist() == [2, 4, 0, 4]
    assert result.to_dict() == {"samples": 4, "top1": 0.25, "top5": 0.75}


@pytest.mark.parametrize(
    ("scores", "labels", "error"),
    [
        (SCORES, [0, 1, 2], ValueError),  # count mismatch
        (SCORES, [0, 1, 2, 6], ValueError),  # label out of range
        (SCORES[0], [0], ValueError),  # not 2-D
        (SCORES, ["a", "b", "c", "d"], TypeError),
    ],
)
def test_metrics_reject_bad_input(scores: np.ndarray, labels: list, error: type[Exception]) -> None:
    with pytest.raises(error):
        top_k_correct(scores, np.asarray(labels), 1)


# ----------------------------------------------------------------------------------------------------------
# Latency (a fake clock: nothing here depends on how fast the machine is)
# ----------------------------------------------------------------------------------------------------------


class FakeClock:
    """A clock that only moves when a fake predictor "works"."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_measure_latency_excludes_warmup_and_counts_runs() -> None:
    clock = FakeClock()
    calls: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        # Warm-up calls take 1 s each; timed calls take 1, 2, ..., 9 ms.
        clock.now += 1.0 if len(calls) <= 3 else (len(calls) - 3) / 1000.0
        return np.zeros((batch.shape[0], 10))

    ticks: list[None] = []
    stats = measure_latency(
        predict, np.zeros((4, 8, 8, 1)), warmup=3, runs=9, clock=clock, on_run=lambda: ticks.append(None)
    )
    assert len(calls) == 12 and set(calls) == {4} and len(ticks) == 12
    assert (stats.batch_size, stats.warmup_runs, stats.runs) == (4, 3, 9)
    assert max(stats.times_ms) < 1000  # no warm-up call was timed
    assert stats.median_ms == pytest.approx(5.0)
    assert stats.p90_ms == pytest.approx(8.2)  # linear interpolation between 8 and 9
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.max_ms
    assert stats.throughput == pytest.approx(4 / 0.005)
    summary = stats.to_dict()
    assert summary["runs"] == 9 and summary["warmup_runs"] == 3 and "times_ms" not in summary


def test_measure_latency_on_a_real_clock_has_consistent_structure() -> None:
    stats = measure_latency(lambda batch: batch.sum(), np.ones((2, 3)), warmup=2, runs=7)
    assert (stats.runs, stats.warmup_runs, stats.batch_size) == (7, 2, 2)
    assert stats.median_ms <= stats.p90_ms
    assert all(t >= 0 for t in stats.times_ms)


def test_measure_latencies_interleaves_and_respects_only() -> None:
    order: list[tuple[str, int]] = []

    def predictor(name: str):
        return lambda batch: order.append((name, batch.shape[0]))

    images = np.arange(3, dtype=np.float32).reshape(3, 1)
    results = measure_latencies(
        {"a": predictor("a"), "b": predictor("b")},
        images,
        [1, 4],
        warmup=1,
        runs=2,
        only={"b": [1]},
    )
    assert order == [("a", 1), ("b", 1), ("a", 1), ("b", 1), ("a", 1), ("b", 1), ("a", 4), ("a", 4), ("a", 4)]
    assert sorted(results["a"]) == [1, 4] and sorted(results["b"]) == [1]
    assert all(stats.runs == 2 and stats.warmup_runs == 1 for r in results.values() for stats in r.values())


def test_latency_batch_repeats_images_and_stats_validate() -> None:
    images = np.arange(3).reshape(3, 1)
    assert latency_batch(images, 2)[:, 0].tolist() == [0, 1]
    assert latency_batch(images, 7)[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError):
        latency_stats([], batch_size=1, warmup_runs=0)
    with pytest.raises(ValueError):
        measure_latency(lambda batch: batch, np.ones((1, 1)), runs=0)


# ----------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------


class RangeBackend(Backend):
    """Runs only batches of 2..4 images; scores are the image values (to see which image each row came from)."""

    kind = "fake"

    def __init__(self) -> None:
        super().__init__("range", None)
        self.seen: list[int] = []

    @property
    def device(self) -> str:
        return "CPU"

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return (None, 1)

    @property
    def batch_range(self) -> tuple[int, int | None]:
        return 2, 4

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append(batch.shape[0])
        return np.concatenate([batch, -batch], axis=1)


def test_backend_splits_large_and_pads_small_batches() -> None:
    backend = RangeBackend()
    images = np.arange(7, dtype=np.float32).reshape(7, 1)
    scores = backend.predict(images)
    assert backend.seen == [4, 3]
    assert scores[:, 0].tolist() == list(range(7))
    backend.seen.clear()
    assert backend.predict(images[:1])[:, 0].tolist() == [0.0]
    assert backend.seen == [2]  # padded to the engine's minimum, only the real row returned
    assert backend.unsupported_batch_size(8) is not None and backend.unsupported_batch_size(3) is None
    with pytest.raises(ValueError, match="takes images of shape"):
        backend.predict(np.zeros((2, 3)))
    backend.close()
    with pytest.raises(EvaluationError, match="closed"):
        backend.predict(images)


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small CNN trained briefly on the digits, saved as .keras and exported with tf2onnx as .onnx."""
    import keras
    import tensorflow as tf
    import tf2onnx

    from qdq_toolkit.data import load_digits

    digits = load_digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.train.images, digits.train.labels, epochs=5, batch_size=64, verbose=0)

    folder = tmp_path_factory.mktemp("models")
    keras_path = folder / "fp32.keras"
    onnx_path = folder / "fp32.onnx"
    model.save(keras_path)
    tf2onnx.convert.from_function(
        tf.function(lambda x: model(x)),
        input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input")],
        opset=13,
        output_path=str(onnx_path),
    )
    plan_path = folder / "qat.plan"
    plan_path.write_bytes(b"not a real engine")
    from qdq_toolkit import quantize_model

    qat_path = folder / "qat.keras"  # QDQ wrappers inside: loading needs the toolkit's registered classes
    quantize_model(model).save(qat_path)
    return {
        "model": model,
        "digits": digits,
        "keras": keras_path,
        "onnx": onnx_path,
        "plan": plan_path,
        "qat_keras": qat_path,
    }


def test_keras_and_onnxruntime_backends_agree_on_top1(digits_models: dict) -> None:
    images = digits_models["digits"].test.images
    labels = digits_models["digits"].test.labels
    with (
        load_backend(digits_models["keras"], "keras") as keras_backend,
        OnnxRuntimeBackend(digits_models["onnx"], intra_op_threads=1) as onnx_backend,
    ):
        assert isinstance(keras_backend, KerasBackend) and keras_backend.kind == "keras"
        assert onnx_backend.kind == "onnxruntime" and onnx_backend.device == "CPU"
        assert onnx_backend.input_name == "input"
        assert keras_backend.input_shape == onnx_backend.input_shape == (None, 8, 8, 1)
        assert keras_backend.file_size == digits_models["keras"].stat().st_size
        assert onnx_backend.file_size == digits_models["onnx"].stat().st_size
        keras_scores = keras_backend.predict(images)
        onnx_scores = onnx_backend.predict(images)
        assert keras_scores.shape == onnx_scores.shape == (len(images), 10)
        np.testing.assert_array_equal(keras_scores.argmax(1), onnx_scores.argmax(1))
        np.testing.assert_allclose(keras_scores, onnx_scores, atol=1e-4)
        assert top_k_accuracy(keras_scores, labels, 1) > 0.7  # it did learn something
    in_memory = KerasBackend(digits_models["model"], "mem")
    assert in_memory.path is None and in_memory.file_size is None
    np.testing.assert_allclose(in_memory.predict(images[:5]), keras_scores[:5], atol=1e-5)


def test_load_backend_errors(digits_models: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backend(tmp_path / "missing.onnx")
    unknown = tmp_path / "model.pb"
    unknown.write_bytes(b"x")
    with pytest.raises(EvaluationError, match=r"\.keras.*\.onnx.*\.plan"):
        load_backend(unknown)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(digits_models["onnx"].read_bytes()[:500])
    with pytest.raises(EvaluationError, match="ONNX Runtime cannot load"):
        load_backend(corrupt)
    not_zip = tmp_path / "corrupt.keras"
    not_zip.write_bytes(b"garbage")
    with pytest.raises(EvaluationError, match="not a .keras archive"):
        load_backend(not_zip)


def test_tensorrt_backend_without_tensorrt_raises_the_unavailable_message(digits_models: dict) -> None:
    if not TRT_UNAVAILABLE:
        with pytest.raises(EvaluationError, match="cannot load TensorRT engine"):
            TensorRTBackend(digits_models["plan"])
        return
    with pytest.raises(TensorRTUnavailableError, match="TensorRT cannot be used here"):
        TensorRTBackend(digits_models["plan"])


# ----------------------------------------------------------------------------------------------------------
# Evaluation and report
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not TRT_UNAVAILABLE, reason="the fake engine is only skipped where TensorRT is unavailable"
)
def test_evaluate_models_reports_accuracy_latency_and_skips_engine(
    digits_models: dict, tmp_path: Path
) -> None:
    test = digits_models["digits"].test
    dataset = array_dataset(test.images, test.labels, name="digits", num_classes=10, max_samples=100)
    skipped: list[str] = []
    report = evaluate_models(
        [("fp32", digits_models["model"]), ("onnx", digits_models["onnx"]), ("trt", digits_models["plan"])],
        dataset,
        batch_sizes=(1, 4),
        warmup=1,
        runs=3,
        eval_batch_size=16,
        on_skip=lambda name, reason: skipped.append(name),
    )
    assert skipped == ["trt"]
    assert report.baseline == "fp32" and [r.name for r in report.skipped] == ["trt"]
    fp32, onnx = report.result("fp32"), report.result("onnx")
    assert fp32.accuracy.samples == onnx.accuracy.samples == 100
    assert onnx.top1() == fp32.top1() and onnx.agreement == 1.0
    assert report.delta_pp("onnx") == pytest.approx(0.0) and report.delta_pp("trt") is None
    assert sorted(onnx.latency) == [1, 4] and onnx.latency[4].runs == 3 and onnx.latency[4].warmup_runs == 1
    assert "TensorRT cannot be used here" in report.result("trt").reason
    assert report.result("trt").file_size == digits_models["plan"].stat().st_size


def _report() -> ComparisonReport:
    def accuracy(top1: int, top5: int) -> AccuracyResult:
        return AccuracyResult(samples=200, correct={1: top1, 5: top5})

    def latency(median: float) -> dict:
        return {1: latency_stats([median, median, median * 2], batch_size=1, warmup_runs=2)}

    return ComparisonReport(
        results=(
            ModelResult(
                "fp32",
                "keras",
                "evaluated",
                file_size=4096,
                device="CPU",
                accuracy=accuracy(150, 190),
                agreement=1.0,
                latency=latency(2.0),
            ),
            ModelResult(
                "ptq",
                "onnxruntime",
                "evaluated",
                file_size=1024,
                device="CPU",
                accuracy=accuracy(140, 188),
                agreement=0.9,
                latency=latency(1.0),
            ),
            ModelResult(
                "qat|int8",
                "onnxruntime",
                "evaluated",
                file_size=1024,
                device="CPU",
                accuracy=accuracy(149, 191),
                agreement=0.95,
                latency=latency(1.0),
            ),
            ModelResult(
                "qat-trt",
                "tensorrt",
                "skipped",
                file_size=10,
                reason="TensorRT cannot be used here:\n  - no GPU",
            ),
        ),
        baseline="fp32",
        dataset={"name": "digits", "description": "digits test split", "samples": 200},
        batch_sizes=(1,),
        settings={"latency": True, "warmup": 2, "runs": 3, "interleave": True},
    )


def test_report_markdown_json_and_deltas() -> None:
    report = _report()
    assert report.delta_pp("ptq") == pytest.approx(-5.0)
    assert report.delta_pp("qat|int8") == pytest.approx(-0.5)
    assert report.delta_pp("qat|int8", 5) == pytest.approx(0.5)

    markdown = report.to_markdown()
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(rows) == 5  # header + 4 models
    assert "Δ top-1 (pp)" in rows[0] and "Latency b=1 median / p90 (ms)" in rows[0]
    assert (
        rows[1]
        == "| fp32 (baseline) | keras (CPU) | 75.00 | baseline | 95.00 | baseline | 100.00 | 2.00 / 3.60 | 4.0 KiB |"
    )
    assert "| 70.00 | -5.00 | 94.00 | -1.00 | 90.00 | 1.00 / 1.80 | 1.0 KiB |" in rows[2]
    assert rows[3].startswith("| qat\\|int8 |") and "| +0.50 |" in rows[3]
    assert rows[4].startswith("| qat-trt | tensorrt | skipped |")
    assert "- `qat-trt`: TensorRT cannot be used here:" in markdown and "  - no GPU" in markdown

    data = json.loads(report.to_json())
    models = {model["name"]: model for model in data["models"]}
    assert data["baseline"] == "fp32" and data["batch_sizes"] == [1]
    assert models["ptq"]["delta_pp"]["top1"] == pytest.approx(-5.0)
    assert models["ptq"]["accuracy"] == {"samples": 200, "top1": 0.7, "top5": 0.94}
    assert models["ptq"]["latency"][0]["median_ms"] == pytest.approx(1.0)
    assert models["ptq"]["latency"][0]["p90_ms"] == pytest.approx(1.8)
    assert models["qat-trt"]["status"] == "skipped" and models["qat-trt"]["accuracy"] is None
    assert models["qat-trt"]["delta_pp"] == {"top1": None, "top5": None}
    assert models["fp32"]["is_baseline"] and models["fp32"]["file_size_bytes"] == 4096


def test_report_plot_is_png_and_files_are_written_atomically(tmp_path: Path) -> None:
    report = _report()
    plot = report.write_plot(tmp_path / "plot.png")
    assert plot.read_bytes().startswith(PNG_MAGIC)
    existing = tmp_path / "report.json"
    existing.write_text("keep me")
    with pytest.raises(FileExistsError, match="--force"):
        report.write_json(existing)
    assert existing.read_text() == "keep me"
    report.write_json(existing, force=True)
    assert json.loads(existing.read_text())["format"].startswith("qdq_toolkit.evaluate/")
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "plot.png",
        "report.json",
    ]  # no temp file left
    assert write_atomically(tmp_path / "missing" / "x.md", "text").read_text() == "text"  # parents created
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        write_atomically(tmp_path / "report.json" / "x.md", "text")
    assert (tmp_path / "report.json").is_file()


def test_report_rejects_unknown_baseline() -> None:
    with pytest.raises(EvaluationError, match="baseline"):
        ComparisonReport(results=_report().results, baseline="nope", dataset={}, batch_sizes=(1,))


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two validation shards in the ImageNet TFRecord layout: 5 random JPEGs, labels 1..5 (1-based)."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    writers = [tf.io.TFRecordWriter(str(folder / f"validation-0000{i}-of-00002")) for i in range(2)]
    for label in range(1, 6):
        jpeg = tf.io.encode_jpeg(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).numpy()
        feature = {
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }
        writers[label % 2].write(
            tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        )
    for writer in writers:
        writer.close()
    return folder


def test_imagenet_eval_dataset_reads_tfrecords(imagenet_dir: Path) -> None:
    from qdq_toolkit.evaluate import imagenet_eval_dataset

    dataset = imagenet_eval_dataset(imagenet_dir, image_size=32, max_samples=4)
    batches = list(dataset.batches(3))
    assert [images.shape for images, _ in batches] == [(3, 32, 32, 3), (1, 32, 32, 3)]
    labels = np.concatenate([labels for _, labels in batches])
    assert sorted(labels.tolist()) == sorted(set(labels.tolist())) and labels.min() >= 0 and labels.max() <= 4
    assert dataset.num_classes == 1000 and dataset.image_shape == (32, 32, 3)
    with pytest.raises(FileNotFoundError, match="prepare_imagenet"):
        imagenet_eval_dataset(imagenet_dir / "nowhere")


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def _cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "qdq_toolkit.evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO_ROOT,
        timeout=300,
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_cli_help_documents_exit_codes_and_does_not_import_tensorflow() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout and "skipped" in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, qdq_toolkit.evaluate; print('tensorflow' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
    )
    assert probe.stdout.strip() == "False"


@pytest.mark.skipif(
    not TRT_UNAVAILABLE, reason="the fake engine is only skipped where TensorRT is unavailable"
)
def test_cli_full_run_on_digits(digits_models: dict, tmp_path: Path) -> None:
    (tmp_path / "report.md").write_text("an older report")  # replaced: --force
    result = _cli(
        "--dataset", "digits",
        "--model", f"fp32={digits_models['keras']}",
        "--model", f"qat={digits_models['onnx']}",
        "--model", f"qat-trt={digits_models['plan']}",
        "--model", f"qat-keras={digits_models['qat_keras']}",
        "--batch-sizes", "1,8", "--warmup", "1", "--runs", "3", "--threads", "1", "--force",
        "--json", tmp_path / "report.json", "--markdown", tmp_path / "report.md", "--plot", tmp_path / "report.png",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "warning: model 'qat-trt' skipped: TensorRT cannot be used here" in result.stderr
    data = json.loads((tmp_path / "report.json").read_text())
    models = {model["name"]: model for model in data["models"]}
    assert [model["name"] for model in data["models"]] == ["fp32", "qat", "qat-trt", "qat-keras"]
    assert models["qat-keras"]["status"] == "evaluated" and models["qat-keras"]["accuracy"]["samples"] == 360
    assert models["fp32"]["backend"] == "keras" and models["qat"]["backend"] == "onnxruntime"
    assert models["qat"]["accuracy"]["samples"] == 360 and data["dataset"]["image_shape"] == [8, 8, 1]
    assert models["qat"]["accuracy"]["top1"] == models["fp32"]["accuracy"]["top1"]
    assert models["qat"]["top1_agreement_with_baseline"] == 1.0
    assert [entry["batch_size"] for entry in models["qat"]["latency"]] == [1, 8]
    assert models["qat-trt"]["status"] == "skipped" and "TensorRT" in models["qat-trt"]["skip_reason"]
    markdown = (tmp_path / "report.md").read_text()
    assert markdown == result.stdout
    assert "| fp32 (baseline) | keras (CPU) |" in markdown and "| qat-trt | tensorrt | skipped |" in markdown
    assert (tmp_path / "report.png").read_bytes().startswith(PNG_MAGIC)


def test_cli_bad_path_and_unknown_extension(tmp_path: Path) -> None:
    missing = _cli("--dataset", "digits", "--model", tmp_path / "missing.onnx")
    assert missing.returncode == 1
    assert _error_lines(missing.stderr) == [
        f"error: model file {tmp_path / 'missing.onnx'} does not exist; check the path"
    ]
    assert "Traceback" not in missing.stderr
    unknown = tmp_path / "model.tflite"
    unknown.write_bytes(b"x")
    result = _cli("--dataset", "digits", "--model", unknown)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = _error_lines(result.stderr)
    assert "extension '.tflite'" in line and ".onnx" in line
    usage = _cli("--dataset", "imagenet", "--model", unknown)
    assert usage.returncode == 2 and "--data-dir" in usage.stderr


def test_cli_refuses_to_overwrite_outputs_without_force(digits_models: dict, tmp_path: Path) -> None:
    existing = tmp_path / "report.md"
    existing.write_text("previous report")
    result = _cli("--dataset", "digits", "--model", digits_models["onnx"], "--markdown", existing)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = _error_lines(result.stderr)
    assert "already exists" in line and "--force" in line
    assert existing.read_text() == "previous report"


@pytest.mark.skipif(
    not TRT_UNAVAILABLE, reason="the fake engine is only skipped where TensorRT is unavailable"
)
def test_cli_only_unavailable_engines_exits_3(digits_models: dict, tmp_path: Path) -> None:
    output = tmp_path / "report.json"
    result = _cli("--dataset", "digits", "--model", digits_models["plan"], "--json", output)
    assert result.returncode == 3, result.stderr
    assert "skipped: TensorRT cannot be used here" in result.stderr
    assert "no model could be evaluated" in result.stderr and not output.exists()


def test_cli_on_imagenet_tfrecords(imagenet_dir: Path, tmp_path: Path) -> None:
    import keras

    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1000)]
    )
    model.save(tmp_path / "tiny.keras")
    result = _cli(
        "--dataset", "imagenet", "--data-dir", imagenet_dir, "--model", tmp_path / "tiny.keras",
        "--batch-sizes", "2", "--warmup", "0", "--runs", "2", "--json", tmp_path / "report.json", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["dataset"]["name"] == "imagenet" and data["dataset"]["image_shape"] == [32, 32, 3]
    assert data["dataset"]["samples"] == 5 and data["models"][0]["name"] == "tiny"
    assert data["models"][0]["latency"][0]["batch_size"] == 2


def test_cli_creates_report_folders_and_takes_the_export_batch_flag(digits_models: dict, tmp_path: Path) -> None:
    """``--json runs/r/report.json`` creates ``runs/r``; ``--batch`` (the export CLI's name) is ``--batch-sizes``."""
    result = _cli(
        "--dataset", "digits", "--model", f"qat={digits_models['onnx']}", "--max-samples", "40",
        "--batch", "1,2", "--warmup", "0", "--runs", "1", "--quiet", "--json", "runs/r/report.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "runs" / "r" / "report.json").read_text())
    assert [entry["batch_size"] for entry in data["models"][0]["latency"]] == [1, 2]
