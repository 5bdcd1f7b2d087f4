"""ppmodels: latent-variable models as Pyro programs, and a laboratory for variational objectives."""

from . import data, nets, objectives, utils
from .utils import PPModelsError, resolve_device

__version__ = "0.1.0"

__all__ = ["data", "nets", "objectives", "utils", "PPModelsError", "resolve_device", "__version__"]
