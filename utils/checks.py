"""Argument checks shared by the library's modules: a wrong value fails early with a clear message.

(:mod:`utils.nb` has the notebook-facing versions, which raise ``ParameterError``.)
"""

from __future__ import annotations

import math
from typing import Any


def check_int(
    name: str, value: Any, minimum: int | None = None, optional: bool = False
) -> Any:
    """Return ``value`` if it is an ``int`` (``>= minimum`` when given; ``None`` when ``optional``).

    The one exception policy of the library: ``TypeError`` for a value of the wrong type
    (``bool`` is refused although it is an ``int`` subclass: ``steps=True`` is a bug) and
    ``ValueError`` for an ``int`` out of range.
    """
    if optional and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        allowed = "an int or None" if optional else "an int"
        raise TypeError(
            f"{name} must be {allowed}, got {type(value).__name__}: {value!r}"
        )
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    exclusive_minimum: bool = False,
    allow_inf: bool = False,
    optional: bool = False,
) -> Any:
    """Return ``value`` if it is a real number in range (``None`` when ``optional``).

    Same policy as :func:`check_int`: ``TypeError`` for a value that is not an ``int`` or a
    ``float`` (``bool`` refused), ``ValueError`` for NaN, for an infinity unless ``allow_inf``,
    and for a value below ``minimum`` (or equal to it with ``exclusive_minimum``) or above
    ``maximum``.
    """
    if optional and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        allowed = "a number or None" if optional else "a number"
        raise TypeError(
            f"{name} must be {allowed}, got {type(value).__name__}: {value!r}"
        )
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (
        value <= minimum if exclusive_minimum else value < minimum
    ):
        relation = ">" if exclusive_minimum else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return value


def check_min_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int >= minimum`` (``bool`` refused); else ``ValueError``.

    The argument check of the model, attention and word-vector functions. (:func:`check_int`,
    used by the training configuration, raises ``TypeError`` for a value of the wrong type.)
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_positive_float(name: str, value: Any, optional: bool = True) -> None:
    """``value`` must be a finite number ``> 0`` (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number or None, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    """``value`` must be ``True`` or ``False`` (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
