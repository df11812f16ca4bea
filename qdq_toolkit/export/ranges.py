"""Range reporting at export: which activation ranges of a quantized model no data ever set.

An activation range that neither :func:`qdq_toolkit.calibrate` nor training touched still holds the initial amax
1.0 and exports as scale 1/127, which is rarely the tensor's range. Both export paths list such ranges as
``"layer/slot"``: from a Keras model (:func:`unobserved_ranges`) and from a loaded SavedModel
(:func:`unobserved_in_saved_model`), which sees only variables. Both read the slot and variable names declared in
:mod:`qdq_toolkit.range_variables`, the module the wrappers name their variables with.
"""

from __future__ import annotations

import warnings
from typing import Any

from qdq_toolkit.range_variables import AMAX_SUFFIX, STEPS_SUFFIX, parse_range_variable

__all__ = ["UnobservedRangeWarning", "unobserved_in_saved_model", "unobserved_ranges", "warn_unobserved"]


class UnobservedRangeWarning(UserWarning):
    """A quantized activation is exported with a range that no data ever set (the initial amax 1.0)."""


def unobserved_ranges(model) -> list[str]:
    """``"layer/slot"`` for every activation range of ``model`` that neither calibration nor training set."""
    from qdq_toolkit.cases import iter_layers
    from qdq_toolkit.wrappers import QDQWrapper

    return [
        f"{ref.path}/{slot}"
        for ref in iter_layers(model)
        if isinstance(ref.layer, QDQWrapper)
        for slot in ref.layer.unobserved_ranges()
    ]


def unobserved_in_saved_model(loaded: Any) -> list[str]:
    """:func:`unobserved_ranges` read from a loaded SavedModel (``tf.saved_model.load``), sorted.

    A range is a scalar ``<slot>_steps`` variable still at 0 whose ``<slot>_amax`` sibling sits in the same layer
    scope; every slot a wrapper declares counts (``input``, ``input_<i>``, SeparableConv's ``pointwise_input``, ...).
    """
    parsed = [(variable, parse_range_variable(variable.name)) for variable in getattr(loaded, "variables", ())]
    with_amax = {(name[0], name[1]) for _, name in parsed if name is not None and name[2] == AMAX_SUFFIX}
    names = set()
    for variable, name in parsed:
        if name is None or name[2] != STEPS_SUFFIX or (name[0], name[1]) not in with_amax:
            continue
        if variable.shape.rank == 0 and float(variable.numpy()) == 0.0:
            names.add(f"{name[0]}/{name[1]}")
    return sorted(names)


def warn_unobserved(names: list[str], *, stacklevel: int = 3) -> None:
    """Issue one :class:`UnobservedRangeWarning` listing ``names`` (nothing when empty)."""
    if not names:
        return
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    warnings.warn(
        f"{len(names)} activation range(s) were never observed and export with the initial amax 1.0 "
        f"(scale 1/127): {shown}. Calibrate (qdq_toolkit.calibrate) or fine-tune the quantized model before "
        "exporting it for TensorRT.",
        UnobservedRangeWarning,
        stacklevel=stacklevel,
    )
