"""ResNet-50 walkthrough: FP32 baseline -> PTQ -> QAT fine-tune -> ONNX -> TensorRT engine -> evaluate.

Two modes, one code path:

* **ImageNet** (``--data-dir DIR --weights FILE``): the TFRecords written by ``data/prepare_imagenet.py`` and the
  Keras ResNet50 ImageNet weights you downloaded by hand (``resnet50_weights_tf_dim_ordering_tf_kernels.h5``;
  nothing is downloaded at run time). QAT fine-tuning follows the published recipe of NVIDIA's TF2 toolkit:
  ``ResNetV1QDQCase``, batch 64, SGD with momentum 0.9, base learning rate 1e-3 with a piecewise schedule
  (x1 the first epoch, x0.1 after), 2 epochs of 500 steps.
* **CPU** (``--cpu``): the same steps on a small real dataset that runs on a laptop: scikit-learn's handwritten
  digits (1797 real images, shipped inside scikit-learn) upsampled to 32x32 RGB, with a ResNet50 trained from
  scratch as the FP32 baseline (20 epochs, Adam with cosine decay, random shifts and zooms, BatchNorm momentum
  0.9 because the whole run is a few hundred steps); QAT fine-tunes 2 epochs with Adam at 1e-5, since that
  baseline was trained with Adam. ``make demo`` runs this mode. ``--arch small_cnn`` swaps in
  the quick-start CNN on the 8x8 images, which the test suite uses to check the whole path in seconds.

Every artifact goes to ``--output-dir`` (refused if it exists, unless ``--force``): the Keras models, the ONNX
files, the engines (with a GPU and TensorRT), the calibration report and the comparison report (Markdown, JSON,
PNG plot). The comparison table is printed at the end.

    python -m examples.resnet50.workflow --cpu
    python -m examples.resnet50.workflow --data-dir /data/imagenet-tfrecords --weights resnet50.h5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class Config:
    """Everything the workflow needs; :func:`cpu_config` and :func:`imagenet_config` fill in each mode."""

    mode: str
    output_dir: Path
    image_size: int
    num_classes: int
    batch_size: int
    channels: int = 3
    arch: str = "resnet50"
    data_dir: Path | None = None
    weights: Path | None = None
    fp32_epochs: int = 0  # CPU mode trains its own baseline
    fp32_learning_rate: float = 1e-3
    qat_epochs: int = 2
    qat_steps_per_epoch: int | None = None
    qat_learning_rate: float = 1e-3
    qat_optimizer: str = "sgd"  # SGD with momentum 0.9 (NVIDIA's recipe), or "adam" for models trained with Adam
    calibration_method: str = "percentile"
    calibration_batches: int = 16
    max_eval_samples: int | None = None
    train_batches: int | None = None  # CPU mode: train on the first N batches of the split each epoch (None: all)
    latency_batch_sizes: tuple[int, ...] = (1, 8, 32)
    latency_runs: int = 20
    engine_batch_sizes: tuple[int, ...] = (1, 8, 32)
    force: bool = False
    seed: int = 0
    spec: Path | None = None  # a QuantizationSpec file, e.g. from `python -m qdq_toolkit.sensitivity --spec-out`
    notes: list[str] = field(default_factory=list)


def cpu_config(
    output_dir: str | os.PathLike = "runs/resnet50-cpu",
    *,
    fast: bool = False,
    force: bool = False,
    arch: str = "resnet50",
) -> Config:
    """CPU mode on the digits. ``fast`` shrinks the run (for the notebook test); the figures need the full run."""
    if arch not in ("resnet50", "small_cnn"):
        raise ValueError(f"arch must be 'resnet50' or 'small_cnn', got {arch!r}")
    small = arch == "small_cnn"
    return Config(
        mode="cpu",
        arch=arch,
        output_dir=Path(output_dir),
        image_size=8 if small else 32,
        channels=1 if small else 3,
        num_classes=10,
        batch_size=64,
        fp32_epochs=30 if small else (1 if fast else 20),  # fast: the notebook test checks the steps, not accuracy
        fp32_learning_rate=3e-3 if small else 1e-3,
        qat_epochs=5 if small else (1 if fast else 2),
        qat_learning_rate=1e-4 if small else 1e-5,
        qat_optimizer="adam",  # the baselines are trained with Adam; SGD's raw steps overshoot their sharp minimum
        calibration_batches=4 if fast else 16,
        train_batches=4 if fast else None,
        latency_batch_sizes=(1,) if fast else (1, 32),
        latency_runs=3 if fast else 20,
        force=force,
    )


def imagenet_config(
    data_dir: str | os.PathLike,
    weights: str | os.PathLike,
    output_dir: str | os.PathLike = "runs/resnet50-imagenet",
    *,
    force: bool = False,
    max_eval_samples: int | None = None,
) -> Config:
    """ImageNet mode with NVIDIA's published QAT hyper-parameters for ResNet50 v1."""
    return Config(
        mode="imagenet",
        output_dir=Path(output_dir),
        image_size=224,
        num_classes=1000,
        batch_size=64,
        data_dir=Path(data_dir),
        weights=Path(weights),
        qat_epochs=2,
        qat_steps_per_epoch=500,
        qat_learning_rate=1e-3,
        calibration_method="percentile",
        calibration_batches=32,
        max_eval_samples=max_eval_samples,
        force=force,
    )


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    train: object  # tf.data.Dataset of (images, labels), repeated for ImageNet
    calibration: object  # tf.data.Dataset of (images, labels)
    evaluation: object  # qdq_toolkit.evaluate.EvalDataset
    train_steps: int | None = None


