"""The training settings, declared once: :class:`TrainSettings`.

Each field of :class:`TrainSettings` is one keyword argument of :func:`ppmodels.fit.fit`, with
in its declaration (:func:`setting`) its rule, checked before any work (a one-line error that
names it); whether it is part of the trajectory a resumed run must share with its checkpoint;
whether it is an option of Adam; and its ``ppmodels train`` flag when the command line offers
it. From these, :class:`ppmodels.fit.Run` holds a run's settings, the checkpoint records the
trajectory (:meth:`TrainSettings.trajectory`), :func:`ppmodels.fit.make_optimizer` takes Adam's
options, :func:`add_flags` adds the command's flags and
:func:`ppmodels.families.common.fit_stage` passes the parsed flags back to ``fit`` by name. A new
training setting is one field here.

Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import Field, dataclass, field, fields
from typing import Any, Callable, Iterator

from .argtypes import nonnegative, positive
from .utils import PPModelsError

__all__ = ["TrainSettings", "Flag", "setting", "SCHEDULES", "ADAM_DEFAULTS", "add_flags", "check_setting",
           "split_options", "describe", "Want", "COUNT", "NATURAL", "FINITE", "NONNEGATIVE", "POSITIVE", "FLAG", "SEED", "EPOCHS",
           "schedule_name"]

class _AsFit:
    def __repr__(self) -> str:
        return "AS_FIT"


#: a :class:`Flag`'s default when it is fit's
AS_FIT = _AsFit()

#: the learning-rate schedules :func:`ppmodels.callbacks.lr_factor` knows (or a callable of the step)
SCHEDULES = ("constant", "cosine", "burda", "burda-compressed")


@dataclass(frozen=True)
class Flag:
    """A setting's ``ppmodels train`` option: ``add_argument``'s ``type``, ``choices`` and ``help``
    (which may name ``{default}``); ``default``: the command's, where it is not ``fit``'s."""

    name: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    help: str | None = None
    default: Any = AS_FIT


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Rule:
    """What :func:`setting` declares besides the default (see there)."""

    want: str
    ok: Callable[[Any], bool]
    convert: Callable[[Any], Any] = _same
    trajectory: bool = False
    saved: Callable[[Any], Any] = _same
    adam: bool = False
    flag: Flag | None = None


def setting(default: Any, want: str, ok: Callable[[Any], bool], *, convert: Callable[[Any], Any] = _same,
            trajectory: bool = False, saved: Callable[[Any], Any] = _same, adam: bool = False,
            flag: Flag | None = None) -> Any:
    """One training setting, a field of :class:`TrainSettings`: its ``default``; its rule, ``ok``
    of the value after ``convert`` (a ``TypeError`` or ``ValueError`` there is a bad value too),
    said ``want`` in the error ``fit: NAME must be WANT, got VALUE``; ``trajectory``: a resume
    must match the checkpoint's value, recorded as ``saved(value)``; ``adam``: an option of
    ``torch.optim.Adam`` of the same name; ``flag``: its ``ppmodels train`` option."""
    rule = Rule(want, ok, convert=convert, trajectory=trajectory, saved=saved, adam=adam, flag=flag)
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True)
class Want:
    """A rule for one argument: ``ok`` of the value after ``convert`` (a ``TypeError`` or
    ``ValueError`` there is a bad value too), said ``text`` in the one-line error. The training
    settings' rules (:func:`setting`) and the built-in callbacks' arguments
    (:mod:`ppmodels.callbacks`) give the same error: ``WHERE: NAME must be TEXT, got VALUE``."""

    text: str
    ok: Callable[[Any], bool]
    convert: Callable[[Any], Any] = _same

    def check(self, where: str, name: str, value: Any) -> Any:
        """``value`` as kept (converted), or the one-line :class:`PPModelsError`."""
        try:
            kept = self.convert(value)
            good = bool(self.ok(kept))
        except (TypeError, ValueError):
            good = False
        if not good:
            raise PPModelsError(f"{where}: {name} must be {self.text}, got {value!r}")
        return kept


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _count(v: Any) -> bool:
    return _is_int(v) and v >= 1


def _optional_count(v: Any) -> bool:
    return v is None or _count(v)


def _positive(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v) and v > 0


def _nonnegative(v: Any) -> bool:
    return _is_number(v) and 0 <= v < math.inf


def _betas(v: tuple) -> bool:
    return len(v) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in v)


def _epoch_numbers(values: Any) -> tuple:
    """Epoch numbers as a tuple (one number: one epoch); a string is not a list of them."""
    if isinstance(values, str):
        raise TypeError("a string")
    try:
        return tuple(values)
    except TypeError:
        return (values,)


def _epoch_list(values: Any) -> tuple:
    """Epoch numbers given as a list (a number alone is refused: one epoch, or every so many?)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError("not a list")
    return tuple(values)


