r"""Reweighted wake-sleep with minibatches (Bornschein & Bengio, *Reweighted Wake-Sleep*, ICLR 2015;
Le, Kosiorek, Siddharth, Teh & Wood, *Revisiting Reweighted Wake-Sleep for Models with Stochastic
Control Flow*, UAI 2019).

K particles :math:`z_k \sim q_\phi(z \mid x)`, drawn without reparameterization (the values
carry no gradient), with log weights :math:`\log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k \mid x)`
and self-normalized weights :math:`\bar w_k = \mathrm{softmax}_k(\log w)` (detached), per
datapoint when the batch plate holds every site:

.. math:: \text{wake-}\theta:\quad \hat\nabla_\theta = \sum_k \bar w_k\,\nabla_\theta \log p_\theta(x, z_k)
          \qquad\text{(the IWAE gradient at fixed } z_k\text{)}

.. math:: \text{wake-}\phi:\quad \hat\nabla_\phi = \sum_k \bar w_k\,\nabla_\phi \log q_\phi(z_k \mid x)
          \qquad\text{(a self-normalized estimate of } -\nabla_\phi \mathrm{KL}(p_\theta(z|x) \,\|\, q_\phi)\text{)}

Both are ascent directions, taken together by one backward pass (the surrogate is
:math:`\sum_k \bar w_k [\log p_\theta(x, z_k) + \log q_\phi(z_k)]`). The guide's update is not
the gradient of a bound: wake-φ moves q towards the posterior (inclusive KL), which needs no
reparameterization or control variate at discrete latents. The reported bound is the
K-particle importance-weighted bound :math:`\log \frac1K\sum_k w_k`, whose model gradient
wake-θ is.

Minibatches: terms are per datapoint, with the batch plate's subsampling scale :math:`N/B`
outside the log (as in :mod:`.iwae`), so a minibatch's update is an unbiased estimate of the
whole data set's — Pyro's ``ReweightedWakeSleep`` takes the batch as one term and does not
support minibatches. A program whose batch is one term gets the whole-batch weights (an error
under subsampling; :func:`ppmodels.program.terms`); on one datapoint the two agree. No
sleep-φ phase (Pyro's ``insomnia=1``). Vectorized over particles; no state.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..utils import PPModelsError
from .base import Objective, log_mean_exp, terms

__all__ = ["Rws"]


class Rws(Objective):
    """``"rws"``: reweighted wake-sleep (wake-θ and wake-φ) with K particles, per datapoint."""

    name = "rws"
    jit_safe = True
    fixed_options = ("reparameterized",)  # every latent drawn by the score function

    def __init__(self, num_particles: int = 5, **kwargs: Any) -> None:
        if "reparameterized" in kwargs:
            raise PPModelsError("objective 'rws' draws every latent without reparameterization and takes no "
                                "reparameterized option")
        if isinstance(num_particles, int) and not isinstance(num_particles, bool) and num_particles == 1:
            raise PPModelsError("objective 'rws': num_particles must be >= 2 (one particle's self-normalized weight "
                                "is 1: no reweighting); e.g. num_particles=5")
        super().__init__(num_particles, reparameterized=False, **kwargs)

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in super().options().items() if k != "reparameterized"}

    @property
    def bound(self) -> tuple:
        # the reported value is IWAE's, but the guide's update is not a bound's gradient
        return ("rws", self.num_particles)

    def weights(self, log_w: Tensor) -> Tensor:
        """The particles' weights :math:`\bar w`, (K, U): self-normalized per term, detached."""
        return torch.softmax(log_w.detach(), 0)

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        lw, _ = self.draw(model, guide, args, kwargs)
        log_w, score, scale = terms(lw, self)
        weights = self.weights(log_w)
        # pathwise: log p(x, z_k) (the values carry no gradient); score: log q(z_k)
        return scale * log_mean_exp(log_w, 0), scale * (weights * (lw.pathwise + score)).sum(0)
