"""One QDQ wrapper class per Keras layer family, and the registry that maps a layer class to its wrapper.

A wrapper holds the original layer and puts quantize/dequantize (QDQ) on the layer's **inputs and weights, never
its outputs**: TensorRT fuses a convolution or GEMM with the QDQ of its inputs and weights into one INT8 kernel, and
reads the next layer's input QDQ as the scale of that kernel's output. A QDQ on an output would sit between the
kernel and its bias/activation epilogue and break the fusion.

Each wrapper's docstring states the TensorRT rule behind its placement; the rules themselves (compute ops, their
ONNX weight axes, fusions) are declared once in :mod:`qdq_toolkit.tensorrt_rules`. To support a new layer class, subclass
:class:`QDQWrapper` (input-only layers need nothing more than ``layer_classes``; layers with weights override
:meth:`QDQWrapper.quantized_call`) and pass the class to ``quantize_model(..., custom_wrappers=[MyWrapper])``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, SimpleNamespace

import keras
import tensorflow as tf
from keras import ops

from qdq_toolkit import quantizers
from qdq_toolkit.quantizers import RangeTracking
from qdq_toolkit.range_variables import (
    INPUT_SLOT,
    POINTWISE_INPUT_SLOT,
    amax_variable_name,
    input_slot,
    steps_variable_name,
)


def _no_autocast():
    """A scope in which Keras variables read as their own dtype (float32), not the mixed policy's compute dtype."""
    from keras.src.backend import AutocastScope  # no public name; Layer.__call__ uses this same scope

    return AutocastScope(None)


#: Signature of a calibration observer: ``observer(wrapper, slot_name, tensor)``.
Observer = Callable[["QDQWrapper", str, object], None]


