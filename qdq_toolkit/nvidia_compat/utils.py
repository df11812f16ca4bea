"""NVIDIA's ``tensorflow_quantization.utils``: asset folders, ONNX conversion, and model-walking helpers.

Names, arguments, return shapes and order are NVIDIA's (docs.nvidia.com, TensorFlow Quantization Toolkit,
``tensorflow_quantization.utils``); the work is done by qdq_toolkit (:mod:`qdq_toolkit.export`,
:mod:`qdq_toolkit.cases`). Differences, on purpose:

* nothing on disk is deleted or overwritten unless asked (``force=True``): NVIDIA's folder helpers delete and
  re-create an experiment's folders, and its converters overwrite the ONNX file;
* the converters return qdq_toolkit's :class:`~qdq_toolkit.export.ExportResult` (NVIDIA: ``None``), which lists
  any TensorRT placement violation found in the exported graph;
* a layer name the model lacks is an error naming the closest names (NVIDIA: ``None``);
* ``KerasModelTraveller`` applies ``filter_by_class`` and starts a fresh list on each call.
"""

from __future__ import annotations

import difflib
import os
import shutil

import keras

from qdq_toolkit.cases import inbound_layers, iter_layers, outbound_layers

DEFAULT_OPSET = 13


# ------------------------------------------------------------------------------------------------- folders
def ensure_and_clean_dir(dir_path, do_clean_dir: bool = True, *, force: bool = False) -> None:
    """Create ``dir_path`` if it is missing; an existing one is emptied only with ``force=True``.

    NVIDIA's helper of this name deletes an existing directory whenever ``do_clean_dir`` is true (its default). Here
    an existing, non-empty directory with ``do_clean_dir=True`` raises unless ``force=True`` says to delete its
    contents; ``do_clean_dir=False`` keeps it as it is.

    Raises:
        FileExistsError: ``dir_path`` holds files, ``do_clean_dir`` is true and ``force`` is false.
        NotADirectoryError: ``dir_path`` exists and is a file.
    """
    path = os.fspath(dir_path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path} exists and is not a directory; choose another folder name.")
    if not os.path.exists(path):
        os.makedirs(path)
        return
    if not do_clean_dir or not os.listdir(path):
        return
    if not force:
        raise FileExistsError(
            f"{path} already exists and holds {len(os.listdir(path))} entries. qdq_toolkit deletes nothing unless "
            "asked: pass force=True to delete its contents, do_clean_dir=False to keep them, or choose another folder."
        )
    shutil.rmtree(path)
    os.makedirs(path)


class Folder:
    """The folders and file paths of one experiment: ``fp32/`` and ``int8/``, each with a SavedModel path and an
    ONNX path (NVIDIA's attribute names), plus a ``.keras`` path each (Keras 3 saves models as ``.keras`` files).

    Existing folders are kept with what they hold; ``force=True`` deletes and re-creates them (NVIDIA's behaviour).
    """

    def __init__(self, folder_name, *, force: bool = False) -> None:
        self.base = os.fspath(folder_name)
        ensure_and_clean_dir(self.base, do_clean_dir=force, force=force)
        self.fp32 = os.path.join(self.base, "fp32")
        ensure_and_clean_dir(self.fp32, do_clean_dir=force, force=force)
        self.fp32_saved_model = os.path.join(self.fp32, "saved_model")
        self.fp32_onnx_model = os.path.join(self.fp32, "original.onnx")
        self.fp32_keras_model = os.path.join(self.fp32, "original.keras")
        self.int8 = os.path.join(self.base, "int8")
        ensure_and_clean_dir(self.int8, do_clean_dir=force, force=force)
        self.int8_saved_model = os.path.join(self.int8, "saved_model")
        self.int8_onnx_model = os.path.join(self.int8, "quantized.onnx")
        self.int8_keras_model = os.path.join(self.int8, "quantized.keras")


class CreateAssetsFolders:
    """A base directory holding one :class:`Folder` per experiment: ``assets.add_folder("example")`` then
    ``assets.example.int8_onnx_model``.

    Args:
        base_experiment_directory: created if missing (with its parents); never emptied.
    """

    def __init__(self, base_experiment_directory) -> None:
        self.base = os.fspath(base_experiment_directory)
        ensure_and_clean_dir(self.base, do_clean_dir=False)

    def add_folder(self, folder_name: str, *, force: bool = False) -> None:
        """Create the experiment folder ``<base>/<folder_name>`` and make it the attribute ``folder_name``.

        An existing experiment folder is kept with its files; ``force=True`` deletes and re-creates it, as NVIDIA's
        toolkit always did.
        """
        if not isinstance(folder_name, str) or not folder_name.isidentifier():
            raise ValueError(
                f"add_folder: folder_name must be a Python identifier such as 'experiment_1' (it becomes an attribute, "
                f"assets.<folder_name>), got {folder_name!r}."
            )
        if folder_name in ("base", "add_folder") or folder_name.startswith("__"):
            raise ValueError(f"add_folder: '{folder_name}' is a name CreateAssetsFolders uses itself; choose another one.")
        setattr(self, folder_name, Folder(os.path.join(self.base, folder_name), force=force))


