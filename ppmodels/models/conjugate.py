r"""Models with closed forms: the exact references objectives are tested against.

``LinearGaussian`` (factor analysis / probabilistic PCA)

.. math:: z \sim \mathcal N(0, I_d),\quad x \mid z \sim \mathcal N(Wz + b, \Psi),\quad
          q(z \mid x) = \mathcal N(Ax + c, \mathrm{diag}(s^2))

with :math:`p(x) = \mathcal N(b, WW^\top + \Psi)`, posterior covariance
:math:`(I + W^\top\Psi^{-1}W)^{-1}` and mean :math:`\Sigma W^\top\Psi^{-1}(x - b)`, and the
ELBO in closed form for any guide parameters (gradients by autograd through it).

``CategoricalGaussian`` (a mixture with an amortized categorical guide)

.. math:: z \sim \mathrm{Cat}(\pi),\quad x \mid z \sim \mathcal N(\mu_z, \sigma^2 I),\quad
          q(z \mid x) = \mathrm{Cat}(\mathrm{softmax}(Ax + c))

where every K-particle bound's expectation is a finite sum over the :math:`C^K` particle
tuples: :meth:`CategoricalGaussian.exact_bound` is the exact reference for ``iwae``,
``renyi``, ``vimco``, ``reinforce`` and ``enum`` gradients on a discrete latent.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..utils import PPModelsError

__all__ = ["LinearGaussian", "CategoricalGaussian", "BernoulliBelief", "gaussian_toy"]

LOG_2PI = math.log(2 * math.pi)


class LinearGaussian(nn.Module):
    """Linear-Gaussian latent-variable model with an amortized linear-Gaussian guide."""

    default_objective = "elbo"

    static_structure = True

    def __init__(self, x_dim: int = 5, z_dim: int = 2, *, seed: int = 0, noise: float = 0.5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x_dim, self.z_dim = x_dim, z_dim
        self.W = nn.Parameter(torch.randn(x_dim, z_dim, generator=g) / math.sqrt(z_dim))
        self.b = nn.Parameter(torch.randn(x_dim, generator=g) * 0.5)
        self.log_psi = nn.Parameter(torch.full((x_dim,), 2 * math.log(noise)))  # log variances
        self.A = nn.Parameter(torch.randn(z_dim, x_dim, generator=g) * 0.1)
        self.c = nn.Parameter(torch.randn(z_dim, generator=g) * 0.1)
        self.log_s = nn.Parameter(torch.full((z_dim,), -0.5))

    # -- parameter groups: "model" (decoder) and "guide" (encoder) ---------------------------
    def model_parameters(self) -> list[Tensor]:
        return [self.W, self.b, self.log_psi]

    def guide_parameters(self) -> list[Tensor]:
        return [self.A, self.c, self.log_s]

    # -- the Pyro programs -------------------------------------------------------------------
    def model(self, x: Tensor) -> None:
        pyro.module("linear_gaussian", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            loc = z @ self.W.T + self.b
            pyro.sample("x", dist.Normal(loc, (0.5 * self.log_psi).exp()).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("linear_gaussian", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ self.A.T + self.c, self.log_s.exp()).to_event(1))

    # -- closed forms ------------------------------------------------------------------------
    def marginal(self) -> dist.MultivariateNormal:
        """:math:`p(x) = \\mathcal N(b, WW^\\top + \\Psi)`."""
        cov = self.W @ self.W.T + torch.diag(self.log_psi.exp())
        return dist.MultivariateNormal(self.b, covariance_matrix=cov)

    def log_marginal(self, x: Tensor) -> Tensor:
        """Exact :math:`\\log p(x)` per datapoint, shape (N,)."""
        return self.marginal().log_prob(x)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Exact posterior ``(mean (N, d), covariance (d, d))``."""
        psi_inv = (-self.log_psi).exp()
        precision = torch.eye(self.z_dim, dtype=x.dtype, device=x.device) + (self.W.T * psi_inv) @ self.W
        cov = torch.linalg.inv(precision)
        gain = cov @ self.W.T * psi_inv  # (d, D)
        return (x - self.b) @ gain.T, cov

    def elbo(self, x: Tensor, kl_weight: float = 1.0) -> Tensor:
        r"""Closed-form ELBO per datapoint for the current guide parameters, shape (N,); with
        ``kl_weight`` β, :math:`\mathbb E_q[\log p(x|z)] - \beta\,\mathrm{KL}(q \| p)`.

        :math:`\mathbb E_q[\log p(x|z)] + \mathbb E_q[\log p(z)] + \mathbb H[q]` with
        :math:`m = Ax + c`, :math:`S = \mathrm{diag}(s^2)`.
        """
        m = x @ self.A.T + self.c
        s2 = (2 * self.log_s).exp()
        psi_inv = (-self.log_psi).exp()
        r = x - m @ self.W.T - self.b
        e_lik = -0.5 * (self.x_dim * LOG_2PI + self.log_psi.sum() + (r**2 * psi_inv).sum(-1)
                        + ((self.W**2) * psi_inv[:, None]).sum(0) @ s2)
        e_prior = -0.5 * (self.z_dim * LOG_2PI + (m**2).sum(-1) + s2.sum())
        entropy = 0.5 * self.z_dim * (1 + LOG_2PI) + self.log_s.sum()
        return e_lik + kl_weight * (e_prior + entropy)

    def exact_objective(self, objective, x: Tensor) -> Tensor | None:
        """The exact expected bound ``objective`` estimates on ``x``, where it has a closed form
        here: the ELBO (every ELBO estimator, and every bound at K = 1); None otherwise."""
        if objective.bound[0] == "elbo" or getattr(objective, "num_particles", 1) == 1:
            return self.elbo(x).sum()
        return None

    @torch.no_grad()
    def set_guide_to_posterior(self, tol: float = 1e-6) -> None:
        """Set (A, c, s) to the exact posterior; it must be diagonal (see :meth:`with_diagonal_posterior`)."""
        psi_inv = (-self.log_psi).exp()
        precision = torch.eye(self.z_dim, device=self.W.device) + (self.W.T * psi_inv) @ self.W
        off = precision - torch.diag(torch.diagonal(precision))
        if off.abs().max() > tol:
            raise PPModelsError(
                "LinearGaussian.set_guide_to_posterior: the exact posterior is not diagonal, so the "
                "diagonal guide cannot equal it; build the model with LinearGaussian.with_diagonal_posterior"
            )
        cov = torch.linalg.inv(precision)
        gain = cov @ self.W.T * psi_inv
        self.A.copy_(gain)
        self.c.copy_(-gain @ self.b)
        self.log_s.copy_(0.5 * torch.log(torch.diagonal(cov)))

    @classmethod
    def with_diagonal_posterior(cls, x_dim: int = 5, z_dim: int = 2, *, seed: int = 0, noise: float = 0.5) -> "LinearGaussian":
        """Orthogonal columns of W and isotropic Ψ: the exact posterior is diagonal."""
        model = cls(x_dim, z_dim, seed=seed, noise=noise)
        g = torch.Generator().manual_seed(seed + 1)
        q, _ = torch.linalg.qr(torch.randn(x_dim, z_dim, generator=g))
        with torch.no_grad():
            model.W.copy_(q * torch.linspace(1.0, 2.0, z_dim))
            model.log_psi.fill_(2 * math.log(noise))
        return model

    @torch.no_grad()
    def sample_data(self, n: int, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=g).to(self.W.device)
        eps = torch.randn(n, self.x_dim, generator=g).to(self.W.device)
        return z @ self.W.T + self.b + eps * (0.5 * self.log_psi).exp()


