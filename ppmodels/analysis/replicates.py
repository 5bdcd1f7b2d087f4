r"""Replicate gradient estimates: R independent draws of an objective's gradient estimator.

Vectorized path (objectives with per-datapoint units, models whose latents are all local): the
batch is repeated R times along the data plate, so one forward pass draws every replicate's
particles, and the surrogate is summed per replicate, :math:`S \in \mathbb R^R`. The Jacobian
:math:`J = \partial S / \partial \theta` (R × P) then comes from one of two batched backward
passes, whichever costs less:

- few parameters (P ≤ 64): the double-backward trick, :math:`g(u) = J^\top u` with
  ``create_graph=True`` and :math:`J = \partial g / \partial u` batched over the P
  coordinates — P vector-Jacobian products for all R replicates at once;
- more parameters (P ≤ 10,000): the rows directly, ``is_grads_batched`` over chunks of at most
  32 replicates (each chunk's backward costs chunk × one pass, but the Python and tracing
  overhead is paid once per chunk);
- large networks (P > 10,000, e.g. the MNIST VAE) whose studied parameters are all weights and
  biases of ``nn.Linear`` layers: per-replicate gradients from one ordinary backward pass —
  hooks keep each layer's input :math:`a` and output gradient :math:`\delta`, and replicate r's
  gradient is :math:`\sum_{\text{rows of } r} \delta a^\top` (its rows are its own datapoints'
  copies), an ``einsum`` per layer, in chunks of replicates that bound the (chunk, P) memory;
- otherwise: the loop.
Otherwise (global latents, objectives with U = 1, objectives that learn between draws, programs
whose batch plate subsamples; a learned state a draw changes, not one only the optimizer
changes, as RELAX's surrogate: :func:`repeatable` decides from the program's facts before anything
runs): the loop path, R forward/backward passes, each a draw as training takes it (a baseline
updated by each). A vectorized attempt that fails anyway runs inside
:func:`ppmodels.program.attempt`, so the loop starts from the state the attempt found.
"""

from __future__ import annotations

from typing import Any, Sequence

import pyro
import torch
from torch import Tensor

from .. import program
from ..objectives import Objective, make
from ..utils import PPModelsError

__all__ = ["replicate_gradients", "flat_grad", "FEW_PARAMETERS", "ROWS_CHUNK", "ROWS_MAX_PARAMETERS"]

FEW_PARAMETERS = 64  # up to this many coordinates: the double-backward Jacobian
ROWS_CHUNK = 32  # otherwise: at most this many replicates per batched backward
ROWS_MAX_PARAMETERS = 10_000  # beyond: the loop


def flat_grad(grads: Sequence[Tensor | None], params: Sequence[Tensor], batch_shape: tuple = ()) -> Tensor:
    """Concatenate gradients (None → zeros) into one (*batch_shape, P) tensor."""
    return torch.cat([
        (g if g is not None else torch.zeros(batch_shape + p.shape, dtype=p.dtype, device=p.device))
        .reshape(*batch_shape, -1)
        for g, p in zip(grads, params)
    ], -1)


def _repeat(batch: tuple, R: int) -> tuple:
    return tuple(t.repeat(R, *([1] * (t.dim() - 1))) if torch.is_tensor(t) else t for t in batch)


