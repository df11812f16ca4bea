"""The SavedModel writer: ``model.export`` into a directory, atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from qdq_toolkit._files import make_parent_dirs
from qdq_toolkit.export._common import Progress
from qdq_toolkit.export._common import say as _say


def export_saved_model(model, directory: str | os.PathLike, *, force: bool = False, progress: Progress | None = None) -> Path:
    """``model.export(directory)`` (a TensorFlow SavedModel with a ``serving_default`` signature), atomically.

    The SavedModel is written to a temporary directory beside ``directory`` and renamed into place. An existing
    ``directory`` is replaced only with ``force=True``; missing parent folders are created.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"export_saved_model expects a keras.Model, got {type(model).__name__}.")
    directory = Path(directory)
    if directory.exists() and not force:
        raise FileExistsError(f"'{directory}' already exists; pass force=True (--force) to replace it.")
    make_parent_dirs(directory)
    temp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        _say(progress, f"writing SavedModel {directory}")
        model.export(str(temp / "saved_model"), format="tf_saved_model", verbose=False)
        if directory.exists():  # force=True: swap in the new directory, then remove the old one
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old / "previous")
            os.replace(temp / "saved_model", directory)
            shutil.rmtree(old)
        else:
            os.replace(temp / "saved_model", directory)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return directory

