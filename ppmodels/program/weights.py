r"""Log weights with Pyro's semantics: a (model, guide) trace pair reduced to :class:`LogWeights`.

Each particle's log weight :math:`\log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k \mid x)`
(every model site, every guide site — a guide-side ``pyro.factor`` included — scaled and
masked as Pyro scales and masks them) is reduced to *terms*:

- one term per datapoint when the program's batch plate holds every sample site of the model
  and the guide (:class:`~ppmodels.program.facts.ProgramFacts` says which plate, and whether).
  Term values are per datapoint: the plate's subsampling scale :math:`N/B` is taken out and kept
  in :attr:`LogWeights.scale`, so multi-sample bounds can put it outside the log;
- otherwise the whole batch is one term (and ``scale`` is 1).

Score-function terms follow Pyro's ``Trace_ELBO``: at each non-reparameterized guide site the
(unscaled, unmasked) score function is multiplied by the detached sum of all log-weight terms
of the model, summed down to that site's own plates (``pyro.infer.util.MultiFrameTensor.sum_to``:
a site in a plate is Rao-Blackwellized over its siblings, and a site outside it sees every
term). Bounds are built from these tensors with no host synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.distributions.util import detach, is_identically_zero, scale_and_mask
from pyro.infer.util import MultiFrameTensor
from torch import Tensor

from ..utils import PPModelsError
from .facts import ProgramFacts, plate_scale, sample_sites, vectorized_frames

__all__ = ["LogWeights", "log_weights", "draw", "at_site", "terms", "to_terms", "downstream_costs", "log_mean_exp", "require_reparameterized"]


@dataclass
class LogWeights:
    r"""Per-particle log weights and estimator terms (see module docstring).

    Every tensor is (K, U), U the number of terms, and *per term*: the batch's value is
    ``scale`` times the sum over terms.

    ``log_w``: :math:`\log w_{ku}`; ``pathwise``: the same terms as Pyro's surrogate has them
    (the guide's log-density only at reparameterized sites, whose score function is zero);
    ``score``: the summed score functions :math:`\log q(z_{ku})` of non-reparameterized guide
    sites; ``rb``: :math:`\sum_{\text{sites}} \log q(z) \cdot \overline{\text{cost}}`, the
    Rao-Blackwellized score-function surrogate of Pyro's ``Trace_ELBO`` (cost detached);
    ``outside_score``: the score functions of the sites outside every plate. ``facts``: the
    program's facts (batch plate, nesting, global latents, ...).
    """

    log_w: Tensor
    pathwise: Tensor
    score: Tensor
    rb: Tensor
    scale: float
    has_score: bool
    facts: ProgramFacts
    outside_score: Tensor

    @property
    def per_datapoint(self) -> bool:
        return self.facts.per_datapoint

    @property
    def data_plate(self) -> str | None:
        return self.facts.data_plate

    @property
    def why_batch(self) -> str:
        return self.facts.why_batch

    @property
    def local(self) -> Tensor | None:
        return self.log_w if self.per_datapoint else None

    def total(self) -> Tensor:
        r""":math:`\log w_k` of the whole (scaled) batch, shape (K,)."""
        return self.scale * self.log_w.sum(-1)

    @staticmethod
    def cat(parts: list["LogWeights"]) -> "LogWeights":
        """Concatenate along the particle dimension."""
        first = parts[0]
        return LogWeights(
            log_w=torch.cat([p.log_w for p in parts]), pathwise=torch.cat([p.pathwise for p in parts]),
            score=torch.cat([p.score for p in parts]), rb=torch.cat([p.rb for p in parts]),
            scale=first.scale, has_score=any(p.has_score for p in parts), facts=first.facts,
            outside_score=torch.cat([p.outside_score for p in parts]),
        )


def to_terms(t: Tensor | float, pdim: int | None, ddim: int | None) -> Tensor:
    """Sum ``t`` over every dimension but the particle dimension ``pdim`` and the data
    dimension ``ddim`` (negative, from the right; None: absent). Returns (k, b) with k, b
    the sizes of those dims in ``t`` (1 where ``t`` lacks them)."""
    t = torch.as_tensor(t)
    keep = [d for d in (pdim, ddim) if d is not None and -t.dim() <= d]
    others = tuple(d for d in range(-t.dim(), 0) if d not in keep)
    if others:
        t = t.sum(others, keepdim=True)
    k = t.shape[pdim] if pdim is not None and -t.dim() <= pdim else 1
    b = t.shape[ddim] if ddim is not None and -t.dim() <= ddim else 1
    return t.reshape(k, b)


def _batch_scale(trace: poutine.Trace, plate: str) -> float:
    """The batch plate's subsampling scale in this trace (the subsample size may vary by call)."""
    for _, site in sample_sites(trace):
        for f in site["cond_indep_stack"]:
            if f.name == plate:
                return plate_scale(f)
    return 1.0


def log_weights(
    model_trace: poutine.Trace,
    guide_trace: poutine.Trace,
    facts: ProgramFacts,
    *,
    num_particles: int,
    detach_guide: bool = False,
    analytic_kl: bool = False,
    kl_weight: float | Tensor = 1.0,
) -> LogWeights:
    r"""Reduce a (model, guide) trace pair of the program described by ``facts`` to :class:`LogWeights`.

    ``num_particles``: the size of the traces' particle plate (1: no particle plate).
    ``detach_guide``: evaluate :math:`\log q_{\bar\phi}(z_k)` with the guide's distribution
    parameters detached (the gradient then reaches :math:`\phi` only through :math:`z_k`; STL
    and DReG). ``analytic_kl``: replace :math:`\log p(z) - \log q(z)` by
    :math:`-\mathrm{KL}(q \| p)` at reparameterized sites where the KL is registered.
    ``kl_weight`` β: the latent sites' :math:`\log p(z) - \log q(z)` terms (or -KL) weighted by
    β, for :math:`\mathbb E_q[\log p(x|z)] - \beta\,\mathrm{KL}` (β-VAE; a 0-d tensor may change
    between calls, also on a traced loss).
    """
    K = num_particles
    weighted = not (isinstance(kl_weight, (int, float)) and kl_weight == 1.0)

    def beta(term: Tensor, site: dict) -> Tensor:
        return term * kl_weight if weighted and not site["is_observed"] else term

    pdim = -(facts.max_plate_nesting + 1) if K > 1 else None
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    ddim = facts.data_dim
    scale = _batch_scale(model_trace, facts.data_plate) if facts.per_datapoint else 1.0

    kl_sites: dict[str, Tensor] = {}
    if analytic_kl:
        for name, gsite in sample_sites(guide_trace):
            msite = model_trace.nodes.get(name)
            if gsite["is_observed"] or msite is None or not gsite["fn"].has_rsample:
                continue
            try:
                kl = torch.distributions.kl_divergence(gsite["fn"], msite["fn"])
            except NotImplementedError:
                continue
            kl_sites[name] = scale_and_mask(kl, gsite["scale"], gsite["mask"])

    log_w = pathwise = score = rb = global_score = None
    has_score = False

    def acc(total: Tensor | None, term: Tensor) -> Tensor:
        return term if total is None else total + term

    for name, site in sample_sites(model_trace):
        term = -kl_sites[name] if name in kl_sites else site["log_prob"]
        term = to_terms(beta(term, site), pdim, ddim)
        log_w, pathwise = acc(log_w, term), acc(pathwise, term)
    log_r = None
    for name, site in sample_sites(guide_trace):
        if name in kl_sites:
            continue
        lp = site["log_prob"]
        if detach_guide and not site["is_observed"]:
            lp = scale_and_mask(detach(site["fn"]).log_prob(site["value"]), site["scale"], site["mask"])
        term = to_terms(beta(-lp, site), pdim, ddim)
        log_w = acc(log_w, term)
        sf = site["score_parts"].score_function
        if is_identically_zero(sf):
            pathwise = acc(pathwise, term)  # Pyro's entropy term: log q at reparameterized sites
            continue
        # a guide-side factor is observed: Pyro multiplies its (constant) score by the cost too
        has_score = has_score or not site["is_observed"] or bool(getattr(sf, "requires_grad", False))
        if log_r is None:
            log_r = downstream_costs(model_trace, guide_trace, kl_sites, beta)
        cost = log_r.sum_to(site["cond_indep_stack"])
        score = acc(score, to_terms(sf, pdim, ddim))
        if not vectorized_frames(site):
            global_score = acc(global_score, to_terms(sf, pdim, ddim))
        rb = acc(rb, to_terms(sf * cost, pdim, ddim))

    if log_w is None:
        raise PPModelsError("the model and guide have no sample sites")
    zero = log_w.new_zeros(())
    parts = [log_w, pathwise, score if score is not None else zero, rb if rb is not None else zero]
    U = max(p.shape[-1] for p in parts[:2] if p.dim() == 2)
    parts = [p.expand(K, U) for p in parts]
    if scale != 1.0:  # per datapoint: every term but the score function (never scaled) loses N/B
        parts = [p if i == 2 else p / scale for i, p in enumerate(parts)]
    outside_score = (global_score if global_score is not None else zero).expand(K, U)
    return LogWeights(*parts, scale=scale, has_score=has_score, facts=facts, outside_score=outside_score)


def downstream_costs(model_trace: poutine.Trace, guide_trace: poutine.Trace, kl_sites: dict[str, Tensor],
                     beta: Callable[[Tensor, dict], Tensor] = lambda t, site: t) -> MultiFrameTensor:
    r"""Pyro's downstream cost of ``Trace_ELBO`` (``_compute_log_r``): every model site's
    :math:`\log p - \log q` (detached), keyed by its plates; analytic-KL sites contribute -KL."""
    log_r = MultiFrameTensor()
    for name, site in sample_sites(model_trace):
        if name in kl_sites:
            term = -kl_sites[name]
        else:
            term = site["log_prob"]
            if not site["is_observed"] and name in guide_trace.nodes:
                term = term - guide_trace.nodes[name]["log_prob"]
        log_r.add((site["cond_indep_stack"], beta(term, site).detach()))
    return log_r


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    r""":math:`\log \frac1K \sum_k e^{x_k}` along ``dim``."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def terms(lw: LogWeights, objective) -> tuple[Tensor, Tensor, float]:
    r"""The independent terms a multi-sample bound is taken over: ``(log_w (K, U), score
    (K, U), scale)``, the bound being :math:`\text{scale}\sum_u f(\log w_{\cdot u})`.

    Per datapoint when the batch plate holds every site. Otherwise the whole batch is one
    term, which is said once as a warning (the bound is then not a sum over datapoints), and
    is an error under subsampling (a scaled batch inside the log is not a bound on log p(x)).
    """
    from .facts import warn_once

    facts = lw.facts
    if facts.inner_subsampled and lw.log_w.shape[0] > 1:
        raise PPModelsError(
            f"objective {objective.name!r}: plate {facts.inner_subsampled[0]!r} subsamples inside the batch plate "
            f"{facts.data_plate!r}, so its scale would sit inside the log; do not subsample it for a multi-sample bound"
        )
    if not facts.per_datapoint and lw.log_w.shape[0] > 1:  # one particle: every bound is the ELBO
        if facts.subsampled:
            raise PPModelsError(
                f"objective {objective.name!r}: the multi-sample bound needs per-datapoint terms under "
                f"subsampling, but {facts.why_batch}; train with 'elbo', or keep every site in the batch plate"
            )
        warn_once(facts, f"objective {objective.name!r}: the bound is taken over the whole batch as one term "
                         f"({facts.why_batch})")
    return lw.log_w, lw.score, lw.scale


def require_reparameterized(lw: LogWeights, objective: str, instead: str) -> None:
    if lw.has_score:
        raise PPModelsError(
            f"objective {objective!r} needs every guide latent to be reparameterizable, but the "
            f"guide has non-reparameterized (e.g. discrete) sites; use {instead} instead"
        )


def draw(model: Callable, guide: Callable, args: tuple, kwargs: dict, facts: ProgramFacts, *, num_particles: int,
         vectorize: bool = True, where: str = "program", reparameterized: bool = True,
         guide_handler: Callable[[], Messenger] | None = None, **options) -> tuple[LogWeights, list]:
    """Draw ``num_particles`` particles of the program described by ``facts``: their
    :class:`LogWeights` (``options`` go to :func:`log_weights`) and the (model, guide) trace
    pairs they came from (one pair when vectorized, one per particle otherwise).
    ``guide_handler`` makes a fresh :class:`Messenger` per pair (see :func:`run_pair`).

    A program's first vectorized draw is an :func:`~ppmodels.program.attempt`: if the model
    fails under the particle plate, nothing it did is kept, the program is marked as one that
    does not vectorize (said once, with the cost), and its particles run in a loop, now and from
    then on (Pyro's multi-particle ELBOs loop by default)."""
    from .attempt import attempt
    from .facts import mark_not_vectorizable, mark_vectorizes, vectorizes
    from .probe import run_pair

    def one(K: int) -> tuple[poutine.Trace, poutine.Trace]:
        handler = guide_handler() if guide_handler is not None else None
        return run_pair(model, guide, args, kwargs, num_particles=K, max_plate_nesting=facts.max_plate_nesting,
                        reparameterized=reparameterized, guide_handler=handler)

    K = num_particles
    if K > 1 and vectorize and vectorizes(facts) is not False:
        if vectorizes(facts):
            pair = one(K)
            return log_weights(*pair, facts, num_particles=K, **options), [pair]
        try:
            with attempt():
                pair = one(K)
                lw = log_weights(*pair, facts, num_particles=K, **options)
                if lw.log_w.shape[0] != K:
                    raise PPModelsError(f"the particle dimension has size {lw.log_w.shape[0]}, not {K}")
        except Exception as e:  # noqa: BLE001 - any failure under the plate means: loop
            mark_not_vectorizable(facts, where, e, K)
        else:
            mark_vectorizes(facts, True)
            return lw, [pair]
    pairs = [one(1) for _ in range(K)]
    parts = [log_weights(*pair, facts, num_particles=1, **options) for pair in pairs]
    return (parts[0] if len(parts) == 1 else LogWeights.cat(parts)), pairs


def at_site(w: Tensor, site: dict, facts: ProgramFacts, vectorized: bool) -> Tensor:
    """A per-term tensor ``w`` (k, U) laid out to broadcast against a site's value: k at the
    particle dimension (when ``vectorized``), U at the batch plate's dimension (when terms are
    per datapoint), ones at the site's event dimensions."""
    ndim = facts.max_plate_nesting + 1
    shape = [1] * ndim
    if vectorized:
        shape[0] = w.shape[0]
    if facts.per_datapoint:
        frame = next(f for f in site["cond_indep_stack"] if f.name == facts.data_plate)
        shape[ndim + frame.dim] = w.shape[1]
    factor = w.reshape(shape) if vectorized else w.reshape(shape[1:])
    event_dim = site["fn"].event_dim
    batch_dims = site["value"].dim() - event_dim
    return factor.reshape(factor.shape[factor.dim() - batch_dims :] + (1,) * event_dim)
