"""``ppmodels train sbn``: the sigmoid belief net of the DisARM experiments on binarized MNIST.

The DisARM protocol's settings are the defaults: batch 50, Adam at 1e-4, dynamic binarization
(``--binarize``, the option every family takes), the 100-sample test bound. One difference: the
protocol trains the prior's logits by SGD at 1e-2 beside Adam for the networks; ``fit`` keeps one
Adam over every parameter (no parameter groups), so here the prior's logits take Adam at --lr too.
"""

from __future__ import annotations

import argparse
from typing import Any

from .base import ImageFamily, TrainingRun
from .common import positive


class SigmoidBeliefNetFamily(ImageFamily):
    name = "sbn"
    help = "the sigmoid belief net (Bernoulli latents; DisARM by default)"
    description = ("Train a sigmoid belief net (one layer of Bernoulli latents, linear or nonlinear networks) on "
                   "binarized MNIST by SVI (DisARM by default); writes history.csv, checkpoint.pt, report.json "
                   "(with the test bound of --num-samples importance samples, default 100), samples.png and "
                   "reconstructions.png to --out and prints the test figures.")
    default_lr = 1e-4
    default_batch_size = 50
    #: importance samples of the test bound (the DisARM papers' 100-sample bound)
    bound_samples = 100

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("sbn options")
        g.add_argument("--latents", type=positive(int), default=200, help="Bernoulli latents L (default 200)")
        g.add_argument("--layers", choices=["linear", "nonlinear"], default="linear",
                       help="linear (affine encoder and decoder) or nonlinear (200-200 hidden, LeakyReLU 0.3, each side)")
        parser.set_defaults(num_samples=self.bound_samples)
        parser.allow_abbrev = False  # dvae's --latent (a kind of latent) must not pass for --latents here

    def config(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"latents": args.latents, "layers": args.layers}

    def report(self, model: Any, run: TrainingRun, x: Any) -> dict[str, Any]:
        report = super().report(model, run, x)
        report.pop("active_units")  # counted over continuous latents: an SBN has none
        report["test_bound"] = -report["test_nll"]  # log p(x) >= E log mean of nll_samples weights
        return report

    def summary(self, report: dict[str, Any], run: TrainingRun) -> list[str]:
        return [f"test ELBO  {report['test_elbo']:.2f} nats ({len(run.test)} images, K=1)",
                f"test bound {report['test_bound']:.2f} nats ({report['nll_images']} images, "
                f"K={report['nll_samples']} importance samples, {report['nll_seconds']:.0f}s)"]


FAMILY = SigmoidBeliefNetFamily()
