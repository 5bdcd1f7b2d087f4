r"""The facts about a program, computed once per program and input shapes: :func:`facts`.

One :func:`~ppmodels.program.probe.probe` of the (model, guide) pair gives every fact the
objectives, ``fit``, evaluation and the lab ask about: its sites, plates and the batch plate,
the plate nesting, subsampling, global latents, enumerable sites, the mean-field order, which
arguments are observed values. The facts are frozen and cached weakly (they go with the model
object or function), keyed by the arguments' shapes, dtypes and devices (and the values of
plain Python arguments) and the two user overrides (``max_plate_nesting``, ``data_plate``).

Whether a program runs under vectorized particles is learned on its first vectorized draw
(:func:`vectorizes`, :func:`mark_not_vectorizable`): a model written for one sample then runs
its particles in a loop, said once.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites

from ..utils import PPModelsError, first_line
from .probe import PARTICLE_PLATE, Probe, probe

__all__ = ["ProgramFacts", "facts", "facts_from_probe", "find_data_plate", "AmbiguousPlate", "plate_scale",
           "vectorizes", "mark_not_vectorizable", "warn_once", "sample_sites", "vectorized_frames", "trace_numel"]


def sample_sites(*traces: poutine.Trace):
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] == "sample":
                yield name, site


def vectorized_frames(site: dict) -> list:
    return [f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE]


def _base(fn: Any) -> Any:
    """A distribution under its Independent, Expanded and Masked wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _is_subsample(site: dict) -> bool:
    return type(site["fn"]).__name__ == "_Subsample"


def plate_scale(frame) -> float:
    """A plate frame's subsampling scale N/B (1 when it does not subsample)."""
    size, full = frame.size, getattr(frame, "full_size", None)
    if full is None or size is None or size <= 0 or full <= 0:
        return 1.0
    return full / size


def trace_numel(*traces: poutine.Trace) -> int:
    """Numbers held by the traces' sample sites: values and distribution parameters (a proxy
    for the memory a pass over them needs)."""
    numel = 0
    for _, site in sample_sites(*traces):
        fn = site["fn"]
        value = site["value"]
        numel += (value.numel() if torch.is_tensor(value) else 1) + math.prod(fn.batch_shape + fn.event_shape)
    return numel


