"""What a model family is to the ``ppmodels train`` command.

:class:`Family` is the small contract: a name, its own options (:meth:`Family.add_options`) and
:meth:`Family.train`. :class:`ImageFamily` is the pipeline that the MNIST families share (data
splits, seed, run-directory lock, memory check, the SVI loop, test figures, image grids,
``report.json`` and the printed lines), with hooks a family overrides. :func:`common_options`
is the parent parser of the options every family takes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..argtypes import TRUST_HELP, Excludes, Needs
from ..settings import add_flags
from .common import (check_model_size, evaluation_report, fit_stage, ints, network_config, nonnegative, positive,
                     save_grid, unlabelled, check_seed)

__all__ = ["Family", "ImageFamily", "TrainingRun", "common_options", "COMMON_RULES", "add_network_options"]


class Family:
    """A model family of ``ppmodels train NAME``: its options, its natural objective, its training
    and report. A module of :mod:`ppmodels.families` makes one available by defining a
    module-level ``FAMILY = SomeFamily()``.

    A family changes the command-line default of a training setting NAME of
    :class:`ppmodels.settings.TrainSettings` (e.g. ``lr``) with an attribute ``default_NAME``,
    and its help with ``NAME_help`` (see :func:`ppmodels.settings.add_flags`)."""

    #: the sub-command, ``ppmodels train NAME``
    name: str = ""
    #: the :data:`ppmodels.models.REGISTRY` key of the family's model (default: :attr:`name`);
    #: written into checkpoints so that ``evaluate`` and ``sample`` can rebuild it
    model: str = ""
    #: one line in ``ppmodels train --help``
    help: str = ""
    #: the top of ``ppmodels train NAME --help``
    description: str = ""
    #: which of the family's options need or exclude which (:class:`ppmodels.argtypes.Needs`,
    #: :class:`~ppmodels.argtypes.Excludes`), beside :data:`COMMON_RULES`; the parser refuses
    #: what breaks one (exit 2), so that no option is silently ignored or overridden
    rules: tuple = ()

    @property
    def model_key(self) -> str:
        return self.model or self.name

    @property
    def model_class(self) -> type:
        """The family's model class, from :data:`ppmodels.models.REGISTRY`."""
        from ..models import REGISTRY

        return REGISTRY[self.model_key]

    @property
    def default_objective(self) -> str:
        """The objective when --objective is not given: the model class's ``default_objective``."""
        return getattr(self.model_class, "default_objective", "elbo")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """Add the family's own options to ``parser`` (its ``ppmodels train NAME`` parser, which
        already holds :func:`common_options`)."""

    def resumable(self, args: argparse.Namespace) -> bool:
        """Whether ``ppmodels train NAME ARGS --resume`` continues a run of these ``args`` that
        was stopped after its first checkpoint (a sweep's retry asks; else it starts again)."""
        return True

    def train(self, args: argparse.Namespace) -> None:
        """Run ``ppmodels train NAME`` with the parsed ``args``: train, write the run directory,
        print the figures. Errors about the user's input raise :class:`ppmodels.utils.PPModelsError`."""
        raise NotImplementedError(f"family {self.name!r} does not define train()")


#: which of :func:`common_options` need or exclude which (see :attr:`Family.rules`)
COMMON_RULES = (
    Excludes("--epochs", ("--steps",), why="give the run's length once, not both"),
    Needs("--kl-cycles", "--kl-warmup", why="cycles of the KL warm-up; alone it does nothing"),
    Needs("--trust-checkpoint", "--resume", why="it trusts the checkpoint a resume loads"),
)

#: the most parameters a ``ppmodels train`` model may have unless --max-parameters says more
MAX_PARAMETERS = 100_000_000


