"""``ppmodels train ssvae``: the semi-supervised VAE (M2) on MNIST with a few labels kept."""

from __future__ import annotations

import argparse
from typing import Any

from .base import ImageFamily, TrainingRun
from .common import network_config, nonnegative, positive, save_grid, unlabelled


class SemiSupervisedFamily(ImageFamily):
    name = "ssvae"
    help = "the semi-supervised VAE (M2)"
    description = ("Train the semi-supervised VAE (M2) on MNIST with --labels labels kept; writes history.csv, "
                   "checkpoint.pt, report.json, samples.png, reconstructions.png and analogies.png to --out and "
                   "prints the test accuracy and figures.")
    labels = True
    sample_grid = (100, 10)  # ten draws of each class

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("ssvae options")
        g.add_argument("--labels", type=positive(int), default=3000, help="training labels kept (default 3000)")
        g.add_argument("--label-repeats", type=positive(int), default=1,
                       help="present each labelled image this many times per epoch (default 1)")
        g.add_argument("--aux-loss", type=nonnegative, default=None, help="weight α of the classifier's loss (default 46)")
        super().add_options(g)

    def config(self, args: argparse.Namespace) -> dict[str, Any]:
        return network_config(args, {} if args.aux_loss is None else {"aux_loss": args.aux_loss})

    def prepare(self, run: TrainingRun) -> None:
        """Keep --labels labels of the training set (balanced over the classes when a multiple of 10)."""
        from ..models.ssvae import semi_supervised

        args, n = run.args, min(run.args.labels, len(run.train))
        run.train = semi_supervised(run.train, n, seed=args.seed, balanced=n % 10 == 0, repeats=args.label_repeats)

    def fit_test(self, run: TrainingRun) -> Any:
        return unlabelled(run.test)  # the test ELBO of the model of x

    def report(self, model: Any, run: TrainingRun, x: Any) -> dict[str, Any]:
        report = super().report(model, run, x)
        report["test_accuracy"] = model.accuracy(run.test)
        report["labels"] = int((run.train.tensors[1] >= 0).sum()) // run.args.label_repeats
        if run.state.get("main", True):  # data-parallel: rank 0 alone writes
            save_grid(model.analogies(x[:10]), run.out / "analogies.png", nrow=10)
        return report

    def summary(self, report: dict[str, Any], run: TrainingRun) -> list[str]:
        return [f"test accuracy {report['test_accuracy']:.4f} ({report['labels']} labels)",
                *super().summary(report, run)]


FAMILY = SemiSupervisedFamily()
