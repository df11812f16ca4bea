"""NVIDIA's TF2 quantization toolkit API (``tensorflow_quantization``), on qdq_toolkit.

A script written against NVIDIA's documented API migrates by changing its import prefix::

    from tensorflow_quantization import quantize_model, QuantizationSpec          # before
    from qdq_toolkit.nvidia_compat import quantize_model, QuantizationSpec        # after

Modules and public names are NVIDIA's: :mod:`.quantize` (``quantize_model``, ``QuantizationSpec``,
``LayerConfig``), :mod:`.quantize_wrapper_base` (``BaseQuantizeWrapper``), :mod:`.quantize_wrappers`
(``WeightedBaseQuantizeWrapper``, ``NonWeightedBaseQuantizeWrapper``, NVIDIA's wrappers),
:mod:`.custom_qdq_case_base` (``CustomQDQInsertionCase``), :mod:`.custom_qdq_cases` (``ResNetV1QDQCase``...),
:mod:`.utils`, and the constants ``G_NUM_BITS``, ``G_NARROW_RANGE``, ``G_SYMMETRIC``. The behaviours NVIDIA
documents (a mutable ``layers`` list, wrappers found by class name, a warning for a layer name the model lacks)
live here only; qdq_toolkit's own API stays stricter. The README section "Coming from NVIDIA's TF2 toolkit" lists
what still differs (Keras 3 names, ``.keras`` files, ranges by EMA...).
"""

from __future__ import annotations

#: Bits of the quantized integers. Read by ``quantize_model`` at each call; qdq_toolkit supports 8 only.
G_NUM_BITS: int = 8
#: Narrow range [-127, 127] (TensorRT's only mode). Read by ``quantize_model``; must stay True.
G_NARROW_RANGE: bool = True
#: Symmetric ranges, zero point 0 (TensorRT's only mode). Read by ``quantize_model``; must stay True.
G_SYMMETRIC: bool = True

from qdq_toolkit import __version__  # noqa: E402
from qdq_toolkit.nvidia_compat import utils  # noqa: E402
from qdq_toolkit.nvidia_compat.custom_qdq_case_base import CustomQDQInsertionCase  # noqa: E402
from qdq_toolkit.nvidia_compat.quantize import LayerConfig, QuantizationSpec, quantize_model  # noqa: E402
from qdq_toolkit.nvidia_compat.quantize_wrapper_base import BaseQuantizeWrapper  # noqa: E402
from qdq_toolkit.nvidia_compat.quantize_wrappers import (  # noqa: E402
    NonWeightedBaseQuantizeWrapper,
    WeightedBaseQuantizeWrapper,
)
from qdq_toolkit.nvidia_compat.utils import (  # noqa: E402
    CreateAssetsFolders,
    convert_keras_model_to_onnx,
    convert_saved_model_to_onnx,
)

__all__ = [
    "G_NARROW_RANGE",
    "G_NUM_BITS",
    "G_SYMMETRIC",
    "BaseQuantizeWrapper",
    "CreateAssetsFolders",
    "CustomQDQInsertionCase",
    "LayerConfig",
    "NonWeightedBaseQuantizeWrapper",
    "QuantizationSpec",
    "WeightedBaseQuantizeWrapper",
    "__version__",
    "convert_keras_model_to_onnx",
    "convert_saved_model_to_onnx",
    "quantize_model",
    "utils",
]
