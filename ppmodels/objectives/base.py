r"""The interface every objective implements, on the program layer (:mod:`ppmodels.program`).

For a model :math:`p_\theta(x, z)` and a guide :math:`q_\phi(z \mid x)`, an objective draws K
particles — the guide run and the model replayed against it (:func:`ppmodels.program.run_pair`),
once under a particle plate when K > 1 and particles are vectorized, or K times with no particle
plate (``vectorize_particles=False``, always at K = 1, and by itself for a model found to fail
under vectorized particles) — reduces them to log weights (:func:`ppmodels.program.log_weights`)
and builds its bound and surrogate from those.

Objectives are configuration: they hold no state about the programs they see. What a program
is (its plates, nesting, batch plate, ...) comes from :func:`ppmodels.program.facts`, computed
once per program and input shapes. What an estimator learns (a baseline) lives in the param
store under names it declares (:attr:`Objective.state_names`), so it is saved with a run's
checkpoint and restored with it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.infer.elbo import ELBO
from pyro.poutine.messenger import Messenger
from torch import Tensor

from .. import program
from ..program import LogWeights, ProgramFacts, log_mean_exp, log_weights, require_reparameterized, terms
from ..utils import PPModelsError

__all__ = ["Objective", "LogWeights", "log_weights", "log_mean_exp", "terms", "require_reparameterized"]


class Objective(ELBO):
    r"""A variational objective: a bound on :math:`\log p(x)` and a gradient estimator for it.

    Every objective is a ``pyro.infer.ELBO``, so it is a ``loss=`` for ``pyro.infer.SVI``
    (``ELBO.__init__`` is not run: its options are this class's own). ``loss(model, guide, *args)`` returns minus the bound
    estimate as a float; ``differentiable_loss(model, guide, *args)`` a scalar tensor whose
    value is minus the bound estimate and whose autograd gradient is the estimator of minus
    the bound's gradient; ``loss_and_grads`` runs its backward pass.

    Options shared by every objective: ``num_particles`` (K); ``vectorize_particles`` (K > 1
    particles in one pass under a particle plate, the default, or a loop of K passes for
    models that are not broadcast-safe); ``max_plate_nesting`` (a user override; None: the program's own, from its facts);
    ``data_plate`` (the batch plate's name; None: found, see :func:`find_data_plate`);
    ``reparameterized=False`` (draw every latent by the score function).
    """

    name: str = "objective"
    #: whether ``surrogate_terms`` may return one term per datapoint (False: always one term)
    per_term: bool = True
    #: param-store names of what the estimator learns (a baseline), saved with a run
    state_names: tuple[str, ...] = ()
    #: whether a draw changes that state (a baseline's average); False: only the optimizer does
    draws_update_state: bool = True
    #: whether the fast path (:mod:`ppmodels.compiled`) may capture one call (no state between calls)
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
        if max_plate_nesting is not None and (isinstance(max_plate_nesting, bool) or not isinstance(max_plate_nesting, int)
                                              or max_plate_nesting < 0):
            raise PPModelsError(f"objective {self.name!r}: max_plate_nesting must be None (found from the program) "
                                f"or an integer >= 0, got {max_plate_nesting!r}")
        self.num_particles = num_particles
        self.vectorize_particles = vectorize_particles
        self.max_plate_nesting = max_plate_nesting  # a user override only: None means the program's own
        self.data_plate = data_plate
        self.reparameterized = reparameterized

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
        if self.max_plate_nesting is not None:
            out["max_plate_nesting"] = self.max_plate_nesting
        return out

    def with_particles(self, num_particles: int) -> "Objective":
        """A copy of this objective with another particle count (every other option kept)."""
        return self._remade({**self.options(), "num_particles": num_particles})

    def _remade(self, options: dict[str, Any]) -> "Objective":
        """A new objective of this type made with ``options``."""
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
    def facts(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> ProgramFacts:
        """The program's facts (:func:`ppmodels.program.facts`, with this objective's overrides),
        checked for what this objective needs (:func:`ppmodels.program.check_program`)."""
        where = f"objective {self.name!r}"
        found = program.facts(model, guide, args, kwargs, max_plate_nesting=self.max_plate_nesting,
                              data_plate=self.data_plate, where=where)
        program.check_program(found, where=where, enumerates=self.enumerates)
        return found

    def init_state(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        """Create what this estimator learns (its :attr:`state_names`) in the param store, if
        absent, without running the program: ``fit`` calls it before collecting parameters."""

    def state_dict(self) -> dict[str, Tensor]:
        """What this estimator has learned so far: its :attr:`state_names` present in the param
        store, as detached copies (a checkpoint saves them with the run's other params)."""
        store = pyro.get_param_store()
        return {n: store[n].detach().clone() for n in self.state_names if n in store}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Put ``state`` (from :meth:`state_dict`) into the param store; all of it or, when a name
        is not this estimator's or a shape differs from the one held, nothing (an error)."""
        store = pyro.get_param_store()
        for n, value in state.items():
            if n not in self.state_names:
                raise PPModelsError(f"objective {self.name!r}: {n!r} is not its state ({list(self.state_names)}); "
                                    "load the state of the same objective")
            if n in store and store[n].shape != torch.as_tensor(value).shape:
                raise PPModelsError(f"objective {self.name!r}: state {n!r} has shape {tuple(store[n].shape)} here, "
                                    f"{tuple(torch.as_tensor(value).shape)} in what was given; load it for the same program")
        for n, value in state.items():
            if n in store:
                with torch.no_grad():
                    store[n].copy_(value)
            else:
                pyro.param(n, torch.as_tensor(value).clone())

    def warn_once(self, found: ProgramFacts, message: str) -> None:
        program.warn_once(found, message)

    def draw(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, *,
        detach_guide: bool = False, analytic_kl: bool = False, kl_weight: float | Tensor = 1.0,
        guide_handler: Callable[[], Messenger] | None = None,
    ) -> tuple[LogWeights, list[tuple[poutine.Trace, poutine.Trace]]]:
        """Draw ``num_particles`` particles: their :class:`LogWeights` and the (model, guide)
        trace pairs they came from (one pair when vectorized, one per particle otherwise); see
        :func:`ppmodels.program.draw`. ``guide_handler`` makes a fresh :class:`Messenger` per pair."""
        found = self.facts(model, guide, args, kwargs)
        return program.draw(model, guide, args, kwargs, found, num_particles=self.num_particles,
                            vectorize=self.vectorize_particles, where=f"objective {self.name!r}",
                            reparameterized=self.reparameterized, guide_handler=guide_handler,
                            detach_guide=detach_guide, analytic_kl=analytic_kl, kl_weight=kl_weight)

    def log_weights(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> LogWeights:
        """Draw ``num_particles`` particles and return their :class:`LogWeights`."""
        return self.draw(model, guide, args, kwargs)[0]

    # -- the interface ----------------------------------------------------------------------
    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(bound, surrogate)`` per independent term, shape (U,): one per datapoint when the
        batch plate holds every site, else U = 1. Their sums are the bound estimate and a
        tensor whose gradient is the estimator; term u's gradient is that term's own estimate."""
        raise NotImplementedError

    def surrogate(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(bound, surrogate)``: the bound estimate and a scalar with the estimator's gradient."""
        bound, surrogate = self.surrogate_terms(model, guide, *args, **kwargs)
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


