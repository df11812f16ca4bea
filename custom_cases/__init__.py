"""Pattern rules for ``quantize_model``: where TensorRT needs QDQ beyond the per-layer defaults.

Model-family cases (NVIDIA's names)::

    from custom_cases import ResNetV1QDQCase
    qat_model = quantize_model(model, custom_qdq_cases=[ResNetV1QDQCase()])

* :class:`ResNetV1QDQCase`, :class:`MobileNetQDQCase`: residual Adds;
* :class:`ResNetV2QDQCase`: residual Adds, BatchNorms that do not follow a convolution, MaxPooling;
* :class:`EfficientNetQDQCase`: residual Adds, squeeze-excite Multiplies;
* :class:`InceptionQDQCase`: MaxPooling.

The rules behind them (:mod:`custom_cases.rules`) are plain functions returning a ``QuantizationSpec``; each has a
one-rule case too, and they are the building blocks for your own cases (see docs/custom_cases.md).
"""

from custom_cases.networks import (
    BNQDQCase,
    EfficientNetQDQCase,
    InceptionQDQCase,
    MaxPoolQDQCase,
    MobileNetQDQCase,
    ResidualConnectionQDQCase,
    ResNetV1QDQCase,
    ResNetV2QDQCase,
    RuleCase,
    SqueezeExciteQDQCase,
)
from custom_cases.rules import (
    batchnorm_qdq_spec,
    depth_from_inputs,
    follows_convolution,
    fused_convolution,
    is_squeeze_excite,
    maxpool_qdq_spec,
    residual_input_indices,
    residual_qdq_spec,
    squeeze_excite_qdq_spec,
    user_decides,
)

__all__ = [
    "BNQDQCase",
    "EfficientNetQDQCase",
    "InceptionQDQCase",
    "MaxPoolQDQCase",
    "MobileNetQDQCase",
    "ResNetV1QDQCase",
    "ResNetV2QDQCase",
    "ResidualConnectionQDQCase",
    "RuleCase",
    "SqueezeExciteQDQCase",
    "batchnorm_qdq_spec",
    "depth_from_inputs",
    "follows_convolution",
    "fused_convolution",
    "is_squeeze_excite",
    "maxpool_qdq_spec",
    "residual_input_indices",
    "residual_qdq_spec",
    "squeeze_excite_qdq_spec",
    "user_decides",
]
