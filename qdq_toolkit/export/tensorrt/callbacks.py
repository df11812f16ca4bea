"""TensorRT callback objects: the logger every TensorRT object needs, and the build progress monitor.

The classes subclass TensorRT's interfaces, so they are defined only once tensorrt is imported (``trt`` is passed
in). The progress monitor is an adapter: it forwards TensorRT's build phases to the toolkit's one progress
mechanism, a :data:`qdq_toolkit._progress.ProgressCallback` (one line per build stage: parsing, each TensorRT build
phase, writing).
"""

from __future__ import annotations

import sys
from typing import Any

from qdq_toolkit._progress import ProgressCallback

__all__ = ["ProgressCallback", "make_logger", "make_progress_monitor"]


_SEVERITY_TAGS = {0: "internal error", 1: "error", 2: "warning", 3: "info", 4: "verbose"}


def make_logger(trt: Any, *, verbose: bool) -> Any:
    """An ILogger that prints to stderr (warnings and up, everything when verbose) and keeps the errors.

    ILogger.Severity values: INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4 (pyCore.cpp); a Python
    subclass must call ``trt.ILogger.__init__`` and implement ``log(severity, msg)``.
    """

    class _CollectingLogger(trt.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self._threshold = 4 if verbose else 2

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level <= 1:
                self.errors.append(str(msg))
            if level <= self._threshold:
                print(f"[TensorRT {_SEVERITY_TAGS.get(level, level)}] {msg}", file=sys.stderr, flush=True)

    return _CollectingLogger()


def make_progress_monitor(trt: Any, report: ProgressCallback) -> Any:
    """An IProgressMonitor (TensorRT >= 10.0) forwarding the top-level build phases to ``report``.

    ``step_complete`` must return True, or TensorRT cancels the build (pyCore.cpp treats an exception the same
    way), so an error raised by ``report`` is kept and re-raised after the build.
    """

    class _ProgressMonitor(trt.IProgressMonitor):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.callback_error: BaseException | None = None
            self._top_level: dict[str, int] = {}

        def _emit(self, message: str) -> None:
            if self.callback_error is not None:
                return
            try:
                report(message)
            except Exception as exc:  # never let it cancel the TensorRT build
                self.callback_error = exc

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self._top_level[phase_name] = int(num_steps)
                self._emit(f"TensorRT: {phase_name}")

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self._top_level.get(phase_name)
            if total is not None and total > 1:
                self._emit(f"TensorRT: {phase_name} {int(step) + 1}/{total}")
            return True

        def phase_finish(self, phase_name: str) -> None:
            self._top_level.pop(phase_name, None)

    return _ProgressMonitor()

