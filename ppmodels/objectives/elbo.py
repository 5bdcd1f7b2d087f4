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

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..utils import PPModelsError
from .base import LogWeights, Objective, require_reparameterized
from .free_bits import free_bits_correction

__all__ = ["Elbo", "elbo_surrogate"]


def elbo_surrogate(lw: LogWeights, baseline: Tensor | float = 0.0, baseline_score: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
    r"""``(bound, surrogate)`` per unit of the K-particle ELBO, from log weights.

    surrogate :math:`= \frac{\text{scale}}K \sum_k \big[\text{pathwise}_k + \sum_{\text{sites}}
    \log q(z_k)\,(\overline{\text{cost}_k} - b)\big]` per unit (bars: detached; ``baseline``
    :math:`b`: per unit, shape (U,), or a scalar; ``baseline_score``: the score functions it
    multiplies, default all of them).
    """
    bound = lw.scale * lw.log_w.mean(0)
    if not lw.has_score:
        return bound, lw.scale * lw.pathwise.mean(0)
    surrogate = lw.pathwise + lw.rb
    if not (isinstance(baseline, float) and baseline == 0.0):
        surrogate = surrogate - baseline * (lw.score if baseline_score is None else baseline_score)
    return bound, lw.scale * surrogate.mean(0)


class Elbo(Objective):
    r"""``"elbo"``: the ELBO with pathwise / score-function gradients (Trace_ELBO).

    ``kl_weight`` β (Higgins et al. 2017): the objective
    :math:`\mathbb E_q[\log p(x \mid z)] - \beta\,\mathrm{KL}(q(z|x) \| p(z))`, the latent sites'
    terms weighted by β (1: the ELBO). It is held as a 0-d tensor that
    :class:`ppmodels.callbacks.KLAnnealing` changes in place, so a schedule also reaches a traced loss.
    ``free_bits`` λ > 0 (Kingma et al. 2016): train on :math:`\sum_j \max(\lambda, \mathrm{KL}_j)`
    per latent dimension instead of the KL (:mod:`ppmodels.objectives.free_bits`; ``elbo`` and
    ``stl``, reparameterized latents).
    """

    free_bits_supported = True

    name = "elbo"
    jit_safe = True
    analytic_kl = False
    detach_guide = False

    def __init__(self, num_particles: int = 1, *, kl_weight: float = 1.0, free_bits: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(num_particles, **kwargs)
        if isinstance(free_bits, bool) or not isinstance(free_bits, (int, float)) or not math.isfinite(free_bits) \
                or free_bits < 0:
            raise PPModelsError(f"objective {self.name!r}: free_bits must be a finite number >= 0, got {free_bits!r}")
        if free_bits and not self.free_bits_supported:
            raise PPModelsError(f"objective {self.name!r}: free_bits is for elbo and stl; use one of those")
        self.free_bits = float(free_bits)
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or not math.isfinite(kl_weight) \
                or kl_weight < 0:
            raise PPModelsError(f"objective {self.name!r}: kl_weight must be a finite number >= 0, got {kl_weight!r}")
        self.kl_weight = torch.tensor(float(kl_weight))
        self._beta = float(kl_weight)  # the same value, readable without a device sync

    def set_kl_weight(self, value: float) -> None:
        """Change β in place (the tensor a traced loss reads, and its host copy)."""
        self._beta = float(value)
        self.kl_weight.fill_(self._beta)

    def options(self) -> dict[str, Any]:
        out = super().options()
        if self._beta != 1.0:
            out["kl_weight"] = self._beta
        if self.free_bits:
            out["free_bits"] = self.free_bits
        return out

    def _kl_weight(self, device: torch.device) -> Tensor:
        """β for this call: always the tensor (on ``device``), also at 1, so that a captured step
        reads it as an input and follows any later :meth:`set_kl_weight`, whoever calls it. (A
        float 1.0 here would save one multiplication a latent site, and freeze β in a graph
        captured while it was 1.)"""
        if self.kl_weight.device != device:
            self.kl_weight = self.kl_weight.to(device)
        return self.kl_weight

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        beta = self._kl_weight(_device(args))
        lw, pairs = self.draw(model, guide, args, kwargs, detach_guide=self.detach_guide,
                              analytic_kl=self.analytic_kl, kl_weight=beta)
        return self._free_bits(lw, pairs, beta, *elbo_surrogate(lw))

    def _free_bits(self, lw: LogWeights, pairs: list, beta: Tensor | float, bound: Tensor,
                   surrogate: Tensor) -> tuple[Tensor, Tensor]:
        """``(bound, surrogate)`` with the free-bits KL in the surrogate (spread evenly over the
        units: the clamp couples the batch, so only the total is meaningful); unchanged at λ = 0."""
        if not self.free_bits:
            return bound, surrogate
        require_reparameterized(lw, self.name, instead="free_bits=0")
        delta = free_bits_correction(pairs, self.free_bits, self.num_particles, beta, self.detach_guide)
        return bound, surrogate + delta / surrogate.shape[-1]


def _device(args: tuple) -> torch.device:
    return next((a.device for a in args if torch.is_tensor(a)), torch.device("cpu"))