def common_options(family: Family) -> argparse.ArgumentParser:
    """The parent parser of the options every ``ppmodels train NAME`` takes, with ``family``'s
    defaults (objective; training settings, see :class:`Family`). The training settings' flags
    are those :mod:`ppmodels.settings` declares. The options about MNIST images (binarization,
    splits, the test NLL) only for an :class:`ImageFamily`."""
    from ..objectives import names

    t = argparse.ArgumentParser(add_help=False)
    t.add_argument("--objective", choices=names(), default=None,
                   help=f"default: {family.default_objective} (the model's natural objective)")
    t.add_argument("--num-particles", "-K", type=positive(int), default=None, help="particles K of the objective")
    t.add_argument("--alpha", type=float, default=None, help="α of the renyi objective")
    t.add_argument("--baseline", choices=["none", "decaying", "neural"], default=None, help="reinforce baseline")
    t.add_argument("--kl-weight", type=nonnegative, default=None,
                   help="β: weight of the KL term (elbo, meanfield, stl, reinforce; default 1)")
    t.add_argument("--free-bits", type=nonnegative, default=None,
                   help="λ: free bits per latent dimension (elbo, stl; Kingma et al. 2016)")
    t.add_argument("--kl-warmup", type=positive(int), default=None,
                   help="raise β linearly from 0 to --kl-weight (default 1) over this many steps")
    t.add_argument("--kl-cycles", type=positive(int), default=1, help="cyclical annealing: cycles over --kl-warmup")
    t.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                   help="write TensorBoard event files (default DIR: RUN_DIR/tensorboard); needs ppmodels[tensorboard]")
    add_flags(t, family)  # --epochs, --steps, --batch-size, --lr, ...
    if isinstance(family, ImageFamily):
        t.add_argument("--binarize", choices=["dynamic", "fixed"], default="dynamic")
        t.add_argument("--validation", type=int, default=0, help="hold out this many training images")
        t.add_argument("--train-subset", type=positive(int), default=None, help="train on the first N images only")
    t.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    t.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    if isinstance(family, ImageFamily):
        t.add_argument("--eval-subset", type=positive(int), default=1000,
                       help="test images for the importance-sampled NLL (default 1000)")
        t.add_argument("--num-samples", type=positive(int), default=1000, help="importance samples for the NLL")
    t.add_argument("--max-parameters", type=positive(int), default=MAX_PARAMETERS,
                   help=f"refuse a model of more parameters than this, counted before it is built (default "
                        f"{MAX_PARAMETERS:.0e}); raise it for a larger model")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--no-jit", action="store_true",
                   help="never take the fast path (default: the step captured, or compiled for long runs, where the "
                        "model's structure is static and the step is checked equal to the plain one)")
    return t


def add_network_options(parser: argparse.ArgumentParser | Any, help: str | None = None) -> None:
    """--z-dim, --hidden and --activation (``help=argparse.SUPPRESS`` hides them)."""
    parser.add_argument("--z-dim", type=positive(int), help=help or "latent size (overrides the preset)")
    parser.add_argument("--hidden", type=ints, help=help or "hidden sizes, e.g. 200,200 (overrides the preset)")
    parser.add_argument("--activation", help=help or "activation (overrides the preset)")


@dataclass
class TrainingRun:
    """The state of one ``ppmodels train`` command of an :class:`ImageFamily`, handed to its hooks."""

    args: argparse.Namespace
    out: Path
    train: Any  #: training data (TensorData); :meth:`ImageFamily.prepare` may replace it
    test: Any  #: the test split (TensorData)
    config: dict[str, Any]  #: the model's configuration, stored in the checkpoint
    report: dict[str, Any] = field(default_factory=dict)  #: what goes into report.json
    state: dict[str, Any] = field(default_factory=dict)  #: anything a family keeps between its hooks


