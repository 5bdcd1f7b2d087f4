"""The zoo: one family per module, each with its model, guide and any closed forms."""

from .conjugate import BernoulliBelief, CategoricalGaussian, LinearGaussian
from .cvae import ConditionalVAE, QuadrantBaseline
from .discrete_vae import DiscreteVAE
from .mixture import GaussianMixture
from .sbn import SigmoidBeliefNet
from .ssvae import SemiSupervisedVAE
from .vae import PRESETS, VAE
from .vqvae import VQVAE, CodePrior

__all__ = ["VAE", "PRESETS", "DiscreteVAE", "SemiSupervisedVAE", "ConditionalVAE", "QuadrantBaseline",
           "GaussianMixture", "SigmoidBeliefNet", "LinearGaussian", "CategoricalGaussian", "BernoulliBelief", "VQVAE", "CodePrior"]

from typing import Any

from ..utils import PPModelsError

REGISTRY: dict[str, type] = {"vae": VAE, "dvae": DiscreteVAE, "ssvae": SemiSupervisedVAE, "cvae": ConditionalVAE,
                             "cvae-baseline": QuadrantBaseline, "gmm": GaussianMixture,
                             "sbn": SigmoidBeliefNet, "vqvae": VQVAE, "vq-prior": CodePrior}


def build(family: str, **config: Any) -> Any:
    """A zoo model by family name and configuration (as stored in checkpoints)."""
    if family not in REGISTRY:
        raise PPModelsError(f"unknown model family {family!r}; available: {sorted(REGISTRY)}")
    return REGISTRY[family](**config)


__all__ += ["REGISTRY", "build"]
