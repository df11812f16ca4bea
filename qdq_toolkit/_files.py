"""Writing user-visible files safely: atomically, and never over an existing file unless asked.

Used by every module that writes an output (ONNX files, engines, reports, benchmarks), so they all behave the same:
a reader never sees a half-written file, an interruption leaves no partial file behind, and an existing file is
replaced only with ``force`` (``--force`` on the command line).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def exists_message(target: Path) -> str:
    return f"{target} already exists; pass --force (force=True) to overwrite it, or choose another path"


def check_output_path(path: str | os.PathLike, force: bool) -> Path:
    """The output path, after refusing an existing file (without ``force``), a directory, a missing parent, or a
    parent this process may not write in."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory; give a file path such as {target / 'model.onnx'}")
    if target.exists() and not force:
        raise FileExistsError(exists_message(target))
    if not target.parent.is_dir():
        raise FileNotFoundError(f"directory {target.parent} does not exist; create it first or choose another path")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot write {target}: directory {target.parent} is not writable; choose another output path"
        )
    return target


def write_atomically(path: str | os.PathLike, data: bytes | bytearray | memoryview | str, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then move it into place.

    Without ``force`` the move is a hard link, which fails if ``path`` appeared meanwhile, so an existing file is
    never replaced (on file systems without hard links: check, then rename).

    Raises:
        FileExistsError: ``path`` exists and ``force`` is false.
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError: the parent directory does not exist.
        OSError: the file cannot be written (e.g. ``PermissionError``, a full disk); nothing is left behind.
    """
    target = check_output_path(path, force)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temporary = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    try:
        try:
            with open(temporary, "xb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:  # say which output failed, not the temporary file's name
            raise type(exc)(exc.errno, f"cannot write {target}: {exc.strerror}; choose another output path") from None
        if force:
            os.replace(temporary, target)
        else:
            try:
                os.link(temporary, target)
            except FileExistsError:
                raise FileExistsError(exists_message(target)) from None
            except OSError:
                if target.exists():
                    raise FileExistsError(exists_message(target)) from None
                os.replace(temporary, target)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return target