class AmbiguousPlate(PPModelsError):
    """Several plates could be the batch plate; ``data_plate=`` must say which."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        super().__init__(f"plates {names} each hold every site; name the batch plate with data_plate=...")


def find_data_plate(model_trace: poutine.Trace, guide_trace: poutine.Trace, name: str | None = None):
    """The batch plate's frame, or None.

    ``name`` given: the vectorized plate of that name (an error if the traces have none).
    Otherwise: among the vectorized plates around at least one observed model site, the
    subsampled ones if any; of those, the plate holding the most sample sites (model and
    guide), ties going to a subsampled one, then to one named ``data`` (Pyro's convention)."""
    frames: dict[str, Any] = {}
    counts: dict[str, int] = {}
    observed: set[str] = set()
    for trace, is_model in ((model_trace, True), (guide_trace, False)):
        for _, site in sample_sites(trace):
            for f in vectorized_frames(site):
                frames.setdefault(f.name, f)
                counts[f.name] = counts.get(f.name, 0) + 1
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
    pool = [n for n in candidates if counts[n] == most]
    if len(pool) > 1:
        pool = [n for n in pool if plate_scale(frames[n]) != 1.0] or pool
    if len(pool) > 1 and "data" in pool:
        pool = ["data"]
    if len(pool) > 1:
        raise AmbiguousPlate(pool)
    return frames[pool[0]]


@dataclass(frozen=True, eq=False)
class ProgramFacts:
    """What one probe found out about a program (see the module docstring). Frozen: a fact is
    computed once; nothing changes it afterwards."""

    max_plate_nesting: int
    model_latents: tuple[str, ...]
    guide_latents: tuple[str, ...]
    observed: tuple[str, ...]
    auxiliary: tuple[str, ...]
    #: model latents marked ``infer={"enumerate": ...}`` (summed out by ``enum``)
    model_enumerated: tuple[str, ...]
    #: guide latents with enumerable support (discrete)
    guide_enumerable: tuple[str, ...]
    #: guide latents marked for enumeration
    guide_marked: tuple[str, ...]
    #: guide latents drawn by the score function (no ``rsample``)
    score_sites: tuple[str, ...]
    #: guide sites with Pyro's ``infer={"baseline": {...}}`` options
    baseline_sites: tuple[str, ...]
    #: guide latents drawn from a Bernoulli (under Independent, Expanded or Masked wrappers)
    bernoulli_sites: tuple[str, ...]
    #: guide latents drawn from a Categorical or a OneHotCategorical (under the same wrappers)
    categorical_sites: tuple[str, ...]
    data_plate: str | None
    data_dim: int | None
    per_datapoint: bool
    why_batch: str
    global_latents: tuple[str, ...]
    subsampled: bool
    inner_subsampled: tuple[str, ...]
    #: some plate's subsample indices are one of the arguments (``pyro.plate(..., subsample=idx)``)
    subsample_from_args: bool
    #: the rows of the probed batch, and the numbers its traces held per row
    rows: int
    numel_per_row: int
    #: shared latents sampled in the same order by model and guide (the mean-field check)
    mean_field: bool
    #: ``{argument index: support}`` when every tensor argument is, as given, an observed value
    observed_arguments: dict[int, Any] | None
    #: structure problems found, as (kind, detail) pairs, read by :mod:`.checks`
    problems: tuple[tuple[str, Any], ...] = ()
    #: model sites whose batch shape their plates do not declare: (site, shape, enumerated)
    shape_errors: tuple[tuple[str, tuple, bool], ...] = ()
    param_names: tuple[str, ...] = field(default=())

    @property
    def has_score(self) -> bool:
        return bool(self.score_sites)



#: facts by the model's owner, then the guide's owner (each the object of a bound method, or the
#: function itself), both weakly: {model owner: {guide owner: {key: facts}}}
_CACHE: "weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary]" = weakref.WeakKeyDictionary()
_VECTORIZES: "weakref.WeakKeyDictionary[ProgramFacts, bool]" = weakref.WeakKeyDictionary()
_WARNED: "weakref.WeakKeyDictionary[ProgramFacts, set[str]]" = weakref.WeakKeyDictionary()


def _unwrap(fn: Callable) -> Callable:
    """``fn`` without the Pyro handlers around it that declare ``preserves_structure = True``
    (ppmodels' own: they answer parameters or rescale sites, and change no fact)."""
    while True:
        inner = getattr(fn, "func", None)
        args = getattr(inner, "args", ())
        if len(args) == 2 and isinstance(args[0], Messenger) and getattr(args[0], "preserves_structure", False):
            fn = args[1]
        else:
            return fn


def _owner(fn: Callable) -> tuple[Any, Any]:
    """``(owner, function)`` of a model or guide: a bound method is made anew at each attribute
    access, so it is keyed by its object and function."""
    fn = _unwrap(fn)
    owner = getattr(fn, "__self__", None)
    return (owner, getattr(fn, "__func__", fn)) if owner is not None else (fn, None)


def _signature(value: Any) -> Any:
    if torch.is_tensor(value):
        return ("tensor", tuple(int(d) for d in value.shape), value.dtype, value.device)  # ints also when traced
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_signature(v) for v in value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return type(value).__name__


def _table(model: Callable, guide: Callable) -> dict[tuple, ProgramFacts]:
    """The cache's table for this (model, guide) pair; a fresh one (no caching) where either
    cannot be weakly referenced."""
    try:
        return _CACHE.setdefault(_owner(model)[0], weakref.WeakKeyDictionary()).setdefault(_owner(guide)[0], {})
    except TypeError:
        return {}


def _key(model: Callable, guide: Callable, args: tuple, kwargs: dict, max_plate_nesting, data_plate) -> tuple:
    return (_owner(model)[1], _owner(guide)[1], _signature(args), _signature(sorted(kwargs.items())),
            max_plate_nesting, data_plate)


def facts(model: Callable, guide: Callable, args: tuple, kwargs: dict | None = None, *,
          max_plate_nesting: int | None = None, data_plate: str | None = None,
          where: str = "program") -> ProgramFacts:
    """The facts of the (model, guide) program on inputs shaped like ``args``: from the cache,
    or one :func:`probe`. A program that fails to run is a one-line error naming ``where``."""
    kwargs = kwargs or {}
    table = _table(model, guide)
    key = _key(model, guide, args, kwargs, max_plate_nesting, data_plate)
    found = table.get(key)
    if found is not None:
        return found
    try:
        seen = probe(model, guide, args, kwargs)
    except PPModelsError:
        raise
    except (ValueError, RuntimeError, NotImplementedError, TypeError, IndexError, KeyError, AssertionError) as e:
        raise PPModelsError(f"{where}: running the model and guide once failed: {first_line(e, with_type=True)}") from e
    found = facts_from_probe(seen, args, max_plate_nesting=max_plate_nesting, data_plate=data_plate)
    table[key] = found
    return found


def remember(model: Callable, guide: Callable, args: tuple, kwargs: dict | None, seen: Probe) -> ProgramFacts:
    """The facts of a probe made elsewhere (``check_batch``'s, with validation on), cached as
    :func:`facts` would cache them, so the program is not run again for them."""
    kwargs = kwargs or {}
    found = facts_from_probe(seen, args)
    _table(model, guide)[_key(model, guide, args, kwargs, None, None)] = found
    return found


def facts_from_probe(seen: Probe, args: tuple, *, max_plate_nesting: int | None = None,
                     data_plate: str | None = None) -> ProgramFacts:
    """Compute :class:`ProgramFacts` from one probe's traces."""
    from pyro.util import check_site_shape

    raw_model, raw_guide = seen.model_trace, seen.guide_trace
    problems: list[tuple[str, Any]] = []
    model_plates = {f.name for _, s in sample_sites(raw_model) for f in s["cond_indep_stack"]}
    model_plates |= {n for n, s in sample_sites(raw_model) if _is_subsample(s)}
    marked = []
    for name, site in sample_sites(raw_guide):
        stray = [f.name for f in site["cond_indep_stack"] if f.name not in model_plates]
        if _is_subsample(site) and name not in model_plates:
            stray = [name]
        if stray:
            problems.append(("stray_plate", (stray[0], name)))
        if site["is_observed"] and type(site["fn"]).__name__ == "Unit" and "has_rsample" not in vars(site["fn"]):
            problems.append(("guide_factor", name))
        if site["infer"].get("enumerate") and not site["is_observed"]:
            marked.append(name)
    tensors = [a for a in args if torch.is_tensor(a)]
    subsample_from_args = any(_is_subsample(s) and any(s["value"] is a for a in tensors)
                              for _, s in sample_sites(raw_model, raw_guide))
    model_trace, guide_trace = prune_subsample_sites(raw_model), prune_subsample_sites(raw_guide)

    def latents(trace):
        return tuple(n for n, s in sample_sites(trace) if not s["is_observed"])

    guide_latents, model_latents = latents(guide_trace), latents(model_trace)
    auxiliary = tuple(n for n in guide_latents if guide_trace.nodes[n]["infer"].get("is_auxiliary"))
    model_enumerated = tuple(n for n in model_latents if model_trace.nodes[n]["infer"].get("enumerate"))
    guide_enumerable = tuple(n for n in guide_latents if getattr(guide_trace.nodes[n]["fn"], "has_enumerate_support", False))
    score_sites = tuple(n for n in guide_latents if not getattr(guide_trace.nodes[n]["fn"], "has_rsample", False))
    baseline_sites = tuple(n for n in guide_latents if guide_trace.nodes[n]["infer"].get("baseline"))
    bernoulli_sites = tuple(n for n in guide_latents if isinstance(_base(guide_trace.nodes[n]["fn"]), torch.distributions.Bernoulli))
    categorical_sites = tuple(n for n in guide_latents if isinstance(
        _base(guide_trace.nodes[n]["fn"]), (torch.distributions.Categorical, torch.distributions.OneHotCategorical)))
    dims = [-f.dim for _, s in sample_sites(model_trace, guide_trace) for f in vectorized_frames(s)]
    mpn = max(dims, default=0) if max_plate_nesting is None else max_plate_nesting

    try:
        frame = find_data_plate(model_trace, guide_trace, data_plate)
        ambiguous = ""
    except AmbiguousPlate as e:  # not an error for the ELBO: no term is per datapoint
        frame, ambiguous = None, str(e)
    outside = sorted({n for n, s in sample_sites(model_trace, guide_trace)
                      if frame is None or frame.name not in {f.name for f in vectorized_frames(s)}})
    global_latents = tuple(n for n in guide_latents if not vectorized_frames(guide_trace.nodes[n]))
    per_datapoint = frame is not None and not outside
    outside_latents = [n for n in outside if n in guide_latents]
    inner = sorted({f.name for _, st in sample_sites(model_trace, guide_trace) for f in st["cond_indep_stack"]
                    if per_datapoint and f.name not in (frame.name, PARTICLE_PLATE) and plate_scale(f) != 1.0})
    why = "" if per_datapoint else (
        ambiguous if ambiguous
        else "no vectorized plate holds the observations (name one with data_plate=...)" if frame is None
        else f"global latents {outside_latents[:3]} lie outside the batch plate {frame.name!r}" if outside_latents
        else f"sites {outside[:3]} lie outside the batch plate {frame.name!r}")
    subsampled = any(plate_scale(f) != 1.0 for _, s in sample_sites(model_trace, guide_trace)
                     for f in s["cond_indep_stack"] if f.name != PARTICLE_PLATE)

    for name in (n for n in model_latents if n in guide_latents):
        m, g = model_trace.nodes[name], guide_trace.nodes[name]
        m_event, g_event = getattr(m["fn"], "event_dim", None), getattr(g["fn"], "event_dim", None)
        m_shape = tuple(m["fn"].batch_shape) + tuple(m["fn"].event_shape)
        g_shape = tuple(g["value"].shape) if torch.is_tensor(g["value"]) else ()
        if m_event is not None and g_event is not None and m_event != g_event:
            problems.append(("event_dim", (name, m_event, g_event)))
        else:
            try:
                torch.broadcast_shapes(m_shape, g_shape)
            except RuntimeError:
                problems.append(("shape", (name, g_shape, m_shape)))
    order_m = [n for n in model_latents if n in guide_latents]
    order_g = [n for n in guide_latents if n in order_m]

    shape_errors = []
    with torch.no_grad():
        for trace in (model_trace, guide_trace):
            try:
                trace.compute_log_prob()
            except Exception as e:  # noqa: BLE001 - reported with the site
                problems.append(("log_prob", first_line(e, with_type=True)))
                break
            for name, site in sample_sites(trace):
                try:
                    check_site_shape(site, mpn)
                except ValueError:
                    shape_errors.append((name, tuple(site["log_prob"].shape), bool(site["infer"].get("enumerate"))))

    rows = len(tensors[0]) if tensors and tensors[0].dim() else 1
    return ProgramFacts(
        max_plate_nesting=mpn, model_latents=model_latents, guide_latents=guide_latents,
        observed=tuple(n for n, s in sample_sites(model_trace) if s["is_observed"]), auxiliary=auxiliary,
        model_enumerated=model_enumerated, guide_enumerable=guide_enumerable, guide_marked=tuple(marked),
        score_sites=score_sites, baseline_sites=baseline_sites, bernoulli_sites=bernoulli_sites, categorical_sites=categorical_sites,
        data_plate=frame.name if frame is not None else None, data_dim=frame.dim if per_datapoint else None,
        per_datapoint=per_datapoint, why_batch=why, global_latents=global_latents, subsampled=subsampled,
        inner_subsampled=tuple(inner), subsample_from_args=subsample_from_args,
        rows=rows, numel_per_row=max(1, trace_numel(model_trace, guide_trace) // max(rows, 1)),
        mean_field=order_m == order_g, observed_arguments=_observed_arguments(model_trace, args),
        problems=tuple(problems), shape_errors=tuple(shape_errors),
        param_names=tuple(seen.param_trace.nodes),
    )


def _observed_arguments(model_trace: poutine.Trace, args: tuple) -> dict[int, Any] | None:
    found: dict[int, Any] = {}
    for _, site in sample_sites(model_trace):
        if site["is_observed"]:
            for i, t in enumerate(args):
                if site["value"] is t:
                    found[i] = site["fn"].support
    tensors = [i for i, t in enumerate(args) if torch.is_tensor(t)]
    return found if tensors and all(i in found for i in tensors) else None


def vectorizes(found: ProgramFacts) -> bool | None:
    """Whether the program ran under vectorized particles (None: not tried yet)."""
    return _VECTORIZES.get(found)


def mark_vectorizes(found: ProgramFacts, value: bool) -> None:
    _VECTORIZES[found] = value


def mark_not_vectorizable(found: ProgramFacts, where: str, error: BaseException, particles: int) -> None:
    """Record that the program fails under vectorized particles, and say once what that costs."""
    _VECTORIZES[found] = False
    warn_once(found, f"{where}: the model fails under {particles} vectorized particles "
                     f"({first_line(error, with_type=True)}), so its particles run in a loop, one pass each "
                     "(about K times slower); pass vectorize_particles=False to choose the loop and silence this")


def warn_once(found: ProgramFacts, message: str) -> None:
    """``warnings.warn(message)`` once per program facts and message."""
    said = _WARNED.setdefault(found, set())
    if message not in said:
        said.add(message)
        warnings.warn(message, stacklevel=3)
