r"""ARM and DisARM: antithetic gradients for Bernoulli latents (Yin & Zhou, *ARM: Augment-REINFORCE-Merge
Gradient for Stochastic Binary Networks*, ICLR 2019; Dong, Mnih & Tucker, *DisARM: An Antithetic
Gradient Estimator for Binary Latent Variables*, NeurIPS 2020).

Bound: the ELBO, estimated with K = 2M particles drawn as M antithetic pairs. For a factorized
Bernoulli guide :math:`q(b) = \prod_i \mathrm{Bern}(b_i; \sigma(\alpha_i))` and
:math:`u \sim U(0, 1)^d`, the pair is :math:`b = 1[u < \sigma(\alpha)]`,
:math:`\tilde b = 1[1 - u < \sigma(\alpha)]` (both distributed as q), and with
:math:`f = \log p(x, b) - \log q(b)` (the log weight of the pair's datapoint):

.. math:: \text{ARM:}\quad \hat\nabla_{\alpha_i} = \big(f(\tilde b) - f(b)\big)\big(u_i - \tfrac12\big)

.. math:: \text{DisARM:}\quad \hat\nabla_{\alpha_i} = \tfrac12\big(f(b) - f(\tilde b)\big)\,
          (-1)^{\tilde b_i}\, 1[b_i \ne \tilde b_i]\, \sigma(|\alpha_i|)

DisARM is ARM with :math:`u` integrated out given :math:`(b, \tilde b)`: unbiased, never more
variance. The chain rule takes :math:`\hat\nabla_\alpha` to the guide's parameters (the
surrogate is :math:`\sum_i \overline{\hat\nabla_{\alpha_i}}\,\alpha_i`); the model's parameters
and any reparameterized guide site get the pathwise gradient of the K-particle ELBO; the
direct dependence of :math:`f` on the guide's parameters has zero mean and is dropped. The
guide's Bernoulli sites must form one stochastic layer: their logits depend on the data and the
parameters only, not on another latent (as in the DisARM experiments' linear and nonlinear
sigmoid belief nets' single-layer case). Vectorized over pairs, sites and data; no state.

**Categorical sites** (``Categorical``, ``OneHotCategorical``) go through the stick-breaking
coupling of Dong, Mnih & Tucker (*Coupled Gradient Estimators for Discrete Latent Variables*,
NeurIPS 2021), without its extra Rao-Blackwellization. A class with probabilities
:math:`p_{1:C}` is the first success of :math:`C - 1` independent binary draws,
:math:`b_k \sim \mathrm{Bern}(\sigma(\beta_k))` with :math:`\sigma(\beta_k) = p_k / \sum_{j \ge k} p_j`
(class :math:`C` if none succeeds), so :math:`c(b) \sim \mathrm{Cat}(p)` exactly and
:math:`\mathbb E_q[f(c)] = \mathbb E_b[f(c(b))]`. The formulas above, applied to :math:`b`
with logits :math:`\beta`, are therefore unbiased for :math:`\nabla_\beta`, and the chain
rule through :math:`\beta(p)` takes them to the guide's parameters. The cost is that of the
binary case: the same two program runs per pair, :math:`C - 1` uniforms per site.
"""

from __future__ import annotations

from typing import Any, Callable

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor

from ..program.weights import at_site, to_terms
from ..utils import PPModelsError
from .elbo import Elbo, _device, elbo_surrogate

__all__ = ["Arm", "Disarm"]

PAIR = "antithetic_u"  # the key of a guide site's (u, dim, b, b~, sticks) in ``site["infer"]``


def _base(fn: Any) -> Any:
    while hasattr(fn, "base_dist"):  # Independent, Expanded, Masked
        fn = fn.base_dist
    return fn


def _bernoulli(fn: Any) -> dist.Bernoulli | None:
    base = _base(fn)
    return base if isinstance(base, torch.distributions.Bernoulli) else None


def _categorical(fn: Any) -> torch.distributions.Distribution | None:
    base = _base(fn)
    return base if isinstance(base, (torch.distributions.Categorical, torch.distributions.OneHotCategorical)) else None


def stick_logits(fn: Any) -> Tensor:
    r"""The stick-breaking logits :math:`\beta_k = \log p_k - \log \sum_{j > k} p_j`, k < C, of a
    categorical site ``fn``: shape (value's shape without a one-hot dim) + (C - 1,)."""
    base = _categorical(fn)
    shape = fn.batch_shape + fn.event_shape
    one_hot = isinstance(base, torch.distributions.OneHotCategorical)
    log_p = base.logits.expand(shape if one_hot else shape + base.logits.shape[-1:])
    log_p = log_p - log_p.logsumexp(-1, keepdim=True)
    # sum_{j > k} p_j by a reversed cumulative sum of probabilities: positive terms, so no
    # cancellation; clamped where it underflows (there sigma(beta_k) = 1 to float precision).
    # O(C), where a masked logsumexp was O(C^2) and half the step; logcumsumexp here made the
    # lab's per-replicate Jacobian (a double backward) NaN on CategoricalGaussian
    p = log_p.exp()
    later = p.flip(-1).cumsum(-1).flip(-1)[..., 1:]
    return log_p[..., :-1] - later.clamp_min(torch.finfo(p.dtype).tiny).log()


def first_success(b: Tensor) -> Tensor:
    """The class of each stick-breaking draw ``b`` (..., C - 1): the first k with b_k = 1, else C - 1."""
    ones = torch.ones_like(b[..., :1])
    return torch.cat([b, ones], -1).to(torch.uint8).argmax(-1)  # argmax: the first maximal index


