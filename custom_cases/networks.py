"""Custom QDQ insertion cases: one per pattern rule, and one per model family (NVIDIA's public names).

A case is a list of rules (:mod:`custom_cases.rules`); its spec is their specs merged in order. Pass instances to
``quantize_model(model, custom_qdq_cases=[ResNetV1QDQCase()])``; several cases compose (a later case's entry
for a layer replaces an earlier one's, and the user's spec is applied above all of them).
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from custom_cases.rules import (
    batchnorm_qdq_spec,
    maxpool_qdq_spec,
    residual_qdq_spec,
    squeeze_excite_qdq_spec,
)
from qdq_toolkit.cases import CustomQDQInsertionCase
from qdq_toolkit.spec import QuantizationSpec

#: A pattern rule: ``rule(keras_model, user_spec) -> QuantizationSpec``.
Rule = Callable[[keras.Model, QuantizationSpec], QuantizationSpec]


class RuleCase(CustomQDQInsertionCase):
    """A case made of pattern rules; subclasses list them in ``rules`` (applied in order)."""

    rules: tuple[Rule, ...] = ()

    def case(self, keras_model: keras.Model, qspec: QuantizationSpec) -> QuantizationSpec:
        if not isinstance(keras_model, keras.Model):
            raise TypeError(f"{type(self).__name__}.case expects a keras.Model, got {type(keras_model).__name__}.")
        if qspec is not None and not isinstance(qspec, QuantizationSpec):
            raise TypeError(f"{type(self).__name__}.case expects a QuantizationSpec or None, got {type(qspec).__name__}.")
        entries = []
        for rule in self.rules:
            entries.extend(rule(keras_model, qspec).entries)
        return QuantizationSpec(entries)

    def info(self) -> str:
        names = ", ".join(rule.__name__ for rule in self.rules)
        return f"{super().info()} Rules: {names}."


# --------------------------------------------------------------------------------------- one case per rule
class ResidualConnectionQDQCase(RuleCase):
    """Residual Adds: QDQ on every input except the convolution branch TensorRT fuses the Add into."""

    rules = (residual_qdq_spec,)


class BNQDQCase(RuleCase):
    """BatchNormalization not folded into a convolution: QDQ on its input so it runs in INT8."""

    rules = (batchnorm_qdq_spec,)


class MaxPoolQDQCase(RuleCase):
    """MaxPooling: QDQ on its input, so the tensors it meets in an Add or Concatenate are all int8."""

    rules = (maxpool_qdq_spec,)


class SqueezeExciteQDQCase(RuleCase):
    """Squeeze-excite Multiply: QDQ on the features and on the gate, so the product runs in INT8."""

    rules = (squeeze_excite_qdq_spec,)


# ----------------------------------------------------------------------------------- one case per family
class ResNetV1QDQCase(RuleCase):
    """ResNet v1: residual Adds quantized on the shortcut, never on the convolution branch TensorRT fuses."""

    rules = (residual_qdq_spec,)


class ResNetV2QDQCase(RuleCase):
    """ResNet v2: residual Adds, pre-activation BatchNorms not after a convolution, and MaxPooling inputs."""

    rules = (residual_qdq_spec, batchnorm_qdq_spec, maxpool_qdq_spec)


class EfficientNetQDQCase(RuleCase):
    """EfficientNet: residual Adds and both inputs of each squeeze-excite Multiply."""

    rules = (residual_qdq_spec, squeeze_excite_qdq_spec)


class MobileNetQDQCase(RuleCase):
    """MobileNet v2: residual Adds quantized on the shortcut, never on the projection convolution."""

    rules = (residual_qdq_spec,)


class InceptionQDQCase(RuleCase):
    """Inception: MaxPooling inputs, so the Concatenate of pooled and convolution branches is fused in INT8."""

    rules = (maxpool_qdq_spec,)
