r"""REINFORCE with the leave-one-out baseline (Kool, van Hoof & Welling, *Buy 4 REINFORCE Samples,
Get a Baseline for Free!*, ICLR Deep RL Meets Structured Prediction workshop 2019; Salimans &
Knowles 2014).

Bound: the ELBO, estimated with K ≥ 2 particles. Each particle's baseline is the mean of the
other particles' log weights of the same term (a datapoint, or the whole batch when it is one
term):

.. math:: \hat\nabla_\phi = \frac1K\sum_k \Big(\log w_k - \frac{1}{K-1}\sum_{j\ne k}\log w_j\Big)
          \nabla_\phi \log q(z_k \mid x) + \text{pathwise terms}
          = \frac{1}{K-1}\sum_k \big(\log w_k - \overline{\log w}\big)\,\nabla_\phi \log q(z_k \mid x)
          + \text{pathwise terms}

Unbiased for the ELBO's gradient (each baseline is independent of its own particle), and with
nothing to learn: no state, no warm-up. Reparameterized sites and the model get the pathwise
gradient of the K-particle ELBO. Vectorized over particles and terms; its cost is REINFORCE's at
K particles.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from ..utils import PPModelsError
from .elbo import Elbo, _device, elbo_surrogate

__all__ = ["Rloo", "leave_one_out_signal"]


def leave_one_out_signal(log_w: Tensor) -> Tensor:
    r""":math:`\log w_k - \frac{1}{K-1}\sum_{j \ne k} \log w_j = \frac{K}{K-1}(\log w_k - \overline{\log w})`,
    shape (K, U), detached."""
    K = log_w.shape[0]
    log_w = log_w.detach()
    return (log_w - log_w.mean(0, keepdim=True)) * (K / (K - 1))


class Rloo(Elbo):
    """``"rloo"``: the K-particle ELBO with REINFORCE leave-one-out gradients at discrete sites."""

    free_bits_supported = False
    name = "rloo"
    jit_safe = True

    def __init__(self, num_particles: int = 4, **kwargs: Any) -> None:
        if isinstance(num_particles, int) and not isinstance(num_particles, bool) and num_particles == 1:
            raise PPModelsError("objective 'rloo': num_particles must be >= 2 (the leave-one-out baseline needs other "
                                "particles); with one particle use 'reinforce' with a baseline")
        super().__init__(num_particles, **kwargs)

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        lw, _ = self.draw(model, guide, args, kwargs, kl_weight=self._kl_weight(_device(args)))
        if not lw.has_score:
            return elbo_surrogate(lw)
        bound = lw.scale * lw.log_w.mean(0)
        return bound, lw.scale * (lw.pathwise + lw.score * leave_one_out_signal(lw.log_w)).mean(0)
