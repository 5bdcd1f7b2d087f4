r"""The mechanism every objective is built on: particle traces and log weights, with Pyro's semantics.

For a model :math:`p_\theta(x, z)` and a guide :math:`q_\phi(z \mid x)`, the guide is run and
the model replayed against it (Pyro's ``get_importance_trace``), once under a particle plate
of K particles at dimension ``-(max_plate_nesting + 1)`` when K > 1 and particles are
vectorized, or K times with no particle plate (``vectorize_particles=False``, and always at
K = 1: a model written for one sample runs exactly as under Pyro's ``Trace_ELBO``).

Each particle's log weight :math:`\log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k \mid x)`
(every model site, every guide site — a guide-side ``pyro.factor`` included — scaled and
masked as Pyro scales and masks them) is reduced to *units*:

- one unit per datapoint when a *batch plate* holds every sample site of the model and the
  guide. The plate is found, not assumed by name (:func:`find_data_plate`): the vectorized
  plate around the observations that holds the most sites, subsampled plates first; or named
  by ``data_plate=``. Unit values are per datapoint: the plate's subsampling scale
  :math:`N/B` is taken out and kept in :attr:`LogWeights.scale`, so multi-sample bounds can
  put it outside the log;
- otherwise the whole batch is one unit (and ``scale`` is 1).

Score-function terms follow Pyro's ``Trace_ELBO``: at each non-reparameterized guide site the
(unscaled, unmasked) score function is multiplied by the detached sum of all log-weight terms
of the model, summed down to that site's own plates (``MultiFrameTensor.sum_to``: a site in
a plate is Rao-Blackwellized over its siblings, and a site outside it sees every term — a
global observation that depends on every local latent included). Bounds are built from these
tensors with no host synchronisation.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions import Delta
from pyro.distributions.util import detach, is_identically_zero, scale_and_mask
from pyro.infer.elbo import ELBO
from pyro.infer.util import MultiFrameTensor
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from ..tracing import forked_rng
from ..utils import PPModelsError, first_line

__all__ = ["Objective", "LogWeights", "log_weights", "particle_traces", "guess_max_plate_nesting", "trace_numel",
           "find_data_plate", "check_model_guide", "PARTICLE_PLATE"]

#: The particle plate's name: unlikely to clash with a user's plate (Pyro's own is
#: ``num_particles_vectorized``).
PARTICLE_PLATE = "_ppmodels_particles"


@dataclass
class LogWeights:
    r"""Per-particle log weights and estimator terms, reduced to units (see module docstring).

    Every tensor is (K, U), U the number of units, and *per unit*: the batch's value is
    ``scale`` times the sum over units.

    ``log_w``: :math:`\log w_{ku}`; ``pathwise``: the same terms as Pyro's surrogate has them
    (the guide's log-density only at reparameterized sites, whose score function is zero);
    ``score``: the summed score functions :math:`\log q(z_{ku})` of non-reparameterized guide
    sites; ``rb``: :math:`\sum_{\text{sites}} \log q(z) \cdot \overline{\text{cost}}`, the
    Rao-Blackwellized score-function surrogate of Pyro's ``Trace_ELBO`` (cost detached).
    ``data_plate``: the batch plate's name (None if none was found); ``per_datapoint``:
    whether units are its datapoints; ``why_batch``: why they are not.
    """

    log_w: Tensor
    pathwise: Tensor
    score: Tensor
    rb: Tensor
    scale: float
    has_score: bool
    global_latents: tuple[str, ...]
    data_plate: str | None
    per_datapoint: bool
    why_batch: str = ""
    subsampled: bool = False
    inner_subsampled: tuple[str, ...] = ()  # subsampled plates inside the batch plate
    outside_score: Tensor | None = None  # the score functions of sites outside every plate

    # the old field names, for readers of the per-datapoint layout
    @property
    def local(self) -> Tensor | None:
        return self.log_w if self.per_datapoint else None

    def total(self) -> Tensor:
        r""":math:`\log w_k` of the whole (scaled) batch, shape (K,)."""
        return self.scale * self.log_w.sum(-1)

    def total_score(self) -> Tensor:
        return self.score.sum(-1)

    @staticmethod
    def cat(parts: list["LogWeights"]) -> "LogWeights":
        """Concatenate along the particle dimension."""
        first = parts[0]
        return LogWeights(
            log_w=torch.cat([p.log_w for p in parts]),
            pathwise=torch.cat([p.pathwise for p in parts]),
            score=torch.cat([p.score for p in parts]),
            rb=torch.cat([p.rb for p in parts]),
            scale=first.scale,
            has_score=any(p.has_score for p in parts),
            global_latents=first.global_latents,
            data_plate=first.data_plate,
            per_datapoint=first.per_datapoint,
            why_batch=first.why_batch,
            subsampled=first.subsampled,
            inner_subsampled=first.inner_subsampled,
            outside_score=None if first.outside_score is None else torch.cat([p.outside_score for p in parts]),
        )


def _sample_sites(*traces: poutine.Trace):
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] == "sample":
                yield name, site


def _vectorized_frames(site: dict) -> list:
    return [f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE]


def guess_max_plate_nesting(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
    """Run the pair once, without particles, and read the deepest plate dimension.
    The RNG state is restored afterwards, so guessing does not shift the random stream."""
    with forked_rng(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return _deepest_plate(model_trace, guide_trace)


def _deepest_plate(model_trace: poutine.Trace, guide_trace: poutine.Trace) -> int:
    dims = [-f.dim for _, site in _sample_sites(model_trace, guide_trace) for f in _vectorized_frames(site)]
    return max(dims, default=0)


def check_model_guide(model_trace: poutine.Trace, guide_trace: poutine.Trace, *, where: str,
                      allow_model_only: bool = False) -> None:
    """Pyro's model/guide structure checks (``pyro.util.check_model_guide_match``), as short
    errors naming the site: every guide latent is in the model (or marked
    ``is_auxiliary``), every model latent is in the guide (or enumerated in the model, or
    ``allow_model_only``), and the two agree on each shared site's shape."""
    guide_latents = {n for n, s in _sample_sites(guide_trace)
                     if not s["is_observed"] and type(s["fn"]).__name__ != "_Subsample"}
    aux = {n for n in guide_latents if guide_trace.nodes[n]["infer"].get("is_auxiliary")}
    model_latents = {n for n, s in _sample_sites(model_trace)
                     if not s["is_observed"] and type(s["fn"]).__name__ != "_Subsample"}
    enumerated = {n for n in model_latents if allow_model_only and model_trace.nodes[n]["infer"].get("enumerate")}
    extra = sorted(guide_latents - model_latents - aux)
    if extra:
        raise PPModelsError(
            f"{where}: guide site {extra[0]!r} is not in the model; add it to the model, or mark it "
            "infer={'is_auxiliary': True}"
        )
    missing = sorted(model_latents - guide_latents - enumerated)
    if missing:
        raise PPModelsError(
            f"{where}: model latent {missing[0]!r} is not sampled by the guide; sample it in the guide, "
            "or enumerate it in the model (infer={'enumerate': 'parallel'}) and use objective 'enum'"
        )
    for name in sorted(model_latents & guide_latents):
        m, g = model_trace.nodes[name], guide_trace.nodes[name]
        g_shape = tuple(g["value"].shape)
        m_event, g_event = getattr(m["fn"], "event_dim", None), getattr(g["fn"], "event_dim", None)
        if m_event is not None and g_event is not None and m_event != g_event:
            raise PPModelsError(
                f"{where}: site {name!r} has event_dim {m_event} in the model but {g_event} in the guide; "
                "use the same .to_event(...) on both sides"
            )
        m_batch = tuple(m["fn"].batch_shape)
        try:
            torch.broadcast_shapes(m_batch + tuple(m["fn"].event_shape), g_shape)
        except RuntimeError:
            raise PPModelsError(
                f"{where}: site {name!r} has shape {g_shape} in the guide but the model's distribution "
                f"has shape {m_batch + tuple(m['fn'].event_shape)}; make the guide sample the model's shape"
            ) from None


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
    """Guide and model traces (subsample sites pruned), with a particle plate at dimension
    ``-(max_plate_nesting+1)`` when ``num_particles > 1`` and none at 1.
    ``reparameterized=False`` draws every guide latent as if it had no ``rsample``;
    ``guide_handler`` wraps the guide outside the particle plate and inside the trace (it sees
    each site's particle-shaped distribution, and what it writes to the message is recorded).
    """
    if num_particles > 1:
        plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1))
        model, guide = plate(model), plate(guide)
    if not reparameterized:
        guide = _ScoreFunction()(guide)  # outside the particle broadcast
    if guide_handler is not None:
        guide = guide_handler(guide)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def trace_numel(*traces: poutine.Trace) -> int:
    """Numbers held by the traces' sample sites: values and distribution parameters (a proxy
    for the memory a pass over them needs)."""
    numel = 0
    for _, site in _sample_sites(*traces):
        fn = site["fn"]
        numel += site["value"].numel() + math.prod(fn.batch_shape + fn.event_shape)
    return numel


