"""The ``ppmodels`` command: ``train``, ``evaluate``, ``sample``, ``data``.

Every command has ``--help``; a bad argument or a missing run directory prints one line
``ppmodels: error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"ppmodels: error: {message} (see `{self.prog} --help`)\n")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0 or value == float("inf"):  # NaN and inf too
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _nonnegative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .models import PRESETS
    from .objectives import names

    FAMILIES = ("vae", "dvae", "ssvae", "cvae", "gmm")

    p = _Parser(prog="ppmodels", description="Latent-variable models as Pyro programs: train, evaluate, sample.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a zoo model by SVI",
                       description="Train a zoo model by SVI (on MNIST, or on a CSV file for gmm); writes "
                       "history.csv, checkpoint.pt, report.json and image grids to --out and prints the test figures.")
    t.add_argument("model", choices=sorted(FAMILIES),
                   help="vae; dvae (discrete latents); ssvae (semi-supervised M2); cvae (quadrant completion); "
                   "gmm (Gaussian mixture on --data)")
    family = {name: t.add_argument_group(f"{name} options") for name in ("vae", "dvae", "ssvae", "cvae", "gmm")}
    family["vae"].add_argument("--preset", choices=sorted(PRESETS), default="pyro", help="vae architecture preset (default: pyro)")
    t.add_argument("--guide", choices=["diagonal", "iaf", "map", "bayes"], default=None,
                   help="vae: diagonal (default) or iaf (flows on top of the diagonal Gaussian); "
                        "gmm: map (default, MAP restarts) or bayes (a mean-field guide)")
    family["vae"].add_argument("--flow-layers", type=_positive(int), default=2, help="vae: IAF layers for --guide iaf")
    family["dvae"].add_argument("--latent", choices=["categorical", "mixture"], default="categorical",
                   help="dvae: G x C categoricals, or a categorical mixture over a Gaussian z")
    family["dvae"].add_argument("--groups", type=_positive(int), help="dvae: categorical groups G (default 20)")
    family["dvae"].add_argument("--classes", type=_positive(int), help="dvae: classes C per group (default 10)")
    family["ssvae"].add_argument("--labels", type=_positive(int), default=3000, help="ssvae: training labels kept (default 3000)")
    family["ssvae"].add_argument("--label-repeats", type=_positive(int), default=1,
                   help="ssvae: present each labelled image this many times per epoch (default 1)")
    family["ssvae"].add_argument("--aux-loss", type=_nonnegative, default=None, help="ssvae: weight α of the classifier's loss (default 46)")
    family["cvae"].add_argument("--quadrants", type=int, choices=[1, 2, 3], default=1, help="cvae: quadrants given (default 1)")
    family["cvae"].add_argument("--baseline-epochs", type=_positive(int), default=None,
                   help="cvae: epochs of the baseline network (default: --epochs)")
    family["cvae"].add_argument("--no-baseline-input", action="store_true",
                   help="cvae: do not feed the baseline's prediction to the prior and generation networks")
    family["gmm"].add_argument("--data", default="tutorial", help="gmm: a CSV file of numeric columns, or 'tutorial' (Pyro's five points)")
    family["gmm"].add_argument("--components", type=_positive(int), default=2, help="gmm: mixture components K")
    family["gmm"].add_argument("--covariance", choices=["full", "tied", "diag", "spherical"], default="tied", help="gmm")
    family["gmm"].add_argument("--restarts", type=_positive(int), default=32, help="gmm: random restarts of the MAP fit")
    t.add_argument("--z-dim", type=_positive(int), help="latent size (overrides the preset)")
    t.add_argument("--hidden", type=_ints, help="hidden sizes, e.g. 200,200 (overrides the preset)")
    t.add_argument("--activation", help="activation (overrides the preset)")
    t.add_argument("--objective", choices=names(), default=None,
                   help="default: enum for ssvae and gmm, reinforce for dvae, elbo otherwise")
    t.add_argument("--num-particles", "-K", type=_positive(int), default=None, help="particles K of the objective")
    t.add_argument("--alpha", type=float, default=None, help="α of the renyi objective")
    t.add_argument("--baseline", choices=["none", "decaying", "neural"], default=None, help="reinforce baseline")
    t.add_argument("--kl-weight", type=_nonnegative, default=None,
                   help="β: weight of the KL term (elbo, meanfield, stl, reinforce; default 1)")
    t.add_argument("--kl-warmup", type=_positive(int), default=None,
                   help="raise β linearly from 0 to --kl-weight (default 1) over this many steps")
    t.add_argument("--kl-cycles", type=_positive(int), default=1, help="cyclical annealing: cycles over --kl-warmup")
    t.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                   help="write TensorBoard event files (default DIR: RUN_DIR/tensorboard); needs ppmodels[tensorboard]")
    t.add_argument("--epochs", type=_positive(int), default=None)
    t.add_argument("--steps", type=_positive(int), default=None)
    t.add_argument("--batch-size", type=_positive(int), default=None, help="default 128 (gmm: all points)")
    t.add_argument("--lr", type=_positive(float), default=None, help="learning rate (default 1e-3; 0.05 for gmm)")
    t.add_argument("--lr-schedule", choices=["constant", "cosine", "burda"], default="constant")
    t.add_argument("--binarize", choices=["dynamic", "fixed"], default="dynamic")
    t.add_argument("--validation", type=int, default=0, help="hold out this many training images")
    t.add_argument("--train-subset", type=_positive(int), default=None, help="train on the first N images only")
    t.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--eval-subset", type=_positive(int), default=1000,
                   help="test images for the importance-sampled NLL (default 1000)")
    t.add_argument("--num-samples", type=_positive(int), default=1000, help="importance samples for the NLL")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--no-jit", action="store_true",
                   help="never trace the loss (default: traced where the model's structure is static and the "
                        "traced gradients are checked equal to the plain ones)")

    e = sub.add_parser("evaluate", help="test ELBO and importance-sampled NLL of a run",
                       description="Evaluate a trained run: test ELBO, importance-sampled NLL (K samples), active units.")
    e.add_argument("run_dir")
    e.add_argument("--num-samples", type=_positive(int), default=5000)
    e.add_argument("--subset", type=_positive(int), default=None, help="first N test images (default: all)")
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("sample", help="draw images from a trained run's prior",
                       description="Decode prior draws of a trained run into an image grid.")
    s.add_argument("run_dir")
    s.add_argument("-n", type=_positive(int), default=64)
    s.add_argument("--out", default=None, help="PNG path (default RUN_DIR/samples.png)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")

    v = sub.add_parser("variance", help="bias, variance and SNR of objectives' gradient estimators",
                       description="Study gradient estimators: R replicate gradients per objective and K, summarised "
                       "per parameter group (model/guide) against the exact gradient where one is known. Writes "
                       "study.csv and study.png to --out and prints the table.")
    v.add_argument("--model", required=True,
                   help="vae, dvae, linear-gaussian, categorical-gaussian, gaussian-toy, or a trained RUN_DIR")
    v.add_argument("--objectives", default="elbo,iwae,dreg",
                   help="comma-separated names; options after colons, e.g. renyi:alpha=0.5,reinforce:baseline=neural")
    v.add_argument("--num-particles", type=_ints, default=(1, 5, 50), help="K values, e.g. 1,5,50")
    v.add_argument("--replicates", type=_positive(int), default=500)
    v.add_argument("--batch-size", type=_positive(int), default=16, help="datapoints in the studied batch")
    v.add_argument("--exact", default="auto", help="auto (closed form), none, or an objective name to estimate it")
    v.add_argument("--reference-replicates", type=_positive(int), default=2000,
                   help="replicates of the --exact estimator (1 for a deterministic one such as enum)")
    v.add_argument("--out", required=True)
    v.add_argument("--device", default="auto")
    v.add_argument("--seed", type=int, default=0)

    c = sub.add_parser("compare", help="final metrics, settings and learning curves of several runs",
                       description="Put runs side by side: one table of their final metrics and settings (printed, "
                       "and written as CSV) and one figure of their learning curves.")
    c.add_argument("runs", nargs="+", help="run directories")
    c.add_argument("--out", default="compare.png", help="figure path (.png); the CSV is written beside it")

    d = sub.add_parser("data", help="fetch MNIST into the cache",
                       description="Fetch MNIST into $PPMODELS_DATA (default ~/.cache/ppmodels) and report the sources.")
    d.add_argument("--root", default=None)
    return p


def _save_grid(images, path: Path, nrow: int = 8) -> None:
    from torchvision.utils import save_image

    save_image(images.reshape(-1, 1, 28, 28).float().cpu(), path, nrow=nrow)


def _callbacks(args: argparse.Namespace, out: Path, diagnose=None) -> list:
    """The callbacks the train flags ask for: KL annealing, TensorBoard; and posterior-collapse
    diagnostics on ``diagnose`` (held-out data) when given."""
    from .callbacks import CollapseDiagnostics, KLAnnealing, TensorBoard

    callbacks: list = [CollapseDiagnostics(diagnose)] if diagnose is not None else []
    if args.kl_warmup:
        end = 1.0 if args.kl_weight is None else args.kl_weight
        callbacks.append(KLAnnealing(args.kl_warmup, start=0.0, end=end, cycles=args.kl_cycles))
    if args.tensorboard is not None:
        callbacks.append(TensorBoard(Path(args.tensorboard) if args.tensorboard else out / "tensorboard"))
    return callbacks


def _objective_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if getattr(args, "kl_weight", None) is not None and not getattr(args, "kl_warmup", None):
        opts["kl_weight"] = args.kl_weight
    if args.num_particles is not None:
        opts["num_particles"] = args.num_particles
    if args.alpha is not None:
        opts["alpha"] = args.alpha
    if args.baseline is not None:
        opts["baseline"] = args.baseline
    return opts


def _load_run(run_dir: str, device: str):
    from .fit import load_run
    from .utils import resolve_device

    model, ckpt = load_run(run_dir, device)
    return model, ckpt, resolve_device(device)


def _report(model, test, num_samples: int, subset: int | None, seed: int) -> dict[str, float]:
    """Test ELBO (all of ``test``), importance-sampled NLL (its first ``subset`` rows), active units."""
    import torch

    from . import evaluate

    from .utils import PPModelsError

    if num_samples > 1_000_000:
        raise PPModelsError(f"--num-samples {num_samples} importance samples would take days; use at most 1000000")
    g = torch.Generator(device=test.device).manual_seed(seed)
    sub = test.subset(subset) if subset else test
    t0 = time.perf_counter()
    nll = -evaluate.log_likelihood(model, sub, num_samples, generator=g).mean().item()
    return {
        "test_elbo": evaluate.elbo(model, test, generator=g).mean().item(),
        "test_nll": nll,
        "nll_images": len(sub),
        "nll_samples": num_samples,
        "nll_seconds": time.perf_counter() - t0,
        "active_units": sum(evaluate.active_units(model, test, generator=g).values()),  # continuous sites
    }


def _unlabelled(data):
    """``data`` without its label tensor (what the test figures of a model of x alone use)."""
    out = data.subset(slice(None))
    out.tensors = out.tensors[:1]
    return out


def _network_config(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    for key in ("z_dim", "hidden", "activation"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    return config


def _fit_stage(model, train, test, args: argparse.Namespace, out: Path, family: str, config: dict[str, Any],
               objective: str, epochs: int | None, diagnose=None):
    """One call of the SVI loop with the command's settings; returns (history, seconds)."""
    from .fit import fit

    t0 = time.perf_counter()
    history = fit(
        model, train, objective=objective, epochs=epochs, steps=args.steps if epochs is None else None,
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, seed=args.seed,
        device=args.device, test=test, out=out, resume=args.resume, overwrite=args.overwrite,
        progress=False if args.quiet else None,
        jit=False if args.no_jit else None, callbacks=_callbacks(args, out, diagnose),
        meta={"family": family, "config": config, "args": {k: str(v) for k, v in vars(args).items()}},
        **_objective_options(args),
    )
    return history, time.perf_counter() - t0


