r"""Callbacks for :func:`ppmodels.fit.fit`: code that runs at fixed points of the SVI loop.

A callback is any object with any of the hooks below; each gets the one :class:`FitState`.
In order, for a run of E epochs of S steps:

``on_fit_start`` · [``on_epoch_start`` · (``on_step_start`` · step · ``on_step_end``) × S ·
``on_epoch_end``] × E · ``on_fit_end``

fit itself is a short loop around these hooks: what it does besides the optimizer step is done
by the built-in callbacks below, placed around the user's ones. Per epoch, in order:
:class:`LossMonitor` (the NaN guard and the ``train_loss``/``lr`` columns), :class:`Evaluation`
(``val_elbo``/``test_elbo``), *the user's callbacks*, :class:`History` (``seconds``; the row is
appended), :class:`Checkpoint` (``checkpoint.pt`` and ``history.csv``), :class:`ProgressBar`.
So a user's ``on_epoch_end`` sees the filled row, may add columns to ``state.row``, and may set
``state.stop = True`` to end training after this epoch (its checkpoint is still written).
``on_fit_end`` runs also when training stops early or fails (then ``state.error`` is set, and
an error inside ``on_fit_end`` does not hide the first one). Callbacks run in the order given.

fit checks each callback's shape before any work (:func:`check_callbacks`): an instance, not a
class; each hook a callable taking the state; no misspelt hook; no object given twice. The
built-in callbacks check their arguments when made, with the one-line errors of fit's options
(:class:`ppmodels.settings.Want`).

A callback with state that a resumed run must continue, or settings that a resumed run must
share, says so with ``trajectory()`` (a dict of plain values: a resume with others is refused,
as for fit's own settings) and ``state_dict()`` / ``load_state_dict(state)`` (plain values and
tensors: saved in every checkpoint, loaded on resume). :class:`KLAnnealing`,
:class:`TemperatureAnnealing`, :class:`EarlyStopping` and :class:`CollapseDiagnostics` do; so
an interrupted and resumed run stops at the same epoch as an uninterrupted one. A callback
that acts after given epochs says which in ``at_epochs``; fit refuses any past the run's end.

For the user: :class:`KLAnnealing` (β warm-up, linear or cyclical, Bowman et al. 2016; Fu et al.
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

import difflib
import inspect
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import Tensor

from .rundir import (CHECKPOINT, NonFiniteState, atomic_copy, kept_checkpoint, save_checkpoint, write_csv,
                     write_figure)
from .settings import COUNT, EPOCHS, FINITE, FLAG, NATURAL, NONNEGATIVE, POSITIVE, SCHEDULES, SEED, Want
from .utils import PPModelsError, rng_state

__all__ = ["FitState", "Callback", "KLAnnealing", "TemperatureAnnealing", "EarlyStopping", "TensorBoard", "CollapseDiagnostics", "HOOKS",
           "LearningRate", "LossMonitor", "Evaluation", "History", "Checkpoint", "ProgressBar", "NonFiniteLoss",
           "lr_factor", "SCHEDULES", "ImportanceNLL", "check_callbacks", "stateful"]

HOOKS = ("on_fit_start", "on_epoch_start", "on_step_start", "on_step_end", "on_epoch_end", "on_fit_end")
BURDA_STAGES = 8  # Burda et al.: 3^i passes at 10^(-i/7), i = 0..7 (3280 passes)


class NonFiniteLoss(PPModelsError, FloatingPointError):
    """The loss became NaN or inf during training."""


@dataclass
class FitState:
    """What a callback sees. ``step`` counts optimizer steps taken (0-based in
    ``on_step_start``: the step about to be taken); ``epoch`` is 0-based; ``batch`` is the
    step's batch; ``loss`` is the last step's loss on the device (reading it as a float costs a
    host sync); ``row`` is the epoch's history row (filled in ``on_epoch_end``); ``checkpoint``
    is the last good checkpoint written (or found on resume); ``seconds`` the training wall time
    before this call of fit (a resumed run's earlier time)."""

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
    batch: tuple | None = None
    checkpoint: Path | None = None
    seconds: float = 0.0
    error: BaseException | None = None
    name: str = "model"
    group: Any = None  # the data-parallel ranks (:class:`ppmodels.distributed.Group`), or None


class Callback:
    """A base with every hook doing nothing (subclassing it is optional)."""

    def on_fit_start(self, state: FitState) -> None: ...

    def on_epoch_start(self, state: FitState) -> None: ...

    def on_step_start(self, state: FitState) -> None: ...

    def on_step_end(self, state: FitState) -> None: ...

    def on_epoch_end(self, state: FitState) -> None: ...

    def on_fit_end(self, state: FitState) -> None: ...


def check_callbacks(callbacks: Any) -> list[Any]:
    """The callbacks as a list, each checked: an instance (not a class) with at least one of the
    :data:`HOOKS`, each hook it has a callable taking one argument (the :class:`FitState`), no
    ``on_...`` method that is a misspelt hook, ``state_dict`` with ``load_state_dict``, and no
    object given twice (its state would advance twice)."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    seen: set[int] = set()
    for cb in callbacks:
        if isinstance(cb, type):
            raise PPModelsError(f"fit: callback {cb.__name__} is a class; pass an instance, e.g. {cb.__name__}(...)")
        if not any(callable(getattr(cb, h, None)) for h in HOOKS):
            raise PPModelsError(f"fit: callback {cb!r} has none of the hooks {', '.join(HOOKS)}")
        name = type(cb).__name__
        if id(cb) in seen:
            raise PPModelsError(f"fit: callback {name} is given twice; give it once (or two instances)")
        seen.add(id(cb))
        for hook in HOOKS:
            method = getattr(cb, hook, None)
            if method is None:
                continue
            if not callable(method):
                raise PPModelsError(f"fit: callback {name}'s {hook} is a {type(method).__name__}, not a method")
            try:
                inspect.signature(method).bind(None)
            except TypeError:
                raise PPModelsError(f"fit: callback {name}'s {hook} must take one argument, the FitState; "
                                    f"define {hook}(self, state)") from None
            except ValueError:  # no signature to read (a builtin): trusted
                pass
        for attr in dir(cb):
            near = difflib.get_close_matches(attr, HOOKS, n=1, cutoff=0.8) if attr.startswith("on_") else []
            if near and attr not in HOOKS and callable(getattr(cb, attr, None)):
                raise PPModelsError(f"fit: callback {name} has {attr}, which fit never calls; did you mean {near[0]}?")
        if callable(getattr(cb, "state_dict", None)) != callable(getattr(cb, "load_state_dict", None)):
            raise PPModelsError(f"fit: callback {name} has only one of state_dict and load_state_dict; a resumed run "
                                "needs both")
    return list(callbacks)


def stateful(callbacks: Any) -> dict[str, Any]:
    """The callbacks that take part in a resume (with ``trajectory`` or ``state_dict``), by the
    key the checkpoint records them under: the class name, ``#2``, ``#3``... for repeats."""
    out: dict[str, Any] = {}
    for cb in callbacks:
        if callable(getattr(cb, "trajectory", None)) or callable(getattr(cb, "state_dict", None)):
            name, n = type(cb).__name__, 1
            while (key := name if n == 1 else f"{name}#{n}") in out:
                n += 1
            out[key] = cb
    return out


def _data(value: Any, where: str) -> Any:
    """A callback's data argument as :class:`ppmodels.data.TensorData` (one-line error otherwise)."""
    from .data import as_data

    if value is None:
        raise PPModelsError(f"{where}: data is None; give the held-out data (a TensorData or a tensor)")
    return as_data(value, f"{where} data")


class KLAnnealing(Callback):
    r"""Set the objective's KL weight β before each step.

    Linear warm-up from ``start`` to ``end`` over ``steps`` steps, then ``end`` (Bowman et al.
    2016). With ``cycles`` = C > 1, the schedule repeats C times over ``steps`` (Fu et al. 2019):
    in each cycle β rises linearly over the first ``ratio`` of it and stays at ``end`` for the
    rest. β depends on the step alone, so a resumed run continues the same schedule. Needs an
    ELBO-family objective (``elbo``, ``meanfield``, ``stl``, ``reinforce``).
    """

    def __init__(self, steps: int, start: float = 0.0, end: float = 1.0, cycles: int = 1, ratio: float = 0.5) -> None:
        where = "KLAnnealing"
        self.steps, self.cycles = COUNT.check(where, "steps", steps), COUNT.check(where, "cycles", cycles)
        self.start, self.end = float(NONNEGATIVE.check(where, "start", start)), float(NONNEGATIVE.check(where, "end", end))
        self.ratio = float(Want("a number in (0, 1]", lambda v: FINITE.ok(v) and 0 < v <= 1).check(where, "ratio", ratio))
        if cycles > steps:
            raise PPModelsError(f"KLAnnealing: {cycles} cycles over {steps} steps leave less than a step per cycle; "
                                "use at most as many cycles as steps")

    def trajectory(self) -> dict[str, Any]:
        return {"steps": self.steps, "start": self.start, "end": self.end, "cycles": self.cycles, "ratio": self.ratio}

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
        if self.steps > state.total_steps and state.step < state.total_steps:
            warnings.warn(f"KLAnnealing: the warm-up of {self.steps} steps is longer than the run's {state.total_steps}; "
                          f"β ends at {self.weight(state.total_steps - 1):.3g}, not {self.end:g} (resume with more "
                          "epochs to finish it, or shorten the warm-up)", stacklevel=2)
        state.objective.set_kl_weight(self.weight(state.step))

    def on_step_start(self, state: FitState) -> None:
        state.objective.set_kl_weight(self.weight(state.step))

    def on_epoch_end(self, state: FitState) -> None:
        state.row["kl_weight"] = self.weight(max(state.step - 1, 0))


class TemperatureAnnealing(Callback):
    r"""Set a relaxed objective's temperature τ before each step (``gumbel``, ``st-gumbel``):
    Jang et al.'s schedule :math:`\tau_t = \max(\text{end}, \text{start}\cdot e^{-\text{rate}\,t})`.
    τ depends on the step alone, so a resumed run continues the same schedule."""

    def __init__(self, start: float = 1.0, end: float = 0.5, rate: float = 3e-5) -> None:
        where = "TemperatureAnnealing"
        self.start, self.end = float(POSITIVE.check(where, "start", start)), float(POSITIVE.check(where, "end", end))
        self.rate = float(NONNEGATIVE.check(where, "rate", rate))
        if end > start:
            raise PPModelsError(f"TemperatureAnnealing: end {end!r} must not exceed start {start!r}")

    def trajectory(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "rate": self.rate}

    def temperature(self, step: int) -> float:
        """τ at ``step`` (0-based)."""
        return max(self.end, self.start * math.exp(-self.rate * step))

    def on_fit_start(self, state: FitState) -> None:
        if not hasattr(state.objective, "temperature"):
            raise PPModelsError(f"TemperatureAnnealing: objective {state.objective.name!r} has no temperature; "
                                "use gumbel or st-gumbel")

    def on_step_start(self, state: FitState) -> None:
        state.objective.temperature = self.temperature(state.step)

    def on_epoch_end(self, state: FitState) -> None:
        state.row["temperature"] = self.temperature(max(state.step - 1, 0))


class EarlyStopping(Callback):
    """Stop when ``metric`` (a history column, e.g. ``"val_elbo"``) has not improved by more than
    ``min_delta`` for ``patience`` epochs; ``mode="max"`` for ELBOs and log-likelihoods,
    ``"min"`` for losses."""

    def __init__(self, metric: str = "val_elbo", patience: int = 5, mode: str = "max", min_delta: float = 0.0) -> None:
        where = "EarlyStopping"
        self.metric = Want("a history column's name, e.g. 'val_elbo'", lambda v: isinstance(v, str) and v != "").check(
            where, "metric", metric)
        self.patience = COUNT.check(where, "patience", patience)
        self.mode = Want("'max' or 'min'", lambda v: v in ("max", "min")).check(where, "mode", mode)
        self.min_delta = float(NONNEGATIVE.check(where, "min_delta", min_delta))
        self.best: float | None = None
        self.waited = 0

    def trajectory(self) -> dict[str, Any]:
        return {"metric": self.metric, "patience": self.patience, "mode": self.mode, "min_delta": self.min_delta}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "waited": self.waited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.waited = state["best"], int(state["waited"])

    def on_fit_start(self, state: FitState) -> None:
        if state.step == 0:  # a fresh run (an instance used before starts over)
            self.best, self.waited = None, 0
        elif self.waited >= self.patience:  # resuming a run that had stopped: it stays stopped
            state.stop = True

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
        where = "TensorBoard"
        folder = Path(Want("a folder path", lambda v: isinstance(v, (str, os.PathLike)) and str(v) != "").check(
            where, "log_dir", log_dir))
        if folder.exists() and not folder.is_dir():
            raise PPModelsError(f"TensorBoard: log_dir {folder} is a file; give a folder")
        self.every = COUNT.check(where, "every", every)
        self.images = Want(f"{NATURAL.text} (0: no image grid)", NATURAL.ok).check(
            where, "images", images)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise PPModelsError("TensorBoard: the tensorboard package is missing; pip install 'ppmodels[tensorboard]'") from e
        self.writer = SummaryWriter(str(folder))

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
        self.data = _data(data, "CollapseDiagnostics")
        self.threshold = float(NONNEGATIVE.check("CollapseDiagnostics", "threshold", threshold))
        self.per_unit: list[Tensor] = []

    def trajectory(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "rows": len(self.data)}

    def state_dict(self) -> dict[str, Any]:
        """The KL per unit of every epoch so far: a resumed run's kl_units.csv has them all."""
        return {"per_unit": torch.stack(self.per_unit) if self.per_unit else torch.zeros(0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.per_unit = list(state["per_unit"]) if state["per_unit"].numel() else []

    def on_fit_start(self, state: FitState) -> None:
        if state.step == 0:
            self.per_unit = []

    def on_epoch_end(self, state: FitState) -> None:
        from . import evaluate
        from .program.probe import forked_rng

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
        write_csv(state.out_dir / "kl_units.csv", frame)
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
        write_figure(state.out_dir / "kl_units.png", fig, dpi=120)


# -- built in: what fit runs around the user's callbacks ---------------------------------------


def lr_factor(schedule: str | Callable[[int], float] | None, step: int, total_steps: int, steps_per_epoch: int) -> float:
    r"""Multiplier of the base learning rate at ``step`` (0-based).

    ``"cosine"``: :math:`\frac12(1 + \cos(\pi t / T))`; ``"burda"``: :math:`10^{-i/7}` during
    epochs :math:`[\sum_{j<i} 3^j, \sum_{j\le i} 3^j)` (Burda et al. 2016); ``"burda-compressed"``:
    the same eight stages shrunk in proportion to the run, stage i covering the fraction
    :math:`3^i / 3280` of the T steps (a run of P passes spends :math:`3^i P/3280` passes in stage
    i; P = 3280 is Burda's schedule); a callable gets the step.
    """
    if schedule is None or schedule == "constant":
        return 1.0
    if callable(schedule):
        return float(schedule(step))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    if schedule == "burda":
        epoch, i, edge = step // max(steps_per_epoch, 1), 0, 1
        while epoch >= edge and i < 7:
            i += 1
            edge += 3**i
        return 10 ** (-i / 7)
    if schedule == "burda-compressed":
        i, edge = 0, 1  # in units of T/3280 steps, exact integers
        while step * 3280 >= edge * max(total_steps, 1) and i < BURDA_STAGES - 1:
            i += 1
            edge += 3**i
        return 10 ** (-i / 7)
    raise PPModelsError(f"fit: lr_schedule must be one of {SCHEDULES} or a callable, got {schedule!r}")


class LearningRate(Callback):
    """Set every parameter group's learning rate to ``lr · lr_factor(schedule, step)`` before each step."""

    def __init__(self, lr: float, schedule: str | Callable[[int], float] | None = None) -> None:
        self.lr, self.schedule = lr, schedule

    def on_fit_start(self, state: FitState) -> None:
        self.constant = self.schedule in (None, "constant")
        if self.constant:
            for group in state.optimizer.param_groups:
                group["lr"] = self.lr

    def on_step_start(self, state: FitState) -> None:
        if self.constant:
            return
        value = self.lr * lr_factor(self.schedule, state.step, state.total_steps, state.steps_per_epoch)
        for group in state.optimizer.param_groups:
            group["lr"] = value


class LossMonitor(Callback):
    """The NaN guard and the epoch's mean training loss. The steps' losses are kept as they are
    (no work and no host sync per step); every ``log_every`` steps and at the epoch's end they
    are summed in one read, and a non-finite loss raises :class:`NonFiniteLoss` naming its step and the last good checkpoint.
    Fills the row's ``train_loss`` (minus the objective per datapoint) and ``lr``;
    ``running_loss`` is the epoch's mean so far, as of the last read. With a data-parallel
    ``group``, each read sums the loss, the rows and the NaN flag over ranks (every rank stops
    together)."""

    def __init__(self, log_every: int = 50, group: Any = None) -> None:
        self.log_every, self.group = log_every, group
        self.running_loss = float("nan")

    def on_epoch_start(self, state: FitState) -> None:
        self.device = state.params[next(iter(state.params))].device
        self.losses: list[Tensor] = []  # this read's step losses (references: no work per step)
        self.first_step = state.step  # the step number of losses[0], minus one
        self.total, self.seen, self.rows = 0.0, 0, 0

    def on_step_end(self, state: FitState) -> None:
        self.losses.append(state.loss)
        self.rows += state.batch[0].shape[0]
        if state.step % self.log_every == 0 or state.step == state.total_steps:
            self._read(state)

    def _read(self, state: FitState) -> None:
        bad_step, total, seen = -1, 0.0, self.rows  # this read's losses and rows
        if self.losses:
            losses = torch.stack(self.losses)
            finite = torch.isfinite(losses)
            # one host read: the losses' sum, and the index of the first non-finite one (or n)
            first = torch.where(finite, len(self.losses), torch.arange(len(self.losses), device=losses.device)).min()
            summary = torch.stack([torch.where(finite, losses, 0.0).sum().double(), first.double()]).tolist()
            total = summary[0]
            if summary[1] < len(self.losses):
                bad_step = self.first_step + int(summary[1])
            self.first_step += len(self.losses)
            self.losses = []
        self.rows = 0
        bad_ranks = 0
        if self.group is not None:
            total, seen, bad_ranks = self.group.sum([total, seen, bad_step >= 0], self.device)
            if self.group.average:  # each rank's loss estimated the whole batch's: their mean is the loss
                total /= self.group.world_size
        if bad_step >= 0 or bad_ranks:
            where = f"the last good checkpoint is {state.checkpoint}" if state.checkpoint else "no checkpoint was written yet"
            at = f"at step {bad_step + 1}" if bad_step >= 0 else "on another process"
            raise NonFiniteLoss(
                f"{state.name}: the loss became NaN/inf {at}; {where}. "
                "Try a lower lr, clip_norm=..., or check the data"
            )
        self.total, self.seen = self.total + total, self.seen + seen
        self.running_loss = self.total / max(self.seen, 1)

    def on_epoch_end(self, state: FitState) -> None:
        self._read(state)
        state.row["train_loss"] = self.running_loss
        state.row["lr"] = state.optimizer.param_groups[0]["lr"]


class Evaluation(Callback):
    """``val_elbo`` and ``test_elbo`` per epoch: the ELBO per datapoint on each given set, with
    ``particles`` particles (:func:`ppmodels.evaluate.elbo`); data-parallel (``group``), the
    rows are split across ranks and the mean gathered."""

    def __init__(self, validation: Any = None, test: Any = None, particles: int = 1, group: Any = None) -> None:
        self.sets = {k: v for k, v in (("val_elbo", validation), ("test_elbo", test)) if v is not None}
        self.particles, self.group = particles, group

    def on_epoch_end(self, state: FitState) -> None:
        from . import evaluate

        for column, data in self.sets.items():
            if self.group is None:
                state.row[column] = float(evaluate.elbo(state.model, data, self.particles).mean())
            else:  # each rank its block of rows, the mean gathered
                state.row[column] = self.group.mean_over_rows(
                    lambda part: evaluate.elbo(state.model, part, self.particles), data, data.device)


class History(Callback):
    """Close the epoch's row (``seconds``: cumulative training wall time, a resumed run's earlier
    time included) and append it to ``state.history``."""

    def on_fit_start(self, state: FitState) -> None:
        self.t0 = time.perf_counter() - state.seconds

    def on_epoch_end(self, state: FitState) -> None:
        state.row["seconds"] = time.perf_counter() - self.t0
        state.history.append(state.row)


class Checkpoint(Callback):
    """Write the run directory each epoch: ``checkpoint.pt`` (parameters, optimizer, RNG state,
    history, the trajectory and state of the ``resumable`` callbacks (see :func:`stateful`),
    ``record``: the run's settings and meta; verified finite, see
    :func:`ppmodels.rundir.save_checkpoint`) and ``history.csv``; after the epochs in
    ``keep_epochs`` (1-based) also a copy, ``checkpoint-epoch{N}.pt``. A run that is not resumed
    replaces the directory's run: its first checkpoint removes the old run's kept copies. A
    non-finite parameter raises :class:`NonFiniteLoss` and the last good checkpoint stays."""

    def __init__(self, out_dir: Path, record: dict[str, Any], resumed: bool = False, keep_epochs: Any = (),
                 resumable: dict[str, Any] | None = None) -> None:
        self.out_dir, self.record, self.resumed = Path(out_dir), record, resumed
        self.resumable = resumable or {}
        self.keep_epochs = frozenset(keep_epochs)
        self.replacing = not resumed

    def on_fit_start(self, state: FitState) -> None:
        if self.resumed and (self.out_dir / CHECKPOINT).exists():
            state.checkpoint = self.out_dir / CHECKPOINT
            # killed between writing the checkpoint of a kept epoch and copying it
            kept = self.out_dir / kept_checkpoint(state.epoch)
            if state.epoch in self.keep_epochs and not kept.exists():
                atomic_copy(state.checkpoint, kept)

    def on_epoch_end(self, state: FitState) -> None:
        try:
            save_checkpoint(self.out_dir, {
                "params": {k: p.detach().cpu() for k, p in state.params.items()},
                # buffers drawn at random when the model is built (an IAF's masks and permutations)
                "buffers": ({k: b.detach().cpu() for k, b in state.model.named_buffers()}
                            if isinstance(state.model, torch.nn.Module) else {}),
                "optimizer": state.optimizer.state_dict(),
                "rng": rng_state(),
                "epoch": state.epoch + 1,
                "step": state.step,
                "seconds": state.row["seconds"],
                "history": pd.DataFrame(state.history).to_dict("list"),
                "objective": {"name": state.objective.name, **state.objective.options()},
                "callbacks": {key: _record(cb) for key, cb in self.resumable.items()},
                **self.record,
            }, replacing=self.replacing)  # a replacing run's first checkpoint: the old run's files go first
        except NonFiniteState as e:
            where = f"the last good checkpoint is {state.checkpoint}" if state.checkpoint else "no checkpoint was written yet"
            raise NonFiniteLoss(
                f"{state.name}: parameters became NaN/inf by step {state.step} (a NaN gradient); {where}. "
                "Try a lower lr or clip_norm=..."
            ) from e
        state.checkpoint = self.out_dir / CHECKPOINT
        self.replacing = False
        if state.epoch + 1 in self.keep_epochs:
            atomic_copy(state.checkpoint, self.out_dir / kept_checkpoint(state.epoch + 1))
        write_csv(self.out_dir / "history.csv", pd.DataFrame(state.history))


def _record(cb: Any) -> dict[str, Any]:
    """What a checkpoint records of a resumable callback: its ``trajectory`` and ``state``."""
    out = {}
    if callable(getattr(cb, "trajectory", None)):
        out["trajectory"] = cb.trajectory()
    if callable(getattr(cb, "state_dict", None)):
        out["state"] = cb.state_dict()
    return out


class ProgressBar(Callback):
    """A tqdm bar over the steps, its loss read from ``monitor`` every ``log_every`` steps, and
    each epoch's row written under it. Disabled: nothing is drawn."""

    def __init__(self, monitor: LossMonitor, enabled: bool = True, log_every: int = 50) -> None:
        self.monitor, self.enabled, self.log_every = monitor, enabled, log_every
        self.bar = None

    def on_fit_start(self, state: FitState) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.total_steps, initial=state.step, disable=not self.enabled,
                        desc=f"fit {state.name}", unit="step")

    def on_step_end(self, state: FitState) -> None:
        if not self.enabled:
            return
        if state.step % self.log_every == 0 or state.step == state.total_steps:
            self.bar.set_postfix(loss=f"{self.monitor.running_loss:.2f}", refresh=False)
        self.bar.update(1)

    def on_epoch_end(self, state: FitState) -> None:
        if self.enabled:
            self.bar.write("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in state.row.items()))

    def on_fit_end(self, state: FitState) -> None:
        if self.bar is not None:
            self.bar.close()


class ImportanceNLL(Callback):
    """``test_nll``: the importance-sampled negative log-likelihood (nats per datapoint,
    :func:`ppmodels.evaluate.log_likelihood` with ``num_samples`` samples) on ``data`` after
    the epochs in ``at_epochs`` (1-based; other epochs get no value). Its own random stream:
    training's is not shifted. Also ``active_units`` (Burda et al.'s criterion) at those epochs.
    Data-parallel, the ranks split the rows of the NLL. In a run directory, the checkpoints of
    those epochs are kept (``keep_checkpoints``, see :func:`ppmodels.fit.fit`), so that the points
    can be measured again, e.g. on more images; ``keep_checkpoints=False`` keeps none.

    ``khat_above``: with ``diagnostics`` (the default) and at least 21 samples, the same draws
    also give each datapoint's Pareto k-hat (:func:`ppmodels.evaluate.importance_diagnostics`),
    and the column holds the fraction of datapoints whose k-hat is above the threshold for
    ``num_samples`` draws: the share of the NLL that the draws cannot vouch for. (That pass
    holds all draws of a row at once and is not traced; ``diagnostics=False`` is the plain
    :func:`~ppmodels.evaluate.log_likelihood`.)"""

    def __init__(self, data: Any, at_epochs: Any, num_samples: int = 5000, seed: int = 0,
                 keep_checkpoints: bool = True, diagnostics: bool = True) -> None:
        from .psis import MIN_DRAWS

        where = "ImportanceNLL"
        self.data = _data(data, where)
        self.at_epochs = tuple(sorted(set(EPOCHS.check(where, "at_epochs", at_epochs))))  # fit refuses any past the end
        self.at = frozenset(self.at_epochs)
        self.num_samples, self.seed = COUNT.check(where, "num_samples", num_samples), SEED.check(where, "seed", seed)
        self.keep_checkpoints = self.at if FLAG.check(where, "keep_checkpoints", keep_checkpoints) else frozenset()
        self.diagnostics = FLAG.check(where, "diagnostics", diagnostics) and num_samples >= MIN_DRAWS

    def on_epoch_end(self, state: FitState) -> None:
        if state.epoch + 1 not in self.at:
            return
        from . import evaluate
        from .program.probe import forked_rng

        with forked_rng():
            rank = 0 if state.group is None else state.group.rank
            g = torch.Generator(device=self.data.device).manual_seed(self.seed + rank)
            t0 = time.perf_counter()
            if self.diagnostics:
                state.row["test_nll"], state.row["khat_above"] = self._diagnosed_nll(state, g)
            else:
                state.row["test_nll"] = evaluate.mean_nll(state.model, self.data, self.num_samples, generator=g,
                                                          group=state.group)
            state.row["nll_seconds"] = time.perf_counter() - t0
            if state.group is None or state.group.main:  # the row other ranks fill is not kept
                state.row["active_units"] = sum(evaluate.active_units(state.model, self.data, generator=g).values())

    def _diagnosed_nll(self, state: FitState, generator: torch.Generator) -> tuple[float, float]:
        """``(test_nll, khat_above)`` from one pass of importance_diagnostics (the rows split
        across ranks, data-parallel)."""
        from . import evaluate
        from .psis import khat_threshold

        threshold = khat_threshold(self.num_samples)
        above: list[float] = []

        def per_row(part: Any) -> Tensor:
            table = evaluate.importance_diagnostics(state.model, part, self.num_samples, generator=generator)
            above.append(float((~(table["khat"] <= threshold)).sum()))
            return -torch.tensor(table["log_lik"].to_numpy())

        if state.group is None:
            rows = per_row(self.data)
            return float(rows.mean()), above[0] / max(len(rows), 1)
        nll = float(state.group.mean_over_rows(per_row, self.data, self.data.device))
        (count,) = state.group.sum([sum(above)], self.data.device)
        return nll, count / max(len(self.data), 1)

