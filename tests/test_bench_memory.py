"""bench.memory's side-by-side training paths: the default QAT model and the one that stores its quantized tensors."""

from __future__ import annotations

import json

import keras
import pytest

from bench import memory
from bench.run import QAT_KINDS, qat_resnet


def small_model():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="dense")(x))


def test_the_stored_kind_turns_off_every_recomputing_wrapper():
    from qdq_toolkit import quantized_layers

    model = small_model()
    recomputing = {kind: [w.name for w in quantized_layers(qat_resnet(model, kind)) if w._recomputes_in_backward()]
                   for kind in QAT_KINDS}
    assert recomputing == {"qat": ["quant_conv", "quant_dense"], "qat_stored": []}
    with pytest.raises(ValueError, match="unknown QAT kind"):
        qat_resnet(model, "qat_fast")


def fake_results(stored: bool) -> dict:
    peaks = {"fp32_peak_mib": [100.0], "qat_peak_mib": [110.0], "fp32_tensor_peak_mib": [50.0],
             "qat_tensor_peak_mib": [48.0], "ratio_of_medians": 1.1, "tensor_ratio_of_medians": 0.96}
    step = {"fp32_s": [1.0, 1.0], "qat_s": [1.1, 1.12], "qat_uncalibrated_s": [1.2, 1.2],
            "qat_ratio_of_medians": 1.11, "qat_ratio_per_round": [1.1, 1.12],
            "qat_uncalibrated_ratio_of_medians": 1.2, "qat_uncalibrated_ratio_per_round": [1.2, 1.2]}
    if stored:
        peaks |= {"qat_stored_peak_mib": [125.0], "qat_stored_tensor_peak_mib": [70.0],
                  "qat_stored_ratio_of_medians": 1.25, "qat_stored_tensor_ratio_of_medians": 1.4}
        step |= {"qat_stored_s": [1.05, 1.07], "qat_stored_ratio_of_medians": 1.06,
                 "qat_stored_ratio_per_round": [1.05, 1.07]}
    return {"memory": peaks, "train_step": step, "xla_fixed_mib": [40.0]}


@pytest.mark.parametrize("stored", [False, True])
def test_render_shows_the_stored_path_when_it_was_measured(stored):
    text = memory.render(json.loads(json.dumps(fake_results(stored))), "now", "here", "python -m bench.memory", "x")
    rows = [line for line in text.splitlines() if "recompute off" in line]
    if not stored:
        assert rows == []
        return
    assert len(rows) == 2
    assert "1.25 (125 MiB; tensors 1.40, 70 MiB)" in rows[0]
    assert "1.06 (median of 2 interleaved rounds, 1.05–1.07; ratio of medians 1.06)" in rows[1]
    assert "QAT storing 1.060" in text
