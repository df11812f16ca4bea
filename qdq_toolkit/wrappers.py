"""One QDQ wrapper class per Keras layer family, and the registry that maps a layer class to its wrapper.

A wrapper holds the original layer and puts quantize/dequantize (QDQ) on the layer's **inputs and weights, never
its outputs**: TensorRT fuses a convolution or GEMM with the QDQ of its inputs and weights into one INT8 kernel, and
reads the next layer's input QDQ as the scale of that kernel's output. A QDQ on an output would sit between the
kernel and its bias/activation epilogue and break the fusion.

Each wrapper's docstring states the TensorRT rule behind its placement. To support a new layer class, subclass
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
        self._fused_weight_qdq: dict = {}
        # Float kernels given by the recomputing call path, by attribute name (a plain namespace: Keras would track
        # a dict attribute as layer state).
        self._kernel_values = SimpleNamespace(by_name={})
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
                    name=f"{slot}_amax",
                    shape=(),
                    initializer=keras.initializers.Constant(1.0),
                    trainable=False,
                    autocast=False,
                    aggregation="only_first_replica",
                ),
                self.add_weight(
                    name=f"{slot}_steps",
                    shape=(),
                    initializer="zeros",
                    trainable=False,
                    autocast=False,
                    aggregation="only_first_replica",
                ),
            )
        self.built = True

    def range_slots(self) -> list[str]:
        """Names of the activation ranges this wrapper keeps: ``input``, ``input_1``, ... (and extras)."""
        if not self.multi_input:
            return ["input"] if self.quantize_inputs else []
        return [f"input_{i}" for i in self.quantize_inputs]

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, inputs, training=None, **kwargs):
        # QDQ keeps shapes and dtypes: the output is what the wrapped layer gives (which may trace its own call).
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
        kernel = self._kernel_values.by_name.get(name)
        if kernel is None:
            kernel = getattr(self.layer, name)
        if not self.quantize_weights or self._observer is not None:
            return kernel
        fused = None
        if training:  # one XLA function per kernel: traced once, for this kernel's shape
            fused = self._fused_weight_qdq.get(name)
            if fused is None:
                fused = self._fused_weight_qdq[name] = quantizers.fused_weight_qdq_function()
        compute_dtype = self.layer.compute_dtype
        kernel = self._float_kernel(kernel)  # a tensor (the QDQ's custom gradients take no variables), float32
        quantized = quantizers.qdq_per_channel(kernel, self.kernel_axes[name], training=bool(training), fused=fused)
        return ops.cast(quantized, compute_dtype)

    @staticmethod
    def _float_kernel(kernel):
        """The variable's own (float32) value, not the mixed policy's autocast copy."""
        with _no_autocast():  # keras.src.layers.layer: a Layer opens AutocastScope(None) to read raw variables
            return tf.convert_to_tensor(kernel)

    def call(self, inputs, training=None, **kwargs):
        if training and not kwargs and self._recomputes_in_backward():
            return self._call_recomputing_quantized(inputs)
        if self.multi_input:
            inputs = list(inputs)
            for index in self.quantize_inputs:
                inputs[index] = self.quantize_activation(f"input_{index}", inputs[index], training)
        elif self.quantize_inputs:
            inputs = self.quantize_activation("input", inputs, training)
        return self.quantized_call(inputs, training, **kwargs)

    def _recomputes_in_backward(self) -> bool:
        return (
            self.recompute_quantized_in_backward
            and self._observer is None
            and self.quantize_weights
            and not self.multi_input
            and self.quantize_inputs == (0,)
            and self.range_slots() == ["input"]
            # an epilogue activation's gradient reads the main op's output: recomputing it would redo the op
            and getattr(self.layer, "activation", None) in (None, keras.activations.linear)
        )

    def _call_recomputing_quantized(self, x):
        """A training call that keeps only the float input and kernels for the backward pass.

        The forward is :meth:`call`'s: QDQ of the input with its tracked range (updated here, once), QDQ of the
        kernels, :meth:`quantized_call`. The backward recomputes the two QDQs -- element-wise, cheap -- and
        differentiates :meth:`quantized_call` on them, so neither the fake-quantized input (which the
        convolution's filter gradient would keep) nor the fake-quantized kernels (which its input gradient would
        keep) stay in memory between the passes; the main op's own recomputed forward is pruned from the graph
        when nothing in the backward reads it (a convolution or matmul followed by a bias and a linear or ReLU-free
        epilogue). The gradients are those of :meth:`call` (tested).
        """
        amax_var, steps_var = self._ranges["input"]
        if self.activation_range.method == "fixed":
            used = ops.convert_to_tensor(amax_var)
        else:
            used = quantizers.tracked_range(x, amax_var, steps_var, self.activation_range)
        names = list(self.kernel_axes)
        kernels = [self._float_kernel(getattr(self.layer, name)) for name in names]

        def forward(x, *kernels):
            self._kernel_values.by_name = dict(zip(names, kernels, strict=True))
            try:
                return self.quantized_call(quantizers.qdq_per_tensor(x, used, training=True), True)
            finally:
                self._kernel_values.by_name = {}

        @tf.custom_gradient
        def recomputing(x, *kernels):
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
                    outputs = forward(x_again, *kernels_again)
                gradients = tape.gradient(
                    outputs, [x_again, *kernels_again, *variables], output_gradients=upstream
                )
                count = 1 + len(kernels)
                return gradients[:count], gradients[count:]

            return forward(x, *kernels), grad

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
    weights may be per-channel on the output-channel axis (ONNX Conv weight axis 0; Keras kernel axis -1), the data
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
            slots.append("pointwise_input")
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
            depthwise = self.quantize_activation("pointwise_input", depthwise, training)
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

    TensorRT rule: ConvTranspose runs in INT8 with DQ on data and weights; its weights are per-channel on ONNX axis 1
    (the output channels of a (C_in, C_out, kH, kW) weight). The Keras kernel is (..., out, in): axis -2.
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
)


class WrapperRegistry:
    """An immutable map from Keras layer class to QDQ wrapper class.

    Lookups are by exact class. :meth:`with_wrappers` returns a new registry with extra (or replacing) wrappers,
    so user wrappers are passed per call and never change a global.
    """

    def __init__(self, wrappers: Iterable[type[QDQWrapper]]):
        table: dict[type, type[QDQWrapper]] = {}
        for wrapper in wrappers:
            if not (isinstance(wrapper, type) and issubclass(wrapper, QDQWrapper)):
                raise TypeError(
                    f"{wrapper!r} is not a QDQWrapper subclass. A custom wrapper subclasses "
                    "qdq_toolkit.QDQWrapper and lists the Keras classes it wraps in `layer_classes`."
                )
            if not wrapper.layer_classes:
                raise ValueError(
                    f"{wrapper.__name__}.layer_classes is empty: list the Keras layer classes it wraps."
                )
            for layer_class in wrapper.layer_classes:
                table[layer_class] = wrapper
        self._table = MappingProxyType(table)

    def with_wrappers(self, wrappers: Iterable[type[QDQWrapper]] | None) -> WrapperRegistry:
        if not wrappers:
            return self
        return WrapperRegistry([*dict.fromkeys(self._table.values()), *wrappers])

    def wrapper_for(self, layer_class: type) -> type[QDQWrapper] | None:
        return self._table.get(layer_class)

    def supported_classes(self) -> list[str]:
        return sorted(cls.__name__ for cls in self._table)

    def class_named(self, name: str) -> type | None:
        for cls in self._table:
            if cls.__name__ == name:
                return cls
        return None


DEFAULT_REGISTRY = WrapperRegistry(BUILTIN_WRAPPERS)