def replicate_gradients(
    objective: str | Objective,
    obj: Any,
    batch: tuple,
    params: Sequence[Tensor],
    replicates: int,
    *,
    seed: int = 0,
    vectorize: bool = True,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """R gradient estimates of minus the objective w.r.t. ``params``: ``(grads (R, P), bounds (R,))``.

    ``vectorize=False`` forces the loop path (the reference the vectorized path is tested against).
    ``chunk`` bounds the replicates per vectorized pass (memory).
    """
    objective = make(objective) if isinstance(objective, str) else objective
    params = list(params)
    if replicates < 1:
        raise PPModelsError(f"replicate_gradients: replicates must be >= 1, got {replicates}")
    B = batch[0].shape[0]
    P = sum(p.numel() for p in params)
    pyro.set_rng_seed(seed)
    with pyro.validation_enabled(False):
        if vectorize and repeatable(objective, obj, batch):
            try:
                with program.attempt():  # a failure leaves no state, param or random draw behind
                    out = _vectorized(objective, obj, batch, params, replicates, chunk, B, P)
                    if out is None:
                        raise _NotPerDatapoint
                return out
            except (_NotPerDatapoint, PPModelsError, RuntimeError, IndexError, ValueError):
                pass  # e.g. a guide with per-datapoint parameters meets the repeated batch
            pyro.set_rng_seed(seed)
        grads_list, bounds = [], []
        for _ in range(replicates):
            bound, surrogate = objective.surrogate(obj.model, obj.guide, *batch)
            grads = torch.autograd.grad(-surrogate, params, allow_unused=True) if surrogate.requires_grad else [None] * len(params)
            grads_list.append(flat_grad(grads, params))
            bounds.append(bound.detach())
        return torch.stack(grads_list), torch.stack(bounds)


class _NotPerDatapoint(Exception):
    """The repeated batch gave no per-datapoint terms: the loop it is."""


def repeatable(objective: Objective, obj: Any, batch: tuple) -> bool:
    """Whether R replicates may be drawn as one pass over the batch repeated R times, decided
    from the program's facts before anything runs: the objective's terms are per datapoint and
    no draw changes what it learns (a baseline's update would see R draws as one), the batch
    plate holds every site, does not subsample, and takes its indices from no argument (a guide
    that caches its plates, as Pyro's EasyGuide does, would keep the repeated indices)."""
    if not objective.per_term or (objective.state_names and objective.draws_update_state):
        return False
    found = objective.facts(obj.model, obj.guide, batch, {})
    return (found.per_datapoint and not found.subsampled and not found.subsample_from_args
            and not found.baseline_sites)


def _vectorized(objective: Objective, obj: Any, batch: tuple, params: list[Tensor], replicates: int,
                chunk: int | None, B: int, P: int) -> tuple[Tensor, Tensor] | None:
    """The vectorized paths (module docstring); None where the units are not per datapoint."""
    seed_state = torch.get_rng_state()
    linear = _linear_layers(obj, params) if P > ROWS_MAX_PARAMETERS else None
    if linear is not None:
        chunk = min(chunk or replicates, max(1, (1 << 28) // (4 * P)))
        grads = torch.empty(replicates, P, dtype=params[0].dtype, device=params[0].device)
        bounds = []
        for start in range(0, replicates, chunk):
            r = min(chunk, replicates - start)
            with _PerReplicate(linear, r * B) as rec:
                bound, surrogate = objective.surrogate_terms(obj.model, obj.guide, *_repeat(batch, r))
                if surrogate.shape[0] != r * B:
                    break
                (-surrogate.sum()).backward(inputs=params)
            rec.write_gradients(params, grads[start : start + r])
            bounds.append(bound.detach().reshape(r, B).sum(1))
        else:
            for p in params:
                p.grad = None
            return grads, torch.cat(bounds)
        for p in params:
            p.grad = None
        torch.set_rng_state(seed_state)
    if P <= ROWS_MAX_PARAMETERS:
        chunk = min(chunk or replicates, replicates if P <= FEW_PARAMETERS else ROWS_CHUNK)
        out_g, out_b = [], []
        for start in range(0, replicates, chunk):
            r = min(chunk, replicates - start)
            bound, surrogate = objective.surrogate_terms(obj.model, obj.guide, *_repeat(batch, r))
            if surrogate.shape[0] != r * B:
                break  # global latents: no per-datapoint units, use the loop
            out_g.append(_jacobian(-surrogate.reshape(r, B).sum(1), params))
            out_b.append(bound.detach().reshape(r, B).sum(1))
        else:
            return torch.cat(out_g), torch.cat(out_b)
    return None


def _linear_layers(obj: Any, params: list[Tensor]) -> dict[int, tuple[torch.nn.Linear, str]] | None:
    """``{id(param): (layer, "weight" | "bias")}`` when every param belongs to an ``nn.Linear``
    of ``obj`` (an ``nn.Module``), else None."""
    if not isinstance(obj, torch.nn.Module):
        return None
    owner = {}
    for layer in obj.modules():
        if type(layer) is torch.nn.Linear:
            owner[id(layer.weight)] = (layer, "weight")
            if layer.bias is not None:
                owner[id(layer.bias)] = (layer, "bias")
    return owner if all(id(p) in owner for p in params) else None


class _PerReplicate:
    """Record each linear layer's inputs and output gradients during one forward/backward, and
    turn them into per-replicate parameter gradients (see module docstring)."""

    def __init__(self, layers: dict[int, tuple[torch.nn.Linear, str]], rows: int) -> None:
        self.layers = {id(layer): layer for layer, _ in layers.values()}
        self.owner = layers
        self.rows = rows  # R * B: the size of the data dimension
        self.records: dict[int, list[list[Tensor]]] = {k: [] for k in self.layers}
        self.handles: list = []

    def __enter__(self) -> "_PerReplicate":
        for key, layer in self.layers.items():
            self.handles.append(layer.register_forward_hook(self._forward(key)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()

    def _forward(self, key: int):
        def hook(module, inputs, output):
            record = [inputs[0].detach()]
            self.records[key].append(record)
            if output.requires_grad:
                output.register_hook(lambda g: record.append(g.detach()))
        return hook

    def _rows(self, t: Tensor, R: int) -> Tensor:
        """(..., rows, f) → (L, R, B, f) with the data dimension (size R·B) split by replicate."""
        if t.dim() < 2 or t.shape[-2] != self.rows:
            raise PPModelsError(
                "replicate_gradients: a linear layer's input has no data dimension of the batch's size "
                f"(shape {tuple(t.shape)}); use vectorize=False"
            )
        return t.reshape(-1, R, self.rows // R, t.shape[-1])

    def write_gradients(self, params: list[Tensor], out: Tensor) -> None:
        """Write the (R, P) per-replicate gradients of ``params`` into ``out`` (columns in the
        order of ``params``), each layer's block straight into its columns."""
        R = out.shape[0]
        columns, start = {}, 0
        for p in params:
            columns[id(p)] = out[:, start : start + p.numel()].view(R, *p.shape)
            start += p.numel()
        for key, records in self.records.items():
            layer = self.layers[key]
            targets = [(layer.weight, "w"), (layer.bias, "b")] if layer.bias is not None else [(layer.weight, "w")]
            written = set()
            for record in records:
                if len(record) < 2:
                    continue  # no gradient reached this use of the layer
                a, d = record
                a = self._rows(a.expand(*d.shape[:-1], a.shape[-1]), R)  # (L, R, B, in)
                d = self._rows(d, R)  # (L, R, B, out)
                for param, kind in targets:
                    if id(param) not in columns:
                        continue
                    target = columns[id(param)]
                    beta = 1.0 if id(param) in written else 0.0
                    if kind == "w":  # straight into the (strided) output: no temporary, no copy
                        rows_d = d.transpose(0, 1).reshape(R, -1, d.shape[-1])  # (R, L*B, out)
                        rows_a = a.transpose(0, 1).reshape(R, -1, a.shape[-1])  # (R, L*B, in)
                        target.baddbmm_(rows_d.transpose(1, 2), rows_a, beta=beta)
                    elif beta:
                        target.add_(d.sum((0, 2)))
                    else:  # the buffer is uninitialized: copy, do not scale (0 * nan = nan)
                        target.copy_(d.sum((0, 2)))
                    written.add(id(param))
            for param, _ in targets:
                if id(param) in columns and id(param) not in written:
                    columns[id(param)].zero_()  # this layer got no gradient


def _jacobian(S: Tensor, params: list[Tensor], method: str = "auto") -> Tensor:
    """:math:`\partial S_r / \partial \theta`, shape (R, P), for a vector ``S`` of R independent
    terms; ``method``: ``"double_backward"``, ``"rows"`` or ``"auto"`` (by P, see module docstring)."""
    R = S.shape[0]
    P = sum(p.numel() for p in params)
    if method == "double_backward" or (method == "auto" and P <= FEW_PARAMETERS):
        u = torch.ones(R, dtype=S.dtype, device=S.device, requires_grad=True)
        g = flat_grad(torch.autograd.grad(S, params, grad_outputs=u, create_graph=True, allow_unused=True), params)
        if not g.requires_grad:  # the gradient does not depend on S's weights: rows are equal
            return g.expand(R, P) / R
        eye = torch.eye(P, dtype=S.dtype, device=S.device)
        (J,) = torch.autograd.grad(g, u, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
        return J.T if J is not None else torch.zeros(R, P, dtype=S.dtype, device=S.device)
    eye = torch.eye(R, dtype=S.dtype, device=S.device)
    grads = torch.autograd.grad(S, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
    return flat_grad(grads, params, (R,))
