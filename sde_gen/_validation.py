"""Argument checks with messages that name the parameter and the allowed values.

Every constructor of the library calls these before doing any work, so a bad value fails at
once with `ValueError("<name> must be ...; got ...")`.
"""
from __future__ import annotations

import math
from typing import Iterable


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_finite(name: str, value) -> float:
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number; got {value!r}")
    return float(value)


def check_positive(name: str, value) -> float:
    value = check_finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0 (allowed: (0, inf)); got {value!r}")
    return value


def check_nonnegative(name: str, value) -> float:
    value = check_finite(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (allowed: [0, inf)); got {value!r}")
    return value


def check_in_open_interval(name: str, value, low: float, high: float) -> float:
    value = check_finite(name, value)
    if not low < value < high:
        raise ValueError(f"{name} must lie in the open interval ({low}, {high}); got {value!r}")
    return value


def check_in_closed_interval(name: str, value, low: float, high: float) -> float:
    value = check_finite(name, value)
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}]; got {value!r}")
    return value


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    return value


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    return value
