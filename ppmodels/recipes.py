r"""Training protocols from papers, as one call: :func:`burda2016`.

Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders*, Table 1: MNIST with
dynamic binarization; the one-layer (784-200-200-50) or two-layer (784-200-200-100-100-100-50)
VAE with tanh units; Glorot-uniform weights, zero biases, the decoder's output bias at the logit
of the training set's mean pixel; Adam (β = 0.9, 0.999, ε = 1e-4) on batches of 20; 3^i passes
at learning rate 1e-3·10^(-i/7), i = 0…7 (3280 passes); the test NLL by importance sampling
with K = 5000 on the 10,000 test images, and the active units.

``passes`` < 3280 shrinks the eight stages in proportion (``lr_schedule="burda-compressed"``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import pandas as pd
import torch

from . import data as datasets
from . import evaluate
from .callbacks import ImportanceNLL
from .fit import fit
from .models import VAE
from .utils import PPModelsError, resolve_device

__all__ = ["burda2016", "BURDA2016"]

BURDA2016: dict[str, Any] = {"batch_size": 20, "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-4,
                             "lr_schedule": "burda-compressed"}


def burda2016(
    preset: str = "burda",
    objective: str = "elbo",
    num_particles: int = 1,
    passes: int = 3280,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    nll_at: Sequence[int] = (),
    num_samples: int = 5000,
    nll_images: int | None = None,
    curve_images: int | None = None,
    train: datasets.TensorData | None = None,
    test: datasets.TensorData | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool | None = None,
    callbacks: Sequence[Any] = (),
    meta: dict[str, Any] | None = None,
) -> tuple[VAE, pd.DataFrame, dict[str, Any]]:
    """Train ``VAE.preset(preset)`` (``"burda"``: one layer, ``"burda2"``: two) with ``objective``
    (``"elbo"`` for the VAE rows, ``"iwae"`` for the IWAE rows) and K = ``num_particles`` by
    Burda et al.'s protocol over ``passes`` passes; the test NLL (K = ``num_samples``) after the
    passes in ``nll_at`` (on the first ``curve_images`` test images; default ``nll_images``) and at
    the end (on the first ``nll_images``; None: all 10,000). With ``out``, the checkpoints of the
    ``nll_at`` passes are kept (``checkpoint-epoch{N}.pt``): their NLL can be measured again.
    Returns ``(model, history, report)``; ``report`` has ``test_nll``, ``test_elbo``,
    ``active_units``, ``passes``, ``train_seconds`` and ``nll_seconds``."""
    if preset not in ("burda", "burda2"):
        raise PPModelsError(f"burda2016: preset must be 'burda' or 'burda2', got {preset!r}")
    if not isinstance(passes, int) or passes < 1:
        raise PPModelsError(f"burda2016: passes must be an integer >= 1, got {passes!r}")
    dev = resolve_device(device)
    if train is None or test is None:
        splits = datasets.mnist(binarize="dynamic", device=dev)
        train = splits["train"] if train is None else train
        test = splits["test"] if test is None else test
    evaluation = test.subset(nll_images) if nll_images else test
    curve = test.subset(curve_images) if curve_images else evaluation
    torch.manual_seed(seed)
    model = VAE.preset(preset).burda_init(datasets.mean_pixel(train)).to(dev)
    outside = [p for p in nll_at if not (isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= passes)]
    if outside:
        raise PPModelsError(f"burda2016: nll_at must hold passes 1 to {passes}, got {outside!r}; "
                            f"ask for later passes with passes=")
    at = sorted({p for p in nll_at if p < passes})  # the last pass's NLL is the report's own
    t0 = time.perf_counter()
    history = fit(model, train, objective=objective, num_particles=num_particles, epochs=passes, seed=seed,
                  device=dev, out=out, resume=resume, overwrite=overwrite, progress=progress,
                  callbacks=[*([ImportanceNLL(curve, at, num_samples, seed)] if at else []), *callbacks],
                  meta=meta or {"family": "vae", "config": model.config, "recipe": "burda2016"}, **BURDA2016)
    # the run's training wall time, a resumed run's earlier parts included
    train_seconds = float(history["seconds"].iloc[-1]) if "seconds" in history else time.perf_counter() - t0
    g = torch.Generator(device=dev).manual_seed(seed)
    t1 = time.perf_counter()
    nll = evaluate.mean_nll(model, evaluation, num_samples, generator=g)
    report = {"recipe": "burda2016", "preset": preset, "objective": objective, "num_particles": num_particles,
              "passes": passes, "test_nll": nll, "nll_images": len(evaluation), "nll_samples": num_samples,
              "nll_seconds": time.perf_counter() - t1,
              "test_elbo": float(evaluate.elbo(model, test, generator=g).mean()),
              "active_units": sum(evaluate.active_units(model, test, generator=g).values()),
              "train_seconds": train_seconds}
    return model, history, report

