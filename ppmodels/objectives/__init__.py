"""Variational objectives by name: ``make("iwae", num_particles=5)``.

Each objective has ``loss(model, guide, *args) -> float`` (minus the bound estimate) and
``differentiable_loss(model, guide, *args) -> Tensor`` (its gradient is the estimator of
minus the bound's gradient). One estimator per module, each with its bound, gradient and paper.
"""

from __future__ import annotations

import inspect
from typing import Any

from pyro.infer.elbo import ELBO

from ..utils import PPModelsError
from .base import LogWeights, Objective, log_mean_exp, log_weights
from .disarm import Arm, Disarm
from .dreg import Dreg
from .elbo import Elbo
from .enum import Enum
from .gumbel import Gumbel, StraightThroughGumbel
from .interop import PyroElbo
from .iwae import Iwae
from .meanfield import MeanFieldElbo
from .reinforce import Reinforce
from .relax import Relax
from .rloo import Rloo
from .rws import Rws
from .renyi import Renyi
from .stl import Stl
from .vimco import Vimco
from .vq import Vq

__all__ = ["make", "names", "REGISTRY", "Objective", "LogWeights", "log_weights", "log_mean_exp",
           "PyroElbo", "Elbo", "MeanFieldElbo", "Reinforce", "Relax", "Rloo", "Rws", "Arm", "Disarm", "Gumbel", "StraightThroughGumbel", "Enum", "Renyi", "Iwae", "Dreg", "Stl", "Vimco", "Vq"]

REGISTRY: dict[str, type[Objective]] = {
    cls.name: cls for cls in (Elbo, MeanFieldElbo, Reinforce, Relax, Rloo, Rws, Arm, Disarm, Gumbel, StraightThroughGumbel, Enum, Renyi, Iwae, Dreg, Stl, Vimco, Vq)
}


def names() -> list[str]:
    """The registered objective names."""
    return list(REGISTRY)


def _accepted(cls: type) -> set[str]:
    accepted: set[str] = set()
    for klass in cls.__mro__[: cls.__mro__.index(Objective) + 1]:  # not pyro.infer.ELBO's options
        if "__init__" in vars(klass):
            params = inspect.signature(vars(klass)["__init__"]).parameters
            accepted |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return accepted - set(getattr(cls, "fixed_options", ()))


def make(name: "str | Objective | ELBO", **options: Any) -> Objective:
    """The objective registered as ``name``, configured with ``options``; a configured
    objective as it is; a ``pyro.infer.ELBO`` instance wrapped as :class:`PyroElbo`.

    An unknown name, or an option the objective does not take, is a :class:`PPModelsError`
    that lists what is available.
    """
    if isinstance(name, ELBO) and not isinstance(name, Objective):
        if options:
            raise PPModelsError(f"make: options {sorted(options)} given with a configured Pyro {type(name).__name__}")
        return PyroElbo(name)
    if isinstance(name, Objective):
        if options:
            raise PPModelsError(f"make: options {sorted(options)} given with an already-configured {name!r}")
        return name
    if not isinstance(name, str) or name not in REGISTRY:
        raise PPModelsError(f"unknown objective {name!r}; available: {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    accepted = _accepted(cls)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise PPModelsError(
            f"objective {name!r} does not take option(s) {unknown}; it takes {sorted(accepted)}"
        )
    return cls(**options)
