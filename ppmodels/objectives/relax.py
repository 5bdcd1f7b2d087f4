r"""RELAX: a learned control variate for discrete latents (Grathwohl, Choi, Wu, Roeder & Duvenaud,
*Backpropagation through the Void: Optimizing control variates for black-box gradient estimation*,
ICLR 2018), with REBAR's conditional relaxed sample (Tucker, Mnih, Maddison, Lawson &
Sohl-Dickstein, NeurIPS 2017).

Bound: the ELBO, estimated with K particles. At a Bernoulli or one-hot guide site with logits
:math:`\alpha`, the discrete value is a hard threshold of a continuous one, :math:`b = H(z)`:
:math:`z = \alpha + \operatorname{logit} u` and :math:`b = 1[z > 0]` (Bernoulli), or
:math:`z = \log\operatorname{softmax}(\alpha) + g` with Gumbel noise and :math:`b` the one-hot
argmax (categorical). :math:`\tilde z \sim p(z \mid b)` is drawn by reparameterization from a
second uniform :math:`v` (REBAR's conditional sample). With :math:`f(b)` the log weight of the
site's term (its datapoint, or the batch) and a surrogate :math:`c_\phi`, the estimator is

.. math:: \hat\nabla_\alpha = \big(f(b) - c_\phi(\tilde z)\big)\,\nabla_\alpha \log q(b \mid \alpha)
          + \nabla_\alpha c_\phi(z) - \nabla_\alpha c_\phi(\tilde z),

unbiased for any :math:`c_\phi` continuous in :math:`z` (the last two terms correct the first's
control variate in expectation). With :math:`\sigma_\tau(z)` the relaxed sample
:math:`\sigma(z/\tau)` (one-hot: :math:`\operatorname{softmax}(z/\tau)`) of every discrete guide
site, the surrogate is REBAR's term plus a learned residual (the paper's discrete experiments),

.. math:: c_\phi(z) = \eta\, f(\sigma_\tau(z)) + \rho_\phi\big(\sigma_\tau(z), x\big),

:math:`f(\sigma_\tau(z))` being the term's log weight with the model and the guide run again at
the relaxed values (their other latents at the drawn ones; one-hot densities evaluated linearly in
the value, as under ``gumbel``; Pyro's support checks off for that run). :math:`\rho_\phi` is a
one-hidden-layer tanh network whose input is concatenated with the term's input :math:`x` when
terms are per datapoint; its last layer starts at zero and :math:`\eta` at 1, so the surrogate
starts as REBAR's. ``rebar=false`` drops the first term: a program that cannot run at relaxed
values needs it (an error says so), and so does one that reads its latent through a jump (an
argmax, a comparison), which would make :math:`c_\phi` discontinuous and the estimator biased.
:math:`\phi`, :math:`\eta` and :math:`\tau` are trained to minimise the estimator's variance
:math:`\sum\hat\nabla_\alpha^2` (per term, mean over particles), whose gradient in them is
that of the squared estimate (its mean, the true gradient, does not depend on them). That
gradient is taken inside the loss, by ``torch.autograd.grad`` with respect to those parameters
alone, and enters the surrogate as a linear term in them: :math:`f` depends on the model's
parameters, which must not learn to lower the estimator's variance. So one backward pass of
``fit`` trains the model, the guide and the surrogate, with one optimizer.

The chain rule takes :math:`\hat\nabla_\alpha` to the guide's parameters (the surrogate is
:math:`\sum \overline{\hat\nabla_\alpha}\,\alpha`, as in :mod:`.disarm`); the model's parameters
and reparameterized guide sites get the pathwise gradient of the K-particle ELBO; the direct
dependence of :math:`f` on the guide's parameters has zero mean and is dropped. The discrete guide
sites must form one stochastic layer: their logits depend on the data and parameters, not on
another discrete latent.

The surrogate's parameters live in the param store as ``relax_surrogate.*`` (created by
:meth:`Relax.init_state`, sized by one probe of the program), so they are trained by ``fit``'s
optimizer, saved in a run's checkpoint and restored on resume; :meth:`Objective.state_dict`
reads them. A draw does not change them (only the optimizer does), so replicate draws may be
vectorized.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor

from .. import program
from ..program import ProgramFacts
from ..program.weights import at_site, log_weights, to_terms
from ..settings import COUNT
from ..utils import PPModelsError
from .elbo import Elbo, _device, elbo_surrogate
from .gumbel import _LinearDensities

__all__ = ["Relax"]

NET = "relax_surrogate"
NOISE = "relax_noise"  # the key of a discrete guide site's (u, v) draws in ``site["infer"]``
EPS = 1e-6


def _kind(fn: Any) -> str | None:
    """``"bernoulli"``, ``"onehot"`` or None: the discrete family under Pyro's wrappers."""
    while hasattr(fn, "base_dist"):  # Independent, Expanded, Masked
        fn = fn.base_dist
    if isinstance(fn, torch.distributions.Bernoulli):
        return "bernoulli"
    if isinstance(fn, torch.distributions.OneHotCategorical):
        return "onehot"
    return None


