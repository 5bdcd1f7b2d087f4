r"""The conditional VAE for MNIST quadrant completion (Sohn, Lee & Yan 2015).

An image is split into quadrants; ``quadrants`` of them are given (x) and the rest is the
target (y), in Pyro's order: 1 = bottom-left, 2 = the left half, 3 = all but the top-right.

Model (the prior network conditions on x; the generation network on x and z):

.. math:: z \mid x \sim \mathcal N(\mu_\theta(x), \sigma_\theta(x)^2),\qquad
          y \mid x, z \sim \mathrm{Bernoulli}(\sigma(g_\theta(x, z)))

Guide (the recognition network sees the whole image): :math:`q_\phi(z \mid x, y)`.
Its bound is on the conditional likelihood, so ``evaluate.log_likelihood`` gives
:math:`\log \hat p(y \mid x) = \log \frac1K \sum_k p(y, z_k \mid x) / q(z_k \mid x, y)`.

:class:`QuadrantBaseline` is the deterministic network :math:`\hat y(x)` with the Bernoulli
likelihood on the target pixels only; it is itself a model/guide pair (no latents), trained
by the same SVI loop, and its ``log_likelihood`` is exact. With ``baseline=...`` the CVAE's
prior and generation networks see the image completed by the (frozen) baseline's prediction,
as in Pyro's example.

Every batch is ``(image,)``: full 784-pixel images; the model splits them itself.
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..distributions import BernoulliLogits
from ..nets import MLP, GaussianHead
from ..utils import PPModelsError, check_rows

__all__ = ["ConditionalVAE", "QuadrantBaseline", "quadrant_mask"]

SIDE = 28
MISSING = -1.0  # value the networks see at pixels they are not given (as in Pyro's example)


def quadrant_mask(quadrants: int, side: int = SIDE) -> Tensor:
    """Boolean (side²,) mask of the given pixels: 1 = bottom-left, 2 = + top-left, 3 = + bottom-right."""
    if quadrants not in (1, 2, 3):
        raise PPModelsError(f"quadrants must be 1, 2 or 3, got {quadrants!r}")
    h = side // 2
    given = torch.zeros(side, side, dtype=torch.bool)
    given[h:, :h] = True
    if quadrants > 1:
        given[:h, :h] = True
    if quadrants > 2:
        given[h:, h:] = True
    return given.flatten()


class _Quadrants(nn.Module):
    """Splitting of a batch of images into the given pixels and the target pixels."""

    def __init__(self, quadrants: int) -> None:
        super().__init__()
        self.quadrants = quadrants
        given = quadrant_mask(quadrants)
        self.register_buffer("given", given, persistent=False)
        self.register_buffer("target", (~given).nonzero().squeeze(-1), persistent=False)
        self.x_dim, self.y_dim = SIDE * SIDE, int((~given).sum())

    def split(self, image: Tensor, where: str) -> tuple[Tensor, Tensor]:
        """``(inputs, y)``: the image with the target pixels set to -1, and the target pixels (B, y_dim)."""
        check_rows(image, self.x_dim, where, "image")
        return torch.where(self.given, image, MISSING), image[:, self.target]

    def completed(self, image: Tensor, probs: Tensor) -> Tensor:
        """``image`` with its given pixels kept and the target pixels set to ``probs`` (..., B, y_dim)."""
        return self.fill(torch.where(self.given, image, 0.0), probs)

    def fill(self, inputs: Tensor, y: Tensor) -> Tensor:
        """The image with the target pixels taken from ``y`` (B, y_dim)."""
        out = inputs.expand(*y.shape[:-1], self.x_dim).clone()
        out[..., self.target] = y
        return out


class QuadrantBaseline(_Quadrants):
    r"""Deterministic completion :math:`\hat y = \sigma(h_\theta(x))`; model
    :math:`y \sim \mathrm{Bernoulli}(\hat y)` on the target pixels, no latents."""

    static_structure = True
    default_objective = "elbo"

    def __init__(self, quadrants: int = 1, hidden: Sequence[int] = (500, 500), activation: str = "relu") -> None:
        super().__init__(quadrants)
        self.config = dict(quadrants=quadrants, hidden=tuple(hidden), activation=activation)
        self.net = MLP(self.x_dim, tuple(hidden), self.y_dim, activation)

    def logits(self, inputs: Tensor) -> Tensor:
        return self.net(inputs)

    def model(self, image: Tensor) -> None:
        pyro.module("baseline", self)
        inputs, y = self.split(image, "QuadrantBaseline.model")
        with pyro.plate("data", image.shape[0]):
            pyro.sample("y", BernoulliLogits(self.logits(inputs)), obs=y)

    def guide(self, image: Tensor) -> None:
        check_rows(image, self.x_dim, "QuadrantBaseline.guide", "image")

    @torch.no_grad()
    def complete(self, image: Tensor) -> Tensor:
        """The image with the target replaced by the predicted probabilities."""
        inputs, _ = self.split(image, "QuadrantBaseline.complete")
        return self.completed(image, torch.sigmoid(self.logits(inputs)))

    @torch.no_grad()
    def log_likelihood(self, image: Tensor) -> Tensor:
        """Exact :math:`\\log p(y \\mid x)` per image, shape (B,)."""
        inputs, y = self.split(image, "QuadrantBaseline.log_likelihood")
        return BernoulliLogits(self.logits(inputs)).log_prob(y)


class ConditionalVAE(_Quadrants):
    """CVAE: prior network p(z|x), recognition network q(z|x,y), generation network p(y|x,z)."""

    static_structure = True
    default_objective = "elbo"

    def __init__(
        self,
        quadrants: int = 1,
        z_dim: int = 200,
        hidden: Sequence[int] = (500, 500),
        activation: str = "relu",
        baseline: QuadrantBaseline | dict | None = None,
    ) -> None:
        super().__init__(quadrants)
        if isinstance(baseline, dict):  # from a checkpoint's configuration
            baseline = QuadrantBaseline(**baseline)
        if baseline is not None and baseline.quadrants != quadrants:
            raise PPModelsError(f"ConditionalVAE: the baseline completes {baseline.quadrants} quadrants, "
                                f"the CVAE {quadrants}")
        self.z_dim = z_dim
        self.config = dict(quadrants=quadrants, z_dim=z_dim, hidden=tuple(hidden), activation=activation,
                           baseline=None if baseline is None else baseline.config)
        self.baseline = baseline
        hidden = tuple(hidden)
        self.prior_net = GaussianHead(self.x_dim, hidden, z_dim, activation)
        self.recognition_net = GaussianHead(self.x_dim, hidden, z_dim, activation)
        self.generation_net = MLP(self.x_dim + z_dim, tuple(reversed(hidden)), self.y_dim, activation)

    def _context(self, inputs: Tensor) -> Tensor:
        """What the prior and generation networks see: the given pixels, and the frozen
        baseline's prediction (or -1) at the target pixels."""
        if self.baseline is None:
            return inputs
        y_hat = torch.sigmoid(self.baseline.logits(inputs)).detach()
        return self.fill(inputs, y_hat)

    def model(self, image: Tensor) -> None:
        pyro.module("cvae", self)
        inputs, y = self.split(image, "ConditionalVAE.model")
        context = self._context(inputs)
        with pyro.plate("data", image.shape[0]):
            loc, scale = self.prior_net(context)
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            logits = self.generation_net(torch.cat([context.expand(*z.shape[:-1], self.x_dim), z], -1))
            pyro.sample("y", BernoulliLogits(logits), obs=y)

    def guide(self, image: Tensor) -> None:
        pyro.module("cvae", self)
        check_rows(image, self.x_dim, "ConditionalVAE.guide", "image")
        with pyro.plate("data", image.shape[0]):
            loc, scale = self.recognition_net(image)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def complete(self, image: Tensor, num_samples: int = 1) -> Tensor:
        """``num_samples`` completions per image from the prior network, shape (num_samples, B, 784):
        the given pixels kept, the target drawn as the generation network's probabilities."""
        inputs, _ = self.split(image, "ConditionalVAE.complete")
        context = self._context(inputs)
        loc, scale = self.prior_net(context)
        z = loc + scale * torch.randn(num_samples, *loc.shape, device=loc.device, dtype=loc.dtype)
        probs = torch.sigmoid(self.generation_net(torch.cat([context.expand(num_samples, *context.shape), z], -1)))
        return self.completed(image, probs)

    def sample(self, n: int) -> Tensor:
        raise PPModelsError("ConditionalVAE: draws are conditional; use complete(image, num_samples)")

    @torch.no_grad()
    def reconstruct(self, image: Tensor) -> Tensor:
        return self.complete(image, 1)[0]
