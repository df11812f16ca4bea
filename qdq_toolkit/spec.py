"""QuantizationSpec: which layers get QDQ, on their inputs and/or weights, and on which inputs.

The public names and arguments are those of NVIDIA's TF2 quantization toolkit, so that its users can switch by
changing an import::

    spec = QuantizationSpec()
    spec.add("conv1", quantize_weight=False)                 # one layer, by name
    spec.add(["add", "add_1"], quantization_index=[[1], [0]])  # several layers, parallel lists
    spec.add("MaxPooling2D", is_keras_class=True)             # every layer of a class

A spec is plain data: it knows nothing of any model. ``quantize_model`` matches it against a model (and says
clearly what did not match). Unlike NVIDIA's toolkit, nothing here is ever mutated by ``quantize_model`` or by a
custom case.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

#: The ``format`` field of a spec file written by :meth:`QuantizationSpec.save`.
SPEC_FILE_FORMAT = "qdq_toolkit.QuantizationSpec"
SPEC_FILE_VERSION = 1


@dataclass(frozen=True)
class LayerSpec:
    """One entry of a :class:`QuantizationSpec`.

    Attributes:
        name: a layer name (``"conv1"``), a path into nested models (``"backbone/conv1"``), or, when
            ``is_keras_class`` is true, a Keras class name (``"Conv2D"``).
        is_keras_class: select every layer of the class ``name`` instead of one layer.
        quantize_input: QDQ on the layer's inputs (those in ``quantization_index``, or all of them).
        quantize_weight: per-channel QDQ on the layer's weights (ignored for layers without weights).
        quantization_index: for multi-input layers (``Add``, ``Concatenate``...), the indices of the inputs to
            quantize; ``None`` means all of them.
    """

    name: str
    is_keras_class: bool = False
    quantize_input: bool = True
    quantize_weight: bool = True
    quantization_index: tuple[int, ...] | None = None

    @property
    def key(self) -> tuple[bool, str]:
        return (self.is_keras_class, self.name)

    def quantizes_anything(self) -> bool:
        return self.quantize_input or self.quantize_weight


def _as_name(value, is_keras_class: bool) -> str:
    if is_keras_class and isinstance(value, type):
        return value.__name__
    if isinstance(value, str) and value:
        return value
    kind = "a Keras class or class name" if is_keras_class else "a layer name"
    raise TypeError(f"QuantizationSpec.add: name must be {kind} (a non-empty string), got {value!r}.")


def _as_index(value, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"QuantizationSpec.add('{name}'): quantization_index must be an int or a list of ints, got {value!r}.")
    if isinstance(value, int):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise TypeError(
            f"QuantizationSpec.add('{name}'): quantization_index must be None, an int or a list of ints "
            f"(input positions, starting at 0), got {value!r}."
        )
    if not value:
        raise ValueError(
            f"QuantizationSpec.add('{name}'): quantization_index is empty. To quantize no input, pass "
            "quantize_input=False instead."
        )
    negative = [i for i in value if i < 0]
    if negative:
        raise ValueError(f"QuantizationSpec.add('{name}'): quantization_index {negative} is negative; inputs are numbered from 0.")
    return tuple(sorted(set(value)))


def _broadcast(value, count: int, label: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(
                f"QuantizationSpec.add: {label} has {len(value)} values but {count} names were given; pass one "
                "value for all names or a list with one value per name."
            )
        return list(value)
    return [value] * count


def _as_flag(value, label: str, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"QuantizationSpec.add('{name}'): {label} must be True or False, got {value!r}.")
    return value


class QuantizationSpec:
    """An ordered set of :class:`LayerSpec` entries; adding an entry for the same name again replaces it."""

    def __init__(self, entries: Sequence[LayerSpec] = ()):
        self._entries: dict[tuple[bool, str], LayerSpec] = {}
        for entry in entries:
            if not isinstance(entry, LayerSpec):
                raise TypeError(f"QuantizationSpec entries must be LayerSpec objects, got {entry!r}.")
            self._entries[entry.key] = entry

    def add(
        self,
        name,
        is_keras_class=False,
        quantize_input=True,
        quantize_weight=True,
        quantization_index=None,
    ) -> QuantizationSpec:
        """Add one or several entries; returns the spec so calls can be chained.

        ``name`` may be a list; then each other argument is either one value for all names or a list with one
        value per name. For ``quantization_index`` with several names, a list whose items are all lists (or
        None) is read per name; a flat list of ints applies to every name.
        """
        names = list(name) if isinstance(name, (list, tuple)) else [name]
        if not names:
            raise ValueError("QuantizationSpec.add: name is an empty list; give at least one layer name.")
        count = len(names)
        classes = _broadcast(is_keras_class, count, "is_keras_class")
        inputs = _broadcast(quantize_input, count, "quantize_input")
        weights = _broadcast(quantize_weight, count, "quantize_weight")
        per_name_index = (
            isinstance(name, (list, tuple))
            and isinstance(quantization_index, (list, tuple))
            and all(item is None or isinstance(item, (list, tuple)) for item in quantization_index)
        )
        indices = _broadcast(quantization_index, count, "quantization_index") if per_name_index else [quantization_index] * count

        new_entries = []
        for raw_name, is_class, q_in, q_w, index in zip(names, classes, inputs, weights, indices, strict=True):
            is_class = _as_flag(is_class, "is_keras_class", str(raw_name))
            layer_name = _as_name(raw_name, is_class)
            new_entries.append(
                LayerSpec(
                    name=layer_name,
                    is_keras_class=is_class,
                    quantize_input=_as_flag(q_in, "quantize_input", layer_name),
                    quantize_weight=_as_flag(q_w, "quantize_weight", layer_name),
                    quantization_index=_as_index(index, layer_name),
                )
            )
        for entry in new_entries:  # validate everything before changing anything
            self._entries[entry.key] = entry
        return self

    @property
    def entries(self) -> tuple[LayerSpec, ...]:
        return tuple(self._entries.values())

    def get(self, name: str, is_keras_class: bool = False) -> LayerSpec | None:
        return self._entries.get((is_keras_class, name))

    def copy(self) -> QuantizationSpec:
        return QuantizationSpec(self.entries)

    def __iter__(self) -> Iterator[LayerSpec]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other) -> bool:
        return isinstance(other, QuantizationSpec) and self.entries == other.entries

    # ------------------------------------------------------------------------------------------ spec files
    def to_dict(self) -> dict:
        """JSON-ready form; the entry keys are ``add``'s argument names (NVIDIA's), so a file reads like the calls."""
        return {
            "format": SPEC_FILE_FORMAT,
            "version": SPEC_FILE_VERSION,
            "entries": [
                {
                    "name": entry.name,
                    "is_keras_class": entry.is_keras_class,
                    "quantize_input": entry.quantize_input,
                    "quantize_weight": entry.quantize_weight,
                    "quantization_index": None if entry.quantization_index is None else list(entry.quantization_index),
                }
                for entry in self.entries
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> QuantizationSpec:
        """The spec :meth:`to_dict` describes; every entry is checked as ``add`` checks it.

        Raises:
            ValueError / TypeError: not a spec of this format or version, or an invalid entry (the message names it).
        """
        if not isinstance(data, dict) or data.get("format") != SPEC_FILE_FORMAT:
            raise ValueError(
                f"not a QuantizationSpec: expected a JSON object with \"format\": \"{SPEC_FILE_FORMAT}\" (as written by "
                "QuantizationSpec.save)."
            )
        if data.get("version") != SPEC_FILE_VERSION:
            raise ValueError(
                f"QuantizationSpec version {data.get('version')!r} is not supported; this qdq_toolkit reads version "
                f"{SPEC_FILE_VERSION}."
            )
        entries = data.get("entries")
        if not isinstance(entries, list):
            raise ValueError("QuantizationSpec: \"entries\" must be a list of entries.")
        spec = cls()
        known = {"name", "is_keras_class", "quantize_input", "quantize_weight", "quantization_index"}
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict) or "name" not in entry:
                raise ValueError(f"QuantizationSpec entry {position} must be an object with a \"name\", got {entry!r}.")
            unknown = sorted(set(entry) - known)
            if unknown:
                raise ValueError(
                    f"QuantizationSpec entry {position} ('{entry['name']}') has unknown key(s) {unknown}; the keys are "
                    f"{sorted(known)}."
                )
            spec.add(**entry)
        return spec

    def save(self, path: str | os.PathLike, *, force: bool = False):
        """Write the spec as JSON (atomically; an existing file only with ``force``). Returns the path."""
        from qdq_toolkit._files import write_atomically

        return write_atomically(path, json.dumps(self.to_dict(), indent=2) + "\n", force=force)

    @classmethod
    def load(cls, path: str | os.PathLike) -> QuantizationSpec:
        """Read a spec written by :meth:`save` (e.g. by ``python -m qdq_toolkit.sensitivity --spec-out``).

        Raises:
            FileNotFoundError: no such file. ValueError: not valid JSON or not a spec (the message says which).
        """
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not a QuantizationSpec file: invalid JSON ({exc}).") from None
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{path}: {exc}") from None

    def __repr__(self) -> str:
        lines = ",\n  ".join(repr(entry) for entry in self.entries)
        return f"QuantizationSpec([\n  {lines}\n])" if lines else "QuantizationSpec([])"
