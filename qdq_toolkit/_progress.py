"""Progress reporting, one mechanism for the whole toolkit.

Two shapes, both on stderr so stdout stays for reports:

* **messages** — a ``progress(message)`` callback (:data:`ProgressCallback`) that long steps call once per stage
  (export, engine builds: TensorRT's build phases are forwarded to it); :func:`progress_printer` makes one;
* **bars** — :func:`progress_bar` for loops over batches (calibration, evaluation, latency runs); a no-op bar
  when disabled.

The command-line tools (``python -m qdq_toolkit.export`` / ``.evaluate`` and others) reach these through
:mod:`qdq_toolkit._cli`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ProgressCallback", "progress_bar", "progress_printer", "progress_wanted"]

ProgressCallback = Callable[[str], None]
"""Receives one human-readable line per stage of a long step."""


def progress_printer(quiet: bool, *, elapsed: bool = True) -> ProgressCallback:
    """A ``progress(message)`` callback printing each message to stderr (nothing when ``quiet``).

    With ``elapsed`` each line starts with the seconds since the printer was made: ``[  12.3s] message``.
    """
    start = time.perf_counter()

    def say(message: str) -> None:
        if quiet:
            return
        prefix = f"[{time.perf_counter() - start:6.1f}s] " if elapsed else ""
        print(f"{prefix}{message}", file=sys.stderr, flush=True)

    return say


def progress_wanted(quiet: bool = False) -> bool:
    """Whether a command-line run should draw progress bars: not ``quiet`` and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


def progress_bar(*, total: int | None, desc: str, unit: str, enabled: bool, leave: bool = False) -> Any:
    """A tqdm bar on stderr, gone when done unless ``leave``; a no-op bar (same methods) when not ``enabled``."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled,
        leave=leave,
        dynamic_ncols=True,
    )
