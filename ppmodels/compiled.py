r"""The fast path: one SVI step (loss, gradients, clipping, Adam's update) as one graph, compiled
with ``torch.compile`` where that pays, and used only where it is proven equal to the plain step.

**Capture.** :func:`capture` records the tensor operations of one call with
``torch.fx.experimental.proxy_tensor.make_fx`` in real mode: it runs the Pyro program once and
keeps the ATen operations it dispatched, the backward pass's included (``torch.autograd.grad``
inside the recorded function), as an FX graph whose inputs are the tensors passed in. Tensors
the program reads that are among those inputs (the parameters, by identity) become the graph's
inputs; any other tensor it reads is recorded as a constant. Like a trace, this freezes Python
control flow and shapes, so it is offered only for models that declare ``static_structure =
True`` and objectives marked ``jit_safe``.

Why not ``torch.compile`` of the loss directly: TorchDynamo would trace Pyro's handler stack
(messengers, site dictionaries, weak references) bytecode by bytecode, with graph breaks and
guards on every call; the program's operations are static here, so they are recorded once and
the graph, pure ATen, is what ``torch.compile`` sees. (``torch.jit.trace``, which this replaces,
is deprecated in the torch the project installs.)

**The step.** :func:`build_step` records ``loss → grads → (clip) → Adam`` with the optimizer's
own state tensors (``exp_avg``, ``exp_avg_sq``, ``step``) updated in place, and the learning rate
an input (a schedule changes it every step). The update is written out here because it must be
part of the graph; it is the same arithmetic as ``torch.optim.Adam``'s multi-tensor step, and
the equality check below compares the two.

**The rule.** A fast step is used only if, from the same parameters, optimizer state and seed,
it gives the plain step's loss, gradients, parameters after the step and optimizer state (see
:func:`_close`). Otherwise, or if anything fails, the plain step runs, and
:class:`FastPath` says why. Every check restores the parameters, the optimizer state and the
random state, so a failed attempt changes nothing.

**Compiling** (``torch.compile``, inductor; ``fallback_random`` so that the random draws are
eager torch's and a compiled run equals the plain run draw for draw) costs seconds to tens of
seconds on a CPU, less from inductor's on-disk cache. :func:`choose` decides by the steps a call
will take: a short call stays plain (the first capture imports TorchDynamo, 1.5 s or more),
a longer one runs the captured graph, a long one compiles it. On CUDA with ``cuda_graphs``
the compiled step uses ``mode="reduce-overhead"`` (CUDA graphs; the shapes are static).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyro
import torch
from torch import Tensor

from .program.probe import forked_rng

__all__ = ["FastPath", "capture", "compile_graph", "build_step", "graph_of_call", "choose", "equal_calls", "CHECK_SEED",
           "CAPTURE_MIN_STEPS", "forked_rng"]

CHECK_SEED = 12345

#: a call with fewer steps stays plain: capturing the VAE's step took 0.3 s, and the first capture
#: in a process 1.7–3.6 s, most of it importing TorchDynamo (the 2-core CPU, under load; a
#: ``cProfile`` of ``make_fx``'s first call)
CAPTURE_MIN_STEPS = 1500


@dataclass
class FastPath:
    """What ran: ``kind`` ``"plain"``, ``"graph"`` (the captured step, run as recorded) or
    ``"compiled"`` (the captured step compiled by ``torch.compile``); ``reason``: why; the seconds
    its capture and its compilation (the first compiled call) took."""

    kind: str = "plain"
    reason: str = ""
    capture_seconds: float = 0.0
    compile_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"fast_path": self.kind, "fast_path_reason": self.reason,
                "capture_seconds": round(self.capture_seconds, 3), "compile_seconds": round(self.compile_seconds, 3)}


def choose(steps: int, compile_min_steps: int, asked: bool | None) -> str:
    """The kind of step a call of ``steps`` steps should try: ``"compiled"`` from
    ``compile_min_steps`` steps (0: never), else ``"graph"`` from :data:`CAPTURE_MIN_STEPS` steps
    (or whenever ``asked`` is True), else ``"plain"``; ``asked=False``: always plain."""
    if asked is False:
        return "plain"
    if compile_min_steps and steps >= compile_min_steps:
        return "compiled"
    return "graph" if asked or steps >= CAPTURE_MIN_STEPS else "plain"


def capture(fn: Callable[..., Any], inputs: Sequence[Tensor]) -> torch.fx.GraphModule:
    """``fn``'s tensor operations on ``inputs`` as an FX graph (``make_fx``, real tensors), with
    every random state restored afterwards, and Pyro's and torch's argument checks off (they read
    values, which a recording cannot). Raises whatever the recording raises."""
    from torch.fx.experimental.proxy_tensor import make_fx

    with warnings.catch_warnings(), forked_rng(), pyro.validation_enabled(False):  # checks read values
        warnings.simplefilter("ignore")
        return make_fx(fn, tracing_mode="real")(*inputs)


def compile_graph(gm: torch.fx.GraphModule, device: torch.device, cuda_graphs: bool = True) -> Callable[..., Any]:
    """``torch.compile`` of a captured graph: static shapes, the whole graph, eager torch's random
    draws (``fallback_random``); CUDA graphs on CUDA (``reduce-overhead``) when ``cuda_graphs``.
    Compilation happens at the first call."""
    options = {"fallback_random": True}
    if device.type == "cuda" and cuda_graphs:
        options["triton.cudagraphs"] = True
    return torch.compile(gm, dynamic=False, fullgraph=True, options=options)


def _close(u: Tensor, v: Tensor) -> bool:
    """Equal up to rounding, entry by entry: ``rtol=1e-4`` and an absolute tolerance of 1e-6 or
    5e-5 of the tensor's largest entry, whichever is larger. A graph sums in its own order, and
    compiled kernels fuse and reorder reductions: IWAE's gradients at K = 5 (the Burda preset,
    batch 128) then differ by up to 1.5e-5 of the largest entry; an error of 1e-4 of it fails."""
    if u.shape != v.shape or u.dtype != v.dtype:
        return False
    if not u.is_floating_point():
        return torch.equal(u, v)
    scale = float(v.abs().max()) if v.numel() else 0.0
    return bool(torch.allclose(u, v, rtol=1e-4, atol=max(1e-6, 5e-5 * scale), equal_nan=True))


def equal_calls(plain: Callable[[], Sequence[Tensor]], fast: Callable[[], Sequence[Tensor]],
                restore: Callable[[], None] = lambda: None) -> bool:
    """Whether ``fast()`` returns what ``plain()`` does (each under :data:`CHECK_SEED`, see
    :func:`_close`), calling ``restore()`` after each; every random state is restored. Any
    failure counts as no."""
    outs = []
    try:
        with warnings.catch_warnings(), forked_rng():
            warnings.simplefilter("ignore")
            for run in (plain, fast):
                torch.manual_seed(CHECK_SEED)
                try:
                    outs.append([t.detach().clone() for t in run()])
                finally:
                    restore()
    except Exception:  # noqa: BLE001 - any failure means: not proven equal
        return False
    (a, b) = outs
    return len(a) == len(b) and all(_close(u, v) for u, v in zip(a, b))


# -- the step -------------------------------------------------------------------------------------


def _adam_state(optimizer: torch.optim.Adam, params: list[Tensor]) -> tuple[list[list[Tensor]], list[Tensor]]:
    """[steps, exp_avgs, exp_avg_sqs] of ``optimizer`` for ``params``, made as torch makes them at
    the first step where it has none yet (so that ``optimizer.step`` and the graph share them);
    and the parameters whose state was made here (removed again if the fast path is not taken)."""
    group = optimizer.param_groups[0]
    on_device = group.get("fused") or group.get("capturable")
    made = []
    for p in params:
        state = optimizer.state[p]
        if len(state) == 0:
            made.append(p)
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return [[optimizer.state[p][k] for p in params] for k in ("step", "exp_avg", "exp_avg_sq")], made


def _unsupported(optimizer: torch.optim.Optimizer) -> str | None:
    """Why the graph cannot take ``optimizer``'s step, or None."""
    if type(optimizer) is not torch.optim.Adam:
        return f"the optimizer is {type(optimizer).__name__}, not torch.optim.Adam"
    if len(optimizer.param_groups) != 1:
        return "the optimizer has more than one parameter group"
    group = optimizer.param_groups[0]
    for flag in ("amsgrad", "maximize", "differentiable", "decoupled_weight_decay"):
        if group.get(flag):
            return f"Adam's {flag} is not part of the graph's update"
    if torch.is_tensor(group["lr"]):
        return "a tensor learning rate"
    return None


