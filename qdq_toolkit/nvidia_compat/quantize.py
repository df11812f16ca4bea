"""NVIDIA's ``tensorflow_quantization.quantize``: ``QuantizationSpec`` with its ``layers`` list, and ``quantize_model``.

What NVIDIA documents (docs.nvidia.com, TensorFlow Quantization Toolkit: ``quantize_model``, ``QuantizationSpec``,
"Add Custom QDQ Insertion Case") and scripts rely on, translated onto qdq_toolkit:

* a spec holds a plain, mutable list ``layers`` of :class:`LayerConfig` (name, is_keras_class, quantize_input,
  quantize_weight, quantization_index) that scripts and custom cases read and extend
  (``special_qspec.layers.extend(other.layers)``); ``quantize_model`` reads it;
* a name in a spec that the model does not have is reported with a :class:`LayerNameNotFoundWarning` and
  ignored (qdq_toolkit's own ``quantize_model`` raises instead);
* wrappers named ``<LayerClass>QuantizeWrapper`` that subclass
  :class:`~qdq_toolkit.nvidia_compat.BaseQuantizeWrapper` are used for their layer class, found when
  ``quantize_model`` runs (every other layer gets qdq_toolkit's native wrapper, with NVIDIA's defaults);
* ``quantization_mode="partial"`` needs a spec or a case;
* the package constants ``G_NUM_BITS``, ``G_NARROW_RANGE``, ``G_SYMMETRIC`` are read at each call.

Kept from qdq_toolkit, on purpose: the caller's model and spec are never modified (NVIDIA's ``quantize_model``
appends the cases' entries to the caller's spec); the user's spec wins over every case; errors are exceptions that
say how to fix them.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import keras

from qdq_toolkit.cases import CustomQDQInsertionCase as NativeCase
from qdq_toolkit.cases import LayerNames, iter_layers
from qdq_toolkit.nvidia_compat.quantize_wrapper_base import BaseQuantizeWrapper, all_subclasses
from qdq_toolkit.nvidia_compat.quantize_wrappers import NVIDIA_WRAPPERS
from qdq_toolkit.quantize import quantize_model as native_quantize_model
from qdq_toolkit.spec import LayerSpec
from qdq_toolkit.spec import QuantizationSpec as NativeSpec

#: What qdq_toolkit quantizes to (TensorRT's explicit quantization): the values the ``G_*`` constants must keep.
SUPPORTED_SETTINGS = {"G_NUM_BITS": 8, "G_NARROW_RANGE": True, "G_SYMMETRIC": True}


class LayerNameNotFoundWarning(UserWarning):
    """A spec names a layer the model does not have; the entry is ignored (NVIDIA's documented behaviour)."""


@dataclass
class LayerConfig:
    """One entry of a :class:`QuantizationSpec`, as in NVIDIA's toolkit (a plain, mutable record).

    Attributes:
        name: the layer's name (``model.summary()``), or a Keras class name when ``is_keras_class``.
        is_keras_class: ``name`` is a layer class: the entry applies to every layer of that class.
        quantize_input: QDQ on the layer's inputs.
        quantize_weight: QDQ on the layer's weights (ignored for layers without weights).
        quantization_index: for layers with several inputs (Add, Concatenate...), the inputs to quantize; ``None``
            (or an empty list) means all of them.
    """

    name: str | None = None
    is_keras_class: bool = False
    quantize_input: bool = True
    quantize_weight: bool = True
    quantization_index: list | None = None


@dataclass
class QuantizationSpec:
    """The layers to treat differently from the default, as a list ``layers`` of :class:`LayerConfig`.

    ``add`` appends entries (a later entry for the same layer wins); ``layers`` can also be read and extended
    directly, as NVIDIA's cases do.
    """

    layers: list[LayerConfig] = field(default_factory=list)

    def add(self, name, is_keras_class=False, quantize_input=True, quantize_weight=True, quantization_index=None) -> None:
        """Append one entry, or one per name when ``name`` is a list (other arguments: one value, or one per name).

        The arguments are checked as by :meth:`qdq_toolkit.QuantizationSpec.add`, which raises a ``TypeError`` or
        ``ValueError`` saying what is wrong (NVIDIA's toolkit asserts).
        """
        checked = NativeSpec().add(name, is_keras_class, quantize_input, quantize_weight, quantization_index)
        self.layers.extend(layer_config(entry) for entry in checked)

    def to_native(self) -> NativeSpec:
        """The same entries as a :class:`qdq_toolkit.QuantizationSpec` (a later entry for a layer replaces an earlier one)."""
        native = NativeSpec()
        for position, config in enumerate(self.layers):
            if not isinstance(config, LayerConfig):
                raise TypeError(
                    f"QuantizationSpec.layers[{position}] is {type(config).__name__}, not a LayerConfig. Append "
                    "LayerConfig(name=..., ...) objects, or use spec.add(name, ...)."
                )
            try:
                native.add(
                    config.name,
                    is_keras_class=config.is_keras_class,
                    quantize_input=config.quantize_input,
                    quantize_weight=config.quantize_weight,
                    quantization_index=config.quantization_index or None,
                )
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"QuantizationSpec.layers[{position}] ({config}): {exc}") from None
        return native

    @classmethod
    def from_native(cls, spec: NativeSpec) -> QuantizationSpec:
        """A compat spec holding the entries of a :class:`qdq_toolkit.QuantizationSpec`, in order."""
        return cls([layer_config(entry) for entry in spec])

    def __str__(self) -> str:
        return "\n".join(str(config) for config in self.layers)


