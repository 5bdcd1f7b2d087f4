r"""Distributions the zoo's likelihoods need that Pyro's do not provide in the shape wanted.

:class:`BernoulliLogits` is ``dist.Bernoulli(logits=ℓ).to_event(1)`` with a cheaper
log-probability: the pixels are summed before the sign is flipped, so one elementwise pass
over the (particles × batch × pixels) tensor is saved in the forward and in the backward
pass. For a VAE with K particles that tensor is the largest in the step.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor
from torch.nn import functional as F

__all__ = ["BernoulliLogits"]


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
