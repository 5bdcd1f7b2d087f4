"""Hand-written PyTorch equivalents of ppmodels' VAE objectives and evaluation (the baselines).

Same networks (the `VAE` object's encoder and decoder), same bound, no Pyro.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

LOG_2PI = math.log(2 * math.pi)


def log_weights(vae, x: Tensor, K: int, detach_q: bool = False) -> tuple[Tensor, Tensor]:
    """(log w (K, B), z (K, B, d)) for the Bernoulli VAE, Monte-Carlo terms as Trace_ELBO."""
    loc, scale = vae.encoder(x)
    z = loc + scale * torch.randn((K,) + loc.shape, device=x.device, dtype=x.dtype)
    logits = vae.decoder(z)
    log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    log_pz = -0.5 * (z**2 + LOG_2PI).sum(-1)
    if detach_q:
        loc, scale = loc.detach(), scale.detach()
    log_qz = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)
    return log_px + log_pz - log_qz, z


def loss(vae, x: Tensor, objective: str, K: int = 1) -> Tensor:
    """Minus the bound, summed over the batch, with the objective's gradient estimator."""
    if objective == "elbo":
        return -log_weights(vae, x, K)[0].mean(0).sum()
    if objective == "iwae":
        lw = log_weights(vae, x, K)[0]
        return -(torch.logsumexp(lw, 0) - math.log(K)).sum()
    if objective == "dreg":
        lw, z = log_weights(vae, x, K, detach_q=True)
        w = torch.softmax(lw.detach(), 0)
        if torch.is_grad_enabled():
            z.register_hook(lambda g: g * w[..., None])
        return -(w * lw).sum()
    raise ValueError(objective)


def step(vae, optimizer, x: Tensor, objective: str, K: int = 1) -> Tensor:
    optimizer.zero_grad(set_to_none=True)
    value = loss(vae, x, objective, K)
    value.backward()
    optimizer.step()
    return value.detach()


@torch.no_grad()
def log_likelihood(vae, x: Tensor, K: int, batch_size: int, particle_chunk: int) -> Tensor:
    """Batched IS estimate of log p(x) per datapoint, chunked over data and particles."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        acc = None
        for k0 in range(0, K, particle_chunk):
            lse = torch.logsumexp(log_weights(vae, xb, min(particle_chunk, K - k0))[0], 0)
            acc = lse if acc is None else torch.logaddexp(acc, lse)
        out.append(acc - math.log(K))
    return torch.cat(out)


@torch.no_grad()
def log_likelihood_per_datapoint(vae, x: Tensor, K: int, particle_chunk: int) -> Tensor:
    """What pythae does: one datapoint at a time (particles batched)."""
    return torch.cat([log_likelihood(vae, x[i : i + 1], K, 1, particle_chunk) for i in range(x.shape[0])])
