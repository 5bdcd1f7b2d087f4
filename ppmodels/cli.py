"""The ``ppmodels`` command: ``train``, ``evaluate``, ``sample``, ``variance``, ``compare``, ``data``.

``train MODEL`` is assembled from :mod:`ppmodels.families`: each family (one module there)
declares its own options, its natural objective and how it trains and reports; the parser
(:mod:`ppmodels.parser`) adds the options every family takes, and this module dispatches to the
family.

Every command has ``--help``; a bad argument or a missing run directory prints one line
``ppmodels: error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from .parser import build_parser

__all__ = ["main", "build_parser"]


def _load_run(run_dir: str, device: str, trust: bool = False):
    from .fit import load_run
    from .utils import resolve_device

    model, ckpt = load_run(run_dir, device, trust=trust)
    return model, ckpt, resolve_device(device)


def _train(args: argparse.Namespace) -> None:
    from . import families

    families.FAMILIES[args.model].train(args)


def _evaluate(args: argparse.Namespace) -> None:
    from . import data
    from .families.common import evaluation_report

    if args.diagnostics:
        return _evaluate_diagnostics(args)
    model, ckpt, dev = _load_run(args.run_dir, args.device, args.trust_checkpoint)
    test = data.mnist(binarize=ckpt["meta"].get("args", {}).get("binarize", "dynamic"), device=dev)["test"]
    report = evaluation_report(model, test, args.num_samples, args.subset, args.seed)
    print(json.dumps(report, indent=2))


#: the key of report.json that ``evaluate --diagnostics`` writes: one entry per checkpoint file
DIAGNOSTICS_KEY = "importance_diagnostics"


def _evaluate_diagnostics(args: argparse.Namespace) -> None:
    """``evaluate --diagnostics``: the report, with the NLL from the diagnostics' draws, and
    their summary, printed; the summary under report.json's own key (per checkpoint file) and
    the k-hat histogram beside it (khat.png, or khat-FILE.png for a kept checkpoint). A figure
    of that name is only replaced if that key records it."""
    import time

    import pyro
    import torch

    from . import data, evaluate, psis
    from .families.common import evaluation_report
    from .rundir import CHECKPOINT, RunLock, read_report, run_checkpoint, strict_json, write_report
    from .utils import PPModelsError

    source = run_checkpoint(args.run_dir)  # before any work: one-line errors
    run_dir = source.parent
    if args.num_samples < psis.MIN_DRAWS:
        raise PPModelsError(f"evaluate --diagnostics: --num-samples {args.num_samples} leaves too few draws for a "
                            f"Pareto fit; use at least {psis.MIN_DRAWS} (1000 or more for a k-hat worth reading)")
    figure = run_dir / ("khat.png" if source.name == CHECKPOINT else f"khat-{source.stem}.png")
    with RunLock(run_dir):  # no training rewrites report.json meanwhile
        entries = read_report(run_dir).get(DIAGNOSTICS_KEY, {})
        if not isinstance(entries, dict):
            raise PPModelsError(f"{run_dir / 'report.json'}: its {DIAGNOSTICS_KEY!r} is not an object, so it was not "
                                "written by evaluate --diagnostics; rename that key and run again")
        if figure.exists() and figure.name not in {e.get("figure") for e in entries.values() if isinstance(e, dict)}:
            raise PPModelsError(f"{figure} exists and was not written by evaluate --diagnostics; move it away and run "
                                "again")
        model, ckpt, dev = _load_run(str(source), args.device, args.trust_checkpoint)
        test = data.mnist(binarize=ckpt["meta"].get("args", {}).get("binarize", "dynamic"), device=dev)["test"]
        sub = test.subset(args.subset) if args.subset else test
        pyro.set_rng_seed(args.seed)
        t0 = time.perf_counter()
        # the data's generator seeded as the report's is (dynamic binarization draws from it)
        table = evaluate.importance_diagnostics(model, sub, args.num_samples,
                                                generator=torch.Generator(device=dev).manual_seed(args.seed))
        seconds = time.perf_counter() - t0
        report = {**evaluation_report(model, test, args.num_samples, args.subset, args.seed, table=table),
                  "nll_seconds": seconds}
        summary = {**evaluate.importance_summary(table), "seed": args.seed, "figure": figure.name}
        report[DIAGNOSTICS_KEY] = summary
        stored = read_report(run_dir)
        stored[DIAGNOSTICS_KEY] = {**stored.get(DIAGNOSTICS_KEY, {}), source.name: summary}
        write_report(run_dir, stored)  # first: a figure is only drawn once the report records it
        psis.plot_khat(table["khat"].to_numpy(), args.num_samples, figure,
                       title=f"{run_dir.name}/{source.name}: {summary['frac_above_threshold']:.1%} of "
                             f"{summary['num_data']} images above k-hat {summary['khat_threshold']:.2f}")
    print(json.dumps(strict_json(report), indent=2))
    print(f"wrote {run_dir / 'report.json'} ({DIAGNOSTICS_KEY}, {source.name}) and {figure}", file=sys.stderr)


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
    model, _, _ = _load_run(args.run_dir, args.device, args.trust_checkpoint)
    torch.manual_seed(args.seed)
    save_grid(model.sample(args.n), out, owner="run" if args.out is None else "sample")  # the default: the run's figure
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
    """``(model object, batch, params or None, saved)`` for ``--model``; ``saved``: a run
    directory's checkpoint parameters (empty for the built-in models)."""
    import torch

    from . import data
    from .models import BernoulliBelief, CategoricalGaussian, DiscreteVAE, LinearGaussian, VAE
    from .models.conjugate import gaussian_toy
    from .utils import PPModelsError, resolve_device

    name, B = args.model, args.batch_size
    dev = resolve_device(args.device)
    torch.manual_seed(args.seed)
    if name == "linear-gaussian":
        m = LinearGaussian(5, 2, seed=args.seed)
        return m, (m.sample_data(B, seed=args.seed + 1),), None, {}
    if name == "categorical-gaussian":
        m = CategoricalGaussian(3, 2, seed=args.seed)
        return m, (torch.randn(B, 2, generator=torch.Generator().manual_seed(args.seed)) * 2,), None, {}
    if name == "bernoulli-belief":
        m = BernoulliBelief(8, 4, seed=args.seed)
        return m, (m.sample_data(B, seed=args.seed + 1),), None, {}
    if name == "gaussian-toy":
        m, x = gaussian_toy(seed=args.seed)
        return m, (x[:B],), {"model": [m.b], "guide": [m.A, m.c]}, {}
    if name in ("vae", "dvae"):
        m = VAE.preset("burda") if name == "vae" else DiscreteVAE("categorical")
        test = data.mnist(binarize="fixed", device=dev)["test"]
        return m.to(dev), (test.subset(B).full()[0],), None, {}
    if Path(name).is_dir():
        m, ckpt, dev = _load_run(name, args.device)
        test = data.mnist(binarize="fixed", device=dev)["test"]
        return m, (test.subset(B).full()[0],), None, ckpt["params"]
    raise PPModelsError(f"--model {name!r}: expected vae, dvae, linear-gaussian, categorical-gaussian, "
                        "bernoulli-belief, gaussian-toy or a run directory")