def schedule_name(schedule: Any) -> Any:
    """How the checkpoint records an lr schedule: its name, or a callable's module and qualified
    name (the same function in a new process has the same name; ``str`` of it has an address)."""
    if callable(schedule):
        return f"{getattr(schedule, '__module__', '?')}.{getattr(schedule, '__qualname__', type(schedule).__name__)}"
    return str(schedule)


#: an integer >= 1
COUNT = Want("an integer >= 1", lambda v: _is_int(v) and v >= 1)
#: an integer >= 0
NATURAL = Want("an integer >= 0", lambda v: _is_int(v) and v >= 0)
#: a finite number
FINITE = Want("a finite number", lambda v: _is_number(v) and math.isfinite(v))
#: a finite number >= 0
NONNEGATIVE = Want("a finite number >= 0", _nonnegative)
#: a finite number > 0
POSITIVE = Want("a positive number", _positive)
#: True or False
FLAG = Want("True or False", lambda v: isinstance(v, bool))
#: a seed
SEED = Want("an integer in [0, 2**63)", lambda v: _is_int(v) and 0 <= v < 2**63)
#: epochs after which a callback acts: a non-empty list of 1-based epoch numbers
EPOCHS = Want("a list of epoch numbers >= 1, e.g. [5] or [10, 20]",
              lambda v: len(v) > 0 and all(_is_int(e) and e >= 1 for e in v), convert=_epoch_list)


