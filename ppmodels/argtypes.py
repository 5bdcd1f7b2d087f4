"""Argument types of the ``ppmodels`` command line, and which options hold a list in one run.

An option whose one value is a comma-separated list (``--hidden 200,200``) is list-valued: a
sweep (:mod:`ppmodels.sweep`) passes it whole instead of expanding it into runs. Options of type
:func:`ints` are list-valued; mark any other with :func:`list_valued`.

Which options need or exclude which is declared with :class:`Needs` and :class:`Excludes`, in a
table beside the options (a family's :attr:`~ppmodels.families.base.Family.rules`); the parser
checks them after parsing (:func:`broken_rule`), so that an option that would do nothing, or that
something else would override, is one error (exit 2) instead of being ignored.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Collection

__all__ = ["ints", "positive", "nonnegative", "list_valued", "is_list_valued", "Needs", "Excludes", "broken_rule"]


#: the help of ``--trust-checkpoint`` (train's resume, evaluate, sample)
TRUST_HELP = "load a checkpoint that has no checksum (not written by ppmodels); refused otherwise"


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


@dataclass(frozen=True)
class Needs:
    """``option``, when given, needs ``other``: given (``values`` empty), or with a value (given or
    its default) among ``values``; ``why``: what ``option`` does, for the error."""

    option: str
    other: str
    values: tuple = ()
    why: str = ""

    def broken(self, given: Collection[str], value: Callable[[str], Any]) -> str | None:
        if self.option not in given:
            return None
        if self.values and value(self.other) in self.values or not self.values and self.other in given:
            return None
        wanted = " or ".join(str(v) for v in self.values if v is not None)
        return f"{self.option} needs {self.other}{' ' + wanted if wanted else ''}{f' ({self.why})' if self.why else ''}"


@dataclass(frozen=True)
class Excludes:
    """``option``, when given (with a value among ``when``, if any), excludes each of ``others``
    (it would override them, or they it); ``why`` (which may name ``{other}``): what to do."""

    option: str
    others: tuple[str, ...]
    when: tuple = ()
    why: str = ""

    def broken(self, given: Collection[str], value: Callable[[str], Any]) -> str | None:
        if self.option not in given or self.when and value(self.option) not in self.when:
            return None
        for other in self.others:
            if other in given:
                subject = f"{self.option} {value(self.option)}" if self.when else self.option
                return f"{subject} and {other} do not go together; {(self.why or 'drop one').format(other=other)}"
        return None


def broken_rule(rules: Collection[Needs | Excludes], given: Collection[str],
                value: Callable[[str], Any]) -> str | None:
    """The first of ``rules`` broken by the options ``given`` (their longest option strings), whose
    values (given or default) ``value(option)`` returns; None when all hold."""
    for rule in rules:
        said = rule.broken(given, value)
        if said:
            return said
    return None