def _check_seed(seed: int) -> None:
    from .utils import PPModelsError

    if not 0 <= seed < 2**63:
        raise PPModelsError(f"--seed must be in [0, 2**63), got {seed}")


def _train(args: argparse.Namespace) -> None:
    from .utils import PPModelsError

    if args.lr is None:
        args.lr = 0.05 if args.model == "gmm" else 1e-3
    if args.model == "gmm":
        return _train_gmm(args)
    args.batch_size = args.batch_size or 128
    if args.epochs is None and args.steps is None:
        raise PPModelsError("train: give --epochs N or --steps N")
    if args.epochs is not None and args.steps is not None:
        raise PPModelsError("train: give --epochs N or --steps N, not both")
    import torch

    from . import data
    from .models import REGISTRY, build
    from .models.vae import PRESETS
    from .rundir import open_run
    from .utils import check_memory

    family = args.model
    objective = args.objective or REGISTRY[family].default_objective
    _check_seed(args.seed)
    lock = open_run(args.out, resume=args.resume, overwrite=args.overwrite)  # before any work; held to the end
    try:
        torch.manual_seed(args.seed)  # the initial weights too: one seed, one run
        splits = data.mnist(validation=args.validation, binarize=args.binarize, labels=family == "ssvae",
                            device=args.device)
        train, test = splits["train"], splits["test"]
        if args.train_subset:
            train = train.subset(args.train_subset)
        out = Path(args.out)
        report: dict[str, Any] = {}
        if family == "vae":
            config = _network_config(args, dict(PRESETS[args.preset]))
            if args.guide not in (None, "diagonal", "iaf"):
                raise PPModelsError(f"train vae: --guide {args.guide} is a gmm guide; use diagonal or iaf")
            if args.guide == "iaf":
                config.update(guide="iaf", flow_layers=args.flow_layers)
        elif family == "dvae":
            config = _network_config(args, {"latent": args.latent})
            config.update({k: getattr(args, k) for k in ("groups", "classes") if getattr(args, k) is not None})
        elif family == "ssvae":
            from .models.ssvae import semi_supervised

            config = _network_config(args, {} if args.aux_loss is None else {"aux_loss": args.aux_loss})
            train = semi_supervised(train, min(args.labels, len(train)), seed=args.seed,
                                    balanced=min(args.labels, len(train)) % 10 == 0, repeats=args.label_repeats)
        else:  # cvae: the baseline network first, then the CVAE that uses it
            from .models.cvae import QuadrantBaseline

            base_config = _network_config(args, {"quadrants": args.quadrants})
            base_config.pop("z_dim", None)
            baseline = QuadrantBaseline(**base_config)
            _, seconds = _fit_stage(baseline, train, test, args, out / "baseline", "cvae-baseline", base_config, "elbo",
                                    args.baseline_epochs or args.epochs)
            report["baseline_seconds"] = seconds
            config = _network_config(args, {"quadrants": args.quadrants})
            config["baseline"] = None if args.no_baseline_input else baseline.config
        K = args.num_particles or 1
        widths = 3 * 784 + 4 * sum(config.get("hidden", (400,)))
        check_memory(16.0 * K * min(args.batch_size, len(train)) * widths, f"one training step (K={K}, batch "
                     f"{min(args.batch_size, len(train))})", "use a smaller -K or --batch-size", args.device if args.device != "auto" else "cpu")
        model = build(family, **config)
        if family == "cvae" and not args.no_baseline_input:
            model.baseline.load_state_dict(baseline.state_dict())
        history, train_seconds = _fit_stage(model, train, test if family != "ssvae" else _unlabelled(test), args, out,
                                            family, config, objective, args.epochs,
                                            diagnose=test.subset(min(1000, len(test))) if family == "vae" else None)

        torch.manual_seed(args.seed)
        model.eval()
        x = test.subset(32).full(torch.Generator(device=test.device).manual_seed(0))[0]
        if family == "cvae":
            report.update(_cvae_report(model, baseline, test, args))
            x = x[:8]
            _save_grid(torch.cat([x[None], baseline.complete(x)[None], model.complete(x, 6)]).transpose(0, 1),
                       out / "completions.png", nrow=8)
        else:
            report.update(_report(model, _unlabelled(test), args.num_samples, args.eval_subset, args.seed))
            _save_grid(model.sample(100 if family == "ssvae" else 64), out / "samples.png",
                       nrow=10 if family == "ssvae" else 8)
            _save_grid(torch.cat([x.reshape(4, 8, -1), model.reconstruct(x).reshape(4, 8, -1)], 1),
                       out / "reconstructions.png")
        if family == "ssvae":
            report["test_accuracy"] = model.accuracy(test)
            report["labels"] = int((train.tensors[1] >= 0).sum()) // args.label_repeats
            _save_grid(model.analogies(x[:10]), out / "analogies.png", nrow=10)
        report["train_seconds"] = train_seconds
        report["epochs"] = int(history["epoch"].iloc[-1])
        (out / "report.json").write_text(json.dumps(report, indent=2))
        if family == "ssvae":
            print(f"test accuracy {report['test_accuracy']:.4f} ({report['labels']} labels)")
        if family == "cvae":
            for who in ("cvae", "baseline"):
                print(f"{who}: test -log p(y|x) {report[who + '_nll']:.2f} nats ({args.quadrants} quadrant(s) given, "
                      f"{report['nll_images']} images{', K=%d' % args.num_samples if who == 'cvae' else ', exact'})")
        else:
            print(f"test ELBO {report['test_elbo']:.2f} nats ({len(test)} images, K=1)")
            print(f"test NLL  {report['test_nll']:.2f} nats ({report['nll_images']} images, K={args.num_samples} "
                  f"importance samples, {report['nll_seconds']:.0f}s)")
            print(f"active units {report['active_units']}")
        print(f"trained {report['epochs']} epochs in {train_seconds:.0f}s; wrote {out}/history.csv, checkpoint.pt, "
              "report.json and images")
    finally:
        lock.release()