def layer_config(entry: LayerSpec) -> LayerConfig:
    index = None if entry.quantization_index is None else list(entry.quantization_index)
    return LayerConfig(entry.name, entry.is_keras_class, entry.quantize_input, entry.quantize_weight, index)


def as_native_spec(spec, source: str) -> NativeSpec:
    """A compat spec, a native spec or ``None``, as a native spec (``None``: an empty one)."""
    if spec is None:
        return NativeSpec()
    if isinstance(spec, QuantizationSpec):
        return spec.to_native()
    if isinstance(spec, NativeSpec):
        return spec
    raise TypeError(
        f"{source} must be a QuantizationSpec (qdq_toolkit.nvidia_compat or qdq_toolkit), got {type(spec).__name__}."
    )


def as_compat_spec(spec) -> QuantizationSpec:
    """A fresh compat spec with the entries of ``spec`` (compat, native or ``None``): a case may change it freely."""
    if spec is None:
        return QuantizationSpec()
    if isinstance(spec, NativeSpec):
        return QuantizationSpec.from_native(spec)
    return QuantizationSpec.from_native(as_native_spec(spec, "quantization_spec"))


def _closest(name: str, names: list[str]) -> str:
    matches = difflib.get_close_matches(name, sorted(set(names)), n=5, cutoff=0.5)
    return ", ".join(matches) if matches else "(no similar names)"


def _canonical_class_name(name: str) -> str:
    """The class name Keras layers report for a ``keras.layers`` alias (``"GlobalMaxPool2D"`` -> ``"GlobalMaxPooling2D"``)."""
    alias = getattr(keras.layers, name, None)
    return alias.__name__ if isinstance(alias, type) and issubclass(alias, keras.layers.Layer) else name


def _known_names_only(spec: NativeSpec, names: LayerNames, model_name: str, source: str, stacklevel: int = 3) -> NativeSpec:
    """``spec`` without the entries that name a layer the model lacks, each reported with a warning; class entries
    use the name Keras layers report (NVIDIA matched ``layer.__class__.__name__``, so an alias never matched)."""
    kept = []
    for entry in spec:
        if entry.is_keras_class:
            kept.append(replace(entry, name=_canonical_class_name(entry.name)))
            continue
        if names.select(entry.name) or entry.name in names.ambiguous:
            kept.append(entry)
            continue
        warnings.warn(
            f"{source}: there is no layer named '{entry.name}' in model '{model_name}'; this entry is ignored "
            f"(NVIDIA's behaviour; qdq_toolkit.quantize_model raises instead). Closest layer names: "
            f"{_closest(entry.name, names.names())}.",
            LayerNameNotFoundWarning,
            stacklevel=stacklevel,
        )
    return NativeSpec(kept)


class _CaseResult(NativeCase):
    """The spec a compat case returned, handed to qdq_toolkit's quantize_model as a case of its own."""

    def __init__(self, spec: NativeSpec):
        self._spec = spec

    def case(self, keras_model, qspec) -> NativeSpec:
        return self._spec


