r"""Exact enumeration of discrete latents (TraceEnum_ELBO; Obermeyer et al. 2019).

Bound: the ELBO with every enumerable discrete site summed out exactly,

.. math:: \mathcal L = \mathbb E_{q(z_c)}\Big[\sum_{z_d} q(z_d)\big(\log p(x, z_d, z_c) - \log q(z_d, z_c)\big)\Big]

(discrete guide sites are enumerated in parallel; model-only discrete sites marked
``infer={"enumerate": "parallel"}`` are marginalized). The gradient has no score-function
variance at enumerated sites: with only discrete latents it is exact.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch import Tensor

from ..tracing import forked_rng
from ..utils import PPModelsError
from .base import Objective, _identity

__all__ = ["Enum"]


class Enum(Objective):
    """``"enum"``: TraceEnum_ELBO with the guide's discrete sites enumerated in parallel."""

    name = "enum"
    jit_safe = False
    per_unit = False
    enumerates = True

    def __init__(self, num_particles: int = 1, **kwargs: Any) -> None:
        super().__init__(num_particles, **kwargs)
        self._elbo: TraceEnum_ELBO | None = None
        self._wrapped: dict[tuple, Callable] = {}

    def _setup(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[TraceEnum_ELBO, Callable]:
        key = (_identity(model), _identity(guide))
        if key not in self._wrapped:  # one wrapper per pair: checks and caches key on a stable guide
            wrapped = config_enumerate(guide, default="parallel")
            self._check(model, wrapped, args, kwargs)
            self._wrapped[key] = wrapped
        guide = self._wrapped[key]
        if self._elbo is None:
            self._elbo = TraceEnum_ELBO(
                num_particles=self.num_particles,
                vectorize_particles=self.vectorize_particles,
                max_plate_nesting=self._plate_nesting(model, guide, args, kwargs),
            )
        return self._elbo, guide

    @staticmethod
    def _check(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        with forked_rng(), poutine.block():  # checking must not shift the random stream
            gt = poutine.trace(guide).get_trace(*args, **kwargs)
            mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(*args, **kwargs)
        if not any(
            s["type"] == "sample" and not s["is_observed"] and s["infer"].get("enumerate")
            for t in (gt, mt) for s in t.nodes.values()
        ):
            raise PPModelsError(
                "objective 'enum': the model has no discrete site to enumerate (no guide site "
                "with enumerable support, no model site with infer={'enumerate': 'parallel'}); "
                "use 'elbo' for continuous latents"
            )

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        elbo, guide = self._setup(model, guide, args, kwargs)
        return elbo.differentiable_loss(model, guide, *args, **kwargs)

    def surrogate_units(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        return -loss.detach().reshape(1), -loss.reshape(1)

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        elbo, guide = self._setup(model, guide, args, kwargs)
        with torch.no_grad():
            return float(elbo.loss(model, guide, *args, **kwargs))
