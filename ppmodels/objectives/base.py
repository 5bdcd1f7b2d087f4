r"""The mechanism every objective is built on: vectorized particle traces and log weights.

For a model :math:`p_\theta(x, z)` and a guide :math:`q_\phi(z \mid x)`, the guide is run once
under a ``num_particles`` plate (dimension ``-(max_plate_nesting + 1)``), the model is replayed
against it, and each particle's log weight

.. math:: \log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k \mid x)

is split into a *local* part, one entry per datapoint of the ``"data"`` plate (shape ``(K, B)``,
without the plate's subsampling scale ``N/B``), and a *global* part for the sites outside the
plate (shape ``(K,)``, fully scaled). Bounds are built from these tensors with no host
synchronisation.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import detach, is_identically_zero, scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from ..tracing import forked_rng
from ..utils import PPModelsError

__all__ = ["Objective", "LogWeights", "log_weights", "particle_traces", "guess_max_plate_nesting", "trace_numel"]

PARTICLE_PLATE = "num_particles"


@dataclass
class LogWeights:
    """Per-particle log weights split by the data plate (see module docstring).

    ``local``: (K, B) or None when the model has no data plate; ``global_``: (K,);
    ``scale``: N / B of the data plate; ``local_score`` / ``global_score``: the summed
    score functions :math:`\log q(z_k)` of non-reparameterized guide sites (zero if none);
    ``global_latents``: names of guide latents outside the data plate.
    """

    local: Tensor | None
    global_: Tensor
    scale: float
    local_score: Tensor | None
    global_score: Tensor
    global_latents: tuple[str, ...]
    has_score: bool

    def total(self) -> Tensor:
        """:math:`\log w_k` of the whole (scaled) batch, shape (K,)."""
        if self.local is None:
            return self.global_
        return self.global_ + self.scale * self.local.sum(-1)

    @staticmethod
    def cat(parts: list["LogWeights"]) -> "LogWeights":
        """Concatenate along the particle dimension."""
        def cat(xs: list[Tensor | None]) -> Tensor | None:
            return None if xs[0] is None else torch.cat(xs, 0)

        first = parts[0]
        return LogWeights(
            local=cat([p.local for p in parts]),
            global_=cat([p.global_ for p in parts]),
            scale=first.scale,
            local_score=cat([p.local_score for p in parts]),
            global_score=cat([p.global_score for p in parts]),
            global_latents=first.global_latents,
            has_score=any(p.has_score for p in parts),
        )

    def total_score(self) -> Tensor:
        if self.local_score is None:
            return self.global_score
        return self.global_score + self.local_score.sum(-1)


def guess_max_plate_nesting(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
    """Run the pair once, without particles, and read the deepest plate dimension.
    The RNG state is restored afterwards, so guessing does not shift the random stream."""
    with forked_rng(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [
        -frame.dim
        for trace in (model_trace, guide_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def particle_traces(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    max_plate_nesting: int,
    reparameterized: bool = True,
    guide_handler: Messenger | None = None,
) -> tuple[poutine.Trace, poutine.Trace]:
    """Guide and model traces with a leading particle dimension ``-(max_plate_nesting+1)``.
    ``reparameterized=False`` draws every guide latent as if it had no ``rsample``;
    ``guide_handler`` wraps the guide outside the particle plate and inside the trace (it sees
    each site's particle-shaped distribution, and what it writes to the message is recorded).
    """
    plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1))
    guide = plate(guide) if reparameterized else _ScoreFunction()(plate(guide))  # outside the broadcast
    if guide_handler is not None:
        guide = guide_handler(guide)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(plate(model), trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def trace_numel(*traces: poutine.Trace) -> int:
    """Numbers held by the traces' sample sites: values and distribution parameters (a proxy
    for the memory a pass over them needs)."""
    numel = 0
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "sample":
                fn = site["fn"]
                numel += site["value"].numel() + math.prod(fn.batch_shape + fn.event_shape)
    return numel


def _data_frame(site: dict, data_plate: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate:
            return frame
    return None


def _reduce(t: Tensor, ndim: int, data_dim: int | None, K: int, B: int | None) -> Tensor:
    """Sum ``t`` (right-aligned to ``ndim`` dims, particle dim first) over every dim but the
    particle dim and the data dim; broadcast to (K, B) or (K,)."""
    if not torch.is_tensor(t):
        t = torch.as_tensor(t)
    t = t.reshape((1,) * (ndim - t.dim()) + tuple(t.shape)) if t.dim() < ndim else t
    if t.dim() > ndim:
        raise PPModelsError(
            f"a site's log-probability has shape {tuple(t.shape)}, more batch dims than "
            f"max_plate_nesting={ndim - 1} allows; declare every batch dim with pyro.plate"
        )
    if data_dim is None:
        return t.sum(tuple(range(1, ndim))).expand(K) if ndim > 1 else t.expand(K)
    keep = ndim + data_dim
    others = tuple(d for d in range(1, ndim) if d != keep)
    t = t.sum(others, keepdim=True) if others else t
    return t.reshape(t.shape[0], t.shape[keep]).expand(K, B)


def log_weights(
    model_trace: poutine.Trace,
    guide_trace: poutine.Trace,
    *,
    num_particles: int,
    max_plate_nesting: int,
    data_plate: str = "data",
    detach_guide: bool = False,
    analytic_kl: bool = False,
) -> LogWeights:
    r"""Split :math:`\log p(x, z_k) - \log q(z_k)` into local (K, B) and global (K,) parts.

    ``detach_guide``: evaluate :math:`\log q_{\bar\phi}(z_k)` with the guide's distribution
    parameters detached (the gradient then reaches :math:`\phi` only through :math:`z_k`; STL
    and DReG). ``analytic_kl``: replace :math:`\log p(z) - \log q(z)` by
    :math:`-\mathrm{KL}(q \| p)` at reparameterized sites where the KL is registered.
    """
    K, ndim = num_particles, max_plate_nesting + 1
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    B: int | None = None
    scale = 1.0
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                frame = _data_frame(site, data_plate)
                if frame is not None:
                    B = frame.size
                    scale = (frame.full_size or frame.size) / frame.size
                    break
        if B is not None:
            break

    device = next(
        (s["log_prob"].device for s in model_trace.nodes.values() if s["type"] == "sample"),
        torch.device("cpu"),
    )
    zero = torch.zeros((), device=device)
    local = zero if B is not None else None
    global_ = zero
    local_score = zero if B is not None else None
    global_score = zero
    global_latents: list[str] = []
    has_score = False

    def add(site: dict, value: Tensor, score: Tensor | None = None) -> None:
        """Add a site's (already scaled and masked) term; local terms lose the plate's N/B."""
        nonlocal local, global_, local_score, global_score
        frame = _data_frame(site, data_plate)
        if frame is not None:
            local = local + _reduce(value / scale, ndim, frame.dim, K, B)
            if score is not None:
                local_score = local_score + _reduce(score / scale, ndim, frame.dim, K, B)
        else:
            global_ = global_ + _reduce(value, ndim, None, K, None)
            if score is not None:
                global_score = global_score + _reduce(score, ndim, None, K, None)

    kl_sites: set[str] = set()
    if analytic_kl:
        for name, gsite in guide_trace.nodes.items():
            if gsite["type"] != "sample" or gsite["is_observed"] or name not in model_trace.nodes:
                continue
            if not gsite["fn"].has_rsample:
                continue
            try:
                kl = torch.distributions.kl_divergence(gsite["fn"], model_trace.nodes[name]["fn"])
            except NotImplementedError:
                continue
            add(gsite, -scale_and_mask(kl, gsite["scale"], gsite["mask"]))
            kl_sites.add(name)

    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and name not in kl_sites:
            add(site, site["log_prob"])
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name in kl_sites:
            continue
        if _data_frame(site, data_plate) is None:
            global_latents.append(name)
        lp = site["log_prob"]
        if detach_guide:
            lp = scale_and_mask(detach(site["fn"]).log_prob(site["value"]), site["scale"], site["mask"])
        # Pyro leaves the score function unmasked (its expectation is zero where the site's value
        # is unused); masking it drops that pure noise, e.g. for labels observed in some rows.
        score = scale_and_mask(site["score_parts"].score_function, 1.0, site["mask"])
        if is_identically_zero(score):
            add(site, -lp)
        else:
            has_score = True
            add(site, -lp, score)

    if local is not None:
        local = local.expand(K, B)
        local_score = local_score.expand(K, B)
    return LogWeights(
        local=local,
        global_=global_.expand(K),
        scale=scale,
        local_score=local_score,
        global_score=global_score.expand(K),
        global_latents=tuple(global_latents),
        has_score=has_score,
    )


class Objective:
    """A variational objective: a bound on :math:`\log p(x)` and a gradient estimator for it.

    ``loss(model, guide, *args)`` returns minus the bound estimate as a float;
    ``differentiable_loss(model, guide, *args)`` returns a scalar tensor whose value is minus
    the bound estimate and whose autograd gradient is the estimator of minus the bound's
    gradient.
    """

    name: str = "objective"
    #: whether ``surrogate_units`` returns one unit per datapoint (False: one unit per batch)
    per_unit: bool = True
    #: whether ``torch.jit.trace`` may record one call (no gradient hooks, no state between calls)
    jit_safe: bool = False

    def __init__(
        self,
        num_particles: int = 1,
        *,
        vectorize_particles: bool = True,
        max_plate_nesting: int | None = None,
        data_plate: str = "data",
        reparameterized: bool = True,
    ) -> None:
        if not isinstance(num_particles, int) or num_particles < 1:
            raise PPModelsError(
                f"objective {self.name!r}: num_particles must be an integer >= 1, got {num_particles!r}"
            )
        self.num_particles = num_particles
        self.vectorize_particles = vectorize_particles
        self.max_plate_nesting = max_plate_nesting
        self.data_plate = data_plate
        self.reparameterized = reparameterized

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def options(self) -> dict[str, Any]:
        """The options this objective was made with (for tables and checkpoints)."""
        out: dict[str, Any] = {"num_particles": self.num_particles}
        if not self.reparameterized:
            out["reparameterized"] = False
        return out

    @property
    def bound(self) -> tuple:
        """Which bound this estimator's expectation is the gradient of: ``("elbo",)`` for every
        ELBO estimator (any K), ``("renyi", alpha, K)`` for multi-sample bounds (IWAE: α = 0).
        Two estimators are comparable when their bounds are equal."""
        return ("elbo",)

    @property
    def label(self) -> str:
        """The name, with the options that tell it apart (not the particle count): e.g.
        ``reinforce[baseline=neural]``, ``elbo[reparameterized=False]``."""
        extra = {k: v for k, v in self.options().items() if k != "num_particles"}
        defaults = {}
        for klass in type(self).__mro__:
            init = vars(klass).get("__init__")
            if init is not None:
                for n, p in inspect.signature(init).parameters.items():
                    if p.default is not inspect.Parameter.empty:
                        defaults.setdefault(n, p.default)
        extra = {k: v for k, v in extra.items() if defaults.get(k, object()) != v}
        return self.name + (f"[{','.join(f'{k}={v}' for k, v in extra.items())}]" if extra else "")

    # -- the shared machinery -------------------------------------------------------------
    def _plate_nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
        if self.max_plate_nesting is None:
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        return self.max_plate_nesting

    def draw(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, *,
        detach_guide: bool = False, analytic_kl: bool = False,
        guide_handler: Callable[[], Messenger] | None = None,
    ) -> tuple[LogWeights, list[tuple[poutine.Trace, poutine.Trace]]]:
        """Draw ``num_particles`` particles: their :class:`LogWeights` and the (model, guide)
        trace pairs they came from (one pair when vectorized, one per particle otherwise).
        ``guide_handler`` makes a fresh :class:`Messenger` per pair (see :func:`particle_traces`)."""
        mpn = self._plate_nesting(model, guide, args, kwargs)
        opts = dict(max_plate_nesting=mpn, data_plate=self.data_plate, detach_guide=detach_guide,
                    analytic_kl=analytic_kl)
        K = self.num_particles if self.vectorize_particles else 1
        pairs = [
            particle_traces(model, guide, args, kwargs, K, mpn, reparameterized=self.reparameterized,
                            guide_handler=guide_handler() if guide_handler is not None else None)
            for _ in range(1 if self.vectorize_particles else self.num_particles)
        ]
        parts = [log_weights(*pair, num_particles=K, **opts) for pair in pairs]
        return (parts[0] if len(parts) == 1 else LogWeights.cat(parts)), pairs

    def log_weights(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> LogWeights:
        """Draw ``num_particles`` particles and return their :class:`LogWeights`."""
        return self.draw(model, guide, args, kwargs)[0]

    # -- the interface ----------------------------------------------------------------------
    def surrogate_units(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(bound, surrogate)`` per independent unit, shape (U,): one per datapoint when every
        latent is local to the data plate, else U = 1. Their sums are the bound estimate and a
        tensor whose gradient is the estimator; unit u's gradient is that unit's own estimate."""
        raise NotImplementedError

    def surrogate(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(bound, surrogate)``: the bound estimate and a scalar with the estimator's gradient."""
        bound, surrogate = self.surrogate_units(model, guide, *args, **kwargs)
        return bound.sum(), surrogate.sum()

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        bound, surrogate = self.surrogate(model, guide, *args, **kwargs)
        return -(bound.detach() + surrogate - surrogate.detach())

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            bound, _ = self.surrogate(model, guide, *args, **kwargs)
        return -float(bound)


class _ScoreFunction(Messenger):
    """Draw every guide latent without reparameterization (score-function estimators)."""

    def _pyro_sample(self, msg: dict) -> None:
        if not msg["is_observed"] and getattr(msg["fn"], "has_rsample", False):
            fn = msg["fn"]
            while hasattr(fn, "base_dist"):  # Independent, Expanded, Masked: the flag lives below
                fn = fn.base_dist
            fn.has_rsample_(False)


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    r""":math:`\log \frac1K \sum_k e^{x_k}` along ``dim``."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def units(lw: LogWeights, objective: str) -> tuple[Tensor, Tensor, float, Tensor]:
    r"""The independent units a multi-sample bound is taken over.

    When every guide latent lives in the data plate, each datapoint is a unit:
    ``(log_w (K, B), score (K, B), N/B, offset)`` with the bound
    :math:`\frac{N}{B}\sum_b f(\log w_{\cdot b}) + \text{offset}`, the offset being the
    (latent-free) global terms. With global latents the whole batch is one unit; that bound
    is not defined under subsampling, which is an error.
    """
    if lw.local is not None and not lw.global_latents:
        return lw.local, lw.local_score, lw.scale, lw.global_.mean(0)
    if lw.scale != 1.0:
        raise PPModelsError(
            f"objective {objective!r}: the model has global latent sites {list(lw.global_latents)} "
            "outside the data plate, so the multi-sample bound is taken over the whole batch, "
            "which is not defined under subsampling; train on full batches, or use 'elbo'"
        )
    return lw.total()[:, None], lw.total_score()[:, None], 1.0, torch.zeros((), device=lw.global_.device)


def require_reparameterized(lw: LogWeights, objective: str, instead: str) -> None:
    if lw.has_score:
        raise PPModelsError(
            f"objective {objective!r} needs every guide latent to be reparameterizable, but the "
            f"guide has non-reparameterized (e.g. discrete) sites; use {instead} instead"
        )
