"""Small pieces shared by the command-line tools (``python -m qdq_toolkit.export`` / ``.evaluate``)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator


class CliError(Exception):
    """A user error, reported as one line on stderr with a non-zero exit code."""


def progress_printer(quiet: bool) -> Callable[[str], None]:
    """A ``progress(message)`` callback printing ``[elapsed] message`` to stderr (nothing when ``quiet``)."""
    start = time.perf_counter()

    def say(message: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


@contextlib.contextmanager
def native_stderr_silenced(
    enabled: bool = True, user_errors: tuple[type[BaseException], ...] = (CliError,)
) -> Iterator[None]:
    """Hide what native libraries write straight to file descriptor 2 while Python's ``sys.stderr`` still works.

    TensorFlow 2.19+ logs through absl before its log level is read (``TF_CPP_MIN_LOG_LEVEL`` cannot hide the
    oneDNN / CUDA-driver lines), which buries a CLI's one-line messages. Inside this context, fd 2 points to a
    temporary file and ``sys.stderr`` to a duplicate of the real stderr. If the body raises something other than a
    user error (``user_errors``, Ctrl-C, ``SystemExit``), the captured native output is printed so nothing needed
    for a bug report is lost.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    real_fd = os.dup(2)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        sys.stderr = os.fdopen(os.dup(real_fd), "w", buffering=1)
        try:
            yield
        except (KeyboardInterrupt, SystemExit, *user_errors):
            raise
        except BaseException:
            sink.seek(0)
            captured = sink.read().decode(errors="replace")
            if captured.strip():
                print(captured, file=sys.stderr, end="")
            raise
        finally:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = python_stderr
            os.dup2(real_fd, 2)
            os.close(real_fd)