def _cvae_report(model, baseline, test, args: argparse.Namespace) -> dict[str, float]:
    """Conditional NLL :math:`-\\log p(y|x)` on binarized test targets: the CVAE by importance
    sampling (its guide as proposal, the prior network as prior; :func:`_report`), the baseline
    exactly, on one binarization of the first ``--eval-subset`` test images."""
    import torch

    from .data import as_data

    images = test.subset(args.eval_subset).full(torch.Generator(device=test.device).manual_seed(args.seed))[0]
    report = _report(model, as_data(images), args.num_samples, None, args.seed)
    return {"cvae_nll": report.pop("test_nll"), "cvae_elbo": report.pop("test_elbo"),
            "baseline_nll": -baseline.log_likelihood(images).mean().item(), "quadrants": args.quadrants, **report}


def _read_points(spec: str):
    import torch

    from .utils import PPModelsError

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


def _train_gmm(args: argparse.Namespace) -> None:
    """MAP restarts or a Bayesian guide trained by the SVI loop, on points from ``--data``."""
    import pandas as pd
    import torch

    from .models import GaussianMixture

    from .rundir import open_run, save_checkpoint
    from .utils import PPModelsError

    _check_seed(args.seed)
    args.guide = args.guide or "map"
    if args.guide not in ("map", "bayes"):
        raise PPModelsError(f"train gmm: --guide {args.guide} is a vae guide; use map or bayes")
    if args.guide == "map" and args.resume:
        raise PPModelsError("train gmm: MAP restarts have no training state to resume; use --overwrite or another --out")
    lock = open_run(args.out, resume=args.resume, overwrite=args.overwrite)
    try:
        x = _read_points(args.data)
        out = Path(args.out)
        config = {"num_components": args.components, "dim": x.shape[1], "covariance": args.covariance, "guide": args.guide}
        torch.manual_seed(args.seed)  # the initial parameters too
        gmm = GaussianMixture(**config)
        t0 = time.perf_counter()
        from .utils import check_memory

        check_memory(64.0 * args.restarts * len(x) * args.components * (x.shape[1] + 1) ** 2,
                     f"{args.restarts} MAP restarts", "use fewer --restarts")
        if args.guide == "map":
            values = gmm.fit_map(x, restarts=args.restarts, steps=args.steps or 600, lr=args.lr, seed=args.seed)
            with open_run(out, overwrite=True):
                save_checkpoint(out, {"params": {f"module.{k}": v for k, v in gmm.state_dict().items()},
                                      "meta": {"family": "gmm", "config": config}})
            extra = {"map_objective": float(values.max()), "restarts": args.restarts}
        else:
            if args.epochs is None and args.steps is None:
                args.steps = 2000
            args.batch_size = min(args.batch_size or len(x), len(x))
            _fit_stage(gmm, x, None, args, out, "gmm", config, args.objective or "enum", args.epochs)
            extra = {}
        point = {k: v.cpu().tolist() for k, v in gmm.point_estimate().items()}
        ll = gmm.log_likelihood(x)
        report = {"log_likelihood": float(ll.sum()), "log_likelihood_per_point": float(ll.mean()), "points": len(x),
                  "seconds": time.perf_counter() - t0, **extra, **point}
        pd.DataFrame(gmm.responsibilities(x).cpu().numpy(),
                     columns=[f"component_{k}" for k in range(args.components)]).to_csv(out / "responsibilities.csv",
                                                                                        index=False)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        print(f"log-likelihood {report['log_likelihood']:.3f} ({len(x)} points); weights "
              + ", ".join(f"{w:.3f}" for w in point["weights"]))
        print(f"wrote {out}/report.json, responsibilities.csv, checkpoint.pt")
    finally:
        lock.release()

