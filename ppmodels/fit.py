r"""One SVI loop for every model: :func:`fit`.

Each step draws a batch, computes ``objective.differentiable_loss(model.model, model.guide,
*batch)`` and takes an Adam step over all parameters with one ``torch.optim`` optimizer.
The loop itself (:func:`train_loop`) is a few lines around the hooks of
:mod:`ppmodels.callbacks`; everything else it does is a built-in callback there: the
learning-rate schedule, the NaN guard and training loss (losses summed on the device, read once
per ``log_every`` steps), evaluation, the history, checkpoints (written atomically at the end of
each epoch, never after a non-finite loss, so a run that fails keeps its last good checkpoint)
and the progress bar.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import pyro
import torch
from pyro import poutine
from torch import Tensor

from . import distributed, program
from .callbacks import (HOOKS, Checkpoint, Evaluation, FitState, History, LearningRate, LossMonitor, NonFiniteLoss,
                        ProgressBar, check_callbacks, lr_factor, stateful)
from .data import TensorData, as_data
from .objectives import Objective, PyroElbo, make
from .protocol import ModelGuide, as_pair, check_batch, check_data
from .rundir import CHECKPOINT, load_checkpoint, open_run, run_checkpoint
from .settings import ADAM_DEFAULTS, TrainSettings, check_setting, describe, split_options
from . import compiled as fastpath
from .utils import PPModelsError, model_name, resolve_device, rng_state, set_rng_state, set_seed

__all__ = ["fit", "train_loop", "Run", "svi_step", "fast_step", "prepare", "make_optimizer", "NonFiniteLoss", "load_checkpoint", "load_run",
           "lr_factor", "check_options", "CHECKPOINT"]

def _collect_params(obj: Any, objective: Objective, batch: tuple, seen: program.Probe
                    ) -> tuple[dict[str, Tensor], dict[str, tuple]]:
    """Every trainable tensor a loss call reads, without running one: the program's parameters
    from its probe (``seen``, see :func:`ppmodels.program.read_parameters`), and what the
    objective learns, created first (:meth:`Objective.init_state`)."""
    with poutine.trace(param_only=True) as state:
        objective.init_state(obj.model, obj.guide, batch, {})
    for name, site in state.trace.nodes.items():
        seen.param_trace.add_node(name, **site)
    params, sites = program.read_parameters(obj, seen.param_trace)
    params = {name: p for name, p in params.items() if name.startswith("module.") or p.requires_grad}
    if not params:
        raise PPModelsError(f"{model_name(obj)}: the model and guide have no trainable parameters")
    return params, sites


def svi_step(
    loss_fn: Callable[[tuple], Tensor], optimizer: torch.optim.Optimizer, batch: tuple, clip_norm: float | None = None,
    after_backward: Callable[[], None] | None = None,
) -> Tensor:
    """One SVI step: ``loss_fn(batch)`` (the objective's differentiable loss), backward,
    ``after_backward()`` (data-parallel: the gradients' all-reduce), an optimizer step. Returns
    the detached loss (on the device: no host synchronisation)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(batch)
    loss.backward()
    if after_backward is not None:
        after_backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_norm)
    optimizer.step()
    return loss.detach()


def prepare(obj: Any, objective: Objective, batch: tuple, seen: program.Probe | None = None
            ) -> tuple[dict[str, Tensor], ModelGuide]:
    """Collect the trainable parameters (from ``seen``, the probe of ``batch``; one is made if
    not given) and return them with the pair whose ``pyro.param`` statements
    :class:`ppmodels.program.KnownParams` answers directly: what every SVI step then runs."""
    seen = seen if seen is not None else check_batch(obj, batch, keep_params=True)
    params, sites = _collect_params(obj, objective, batch, seen)
    known = program.KnownParams(sites)
    return params, ModelGuide(known(obj.model), known(obj.guide), model_name(obj))


def make_optimizer(params: list[Tensor], **adam: Any) -> torch.optim.Adam:
    """One Adam over every parameter, with torch's fused kernel (one call updates them all, on
    the CPU as on CUDA; ``pyro.optim.Adam`` builds one optimizer per tensor). On this project's
    2-core CPU the fused update of the 689k-parameter VAE took 0.4–1.1 ms, the multi-tensor
    (foreach) and the per-tensor default ones 2.1–3.1 ms, at batch 20 (``benchmarks/adam_forms.py``,
    six runs). ``adam``: the training
    settings declared Adam's (:data:`ppmodels.settings.ADAM_DEFAULTS`: lr, betas, eps, ...), by
    name; those not given keep their defaults."""
    unknown = sorted(set(adam) - set(ADAM_DEFAULTS))
    if unknown:
        raise PPModelsError(f"make_optimizer: {unknown[0]!r} is not one of Adam's settings {sorted(ADAM_DEFAULTS)}")
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, **{**ADAM_DEFAULTS, **adam}, **({"fused": True} if fused else {"foreach": True}))


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "auto", trust: bool = False
             ) -> tuple[Any, dict[str, Any]]:
    """The model of a run directory written by ``ppmodels train`` (family and configuration from
    the checkpoint's ``meta``), with its trained parameters, on ``device``; and the checkpoint.
    ``run_dir`` may also name one of its checkpoint files (a kept ``checkpoint-epoch{N}.pt``).
    ``trust``: load a checkpoint without a checksum (refused otherwise; see
    :func:`ppmodels.rundir.load_checkpoint`)."""
    from .models import build

    path = run_checkpoint(run_dir)
    dev = resolve_device(device)
    ckpt = load_checkpoint(path, map_location=dev, trust=trust)
    meta = ckpt.get("meta", {})
    if "family" not in meta:
        raise PPModelsError(f"{run_dir}: the checkpoint names no model family (written by fit without meta?)")
    if meta["family"] == "gmm":
        raise PPModelsError(f"{run_dir}: a gmm run has no images to evaluate or sample; read its report.json")
    model = build(meta["family"], **meta["config"]).to(dev)
    state = {k[len("module."):]: v for k, v in ckpt["params"].items() if k.startswith("module.")}
    model.load_state_dict({**ckpt.get("buffers", {}), **state}, strict=False)  # buffers: e.g. an IAF's masks
    return model, ckpt


