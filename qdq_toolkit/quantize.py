"""``quantize_model``: clone a Keras model with QDQ wrappers where the spec, the cases and the mode say.

The caller's model, its weights and the spec are never touched: the model is cloned (nested Functional and
Sequential models included), the clone gets copies of the weights, and the spec is only read.
"""

from __future__ import annotations

import difflib
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras

from qdq_toolkit.cases import CustomQDQInsertionCase, LayerNames, LayerRef, iter_layers
from qdq_toolkit.quantizers import RangeTracking
from qdq_toolkit.spec import LayerSpec, QuantizationSpec
from qdq_toolkit.wrappers import DEFAULT_REGISTRY, QDQWrapper, WrapperRegistry

QUANTIZATION_MODES = ("full", "partial")


class QuantizationSpecError(ValueError):
    """The spec (or a case) names something the model does not have, or asks for what cannot be done."""


@dataclass(frozen=True)
class LayerPlan:
    """What ``quantize_model`` does to one layer."""

    path: str
    wrapper: type[QDQWrapper]
    quantize_inputs: tuple[int, ...]
    quantize_weights: bool


def _closest(name: str, candidates: Iterable[str], count: int = 5) -> str:
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=count, cutoff=0.5)
    return ", ".join(matches) if matches else "(no similar names)"


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        kind = type(model).__module__ + "." + type(model).__qualname__
        raise TypeError(
            f"quantize_model expects a keras.Model (Functional or Sequential), got {kind}. Load or build the Keras "
            "model first, e.g. keras.models.load_model('model.keras')."
        )
    if any(isinstance(ref.layer, QDQWrapper) for ref in iter_layers(model)):
        raise ValueError(
            f"Model '{model.name}' already contains QDQ wrappers: it is already quantized. Pass the original "
            "float model to quantize_model."
        )


def _decision_from_entry(entry: LayerSpec, ref: LayerRef, wrapper: type[QDQWrapper], source: str):
    if entry.quantization_index is not None:
        too_big = [i for i in entry.quantization_index if i >= ref.num_inputs]
        if too_big:
            raise QuantizationSpecError(
                f"{source}: quantization_index {list(entry.quantization_index)} for layer '{ref.path}' "
                f"({type(ref.layer).__name__}) is out of range: the layer has {ref.num_inputs} input(s), "
                f"indices 0..{ref.num_inputs - 1}. Fix quantization_index for this layer."
            )
    inputs: tuple[int, ...] = ()
    if entry.quantize_input:
        inputs = entry.quantization_index if entry.quantization_index is not None else tuple(range(ref.num_inputs))
    return inputs, entry.quantize_weight and bool(wrapper.kernel_axes)


def _default_decision(ref: LayerRef, wrapper: type[QDQWrapper]):
    inputs = tuple(range(ref.num_inputs)) if wrapper.default_quantize_input else ()
    return inputs, wrapper.default_quantize_weight and bool(wrapper.kernel_axes)


