"""What every export step shares: the error type and the progress callback."""

from __future__ import annotations

from collections.abc import Callable

#: A progress callback: called with one human-readable line per step.
Progress = Callable[[str], None]


class ExportError(RuntimeError):
    """The conversion failed or produced a graph that is not valid; the message says what and how to fix it."""


def say(progress: Progress | None, message: str) -> None:
    """Report ``message`` to ``progress`` when there is one."""
    if progress is not None:
        progress(message)