class QDQWrapper(keras.layers.Wrapper):
    """Base class: per-tensor QDQ on selected inputs, per-channel QDQ on the weights a subclass names.

    Class attributes a subclass sets:

    * ``layer_classes``: the Keras layer classes it wraps (matched exactly, not by inheritance, because a subclass
      of e.g. ``Conv2D`` may change what ``call`` computes).
    * ``default_quantize_input`` / ``default_quantize_weight``: what ``quantization_mode="full"`` does for these
      layers when the spec says nothing about them.
    * ``multi_input``: the layer takes a list of tensors (``Add``, ``Concatenate``, ...).
    * ``kernel_axes``: ``{attribute name: output-channel axis}`` of the weights quantized per channel.

    Args:
        layer: the (unbuilt or built) layer to wrap; the wrapper owns it from then on.
        quantize_inputs: indices of the inputs that get QDQ (``[0]`` for a single-input layer, ``[]`` for none).
        quantize_weights: put per-channel QDQ on the kernels named in ``kernel_axes``.
        activation_range: how input ranges follow the data in training (see :class:`RangeTracking`).
    """

    layer_classes: tuple[type, ...] = ()
    default_quantize_input: bool = False
    default_quantize_weight: bool = False
    multi_input: bool = False
    kernel_axes: Mapping[str, int] = MappingProxyType({})
    #: Training memory: ``quantized_call`` is a pure function of the quantized input and kernels (no range of its
    #: own, no state updates), so the backward pass may recompute the quantized input and kernels from the float
    #: ones instead of keeping them (see :meth:`call`). Set on the built-in single-input weighted wrappers.
    recompute_quantized_in_backward: bool = False

    def __init__(
        self,
        layer: keras.layers.Layer,
        quantize_inputs: Iterable[int] = (0,),
        quantize_weights: bool = False,
        activation_range: RangeTracking | str | dict | None = None,
        **kwargs,
    ):
        kwargs.setdefault("name", f"quant_{layer.name}")
        # The wrapper computes in the wrapped layer's precision (a mixed policy included), whatever the global
        # policy is when quantize_model runs.
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self.quantize_inputs = tuple(sorted({int(i) for i in quantize_inputs}))
        self.quantize_weights = bool(quantize_weights) and bool(self.kernel_axes)
        self.activation_range = RangeTracking.from_config(activation_range)
        self._observer: Observer | None = None
        # Quantized kernels given by the recomputing call path, by attribute name (a plain namespace: Keras would
        # track a dict attribute as layer state).
        self._kernel_values = SimpleNamespace(by_name={})
        # A mask passes through the wrapper exactly as through the wrapped layer (see compute_mask).
        self.supports_masking = bool(getattr(layer, "supports_masking", False))
        for index in self.quantize_inputs:
            if index < 0 or (not self.multi_input and index != 0):
                raise ValueError(
                    f"{type(self).__name__} for layer '{layer.name}': input index {index} does not exist; "
                    f"{'indices start at 0' if self.multi_input else 'this layer has a single input, index 0'}."
                )

    # ----------------------------------------------------------------------------------------------- building
    def build(self, input_shape=None):
        if self.multi_input:
            num_inputs = len(input_shape)
            bad = [i for i in self.quantize_inputs if i >= num_inputs]
            if bad:
                raise ValueError(
                    f"Layer '{self.layer.name}' has {num_inputs} inputs (indices 0..{num_inputs - 1}) but "
                    f"quantization_index asks for {bad}. Fix the quantization_index of this layer in the spec."
                )
        super().build(input_shape)
        self._ranges: dict[str, tuple[keras.Variable, keras.Variable]] = {}
        for slot in self.range_slots():
            self._ranges[slot] = (
                self.add_weight(
                    name=amax_variable_name(slot),
                    shape=(),
                    initializer=keras.initializers.Constant(1.0),
                    trainable=False,
                    autocast=False,
                    aggregation="only_first_replica",
                ),
                self.add_weight(
                    name=steps_variable_name(slot),
                    shape=(),
                    initializer="zeros",
                    trainable=False,
                    autocast=False,
                    aggregation="only_first_replica",
                ),
            )
        self.built = True

    def range_slots(self) -> list[str]:
        """Names of the activation ranges this wrapper keeps: ``input``, ``input_1``, ... (and extras); see
        :mod:`qdq_toolkit.range_variables` for the names and their variables."""
        if not self.multi_input:
            return [INPUT_SLOT] if self.quantize_inputs else []
        return [input_slot(i) for i in self.quantize_inputs]

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_mask(self, inputs, mask=None):
        """The wrapped layer's output mask: QDQ changes values, never which steps are valid."""
        return self.layer.compute_mask(inputs, mask)

    def compute_output_spec(self, inputs, training=None, mask=None, **kwargs):
        # QDQ keeps shapes and dtypes: the output is what the wrapped layer gives (which may trace its own call).
        if mask is not None and getattr(self.layer, "_call_has_mask_arg", False):
            kwargs["mask"] = mask
        return self.layer.compute_output_spec(inputs, **kwargs)

    # -------------------------------------------------------------------------------------------- ranges API
    def activation_ranges(self) -> dict[str, keras.Variable]:
        """``{slot: amax variable}`` for every quantized activation of this wrapper."""
        return {slot: amax for slot, (amax, _) in self._ranges.items()}

    def unobserved_ranges(self) -> list[str]:
        """Slots whose range was never calibrated nor updated by training: they still hold the initial 1.0."""
        return [slot for slot, (_, steps) in self._ranges.items() if float(steps.numpy()) == 0.0]

    def set_activation_range(self, slot: str, amax: float) -> None:
        """Set one range (e.g. from calibration) and mark it observed, so EMA tracking continues from it."""
        if slot not in self._ranges:
            raise KeyError(f"{self.name} has no activation range '{slot}'; it has {sorted(self._ranges)}.")
        value = float(amax)
        if not value > 0.0 or value != value or value == float("inf"):
            raise ValueError(f"{self.name}/{slot}: an activation range must be a finite number > 0, got {amax!r}.")
        amax_var, steps_var = self._ranges[slot]
        amax_var.assign(max(value, quantizers.MIN_AMAX))
        steps_var.assign(steps_var + 1.0)

    def set_observer(self, observer: Observer | None) -> None:
        """Calibration hook: while set, the wrapper computes in float (no QDQ at all, as TensorRT calibrates the
        FP32 network) and calls ``observer(self, slot, tensor)`` with every activation it would quantize."""
        self._observer = observer

    # ------------------------------------------------------------------------------------------------ calling
    def quantize_activation(self, slot: str, x, training=None):
        """QDQ one activation tensor with the range kept in ``slot``, updating that range when training."""
        if self._observer is not None:
            self._observer(self, slot, x)
            return x
        amax_var, steps_var = self._ranges[slot]
        if training and self.activation_range.method != "fixed":
            return quantizers.qdq_tracked(x, amax_var, steps_var, self.activation_range)
        return quantizers.qdq_per_tensor(x, amax_var, training=bool(training))

    def quantized_kernel(self, name: str, training=None):
        """The kernel attribute ``name`` of the wrapped layer, with per-channel QDQ when weights are quantized.

        Under a mixed-precision policy the QDQ reads the float32 variable (not its autocast float16/bfloat16 copy),
        so the per-channel ranges are those of the float32 weights the exporter sees, and the result is cast to the
        layer's compute dtype.
        """
        quantized = self._kernel_values.by_name.get(name)
        if quantized is not None:  # quantized already by the recomputing call path
            return quantized
        kernel = getattr(self.layer, name)
        if not self.quantize_weights or self._observer is not None:
            return kernel
        compute_dtype = self.layer.compute_dtype
        kernel = self._float_kernel(kernel)  # a tensor (the QDQ's custom gradients take no variables), float32
        quantized = quantizers.qdq_per_channel(kernel, self.kernel_axes[name], training=bool(training))
        return ops.cast(quantized, compute_dtype)

    @staticmethod
    def _float_kernel(kernel):
        """The variable's own (float32) value, not the mixed policy's autocast copy."""
        with _no_autocast():  # keras.src.layers.layer: a Layer opens AutocastScope(None) to read raw variables
            return tf.convert_to_tensor(kernel)

    def call(self, inputs, training=None, mask=None, **kwargs):
        # Keras passes the input's mask (e.g. from Embedding(mask_zero=True)) because `mask` is named here; the
        # wrapped layer gets it when its own call takes one (GlobalAveragePooling1D averages only the valid steps).
        if mask is not None and getattr(self.layer, "_call_has_mask_arg", False):
            kwargs["mask"] = mask
        if training and not kwargs and self._recomputes_in_backward():
            return self._call_recomputing_quantized(inputs)
        if self.multi_input:
            inputs = list(inputs)
            for index in self.quantize_inputs:
                inputs[index] = self.quantize_activation(input_slot(index), inputs[index], training)
        elif self.quantize_inputs:
            inputs = self.quantize_activation(INPUT_SLOT, inputs, training)
        return self.quantized_call(inputs, training, **kwargs)

    def _recomputes_in_backward(self) -> bool:
        return (
            self.recompute_quantized_in_backward
            and self._observer is None
            and self.quantize_weights
            and not self.multi_input
            and self.quantize_inputs == (0,)
            and self.range_slots() == [INPUT_SLOT]
            # an epilogue activation's gradient reads the main op's output: recomputing it would redo the op
            and getattr(self.layer, "activation", None) in (None, keras.activations.linear)
        )

    def _call_recomputing_quantized(self, x):
        """A training call that keeps only the float input and kernels for the backward pass.

        The forward is :meth:`call`'s: QDQ of the input with its tracked range (updated here, once), QDQ of the
        kernels, :meth:`quantized_call`. The backward recomputes the two QDQs -- element-wise, cheap; the kernels'
        with the per-channel ranges of the forward, so without their reduction -- and differentiates
        :meth:`quantized_call` on them, so neither the fake-quantized input (which the convolution's filter
        gradient would keep) nor the fake-quantized kernels (which its input gradient would keep) stay in memory
        between the passes; the main op's own recomputed forward is pruned from the graph when nothing in the
        backward reads it (a convolution or matmul followed by a bias and a linear or ReLU-free epilogue). The
        gradients are those of :meth:`call` (tested).
        """
        amax_var, steps_var = self._ranges[INPUT_SLOT]
        if self.activation_range.method == "fixed":
            used = ops.convert_to_tensor(amax_var)
        else:
            used = quantizers.tracked_range(x, amax_var, steps_var, self.activation_range)
        names = list(self.kernel_axes)
        kernels = [self._float_kernel(getattr(self.layer, name)) for name in names]
        compute_dtype = self.layer.compute_dtype

        def forward(x, kernels, kernel_ranges):
            # The kernels' QDQ waits for the layer's input: otherwise the executor may run every layer's weight QDQ
            # at the start of the step (its inputs are variables) and hold all the quantized kernels at once.
            with tf.control_dependencies([x]):
                kernels = [tf.identity(kernel) for kernel in kernels]
            quantized, ranges = {}, []
            for name, kernel, amax in zip(names, kernels, kernel_ranges, strict=True):
                kernel, amax = quantizers.qdq_per_channel_training(kernel, self.kernel_axes[name], amax)
                quantized[name] = ops.cast(kernel, compute_dtype)
                ranges.append(amax)
            self._kernel_values.by_name = quantized
            try:
                # The bare V4 op: its registered clipped straight-through gradient reads x, which the backward
                # keeps anyway to recompute from, so no clip mask is needed here.
                return self.quantized_call(quantizers.qdq_per_tensor(x, used), True), ranges
            finally:
                self._kernel_values.by_name = {}

        @tf.custom_gradient
        def recomputing(x, *kernels):
            outputs, kernel_ranges = forward(x, kernels, [None] * len(kernels))

            def grad(upstream, variables=None):
                variables = list(variables or [])
                # Copies that depend on the upstream gradient: without that, grappler's common-subexpression
                # elimination merges the recomputed QDQs with the forward ones, which then stay alive (as
                # tf.recompute_grad does it).
                with tf.control_dependencies([upstream]):
                    x_again = tf.identity(x)
                    kernels_again = [tf.identity(kernel) for kernel in kernels]
                with tf.GradientTape() as tape:
                    tape.watch([x_again, *kernels_again])
                    outputs, _ = forward(x_again, kernels_again, kernel_ranges)
                gradients = tape.gradient(
                    outputs, [x_again, *kernels_again, *variables], output_gradients=upstream
                )
                count = 1 + len(kernels)
                return gradients[:count], gradients[count:]

            return outputs, grad

        return recomputing(x, *kernels)

    def quantized_call(self, inputs, training=None, **kwargs):
        """Compute the layer on already-quantized inputs. Input-only wrappers just call the wrapped layer.

        ``kwargs`` are the other arguments the layer was called with in the model (e.g. ``mask``).
        """
        return self.layer(inputs, training=training, **kwargs)

    def bias_and_activation(self, outputs, num_channels: int):
        """The epilogue Keras convolution/dense layers apply after their main op: bias add, then activation."""
        layer = self.layer
        if getattr(layer, "use_bias", False) and layer.bias is not None:
            bias = layer.bias
            if getattr(layer, "data_format", "channels_last") == "channels_first":
                rank = len(outputs.shape) - 2
                bias = ops.reshape(bias, (1, num_channels) + (1,) * rank)
            outputs = ops.add(outputs, bias)
        if layer.activation is not None:
            outputs = layer.activation(outputs)
        return outputs

    # ------------------------------------------------------------------------------------------ serialization
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "quantize_inputs": list(self.quantize_inputs),
                "quantize_weights": self.quantize_weights,
                "activation_range": self.activation_range.get_config(),
            }
        )
        return config


