r"""Distributions the zoo's likelihoods need that Pyro's do not provide in the shape wanted.

:class:`BernoulliLogits` is ``dist.Bernoulli(logits=ℓ).to_event(1)`` with a cheaper
log-probability: the pixels are summed before the sign is flipped, so one elementwise pass
over the (particles × batch × pixels) tensor is saved in the forward and in the backward
pass. For a VAE with K particles that tensor is the largest in the step.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor
from torch.nn import functional as F

__all__ = ["BernoulliLogits", "VectorQuantized", "UniformCodewords", "nearest_codeword"]


class BernoulliLogits(TorchDistribution):
    r"""Independent Bernoulli variables over the last dimension, as one event:

    .. math:: \log p(x \mid \ell) = \sum_i x_i \ell_i - \log(1 + e^{\ell_i})
              = -\sum_i \mathrm{BCE}(\ell_i, x_i)

    ``logits`` has shape ``batch_shape + (D,)``; a value broadcasts against it.
    ``validate_args`` defaults to False: a per-call support check is a host synchronisation,
    and ``fit`` checks the data against the support once, before training.
    """

    arg_constraints = {"logits": constraints.real_vector}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits: Tensor, validate_args: bool = False) -> None:
        if logits.dim() < 1:
            raise ValueError(f"BernoulliLogits: logits need an event dimension, got shape {tuple(logits.shape)}")
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: "BernoulliLogits | None" = None) -> "BernoulliLogits":
        new = self._get_checked_instance(BernoulliLogits, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(BernoulliLogits, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return p * (1 - p)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(self._extended_shape(sample_shape)))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.logits
        if value.shape != logits.shape:
            shape = torch.broadcast_shapes(value.shape, logits.shape)
            logits, value = logits.expand(shape), value.expand(shape)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)

    def entropy(self) -> Tensor:
        p = self.probs
        return F.binary_cross_entropy_with_logits(self.logits, p, reduction="none").sum(-1)


def nearest_codeword(z_e: Tensor, codebook: Tensor) -> Tensor:
    r"""The index of the codeword nearest to each vector of ``z_e`` (..., D) in ``codebook``
    (K, D), :math:`\arg\min_k \|z_e - e_k\|^2` (the first on ties): shape (...)."""
    flat = z_e.reshape(-1, z_e.shape[-1])
    d2 = (flat * flat).sum(-1, keepdim=True) - 2 * flat @ codebook.T + (codebook * codebook).sum(-1)
    return d2.argmin(-1).reshape(z_e.shape[:-1])


class VectorQuantized(TorchDistribution):
    r"""The deterministic posterior of a VQ-VAE (van den Oord et al. 2017): a point mass at the
    codewords nearest to the encoder's outputs ``z_e`` (``batch_shape + (P, D)``), i.e. the
    one-hot :math:`q(k_p \mid x) = 1[k_p = \arg\min_k \|z_{e,p} - e_k\|]` per position p.

    ``rsample`` returns :math:`z_q = z_e + \mathrm{sg}[e_k - z_e]`: the codewords' value, and
    the straight-through gradient (the decoder-input gradient copied to :math:`z_e`; none to the
    codebook). ``log_prob`` is 0 (a point mass, against counting measure on the codebook).
    :meth:`codebook_loss` and :meth:`commitment_loss` are the two auxiliary terms, per batch element.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, z_e: Tensor, codebook: Tensor, index: Tensor | None = None, validate_args: bool = False) -> None:
        if z_e.dim() < 2 or codebook.dim() != 2 or z_e.shape[-1] != codebook.shape[-1]:
            raise ValueError(f"VectorQuantized: z_e (..., P, D) and codebook (K, D), got {tuple(z_e.shape)}, "
                             f"{tuple(codebook.shape)}")
        self.z_e, self.codebook = z_e, codebook
        self.index = nearest_codeword(z_e.detach(), codebook.detach()) if index is None else index
        self.codeword = codebook[self.index]
        super().__init__(z_e.shape[:-2], z_e.shape[-2:], validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance=None) -> "VectorQuantized":
        batch_shape = torch.Size(batch_shape)
        return VectorQuantized(self.z_e.expand(batch_shape + self.event_shape), self.codebook,
                               self.index.expand(batch_shape + self.event_shape[:1]))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        z_q = self.z_e + (self.codeword - self.z_e).detach()
        return z_q.expand(self._extended_shape(sample_shape))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        return value.new_zeros(torch.broadcast_shapes(value.shape[:-2], self.batch_shape))

    def codebook_loss(self) -> Tensor:
        r""":math:`\sum_p \|\mathrm{sg}[z_{e,p}] - e_{k_p}\|^2`: moves the codewords only."""
        return ((self.z_e.detach() - self.codeword) ** 2).sum((-2, -1))

    def commitment_loss(self) -> Tensor:
        r""":math:`\sum_p \|z_{e,p} - \mathrm{sg}[e_{k_p}]\|^2`: moves the encoder only."""
        return ((self.z_e - self.codeword.detach()) ** 2).sum((-2, -1))


class UniformCodewords(TorchDistribution):
    r"""The VQ-VAE's prior: each of P positions takes one of the K codewords of ``codebook``
    (K, D) uniformly, :math:`\log p(z) = -P \log K` (against counting measure on the codebook;
    a value is read as the codewords nearest to it, so every value gets that density)."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)

    def __init__(self, codebook: Tensor, positions: int, batch_shape: torch.Size = torch.Size()) -> None:
        self.codebook, self.positions = codebook, positions
        super().__init__(torch.Size(batch_shape), torch.Size((positions, codebook.shape[-1])), validate_args=False)

    def expand(self, batch_shape: torch.Size, _instance=None) -> "UniformCodewords":
        return UniformCodewords(self.codebook, self.positions, batch_shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape + (self.positions,)
            index = torch.randint(self.codebook.shape[0], shape, device=self.codebook.device)
            return self.codebook[index]

    def log_prob(self, value: Tensor) -> Tensor:
        return value.new_full(torch.broadcast_shapes(value.shape[:-2], self.batch_shape),
                              -self.positions * math.log(self.codebook.shape[0]))
