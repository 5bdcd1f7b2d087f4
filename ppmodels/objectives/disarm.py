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

PAIR = "antithetic_u"  # the key of a Bernoulli guide site's uniform draws in ``site["infer"]``


def _bernoulli(fn: Any) -> dist.Bernoulli | None:
    while hasattr(fn, "base_dist"):  # Independent, Expanded, Masked
        fn = fn.base_dist
    return fn if isinstance(fn, torch.distributions.Bernoulli) else None


class _Antithetic(Messenger):
    """Draw every Bernoulli guide site's K = 2M particles as M antithetic pairs: the first M
    from :math:`u`, the last M from :math:`1 - u` (particle dimension ``dim`` of the value)."""

    def __init__(self, particles: int, nesting: int) -> None:
        super().__init__()
        self.half, self.nesting = particles // 2, nesting

    def _pyro_sample(self, msg: dict) -> None:
        if msg["done"] or msg["is_observed"] or msg["value"] is not None or _bernoulli(msg["fn"]) is None:
            return
        fn = msg["fn"]
        probs = fn.mean  # q's Bernoulli probabilities, shaped like the value (the particle dim included)
        dim = probs.dim() - fn.event_dim - (self.nesting + 1)  # the particle plate's dim, from the left
        first = probs.narrow(dim, 0, self.half).detach()
        u = torch.rand_like(first)
        msg["value"] = torch.cat([(u < first), (1 - u < first)], dim).to(probs.dtype)
        msg["infer"] = {**msg["infer"], PAIR: (u, dim)}
        msg["done"] = True


class Arm(Elbo):
    """``"arm"``: the K-particle ELBO with ARM gradients at Bernoulli guide sites (K = 2M)."""

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
        others = [n for n in found.score_sites if n not in found.bernoulli_sites]
        if others:
            raise PPModelsError(f"objective {self.name!r}: guide site {others[0]!r} is discrete but not Bernoulli; "
                                "ARM and DisARM are for Bernoulli latents (use 'rloo' or 'vimco')")
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
            u, dim = site["infer"][PAIR]
            logits = _bernoulli(site["fn"]).logits
            logits = logits.expand(site["value"].shape).narrow(dim, 0, M)
            b, b_tilde = site["value"].narrow(dim, 0, M), site["value"].narrow(dim, M, M)
            f_b, f_tilde = at_site(f[:M], site, found, True), at_site(f[M:], site, found, True)
            g = self.pair_gradient(f_b, f_tilde, b, b_tilde, u, logits.detach())
            term = g.detach() * logits
            if site["fn"].event_dim:
                term = term.sum(tuple(range(-site["fn"].event_dim, 0)))  # to the site's batch shape
            surrogate = surrogate + to_terms(term, pdim, found.data_dim).sum(0) / M
        bound = lw.scale * lw.log_w.mean(0)
        return bound, lw.scale * surrogate


class Disarm(Arm):
    """``"disarm"``: the K-particle ELBO with DisARM gradients at Bernoulli guide sites (K = 2M)."""

    name = "disarm"

    def pair_gradient(self, f: Tensor, f_tilde: Tensor, b: Tensor, b_tilde: Tensor, u: Tensor,
                      logits: Tensor) -> Tensor:
        sign = 1.0 - 2.0 * b_tilde  # (-1)^{b~}
        return 0.5 * (f - f_tilde) * sign * (b != b_tilde).to(f.dtype) * torch.sigmoid(logits.abs())
