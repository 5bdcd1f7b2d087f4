r"""The sigmoid belief net of the ARM and DisARM experiments (Yin & Zhou 2019; Dong, Mnih & Tucker
2020; after Neal 1992): one layer of L binary latents (200 there) over binary images.

.. math:: z \sim \prod_{l=1}^{L} \mathrm{Bern}(\sigma(a_l)),\qquad
          x \mid z \sim \prod_{d=1}^{D} \mathrm{Bern}(\sigma(f_\theta(z)_d)),\qquad
          q_\phi(z \mid x) = \prod_{l=1}^{L} \mathrm{Bern}(\sigma(g_\phi(x)_l))

with learned prior logits :math:`a`. ``layers="linear"``: :math:`f_\theta` and :math:`g_\phi`
are affine maps (D → L, L → D); ``layers="nonlinear"``: each has two hidden layers of 200 units
with LeakyReLU(0.3) between (the papers' nonlinear net). The guide's latents are one stochastic
layer whose logits depend on x alone, and carry no ``infer={"enumerate": ...}``: they are left
to the score-function and antithetic estimators (``disarm``, the default; ``arm``, ``rloo``,
``reinforce``, ``vimco``) and to the relaxed ones (``gumbel``, ``st-gumbel``).

On a fresh fit (:meth:`init_from_data`) the decoder's output bias starts at the logit of each
pixel's mean intensity, as in the DisARM code. For L ≤ 12 the marginal likelihood and the ELBO
are sums over the :math:`2^L` states (:meth:`exact_log_marginal`, :meth:`exact_elbo`): the
exact reference on small nets.
"""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..distributions import BernoulliLogits
from ..nets import MLP
from ..utils import PPModelsError, check_rows

__all__ = ["SigmoidBeliefNet", "LAYERS"]

#: the networks on each side: affine, or two hidden layers of 200 units
LAYERS = {"linear": (), "nonlinear": (200, 200)}
#: the nonlinear net's activation (LeakyReLU with slope 0.3)
ACTIVATION = "leaky_relu_0.3"
#: the most latents whose 2^L states the exact methods sum over
MAX_EXACT = 12


class SigmoidBeliefNet(nn.Module):
    """A one-layer sigmoid belief net with L Bernoulli latents and a Bernoulli guide."""

    default_objective = "disarm"  # what fit uses when called without an objective

    static_structure = True  # the same sites and shapes every call: fit may trace it

    def __init__(self, latents: int = 200, layers: str = "linear", x_dim: int = 784) -> None:
        super().__init__()
        if layers not in LAYERS:
            raise PPModelsError(f"SigmoidBeliefNet: layers must be one of {sorted(LAYERS)}, got {layers!r}")
        for name, value in (("latents", latents), ("x_dim", x_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PPModelsError(f"SigmoidBeliefNet: {name} must be an integer >= 1, got {value!r}")
        self.latents, self.layers, self.x_dim = latents, layers, x_dim
        self.config = dict(latents=latents, layers=layers, x_dim=x_dim)
        hidden = LAYERS[layers]
        self.prior_logits = nn.Parameter(torch.zeros(latents))
        self.decoder = MLP(latents, hidden, x_dim, ACTIVATION)
        self.encoder = MLP(x_dim, hidden, latents, ACTIVATION)

    def model(self, x: Tensor) -> None:
        pyro.module("sbn", self)
        check_rows(x, self.x_dim, "SigmoidBeliefNet.model", "x")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(logits=self.prior_logits).to_event(1))
            pyro.sample("x", BernoulliLogits(self.decoder(z)), obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("sbn", self)
        check_rows(x, self.x_dim, "SigmoidBeliefNet.guide", "x")
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x)).to_event(1))

    @torch.no_grad()
    def init_from_data(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """The decoder's output bias at the logit of the mean pixel of ``x`` (uint8 pixels or
        intensities in [0, 1]), clipped to [1e-3, 1 - 1e-3]; called by ``fit`` on a fresh model."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        mean = x.mean(0).clamp(1e-3, 1 - 1e-3).to(self.prior_logits)
        self.decoder[-1].bias.copy_(torch.logit(mean))

    # -- exact references (small L) ------------------------------------------------------------
    def _states(self, device: torch.device) -> Tensor:
        if self.latents > MAX_EXACT:
            raise PPModelsError(f"SigmoidBeliefNet: exact sums need latents <= {MAX_EXACT} (2^latents states), "
                                f"this net has {self.latents}; use ppmodels.evaluate.log_likelihood")
        return torch.tensor(list(itertools.product([0.0, 1.0], repeat=self.latents)), device=device)

    def _log_joint(self, x: Tensor, states: Tensor) -> Tensor:
        """log p(x, z) for every row of ``x`` and every state: shape (B, 2^L)."""
        log_prior = dist.Bernoulli(logits=self.prior_logits).log_prob(states).sum(-1)  # (S,)
        log_lik = BernoulliLogits(self.decoder(states)).log_prob(x[:, None, :])  # (B, S)
        return log_prior + log_lik

    def exact_log_marginal(self, x: Tensor) -> Tensor:
        """log p(x) per row of ``x``, by summing over the 2^L latent states."""
        states = self._states(x.device)
        return self._log_joint(x, states).logsumexp(-1)

    def exact_elbo(self, x: Tensor) -> Tensor:
        """The ELBO per row of ``x``, an expectation over the 2^L latent states under q."""
        states = self._states(x.device)
        log_q = dist.Bernoulli(logits=self.encoder(x)[:, None, :]).log_prob(states).sum(-1)  # (B, S)
        return (log_q.exp() * (self._log_joint(x, states) - log_q)).sum(-1)

    # -- conveniences -------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Decoder means of ``n`` prior draws, shape (n, x_dim)."""
        probs = torch.sigmoid(self.prior_logits).expand(n, self.latents)
        return torch.sigmoid(self.decoder(torch.bernoulli(probs)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at the guide's mode (each latent on where its probability exceeds 1/2)."""
        return torch.sigmoid(self.decoder((self.encoder(x) > 0).to(x.dtype)))