def _serializable(cls):
    return keras.saving.register_keras_serializable(package="qdq_toolkit")(cls)


@_serializable
class ConvQDQWrapper(QDQWrapper):
    """Conv1D / Conv2D / Conv3D: QDQ on the data input (per tensor) and the kernel (per output channel).

    TensorRT rule: a convolution runs in INT8 when both its data and weight inputs come from DequantizeLinear;
    weights may be per-channel on the output-channel axis (ONNX: ``tensorrt_rules.COMPUTE_OPS``; Keras kernel -1), the data
    input must be per-tensor. Bias, BatchNorm folded in and the activation are fused into the kernel's epilogue.
    """

    layer_classes = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    default_quantize_input = True
    default_quantize_weight = True
    kernel_axes = MappingProxyType({"kernel": -1})
    recompute_quantized_in_backward = True

    def quantized_call(self, inputs, training=None, **kwargs):
        kernel = self.quantized_kernel("kernel", training)
        if self.layer.padding == "causal":  # Conv1D only: what Conv1D.call does (convolution_op cannot take it)
            inputs = keras.ops.pad(inputs, self.layer._compute_causal_padding())
            outputs = keras.ops.conv(
                inputs,
                kernel,
                strides=list(self.layer.strides),
                padding="valid",
                dilation_rate=self.layer.dilation_rate,
                data_format=self.layer.data_format,
            )
        else:
            outputs = self.layer.convolution_op(inputs, kernel)
        return self.bias_and_activation(outputs, self.layer.filters)


@_serializable
class DenseQDQWrapper(QDQWrapper):
    """Dense: QDQ on the input (per tensor) and the kernel (per output unit).

    TensorRT rule: MatMul/Gemm runs in INT8 with DequantizeLinear on both operands; the weight (K, N) is
    per-channel along N (Keras kernel axis -1), the activation per tensor.
    """

    layer_classes = (keras.layers.Dense,)
    default_quantize_input = True
    default_quantize_weight = True
    kernel_axes = MappingProxyType({"kernel": -1})
    recompute_quantized_in_backward = True

    def quantized_call(self, inputs, training=None, **kwargs):
        outputs = ops.matmul(inputs, self.quantized_kernel("kernel", training))
        return self.bias_and_activation(outputs, self.layer.units)


