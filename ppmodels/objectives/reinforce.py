r"""REINFORCE: score-function ELBO gradients with baselines (Williams 1992; Mnih & Gregor 2014).

Bound: the ELBO. At the non-reparameterized guide sites of datapoint b, with
:math:`\log w_{kb}` that datapoint's log weight (its downstream cost: every model and guide
term of the datapoint, as TraceGraph_ELBO's dependency graph gives for per-datapoint latents),

.. math:: \hat\nabla_\phi = \frac1K\sum_k \big(\log w_{kb} - b_b\big)\,\nabla_\phi \log q(z_{kb} \mid x_b)
          + \text{pathwise terms}

with the baseline :math:`b_b`: ``"none"``; ``"decaying"``, an exponential moving average
(weight ``beta``) of past mean log weights — past only: the first step has baseline 0, so
no step's baseline depends on its own sample — kept as (gradient-free) Pyro params so it is
checkpointed; or ``"neural"``, that average plus a network of :math:`x_b` (the input-dependent
residual, as in NVIL's centring), trained by :math:`(\log w_{kb} - b_b)^2`
(its gradient is added to the surrogate; it does not bias the estimator because the baseline
does not depend on :math:`z_{kb}`). Models whose batch is one unit (global latents or sites outside the batch plate) get a
batch-level baseline (``"none"`` or ``"decaying"``), applied to the sites outside every plate
only: a site inside a plate has a per-datapoint cost that a whole-batch average does not centre. Vectorized over particles, and, unlike Pyro's
``TraceGraph_ELBO``, with ``differentiable_loss``.
"""

from __future__ import annotations

from typing import Any, Callable

import pyro
import torch
from torch import Tensor, nn

from ..utils import PPModelsError
from .elbo import Elbo, _device, elbo_surrogate

__all__ = ["Reinforce", "BASELINES"]

BASELINES = ("none", "decaying", "neural")


class Reinforce(Elbo):
    """``"reinforce"``: score-function ELBO gradients with a baseline."""

    free_bits_supported = False
    name = "reinforce"
    state_params = ("reinforce_baseline_avg", "reinforce_baseline_seen")  # averaged across data-parallel ranks
    jit_safe = False

    def __init__(
        self,
        num_particles: int = 1,
        *,
        baseline: str = "decaying",
        beta: float = 0.9,
        baseline_net: nn.Module | None = None,
        baseline_input: Callable[..., Tensor] | None = None,
        hidden: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_particles, **kwargs)
        if baseline not in BASELINES:
            raise PPModelsError(f"objective 'reinforce': baseline must be one of {BASELINES}, got {baseline!r}")
        if not 0 <= beta < 1:
            raise PPModelsError(f"objective 'reinforce': beta must be in [0, 1), got {beta!r}")
        self.baseline, self.beta, self.hidden = baseline, beta, hidden
        self.baseline_net = baseline_net
        self.baseline_input = baseline_input or (lambda *args, **kwargs: args[0])

    def options(self) -> dict[str, Any]:
        return {**super().options(), "baseline": self.baseline, "beta": self.beta}

    def _neural(self, args: tuple, kwargs: dict) -> Tensor:
        x = self.baseline_input(*args, **kwargs).detach()
        x = x.reshape(x.shape[0], -1)
        if self.baseline_net is None:
            self.baseline_net = nn.Sequential(
                nn.Linear(x.shape[-1], self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1), nn.Flatten(0)
            ).to(x.device)
        return pyro.module("reinforce_baseline", self.baseline_net)(x)

    def surrogate_units(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        lw, _ = self.draw(model, guide, args, kwargs, kl_weight=self._kl_weight(_device(args)))
        if self.baseline == "none" or not lw.has_score:
            return elbo_surrogate(lw)
        signal = lw.log_w.detach()  # (K, U): per datapoint, or the whole batch
        mean = signal.mean()
        avg = pyro.param("reinforce_baseline_avg", lambda: torch.zeros((), device=mean.device))
        seen = pyro.param("reinforce_baseline_seen", lambda: torch.zeros((), device=mean.device))
        # the average of *past* signals: before any, the baseline is 0 (not this draw's own mean)
        centre = torch.where(seen > 0, avg, torch.zeros_like(avg)).detach().clone()
        with torch.no_grad():
            avg.copy_(torch.where(seen > 0, self.beta * avg + (1 - self.beta) * mean, mean))
            seen.add_(1.0)
        if self.baseline == "decaying":
            if not lw.per_datapoint:  # a batch-level baseline suits only the sites outside every plate
                return elbo_surrogate(lw, centre, lw.outside_score)
            return elbo_surrogate(lw, centre)
        if not lw.per_datapoint:
            raise PPModelsError(
                "objective 'reinforce': the neural baseline needs per-datapoint units (here "
                f"{lw.why_batch}); use baseline='decaying'"
            )
        b = centre + self._neural(args, kwargs)  # (B,)
        bound, surrogate = elbo_surrogate(lw, b.detach())
        regression = ((signal - b) ** 2).mean(0)  # (B,), trains the baseline network
        return bound, surrogate - regression
