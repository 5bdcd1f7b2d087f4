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

from pyro import poutine
from torch import Tensor

from ..tracing import forked_rng
from .base import _identity
from .elbo import Elbo, _device, elbo_surrogate

__all__ = ["MeanFieldElbo"]


class MeanFieldElbo(Elbo):
    """``"meanfield"``: ELBO with analytic KL where registered and the mean-field order holds."""

    free_bits_supported = False
    name = "meanfield"
    analytic_kl = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mean_field: dict[tuple[int, int], bool] = {}

    def _is_mean_field(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> bool:
        key = (_identity(model), _identity(guide))
        if key not in self._mean_field:
            with forked_rng(), poutine.block():
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
                model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
            latents = {n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
            order_m = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and n in latents]
            order_g = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and n in order_m]
            ok = order_m == order_g
            if not ok:
                self.warn_once(
                    f"objective 'meanfield': model and guide sample {order_m} in different orders, so the "
                    "mean-field condition is not verified; using Monte-Carlo KL terms (as 'elbo')"
                )
            self._mean_field[key] = ok
        return self._mean_field[key]

    def surrogate_units(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        self._check_once(model, guide, args, kwargs)
        analytic = self._is_mean_field(model, guide, args, kwargs)
        lw, _ = self.draw(model, guide, args, kwargs, analytic_kl=analytic, kl_weight=self._kl_weight(_device(args)))
        return elbo_surrogate(lw)
