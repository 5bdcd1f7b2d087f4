r"""The estimator-variance study: :func:`gradient_study`.

For each objective and particle count K, R replicate gradient estimates are drawn (vectorized,
see :mod:`ppmodels.analysis.replicates`), reduced to streaming moments per coordinate, and
summarised per parameter group against a reference gradient:

- ``exact="auto"``: the model's closed form — the object behind ``model`` may define
  ``exact_objective(objective, *args) -> Tensor | None``, the exact expected bound, whose
  autograd gradient is the reference (``LinearGaussian``, ``CategoricalGaussian``);
- ``exact="<objective>"`` (or a configured objective): a high-replicate estimate from that
  estimator (``reference_replicates``), said as such in the ``reference`` column, for the
  objectives whose expectation is the same bound (``Objective.bound``; e.g. an ``enum``
  reference serves every ELBO estimator, not IWAE-K);
- ``exact=None``: no reference (bias columns are NaN).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

import pyro
import torch
from pyro import poutine
from torch import Tensor

from pyro.poutine.util import prune_subsample_sites

from .. import program
from ..objectives import Objective, make
from ..protocol import ModelGuide, check_rows
from ..utils import PPModelsError, resolve_device, rng_state, set_rng_state
from .replicates import FEW_PARAMETERS, ROWS_CHUNK, flat_grad, replicate_gradients
from .stats import Moments, statistics

__all__ = ["gradient_study", "parameter_groups", "COLUMNS"]

COLUMNS = ["objective", "num_particles", "group", "replicates", "mean_norm", "bias_norm", "max_abs_z",
           "constant_mismatch", "total_variance", "snr", "cosine", "seconds", "work_variance", "reference"]


def parameter_groups(model: Callable, guide: Callable, *args: Any) -> dict[str, list[Tensor]]:
    """``{"model": [...], "guide": [...]}``: the parameters log p(x, z) depends on (z held
    fixed) and those log q(z | x) depends on — decoder vs encoder, found by autograd on one
    probe of the program (:func:`ppmodels.program.probe`) and its model replayed against the
    probe's latents, detached. Parameters reached only through sampled values (a Delta guide's
    point, as ``AutoDelta`` has) count as the guide's."""
    seen = program.probe(model, guide, args, grad=True, keep_params=True)
    guide_trace = prune_subsample_sites(seen.guide_trace)
    fixed = poutine.Trace()  # new site dicts: the probe's own trace keeps its values' gradients
    for name, site in seen.guide_trace.nodes.items():
        value = site.get("value")
        fixed.add_node(name, **{**site, "value": value.detach() if torch.is_tensor(value) else value})
    with program.forked_rng(), poutine.block():
        model_trace = poutine.trace(poutine.replay(model, trace=fixed)).get_trace(*args)
    store = pyro.get_param_store().get_state()["params"]
    candidates = list({id(p): p for p in (store[n] for n in seen.param_trace.nodes if n in store)}.values())
    owner = getattr(model, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        known = {id(p) for p in candidates}
        candidates += [p for p in owner.parameters() if id(p) not in known]
    candidates = [p for p in candidates if p.requires_grad]
    groups: dict[str, list[Tensor]] = {"model": [], "guide": []}
    if not candidates:
        return groups
    for name, trace in (("model", model_trace), ("guide", guide_trace)):
        terms = [site["fn"].log_prob(site["value"].detach()).sum()
                 for site in trace.nodes.values() if site["type"] == "sample"]
        total = sum(terms) if terms else None
        if total is None or not torch.is_tensor(total) or not total.requires_grad:
            continue  # no parameter reaches this side (a Delta guide's value, a fixed prior)
        grads = torch.autograd.grad(total, candidates, allow_unused=True, retain_graph=True)
        groups[name] = [p for p, g in zip(candidates, grads) if g is not None and bool(g.abs().sum() > 0)]
    seen_ids = {id(p) for ps in groups.values() for p in ps}
    groups["guide"] += [p for p in candidates if id(p) not in seen_ids and _reaches_values(guide_trace, p)]
    return groups


def _reaches_values(trace: Any, param: Tensor) -> bool:
    values = [s["value"] for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]
              and torch.is_tensor(s["value"]) and s["value"].requires_grad]
    if not values:
        return False
    total = sum(v.sum() for v in values)
    (g,) = torch.autograd.grad(total, [param], allow_unused=True, retain_graph=True)
    return g is not None


