r""""Sticking the landing" (Roeder, Wu & Duvenaud, NeurIPS 2017).

Same bound as ``elbo``; the guide's log-density is evaluated with its distribution parameters
detached, :math:`\log q_{\bar\phi}(z_\phi)`, so the score term
:math:`-\mathbb E_q[\nabla_\phi \log q_\phi(z)]` (zero in expectation) is dropped:

.. math:: \hat\nabla_\phi = \frac1K\sum_k \nabla_z\big[\log p(x, z) - \log q_{\bar\phi}(z)\big]_{z=z_k}\,
          \frac{\partial z_k}{\partial \phi}

It is unbiased for the ELBO gradient, and exactly zero when q is the exact posterior.
Requires reparameterizable guide sites. The detach is per site: a hierarchical guide
q(z2 | z1) also loses the z1-dependence of its detached parameters.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from .base import require_reparameterized
from .elbo import Elbo, _device, elbo_surrogate

__all__ = ["Stl"]


class Stl(Elbo):
    """``"stl"``: ELBO with the sticking-the-landing guide gradient."""

    name = "stl"
    detach_guide = True

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        beta = self._kl_weight(_device(args))
        lw, pairs = self.draw(model, guide, args, kwargs, detach_guide=True, kl_weight=beta)
        require_reparameterized(lw, self.name, instead="elbo or reinforce")
        return self._free_bits(lw, pairs, beta, *elbo_surrogate(lw))
