"""Conformance: every objective at K = 1 has the expectation of Pyro's ``Trace_ELBO``, on model
shapes from Pyro's own test suite (``conformance_shapes.py``: plates of any name, nested,
sequential, unsized and subsampled plates, global and local latents with any dependence,
masks, scales, factors, AutoGuides, programs written for one sample).

For each (shape, objective): R gradient draws of ours and R_REF of Pyro's, a two-sample z-test
per coordinate (value and gradient) with the bound Z; the power checks run the same test on
known-biased variants and require it to fail. Counts go to ``conformance-counts.txt`` under
pytest's temporary directory and are printed by ``python tests/test_conformance.py``.
"""

from __future__ import annotations

import warnings

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from ppmodels.objectives import make
from ppmodels.objectives.elbo import Elbo, elbo_surrogate
from ppmodels.utils import PPModelsError

from conformance_shapes import INVALID, VALID

R, R_REF, Z = 100, 300, 5.0
SHAPES = {s.name: s for s in VALID}


def objectives_for(shape) -> list[tuple[str, dict]]:
    """(name, options) of every objective that applies to the shape, at one particle unless
    the point is the particle dimension."""
    loop = {} if shape.vectorizable else {"vectorize_particles": False}
    out = [("elbo", {}), ("meanfield", {}), ("reinforce", {}), ("iwae", {"num_particles": 1}),
           ("renyi", {"num_particles": 1, "alpha": 0.5}), ("elbo", {"num_particles": 3, **loop}),
           ("elbo", {"reparameterized": False})]
    if shape.reparam:
        out += [("stl", {}), ("dreg", {"num_particles": 1})]
    else:  # score-function sites: the leave-one-out estimator's expectation is Pyro's too
        out += [("rloo", {"num_particles": 2, **loop})]
    if shape.enumerable:
        out += [("enum", {})]
    return out


CASES = [pytest.param(shape.name, name, opts, id=f"{shape.name}-{name}{''.join(f'-{k}={v}' for k, v in opts.items())}")
         for shape in VALID for name, opts in objectives_for(shape)]


def _params(shape) -> list[torch.Tensor]:
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trace_ELBO().loss(shape.model, shape.guide, *shape.args, **shape.kwargs)
    store = pyro.get_param_store()
    return [store.get_param(n).unconstrained() for n in sorted(store.keys())]