def fit(
    obj: Any,
    train: TensorData | Tensor | tuple,
    *,
    objective: str | Objective | None = None,
    device: str | torch.device = "auto",
    validation: TensorData | None = None,
    test: TensorData | None = None,
    out: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = False,
    overwrite: bool = False,
    trust: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool | None = None,
    jit: bool | None = None,
    callbacks: Sequence[Any] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Train ``obj`` (anything with ``model`` and ``guide``) by SVI; return the per-epoch history.

    ``options``: the training settings of :class:`ppmodels.settings.TrainSettings` (listed
    below), and the objective's options. ``objective`` is a name for
    :func:`ppmodels.objectives.make` (with the objective's options),
    a configured objective, or a ``pyro.infer.ELBO`` instance (run by Pyro's own code); None
    takes the model's natural objective (its ``default_objective``, else ``"elbo"``).
    ``seed`` seeds fit's own randomness (initial guide draws, batches, particles); the
    caller's random state (torch, Python, numpy) is restored when fit returns. Give ``epochs`` or ``steps``. With ``out``, ``history.csv`` and
    ``checkpoint.pt`` are written each epoch (verified finite, the previous one kept as
    ``checkpoint.prev.pt``; see :mod:`ppmodels.rundir`); ``out`` holding another run is
    refused unless ``resume=True`` (continue from its checkpoint, on the same trajectory as an
    uninterrupted run, with the same settings) or ``overwrite=True``; ``resume=PATH`` starts
    from another run's checkpoint; ``trust=True`` resumes from a checkpoint without a checksum
    (one not written by ppmodels; refused otherwise). ``keep_checkpoints``: epochs (1-based) whose checkpoint is
    also kept as ``checkpoint-epoch{N}.pt`` (loadable with :func:`load_run`), e.g. to evaluate
    a learning curve's points again later; with ``out``, a callback's own ``keep_checkpoints``
    (:class:`ppmodels.callbacks.ImportanceNLL`'s epochs) are kept too.
    History columns: epoch, step, train_loss (minus the objective per datapoint), val_elbo,
    test_elbo (per datapoint), lr, seconds (cumulative wall time). The fast path
    (:func:`fast_step`, :mod:`ppmodels.compiled`): the loss and its gradients captured as one graph, and
    compiled by ``torch.compile`` for calls of ``compile_min_steps`` steps or more, used only
    where it equals the plain step on the first batch. ``jit=True`` tries it for any model,
    ``False`` never; the default, ``None``, only for models that declare ``static_structure =
    True`` (a graph freezes Python control flow). ``history.attrs`` says which ran and why
    (``fast_path``, ``fast_path_reason``) and its ``capture_seconds`` and ``compile_seconds``.
    ``callbacks``: objects with any of the hooks of :mod:`ppmodels.callbacks` (``on_fit_start``,
    ``on_step_start``, ``on_step_end``, ``on_epoch_end``, ``on_fit_end``), run in order.

    Training settings (name=default: a good value; see :mod:`ppmodels.settings`):

    """
    obj = as_pair(obj)
    options, objective_options = split_options(options)
    group, device = distributed.setup(resolve_device(device))
    if objective is None:
        objective = getattr(obj, "default_objective", "elbo")
    objective = make(objective, **objective_options)
    callbacks = check_callbacks(callbacks)
    settings = TrainSettings(**options)
    keep = frozenset(settings.keep_checkpoints)
    if keep and out is None:
        raise PPModelsError("fit: keep_checkpoints needs out=RUN_DIR to keep them in")
    declared = [check_setting("keep_checkpoints", getattr(cb, "keep_checkpoints", ()),
                              f"{type(cb).__name__}.keep_checkpoints") for cb in callbacks]
    acting = [(type(cb).__name__, check_setting("keep_checkpoints", getattr(cb, "at_epochs", ()),
                                                f"{type(cb).__name__}.at_epochs")) for cb in callbacks]
    train = as_data(train, "training data").to(device)
    validation = as_data(validation, "validation data").to(device) if validation is not None else None
    test = as_data(test, "test data").to(device) if test is not None else None
    batch_size = min(settings.batch_size, len(train))
    if group is not None and batch_size % group.world_size:
        capped = f" (capped at the {len(train)} rows of the data)" if batch_size == len(train) else ""
        raise PPModelsError(f"fit: batch_size {batch_size}{capped}, the global batch, must be a multiple of the "
                            f"{group.world_size} processes; each takes an equal shard")
    steps_per_epoch = train.num_batches(batch_size, settings.drop_last)
    total_steps = settings.steps if settings.steps is not None else settings.epochs * steps_per_epoch
    last_epoch = -(-total_steps // steps_per_epoch)
    for what, epochs in [("keep_checkpoints", keep), *acting]:  # asked for, so never dropped
        if epochs and max(epochs) > last_epoch:
            raise PPModelsError(f"fit: {what} asks for epoch {max(epochs)}, but the run ends at epoch {last_epoch}; "
                                f"ask for epochs 1..{last_epoch} or train longer")
    keep = keep.union(*declared) & frozenset(range(1, last_epoch + 1))  # a callback's kept epochs past the end: none
    out_dir = Path(out) if out is not None else None
    if resume and out_dir is None and isinstance(resume, bool):
        raise PPModelsError("fit: resume=True needs out=RUN_DIR (or resume=PATH)")
    main = group is None or group.main  # rank 0 alone writes the run directory
    run = Run.of(settings, batch_size=batch_size, keep_checkpoints=tuple(sorted(keep)), steps_per_epoch=steps_per_epoch,
                 total_steps=total_steps)
    if isinstance(obj, torch.nn.Module):
        obj.to(device)
    caller_rng = rng_state()
    lock = None
    try:
        # the run's parameters start here: created by the program's one probe, from the run's seed
        pyro.clear_param_store()
        set_seed(run.seed if group is None else distributed.rank_seed(run.seed, group.rank))
        seen = check_data(obj, train, "training data", device, keep_params=True,
                          rows=run.batch_size if group is None else run.batch_size // group.world_size)
        for what, data in (("validation data", validation), ("test data", test)):
            if data is not None:
                check_data(obj, data, what, device)
        lock = open_run(out_dir, resume=resume is True, overwrite=overwrite) if out_dir is not None and main else None
        return _fit(obj, train, objective, device, run, out_dir, resume, validation, test, meta, progress, jit,
                    callbacks, group, seen, trust)
    finally:
        set_rng_state(caller_rng)
        if lock is not None:
            lock.release()


@dataclass(frozen=True)
class Run(TrainSettings):
    """fit's checked settings for one run, as they come to on its data: ``batch_size`` capped at
    its rows, ``keep_checkpoints`` with the callbacks' own; its steps."""

    steps_per_epoch: int = field(kw_only=True)
    total_steps: int = field(kw_only=True)

    @classmethod
    def of(cls, settings: TrainSettings, **changes: Any) -> "Run":
        return cls(**{**{f.name: getattr(settings, f.name) for f in fields(TrainSettings)}, **changes})

    def trajectory(self, objective: Objective) -> dict[str, Any]:  # type: ignore[override]
        """The settings a resumed run must share with its checkpoint (as saved there): the
        objective and the settings declared part of the trajectory."""
        out = {"objective": repr(objective), **super().trajectory()}
        if self.lr_schedule not in (None, "constant", "burda"):  # the schedule is spread over the run's length
            out["total_steps"] = self.total_steps
        if self.lr_schedule == "burda":  # the schedule's stages are epochs
            out["steps_per_epoch"] = self.steps_per_epoch
        return out


def _fit(obj, train, objective, device, run: Run, out_dir, resume, validation, test, meta, progress, jit,
         callbacks, group: distributed.Group | None = None, seen: program.Probe | None = None,
         trust: bool = False) -> pd.DataFrame:
    """Set up (parameters, the loss, the optimizer, a resumed state, the callbacks) and run the loop;
    between saving and restoring the caller's random state. ``group``: data-parallel ranks."""
    name = model_name(obj)
    probe = next(train.batches(run.batch_size, shuffle=False))
    global_probe = probe
    if group is not None:
        distributed.refuse_nonlinear(objective)
        probe = group.shard(probe)
    seen = seen if seen is not None else check_batch(obj, probe, device, keep_params=True)
    if not resume and callable(getattr(obj, "init_from_data", None)):  # a fresh model starts from the data (e.g. k-means++)
        obj.init_from_data(train.tensors[0], torch.Generator().manual_seed(run.seed))
    if isinstance(objective, PyroElbo):  # Pyro's code reads the param store itself: no shortcuts
        params, _ = _collect_params(obj, objective, probe, seen)
        fast = ModelGuide(obj.model, obj.guide, name)
    else:
        params, fast = prepare(obj, objective, probe, seen)
    if group is not None:
        group.average, plate = distributed.plan(fast.model, fast.guide, probe, global_probe,
                                                getattr(objective, "data_plate", None))
        if not group.average:  # per-row losses summed over ranks: global sites counted once
            outside = distributed.ScaleOutside(plate, 1.0 / group.world_size)
            fast = ModelGuide(outside(fast.model), outside(fast.guide), name)
    plain_loss = lambda b: objective.differentiable_loss(fast.model, fast.guide, *b)  # noqa: E731
    optimizer = make_optimizer(list(params.values()), **run.adam())
    after_backward = None
    if group is not None:
        buffers = list(obj.buffers()) if isinstance(obj, torch.nn.Module) else []
        group.broadcast_([*params.values(), *buffers])  # every rank starts from rank 0's parameters and buffers
        plist = list(params.values())
        state_tensors = [params[f"param.{n}"] for n in getattr(objective, "state_names", ()) if f"param.{n}" in params]

        def after_backward() -> None:
            group.reduce_gradients(plist)
            group.average_(state_tensors)

    main = group is None or group.main
    state = FitState(model=obj, objective=objective, optimizer=optimizer, params=params, total_steps=run.total_steps,
                     steps_per_epoch=run.steps_per_epoch, out_dir=out_dir if main else None, name=name,
                     group=group)
    settings = run.trajectory(objective)
    resumable = stateful(callbacks)
    if resume:
        _restore(state, Path(resume) if not isinstance(resume, bool) else out_dir, settings, device, resumable, trust)
        if group is not None and group.rank > 0:  # rank 0 continues the checkpoint's stream, others their own
            set_seed(distributed.rank_seed(run.seed, group.rank) ^ state.step)

    plain_step = lambda b: svi_step(plain_loss, optimizer, b, run.clip_norm, after_backward)  # noqa: E731
    step, path = fast_step(obj, objective, plain_loss, plain_step, probe, params, optimizer, run, state.step, jit, group)
    step = step or plain_step
    if path.kind != "plain" and not run.drop_last and len(train) % run.batch_size:
        full, fast_fn = run.batch_size, step  # the graph is specialised to full batches: the ragged one runs plain
        step = lambda b: fast_fn(b) if len(b[0]) == full else plain_step(b)  # noqa: E731
    monitor = LossMonitor(run.log_every, group)
    record = {"settings": settings, "meta": meta or {}, "seed": run.seed}
    builtin_before = [LearningRate(run.lr, run.lr_schedule), monitor,
                      Evaluation(validation, test, run.eval_particles, group)]
    builtin_after = [History(), *([Checkpoint(out_dir, record, resumed=resume is True, keep_epochs=run.keep_checkpoints,
                                                resumable=resumable)] if out_dir is not None and main else []),
                     ProgressBar(monitor, main and (sys.stderr.isatty() if progress is None else progress), run.log_every)]

    def batches(epoch: int):
        g = torch.Generator(device="cpu").manual_seed(run.seed * 100003 + epoch)
        gd = g if device.type == "cpu" else torch.Generator(device=device).manual_seed(run.seed * 100003 + epoch)
        served = train.batches(run.batch_size, generator=g, drop_last=run.drop_last, binarize_generator=gd)
        return served if group is None else group.shards(served)

    with pyro.validation_enabled(False):
        train_loop(state, batches, step, [*builtin_before, *callbacks, *builtin_after])
    df = pd.DataFrame(state.history)
    df.attrs.update({"model": name, "objective": repr(objective), "device": str(device), "seed": run.seed,
                     "jit": path.kind != "plain", **path.as_dict(), "checkpoint": str(state.checkpoint) if state.checkpoint else None})
    return df


def fast_step(obj: Any, objective: Objective, plain_loss: Callable[[tuple], Tensor], plain_step: Callable[[tuple], Tensor],
              batch: tuple, params: dict[str, Tensor], optimizer: torch.optim.Optimizer, run: "Run", done: int,
              jit: bool | None, group: distributed.Group | None = None) -> tuple[Callable[[tuple], Tensor] | None, fastpath.FastPath]:
    """The training step with its loss and backward as a captured or compiled graph
    (:mod:`ppmodels.compiled`), where it may be used and is proven equal to ``plain_step`` (the
    step of ``plain_loss``) on ``batch``; else None. The kind is chosen by the steps the call has left after ``done``
    (:func:`ppmodels.compiled.choose`, ``run.compile_min_steps``). ``jit``: False never, True
    always (the graph at least), None (default) for models that declare ``static_structure =
    True`` (a graph freezes Python control flow). Returns the step with its
    :class:`~ppmodels.compiled.FastPath` (what ran and why)."""
    left = run.total_steps - done
    kind = fastpath.choose(left, run.compile_min_steps, jit)
    if jit is None and not getattr(obj, "static_structure", False):
        return None, fastpath.FastPath("plain", "the model does not declare static_structure = True")
    if kind == "plain":
        why = "asked (jit=False)" if jit is False else (
            f"{left} steps: fewer than {fastpath.CAPTURE_MIN_STEPS} pay back a capture")
        return None, fastpath.FastPath("plain", why)
    if not getattr(objective, "jit_safe", False):
        return None, fastpath.FastPath("plain", f"objective {objective.name!r} is not marked jit_safe: it keeps state "
                                                "or hooks between calls, or Pyro's own code runs it")
    if group is not None:
        return None, fastpath.FastPath("plain", "data-parallel: gradients are all-reduced between backward and step")
    extra = []  # the KL weight is an input of the graph, not a constant: a callback may change it
    if torch.is_tensor(getattr(objective, "kl_weight", None)):
        objective._kl_weight(batch[0].device)
        extra = [objective.kl_weight]
    return fastpath.build_step(lambda *b: plain_loss(b), batch, list(params.values()), optimizer,
                               clip_norm=run.clip_norm, extra=extra, kind=kind, plain_step=plain_step)


def train_loop(state: FitState, batches: Callable[[int], Any], step: Callable[[tuple], Tensor],
               callbacks: Sequence[Any]) -> None:
    """The SVI loop: for each epoch from ``state.epoch``, for each batch of ``batches(epoch)``
    until ``state.total_steps``, ``state.loss = step(batch)`` between the callbacks' hooks (see
    :mod:`ppmodels.callbacks` for the order); stop after an epoch that set ``state.stop``."""
    hooks = {h: [getattr(cb, h) for cb in callbacks if callable(getattr(cb, h, None))] for h in HOOKS}
    step_start, step_end = hooks["on_step_start"], hooks["on_step_end"]
    num_epochs = math.ceil(state.total_steps / state.steps_per_epoch)
    try:
        for hook in hooks["on_fit_start"]:
            hook(state)
        for epoch in range(state.epoch, num_epochs):
            if state.stop:  # set by an epoch's end, or at the start (a resumed run that had stopped)
                break
            state.epoch, state.row = epoch, {"epoch": epoch + 1}
            for hook in hooks["on_epoch_start"]:
                hook(state)
            for batch in batches(epoch):
                if state.step >= state.total_steps:
                    break
                state.batch = batch
                for hook in step_start:
                    hook(state)
                state.loss = step(batch)
                state.step += 1
                for hook in step_end:
                    hook(state)
            state.row["step"] = state.step
            for hook in hooks["on_epoch_end"]:
                hook(state)
    except BaseException as e:
        state.error = e
        raise
    finally:
        for hook in hooks["on_fit_end"]:
            try:
                hook(state)
            except Exception:
                if state.error is None:
                    raise


def _restore(state: FitState, path: Path | None, settings: dict[str, Any], device: torch.device,
             callbacks: dict[str, Any], trust: bool = False) -> None:
    """Continue from the checkpoint at ``path``: parameters, optimizer, RNG, step, epoch, time,
    history, and the state of the ``callbacks`` that keep one (:func:`ppmodels.callbacks.stateful`);
    refused when its parameters, trajectory settings or such callbacks differ."""
    if path is None:
        raise PPModelsError("fit: resume=True needs out=RUN_DIR (or resume=PATH)")
    ckpt = load_checkpoint(path, map_location=device, trust=trust)
    params, name = state.params, state.name
    missing = set(params) ^ set(ckpt["params"])
    if missing:
        raise PPModelsError(f"{name}: checkpoint parameters do not match the model: {sorted(missing)[:4]}")
    differ = _differences(ckpt.get("settings", {}), settings)
    differ += [f"{k} {tuple(ckpt['params'][k].shape)} vs {tuple(p.shape)}" for k, p in params.items()
               if tuple(ckpt["params"][k].shape) != tuple(p.shape)]
    saved = ckpt.get("callbacks", {})
    differ += _callback_differences(saved, callbacks)
    if differ:
        raise PPModelsError(
            f"{name}: cannot resume {path}: settings differ from the checkpoint's ({'; '.join(differ[:4])}); "
            "resume with the same settings, or start a new run"
        )
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(ckpt["params"][key])
        if isinstance(state.model, torch.nn.Module):
            buffers = dict(state.model.named_buffers())
            for key, b in ckpt.get("buffers", {}).items():
                if key in buffers and buffers[key].shape == b.shape:
                    buffers[key].copy_(b)
    state.optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    state.step, state.epoch, state.seconds = ckpt["step"], ckpt["epoch"], ckpt["seconds"]
    state.history = pd.DataFrame(ckpt["history"]).to_dict("records")
    for key, cb in callbacks.items():
        if callable(getattr(cb, "load_state_dict", None)):
            cb.load_state_dict(saved[key].get("state", {}))


def check_options(**options: Any) -> TrainSettings:
    """fit's training settings, checked before any work (one rule per setting, a short error):
    :class:`ppmodels.settings.TrainSettings`."""
    return TrainSettings(**options)


fit.__doc__ = f"{fit.__doc__.rstrip()}\n\n{describe()}\n"  # the declared settings, listed


def _differences(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    return [f"{prefix}{k} {saved[k]!r} vs {now[k]!r}" for k in now if k in saved and saved[k] != now[k]]


def _callback_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How the checkpoint's resumable callbacks (``saved``: key -> trajectory and state) differ
    from this run's (``now``: key -> callback): one missing on either side, another setting, or
    a state the checkpoint lacks."""
    out = [f"{k} in the checkpoint's run, not in this one" for k in saved if k not in now]
    out += [f"{k} in this run, not in the checkpoint's" for k in now if k not in saved]
    for key in (k for k in now if k in saved):
        cb, record = now[key], saved[key]
        trajectory = cb.trajectory() if callable(getattr(cb, "trajectory", None)) else {}
        out += _differences(record.get("trajectory", {}), trajectory, f"{key}.")
        out += [f"{key}.{k} (not in the checkpoint) vs {trajectory[k]!r}" for k in trajectory
                if k not in record.get("trajectory", {})]
        if callable(getattr(cb, "load_state_dict", None)) and "state" not in record:
            out.append(f"{key} has no saved state in the checkpoint")
    return out
