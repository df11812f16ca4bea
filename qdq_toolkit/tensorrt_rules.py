"""TensorRT's explicit-quantization (Q/DQ) rules, declared once as data.

Every side of the toolkit reads this table: the ONNX export passes (:mod:`qdq_toolkit.export.passes`), the
checker and fusion predictor (:mod:`qdq_toolkit.export.checks`, :mod:`qdq_toolkit.export.fusion`), the Keras-side
placement rules (``custom_cases/rules.py``) and the wrappers' docstrings. Standard library only: no TensorFlow, no
onnx import, so the checker and the CLI's ``--help`` start quickly.

A backend declared as data, as PyTorch (``torch/ao/quantization/backend_config/tensorrt.py``) and ONNX Runtime
(``onnxruntime/python/tools/quantization/registry.py``) do. Sources of the facts below:

* TensorRT developer guide, "Explicit Quantization" and "Q/DQ Layer-Placement Recommendations"
  (docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html):
  symmetric int8, zero point 0, per-channel scales for weights only (Conv axis 0, ConvTranspose axis 1);
  quantize the inputs of weighted ops, not their outputs; "Batch normalization is fused with convolution and ReLU
  [...] There is no need to simulate BN-folding"; a residual Add is fused into the convolution when the *other*
  input is quantized; extra Q/DQ pairs split fusions.
* TensorRT's "Layer Fusion Catalog" (docs.nvidia.com/deeplearning/tensorrt/latest/performance/fusion-catalog.html):
  convolution + activation / scale / element-wise sum fusions.
* NVIDIA ModelOpt's ONNX INT8 placement (``modelopt/onnx/quantization/graph_utils.py`` ``get_fusible_backbone``,
  ``partitioning.py``): the fusible backbones ``Conv|ConvTranspose -> [ConstMul] -> [BiasAdd] -> [BatchNormalization]
  -> [Relu] -> [MaxPool]`` and ``... -> Sigmoid -> Mul`` (swish); pointwise ops whose other inputs are constants join
  the convolution's partition; attention MatMuls are quantized on both inputs.
* NVIDIA/TensorRT issue #3412 (2023, TensorRT team): "We have no support for Q/DQ + convTranspose + BN fusion yet".

None of this was verified on a GPU here (no GPU or TensorRT on the development machines).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "ACTIVATION_OPS",
    "COMPUTE_OPS",
    "INT8",
    "QUANTIZED_OP_TYPES",
    "RESIDUAL_ADD",
    "SCALE_SHARING_OPS",
    "SHAPE_ONLY_OPS",
    "SOURCES",
    "ComputeOp",
    "QuantScheme",
    "ResidualRule",
    "is_activation",
    "weight_axis",
]


# ----------------------------------------------------------------------------------------------- quantization
@dataclass(frozen=True)
class QuantScheme:
    """What TensorRT accepts for one Q/DQ pair.

    Attributes:
        dtype: the quantized type (ONNX ``TensorProto`` name).
        onnx_dtype: its ``onnx.TensorProto`` enum value (INT8 = 3), so readers need not import onnx.
        zero_point: the only zero point TensorRT supports (symmetric quantization).
        qmax: the largest quantized magnitude; narrow range, so the grid is [-qmax, qmax].
        min_opset: the first opset with per-channel QuantizeLinear/DequantizeLinear (the ``axis`` attribute).
        scale: what every scale must be.
        activations: granularity of activation scales.
        weights: granularity of weight scales.
    """

    dtype: str = "INT8"
    onnx_dtype: int = 3
    zero_point: int = 0
    qmax: int = 127
    min_opset: int = 13
    scale: str = "a build-time constant, finite and > 0"
    activations: str = "per tensor (a scalar scale)"
    weights: str = "per tensor or per output channel"


#: TensorRT's int8 explicit quantization.
INT8 = QuantScheme()


# ---------------------------------------------------------------------------------------------- compute ops
@dataclass(frozen=True)
class ComputeOp:
    """A layer TensorRT runs as an INT8 kernel when its data and weight inputs both come from DequantizeLinear.

    Attributes:
        op_type: the ONNX op.
        data_input / weight_input: input indices of the activation and of the weight.
        weight_axis: the weight's output-channel axis (negative: counted from the end), the axis of per-channel
            weight scales; ``axis_attribute`` may override it.
        axis_attribute: ``(attribute, axis when set to 1, axis when 0/absent)``, for Gemm's ``transB``.
        weight_layout: the weight's layout, for messages.
        activation_weight: the "weight" may be an activation (MatMul of two activations, e.g. attention
            ``Q @ K^T`` and ``probs @ V``): then both inputs are quantized per tensor, as ModelOpt does.
        fuses_batchnorm: a BatchNorm after it (a BatchNormalization node, or a Mul and an Add by per-channel
            constants, as Keras 3 exports it) folds into the kernel; for MatMul/Gemm: a Mul/Add by constants.
        fuses_residual: a residual Add after it fuses into the kernel's epilogue.
    """

    op_type: str
    weight_axis: int
    weight_layout: str
    data_input: int = 0
    weight_input: int = 1
    axis_attribute: tuple[str, int, int] | None = None
    activation_weight: bool = False
    fuses_batchnorm: bool = False
    fuses_residual: bool = False


#: ONNX op type -> the compute op TensorRT quantizes (the keys are the ops whose inputs get Q/DQ).
COMPUTE_OPS: Mapping[str, ComputeOp] = MappingProxyType(
    {
        "Conv": ComputeOp(
            "Conv", 0, "Conv kernels are (M, C/group, kH, kW): axis 0", fuses_batchnorm=True, fuses_residual=True
        ),
        # NVIDIA/TensorRT#3412: no Q/DQ + ConvTranspose + BN fusion; ModelOpt's get_fusible_backbone and residual
        # map treat ConvTranspose as a backbone like Conv otherwise.
        "ConvTranspose": ComputeOp(
            "ConvTranspose", 1, "ConvTranspose kernels are (C, M/group, kH, kW): axis 1", fuses_residual=True
        ),
        # ModelOpt's partitioning: pointwise ops whose other inputs are constants (bias, scale) join the partition
        # of a MatMul/Gemm backbone too.
        "MatMul": ComputeOp(
            "MatMul", -1, "a MatMul weight is (..., K, N): the last axis", activation_weight=True, fuses_batchnorm=True
        ),
        "Gemm": ComputeOp(
            "Gemm",
            1,
            "a Gemm weight is (K, N), or (N, K) with transB=1",
            axis_attribute=("transB", 0, 1),
            fuses_batchnorm=True,
        ),
    }
)

#: The compute ops, in declaration order.
QUANTIZED_OP_TYPES: tuple[str, ...] = tuple(COMPUTE_OPS)


def weight_axis(op_type: str, rank: int | None, attributes: Mapping[str, int] | None = None) -> int | None:
    """The output-channel axis of ``op_type``'s weight as the layer sees it (None for an op not in the table).

    ``rank`` resolves a negative axis (MatMul's last axis); without it the negative axis is returned.
    ``attributes`` are the node's integer attributes (Gemm's ``transB``).
    """
    op = COMPUTE_OPS.get(op_type)
    if op is None:
        return None
    axis = op.weight_axis
    if op.axis_attribute is not None:
        name, when_set, when_unset = op.axis_attribute
        axis = when_set if (attributes or {}).get(name, 0) else when_unset
    if axis < 0 and rank is not None:
        axis += rank
    return axis


# ------------------------------------------------------------------------------------------- data movement
#: Ops that only move or reshape data: a per-tensor Q/DQ commutes with them exactly, so TensorRT propagates
#: Q/DQ across them (the checker looks through them; the export moves quantizers below them).
SHAPE_ONLY_OPS: frozenset[str] = frozenset({"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})


# ------------------------------------------------------------------------------------------------- epilogue
#: Activations TensorRT fuses into a convolution/GEMM epilogue (Relu6 reaches ONNX as Clip; swish as
#: ``x * Sigmoid(x)``, see :func:`is_activation`).
ACTIVATION_OPS: frozenset[str] = frozenset(
    {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softplus"}
)

#: The epilogue of a compute op, in order: each step optional, each node feeding only the next one, every other
#: operand a constant. ``batchnorm`` is a BatchNormalization node or (Keras 3 through tf2onnx) a Mul and/or an
#: Add by per-channel constants; ``bias`` an Add by a constant.
EPILOGUE_STEPS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "bias": frozenset({"Add"}),
        "batchnorm": frozenset({"BatchNormalization", "Mul", "Add"}),
        "activation": ACTIVATION_OPS | {"Mul"},  # Mul: the x * Sigmoid(x) of a swish
    }
)


def is_activation(op_type: str) -> bool:
    """True for an ONNX activation TensorRT fuses into a compute op's epilogue (swish's Mul is matched apart)."""
    return op_type in ACTIVATION_OPS


@dataclass(frozen=True)
class ResidualRule:
    """How TensorRT fuses a residual ``Add(conv_branch, shortcut)`` into the convolution producing ``conv_branch``.

    The convolution's epilogue (bias, BatchNorm, activation) may end with the Add; the Add reads the *other*
    input (the shortcut) in int8, so that input carries the Q/DQ and the convolution branch must not: a Q/DQ on it
    makes the convolution write its output to memory and the Add run on its own. With several convolution
    branches (a projection shortcut), one fuses (the deepest) and the others are quantized. With the shortcut in
    float, the Add still fuses but the fused kernel's output stays float (developer guide, figure "The precision
    of xf1 is floating-point").
    """

    op_type: str = "Add"
    quantize: str = "every input but the one fused convolution branch"
    fused_branch: str = "no Q/DQ: the convolution's own output, through its epilogue"


RESIDUAL_ADD = ResidualRule()

#: Ops whose inputs and output should share one scale: TensorRT then runs them in int8 without requantizing
#: (max pooling commutes with a per-tensor quantizer; a Concat writes its int8 inputs into one buffer).
SCALE_SHARING_OPS: Mapping[str, str] = MappingProxyType(
    {
        "MaxPool": "max pooling commutes with per-tensor quantization: quantize its input, the output keeps the scale",
        "Concat": "every input of an int8 Concat must carry the same scale, or TensorRT requantizes each input",
    }
)

#: Where each fact comes from (for docstrings and messages).
SOURCES: Mapping[str, str] = MappingProxyType(
    {
        "explicit-quantization": "TensorRT developer guide, 'Explicit Quantization' / 'Q/DQ Layer-Placement "
        "Recommendations'",
        "fusion-catalog": "TensorRT 'Layer Fusion Catalog' (docs.nvidia.com/deeplearning/tensorrt/latest/performance/"
        "fusion-catalog.html)",
        "modelopt": "NVIDIA ModelOpt modelopt/onnx/quantization/graph_utils.py get_fusible_backbone and partitioning.py",
        "convtranspose-bn": "NVIDIA/TensorRT#3412: no Q/DQ + ConvTranspose + BatchNorm fusion",
    }
)