def load_data(config: Config) -> Data:
    """Training, calibration and evaluation data for the mode (evaluation never sees training images)."""
    from qdq_toolkit.evaluate import array_dataset, imagenet_eval_dataset

    if config.mode == "cpu":
        from qdq_toolkit.data import load_digits

        digits = load_digits(image_size=config.image_size, channels=config.channels, seed=config.seed, test_fraction=0.25)
        train = digits.train.as_dataset(config.batch_size, shuffle=True, seed=config.seed)
        if config.arch == "resnet50":
            train = _augmented(train, config.seed)
        if config.train_batches is not None:
            train = train.take(config.train_batches)
        calibration = digits.train.as_dataset(config.batch_size).take(config.calibration_batches)
        evaluation = array_dataset(
            digits.test.images,
            digits.test.labels,
            name="digits",
            description=f"scikit-learn digits test split, {config.image_size}x{config.image_size}x{config.channels}",
            num_classes=config.num_classes,
        )
        return Data(train, calibration, evaluation)

    from qdq_toolkit.data import imagenet_dataset

    train = imagenet_dataset(config.data_dir, "train", batch_size=config.batch_size, image_size=config.image_size, repeat=True)
    calibration = imagenet_dataset(
        config.data_dir, "train", batch_size=config.batch_size, image_size=config.image_size, augment=False
    ).take(config.calibration_batches)
    evaluation = imagenet_eval_dataset(
        config.data_dir, "validation", image_size=config.image_size, max_samples=config.max_eval_samples
    )
    return Data(train, calibration, evaluation, train_steps=config.qat_steps_per_epoch)


def _augmented(train, seed: int):
    """Random shifts and zooms of up to 10 %: 1347 training images are few for ResNet50's 23M weights."""
    import keras
    import tensorflow as tf

    augment = keras.Sequential(
        [keras.layers.RandomTranslation(0.1, 0.1, seed=seed + 1), keras.layers.RandomZoom(0.1, seed=seed + 2)]
    )
    return train.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


# -------------------------------------------------------------------------------------------------- models
def _compile(model, optimizer) -> None:
    import keras

    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])


