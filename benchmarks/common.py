"""Shared benchmark helpers: interleaved timing in one process, per-round ratios, environment."""

from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).parent / "results"


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, device="cpu", warmup: int = 1) -> dict[str, list[float]]:
    """Time each function once per round, in turn (A, B, A, B, ...), so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the per-round ratios a_i / b_i."""
    r = [x / y for x, y in zip(a, b)]
    return statistics.median(r), min(r), max(r)


def environment(device="cpu") -> dict[str, str]:
    import pyro

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or platform.machine()} CPU"
    malloc = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
    return {"device": f"{dev.type}: {name}", "torch": torch.__version__, "pyro": pyro.__version__,
            "threads": str(torch.get_num_threads()), "cpus": str(os.cpu_count()),
            "malloc": malloc or "defaults"}  # glibc's thresholds move a K = 50 eager step by 15-20 % (allocator.py)


def write_csv(rows: list[dict], name: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(widths[c]) for c in cols))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def ppmodels_step(model, objective, x, optimizer, kind: str = "graph", cuda_graphs: bool = True):
    """ppmodels' training step for ``model`` on batches shaped like ``x``, as ``fit`` builds it:
    the plain step, or the fast path's ``kind`` (``"graph"``, ``"compiled"``; on CUDA with CUDA
    graphs unless ``cuda_graphs=False``) where it is proven equal (see ``ppmodels.compiled``).
    Returns (step, what ran)."""
    import pyro

    from ppmodels import compiled
    from ppmodels.fit import prepare, svi_step

    pyro.clear_param_store()
    params, pair = prepare(model, objective, (x,))
    plain_loss = lambda b: objective.differentiable_loss(pair.model, pair.guide, *b)  # noqa: E731
    plain = lambda b: svi_step(plain_loss, optimizer, b)  # noqa: E731
    if kind == "plain":
        return plain, "plain"
    step, info = compiled.build_step(lambda *b: plain_loss(b), (x,), list(params.values()), optimizer, kind=kind,
                                     plain_step=plain, cuda_graphs=cuda_graphs)
    return (step or plain), info.kind
