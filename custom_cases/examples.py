"""A custom case, written as docs/custom_cases.md explains: keep the classifier head in floating point.

This file is the worked example of the documentation: the doc shows it verbatim and tests/test_custom_cases.py
checks that the two are identical, then runs it.
"""

from __future__ import annotations

import keras

from custom_cases import ResNetV1QDQCase, user_decides
from qdq_toolkit import (
    CustomQDQInsertionCase,
    LayerNames,
    QuantizationSpec,
    inbound_layers,
    iter_layers,
    match_chain,
    quantize_model,
)

GLOBAL_POOLING = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


class FloatClassifierQDQCase(CustomQDQInsertionCase):
    """Classifier head (global pooling -> Dense) left in floating point: no QDQ on the Dense nor its pooling.

    TensorRT rule: a MatMul/Gemm runs in INT8 only when its input and its weight both come from DequantizeLinear;
    without them TensorRT runs it in float, which is allowed anywhere in an explicitly quantized network. The
    classifier is a tiny GEMM at the very end, so keeping it (and the pooling that only feeds it) in float costs
    next to nothing and keeps the logits unquantized.
    """

    def case(self, keras_model: keras.Model, qspec: QuantizationSpec) -> QuantizationSpec:
        refs = iter_layers(keras_model)  # every leaf layer, with its path ("backbone/conv1") in nested models
        names = LayerNames(refs)  # which layers each spec name selects, as quantize_model reads them
        by_layer = {id(ref.layer): ref for ref in refs}
        spec = QuantizationSpec()  # a new spec: never modify `qspec` (the user's) nor the model
        for ref in refs:
            # the pattern: a Dense reading a global pooling that feeds only this Dense
            if not match_chain(ref.layer, [GLOBAL_POOLING, keras.layers.Dense]):
                continue
            pooling = by_layer[id(inbound_layers(ref.layer)[0])]
            for target in (ref, pooling):
                if not user_decides(target, qspec, names):  # what the user set for a layer is theirs
                    spec.add(target.path, quantize_input=False, quantize_weight=False)
        return spec


def quantize_resnet_with_float_head(model: keras.Model) -> keras.Model:
    """ResNet v1 placements plus the float head: cases compose, and a later case wins for the same layer."""
    return quantize_model(model, custom_qdq_cases=[ResNetV1QDQCase(), FloatClassifierQDQCase()])
