r"""The VQ-VAE objective (van den Oord, Vinyals & Kavukcuoglu, *Neural Discrete Representation
Learning*, NeurIPS 2017, eq. 3).

At each guide site drawn from :class:`~ppmodels.distributions.VectorQuantized` (the encoder's
outputs :math:`z_e(x)` snapped to their nearest codewords :math:`e_{k}`, a deterministic one-hot
q), the decoder sees :math:`z_q = z_e + \mathrm{sg}[e_k - z_e]` and the surrogate is

.. math:: \log p(x \mid z_q) + \log p(z_q) - \log q(z_q \mid x)
          - \|\mathrm{sg}[z_e] - e_k\|^2 - \beta\,\|z_e - \mathrm{sg}[e_k]\|^2

(sums over positions and code dimensions; β: ``commitment``, 0.25 in the paper). Gradients:
the encoder gets the decoder-input gradient copied by the straight-through estimator plus the
commitment term's :math:`2\beta(z_e - e_k)`; the codebook only the codebook loss's
:math:`2(e_k - z_e)`; the decoder the reconstruction term's. Bound: the ELBO, with the prior's
terms counted: for a uniform prior over K codes, :math:`\log p(x \mid z_q) - P \log K`
(q is a point mass: :math:`\log q = 0`). The loss's value is minus that bound; the two
auxiliary terms enter its gradient only. Particles are identical (q is deterministic), so
K = 1 is the natural choice.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro.distributions.util import scale_and_mask
from torch import Tensor

from ..distributions import VectorQuantized
from ..program.facts import sample_sites
from ..program.weights import to_terms
from ..settings import NONNEGATIVE
from ..utils import PPModelsError
from .base import Objective
from .elbo import elbo_surrogate

__all__ = ["Vq", "quantization_terms"]


def _base(fn: Any) -> Any:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def quantization_terms(pairs: list, lw, commitment: float) -> Tensor | None:
    r""":math:`\|\mathrm{sg}[z_e] - e\|^2 + \beta\|z_e - \mathrm{sg}[e]\|^2` of every
    ``VectorQuantized`` guide site, per particle and term like ``lw``'s tensors (K, U), each
    site's plate scale applied as in the log weights; None when the guide has no such site."""
    K = lw.log_w.shape[0]
    vectorized = len(pairs) == 1 and K > 1
    pdim = -(lw.facts.max_plate_nesting + 1) if vectorized else None
    parts = []
    for _, guide_trace in pairs:
        total = None
        for _, site in sample_sites(guide_trace):
            fn = _base(site["fn"])
            if isinstance(fn, VectorQuantized):
                loss = scale_and_mask(fn.codebook_loss() + commitment * fn.commitment_loss(), site["scale"], site["mask"])
                term = to_terms(loss, pdim, lw.facts.data_dim)
                total = term if total is None else total + term
        if total is None:
            return None
        parts.append(total)
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    out = out.expand(K, lw.log_w.shape[1])
    return out / lw.scale if lw.scale != 1.0 else out


class Vq(Objective):
    """``"vq"``: the ELBO with straight-through gradients plus the codebook and commitment losses."""

    name = "vq"
    jit_safe = False

    def __init__(self, num_particles: int = 1, *, commitment: float = 0.25, **kwargs: Any) -> None:
        super().__init__(num_particles, **kwargs)
        self.commitment = float(NONNEGATIVE.check("objective 'vq'", "commitment", commitment))

    def options(self) -> dict[str, Any]:
        return {**super().options(), "commitment": self.commitment}

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        lw, pairs = self.draw(model, guide, args, kwargs)
        vq = quantization_terms(pairs, lw, self.commitment)
        if vq is None:
            raise PPModelsError("objective 'vq': the guide has no VectorQuantized site (a VQ-VAE's quantized "
                                "encoder output); use it with ppmodels.models.VQVAE, or another objective")
        bound, surrogate = elbo_surrogate(lw)
        return bound, surrogate - lw.scale * vq.mean(0)