def _restore_learned_state(saved: dict, objectives: list) -> None:
    """Give each objective what it learned in the run (its ``state_names`` among the checkpoint's
    ``param.*``: RELAX's surrogate, a baseline's average) by its ``load_state_dict``, in a fresh
    param store, so that the lab measures the estimator as trained, not as it starts."""
    import pyro

    pyro.clear_param_store()
    for objective in (o for o in objectives if callable(getattr(o, "load_state_dict", None))):
        objective.load_state_dict({n: saved[f"param.{n}"] for n in getattr(objective, "state_names", ())
                                   if f"param.{n}" in saved})


def _variance(args: argparse.Namespace) -> None:
    import pandas as pd

    from .utils import PPModelsError

    from .analysis import gradient_study, plot_study
    from .rundir import check_folder, check_writable, write_csv, write_figure

    objectives = [_parse_objective(s) for s in args.objectives.split(",") if s.strip()]
    if not objectives:
        raise PPModelsError(f"variance: --objectives {args.objectives!r} names no objective; e.g. elbo,iwae")
    out = Path(args.out)
    check_folder(out, "variance: --out")
    check_writable(out / "study.csv", out / "study.png", owner="variance")  # refused before the study, not after
    m, batch, params, saved = _study_target(args)
    if saved:
        _restore_learned_state(saved, objectives)
    exact = None if args.exact == "none" else (args.exact if args.exact == "auto" else _parse_objective(args.exact))
    df = gradient_study(m.model, m.guide, *batch, objectives=objectives, num_particles=args.num_particles,
                        replicates=args.replicates, params=params, exact=exact, device=args.device, seed=args.seed,
                        reference_replicates=args.reference_replicates)
    if df.empty:  # every (objective, K) was refused: say why, in one line, before writing anything
        raise PPModelsError(f"variance: no objective ran; {'; '.join(df.attrs.get('skipped', [])) or 'nothing to study'}")
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "study.csv", df, owner="variance")
    write_figure(out / "study.png", plot_study(df, title=f"{args.model}: R={args.replicates}, batch {args.batch_size}"),
                 owner="variance", dpi=110)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.drop(columns=["reference"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for line in df.attrs.get("skipped", []):
        print(f"skipped: {line}")
    print(f"reference: {df['reference'].iloc[0] if len(df) else 'none'}; wrote {out}/study.csv, study.png")


def _compare(args: argparse.Namespace) -> None:
    import pandas as pd

    from .compare import write_comparison

    out = Path(args.out)
    table = write_comparison(args.runs, out)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {out.with_suffix('.csv')} and {out}")


def _data(args: argparse.Namespace) -> None:
    from . import data

    arrays = data.load_mnist(args.root)
    print(f"MNIST: {len(arrays['train_images'])} train, {len(arrays['test_images'])} test images "
          f"in {data.data_root(args.root)}")


SWEEP_OPTIONS = {"--workers": int, "--address": str, "--max-concurrent": int, "--retries": int, "--threads": int,
                 "--gpus-per-run": float, "--out": str, "--max-runs": int}


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
                  gpus_per_run=args.gpus_per_run, threads=args.threads, retries=args.retries, max_runs=args.max_runs)
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
    with warnings.catch_warnings():
        if not os.environ.get("PPMODELS_DEBUG"):
            warnings.showwarning = _warning_line
        return _run(args)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr, ``ppmodels: warning: ...`` (the source line only with
    ``PPMODELS_DEBUG=1``)."""
    print(f"ppmodels: warning: {str(message).splitlines()[0] if str(message) else category.__name__}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    import os

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