def build_step(
    loss_fn: Callable[..., Tensor],
    batch: tuple,
    params: list[Tensor],
    optimizer: torch.optim.Adam,
    *,
    clip_norm: float | None = None,
    extra: Sequence[Tensor] = (),
    kind: str = "graph",
    plain_step: Callable[[tuple], Tensor],
    cuda_graphs: bool = True,
) -> tuple[Callable[[tuple], Tensor] | None, FastPath]:
    """The fast step for ``loss_fn(*batch)`` (the objective's loss on a batch of ``batch``'s
    shapes; it reads ``params`` and the tensors ``extra``, e.g. a scheduled KL weight) with
    ``optimizer``'s Adam update, of ``kind`` ``"graph"`` or ``"compiled"``, if it equals
    ``plain_step`` (:func:`equal_calls` on ``batch``: loss, gradients, parameters and optimizer
    state after the step); else None. Returns it with its :class:`FastPath`."""
    why = _unsupported(optimizer)
    if why is not None:
        return None, FastPath("plain", why)
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    eps, weight_decay = group["eps"], group["weight_decay"]
    (steps, exp_avgs, exp_avg_sqs), made = _adam_state(optimizer, params)
    n, k = len(batch), len(params)
    lr = torch.tensor(float(group["lr"]), dtype=torch.float64)
    state = [*params, *steps, *exp_avgs, *exp_avg_sqs]

    def step(*inputs: Tensor) -> tuple[Tensor, ...]:
        data, lr_now = inputs[:n], inputs[n + 4 * k]
        with torch.enable_grad():
            loss = loss_fn(*data)
            grads = list(torch.autograd.grad(loss, params, allow_unused=True))
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if clip_norm is not None:  # torch.nn.utils.clip_grad_norm_'s arithmetic
            total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            factor = torch.clamp(clip_norm / (total + 1e-6), max=1.0)
            grads = [g * factor for g in grads]
        # torch.optim.Adam's multi-tensor update, over all parameters at once (a dozen operations
        # whatever their number: each operation of the graph is one Python call when it runs)
        torch._foreach_add_(steps, 1)
        moved = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay else grads
        torch._foreach_lerp_(exp_avgs, moved, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, moved, moved, value=1 - beta2)
        # (as its capturable form writes it: the step sizes stay tensors, on the steps' device)
        t = torch.stack(steps).double()
        step_sizes = (-lr_now / (1 - beta1 ** t)).to(params[0].dtype)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, list(torch.sqrt(1 - beta2 ** t).to(params[0].dtype).unbind()))
        torch._foreach_add_(denoms, eps)
        torch._foreach_div_(denoms, list(step_sizes.unbind()))
        torch._foreach_addcdiv_(params, exp_avgs, denoms)
        return (loss.detach(), *grads)

    inputs = [*batch, *state, lr, *extra]
    saved = [t.detach().clone() for t in state]

    def restore() -> None:
        with torch.no_grad():
            for t, s in zip(state, saved):
                t.copy_(s)
        optimizer.zero_grad(set_to_none=True)

    run, info = _graph(step, inputs, kind, params[0].device, cuda_graphs, "step")
    restore()  # the capture ran the step
    if run is None:
        _forget(optimizer, made)
        return None, info

    def fast(b: tuple) -> tuple[Tensor, ...]:
        lr.fill_(group["lr"])
        with torch.no_grad():
            return run(*b, *state, lr, *extra)

    def plain_out() -> list[Tensor]:
        loss = plain_step(batch)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        return [loss, *grads, *state]

    def fast_out() -> list[Tensor]:
        loss, *grads = _timed_first_call(info, lambda: fast(batch))
        return [loss, *grads, *state]

    if not equal_calls(plain_out, fast_out, restore):
        _forget(optimizer, made)
        return None, FastPath("plain", f"the {kind} step differs from the plain step on the first batch (or failed)",
                              info.capture_seconds, info.compile_seconds)
    info.reason = f"equal to the plain step on the first batch ({kind})"
    return (lambda b: fast(b)[0]), info


