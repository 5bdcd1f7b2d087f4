r"""One SVI loop for every model: :func:`fit`.

Each step draws a batch, computes ``objective.differentiable_loss(model.model, model.guide,
*batch)`` and takes an Adam step over all parameters with one ``torch.optim`` optimizer.
Losses are accumulated on the device and read once per ``log_every`` steps. Checkpoints
(parameters, optimizer, RNG state, history) are written atomically at the end of each epoch,
and never after a non-finite loss, so a run that fails keeps its last good checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.messenger import Messenger
from torch.distributions import transform_to
from torch import Tensor

from . import evaluate
from .callbacks import HOOKS, FitState, check_callbacks
from .data import TensorData, as_data
from .objectives import Objective, PyroElbo, make
from .protocol import ModelGuide, as_pair, check_batch, check_data, read_parameters
from .rundir import CHECKPOINT, NonFiniteState, load_checkpoint, open_run, save_checkpoint
from .tracing import trace_if_equal
from .utils import PPModelsError, model_name, resolve_device, rng_state, set_rng_state, set_seed

__all__ = ["fit", "svi_step", "compile_loss", "prepare", "make_optimizer", "NonFiniteLoss", "load_checkpoint", "load_run",
           "lr_factor", "check_options", "CHECKPOINT"]

SCHEDULES = ("constant", "cosine", "burda")


class NonFiniteLoss(PPModelsError, FloatingPointError):
    """The loss became NaN or inf during training."""


def lr_factor(schedule: str | Callable[[int], float] | None, step: int, total_steps: int, steps_per_epoch: int) -> float:
    r"""Multiplier of the base learning rate at ``step`` (0-based).

    ``"cosine"``: :math:`\frac12(1 + \cos(\pi t / T))`; ``"burda"``: :math:`10^{-i/7}` during
    epochs :math:`[\sum_{j<i} 3^j, \sum_{j\le i} 3^j)` (Burda et al. 2016); a callable gets the step.
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
    raise PPModelsError(f"fit: lr_schedule must be one of {SCHEDULES} or a callable, got {schedule!r}")


class KnownParams(Messenger):
    """Answer ``pyro.param`` statements for already-registered parameters directly, without
    the param store and the rest of the handler stack (``pyro.module`` issues one such
    statement per tensor per call). Constrained params are transformed afresh each time."""

    def __init__(self, sites: dict[str, tuple[Tensor, Any]]) -> None:
        super().__init__()
        self.sites = {name: (u, None if c is constraints.real else transform_to(c)) for name, (u, c) in sites.items()}

    def _pyro_param(self, msg: dict) -> None:
        site = self.sites.get(msg["name"])
        if site is not None:
            unconstrained, transform = site
            msg["value"] = unconstrained if transform is None else transform(unconstrained)
            msg["done"] = msg["stop"] = True


def _collect_params(obj: Any, objective: Objective, batch: tuple) -> tuple[dict[str, Tensor], dict[str, tuple]]:
    """Every trainable tensor one differentiable-loss call reads (see :func:`read_parameters`)."""
    params, sites = read_parameters(obj, lambda: objective.differentiable_loss(obj.model, obj.guide, *batch))
    params = {name: p for name, p in params.items() if name.startswith("module.") or p.requires_grad}
    if not params:
        raise PPModelsError(f"{model_name(obj)}: the model and guide have no trainable parameters")
    return params, sites


