r"""REINFORCE: score-function ELBO gradients with baselines (TraceGraph_ELBO semantics;
Williams 1992; Mnih & Gregor 2014 for the neural baseline).

Bound: the ELBO. At each non-reparameterized guide site z,

.. math:: \hat\nabla_\phi = \big(c_z - b_z\big)\,\nabla_\phi \log q(z) + \text{pathwise terms}

where :math:`c_z` is the sum of the cost terms downstream of z in the dependency graph
(Rao-Blackwellized, Schulman et al. 2015) and :math:`b_z` a baseline: ``"none"``,
``"decaying"`` (an exponential moving average of :math:`c_z`, weight ``beta``) or
``"neural"`` (a network of the batch, trained by :math:`(c_z - b_z)^2`). Unlike Pyro's
``TraceGraph_ELBO``, this objective has ``differentiable_loss``: its value is minus the
ELBO estimate and its gradient the estimator above plus the baseline's regression loss.
"""

from __future__ import annotations

from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import TraceGraph_ELBO
from torch import Tensor, nn

from ..utils import PPModelsError
from .base import Objective

__all__ = ["Reinforce"]

BASELINES = ("none", "decaying", "neural")


class Reinforce(Objective):
    """``"reinforce"``: score-function ELBO gradients with a baseline."""

    name = "reinforce"
    per_unit = False

    def __init__(
        self,
        num_particles: int = 1,
        *,
        baseline: str = "decaying",
        beta: float = 0.9,
        baseline_net: nn.Module | None = None,
        baseline_input: Callable[..., Tensor] | None = None,
        hidden: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_particles, **kwargs)
        if baseline not in BASELINES:
            raise PPModelsError(f"objective 'reinforce': baseline must be one of {BASELINES}, got {baseline!r}")
        if not 0 <= beta < 1:
            raise PPModelsError(f"objective 'reinforce': beta must be in [0, 1), got {beta!r}")
        self.baseline, self.beta, self.hidden = baseline, beta, hidden
        self.baseline_net = baseline_net
        self.baseline_input = baseline_input or (lambda *args, **kwargs: args[0])
        self._elbo = TraceGraph_ELBO(
            num_particles=num_particles,
            vectorize_particles=self.vectorize_particles,
            max_plate_nesting=float("inf") if self.max_plate_nesting is None else self.max_plate_nesting,
        )

    def options(self) -> dict[str, Any]:
        return {**super().options(), "baseline": self.baseline, "beta": self.beta}

    def _guide_with_baselines(self, guide: Callable, args: tuple, kwargs: dict) -> Callable:
        if self.baseline == "none":
            return guide
        if self.baseline == "decaying":
            options: dict[str, Any] = {"use_decaying_avg_baseline": True, "baseline_beta": self.beta}
        else:
            x = self.baseline_input(*args, **kwargs).detach()
            x = x.reshape(x.shape[0], -1)
            if self.baseline_net is None:
                self.baseline_net = nn.Sequential(
                    nn.Linear(x.shape[-1], self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1), nn.Flatten(0)
                ).to(x.device)
            net = pyro.module("reinforce_baseline", self.baseline_net)
            options = {"nn_baseline": net, "nn_baseline_input": x}

        def config(msg: dict) -> dict:
            if msg["type"] == "sample" and not msg["is_observed"] and not msg["fn"].has_rsample:
                return {"baseline": dict(options)}
            return {}

        return poutine.infer_config(guide, config)

    def surrogate_units(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        guide = self._guide_with_baselines(guide, args, kwargs)
        elbo, surrogate_loss = self._elbo._loss_and_surrogate_loss(model, guide, args, kwargs)
        return torch.as_tensor(elbo).reshape(1), -surrogate_loss.reshape(1)

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            return float(self._elbo.loss(model, guide, *args, **kwargs))