@_serializable
class DepthwiseConvQDQWrapper(QDQWrapper):
    """DepthwiseConv1D / DepthwiseConv2D: QDQ on the input (per tensor) and the depthwise kernel (per channel).

    TensorRT rule: a depthwise convolution is a grouped Conv; it runs in INT8 with DQ on data and weights. The
    Keras kernel is (..., in_channels, depth_multiplier); the ranges are taken per input channel (axis -2), which is
    the output-channel axis of the exported ONNX Conv when depth_multiplier is 1.
    """

    layer_classes = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    default_quantize_input = True
    default_quantize_weight = True
    kernel_axes = MappingProxyType({"kernel": -2})
    recompute_quantized_in_backward = True

    def quantized_call(self, inputs, training=None, **kwargs):
        layer = self.layer
        outputs = ops.depthwise_conv(
            inputs,
            self.quantized_kernel("kernel", training),
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
        kernel_shape = layer.kernel.shape
        return self.bias_and_activation(outputs, int(kernel_shape[-2] * kernel_shape[-1]))


@_serializable
class SeparableConvQDQWrapper(QDQWrapper):
    """SeparableConv1D / SeparableConv2D: computed as depthwise conv -> pointwise 1x1 conv, each quantized.

    TensorRT rule: the exported graph has two Conv nodes; each must have DQ on its data and weight inputs to run in
    INT8. So besides the layer input, the depthwise output (the pointwise conv's input) gets its own per-tensor
    QDQ (range slot ``pointwise_input``), and both kernels are per-channel (depthwise axis -2, pointwise axis -1).
    """

    layer_classes = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
    default_quantize_input = True
    default_quantize_weight = True
    kernel_axes = MappingProxyType({"depthwise_kernel": -2, "pointwise_kernel": -1})

    def range_slots(self) -> list[str]:
        slots = super().range_slots()
        if self.quantize_inputs:
            slots.append(POINTWISE_INPUT_SLOT)
        return slots

    def quantized_call(self, inputs, training=None, **kwargs):
        layer = self.layer
        depthwise = ops.depthwise_conv(
            inputs,
            self.quantized_kernel("depthwise_kernel", training),
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
        if self.quantize_inputs:
            depthwise = self.quantize_activation(POINTWISE_INPUT_SLOT, depthwise, training)
        outputs = ops.conv(
            depthwise,
            self.quantized_kernel("pointwise_kernel", training),
            strides=1,
            padding="valid",
            data_format=layer.data_format,
        )
        return self.bias_and_activation(outputs, layer.filters)


@_serializable
class ConvTransposeQDQWrapper(QDQWrapper):
    """Conv1DTranspose / Conv2DTranspose / Conv3DTranspose: QDQ on the input and the kernel (per output channel).

    TensorRT rule: ConvTranspose runs in INT8 with DQ on data and weights, weights per output channel (the ONNX axis
    is in ``tensorrt_rules.COMPUTE_OPS``). The Keras kernel is (..., out, in): axis -2.
    """

    layer_classes = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    default_quantize_input = True
    default_quantize_weight = True
    kernel_axes = MappingProxyType({"kernel": -2})
    recompute_quantized_in_backward = True

    def quantized_call(self, inputs, training=None, **kwargs):
        layer = self.layer
        outputs = ops.conv_transpose(
            inputs,
            self.quantized_kernel("kernel", training),
            strides=list(layer.strides),
            padding=layer.padding,
            output_padding=layer.output_padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
        return self.bias_and_activation(outputs, layer.filters)


@_serializable
class AveragePoolingQDQWrapper(QDQWrapper):
    """AveragePooling1D/2D/3D and GlobalAveragePooling1D/2D/3D: QDQ on the input, on by default.

    TensorRT rule: pooling runs in INT8 when its input is quantized; NVIDIA's recipe quantizes average pooling so
    the reduction does not force a switch back to float between two INT8 convolutions.
    """

    layer_classes = (
        keras.layers.AveragePooling1D,
        keras.layers.AveragePooling2D,
        keras.layers.AveragePooling3D,
        keras.layers.GlobalAveragePooling1D,
        keras.layers.GlobalAveragePooling2D,
        keras.layers.GlobalAveragePooling3D,
    )
    default_quantize_input = True


@_serializable
class MaxPoolingQDQWrapper(QDQWrapper):
    """MaxPooling1D/2D/3D and GlobalMaxPooling1D/2D/3D: QDQ on the input, off by default.

    TensorRT rule: max pooling commutes with quantization, so TensorRT propagates the next layer's QDQ across it by
    itself. Quantize it explicitly where a pattern needs it: ResNet v2 and Inception (so parallel branches after the
    pool share one scale and TensorRT can fuse the Concatenate).
    """

    layer_classes = (
        keras.layers.MaxPooling1D,
        keras.layers.MaxPooling2D,
        keras.layers.MaxPooling3D,
        keras.layers.GlobalMaxPooling1D,
        keras.layers.GlobalMaxPooling2D,
        keras.layers.GlobalMaxPooling3D,
    )


@_serializable
class BatchNormalizationQDQWrapper(QDQWrapper):
    """BatchNormalization: QDQ on the input, off by default.

    TensorRT rule: a BatchNorm after a convolution is folded into it and must not be quantized. A BatchNorm that
    follows an Add or an input (pre-activation ResNet v2) runs as a Scale layer; quantizing its input lets it run
    in INT8 there.
    """

    layer_classes = (keras.layers.BatchNormalization,)


@_serializable
class AddQDQWrapper(QDQWrapper):
    """Add: QDQ on selected inputs, off by default (the residual rule of ``custom_cases`` turns it on).

    TensorRT rule: for ``Add(conv_branch, shortcut)`` quantize only the shortcut; TensorRT fuses the add into the
    convolution producing the other branch, whose output scale comes from the shortcut's QDQ. QDQ on both inputs
    costs an extra re-quantization and blocks that fusion.
    """

    layer_classes = (keras.layers.Add,)
    multi_input = True


@_serializable
class MultiplyQDQWrapper(QDQWrapper):
    """Multiply: QDQ on selected inputs, off by default (EfficientNet's squeeze-excite turns on both).

    TensorRT rule: an element-wise product runs in INT8 only when all of its inputs are quantized.
    """

    layer_classes = (keras.layers.Multiply,)
    multi_input = True


@_serializable
class ConcatenateQDQWrapper(QDQWrapper):
    """Concatenate: QDQ on selected inputs, off by default.

    TensorRT rule: a concatenation is free (its inputs are written into one buffer) when every input has the same
    scale; TensorRT propagates QDQ across it, so quantize it explicitly only where a model needs it.
    """

    layer_classes = (keras.layers.Concatenate,)
    multi_input = True


# ------------------------------------------------------------------------------------------------ transformers
#
# Sources for the placement below (read before writing it, December 2026):
# * TensorRT, "Fused Attention" (docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
#   transformers-fused-attention.html): attention is fused from MatMul(Q, K^T) -> (mask) -> Softmax -> MatMul(., V);
#   Q (or K) must already be scaled by 1/sqrt(d) when it reaches the first batched MatMul.
# * NVIDIA ModelOpt, PyTorch side: its quantized attention modules carry ``q_bmm_quantizer``, ``k_bmm_quantizer``,
#   ``v_bmm_quantizer`` and ``softmax_quantizer`` -- QDQ on both inputs of both batched matmuls; its ONNX FP8 MHA
#   export (NVIDIA/Model-Optimizer PR #1289) moves the attention scaling and K's Transpose so that each DQ feeds
#   its MatMul directly and quantizes the Softmax output, which is what TensorRT's fused MHA kernels match.
# * NVIDIA ModelOpt, ONNX side (``modelopt/onnx/quantization/partitioning.py``): LayerNorm chains and the GELU
#   ``Erf`` chain are non-quantizable partitions; linear ops (MatMul/Gemm) get QDQ on their inputs.
# * Keras 3 sources: ``keras/src/layers/attention/multi_head_attention.py`` (projections are EinsumDense layers,
#   scores = einsum(key, query * 1/sqrt(key_dim)), masked Softmax, dropout, einsum(probs, value), output
#   EinsumDense) and ``keras/src/layers/core/einsum_dense.py`` (einsum, + bias, activation).


class EinsumMatMul:
    """An EinsumDense equation computed as ``transpose -> reshape -> MatMul(x, W2d) -> reshape -> transpose``.

    ONNX per-channel quantization has exactly one axis, and TensorRT quantizes a MatMul weight (K, N) per column
    N. An EinsumDense kernel may have several output-feature axes (MultiHeadAttention's query kernel is
    (dim, heads, head_dim)), so the kernel is flattened to 2-D ``(contracted features, output features)`` and
    quantized per column: exactly "per output feature, whatever the equation". The export is then a MatMul with
    a DequantizeLinear on each input and no ``Einsum`` node (TensorRT runs ONNX Einsum in float only).

    Supported: every equation whose letters are free input axes (kept in the output), contracted axes (input and
    kernel, not output) and kernel output axes, with ``...`` allowed. Batch axes shared by input, kernel and
    output, and input axes summed away, are refused with the reason.
    """

    def __init__(self, equation: str, input_rank: int, layer_name: str = ""):
        inputs_kernel, output = equation.replace(" ", "").split("->")
        inputs, kernel = inputs_kernel.split(",")
        if "..." in inputs:
            count = input_rank - (len(inputs) - 3)
            extra = "".join(chr(ord("A") + i) for i in range(count))
            inputs, output = inputs.replace("...", extra), output.replace("...", extra)
        where = f"EinsumDense '{layer_name}' (equation {equation!r})"
        if len(inputs) != input_rank:
            raise ValueError(f"{where}: the equation names {len(inputs)} input axes but the input has rank {input_rank}.")
        shared = [c for c in kernel if c in inputs and c in output]
        summed = [c for c in inputs if c not in kernel and c not in output]
        if shared or summed:
            raise ValueError(
                f"{where} cannot be computed as one MatMul ({'batch axes ' + ''.join(shared) if shared else ''}"
                f"{' summed input axes ' + ''.join(summed) if summed else ''}). Leave it in float: "
                f"spec.add('{layer_name}', quantize_input=False, quantize_weight=False)."
            )
        self.contracted = [c for c in kernel if c in inputs]
        self.kernel_out = [c for c in kernel if c not in inputs]
        self.free = [c for c in inputs if c not in kernel]
        product = self.free + self.kernel_out
        self.input_perm = [inputs.index(c) for c in self.free + self.contracted]
        self.kernel_perm = [kernel.index(c) for c in self.contracted + self.kernel_out]
        self.output_perm = [product.index(c) for c in output]

    @staticmethod
    def _is_identity(perm) -> bool:
        return list(perm) == list(range(len(perm)))

    def flat_kernel(self, kernel):
        """The kernel as a 2-D ``(contracted, output features)`` matrix, per-column quantizable."""
        if not self._is_identity(self.kernel_perm):
            kernel = ops.transpose(kernel, self.kernel_perm)
        shape = tuple(kernel.shape)
        contracted = 1
        for dim in shape[: len(self.contracted)]:
            contracted *= int(dim)
        return ops.reshape(kernel, (contracted, -1))

    def kernel_out_shape(self, kernel_shape) -> tuple[int, ...]:
        return tuple(int(kernel_shape[self.kernel_perm[len(self.contracted) + i]]) for i in range(len(self.kernel_out)))

    def __call__(self, x, kernel_2d, kernel_out_shape):
        if not self._is_identity(self.input_perm):
            x = ops.transpose(x, self.input_perm)
        free_dims = ops.shape(x)[: len(self.free)]
        if len(self.contracted) != 1:
            x = ops.reshape(x, (*free_dims, int(kernel_2d.shape[0])))
        y = ops.matmul(x, kernel_2d)
        if len(self.kernel_out) != 1:
            y = ops.reshape(y, (*free_dims, *kernel_out_shape))
        if not self._is_identity(self.output_perm):
            y = ops.transpose(y, self.output_perm)
        return y


def _flat_quantized_kernel(wrapper: QDQWrapper, owner, plan: EinsumMatMul, attribute: str, training):
    """The 2-D MatMul kernel of ``owner`` (an EinsumDense), per-column QDQ when the wrapper quantizes weights.

    :meth:`QDQWrapper.quantized_kernel` quantizes an attribute of the wrapped layer; the flattened kernel is put
    there under ``attribute`` for the duration of that call only (it is a tensor computed from the variable, so
    gradients reach the kernel through the reshape).
    """
    wrapper.layer.__dict__[attribute] = plan.flat_kernel(owner.kernel)
    try:
        return wrapper.quantized_kernel(attribute, training)
    finally:
        del wrapper.layer.__dict__[attribute]


def _einsum_epilogue(layer, outputs):
    if getattr(layer, "bias", None) is not None:
        outputs = ops.add(outputs, layer.bias)
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs


@_serializable
class EinsumDenseQDQWrapper(QDQWrapper):
    """EinsumDense: QDQ on the input (per tensor) and the kernel (per output feature), computed as MatMul.

    TensorRT rule: a MatMul runs in INT8 with DequantizeLinear on both operands, the weight (K, N) per channel
    along N. ONNX per-channel scales lie on one axis and TensorRT runs ``Einsum`` in float, so the wrapper computes
    the equation as reshape + MatMul with the kernel flattened to ``(in_features, out_features)`` and quantized
    per column, whatever the equation (see :class:`EinsumMatMul`); the export is a MatMul with DQ on both inputs.
    Bias and activation follow the MatMul, as TensorRT's GEMM epilogue does.
    """

    layer_classes = (keras.layers.EinsumDense,)
    default_quantize_input = True
    default_quantize_weight = True
    kernel_axes = MappingProxyType({"_qdq_matmul_kernel": -1})

    def build(self, input_shape=None):
        super().build(input_shape)
        self._plan = EinsumMatMul(self.layer.equation, len(input_shape), self.layer.name)

    def quantized_call(self, inputs, training=None, **kwargs):
        layer = self.layer
        kernel = _flat_quantized_kernel(self, layer, self._plan, "_qdq_matmul_kernel", training)
        outputs = self._plan(inputs, kernel, self._plan.kernel_out_shape(layer.kernel.shape))
        return _einsum_epilogue(layer, outputs)


@_serializable
class MultiHeadAttentionQDQWrapper(QDQWrapper):
    """MultiHeadAttention: QDQ where TensorRT's fused INT8 attention reads INT8, computed with MatMul/Transpose.

    TensorRT rule: the projections are GEMMs (QDQ on their input, per tensor, and on their kernel, per output
    feature); the attention core ``MatMul(Q, K^T) -> Softmax -> MatMul(P, V)`` runs as a fused INT8 MHA kernel when
    both inputs of both batched matmuls come from DequantizeLinear: Q (already scaled by 1/sqrt(key_dim), as
    TensorRT requires) and K for the scores, the softmax probabilities and V for the context (ModelOpt's
    ``q/k/v_bmm_quantizer`` + ``softmax_quantizer``). Softmax itself, the mask and dropout stay float. The export
    has MatMul and Transpose only -- no ``Einsum`` -- and each DQ feeds its MatMul directly.

    Range slots: ``query`` (the input of the query projection; shared by the key/value projections when they read
    the same tensor -- self-attention -- so TensorRT quantizes that tensor once), ``value`` and ``key`` when they
    are other tensors, ``bmm1_query``, ``bmm1_key``, ``bmm2_probs``, ``bmm2_value`` and ``output_input`` (the
    output projection's input). Masks work as in the float layer: ``attention_mask``, Keras padding masks on the
    inputs (``_keras_mask``) and ``use_causal_mask``. Supported: 3-D inputs ``(batch, sequence, features)`` with
    attention over the sequence (Keras' default ``attention_axes``), no ``use_gate``.
    """

    layer_classes = (keras.layers.MultiHeadAttention,)
    default_quantize_input = True
    default_quantize_weight = True
    multi_input = True  # query, value (, key): any quantization_index quantizes the whole layer
    kernel_axes = MappingProxyType(
        {f"_qdq_{name}_kernel": -1 for name in ("query", "key", "value", "output")}
    )
    _CORE_SLOTS = ("bmm1_query", "bmm1_key", "bmm2_probs", "bmm2_value", "output_input")

    def __init__(self, layer, quantize_inputs=(0,), quantize_weights=False, activation_range=None, **kwargs):
        self._distinct_value = kwargs.pop("distinct_value", None)
        self._distinct_key = kwargs.pop("distinct_key", None)
        super().__init__(layer, quantize_inputs, quantize_weights, activation_range, **kwargs)
        self.supports_masking = True  # like MultiHeadAttention: the query's padding mask carries on to the output

    def __call__(self, query, value=None, key=None, **kwargs):
        distinct_value = value is not None and value is not query
        distinct_key = key is not None and key is not (value if value is not None else query)
        if self._distinct_value is None:
            # Which projection inputs are separate tensors decides the range slots (self-attention: one).
            self._distinct_value, self._distinct_key = distinct_value, distinct_key
        elif (distinct_value and not self._distinct_value) or (distinct_key and not self._distinct_key):
            raise ValueError(
                f"{self.name}: built for {'self-attention' if not self._distinct_value else 'query != value'} "
                "(one range for the tensors the projections share) but now called with separate query/value/key "
                "tensors. Call it as it was first called, or quantize a layer per use."
            )
        return super().__call__(query, value, key, **kwargs)

    def assume_self_attention(self) -> None:
        """Before building: the layer will be called with ``query``, ``value`` (and ``key``) one tensor."""
        self._distinct_value = self._distinct_key = False

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        layer = self.layer
        if not layer.built:
            layer.build(query_shape, value_shape, key_shape)
        if len(query_shape) != 3 or getattr(layer, "_use_gate", False) or tuple(layer._attention_axes) != (1,):
            raise ValueError(
                f"MultiHeadAttention '{layer.name}': the QDQ wrapper supports 3-D inputs (batch, sequence, features) "
                "with attention over the sequence axis and no use_gate. Leave this layer in float: "
                f"spec.add('{layer.name}', quantize_input=False, quantize_weight=False)."
            )
        self._plans = {
            name: EinsumMatMul(dense.equation, rank, dense.name)
            for name, dense, rank in (
                ("query", layer._query_dense, len(query_shape)),
                ("key", layer._key_dense, len(key_shape or value_shape)),
                ("value", layer._value_dense, len(value_shape)),
                ("output", layer._output_dense, 4),
            )
        }
        # The base class checks the quantization indices against the inputs; any index means "the whole layer"
        # here (the attention mask can be a node input too), so it sees as many inputs as the indices name.
        QDQWrapper.build(self, [query_shape] * (max(self.quantize_inputs, default=0) + 1))

    def range_slots(self) -> list[str]:
        if not self.quantize_inputs:
            return []
        slots = ["query"]
        if self._distinct_value:
            slots.append("value")
        if self._distinct_key:
            slots.append("key")
        return slots + list(self._CORE_SLOTS)

    def _qdq(self, slot, x, training):
        return self.quantize_activation(slot, x, training) if self.quantize_inputs else x

    def _project(self, name, x, training):
        dense = getattr(self.layer, f"_{name}_dense")
        plan = self._plans[name]
        kernel = _flat_quantized_kernel(self, dense, plan, f"_qdq_{name}_kernel", training)
        return _einsum_epilogue(dense, plan(x, kernel, plan.kernel_out_shape(dense.kernel.shape)))

    def call(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        from keras.src import backend  # get/set_keras_mask: how Keras layers read padding masks

        layer = self.layer
        value = query if value is None else value
        key = value if key is None else key
        query_mask = backend.get_keras_mask(query) if query_mask is None else query_mask
        value_mask = backend.get_keras_mask(value) if value_mask is None else value_mask
        if key is not value and key_mask is None:
            key_mask = backend.get_keras_mask(key)
        mask = layer._compute_attention_mask(
            query,
            value,
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask if key is not value else None,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
        )
        q_in = self._qdq("query", query, training)
        v_in = self._qdq("value", value, training) if self._distinct_value else q_in
        if self._distinct_key:
            k_in = self._qdq("key", key, training)
        else:
            k_in = v_in
        q = self._project("query", q_in, training)  # (B, T, N, H)
        k = self._project("key", k_in, training)  # (B, S, N, H)
        v = self._project("value", v_in, training)  # (B, S, N, H)
        q = ops.transpose(ops.multiply(q, ops.cast(layer._inverse_sqrt_key_dim, q.dtype)), (0, 2, 1, 3))
        k = ops.transpose(k, (0, 2, 3, 1))  # (B, N, H, S)
        scores = ops.matmul(self._qdq("bmm1_query", q, training), self._qdq("bmm1_key", k, training))  # (B, N, T, S)
        probs = layer._masked_softmax(scores, mask)
        dropped = layer._dropout_layer(probs, training=training) if layer._dropout > 0.0 else probs
        v = ops.transpose(v, (0, 2, 1, 3))  # (B, N, S, H)
        context = ops.matmul(self._qdq("bmm2_probs", dropped, training), self._qdq("bmm2_value", v, training))
        context = ops.transpose(context, (0, 2, 1, 3))  # (B, T, N, H)
        output = self._project("output", self._qdq("output_input", context, training), training)
        if query_mask is not None:
            backend.set_keras_mask(output, query_mask)
        if return_attention_scores:
            return output, probs
        return output

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        return self.layer.compute_output_shape(query_shape, query_shape if value_shape is None else value_shape, key_shape)

    def compute_output_spec(self, query, value=None, key=None, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(query, query if value is None else value, key, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"distinct_value": self._distinct_value, "distinct_key": self._distinct_key})
        return config


@_serializable
class EmbeddingQDQWrapper(QDQWrapper):
    """Embedding: per-channel QDQ on the embedding table (weight-only int8), off by default.

    TensorRT rule: a Gather of a constant table is a lookup, not a GEMM; there is nothing for an INT8 kernel to
    fuse, so NVIDIA's recipes (and ModelOpt's ONNX placement) leave embeddings in float. Quantizing the table
    simulates int8 storage of it (scales per embedding feature, axis -1). The token ids are integers and never
    get QDQ, whatever the spec says about inputs.
    """

    layer_classes = (keras.layers.Embedding,)
    kernel_axes = MappingProxyType({"embeddings": -1})

    def range_slots(self) -> list[str]:
        return []

    def call(self, inputs, training=None, **kwargs):
        if inputs.dtype not in ("int32", "int64"):
            inputs = ops.cast(inputs, "int32")
        outputs = ops.take(self.quantized_kernel("embeddings", training), inputs, axis=0)
        return ops.cast(outputs, dtype=self.layer.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@_serializable
class NestedLayersQDQWrapper(QDQWrapper):
    """Composite layers that hold supported layers inside them: QDQ on those inner layers, the rest untouched.

    keras-hub builds its backbones from composite layers -- ``TransformerEncoder`` (a MultiHeadAttention, two
    Dense, two LayerNormalization, residual adds), ``ViTEncoder`` (a list of ``ViTEncoderBlock``), the ViT patch
    embedding (a Conv2D) -- that are leaves of the Functional graph. The wrapper puts the wrapper of every inner
    layer whose wrapper is on by default in ``quantization_mode="full"`` (MultiHeadAttention, Dense, EinsumDense,
    Conv, ...) in place of that layer, so the composite's own ``call`` runs through them; LayerNormalization,
    Softmax, GELU, dropout and the residual adds stay float, which is the placement TensorRT fuses best (see
    :class:`MultiHeadAttentionQDQWrapper`; ModelOpt's ONNX placement keeps LayerNorm and GELU partitions float).
    A spec entry for the composite turns all of its inner layers on or off together.

    Its activation ranges are those of the inner wrappers, named ``"<attribute path>/<slot>"`` (e.g.
    ``_self_attention_layer/bmm2_probs``). Listed by class name (``layer_class_names``) so that keras-hub is not
    imported by the toolkit.
    """

    layer_class_names = (
        "keras_hub.src.layers.modeling.transformer_encoder.TransformerEncoder",
        "keras_hub.src.models.vit.vit_layers.ViTEncoder",
        "keras_hub.src.models.vit.vit_layers.ViTPatchingAndEmbedding",
    )
    default_quantize_input = True
    default_quantize_weight = True
    multi_input = True  # any input index: the inner layers decide what they quantize
    # The kernels are those of the inner layers; this entry only tells quantize_model that weights exist.
    kernel_axes = MappingProxyType({"<inner layers>": -1})

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._ranges = {}
        self._inner: dict[str, QDQWrapper] = {}
        self._wrap_inside(self.layer, "")
        # Tracked here (not by the composite), so the composite's own weights stay what they were.
        self.inner_wrappers = list(self._inner.values())
        self.built = True

    def _wrap_inside(self, layer, prefix: str) -> None:
        for name, value in list(vars(layer).items()):
            if name == "_layers":  # Keras' own list of tracked sublayers: the attributes below name the same layers
                continue
            if isinstance(value, keras.layers.Layer):
                replacement = self._wrapped(value, f"{prefix}{name}")
                if replacement is not None:
                    object.__setattr__(layer, name, replacement)  # untracked: the composite keeps its weights
            elif isinstance(value, list) and any(isinstance(item, keras.layers.Layer) for item in value):
                for index, item in enumerate(value):
                    if isinstance(item, keras.layers.Layer):
                        replacement = self._wrapped(item, f"{prefix}{name}/{index}")
                        if replacement is not None:
                            list.__setitem__(value, index, replacement)

    def _wrapped(self, layer, path: str):
        if isinstance(layer, QDQWrapper):
            return None
        wrapper = DEFAULT_REGISTRY.wrapper_for(type(layer))
        if wrapper is None or wrapper is NestedLayersQDQWrapper:
            self._wrap_inside(layer, f"{path}/")
            return None
        if not (wrapper.default_quantize_input or wrapper.default_quantize_weight):
            return None
        inputs = (0,) if self.quantize_inputs and wrapper.default_quantize_input else ()
        weights = self.quantize_weights and wrapper.default_quantize_weight
        if not inputs and not weights:
            return None
        inner = wrapper(layer, quantize_inputs=inputs, quantize_weights=weights, activation_range=self.activation_range)
        if isinstance(inner, MultiHeadAttentionQDQWrapper):
            inner.assume_self_attention()  # what TransformerEncoder and ViTEncoderBlock do (checked at each call)
        # Built now, with the shapes the composite built the layer with, so the ranges exist with the model (no
        # trace of the composite's call needed, which would cost a second per transformer layer).
        inner.build(*(layer._build_shapes_dict or {}).values())
        self._inner[path] = inner
        return inner

    def range_slots(self) -> list[str]:
        return []

    def activation_ranges(self) -> dict[str, keras.Variable]:
        return {f"{path}/{slot}": amax for path, inner in self._inner.items() for slot, amax in inner.activation_ranges().items()}

    def unobserved_ranges(self) -> list[str]:
        return [f"{path}/{slot}" for path, inner in self._inner.items() for slot in inner.unobserved_ranges()]

    def set_activation_range(self, slot: str, amax: float) -> None:
        path, _, inner_slot = slot.rpartition("/")
        if path not in self._inner:
            raise KeyError(f"{self.name} has no activation range '{slot}'; it has {sorted(self.activation_ranges())}.")
        self._inner[path].set_activation_range(inner_slot, amax)

    def set_observer(self, observer: Observer | None) -> None:
        self._observer = observer
        for path, inner in self._inner.items():
            if observer is None:
                inner.set_observer(None)
            else:
                inner.set_observer(lambda _inner, slot, tensor, path=path: observer(self, f"{path}/{slot}", tensor))

    def call(self, inputs, *args, training=None, **kwargs):
        return self.layer(inputs, *args, training=training, **kwargs)

    def compute_output_spec(self, inputs, *args, training=None, **kwargs):
        return self.layer.compute_output_spec(inputs, *args, **kwargs)


BUILTIN_WRAPPERS: tuple[type[QDQWrapper], ...] = (
    ConvQDQWrapper,
    DenseQDQWrapper,
    DepthwiseConvQDQWrapper,
    SeparableConvQDQWrapper,
    ConvTransposeQDQWrapper,
    AveragePoolingQDQWrapper,
    MaxPoolingQDQWrapper,
    BatchNormalizationQDQWrapper,
    AddQDQWrapper,
    MultiplyQDQWrapper,
    ConcatenateQDQWrapper,
    EinsumDenseQDQWrapper,
    MultiHeadAttentionQDQWrapper,
    EmbeddingQDQWrapper,
    NestedLayersQDQWrapper,
)


class WrapperRegistry:
    """An immutable map from Keras layer class to QDQ wrapper class.

    Lookups are by exact class. :meth:`with_wrappers` returns a new registry with extra (or replacing) wrappers,
    so user wrappers are passed per call and never change a global.
    """

    def __init__(self, wrappers: Iterable[type[QDQWrapper]]):
        table: dict[type, type[QDQWrapper]] = {}
        by_name: dict[str, type[QDQWrapper]] = {}
        for wrapper in wrappers:
            if not (isinstance(wrapper, type) and issubclass(wrapper, QDQWrapper)):
                raise TypeError(
                    f"{wrapper!r} is not a QDQWrapper subclass. A custom wrapper subclasses "
                    "qdq_toolkit.QDQWrapper and lists the Keras classes it wraps in `layer_classes`."
                )
            class_names = getattr(wrapper, "layer_class_names", ())
            if not wrapper.layer_classes and not class_names:
                raise ValueError(
                    f"{wrapper.__name__}.layer_classes is empty: list the Keras layer classes it wraps."
                )
            for layer_class in wrapper.layer_classes:
                table[layer_class] = wrapper
            for class_name in class_names:  # classes of optional packages (keras-hub), matched by qualified name
                by_name[class_name] = wrapper
        self._table = MappingProxyType(table)
        self._by_name = MappingProxyType(by_name)

    def with_wrappers(self, wrappers: Iterable[type[QDQWrapper]] | None) -> WrapperRegistry:
        if not wrappers:
            return self
        return WrapperRegistry([*dict.fromkeys([*self._table.values(), *self._by_name.values()]), *wrappers])

    def wrapper_for(self, layer_class: type) -> type[QDQWrapper] | None:
        return self._table.get(layer_class) or self._by_name.get(_qualified_name(layer_class))

    def supported_classes(self) -> list[str]:
        return sorted({cls.__name__ for cls in self._table} | {name.rsplit(".", 1)[-1] for name in self._by_name})

    def class_named(self, name: str) -> type | None:
        for cls in self._table:
            if cls.__name__ == name:
                return cls
        return None


DEFAULT_REGISTRY = WrapperRegistry(BUILTIN_WRAPPERS)
