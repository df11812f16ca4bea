"""Progress bars of long evaluation and latency runs (tqdm on stderr)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar", "progress_wanted"]


def progress_wanted(quiet: bool = False) -> bool:
    """Whether a command-line run should draw progress bars: not ``quiet`` and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


def progress_bar(*, total: int | None, desc: str, unit: str, enabled: bool) -> Any:
    """A tqdm bar on stderr that disappears when done; a no-op bar (same methods) when not ``enabled``."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
    )