def _resolve_groups(params: Any, owner: Any, model: Callable, guide: Callable, args: tuple) -> dict[str, list[Tensor]]:
    """``params`` as ``{group: [tensors]}``. Accepted: None (the model/guide groups), a dict of
    groups whose entries are tensors or names, or a list of names (one group each). A name is a
    module parameter of the model's owner (``"decoder.0.weight"``, or a prefix such as
    ``"decoder"``) or a Pyro param-store name."""
    if params is None:
        return {k: list(v) for k, v in parameter_groups(model, guide, *args).items()}
    if not isinstance(params, dict):
        params = {str(name): [name] for name in params}
    named = dict(owner.named_parameters()) if isinstance(owner, torch.nn.Module) else {}
    store = pyro.get_param_store()
    groups: dict[str, list[Tensor]] = {}
    for group, entries in params.items():
        tensors: list[Tensor] = []
        for entry in entries:
            if torch.is_tensor(entry):
                tensors.append(entry)
                continue
            matches = [p for n, p in named.items() if n == entry or n.startswith(f"{entry}.")]
            if not matches and entry in store:
                matches = [store.get_param(entry).unconstrained()]
            if not matches:
                raise PPModelsError(
                    f"gradient_study: no parameter named {entry!r}; module parameters: "
                    f"{sorted(named)[:8]}{' ...' if len(named) > 8 else ''}; param store: {sorted(store.keys())[:8]}"
                )
            tensors.extend(matches)
        groups[group] = tensors
    return groups


def _with_particles(objective: "str | Objective | Any", K: int) -> Objective:
    """The objective (a name, a configured ppmodels objective or a Pyro ELBO) with K particles,
    every other option kept."""
    if isinstance(objective, str):
        return make(objective, num_particles=K)
    objective = make(objective)
    return objective if objective.num_particles == K else objective.with_particles(K)


