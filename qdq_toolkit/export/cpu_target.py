"""The ONNX Runtime CPU target: rewrite the TensorRT-target QDQ graph into the one ONNX Runtime runs in integer.

The TensorRT target quantizes the *inputs* of compute layers only (symmetric int8, zero point 0). ONNX Runtime's
CPU execution provider turns a QDQ group into an integer kernel only when the whole group is quantized; read in
``onnxruntime/core/optimizer/qdq_transformer/selectors_actions/qdq_selectors.cc`` (``ConvNodeGroupSelector``,
``MatMulNodeGroupSelector``, ``BinaryNodeGroupSelector``, ``UnaryNodeGroupSelector``,
``DropQDQNodeGroupSelector``, ``NodeGroupSelector::GetQDQSelection``), ``shared/utils.cc`` (which op takes which
selector), ``qdq_s8_to_u8.cc`` and ``qdq_util.cc`` (``IsQDQPairSupported``, ``IsClipMadeRedundantByQ``):

* ``Conv -> QLinearConv``: every input from a DequantizeLinear (so the bias too, as int32), and a
  QuantizeLinear as the Conv's only consumer (``CheckQDQNodes``: as many Q as outputs, no graph output);
  input and output of the same type; int8 activations are refused on x86 (``int8_allowed_`` is false there),
  so activations are uint8 and weights int8;
* a ``Relu``/``Clip`` between the compute op and its Q is dropped when the Q makes it redundant
  (``IsClipMadeRedundantByQ``: for Relu, the Q's zero point is the type's minimum, i.e. 0 for uint8);
* ``Add``/``Mul`` -> ``QLinearAdd``/``QLinearMul``: DQ on *both* inputs and a Q on the output;
  ``GlobalAveragePool``/``AveragePool`` -> ``QLinear...Pool``: DQ in, Q out;
* ``MatMul`` with DQ inputs and no Q -> ``MatMulIntegerToFloat`` (float output), with a Q -> ``QLinearMatMul``;
* ``MaxPool``, ``Reshape``, ``Transpose``, ``Squeeze``, ``Flatten``, ... between a DQ and a Q of equal scale and
  zero point run on the integers (the pair is dropped);
* the s8 -> u8 rewrite (``qdq_s8_to_u8.cc``) only fires for a Q with a single consumer, so we write uint8
  activations ourselves rather than rely on it.

ONNX Runtime's own ``quantize_static`` (``onnxruntime/python/tools/quantization/qdq_quantizer.py``,
``registry.py``) places Q/DQ the same way: on every input *and* output of each quantizable op, uint8
activations, int8 per-channel weights, int32 bias with scale ``x_scale * w_scale``. What ONNX Runtime needs is
declared once, as data, in :data:`ORT_CPU`; :func:`to_cpu_target` only reads that table.

The rewrite, on the TensorRT-target ONNX the toolkit already writes (so the trained ranges are reused exactly):

1. the BatchNorm ``Mul``/``Add`` after each convolution is folded into it (:mod:`.fold_batchnorm`, exact);
2. the activation Q/DQ pairs are removed and their ranges (``amax = 127 * scale``) remembered per tensor; the
   weights become ``DequantizeLinear(int8 initializer)``, the int8 values the TensorRT graph computes;
3. the tensors to quantize are chosen from :data:`ORT_CPU`: the activation inputs and the outputs of the
   integer ops (through a Relu/Clip the Q makes redundant), closed over the ops that keep the integers
   (MaxPool, shape ops, zero Pad), which share one range;
4. each such tensor keeps the trained range when the TensorRT graph quantized it (or a tensor that differs from
   it only by MaxPool/shape ops: the same values, the same range); the others -- a convolution's output before a
   residual Add, a pooling output the TensorRT graph never needed -- take a range from a calibration pass over
   ``calibration_data``, run in ONNX Runtime on the TensorRT-target graph (the trained fake-quantized
   arithmetic) with the tensors as extra outputs, through :mod:`qdq_toolkit.calibration`'s collectors
   (``max`` by default, as ``quantize_static``'s MinMax);
5. each chosen tensor gets one ``QuantizeLinear -> DequantizeLinear`` (uint8), convolution biases become
   int32 ``DequantizeLinear``; a zero ``Pad`` before a Conv (also through a layout Transpose) or before a
   MaxPool of a non-negative tensor moves into its ``pads`` and a Dense
   (``MatMul -> Add(bias)``) on a rank-2 input becomes a ``Gemm`` with an int32 bias (QGemm), since ONNX Runtime's
   own MatMul+Add fusion would otherwise leave a float bias its Gemm selector refuses.

Where the CPU graph is not exactly the trained arithmetic (measured by ``bench/cpu_target.py`` and the tests):

* a non-negative tensor (after a ReLU) is uint8 with zero point 0 and scale ``amax / 255``: the trained clipping
  at ``amax`` is kept exactly, but the grid is twice as fine as the trained int8 grid (``amax / 127``), so
  values move by up to a quarter of a trained step. A tensor of either sign is uint8 with zero point 128 and the
  trained scale ``amax / 127``: exactly the trained grid, plus one extra level at ``-128 * scale``;
* when the TensorRT graph quantized one tensor twice with different ranges (a block output read by the next
  convolution and by the residual Add), the CPU graph has one Q (ONNX Runtime drops the ReLU only for a single
  Q), with the larger range: the other consumer sees a coarser grid (no clipping) than it was trained with;
* tensors that were float in training (a convolution's output before a residual Add, the Add's output) are
  now rounded to uint8 with a calibrated range: new rounding that QAT never saw;
* the int32 bias is ``rint(bias / (x_scale * w_scale))``: an error of at most half a unit of the accumulator;
* ONNX Runtime's integer kernels requantize with a float multiplier and round half to even; results can differ
  from ``DequantizeLinear -> float op -> QuantizeLinear`` by one level.

Measured effect (BENCHMARKS.md, "ONNX Runtime CPU target", 2026-12-01): the digits ResNet50 of ``make demo``
agrees with its Keras QAT model on 99.56 % of the test images (the TensorRT-target ONNX: 100 %) at the same
accuracy (97.33 %); the digits CNN of ``examples/digits_qat.py`` on 100 %; ``tests/test_cpu_target.py`` asserts
>= 99 % and <= 0.5 pp on a residual digits CNN.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdq_toolkit.calibration import make_collector
from qdq_toolkit.export.fold_batchnorm import fold_batchnorm
from qdq_toolkit.export.graph_index import GraphIndex, attribute, constant_array
from qdq_toolkit.tensorrt_rules import SHAPE_ONLY_OPS

__all__ = [
    "ORT_CPU",
    "INTEGER_KERNELS",
    "CalibrationDataError",
    "MissingRangesError",
    "OrtCpuRules",
    "check_calibration_data",
    "count_integer_kernels",
    "to_cpu_target",
]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class OrtCpuRules:
    """What ONNX Runtime's CPU execution provider needs to run a QDQ group as an integer kernel."""

    #: compute ops with an int8 weight: quantized when their weight comes from a DequantizeLinear
    weighted_ops: tuple[str, ...]
    #: ops whose output must carry a Q to become an integer kernel (QLinearConv, QLinearAdd, ...)
    quantized_output_ops: frozenset[str]
    #: ops that run on integers with a float output when no Q follows (MatMul -> MatMulIntegerToFloat)
    float_output_ops: frozenset[str]
    #: activation-input positions each integer op reads quantized (None: every non-constant input)
    quantized_inputs: Mapping[str, tuple[int, ...] | None]
    #: ops that keep the integers (DQ -> op -> Q with equal parameters): input and output share one range
    range_preserving_ops: frozenset[str]
    #: activations ONNX Runtime drops when the Q after them makes them redundant (zero point = uint8 minimum)
    absorbed_activations: frozenset[str]
    #: the activation type: uint8 (x86 refuses int8 activations, qdq_selectors.cc ``int8_allowed_``)
    activation_dtype: type = np.uint8