def find_data_plate(model_trace: poutine.Trace, guide_trace: poutine.Trace, name: str | None = None):
    """The batch plate's frame, or None.

    ``name`` given: the vectorized plate of that name (an error if the traces have none).
    Otherwise: among the vectorized plates around at least one observed model site, the
    subsampled ones if any; of those, the plate holding the most sample sites (model and
    guide), ties going to the outermost."""
    frames: dict[str, Any] = {}
    counts: dict[str, int] = {}
    depth: dict[str, int] = {}
    observed: set[str] = set()
    for trace, is_model in ((model_trace, True), (guide_trace, False)):
        for _, site in _sample_sites(trace):
            for i, f in enumerate(_vectorized_frames(site)):
                frames.setdefault(f.name, f)
                counts[f.name] = counts.get(f.name, 0) + 1
                depth[f.name] = min(depth.get(f.name, i), i)
                if is_model and site["is_observed"]:
                    observed.add(f.name)
    if name is not None:
        if name not in frames:
            raise PPModelsError(
                f"data_plate={name!r}: the model and guide have no vectorized plate of that name "
                f"(plates: {sorted(frames) or 'none'}); pass one of them, or None to find it"
            )
        return frames[name]
    candidates = sorted(observed)
    if not candidates:
        return None
    most = max(counts[n] for n in candidates)
    pool = [n for n in candidates if counts[n] == most]  # the plates holding the most sites
    if len(pool) > 1:
        pool = [n for n in pool if _plate_scale(frames[n]) != 1.0] or pool  # a subsampled one is the batch
    if len(pool) > 1 and "data" in pool:
        pool = ["data"]  # Pyro's convention
    if len(pool) > 1:
        raise AmbiguousPlate(pool)
    return frames[pool[0]]


