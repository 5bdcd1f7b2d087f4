r"""Free bits (Kingma et al., *Improved Variational Inference with Inverse Autoregressive Flow*, 2016, §C.8).

The KL term of the ELBO is split into groups j (here: each dimension of a latent site whose
guide and prior are independent over their event, else the whole site), and each group's
batch-averaged KL is held at no less than λ nats:

.. math:: \tilde{\mathcal L} = \mathbb E_q[\log p(x \mid z)] - \beta \sum_j \max\big(\lambda,\,
          \mathbb E_{x \sim \text{batch}}\, \mathbb E_q[\log q(z_j \mid x) - \log p(z_j)]\big)

with the expectations estimated by the drawn particles. A group below λ gets no gradient from
the KL, so the encoder is not pushed to collapse it. This is a training objective, not a bound:
the reported bound stays the ELBO. Only for reparameterized latents (the max makes a score
function term meaningless here).
"""

from __future__ import annotations

from pyro import poutine
from pyro.distributions.util import detach, scale_and_mask
import torch
from torch import Tensor

__all__ = ["free_bits_correction"]


def free_bits_correction(pairs: list[tuple[poutine.Trace, poutine.Trace]], free_bits: float, num_particles: int,
                         kl_weight: Tensor | float = 1.0, detach_guide: bool = False) -> Tensor:
    r"""The term to add to the ELBO surrogate's sum over the batch to turn its KL part
    :math:`-\beta\,\widehat{\mathrm{KL}}` into :math:`-\beta \sum_j \max(\lambda, \widehat{\mathrm{KL}}_j)`
    (batch totals, each site's plate scale included). ``pairs``: the (model, guide) traces the
    surrogate was computed from (their log densities already computed); ``num_particles`` the
    particles they hold in all. ``detach_guide`` (STL): the guide's density with its parameters
    detached, in the correction and in the clamped KL, as in the surrogate."""
    monte_carlo = None
    groups_by_site: dict[str, list] = {}  # site: [sum over rows of each group's log ratio, rows, scale]
    for model_trace, guide_trace in pairs:
        for name, gsite in guide_trace.nodes.items():
            if gsite["type"] != "sample" or gsite["is_observed"] or name not in model_trace.nodes:
                continue
            msite = model_trace.nodes[name]
            z = gsite["value"]
            q, p = (detach(gsite["fn"]) if detach_guide else gsite["fn"]), msite["fn"]
            log_q = scale_and_mask(q.log_prob(z), gsite["scale"], gsite["mask"]) if detach_guide else gsite["log_prob"]
            total = (log_q - msite["log_prob"]).sum() / num_particles  # scaled, as in the surrogate
            monte_carlo = total if monte_carlo is None else monte_carlo + total
            per_dim = (isinstance(q, torch.distributions.Independent) and isinstance(p, torch.distributions.Independent)
                       and q.reinterpreted_batch_ndims == 1 and p.reinterpreted_batch_ndims == 1)
            if per_dim:
                ratio = q.base_dist.log_prob(z) - p.base_dist.log_prob(z)  # (..., d)
                groups = ratio.reshape(-1, ratio.shape[-1])
            else:
                ratio = q.log_prob(z) - p.log_prob(z)
                groups = ratio.reshape(-1, 1)
            entry = groups_by_site.setdefault(name, [0.0, 0, torch.as_tensor(gsite["scale"]).mean()])
            entry[0] = entry[0] + groups.sum(0)
            entry[1] += groups.shape[0]
    penalty = None
    for sums, rows, scale in groups_by_site.values():
        # the mean over every particle and row, clamped; times the rows of one particle
        site_penalty = scale * (rows / num_particles) * torch.clamp(sums / rows, min=free_bits).sum()
        penalty = site_penalty if penalty is None else penalty + site_penalty
    if monte_carlo is None:
        return torch.zeros(())
    return kl_weight * (monte_carlo - penalty)