ORT_CPU = OrtCpuRules(
    weighted_ops=("Conv", "MatMul", "Gemm"),
    quantized_output_ops=frozenset({"Conv", "Add", "Mul", "GlobalAveragePool", "AveragePool", "Concat"}),
    float_output_ops=frozenset({"MatMul", "Gemm"}),
    quantized_inputs={
        "Conv": (0,),
        "MatMul": (0,),
        "Gemm": (0,),
        "Add": None,
        "Mul": None,
        "GlobalAveragePool": (0,),
        "AveragePool": (0,),
        "Concat": None,
    },
    # data movement (the same set a per-tensor Q/DQ commutes with for TensorRT), max pooling and zero padding
    range_preserving_ops=SHAPE_ONLY_OPS | {"MaxPool", "Pad"},
    absorbed_activations=frozenset({"Relu", "Clip"}),
)

#: Integer kernels in the graph ONNX Runtime optimizes (counted by :func:`count_integer_kernels`).
INTEGER_KERNELS: frozenset[str] = frozenset(
    {"QLinearConv", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QGemm", "ConvInteger",
     "DynamicQuantizeMatMul", "NhwcQLinearConv"}
)
_FLOAT_COMPUTE = frozenset({"Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm"})

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
_U8_MAX = 255
_S8_MAX = 127
_SIGNED_ZERO_POINT = 128


