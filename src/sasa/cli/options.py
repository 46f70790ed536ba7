"""argparse value types that reject bad input with a message naming the value."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(text: str, cast: Callable[[str], float], accept: Callable[[float], bool], expected: str):
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not (math.isfinite(value) and accept(value)):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v > 0, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "a non-negative integer")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a finite non-negative number")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a finite positive number")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")
