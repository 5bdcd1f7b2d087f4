"""``ppmodels train vae``: the VAE on MNIST, its architecture presets and its guides."""

from __future__ import annotations

import argparse
from typing import Any

from .base import ImageFamily, TrainingRun
from .common import network_config, positive


class VAEFamily(ImageFamily):
    name = "vae"
    help = "the VAE (a diagonal Gaussian or IAF guide)"
    description = ("Train a VAE on MNIST by SVI; writes history.csv, checkpoint.pt, report.json, samples.png, "
                   "reconstructions.png and the posterior-collapse diagnostics (kl_units.csv and its heat map) "
                   "to --out and prints the test figures.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        from ..models import PRESETS

        g = parser.add_argument_group("vae options")
        g.add_argument("--preset", choices=sorted(PRESETS), default="pyro", help="architecture preset (default: pyro)")
        g.add_argument("--guide", choices=["diagonal", "iaf"], default=None,
                       help="diagonal (default) or iaf (flows on top of the diagonal Gaussian)")
        g.add_argument("--flow-layers", type=positive(int), default=2, help="IAF layers for --guide iaf")
        super().add_options(g)

    def config(self, args: argparse.Namespace) -> dict[str, Any]:
        from ..models import PRESETS

        config = network_config(args, dict(PRESETS[args.preset]))
        if args.guide == "iaf":
            config.update(guide="iaf", flow_layers=args.flow_layers)
        return config

    def diagnostics(self, run: TrainingRun) -> Any:
        return run.test.subset(min(1000, len(run.test)))


FAMILY = VAEFamily()
