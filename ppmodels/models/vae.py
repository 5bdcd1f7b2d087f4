r"""The variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014).

Model:  :math:`z \sim \mathcal N(0, I_d)`, :math:`x \mid z \sim \mathrm{Bernoulli}(\sigma(f_\theta(z)))`
(or :math:`\mathcal N(f_\theta(z), \sigma_\theta(z)^2)` for real-valued data), each datapoint
in the ``"data"`` plate. Guide: :math:`q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \mathrm{diag}\,\sigma_\phi(x)^2)`.
"""

from __future__ import annotations

from typing import Any, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..distributions import BernoulliLogits
from ..nets import MLP, GaussianHead
from ..utils import PPModelsError, check_rows

__all__ = ["VAE", "PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    # Pyro's VAE example: 784-400-50, softplus
    "pyro": {"x_dim": 784, "z_dim": 50, "hidden": (400,), "activation": "softplus", "scale": "exp"},
    # Burda et al. (2016), one stochastic layer: 784-200-200-50, tanh, exp on the std
    "burda": {"x_dim": 784, "z_dim": 50, "hidden": (200, 200), "activation": "tanh", "scale": "exp"},
}

LIKELIHOODS = ("bernoulli", "gaussian")
GUIDES = ("diagonal", "iaf")


class VAE(nn.Module):
    """A VAE with an MLP encoder/decoder; ``model(x)`` and ``guide(x)`` are Pyro programs."""

    default_objective = "elbo"  # what fit uses when called without an objective

    static_structure = True  # the same sites and shapes every call: fit may trace it

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 50,
        hidden: Sequence[int] = (400,),
        activation: str = "softplus",
        likelihood: str = "bernoulli",
        scale: str = "exp",
        guide: str = "diagonal",
        flow_layers: int = 2,
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise PPModelsError(f"VAE: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if guide not in GUIDES:
            raise PPModelsError(f"VAE: guide must be one of {GUIDES}, got {guide!r}")
        if not isinstance(flow_layers, int) or flow_layers < 1:
            raise PPModelsError(f"VAE: flow_layers must be an integer >= 1, got {flow_layers!r}")
        if x_dim < 1 or z_dim < 1:
            raise PPModelsError(f"VAE: x_dim and z_dim must be >= 1, got {x_dim}, {z_dim}")
        self.x_dim, self.z_dim, self.likelihood = x_dim, z_dim, likelihood
        self.config = dict(x_dim=x_dim, z_dim=z_dim, hidden=tuple(hidden), activation=activation,
                           likelihood=likelihood, scale=scale)
        if guide != "diagonal":
            self.config.update(guide=guide, flow_layers=flow_layers)
        self.guide_kind = guide
        self.encoder = GaussianHead(x_dim, hidden, z_dim, activation, scale=scale)
        self.flows = nn.ModuleList(_iaf(z_dim, hidden[-1] if hidden else x_dim, flow_layers) if guide == "iaf" else [])
        out = x_dim if likelihood == "bernoulli" else 2 * x_dim
        self.decoder = MLP(z_dim, tuple(reversed(hidden)), out, activation)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "VAE":
        """``VAE.preset("pyro")`` (784-400-50, softplus) or ``"burda"`` (784-200-200-50, tanh)."""
        if name not in PRESETS:
            raise PPModelsError(f"VAE: unknown preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def likelihood_dist(self, z: Tensor) -> dist.TorchDistribution:
        r""":math:`p_\theta(x \mid z)` with the pixels as one event."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return BernoulliLogits(out)
        loc, raw = out.chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)

    def model(self, x: Tensor) -> None:
        pyro.module("vae", self)
        check_rows(x, self.x_dim, "VAE.model", "x")
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(self.z_dim), x.new_ones(self.z_dim)).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood_dist(z), obs=x)

    def posterior(self, x: Tensor) -> dist.TorchDistribution:
        r""":math:`q_\phi(z \mid x)`: the diagonal Gaussian, or (``guide="iaf"``) that Gaussian pushed
        through ``flow_layers`` inverse autoregressive flows conditioned on the encoder's last hidden
        layer (Kingma et al. 2016; Pyro's ``ConditionalAffineAutoregressive``, ``stable=True``). Its
        ``log_prob`` counts the flows' log-determinants, so the ELBO and the IS log-likelihood do."""
        if not len(self.flows):
            loc, scale = self.encoder(x)
            return dist.Normal(loc, scale).to_event(1)
        loc, scale, context = self.encoder.with_features(x)
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1),
                                            [flow.condition(context) for flow in self.flows])

    def guide(self, x: Tensor) -> None:
        pyro.module("vae", self)
        check_rows(x, self.x_dim, "VAE.model", "x")
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x))

    # -- conveniences -----------------------------------------------------------------------
    def _mean(self, z: Tensor) -> Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out.chunk(2, -1)[0]

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The guide's ``(loc, scale)`` for each row of ``x``."""
        return self.encoder(x)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` draws from the prior pushed through the decoder: mean images (n, x_dim)."""
        device = next(self.parameters()).device
        return self._mean(torch.randn(n, self.z_dim, device=device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the guide's mean: (B, x_dim)."""
        return self._mean(self.encoder(x)[0])

    @torch.no_grad()
    def interpolate(self, x1: Tensor, x2: Tensor, steps: int = 8) -> Tensor:
        """Decoded means along the straight line between the encodings of ``x1`` and ``x2``:
        shape (steps, x_dim) for single images, (steps, B, x_dim) for batches."""
        z1, z2 = self.encoder(x1)[0], self.encoder(x2)[0]
        t = torch.linspace(0, 1, steps, device=z1.device).reshape(-1, *([1] * z1.dim()))
        return self._mean((1 - t) * z1 + t * z2)


def _iaf(z_dim: int, context_dim: int, layers: int) -> list[nn.Module]:
    """``layers`` conditional affine autoregressive transforms (hidden width 2·z_dim + context),
    each with its own permutation of the latent dimensions."""
    from pyro.distributions.transforms import ConditionalAffineAutoregressive
    from pyro.nn import ConditionalAutoRegressiveNN

    width = max(2 * z_dim, 32)
    return [ConditionalAffineAutoregressive(ConditionalAutoRegressiveNN(z_dim, context_dim, [width]), stable=True)
            for _ in range(layers)]
