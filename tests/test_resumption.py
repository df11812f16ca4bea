"""A QAT fit interrupted and resumed ends with the ranges (and exported scales) of an uninterrupted fit.

Keras 3's ``BackupAndRestore`` restores the weights (activation ranges and their observed-step counters included:
they are non-trainable weights) and the epoch number; an interrupted epoch is replayed from its start. With the
default ``save_freq="epoch"`` the resumed fit therefore sees exactly the batches of an uninterrupted one.
"""

import keras
import numpy as np
import onnx
import pytest

from qdq_toolkit import load_model, quantize_model, quantized_layers
from qdq_toolkit.export import keras_to_onnx
from qdq_toolkit.export.onnx import onnx_scales

EPOCHS = 3
BATCH = 16


class Preempted(RuntimeError):
    pass


class PreemptAt(keras.callbacks.Callback):
    """Raise in the middle of ``epoch``, as a preempted job dies mid-epoch."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise Preempted(f"preempted at epoch {self.epoch}, batch {batch}")


def build():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 2), name="image")
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = quantize_model(keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="net"))
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 8, 8, 2)).astype(np.float32)
    x[48:] *= 3.0  # later batches have wider ranges: a replayed or skipped batch would show
    return x, rng.integers(0, 3, size=96)


def state(model) -> dict:
    return {
        f"{w.name}/{slot}": (float(amax.numpy()), float(w._ranges[slot][1].numpy()))
        for w in quantized_layers(model)
        for slot, amax in w.activation_ranges().items()
    }


@pytest.fixture(scope="module")
def uninterrupted(data):
    model = build()
    model.fit(*data, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    return model


def test_backup_and_restore_after_a_mid_epoch_crash_ends_like_an_uninterrupted_fit(data, uninterrupted, tmp_path):
    backup = tmp_path / "backup"
    crashed = build()
    with pytest.raises(Preempted):
        crashed.fit(*data, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
                    callbacks=[keras.callbacks.BackupAndRestore(backup), PreemptAt(epoch=1, batch=2)])
    assert state(crashed) != state(uninterrupted)  # it did stop mid-way
    resumed = build()  # a new process would start from a new model
    resumed.fit(*data, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(backup)])
    got, want = state(resumed), state(uninterrupted)
    assert got.keys() == want.keys() and len(got) == 3  # conv, gap and logits inputs
    for name, (amax, steps) in want.items():
        assert got[name][1] == steps == EPOCHS * len(data[0]) / BATCH, name
        assert got[name][0] == pytest.approx(amax, rel=1e-6), name
    for a, b in zip(resumed.weights, uninterrupted.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    scales = [onnx_scales(onnx.load(keras_to_onnx(m, tmp_path / f"{n}.onnx").path))
              for n, m in (("resumed", resumed), ("uninterrupted", uninterrupted))]
    assert scales[0].keys() == scales[1].keys() and scales[0]
    for node in scales[1]:
        np.testing.assert_allclose(scales[0][node], scales[1][node], rtol=1e-6, err_msg=node)


def test_model_checkpoint_and_load_model_restore_ranges_and_their_step_counters(data, tmp_path):
    path = tmp_path / "qat.keras"
    model = build()
    model.fit(*data, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[keras.callbacks.ModelCheckpoint(path)])
    loaded = load_model(path)
    assert state(loaded) == state(model)
    assert all(steps == 2 * len(data[0]) / BATCH for _, steps in state(loaded).values())
    # training goes on from the restored ranges (EMA continues; it does not restart from the next batch)
    x, y = data[0][:BATCH] * 5.0, data[1][:BATCH]
    model.train_on_batch(x, y)
    loaded.train_on_batch(x, y)
    for name, (amax, steps) in state(model).items():
        assert state(loaded)[name][1] == steps
        assert state(loaded)[name][0] == pytest.approx(amax, rel=1e-6), name
