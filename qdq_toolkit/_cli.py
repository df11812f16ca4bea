"""Pieces shared by the command-line tools (``python -m qdq_toolkit.export``, ``.evaluate``, and new ones).

A new tool imports what it needs from here so that every CLI behaves the same:

* **exit codes** — :data:`EXIT_OK` (0), :data:`EXIT_ERROR` (1: a user error, printed as one ``error:`` line),
  :data:`EXIT_USAGE` (2: bad flags; argparse's own code), :data:`EXIT_INTERRUPTED` (130: Ctrl-C, 128 + SIGINT).
  Codes 3 and up mean something particular to one tool; they are declared here too so no two meanings of one
  tool collide: :data:`EXIT_VIOLATIONS` / :data:`EXIT_NO_TENSORRT` (export), :data:`EXIT_NOTHING_EVALUATED`
  (evaluate). Each tool documents its codes in its ``--help`` epilog.
* **errors** — raise :class:`CliError` for a user error; the tool's ``main`` runs its body through
  :func:`run_cli`, which prints ``error: <message>`` and returns :data:`EXIT_ERROR` (Ctrl-C: one line and
  :data:`EXIT_INTERRUPTED`).
* **flags** — argparse types :func:`positive_int`, :func:`non_negative_int`, :func:`batch_sizes`, and
  :func:`add_batch_sizes_argument` for the one batch-size flag (``--batch-sizes``, alias ``--batch``).
* **progress** — :func:`progress_printer` (``[elapsed] message`` lines on stderr), :func:`progress_bar` and
  :func:`progress_wanted`, from :mod:`qdq_toolkit._progress`.
* **output files** — :func:`check_output_path` before any work (refuses an existing file without ``--force``),
  then :func:`write_atomically`, which creates missing folders; both from :mod:`qdq_toolkit._files`.
* **quiet native logs** — :func:`native_stderr_silenced` hides TensorFlow's C++ start-up lines.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence

from qdq_toolkit._files import check_output_path, write_atomically
from qdq_toolkit._progress import ProgressCallback, progress_bar, progress_printer, progress_wanted
from qdq_toolkit._validation import check_count

__all__ = [
    "EXIT_BUDGET_NOT_MET",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOTHING_EVALUATED",
    "EXIT_NO_TENSORRT",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_VIOLATIONS",
    "CliError",
    "ProgressCallback",
    "add_batch_sizes_argument",
    "batch_sizes",
    "check_output_path",
    "native_stderr_silenced",
    "non_negative_int",
    "positive_int",
    "progress_bar",
    "progress_printer",
    "progress_wanted",
    "run_cli",
    "write_atomically",
]

EXIT_OK = 0
"""Success."""
EXIT_ERROR = 1
"""A user error (bad path, corrupt input, an output that exists without --force), printed as one ``error:`` line."""
EXIT_USAGE = 2
"""Bad command-line usage (argparse exits with 2 too)."""
EXIT_VIOLATIONS = 3
"""export: ``--check`` found TensorRT QDQ placement violations."""
EXIT_NOTHING_EVALUATED = 3
"""evaluate: no model could be evaluated here (every model was a skipped TensorRT engine)."""
EXIT_BUDGET_NOT_MET = 3
"""sensitivity: no set of layers tried meets ``--max-accuracy-drop`` (the best set found is still written)."""
EXIT_NO_TENSORRT = 4
"""export: ``--engine`` asked for, but TensorRT or a GPU is missing."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C): 128 + SIGINT, as shells report it."""


class CliError(Exception):
    """A user error, reported as one line on stderr with a non-zero exit code."""


def run_cli(body: Callable[[], int]) -> int:
    """Run a tool's ``body`` and return its exit code; a :class:`CliError` becomes one ``error:`` line and
    :data:`EXIT_ERROR`, Ctrl-C one line and :data:`EXIT_INTERRUPTED` (outputs are written atomically, so none is
    left half-written)."""
    try:
        return body()
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted: no partial output was left behind", file=sys.stderr)
        return EXIT_INTERRUPTED


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    try:
        return int(check_count("value", value, minimum=minimum))  # the library's own rule
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer(text, 0)


def batch_sizes(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive batch sizes such as ``1,8,32``; repeats dropped, order kept."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give comma-separated batch sizes, e.g. 1,8,32")
    sizes = []
    for part in parts:
        try:
            size = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not an integer; give e.g. 1,8,32") from None
        if size < 1:
            raise argparse.ArgumentTypeError(f"batch size {size} must be at least 1")
        sizes.append(size)
    return tuple(dict.fromkeys(sizes))


def add_batch_sizes_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: Sequence[int], help: str  # noqa: A002
) -> argparse.Action:
    """Add the batch-size flag every tool uses: ``--batch-sizes B1,B2,...`` (alias ``--batch``), into
    ``args.batch_sizes`` as a tuple of positive ints."""
    return parser.add_argument(
        "--batch-sizes",
        "--batch",
        dest="batch_sizes",
        type=batch_sizes,
        default=tuple(default),
        metavar="B1,B2,...",
        help=help,
    )


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