class ImageFamily(Family):
    """A family of MNIST models with networks. :meth:`train` runs the shared pipeline:

    1. check --epochs/--steps and --seed; lock --out for the whole command (``rundir.open_run``);
    2. seed torch; load the MNIST splits (with labels when :attr:`labels`), --train-subset;
    3. :meth:`config` (the model's configuration from the options), :meth:`prepare` (e.g. a
       semi-supervised subset, or an earlier training stage);
    4. check the memory of one training step; :meth:`build` the model; train it by
       :func:`~ppmodels.families.common.fit_stage` with the natural objective (the model
       class's ``default_objective``) unless --objective; test data :meth:`fit_test`, collapse
       diagnostics on :meth:`diagnostics`;
    5. :meth:`report` (test figures and image grids, by default via :meth:`images`), plus
       ``train_seconds`` and ``epochs``, into report.json; print :meth:`summary` and one closing line.
    """

    #: load MNIST with its labels (a tensor of class indices beside the images)
    labels: bool = False
    #: prior draws in samples.png, and images per row
    sample_grid: tuple[int, int] = (64, 8)
    #: run directories of earlier training stages, inside --out (cvae: its baseline network's)
    stages: tuple[str, ...] = ()

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_network_options(parser)

    def config(self, args: argparse.Namespace) -> dict[str, Any]:
        """The model's configuration (keyword arguments of its class) from the options."""
        return network_config(args, {})

    def prepare(self, run: TrainingRun) -> None:
        """Before the model is built: change ``run.train``, ``run.config`` or ``run.report``."""

    def build(self, run: TrainingRun) -> Any:
        """The model to train (by default ``models.build(model_key, **run.config)``)."""
        from ..models import build

        return build(self.model_key, **run.config)

    def sized(self, args: argparse.Namespace, config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The models the command builds, as ``(REGISTRY key, config)``, whose parameters are
        counted before any is built or any data is read (default: the model of :meth:`config`)."""
        return [(self.model_key, config)]

    #: config keys that count identical layers (parameters linear in them); see
    #: :func:`~ppmodels.families.common.check_model_size`
    repeated: tuple[str, ...] = ()

    def fit_test(self, run: TrainingRun) -> Any:
        """The test data the SVI loop evaluates each epoch."""
        return run.test

    def diagnostics(self, run: TrainingRun) -> Any:
        """Held-out data for posterior-collapse diagnostics during training (None: none)."""
        return None

    def extra_callbacks(self, run: TrainingRun) -> list:
        """More callbacks for the SVI loop (e.g. the NLL along the way)."""
        return []

    def report(self, model: Any, run: TrainingRun, x: Any) -> dict[str, Any]:
        """The test figures (ELBO, importance-sampled NLL, active units) and the image grids;
        ``x``: the first 32 test images, binarized once."""
        args = run.args
        report = evaluation_report(model, unlabelled(run.test), args.num_samples, args.eval_subset, args.seed,
                                   run.state.get("group"))
        if run.state.get("main", True):
            self.images(model, run, x)
        return report

    def images(self, model: Any, run: TrainingRun, x: Any) -> None:
        """samples.png (prior draws) and reconstructions.png (``x`` above its reconstructions)."""
        import torch

        n, nrow = self.sample_grid
        save_grid(model.sample(n), run.out / "samples.png", nrow=nrow)
        save_grid(torch.cat([x.reshape(4, 8, -1), model.reconstruct(x).reshape(4, 8, -1)], 1),
                  run.out / "reconstructions.png")

    def summary(self, report: dict[str, Any], run: TrainingRun) -> list[str]:
        """The lines printed after training (before the closing one)."""
        return [f"test ELBO {report['test_elbo']:.2f} nats ({len(run.test)} images, K=1)",
                f"test NLL  {report['test_nll']:.2f} nats ({report['nll_images']} images, K={run.args.num_samples} "
                f"importance samples, {report['nll_seconds']:.0f}s)",
                f"active units {report['active_units']}"]

    def train(self, args: argparse.Namespace) -> None:
        import torch

        from .. import data
        from ..rundir import CHECKPOINT, open_run, write_report
        from ..utils import PPModelsError, check_memory

        if args.epochs is None and args.steps is None:
            raise PPModelsError("train: give --epochs N or --steps N")
        objective = args.objective or self.default_objective
        check_seed(args.seed)
        from .. import distributed
        from ..utils import resolve_device

        group, device = distributed.setup(resolve_device(args.device))  # under torchrun: this rank's device
        args.device = str(device)
        main = group is None or group.main  # rank 0 alone writes the run directory and prints
        config = self.config(args)
        for key, sized in self.sized(args, config):  # before any is built (e.g. a baseline in prepare) or data read
            check_model_size(key, sized, args.max_parameters, args.device, self.repeated)
        # --resume of a run killed after an earlier stage (see :attr:`stages`) and before its
        # own first checkpoint: the stages resume or start on their own
        staged = (args.resume and not args.overwrite and not (Path(args.out) / CHECKPOINT).exists()
                  and any((Path(args.out) / stage / CHECKPOINT).exists() for stage in self.stages))
        lock = open_run(args.out, resume=args.resume and not staged, overwrite=args.overwrite) if main else None
        try:
            torch.manual_seed(args.seed)  # the initial weights too: one seed, one run
            splits = data.mnist(validation=args.validation, binarize=args.binarize, labels=self.labels,
                                device=args.device)
            train, test = splits["train"], splits["test"]
            if args.train_subset:
                train = train.subset(args.train_subset)
            run = TrainingRun(args=args, out=Path(args.out), train=train, test=test, config=config)
            run.state.update(group=group, main=main)
            self.prepare(run)
            K, batch = args.num_particles or 1, min(args.batch_size, len(run.train))
            widths = 3 * 784 + 4 * _hidden_total(run.config.get("hidden", (400,)))
            check_memory(16.0 * K * batch * widths, f"one training step (K={K}, batch {batch})",
                         "use a smaller -K or --batch-size", args.device if args.device != "auto" else "cpu")
            model = self.build(run)
            history, train_seconds = fit_stage(model, run.train, self.fit_test(run), args, run.out, self.model_key,
                                               run.config, objective, args.epochs, diagnose=self.diagnostics(run),
                                               extra_callbacks=self.extra_callbacks(run))

            torch.manual_seed(args.seed)
            model.eval()
            x = test.subset(32).full(torch.Generator(device=test.device).manual_seed(0))[0]
            run.report.update(self.report(model, run, x))
            run.report["train_seconds"] = train_seconds
            run.report["epochs"] = int(history["epoch"].iloc[-1])
            if group is not None:
                run.report["processes"] = group.world_size
            if not main:
                return
            write_report(run.out, run.report)
            for line in self.summary(run.report, run):
                print(line)
            print(f"trained {run.report['epochs']} epochs in {train_seconds:.0f}s; wrote {run.out}/history.csv, "
                  "checkpoint.pt, report.json and images")
        finally:
            if lock is not None:
                lock.release()


def _hidden_total(hidden: Any) -> int:
    """Total hidden width, for one or several stochastic layers' hidden sizes."""
    return sum(_hidden_total(h) if isinstance(h, (tuple, list)) else int(h) for h in hidden)
