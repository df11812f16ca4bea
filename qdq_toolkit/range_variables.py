"""The names of the activation ranges the QDQ wrappers keep, and of the variables that hold them (TensorFlow-free).

Every wrapper keeps one *range slot* per quantized activation: ``input`` for a single-input layer, ``input_<i>``
for input ``i`` of a multi-input layer (``Add``, ``Concatenate``, ...), and extras a wrapper declares itself (e.g.
SeparableConv's ``pointwise_input``, the depthwise output that feeds its pointwise convolution). A slot lives in two
scalar variables of the wrapper: ``<slot>_amax`` (the range) and ``<slot>_steps`` (how many times data set it; 0
means never observed).

The wrappers (:mod:`qdq_toolkit.wrappers`) name their variables with these functions and the export side reads
them back from a SavedModel with :func:`parse_range_variable`, so the two cannot drift apart. This module imports
nothing, so export code may use it without TensorFlow or Keras.
"""

from __future__ import annotations

__all__ = [
    "AMAX_SUFFIX",
    "INPUT_SLOT",
    "POINTWISE_INPUT_SLOT",
    "STEPS_SUFFIX",
    "amax_variable_name",
    "input_slot",
    "parse_range_variable",
    "steps_variable_name",
]

INPUT_SLOT = "input"
"""The range slot of a single-input layer's input."""

POINTWISE_INPUT_SLOT = "pointwise_input"
"""SeparableConv's second range: the depthwise output, which is the pointwise convolution's input."""

AMAX_SUFFIX = "_amax"
STEPS_SUFFIX = "_steps"


def input_slot(index: int) -> str:
    """The range slot of input ``index`` of a multi-input layer: ``input_0``, ``input_1``, ..."""
    return f"{INPUT_SLOT}_{int(index)}"


def amax_variable_name(slot: str) -> str:
    """The name of the variable holding ``slot``'s range (its amax)."""
    return f"{slot}{AMAX_SUFFIX}"


def steps_variable_name(slot: str) -> str:
    """The name of the variable counting how often data set ``slot``'s range (0: never observed)."""
    return f"{slot}{STEPS_SUFFIX}"


def parse_range_variable(name: str) -> tuple[str, str, str] | None:
    """Split a variable name such as ``quant_sep/pointwise_input_steps:0`` into ``(layer, slot, suffix)``.

    ``layer`` is everything before the last ``/``; ``suffix`` is :data:`AMAX_SUFFIX` or :data:`STEPS_SUFFIX`. A
    TensorFlow output index (``:0``) is ignored. Returns ``None`` for a name that is not a range variable's.
    """
    base, colon, index = name.rpartition(":")
    if colon and index.isdigit():
        name = base
    layer, slash, leaf = name.rpartition("/")
    if not slash or not layer:
        return None
    for suffix in (AMAX_SUFFIX, STEPS_SUFFIX):
        if leaf.endswith(suffix) and len(leaf) > len(suffix):
            return layer, leaf[: -len(suffix)], suffix
    return None
