"""quantize_model + fit under tf.distribute.MirroredStrategy on 2 logical CPU devices.

Ranges must be identical on every replica, and equal to what one device computes on the same data: each replica
measures its share of the batch and the replicas agree on the max of the global batch.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "mirrored_fit.py"


def run(method: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(SCRIPT.parents[2])}
    result = subprocess.run([sys.executable, str(SCRIPT), method], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["max", "ema"])
def test_ranges_are_identical_across_replicas_and_match_one_device(method):
    out = run(method)
    assert out["replicas"] == 2
    assert set(out["per_replica"]) == set(out["single"]) and len(out["single"]) == 4
    for name, values in out["per_replica"].items():
        assert values[0] == values[1], f"{name}: replicas disagree {values}"
        assert values[0] == pytest.approx(out["single"][name], rel=1e-5), name
    if method == "max":
        # the first layer sees the raw data: its range is the max over every batch, exactly
        assert out["mirrored"]["quant_conv1/input"] == pytest.approx(out["first_layer_expected"], rel=1e-7)