def _evaluate(args: argparse.Namespace) -> None:
    from . import data

    model, ckpt, dev = _load_run(args.run_dir, args.device)
    test = data.mnist(binarize=ckpt["meta"]["args"].get("binarize", "dynamic"), device=dev)["test"]
    report = _report(model, test, args.num_samples, args.subset, args.seed)
    print(json.dumps(report, indent=2))


def _sample(args: argparse.Namespace) -> None:
    import torch

    from .rundir import CHECKPOINT
    from .utils import PPModelsError

    if not (Path(args.run_dir) / CHECKPOINT).exists():
        raise PPModelsError(f"{args.run_dir}: not a run directory (no {CHECKPOINT}); train one with `ppmodels train`")
    out = Path(args.out) if args.out else Path(args.run_dir) / "samples.png"
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise PPModelsError(f"sample: --out {out} must end in .png or .jpg")
    if not out.parent.is_dir():
        raise PPModelsError(f"sample: the folder of --out {out} does not exist; create it first")
    if args.n > 10_000:
        raise PPModelsError(f"sample: -n {args.n} images is more than a grid can show; ask for at most 10000")
    model, _, _ = _load_run(args.run_dir, args.device)
    torch.manual_seed(args.seed)
    _save_grid(model.sample(args.n), out)
    print(f"wrote {out}")


