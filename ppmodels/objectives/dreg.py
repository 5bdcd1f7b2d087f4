r"""Doubly-reparameterized gradients for the IWAE bound (Tucker, Lawson, Gu & Maddison, ICLR 2019).

Bound: the IWAE bound :math:`\mathcal L_K` (see ``iwae``). With :math:`\tilde w_k` the
normalized weights and :math:`\log w_k = \log p_\theta(x, z_k) - \log q_{\bar\phi}(z_k)`
(guide parameters detached, the gradient reaching φ only through :math:`z_k = z(\epsilon_k, \phi)`),

.. math:: \hat\nabla_\theta = \sum_k \tilde w_k \nabla_\theta \log w_k,\qquad
          \hat\nabla_\phi = \sum_k \tilde w_k^2\, \frac{\partial \log w_k}{\partial z_k}
          \frac{\partial z_k}{\partial \phi}

Both are unbiased for :math:`\nabla \mathcal L_K`; the guide gradient's SNR does not decay
with K (Rainforth et al. 2018), and it is exactly zero at the exact posterior. Implemented
with one backward pass: the surrogate :math:`\sum_k \bar{\tilde w}_k \log w_k`, with every
reparameterized guide draw :math:`z_k` passed through an identity whose backward multiplies
the gradient reaching :math:`z_k` by :math:`\tilde w_k`. The weights are known only after the
model has run, so the identity reads them from a buffer filled in place afterwards; unlike a
gradient hook this is recorded by the fast path's capture (:mod:`ppmodels.compiled`), so DReG runs on it.
Requires reparameterizable guide sites whose distribution parameters depend on the data and
φ only (one stochastic layer, or a mean-field guide).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import Tensor

from ..program.weights import at_site
from .base import LogWeights, require_reparameterized, terms
from .iwae import Iwae

__all__ = ["Dreg"]

WEIGHTS = "dreg_weights"  # the key of a guide site's gradient-scale buffer in ``site["infer"]``


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``scale``, a buffer that
    may be filled in place after this call (it is read when the backward pass runs)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, scale: Tensor) -> Tensor:
        ctx.scale = scale  # not save_for_backward: the buffer is written after this call on purpose
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class _DeferredGradScale(Messenger):
    """Draw each reparameterized guide latent as ``_ScaleGrad(z, buffer)``, the buffer (ones,
    shaped like z) kept in the site's ``infer`` dict for :meth:`Dreg._scale_guide_gradients`."""

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        if msg["done"] or msg["is_observed"] or msg["value"] is not None or not getattr(fn, "has_rsample", False):
            return
        z = fn(*msg["args"], **msg["kwargs"])
        scale = torch.ones_like(z)
        msg["value"] = _ScaleGrad.apply(z, scale)
        msg["infer"] = {**msg["infer"], WEIGHTS: scale}
        msg["done"] = True


class Dreg(Iwae):
    """``"dreg"``: IWAE bound with doubly-reparameterized guide gradients."""

    name = "dreg"
    jit_safe = True

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        lw, pairs = self.draw(model, guide, args, kwargs, detach_guide=True, guide_handler=_DeferredGradScale)
        require_reparameterized(lw, self.name, instead="vimco (discrete latents) or iwae")
        log_w, _, scale = terms(lw, self)
        bound = scale * self.bound_fn(log_w)
        w = torch.softmax(log_w.detach(), 0)  # (K, U)
        self._scale_guide_gradients(pairs, w, lw)
        surrogate = scale * (w * log_w).sum(0)
        return bound, surrogate

    def _scale_guide_gradients(self, pairs: list[tuple[poutine.Trace, poutine.Trace]], w: Tensor,
                               lw: LogWeights) -> None:
        """Fill every guide latent's buffer so the gradient reaching z_k (of unit u) is
        multiplied by w̃_ku: the weights placed at the particle dim and the batch plate's dim."""
        per_pair = w.shape[0] // len(pairs)
        vectorized = per_pair > 1
        for i, (_, guide_trace) in enumerate(pairs):
            wi = w[i * per_pair : (i + 1) * per_pair]  # (k, U)
            for site in guide_trace.nodes.values():
                if site["type"] == "sample" and WEIGHTS in site["infer"]:
                    buffer = site["infer"][WEIGHTS]
                    buffer.copy_(at_site(wi, site, lw.facts, vectorized).expand_as(buffer))
