r"""VAEs with discrete latents, for the estimators that need them (enumeration, score function, relaxations).

``latent="categorical"`` (Jang et al. 2017; Maddison et al. 2017): G groups of C-way
categoricals with a uniform prior,

.. math:: z_g \sim \mathrm{Cat}(1/C),\quad x \mid z \sim \mathrm{Bernoulli}(\sigma(f_\theta(\mathrm{onehot}(z)))),
          \quad q_\phi(z \mid x) = \prod_g \mathrm{Cat}(\mathrm{softmax}(h_\phi(x)_g))

trained by ``reinforce``, ``rloo``, ``vimco``, or the relaxed ``gumbel`` and ``st-gumbel``: with
G > 1 the site ``z`` holds the G one-hot codes, shape (G, C), so that a relaxation can stand in for
them (the C^G space is too large to enumerate; with G = 1 the single categorical is a plain
index-valued site that ``enum`` sums out exactly).

``latent="mixture"`` (a Gaussian-mixture prior VAE):

.. math:: c \sim \mathrm{Cat}(1/C),\quad z \mid c \sim \mathcal N(\mu_c, I),\quad
          x \mid z \sim \mathrm{Bernoulli}(\sigma(f_\theta(z))),\quad q(c \mid x)\, q(z \mid x, c)

where c can be enumerated exactly (``enum``) or trained by the score function (``elbo``,
``reinforce``, ``vimco``).
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..distributions import BernoulliLogits
from ..nets import MLP, GaussianHead
from ..utils import PPModelsError, check_rows

__all__ = ["DiscreteVAE"]

LATENTS = ("categorical", "mixture")


class DiscreteVAE(nn.Module):
    """A VAE with G × C categorical latents, or a categorical-mixture prior over a Gaussian z."""

    default_objective = "reinforce"  # what fit uses when called without an objective

    static_structure = True  # the same sites and shapes every call: fit may trace it

    def __init__(
        self,
        latent: str = "categorical",
        x_dim: int = 784,
        groups: int = 20,
        classes: int = 10,
        z_dim: int = 10,
        hidden: Sequence[int] = (512, 256),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if latent not in LATENTS:
            raise PPModelsError(f"DiscreteVAE: latent must be one of {LATENTS}, got {latent!r}")
        if classes < 2 or groups < 1:
            raise PPModelsError(f"DiscreteVAE: need classes >= 2 and groups >= 1, got {classes}, {groups}")
        self.latent, self.x_dim, self.groups, self.classes, self.z_dim = latent, x_dim, groups, classes, z_dim
        self.config = dict(latent=latent, x_dim=x_dim, groups=groups, classes=classes, z_dim=z_dim,
                           hidden=tuple(hidden), activation=activation)
        hidden = tuple(hidden)
        if latent == "categorical":
            self.encoder = MLP(x_dim, hidden, groups * classes, activation)
            self.decoder = MLP(groups * classes, tuple(reversed(hidden)), x_dim, activation)
        else:
            self.classifier = MLP(x_dim, hidden, classes, activation)
            self.encoder = GaussianHead(x_dim + classes, hidden, z_dim, activation)
            self.decoder = MLP(z_dim, tuple(reversed(hidden)), x_dim, activation)
            self.component_locs = nn.Parameter(torch.randn(classes, z_dim) * 2.0)

    def model(self, x: Tensor) -> None:
        pyro.module("dvae", self)
        check_rows(x, self.x_dim, "DiscreteVAE.model", "x")
        uniform = x.new_full((self.classes,), 1.0 / self.classes)
        with pyro.plate("data", x.shape[0]):
            if self.latent == "categorical" and self.groups == 1:  # enumerable
                z = pyro.sample("z", dist.Categorical(uniform))
                code = F.one_hot(z, self.classes).to(x.dtype)
            elif self.latent == "categorical":  # one-hot codes, so that relaxed estimators can draw them
                z = pyro.sample("z", dist.OneHotCategorical(probs=uniform).expand([self.groups]).to_event(1))
                code = z.flatten(-2)
            else:
                c = pyro.sample("c", dist.Categorical(uniform))
                code = pyro.sample("z", dist.Normal(self.component_locs[c], 1.0).to_event(1))
            logits = self.decoder(code)
            pyro.sample("x", BernoulliLogits(logits), obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("dvae", self)
        check_rows(x, self.x_dim, "DiscreteVAE.model", "x")
        with pyro.plate("data", x.shape[0]):
            if self.latent == "categorical" and self.groups == 1:  # enumerable
                pyro.sample("z", dist.Categorical(logits=self.encoder(x)))
            elif self.latent == "categorical":
                logits = self.encoder(x).reshape(x.shape[0], self.groups, self.classes)
                pyro.sample("z", dist.OneHotCategorical(logits=logits).to_event(1))
            else:
                c = pyro.sample("c", dist.Categorical(logits=self.classifier(x)))
                onehot = F.one_hot(c, self.classes).to(x.dtype)
                shape = torch.broadcast_shapes(onehot.shape[:-1], x.shape[:-1])
                inputs = torch.cat([x.expand(*shape, self.x_dim), onehot.expand(*shape, self.classes)], -1)
                loc, scale = self.encoder(inputs)
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- conveniences -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Decoder means of ``n`` prior draws, shape (n, x_dim)."""
        device = next(self.parameters()).device
        if self.latent == "categorical":
            z = torch.randint(self.classes, (n, self.groups), device=device)
            code = F.one_hot(z, self.classes).float().flatten(-2)
        else:
            c = torch.randint(self.classes, (n,), device=device)
            code = self.component_locs[c] + torch.randn(n, self.z_dim, device=device)
        return torch.sigmoid(self.decoder(code))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at the guide's mode."""
        if self.latent == "categorical":
            z = self.encoder(x).reshape(x.shape[0], self.groups, self.classes).argmax(-1)
            code = F.one_hot(z, self.classes).to(x.dtype).flatten(-2)
        else:
            c = self.classifier(x).argmax(-1)
            code = self.encoder(torch.cat([x, F.one_hot(c, self.classes).to(x.dtype)], -1))[0]
        return torch.sigmoid(self.decoder(code))
