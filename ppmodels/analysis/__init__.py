"""The estimator-variance laboratory: replicate gradients, their statistics, studies and plots.

Layers: :mod:`.stats` (array functions on moments), :mod:`.replicates` (vectorized replicate
gradients), :mod:`.study` (:func:`gradient_study`), :mod:`.plots` (:func:`plot_study`).
"""

from .plots import plot_study
from .replicates import flat_grad, replicate_gradients
from .stats import Moments, statistics
from .study import COLUMNS, gradient_study, parameter_groups

__all__ = ["replicate_gradients", "flat_grad", "Moments", "statistics", "gradient_study",
           "parameter_groups", "plot_study", "COLUMNS"]
