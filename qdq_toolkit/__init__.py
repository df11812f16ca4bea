"""qdq_toolkit: quantization-aware training for TensorFlow 2 / Keras 3, exported as TensorRT-ready QDQ ONNX.

The public API, re-exported here::

    from qdq_toolkit import quantize_model, QuantizationSpec
    qat_model = quantize_model(model)          # QDQ on inputs and weights of convolutions, dense, average pooling
    qat_model.compile(...); qat_model.fit(...)  # fine-tune
"""

from qdq_toolkit.cases import CustomQDQInsertionCase, inbound_layers, iter_layers, match_chain, outbound_layers
from qdq_toolkit.quantize import QuantizationSpecError, plan_quantization, quantize_model, quantized_layers
from qdq_toolkit.quantizers import RangeTracking
from qdq_toolkit.spec import LayerSpec, QuantizationSpec
from qdq_toolkit.wrappers import BUILTIN_WRAPPERS, QDQWrapper, WrapperRegistry

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_WRAPPERS",
    "CustomQDQInsertionCase",
    "LayerSpec",
    "QDQWrapper",
    "QuantizationSpec",
    "QuantizationSpecError",
    "RangeTracking",
    "WrapperRegistry",
    "inbound_layers",
    "iter_layers",
    "match_chain",
    "outbound_layers",
    "plan_quantization",
    "quantize_model",
    "quantized_layers",
]
