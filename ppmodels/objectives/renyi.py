r"""The Rényi (variational Rényi, VR) bound (Li & Turner, NeurIPS 2016).

.. math:: \mathcal L_{\alpha,K} = \frac{1}{1-\alpha}\,
          \log \frac1K \sum_{k=1}^K w_k^{1-\alpha},\qquad w_k = \frac{p(x, z_k)}{q(z_k|x)}

taken per datapoint when the batch plate holds every site (the N/B subsampling scale outside
the log: unlike Pyro's ``RenyiELBO``, which puts the scaled batch inside it), over the whole
batch otherwise (an error under subsampling). α = 0 is IWAE,
α → 1 the ELBO. Gradient: pathwise at reparameterized sites; at non-reparameterized sites the
score function :math:`\mathcal L_{\alpha,K}\,\nabla_\phi \sum_k \log q(z_k)` (the term Pyro's
``RenyiELBO`` drops, which leaves discrete encoders untrained).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from torch import Tensor

from ..utils import PPModelsError
from .base import Objective, log_mean_exp, terms

__all__ = ["Renyi", "multisample_surrogate"]


def multisample_surrogate(
    bound_fn: Callable[[Tensor], Tensor], log_w: Tensor, score: Tensor, scale: float, has_score: bool,
) -> tuple[Tensor, Tensor]:
    r"""``(bound, surrogate)`` per unit for :math:`\frac NB f(\log w_{\cdot u})`, with the plain
    score-function term :math:`\frac NB \bar f_u \sum_k \log q(z_{ku})` at discrete sites (the
    score function itself unscaled, as in Pyro)."""
    bound = scale * bound_fn(log_w)  # (U,)
    if not has_score:
        return bound, bound
    return bound, bound + scale * bound_fn(log_w).detach() * score.sum(0)


class Renyi(Objective):
    """``"renyi"``: the VR bound :math:`\\mathcal L_{\\alpha,K}`, α ≠ 1."""

    name = "renyi"
    jit_safe = True

    def __init__(self, num_particles: int = 5, *, alpha: float = 0.5, **kwargs: Any) -> None:
        super().__init__(num_particles, **kwargs)
        if not isinstance(alpha, (int, float)) or math.isnan(alpha) or alpha == 1:
            raise PPModelsError(
                f"objective 'renyi': alpha={alpha!r} is not allowed; alpha = 1 is the ELBO, use "
                "objective 'elbo' (or any alpha != 1, e.g. 0 for the IWAE bound)"
            )
        self.alpha = float(alpha)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "alpha": self.alpha}

    def with_particles(self, num_particles: int) -> "Renyi":
        if type(self) is not Renyi:
            options = {k: v for k, v in self.options().items() if k != "alpha"}
            return self._remade({**options, "num_particles": num_particles})
        return super().with_particles(num_particles)

    @property
    def bound(self) -> tuple:
        return ("elbo",) if self.num_particles == 1 else ("renyi", self.alpha, self.num_particles)

    def bound_fn(self, log_w: Tensor) -> Tensor:
        return log_mean_exp((1 - self.alpha) * log_w, 0) / (1 - self.alpha)

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        lw, _ = self.draw(model, guide, args, kwargs)
        return multisample_surrogate(self.bound_fn, *terms(lw, self), lw.has_score)
