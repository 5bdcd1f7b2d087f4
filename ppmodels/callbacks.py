r"""Callbacks for :func:`ppmodels.fit.fit`: code that runs at fixed points of the SVI loop.

A callback is any object with any of the hooks below; each gets the one :class:`FitState`.
In order, for a run of E epochs of S steps:

``on_fit_start`` · (``on_step_start`` · step · ``on_step_end``) × S · ``on_epoch_end`` … · ``on_fit_end``

``on_epoch_end`` runs after the epoch's history row is filled (train loss, evaluations) and
before it is appended and checkpointed: a callback may add columns to ``state.row``, and may
set ``state.stop = True`` to end training after this epoch (its checkpoint is still written).
``on_fit_end`` runs also when training stops early. Callbacks run in the order given.

Built in: :class:`KLAnnealing` (β warm-up, linear or cyclical, Bowman et al. 2016; Fu et al.
2019), :class:`EarlyStopping`, :class:`TensorBoard` (needs the ``tensorboard`` extra). A
per-step hook such as Pyro's DMM annealing or the sparse-gamma example's parameter clipping is a
few lines::

    class ClipParams:
        def on_step_end(self, state):
            with torch.no_grad():
                for p in state.params.values():
                    p.clamp_(min=-5.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .utils import PPModelsError

__all__ = ["FitState", "Callback", "KLAnnealing", "EarlyStopping", "TensorBoard", "CollapseDiagnostics", "HOOKS"]

HOOKS = ("on_fit_start", "on_step_start", "on_step_end", "on_epoch_end", "on_fit_end")


@dataclass
class FitState:
    """What a callback sees. ``step`` counts optimizer steps taken (0-based in
    ``on_step_start``: the step about to be taken); ``epoch`` is 0-based; ``loss`` is the last
    step's loss on the device (reading it as a float costs a host sync); ``row`` is the epoch's
    history row (in ``on_epoch_end``)."""

    model: Any
    objective: Any
    optimizer: torch.optim.Optimizer
    params: dict[str, Tensor]
    total_steps: int
    steps_per_epoch: int
    out_dir: Path | None = None
    step: int = 0
    epoch: int = 0
    loss: Tensor | None = None
    row: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    stop: bool = False


class Callback:
    """A base with every hook doing nothing (subclassing it is optional)."""

    def on_fit_start(self, state: FitState) -> None: ...

    def on_step_start(self, state: FitState) -> None: ...

    def on_step_end(self, state: FitState) -> None: ...

    def on_epoch_end(self, state: FitState) -> None: ...

    def on_fit_end(self, state: FitState) -> None: ...


def check_callbacks(callbacks: Any) -> list[Any]:
    """The callbacks as a list; an object with none of the hooks is an error."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    for cb in callbacks:
        if not any(callable(getattr(cb, h, None)) for h in HOOKS):
            raise PPModelsError(f"fit: callback {cb!r} has none of the hooks {', '.join(HOOKS)}")
    return list(callbacks)


