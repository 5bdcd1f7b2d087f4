r"""Data-parallel SVI under ``torchrun``: what :func:`ppmodels.fit.fit` does when launched with
``WORLD_SIZE`` > 1.

Every rank draws the same global batch (the batch order and the dynamic binarization come from
generators seeded by the run's seed and the epoch) and keeps its contiguous shard of
``batch_size / world_size`` rows. The loss of a rank is its shard's sum over datapoints (the
objectives' convention), so the gradients are **summed** across ranks with one all-reduce:
the update is the single-process update on the global batch. When a plate is subsampled, each
rank's loss already carries that plate's N/B scale for its own shard, i.e. each rank estimates
the whole-data loss, and the gradients are **averaged** instead. The objective's running state
(REINFORCE's baseline average) is averaged after each step, which for its linear update equals
the update with the global batch's mean.

Why not ``torch.nn.parallel.DistributedDataParallel`` itself: it hooks a module's ``forward``,
and an SVI loss is a Pyro program (model and guide) that reads the module's parameters, not one
``forward`` call; one flat all-reduce per step is what DDP does for models of this size
(a single bucket), with the sum/mean choice above made explicit.

Sites outside the batch plate (global latents and their observations, e.g. a mixture's
weights and locations) are in every rank's loss; so that the sum over ranks counts them once,
each rank scales them by 1 / world_size (:class:`ScaleOutside`, a Pyro messenger, so the
objectives see ordinary scaled sites).

When a peer process dies (killed, or out of memory), the other ranks' next collective fails
(gloo: "Connection closed by peer"): each of them stops with one line, :class:`PeerLost` (the
CLI: ``ppmodels: error: ...``, exit 2), and leaves at once; rank 0's last checkpoint resumes
the run.

The process group comes from the environment (``torchrun``): gloo on the CPU, NCCL on CUDA
(each rank on ``cuda:LOCAL_RANK``). Rank r > 0 draws its own particles from the seed
``seed + r · 1_000_003`` (rank 0 keeps ``seed``, so a one-process run is the ordinary run).
"""

from __future__ import annotations

import atexit
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import Tensor

from .utils import PPModelsError

__all__ = ["Group", "setup", "rank_seed", "ScaleOutside", "plan", "PeerLost"]

RANK_SEED_STRIDE = 1_000_003

# The last tensors given to collectives, kept until the process ends (see ``_sent``).
_SENT: deque[Tensor] = deque(maxlen=8)


def _sent(tensor: Tensor) -> Tensor:
    """Keep ``tensor``, which is being given to a collective, alive from Python until exit.

    Why: gloo's worker thread drops its reference to a finished collective (and to its tensors)
    a moment *after* the caller's ``all_reduce`` has returned. If Python has dropped the tensor
    by then, torch has handed the tensor's Python object to C++, and the worker must take the
    GIL to free it. During interpreter shutdown taking the GIL ends the thread, which aborts the
    process ("terminate called without an active exception"): a rank that exits right after its
    last collective died so in about one 2-process run in ten. Holding the last few tensors and,
    at exit, waiting until no C++ reference to them is left (``_release_sent``) closes that
    window; torch offers no call that waits for the worker to release a finished work."""
    _SENT.append(tensor)
    return tensor


class PeerLost(PPModelsError):
    """A collective failed: another process of the data-parallel run died or left."""


_LOST: list[bool] = []  # set once a peer was lost: nothing more to wait for at exit


def _release_sent(timeout: float = 10.0) -> bool:
    """Wait (at most ``timeout`` seconds) until the kept tensors are referenced from Python only,
    then drop them; ``False`` if a collective still holds one (they are then left to shutdown).
    After a peer was lost, nothing is waited for (its failed collectives never let go)."""
    if not _SENT or _LOST:
        _SENT.clear()
        return True
    deadline = time.monotonic() + timeout
    if not hasattr(torch.Tensor, "_use_count"):  # a torch without it: give the workers a moment
        time.sleep(min(timeout, 0.1))
    else:
        while any(t._use_count() > 1 for t in _SENT):
            if time.monotonic() > deadline:
                return False
            time.sleep(1e-3)
    _SENT.clear()
    return True


