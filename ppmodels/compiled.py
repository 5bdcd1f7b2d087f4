r"""The fast path: one SVI step's loss and gradients as one graph, compiled
with ``torch.compile`` where that pays, and used only where it is proven equal to the plain step.

**Capture.** :func:`capture` records the tensor operations of one call
(:func:`ppmodels.recording.record`, a ``TorchDispatchMode``; why not ``make_fx`` is said there):
it runs the Pyro program once and keeps the ATen operations it dispatched, the backward pass's
included (``torch.autograd.grad`` inside the recorded function), as an FX graph whose inputs are
the tensors passed in. Tensors the program reads that are among those inputs (the parameters,
by identity) become the graph's inputs; any other tensor it reads is recorded as a constant.
Like a trace, this freezes Python control flow and shapes, so it is offered only for models
that declare ``static_structure = True`` and objectives marked ``jit_safe``.

Why not ``torch.compile`` of the loss directly: TorchDynamo would trace Pyro's handler stack
(messengers, site dictionaries, weak references) bytecode by bytecode, with graph breaks and
guards on every call; the program's operations are static here, so they are recorded once and
the graph, pure ATen, is what ``torch.compile`` sees. (``torch.jit.trace``, which this replaces,
is deprecated in the torch the project installs.) On a CPU, softplus, the Bernoulli likelihood and
tanh are first put in the forms of :mod:`ppmodels.cpu_forms` (within 3 ulp of the exact values; SLEEF's
``log1p`` and ``tanh``, which inductor calls, were most of a many-particle step outside its
matmuls).

**The step.** :func:`build_step` records ``loss → grads`` (``torch.autograd.grad`` inside the
recording) as the graph; clipping and the optimizer's own ``step`` run after it, as in the plain
step. The update was part of the graph until inductor's kernel for it proved slower than torch's
fused Adam: on this project's 2-core CPU, the VAE's (689k parameters) update took 1.6–1.8 ms in
the compiled graph (``torch.profiler`` with inductor's kernel profiling, batch 20) and 0.4–1.1 ms
as ``torch.optim.Adam(fused=True)`` (``benchmarks/adam_forms.py``). Keeping it outside also lets the fast path take any
optimizer.

**The rule.** A fast step is used only if, from the same parameters, optimizer state and seed,
it gives the plain step's loss and gradients (see :func:`_close`; the update after them is the
optimizer's own in both). Otherwise, or if anything fails, the plain step runs, and
:class:`FastPath` says why. Every check restores the parameters, the optimizer state and the
random state, so a failed attempt changes nothing.

**Compiling** (``torch.compile``, inductor; ``fallback_random`` so that the random draws are
eager torch's and a compiled run equals the plain run draw for draw) costs seconds to tens of
seconds on a CPU, less from inductor's on-disk cache. :func:`choose` decides by the steps a call
will take: a short call stays plain (:data:`CAPTURE_MIN_STEPS`), a longer one runs the captured
graph, a long one compiles it. On CUDA with ``cuda_graphs``
the compiled step uses ``mode="reduce-overhead"`` (CUDA graphs; the shapes are static).
"""

from __future__ import annotations

import importlib
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyro
import torch
from torch import Tensor

from . import cpu_forms
from .program.probe import forked_rng
from .recording import ReadsValues, record

__all__ = ["FastPath", "capture", "compile_graph", "build_step", "graph_of_call", "choose", "equal_calls", "CHECK_SEED",
           "CAPTURE_MIN_STEPS", "forked_rng"]

CHECK_SEED = 12345

#: a call with fewer steps stays plain. A capture of the VAE's step and its check take about
#: 0.03 s and 0.02 s (the 2-core CPU; ``make_fx``'s capture took 0.17 s), and the graph's step
#: saves about 1 ms of the plain step's 3–6 ms: it pays back from about 50 steps. The capture's
#: dispatch mode imports TorchDynamo (1.5–2.5 s), but so does the constructor of any
#: ``torch.optim`` optimizer, ours or a hand-written loop's (``torch._compile``'s lazy import),
#: before the first step: not a cost of the capture.
CAPTURE_MIN_STEPS = 50