class CategoricalGaussian(nn.Module):
    """Mixture of C isotropic Gaussians with an amortized categorical guide (discrete latent)."""

    default_objective = "enum"

    def __init__(self, num_classes: int = 3, x_dim: int = 2, *, sigma: float = 1.0, seed: int = 0,
                 subsample_size: int | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_classes, self.x_dim, self.sigma = num_classes, x_dim, sigma
        self.subsample_size = subsample_size  # the data plate draws this many rows a call (scale N/B)
        self.prior_logits = nn.Parameter(torch.randn(num_classes, generator=g) * 0.3)
        self.locs = nn.Parameter(torch.randn(num_classes, x_dim, generator=g) * 2.0)
        self.A = nn.Parameter(torch.randn(num_classes, x_dim, generator=g) * 0.3)
        self.c = nn.Parameter(torch.randn(num_classes, generator=g) * 0.3)

    def model_parameters(self) -> list[Tensor]:
        return [self.prior_logits, self.locs]

    def guide_parameters(self) -> list[Tensor]:
        return [self.A, self.c]

    def model(self, x: Tensor) -> None:
        pyro.module("categorical_gaussian", self)
        with pyro.plate("data", x.shape[0], subsample_size=self.subsample_size) as idx:
            z = pyro.sample("z", dist.Categorical(logits=self.prior_logits))
            pyro.sample("x", dist.Normal(self.locs[z], self.sigma).to_event(1), obs=x[idx])

    def guide(self, x: Tensor) -> None:
        pyro.module("categorical_gaussian", self)
        with pyro.plate("data", x.shape[0], subsample_size=self.subsample_size) as idx:
            pyro.sample("z", dist.Categorical(logits=x[idx] @ self.A.T + self.c))

    # -- closed forms ------------------------------------------------------------------------
    def log_joint_table(self, x: Tensor) -> Tensor:
        """:math:`\\log p(x, z=c)` for every class, shape (C, N)."""
        prior = torch.log_softmax(self.prior_logits, -1)
        lik = dist.Normal(self.locs[:, None, :], self.sigma).log_prob(x[None]).sum(-1)  # (C, N)
        return prior[:, None] + lik

    def guide_log_table(self, x: Tensor) -> Tensor:
        """:math:`\\log q(z=c \\mid x)`, shape (C, N)."""
        return torch.log_softmax(x @ self.A.T + self.c, -1).T

    def log_marginal(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self.log_joint_table(x), 0)

    def exact_bound(self, x: Tensor, num_particles: int, f: Callable[[Tensor], Tensor]) -> Tensor:
        r""":math:`\mathbb E_{z_{1:K} \sim q}[f(\log w_{1:K})]` per datapoint, exactly, by
        summing over all :math:`C^K` particle tuples; ``f`` maps (K, T, N) log weights to (T, N)."""
        C, K = self.num_classes, num_particles
        if C**K > 200_000:
            raise PPModelsError(f"exact_bound: C^K = {C**K} tuples is too many")
        log_q = self.guide_log_table(x)  # (C, N)
        log_w = self.log_joint_table(x) - log_q  # (C, N)
        tuples = torch.tensor(list(itertools.product(range(C), repeat=K)), device=x.device).T  # (K, T)
        weights = log_q[tuples].sum(0).exp()  # (T, N)
        return (weights * f(log_w[tuples])).sum(0)

    def exact_elbo(self, x: Tensor) -> Tensor:
        return self.exact_bound(x, 1, lambda lw: lw[0])

    def exact_objective(self, objective, x: Tensor) -> Tensor | None:
        """The exact expected bound of ``objective`` (by its ``bound``) on all of ``x``
        (C^K ≤ 200,000): the ELBO, or the per-datapoint K-particle Rényi bound (IWAE: α = 0).
        Pyro's ``RenyiELBO`` (bound ``"pyro-renyi"``) is held to the per-datapoint Rényi bound,
        the bound a user means: its whole-batch form with the subsampling scale inside the log
        shows as bias against it."""
        kind, *rest = objective.bound
        if kind == "elbo":
            return self.exact_elbo(x).sum()
        alpha, K = rest
        if self.num_classes**K > 200_000:
            return None
        return self.exact_bound(x, K, lambda lw: (torch.logsumexp((1 - alpha) * lw, 0) - math.log(K)) / (1 - alpha)).sum()


def gaussian_toy(dim: int = 20, n: int = 1024, seed: int = 0, noise: float = 0.01) -> tuple[LinearGaussian, Tensor]:
    """Rainforth et al. (2018): :math:`z \sim \mathcal N(\mu, I)`, :math:`x|z \sim \mathcal N(z, I)`,
    :math:`q(z|x) = \mathcal N(Ax + b, \tfrac23 I)`, D = 20, N = 1024, as a LinearGaussian
    (W = I, Ψ = I, the prior mean carried by b; z is the offset from μ). Parameters are set to
    the optimum (μ = mean x, A = I/2, guide offset −μ/2) plus N(0, ``noise``²), the paper's
    evaluation point. Returns the model and its data."""
    g = torch.Generator().manual_seed(seed)
    model = LinearGaussian(dim, dim, seed=seed, noise=1.0)
    mu_true = torch.randn(dim, generator=g)
    with torch.no_grad():
        model.W.copy_(torch.eye(dim))
        model.b.copy_(mu_true)
        model.log_psi.zero_()
        model.log_s.fill_(0.5 * math.log(2 / 3))
        x = model.sample_data(n, seed=seed + 1)
        mu = x.mean(0)
        model.b.copy_(mu + noise * torch.randn(dim, generator=g))
        model.A.copy_(torch.eye(dim) / 2 + noise * torch.randn(dim, dim, generator=g))
        model.c.copy_(-mu / 2 + noise * torch.randn(dim, generator=g))
    return model, x


class BernoulliBelief(nn.Module):
    r"""A one-layer sigmoid belief net small enough to enumerate: the exact reference for the
    Bernoulli estimators (``arm``, ``disarm``, ``rloo``, ``reinforce``, the relaxed ones' bias).

    .. math:: z \sim \prod_i \mathrm{Bern}(\sigma(a_i)),\quad x \mid z \sim \mathcal N(Wz + b, \sigma^2 I),
              \quad q(z \mid x) = \prod_i \mathrm{Bern}(\sigma(Ax + c)_i)

    with ``z_dim`` ≤ 12 binary latents, whose ELBO is a sum over the :math:`2^{d}` states."""

    default_objective = "disarm"

    def __init__(self, z_dim: int = 8, x_dim: int = 4, *, seed: int = 0, noise: float = 0.5) -> None:
        super().__init__()
        if not 1 <= z_dim <= 12:
            raise PPModelsError(f"BernoulliBelief: z_dim must be in 1..12 (2^z_dim states are enumerated), got {z_dim}")
        g = torch.Generator().manual_seed(seed)
        self.z_dim, self.x_dim, self.noise = z_dim, x_dim, noise
        self.prior_logits = nn.Parameter(torch.randn(z_dim, generator=g) * 0.5)
        self.W = nn.Parameter(torch.randn(x_dim, z_dim, generator=g))
        self.b = nn.Parameter(torch.randn(x_dim, generator=g) * 0.3)
        self.A = nn.Parameter(torch.randn(z_dim, x_dim, generator=g) * 0.5)
        self.c = nn.Parameter(torch.randn(z_dim, generator=g) * 0.3)

    def model(self, x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(logits=self.prior_logits).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.noise).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=x @ self.A.T + self.c).to_event(1))

    def sample_data(self, n: int, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            z = (torch.rand(n, self.z_dim, generator=g) < torch.sigmoid(self.prior_logits)).float()
            return z @ self.W.T + self.b + self.noise * torch.randn(n, self.x_dim, generator=g)

    def exact_elbo(self, x: Tensor) -> Tensor:
        """The ELBO per datapoint, by enumerating the 2^z_dim states of z."""
        states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=self.z_dim)), device=x.device)
        log_q = dist.Bernoulli(logits=(x @ self.A.T + self.c)[:, None, :]).log_prob(states).sum(-1)  # (B, S)
        log_prior = dist.Bernoulli(logits=self.prior_logits).log_prob(states).sum(-1)  # (S,)
        log_lik = dist.Normal(states @ self.W.T + self.b, self.noise).log_prob(x[:, None, :]).sum(-1)  # (B, S)
        return (log_q.exp() * (log_prior + log_lik - log_q)).sum(-1)

    def exact_objective(self, objective, x: Tensor) -> Tensor | None:
        """The ELBO, for every estimator of it (the relaxed ones are held to it: their bias shows)."""
        if objective.bound[0] == "elbo" or getattr(objective, "num_particles", 1) == 1:
            return self.exact_elbo(x).sum()
        return None