def _graph(fn: Callable[..., Any], inputs: Sequence[Tensor], kind: str, device: torch.device, cuda_graphs: bool,
           what: str) -> tuple[Callable[..., Any] | None, FastPath]:
    """``fn`` captured on ``inputs`` (no gradients recorded outside it), compiled if ``kind`` is
    ``"compiled"``, with its :class:`FastPath` (the capture's seconds); None if the capture fails."""
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            gm = capture(fn, inputs)
    except Exception as e:  # noqa: BLE001 - any failure means: no fast path
        return None, FastPath("plain", f"the {what} could not be captured ({type(e).__name__})")
    info = FastPath(kind, capture_seconds=time.perf_counter() - t0)
    return (compile_graph(gm, device, cuda_graphs) if kind == "compiled" else gm), info


def _timed_first_call(info: FastPath, call: Callable[[], Any]) -> Any:
    """``call()``; the first call of a compiled graph compiles it: its seconds go to ``info``."""
    t0 = time.perf_counter()
    out = call()
    if info.kind == "compiled" and not info.compile_seconds:
        info.compile_seconds = time.perf_counter() - t0
    return out


def _forget(optimizer: torch.optim.Optimizer, made: list[Tensor]) -> None:
    """Remove the optimizer state :func:`_adam_state` made (a fast path not taken changes nothing)."""
    for p in made:
        optimizer.state.pop(p, None)


def graph_of_call(fn: Callable[..., Tensor], inputs: Sequence[Tensor], kind: str = "graph",
                  device: torch.device | None = None) -> tuple[Callable[..., Tensor] | None, FastPath]:
    """``fn`` (no gradients; e.g. one chunk of an importance-sampled likelihood) as a captured
    graph (``kind="graph"``) or a compiled one (``"compiled"``), if, under one seed, it returns what
    ``fn(*inputs)`` does; else None. With its :class:`FastPath`."""
    inputs = tuple(inputs)
    run, info = _graph(fn, inputs, kind, device or inputs[0].device, True, "call")
    if run is None:
        return None, info

    def call(*args: Tensor) -> Tensor:
        with torch.no_grad():
            return run(*args)

    if not equal_calls(lambda: [fn(*inputs)], lambda: [_timed_first_call(info, lambda: call(*inputs))]):
        return None, FastPath("plain", f"the {kind} call differs from the plain call", info.capture_seconds,
                              info.compile_seconds)
    info.reason = f"equal to the plain call ({kind})"
    return call, info