def _case_result(case, model: keras.Model, user_spec, names: LayerNames) -> NativeCase:
    if isinstance(case, type) or not callable(getattr(case, "case", None)):
        raise TypeError(
            f"custom_qdq_cases must hold case instances, got {case!r}. Pass instances, e.g. [ResNetV1QDQCase()], "
            "not classes."
        )
    source = type(case).__name__
    if isinstance(case, NativeCase):
        returned = case.case(model, as_native_spec(user_spec, "quantization_spec").copy())
    else:
        returned = case.case(model, as_compat_spec(user_spec))
    if returned is None:
        returned = NativeSpec()
    if not isinstance(returned, (QuantizationSpec, NativeSpec)):
        raise TypeError(f"{source}.case() must return a QuantizationSpec, got {type(returned).__name__}.")
    spec = _known_names_only(as_native_spec(returned, f"{source}.case()"), names, model.name, source, stacklevel=5)
    # Named after the case, so that qdq_toolkit's error messages say which case asked for what.
    return type(source, (_CaseResult,), {"__module__": __name__})(spec)


def nvidia_style_wrappers() -> list[type[BaseQuantizeWrapper]]:
    """Every ``<LayerClass>QuantizeWrapper`` subclass of ``BaseQuantizeWrapper`` defined so far, outside this
    package, whose name stands for a layer class, in definition order (a later one wins for the same class).

    The package's own NVIDIA-named wrappers are left out: for those layer classes qdq_toolkit's native wrappers
    (same QDQ, same defaults) are used, so that a saved ``.keras`` model loads in every qdq_toolkit tool without
    importing this package.
    """
    return [
        wrapper
        for wrapper in all_subclasses(BaseQuantizeWrapper)
        if wrapper not in NVIDIA_WRAPPERS and wrapper.layer_classes
    ]


def _check_settings() -> None:
    package = importlib.import_module("qdq_toolkit.nvidia_compat")
    for name, supported in SUPPORTED_SETTINGS.items():
        value = getattr(package, name, supported)
        if value != supported or type(value) is not type(supported):
            raise ValueError(
                f"qdq_toolkit.nvidia_compat.{name} is {value!r}, but qdq_toolkit quantizes to symmetric int8 with a "
                f"narrow range [-127, 127] only, which is what TensorRT runs. Set {name} back to {supported!r}."
            )


def quantize_model(
    model: keras.Model,
    quantization_mode: str = "full",
    quantization_spec: QuantizationSpec | None = None,
    custom_qdq_cases: Sequence | None = None,
    *,
    activation_range=None,
) -> keras.Model:
    """Return a copy of ``model`` with QDQ nodes, with NVIDIA's documented behaviour (see the module docstring).

    Args:
        model: a Functional or Sequential Keras 3 model; never modified.
        quantization_mode: ``"full"`` (every layer with a default-on wrapper, spec entries overriding) or
            ``"partial"`` (only what the spec and the cases select).
        quantization_spec: a :class:`QuantizationSpec` (a ``qdq_toolkit.QuantizationSpec`` works too); only read.
        custom_qdq_cases: case instances, NVIDIA-style (this package) or qdq_toolkit's own; each gets a copy of the
            user's spec. The user's spec wins over all of them.
        activation_range: qdq_toolkit's range tracking (``"ema"`` by default; ``"last"`` is NVIDIA's last batch).

    Raises:
        ValueError: an unknown mode, ``"partial"`` without a spec or a case, or a ``G_*`` constant set to what
            TensorRT does not run.
        qdq_toolkit.QuantizationSpecError: a spec entry that cannot be applied (a class without a wrapper, an
            input index the layer does not have...).
    """
    _check_settings()
    if quantization_mode == "partial" and quantization_spec is None and not custom_qdq_cases:
        raise ValueError(
            "quantization_mode='partial' quantizes only what a QuantizationSpec or a custom QDQ case selects, and "
            "neither was given. Pass quantization_spec=..., custom_qdq_cases=[...], or use quantization_mode='full'."
        )
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"quantize_model expects a keras.Model (Functional or Sequential), got {type(model).__name__}."
        )
    names = LayerNames(iter_layers(model))
    user_spec = _known_names_only(as_native_spec(quantization_spec, "quantization_spec"), names, model.name, "quantization_spec")
    cases = [_case_result(case, model, quantization_spec, names) for case in custom_qdq_cases or ()]
    return native_quantize_model(
        model,
        quantization_mode,
        user_spec,
        cases,
        activation_range=activation_range,
        custom_wrappers=nvidia_style_wrappers(),
    )
