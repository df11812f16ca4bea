"""tf2onnx handlers for TensorFlow ops that tf2onnx 1.17 cannot convert but Keras 3 models produce.

Importing this module registers the handlers with tf2onnx (its ``tf_op`` registry is how tf2onnx is extended;
registering the same handler again on a second import is a no-op because Python imports a module once).

* ``Erfc``: Keras 3's exact GELU (``keras.activations.gelu(x, approximate=False)``, the default of
  ``Dense(activation="gelu")``) computes ``0.5 * x * erfc(-x / sqrt(2))`` with TensorFlow's ``Erfc`` op. tf2onnx
  1.17 has no handler for it ("No Op registered for Erfc with domain_version of 13"), so any model with an exact
  GELU failed to export, even in FP32. ONNX has no ``Erfc`` op but has ``Erf`` since opset 9, and
  ``erfc(x) = 1 - erf(x)`` exactly, so the conversion writes ``Sub(1, Erf(x))`` at every opset we export
  (13-18). TensorRT imports ``Erf`` as a unary layer and keeps GELU in float (its INT8 recipe leaves GELU
  unquantized: ModelOpt's ONNX placement, ``modelopt/onnx/quantization/partitioning.py``
  ``find_hardcoded_patterns``, lists the ``Div -> Erf -> Add -> Mul -> Mul`` GELU chain as a non-quantizable
  partition). The ``Gelu`` op of opset 20 is not used: tf2onnx 1.17 converts up to opset 18, and the Erf form is what
  TensorRT's GELU fusion matches at every opset.
"""

from __future__ import annotations

import numpy as np
from tf2onnx import utils
from tf2onnx.handler import tf_op


@tf_op("Erfc")
class Erfc:
    """``Erfc(x)`` -> ``Sub(1, Erf(x))`` (ONNX ``Erf`` exists since opset 9)."""

    @classmethod
    def version_9(cls, ctx, node, **kwargs):
        node.type = "Erf"
        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
        one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1.0, dtype=dtype))
        sub = ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{node.name}_erfc"))
        ctx.replace_inputs(sub, [one.output[0], node.output[0]])
        ctx.copy_shape(node.output[0], sub.output[0])
        ctx.set_dtype(sub.output[0], ctx.get_dtype(node.output[0]))
