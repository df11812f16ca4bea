"""NVIDIA's wrapper classes (``tensorflow_quantization.quantize_wrappers``), computed by qdq_toolkit's wrappers.

The three bases NVIDIA documents for adding a layer ("Add New Layer Support"):

* :class:`WeightedBaseQuantizeWrapper` -- layers with a kernel: QDQ on the input (per tensor) and on the kernel
  named by ``kernel_type`` (per output channel);
* :class:`NonWeightedBaseQuantizeWrapper` -- single-input layers without weights: QDQ on the input;
* :class:`NonWeightedBaseQuantizeWrapperForMultipleInputs` -- layers taking a list (Add, Concatenate...): QDQ on
  the inputs a spec's ``quantization_index`` selects, or all of them.

and NVIDIA's own wrappers, named by its convention ``<LayerClass>QuantizeWrapper``, to import and subclass.
``quantize_model`` itself wraps those layer classes with qdq_toolkit's native wrappers (the same QDQ and defaults),
so that saved models load in every qdq_toolkit tool; a wrapper you define with one of these names replaces the
native one for its class. A weighted wrapper of a layer class qdq_toolkit supports is computed by the native
wrapper of :mod:`qdq_toolkit.wrappers` (same QDQ, same numbers); for a layer class of your own, it calls your
layer's ``call`` with the quantized kernel in place of the attribute ``kernel_type``.
"""

from __future__ import annotations

import inspect
from types import MappingProxyType

import keras

from qdq_toolkit.nvidia_compat.quantize_wrapper_base import WRAPPER_SUFFIX, BaseQuantizeWrapper
from qdq_toolkit.wrappers import DEFAULT_REGISTRY

#: Output-channel axis NVIDIA's toolkit uses per ``kernel_type`` for layers qdq_toolkit has no wrapper for.
NVIDIA_CHANNEL_AXES = MappingProxyType({"kernel": -1, "depthwise_kernel": 2})


def _native_kernel(layer: keras.layers.Layer, kernel_type: str) -> tuple[str, int] | None:
    """``(attribute, axis)`` of the kernel the native wrapper of ``layer``'s class quantizes, when it has one kernel.

    Keras 3 renamed DepthwiseConv2D's ``depthwise_kernel`` to ``kernel``; NVIDIA's ``kernel_type`` names the Keras 2
    attribute, so a single-kernel native wrapper is taken whichever of the two names is given.
    """
    native = DEFAULT_REGISTRY.wrapper_for(type(layer))
    if native is None or len(native.kernel_axes) != 1:
        return None
    ((attribute, axis),) = native.kernel_axes.items()
    if kernel_type in (attribute, "depthwise_kernel"):
        return attribute, axis
    return None


class WeightedBaseQuantizeWrapper(BaseQuantizeWrapper):
    """Base for layers with a kernel: input QDQ per tensor, kernel QDQ per output channel.

    TensorRT rule: a convolution or GEMM runs in INT8 when both its data input and its weights come from
    DequantizeLinear; weights per output channel, the data input per tensor.

    Args:
        layer: the Keras layer to wrap.
        kernel_type: the attribute holding the kernel, ``"kernel"`` (Conv2D, Dense) or ``"depthwise_kernel"``
            (NVIDIA's name for DepthwiseConv2D's kernel, which Keras 3 calls ``kernel``).
        **kwargs: passed to :class:`BaseQuantizeWrapper`.
    """

    default_quantize_weight = True
    # Class level: "this wrapper has weights" (what quantize_model asks). Each instance names its own kernel.
    kernel_axes = MappingProxyType({"kernel": -1})

    def __init__(self, layer: keras.layers.Layer, kernel_type: str = "kernel", **kwargs):
        if not isinstance(kernel_type, str) or not kernel_type:
            raise TypeError(f"{type(self).__name__}: kernel_type must be an attribute name such as 'kernel', got {kernel_type!r}.")
        super().__init__(layer, **kwargs)
        self.kernel_type = kernel_type
        attribute, axis = _native_kernel(layer, kernel_type) or (kernel_type, NVIDIA_CHANNEL_AXES.get(kernel_type, -1))
        self.kernel_axes = MappingProxyType({attribute: axis})

    def build(self, input_shape=None):
        super().build(input_shape)
        (attribute,) = self.kernel_axes
        if not hasattr(self.layer, attribute):
            raise AttributeError(
                f"{type(self).__name__}: layer '{self.layer.name}' ({type(self.layer).__name__}) has no attribute "
                f"'{attribute}' after it was built. Pass the name of its kernel attribute as kernel_type."
            )
        overridden = type(self).quantized_call is not WeightedBaseQuantizeWrapper.quantized_call
        if not overridden and self._native() is None and isinstance(inspect.getattr_static(type(self.layer), attribute, None), property):
            raise TypeError(
                f"{type(self).__name__}: layer '{self.layer.name}' ({type(self.layer).__name__}) exposes '{attribute}' "
                "as a read-only property, so the quantized kernel cannot be put in its place. Override "
                "quantized_call(self, inputs, training=None, **kwargs) in the wrapper and compute the layer on "
                f"self.quantized_kernel('{attribute}', training)."
            )

    def _native(self):
        """The native wrapper class computing this layer with the same kernel, or None."""
        native = DEFAULT_REGISTRY.wrapper_for(type(self.layer))
        return native if native is not None and dict(native.kernel_axes) == dict(self.kernel_axes) else None

    def quantized_call(self, inputs, training=None, **kwargs):
        native = self._native()
        if native is not None:
            return native.quantized_call(self, inputs, training, **kwargs)  # the native computation, on this wrapper
        (attribute,) = self.kernel_axes
        return _call_with_kernel(self.layer, attribute, self.quantized_kernel(attribute, training), inputs, training, kwargs)