def draws(loss_fn, params, reps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``reps`` (value, gradient) draws of ``loss_fn()``: (reps,), (reps, P)."""
    pyro.set_rng_seed(seed)
    values, grads = [], []
    for _ in range(reps):
        loss = loss_fn()
        g = torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad else [None] * len(params)
        grads.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1) for gi, p in zip(g, params)]))
        values.append(loss.detach().reshape(()))
    return torch.stack(values), torch.stack(grads)


_REFERENCE: dict[str, tuple] = {}


def reference(shape, params):
    if shape.name not in _REFERENCE:
        elbo = Trace_ELBO()
        with warnings.catch_warnings(), pyro.validation_enabled(False):
            warnings.simplefilter("ignore")
            _REFERENCE[shape.name] = draws(
                lambda: elbo.differentiable_loss(shape.model, shape.guide, *shape.args, **shape.kwargs),
                params, R_REF, seed=10_000)
    return _REFERENCE[shape.name]


def max_z(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-coordinate two-sample z of the means of ``a`` (R, P) and ``b`` (R', P);
    coordinates deterministic on both sides must agree to float precision."""
    a, b = a.double(), b.double()
    diff = a.mean(0) - b.mean(0)
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    tiny = 1e-6 * (1 + b.mean(0).abs())
    z = torch.where(se > tiny, diff.abs() / se.clamp_min(1e-30),
                    torch.where(diff.abs() < 1e-4 * (1 + b.mean(0).abs()), 0.0, float("inf")))
    return float(z.max()) if z.numel() else 0.0


def compare(shape, objective, params, seed=1) -> tuple[float, float]:
    """(max |z| of the loss value, max |z| of the gradient) of ``objective`` against Trace_ELBO."""
    ref_v, ref_g = reference(shape, params)
    with warnings.catch_warnings(), pyro.validation_enabled(False):
        warnings.simplefilter("ignore")
        v, g = draws(lambda: objective.differentiable_loss(shape.model, shape.guide, *shape.args, **shape.kwargs),
                     params, R, seed=seed)
    return max_z(v[:, None], ref_v[:, None]), max_z(g, ref_g)


@pytest.mark.parametrize("shape_name,name,options", CASES)
def test_objective_has_the_expectation_of_pyros_trace_elbo(shape_name, name, options):
    shape = SHAPES[shape_name]
    params = _params(shape)
    objective = make(name, **options)
    zv, zg = compare(shape, objective, params)
    assert zv < Z and zg < Z, f"{shape_name} × {objective!r}: max|z| value {zv:.1f}, gradient {zg:.1f}"


# -- power: the checks above catch a biased estimator ------------------------------------------
class _ScoreScaledLikeTheOldCore(Elbo):
    """The bug this suite was written for: the local score function divided by the plate's N/B."""

    name = "elbo-biased"

    def surrogate_terms(self, model, guide, *args, **kwargs):
        lw, _ = self.draw(model, guide, args, kwargs)
        lw.rb = lw.rb / lw.scale
        return elbo_surrogate(lw)


class _NoScoreTerm(Elbo):
    """The score-function term dropped: only the pathwise part (biased at discrete sites)."""

    name = "elbo-no-score"

    def surrogate_terms(self, model, guide, *args, **kwargs):
        lw, _ = self.draw(model, guide, args, kwargs)
        lw.rb = lw.rb * 0.0  # score-function term dropped
        return elbo_surrogate(lw)


@pytest.mark.parametrize("shape_name,biased", [
    ("subsample_discrete_local", _ScoreScaledLikeTheOldCore()),
    ("local_bernoulli", _NoScoreTerm()),
])
def test_power_a_biased_estimator_fails_the_same_check(shape_name, biased):
    shape = SHAPES[shape_name]
    params = _params(shape)
    _, zg = compare(shape, biased, params)
    assert zg > Z, f"the biased variant passed on {shape_name}: max|z| {zg:.1f}"


def test_traceGraph_elbo_agrees_with_trace_elbo_on_the_subsampled_score_function():
    """Pyro's other estimator, through ppmodels' adapter, against the same reference."""
    shape = SHAPES["subsample_discrete_local"]
    params = _params(shape)
    zv, zg = compare(shape, make(TraceGraph_ELBO()), params)
    assert zv < Z and zg < Z


# -- invalid shapes: a short, clear error naming the site --------------------------------------
WARNED = {"enumerated_guide_site_under_trace_elbo"}  # valid for 'enum': the others warn and sample


@pytest.mark.parametrize("name,model,guide,args,expected", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_shape_is_refused_with_a_short_message(name, model, guide, args, expected):
    pyro.clear_param_store()
    if name in WARNED:
        with pytest.warns(UserWarning, match=expected):
            make("elbo").differentiable_loss(model, guide, *args)
        return
    with pytest.raises(PPModelsError) as err:
        make("elbo").differentiable_loss(model, guide, *args)
    message = str(err.value)
    assert len(message.splitlines()) <= 3, message
    assert expected.lower() in message.lower(), message


if __name__ == "__main__":  # the counts for the session note
    import collections

    counts = collections.Counter()
    for shape in VALID:
        for name, opts in objectives_for(shape):
            params = _params(shape)
            try:
                zv, zg = compare(shape, make(name, **opts), params)
                counts["agree" if max(zv, zg) < Z else "DISAGREE"] += 1
            except PPModelsError as e:
                counts[f"refused: {str(e)[:90]}"] += 1
    print(len(VALID), "shapes;", sum(counts.values()), "shape × objective cases")
    for k, v in counts.most_common():
        print(f"{v:5d}  {k}")
