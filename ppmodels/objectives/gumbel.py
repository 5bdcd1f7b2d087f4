r"""The Gumbel-softmax (Concrete) relaxation and its straight-through variant (Jang, Gu & Poole,
*Categorical Reparameterization with Gumbel-Softmax*, ICLR 2017; Maddison, Mnih & Teh, *The
Concrete Distribution*, ICLR 2017; Bengio, Léonard & Courville 2013 for straight-through).

At each discrete guide site drawn as a one-hot vector or a binary value (``OneHotCategorical``,
``Bernoulli``, under ``.to_event``/plates), the draw is replaced by a reparameterized relaxed
draw at temperature :math:`\tau`: :math:`\tilde z = \mathrm{softmax}((\log\pi + g)/\tau)` with
Gumbel noise :math:`g` (Pyro's ``RelaxedOneHotCategorical``, ``RelaxedBernoulli``). The model and
the guide evaluate their discrete log-densities at :math:`\tilde z` (they are linear in a
one-hot value), and the estimator is the pathwise gradient of

.. math:: \mathcal L_\tau = \mathbb E_{\tilde z}\big[\log p(x, \tilde z) - \log q(\tilde z \mid x)\big].

``gumbel``: that objective; biased for the ELBO's gradient (the bias shrinks as τ → 0 while the
variance grows). ``st-gumbel``: the forward pass takes the hard sample (Pyro's
``...StraightThrough`` distributions), so the loss's value is an unbiased ELBO estimate, and the
gradient is the relaxed one (biased). ``temperature`` may be changed between calls
(:class:`ppmodels.callbacks.TemperatureAnnealing`). A categorical site drawn as an index
(``Categorical``) has no one-hot value to relax: an error naming it.

torch evaluates ``OneHotCategorical.log_prob`` at the argmax of its value, which has no gradient
in the value: at a relaxed draw the pathwise gradient of :math:`\log q(\tilde z)` and
:math:`\log p(\tilde z)` would be lost (and with it the KL term's gradient). Under this objective
the model's and the guide's one-hot sites are evaluated by the linear form
:math:`\sum_k \tilde z_k \log\pi_k`, which equals torch's value on one-hot values.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor

from ..utils import PPModelsError
from .elbo import Elbo, _device

__all__ = ["Gumbel", "StraightThroughGumbel"]

RELAXED = "relaxed"  # marks a relaxed guide site in ``site["infer"]``


def _base(fn: Any) -> Any:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


class _LinearOneHot(dist.OneHotCategorical):
    """``OneHotCategorical`` whose log-density is linear in the value: :math:`\sum_k z_k \log\pi_k`."""

    def log_prob(self, value: Tensor) -> Tensor:
        return (value * self.logits).sum(-1)


def _linear(fn: Any) -> Any:
    """``fn`` with its ``OneHotCategorical`` base replaced by :class:`_LinearOneHot` through
    Pyro's ``Independent``/``Expanded``/``Masked`` wrappers; ``None`` for any other chain."""
    if type(fn) in (dist.OneHotCategorical, torch.distributions.OneHotCategorical):
        return _LinearOneHot(logits=fn.logits, validate_args=False)
    inner = _linear(fn.base_dist) if hasattr(fn, "base_dist") else None
    if inner is None:
        return None
    if isinstance(fn, torch.distributions.Independent):
        return inner.to_event(fn.reinterpreted_batch_ndims)
    if isinstance(fn, dist.ExpandedDistribution):
        return inner.expand(fn.batch_shape)
    if isinstance(fn, dist.MaskedDistribution):
        return inner.mask(fn._mask)
    return None


class _LinearDensities(Messenger):
    """Evaluate every one-hot sample site, the model's and the guide's, by :class:`_LinearOneHot`."""

    def _pyro_sample(self, msg: dict) -> None:
        linear = _linear(msg["fn"])
        if linear is not None:
            msg["fn"] = linear


class _Relax(Messenger):
    """Draw every one-hot or binary guide latent from its relaxation at ``temperature``
    (straight-through: the hard sample forward, the relaxed gradient backward); the site keeps
    its discrete distribution, whose log-density is evaluated at the drawn value."""

    def __init__(self, temperature: float, straight_through: bool) -> None:
        super().__init__()
        self.temperature, self.straight_through = temperature, straight_through

    def _pyro_sample(self, msg: dict) -> None:
        if msg["done"] or msg["is_observed"] or msg["value"] is not None:
            return
        fn, base = msg["fn"], _base(msg["fn"])
        if not isinstance(base, (torch.distributions.OneHotCategorical, torch.distributions.Bernoulli)):
            return
        t = torch.as_tensor(self.temperature, dtype=torch.get_default_dtype())
        shape = fn.batch_shape + fn.event_shape
        if isinstance(base, torch.distributions.OneHotCategorical):
            kind = dist.RelaxedOneHotCategoricalStraightThrough if self.straight_through else dist.RelaxedOneHotCategorical
            relaxed = kind(t.to(base.logits), logits=base.logits.expand(shape))
        elif isinstance(base, torch.distributions.Bernoulli):
            kind = dist.RelaxedBernoulliStraightThrough if self.straight_through else dist.RelaxedBernoulli
            relaxed = kind(t.to(base.logits), logits=base.logits.expand(shape))
        msg["value"] = relaxed.rsample()
        msg["infer"] = {**msg["infer"], RELAXED: True}
        msg["done"] = True


class Gumbel(Elbo):
    """``"gumbel"``: the Gumbel-softmax relaxed ELBO, pathwise through relaxed discrete draws."""

    free_bits_supported = False
    name = "gumbel"
    jit_safe = False
    straight_through = False

    def __init__(self, num_particles: int = 1, *, temperature: float = 1.0, **kwargs: Any) -> None:
        super().__init__(num_particles, **kwargs)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
                or temperature <= 0:
            raise PPModelsError(f"objective {self.name!r}: temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "temperature": self.temperature}

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        # discrete densities at relaxed values: outside their support on purpose
        with pyro.validation_enabled(False), _LinearDensities():
            lw, pairs = self.draw(model, guide, args, kwargs, kl_weight=self._kl_weight(_device(args)),
                                  guide_handler=lambda: _Relax(self.temperature, self.straight_through))
        for _, guide_trace in pairs[:1]:
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample" and not site["is_observed"] and RELAXED not in site["infer"] \
                        and not getattr(site["fn"], "has_rsample", False):
                    raise PPModelsError(f"objective {self.name!r}: guide site {name!r} ({type(_base(site['fn'])).__name__})"
                                        " has no one-hot or binary value to relax; draw it as OneHotCategorical or "
                                        "Bernoulli, or use 'rloo', 'vimco' or 'enum'")
        value = lw.scale * lw.log_w.mean(0)
        return value, value


class StraightThroughGumbel(Gumbel):
    """``"st-gumbel"``: hard draws forward, Gumbel-softmax gradients backward."""

    name = "st-gumbel"
    straight_through = True