def _chunk(objective: Objective, model: Callable, guide: Callable, args: tuple, P: int, replicates: int,
           memory: int) -> int:
    """Replicates per vectorized pass so that the traces and the batched backward over them
    (4 bytes × 4 a number, times the batch of the backward: P or the replicate chunk; see
    :mod:`.replicates`) and the (chunk, P) gradients fit in ``memory``; the numbers a pass holds
    come from the program's facts. Objectives whose batch is one term replicate in a loop: no
    chunking."""
    if not objective.per_term:
        return replicates
    found = objective.facts(model, guide, args, {})
    batched = P if P <= FEW_PARAMETERS else ROWS_CHUNK
    numel = found.numel_per_row * max(1, len(args[0]) if torch.is_tensor(args[0]) else 1) * objective.num_particles
    per_replicate = 16 * batched * numel + 8 * P
    return int(max(1, min(replicates, memory // per_replicate)))


def _seconds_per_estimate(objective: Objective, model: Callable, guide: Callable, args: tuple,
                          params: list[Tensor], repeats: int = 5) -> float:
    """Median wall time of one gradient estimate (loss + backward), as training pays it."""
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = objective.differentiable_loss(model, guide, *args)
        torch.autograd.grad(loss, params, allow_unused=True)
        if params[0].is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return times[len(times) // 2]


def gradient_study(
    model: Callable,
    guide: Callable,
    *args: Any,
    objectives: Sequence[str | Objective] = ("elbo", "iwae", "dreg"),
    num_particles: Sequence[int] = (1, 5, 50),
    replicates: int = 1000,
    params: dict[str, Sequence[Tensor | str]] | Sequence[str] | None = None,
    exact: str | Objective | None = "auto",
    reference_replicates: int = 10000,
    device: str | torch.device = "auto",
    seed: int = 0,
    memory: int = 1 << 30,
    progress: bool | None = None,
) -> "pandas.DataFrame":  # noqa: F821
    """Bias, variance and SNR of each objective's gradient estimator, one row per
    (objective, K, parameter group); see :data:`COLUMNS` and the module docstring."""
    import pandas as pd

    device = resolve_device(device)
    owner = getattr(model, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        owner.to(device)
    args = tuple(a.to(device) if torch.is_tensor(a) else a for a in args)
    pair = ModelGuide(model, guide)
    check_rows(pair, args, 0, "gradient_study's data", device)  # as fit checks: the first bad row named
    caller_rng, store = rng_state(), program.param_store_snapshot()
    try:
        pyro.set_rng_seed(seed)
        with pyro.validation_enabled(False):
            groups = _resolve_groups(params, owner, model, guide, args)
        store = program.param_store_snapshot()  # with the program's params, as the probe made them
        return _study(model, guide, args, owner, pair, groups, objectives, num_particles, replicates, exact,
                      reference_replicates, device, seed, memory, progress, store)
    finally:
        program.restore_param_store(store)  # what the estimators learned during the study is not kept
        set_rng_state(caller_rng)


def _study(model, guide, args, owner, pair, groups, objectives, num_particles, replicates, exact,
           reference_replicates, device, seed, memory, progress, store) -> "pandas.DataFrame":  # noqa: F821
    """:func:`gradient_study` after its set-up; each objective starts from the param store ``store``."""
    import pandas as pd

    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        raise PPModelsError("gradient_study: no parameter group has parameters")
    all_params = list({id(p): p for ps in groups.values() for p in ps}.values())
    offsets, start = {}, 0
    for p in all_params:
        offsets[id(p)] = slice(start, start + p.numel())
        start += p.numel()
    index = {g: torch.cat([torch.arange(offsets[id(p)].start, offsets[id(p)].stop) for p in ps])
             for g, ps in groups.items()}
    P = start
    references: dict[str, Tensor] = {}
    skipped: list[str] = []
    rows = []
    show = sys.stderr.isatty() if progress is None else progress
    for spec in objectives:
        for K in num_particles:
            try:
                objective = _with_particles(spec, K)
            except (PPModelsError, ValueError, NotImplementedError) as e:
                skipped.append(f"{spec if isinstance(spec, str) else getattr(spec, 'name', type(spec).__name__)} K={K}: {e}")
                continue
            if objective.enumerates and K != num_particles[0]:
                continue  # exact: the particle count does not matter
            label = objective.label
            if show:
                print(f"gradient_study: {label} K={K}", file=sys.stderr)
            program.restore_param_store(store)  # every estimator starts from the same state
            pyro.set_rng_seed(seed)
            moments = Moments(P, device)
            try:
                chunk = _chunk(objective, model, guide, args, P, replicates, memory)
                pyro.set_rng_seed(seed)
                for r0 in range(0, replicates, chunk):
                    r = min(chunk, replicates - r0)
                    grads, _ = replicate_gradients(objective, pair, args, all_params, r, seed=seed + r0)
                    moments.update(grads)
            except (PPModelsError, NotImplementedError) as e:
                skipped.append(f"{label} K={K}: {e}")
                continue
            seconds = _seconds_per_estimate(objective, model, guide, args, all_params)
            ref, ref_name = _reference(exact, objective, owner, pair, args, all_params, references,
                                       reference_replicates, seed)
            mean, var = moments.mean, moments.var
            for group, idx in index.items():
                stats = statistics(mean[idx], var[idx], moments.n, None if ref is None else ref[idx])
                rows.append({"objective": label, "num_particles": K, "group": group, "replicates": moments.n,
                             **stats, "seconds": seconds, "work_variance": stats["total_variance"] * seconds,
                             "reference": ref_name})
    df = pd.DataFrame(rows, columns=COLUMNS)
    import pyro as _pyro

    df.attrs.update({
        "model": type(owner).__name__ if owner is not None else getattr(model, "__name__", "model"),
        "seed": seed, "device": str(device), "replicates": replicates,
        "groups": {g: int(len(i)) for g, i in index.items()},
        "versions": {"torch": torch.__version__, "pyro": _pyro.__version__},
        "skipped": skipped,
    })
    return df


def _reference(exact, objective: Objective, owner, pair, args, params, cache, reps, seed):
    """``(reference gradient (P,) or None, description)`` for ``objective``."""
    if exact is None:
        return None, "none"
    if exact == "auto":
        fn = getattr(owner, "exact_objective", None)
        target = fn(objective, *args) if fn is not None else None
        if target is None:
            return None, "none (no closed form)"
        grads = torch.autograd.grad(-target, params, allow_unused=True)
        return flat_grad(grads, params).to(torch.float64), "exact (closed form)"
    ref_obj = make(exact) if isinstance(exact, str) else exact
    if ref_obj.bound != objective.bound:
        return None, f"none ({ref_obj.label} estimates another bound)"
    key = repr(ref_obj)
    if key not in cache:
        moments = Moments(sum(p.numel() for p in params), params[0].device)
        chunk = _chunk(ref_obj, pair.model, pair.guide, args, len(moments.sum), reps, 1 << 30)
        for r0 in range(0, reps, chunk):
            r = min(chunk, reps - r0)
            grads, _ = replicate_gradients(ref_obj, pair, args, params, r, seed=seed + 10**6 + r0)
            moments.update(grads)
        cache[key] = moments.mean
    return cache[key], f"estimate: {key}, R={reps}"
