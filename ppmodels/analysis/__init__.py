"""The estimator-variance laboratory: replicate gradients and their statistics."""

from .replicates import flat_grad, replicate_gradients

__all__ = ["replicate_gradients", "flat_grad"]
