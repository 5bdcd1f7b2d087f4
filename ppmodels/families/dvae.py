"""``ppmodels train dvae``: the VAE with discrete latents (categoricals, or a categorical mixture)."""

from __future__ import annotations

import argparse
from typing import Any

from ..argtypes import Needs
from .base import ImageFamily
from .common import network_config, positive


class DiscreteVAEFamily(ImageFamily):
    name = "dvae"
    help = "the VAE with discrete latents"
    description = ("Train a VAE with discrete latents on MNIST by SVI (REINFORCE by default); writes history.csv, "
                   "checkpoint.pt, report.json, samples.png and reconstructions.png to --out and prints the test "
                   "figures.")
    rules = (
        Needs("--groups", "--latent", ("categorical",), why="groups of categoricals; a mixture has one"),
        Needs("--z-dim", "--latent", ("mixture",), why="the Gaussian z of the mixture; categoricals have none"),
    )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("dvae options")
        g.add_argument("--latent", choices=["categorical", "mixture"], default="categorical",
                       help="G x C categoricals, or a categorical mixture over a Gaussian z")
        g.add_argument("--groups", type=positive(int), help="categorical groups G (default 20)")
        g.add_argument("--classes", type=positive(int), help="classes C per group (default 10)")
        super().add_options(g)

    def config(self, args: argparse.Namespace) -> dict[str, Any]:
        config = network_config(args, {"latent": args.latent})
        config.update({k: getattr(args, k) for k in ("groups", "classes") if getattr(args, k) is not None})
        return config


FAMILY = DiscreteVAEFamily()
