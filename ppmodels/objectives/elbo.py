r"""The evidence lower bound, estimated with K particles (Pyro's ``Trace_ELBO``).

.. math:: \mathcal L(\theta, \phi) = \mathbb E_{q_\phi(z|x)}[\log p_\theta(x, z) - \log q_\phi(z|x)]

Gradient: pathwise (reparameterization, Kingma & Welling 2014) at reparameterizable guide
sites; at the others the score function (Williams 1992; Ranganath et al. 2014), each site's
score multiplied by the detached log weight summed down to the site's own plates — Pyro's
partial Rao-Blackwellization (``MultiFrameTensor.sum_to``), so a datapoint's latent sees its
own datapoint's terms and every term outside the plate. Under plate subsampling the log
weights carry the plate's scale N/B and the score function does not (as in Pyro).
Particles are vectorized when K > 1 (``vectorize_particles=False``: a loop).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from .base import LogWeights, Objective

__all__ = ["Elbo", "elbo_surrogate"]


def elbo_surrogate(lw: LogWeights, baseline: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    r"""``(bound, surrogate)`` per unit of the K-particle ELBO, from log weights.

    surrogate :math:`= \frac{\text{scale}}K \sum_k \big[\text{pathwise}_k + \sum_{\text{sites}}
    \log q(z_k)\,(\overline{\text{cost}_k} - b)\big]` per unit (bars: detached; ``baseline``
    :math:`b`: per unit, shape (U,), or a scalar).
    """
    bound = lw.scale * lw.log_w.mean(0)
    if not lw.has_score:
        return bound, lw.scale * lw.pathwise.mean(0)
    surrogate = lw.pathwise + lw.rb
    if not (isinstance(baseline, float) and baseline == 0.0):
        surrogate = surrogate - baseline * lw.score
    return bound, lw.scale * surrogate.mean(0)


class Elbo(Objective):
    """``"elbo"``: the ELBO with pathwise / score-function gradients (Trace_ELBO)."""

    name = "elbo"
    jit_safe = True
    analytic_kl = False
    detach_guide = False

    def surrogate_units(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        lw, _ = self.draw(model, guide, args, kwargs, detach_guide=self.detach_guide, analytic_kl=self.analytic_kl)
        return elbo_surrogate(lw)
