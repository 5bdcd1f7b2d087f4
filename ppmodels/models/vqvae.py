r"""The vector-quantised VAE (van den Oord, Vinyals & Kavukcuoglu, *Neural Discrete
Representation Learning*, NeurIPS 2017), with MLP networks and P codes per image.

A codebook :math:`e_1 \dots e_K \in \mathbb R^D`. Model: each of P positions takes a codeword
uniformly, :math:`z_p \sim \mathrm{Unif}\{e_1, \dots, e_K\}`, and
:math:`x \mid z \sim \mathrm{Bernoulli}(\sigma(f_\theta(z_1, \dots, z_P)))`. Guide: the
encoder's outputs :math:`z_e = g_\phi(x) \in \mathbb R^{P \times D}` snapped to their nearest
codewords, a deterministic one-hot :math:`q(k_p \mid x)` (:class:`~ppmodels.distributions.VectorQuantized`,
drawn with the straight-through gradient). With a uniform prior the KL term is
:math:`P \log K`, so the ELBO is :math:`\log p(x \mid z_q) - P \log K`. Trained by ``vq``
(:mod:`ppmodels.objectives.vq`: the codebook and commitment losses besides the ELBO).

:class:`CodePrior` is the learned prior fitted afterwards: an autoregressive categorical over
the P codes (a MADE-style masked network; van den Oord et al. use a PixelCNN), itself a Pyro
program with the codes observed, trained by ``fit`` on the encoded training set.
"""

from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..distributions import BernoulliLogits, UniformCodewords, VectorQuantized
from ..nets import MLP
from ..nets import activation as activation_module
from ..utils import PPModelsError, check_rows

__all__ = ["VQVAE", "CodePrior"]


