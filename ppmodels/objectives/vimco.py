r"""VIMCO: multi-sample score-function gradients with leave-one-out baselines
(Mnih & Rezende, ICML 2016).

Bound: the IWAE bound :math:`\hat{\mathcal L} = \log \frac1K\sum_k w_k` (per datapoint, see
``iwae``). For non-reparameterized guide sites, particle k's learning signal is
:math:`\hat{\mathcal L} - \hat{\mathcal L}_{-k}`, where :math:`\hat{\mathcal L}_{-k}` replaces
:math:`\log w_k` by the mean of the other K−1 log weights (their geometric mean):

.. math:: \hat\nabla_\phi = \sum_k \big(\hat{\mathcal L} - \hat{\mathcal L}_{-k}\big)\,
          \nabla_\phi \log q(z_k) + \sum_k \tilde w_k \nabla_\phi \log w_k

Reparameterized sites and the model get the pathwise IWAE gradient. Unbiased for
:math:`\nabla \mathcal L_K` (each baseline is independent of its own particle). Needs K ≥ 2.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..utils import PPModelsError
from .base import log_mean_exp, terms
from .iwae import Iwae

__all__ = ["Vimco", "leave_one_out_bounds"]


def leave_one_out_bounds(log_w: Tensor) -> Tensor:
    r""":math:`\hat{\mathcal L}_{-k}` for every k, shape (K, U): log w_k replaced by
    :math:`\frac{1}{K-1}\sum_{j\ne k}\log w_j` inside the log-mean-exp."""
    K = log_w.shape[0]
    others_mean = (log_w.sum(0, keepdim=True) - log_w) / (K - 1)  # (K, U)
    eye = torch.eye(K, dtype=torch.bool, device=log_w.device)[:, :, None]  # (K, K, 1)
    replaced = torch.where(eye, others_mean[:, None, :], log_w[None, :, :])  # [k, j, u]
    return torch.logsumexp(replaced, 1) - math.log(K)


class Vimco(Iwae):
    """``"vimco"``: IWAE bound, VIMCO gradient at discrete guide sites."""

    name = "vimco"

    def __init__(self, num_particles: int = 5, **kwargs: Any) -> None:
        if isinstance(num_particles, int) and num_particles == 1:
            raise PPModelsError(
                "objective 'vimco': num_particles must be >= 2 (the leave-one-out baseline needs "
                "other particles); with one particle use 'reinforce' with a baseline"
            )
        super().__init__(num_particles, **kwargs)

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        lw, _ = self.draw(model, guide, args, kwargs)
        log_w, score, scale = terms(lw, self)
        f = log_mean_exp(log_w, 0)  # (U,)
        bound = scale * f
        if not lw.has_score:
            return bound, bound
        signal = (f[None] - leave_one_out_bounds(log_w)).detach()  # (K, U)
        return bound, bound + scale * (signal * score).sum(0)