def _logits(fn: Any, shape: torch.Size) -> Tensor:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn.logits.expand(shape)



@contextlib.contextmanager
def _removed_on_failure() -> Iterator[None]:
    """Params ``relax_surrogate.*`` created inside the block are removed from Pyro's param store
    again if it raises."""
    store = pyro.get_param_store()
    before = {n for n in store.keys() if n.startswith(f"{NET}.")}
    try:
        yield
    except BaseException:
        for name in [n for n in store.keys() if n.startswith(f"{NET}.") and n not in before]:
            del store[name]
        raise

class _Thresholded(Messenger):
    """Draw every Bernoulli and one-hot guide site as the hard threshold of its continuous
    relaxation (module docstring), keeping the uniforms ``(u, v)`` in ``site["infer"]``."""

    def _pyro_sample(self, msg: dict) -> None:
        if msg["done"] or msg["is_observed"] or msg["value"] is not None:
            return
        kind = _kind(msg["fn"])
        if kind is None:
            return
        fn = msg["fn"]
        alpha = _logits(fn, fn.batch_shape + fn.event_shape).detach()
        u, v = torch.rand_like(alpha).clamp(EPS, 1 - EPS), torch.rand_like(alpha).clamp(EPS, 1 - EPS)
        z = _relaxed_logit(kind, alpha, u)
        if kind == "bernoulli":
            b = (z > 0).to(alpha.dtype)
        else:
            b = torch.nn.functional.one_hot(z.argmax(-1), z.shape[-1]).to(alpha.dtype)
        msg["value"] = b
        msg["infer"] = {**msg["infer"], NOISE: (kind, u, v)}
        msg["done"] = True


class _Replayed(Messenger):
    """Replay a guide run with the discrete sites at given (relaxed) values and every other latent
    at its drawn value, detached: the guide's densities at REBAR's relaxed sample. (Pyro's
    ``poutine.replay`` takes a trace's values as they are; here some are replaced, the rest
    detached, and the drawn trace is left untouched.)"""

    def __init__(self, values: dict[str, Tensor], trace: Any) -> None:
        super().__init__()
        self.values, self.trace = values, trace

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["name"] not in self.trace.nodes:
            return
        value = self.values.get(msg["name"])
        msg["value"] = self.trace.nodes[msg["name"]]["value"].detach() if value is None else value
        msg["done"] = True


def _relaxed_logit(kind: str, alpha: Tensor, u: Tensor) -> Tensor:
    """:math:`z(\\alpha, u)`: logistic (Bernoulli) or Gumbel-perturbed log-probabilities (one-hot)."""
    if kind == "bernoulli":
        return alpha + torch.log(u) - torch.log1p(-u)
    return torch.log_softmax(alpha, -1) - torch.log(-torch.log(u))