atexit.register(_release_sent)


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise PPModelsError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun") from None


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own draws (particles)."""
    return seed if rank == 0 else (seed + rank * RANK_SEED_STRIDE) % 2**63


@dataclass
class Group:
    """The data-parallel group this process belongs to."""

    rank: int
    world_size: int
    average: bool = False  # average gradients (a subsampled plate) instead of summing them

    @property
    def main(self) -> bool:
        return self.rank == 0

    def _collective(self, op: Callable, tensor: Tensor, **kw: Any) -> None:
        """``op(tensor, **kw)`` (a collective of ``torch.distributed``); a failure, which under a
        healthy group means a peer died, is :class:`PeerLost`, one line."""
        try:
            op(_sent(tensor), **kw)
        except RuntimeError as e:  # gloo and NCCL's errors (DistBackendError is one)
            _LOST.append(True)
            why = str(e).split("]", 1)[-1].strip().split(". ")[0] or type(e).__name__
            raise PeerLost(f"data-parallel rank {self.rank} of {self.world_size}: a peer process died or left "
                           f"({why[:120]}); this rank stops too. Resume the run from rank 0's last checkpoint") from None

    def shard(self, batch: tuple) -> tuple:
        """This rank's contiguous block of a global batch's rows (the tensors with as many rows as
        the first; blocks of a ragged last batch may differ by one row: the summed loss is still
        the global batch's)."""
        rows = batch[0].shape[0]
        lo, hi = rows * self.rank // self.world_size, rows * (self.rank + 1) // self.world_size
        return tuple(t[lo:hi] if torch.is_tensor(t) and t.dim() and t.shape[0] == rows else t for t in batch)

    def shards(self, batches: Iterator[tuple]) -> Iterator[tuple]:
        for batch in batches:
            yield self.shard(batch)

    def reduce_gradients(self, params: Sequence[Tensor]) -> None:
        """Sum (or average) the gradients over ranks: one flat all-reduce (a parameter without a
        gradient on this rank takes part with zeros, so every rank sends the same layout)."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._collective(torch.distributed.all_reduce, flat)
        if self.average:
            flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def average_(self, tensors: Sequence[Tensor]) -> None:
        """Replace each tensor by its mean over ranks (in place)."""
        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        self._collective(torch.distributed.all_reduce, flat)
        flat /= self.world_size
        offset = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def sum(self, values: Sequence[float | Tensor], device: torch.device) -> list[float]:
        """The sums over ranks of a few numbers (one all-reduce)."""
        flat = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        self._collective(torch.distributed.all_reduce, flat)
        return flat.tolist()

    def mean_over_rows(self, per_row: Callable[[Any], Tensor], data: Any, device: torch.device) -> float:
        """The mean over all of ``data``'s rows of ``per_row(shard)``, each rank taking every
        ``world_size``-th contiguous block of rows."""
        n = len(data)
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        local = per_row(data.subset(slice(lo, hi))) if hi > lo else torch.zeros(0)
        total, count = self.sum([local.sum(), local.numel()], device)
        return total / max(count, 1)

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Rank 0's values of ``tensors`` on every rank (the initial parameters)."""
        for t in tensors:
            with torch.no_grad():
                self._collective(torch.distributed.broadcast, t.data, src=0)


def setup(device: torch.device) -> tuple[Group | None, torch.device]:
    """The process group from the environment when ``WORLD_SIZE`` > 1 (initialized here if it is
    not yet), and the device this rank uses; ``(None, device)`` for a single process."""
    world = world_size_from_env()
    if world <= 1:
        return None, device
    if not torch.distributed.is_available():
        raise PPModelsError("WORLD_SIZE > 1 but this torch has no torch.distributed; run one process")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise PPModelsError(f"WORLD_SIZE={world} but {', '.join(missing)} unset; launch with torchrun")
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(torch.distributed.get_rank(), torch.distributed.get_world_size()), device


def refuse_nonlinear(objective: Any) -> None:
    """Objectives whose loss is not a sum of per-row terms over the batch cannot be split by rows."""
    if getattr(objective, "free_bits", 0):
        raise PPModelsError("data-parallel training: free_bits clamps the batch's mean KL, which the ranks' shards "
                            "do not add up to; train with free_bits in one process")


class ScaleOutside(Messenger):
    """Multiply the scale of every sample site outside the plate ``plate`` by ``factor``."""

    preserves_structure = True  # the program's facts stay those of the program it wraps

    def __init__(self, plate: str, factor: float) -> None:
        super().__init__()
        self.plate, self.factor = plate, factor

    def _pyro_sample(self, msg: dict) -> None:
        if all(frame.name != self.plate for frame in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.factor


def plan(model: Callable, guide: Callable, shard: tuple, batch: tuple, data_plate: str | None = None
         ) -> tuple[bool, str]:
    """How ranks combine for a program, from a probe on a rank's ``shard`` and one on the global
    ``batch``: ``(average, plate)``. ``plate`` is the batch plate. When its full size is the same
    on the shard as on the global batch (a plate over the whole data set, subsampled), each
    rank's loss estimates the whole and the gradients are averaged. Otherwise (a plate over the
    rows given) they are summed, and each rank scales the sites outside ``plate`` by
    1 / world_size. A program without a batch plate cannot be split by rows: an error. (The
    program's cached facts do not serve here: they are the same for any number of rows.)"""
    from pyro.poutine.util import prune_subsample_sites

    from . import program

    sizes = []
    for rows in (shard, batch):
        seen = program.probe(model, guide, rows)
        try:
            frame = program.find_data_plate(prune_subsample_sites(seen.model_trace),
                                            prune_subsample_sites(seen.guide_trace), data_plate)
        except program.AmbiguousPlate as e:
            raise PPModelsError(f"data-parallel training: {e}") from None
        if frame is None:
            raise PPModelsError("data-parallel training needs a batch plate (pyro.plate over the rows) to split the "
                                "batch by; run this program in one process")
        sizes.append((frame.name, getattr(frame, "full_size", None) or frame.size))
    (name, shard_size), (_, batch_size) = sizes
    return shard_size == batch_size and shard_size is not None, name
