"""Mixed precision: a QAT model trained under ``mixed_float16`` / ``mixed_bfloat16`` exported as float32.

Under a Keras mixed-precision policy the layers compute in float16/bfloat16 while their variables stay float32;
the QDQ arithmetic itself always runs in float32 (:mod:`qdq_toolkit.quantizers`), so the trained ranges are those
TensorRT's float32 Q/DQ use. The exporter must see a float32 model: traced as is, a mixed model would put Casts to
the half type between every layer and quantize half-precision tensors. :func:`float32_model` rebuilds the model
with every layer under the float32 policy and the same weights and ranges (the variables are float32 already, so
nothing is rounded); ``keras_to_onnx(..., fp16=True)`` then writes the float parts in float16 as usual.

A float64 model exports the same way, as its float32 rebuild: its weights and ranges are rounded to float32, the
precision TensorRT computes in (and ONNX's QuantizeLinear takes float32 input at opset 13).
"""

from __future__ import annotations

import keras

FLOAT32 = "float32"


def is_mixed(model: keras.Model) -> bool:
    """Whether any layer of ``model`` (nested models and wrapped layers included) computes in a non-float32 dtype."""
    return any(layer.compute_dtype != FLOAT32 for layer in _all_layers(model))


def float32_model(model: keras.Model) -> keras.Model:
    """``model`` itself when every layer computes in float32, else a float32 rebuild with the same weights.

    The rebuild deserializes the model's own config with every layer's ``dtype`` set to ``"float32"`` and copies
    every variable (kernels, BatchNorm statistics, activation ranges and their observed-step counters), so a QAT
    model trained under a mixed policy exports the ranges it trained (a float64 model's, rounded to float32).
    ``model`` is not modified.

    Raises:
        ValueError: the model's config cannot be rebuilt (e.g. a custom layer without ``get_config``), with what to do.
    """
    if not is_mixed(model):
        return model
    config = _float32_config(keras.saving.serialize_keras_object(model))
    try:
        rebuilt = keras.saving.deserialize_keras_object(config)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Cannot rebuild the mixed-precision model {model.name!r} under float32 for export ({error}). "
            "Give every custom layer a get_config, or rebuild the model yourself under "
            "keras.mixed_precision.set_dtype_policy('float32'), copy the weights with set_weights and export that."
        ) from error
    source, target = model.weights, rebuilt.weights
    # Same variables in the same order (their paths may differ: a deserialized wrapper builds its layer unscoped).
    if [tuple(w.shape) for w in source] != [tuple(w.shape) for w in target]:
        raise ValueError(
            f"The float32 rebuild of {model.name!r} does not have the same variables as the model; "
            "rebuild it yourself under the float32 policy and copy the weights with set_weights."
        )
    for src, dst in zip(source, target, strict=True):
        dst.assign(src.numpy())
    return rebuilt


def _float32_config(config):
    """A copy of a serialized Keras object with every layer's dtype policy replaced by float32."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "dtype" and _is_rebuilt_policy(value):
                out[key] = FLOAT32
            else:
                out[key] = _float32_config(value)
        return out
    if isinstance(config, list):
        return [_float32_config(item) for item in config]
    return config


#: Policy names whose layers compute in half precision.
HALF_POLICIES = ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16")
#: Policies the export rebuilds as float32: the half ones, and float64 (ONNX's QuantizeLinear takes float32 input
#: at opset 13, and TensorRT computes in float32 anyway; a float64 model's weights and ranges are rounded to float32).
REBUILT_POLICIES = (*HALF_POLICIES, "float64")


def _is_rebuilt_policy(value) -> bool:
    """A serialized dtype (a policy name or a ``DTypePolicy`` config) that the export rebuilds as float32."""
    if isinstance(value, dict) and value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        value = value.get("config", {}).get("name")
    return isinstance(value, str) and value in REBUILT_POLICIES


def _all_layers(model: keras.Model):
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        yield layer
        stack.extend(getattr(layer, "layers", []) or [])
        inner = getattr(layer, "layer", None)
        if isinstance(inner, keras.layers.Layer):
            stack.append(inner)
