"""The QDQ math: symmetric int8 quantize/dequantize, per tensor and per channel.

This is the only module that calls TensorFlow's quantize ops. Everything here is what TensorRT's explicit
quantization expects: symmetric ranges ``[-amax, amax]``, narrow int8 range ``[-127, 127]``, zero point 0,
``scale = amax / 127``; weights per output channel, activations per tensor.

Op choices (checked on TF 2.19-2.21 and tf2onnx 1.17, see DESIGN.md):

* Activations use ``QuantizeAndDequantizeV4`` (``tf.quantization.quantize_and_dequantize_v2``) with a scalar
  range. Its registered gradient is the *clipped* straight-through estimator: the incoming gradient passes where
  ``-amax <= x <= amax`` and is zero outside, which is the estimator TensorRT's own QAT recipes use for
  activations (values clipped by the quantizer do not learn from a gradient they did not produce). Training steps
  compute that same gradient from a one-byte mask under a ``tf.custom_gradient`` (:func:`qdq_per_tensor`), so the
  backward pass does not keep the op's float input alive.
* Weights use ``QuantizeAndDequantizeV3`` with vector ranges and an ``axis``: V4 rejects vector ranges at run time
  on CPU ("input_min must be a scalar"). V3's registered gradient is a plain pass-through. Because the weight range
  is ``max |w|`` of each channel, no weight is ever outside it, so plain and clipped straight-through coincide and
  the gradient reaching the kernel is exactly the straight-through estimator. ``amax`` is computed from the kernel
  in the graph, so after ``model.export`` tf2onnx folds it into constant per-channel scales.

Every ``amax`` is floored at :data:`MIN_AMAX` so that scales stay > 0 (TensorRT rejects zero scales and tf2onnx
aborts on an all-zero range), e.g. for a dead channel whose weights are all zero.

Mixed precision: the QDQ arithmetic always runs in float32 (float64 stays float64). A float16 or bfloat16 tensor
is cast to float32, quantized, and cast back, so a scale trained under ``mixed_float16`` / ``mixed_bfloat16`` means
exactly what TensorRT's float32 Q/DQ computes -- and the CPU kernels of QuantizeAndDequantizeV3/V4 exist for float32
and float64 only ("Registered kernels: ... T in [DT_DOUBLE] / [DT_FLOAT]").
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

NUM_BITS = 8
#: Narrow symmetric int8: quantized values lie in [-QMAX, QMAX].
QMAX = 2 ** (NUM_BITS - 1) - 1
#: Smallest range ever used. scale = MIN_AMAX / 127 ~ 7.9e-9 is a normal float32 and > 0.
MIN_AMAX = 1e-6

#: How activation ranges follow the data while a model trains (see :class:`RangeTracking`).
RANGE_METHODS = ("ema", "max", "last", "fixed")


@dataclass(frozen=True)
class RangeTracking:
    """How the activation range (amax) of each quantized input follows the data during ``fit``.

    Only training steps update ranges; inference never does. Each step measures the batch's ``max |x|``
    (under ``tf.distribute`` it is reduced with MAX over the replicas first, so every replica sees the range of
    the global batch and all replicas hold identical ranges). Then:

    * ``"ema"`` (default): an exponential moving average, ``amax <- decay * amax + (1 - decay) * batch_max``,
      starting from the first observed batch (or from the calibrated range). The exported scales summarise the
      recent training distribution instead of depending on whichever batch came last, a single outlier batch
      moves them by only ``1 - decay``, and they keep following the activations as the weights change during
      fine-tuning. This is the choice of TF Model Optimization's QAT.
    * ``"max"``: the running maximum over every batch seen. Never clips anything seen in training, but one outlier
      stretches the range for good and wastes resolution.
    * ``"last"``: the last batch's max, which is what NVIDIA's TF2 toolkit does. Kept for comparison only: the
      exported scales depend on whichever batch happened to come last.
    * ``"fixed"``: ranges never change during training. Use this after :func:`qdq_toolkit.calibrate` to fine-tune
      against the calibrated ranges (the workflow of TensorRT's PyTorch toolkit).

    Args:
        method: one of ``"ema"``, ``"max"``, ``"last"``, ``"fixed"``.
        decay: the EMA decay, in (0, 1). 0.99 remembers roughly the last 100 steps, which suits fine-tuning runs
            of a few hundred to a few thousand steps.
    """

    method: str = "ema"
    decay: float = 0.99

    def __post_init__(self) -> None:
        if self.method not in RANGE_METHODS:
            raise ValueError(
                f"Unknown activation range method {self.method!r}. Use one of {', '.join(RANGE_METHODS)}."
            )
        if not 0.0 < float(self.decay) < 1.0:
            raise ValueError(f"RangeTracking decay must be strictly between 0 and 1, got {self.decay!r}.")

    def get_config(self) -> dict:
        return {"method": self.method, "decay": float(self.decay)}

    @classmethod
    def from_config(cls, config: dict | str | RangeTracking | None) -> RangeTracking:
        """Accept a RangeTracking, a method name, a config dict or None (the default)."""
        if config is None:
            return cls()
        if isinstance(config, RangeTracking):
            return config
        if isinstance(config, str):
            return cls(method=config)
        if isinstance(config, dict):
            return cls(**config)
        raise TypeError(
            f"activation_range must be a RangeTracking, one of {RANGE_METHODS} or a dict, got {type(config).__name__}."
        )


#: Dtypes the QDQ arithmetic runs in; any other float (float16, bfloat16) is computed in float32 and cast back.
QDQ_DTYPES = (tf.float32, tf.float64)


def arithmetic_dtype(dtype: tf.DType) -> tf.DType:
    """The dtype the QDQ of a ``dtype`` tensor is computed in: float32 for float16/bfloat16, else ``dtype``."""
    return dtype if dtype in QDQ_DTYPES else tf.float32


def qdq_per_tensor(x: tf.Tensor, amax: tf.Tensor, training: bool = False) -> tf.Tensor:
    """Quantize-dequantize ``x`` with one symmetric range ``[-amax, amax]`` (activations).

    ``x_q = clip(round_half_even(x / s), -127, 127) * s`` with ``s = amax / 127``, computed in float32 for a
    float16/bfloat16 ``x`` (the result is cast back to ``x.dtype``). Gradient: clipped straight-through (passes
    inside the range, zero outside).

    Inference (and so every exported graph) is the bare ``QuantizeAndDequantizeV4`` op. With ``training`` the same
    op runs under a :func:`tf.custom_gradient` that keeps a one-byte mask ``|x| <= amax`` for the backward pass
    instead of the op's float input, which the registered ``QuantizeAndDequantizeV4Grad`` keeps (four bytes per
    element, in float32) until the backward pass reaches it. The gradient is the same, element for element
    (tested against the registered one).
    """
    dtype = arithmetic_dtype(x.dtype)
    amax = tf.cast(tf.maximum(amax, MIN_AMAX), dtype)
    if training:
        return _qdq_activation_straight_through(x, amax, dtype)
    return tf.cast(_qdq_v4(tf.cast(x, dtype), amax), x.dtype)


def _qdq_v4(x: tf.Tensor, amax: tf.Tensor) -> tf.Tensor:
    return tf.quantization.quantize_and_dequantize_v2(
        x,
        -amax,
        amax,
        signed_input=True,
        num_bits=NUM_BITS,
        range_given=True,
        narrow_range=True,
    )


def _qdq_activation_straight_through(x: tf.Tensor, amax: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """V4's forward with V4's clipped straight-through gradient, computed from a boolean mask."""

    @tf.custom_gradient
    def straight_through(x):
        wide = tf.cast(x, dtype)
        inside = tf.logical_and(wide >= -amax, wide <= amax)  # what QuantizeAndDequantizeV4Grad passes

        def grad(upstream):
            return tf.where(inside, upstream, tf.zeros((), upstream.dtype))

        return tf.cast(_qdq_v4(tf.cast(x, dtype), amax), x.dtype), grad

    return straight_through(x)


def per_channel_amax(kernel: tf.Tensor, axis: int) -> tf.Tensor:
    """``max |kernel|`` over every axis but ``axis``, floored at :data:`MIN_AMAX` (one value per channel)."""
    rank = kernel.shape.rank
    axis = axis % rank
    reduce_axes = [i for i in range(rank) if i != axis]
    # max(max w, -min w) is max |w| without materialising |w|.
    largest = tf.maximum(tf.reduce_max(kernel, axis=reduce_axes), -tf.reduce_min(kernel, axis=reduce_axes))
    return tf.maximum(largest, tf.cast(MIN_AMAX, kernel.dtype))


def qdq_per_channel(kernel: tf.Tensor, axis: int, training: bool = False) -> tf.Tensor:
    """Quantize-dequantize a kernel with one symmetric range per slice along ``axis`` (weights).

    The ranges are ``max |w|`` of each output channel, computed in the graph from the current kernel, so they are
    always up to date while training and become constants once the model is frozen for export.

    Inference (and so every exported graph) uses the ``QuantizeAndDequantizeV3`` op, which tf2onnx turns into
    QuantizeLinear/DequantizeLinear. Its CPU kernel is slow for large kernels (about 16 ms for a 3x3x512x512
    kernel), so training steps compute the same arithmetic -- ``round(w * (127 / amax)) * (amax / 127)``, exactly
    what the V3 kernel computes, bit for bit (tested) -- fused by XLA (:func:`qdq_per_channel_training`), with
    V3's pass-through gradient.

    A float16/bfloat16 kernel is quantized in float32 and the result cast back (pass the float32 variable and cast
    the result yourself to keep the float32 ranges exact: that is what the wrappers do under a mixed policy).
    """
    if kernel.dtype not in QDQ_DTYPES:
        return tf.cast(qdq_per_channel(tf.cast(kernel, tf.float32), axis, training), kernel.dtype)
    axis = axis % kernel.shape.rank
    if training:
        return qdq_per_channel_training(kernel, axis)[0]
    amax = per_channel_amax(kernel, axis)
    return tf.raw_ops.QuantizeAndDequantizeV3(
        input=kernel,
        input_min=-amax,
        input_max=amax,
        num_bits=tf.constant(NUM_BITS),
        signed_input=True,
        narrow_range=True,
        range_given=True,
        axis=axis,
    )


def qdq_per_channel_training(
    kernel: tf.Tensor, axis: int, amax: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """A training step's weight QDQ, and the per-channel ranges it used (shaped to broadcast against ``kernel``).

    ``amax=None`` computes the ranges from ``kernel`` (the forward pass). A backward pass that recomputes the QDQ
    of the same kernel passes the forward's ranges back in: that skips the range reduction, one of the two passes
    over the weights, and the result is the same, bit for bit (tested). The gradient is V3's: pass-through to the
    kernel, none to the ranges. A float16/bfloat16 kernel is quantized in float32 and the result stays float32.
    """
    if kernel.dtype not in QDQ_DTYPES:
        kernel = tf.cast(kernel, tf.float32)
    qmax = tf.constant(float(QMAX), kernel.dtype)
    axis = axis % kernel.shape.rank

    @tf.custom_gradient
    def straight_through(kernel):
        def grad(upstream, _ranges_upstream):
            return upstream

        if amax is None:
            quantized, used = _fused_weight_qdq(kernel, axis, qmax)
        else:
            # Any layout of one value per channel (e.g. per_channel_amax's 1-D result) broadcasts along ``axis``.
            used = tf.reshape(tf.cast(amax, kernel.dtype), _channel_shape(kernel.shape.rank, axis))
            quantized = _weight_qdq_in_range(kernel, used, qmax)
        return (quantized, used), grad

    return straight_through(kernel)


@tf.function(jit_compile=True)
def _fused_weight_qdq(kernel: tf.Tensor, axis: int, qmax: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """XLA-compiled ``round(w * (qmax / amax)) * (amax / qmax)`` with ``amax`` per channel along ``axis``; returns
    the result and ``amax`` (shaped to broadcast against ``kernel``).

    XLA fuses the range, scale, round and rescale into two passes over the kernel instead of five, which matters
    for ResNet50's 25M weights every step. ``qmax`` (127) comes in as a tensor so that XLA cannot turn
    ``amax / 127`` into a multiplication by a rounded reciprocal: the result stays bit-identical to the V3 kernel's
    ``max_range / max_quantized``.

    One function for every kernel: traced and compiled once per kernel shape, dtype and ``axis``. ResNet50 has 54
    kernels but 21 distinct shapes; one function per kernel compiled 54 times, which cost about 40 MiB of the
    peak memory of a ResNet50 fit (``bench.memory``) and no step time. No ``reduce_retracing``: it relaxes the
    traced shape, and after kernels of two ranks with one ``axis`` (a depthwise 2-D and a 1-D convolution, both
    axis 2) to an unknown rank, on which the per-channel reduction cannot be built.
    """
    amax = tf.reshape(per_channel_amax(kernel, axis), _channel_shape(kernel.shape.rank, axis))
    return _weight_qdq_in_range.python_function(kernel, amax, qmax), amax


def _channel_shape(rank: int, axis: int) -> list[int]:
    """The shape that broadcasts one value per channel along ``axis`` against a rank-``rank`` kernel."""
    shape = [1] * rank
    shape[axis] = -1
    return shape


@tf.function(jit_compile=True)
def _weight_qdq_in_range(kernel: tf.Tensor, amax: tf.Tensor, qmax: tf.Tensor) -> tf.Tensor:
    """:func:`_fused_weight_qdq` with the ranges given: one pass over the kernel."""
    return tf.round(kernel * (qmax / amax)) * (amax / qmax)


def local_amax(x: tf.Tensor) -> tf.Tensor:
    """``max |x|`` of this replica's batch as float32 (``max(max x, -min x)``: no ``|x|`` tensor is materialised)."""
    return tf.cast(tf.maximum(tf.reduce_max(x), -tf.reduce_min(x)), tf.float32)


