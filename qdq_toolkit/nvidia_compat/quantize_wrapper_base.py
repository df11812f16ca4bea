"""``BaseQuantizeWrapper``: NVIDIA's wrapper base class, built on qdq_toolkit's :class:`~qdq_toolkit.QDQWrapper`.

NVIDIA's TF2 toolkit finds the wrapper of a layer by name: a Keras layer of class ``X`` gets the subclass of
``BaseQuantizeWrapper`` named ``XQuantizeWrapper`` ("Add New Layer Support", docs.nvidia.com, TensorFlow
Quantization Toolkit). Here the same convention holds, without a registry: a wrapper's ``layer_classes`` is read
from its class name when asked (:func:`layer_classes_named_by`), and :func:`nvidia_style_wrappers` walks Python's
own class hierarchy (``__subclasses__()``) when ``quantize_model`` runs. Defining the class is all it takes,
as in NVIDIA's toolkit, and nothing global is kept.

Everything else is qdq_toolkit's wrapper: per-tensor QDQ on the inputs, per-channel QDQ on the weights, ranges that
follow the data during training (exponential moving average by default, see :class:`qdq_toolkit.RangeTracking`),
``.keras`` saving.
"""

from __future__ import annotations

import keras

from qdq_toolkit.wrappers import QDQWrapper

#: NVIDIA's naming convention: the wrapper of layer class ``X`` is named ``X`` + this suffix.
WRAPPER_SUFFIX = "QuantizeWrapper"


def all_subclasses(cls: type) -> list[type]:
    """Every subclass of ``cls``, at any depth, each once, in definition order (Python's own hierarchy)."""
    found: dict[type, None] = {}
    pending = list(reversed(cls.__subclasses__()))
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found[current] = None
        pending.extend(reversed(current.__subclasses__()))
    return list(found)


def layer_classes_named_by(wrapper: type) -> tuple[type, ...]:
    """The Keras layer classes a wrapper's name stands for: ``Conv2DQuantizeWrapper`` -> ``(Conv2D,)``.

    A name is matched against ``keras.layers`` (aliases included: ``GlobalMaxPool2D`` is the class
    ``GlobalMaxPooling2D``) and against every subclass of ``keras.layers.Layer`` defined so far, so the layers of
    your own project are found too. A name without the suffix, or one no layer class has, stands for nothing.
    """
    name = wrapper.__name__
    if not name.endswith(WRAPPER_SUFFIX) or name == WRAPPER_SUFFIX:
        return ()
    prefix = name[: -len(WRAPPER_SUFFIX)]
    found: list[type] = []
    alias = getattr(keras.layers, prefix, None)
    if isinstance(alias, type) and issubclass(alias, keras.layers.Layer):
        found.append(alias)
    for layer_class in all_subclasses(keras.layers.Layer):
        if layer_class.__name__ == prefix and layer_class not in found and not issubclass(layer_class, QDQWrapper):
            found.append(layer_class)
    return tuple(found)


class _LayerClassesFromName:
    """``layer_classes`` of a compat wrapper class, read from its name each time it is asked for."""

    def __get__(self, instance, owner) -> tuple[type, ...]:
        return layer_classes_named_by(owner)


class BaseQuantizeWrapper(QDQWrapper):
    """Base of NVIDIA-style wrappers: name a subclass ``<LayerClass>QuantizeWrapper`` and it is used for that class.

    Subclass :class:`~qdq_toolkit.nvidia_compat.WeightedBaseQuantizeWrapper` for layers with a kernel,
    :class:`~qdq_toolkit.nvidia_compat.NonWeightedBaseQuantizeWrapper` for single-input layers without weights,
    or ``NonWeightedBaseQuantizeWrapperForMultipleInputs`` for layers that take a list of tensors. Overriding
    ``build(input_shape)`` and ``call(inputs, training=None)`` and calling ``super()`` works as in NVIDIA's toolkit.

    In ``quantization_mode="full"`` a wrapper quantizes its layer's inputs (``default_quantize_input``); set it to
    ``False`` in the subclass for a layer that should be quantized only when a spec or a case asks.

    Args:
        layer: the Keras layer to wrap (not a model).
        **kwargs: passed to :class:`~qdq_toolkit.QDQWrapper` (``quantize_model`` gives ``quantize_inputs``,
            ``quantize_weights`` and ``activation_range``).
    """

    layer_classes = _LayerClassesFromName()
    default_quantize_input = True
    default_quantize_weight = False

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.Model):
            raise TypeError(
                f"{type(self).__name__} wraps one Keras layer, got {type(layer).__name__}. Quantize whole models "
                "with quantize_model(model)."
            )
        super().__init__(layer, **kwargs)

    def build(self, input_shape=None):
        super().build(input_shape)

    def call(self, inputs, training=None, **kwargs):
        return super().call(inputs, training=training, **kwargs)
