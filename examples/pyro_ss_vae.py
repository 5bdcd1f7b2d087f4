"""Pyro's own M2 example (``examples/vae/ss_vae_M2.py`` of a pyro-ppl/pyro checkout), run on this
machine with ppmodels' MNIST: the outside check of ``ppmodels train ssvae``'s curves.

    python examples/pyro_ss_vae.py PYRO_CHECKOUT/examples/vae -- --seed 0 -n 12 --aux-loss -alm 46 \\
        -enum parallel -sup 100 -zd 50 -hl 500 -lr 0.00042 -b1 0.95 -bs 100 -log runs/pyro-m2-100.log

Pyro's file is not changed. Three things around it are:
- ``pyro.contrib.examples.util.MNIST`` (torchvision's, which downloads) is replaced by a class that
  serves the arrays of :func:`ppmodels.data.load_mnist`: the same 60,000 + 10,000 images, uint8;
- ``visdom`` (imported at the top, used only with ``--visualize``) is a stub module;
- the example asserts ``pyro.__version__.startswith("1.9.1")``; the version string is shown as
  "1.9.1" while it runs (the installed Pyro is 1.9.2, whose SVI the example uses unchanged).
"""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path

import pyro
import pyro.contrib.examples.util as pyro_example_util
import torch

from ppmodels.data import load_mnist


class ArraysMNIST(torch.utils.data.Dataset):
    """torchvision's MNIST interface (``data`` N×28×28 uint8, ``targets``), from ppmodels' arrays."""

    arrays: dict[str, torch.Tensor] = {}

    def __init__(self, root=None, train: bool = True, download: bool = True, **_) -> None:
        split = "train" if train else "test"
        self.data = self.arrays[f"{split}_images"].view(-1, 28, 28).clone()
        self.targets = self.arrays[f"{split}_labels"].clone()

    def __len__(self) -> int:
        return len(self.data)


def main(argv: list[str]) -> None:
    if len(argv) < 1 or not (Path(argv[0]) / "ss_vae_M2.py").is_file():
        raise SystemExit("usage: python examples/pyro_ss_vae.py PYRO_CHECKOUT/examples/vae -- [ss_vae_M2.py options]")
    where = Path(argv[0]).resolve()
    rest = argv[1:][1:] if argv[1:2] == ["--"] else argv[1:]
    ArraysMNIST.arrays = load_mnist()
    pyro_example_util.MNIST = ArraysMNIST
    visdom = types.ModuleType("visdom")
    visdom.Visdom = None
    sys.modules.setdefault("visdom", visdom)
    sys.path.insert(0, str(where))  # the example imports its own utils package
    installed, pyro.__version__ = pyro.__version__, "1.9.1"
    try:
        sys.argv = [str(where / "ss_vae_M2.py"), *rest]
        runpy.run_path(str(where / "ss_vae_M2.py"), run_name="__main__")
    finally:
        pyro.__version__ = installed


if __name__ == "__main__":
    main(sys.argv[1:])
