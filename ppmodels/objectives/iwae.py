r"""The importance-weighted bound (Burda, Grosse & Salakhutdinov, ICLR 2016).

.. math:: \mathcal L_K = \mathbb E\Big[\log \frac1K \sum_{k=1}^K
          \frac{p(x, z_k)}{q(z_k|x)}\Big],\qquad z_k \sim q(z|x)

per datapoint when the batch plate holds every site, with the subsampling scale N/B applied
*outside* the log; other models get the whole-batch bound (an error under subsampling). Gradient: :math:`\sum_k \tilde w_k \nabla \log w_k` with
:math:`\tilde w = \mathrm{softmax}(\log w)` at reparameterized sites, plus the plain score
function :math:`\hat{\mathcal L}_K \sum_k \nabla \log q(z_k)` at discrete ones (use ``vimco``
for a low-variance one). This is ``renyi`` at α = 0.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..utils import PPModelsError
from .base import log_mean_exp
from .renyi import Renyi

__all__ = ["Iwae"]


class Iwae(Renyi):
    """``"iwae"``: the K-particle importance-weighted bound."""

    name = "iwae"
    fixed_options = ("alpha",)  # the Renyi bound at alpha = 0

    def __init__(self, num_particles: int = 5, **kwargs: Any) -> None:
        if "alpha" in kwargs:
            raise PPModelsError(f"objective {self.name!r} is the Renyi bound at alpha = 0 and takes no alpha; use 'renyi'")
        super().__init__(num_particles, alpha=0.0, **kwargs)

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in super().options().items() if k != "alpha"}

    def bound_fn(self, log_w: Tensor) -> Tensor:
        return log_mean_exp(log_w, 0)
