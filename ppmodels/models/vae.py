r"""The variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014).

Model:  :math:`z \sim \mathcal N(0, I_d)`, :math:`x \mid z \sim \mathrm{Bernoulli}(\sigma(f_\theta(z)))`
(or :math:`\mathcal N(f_\theta(z), \sigma_\theta(z)^2)` for real-valued data), each datapoint
in the ``"data"`` plate. Guide: :math:`q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \mathrm{diag}\,\sigma_\phi(x)^2)`.

With L > 1 stochastic layers (Burda et al. 2016's two-layer model, ``preset("burda2")``):
:math:`z_L \sim \mathcal N(0, I)`, :math:`z_l \mid z_{l+1} \sim \mathcal N(\mu_\theta(z_{l+1}),
\sigma_\theta(z_{l+1})^2)`, :math:`x \mid z_1` as above; the guide runs bottom-up,
:math:`q(z_1 \mid x)\,\prod_{l>1} q(z_l \mid z_{l-1})`. Sites ``z1 … zL`` (``z`` when L = 1).
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
    # Burda et al. (2016), two stochastic layers: 784-200-200-h1(100)-100-100-h2(50)
    "burda2": {"x_dim": 784, "z_dim": (100, 50), "hidden": ((200, 200), (100, 100)), "activation": "tanh",
               "scale": "exp"},
}

LIKELIHOODS = ("bernoulli", "gaussian")
GUIDES = ("diagonal", "iaf")


class VAE(nn.Module):
    """A VAE with an MLP encoder/decoder; ``model(x)`` and ``guide(x)`` are Pyro programs.

    ``z_dim`` and ``hidden`` per stochastic layer for L > 1 layers: ``z_dim=(100, 50)``,
    ``hidden=((200, 200), (100, 100))`` (layer l's networks map z_{l-1} to z_l and back)."""

    default_objective = "elbo"  # what fit uses when called without an objective

    static_structure = True  # the same sites and shapes every call: fit may trace it

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int | Sequence[int] = 50,
        hidden: Sequence[int] | Sequence[Sequence[int]] = (400,),
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
        layered = not isinstance(z_dim, int)
        if layered and not (isinstance(hidden, (tuple, list)) and all(isinstance(h, (tuple, list)) for h in hidden)):
            raise PPModelsError(f"VAE: with {len(tuple(z_dim))} stochastic layers (z_dim {tuple(z_dim)}), hidden must "
                                f"give one list of sizes per layer, e.g. ((200, 200), (100, 100)); got {hidden!r}")
        if not layered and not all(isinstance(h, int) and not isinstance(h, bool) for h in hidden):
            raise PPModelsError(f"VAE: z_dim {z_dim} is one stochastic layer, so hidden must be one list of sizes, "
                                f"got {hidden!r} (the burda2 preset takes neither --z-dim nor --hidden alone)")
        z_dims = (z_dim,) if not layered else tuple(z_dim)
        hiddens = (tuple(hidden),) if not layered else tuple(tuple(h) for h in hidden)
        if len(z_dims) != len(hiddens) or not z_dims or not all(isinstance(d, int) for d in z_dims):
            raise PPModelsError(f"VAE: one hidden-size list per stochastic layer; got z_dim {z_dim!r}, hidden {hidden!r}")
        if x_dim < 1 or min(z_dims) < 1:
            raise PPModelsError(f"VAE: x_dim and z_dim must be >= 1, got {x_dim}, {z_dim}")
        if guide == "iaf" and len(z_dims) > 1:
            raise PPModelsError("VAE: the iaf guide is for one stochastic layer; use guide='diagonal'")
        self.x_dim, self.z_dim, self.z_dims, self.likelihood = x_dim, z_dims[0], z_dims, likelihood
        self.config = dict(x_dim=x_dim, z_dim=z_dim if isinstance(z_dim, int) else z_dims,
                           hidden=hiddens[0] if isinstance(z_dim, int) else hiddens, activation=activation,
                           likelihood=likelihood, scale=scale)
        if guide != "diagonal":
            self.config.update(guide=guide, flow_layers=flow_layers)
        self.guide_kind = guide
        self.sites = ("z",) if len(z_dims) == 1 else tuple(f"z{l + 1}" for l in range(len(z_dims)))
        self.encoder = GaussianHead(x_dim, hiddens[0], z_dims[0], activation, scale=scale)
        self.flows = nn.ModuleList(_iaf(z_dims[0], hiddens[0][-1] if hiddens[0] else x_dim, flow_layers)
                                   if guide == "iaf" else [])
        out = x_dim if likelihood == "bernoulli" else 2 * x_dim
        self.decoder = MLP(z_dims[0], tuple(reversed(hiddens[0])), out, activation)
        # layers 2..L: q(z_l | z_{l-1}) up, p(z_{l-1} | z_l) down
        self.up = nn.ModuleList(GaussianHead(z_dims[l - 1], hiddens[l], z_dims[l], activation, scale=scale)
                                for l in range(1, len(z_dims)))
        self.down = nn.ModuleList(GaussianHead(z_dims[l], tuple(reversed(hiddens[l])), z_dims[l - 1], activation,
                                               scale=scale) for l in range(1, len(z_dims)))

    def burda_init(self, mean_pixel: Tensor | None = None) -> "VAE":
        """Burda et al.'s initialisation: Glorot-uniform weights (``torch.nn.init.xavier_uniform_``),
        zero biases, and (Bernoulli likelihood) the decoder's output bias at the logit of the
        training set's mean pixel ``mean_pixel`` (shape (x_dim,), clamped to [1e-3, 1 - 1e-3])."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear) and not getattr(module, "_ppmodels_skip_init", False):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
            if mean_pixel is not None and self.likelihood == "bernoulli":
                self.decoder[-1].bias.copy_(torch.logit(mean_pixel.to(self.decoder[-1].bias).clamp(1e-3, 1 - 1e-3)))
        return self

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
            top = self.z_dims[-1]
            z = pyro.sample(self.sites[-1], dist.Normal(x.new_zeros(top), x.new_ones(top)).to_event(1))
            for l in reversed(range(len(self.down))):  # z_{l+1} given z_{l+2}, top-down
                z = pyro.sample(self.sites[l], dist.Normal(*self.down[l](z)).to_event(1))
            pyro.sample("x", self.likelihood_dist(z), obs=x)

    def posterior(self, x: Tensor) -> dist.TorchDistribution:
        r""":math:`q_\phi(z_1 \mid x)`: the diagonal Gaussian, or (``guide="iaf"``) that Gaussian pushed
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
        check_rows(x, self.x_dim, "VAE.guide", "x")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(self.sites[0], self.posterior(x))
            for l, up in enumerate(self.up):
                z = pyro.sample(self.sites[l + 1], dist.Normal(*up(z)).to_event(1))

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
        z = torch.randn(n, self.z_dims[-1], device=device)
        for down in reversed(self.down):
            loc, scale = down(z)
            z = loc + scale * torch.randn_like(loc)
        return self._mean(z)

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
