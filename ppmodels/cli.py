"""The ``ppmodels`` command: ``train``, ``evaluate``, ``sample``, ``variance``, ``compare``, ``data``.

``train MODEL`` is assembled from :mod:`ppmodels.families`: each family (one module there)
declares its own options, its natural objective and how it trains and reports; this module adds
the options every family takes and dispatches to the family.

Every command has ``--help``; a bad argument or a missing run directory prints one line
``ppmodels: error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"ppmodels: error: {message} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args=None, namespace=None):
        # the innermost parser reports what nothing recognized, so that the line points to the
        # --help that lists the options, e.g. `ppmodels train vae --help`
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    from . import families
    from .families.base import common_options
    from .families.common import ints, positive

    p = _Parser(prog="ppmodels", description="Latent-variable models as Pyro programs: train, evaluate, sample.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a zoo model by SVI",
                       description="Train a zoo model by SVI (on MNIST, or on a CSV file for gmm); writes "
                       "history.csv, checkpoint.pt, report.json and image grids to --out and prints the test figures. "
                       "`ppmodels train MODEL --help` lists a family's options.")
    models = t.add_subparsers(dest="model", required=True, parser_class=_Parser, title="model families")
    for name, family in families.FAMILIES.items():
        f = models.add_parser(name, parents=[common_options(family)], help=family.help,
                              description=family.description or family.help)
        family.add_options(f)

    e = sub.add_parser("evaluate", help="test ELBO and importance-sampled NLL of a run",
                       description="Evaluate a trained run: test ELBO, importance-sampled NLL (K samples), active units.")
    e.add_argument("run_dir", help="a run directory, or one of its checkpoint files (a kept checkpoint-epochN.pt)")
    e.add_argument("--num-samples", type=positive(int), default=5000)
    e.add_argument("--subset", type=positive(int), default=None, help="first N test images (default: all)")
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("sample", help="draw images from a trained run's prior",
                       description="Decode prior draws of a trained run into an image grid.")
    s.add_argument("run_dir", help="a run directory, or one of its checkpoint files (a kept checkpoint-epochN.pt)")
    s.add_argument("-n", type=positive(int), default=64)
    s.add_argument("--out", default=None, help="PNG path (default RUN_DIR/samples.png; for a file, samples-FILE.png beside it)")
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
    v.add_argument("--num-particles", type=ints, default=(1, 5, 50), help="K values, e.g. 1,5,50")
    v.add_argument("--replicates", type=positive(int), default=500)
    v.add_argument("--batch-size", type=positive(int), default=16, help="datapoints in the studied batch")
    v.add_argument("--exact", default="auto", help="auto (closed form), none, or an objective name to estimate it")
    v.add_argument("--reference-replicates", type=positive(int), default=2000,
                   help="replicates of the --exact estimator (1 for a deterministic one such as enum)")
    v.add_argument("--out", required=True)
    v.add_argument("--device", default="auto")
    v.add_argument("--seed", type=int, default=0)

    c = sub.add_parser("compare", help="final metrics, settings and learning curves of several runs",
                       description="Put runs side by side: one table of their final metrics and settings (printed, "
                       "and written as CSV) and one figure of their learning curves.")
    c.add_argument("runs", nargs="+", help="run directories")
    c.add_argument("--out", default="compare.png", help="figure path (.png); the CSV is written beside it")

    w = sub.add_parser("sweep", help="many runs: comma-separated values expanded into their product",
                       description="Run a train or variance command for every combination of its comma-separated "
                       "option values, e.g. `ppmodels sweep train vae --objective elbo,iwae -K 1,5 --seed 0,1 --out "
                       "runs/grid`: one run directory per combination under --out, then summary.csv. Runs are Ray "
                       "tasks when Ray is installed (pip install 'ppmodels[ray]'), else --workers local processes. "
                       "The sweep options below may stand anywhere on the line.")
    w.add_argument("--workers", type=positive(int), default=None,
                   help="run on this many local processes (default: Ray if installed, else 1)")
    w.add_argument("--address", default=None, help="join this Ray cluster (default: start Ray locally)")
    w.add_argument("--max-concurrent", type=positive(int), default=None, help="Ray: runs in flight at most")
    w.add_argument("--retries", type=int, default=2, help="retries of a failed run (default 2)")
    w.add_argument("--threads", type=positive(int), default=1, help="torch threads per run (default 1)")
    w.add_argument("--gpus-per-run", type=float, default=0, help="Ray: GPUs per run (default 0)")
    w.add_argument("--out", default=None, help="the sweep's folder (one run directory per combination)")
    w.add_argument("sweep_command", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                   help="train MODEL ... or variance ...")

    d = sub.add_parser("data", help="fetch MNIST into the cache",
                       description="Fetch MNIST into $PPMODELS_DATA (default ~/.cache/ppmodels) and report the sources.")
    d.add_argument("--root", default=None)
    return p


def _load_run(run_dir: str, device: str):
    from .fit import load_run
    from .utils import resolve_device

    model, ckpt = load_run(run_dir, device)
    return model, ckpt, resolve_device(device)


def _train(args: argparse.Namespace) -> None:
    from . import families

    families.FAMILIES[args.model].train(args)


def _evaluate(args: argparse.Namespace) -> None:
    from . import data
    from .families.common import evaluation_report

    model, ckpt, dev = _load_run(args.run_dir, args.device)
    test = data.mnist(binarize=ckpt["meta"].get("args", {}).get("binarize", "dynamic"), device=dev)["test"]
    report = evaluation_report(model, test, args.num_samples, args.subset, args.seed)
    print(json.dumps(report, indent=2))


def _sample(args: argparse.Namespace) -> None:
    import torch

    from .families.common import save_grid
    from .rundir import CHECKPOINT, run_checkpoint
    from .utils import PPModelsError

    source = run_checkpoint(args.run_dir)  # before any work: a one-line error if there is none
    out = Path(args.out) if args.out else source.with_name(
        "samples.png" if source.name == CHECKPOINT else f"samples-{source.stem}.png")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise PPModelsError(f"sample: --out {out} must end in .png or .jpg")
    if not out.parent.is_dir():
        raise PPModelsError(f"sample: the folder of --out {out} does not exist; create it first")
    if args.n > 10_000:
        raise PPModelsError(f"sample: -n {args.n} images is more than a grid can show; ask for at most 10000")
    model, _, _ = _load_run(args.run_dir, args.device)
    torch.manual_seed(args.seed)
    save_grid(model.sample(args.n), out)
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


SWEEP_OPTIONS = {"--workers": int, "--address": str, "--max-concurrent": int, "--retries": int, "--threads": int,
                 "--gpus-per-run": float, "--out": str}


def _sweep(args: argparse.Namespace) -> None:
    import pandas as pd

    from .sweep import sweep
    from .utils import PPModelsError

    command, i = [], 0
    tokens = list(args.sweep_command)
    while i < len(tokens):  # the sweep's own options, wherever they stand
        key, _, inline = tokens[i].partition("=")
        if key in SWEEP_OPTIONS:
            value = inline or (tokens[i + 1] if i + 1 < len(tokens) else None)
            if value is None:
                raise PPModelsError(f"sweep: {key} needs a value")
            try:
                setattr(args, key[2:].replace("-", "_"), SWEEP_OPTIONS[key](value))
            except ValueError:
                raise PPModelsError(f"sweep: {key} {value!r} is not a {SWEEP_OPTIONS[key].__name__}") from None
            i += 1 if inline else 2
            continue
        command.append(tokens[i])
        i += 1
    if args.out is None:
        raise PPModelsError("sweep: give --out DIR, the folder that holds the runs")
    table = sweep(command, args.out, workers=args.workers, address=args.address, max_concurrent=args.max_concurrent,
                  gpus_per_run=args.gpus_per_run, threads=args.threads, retries=args.retries)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    failed = int((table["status"] == "failed").sum()) if "status" in table else 0
    print(f"{len(table)} rows on {table.attrs.get('engine')}; wrote {Path(args.out) / 'summary.csv'}")
    if failed:
        raise PPModelsError(f"sweep: {failed} run(s) failed; see the error column of {Path(args.out) / 'summary.csv'}")


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
                    "compare": _compare, "sweep": _sweep}
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
