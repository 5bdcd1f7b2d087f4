r"""REINFORCE: score-function ELBO gradients with baselines (Williams 1992; Mnih & Gregor 2014).

Bound: the ELBO. At the non-reparameterized guide sites of datapoint b, with
:math:`\log w_{kb}` that datapoint's log weight (its downstream cost: every model and guide
term of the datapoint, as TraceGraph_ELBO's dependency graph gives for per-datapoint latents),

.. math:: \hat\nabla_\phi = \frac1K\sum_k \big(\log w_{kb} - b_b\big)\,\nabla_\phi \log q(z_{kb} \mid x_b)
          + \text{pathwise terms}

with the baseline :math:`b_b`: ``"none"``; ``"decaying"``, an exponential moving average
(weight ``baseline_decay``) of past mean log weights — past only: the first step has baseline 0,
so no step's baseline depends on its own sample; or ``"neural"``, that average plus a network of
:math:`x_b` (the input-dependent residual, as in NVIL's centring), trained by
:math:`(\log w_{kb} - b_b)^2` (its gradient is added to the surrogate; it does not bias the
estimator because the baseline does not depend on :math:`z_{kb}`). Models whose batch is one
term (global latents or sites outside the batch plate) get a batch-level baseline (``"none"`` or
``"decaying"``), applied to the sites outside every plate only.

Pyro's site-level baselines are honoured: a guide site with ``infer={"baseline": {...}}``
(``use_decaying_avg_baseline`` with ``baseline_beta``, ``nn_baseline`` with
``nn_baseline_input``, ``baseline_value``) gets the baseline it asks for, with Pyro's
``TraceGraph_ELBO`` semantics (its downstream cost summed to the site's plates, the decaying
average per element of that cost, the squared-error baseline loss), instead of the objective's
own, which serves the sites that say nothing.

What the estimator learns lives in the param store: the average as
``reinforce_baseline_avg``/``reinforce_baseline_seen``, the network as
``reinforce_baseline.*`` (a given ``baseline_net`` through ``pyro.module``), a site's average as
Pyro names it (``__baseline_avg_downstream_cost_SITE``). So it is saved with a run's checkpoint
and restored with it; the objective itself holds only its configuration. Vectorized over
particles, and, unlike Pyro's ``TraceGraph_ELBO``, with ``differentiable_loss``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pyro
import torch
from torch import Tensor, nn

from ..program import LogWeights, ProgramFacts
from ..program.weights import downstream_costs, to_terms
from ..utils import PPModelsError
from .elbo import Elbo, _device, elbo_surrogate

__all__ = ["Reinforce", "BASELINES"]

BASELINES = ("none", "decaying", "neural")
SITE_OPTIONS = {"use_decaying_avg_baseline", "baseline_beta", "nn_baseline", "nn_baseline_input", "baseline_value"}
AVG, SEEN, NET = "reinforce_baseline_avg", "reinforce_baseline_seen", "reinforce_baseline"


class Reinforce(Elbo):
    """``"reinforce"``: score-function ELBO gradients with a baseline."""

    free_bits_supported = False
    name = "reinforce"
    jit_safe = False

    def __init__(
        self,
        num_particles: int = 1,
        *,
        baseline: str = "decaying",
        baseline_decay: float = 0.9,
        baseline_net: nn.Module | None = None,
        baseline_input: Callable[..., Tensor] | None = None,
        hidden: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_particles, **kwargs)
        if baseline not in BASELINES:
            raise PPModelsError(f"objective 'reinforce': baseline must be one of {BASELINES}, got {baseline!r}")
        if isinstance(baseline_decay, bool) or not isinstance(baseline_decay, (int, float)) or not 0 <= baseline_decay < 1:
            raise PPModelsError(f"objective 'reinforce': baseline_decay must be in [0, 1), got {baseline_decay!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise PPModelsError(f"objective 'reinforce': hidden must be an integer >= 1, got {hidden!r}")
        self.baseline, self.baseline_decay, self.hidden = baseline, float(baseline_decay), hidden
        self.baseline_net = baseline_net
        self.baseline_input = baseline_input or (lambda *args, **kwargs: args[0])

    def options(self) -> dict[str, Any]:
        return {**super().options(), "baseline": self.baseline, "baseline_decay": self.baseline_decay}

    @property
    def state_names(self) -> tuple[str, ...]:
        """The average each call updates (averaged across data-parallel ranks); none without one."""
        return () if self.baseline == "none" else (AVG, SEEN)

    # -- the learned state, in the param store ---------------------------------------------
    def init_state(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
        if self.baseline == "none":
            return
        device = _device(args)
        pyro.param(AVG, lambda: torch.zeros((), device=device))
        pyro.param(SEEN, lambda: torch.zeros((), device=device))
        if self.baseline == "neural":
            x = self.baseline_input(*args, **kwargs).detach()
            self._network(x.reshape(x.shape[0], -1))

    def _network(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """The neural baseline as a function of ``x`` (B, D): the given ``baseline_net`` through
        ``pyro.module``, or a one-hidden-layer tanh network whose weights are params
        ``reinforce_baseline.*`` (created on first use, Glorot-uniform, from the random stream)."""
        if self.baseline_net is not None:
            return pyro.module(NET, self.baseline_net)
        d, h = x.shape[-1], self.hidden

        def glorot(rows: int, cols: int) -> Callable[[], Tensor]:
            bound = math.sqrt(6.0 / (rows + cols))
            return lambda: (torch.rand(rows, cols, device=x.device) * 2 - 1) * bound

        w1, b1 = pyro.param(f"{NET}.w1", glorot(d, h)), pyro.param(f"{NET}.b1", lambda: torch.zeros(h, device=x.device))
        w2, b2 = pyro.param(f"{NET}.w2", glorot(h, 1)), pyro.param(f"{NET}.b2", lambda: torch.zeros(1, device=x.device))
        if w1.shape[0] != d:
            raise PPModelsError(f"objective 'reinforce': the neural baseline's params {NET}.* take inputs of width "
                                f"{w1.shape[0]}, but this program's are {d} wide; clear the param store for a new program")
        return lambda inputs: (torch.tanh(inputs @ w1 + b1) @ w2 + b2).squeeze(-1)

    def _past_average(self, signal: Tensor) -> Tensor:
        """The decaying average of past mean signals (0 before any), then updated with this one."""
        mean = signal.mean()
        avg = pyro.param(AVG, lambda: torch.zeros((), device=mean.device))
        seen = pyro.param(SEEN, lambda: torch.zeros((), device=mean.device))
        centre = torch.where(seen > 0, avg, torch.zeros_like(avg)).detach().clone()
        with torch.no_grad():
            avg.copy_(torch.where(seen > 0, self.baseline_decay * avg + (1 - self.baseline_decay) * mean, mean))
            seen.add_(1.0)
        return centre

    # -- the estimator ----------------------------------------------------------------------
    def surrogate_terms(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        lw, pairs = self.draw(model, guide, args, kwargs, kl_weight=self._kl_weight(_device(args)))
        if not lw.has_score:
            return elbo_surrogate(lw)
        sited = [n for n in lw.facts.baseline_sites if n in lw.facts.score_sites]
        own_score, correction = (_site_baselines(lw, pairs, sited) if sited
                                 else (torch.zeros_like(lw.score), torch.zeros_like(lw.score)))
        bound, surrogate = self._default_baseline(lw, own_score, args, kwargs)
        return bound, surrogate + correction.mean(0)

    def _default_baseline(self, lw: LogWeights, own_score: Tensor, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
        """The objective's own baseline, on the score functions of the sites without one of theirs."""
        if self.baseline == "none":
            return elbo_surrogate(lw)
        signal = lw.log_w.detach()  # (K, U): per datapoint, or the whole batch
        centre = self._past_average(signal)
        if self.baseline == "decaying":
            if not lw.per_datapoint:  # a batch-level baseline suits only the sites outside every plate
                return elbo_surrogate(lw, centre, lw.outside_score - _outside(own_score, lw))
            return elbo_surrogate(lw, centre, lw.score - own_score)
        if not lw.per_datapoint:
            raise PPModelsError(
                "objective 'reinforce': the neural baseline needs per-datapoint terms (here "
                f"{lw.why_batch}); use baseline='decaying'"
            )
        x = self.baseline_input(*args, **kwargs).detach()
        x = x.reshape(x.shape[0], -1)
        b = centre + self._network(x)(x)  # (B,)
        bound, surrogate = elbo_surrogate(lw, b.detach(), lw.score - own_score)
        regression = ((signal - b) ** 2).mean(0)  # (B,), trains the baseline network
        return bound, surrogate - regression


