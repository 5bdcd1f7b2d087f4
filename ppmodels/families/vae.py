"""``ppmodels train vae``: the VAE on MNIST, its architecture presets and its guides."""

from __future__ import annotations

import argparse
from typing import Any

from ..argtypes import Excludes, Needs
from .base import ImageFamily, TrainingRun
from .common import ints, network_config, positive

#: the options --recipe burda2016 sets itself (the paper's protocol): given with it, they are refused
RECIPE_FIXES = ("--epochs", "--steps", "--batch-size", "--lr", "--lr-schedule", "--binarize")


class VAEFamily(ImageFamily):
    name = "vae"
    help = "the VAE (a diagonal Gaussian or IAF guide)"
    description = ("Train a VAE on MNIST by SVI; writes history.csv, checkpoint.pt, report.json, samples.png, "
                   "reconstructions.png and the posterior-collapse diagnostics (kl_units.csv and its heat map) "
                   "to --out and prints the test figures.")
    rules = (
        Needs("--flow-layers", "--guide", ("iaf",), why="the IAF guide's layers; alone it does nothing"),
        Needs("--passes", "--recipe", ("burda2016",), why="the recipe's passes; use --epochs otherwise"),
        Needs("--recipe", "--preset", (None, "burda", "burda2"), why="the paper's architectures"),
        Excludes("--recipe", RECIPE_FIXES, why="burda2016 sets its own (batch 20, Adam at 1e-3, the 3^i schedule "
                 "over --passes, dynamic binarization); drop {other}"),
    )
    repeated = ("flow_layers",)

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        from ..models import PRESETS

        g = parser.add_argument_group("vae options")
        g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="architecture preset (default: pyro; burda with --recipe burda2016)")
        g.add_argument("--guide", choices=["diagonal", "iaf"], default=None,
                       help="diagonal (default) or iaf (flows on top of the diagonal Gaussian)")
        g.add_argument("--flow-layers", type=positive(int), default=2, help="IAF layers for --guide iaf")
        g.add_argument("--recipe", choices=["burda2016"], default=None,
                       help="burda2016: Burda et al.'s protocol (Glorot init, output bias at the mean pixel's logit, "
                            "Adam eps 1e-4, batch 20, the 3^i schedule over --passes, NLL with K=5000 on all 10,000 "
                            "test images unless --num-samples/--eval-subset say otherwise; it refuses "
                            + ", ".join(RECIPE_FIXES) + ", which it sets)")
        g.add_argument("--passes", type=positive(int), default=None,
                       help="--recipe: passes over the data (default 3280, the paper's; fewer compress the schedule)")
        g.add_argument("--nll-at", type=ints, default=(),
                       help="also measure the NLL after these epochs, e.g. 12,40,121 (on --eval-subset images)")
        super().add_options(g)

    def train(self, args: argparse.Namespace) -> None:
        if args.recipe == "burda2016":
            _burda2016(args)
        args.preset = args.preset or "pyro"
        super().train(args)

    def config(self, args: argparse.Namespace) -> dict[str, Any]:
        from ..models import PRESETS

        config = network_config(args, dict(PRESETS[args.preset]))
        if args.guide == "iaf":
            config.update(guide="iaf", flow_layers=args.flow_layers)
        return config

    def diagnostics(self, run: TrainingRun) -> Any:
        return run.test.subset(min(1000, len(run.test)))

    def build(self, run: TrainingRun) -> Any:
        model = super().build(run)
        if run.args.recipe == "burda2016":
            from ..data import mean_pixel

            model.burda_init(mean_pixel(run.train))
        return model

    def extra_callbacks(self, run: TrainingRun) -> list:
        if not run.args.nll_at:
            return []
        from ..callbacks import ImportanceNLL

        subset = run.test.subset(run.args.eval_subset) if run.args.eval_subset else run.test
        return [ImportanceNLL(subset, run.args.nll_at, run.args.num_samples, run.args.seed)]


def _burda2016(args: argparse.Namespace) -> None:
    """The recipe's settings (:data:`ppmodels.recipes.BURDA2016`) into ``args``. The options it
    sets (:data:`RECIPE_FIXES`) were refused by the parser if given; the evaluation's
    (--num-samples, --eval-subset) are the paper's unless given."""
    from ..recipes import BURDA2016

    given = getattr(args, "given_options", frozenset())
    args.preset = args.preset or "burda"
    args.epochs = args.passes or 3280
    args.batch_size, args.lr, args.eps = BURDA2016["batch_size"], BURDA2016["lr"], BURDA2016["eps"]
    args.lr_schedule = BURDA2016["lr_schedule"]
    args.binarize = "dynamic"
    if "--num-samples" not in given:
        args.num_samples = 5000
    if "--eval-subset" not in given:
        args.eval_subset = None


FAMILY = VAEFamily()
