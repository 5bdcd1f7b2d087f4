r"""The ELBO with analytic KL terms (Pyro's ``TraceMeanField_ELBO``).

.. math:: \mathcal L = \mathbb E_q[\log p(x \mid z)] - \mathrm{KL}(q(z|x) \,\|\, p(z))

At each reparameterized guide site whose (guide, prior) pair has a registered
``torch.distributions.kl_divergence``, :math:`\log p(z) - \log q(z)` is replaced by
:math:`-\mathrm{KL}`; other sites fall back to the Monte-Carlo term. The bound is the same as
``elbo``'s; the estimator's variance is lower (Kingma & Welling 2014, eq. 10).

The substitution is exact only under the mean-field condition: no prior or guide factor of
a site may depend on a latent the guide draws after it. As Pyro does, the condition is
checked by the order of the sites (model and guide must sample their shared latents in the
same order); where it fails, this objective warns once and uses the Monte-Carlo terms
everywhere (``elbo``'s estimator), so its expectation stays the ELBO.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from .elbo import Elbo, _device, elbo_surrogate

__all__ = ["MeanFieldElbo"]


class MeanFieldElbo(Elbo):
    """``"meanfield"``: ELBO with analytic KL where registered and the mean-field order holds."""

    free_bits_supported = False
    name = "meanfield"
    analytic_kl = True

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        found = self.facts(model, guide, args, kwargs)
        if not found.mean_field:
            self.warn_once(found, f"objective 'meanfield': model and guide sample {list(found.guide_latents)} in "
                                  "different orders, so the mean-field condition is not verified; using Monte-Carlo "
                                  "KL terms (as 'elbo')")
        lw, _ = self.draw(model, guide, args, kwargs, analytic_kl=found.mean_field,
                          kl_weight=self._kl_weight(_device(args)))
        return elbo_surrogate(lw)
