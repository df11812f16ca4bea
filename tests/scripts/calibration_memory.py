"""Stream N and then 4N fresh batches through ``calibrate()`` and print the peak memory of each pass as JSON.

Run as a separate process so that its memory holds nothing but this measurement:

    python tests/scripts/calibration_memory.py [N] [method]

Each batch is a new 64x32x32x3 float32 array (768 KiB) made by a generator on demand, so 4N = 400 batches stream
300 MiB through the model while never more than one batch exists at a time -- unless ``calibrate`` keeps
something per batch. Two measurements per pass, both taken after a warm-up pass (tracing, kernel caches and the
collectors' fixed-size histograms are allocated once, before anything is measured):

* ``tracemalloc``: the peak of the bytes Python and NumPy hold during the pass, above what they held before it.
  Exact and deterministic: a batch or an activation array kept alive shows up in full, whatever the allocator
  does with freed memory.
* the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident size before
  the pass: it also sees memory TensorFlow allocates in C++, which tracemalloc cannot, but it moves with allocator
  pooling, so it is only a coarse cross-check.
"""

import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path

import keras
import numpy as np

from qdq_toolkit import quantize_model
from qdq_toolkit.calibration import calibrate

BATCH_SHAPE = (64, 32, 32, 3)
num_batches = int(sys.argv[1]) if len(sys.argv) > 1 else 100
method = sys.argv[2] if len(sys.argv) > 2 else "entropy"


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def batches(count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield rng.standard_normal(BATCH_SHAPE, dtype=np.float32)


keras.utils.set_random_seed(0)
inputs = keras.Input(BATCH_SHAPE[1:], name="image")
x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
x = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(x)
x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
qmodel = quantize_model(keras.Model(inputs, keras.layers.Dense(10, name="logits")(x)))

calibrate(qmodel, batches(max(num_batches // 4, 5), seed=0), method, progress=False)  # warm-up: nothing measured

passes = []
for count in (num_batches, 4 * num_batches):
    gc.collect()
    rss_reset = reset_peak_rss()
    rss_before = status_kib("VmRSS")
    tracemalloc.start()
    start = time.perf_counter()
    report = calibrate(qmodel, batches(count, seed=count), method, progress=False)
    seconds = time.perf_counter() - start
    traced_now, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    passes.append(
        {
            "batches": report.num_batches,
            "samples": report.num_samples,
            "streamed_bytes": report.num_batches * int(np.prod(BATCH_SHAPE)) * 4,
            "traced_peak_bytes": traced_peak,
            "traced_end_bytes": traced_now,
            "rss_peak_growth_bytes": (status_kib("VmHWM") - rss_before) * 1024 if rss_reset else None,
            "seconds": seconds,
        }
    )

print(json.dumps({"method": method, "batch_bytes": int(np.prod(BATCH_SHAPE)) * 4, "passes": passes}))