def _call_with_kernel(layer, attribute: str, kernel, inputs, training, kwargs):
    """``layer.call(inputs)`` with ``layer.<attribute>`` reading ``kernel`` (the attribute is restored after)."""
    parameters = inspect.signature(layer.call).parameters
    if "training" in parameters:
        kwargs = {**kwargs, "training": training}
    original = getattr(layer, attribute)
    setattr(layer, attribute, kernel)
    try:
        return layer.call(inputs, **kwargs)
    finally:
        setattr(layer, attribute, original)


class NonWeightedBaseQuantizeWrapper(BaseQuantizeWrapper):
    """Base for single-input layers without weights (pooling, BatchNormalization...): QDQ on the input."""


class NonWeightedBaseQuantizeWrapperForMultipleInputs(BaseQuantizeWrapper):
    """Base for layers taking a list of tensors (Add, Multiply, Concatenate): QDQ on the selected inputs."""

    multi_input = True


def _serializable(cls):
    return keras.saving.register_keras_serializable(package="qdq_toolkit.nvidia_compat")(cls)


# --------------------------------------------------------------------------------------- NVIDIA's own wrappers
@_serializable
class Conv2DQuantizeWrapper(WeightedBaseQuantizeWrapper):
    """Conv2D: input and kernel QDQ (computed by :class:`qdq_toolkit.wrappers.ConvQDQWrapper`)."""


@_serializable
class DenseQuantizeWrapper(WeightedBaseQuantizeWrapper):
    """Dense: input and kernel QDQ (computed by :class:`qdq_toolkit.wrappers.DenseQDQWrapper`)."""


@_serializable
class DepthwiseConv2DQuantizeWrapper(WeightedBaseQuantizeWrapper):
    """DepthwiseConv2D: input and depthwise kernel QDQ (computed by ``DepthwiseConvQDQWrapper``)."""

    def __init__(self, layer, **kwargs):
        super().__init__(layer, kernel_type="depthwise_kernel", **kwargs)


@_serializable
class AveragePooling2DQuantizeWrapper(NonWeightedBaseQuantizeWrapper):
    """AveragePooling2D: input QDQ, on by default (TensorRT has no INT8-in/FP32-out average pooling)."""


@_serializable
class GlobalAveragePooling2DQuantizeWrapper(NonWeightedBaseQuantizeWrapper):
    """GlobalAveragePooling2D: input QDQ, on by default, as AveragePooling2D."""


@_serializable
class MaxPooling2DQuantizeWrapper(NonWeightedBaseQuantizeWrapper):
    """MaxPooling2D: input QDQ, off by default (precision-neutral; ResNet v2 and Inception turn it on)."""

    default_quantize_input = False


@_serializable
class BatchNormalizationQuantizeWrapper(NonWeightedBaseQuantizeWrapper):
    """BatchNormalization: input QDQ, off by default (folded into the convolution before it; ResNet v2 turns on
    the ones that follow no convolution)."""

    default_quantize_input = False


@_serializable
class MultiplyQuantizeWrapper(NonWeightedBaseQuantizeWrapperForMultipleInputs):
    """Multiply: input QDQ, off by default (EfficientNet's squeeze-excite turns both inputs on)."""

    default_quantize_input = False


@_serializable
class ConcatenateQuantizeWrapper(NonWeightedBaseQuantizeWrapperForMultipleInputs):
    """Concatenate: input QDQ, off by default (TensorRT propagates the next layer's QDQ across it)."""

    default_quantize_input = False


@_serializable
class AddQuantizeWrapper(NonWeightedBaseQuantizeWrapperForMultipleInputs):
    """Add: input QDQ, off by default (the residual cases quantize the shortcut, not the convolution branch)."""

    default_quantize_input = False


NVIDIA_WRAPPERS: tuple[type[BaseQuantizeWrapper], ...] = (
    Conv2DQuantizeWrapper,
    DenseQuantizeWrapper,
    DepthwiseConv2DQuantizeWrapper,
    AveragePooling2DQuantizeWrapper,
    GlobalAveragePooling2DQuantizeWrapper,
    MaxPooling2DQuantizeWrapper,
    BatchNormalizationQuantizeWrapper,
    MultiplyQuantizeWrapper,
    ConcatenateQuantizeWrapper,
    AddQuantizeWrapper,
)

#: The layer classes whose inputs ``quantization_mode="full"`` leaves alone unless a spec or a case asks.
DISABLED_LAYER_QUANTIZATION_DEFAULT: tuple[str, ...] = tuple(
    wrapper.__name__[: -len(WRAPPER_SUFFIX)] for wrapper in NVIDIA_WRAPPERS if not wrapper.default_quantize_input
)