def _check_int(where: str, name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise PPModelsError(f"{where}: {name} must be an integer >= {least}, got {value!r}")


class VQVAE(nn.Module):
    """A VQ-VAE: P positions, a codebook of K vectors of dimension D, MLP encoder and decoder."""

    default_objective = "vq"  # what fit uses when called without an objective

    static_structure = True  # the same sites and shapes every call

    def __init__(self, codebook_size: int = 64, code_dim: int = 16, positions: int = 16, x_dim: int = 784,
                 hidden: Sequence[int] = (400,), activation: str = "relu") -> None:
        super().__init__()
        for name, value, least in (("codebook_size", codebook_size, 2), ("code_dim", code_dim, 1),
                                   ("positions", positions, 1), ("x_dim", x_dim, 1)):
            _check_int("VQVAE", name, value, least)
        self.K, self.D, self.P, self.x_dim = codebook_size, code_dim, positions, x_dim
        self.config = dict(codebook_size=codebook_size, code_dim=code_dim, positions=positions, x_dim=x_dim,
                           hidden=tuple(hidden), activation=activation)
        self.encoder = MLP(x_dim, tuple(hidden), positions * code_dim, activation)
        self.decoder = MLP(positions * code_dim, tuple(reversed(tuple(hidden))), x_dim, activation)
        self.codebook = nn.Parameter(torch.empty(codebook_size, code_dim).uniform_(-1 / codebook_size, 1 / codebook_size))

    def encode_continuous(self, x: Tensor) -> Tensor:
        """The encoder's outputs :math:`z_e`, shape (..., P, D)."""
        return self.encoder(x).reshape(*x.shape[:-1], self.P, self.D)

    def model(self, x: Tensor) -> None:
        pyro.module("vqvae", self)
        check_rows(x, self.x_dim, "VQVAE.model", "x")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", UniformCodewords(self.codebook, self.P))
            pyro.sample("x", BernoulliLogits(self.decoder(z.flatten(-2))), obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("vqvae", self)
        check_rows(x, self.x_dim, "VQVAE.guide", "x")
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", VectorQuantized(self.encode_continuous(x), self.codebook))

    @torch.no_grad()
    def init_from_data(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """On a fresh fit: the decoder's output bias at the logit of the mean pixel, and each
        codeword at the encoder's output for a random training image and position (so that every
        codeword starts where the encoder's outputs are)."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        self.decoder[-1].bias.copy_(torch.logit(x.mean(0).clamp(1e-3, 1 - 1e-3).to(self.codebook)))
        rows = torch.randint(len(x), (self.K,), generator=generator)
        cols = torch.randint(self.P, (self.K,), generator=generator)
        z_e = self.encode_continuous(x[rows].to(self.codebook))
        self.codebook.copy_(z_e[torch.arange(self.K), cols.to(z_e.device)])

    # -- conveniences -------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The codes (indices of the nearest codewords) of each row of ``x``: (B, P) long."""
        return VectorQuantized(self.encode_continuous(x), self.codebook).index

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Decoder means of codes (B, P): (B, x_dim)."""
        return torch.sigmoid(self.decoder(self.codebook[codes].flatten(-2)))

    @torch.no_grad()
    def reconstruction_log_lik(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x \mid z_q(x))` per row of ``x``."""
        return BernoulliLogits(self.decoder(self.codebook[self.encode(x)].flatten(-2))).log_prob(x)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Decoder means of ``n`` draws from the uniform prior, shape (n, x_dim)."""
        return self.decode(torch.randint(self.K, (n, self.P), device=self.codebook.device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at the guide's codes."""
        return self.decode(self.encode(x))


class _MaskedLinear(nn.Linear):
    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask)

    def forward(self, v: Tensor) -> Tensor:
        return nn.functional.linear(v, self.weight * self.mask, self.bias)


class CodePrior(nn.Module):
    r"""An autoregressive categorical over P codes of K values,
    :math:`p_\psi(k) = \prod_p \mathrm{Cat}(k_p \mid \mathrm{softmax}(h_\psi(k_{<p})_p))`, with
    :math:`h_\psi` a masked MLP over the one-hot codes (MADE, Germain et al. 2015): hidden unit
    j has degree :math:`m_j \in \{1, \dots, P-1\}` and sees positions :math:`\le m_j`; position p's
    logits see hidden units with :math:`m_j < p` (position 1: its bias alone). ``model(codes)``
    observes the codes (B, P); the guide is empty (no latents), so the ELBO is :math:`\log p_\psi(k)`."""

    default_objective = "elbo"

    def __init__(self, codebook_size: int = 64, positions: int = 16, hidden: Sequence[int] = (256,),
                 activation: str = "relu") -> None:
        super().__init__()
        _check_int("CodePrior", "codebook_size", codebook_size, 2)
        _check_int("CodePrior", "positions", positions, 1)
        self.K, self.P = codebook_size, positions
        self.config = dict(codebook_size=codebook_size, positions=positions, hidden=tuple(hidden), activation=activation)
        degree_in = torch.arange(1, positions + 1).repeat_interleave(codebook_size)  # (P*K,)
        layers: list[nn.Module] = []
        previous = degree_in
        for h in hidden:
            degrees = torch.arange(h) % max(positions - 1, 1) + 1
            layers += [_MaskedLinear((degrees[:, None] >= previous[None, :]).float()), activation_module(activation)]
            previous = degrees
        layers.append(_MaskedLinear((degree_in[:, None] > previous[None, :]).float()))
        self.net = nn.Sequential(*layers)

    def logits(self, codes: Tensor) -> Tensor:
        """Each position's logits given the codes before it: (B, P, K)."""
        onehot = nn.functional.one_hot(codes, self.K).to(self.net[-1].weight.dtype).flatten(-2)
        return self.net(onehot).reshape(*codes.shape, self.K)

    def _check(self, codes: Tensor, where: str) -> None:
        if codes.dtype != torch.long or codes.dim() != 2 or codes.shape[1] != self.P:
            raise PPModelsError(f"{where}: codes must be a long tensor of shape (B, {self.P}), got "
                                f"{codes.dtype} {tuple(codes.shape)}")

    def model(self, codes: Tensor) -> None:
        pyro.module("code_prior", self)
        self._check(codes, "CodePrior.model")
        with pyro.plate("data", codes.shape[0]):
            pyro.sample("codes", dist.Categorical(logits=self.logits(codes)).to_event(1), obs=codes)

    def guide(self, codes: Tensor) -> None:
        pass  # the codes are observed: no latents

    def log_prob(self, codes: Tensor) -> Tensor:
        r""":math:`\log p_\psi(k)` per row of ``codes``."""
        self._check(codes, "CodePrior.log_prob")
        return dist.Categorical(logits=self.logits(codes)).log_prob(codes).sum(-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` code sequences drawn ancestrally, position by position: (n, P) long."""
        device = self.net[-1].weight.device
        codes = torch.zeros(n, self.P, dtype=torch.long, device=device)
        for p in range(self.P):
            probs = torch.softmax(self.logits(codes)[:, p], -1)
            codes[:, p] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return codes