@dataclass
class FastPath:
    """What ran: ``kind`` ``"plain"``, ``"graph"`` (the captured step, run as recorded) or
    ``"compiled"`` (the captured step compiled by ``torch.compile``); ``reason``: why; the seconds
    its capture and its compilation (the first compiled call) took; ``cpu_forms``: how many of its
    operations a compiled graph on a CPU computes in :mod:`ppmodels.cpu_forms`' forms."""

    kind: str = "plain"
    reason: str = ""
    capture_seconds: float = 0.0
    compile_seconds: float = 0.0
    cpu_forms: int = 0

    def equal(self, what: str) -> None:
        """Say that the graph of ``kind`` was found equal to the plain ``what``."""
        forms = f"; {self.cpu_forms} operations in ppmodels.cpu_forms' forms" if self.cpu_forms else ""
        self.reason = f"equal to the plain {what} ({self.kind}{forms})"

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


def capture(fn: Callable[..., Any], inputs: Sequence[Tensor], python_bindings: bool = False) -> torch.fx.GraphModule:
    """``fn``'s tensor operations on ``inputs`` as an FX graph of ATen operations
    (:func:`ppmodels.recording.record`), with every random state restored afterwards, and Pyro's
    and torch's argument checks off (they read values, which a graph would freeze).
    ``python_bindings``: for a graph run as recorded, not compiled. Raises whatever the call
    raises."""
    with warnings.catch_warnings(), forked_rng(), pyro.validation_enabled(False):  # checks read values
        warnings.simplefilter("ignore")
        return record(fn, inputs, python_bindings)


def compile_graph(gm: torch.fx.GraphModule, device: torch.device, cuda_graphs: bool = True) -> Callable[..., Any]:
    """``torch.compile`` of a captured graph: static shapes, the whole graph, eager torch's random
    draws (``fallback_random``); CUDA graphs on CUDA (``reduce-overhead``) when ``cuda_graphs``.
    Compilation happens at the first call."""
    _import_quietly("torch.utils.cpp_extension")  # inductor imports it; on a CPU it logs "No CUDA runtime is found"
    options = {"fallback_random": True}
    if device.type == "cuda" and cuda_graphs:
        options["triton.cudagraphs"] = True
    return torch.compile(gm, dynamic=False, fullgraph=True, options=options)


def _import_quietly(module: str) -> None:
    """Import ``module`` with its logger's warnings off (a CUDA build of torch on a machine with
    no GPU logs one about CUDA_HOME when inductor first imports its C++ extension module)."""
    log = logging.getLogger(module)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        importlib.import_module(module)
    finally:
        log.setLevel(level)


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