class AmbiguousPlate(PPModelsError):
    """Several plates could be the batch plate; ``data_plate=`` must say which."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        super().__init__(f"plates {names} each hold every site; name the batch plate with data_plate=...")


def _plate_scale(frame) -> float:
    size, full = frame.size, getattr(frame, "full_size", None)
    if full is None or size is None or size <= 0 or full <= 0:
        return 1.0
    return full / size


def _units(t: Tensor | float, pdim: int | None, ddim: int | None) -> Tensor:
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


def log_weights(
    model_trace: poutine.Trace,
    guide_trace: poutine.Trace,
    *,
    num_particles: int,
    max_plate_nesting: int,
    data_plate: str | None = None,
    detach_guide: bool = False,
    analytic_kl: bool = False,
    kl_weight: float | Tensor = 1.0,
) -> LogWeights:
    r"""Reduce a (model, guide) trace pair to :class:`LogWeights`.

    ``num_particles``: the size of the traces' particle plate (1: no particle plate).
    ``data_plate``: the batch plate's name (None: :func:`find_data_plate`).
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

    pdim = -(max_plate_nesting + 1) if K > 1 else None
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()

    try:
        frame = find_data_plate(model_trace, guide_trace, data_plate)
        ambiguous = ""
    except AmbiguousPlate as e:  # not an error for the ELBO: no unit is per datapoint
        frame, ambiguous = None, str(e)
    outside = sorted({n for n, s in _sample_sites(model_trace, guide_trace)
                      if frame is None or frame.name not in {f.name for f in _vectorized_frames(s)}})
    global_latents = tuple(n for n, s in guide_trace.nodes.items()
                           if s["type"] == "sample" and not s["is_observed"] and not _vectorized_frames(s))
    per_datapoint = frame is not None and not outside
    outside_latents = [n for n in outside if n in guide_trace.nodes and not guide_trace.nodes[n]["is_observed"]]
    inner = [f.name for _, st in _sample_sites(model_trace, guide_trace) for f in st["cond_indep_stack"]
             if per_datapoint and f.name not in (frame.name, PARTICLE_PLATE) and _plate_scale(f) != 1.0]
    why = "" if per_datapoint else (
        ambiguous if ambiguous
        else "no vectorized plate holds the observations (name one with data_plate=...)" if frame is None
        else f"global latents {outside_latents[:3]} lie outside the batch plate {frame.name!r}" if outside_latents
        else f"sites {outside[:3]} lie outside the batch plate {frame.name!r}")
    ddim = frame.dim if per_datapoint else None
    subsampled = any(_plate_scale(f) != 1.0 for _, s in _sample_sites(model_trace, guide_trace)
                     for f in s["cond_indep_stack"] if f.name != PARTICLE_PLATE)
    scale = _plate_scale(frame) if per_datapoint else 1.0

    kl_sites: dict[str, Tensor] = {}
    if analytic_kl:
        for name, gsite in _sample_sites(guide_trace):
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

    for name, site in _sample_sites(model_trace):
        if name in kl_sites:
            term = _units(beta(-kl_sites[name], site), pdim, ddim)
            log_w, pathwise = acc(log_w, term), acc(pathwise, term)
            continue
        term = _units(beta(site["log_prob"], site), pdim, ddim)
        log_w, pathwise = acc(log_w, term), acc(pathwise, term)
    log_r = None
    for name, site in _sample_sites(guide_trace):
        if name in kl_sites:
            continue
        lp = site["log_prob"]
        if detach_guide and not site["is_observed"]:
            lp = scale_and_mask(detach(site["fn"]).log_prob(site["value"]), site["scale"], site["mask"])
        term = _units(beta(-lp, site), pdim, ddim)
        log_w = acc(log_w, term)
        sf = site["score_parts"].score_function
        if is_identically_zero(sf):
            pathwise = acc(pathwise, term)  # Pyro's entropy term: log q at reparameterized sites
            continue
        # a guide-side factor is observed: Pyro multiplies its (constant) score by the cost too
        has_score = has_score or not site["is_observed"] or bool(getattr(sf, "requires_grad", False))
        if log_r is None:
            log_r = _log_r(model_trace, guide_trace, kl_sites, beta)
        cost = log_r.sum_to(site["cond_indep_stack"])
        score = acc(score, _units(sf, pdim, ddim))
        if not _vectorized_frames(site):
            global_score = acc(global_score, _units(sf, pdim, ddim))
        rb = acc(rb, _units(sf * cost, pdim, ddim))

    if log_w is None:
        raise PPModelsError("the model and guide have no sample sites")
    zero = log_w.new_zeros(())
    parts = [log_w, pathwise, score if score is not None else zero, rb if rb is not None else zero]
    U = max(p.shape[-1] for p in parts[:2] if p.dim() == 2)
    parts = [p.expand(K, U) for p in parts]
    if scale != 1.0:  # per datapoint: every term but the score function (never scaled) loses N/B
        parts = [p if i == 2 else p / scale for i, p in enumerate(parts)]
    outside_score = (global_score if global_score is not None else zero).expand(K, U)
    return LogWeights(*parts, scale=scale, has_score=has_score, global_latents=global_latents,
                      data_plate=frame.name if frame is not None else None, per_datapoint=per_datapoint,
                      why_batch=why, subsampled=subsampled, inner_subsampled=tuple(sorted(set(inner))),
                      outside_score=outside_score)


