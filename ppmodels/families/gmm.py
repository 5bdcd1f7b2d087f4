"""``ppmodels train gmm``: a Gaussian mixture on the points of a CSV file (or Pyro's tutorial
points), fitted by MAP restarts or, with ``--guide bayes``, a mean-field guide trained by SVI."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..argtypes import Needs
from .base import Family
from .common import check_model_size, check_seed, fit_stage, positive

#: the options of SVI, which MAP restarts (--guide map, the default) do not use: their own Adam over --steps at --lr
SVI_ONLY = ("--epochs", "--batch-size", "--objective", "--num-particles", "--alpha", "--baseline", "--kl-weight",
            "--free-bits", "--kl-warmup", "--tensorboard", "--lr-schedule", "--weight-decay", "--no-jit",
            "--compile-min-steps", "--device", "--resume", "--trust-checkpoint", "--quiet")


def read_points(spec: str):
    """The points of ``--data``: Pyro's tutorial points for ``"tutorial"``, else the numeric
    columns of a CSV file, checked (readable, numeric, finite), as a float32 (N, D) tensor."""
    import torch

    from ..utils import PPModelsError

    if spec == "tutorial":
        return torch.tensor([[0.0], [1.0], [10.0], [11.0], [12.0]])
    path = Path(spec)
    if not path.is_file():
        raise PPModelsError(f"gmm: --data {spec!r} is neither 'tutorial' nor a CSV file")
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PPModelsError(f"gmm: {path} is not a readable CSV file ({type(e).__name__})") from None
    numeric = frame.select_dtypes("number")
    text = [c for c in frame.columns if c not in numeric.columns]
    if text:
        raise PPModelsError(f"gmm: column {text[0]!r} of {path} is not numeric; drop it from the file")
    if numeric.shape[1] == 0 or len(numeric) == 0:
        raise PPModelsError(f"gmm: {path} has no numeric columns (or no rows)")
    x = torch.tensor(numeric.to_numpy(dtype="float64"), dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise PPModelsError(f"gmm: {path} has {int((~torch.isfinite(x)).sum())} NaN/inf values")
    return x


class GaussianMixtureFamily(Family):
    name = "gmm"
    help = "a Gaussian mixture on --data (MAP restarts or a Bayesian guide)"
    description = ("Fit a Gaussian mixture to the points of --data (a CSV file, or Pyro's tutorial points) by MAP "
                   "restarts, or train a mean-field guide by SVI (--guide bayes); writes report.json, "
                   "responsibilities.csv and checkpoint.pt to --out and prints the log-likelihood and weights.")
    default_lr = 0.05
    default_batch_size = None
    batch_size_help = "default: all points"
    rules = (
        *(Needs(option, "--guide", ("bayes",), why="an option of SVI; MAP restarts take --steps, --lr and --seed and ignore it")
          for option in SVI_ONLY),
        Needs("--restarts", "--guide", ("map",), why="restarts of the MAP fit; SVI has none"),
    )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("gmm options")
        g.add_argument("--guide", choices=["map", "bayes"], default="map",
                       help="map (default, MAP restarts) or bayes (a mean-field guide trained by SVI)")
        g.add_argument("--data", default="tutorial", help="a CSV file of numeric columns, or 'tutorial' (Pyro's five points)")
        g.add_argument("--components", type=positive(int), default=2, help="mixture components K")
        g.add_argument("--covariance", choices=["full", "tied", "diag", "spherical"], default="tied")
        g.add_argument("--restarts", type=positive(int), default=32, help="random restarts of the MAP fit")

    def resumable(self, args: argparse.Namespace) -> bool:
        return args.guide != "map"  # MAP restarts keep no training state: a retry starts again

    def train(self, args: argparse.Namespace) -> None:
        import pandas as pd
        import torch

        from ..models import GaussianMixture
        from ..rundir import open_run, save_checkpoint, write_csv, write_report
        from ..utils import PPModelsError, check_memory

        from ..distributed import world_size_from_env

        check_seed(args.seed)
        if world_size_from_env() > 1:
            raise PPModelsError("train gmm runs in one process (its data are a few points); launch it without torchrun")
        if not self.resumable(args) and args.resume:
            raise PPModelsError("train gmm: MAP restarts have no training state to resume; use --overwrite or another --out")
        x = read_points(args.data)
        config = {"num_components": args.components, "dim": x.shape[1], "covariance": args.covariance,
                  "guide": args.guide}
        check_model_size(self.model_key, config, args.max_parameters)
        lock = open_run(args.out, resume=args.resume, overwrite=args.overwrite)
        try:
            out = Path(args.out)
            torch.manual_seed(args.seed)  # the initial parameters too
            gmm = GaussianMixture(**config)
            t0 = time.perf_counter()
            check_memory(64.0 * args.restarts * len(x) * args.components * (x.shape[1] + 1) ** 2,
                         f"{args.restarts} MAP restarts", "use fewer --restarts")
            extra: dict[str, Any] = {}
            if args.guide == "map":
                values = gmm.fit_map(x, restarts=args.restarts, steps=args.steps or 600, lr=args.lr, seed=args.seed)
                with open_run(out, overwrite=True):
                    save_checkpoint(out, {"params": {f"module.{k}": v for k, v in gmm.state_dict().items()},
                                          "meta": {"family": self.model_key, "config": config}}, replacing=True)
                extra = {"map_objective": float(values.max()), "restarts": args.restarts}
            else:
                if args.epochs is None and args.steps is None:
                    args.steps = 2000
                args.batch_size = min(args.batch_size or len(x), len(x))
                fit_stage(gmm, x, None, args, out, self.model_key, config, args.objective or self.default_objective,
                          args.epochs)
            point = {k: v.cpu().tolist() for k, v in gmm.point_estimate().items()}
            ll = gmm.log_likelihood(x)
            report = {"log_likelihood": float(ll.sum()), "log_likelihood_per_point": float(ll.mean()),
                      "points": len(x), "seconds": time.perf_counter() - t0, **extra, **point}
            write_csv(out / "responsibilities.csv", pd.DataFrame(gmm.responsibilities(x).cpu().numpy(),
                                                                 columns=[f"component_{k}" for k in range(args.components)]))
            write_report(out, report)
            print(f"log-likelihood {report['log_likelihood']:.3f} ({len(x)} points); weights "
                  + ", ".join(f"{w:.3f}" for w in point["weights"]))
            print(f"wrote {out}/report.json, responsibilities.csv, checkpoint.pt")
        finally:
            lock.release()


FAMILY = GaussianMixtureFamily()