class _Antithetic(Messenger):
    """Draw every Bernoulli and categorical guide site's K = 2M particles as M antithetic pairs:
    the first M from :math:`u`, the last M from :math:`1 - u` (particle dimension ``dim`` of the
    value); a categorical's from its stick-breaking draws. The site's ``infer`` keeps
    ``(u, dim, b, b~, sticks)`` (a categorical's stick logits, with their graph; else None)."""

    def __init__(self, particles: int, nesting: int) -> None:
        super().__init__()
        self.half, self.nesting = particles // 2, nesting

    def _pyro_sample(self, msg: dict) -> None:
        if msg["done"] or msg["is_observed"] or msg["value"] is not None:
            return
        fn = msg["fn"]
        binary, categorical = _bernoulli(fn), _categorical(fn)
        if binary is None and categorical is None:
            return
        ndim = len(fn.batch_shape + fn.event_shape)
        dim = ndim - fn.event_dim - (self.nesting + 1)  # the particle plate's dim, from the left
        # the success probabilities of the binary draws: q's Bernoulli probabilities, or the sticks'
        # (their logits kept for the surrogate: computed once a step)
        sticks = stick_logits(fn) if binary is None else None
        probs = fn.mean if binary is not None else torch.sigmoid(sticks.detach())
        first = probs.narrow(dim, 0, self.half).detach()
        u = torch.rand_like(first)
        b, b_tilde = (u < first).to(first.dtype), (1 - u < first).to(first.dtype)
        value = torch.cat([b, b_tilde], dim)
        if categorical is not None:
            value = first_success(value)
            if isinstance(categorical, torch.distributions.OneHotCategorical):
                value = torch.nn.functional.one_hot(value, categorical.event_shape[-1]).to(first.dtype)
        msg["value"] = value
        msg["infer"] = {**msg["infer"], PAIR: (u, dim, b, b_tilde, sticks)}
        msg["done"] = True


class Arm(Elbo):
    """``"arm"``: the K-particle ELBO with ARM gradients at Bernoulli and categorical guide sites (K = 2M)."""

    free_bits_supported = False
    name = "arm"
    jit_safe = False

    def __init__(self, num_particles: int = 2, **kwargs: Any) -> None:
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 2 \
                or num_particles % 2:
            raise PPModelsError(f"objective {self.name!r}: num_particles must be an even integer >= 2 (antithetic "
                                f"pairs), got {num_particles!r}")
        if not kwargs.get("vectorize_particles", True):
            raise PPModelsError(f"objective {self.name!r}: antithetic pairs are drawn together, under the particle "
                                "plate; vectorize_particles=False cannot pair them")
        super().__init__(num_particles, **kwargs)

    def pair_gradient(self, f: Tensor, f_tilde: Tensor, b: Tensor, b_tilde: Tensor, u: Tensor,
                      logits: Tensor) -> Tensor:
        r""":math:`\hat\nabla_\alpha` per pair and coordinate (module docstring)."""
        return (f_tilde - f) * (u - 0.5)

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        found = self.facts(model, guide, args, kwargs)
        K, M = self.num_particles, self.num_particles // 2
        others = [n for n in found.score_sites if n not in found.bernoulli_sites + found.categorical_sites]
        if others:
            raise PPModelsError(f"objective {self.name!r}: guide site {others[0]!r} is not reparameterizable and "
                                "neither Bernoulli nor categorical; ARM and DisARM take those (use 'rloo' or 'vimco')")
        lw, pairs = self.draw(model, guide, args, kwargs, kl_weight=self._kl_weight(_device(args)),
                              guide_handler=lambda: _Antithetic(K, found.max_plate_nesting))
        if not lw.has_score:
            return elbo_surrogate(lw)
        if len(pairs) != 1:
            raise PPModelsError(f"objective {self.name!r}: the model does not run under vectorized particles, and "
                                "antithetic pairs must be drawn together")
        _, guide_trace = pairs[0]
        f = lw.log_w.detach()  # (K, U), per term
        pdim = -(found.max_plate_nesting + 1)
        surrogate = lw.pathwise.mean(0)
        for name in found.score_sites:
            site = guide_trace.nodes[name]
            fn = site["fn"]
            u, dim, b, b_tilde, sticks = site["infer"][PAIR]
            f_b, f_tilde = at_site(f[:M], site, found, True), at_site(f[M:], site, found, True)
            event_dims = fn.event_dim
            if _bernoulli(fn) is not None:
                logits = _bernoulli(fn).logits.expand(site["value"].shape)
            else:  # the sticks' logits, with the stick dim last: summed over below
                logits = sticks
                if isinstance(_categorical(fn), torch.distributions.OneHotCategorical):
                    event_dims -= 1  # the one-hot dim is the stick dim now
                else:
                    f_b, f_tilde = f_b.unsqueeze(-1), f_tilde.unsqueeze(-1)
                event_dims += 1
            logits = logits.narrow(dim, 0, M)
            g = self.pair_gradient(f_b, f_tilde, b, b_tilde, u, logits.detach())
            term = g.detach() * logits
            if event_dims:
                term = term.sum(tuple(range(-event_dims, 0)))  # to the site's batch shape
            surrogate = surrogate + to_terms(term, pdim, found.data_dim).sum(0) / M
        bound = lw.scale * lw.log_w.mean(0)
        return bound, lw.scale * surrogate


class Disarm(Arm):
    """``"disarm"``: the K-particle ELBO with DisARM gradients at Bernoulli and categorical guide sites (K = 2M)."""

    name = "disarm"

    def pair_gradient(self, f: Tensor, f_tilde: Tensor, b: Tensor, b_tilde: Tensor, u: Tensor,
                      logits: Tensor) -> Tensor:
        sign = 1.0 - 2.0 * b_tilde  # (-1)^{b~}
        return 0.5 * (f - f_tilde) * sign * (b != b_tilde).to(f.dtype) * torch.sigmoid(logits.abs())
