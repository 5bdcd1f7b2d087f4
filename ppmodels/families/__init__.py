"""The model families of ``ppmodels train``: one module per family, found automatically.

Each module here that defines a module-level ``FAMILY`` (an instance of
:class:`~ppmodels.families.base.Family`) is a sub-command ``ppmodels train FAMILY.name``: the
family declares its own options (``add_options``), its natural objective (its model class's
``default_objective``) and how it trains and reports; :mod:`ppmodels.cli` assembles the
``train`` command from :data:`FAMILIES` and adds the options every family takes
(:func:`~ppmodels.families.base.common_options`).

To add a family, add one file ``ppmodels/families/NAME.py``::

    from .base import ImageFamily

    class MyFamily(ImageFamily):          # the MNIST pipeline; or Family, writing train(args)
        name = "myvae"                     # ppmodels train myvae ...
        model = "vae"                      # its models.REGISTRY key (default: name)
        help = "one line for `ppmodels train --help`"

        def add_options(self, parser):     # its own options
            parser.add_argument("--width", type=int, default=100)
            super().add_options(parser)    # --z-dim, --hidden, --activation

        def config(self, args):            # the model's configuration from the options
            return {"hidden": (args.width,)}

    FAMILY = MyFamily()

Override :class:`~ppmodels.families.base.ImageFamily`'s hooks (``prepare``, ``build``,
``report``, ``images``, ``summary``, ...) where the family differs. A new *model* class also
needs its entry in :data:`ppmodels.models.REGISTRY` (so that ``evaluate`` and ``sample`` can
rebuild it from a checkpoint); the models package never imports this one.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Family, ImageFamily, TrainingRun

__all__ = ["FAMILIES", "Family", "ImageFamily", "TrainingRun", "discover"]


def discover() -> dict[str, Family]:
    """The families of the modules in this package's folders (``__path__``) that define a
    module-level ``FAMILY``, by name, sorted by name; modules whose names start with ``_`` are
    skipped."""
    from ..utils import PPModelsError

    found: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if family is None:
            continue  # a helper module (base, common)
        if not isinstance(family, Family) or not family.name:
            raise PPModelsError(f"{module.__name__}.FAMILY must be a named ppmodels.families.base.Family instance")
        if family.name in found:
            raise PPModelsError(f"two families named {family.name!r}: {module.__name__} and "
                                f"{type(found[family.name]).__module__}")
        found[family.name] = family
    return dict(sorted(found.items()))


#: every family, by name (what ``ppmodels train`` offers)
FAMILIES: dict[str, Family] = discover()