def _epoch_logger(say):
    """A Keras callback reporting each epoch's metrics through ``say`` (stderr), so stdout keeps only the table."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            metrics = ", ".join(f"{key} {value:.4f}" for key, value in sorted((logs or {}).items()))
            say(f"  epoch {epoch + 1}: {metrics}")

    return EpochLogger()


def baseline_model(config: Config, data: Data, say=print):
    """The FP32 model: ImageNet weights from a local file, or (CPU mode) a ResNet50 trained on the digits."""
    import keras

    keras.utils.set_random_seed(config.seed)
    shape = (config.image_size, config.image_size, 3)
    if config.mode == "imagenet":
        if config.weights is None or not config.weights.is_file():
            raise FileNotFoundError(
                f"ResNet50 weights '{config.weights}' not found. Download resnet50_weights_tf_dim_ordering_tf_kernels.h5 "
                "(the Keras ImageNet weights) by hand and pass it with --weights; nothing is downloaded at run time."
            )
        model = keras.applications.ResNet50(weights=None, input_shape=shape, classes=config.num_classes)
        model.load_weights(config.weights)
        return model
    if config.arch == "small_cnn":
        from examples.digits_qat import small_cnn

        model = small_cnn((config.image_size, config.image_size, config.channels), config.num_classes)
        model = keras.Model(model.input, keras.layers.Softmax(name="probabilities")(model.output), name=model.name)
    else:
        model = _with_batchnorm_momentum(
            keras.applications.ResNet50(weights=None, input_shape=shape, classes=config.num_classes), 0.9
        )
    steps = config.fp32_epochs * _steps_per_epoch(data)
    schedule = keras.optimizers.schedules.CosineDecay(config.fp32_learning_rate, steps)
    _compile(model, keras.optimizers.Adam(schedule))
    model.fit(data.train, epochs=config.fp32_epochs, shuffle=False, verbose=0, callbacks=[_epoch_logger(say)])
    return model


def _with_batchnorm_momentum(model, momentum: float):
    """A copy of ``model`` whose BatchNorm moving statistics use ``momentum`` (Keras' default 0.99 lags behind
    the weights in a run of a few hundred steps, and inference then sees stale statistics)."""
    import keras

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["momentum"] = momentum
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def ptq_model(fp32, data: Data, config: Config):
    """Post-training quantization: ResNet placement, activation ranges calibrated on training images."""
    from custom_cases import ResNetV1QDQCase
    from qdq_toolkit import calibrate, quantize_model

    quantized = quantize_model(fp32, custom_qdq_cases=[ResNetV1QDQCase()], quantization_spec=config.spec)
    report = calibrate(
        quantized,
        data.calibration,
        config.calibration_method,
        max_batches=config.calibration_batches,
        progress=sys.stderr.isatty(),
    )
    return quantized, report


def qat_model(fp32, data: Data, config: Config, say=print):
    """Quantization-aware training: start from the calibrated PTQ ranges, fine-tune at a low learning rate (x0.1
    after the first epoch).

    Ranges keep following the activations during fine-tuning (EMA from the calibrated start); BatchNorm layers are
    frozen (see :func:`_freeze_batchnorm`).
    """
    import keras

    quantized, report = ptq_model(fp32, data, config)
    _freeze_batchnorm(quantized)
    steps = data.train_steps
    boundaries = [steps or _steps_per_epoch(data)]  # piecewise: x1 the first epoch, x0.1 afterwards
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries, [config.qat_learning_rate, config.qat_learning_rate * 0.1]
    )
    if config.qat_optimizer == "adam":
        optimizer = keras.optimizers.Adam(schedule)
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    _compile(quantized, optimizer)
    quantized.fit(
        data.train,
        epochs=config.qat_epochs,
        steps_per_epoch=steps,
        shuffle=False,
        verbose=0,
        callbacks=[_epoch_logger(say)],
    )
    return quantized, report


def _freeze_batchnorm(model) -> None:
    """Run every BatchNormalization in inference mode (frozen statistics, gamma and beta) while fine-tuning.

    Standard QAT practice (Jacob et al., 2018): fine-tuning then adjusts the weights to the quantizers against the
    statistics the model will be deployed with, instead of moving the statistics towards the last few batches.
    """
    import keras

    from qdq_toolkit import iter_layers

    for ref in iter_layers(model):
        layer = getattr(ref.layer, "layer", ref.layer)  # a BN inside a QDQ wrapper too
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _steps_per_epoch(data: Data) -> int:
    import tensorflow as tf

    cardinality = int(data.train.cardinality())
    return cardinality if cardinality > 0 else int(tf.data.experimental.cardinality(data.train))


# -------------------------------------------------------------------------------------------------- export
def export_models(models: dict, config: Config, say=print, calibration_images=None) -> dict[str, Path]:
    """Each model to ONNX (and, with a GPU and TensorRT, to an engine). Returns ``{name: file}`` to evaluate.

    With ``calibration_images`` (a slice of the training images), the QAT model is also exported for the ONNX
    Runtime CPU target (``qat_cpu.onnx``): the row that shows what INT8 buys on a CPU."""
    from qdq_toolkit.export import keras_to_onnx
    from qdq_toolkit.export.tensorrt import build_engine, tensorrt_status

    files: dict[str, Path] = {}
    for name, model in models.items():
        result = keras_to_onnx(model, config.output_dir / f"{name}.onnx", force=config.force)
        if result.violations:
            raise RuntimeError(f"{name}.onnx breaks TensorRT's QDQ rules: {result.violations[0].message}")
        say(f"exported {result.path} ({result.num_dequantize_linear} DequantizeLinear)")
        files[f"{name} (ONNX Runtime)"] = result.path
    if "qat" in models and calibration_images is not None:  # the same QAT model, for ONNX Runtime's integer kernels
        result = keras_to_onnx(
            models["qat"], config.output_dir / "qat_cpu.onnx", force=config.force,
            target="onnxruntime", calibration_data=calibration_images,
        )
        say(f"exported {result.path} (ONNX Runtime CPU target)")
        files["qat (ONNX Runtime, CPU target)"] = result.path
    reason = tensorrt_status()
    if reason is not None:
        say(f"TensorRT engines skipped: {' '.join(reason.split())}")
        config.notes.append("TensorRT engines were not built: no GPU/TensorRT on this machine.")
        return files
    for name in models:
        engine = build_engine(
            config.output_dir / f"{name}.onnx",
            config.output_dir / f"{name}.plan",
            batch_sizes=config.engine_batch_sizes,
            force=config.force,
        )
        files[f"{name} (TensorRT)"] = engine
    return files


def training_slice(data: Data, limit: int = 256):
    """Up to ``limit`` training images from the calibration batches, as one float32 array (the CPU target's
    calibration data)."""
    import numpy as np

    batches, count = [], 0
    for images, _ in data.calibration:
        batches.append(np.asarray(images, dtype=np.float32))
        count += len(batches[-1])
        if count >= limit:
            break
    return np.concatenate(batches)[:limit] if batches else None


def evaluate(files: dict[str, Path], data: Data, config: Config):
    from qdq_toolkit.evaluate import evaluate_models

    report = evaluate_models(
        files,
        data.evaluation,
        baseline=next(iter(files)),
        batch_sizes=config.latency_batch_sizes,
        runs=config.latency_runs,
        progress=sys.stderr.isatty(),
    )
    report.write_markdown(config.output_dir / "report.md", force=config.force)
    report.write_json(config.output_dir / "report.json", force=config.force)
    report.write_plot(config.output_dir / "report.png", force=config.force)
    return report


# ---------------------------------------------------------------------------------------------------- main
def prepare_output_dir(config: Config) -> None:
    """Create the output directory; an existing one is refused unless ``force`` (then its files are overwritten)."""
    if config.output_dir.exists() and not config.force:
        raise FileExistsError(
            f"Output directory '{config.output_dir}' exists; pass --force to replace it, or choose another with --output-dir."
        )
    config.output_dir.mkdir(parents=True, exist_ok=True)


def make_reproducible(config: Config) -> None:
    """Seed every random generator; in CPU mode also make TensorFlow's kernels deterministic (measured here: no
    slower), so the walkthrough prints the same figures on every run of the same machine."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    if config.mode == "cpu":
        tf.config.experimental.enable_op_determinism()