def _optimizer_state(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A function that puts ``optimizer``'s state back as it is now: each parameter's state
    tensors copied back, and any state made since removed."""
    saved = {p: {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in st.items()}
             for p, st in optimizer.state.items()}

    def restore() -> None:
        for p in list(optimizer.state):
            if p not in saved:
                del optimizer.state[p]
        for p, st in saved.items():
            for k in set(optimizer.state[p]) - set(st):
                del optimizer.state[p][k]
            for k, v in st.items():
                if torch.is_tensor(v) and torch.is_tensor(optimizer.state[p].get(k)):
                    with torch.no_grad():
                        optimizer.state[p][k].copy_(v)
                else:
                    optimizer.state[p][k] = v
    return restore


def build_step(
    loss_fn: Callable[..., Tensor],
    batch: tuple,
    params: list[Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    clip_norm: float | None = None,
    extra: Sequence[Tensor] = (),
    kind: str = "graph",
    plain_step: Callable[[tuple], Tensor],
    cuda_graphs: bool = True,
) -> tuple[Callable[[tuple], Tensor] | None, FastPath]:
    """The fast step for ``loss_fn(*batch)`` (the objective's loss on a batch of ``batch``'s
    shapes; it reads ``params`` and the tensors ``extra``, e.g. a scheduled KL weight): its loss
    and gradients by a graph of ``kind`` ``"graph"`` or ``"compiled"``, then (clipping and)
    ``optimizer``'s own step, if it equals ``plain_step`` (:func:`equal_calls` on ``batch``: the
    loss and the gradients the step used); else None. Returns it with its :class:`FastPath`."""
    n = len(batch)

    def grads_of(*inputs: Tensor) -> tuple[Tensor, ...]:
        with torch.enable_grad():
            loss = loss_fn(*inputs[:n])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        return (loss.detach(), *(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)))

    run, info = _graph(grads_of, [*batch, *params, *extra], kind, params[0].device, cuda_graphs, "step")
    if run is None:
        return None, info
    every = [p for g in optimizer.param_groups for p in g["params"]]
    # CUDA graphs write each replay's outputs into the same buffers: the loss, kept by the
    # history for later, is copied; the gradients are used before the next replay
    replayed = kind == "compiled" and cuda_graphs and params[0].device.type == "cuda"

    def fast(b: tuple) -> Tensor:
        with torch.no_grad():
            loss, *grads = run(*b, *params, *extra)
        for p, g in zip(params, grads):
            p.grad = g
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(every, clip_norm)
        optimizer.step()
        return loss.clone() if replayed else loss

    saved = [p.detach().clone() for p in params]
    restore_optimizer = _optimizer_state(optimizer)

    def restore() -> None:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        optimizer.zero_grad(set_to_none=True)
        restore_optimizer()

    def after(loss: Tensor) -> list[Tensor]:
        # loss and gradients: the update after them is the optimizer's own code in both steps.
        # Comparing the parameters after it would measure Adam, not the graph: its first step
        # moves each entry by about lr·sign(g), so a gradient entry near 0 whose rounding differs
        # by 3e-5 of the largest (IWAE, K = 5, compiled) moved a parameter by 2·lr
        return [loss, *(torch.zeros_like(p) if p.grad is None else p.grad for p in params)]

    if not equal_calls(lambda: after(plain_step(batch)), lambda: after(_timed_first_call(info, lambda: fast(batch))),
                       restore):
        return None, FastPath("plain", f"the {kind} step differs from the plain step on the first batch (or failed)",
                              info.capture_seconds, info.compile_seconds)
    info.equal("step on the first batch")
    return fast, info


def _graph(fn: Callable[..., Any], inputs: Sequence[Tensor], kind: str, device: torch.device, cuda_graphs: bool,
           what: str) -> tuple[Callable[..., Any] | None, FastPath]:
    """``fn`` captured on ``inputs`` (no gradients recorded outside it), compiled if ``kind`` is
    ``"compiled"`` (on a CPU with softplus, the Bernoulli likelihood and tanh first put in the forms
    of :mod:`ppmodels.cpu_forms`, which inductor compiles faster there), with its :class:`FastPath`
    (the capture's seconds); None if the capture fails."""
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            gm = capture(fn, inputs, python_bindings=kind != "compiled")
    except ReadsValues as e:
        return None, FastPath("plain", f"the {what} {e}")
    except Exception as e:  # noqa: BLE001 - any failure means: no fast path
        return None, FastPath("plain", f"the {what} could not be captured ({type(e).__name__})")
    info = FastPath(kind, capture_seconds=time.perf_counter() - t0)
    if kind != "compiled":
        return gm, info
    if device.type == "cpu":
        info.cpu_forms = cpu_forms.rewrite(gm)
    return compile_graph(gm, device, cuda_graphs), info


def _timed_first_call(info: FastPath, call: Callable[[], Any]) -> Any:
    """``call()``; the first call of a compiled graph compiles it: its seconds go to ``info``."""
    t0 = time.perf_counter()
    out = call()
    if info.kind == "compiled" and not info.compile_seconds:
        info.compile_seconds = time.perf_counter() - t0
    return out


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
    info.equal("call")
    return call, info

