"""Neural-network building blocks: MLPs and the Gaussian heads amortized guides use."""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .utils import PPModelsError

__all__ = ["ACTIVATIONS", "activation", "MLP", "GaussianHead"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu_0.3": partial(nn.LeakyReLU, 0.3),  # the DisARM experiments' nonlinear sigmoid belief nets
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise PPModelsError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None


class MLP(nn.Sequential):
    """``in → hidden[0] → … → hidden[-1] → out`` with the activation between layers (none after the last)."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, act: str = "softplus") -> None:
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation(act))
        super().__init__(*layers)


class GaussianHead(nn.Module):
    """An MLP predicting ``(loc, scale)`` of a diagonal Gaussian: scale = exp(log_scale)
    (Burda et al.) or softplus, floored at ``min_scale`` for numerical safety."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        act: str = "softplus",
        scale: str = "exp",
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if scale not in ("exp", "softplus"):
            raise PPModelsError(f"GaussianHead: scale must be 'exp' or 'softplus', got {scale!r}")
        self.net = MLP(in_features, hidden, 2 * out_features, act)
        self.scale, self.min_scale = scale, min_scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, scale, _ = self.with_features(x)
        return loc, scale

    def with_features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(loc, scale, h)``, h the last hidden layer's output (``x`` with no hidden layer)."""
        *body, last = self.net
        h = x
        for layer in body:
            h = layer(h)
        loc, raw = last(h).chunk(2, dim=-1)
        scale = torch.exp(raw.clamp(max=15.0)) if self.scale == "exp" else F.softplus(raw)
        return loc, scale + self.min_scale, h
