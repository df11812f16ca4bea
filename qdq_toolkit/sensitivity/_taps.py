"""Taps on a Keras model: the inputs and outputs of chosen layers, from one forward pass.

A Functional (or Sequential) model's graph already names every layer's input and output tensors, so one model
built from the same inputs to those tensors (``keras.Model(model.inputs, [...])``) returns them all from one
forward pass, with the model's own weights and without changing the model. Layers inside a nested model are
tapped by a second set of taps on the nested model, fed with the nested model's inputs (so the nested part is
computed twice; a flat model is computed once).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from qdq_toolkit.cases import graph_of


@dataclass(frozen=True)
class Tap:
    """One call of a layer: where its inputs and output sit in the flat list the probe returns."""

    path: str
    layer: keras.layers.Layer
    inputs: tuple[int, ...]
    output: int | None


def _flatten(values) -> list:
    if isinstance(values, (list, tuple)):
        return [item for value in values for item in _flatten(value)]
    if isinstance(values, dict):
        return [item for value in values.values() for item in _flatten(value)]
    return [values]


class LayerTaps:
    """Inputs (and outputs) of every call of the layers named by ``paths`` (paths as :func:`iter_layers` gives;
    a nested model's own name taps its output as one layer).

    ``run(x)`` returns ``(model_outputs, {path: [(inputs, output), ...]})``, one entry per call of the layer.
    """

    def __init__(self, model: keras.Model, paths, *, outputs: bool = True, prefix: str = ""):
        wanted = set(paths)
        graph = graph_of(model)
        graph_nodes = {node for nodes in graph._nodes_by_depth.values() for node in nodes}
        tensors: list = list(_flatten(graph.outputs))
        self._num_outputs = len(tensors)
        self.taps: list[Tap] = []
        self._children: list[tuple[LayerTaps, tuple[int, ...]]] = []
        seen: set[int] = set()

        def index_of(tensor) -> int:
            tensors.append(tensor)
            return len(tensors) - 1

        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer) or id(layer) in seen:
                continue
            seen.add(id(layer))
            path = f"{prefix}{layer.name}"
            nodes = [node for node in layer._inbound_nodes if node in graph_nodes]
            if isinstance(layer, keras.Model):
                inner = {p for p in wanted if p.startswith(path + "/")}
                if inner:
                    child = LayerTaps(layer, inner, outputs=outputs, prefix=path + "/")
                    for node in nodes:
                        self._children.append((child, tuple(index_of(t) for t in _flatten(node.input_tensors))))
                # a nested model named itself is tapped as one layer, below
            if path not in wanted:
                continue
            for node in nodes:
                inputs = tuple(index_of(t) for t in _flatten(node.input_tensors))
                output = index_of(_flatten(node.output_tensors)[0]) if outputs else None
                self.taps.append(Tap(path, layer, inputs, output))
        inputs = graph.inputs[0] if len(graph.inputs) == 1 else graph.inputs
        self._probe = keras.Model(inputs, tensors, name=f"{model.name}_taps")

    def paths(self) -> list[str]:
        found = [tap.path for tap in self.taps]
        for child, _ in self._children:
            found += child.paths()
        return list(dict.fromkeys(found))

    def run(self, x, captured: dict | None = None):
        values = _flatten(self._probe(x, training=False))
        captured = {} if captured is None else captured
        for tap in self.taps:
            inputs = [values[i] for i in tap.inputs]
            output = values[tap.output] if tap.output is not None else None
            captured.setdefault(tap.path, []).append((inputs, output))
        for child, indices in self._children:
            inner = [values[i] for i in indices]
            child.run(inner[0] if len(inner) == 1 else inner, captured)
        return values[: self._num_outputs], captured
