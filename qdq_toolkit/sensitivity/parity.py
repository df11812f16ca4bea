"""``compare_layers``: per-layer parity of a Keras model and its ONNX export, to find where an export goes wrong.

End-to-end agreement says *that* an export differs; this says *where*. The Keras model runs with taps on every
layer's output (one pass); the ONNX file runs in ONNX Runtime with each layer's output tensor added as a graph
output, graph optimizations off (as ONNX Runtime's own ``qdq_loss_debug.collect_activations`` runs it, so the
tensors are those of the file). Both are compared batch by batch, streaming (max |diff| and SQNR accumulate, memory
stays flat).

Mapping a Keras layer to its ONNX tensor: tf2onnx keeps TensorFlow's op names, and Keras 3 names every op of a
layer ``<layer>_1/...`` (``quant_<layer>_1/...`` inside a QDQ wrapper), so the nodes of a layer are those whose
name (or output name) has a path component ``<layer>_<n>``; the layer's output is the last tensor of that group
read outside it. tf2onnx may keep internal tensors NCHW (it moves the Transposes to the graph's edges), so the
layout is matched by shape: NHWC as is, or NCHW (if both fit, the closer one). A layer tf2onnx fused into a
neighbour (e.g. a Conv whose BatchNormalization was folded into it) has no tensor of its own and is listed as not
compared. ONNX Runtime's ``qdq_loss_debug.modify_model_output_intermediate_tensors`` is not used because it
flattens every tensor (the layout could not be matched) and ``collect_activations`` keeps every batch in memory.

A layer *parts* when the SQNR of the ONNX tensor against the Keras output falls below ``min_sqnr_db`` (default
40 dB: a faithful export of a QDQ model agrees to 60+ dB, the occasional int8 rounding flip at a quantizer
included; a real export bug, such as wrong weights or a wrong axis, gives 0-20 dB).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from qdq_toolkit.sensitivity._data import as_batches
from qdq_toolkit.sensitivity.analysis import _bar, _db, _fmt_db, _json_db, _num_batches

DEFAULT_MIN_SQNR_DB = 40.0
_CALL_SUFFIX = re.compile(r"_\d+$")


@dataclass(frozen=True)
class LayerParity:
    """One Keras layer against its ONNX tensor (``onnx_tensor`` None: not compared, ``note`` says why)."""

    layer: str
    onnx_tensor: str | None
    max_abs_diff: float | None
    sqnr_db: float | None
    parted: bool
    note: str = ""

    def as_dict(self) -> dict:
        return {
            "layer": self.layer,
            "onnx_tensor": self.onnx_tensor,
            "max_abs_diff": self.max_abs_diff,
            "sqnr_db": _json_db(self.sqnr_db),
            "exact": self.sqnr_db is not None and math.isinf(self.sqnr_db) and self.sqnr_db > 0,
            "parted": self.parted,
            "note": self.note,
        }


@dataclass(frozen=True)
class ParityReport:
    """Layers in graph order; ``first_parting`` is the first whose SQNR is below ``min_sqnr_db`` (None: none)."""

    layers: tuple[LayerParity, ...]
    min_sqnr_db: float
    num_samples: int
    onnx_path: str

    @property
    def first_parting(self) -> str | None:
        return next((row.layer for row in self.layers if row.parted), None)

    @property
    def compared(self) -> list[LayerParity]:
        return [row for row in self.layers if row.onnx_tensor is not None]

    def as_dict(self) -> dict:
        return {
            "onnx_path": self.onnx_path,
            "min_sqnr_db": self.min_sqnr_db,
            "num_samples": self.num_samples,
            "first_parting": self.first_parting,
            "layers": [row.as_dict() for row in self.layers],
        }

    def _lines(self):
        header = ("layer", "ONNX tensor", "max |diff|", "SQNR (dB)", "")
        rows = [
            (
                row.layer,
                row.onnx_tensor or f"({row.note})",
                "-" if row.max_abs_diff is None else f"{row.max_abs_diff:.3g}",
                _fmt_db(row.sqnr_db),
                "PARTS HERE" if row.layer == self.first_parting else ("parted" if row.parted else ""),
            )
            for row in self.layers
        ]
        return header, rows

    def table(self) -> str:
        header, rows = self._lines()
        widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]
        verdict = (f"first layer that parts (SQNR < {self.min_sqnr_db:g} dB): {self.first_parting}"
                   if self.first_parting else f"every compared layer agrees (SQNR >= {self.min_sqnr_db:g} dB)")
        out = [f"Keras vs ONNX Runtime, {self.num_samples} samples, {len(self.compared)}/{len(self.layers)} layers compared; {verdict}"]
        out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (header, *rows)]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()

    def to_markdown(self) -> str:
        header, rows = self._lines()
        out = [self.table().splitlines()[0], "", "| " + " | ".join(header) + " |", "|:--|:--|--:|--:|:--|"]
        out += ["| " + " | ".join(f"`{c}`" if i < 2 and c and not c.startswith("(") else c for i, c in enumerate(row)) + " |" for row in rows]
        return "\n".join(out) + "\n"

    def write_json(self, path, *, force: bool = False):
        from qdq_toolkit._files import write_atomically

        return write_atomically(path, json.dumps(self.as_dict(), indent=2) + "\n", force=force)


def _owner(names: list[str], layer_names: set[str]) -> str | None:
    for name in names:
        for component in name.split(":")[0].split("/"):
            base = _CALL_SUFFIX.sub("", component)
            if base != component and base in layer_names:
                return base
    return None


def layer_output_tensors(onnx_model, layer_names) -> dict[str, list[str]]:
    """``{Keras layer name: [ONNX tensors]}``: the tensors of each layer's ops that are read outside the layer (or
    are graph outputs), in graph order; the layer's output is the last of them whose shape fits."""
    graph = onnx_model.graph
    names = set(layer_names)
    owner_of = {}
    for position, node in enumerate(graph.node):
        owner = _owner([node.name, *node.output], names)
        if owner is not None:
            owner_of[position] = owner
    consumers: dict[str, list[int]] = {}
    for position, node in enumerate(graph.node):
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(position)
    graph_outputs = {output.name for output in graph.output}
    found: dict[str, list[str]] = {}
    for position, node in enumerate(graph.node):
        owner = owner_of.get(position)
        if owner is None:
            continue
        for tensor in node.output:
            read_outside = any(owner_of.get(c) != owner for c in consumers.get(tensor, []))
            if tensor and (read_outside or tensor in graph_outputs):
                found.setdefault(owner, []).append(tensor)
    return found