def batch_amax(x: tf.Tensor) -> tf.Tensor:
    """``max |x|`` of a batch as float32, reduced with MAX over replicas when running under ``tf.distribute``."""
    value = local_amax(x)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        # tf.distribute has no MAX all-reduce: gather one value per replica and take the max.
        value = tf.reduce_max(context.all_gather(tf.reshape(value, [1]), axis=0))
    return value


def qdq_tracked(x: tf.Tensor, amax_var, steps_var, tracking: RangeTracking) -> tf.Tensor:
    """A training step's activation QDQ: quantize with the range tracked so far, then update it with this batch.

    The batch's ``max |x|`` feeds the range used from the next step on, so its reduction is off the critical path
    of the step (it overlaps with the layer's own computation) instead of in front of every quantizer, which cost
    about 0.1x of a ResNet50 FP32 step when measured (``bench/``). The first step of a range
    never observed nor calibrated quantizes with its own (global) batch's max. The stored ranges, and so the exported
    scales, are the same either way: after step ``t`` they summarise batches ``1..t``.
    """
    return qdq_per_tensor(x, tracked_range(x, amax_var, steps_var, tracking), training=True)


def tracked_range(x: tf.Tensor, amax_var, steps_var, tracking: RangeTracking) -> tf.Tensor:
    """The range a training step quantizes ``x`` with (see :func:`qdq_tracked`); updates the variables."""
    observed_before = _observed_when_traced(steps_var)  # read before this step's update, also when eager
    previous = tf.convert_to_tensor(amax_var)
    steps = tf.convert_to_tensor(steps_var)
    observed = tf.cast(batch_amax(x), previous.dtype)  # float64 in a float64 model
    amax_var.assign(updated_amax(previous, steps, observed, tracking))
    steps_var.assign(steps + 1.0)
    if observed_before:
        return previous  # calibrated or trained before: no first-step branch in the traced graph
    # A select, not a tf.cond: both values exist anyway, and a cond adds two branch functions per quantizer to the
    # training graph (142 in ResNet50), which TensorFlow instantiates one by one.
    return tf.where(steps > 0, previous, observed)


