"""Primitives shared by every layer: devices, seeds, RNG state, errors."""

from __future__ import annotations

import random
from typing import Any

import torch

__all__ = [
    "PPModelsError",
    "resolve_device",
    "set_seed",
    "rng_state",
    "set_rng_state",
    "model_name",
    "check_rows",
    "first_line",
    "check_memory",
]


class PPModelsError(ValueError):
    """An error about the user's input: a bad argument, model, data or device."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise PPModelsError(f"device: expected 'cpu', 'cuda' or 'auto', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PPModelsError(
                f"device={device!r}: no CUDA device is available on this machine; "
                "use device='cpu' or device='auto'"
            )
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise PPModelsError(f"device: expected 'cpu', 'cuda' or 'auto', got {device!r}")


def set_seed(seed: int) -> None:
    """Seed Python, torch (CPU and CUDA) and Pyro's RNGs."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:  # numpy is optional at this layer
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def rng_state() -> dict[str, Any]:
    """Every RNG's state as plain tensors and tuples (loadable with ``weights_only=True``)."""
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def check_rows(x: "torch.Tensor", dim: int, where: str, site: str, rows: str = "B") -> None:
    """Raise unless ``x`` is a batch of shape (rows, dim): ``where`` names the model, ``site`` the site."""
    if x.dim() != 2 or x.shape[-1] != dim:
        raise PPModelsError(f"{where}: site {site!r} expects a batch of shape ({rows}, {dim}), got {tuple(x.shape)}")


def model_name(model: Any) -> str:
    """A readable name for a model object or a pair of functions, for error messages."""
    if hasattr(model, "model") and hasattr(model, "guide"):
        return type(model).__name__
    return getattr(model, "__qualname__", None) or type(model).__name__


def first_line(e: BaseException, with_type: bool = False) -> str:
    """An exception's message cut to its first line (Pyro appends trace-shape tables), at most
    300 characters; the whole message stays in the exception's ``__cause__``."""
    lines = str(e).strip().splitlines()
    text = (lines[0] if lines else "")[:300]
    return f"{type(e).__name__}: {text}" if with_type else text


def available_memory(device: "torch.device | str" = "cpu") -> int:
    """Bytes free for a computation: the GPU's free memory, or the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return 8 << 30


def check_memory(nbytes: float, what: str, hint: str, device: "torch.device | str" = "cpu") -> None:
    """Raise before allocating when ``what`` needs more than 80% of the free memory."""
    free = available_memory(device)
    if nbytes > 0.8 * free:
        raise PPModelsError(f"{what} needs about {nbytes / 2**30:.1f} GiB but {free / 2**30:.1f} GiB is free; {hint}")
