"""Parameter discovery: which tensors a program reads, and a fast answer to its ``pyro.param`` statements."""

from __future__ import annotations

import weakref
from typing import Any, Iterator

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.distributions import transform_to

__all__ = ["named_parameters", "parameters", "read_parameters", "KnownParams"]


def named_parameters(obj: Any) -> Iterator[tuple[str, Tensor]]:
    """The module parameters of ``obj`` (if it is an ``nn.Module``)."""
    if isinstance(obj, torch.nn.Module):
        yield from obj.named_parameters()


def parameters(obj: Any) -> list[Tensor]:
    return [p for _, p in named_parameters(obj)]


def read_parameters(obj: Any, param_trace: poutine.Trace) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Any]]]:
    """The parameter tensors a program reads, by name, from a trace of its ``pyro.param``
    statements (a probe's): ``obj``'s module parameters (``module.NAME``) and the
    unconstrained values of the param sites that are not among them (``param.NAME``), sorted
    by name; and every param site by its Pyro name, as ``(unconstrained, constraint)``."""
    params: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, p in named_parameters(obj):
        params[f"module.{name}"] = p
        seen.add(id(p))
    state = pyro.get_param_store().get_state()
    unconstrained = {name: state["params"][name] for name in param_trace.nodes if name in state["params"]}
    for name, p in unconstrained.items():
        if id(p) not in seen:
            params[f"param.{name}"] = p
            seen.add(id(p))
    return dict(sorted(params.items())), {name: (p, state["constraints"][name]) for name, p in unconstrained.items()}


class KnownParams(Messenger):
    """Answer ``pyro.param`` statements for already-registered parameters directly, without
    the param store and the rest of the handler stack (``pyro.module`` issues one such
    statement per tensor per call). Constrained params are transformed afresh each time. The
    value carries ``.unconstrained`` as the param store's does, so Pyro's plates can subsample
    a ``pyro.param(..., event_dim=...)`` inside them. It changes no fact of the program."""

    preserves_structure = True

    def __init__(self, sites: dict[str, tuple[Tensor, Any]]) -> None:
        super().__init__()
        self.sites = {name: (u, None if c is constraints.real else transform_to(c)) for name, (u, c) in sites.items()}

    def _pyro_param(self, msg: dict) -> None:
        site = self.sites.get(msg["name"])
        if site is not None:
            unconstrained, transform = site
            value = unconstrained if transform is None else transform(unconstrained)
            if value is unconstrained:
                value = value.view_as(value)  # the attribute must not land on the parameter itself
            value.unconstrained = weakref.ref(unconstrained)
            msg["value"] = value
            msg["done"] = msg["stop"] = True
