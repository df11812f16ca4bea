"""Argument checks shared by the library's public functions (TensorFlow-free).

One validator for the counts users pass (batch sizes, runs, image sizes, ...), so every function says the same
thing about a bad one. The command-line tools parse their flags with :mod:`qdq_toolkit._cli`, which uses it too.
"""

from __future__ import annotations

import numbers

__all__ = ["check_count", "check_positive_int"]


def check_count(
    name: str,
    value: object,
    *,
    minimum: int = 1,
    allow_none: bool = False,
    error: type[Exception] = ValueError,
) -> int | None:
    """``value`` as an ``int`` after checking it is a whole number >= ``minimum`` (bools are refused).

    Args:
        name: the argument's name, used in the message (``"batch_size"``).
        value: what the caller passed; Python and NumPy integers are accepted.
        minimum: the smallest value allowed (1: positive; 0: non-negative).
        allow_none: let ``None`` through (returned as ``None``), for optional counts.
        error: the exception type to raise (``ValueError``, or a module's own error class).

    Raises:
        error: ``value`` is not an integer, or is below ``minimum``; the message names the argument.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise error(f"{name} must be {wanted}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def check_positive_int(name: str, value: object, *, error: type[Exception] = ValueError) -> int:
    """``value`` as an ``int`` after checking it is a whole number >= 1; see :func:`check_count`."""
    return check_count(name, value, minimum=1, error=error)  # type: ignore[return-value]