def run(config: Config, say=print) -> dict:
    """The whole walkthrough; returns the comparison report and the accuracies."""
    start = time.perf_counter()

    def step(message: str) -> None:
        say(f"[{time.perf_counter() - start:6.1f}s] {message}")

    prepare_output_dir(config)
    step("loading data")
    data = load_data(config)
    step("FP32 baseline" + (" (training on the digits)" if config.mode == "cpu" else ""))
    fp32 = baseline_model(config, data, say=step)
    fp32.save(config.output_dir / "fp32.keras")
    step(f"PTQ: quantize with ResNetV1QDQCase, calibrate ({config.calibration_method})")
    ptq, calibration = ptq_model(fp32, data, config)
    step(f"QAT: calibrate, then fine-tune {config.qat_epochs} epoch(s) at learning rate {config.qat_learning_rate}")
    qat, _ = qat_model(fp32, data, config, say=step)
    qat.save(config.output_dir / "qat.keras")
    _write_json(config.output_dir / "calibration.json", calibration.as_dict())
    step("export to ONNX")
    files = export_models({"fp32": fp32, "ptq": ptq, "qat": qat}, config, say=step, calibration_images=training_slice(data))
    step("evaluate")
    report = evaluate(files, data, config)
    step("done")
    return {"report": report, "config": config}


