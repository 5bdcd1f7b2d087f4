r"""The one place a (model, guide) pair is run: the guide, then the model replayed against it.

Every module that needs traces of a program calls :func:`run_pair` (a draw, as training takes
it: the random stream advances, outer handlers see the sites) or :func:`probe` (a look at the
program: one run without particles, the random stream restored afterwards, every site hidden
from outer handlers, gradients off unless asked, Pyro's validation as asked). A probe may create
the program's parameters, as its first step under ``pyro.infer.SVI`` would; it changes nothing
else. :func:`probe_runs` counts them (a test reads it to check how often a call looks at a program).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions import Delta
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites

__all__ = ["run_pair", "probe", "Probe", "forked_rng", "PARTICLE_PLATE", "probe_runs"]

#: The particle plate's name: unlikely to clash with a user's plate (Pyro's own is
#: ``num_particles_vectorized``).
PARTICLE_PLATE = "_ppmodels_particles"

_RUNS = [0]  # probe runs since import


def probe_runs() -> int:
    """How many probes have run since import."""
    return _RUNS[0]


def forked_rng() -> contextlib.AbstractContextManager:
    """Run a block without advancing torch's CPU and (initialised) CUDA random streams."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)


class ScoreFunction(Messenger):
    """Draw every guide latent without reparameterization (score-function estimators)."""

    def _pyro_sample(self, msg: dict) -> None:
        if not msg["is_observed"] and getattr(msg["fn"], "has_rsample", False):
            fn = msg["fn"]
            while hasattr(fn, "base_dist"):  # Independent, Expanded, Masked: the flag lives below
                fn = fn.base_dist
            if isinstance(fn, Delta):  # a point mass has no density to score: it stays pathwise
                return
            fn.has_rsample_(False)


def run_pair(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict | None = None,
    *,
    num_particles: int = 1,
    max_plate_nesting: int = 0,
    reparameterized: bool = True,
    guide_handler: Messenger | None = None,
    prune: bool = True,
) -> tuple[poutine.Trace, poutine.Trace]:
    """``(model_trace, guide_trace)``: the guide run, the model replayed against it (Pyro's
    ``get_importance_trace``), under a particle plate at dimension ``-(max_plate_nesting+1)``
    when ``num_particles > 1`` (none at 1). ``reparameterized=False`` draws every guide latent
    as if it had no ``rsample``; ``guide_handler`` wraps the guide outside the particle plate
    and inside the trace (it sees each site's particle-shaped distribution, and what it writes
    to the message is recorded). ``prune``: drop the plates' subsample sites."""
    kwargs = kwargs or {}
    if num_particles > 1:
        plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1))
        model, guide = plate(model), plate(guide)
    if not reparameterized:
        guide = ScoreFunction()(guide)  # outside the particle broadcast
    if guide_handler is not None:
        guide = guide_handler(guide)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    if prune:
        return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)
    return model_trace, guide_trace


class Probe(NamedTuple):
    """What one probe saw: the traces (subsample sites kept) and the ``pyro.param`` sites read."""

    model_trace: poutine.Trace
    guide_trace: poutine.Trace
    param_trace: poutine.Trace


def probe(model: Callable, guide: Callable, args: tuple, kwargs: dict | None = None, *,
          validate: bool | None = None, grad: bool = False, keep_params: bool = False) -> Probe:
    """One run of the pair without particles, for looking at it: the random stream restored,
    the sites hidden from outer handlers (``poutine.block``), gradients only with ``grad``,
    Pyro's validation on or off as ``validate`` says (None: as it is), the parameters it
    created kept only with ``keep_params`` (module docstring)."""
    _RUNS[0] += 1
    store = pyro.get_param_store()
    before = set(store.keys())
    validation = pyro.validation_enabled(validate) if validate is not None else contextlib.nullcontext()
    try:
        with forked_rng(), poutine.block(), torch.set_grad_enabled(grad), validation:
            with poutine.trace(param_only=True) as params:
                model_trace, guide_trace = run_pair(model, guide, args, kwargs, prune=False)
    finally:
        if not keep_params:
            for name in [n for n in store.keys() if n not in before]:
                del store[name]
    return Probe(model_trace, guide_trace, params.trace)
