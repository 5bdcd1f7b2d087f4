"""An attempt that fails changes nothing: :func:`attempt`.

Where ppmodels tries a fast path and falls back on failure (vectorized replicates in the lab, a
vectorized particle draw), the try runs inside :func:`attempt`: on an exception, every random
stream (torch's CPU and CUDA, Python's, numpy's) and the Pyro param store (values, and which
names exist) are put back as they were, and the exception propagates. A user object's own
Python state cannot be put back; the callers therefore decide from the program's facts, before
trying, whether a path can apply at all (see :mod:`ppmodels.analysis.replicates`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import pyro
import torch

from ..utils import rng_state, set_rng_state

__all__ = ["attempt", "param_store_snapshot", "restore_param_store"]


def param_store_snapshot() -> dict:
    """The param store's names, tensors and their values (copies), to restore later."""
    state = pyro.get_param_store().get_state()
    return {"params": dict(state["params"]), "constraints": dict(state["constraints"]),
            "values": {k: v.detach().clone() for k, v in state["params"].items()}}


def restore_param_store(snapshot: dict) -> None:
    """Put the param store back as :func:`param_store_snapshot` saw it: the same tensor
    objects (an optimizer holding them keeps working), with their values, and no other name."""
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n not in snapshot["params"]]:
        del store[name]
    state = store.get_state()
    for name, tensor in snapshot["params"].items():
        with torch.no_grad():
            tensor.copy_(snapshot["values"][name])
        state["params"][name] = tensor
        state["constraints"][name] = snapshot["constraints"][name]


@contextlib.contextmanager
def attempt() -> Iterator[None]:
    """Run the block; if it raises, restore the random streams and the param store, then re-raise."""
    rng, store = rng_state(), param_store_snapshot()
    try:
        yield
    except BaseException:
        set_rng_state(rng)
        restore_param_store(store)
        raise