def _conditional_logit(kind: str, alpha: Tensor, b: Tensor, v: Tensor) -> Tensor:
    r""":math:`\tilde z \sim p(z \mid b)` from the uniform ``v``, reparameterized in :math:`\alpha`."""
    if kind == "bernoulli":
        theta = torch.sigmoid(alpha)  # b = 1 iff u > 1 - theta
        w = (b * (1 - theta + v * theta) + (1 - b) * v * (1 - theta)).clamp(EPS, 1 - EPS)
        return alpha + torch.log(w) - torch.log1p(-w)
    log_p = torch.log_softmax(alpha, -1)
    top = -torch.log(-torch.log(v))  # the argmax's Gumbel, at the normalized scale
    top_b = (top * b).sum(-1, keepdim=True)
    others = -torch.log(-torch.log(v) * torch.exp(-log_p) + torch.exp(-top_b))
    return torch.where(b > 0, top, others)


def _score_gradient(kind: str, alpha: Tensor, b: Tensor) -> Tensor:
    """:math:`\\nabla_\\alpha \\log q(b \\mid \\alpha)` per logit."""
    return b - (torch.sigmoid(alpha) if kind == "bernoulli" else torch.softmax(alpha, -1))


def _features(t: Tensor, site: dict, found: ProgramFacts, particles: bool) -> Tensor:
    """A site-shaped tensor as ``(k, U, F)``: particles, terms, the rest flattened."""
    nb = found.max_plate_nesting + int(particles)
    event_dim = site["fn"].event_dim
    t = t.reshape((1,) * (nb - (t.dim() - event_dim)) + t.shape)
    if not particles:
        t, nb = t.unsqueeze(0), nb + 1
    t = t.movedim(nb + found.data_dim, 1) if found.per_datapoint else t.unsqueeze(1)
    return t.reshape(t.shape[0], t.shape[1], -1)