def _observed_when_traced(steps_var) -> bool:
    """Whether a range had been observed (calibrated or trained) when the training step is traced.

    Read outside the graph being built (``tf.init_scope``). A model calibrated before ``fit`` -- the recommended
    workflow -- then quantizes with the stored range, so the batch's reduction stays off the critical path. A
    model trained from unobserved ranges keeps the per-quantizer first-step select for that ``fit``, which waits for
    the reduction (``bench.memory`` measures both).
    """
    try:
        with tf.init_scope():
            return float(tf.convert_to_tensor(steps_var).numpy()) > 0
    except (TypeError, ValueError, AttributeError, tf.errors.OpError):
        return False


def updated_amax(
    amax: tf.Tensor, observed_steps: tf.Tensor, observed: tf.Tensor, tracking: RangeTracking
) -> tf.Tensor:
    """The new range after a training step that observed ``observed = max |x|``.

    ``observed_steps`` counts the updates (or calibrations) this range has had; the first one takes the observed
    value as is. A non-finite observation (NaN or Inf in the batch) leaves the range unchanged. Computed in the
    dtype of ``amax`` (the range variable's: float32, or float64 in a float64 model).
    """
    if tracking.method == "fixed":
        return amax
    if tracking.method == "last":
        new = observed
    elif tracking.method == "max":
        new = tf.maximum(amax, observed)
    else:
        decay = tf.constant(tracking.decay, amax.dtype)
        new = decay * amax + (1.0 - decay) * observed
    new = tf.where(observed_steps > 0, new, observed)
    new = tf.where(tf.math.is_finite(observed), new, amax)
    return tf.maximum(new, MIN_AMAX)
