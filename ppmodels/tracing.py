r"""The traced fast path: ``torch.jit.trace`` of one call, kept only where it is proven equal.

A trace records the tensor operations of one call of a Pyro program and replays them without
the Python and Pyro handler overhead. It freezes Python control flow and shapes, so it is
only offered for models that declare ``static_structure = True``, and only used after the
traced call, run under the same seed as the plain call, returned the same value (and the
same gradients, where asked). Anything that fails while tracing means: no fast path.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor

from .program.probe import forked_rng

__all__ = ["trace_if_equal", "forked_rng"]

CHECK_SEED = 12345


def trace_if_equal(
    fn: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    wrt: Sequence[Tensor] = (),
    rtol: float = 1e-5,
    atol: float = 1e-5,
    reuse: Callable[..., Tensor] | None = None,
) -> Callable[..., Tensor] | None:
    """``torch.jit.trace(fn, inputs)`` if, with the RNG seeded alike, the traced call's output
    equals ``fn(*inputs)`` (``allclose`` with ``rtol``, ``atol``) and so do the gradients of
    the output with respect to ``wrt`` (up to rounding, see :func:`_close`); otherwise None. The RNG
    state is restored afterwards. Tensors in ``inputs`` become the trace's inputs; any other
    tensor ``fn`` reads is recorded as a constant. ``reuse``: a trace made earlier, checked the
    same way and returned if equal, without tracing anew (it also keeps the graph executor's
    optimisations, which otherwise cost the first two calls of a new trace)."""
    inputs = tuple(inputs)
    if reuse is not None and _equal(fn, reuse, inputs, wrt, rtol, atol):
        return reuse
    try:
        with warnings.catch_warnings(), forked_rng():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(fn, inputs, check_trace=False)
    except Exception:  # noqa: BLE001 - any failure means: no fast path
        return None
    return traced if _equal(fn, traced, inputs, wrt, rtol, atol) else None


def _equal(fn: Callable[..., Tensor], traced: Callable[..., Tensor], inputs: tuple, wrt: Sequence[Tensor],
           rtol: float, atol: float) -> bool:
    """Whether ``traced(*inputs)`` and ``fn(*inputs)``, each under :data:`CHECK_SEED`, agree in
    value and in the gradients with respect to ``wrt`` (a failure counts as no)."""
    try:
        with warnings.catch_warnings(), forked_rng():
            warnings.simplefilter("ignore")
            checks = []
            for run in (lambda: fn(*inputs), lambda: traced(*inputs)):
                torch.manual_seed(CHECK_SEED)
                value = run()
                grads = torch.autograd.grad(value, list(wrt), allow_unused=True) if wrt else ()
                checks.append([value.detach()] + [g for g in grads if g is not None])
    except Exception:  # noqa: BLE001
        return False
    (a, *ga), (b, *gb) = checks
    same = a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol)
    return same and len(ga) == len(gb) and all(_close(u, v) for u, v in zip(ga, gb))


def _close(u: Tensor, v: Tensor) -> bool:
    """Gradients equal up to rounding, entry by entry: ``rtol=1e-4`` and an absolute tolerance
    of 1e-6 or 1e-5 of the tensor's largest entry, whichever is larger. The graph executor's
    optimised runs of a trace (its third call on) sum in another order: entries near zero then
    differ by about 3e-7 of the largest, more than a fixed 1e-6 allows."""
    if u.shape != v.shape:
        return False
    scale = float(v.abs().max()) if v.numel() else 0.0
    return torch.allclose(u, v, rtol=1e-4, atol=max(1e-6, 1e-5 * scale))