class MissingRangesError(ValueError):
    """Some tensors the CPU graph must quantize have no trained range and no calibration data was given."""


class CalibrationDataError(ValueError):
    """The calibration data does not match the model's inputs (names, shapes, dtypes)."""


# ------------------------------------------------------------------------------------------ calibration data
def _input_specs(model: onnx.ModelProto) -> dict[str, tuple[tuple[int | None, ...], int]]:
    initializers = {init.name for init in model.graph.initializer}
    specs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
        specs[value.name] = (dims, tensor_type.elem_type)
    return specs


def _describe(dims, elem_type) -> str:
    shape = "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"
    return f"{shape} {helper.tensor_dtype_to_np_dtype(elem_type).name}"


def check_calibration_data(model: onnx.ModelProto, data) -> dict[str, np.ndarray]:
    """``data`` (one array for a single-input model, or ``{input name: array}``) checked against the model's
    inputs: the names, the rank and fixed dimensions, the dtype, and equal sample counts.

    Raises:
        CalibrationDataError: naming what was expected.
    """
    specs = _input_specs(model)
    expected = "; ".join(f"'{name}' {_describe(*spec)}" for name, spec in specs.items())
    if isinstance(data, Mapping):
        arrays = dict(data)
    elif len(specs) == 1:
        arrays = {next(iter(specs)): data}
    else:
        raise CalibrationDataError(
            f"the model has {len(specs)} inputs, so calibration data must map each input name to an array (an "
            f".npz file with one array per input name): {expected}"
        )
    unknown = sorted(set(arrays) - set(specs))
    missing = sorted(set(specs) - set(arrays))
    if unknown or missing:
        raise CalibrationDataError(
            f"calibration data has arrays {sorted(arrays)} but the model's inputs are {expected}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            + (f" (missing: {', '.join(missing)})" if missing else "")
        )
    checked = {}
    counts = set()
    for name, (dims, elem_type) in specs.items():
        array = np.asarray(arrays[name])
        want = helper.tensor_dtype_to_np_dtype(elem_type)
        if array.dtype != want:
            raise CalibrationDataError(
                f"calibration array '{name}' has dtype {array.dtype}, the model input wants {_describe(dims, elem_type)}"
                f" (convert with array.astype(np.{want.name}))"
            )
        fits = array.ndim == len(dims) and all(d is None or d == s for d, s in zip(dims, array.shape, strict=True))
        if not fits or array.shape[0] == 0:
            raise CalibrationDataError(
                f"calibration array '{name}' has shape {array.shape}, the model input wants {_describe(dims, elem_type)}"
                " (N >= 1 samples)"
            )
        counts.add(array.shape[0])
        checked[name] = array
    if len(counts) > 1:
        raise CalibrationDataError(f"calibration arrays have different sample counts: {sorted(counts)}")
    return checked


# ----------------------------------------------------------------------------------------------- graph index
class _Index(GraphIndex):
    """The shared :class:`~qdq_toolkit.export.graph_index.GraphIndex`, with the two questions this rewrite asks."""

    def __init__(self, graph: onnx.GraphProto):
        super().__init__(graph)
        self.graph = graph
        self.made_by = self.producer

    def constant_value(self, name: str) -> np.ndarray | None:
        return constant_array(name, self.initializers, self.made_by)

    def is_activation(self, name: str) -> bool:
        if not name or name in self.initializers:
            return False
        producer = self.made_by.get(name)
        return producer is None or producer.op_type != "Constant"


def _is_per_tensor_activation(node: onnx.NodeProto, index: _Index) -> bool:
    scale = index.constant_value(node.input[1])
    return scale is not None and scale.size == 1 and index.is_activation(node.input[0])


