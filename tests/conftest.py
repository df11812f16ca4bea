"""Shared test configuration.

Tests marked ``gpu`` need an NVIDIA GPU and TensorRT. They are skipped (never faked) when either is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# Keep TensorFlow quiet and deterministic enough for CPU tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _gpu_unavailable_reason() -> str | None:
    """Return why GPU tests cannot run here, or None when an NVIDIA GPU and TensorRT are both present."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA driver (nvidia-smi not found)"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    if out.returncode != 0 or "GPU" not in out.stdout:
        return "nvidia-smi lists no GPU"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install 'qdq-toolkit[trt]')"
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _gpu_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"GPU test skipped: {reason}")
    for item in gpu_items:
        item.add_marker(skip)