# ----------------------------------------------------------------------------------------------- conversion
def convert_saved_model_to_onnx(saved_model_dir, onnx_model_path, opset: int = DEFAULT_OPSET, *, force: bool = False):
    """Convert a SavedModel directory (``model.export(dir)`` in Keras 3) to QDQ ONNX for TensorRT.

    Weight Q/DQ are kept (tf2onnx's folding passes disabled), as in NVIDIA's helper. Returns the
    :class:`~qdq_toolkit.export.ExportResult`; an existing ONNX file is replaced only with ``force=True``.
    """
    from qdq_toolkit.export import saved_model_to_onnx

    return saved_model_to_onnx(saved_model_dir, onnx_model_path, opset=opset, force=force)


def convert_keras_model_to_onnx(keras_model, onnx_model_path, opset: int = DEFAULT_OPSET, *, force: bool = False):
    """Convert an in-memory Keras model to QDQ ONNX for TensorRT (see :func:`convert_saved_model_to_onnx`)."""
    from qdq_toolkit.export import keras_to_onnx

    return keras_to_onnx(keras_model, onnx_model_path, opset=opset, force=force)


# ---------------------------------------------------------------------------------------------- model walking
def _leaf_layers(model: keras.Model):
    """Every layer of ``model`` in ``model.layers`` order, nested models replaced by their own layers, in place."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _class_filter(filter_by_class):
    if filter_by_class is None:
        return None
    items = filter_by_class if isinstance(filter_by_class, (list, tuple, set)) else [filter_by_class]
    wanted = set()
    for item in items:
        if isinstance(item, type):
            wanted.add(item)
        elif isinstance(item, str):
            wanted.add(item)
        else:
            raise TypeError(f"filter_by_class takes layer classes or class names, got {item!r}.")
    return wanted


class KerasModelTraveller:
    """Lists the layers of a model, nested Functional/Sequential models walked into (NVIDIA's helper).

    Args:
        print_layer_config: :meth:`get_layer_information` also prints each layer's ``get_config()``.
    """

    def __init__(self, print_layer_config: bool = False) -> None:
        self._print_layer_config = print_layer_config

    def _layers(self, keras_model: keras.Model, filter_by_class) -> list[keras.layers.Layer]:
        if not isinstance(keras_model, keras.Model):
            raise TypeError(f"KerasModelTraveller expects a keras.Model, got {type(keras_model).__name__}.")
        wanted = _class_filter(filter_by_class)
        return [
            layer
            for layer in _leaf_layers(keras_model)
            if wanted is None or type(layer) in wanted or type(layer).__name__ in wanted
        ]

    def get_layer_names(self, keras_model: keras.Model, filter_by_class=None) -> list[str]:
        """Names of every layer (input layers included), in ``model.layers`` order, nested models expanded in place.

        ``filter_by_class``: a layer class, a class name, or a list of them; ``None`` keeps every layer.
        """
        return [layer.name for layer in self._layers(keras_model, filter_by_class)]

    def get_layer_information(self, keras_model: keras.Model, filter_by_class=None) -> None:
        """Print each layer's name and class (and its config with ``print_layer_config=True``)."""
        for layer in self._layers(keras_model, filter_by_class):
            print(f"layer name:{layer.name}, layer class:{type(layer)}")
            if self._print_layer_config:
                print(layer.get_config())
            print("-----------------")


def layer_info(layer: keras.layers.Layer) -> dict:
    """``{'class': class name, 'module': class module, 'name': layer name, 'layer': the layer}``."""
    return {"class": type(layer).__name__, "module": type(layer).__module__, "name": layer.name, "layer": layer}


def previous_layers_info(layer: keras.layers.Layer) -> list[dict]:
    """:func:`layer_info` of the layers feeding ``layer``, in input order (a model input: its ``InputLayer``)."""
    return [layer_info(producer) for producer in inbound_layers(layer) if producer is not None]


def _named_layer(model: keras.Model, current_layer_name: str, caller: str) -> keras.layers.Layer:
    if not isinstance(model, keras.Model):
        raise TypeError(f"{caller} expects a Functional or Sequential keras.Model, got {type(model).__name__}.")
    if not isinstance(current_layer_name, str):
        raise TypeError(f"{caller}: current_layer_name must be a layer name (str), got {current_layer_name!r}.")
    iter_layers(model)  # a subclassed or unbuilt model raises ModelStructureError, saying what to do
    for layer in model.layers:
        if layer.name == current_layer_name:
            return layer
    names = [layer.name for layer in model.layers]
    close = difflib.get_close_matches(current_layer_name, names, n=5, cutoff=0.5)
    raise ValueError(
        f"{caller}: model '{model.name}' has no layer named '{current_layer_name}' among its top-level layers. "
        f"Closest names: {', '.join(close) if close else '(no similar names)'}."
    )


def find_my_predecessors(model: keras.Model, current_layer_name: str) -> list[dict]:
    """The layers feeding the top-level layer ``current_layer_name``, in input order, as :func:`layer_info` dicts."""
    return previous_layers_info(_named_layer(model, current_layer_name, "find_my_predecessors"))


def find_my_successors(model: keras.Model, current_layer_name: str) -> list[dict]:
    """The top-level layers reading the output of ``current_layer_name``, in ``model.layers`` order, as
    :func:`layer_info` dicts."""
    layer = _named_layer(model, current_layer_name, "find_my_successors")
    consumers = {id(consumer) for consumer in outbound_layers(layer)}
    return [layer_info(candidate) for candidate in model.layers if id(candidate) in consumers]


# NVIDIA's private names for the two helpers above, used by case code written after NVIDIA's own cases.
_get_layer_info = layer_info
_get_previous_layers_class_and_module_and_name = previous_layers_info