def _parse_objective(spec: str):
    from .objectives import make
    from .utils import PPModelsError

    name, *opts = spec.strip().split(":")
    options: dict[str, Any] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep:
            raise PPModelsError(f"objective option {opt!r} in {spec!r}: expected key=value")
        for cast in (int, float):
            try:
                options[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            options[key] = {"true": True, "false": False}.get(value.lower(), value)
    return make(name, **options)


def _study_target(args: argparse.Namespace):
    """``(model object, batch, params or None)`` for ``--model``."""
    import torch

    from . import data
    from .models import CategoricalGaussian, DiscreteVAE, LinearGaussian, VAE
    from .models.conjugate import gaussian_toy
    from .utils import PPModelsError, resolve_device

    name, B = args.model, args.batch_size
    dev = resolve_device(args.device)
    torch.manual_seed(args.seed)
    if name == "linear-gaussian":
        m = LinearGaussian(5, 2, seed=args.seed)
        return m, (m.sample_data(B, seed=args.seed + 1),), None
    if name == "categorical-gaussian":
        m = CategoricalGaussian(3, 2, seed=args.seed)
        return m, (torch.randn(B, 2, generator=torch.Generator().manual_seed(args.seed)) * 2,), None
    if name == "gaussian-toy":
        m, x = gaussian_toy(seed=args.seed)
        return m, (x[:B],), {"model": [m.b], "guide": [m.A, m.c]}
    if name in ("vae", "dvae"):
        m = VAE.preset("burda") if name == "vae" else DiscreteVAE("categorical")
        test = data.mnist(binarize="fixed", device=dev)["test"]
        return m.to(dev), (test.subset(B).full()[0],), None
    if Path(name).is_dir():
        m, ckpt, dev = _load_run(name, args.device)
        test = data.mnist(binarize="fixed", device=dev)["test"]
        return m, (test.subset(B).full()[0],), None
    raise PPModelsError(f"--model {name!r}: expected vae, dvae, linear-gaussian, categorical-gaussian, "
                        "gaussian-toy or a run directory")


def _variance(args: argparse.Namespace) -> None:
    import pandas as pd

    from .utils import PPModelsError

    from .analysis import gradient_study, plot_study

    objectives = [_parse_objective(s) for s in args.objectives.split(",") if s.strip()]
    if not objectives:
        raise PPModelsError(f"variance: --objectives {args.objectives!r} names no objective; e.g. elbo,iwae")
    m, batch, params = _study_target(args)
    exact = None if args.exact == "none" else (args.exact if args.exact == "auto" else _parse_objective(args.exact))
    df = gradient_study(m.model, m.guide, *batch, objectives=objectives, num_particles=args.num_particles,
                        replicates=args.replicates, params=params, exact=exact, device=args.device, seed=args.seed,
                        reference_replicates=args.reference_replicates)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "study.csv", index=False)
    plot_study(df, out / "study.png", title=f"{args.model}: R={args.replicates}, batch {args.batch_size}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.drop(columns=["reference"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for line in df.attrs.get("skipped", []):
        print(f"skipped: {line}")
    print(f"reference: {df['reference'].iloc[0] if len(df) else 'none'}; wrote {out}/study.csv, study.png")


def _compare(args: argparse.Namespace) -> None:
    import pandas as pd

    from .compare import compare_runs, plot_runs
    from .utils import PPModelsError

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise PPModelsError(f"compare: --out {out} must end in .png")
    if not out.parent.is_dir():
        raise PPModelsError(f"compare: the folder of --out {out} does not exist; create it first")
    table = compare_runs(args.runs)
    table.to_csv(out.with_suffix(".csv"), index=False)
    plot_runs(args.runs, out)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {out.with_suffix('.csv')} and {out}")


def _data(args: argparse.Namespace) -> None:
    from . import data

    arrays = data.load_mnist(args.root)
    print(f"MNIST: {len(arrays['train_images'])} train, {len(arrays['test_images'])} test images "
          f"in {data.data_root(args.root)}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Every error about the user's input or the file system is one line
    ``ppmodels: error: ...`` and exit code 2 (the whole traceback with ``PPMODELS_DEBUG=1``);
    anything else is a bug and keeps its traceback."""
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    from .utils import PPModelsError, first_line

    try:
        commands = {"train": _train, "evaluate": _evaluate, "sample": _sample, "variance": _variance, "data": _data,
                    "compare": _compare}
        commands[args.command](args)
        sys.stdout.flush()
    except BrokenPipeError:  # `ppmodels evaluate RUN | head -1`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (PPModelsError, OSError, ValueError, MemoryError) as e:
        if os.environ.get("PPMODELS_DEBUG"):
            raise
        what = first_line(e) if isinstance(e, PPModelsError) else first_line(e, with_type=True)
        if isinstance(e, OSError) and getattr(e, "filename", None) and str(e.filename) not in what:
            what += f" ({e.filename})"
        print(f"ppmodels: error: {what}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ppmodels: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