def _strip_activation_qdq(graph: onnx.GraphProto) -> dict[str, float]:
    """Remove every per-tensor activation Q -> DQ pair; return ``{tensor: amax}`` (the largest, if several)."""
    index = _Index(graph)
    trained: dict[str, float] = {}
    rename: dict[str, str] = {}
    drop = []
    for q in graph.node:
        if q.op_type != _Q or not _is_per_tensor_activation(q, index):
            continue
        users = index.consumers.get(q.output[0], [])
        if not users or any(user.op_type != _DQ for user in users) or q.output[0] in index.graph_outputs:
            continue
        amax = float(index.constant_value(q.input[1]).reshape(())) * _S8_MAX
        trained[q.input[0]] = max(trained.get(q.input[0], 0.0), amax)
        drop.append(q)
        for dq in users:
            rename[dq.output[0]] = q.input[0]
            drop.append(dq)
    for node in drop:
        graph.node.remove(node)
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
    for output in graph.output:
        if output.name in rename:  # a DQ output that was a graph output: keep the name with an Identity
            graph.node.append(helper.make_node("Identity", [rename[output.name]], [output.name]))
    return trained


def _weights_to_int8(graph: onnx.GraphProto) -> None:
    """``DQ(Q(float initializer))`` weights become ``DQ(int8 initializer)`` with the values Q computes."""
    index = _Index(graph)
    for q in list(graph.node):
        if q.op_type != _Q or q.input[0] not in index.initializers:
            continue
        users = index.consumers.get(q.output[0], [])
        if not users or any(user.op_type != _DQ for user in users):
            continue
        weight = numpy_helper.to_array(index.initializers[q.input[0]]).astype(np.float32)
        scale = index.constant_value(q.input[1])
        zero_point = index.constant_value(q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
        if scale is None or zero_point is None:
            continue
        axis = int(attribute(q, "axis", 1))
        shape = [1] * weight.ndim
        if scale.size > 1:
            shape[axis % weight.ndim] = scale.size
        info = np.iinfo(zero_point.dtype)
        values = np.rint(weight / scale.reshape(shape)) + zero_point.reshape(shape).astype(np.int32)
        quantized = np.clip(values, info.min, info.max).astype(zero_point.dtype)
        name = f"{q.output[0]}__int8"
        graph.initializer.append(numpy_helper.from_array(quantized, name))
        for dq in users:
            dq.input[0] = name
        graph.node.remove(q)


# --------------------------------------------------------------------------------------- choosing the tensors
def _weight_dq(node: onnx.NodeProto, index: _Index) -> bool:
    """The compute op's weight (input 1) comes from a DequantizeLinear of a constant."""
    if len(node.input) < 2:
        return False
    producer = index.made_by.get(node.input[1])
    return producer is not None and producer.op_type == _DQ and producer.input[0] in index.initializers


def _is_integer_op(node: onnx.NodeProto, index: _Index, rules: OrtCpuRules) -> bool:
    if node.op_type in rules.weighted_ops:
        return _weight_dq(node, index)
    if node.op_type not in rules.quantized_inputs:
        return False
    activations = [name for name in node.input if index.is_activation(name)]
    return len(activations) == len(node.input)  # Add/Mul/Concat of activations only (no constant operand)


def _absorbing(name: str, index: _Index, rules: OrtCpuRules) -> onnx.NodeProto | None:
    """The Relu/Clip(min 0) that is the only consumer of ``name``, when the Q after it can make it redundant."""
    users = index.consumers.get(name, [])
    if len(users) != 1 or name in index.graph_outputs:
        return None
    user = users[0]
    if user.op_type not in rules.absorbed_activations or user.input[0] != name:
        return None
    if user.op_type == "Clip":
        low = index.constant_value(user.input[1]) if len(user.input) > 1 and user.input[1] else None
        if low is None or float(low.reshape(())) != 0.0:
            return None
    return user


def _is_zero_pad(node: onnx.NodeProto, index: _Index) -> bool:
    mode = attribute(node, "mode", b"constant")
    if mode not in (b"constant", "constant"):
        return False
    if len(node.input) > 2 and node.input[2]:
        value = index.constant_value(node.input[2])
        return value is not None and float(value.reshape(())) == 0.0
    return True


def _choose_tensors(graph: onnx.GraphProto, rules: OrtCpuRules):
    """``(tensors to quantize, {tensor: class id}, tensors known to be >= 0)``."""
    index = _Index(graph)
    chosen: set[str] = set()
    for node in graph.node:
        if not _is_integer_op(node, index, rules):
            continue
        positions = rules.quantized_inputs.get(node.op_type)
        for position, name in enumerate(node.input):
            if (positions is None or position in positions) and index.is_activation(name):
                chosen.add(name)
        if node.op_type in rules.quantized_output_ops or any(
            _is_integer_op(user, index, rules) for user in index.consumers.get(node.output[0], [])
        ):
            output = node.output[0]
            absorbing = _absorbing(output, index, rules)
            chosen.add(absorbing.output[0] if absorbing is not None else output)
    # one range per group of tensors linked by ops that keep the integers
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    def preserving(node: onnx.NodeProto) -> bool:
        return node.op_type in rules.range_preserving_ops and (node.op_type != "Pad" or _is_zero_pad(node, index))

    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if not preserving(node) or not index.is_activation(node.input[0]):
                continue
            source, result = node.input[0], node.output[0]
            if source in chosen or result in chosen:
                if not (source in chosen and result in chosen):
                    chosen.update((source, result))
                    changed = True
                root_a, root_b = find(source), find(result)
                if root_a != root_b:
                    parent[root_b] = root_a
    # a tensor both read by a Relu-absorbing Q and by the op before the Relu is never chosen twice: drop the
    # pre-Relu tensor if its Relu output is chosen and the Relu is its only consumer
    for name in list(chosen):
        absorbing = _absorbing(name, index, rules)
        if absorbing is not None and absorbing.output[0] in chosen:
            chosen.discard(name)
    groups = {name: find(name) for name in chosen}
    non_negative = _non_negative_tensors(graph, index, rules)
    return chosen, groups, non_negative


def _non_negative_tensors(graph, index: _Index, rules: OrtCpuRules) -> set[str]:
    """Tensors that are >= 0 by construction: Relu / Clip(min >= 0) outputs and what pools and shape ops make
    of them."""
    known: set[str] = set()
    for node in graph.node:  # topological order
        if node.op_type == "Relu":
            known.add(node.output[0])
        elif node.op_type == "Clip" and len(node.input) > 1 and node.input[1]:
            low = index.constant_value(node.input[1])
            if low is not None and float(low.reshape(())) >= 0:
                known.add(node.output[0])
        elif node.op_type in rules.range_preserving_ops | {"GlobalAveragePool", "AveragePool", "Concat", "Add"}:
            activations = [name for name in node.input if index.is_activation(name)]
            if activations and all(name in known for name in activations):
                if node.op_type != "Pad" or _is_zero_pad(node, index):
                    known.add(node.output[0])
    return known


# -------------------------------------------------------------------------------------------------- ranges
def _calibrate(trt_model: onnx.ModelProto, tensors: list[str], data: dict[str, np.ndarray], method: str,
               batch_size: int, progress: Progress | None) -> dict[str, tuple[float, float]]:
    """``{tensor: (amax, min)}`` from running the TensorRT-target graph in ONNX Runtime on ``data``."""
    import onnxruntime as ort

    model = copy.deepcopy(trt_model)
    existing = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    collectors = {name: make_collector(method) for name in tensors}
    minimum = dict.fromkeys(tensors, np.inf)
    count = next(iter(data.values())).shape[0]
    for start in range(0, count, batch_size):
        if progress is not None:
            progress(f"calibrating {len(tensors)} range(s): samples {start}-{min(start + batch_size, count)} of {count}")
        feeds = {name: array[start : start + batch_size] for name, array in data.items()}
        for name, value in zip(tensors, session.run(tensors, feeds), strict=True):
            collectors[name].update(value)
            minimum[name] = min(minimum[name], float(np.min(value)))
    return {name: (collectors[name].compute_amax(), minimum[name]) for name in tensors}


# ------------------------------------------------------------------------------------------- the rewrite
def to_cpu_target(
    trt_model: onnx.ModelProto,
    calibration_data=None,
    *,
    calibration_method: str = "max",
    batch_size: int = 32,
    rules: OrtCpuRules = ORT_CPU,
    progress: Progress | None = None,
) -> onnx.ModelProto:
    """The QDQ graph ONNX Runtime's CPU EP runs as integer kernels, from the TensorRT-target graph ``trt_model``.

    Args:
        trt_model: the QDQ ONNX the toolkit writes for TensorRT (not modified).
        calibration_data: one float array (single-input model) or ``{input name: array}``; needed only when some
            tensor the CPU graph quantizes has no trained range (a convolution's output before a residual Add).
        calibration_method: a :data:`qdq_toolkit.calibration.CALIBRATION_METHODS` name for those ranges.
        batch_size: samples per ONNX Runtime run during calibration.

    Raises:
        MissingRangesError: ranges are missing and ``calibration_data`` is None (names the tensors).
        CalibrationDataError: ``calibration_data`` does not fit the model's inputs.
    """
    data = None if calibration_data is None else check_calibration_data(trt_model, calibration_data)
    model = copy.deepcopy(trt_model)
    graph = model.graph
    fold_batchnorm(model)
    trained = _strip_activation_qdq(graph)
    _weights_to_int8(graph)
    _drop_unused(graph)
    _fold_zero_pads(graph, rules)
    _dense_to_gemm(model)
    chosen, groups, non_negative = _choose_tensors(graph, rules)
    group_amax: dict[str, float] = {}
    for name, group in groups.items():
        if name in trained:
            group_amax[group] = max(group_amax.get(group, 0.0), trained[name])
    missing_groups = sorted({group for group in groups.values() if group not in group_amax})
    group_minimum: dict[str, float] = {}
    if missing_groups:
        if data is None:
            shown = ", ".join(missing_groups[:6]) + (f" and {len(missing_groups) - 6} more" if len(missing_groups) > 6 else "")
            raise MissingRangesError(
                f"{len(missing_groups)} tensor(s) the ONNX Runtime CPU graph quantizes have no trained range: {shown}. "
                "Give representative inputs with calibration_data= (command line: --calibration-data FILE, a .npy "
                "array for a single-input model or an .npz with one array per input name)."
            )
        calibrated = _calibrate(trt_model, missing_groups, data, calibration_method, batch_size, progress)
        for group, (amax, minimum) in calibrated.items():
            group_amax[group] = amax
            group_minimum[group] = minimum
    group_non_negative = {}
    for name, group in groups.items():
        known = name in non_negative or group_minimum.get(group, -1.0) >= 0
        group_non_negative[group] = group_non_negative.get(group, False) or known
    params = {}
    for name in chosen:
        group = groups[name]
        amax = max(group_amax[group], 2.0**-24)
        if group_non_negative[group]:
            params[name] = (np.float32(amax / _U8_MAX), np.uint8(0))
        else:
            params[name] = (np.float32(amax / _S8_MAX), np.uint8(_SIGNED_ZERO_POINT))
    _insert_qdq(graph, params)
    _quantize_biases(graph, params, rules)
    _drop_unused(graph)
    _sort(graph)
    model.producer_name = "qdq_toolkit"
    onnx.checker.check_model(model)
    return model


def _fold_zero_pads(graph: onnx.GraphProto, rules: OrtCpuRules) -> None:
    """Zero ``Pad`` nodes of the spatial axes move into the op after them, where the result is the same exactly:

    * ``Pad -> Conv`` and ``Pad -> Transpose -> Conv`` (tf2onnx pads ResNet50's stem in NHWC, before the layout
      Transpose): the Conv pads with zeros too, and QLinearConv with the zero point, the integer for 0;
      Keras' ``ZeroPadding2D`` before a strided convolution (ResNet50's stem, MobileNetV2) then costs nothing;
    * ``Pad -> MaxPool`` on a non-negative tensor (after a ReLU; ResNet50's ``pool1_pad``): MaxPool pads with
      -inf and ONNX Runtime's pooling skips the padding, so a window's max is that of its real elements, which
      is the max with the zeros since every element is >= 0 -- as long as every window holds a real element
      (each pad smaller than the kernel, no ``ceil_mode``). On uint8 with zero point 0 it is exact too: the
      zero pad is the type's minimum.

    Otherwise the Pad stays a float op between a DequantizeLinear and a QuantizeLinear (ONNX Runtime 1.32's
    QDQ selectors do not drop a Q/DQ pair around a Pad): a dequantize, a pad and a quantize each. ResNet50's
    optimized CPU graph then has no float op left but the input's Q, the layout Transpose and the Softmax. A
    one-channel input keeps its stem Pad: tf2onnx writes a Reshape there instead of the Transpose."""
    index = _Index(graph)
    non_negative = _non_negative_tensors(graph, index, rules)
    for pad in list(graph.node):
        if pad.op_type != "Pad" or pad.output[0] in index.graph_outputs or not _is_zero_pad(pad, index):
            continue
        amounts = index.constant_value(pad.input[1]) if len(pad.input) > 1 else None
        if amounts is None or (len(pad.input) > 3 and pad.input[3]):
            continue  # computed pads, or explicit axes (opset 18): not handled
        amounts = amounts.astype(np.int64).reshape(-1)
        rank = amounts.size // 2
        if rank < 3 or np.any(amounts < 0):
            continue
        begin, end = amounts[:rank], amounts[rank:]
        users = index.consumers.get(pad.output[0], [])
        if len(users) != 1 or users[0].input[0] != pad.output[0]:
            continue
        target, perm = users[0], list(range(rank))
        if target.op_type == "Transpose":
            after = index.consumers.get(target.output[0], [])
            if len(after) != 1 or after[0].op_type != "Conv" or target.output[0] in index.graph_outputs:
                continue
            perm = list(attribute(target, "perm", perm[::-1]))
            target = after[0]
        begin, end = begin[perm], end[perm]  # in the layout of the op that absorbs them
        if target.op_type not in ("Conv", "MaxPool") or begin[:2].any() or end[:2].any():
            continue
        if attribute(target, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        spatial = rank - 2
        if target.op_type == "MaxPool":
            kernel = list(attribute(target, "kernel_shape", []))
            dilations = list(attribute(target, "dilations", [1] * spatial))
            if (
                pad.input[0] not in non_negative
                or attribute(target, "ceil_mode", 0)
                or len(kernel) != spatial
                or any(d != 1 for d in dilations)
                or any(int(max(begin[2 + i], end[2 + i])) >= kernel[i] for i in range(spatial))
            ):
                continue
        current = list(attribute(target, "pads", [0] * 2 * spatial))
        merged = [int(current[i] + begin[2 + i]) for i in range(spatial)] + [
            int(current[spatial + i] + end[2 + i]) for i in range(spatial)
        ]
        for attr in list(target.attribute):
            if attr.name == "pads":
                target.attribute.remove(attr)
        target.attribute.append(helper.make_attribute("pads", merged))
        users[0].input[0] = pad.input[0]
        graph.node.remove(pad)


def _dense_to_gemm(model: onnx.ModelProto) -> None:
    """``MatMul(A, DQ(W)) -> Add(bias)`` with a rank-2 ``A`` becomes ``Gemm(A, DQ(W), bias)``.

    Otherwise ONNX Runtime's own MatMul+Add fusion makes a Gemm whose float bias has no DQ, which its Gemm
    selector then refuses; a Gemm with an int32 DQ bias and no Q after it becomes QGemm with a float output."""
    graph = model.graph
    ranks = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    index = _Index(graph)
    for matmul in list(graph.node):
        if matmul.op_type != "MatMul" or not _weight_dq(matmul, index) or ranks.get(matmul.input[0]) != 2:
            continue
        weight = numpy_helper.to_array(index.initializers[index.made_by[matmul.input[1]].input[0]])
        users = index.consumers.get(matmul.output[0], [])
        if weight.ndim != 2 or len(users) != 1 or users[0].op_type != "Add" or matmul.output[0] in index.graph_outputs:
            continue
        add = users[0]
        other = [name for name in add.input if name != matmul.output[0]]
        bias = index.constant_value(other[0]) if len(other) == 1 else None
        if bias is None or bias.size != weight.shape[1] or bias.ndim > 1 or other[0] not in index.initializers:
            continue
        matmul.op_type = "Gemm"
        matmul.input.append(other[0])
        matmul.output[0] = add.output[0]
        graph.node.remove(add)


def _insert_qdq(graph: onnx.GraphProto, params: dict[str, tuple[np.float32, np.uint8]]) -> None:
    """One ``Q -> DQ`` per chosen tensor: the DQ writes the tensor's own name, so consumers are untouched."""
    inputs = {i.name for i in graph.input}
    producers = {out: node for node in graph.node for out in node.output}
    for name in sorted(params):
        scale, zero_point = params[name]
        safe = name.replace(":", "_").replace("/", "_")
        scale_name, zp_name = f"{safe}__cpu_scale", f"{safe}__cpu_zero_point"
        graph.initializer.extend(
            [numpy_helper.from_array(np.array(scale, np.float32), scale_name),
             numpy_helper.from_array(np.array(zero_point, np.uint8), zp_name)]
        )
        if name in inputs:
            source, target = name, f"{safe}__cpu_dq"
            for node in graph.node:
                node.input[:] = [target if n == name else n for n in node.input]
        else:
            source, target = f"{safe}__float", name
            producer = producers[name]
            producer.output[:] = [source if n == name else n for n in producer.output]
        graph.node.append(helper.make_node(_Q, [source, scale_name, zp_name], [f"{safe}__cpu_q"], name=f"{safe}__cpu_Q"))
        graph.node.append(helper.make_node(_DQ, [f"{safe}__cpu_q", scale_name, zp_name], [target], name=f"{safe}__cpu_DQ"))


def _quantize_biases(graph: onnx.GraphProto, params, rules: OrtCpuRules) -> None:
    """A float Conv/Gemm bias becomes ``DQ(int32)`` with scale ``x_scale * w_scale`` (ONNX Runtime's selector
    wants every Conv input from a DQ)."""
    index = _Index(graph)
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in index.initializers:
            continue
        x_dq = index.made_by.get(node.input[0])
        w_dq = index.made_by.get(node.input[1])
        if x_dq is None or w_dq is None or x_dq.op_type != _DQ or w_dq.op_type != _DQ:
            continue
        x_scale = float(index.constant_value(x_dq.input[1]).reshape(()))
        w_scale = index.constant_value(w_dq.input[1]).astype(np.float64).reshape(-1)
        bias = numpy_helper.to_array(index.initializers[node.input[2]]).astype(np.float64)
        scale = (x_scale * w_scale).astype(np.float32)
        scale = np.broadcast_to(scale, bias.shape) if scale.size == 1 else scale
        values = np.clip(np.rint(bias / scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        safe = node.input[2].replace(":", "_").replace("/", "_")
        names = (f"{safe}__int32", f"{safe}__int32_scale", f"{safe}__int32_zero_point")
        graph.initializer.extend(
            [numpy_helper.from_array(values, names[0]),
             numpy_helper.from_array(np.ascontiguousarray(scale, np.float32), names[1]),
             numpy_helper.from_array(np.zeros(bias.shape, np.int32), names[2])]
        )
        graph.node.append(
            helper.make_node(_DQ, list(names), [f"{safe}__dq"], name=f"{safe}__DQ", axis=0)
        )
        node.input[2] = f"{safe}__dq"


def _drop_unused(graph: onnx.GraphProto) -> None:
    changed = True
    while changed:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        changed = bool(dead)
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _sort(graph: onnx.GraphProto) -> None:
    from qdq_toolkit.export.onnx import topological_sort

    topological_sort(graph)


# --------------------------------------------------------------------------------------------- measurement
def count_integer_kernels(model: onnx.ModelProto, *, threads: int = 2, optimized_path: str | None = None) -> dict:
    """Let ONNX Runtime optimize ``model`` (``SessionOptions.optimized_model_filepath``) and count in the model it
    writes the integer kernels and the float Conv/MatMul/Gemm left. ``quantized`` is the number of Conv/MatMul/Gemm
    of ``model`` whose weight is quantized; ``share`` = integer kernels / quantized."""
    import os
    import tempfile

    import onnxruntime as ort

    index = _Index(model.graph)
    quantized = sum(
        1 for node in model.graph.node if node.op_type in ORT_CPU.weighted_ops and _weight_dq(node, index)
    )
    with tempfile.TemporaryDirectory() as directory:
        path = optimized_path or os.path.join(directory, "optimized.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = path
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(path)
    ops = [node.op_type for node in optimized.graph.node]
    integer = sum(op in INTEGER_KERNELS for op in ops)
    float_left = sum(op in _FLOAT_COMPUTE for op in ops)
    return {
        "quantized": quantized,
        "integer_kernels": integer,
        "float_compute_left": float_left,
        "share": integer / quantized if quantized else 0.0,
        "op_counts": {op: ops.count(op) for op in sorted(set(ops))},
    }
