r"""Pyro's own ELBOs as ppmodels objectives: :class:`PyroElbo`.

``make(pyro.infer.TraceGraph_ELBO())`` (or passing the instance to ``fit``, ``evaluate`` or
``gradient_study``) wraps a ``pyro.infer.ELBO`` instance so it runs wherever a ppmodels
objective does, with Pyro's own code and semantics — so the variance lab can show what
Pyro's estimators do next to ours. The other direction needs no adapter: every ppmodels
objective is a ``pyro.infer.ELBO`` (see :class:`~ppmodels.objectives.base.Objective`).

Pyro's ``TraceGraph_ELBO`` and ``RenyiELBO`` have no ``differentiable_loss``, only
``loss_and_grads``, which runs its own backward pass. For those the adapter runs it on
gradient buffers set aside for the call (the caller's ``.grad`` are restored), and returns
:math:`-\hat{\mathcal L}` plus :math:`\sum_i \langle \theta_i, g_i\rangle` minus its value:
a tensor whose value is the loss and whose gradient is Pyro's estimate :math:`g` (first
order only). The batch is always one term: replicates run as a loop.

Pyro's ``ReweightedWakeSleep`` returns two losses (wake-θ's, minus its importance-weighted
bound, and the guide's) and its ``loss_and_grads`` returns nothing: the adapter takes the first
as the loss's value and the sum's gradient as the estimate (its ``_loss``, the one place Pyro
computes both).

Pyro's ELBOs guess ``max_plate_nesting`` on their first call and keep the guess (state about
the first program they saw). The adapter gives Pyro, for each call, a copy of the ELBO whose
``max_plate_nesting`` is the program's own (from :func:`ppmodels.program.facts`) unless the
wrapped instance was given one, so one wrapped instance serves many programs. Pyro's
``max_plate_nesting`` counts its vectorized particle plate (``vectorize_particles=True``,
K > 1: the plate sits at ``dim=-max_plate_nesting``; Pyro adds the 1 only to a nesting it
guesses), so the program's nesting is given with that 1 added.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import pyro
import torch
from pyro.infer import RenyiELBO, ReweightedWakeSleep, TraceEnum_ELBO
from pyro.infer.elbo import ELBO
from torch import Tensor

from .. import program
from .base import Objective

__all__ = ["PyroElbo"]


class PyroElbo(Objective):
    """A ``pyro.infer.ELBO`` instance behind the ppmodels objective interface."""

    per_term = False
    jit_safe = False

    def __init__(self, elbo: ELBO) -> None:
        if not isinstance(elbo, ELBO) or isinstance(elbo, Objective):
            raise TypeError(f"PyroElbo wraps a pyro.infer.ELBO instance, got {type(elbo).__name__}")
        self.elbo = elbo
        self.name = type(elbo).__name__
        self.enumerates = isinstance(elbo, TraceEnum_ELBO)
        super().__init__(int(elbo.num_particles), vectorize_particles=bool(elbo.vectorize_particles))
        self._given_nesting = None if elbo.max_plate_nesting == float("inf") else elbo.max_plate_nesting
        self._native = type(elbo).__dict__.get("differentiable_loss") is not None or any(
            "differentiable_loss" in vars(k) for k in type(elbo).__mro__ if k not in (ELBO, object))

    def __repr__(self) -> str:
        return f"PyroElbo({self.name}, num_particles={self.num_particles})"

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_particles": self.num_particles}
        if isinstance(self.elbo, RenyiELBO):
            out["alpha"] = self.elbo.alpha
        return out

    @property
    def label(self) -> str:
        return f"pyro:{self.name}" + (f"[alpha={self.elbo.alpha}]" if isinstance(self.elbo, RenyiELBO) else "")

    @property
    def bound(self) -> tuple:
        if isinstance(self.elbo, ReweightedWakeSleep):  # its guide update is no bound's gradient
            return ("pyro-rws", self.num_particles)
        if isinstance(self.elbo, RenyiELBO) and self.num_particles > 1:
            # Pyro's Renyi bound is taken over the whole (scaled) batch: another bound than ours
            return ("pyro-renyi", float(self.elbo.alpha), self.num_particles)
        return ("elbo",)

    def with_particles(self, num_particles: int) -> "PyroElbo":
        elbo = copy.copy(self.elbo)
        elbo.num_particles = num_particles
        return PyroElbo(elbo)

    def _for(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> ELBO:
        """The wrapped ELBO, as a copy set to this program's plate nesting (see module docstring)."""
        if self._given_nesting is not None:
            return self.elbo
        found = program.facts(model, guide, args, kwargs, where=f"pyro:{self.name}")
        elbo = copy.copy(self.elbo)
        particle_plate = bool(elbo.vectorize_particles) and elbo.num_particles > 1
        elbo.max_plate_nesting = found.max_plate_nesting + int(particle_plate)
        return elbo

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        if isinstance(self.elbo, ReweightedWakeSleep):
            theta, phi = self._for(model, guide, args, kwargs)._loss(model, guide, args, kwargs)
            return theta + phi - phi.detach()
        if self._native:
            return self._for(model, guide, args, kwargs).differentiable_loss(model, guide, *args, **kwargs)
        return self._via_loss_and_grads(model, guide, args, kwargs)

    def _via_loss_and_grads(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Tensor:
        store = pyro.get_param_store()
        before = {name: p.grad for name, p in store.named_parameters()}
        for _, p in store.named_parameters():
            p.grad = None
        loss = self._for(model, guide, args, kwargs).loss_and_grads(model, guide, *args, **kwargs)
        terms = []
        for name, p in store.named_parameters():
            if p.grad is not None:
                terms.append((p * p.grad.detach()).sum())
            p.grad = before.get(name)
        value = torch.as_tensor(float(loss))
        if not terms:
            return value
        linear = torch.stack(terms).sum()
        return value.to(linear) + linear - linear.detach()

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        return -loss.detach().reshape(1), -loss.reshape(1)

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        if isinstance(self.elbo, ReweightedWakeSleep):
            return float(self._for(model, guide, args, kwargs).loss(model, guide, *args, **kwargs)[0])
        return float(self._for(model, guide, args, kwargs).loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        if isinstance(self.elbo, ReweightedWakeSleep):
            return super().loss_and_grads(model, guide, *args, **kwargs)
        return float(self._for(model, guide, args, kwargs).loss_and_grads(model, guide, *args, **kwargs))
