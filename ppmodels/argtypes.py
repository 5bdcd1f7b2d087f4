"""Argument types of the ``ppmodels`` command line, and which options hold a list in one run.

An option whose one value is a comma-separated list (``--hidden 200,200``) is list-valued: a
sweep (:mod:`ppmodels.sweep`) passes it whole instead of expanding it into runs. Options of type
:func:`ints` are list-valued; mark any other with :func:`list_valued`.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

__all__ = ["ints", "positive", "nonnegative", "list_valued", "is_list_valued"]


def ints(text: str) -> tuple[int, ...]:
    """``"200,200"`` -> ``(200, 200)``: comma-separated positive integers."""
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def positive(kind: type) -> Callable[[str], Any]:
    """An argument type: a positive, finite ``kind`` (int or float)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0 or value == float("inf"):  # NaN and inf too
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def nonnegative(text: str) -> float:
    """An argument type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def list_valued(action: argparse.Action) -> argparse.Action:
    """Mark the option ``parser.add_argument(...)`` returned as holding a list in one run."""
    action.list_valued = True  # type: ignore[attr-defined]
    return action


def is_list_valued(action: argparse.Action) -> bool:
    """Whether one value of the option is a list: marked by :func:`list_valued`, or of type :func:`ints`."""
    return bool(getattr(action, "list_valued", False)) or action.type is ints