def _outside(own_score: Tensor, lw: LogWeights) -> Tensor:
    """The part of ``own_score`` from sites outside every plate: all of it when the batch is one
    term with no batch plate, else none (site-level scores inside a plate are per datapoint)."""
    return own_score if lw.facts.data_plate is None else torch.zeros_like(own_score)


def _site_baselines(lw: LogWeights, pairs: list, sites: list[str]) -> tuple[Tensor, Tensor]:
    """Pyro's site-level baselines (module docstring) for ``sites``: ``(their score functions,
    the surrogate's correction)``, each (K, U). The correction is
    :math:`-\\sum_s \\log q(z_s)\\,\\bar b_s - (\\overline{\\text{cost}_s} - b_s)^2` summed to
    terms (the second part trains ``nn_baseline`` and ``baseline_value``; it carries no
    gradient to the guide)."""
    facts: ProgramFacts = lw.facts
    vectorized = len(pairs) == 1 and lw.log_w.shape[0] > 1
    pdim = -(facts.max_plate_nesting + 1) if vectorized else None
    scores, corrections = [], []
    for model_trace, guide_trace in pairs:
        log_r = downstream_costs(model_trace, guide_trace, {})
        score = correction = 0.0
        for name in sites:
            site = guide_trace.nodes[name]
            sf = site["score_parts"].score_function
            cost = log_r.sum_to(site["cond_indep_stack"])
            b, loss = _pyro_baseline(name, site, cost)
            score = score + to_terms(sf, pdim, facts.data_dim)
            correction = correction - to_terms(sf * b.detach(), pdim, facts.data_dim)
            if loss is not None:
                correction = correction - to_terms(loss, pdim, facts.data_dim)
        scores.append(torch.as_tensor(score))
        corrections.append(torch.as_tensor(correction))
    shape = lw.score.shape
    score = torch.cat([s.expand(-1, shape[1]) if s.dim() == 2 else s.expand(shape[0] // len(pairs), shape[1])
                       for s in scores])
    correction = torch.cat([c.expand(-1, shape[1]) if c.dim() == 2 else c.expand(shape[0] // len(pairs), shape[1])
                            for c in corrections])
    if lw.scale != 1.0:
        correction = correction / lw.scale  # per datapoint, like the other terms
    return score.expand(shape), correction.expand(shape)


def _pyro_baseline(name: str, site: dict, cost: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(baseline, squared-error loss or None)`` of one guide site's ``infer["baseline"]``
    options, as Pyro's ``TraceGraph_ELBO`` builds them."""
    options = dict(site["infer"].get("baseline", {}))
    unknown = sorted(set(options) - SITE_OPTIONS)
    if unknown:
        raise PPModelsError(f"objective 'reinforce': site {name!r} has unknown baseline options {unknown}; "
                            f"Pyro's are {sorted(SITE_OPTIONS)}")
    net, value = options.get("nn_baseline"), options.get("baseline_value")
    if net is not None and value is not None:
        raise PPModelsError(f"objective 'reinforce': site {name!r} gives both nn_baseline and baseline_value; give one")
    baseline: Tensor = torch.zeros_like(cost)
    if options.get("use_decaying_avg_baseline", False):
        decay = options.get("baseline_beta", 0.90)
        avg = pyro.param(f"__baseline_avg_downstream_cost_{name}", lambda: torch.zeros_like(cost))
        if avg.shape != cost.shape:
            raise PPModelsError(f"objective 'reinforce': site {name!r}'s decaying baseline has shape "
                                f"{tuple(avg.shape)} but its downstream cost {tuple(cost.shape)}; keep the batch size fixed")
        old = avg.detach().clone()
        with torch.no_grad():
            avg.copy_((1 - decay) * cost + decay * avg)
        baseline = baseline + old
    if net is not None:
        inputs = options.get("nn_baseline_input")
        inputs = tuple(t.detach() for t in inputs) if isinstance(inputs, (tuple, list)) else inputs.detach()
        baseline = baseline + (net(*inputs) if isinstance(inputs, tuple) else net(inputs))
    elif value is not None:
        baseline = baseline + value
    if baseline.shape != cost.shape:
        raise PPModelsError(f"objective 'reinforce': site {name!r}'s baseline has shape {tuple(baseline.shape)} but "
                            f"its downstream cost {tuple(cost.shape)}; make them equal")
    loss = (cost.detach() - baseline) ** 2 if net is not None or value is not None else None
    return baseline, loss
