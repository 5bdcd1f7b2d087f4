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
        return tuple(int(t) for t in text.split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from .models import PRESETS
    from .objectives import names

    p = _Parser(prog="ppmodels", description="Latent-variable models as Pyro programs: train, evaluate, sample.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a zoo model by SVI on MNIST",
                       description="Train a zoo model by SVI on MNIST; writes history.csv, checkpoint.pt, "
                       "samples.png and reconstructions.png to --out and prints the test ELBO and NLL.")
    t.add_argument("model", choices=["vae", "dvae"], help="the zoo model: vae, or dvae (discrete latents)")
    t.add_argument("--preset", choices=sorted(PRESETS), default="pyro", help="vae architecture preset (default: pyro)")
    t.add_argument("--latent", choices=["categorical", "mixture"], default="categorical",
                   help="dvae: G x C categoricals, or a categorical mixture over a Gaussian z")
    t.add_argument("--groups", type=_positive(int), help="dvae: categorical groups G (default 20)")
    t.add_argument("--classes", type=_positive(int), help="dvae: classes C per group (default 10)")
    t.add_argument("--z-dim", type=_positive(int), help="latent size (overrides the preset)")
    t.add_argument("--hidden", type=_ints, help="hidden sizes, e.g. 200,200 (overrides the preset)")
    t.add_argument("--activation", help="activation (overrides the preset)")
    t.add_argument("--objective", choices=names(), default="elbo")
    t.add_argument("--num-particles", "-K", type=_positive(int), default=None, help="particles K of the objective")
    t.add_argument("--alpha", type=float, default=None, help="α of the renyi objective")
    t.add_argument("--baseline", choices=["none", "decaying", "neural"], default=None, help="reinforce baseline")
    t.add_argument("--epochs", type=_positive(int), default=None)
    t.add_argument("--steps", type=_positive(int), default=None)
    t.add_argument("--batch-size", type=_positive(int), default=128)
    t.add_argument("--lr", type=_positive(float), default=1e-3)
    t.add_argument("--lr-schedule", choices=["constant", "cosine", "burda"], default="constant")
    t.add_argument("--binarize", choices=["dynamic", "fixed"], default="dynamic")
    t.add_argument("--validation", type=int, default=0, help="hold out this many training images")
    t.add_argument("--train-subset", type=_positive(int), default=None, help="train on the first N images only")
    t.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    t.add_argument("--eval-subset", type=_positive(int), default=1000,
                   help="test images for the importance-sampled NLL (default 1000)")
    t.add_argument("--num-samples", type=_positive(int), default=1000, help="importance samples for the NLL")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

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

    d = sub.add_parser("data", help="fetch MNIST into the cache",
                       description="Fetch MNIST into $PPMODELS_DATA (default ~/.cache/ppmodels) and report the sources.")
    d.add_argument("--root", default=None)
    return p


def _save_grid(images, path: Path, nrow: int = 8) -> None:
    from torchvision.utils import save_image

    save_image(images.reshape(-1, 1, 28, 28).float().cpu(), path, nrow=nrow)


def _objective_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
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
    import torch

    from . import evaluate

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


def _train(args: argparse.Namespace) -> None:
    from . import data
    from .fit import fit
    from .models import build
    from .models.vae import PRESETS
    from .utils import PPModelsError

    if args.epochs is None and args.steps is None:
        raise PPModelsError("train: give --epochs N or --steps N")
    config = dict(PRESETS[args.preset]) if args.model == "vae" else {"latent": args.latent}
    for key in ("z_dim", "hidden", "activation") + (("groups", "classes") if args.model == "dvae" else ()):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    model = build(args.model, **config)
    splits = data.mnist(validation=args.validation, binarize=args.binarize, device=args.device)
    train = splits["train"].subset(args.train_subset) if args.train_subset else splits["train"]
    out = Path(args.out)
    t0 = time.perf_counter()
    history = fit(
        model, train, objective=args.objective, epochs=args.epochs, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, seed=args.seed,
        device=args.device, validation=splits.get("validation"), test=splits["test"], out=out,
        resume=args.resume, progress=False if args.quiet else None,
        meta={"family": args.model, "config": config, "args": {k: str(v) for k, v in vars(args).items()}},
        **_objective_options(args),
    )
    train_seconds = time.perf_counter() - t0
    import torch

    torch.manual_seed(args.seed)
    model.eval()
    _save_grid(model.sample(64), out / "samples.png")
    x = splits["test"].subset(32).full(torch.Generator(device=splits["test"].device).manual_seed(0))[0]
    _save_grid(torch.cat([x.reshape(4, 8, -1), model.reconstruct(x).reshape(4, 8, -1)], 1), out / "reconstructions.png")
    report = _report(model, splits["test"], args.num_samples, args.eval_subset, args.seed)
    report["train_seconds"] = train_seconds
    report["epochs"] = int(history["epoch"].iloc[-1])
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"test ELBO {report['test_elbo']:.2f} nats (10000 images, K=1)")
    print(f"test NLL  {report['test_nll']:.2f} nats ({report['nll_images']} images, K={args.num_samples} "
          f"importance samples, {report['nll_seconds']:.0f}s)")
    print(f"active units {report['active_units']}; trained {report['epochs']} epochs in {train_seconds:.0f}s")
    print(f"wrote {out}/history.csv, checkpoint.pt, samples.png, reconstructions.png, report.json")


def _evaluate(args: argparse.Namespace) -> None:
    from . import data

    model, ckpt, dev = _load_run(args.run_dir, args.device)
    test = data.mnist(binarize=ckpt["meta"]["args"].get("binarize", "dynamic"), device=dev)["test"]
    report = _report(model, test, args.num_samples, args.subset, args.seed)
    print(json.dumps(report, indent=2))


def _sample(args: argparse.Namespace) -> None:
    import torch

    model, _, _ = _load_run(args.run_dir, args.device)
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out else Path(args.run_dir) / "samples.png"
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

    from .analysis import gradient_study, plot_study

    objectives = [_parse_objective(s) for s in args.objectives.split(",") if s.strip()]
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


def _data(args: argparse.Namespace) -> None:
    from . import data

    arrays = data.load_mnist(args.root)
    print(f"MNIST: {len(arrays['train_images'])} train, {len(arrays['test_images'])} test images "
          f"in {data.data_root(args.root)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .utils import PPModelsError

    try:
        commands = {"train": _train, "evaluate": _evaluate, "sample": _sample, "variance": _variance, "data": _data}
        commands[args.command](args)
    except PPModelsError as e:
        print(f"ppmodels: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ppmodels: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