@dataclass(frozen=True)
class TrainSettings:
    """fit's training settings, checked when made. Give ``epochs`` or ``steps``."""

    epochs: int | None = setting(None, "an integer >= 1", _optional_count, flag=Flag("--epochs", positive(int)))
    steps: int | None = setting(None, "an integer >= 1", _optional_count, flag=Flag("--steps", positive(int)))
    batch_size: int = setting(128, "an integer >= 1", _count, trajectory=True,
                              flag=Flag("--batch-size", positive(int), help="default {default}"))
    lr: float = setting(1e-3, "a positive number", _positive, trajectory=True, adam=True,
                        flag=Flag("--lr", positive(float), help="learning rate (default {default:g})"))
    lr_schedule: str | Callable[[int], float] | None = setting(
        None, f"one of {SCHEDULES} or a callable", lambda v: v is None or callable(v) or v in SCHEDULES,
        trajectory=True, saved=schedule_name, flag=Flag("--lr-schedule", choices=SCHEDULES, default="constant"))
    betas: tuple[float, float] = setting((0.9, 0.999), "two numbers in [0, 1)", _betas, convert=tuple, trajectory=True,
                                         saved=list, adam=True)
    eps: float = setting(1e-8, "a positive number", _positive, trajectory=True, adam=True)
    weight_decay: float = setting(
        0.0, NONNEGATIVE.text, _nonnegative, trajectory=True,
        adam=True, flag=Flag("--weight-decay", nonnegative, help="Adam's weight decay (default {default:g})"))
    clip_norm: float | None = setting(None, "None or a positive number", lambda v: v is None or _positive(v),
                                      trajectory=True)
    seed: int = setting(0, SEED.text, SEED.ok, trajectory=True,
                        flag=Flag("--seed", int))
    drop_last: bool = setting(True, "True or False", lambda v: isinstance(v, bool), trajectory=True)
    log_every: int = setting(50, "an integer >= 1", _count)
    eval_particles: int = setting(1, "an integer >= 1", _count)
    compile_min_steps: int = setting(
        5000, "an integer >= 0", lambda v: _is_int(v) and v >= 0,
        flag=Flag("--compile-min-steps", int, help="compile the training step (torch.compile) when a call runs at least "
                  "this many steps; 0: never (default {default})"))
    keep_checkpoints: tuple[int, ...] = setting((), "integer epoch numbers >= 1", lambda v: all(map(_count, v)),
                                                convert=_epoch_numbers)  # a resume may change them

    def __post_init__(self) -> None:
        for f, _ in _declared():
            object.__setattr__(self, f.name, check_setting(f.name, getattr(self, f.name)))
        if self.epochs is None and self.steps is None:
            raise PPModelsError("fit: give epochs=... or steps=...")
        if self.epochs is not None and self.steps is not None:
            raise PPModelsError("fit: give epochs=... or steps=..., not both")

    def trajectory(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint, as the checkpoint records them."""
        return {f.name: rule.saved(getattr(self, f.name)) for f, rule in _declared() if rule.trajectory}

    def adam(self) -> dict[str, Any]:
        """Adam's options (``torch.optim.Adam``'s keyword arguments)."""
        return {f.name: getattr(self, f.name) for f, rule in _declared() if rule.adam}


def _declared() -> Iterator[tuple[Field, Rule]]:
    """The fields :func:`setting` declared, in order, with their rules."""
    for f in fields(TrainSettings):
        yield f, f.metadata["rule"]


#: the defaults of Adam's options
ADAM_DEFAULTS: dict[str, Any] = {f.name: f.default for f, rule in _declared() if rule.adam}


def check_setting(name: str, value: Any, what: str | None = None) -> Any:
    """``value`` of the setting ``name`` as fit keeps it, or the one-line error (naming ``what``,
    default ``name``)."""
    rule = next(rule for f, rule in _declared() if f.name == name)
    return Want(rule.want, rule.ok, rule.convert).check("fit", what or name, value)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as (training settings, the rest)."""
    names = {f.name for f, _ in _declared()}
    return ({k: v for k, v in options.items() if k in names}, {k: v for k, v in options.items() if k not in names})


def add_flags(parser: argparse.ArgumentParser, family: Any = None) -> None:
    """Add the ``ppmodels train`` flag of each setting that has one, with ``family``'s default
    where it has an attribute ``default_NAME`` and its help where it has ``NAME_help``."""
    for f, rule in _declared():
        if rule.flag is None:
            continue
        flag = rule.flag
        default = getattr(family, f"default_{f.name}", f.default if flag.default is AS_FIT else flag.default)
        text = getattr(family, f"{f.name}_help", None) or (flag.help.format(default=default) if flag.help else None)
        parser.add_argument(flag.name, type=flag.type, choices=flag.choices, default=default, help=text)


def describe() -> str:
    """The settings, one line each (for :func:`ppmodels.fit.fit`'s docstring)."""
    lines = []
    for f, rule in _declared():
        notes = [n for n, on in (("part of the trajectory", rule.trajectory), ("Adam's", rule.adam)) if on]
        flag = f"; ``ppmodels train {rule.flag.name}``" if rule.flag else ""
        lines.append(f"    - ``{f.name}={f.default!r}``: {rule.want}{'; ' if notes else ''}{', '.join(notes)}{flag}")
    return "\n".join(lines)
