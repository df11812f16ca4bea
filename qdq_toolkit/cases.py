"""Custom QDQ insertion cases, and the graph helpers a case author needs.

A *case* looks at a Keras model and returns a :class:`~qdq_toolkit.spec.QuantizationSpec` with the extra
placements a model family needs (for example: QDQ on the shortcut input of each residual ``Add``). Cases live in
the top-level ``custom_cases`` package; this module holds their base class and the helpers to walk a model:

* :func:`iter_layers` — every leaf layer, with its path through nested Functional/Sequential models;
* :class:`LayerNames` — which layers a spec entry's name selects (the rule ``quantize_model`` applies);
* :func:`inbound_layers` / :func:`outbound_layers` — the layers feeding a layer and fed by it;
* :func:`match_chain` — whether a chain of layer classes (e.g. Conv -> BatchNorm -> Activation) ends at a layer.

A case never changes the spec it is given nor the model; ``quantize_model`` merges what it returns *below* the
user's spec, so the user's own entries always win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras

from qdq_toolkit.spec import QuantizationSpec


class ModelStructureError(TypeError):
    """The model cannot be walked layer by layer (subclassed, unbuilt...). The message says what to do."""


@dataclass(frozen=True)
class LayerRef:
    """A leaf layer of a model, with its path (``"backbone/conv1"`` inside nested models, else its name)."""

    path: str
    layer: keras.layers.Layer
    num_inputs: int


def _is_model(layer) -> bool:
    return isinstance(layer, keras.Model)


def graph_of(model: keras.Model):
    """The Functional graph behind a Functional or Sequential model (error for anything else)."""
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise ModelStructureError(
                f"Sequential model '{model.name}' is not built, so its layers have no inputs yet. Start it with "
                "keras.Input(shape=...) or call model.build(input_shape) before quantizing."
            )
        return graph
    if isinstance(model, Functional):
        return model
    raise ModelStructureError(
        f"Model '{model.name}' is a subclassed keras.Model ({type(model).__name__}); its layers and their "
        "connections are only known inside its call() method, so QDQ cannot be placed. Rebuild it with the "
        "Functional API (keras.Model(inputs, outputs)) or as a keras.Sequential model; nested Functional and "
        "Sequential models are fine."
    )


def _node_input_count(node) -> int:
    """The tensors a layer was called on positionally: ``layer(x)`` 1, ``Add()([a, b])`` 2, ``mha(q, v)`` 2.

    A mask Keras passes by keyword (``GlobalAveragePooling1D()(x, mask=m)``, or the padding mask it attaches
    itself) is not an input to quantize, though ``node.input_tensors`` lists it.
    """
    arguments = getattr(node, "arguments", None)
    if arguments is None:
        return len(node.input_tensors)
    return sum(isinstance(value, keras.KerasTensor) for value in keras.tree.flatten(arguments.args))


def iter_layers(model: keras.Model) -> list[LayerRef]:
    """Every leaf layer of ``model`` in graph order, descending into nested Functional/Sequential models.

    Input layers are skipped; a layer shared by several call sites is listed once.
    """
    refs: list[LayerRef] = []
    seen: set[int] = set()

    def walk(current: keras.Model, prefix: str) -> None:
        graph = graph_of(current)
        graph_nodes = {node for depth_nodes in graph._nodes_by_depth.values() for node in depth_nodes}
        for layer in current.layers:
            if isinstance(layer, keras.layers.InputLayer) or id(layer) in seen:
                continue
            seen.add(id(layer))
            path = f"{prefix}{layer.name}"
            if _is_model(layer):
                walk(layer, f"{path}/")
                continue
            nodes = [node for node in layer._inbound_nodes if node in graph_nodes]
            count = _node_input_count(nodes[0]) if nodes else 1
            refs.append(LayerRef(path=path, layer=layer, num_inputs=count))

    walk(model, "")
    return refs


class LayerNames:
    """How a spec entry's name selects the layers of one model -- the rule ``quantize_model`` applies.

    A name is a layer's path (``"conv1"`` at the top level, ``"block/conv1"`` inside a nested model). A bare name
    that no top-level layer has also selects the one nested layer of that name; when several nested layers share
    it, it selects nothing and :attr:`ambiguous` lists their paths (``quantize_model`` refuses it).
    """

    def __init__(self, model_or_refs: keras.Model | Sequence[LayerRef]):
        refs = iter_layers(model_or_refs) if isinstance(model_or_refs, keras.Model) else list(model_or_refs)
        self._by_name: dict[str, list[LayerRef]] = {}
        nested: dict[str, list[LayerRef]] = {}
        for ref in refs:
            self._by_name.setdefault(ref.path, []).append(ref)
            if ref.layer.name != ref.path:
                nested.setdefault(ref.layer.name, []).append(ref)
        #: ``{bare name: [paths]}`` for bare names that several nested layers share.
        self.ambiguous: dict[str, list[str]] = {}
        for bare, candidates in nested.items():
            if bare in self._by_name:
                continue
            if len({id(ref.layer) for ref in candidates}) == 1:
                self._by_name[bare] = candidates[:1]
            else:
                self.ambiguous[bare] = sorted({ref.path for ref in candidates})

    def select(self, name: str) -> list[LayerRef]:
        """The layers ``name`` selects (empty when none, or when the name is ambiguous)."""
        return list(self._by_name.get(name, ()))

    def names(self) -> list[str]:
        """Every name that selects a layer (for suggestions in error messages)."""
        return list(self._by_name)

    def selects(self, name: str, ref: LayerRef) -> bool:
        """Whether ``name`` selects the layer of ``ref``."""
        return any(candidate.layer is ref.layer for candidate in self._by_name.get(name, ()))


def inbound_layers(layer: keras.layers.Layer, call_index: int = 0) -> list[keras.layers.Layer]:
    """The layers whose outputs feed ``layer`` (in input order) at its ``call_index``-th call.

    A model input shows up as its ``InputLayer``; an input coming from a nested model shows up as that model.
    """
    if not layer._inbound_nodes:
        raise ModelStructureError(f"Layer '{layer.name}' has never been called on a tensor, so it has no inputs.")
    node = layer._inbound_nodes[call_index]
    producers = []
    for tensor in node.input_tensors:
        history = getattr(tensor, "_keras_history", None)
        producers.append(history.operation if history is not None else None)
    return producers


def outbound_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers that consume an output of ``layer`` (each listed once, in call order)."""
    consumers: list[keras.layers.Layer] = []
    for node in layer._outbound_nodes:
        if node.operation not in consumers:
            consumers.append(node.operation)
    return consumers