def _log_r(model_trace: poutine.Trace, guide_trace: poutine.Trace, kl_sites: dict[str, Tensor],
           beta: Callable[[Tensor, dict], Tensor] = lambda t, site: t) -> MultiFrameTensor:
    """Pyro's downstream cost of ``Trace_ELBO`` (``_compute_log_r``): every model site's
    :math:`\log p - \log q` (detached), keyed by its plates; analytic-KL sites contribute -KL."""
    log_r = MultiFrameTensor()
    for name, site in _sample_sites(model_trace):
        if name in kl_sites:
            term = -kl_sites[name]
        else:
            term = site["log_prob"]
            if not site["is_observed"] and name in guide_trace.nodes:
                term = term - guide_trace.nodes[name]["log_prob"]
        log_r.add((site["cond_indep_stack"], beta(term, site).detach()))
    return log_r


def _identity(fn: Callable) -> tuple:
    """A key for a model or guide that outlives the call: a bound method is made anew at each
    attribute access, so it is keyed by its object and function."""
    owner = getattr(fn, "__self__", None)
    return (id(owner), getattr(fn, "__func__", fn)) if owner is not None else (None, fn)


class Objective(ELBO):
    r"""A variational objective: a bound on :math:`\log p(x)` and a gradient estimator for it.

    Every objective is a ``pyro.infer.ELBO``, so it is a ``loss=`` for ``pyro.infer.SVI``
    (``ELBO.__init__`` is not run: its options are this class's own). ``loss(model, guide, *args)`` returns minus the bound
    estimate as a float; ``differentiable_loss(model, guide, *args)`` a scalar tensor whose
    value is minus the bound estimate and whose autograd gradient is the estimator of minus
    the bound's gradient; ``loss_and_grads`` runs its backward pass.

    Options shared by every objective: ``num_particles`` (K); ``vectorize_particles`` (K > 1
    particles in one pass under a particle plate, the default, or a loop of K passes for
    models that are not broadcast-safe); ``max_plate_nesting`` (guessed when None);
    ``data_plate`` (the batch plate's name; None: found, see :func:`find_data_plate`);
    ``reparameterized=False`` (draw every latent by the score function).
    """

    name: str = "objective"
    #: whether ``surrogate_units`` may return one unit per datapoint (False: always one unit)
    per_unit: bool = True
    #: whether ``torch.jit.trace`` may record one call (no gradient hooks, no state between calls)
    jit_safe: bool = False
    #: whether the objective enumerates model-only latents (so they need no guide site)
    enumerates: bool = False

    def __init__(
        self,
        num_particles: int = 1,
        *,
        vectorize_particles: bool = True,
        max_plate_nesting: int | None = None,
        data_plate: str | None = None,
        reparameterized: bool = True,
    ) -> None:
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise PPModelsError(
                f"objective {self.name!r}: num_particles must be an integer >= 1, got {num_particles!r}"
            )
        self.num_particles = num_particles
        self.vectorize_particles = vectorize_particles
        self.max_plate_nesting = max_plate_nesting
        self._given_nesting = max_plate_nesting  # the guess fills max_plate_nesting; copies take this
        self.data_plate = data_plate
        self.reparameterized = reparameterized
        self._checked: set[tuple] = set()
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def options(self) -> dict[str, Any]:
        """The options this objective was made with (for tables and checkpoints): every
        option that differs from its default, and ``num_particles``."""
        out: dict[str, Any] = {"num_particles": self.num_particles}
        if not self.reparameterized:
            out["reparameterized"] = False
        if not self.vectorize_particles:
            out["vectorize_particles"] = False
        if self.data_plate is not None:
            out["data_plate"] = self.data_plate
        return out

    def with_particles(self, num_particles: int) -> "Objective":
        """A copy of this objective with another particle count (every other option kept)."""
        return self._remade({**self.options(), "num_particles": num_particles})

    def _remade(self, options: dict[str, Any]) -> "Objective":
        """A new objective of this type made with ``options`` and the ``max_plate_nesting`` this
        one was given (not a guessed one: that belongs to the program it was guessed on)."""
        if self._given_nesting is not None:
            options = {"max_plate_nesting": self._given_nesting, **options}
        return type(self)(**options)

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
    def _check_once(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        """On the first call for a (model, guide) pair: run it once without particles (the
        random stream restored), guess ``max_plate_nesting`` and run the structure checks
        (:func:`check_model_guide`, and Pyro's site-shape check)."""
        key = (_identity(model), _identity(guide))
        if key in self._checked:
            return
        where = f"objective {self.name!r}"
        try:
            with forked_rng(), poutine.block():
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
                model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        except PPModelsError:
            raise
        except (ValueError, RuntimeError, NotImplementedError) as e:  # Pyro's own structure errors
            raise PPModelsError(f"{where}: running the model and guide once failed: {first_line(e, with_type=True)}") from e
        model_plates = {f.name for _, s in _sample_sites(model_trace) for f in s["cond_indep_stack"]}
        model_plates |= {n for n, s in _sample_sites(model_trace) if type(s["fn"]).__name__ == "_Subsample"}
        for name, site in _sample_sites(guide_trace):
            stray = [f.name for f in site["cond_indep_stack"] if f.name not in model_plates]
            if type(site["fn"]).__name__ == "_Subsample" and name not in model_plates:
                stray = [name]
            if stray:
                raise PPModelsError(
                    f"{where}: guide plate {stray[0]!r} (at site {name!r}) is not in the model; "
                    "use the same plates in model and guide"
                )
            if site["is_observed"] and type(site["fn"]).__name__ == "Unit" and "has_rsample" not in vars(site["fn"]):
                raise PPModelsError(
                    f"{where}: guide factor {name!r} does not say whether it is reparameterized; "
                    "pass pyro.factor(..., has_rsample=True or False) in a guide"
                )
            if site["infer"].get("enumerate") and not self.enumerates and not site["is_observed"]:
                self.warn_once(
                    f"{where}: guide site {name!r} is marked for enumeration, which this objective does "
                    "not do: it is sampled; use objective 'enum' to enumerate it"
                )
        model_trace, guide_trace = prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)
        check_model_guide(model_trace, guide_trace, where=where, allow_model_only=self.enumerates)
        if self.max_plate_nesting is None:
            self.max_plate_nesting = _deepest_plate(model_trace, guide_trace)
        from pyro.util import check_site_shape

        with torch.no_grad():
            for trace in (model_trace, guide_trace):
                try:
                    trace.compute_log_prob()
                except Exception as e:  # noqa: BLE001 - reported with the site
                    raise PPModelsError(f"{where}: computing log-densities failed: {first_line(e, with_type=True)}") from e
                for name, site in _sample_sites(trace):
                    if self.enumerates and site["infer"].get("enumerate"):
                        continue
                    try:
                        check_site_shape(site, self.max_plate_nesting)
                    except ValueError as e:
                        raise PPModelsError(
                            f"{where}: site {name!r} has batch shape {tuple(site['log_prob'].shape)} that its "
                            f"plates do not declare; wrap its batch dims in pyro.plate or use .to_event()"
                        ) from e
        self._checked.add(key)

    def _plate_nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
        self._check_once(model, guide, args, kwargs)
        return self.max_plate_nesting

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=3)

    def draw(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, *,
        detach_guide: bool = False, analytic_kl: bool = False, kl_weight: float | Tensor = 1.0,
        guide_handler: Callable[[], Messenger] | None = None,
    ) -> tuple[LogWeights, list[tuple[poutine.Trace, poutine.Trace]]]:
        """Draw ``num_particles`` particles: their :class:`LogWeights` and the (model, guide)
        trace pairs they came from (one pair when vectorized, one per particle otherwise).
        ``guide_handler`` makes a fresh :class:`Messenger` per pair (see :func:`particle_traces`)."""
        mpn = self._plate_nesting(model, guide, args, kwargs)
        opts = dict(max_plate_nesting=mpn, data_plate=self.data_plate, detach_guide=detach_guide,
                    analytic_kl=analytic_kl, kl_weight=kl_weight)
        vectorized = self.vectorize_particles and self.num_particles > 1
        K = self.num_particles if vectorized else 1
        pairs = []
        for _ in range(1 if vectorized else self.num_particles):
            handler = guide_handler() if guide_handler is not None else None
            try:
                pairs.append(particle_traces(model, guide, args, kwargs, K, mpn,
                                             reparameterized=self.reparameterized, guide_handler=handler))
            except PPModelsError:
                raise
            except Exception as e:
                if not vectorized:
                    raise
                raise PPModelsError(
                    f"objective {self.name!r}: the model failed under {K} vectorized particles "
                    f"({first_line(e, with_type=True)}); a model written for one sample needs vectorize_particles=False"
                ) from e
        parts = [log_weights(*pair, num_particles=K, **opts) for pair in pairs]
        return (parts[0] if len(parts) == 1 else LogWeights.cat(parts)), pairs

    def log_weights(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> LogWeights:
        """Draw ``num_particles`` particles and return their :class:`LogWeights`."""
        return self.draw(model, guide, args, kwargs)[0]

    # -- the interface ----------------------------------------------------------------------
    def surrogate_units(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(bound, surrogate)`` per independent unit, shape (U,): one per datapoint when the
        batch plate holds every site, else U = 1. Their sums are the bound estimate and a
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

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Pyro's ``ELBO.loss_and_grads``: backward of :meth:`differentiable_loss`, the loss as a float."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):  # pyro.infer.ELBO's
        lw, pairs = self.draw(model, guide, args, kwargs)
        return pairs[0]

    def __call__(self, model: Callable, guide: Callable) -> Any:
        """``objective(model, guide)``: a ``torch.nn.Module`` whose forward is the
        differentiable loss (Pyro's ``ELBO.__call__``)."""
        from pyro.infer.elbo import ELBOModule

        return ELBOModule(model, guide, self)


class _ScoreFunction(Messenger):
    """Draw every guide latent without reparameterization (score-function estimators)."""

    def _pyro_sample(self, msg: dict) -> None:
        if not msg["is_observed"] and getattr(msg["fn"], "has_rsample", False):
            fn = msg["fn"]
            while hasattr(fn, "base_dist"):  # Independent, Expanded, Masked: the flag lives below
                fn = fn.base_dist
            if isinstance(fn, Delta):  # a point mass has no density to score: it stays pathwise
                return
            fn.has_rsample_(False)


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    r""":math:`\log \frac1K \sum_k e^{x_k}` along ``dim``."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def units(lw: LogWeights, objective: "Objective") -> tuple[Tensor, Tensor, float]:
    r"""The independent units a multi-sample bound is taken over: ``(log_w (K, U), score
    (K, U), scale)``, the bound being :math:`\text{scale}\sum_u f(\log w_{\cdot u})`.

    Per datapoint when the batch plate holds every site. Otherwise the whole batch is one
    unit, which is said once as a warning (the bound is then not a sum over datapoints), and
    is an error under subsampling (a scaled batch inside the log is not a bound on log p(x)).
    """
    if lw.inner_subsampled and lw.log_w.shape[0] > 1:
        raise PPModelsError(
            f"objective {objective.name!r}: plate {lw.inner_subsampled[0]!r} subsamples inside the batch plate "
            f"{lw.data_plate!r}, so its scale would sit inside the log; do not subsample it for a multi-sample bound"
        )
    if not lw.per_datapoint and lw.log_w.shape[0] > 1:  # one particle: every bound is the ELBO
        if lw.subsampled:
            raise PPModelsError(
                f"objective {objective.name!r}: the multi-sample bound needs per-datapoint units under "
                f"subsampling, but {lw.why_batch}; train with 'elbo', or keep every site in the batch plate"
            )
        objective.warn_once(
            f"objective {objective.name!r}: the bound is taken over the whole batch as one unit "
            f"({lw.why_batch})"
        )
    return lw.log_w, lw.score, lw.scale


def require_reparameterized(lw: LogWeights, objective: str, instead: str) -> None:
    if lw.has_score:
        raise PPModelsError(
            f"objective {objective!r} needs every guide latent to be reparameterizable, but the "
            f"guide has non-reparameterized (e.g. discrete) sites; use {instead} instead"
        )