_LAYOUTS = {3: (0, 2, 1), 4: (0, 3, 1, 2), 5: (0, 4, 1, 2, 3)}  # channels-last -> channels-first


def _candidates(keras_value: np.ndarray, onnx_shape: tuple[int, ...]) -> list[np.ndarray]:
    """The Keras output as is and moved to channels-first, those of the ONNX tensor's shape."""
    out = [keras_value] if keras_value.shape == onnx_shape else []
    permutation = _LAYOUTS.get(keras_value.ndim)
    if permutation is not None:
        moved = np.transpose(keras_value, permutation)
        if moved.shape == onnx_shape:
            out.append(moved)
    return out


def compare_layers(
    keras_model,
    onnx_path,
    data,
    *,
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
    batch_size: int = 32,
    max_batches: int | None = None,
    progress: bool = True,
) -> ParityReport:
    """Compare every layer's output of ``keras_model`` with the matching tensor of the ONNX file ``onnx_path``.

    Args:
        keras_model: the Keras model that was exported (e.g. the QAT model); top-level layers are compared, a
            nested model as one layer.
        onnx_path: its ONNX export (``keras_to_onnx`` / ``python -m qdq_toolkit.export``).
        data: model inputs: ``x`` or ``(x, y)`` arrays, a ``tf.data.Dataset`` or a list of batches (labels unused).
        min_sqnr_db: a layer parts below this SQNR.
        max_batches: compare on the first batches only.

    Returns:
        A :class:`ParityReport` (``.first_parting``: the first layer in graph order that parts).

    Raises:
        FileNotFoundError / ValueError: the ONNX file is missing or invalid, the model has several inputs, or the
            data is empty.
    """
    import keras
    import onnx
    import onnxruntime as ort

    from qdq_toolkit.export.checks import load_onnx_model
    from qdq_toolkit.sensitivity._taps import LayerTaps

    if not isinstance(keras_model, keras.Model):
        raise TypeError(f"compare_layers expects a keras.Model, got {type(keras_model).__name__}.")
    model_proto = load_onnx_model(onnx_path)
    batches = as_batches(data, batch_size)
    layers = [layer for layer in keras_model.layers if not isinstance(layer, keras.layers.InputLayer)]
    tensors = layer_output_tensors(model_proto, [layer.name for layer in layers])
    inferred = onnx.shape_inference.infer_shapes(model_proto)
    types = {info.name: info.type for info in [*inferred.graph.value_info, *inferred.graph.output]}
    existing = {output.name for output in model_proto.graph.output}
    fetch = list(dict.fromkeys(t for candidates in tensors.values() for t in candidates))
    for tensor in fetch:
        if tensor not in existing:
            info = onnx.ValueInfoProto(name=tensor)
            if tensor in types:
                info.type.CopyFrom(types[tensor])
            model_proto.graph.output.append(info)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    if len(feeds) != 1:
        raise ValueError(f"compare_layers supports single-input models; {onnx_path} has inputs {feeds}.")
    taps = LayerTaps(keras_model, [layer.name for layer in layers if layer.name in tensors], outputs=True)

    sums = {name: [0.0, 0.0, 0.0] for name in tensors}  # signal, noise, max |diff|
    notes: dict[str, str] = {}
    chosen: dict[str, str] = {}
    num_samples = 0
    with _bar(max_batches or _num_batches(batches), "comparing layers", progress) as bar:
        for index, (x, _) in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            if len(x) == 0:
                continue
            _, captured = taps.run(x)
            values = dict(zip(fetch, session.run(fetch, {feeds[0]: np.asarray(x, np.float32)}), strict=True))
            for name, candidates in tensors.items():
                if name in notes:
                    continue
                reference = np.asarray(captured[name][0][1], np.float64)
                for tensor in reversed(candidates):  # the layer's output: the last tensor whose shape fits
                    actual = np.asarray(values[tensor], np.float64)
                    layouts = _candidates(reference, actual.shape)
                    if layouts:
                        break
                if not layouts:
                    notes[name] = f"no tensor of its shape: Keras {reference.shape}, ONNX {actual.shape}"
                    continue
                chosen.setdefault(name, tensor)
                best = min(layouts, key=lambda candidate: float(np.sum((actual - candidate) ** 2)))
                diff = actual - best
                sums[name][0] += float(np.sum(best**2))
                sums[name][1] += float(np.sum(diff**2))
                sums[name][2] = max(sums[name][2], float(np.max(np.abs(diff))) if diff.size else 0.0)
            num_samples += len(x)
            bar.update(1)
    if num_samples == 0:
        raise ValueError("The data is empty: give at least one batch of inputs.")
    rows = []
    for layer in layers:
        tensor = chosen.get(layer.name)
        if layer.name not in tensors:
            rows.append(LayerParity(layer.name, None, None, None, False, "no ONNX tensor of its own: fused by tf2onnx"))
        elif layer.name in notes:
            rows.append(LayerParity(layer.name, None, None, None, False, notes[layer.name]))
        else:
            signal, noise, largest = sums[layer.name]
            sqnr = _db(signal, noise)
            rows.append(LayerParity(layer.name, tensor, largest, sqnr, sqnr < min_sqnr_db))
    return ParityReport(tuple(rows), float(min_sqnr_db), num_samples, str(onnx_path))