def match_chain(layer: keras.layers.Layer, classes: Sequence[type | tuple[type, ...]]) -> bool:
    """True when ``layer`` ends a chain whose classes are ``classes``, earliest first.

    Each step back follows the single input of the layer, and every layer but the last must feed only the next one
    (a branch point is not a chain). Example: ``match_chain(relu, [Conv2D, BatchNormalization, ReLU])``.
    """
    if not classes:
        return False
    current = layer
    for position, expected in enumerate(reversed(classes)):
        if current is None or not isinstance(current, expected):
            return False
        if position == len(classes) - 1:
            return True
        producers = inbound_layers(current) if current._inbound_nodes else []
        if len(producers) != 1:
            return False
        previous = producers[0]
        if previous is None or len(outbound_layers(previous)) != 1:
            return False
        current = previous
    return True


class CustomQDQInsertionCase:
    """Base class of a pattern rule: ``case(keras_model, qspec)`` returns the extra placements as a spec.

    Subclasses implement :meth:`case`. They must not modify ``keras_model`` or ``qspec`` (the user's spec, given so a
    case can look at what the user already decided); anything they return is applied below the user's entries.
    """

    def case(self, keras_model: keras.Model, qspec: QuantizationSpec) -> QuantizationSpec:
        raise NotImplementedError(f"{type(self).__name__} must implement case(keras_model, qspec).")

    def info(self) -> str:
        """One line saying what the case does (the first line of the class docstring by default)."""
        doc = (type(self).__doc__ or type(self).__name__).strip()
        return doc.splitlines()[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
