r"""The evidence lower bound, estimated with K particles (Trace_ELBO semantics).

.. math:: \mathcal L(\theta, \phi) = \mathbb E_{q_\phi(z|x)}[\log p_\theta(x, z) - \log q_\phi(z|x)]

Gradient: pathwise (reparameterization, Kingma & Welling 2014) at reparameterizable guide
sites; score function (Williams 1992) at the others, each datapoint's latent weighted by that
datapoint's own log weight (Rao-Blackwellized over the data plate), global latents by the
whole batch's. Particles are vectorized.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from .base import LogWeights, Objective

__all__ = ["Elbo", "elbo_surrogate"]


def elbo_surrogate(lw: LogWeights, baseline: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    r"""``(bound, surrogate)`` per unit of the K-particle ELBO, from log weights.

    surrogate :math:`= \frac1K \sum_k \big[\log w_k + \frac NB \sum_b (\overline{\log w_{kb}} - b_b)\,
    \log q(z_{kb}) + (\overline{\log w_k} - b)\, \log q(z^{\mathrm{global}}_k)\big]` (bars: detached;
    ``baseline`` :math:`b`: per datapoint, or per batch when there are global latents).
    """
    if lw.local is not None and not lw.global_latents:  # one unit per datapoint
        per = lw.scale * lw.local + lw.global_[:, None] / lw.local.shape[1]  # (K, B)
        if lw.has_score:
            surrogate = per + lw.scale * (lw.local.detach() - baseline) * lw.local_score
        else:
            surrogate = per
        return per.mean(0), surrogate.mean(0)
    total = lw.total()
    surrogate = total
    if lw.has_score:
        surrogate = surrogate + (total.detach() - baseline) * lw.global_score
        if lw.local is not None:
            surrogate = surrogate + lw.scale * (lw.local.detach() * lw.local_score).sum(-1)
    return total.mean(0)[None], surrogate.mean(0)[None]


class Elbo(Objective):
    """``"elbo"``: the ELBO with pathwise / score-function gradients (Trace_ELBO)."""

    name = "elbo"
    jit_safe = True
    analytic_kl = False
    detach_guide = False

    def surrogate_units(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        lw, _ = self.draw(model, guide, args, kwargs, detach_guide=self.detach_guide, analytic_kl=self.analytic_kl)
        return elbo_surrogate(lw)
