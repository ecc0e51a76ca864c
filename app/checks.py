"""Checks of one given value each: the value, converted, or an `Invalid` naming its field."""

from __future__ import annotations

import math
from typing import Any

from app.errors import Invalid


def int_in(name: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"{name}: expected an integer, got {value!r}", field=name)
    if not low <= value <= high:
        raise Invalid(f"{name}: expected {low} to {high}, got {value}", field=name)
    return value


def float_in(name: str, value: Any, low: float, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise Invalid(f"{name}: expected a finite number, got {value!r}", field=name)
    if not low <= value <= high:
        raise Invalid(f"{name}: expected {low:g} to {high:g}, got {value:g}", field=name)
    return float(value)


def one_of(name: str, value: Any, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        raise Invalid(f"{name}: expected one of {', '.join(choices)}, got {value!r}", field=name)
    return value
