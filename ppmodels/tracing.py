r"""The traced fast path: ``torch.jit.trace`` of one call, kept only where it is proven equal.

A trace records the tensor operations of one call of a Pyro program and replays them without
the Python and Pyro handler overhead. It freezes Python control flow and shapes, so it is
only offered for models that declare ``static_structure = True``, and only used after the
traced call, run under the same seed as the plain call, returned the same value (and the
same gradients, where asked). Anything that fails while tracing means: no fast path.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["trace_if_equal", "forked_rng"]

CHECK_SEED = 12345


def forked_rng() -> contextlib.AbstractContextManager:
    """Run a block without advancing torch's CPU and (initialised) CUDA random streams."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)


def trace_if_equal(
    fn: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    wrt: Sequence[Tensor] = (),
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> Callable[..., Tensor] | None:
    """``torch.jit.trace(fn, inputs)`` if, with the RNG seeded alike, the traced call's output
    equals ``fn(*inputs)`` (``allclose`` with ``rtol``, ``atol``) and so do the gradients of
    the output with respect to ``wrt`` (``rtol=1e-4, atol=1e-6``); otherwise None. The RNG
    state is restored afterwards. Tensors in ``inputs`` become the trace's inputs; any other
    tensor ``fn`` reads is recorded as a constant."""
    inputs = tuple(inputs)
    try:
        with warnings.catch_warnings(), forked_rng():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(fn, inputs, check_trace=False)
            checks = []
            for run in (lambda: fn(*inputs), lambda: traced(*inputs)):
                torch.manual_seed(CHECK_SEED)
                value = run()
                grads = torch.autograd.grad(value, list(wrt), allow_unused=True) if wrt else ()
                checks.append([value.detach()] + [g for g in grads if g is not None])
    except Exception:  # noqa: BLE001 - any failure means: no fast path
        return None
    (a, *ga), (b, *gb) = checks
    same = a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol)
    same = same and len(ga) == len(gb) and all(torch.allclose(u, v, rtol=1e-4, atol=1e-6) for u, v in zip(ga, gb))
    return traced if same else None