class Relax(Elbo):
    """``"relax"``: the K-particle ELBO with RELAX gradients at Bernoulli and one-hot guide sites."""

    free_bits_supported = False
    name = "relax"
    jit_safe = False  # a second-order gradient inside the loss
    draws_update_state = False  # the surrogate changes by the optimizer only

    def __init__(self, num_particles: int = 1, *, hidden: int = 32, temperature: float = 0.5, rebar: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(num_particles, **kwargs)
        COUNT.check("objective 'relax'", "hidden", hidden)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
                or temperature <= 0:
            raise PPModelsError(f"objective 'relax': temperature (the surrogate's initial one) must be a finite "
                                f"number > 0, got {temperature!r}")
        if not isinstance(rebar, bool):
            raise PPModelsError(f"objective 'relax': rebar must be true or false, got {rebar!r}")
        self.hidden, self.temperature, self.rebar = hidden, float(temperature), rebar

    def options(self) -> dict[str, Any]:
        return {**super().options(), "hidden": self.hidden, "temperature": self.temperature, "rebar": self.rebar}

    @property
    def state_names(self) -> tuple[str, ...]:
        names = ("w1", "b1", "w2", "b2", "log_temperature") + (("eta",) if self.rebar else ())
        return tuple(f"{NET}.{n}" for n in names)

    # -- the surrogate, in the param store ---------------------------------------------------
    def init_state(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        found = self.facts(model, guide, args, kwargs)
        sites = self._sites(found)
        seen = program.probe(model, guide, args, kwargs)
        features = [_features(seen.guide_trace.nodes[n]["value"], seen.guide_trace.nodes[n], found, False)
                    for n in sites]
        if not features:
            return
        width = sum(f.shape[-1] for f in features)
        x = self._input(found, args, features[0].shape[1])
        self._network(width + (x.shape[-1] if x is not None else 0), _device(args))

    def _sites(self, found: ProgramFacts) -> tuple[str, ...]:
        """The guide's score-function sites (each must be Bernoulli or one-hot: checked at the draw)."""
        return found.score_sites

    def _input(self, found: ProgramFacts, args: tuple, terms: int) -> Tensor | None:
        """The terms' inputs ``x`` (U, X), the surrogate's second input: the first argument's rows,
        when terms are per datapoint, the batch is not subsampled and the argument has U rows; else None."""
        if not found.per_datapoint or found.subsampled or not args or not torch.is_tensor(args[0]) \
                or args[0].dim() == 0 or args[0].shape[0] != terms:
            return None
        x = args[0].detach()
        return x.reshape(x.shape[0], -1).to(torch.get_default_dtype())

    def _network(self, width: int, device: torch.device) -> Callable[[Tensor], Tensor]:
        """:math:`\\rho_\\phi` on (..., width) inputs, the learned temperature and REBAR's scale
        :math:`\\eta`: params ``relax_surrogate.*`` (created on first use, Glorot-uniform, from the
        random stream; the last layer at zero, so :math:`c_\\phi` starts as REBAR's term alone)."""
        h = self.hidden
        bound = math.sqrt(6.0 / (width + h))
        w1 = pyro.param(f"{NET}.w1", lambda: (torch.rand(width, h, device=device) * 2 - 1) * bound)
        b1 = pyro.param(f"{NET}.b1", lambda: torch.zeros(h, device=device))
        w2 = pyro.param(f"{NET}.w2", lambda: torch.zeros(h, 1, device=device))
        b2 = pyro.param(f"{NET}.b2", lambda: torch.zeros(1, device=device))
        pyro.param(f"{NET}.log_temperature", lambda: torch.tensor(math.log(self.temperature), device=device))
        if self.rebar:
            pyro.param(f"{NET}.eta", lambda: torch.ones((), device=device))
        if w1.shape[0] != width:
            raise PPModelsError(f"objective 'relax': the surrogate's params {NET}.* take inputs of width {w1.shape[0]}, "
                                f"but this program's are {width} wide; clear the param store for a new program")
        return lambda inputs: (torch.tanh(inputs @ w1 + b1) @ w2 + b2).squeeze(-1)

    # -- the estimator ----------------------------------------------------------------------
    def site_gradient(self, coefficient: Tensor, score: Tensor, correction: Tensor) -> Tensor:
        r""":math:`\hat\nabla_\alpha` at one site: :math:`(f(b) - c_\phi(\tilde z))` (laid out at
        the site) times :math:`\nabla_\alpha \log q(b)`, plus the control variate's correction
        :math:`\nabla_\alpha c_\phi(z) - \nabla_\alpha c_\phi(\tilde z)`."""
        return coefficient * score + correction

    def _relaxed_log_weight(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, found: ProgramFacts,
                            guide_trace: Any, values: dict[str, Tensor], K: int) -> Tensor:
        r""":math:`f(\sigma(z/\tau))` (K, U): the program's log weight with its discrete sites at
        relaxed values (one-hot densities linear in the value, as under ``gumbel``)."""
        try:
            with pyro.validation_enabled(False), _LinearDensities():
                pair = program.run_pair(model, guide, args, kwargs, num_particles=K,
                                        max_plate_nesting=found.max_plate_nesting,
                                        guide_handler=_Replayed(values, guide_trace))
                return log_weights(*pair, found, num_particles=K, kl_weight=self._kl_weight(_device(args))).log_w
        except PPModelsError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the user's program raises at a relaxed value
            raise PPModelsError(f"objective 'relax': the program does not run at relaxed values of its discrete sites "
                                f"(REBAR's term; {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                "use relax:rebar=false") from e

    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        with _removed_on_failure():  # a call that fails leaves no surrogate params it made behind
            return self._terms(model, guide, args, kwargs)

    def _terms(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
        found = self.facts(model, guide, args, kwargs)
        sites = self._sites(found)
        lw, pairs = self.draw(model, guide, args, kwargs, kl_weight=self._kl_weight(_device(args)),
                              guide_handler=_Thresholded)
        if not lw.has_score or not torch.is_grad_enabled():
            return elbo_surrogate(lw)
        if len(pairs) != 1:
            raise PPModelsError("objective 'relax': the model does not run under vectorized particles; use "
                                "num_particles=1")
        K, particles = lw.log_w.shape[0], lw.log_w.shape[0] > 1
        guide_trace = pairs[0][1]
        nodes = [guide_trace.nodes[n] for n in sites]
        for name, site in zip(sites, nodes):
            if NOISE not in site["infer"]:
                raise PPModelsError(f"objective 'relax': guide site {name!r} ({type(site['fn']).__name__}) is neither "
                                    "Bernoulli nor one-hot; draw it as OneHotCategorical, or use 'rloo' or 'vimco'")
        noise = [site["infer"][NOISE] for site in nodes]
        alphas = [_logits(site["fn"], site["value"].shape) for site in nodes]
        leaves = [a.detach().requires_grad_() for a in alphas]  # the estimator, as a function of the logits
        x = self._input(found, args, lw.log_w.shape[1])
        relaxed: dict[str, list[Tensor]] = {"z": [], "z~": []}
        for site, (kind, u, v), a in zip(nodes, noise, leaves):
            for key, logit in (("z", _relaxed_logit(kind, a, u)), ("z~", _conditional_logit(kind, a, site["value"], v))):
                relaxed[key].append(logit)
        width = sum(_features(l, s, found, particles).shape[-1] for l, s in zip(relaxed["z"], nodes))
        net = self._network(width + (x.shape[-1] if x is not None else 0), _device(args))
        tau = pyro.param(f"{NET}.log_temperature").exp()

        def c(logits: list[Tensor]) -> Tensor:  # (K, U)
            soft = [torch.sigmoid(l / tau) if kind == "bernoulli" else torch.softmax(l / tau, -1)
                    for l, (kind, _, _) in zip(logits, noise)]
            parts = [_features(p, s, found, particles).expand(K, lw.log_w.shape[1], -1) for p, s in zip(soft, nodes)]
            if x is not None:
                parts.append(x.expand(K, -1, -1))
            out = net(torch.cat(parts, -1))
            if self.rebar:
                f = self._relaxed_log_weight(model, guide, args, kwargs, found, guide_trace, dict(zip(sites, soft)), K)
                out = out + pyro.param(f"{NET}.eta") * f
            return out

        c_z, c_cond = c(relaxed["z"]), c(relaxed["z~"])
        pathwise = torch.autograd.grad((c_z - c_cond).sum(), leaves, create_graph=True)
        coefficient = lw.log_w.detach() - c_cond  # (K, U), f(b) - c(z~)
        pdim = -(found.max_plate_nesting + 1) if particles else None
        surrogate, variance = lw.pathwise.mean(0), 0.0
        for site, (kind, _, _), a, leaf, d in zip(nodes, noise, alphas, leaves, pathwise):
            g = self.site_gradient(at_site(coefficient, site, found, particles),
                                   _score_gradient(kind, leaf.detach(), site["value"]), d)
            event = tuple(range(-site["fn"].event_dim, 0))
            term, square = g.detach() * a, g ** 2
            if event:
                term, square = term.sum(event), square.sum(event)
            surrogate = surrogate + to_terms(term, pdim, found.data_dim).sum(0) / K
            variance = variance + to_terms(square, pdim, found.data_dim).sum(0) / K
        # the surrogate's params descend the variance; nothing else does (c depends on the model
        # through REBAR's term, and the model must not learn to lower the estimator's variance)
        own = [pyro.param(n) for n in self.state_names]
        grads = torch.autograd.grad(variance.sum(), own, allow_unused=True)
        penalty = sum((g.detach() * p).sum() for g, p in zip(grads, own) if g is not None)
        bound = lw.scale * lw.log_w.mean(0)
        return bound, lw.scale * (surrogate - penalty / surrogate.shape[-1])
