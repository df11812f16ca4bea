"""``CustomQDQInsertionCase``: NVIDIA's base class of a pattern rule, for cases written against NVIDIA's API.

A case's ``case(keras_model, qspec)`` receives a copy of the user's spec as a compat
:class:`~qdq_toolkit.nvidia_compat.QuantizationSpec` (with its mutable ``layers`` list, empty when the user gave
none) and returns a compat ``QuantizationSpec`` with the layers it wants treated differently (or ``None`` for
nothing). Cases written for qdq_toolkit's own API (:class:`qdq_toolkit.CustomQDQInsertionCase`, e.g.
``custom_cases.ResNetV1QDQCase()``) can be passed to the compat ``quantize_model`` as well.
"""

from __future__ import annotations


class CustomQDQInsertionCase:
    """Subclass it and override ``case(self, keras_model, qspec) -> QuantizationSpec``; ``info()`` is optional."""

    def info(self) -> str:
        """A short description of what the case does (the first line of the class docstring by default)."""
        doc = (type(self).__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def case(self, keras_model, qspec):
        raise NotImplementedError(
            f"{type(self).__name__} must override case(self, keras_model, qspec) and return a QuantizationSpec."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