def svi_step(
    loss_fn: Callable[[tuple], Tensor], optimizer: torch.optim.Optimizer, batch: tuple, clip_norm: float | None = None
) -> Tensor:
    """One SVI step: ``loss_fn(batch)`` (the objective's differentiable loss), backward, an
    optimizer step. Returns the detached loss (on the device: no host synchronisation)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(batch)
    loss.backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_norm)
    optimizer.step()
    return loss.detach()


def compile_loss(
    pair: ModelGuide, objective: Objective, params: dict[str, Tensor], batch: tuple
) -> Callable[[tuple], Tensor] | None:
    """The differentiable loss as a ``torch.jit.trace`` of one call (Python and Pyro overhead
    gone), or None. Only for objectives marked ``jit_safe`` (no gradient hooks or state kept
    between calls), and only if, on ``batch`` and under one seed, the traced loss and its
    gradients equal the plain ones: the fast path is used only where it is proven equal here.
    The trace is specialised to the batch shape (training drops the ragged last batch)."""
    if not getattr(objective, "jit_safe", False):
        return None
    plist = list(params.values())
    n = len(batch)

    def loss_fn(*inputs: Tensor) -> Tensor:
        return objective.differentiable_loss(pair.model, pair.guide, *inputs[:n])

    extra = []  # a scheduled or non-unit KL weight is an input of the trace, not a constant
    if torch.is_tensor(getattr(objective, "kl_weight", None)) and (objective.kl_scheduled or objective._beta != 1.0):
        objective._kl_weight(batch[0].device)
        extra = [objective.kl_weight]
    traced = trace_if_equal(loss_fn, (*batch, *plist, *extra), wrt=plist)
    if traced is None:
        return None
    return lambda batch: traced(*batch, *plist, *extra)


def prepare(obj: Any, objective: Objective, batch: tuple) -> tuple[dict[str, Tensor], ModelGuide]:
    """Collect the trainable parameters (one traced call on ``batch``) and return them with the
    pair whose ``pyro.param`` statements :class:`KnownParams` answers directly: what every SVI
    step then runs."""
    params, sites = _collect_params(obj, objective, batch)
    known = KnownParams(sites)
    return params, ModelGuide(known(obj.model), known(obj.guide), model_name(obj))


def make_optimizer(params: list[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8) -> torch.optim.Adam:
    """One Adam over every parameter: fused kernels on CUDA, multi-tensor (foreach) on the CPU
    (``pyro.optim.Adam`` builds one optimizer per tensor)."""
    on_cuda = params[0].is_cuda
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, **({"fused": True} if on_cuda else {"foreach": True}))


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "auto") -> tuple[Any, dict[str, Any]]:
    """The model of a run directory written by ``ppmodels train`` (family and configuration from
    the checkpoint's ``meta``), with its trained parameters, on ``device``; and the checkpoint."""
    from .models import build

    path = Path(run_dir)
    if not (path / CHECKPOINT).exists():
        raise PPModelsError(f"{run_dir}: not a run directory (no {CHECKPOINT}); train one with `ppmodels train`")
    dev = resolve_device(device)
    ckpt = load_checkpoint(path, map_location=dev)
    meta = ckpt.get("meta", {})
    if "family" not in meta:
        raise PPModelsError(f"{run_dir}: the checkpoint names no model family (written by fit without meta?)")
    if meta["family"] == "gmm":
        raise PPModelsError(f"{run_dir}: a gmm run has no images to evaluate or sample; read its report.json")
    model = build(meta["family"], **meta["config"]).to(dev)
    state = {k[len("module."):]: v for k, v in ckpt["params"].items() if k.startswith("module.")}
    model.load_state_dict(state, strict=False)
    return model, ckpt


def fit(
    obj: Any,
    train: TensorData | Tensor | tuple,
    *,
    objective: str | Objective | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    lr_schedule: str | Callable[[int], float] | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    clip_norm: float | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    validation: TensorData | None = None,
    test: TensorData | None = None,
    eval_particles: int = 1,
    out: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = False,
    overwrite: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool | None = None,
    log_every: int = 50,
    drop_last: bool = True,
    jit: bool | None = None,
    callbacks: Sequence[Any] | None = None,
    **objective_options: Any,
) -> pd.DataFrame:
    """Train ``obj`` (anything with ``model`` and ``guide``) by SVI; return the per-epoch history.

    ``objective`` is a name for :func:`ppmodels.objectives.make` (with ``objective_options``),
    a configured objective, or a ``pyro.infer.ELBO`` instance (run by Pyro's own code); None
    takes the model's natural objective (its ``default_objective``, else ``"elbo"``).
    ``seed`` seeds fit's own randomness (initial guide draws, batches, particles); the
    caller's random state (torch, Python, numpy) is restored when fit returns. Give ``epochs`` or ``steps``. With ``out``, ``history.csv`` and
    ``checkpoint.pt`` are written each epoch (verified finite, the previous one kept as
    ``checkpoint.prev.pt``; see :mod:`ppmodels.rundir`); ``out`` holding another run is
    refused unless ``resume=True`` (continue from its checkpoint, on the same trajectory as an
    uninterrupted run, with the same settings) or ``overwrite=True``; ``resume=PATH`` starts
    from another run's checkpoint.
    History columns: epoch, step, train_loss (minus the objective per datapoint), val_elbo,
    test_elbo (per datapoint), lr, seconds (cumulative wall time). ``jit=True`` uses the traced
    loss of :func:`compile_loss` where it is proven equal on the first batch (and falls back
    to the plain loss otherwise); the default, ``None``, does so only for models that declare
    ``static_structure = True`` (a trace freezes Python control flow: a model whose structure
    changes between calls must not be traced). ``history.attrs["jit"]`` says which ran.
    ``callbacks``: objects with any of the hooks of :mod:`ppmodels.callbacks` (``on_fit_start``,
    ``on_step_start``, ``on_step_end``, ``on_epoch_end``, ``on_fit_end``), run in order.
    """
    obj = as_pair(obj)
    name = model_name(obj)
    device = resolve_device(device)
    if objective is None:
        objective = getattr(obj, "default_objective", "elbo")
    objective = make(objective, **objective_options)
    callbacks = check_callbacks(callbacks)
    check_options(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, betas=betas, eps=eps,
                  clip_norm=clip_norm, seed=seed, eval_particles=eval_particles, log_every=log_every)
    if not callable(lr_schedule) and lr_schedule not in (None, *SCHEDULES):
        raise PPModelsError(f"fit: lr_schedule must be one of {SCHEDULES} or a callable, got {lr_schedule!r}")
    train = as_data(train, "training data").to(device)
    validation = as_data(validation, "validation data").to(device) if validation is not None else None
    test = as_data(test, "test data").to(device) if test is not None else None
    for what, data in (("training data", train), ("validation data", validation), ("test data", test)):
        if data is not None:
            check_data(obj, data, what, device)
    batch_size = min(batch_size, len(train))
    steps_per_epoch = train.num_batches(batch_size, drop_last)
    total_steps = steps if steps is not None else epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    out_dir = Path(out) if out is not None else None
    if resume and out_dir is None and isinstance(resume, bool):
        raise PPModelsError("fit: resume=True needs out=RUN_DIR (or resume=PATH)")
    lock = open_run(out_dir, resume=resume is True, overwrite=overwrite) if out_dir is not None else None

    if isinstance(obj, torch.nn.Module):
        obj.to(device)
    caller_rng = rng_state()
    try:
        return _fit(obj, name, train, objective, device, seed, batch_size, steps_per_epoch, total_steps,
                    num_epochs, out_dir, validation, test, lr, lr_schedule, betas, eps, clip_norm,
                    eval_particles, resume, meta, progress, log_every, drop_last, jit, callbacks)
    finally:
        set_rng_state(caller_rng)
        if lock is not None:
            lock.release()


def _fit(obj, name, train, objective, device, seed, batch_size, steps_per_epoch, total_steps, num_epochs,
         out_dir, validation, test, lr, lr_schedule, betas, eps, clip_norm, eval_particles, resume, meta,
         progress, log_every, drop_last, jit, callbacks) -> pd.DataFrame:
    """fit's loop, run between saving and restoring the caller's random state."""
    pyro.clear_param_store()
    set_seed(seed)
    probe = next(train.batches(batch_size, shuffle=False))
    check_batch(obj, probe, device)
    if isinstance(objective, PyroElbo):  # Pyro's code reads the param store itself: no shortcuts
        params, _ = _collect_params(obj, objective, probe)
        fast = ModelGuide(obj.model, obj.guide, name)
    else:
        params, fast = prepare(obj, objective, probe)
    if jit is None:
        jit = bool(getattr(obj, "static_structure", False))
    if any(getattr(cb, "schedules_kl_weight", False) for cb in callbacks):
        objective.kl_scheduled = True  # β stays a tensor the traced loss reads
    compiled = compile_loss(fast, objective, params, probe) if jit else None
    if compiled is not None and not drop_last and len(train) % batch_size:
        compiled = None  # the trace is specialised to full batches
    loss_fn = compiled or (lambda b: objective.differentiable_loss(fast.model, fast.guide, *b))
    optimizer = make_optimizer(list(params.values()), lr=lr, betas=betas, eps=eps)

    settings = {"objective": repr(objective), "lr": lr, "lr_schedule": str(lr_schedule), "betas": list(betas),
                "eps": eps, "batch_size": batch_size, "clip_norm": clip_norm, "seed": seed, "drop_last": drop_last}
    history: list[dict[str, Any]] = []
    step, start_epoch, elapsed = 0, 0, 0.0
    if resume:
        ckpt_path = Path(resume) if not isinstance(resume, bool) else out_dir
        if ckpt_path is None:
            raise PPModelsError("fit: resume=True needs out=RUN_DIR (or resume=PATH)")
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        missing = set(params) ^ set(ckpt["params"])
        if missing:
            raise PPModelsError(f"{name}: checkpoint parameters do not match the model: {sorted(missing)[:4]}")
        differ = _differences(ckpt.get("settings", {}), settings)
        differ += [f"{k} {tuple(ckpt['params'][k].shape)} vs {tuple(p.shape)}" for k, p in params.items()
                   if tuple(ckpt["params"][k].shape) != tuple(p.shape)]
        if differ:
            raise PPModelsError(
                f"{name}: cannot resume {ckpt_path}: settings differ from the checkpoint's ({'; '.join(differ[:4])}); "
                "resume with the same settings, or start a new run"
            )
        with torch.no_grad():
            for key, p in params.items():
                p.copy_(ckpt["params"][key])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        step, start_epoch, elapsed = ckpt["step"], ckpt["epoch"], ckpt["seconds"]
        history = pd.DataFrame(ckpt["history"]).to_dict("records")

    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc=f"fit {name}", unit="step")
    state = FitState(model=obj, objective=objective, optimizer=optimizer, params=params, total_steps=total_steps,
                     steps_per_epoch=steps_per_epoch, out_dir=out_dir, step=step, epoch=start_epoch, history=history)
    hooks = {h: [getattr(cb, h) for cb in callbacks if callable(getattr(cb, h, None))] for h in HOOKS}
    for hook in hooks["on_fit_start"]:
        hook(state)
    last_good = (out_dir / CHECKPOINT) if out_dir is not None and resume is True and (out_dir / CHECKPOINT).exists() else None
    t0 = time.perf_counter() - elapsed
    try:
        with pyro.validation_enabled(False):
            for epoch in range(start_epoch, num_epochs):
                g = torch.Generator(device="cpu").manual_seed(seed * 100003 + epoch)
                gd = g if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed * 100003 + epoch)
                running = torch.zeros((), device=device)
                first_bad = torch.full((), -1, device=device, dtype=torch.long)
                n_seen = 0
                for batch in train.batches(batch_size, generator=g, drop_last=drop_last, binarize_generator=gd):
                    if step >= total_steps:
                        break
                    if hooks["on_step_start"]:
                        state.step, state.epoch = step, epoch
                        for hook in hooks["on_step_start"]:
                            hook(state)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * lr_factor(lr_schedule, step, total_steps, steps_per_epoch)
                    loss = svi_step(loss_fn, optimizer, batch, clip_norm)
                    bad = ~torch.isfinite(loss)
                    first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
                    running = running + torch.where(bad, 0.0, loss)
                    n_seen += batch[0].shape[0]
                    step += 1
                    if hooks["on_step_end"]:
                        state.step, state.epoch, state.loss = step, epoch, loss
                        for hook in hooks["on_step_end"]:
                            hook(state)
                    if step % log_every == 0 or step == total_steps:
                        _raise_if_bad(first_bad, name, last_good)
                        bar.set_postfix(loss=f"{float(running) / max(n_seen, 1):.2f}", refresh=False)
                    bar.update(1)
                _raise_if_bad(first_bad, name, last_good)
                row: dict[str, Any] = {"epoch": epoch + 1, "step": step,
                                       "train_loss": float(running) / max(n_seen, 1),
                                       "lr": optimizer.param_groups[0]["lr"]}
                if validation is not None:
                    row["val_elbo"] = float(evaluate.elbo(obj, validation, eval_particles).mean())
                if test is not None:
                    row["test_elbo"] = float(evaluate.elbo(obj, test, eval_particles).mean())
                state.step, state.epoch, state.row = step, epoch, row
                for hook in hooks["on_epoch_end"]:
                    hook(state)
                row["seconds"] = time.perf_counter() - t0
                history.append(row)
                if out_dir is not None:
                    try:
                        save_checkpoint(out_dir, {
                            "params": {k: p.detach().cpu() for k, p in params.items()},
                            "optimizer": optimizer.state_dict(),
                            "rng": rng_state(),
                            "epoch": epoch + 1,
                            "step": step,
                            "seconds": row["seconds"],
                            "history": pd.DataFrame(history).to_dict("list"),
                            "objective": {"name": objective.name, **objective.options()},
                            "settings": settings,
                            "meta": meta or {},
                            "seed": seed,
                        })
                    except NonFiniteState as e:
                        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
                        raise NonFiniteLoss(
                            f"{name}: parameters became NaN/inf by step {step} (a NaN gradient); {where}. "
                            "Try a lower lr or clip_norm=..."
                        ) from e
                    last_good = out_dir / CHECKPOINT
                    pd.DataFrame(history).to_csv(out_dir / "history.csv", index=False)
                if progress:
                    bar.write(_format_row(row))
                if state.stop:
                    break
        for hook in hooks["on_fit_end"]:
            hook(state)
    finally:
        bar.close()
    df = pd.DataFrame(history)
    df.attrs.update({"model": name, "objective": repr(objective), "device": str(device), "seed": seed,
                     "jit": compiled is not None,
                     "checkpoint": str(last_good) if last_good else None})
    return df


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_options(**options: Any) -> None:
    """fit's numeric options, checked before any work: one rule per option, a short error."""
    rules = {
        "epochs": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1"),
        "steps": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1"),
        "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "lr": (lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0, "a positive number"),
        "betas": (lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in v),
                  "two numbers in [0, 1)"),
        "eps": (lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0, "a positive number"),
        "clip_norm": (lambda v: v is None or (isinstance(v, (int, float)) and math.isfinite(v) and v > 0),
                      "None or a positive number"),
        "seed": (lambda v: _is_int(v) and 0 <= v < 2**63, "an integer in [0, 2**63)"),
        "eval_particles": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "log_every": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    }
    for key, value in options.items():
        ok, want = rules[key]
        if not ok(value):
            raise PPModelsError(f"fit: {key} must be {want}, got {value!r}")
    if options.get("epochs") is None and options.get("steps") is None:
        raise PPModelsError("fit: give epochs=... or steps=...")
    if options.get("epochs") is not None and options.get("steps") is not None:
        raise PPModelsError("fit: give epochs=... or steps=..., not both")


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{k} {saved[k]!r} vs {now[k]!r}" for k in now if k in saved and saved[k] != now[k]]


def _raise_if_bad(first_bad: Tensor, name: str, last_good: Path | None) -> None:
    bad_step = int(first_bad)
    if bad_step >= 0:
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
        raise NonFiniteLoss(
            f"{name}: the loss became NaN/inf at step {bad_step + 1}; {where}. "
            "Try a lower lr, clip_norm=..., or check the data"
        )


def _format_row(row: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
