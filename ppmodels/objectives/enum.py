r"""Exact enumeration of discrete latents (TraceEnum_ELBO; Obermeyer et al. 2019).

Bound: the ELBO with every enumerable discrete site summed out exactly,

.. math:: \mathcal L = \mathbb E_{q(z_c)}\Big[\sum_{z_d} q(z_d)\big(\log p(x, z_d, z_c) - \log q(z_d, z_c)\big)\Big]

(discrete guide sites are enumerated in parallel; model-only discrete sites marked
``infer={"enumerate": "parallel"}`` are marginalized). The gradient has no score-function
variance at enumerated sites: with only discrete latents it is exact.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch import Tensor

from .base import Objective

__all__ = ["Enum"]


class Enum(Objective):
    """``"enum"``: TraceEnum_ELBO with the guide's discrete sites enumerated in parallel.

    Stateless: each call builds Pyro's ``TraceEnum_ELBO`` with the program's plate nesting (from
    its facts) and wraps the guide with ``config_enumerate``; both are cheap. A program with
    nothing to enumerate (a labelled batch of a semi-supervised model, say) runs as Pyro runs it,
    said once as a warning."""

    name = "enum"
    jit_safe = False
    per_term = False
    enumerates = True

    def _setup(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[TraceEnum_ELBO, Callable]:
        found = self.facts(model, guide, args, kwargs)
        if not found.guide_enumerable and not found.model_enumerated:
            self.warn_once(found, "objective 'enum': the program has no discrete site to enumerate (no guide site "
                                  "with enumerable support, no model site with infer={'enumerate': 'parallel'}); "
                                  "it runs as TraceEnum_ELBO runs it, as a Monte-Carlo ELBO")
        elbo = TraceEnum_ELBO(num_particles=self.num_particles, vectorize_particles=self.vectorize_particles,
                              max_plate_nesting=found.max_plate_nesting)
        return elbo, config_enumerate(guide, default="parallel")

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        elbo, guide = self._setup(model, guide, args, kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured")
            return elbo.differentiable_loss(model, guide, *args, **kwargs)

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        return -loss.detach().reshape(1), -loss.reshape(1)

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        elbo, guide = self._setup(model, guide, args, kwargs)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured")
            return float(elbo.loss(model, guide, *args, **kwargs))