class KLAnnealing(Callback):
    r"""Set the objective's KL weight β before each step.

    Linear warm-up from ``start`` to ``end`` over ``steps`` steps, then ``end`` (Bowman et al.
    2016). With ``cycles`` = C > 1, the schedule repeats C times over ``steps`` (Fu et al. 2019):
    in each cycle β rises linearly over the first ``ratio`` of it and stays at ``end`` for the
    rest. β depends on the step alone, so a resumed run continues the same schedule. Needs an
    ELBO-family objective (``elbo``, ``meanfield``, ``stl``, ``reinforce``).
    """

    schedules_kl_weight = True  # fit keeps β a tensor input of a traced loss

    def __init__(self, steps: int, start: float = 0.0, end: float = 1.0, cycles: int = 1, ratio: float = 0.5) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise PPModelsError(f"KLAnnealing: steps must be an integer >= 1, got {steps!r}")
        if not isinstance(cycles, int) or cycles < 1:
            raise PPModelsError(f"KLAnnealing: cycles must be an integer >= 1, got {cycles!r}")
        if not (0 < ratio <= 1):
            raise PPModelsError(f"KLAnnealing: ratio must be in (0, 1], got {ratio!r}")
        for name, v in (("start", start), ("end", end)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise PPModelsError(f"KLAnnealing: {name} must be a finite number >= 0, got {v!r}")
        self.steps, self.start, self.end, self.cycles, self.ratio = steps, float(start), float(end), cycles, ratio

    def weight(self, step: int) -> float:
        """β at ``step`` (0-based)."""
        if self.cycles == 1:
            t = min(step / self.steps, 1.0)
        else:
            if step >= self.steps:
                return self.end
            period = self.steps / self.cycles
            t = min((step % period) / (period * self.ratio), 1.0)
        return self.start + (self.end - self.start) * t

    def on_fit_start(self, state: FitState) -> None:
        if not hasattr(state.objective, "set_kl_weight"):
            raise PPModelsError(
                f"KLAnnealing: objective {state.objective.name!r} has no KL weight; use elbo, meanfield, stl or reinforce"
            )
        state.objective.kl_scheduled = True
        state.objective.set_kl_weight(self.weight(state.step))

    def on_step_start(self, state: FitState) -> None:
        state.objective.set_kl_weight(self.weight(state.step))

    def on_epoch_end(self, state: FitState) -> None:
        state.row["kl_weight"] = self.weight(max(state.step - 1, 0))


class EarlyStopping(Callback):
    """Stop when ``metric`` (a history column, e.g. ``"val_elbo"``) has not improved by more than
    ``min_delta`` for ``patience`` epochs; ``mode="max"`` for ELBOs and log-likelihoods,
    ``"min"`` for losses."""

    def __init__(self, metric: str = "val_elbo", patience: int = 5, mode: str = "max", min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise PPModelsError(f"EarlyStopping: mode must be 'max' or 'min', got {mode!r}")
        if not isinstance(patience, int) or patience < 1:
            raise PPModelsError(f"EarlyStopping: patience must be an integer >= 1, got {patience!r}")
        self.metric, self.patience, self.mode, self.min_delta = metric, patience, mode, min_delta
        self.best: float | None = None
        self.waited = 0

    def on_epoch_end(self, state: FitState) -> None:
        if self.metric not in state.row:
            raise PPModelsError(
                f"EarlyStopping: the history has no column {self.metric!r} (columns: {sorted(state.row)}); "
                "pass validation=... for val_elbo"
            )
        value = float(state.row[self.metric])
        better = self.best is None or (value > self.best + self.min_delta if self.mode == "max"
                                       else value < self.best - self.min_delta)
        if better:
            self.best, self.waited = value, 0
        else:
            self.waited += 1
            if self.waited >= self.patience:
                state.stop = True
                state.row["stopped_early"] = True


class TensorBoard(Callback):
    """Scalars to TensorBoard event files in ``log_dir``: the loss every ``every`` steps (one
    host sync each), every numeric column of the history row per epoch, and the model's sample
    grid per epoch when it has ``sample(n)`` returning images. Needs ``pip install
    'ppmodels[tensorboard]'``; imported only when this callback is made."""

    def __init__(self, log_dir: str | Path, every: int = 50, images: int = 64) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise PPModelsError("TensorBoard: the tensorboard package is missing; pip install 'ppmodels[tensorboard]'") from e
        self.writer = SummaryWriter(str(log_dir))
        self.every, self.images = every, images

    def on_step_end(self, state: FitState) -> None:
        if state.step % self.every == 0 and state.loss is not None:
            self.writer.add_scalar("train/loss_step", float(state.loss), state.step)

    def on_epoch_end(self, state: FitState) -> None:
        for key, value in state.row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
                self.writer.add_scalar(f"epoch/{key}", value, state.step)
        sample = getattr(state.model, "sample", None)
        if self.images and callable(sample):
            try:
                images = sample(self.images)
            except Exception:  # noqa: BLE001 - a model without image samples: scalars only
                images = None
            if torch.is_tensor(images) and images.dim() == 2 and math.isqrt(images.shape[1]) ** 2 == images.shape[1]:
                side = math.isqrt(images.shape[1])
                self.writer.add_images("samples", images.reshape(-1, 1, side, side).float().cpu(), state.step)
        self.writer.flush()

    def on_fit_end(self, state: FitState) -> None:
        self.writer.flush()
        self.writer.close()


class CollapseDiagnostics(Callback):
    """Posterior-collapse diagnostics per epoch on ``data`` (a held-out set): the KL term
    (``kl``, nats per datapoint), the active units (Burda et al. 2016, ``active_units``) and the
    KL of each latent unit. At the end, with a run directory, ``kl_units.csv`` (epochs × units)
    and ``kl_units.png`` (the heat map) are written there."""

    def __init__(self, data: Any, threshold: float = 0.01) -> None:
        self.data, self.threshold = data, threshold
        self.per_unit: list[Tensor] = []

    def on_epoch_end(self, state: FitState) -> None:
        from . import evaluate
        from .tracing import forked_rng

        with forked_rng():  # diagnostics do not shift training's random stream
            kls = evaluate.kl_per_unit(state.model, self.data)
            active = evaluate.active_units(state.model, self.data, self.threshold)
        if kls:
            units = torch.cat([v.reshape(-1) for v in kls.values()]).cpu()
            self.per_unit.append(units)
            state.row["kl"] = float(units.sum())
        state.row["active_units"] = sum(active.values())

    def on_fit_end(self, state: FitState) -> None:
        if state.out_dir is None or not self.per_unit:
            return
        import pandas as pd

        table = torch.stack(self.per_unit).numpy()
        first = len(state.history) - len(self.per_unit) + 1
        frame = pd.DataFrame(table, columns=[f"unit_{u}" for u in range(table.shape[1])])
        frame.insert(0, "epoch", range(first, first + len(frame)))
        frame.to_csv(state.out_dir / "kl_units.csv", index=False)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        image = ax.imshow(table.T, aspect="auto", origin="lower", cmap="viridis",
                          extent=(first - 0.5, first + len(frame) - 0.5, -0.5, table.shape[1] - 0.5))
        ax.set_xlabel("epoch")
        ax.set_ylabel("latent unit")
        ax.set_title("KL per latent unit (nats)")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        fig.savefig(state.out_dir / "kl_units.png", dpi=120)
        plt.close(fig)
