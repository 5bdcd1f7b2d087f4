"""The zoo: one family per module, each with its model, guide and any closed forms."""

from .vae import PRESETS, VAE

__all__ = ["VAE", "PRESETS"]
