"""NVIDIA's ``tensorflow_quantization.custom_qdq_cases``: its case classes and the helpers its walkthrough uses.

Each case class here is NVIDIA's name for a case of :mod:`custom_cases` (the same rules: residual Adds quantized on
the shortcut, BatchNorms that follow no convolution, MaxPooling, squeeze-excite Multiplies), speaking NVIDIA's case
API: ``case(keras_model, qspec)`` takes and returns a compat :class:`~qdq_toolkit.nvidia_compat.QuantizationSpec`,
whose ``layers`` a case of your own can extend, as NVIDIA's ``ResNetV1QDQCase`` does::

    special_qspec = QuantizationSpec()
    special_qspec.layers.extend(ResidualConnectionQDQCase().case(keras_model, qspec).layers)

The helpers ``is_parent_type``, ``is_parent_pattern`` and ``check_is_quantizable_by_layer_name`` keep NVIDIA's
names and arguments ("Add Custom QDQ Insertion Case", docs.nvidia.com).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

import custom_cases
from qdq_toolkit.nvidia_compat.custom_qdq_case_base import CustomQDQInsertionCase
from qdq_toolkit.nvidia_compat.quantize import QuantizationSpec, as_native_spec
from qdq_toolkit.nvidia_compat.utils import previous_layers_info


class _OnNativeCase(CustomQDQInsertionCase):
    """A case of :mod:`custom_cases`, taking and returning compat specs."""

    native: type[custom_cases.RuleCase]

    def case(self, keras_model: keras.Model, qspec: QuantizationSpec | None) -> QuantizationSpec:
        user_spec = None if qspec is None else as_native_spec(qspec, f"{type(self).__name__}.case: qspec")
        return QuantizationSpec.from_native(self.native().case(keras_model, user_spec))

    def info(self) -> str:
        return self.native().info()


def _on_native(native: type[custom_cases.RuleCase]) -> type[_OnNativeCase]:
    """NVIDIA's case class of the same name as ``native``, with its docstring."""
    return type(native.__name__, (_OnNativeCase,), {"native": native, "__doc__": native.__doc__, "__module__": __name__})


BNQDQCase = _on_native(custom_cases.BNQDQCase)
ResidualConnectionQDQCase = _on_native(custom_cases.ResidualConnectionQDQCase)
MaxPoolQDQCase = _on_native(custom_cases.MaxPoolQDQCase)
ResNetV1QDQCase = _on_native(custom_cases.ResNetV1QDQCase)
ResNetV2QDQCase = _on_native(custom_cases.ResNetV2QDQCase)
EfficientNetQDQCase = _on_native(custom_cases.EfficientNetQDQCase)
MobileNetQDQCase = _on_native(custom_cases.MobileNetQDQCase)
InceptionQDQCase = _on_native(custom_cases.InceptionQDQCase)


# ------------------------------------------------------------------------------------ helpers for case authors
def is_parent_type(parent_class: str, class_type: str = "Conv") -> bool:
    """Whether the class name ``parent_class`` contains ``class_type`` (``"Conv"`` matches Conv2D, DepthwiseConv2D...)."""
    return class_type in parent_class


def is_parent_pattern(parent_info: dict, pattern: Sequence[str] = ("BatchNorm", "Conv")) -> bool:
    """Whether a layer and its ancestors follow ``pattern``: ``parent_info`` (an entry of ``find_my_predecessors``)
    is of type ``pattern[0]``, its first input of ``pattern[1]``, and so on (matched by :func:`is_parent_type`)."""
    info = parent_info
    for position, class_type in enumerate(pattern):
        if position > 0:
            parents = previous_layers_info(info["layer"])
            if not parents:
                return False
            info = parents[0]
        if not is_parent_type(info["class"], class_type=class_type):
            return False
    return True


def check_is_quantizable_by_layer_name(qspec: QuantizationSpec | None, current_layer_name: str) -> bool:
    """True when the user's spec says nothing about the layer ``current_layer_name``, so a case may decide for it.

    ``qspec`` is the spec a case receives (compat or qdq_toolkit's); ``None`` leaves every layer to the case.
    """
    if qspec is None:
        return True
    configs = qspec.layers if isinstance(qspec, QuantizationSpec) else as_native_spec(qspec, "qspec")
    return all(config.name != current_layer_name for config in configs)