def plan_quantization(
    model: keras.Model,
    quantization_mode: str = "full",
    quantization_spec: QuantizationSpec | None = None,
    custom_qdq_cases: Sequence[CustomQDQInsertionCase] | None = None,
    registry: WrapperRegistry = DEFAULT_REGISTRY,
) -> dict[int, LayerPlan]:
    """Decide, for every layer of ``model``, which wrapper it gets and what it quantizes (``{id(layer): plan}``).

    Precedence, lowest first: the mode's defaults (``"full"`` only), then each case's spec in the order given
    (a later case's entry replaces an earlier one's for the same layer), then the user's spec. Within one spec an
    entry naming the layer beats an entry naming its class.
    """
    if quantization_mode not in QUANTIZATION_MODES:
        raise ValueError(
            f"Unknown quantization_mode {quantization_mode!r}. Use 'full' (every supported layer, spec entries "
            "override) or 'partial' (only the layers in the spec and the cases)."
        )
    if isinstance(quantization_spec, (str, os.PathLike)):  # a spec file written by QuantizationSpec.save
        quantization_spec = QuantizationSpec.load(quantization_spec)
    user_spec = quantization_spec if quantization_spec is not None else QuantizationSpec()
    if not isinstance(user_spec, QuantizationSpec):
        raise TypeError(
            f"quantization_spec must be a qdq_toolkit.QuantizationSpec, got {type(user_spec).__name__}."
        )
    refs = iter_layers(model)

    sources: list[tuple[str, QuantizationSpec]] = []
    for case in custom_qdq_cases or ():
        if isinstance(case, type) or not callable(getattr(case, "case", None)):
            raise TypeError(
                f"custom_qdq_cases must hold CustomQDQInsertionCase instances, got {case!r}. Pass instances, "
                "e.g. [ResNetV1QDQCase()], not classes."
            )
        case_spec = case.case(model, user_spec.copy())
        if not isinstance(case_spec, QuantizationSpec):
            raise TypeError(f"{type(case).__name__}.case() must return a QuantizationSpec, got {type(case_spec).__name__}.")
        sources.append((f"{type(case).__name__}", case_spec))
    sources.append(("quantization_spec", user_spec))

    names = LayerNames(refs)
    by_class: dict[str, list[LayerRef]] = {}
    for ref in refs:
        by_class.setdefault(type(ref.layer).__name__, []).append(ref)

    decisions: dict[int, tuple[tuple[int, ...], bool]] = {}
    if quantization_mode == "full":
        for ref in refs:
            wrapper = registry.wrapper_for(type(ref.layer))
            if wrapper is not None:
                decisions[id(ref.layer)] = _default_decision(ref, wrapper)

    for source, spec in sources:
        class_entries = [e for e in spec if e.is_keras_class]
        name_entries = [e for e in spec if not e.is_keras_class]
        for entry in class_entries:
            matched = by_class.get(entry.name, [])
            if not matched and registry.class_named(entry.name) is None and not hasattr(keras.layers, entry.name):
                raise QuantizationSpecError(
                    f"{source}: '{entry.name}' (is_keras_class=True) is not a Keras layer class. Closest class names: "
                    f"{_closest(entry.name, [*by_class, *registry.supported_classes()])}."
                )
            for ref in matched:
                _apply(entry, ref, registry, decisions, source)
        for entry in name_entries:
            matched = names.select(entry.name)
            if entry.name in names.ambiguous:
                paths = names.ambiguous[entry.name]
                raise QuantizationSpecError(
                    f"{source}: '{entry.name}' names {len(paths)} layers of nested models ({', '.join(paths)}). "
                    "Name the one you mean by its path, e.g. spec.add('" + paths[0] + "')."
                )
            if not matched:
                hint = ""
                if entry.name in by_class or registry.class_named(entry.name) or hasattr(keras.layers, entry.name):
                    hint = f" '{entry.name}' is a class name: add it with is_keras_class=True."
                raise QuantizationSpecError(
                    f"{source}: there is no layer named '{entry.name}' in model '{model.name}'.{hint} Closest layer "
                    f"names: {_closest(entry.name, names.names())}. Layers inside nested models can be named "
                    "'submodel/layer'."
                )
            for ref in matched:
                _apply(entry, ref, registry, decisions, source)

    plans: dict[int, LayerPlan] = {}
    for ref in refs:
        inputs, weights = decisions.get(id(ref.layer), ((), False))
        if inputs or weights:
            plans[id(ref.layer)] = LayerPlan(
                path=ref.path,
                wrapper=registry.wrapper_for(type(ref.layer)),
                quantize_inputs=inputs,
                quantize_weights=weights,
            )
    return plans


def _apply(entry: LayerSpec, ref: LayerRef, registry: WrapperRegistry, decisions: dict, source: str) -> None:
    wrapper = registry.wrapper_for(type(ref.layer))
    if wrapper is None:
        if not entry.quantizes_anything():
            decisions.pop(id(ref.layer), None)
            return
        what = f"class '{entry.name}'" if entry.is_keras_class else f"layer '{ref.path}'"
        raise QuantizationSpecError(
            f"{source}: {what} ({type(ref.layer).__name__}) has no QDQ wrapper. Supported classes: "
            f"{', '.join(registry.supported_classes())}. To support it, write a QDQWrapper subclass with "
            f"layer_classes = ({type(ref.layer).__name__},) and pass it as quantize_model(..., "
            "custom_wrappers=[YourWrapper]) (see the README, 'Supporting a new layer')."
        )
    decisions[id(ref.layer)] = _decision_from_entry(entry, ref, wrapper, source)


def _copy_layer(layer):
    """``from_config(get_config())``; when that fails because get_config also returns derived values the
    constructor does not take (keras-hub 0.32's ``ViTPatchingAndEmbedding`` adds ``num_patches``), retry with
    the constructor's own arguments only, and keep the copy only if its config equals the original's."""
    import inspect

    cls, config = layer.__class__, layer.get_config()
    try:
        return cls.from_config(config)
    except Exception as first:  # noqa: BLE001 - re-raised unchanged when the retry does not apply
        accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable", "dtype"}
        reduced = {key: value for key, value in config.items() if key in accepted}
        if reduced == config:
            raise
        try:
            clone = cls.from_config(reduced)
        except Exception:  # noqa: BLE001
            raise first from None
        if clone.get_config() != config:
            raise first from None
        return clone


