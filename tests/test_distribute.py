"""quantize_model + fit under tf.distribute.MirroredStrategy on 2 logical CPU devices, and QAT with
MultiWorkerMirroredStrategy in 2 worker processes on 127.0.0.1 (a custom loop: Keras 3's fit does not run there).

Ranges must be identical on every replica, and equal to what one device computes on the same data: each replica
measures its share of the batch and the replicas agree on the max of the global batch.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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


MULTIWORKER = Path(__file__).parent / "scripts" / "multiworker_fit.py"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(outdir: Path, method: str, timeout: float = 240) -> list[dict]:
    """Start 2 worker processes on 127.0.0.1, wait for both (bounded), kill both on any failure."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(MULTIWORKER.parents[2])}
    env.pop("TF_CONFIG", None)
    ports = ",".join(map(str, free_ports(2)))
    logs = [outdir / f"worker{i}.log" for i in range(2)]
    procs = []
    try:
        for i in range(2):
            with open(logs[i], "w") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, str(MULTIWORKER), str(i), ports, str(outdir), method],
                    stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                ))
        deadline = time.monotonic() + timeout
        outputs = []
        for i, proc in enumerate(procs):
            try:
                stdout, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {i} did not finish in {timeout} s:\n{logs[i].read_text()[-3000:]}")
            assert proc.returncode == 0, f"worker {i} failed:\n{logs[i].read_text()[-3000:]}"
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("method", ["max"])
def test_two_workers_hold_identical_ranges_equal_to_one_process_and_only_the_chief_exports(tmp_path, method):
    chief, other = run_workers(tmp_path, method)
    assert (chief["index"], chief["chief"], other["chief"]) == (0, True, False)
    assert chief["replicas"] == other["replicas"] == 2
    assert len(chief["distributed"]) == 4
    # every worker holds exactly the same ranges and observed-step counts...
    assert chief["distributed"] == other["distributed"]
    # ...equal to one process trained on the same global batches (8 steps, each range observed every step)
    for name, (amax, steps) in chief["distributed"].items():
        alone_amax, alone_steps = chief["alone"][name]
        assert steps == alone_steps == 8.0, name
        assert amax == pytest.approx(alone_amax, rel=1e-5), name
    assert chief["distributed"]["quant_conv1/input"][0] == pytest.approx(chief["first_layer_expected"], rel=1e-7)
    assert chief["max_weight_rel_diff"] < 1e-5
    # export from the chief only: its ONNX scales are those of the single-process model
    assert (tmp_path / "qat.onnx").exists()
    assert "scales" not in other
    assert chief["scales"].keys() == chief["alone_scales"].keys() and len(chief["scales"]) >= 4
    for node, scales in chief["scales"].items():
        np.testing.assert_allclose(scales, chief["alone_scales"][node], rtol=1e-5, err_msg=node)