def _write_json(path: Path, payload: dict) -> None:
    from qdq_toolkit._files import write_atomically

    write_atomically(path, json.dumps(payload, indent=2, default=str).encode(), force=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m examples.resnet50.workflow",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cpu", action="store_true", help="small real dataset (digits) on CPU, as `make demo`")
    mode.add_argument("--data-dir", type=Path, help="ImageNet TFRecord directory (see data/README.md)")
    parser.add_argument("--weights", type=Path, help="ImageNet mode: Keras ResNet50 weights file (.h5)")
    parser.add_argument("--output-dir", type=Path, help="where every artifact goes (default runs/resnet50-<mode>)")
    parser.add_argument("--max-eval-samples", type=int, help="ImageNet mode: evaluate on the first N images")
    parser.add_argument("--fast", action="store_true", help="CPU mode: a shorter run (a smoke test, not the figures)")
    parser.add_argument(
        "--arch", choices=("resnet50", "small_cnn"), default="resnet50", help="CPU mode: the model (default resnet50)"
    )
    parser.add_argument("--spec", type=Path, help="a QuantizationSpec file (e.g. python -m qdq_toolkit.sensitivity --spec-out)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cpu:
            config = cpu_config(args.output_dir or f"runs/{args.arch}-cpu", fast=args.fast, force=args.force, arch=args.arch)
        else:
            if args.weights is None:
                raise ValueError("ImageNet mode needs --weights FILE (the Keras ResNet50 ImageNet weights, downloaded by hand)")
            config = imagenet_config(
                args.data_dir, args.weights, args.output_dir or "runs/resnet50-imagenet",
                force=args.force, max_eval_samples=args.max_eval_samples,
            )
        config.spec = args.spec
        from qdq_toolkit._cli import native_stderr_silenced

        make_reproducible(config)  # process-wide, so here and not in run()
        with native_stderr_silenced():
            result = run(config, say=lambda message: print(message, file=sys.stderr, flush=True))
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(result["report"].to_markdown())
    for note in config.notes:
        print(f"\nNote: {note}")
    print(f"\nArtifacts in {config.output_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