def quantize_model(
    model: keras.Model,
    quantization_mode: str = "full",
    quantization_spec: QuantizationSpec | None = None,
    custom_qdq_cases: Sequence[CustomQDQInsertionCase] | None = None,
    *,
    activation_range: RangeTracking | str | dict | None = None,
    custom_wrappers: Sequence[type[QDQWrapper]] | None = None,
) -> keras.Model:
    """Return a copy of ``model`` with QDQ on the inputs and weights of the selected layers.

    Args:
        model: a built Functional or Sequential Keras 3 model (nested Functional/Sequential models are fine).
        quantization_mode: ``"full"`` quantizes every layer whose wrapper is on by default (convolutions, dense,
            average pooling), with the spec's entries overriding; ``"partial"`` quantizes only what the spec and the
            cases select.
        quantization_spec: a :class:`QuantizationSpec` (or the path of a spec file from ``QuantizationSpec.save``);
            read, never modified.
        custom_qdq_cases: :class:`CustomQDQInsertionCase` instances (e.g. ``[ResNetV1QDQCase()]``); the user's
            spec wins over them.
        activation_range: how activation ranges follow the data in training; ``"ema"`` (default), ``"max"``,
            ``"last"``, ``"fixed"`` or a :class:`RangeTracking` (see its docstring for why EMA is the default).
        custom_wrappers: extra :class:`QDQWrapper` subclasses for layer classes the toolkit does not know.

    Returns:
        A new Keras model, trainable with ``fit`` and saveable as ``.keras``. Weights are copies of ``model``'s.
    """
    _check_model(model)
    registry = DEFAULT_REGISTRY.with_wrappers(custom_wrappers)
    tracking = RangeTracking.from_config(activation_range)
    plans = plan_quantization(model, quantization_mode, quantization_spec, custom_qdq_cases, registry)

    copies: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        try:
            clone = _copy_layer(layer)
        except Exception as exc:  # noqa: BLE001 - re-raised with the layer named and the fix
            raise TypeError(
                f"Cannot copy layer '{layer.name}' ({type(layer).__name__}) with from_config(get_config()): {exc}. "
                "A custom layer must implement get_config() returning its constructor arguments."
            ) from exc
        copies.append((layer, clone))
        plan = plans.get(id(layer))
        if plan is None:
            return clone
        return plan.wrapper(
            clone,
            quantize_inputs=plan.quantize_inputs,
            quantize_weights=plan.quantize_weights,
            activation_range=tracking,
        )

    quantized = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    for original, clone in copies:
        if getattr(original, "weights", None):  # ops such as x[:, 0] or x + y are operations without weights
            # Variable by variable: get_weights' NumPy copies added about 20 MiB to a ResNet50 QAT fit's peak
            # (bench.memory --baseline, 3 fits each).
            if len(clone.weights) != len(original.weights):
                raise ValueError(
                    f"The copy of layer '{original.name}' ({type(original).__name__}) has {len(clone.weights)} "
                    f"weights where the layer has {len(original.weights)}: its get_config() does not rebuild it. "
                    "A custom layer must implement get_config() returning its constructor arguments."
                )
            for copy, weight in zip(clone.weights, original.weights, strict=True):
                copy.assign(weight)
    return quantized


def quantized_layers(model: keras.Model) -> list[QDQWrapper]:
    """The QDQ wrappers of a quantized model, nested models included, in graph order."""
    return [ref.layer for ref in iter_layers(model) if isinstance(ref.layer, QDQWrapper)]


def load_model(path, *, compile: bool = True, safe_mode: bool = True, custom_objects: dict | None = None):  # noqa: A002
    """Load a quantized model saved with ``model.save("qat.keras")``; outputs equal the saved model's exactly.

    The same as ``keras.saving.load_model`` with the QDQ wrappers registered. Plain ``keras.models.load_model``
    works too once ``qdq_toolkit.wrappers`` is imported (``from qdq_toolkit import quantize_model`` does that); a
    bare ``import qdq_toolkit`` imports no submodule until a name is used.
    """
    return keras.saving.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)


class ModelFileError(ValueError):
    """A model file that cannot be loaded: not a Keras archive, corrupt, or a directory; the message says which."""


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, without a trailing period (the caller adds its own sentence)."""
    message = " ".join(str(exc).split()).rstrip(".")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def load_keras_file(path, *, safe_mode: bool = True):
    """Load a Keras model file for inference (not compiled), with the QDQ wrappers registered; the file is checked
    first so that a wrong path says what it is. The export CLI and the evaluator's Keras backend both use it.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        ModelFileError: ``path`` is a directory (a SavedModel is named as one), a ``.keras`` file that is not a zip
            archive, or a file Keras cannot load (the message carries Keras' reason, e.g. an unknown extension).
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"Keras model file {file} does not exist; check the path")
    if file.is_dir():
        hint = (
            "it looks like a SavedModel: pass it with --saved-model (saved_model_to_onnx in Python)"
            if (file / "saved_model.pb").exists()
            else "give the .keras file written by model.save('model.keras')"
        )
        raise ModelFileError(f"{file} is a directory, not a .keras file; {hint}")
    if file.suffix.lower() == ".keras" and not zipfile.is_zipfile(file):
        raise ModelFileError(
            f"cannot load Keras model {file}: it is not a .keras file (every .keras file is a zip archive and this "
            "one is not a .keras archive: it is corrupt or truncated, or another format renamed). Save the model "
            "again with model.save('model.keras')"
        )
    try:
        return keras.saving.load_model(file, compile=False, safe_mode=safe_mode)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a corrupt file
        raise ModelFileError(
            f"cannot load Keras model {file}: {_one_line(exc)}. Give a file written by model.save('model.keras') "
            "(custom layers must be registered before loading)"
        ) from exc
