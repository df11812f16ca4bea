"""Pattern rules: functions that find a TensorRT fusion pattern in a Keras model and return its QDQ placements.

Every rule has the signature of :meth:`CustomQDQInsertionCase.case`, ``rule(keras_model, qspec)``, and returns a
new :class:`~qdq_toolkit.spec.QuantizationSpec` holding one entry per layer it selects. Entries are named by the
layer's path from :func:`~qdq_toolkit.cases.iter_layers` (``"block/add"`` for a layer of a nested model), which is
how ``quantize_model`` matches names. A rule never modifies the model or ``qspec`` (the user's spec), and it leaves
out every layer the user's spec decides (see :func:`user_decides`), so a user entry is never overridden even when
the returned spec is used on its own.

Layers are selected by *exact* class (``type(layer) is keras.layers.Add``), as the wrapper registry looks wrappers
up: a subclass may compute something else and has no wrapper unless the user registers one.

The TensorRT facts behind the rules (which ops fuse a BatchNorm, an activation or a residual Add) are declared once
in :mod:`qdq_toolkit.tensorrt_rules`; this module only maps Keras classes onto the ONNX ops they export as.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import keras

from qdq_toolkit.cases import LayerNames, LayerRef, inbound_layers, iter_layers, match_chain, outbound_layers
from qdq_toolkit.spec import QuantizationSpec
from qdq_toolkit.tensorrt_rules import COMPUTE_OPS, is_activation

L = keras.layers

#: Keras convolution classes -> the ONNX op each exports as; what TensorRT fuses into that op (BatchNorm, residual
#: Add) is :data:`qdq_toolkit.tensorrt_rules.COMPUTE_OPS`.
CONV_ONNX_OPS: Mapping[type, str] = MappingProxyType(
    {
        L.Conv1D: "Conv",
        L.Conv2D: "Conv",
        L.Conv3D: "Conv",
        L.DepthwiseConv1D: "Conv",
        L.DepthwiseConv2D: "Conv",
        L.SeparableConv1D: "Conv",
        L.SeparableConv2D: "Conv",
        L.Conv1DTranspose: "ConvTranspose",
        L.Conv2DTranspose: "ConvTranspose",
        L.Conv3DTranspose: "ConvTranspose",
    }
)
#: Layers TensorRT runs as a convolution.
CONV_CLASSES: tuple[type, ...] = tuple(CONV_ONNX_OPS)
#: Convolutions whose epilogue absorbs a following BatchNorm / a residual Add (per the TensorRT table).
BATCHNORM_FOLDING_CONV_CLASSES: tuple[type, ...] = tuple(c for c, op in CONV_ONNX_OPS.items() if COMPUTE_OPS[op].fuses_batchnorm)
RESIDUAL_FUSING_CONV_CLASSES: tuple[type, ...] = tuple(c for c, op in CONV_ONNX_OPS.items() if COMPUTE_OPS[op].fuses_residual)
#: Keras activation function names -> the ONNX op they export as (swish/silu: ``x * Sigmoid(x)``).
ACTIVATION_ONNX_OPS: Mapping[str, str] = MappingProxyType(
    {
        "relu": "Relu",
        "relu6": "Clip",
        "leaky_relu": "LeakyRelu",
        "elu": "Elu",
        "selu": "Selu",
        "sigmoid": "Sigmoid",
        "hard_sigmoid": "HardSigmoid",
        "tanh": "Tanh",
        "softplus": "Softplus",
        "silu": "Sigmoid",
        "swish": "Sigmoid",
        "hard_silu": "HardSwish",
        "hard_swish": "HardSwish",
    }
)
#: Activation layers that may end a convolution branch (fused into the convolution's epilogue, see
#: :func:`is_fused_activation`).
ACTIVATION_CLASSES: tuple[type, ...] = (L.Activation, L.ReLU)
#: Layers that are the identity at inference: they vanish from the exported graph, so they never block a fusion.
INFERENCE_IDENTITY_CLASSES: tuple[type, ...] = (L.Dropout, L.GaussianDropout, L.AlphaDropout, L.GaussianNoise, L.Identity)
MAX_POOLING_CLASSES: tuple[type, ...] = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D)
GLOBAL_AVERAGE_POOLING_CLASSES: tuple[type, ...] = (
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
)
#: How many layers a squeeze-excite gate may have between its global pooling and the Multiply.
MAX_SQUEEZE_EXCITE_GATE_LENGTH = 8


# ---------------------------------------------------------------------------------------------- graph predicates
def user_decides(ref: LayerRef, qspec: QuantizationSpec | None, names: LayerNames | None = None) -> bool:
    """True when the user's spec has an entry for this layer: by a name that selects it, or by its class.

    ``names`` (``LayerNames(keras_model)``, built once per case) applies ``quantize_model``'s naming rule exactly: a
    bare name selects a top-level layer, else the one nested layer of that name. Without it, a layer's path and,
    for a top-level layer, its name count -- which misses only a bare name given to a nested layer; ``quantize_model``
    still applies the user's spec above every case.
    """
    if qspec is None:
        return False
    if qspec.get(type(ref.layer).__name__, is_keras_class=True) is not None:
        return True
    if names is not None:
        return any(qspec.get(name) is not None and names.selects(name, ref) for name in {ref.path, ref.layer.name})
    return qspec.get(ref.path) is not None


def _feeds_one_layer(layer: keras.layers.Layer) -> bool:
    return len(outbound_layers(layer)) == 1


def _single_producer(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    producers = inbound_layers(layer)
    return producers[0] if len(producers) == 1 else None


def is_fused_activation(layer: keras.layers.Layer) -> bool:
    """True for an activation layer whose ONNX op TensorRT fuses into a convolution's epilogue.

    ``ReLU`` exports as Relu, Clip (``max_value``) or LeakyRelu (``negative_slope``), all fused; an ``Activation``
    layer is looked up by its function's name in :data:`ACTIVATION_ONNX_OPS`.
    """
    if type(layer) is L.ReLU:
        return True
    if type(layer) is L.Activation:
        op = ACTIVATION_ONNX_OPS.get(getattr(layer.activation, "__name__", ""))
        return op is not None and is_activation(op)
    return False


def fused_convolution(producer: keras.layers.Layer | None) -> keras.layers.Layer | None:
    """The convolution TensorRT can fuse an ``Add`` into when one Add input is ``producer``'s output, else None.

    TensorRT rule (:data:`qdq_toolkit.tensorrt_rules.RESIDUAL_ADD`): a convolution kernel's epilogue applies its
    bias, a BatchNorm folded into it and its activation, and can add one other tensor (the residual). So the Add input must come from a *convolution branch*, read
    backwards from the Add (the chains NVIDIA's toolkit treats as fusable, with ReLU and Dropout-like layers)::

        Conv [-> BatchNormalization] [-> Activation | ReLU] [-> Dropout-like layer]

    (each part in brackets optional; Dropout-like layers are the identity at inference), where every layer feeds
    only the next one and the last one feeds only the Add: a tensor that is also read elsewhere must be written to
    memory, so it cannot be fused away.
    """
    layer = producer
    has_batchnorm = False
    for optional in (INFERENCE_IDENTITY_CLASSES, ACTIVATION_CLASSES, (L.BatchNormalization,)):
        if isinstance(layer, optional):
            if optional is ACTIVATION_CLASSES and not is_fused_activation(layer):
                return None
            if not _feeds_one_layer(layer):
                return None
            has_batchnorm = has_batchnorm or optional == (L.BatchNormalization,)
            layer = _single_producer(layer)
    folds_batchnorm = not has_batchnorm or isinstance(layer, BATCHNORM_FOLDING_CONV_CLASSES)
    if isinstance(layer, RESIDUAL_FUSING_CONV_CLASSES) and folds_batchnorm and _feeds_one_layer(layer):
        return layer
    return None


def follows_convolution(batch_norm: keras.layers.Layer) -> bool:
    """True when ``batch_norm`` reads a convolution that feeds only it and that TensorRT folds a BatchNorm into
    (not a ConvTranspose: :data:`qdq_toolkit.tensorrt_rules.COMPUTE_OPS`)."""
    return match_chain(batch_norm, [BATCHNORM_FOLDING_CONV_CLASSES, L.BatchNormalization])


def is_squeeze_excite(multiply: keras.layers.Layer) -> bool:
    """True when ``multiply`` is the excitation of a squeeze-excite block: ``x * gate(GlobalAveragePooling(x))``.

    One input (the gate) must lead back, through single-input layers (Reshape, Conv/Dense, activations...), to a
    global average pooling whose input is the other Multiply input.
    """
    producers = inbound_layers(multiply)
    if len(producers) != 2:
        return False
    for gate, features in (producers, producers[::-1]):
        layer = gate
        for _ in range(MAX_SQUEEZE_EXCITE_GATE_LENGTH):
            if layer is None:
                break
            if isinstance(layer, GLOBAL_AVERAGE_POOLING_CLASSES):
                if _single_producer(layer) is features:
                    return True
                break
            layer = _single_producer(layer)
    return False


def depth_from_inputs(layer: keras.layers.Layer, cache: dict[int, int] | None = None) -> int:
    """The number of layers on the longest path from a model input to ``layer`` (an input layer has depth 0).

    Inside a nested model the path starts at that model's own inputs. ``cache`` (``{id(layer): depth}``) may be
    shared between calls on one model to walk each layer once.
    """
    depths = {} if cache is None else cache
    stack = [layer]
    while stack:  # iterative depth-first walk: deep networks would exceed Python's recursion limit
        current = stack[-1]
        if id(current) in depths:
            stack.pop()
            continue
        producers = [p for p in inbound_layers(current) if p is not None]
        pending = [p for p in producers if id(p) not in depths]
        if pending:
            stack.extend(pending)
            continue
        depths[id(current)] = 1 + max((depths[id(p)] for p in producers), default=-1)
        stack.pop()
    return depths[id(layer)]


def residual_input_indices(add: keras.layers.Layer, depth_cache: dict[int, int] | None = None) -> list[int]:
    """The inputs of ``add`` that get QDQ under the residual rule (see :func:`residual_qdq_spec`).

    Args:
        add: an ``Add`` layer that is part of a model graph.
        depth_cache: shared between calls on one model so graph depths are computed once (optional).
    """
    producers = inbound_layers(add)
    fusable = {index: conv for index, p in enumerate(producers) if (conv := fused_convolution(p)) is not None}
    if not fusable:
        return list(range(len(producers)))
    cache = {} if depth_cache is None else depth_cache
    fused = max(fusable, key=lambda index: (depth_from_inputs(fusable[index], cache), index))
    return [index for index in range(len(producers)) if index != fused]


# ------------------------------------------------------------------------------------------------------- rules
def residual_qdq_spec(keras_model: keras.Model, qspec: QuantizationSpec | None = None) -> QuantizationSpec:
    """QDQ on the inputs of every ``Add`` except the one convolution branch TensorRT fuses the Add into.

    TensorRT rule: ``Add(conv_branch, shortcut)`` runs as one INT8 convolution kernel that adds the shortcut in
    its epilogue; it reads the shortcut's scale from the QDQ on it. QDQ on the convolution branch as well would
    force the convolution to write its output to memory and block that fusion. Hence, per Add:

    * one input is a convolution branch (see :func:`fused_convolution`): quantize all other inputs;
    * several are (ResNet v1 with a projection shortcut ``Conv -> BN``, ResNet v2's ``Conv`` shortcut): the
      epilogue adds one tensor only, so one branch is fused and the others get QDQ. The fused one is the
      *deepest*, the one with the longest path from the model input (the main branch; ties: the later input).
      The shortcut is ready first and is read as the int8 residual, as in the TensorRT guide's "quantize the
      residual input" and NVIDIA's PyTorch ResNet (``residual_quantizer`` on the downsampled identity);
    * none is (both inputs are shared tensors, e.g. two block outputs): there is no fusion to protect, so every
      input is quantized and the Add runs in INT8.

    Adds with more than two inputs follow the same rule: at most one input is left without QDQ.
    """
    spec = QuantizationSpec()
    depth_cache: dict[int, int] = {}
    refs = iter_layers(keras_model)
    names = LayerNames(refs)
    for ref in refs:
        if type(ref.layer) is not L.Add or user_decides(ref, qspec, names):
            continue
        indices = residual_input_indices(ref.layer, depth_cache)
        spec.add(ref.path, quantize_input=True, quantize_weight=False, quantization_index=indices)
    return spec


def batchnorm_qdq_spec(keras_model: keras.Model, qspec: QuantizationSpec | None = None) -> QuantizationSpec:
    """QDQ on the input of every ``BatchNormalization`` that does not follow a convolution it folds into.

    TensorRT rule: a BatchNorm right after a convolution is folded into its weights and must not be quantized. A
    BatchNorm after an Add, a pooling or a model input (ResNet v2's pre-activation ``BN -> ReLU -> Conv``) stays a
    Scale layer; with its input quantized it runs in INT8 instead of switching the tensor back to float.
    """
    spec = QuantizationSpec()
    refs = iter_layers(keras_model)
    names = LayerNames(refs)
    for ref in refs:
        if type(ref.layer) is L.BatchNormalization and not user_decides(ref, qspec, names) and not follows_convolution(ref.layer):
            spec.add(ref.path, quantize_input=True, quantize_weight=False)
    return spec


def maxpool_qdq_spec(keras_model: keras.Model, qspec: QuantizationSpec | None = None) -> QuantizationSpec:
    """QDQ on the input of every ``MaxPooling1D/2D/3D``.

    TensorRT rule: a max pooling whose output meets other quantized tensors (ResNet v2's pooled shortcut entering
    a quantized Add, Inception's pooled branch entering a Concatenate next to convolution branches) must itself run
    in INT8, so that every input of the Add or Concatenate is int8 and TensorRT can fuse it (for a Concatenate,
    write the branches into one int8 buffer) instead of converting back to float.
    """
    spec = QuantizationSpec()
    refs = iter_layers(keras_model)
    names = LayerNames(refs)
    for ref in refs:
        if type(ref.layer) in MAX_POOLING_CLASSES and not user_decides(ref, qspec, names):
            spec.add(ref.path, quantize_input=True, quantize_weight=False)
    return spec


def squeeze_excite_qdq_spec(keras_model: keras.Model, qspec: QuantizationSpec | None = None) -> QuantizationSpec:
    """QDQ on both inputs of every squeeze-excite ``Multiply`` (see :func:`is_squeeze_excite`).

    TensorRT rule: an element-wise product runs in INT8 only when all of its inputs are quantized; in EfficientNet
    the features and the sigmoid gate are both quantized so the excitation stays in INT8 between the depthwise and
    the projection convolutions. Other Multiply layers (e.g. a swish written as ``x * sigmoid(x)``, which TensorRT
    fuses into the convolution as an activation) are left alone.
    """
    spec = QuantizationSpec()
    refs = iter_layers(keras_model)
    names = LayerNames(refs)
    for ref in refs:
        if type(ref.layer) is L.Multiply and not user_decides(ref, qspec, names) and is_squeeze_excite(ref.layer):
            spec.add(ref.path, quantize_input=True, quantize_weight=False, quantization_index=[0, 1])
    return spec
