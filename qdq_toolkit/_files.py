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


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest ancestor that does (``.`` for a relative path)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_path(path: str | os.PathLike, force: bool) -> Path:
    """The output path, after refusing an existing file (without ``force``), a directory, or a location this process
    may not write in.

    Missing parent directories are fine: :func:`make_parent_dirs` (called by :func:`write_atomically`) creates them
    when the file is written, as tf2onnx does for its ``--output``. This check creates nothing, so a run that fails
    before writing leaves no empty directory behind.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory; give a file path such as {target / 'model.onnx'}")
    if target.exists() and not force:
        raise FileExistsError(exists_message(target))
    existing = _nearest_existing(target.parent)
    if not existing.is_dir():
        raise NotADirectoryError(
            f"cannot write {target}: {existing} is a file, not a directory; choose another output path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot write {target}: directory {existing} is not writable; choose another output path"
        )
    return target


def make_parent_dirs(path: str | os.PathLike) -> Path:
    """Create the missing parent directories of the output ``path`` (nothing when they exist); returns the parent.

    Raises:
        NotADirectoryError: a component of the parent is a file.
        PermissionError: a parent cannot be created there.
    """
    target = Path(path).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a component is a file
        raise NotADirectoryError(
            f"cannot write {target}: {_nearest_existing(target.parent)} is a file, not a directory; "
            "choose another output path"
        ) from None
    except OSError as exc:
        raise type(exc)(
            exc.errno, f"cannot write {target}: cannot create directory {target.parent} ({exc.strerror}); "
            "choose another output path"
        ) from None
    return target.parent


def write_atomically(path: str | os.PathLike, data: bytes | bytearray | memoryview | str, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then move it into place.

    Missing parent directories are created. Without ``force`` the move is a hard link, which fails if ``path``
    appeared meanwhile, so an existing file is never replaced (on file systems without hard links: check, then
    rename).

    Raises:
        FileExistsError: ``path`` exists and ``force`` is false.
        IsADirectoryError: ``path`` is a directory.
        NotADirectoryError: a component of the parent path is a file.
        OSError: the file cannot be written (e.g. ``PermissionError``, a full disk); nothing is left behind.
    """
    target = check_output_path(path, force)
    make_parent_dirs(target)
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
