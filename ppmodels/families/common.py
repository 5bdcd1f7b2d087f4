"""Helpers shared by the families and by the other ``ppmodels`` commands: argument types (those of
:mod:`ppmodels.argtypes`), image grids, the test figures of a run, the callbacks and objective
options the train flags ask for, and :func:`fit_stage`, the one call of the SVI loop with a
command's settings.

Nothing here imports torch at module level, so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

from ..argtypes import ints, nonnegative, positive

__all__ = ["ints", "positive", "nonnegative", "save_grid", "evaluation_report", "unlabelled", "network_config",
           "check_seed", "callbacks", "objective_options", "fit_stage", "count_parameters", "check_model_size"]


# -- outputs --------------------------------------------------------------------------------------
def save_grid(images, path: Path, nrow: int = 8, owner: str = "run") -> None:
    """Rows of 784 pixels as one PNG grid of 28 x 28 images, ``nrow`` to a row (written by
    :func:`ppmodels.rundir.write_artifact`, as ``owner``'s)."""
    from torchvision.utils import save_image

    from ..rundir import write_artifact

    grid = images.reshape(-1, 1, 28, 28).float().cpu()
    write_artifact(path, lambda staged: save_image(grid, staged, nrow=nrow), owner=owner)


def evaluation_report(model, test, num_samples: int, subset: int | None, seed: int, group=None,
                      table=None) -> dict[str, float]:
    """Test ELBO (all of ``test``), importance-sampled NLL (its first ``subset`` rows), active units.
    Data-parallel (``group``), the ELBO and the NLL split the rows across ranks and gather.
    ``table``: an :func:`ppmodels.evaluate.importance_diagnostics` table of those rows with
    ``num_samples`` draws, whose NLL is reported instead of drawing anew."""
    import torch

    from .. import evaluate
    from ..utils import PPModelsError

    if num_samples > 1_000_000:
        raise PPModelsError(f"--num-samples {num_samples} importance samples would take days; use at most 1000000")
    g = torch.Generator(device=test.device).manual_seed(seed)
    sub = test.subset(subset) if subset else test
    t0 = time.perf_counter()
    if group is not None:
        g.manual_seed(seed + group.rank)
    if table is not None:
        nll = -float(table["log_lik"].mean())
    else:
        nll = evaluate.mean_nll(model, sub, num_samples, generator=g, group=group)
    if group is None:
        test_elbo = evaluate.elbo(model, test, generator=g).mean().item()
    else:
        test_elbo = group.mean_over_rows(lambda part: evaluate.elbo(model, part, generator=g), test, test.device)
    return {
        "test_elbo": test_elbo,
        "test_nll": nll,
        "nll_images": len(sub),
        "nll_samples": num_samples,
        "nll_seconds": time.perf_counter() - t0,
        "active_units": sum(evaluate.active_units(model, test, generator=g).values()),  # continuous sites
    }


def unlabelled(data):
    """``data`` without its label tensor (what the test figures of a model of x alone use)."""
    out = data.subset(slice(None))
    out.tensors = out.tensors[:1]
    return out


# -- the model's size, before it is built ------------------------------------------------------------
#: a tensor of more elements than this is made on the meta device while parameters are counted
_META_ABOVE = 4096


class _TooMany(Exception):
    pass


def _meta_factories():
    """A torch function mode that makes large new tensors on the meta device (shape, no memory),
    small ones as usual (code that builds a model may read small tensors' values)."""
    import math

    import torch
    from torch.overrides import TorchFunctionMode

    sized = {torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn}

    class MetaFactories(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func in sized and kwargs.get("device") is None:
                shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
                try:
                    large = math.prod(int(d) for d in shape) > _META_ABOVE
                except (TypeError, ValueError):
                    large = False
                if large:
                    kwargs["device"] = "meta"
            return func(*args, **kwargs)

    return MetaFactories()


def count_parameters(key: str, config: dict[str, Any], bound: int, repeated: Sequence[str] = ()) -> int:
    """The parameters of ``models.build(key, **config)``, counted without allocating its large
    tensors (they are made on the meta device) and without building more than ``bound``
    parameters (above it: ``bound + 1``). A config key in ``repeated`` counts identical layers:
    the model is built with 1 and 2 of each and the count extrapolated, so that a million layers
    cost two."""
    import torch
    from torch.nn.modules.module import register_module_parameter_registration_hook

    from ..models import build

    def count(cfg: dict[str, Any]) -> int:
        seen = [0]

        def hook(module, name, param):
            if param is not None:
                seen[0] += param.numel()
                if seen[0] > bound:
                    raise _TooMany

        handle = register_module_parameter_registration_hook(hook)
        try:
            with _meta_factories(), torch.no_grad():
                build(key, **cfg)
        except _TooMany:
            return bound + 1
        finally:
            handle.remove()
        return seen[0]

    layers = {k: config[k] for k in repeated if isinstance(config.get(k), int) and config[k] > 2}
    if not layers:
        return count(config)
    base = count({**config, **{k: 1 for k in layers}})
    total = base + sum((n - 1) * (count({**config, **{k: 1 for k in layers}, k: 2}) - base)
                       for k, n in layers.items())
    return min(total, bound + 1)


def check_model_size(key: str, config: dict[str, Any], bound: int, device: str = "cpu",
                     repeated: Sequence[str] = ()) -> int:
    """The parameter count of the model (:func:`count_parameters`), checked before it is built:
    at most ``bound`` (``--max-parameters``), and it, its gradients and Adam's two moments within
    the free memory of ``device``; else a one-line :class:`PPModelsError`."""
    from ..utils import PPModelsError, check_memory

    n = count_parameters(key, config, bound, repeated)
    if n > bound:
        raise PPModelsError(f"train: the {key} model would have more than {bound:,} parameters (--max-parameters); "
                            "make it smaller or raise --max-parameters")
    check_memory(16.0 * n, f"the {key} model ({n:,} parameters, their gradients and Adam's moments)",
                 "make it smaller", device if device != "auto" else "cpu")
    return n


# -- the train command's settings -----------------------------------------------------------------
def network_config(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``--z-dim``, ``--hidden`` and ``--activation`` where given."""
    for key in ("z_dim", "hidden", "activation"):
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)
    return config


def check_seed(seed: int) -> None:
    from ..utils import PPModelsError

    if not 0 <= seed < 2**63:
        raise PPModelsError(f"--seed must be in [0, 2**63), got {seed}")


def callbacks(args: argparse.Namespace, out: Path, diagnose=None, extra: Sequence[Any] = ()) -> list:
    """The callbacks the train flags ask for: KL annealing, TensorBoard; and posterior-collapse
    diagnostics on ``diagnose`` (held-out data) when given."""
    from ..callbacks import CollapseDiagnostics, KLAnnealing, TensorBoard

    found: list = [CollapseDiagnostics(diagnose)] if diagnose is not None else []
    if args.kl_warmup:
        end = 1.0 if args.kl_weight is None else args.kl_weight
        found.append(KLAnnealing(args.kl_warmup, start=0.0, end=end, cycles=args.kl_cycles))
    if args.tensorboard is not None:
        found.append(TensorBoard(Path(args.tensorboard) if args.tensorboard else out / "tensorboard"))
    return [*found, *extra]


def objective_options(args: argparse.Namespace) -> dict[str, Any]:
    """The objective's options given on the command line (-K, --alpha, --baseline, --kl-weight)."""
    opts: dict[str, Any] = {}
    if getattr(args, "kl_weight", None) is not None and not getattr(args, "kl_warmup", None):
        opts["kl_weight"] = args.kl_weight
    if args.num_particles is not None:
        opts["num_particles"] = args.num_particles
    if args.alpha is not None:
        opts["alpha"] = args.alpha
    if args.baseline is not None:
        opts["baseline"] = args.baseline
    if getattr(args, "commitment", None) is not None:  # vqvae's β
        opts["commitment"] = args.commitment
    if getattr(args, "free_bits", None):
        opts["free_bits"] = args.free_bits
    return opts


def fit_stage(model, train, test, args: argparse.Namespace, out: Path, family: str, config: dict[str, Any],
              objective: str, epochs: int | None, diagnose=None, extra_callbacks: Sequence[Any] = ()):
    """One call of the SVI loop with the command's settings; returns (history, seconds). The
    training settings are the attributes of ``args`` named after one
    (:class:`ppmodels.settings.TrainSettings`: the flags, and what a recipe set); ``epochs``
    (else --steps) is the stage's length. ``family`` and ``config`` go into the checkpoint
    (``meta``), so that ``evaluate`` and ``sample`` can rebuild the model (``family`` is a
    :data:`ppmodels.models.REGISTRY` key)."""
    from dataclasses import fields

    from ..fit import fit
    from ..rundir import CHECKPOINT
    from ..settings import TrainSettings

    # --resume: a stage with a checkpoint continues it; a later stage not begun starts (the
    # command's run directory was checked before the first stage)
    resume = args.resume and (Path(out) / CHECKPOINT).exists()
    settings = {f.name: getattr(args, f.name) for f in fields(TrainSettings) if hasattr(args, f.name)}
    settings.update(epochs=epochs, steps=args.steps if epochs is None else None)
    t0 = time.perf_counter()
    history = fit(
        model, train, objective=objective, **settings, device=args.device, test=test, out=out, resume=resume,
        overwrite=args.overwrite, trust=args.trust_checkpoint, progress=False if args.quiet else None,
        jit=False if args.no_jit else None, callbacks=callbacks(args, out, diagnose, extra_callbacks),
        meta={"family": family, "config": config,
              "args": {k: str(v) for k, v in vars(args).items() if k != "given_options"}},
        **objective_options(args),
    )
    return history, time.perf_counter() - t0
