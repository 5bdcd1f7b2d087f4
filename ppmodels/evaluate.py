r"""Evaluation of any model/guide pair: ELBO, importance-sampled log-likelihood, active units.

The importance-sampled estimate (Burda et al. 2016, with K up to 5000):

.. math:: \log \hat p(x) = \log \frac1K \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)},
          \qquad z_k \sim q(z \mid x)

per datapoint, batched over data and particles, and chunked over both to a memory budget;
the particle chunks are combined with a running log-sum-exp. :func:`importance_diagnostics`
says, per datapoint, how far that estimate can be trusted: the Pareto :math:`\hat k` of its
importance weights and their effective sample size (:mod:`ppmodels.psis`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import pyro
import torch
from torch import Tensor

from . import program
from .data import TensorData, as_data
from .program import ProgramFacts
from .protocol import CHECK_ROWS, as_pair, check_batch, check_data
from .compiled import forked_rng, graph_of_call
from .utils import PPModelsError, model_name

if TYPE_CHECKING:
    import pandas

__all__ = ["log_likelihood", "mean_nll", "importance_diagnostics", "importance_summary", "elbo", "active_units",
           "kl_per_unit", "memory_budget", "chunk_sizes"]

#: Bytes one evaluation chunk may use on the CPU. Chunks near the size of the last-level cache
#: beat larger ones: on a 32 MiB-L3 EPYC, 1 GiB chunks ran the K = 5000 evaluation 1.5-1.7x
#: slower than 64 MiB ones, 32 MiB about as fast (``python benchmarks/is_chunks.py``).
CPU_CHUNK_BYTES = 64 << 20
#: Bytes per draw that the (B, S) log weights of one batch take at their peak on their way
#: through ArviZ's PSIS: a float64 copy, ArviZ's copy and output, the smoothed weights, the ESS's
#: temporaries (about 40 counted).
WEIGHT_BYTES_PER_DRAW = 48
#: The most bytes those log weights may take, whatever the device's budget: they go through the CPU.
WEIGHTS_BUDGET = 256 << 20
#: Full-size chunks from which ``log_likelihood`` captures one as a graph (the first capture in a
#: process imports TorchDynamo, about 1.5 s), and from which it compiles that graph.
CAPTURE_MIN_CHUNKS = 64
COMPILE_MIN_CHUNKS = 2000


def memory_budget(device: torch.device) -> int:
    """Bytes one chunk may use: half the free GPU memory, or :data:`CPU_CHUNK_BYTES` on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    return CPU_CHUNK_BYTES


def _per_datapoint_facts(obj: Any, batch: tuple, data_plate: str | None) -> ProgramFacts:
    """The program's facts, checked for per-datapoint evaluation before any draw: the guide
    samples every latent, and a batch plate holds every site (global latents, say, are named)."""
    where = model_name(obj)
    found = program.facts(obj.model, obj.guide, batch, {}, data_plate=data_plate, where=where)
    if not found.per_datapoint:
        raise PPModelsError(f"{where}: per-datapoint evaluation needs a batch plate around every site, but "
                            f"{found.why_batch}")
    program.check_program(found, where=where, sampling_ok=True)  # importance sampling draws marked sites
    return found


def _local_log_weights(obj: Any, batch: tuple, num_particles: int, found: ProgramFacts,
                       vectorize: bool = True) -> Tensor:
    """(K, B) log weights per datapoint of ``batch``: K particles in one vectorized pass, or
    (``vectorize=False``, or a model found to fail under vectorized particles) K passes."""
    lw, _ = program.draw(obj.model, obj.guide, batch, {}, found, num_particles=num_particles, vectorize=vectorize,
                         where=model_name(obj))
    if lw.scale != 1.0:
        raise PPModelsError(
            f"{model_name(obj)}: the batch plate {found.data_plate!r} subsamples (scale {lw.scale:g}); "
            "evaluation needs every datapoint of the batch: pass the rows to evaluate as the data"
        )
    if lw.log_w.shape[1] != len(batch[0]):
        raise PPModelsError(
            f"{model_name(obj)}: the batch plate {found.data_plate!r} has {lw.log_w.shape[1]} entries but the batch has "
            f"{len(batch[0])} rows; name the plate of the rows with data_plate=..."
        )
    return lw.log_w


def _probe(obj: Any, data: TensorData, batch_size: int | None, generator: torch.Generator | None) -> tuple[tuple, int | None]:
    """Check every row of ``data`` as ``fit`` does (:func:`ppmodels.protocol.check_data`: the
    first bad row is named in a one-line error), and return a first batch that the pair runs
    on: 8 rows, or, for a guide with per-datapoint parameters (AutoNormal, say) that only runs
    on the whole data, every row (then the evaluation runs in one batch)."""
    try:
        check_data(obj, data, "data")
    except PPModelsError as bad:
        if batch_size is not None or len(data) <= CHECK_ROWS:
            raise
        whole = next(data.batches(len(data), shuffle=False, generator=generator))
        try:
            check_batch(obj, whole)
        except PPModelsError:
            raise bad from None
        return whole, len(data)
    rows = min(len(data), batch_size or 8)
    first = next(data.batches(rows, shuffle=False, generator=generator))
    try:
        check_batch(obj, first)
        return first, batch_size
    except PPModelsError:
        if batch_size is not None or rows == len(data):
            raise
    whole = next(data.batches(len(data), shuffle=False, generator=generator))
    check_batch(obj, whole)
    return whole, len(data)


def chunk_sizes(
    obj: Any, batch: tuple, num_samples: int, num_data: int, *, budget: int | None = None,
    batch_size: int | None = None, max_plate_nesting: int | None = None,
) -> tuple[int, int]:
    """``(batch_size, particle_chunk)`` for evaluating ``num_samples`` particles on ``num_data``
    datapoints so that one chunk's traces take about ``budget`` bytes (default
    :func:`memory_budget`); ``batch`` is a small sample batch (its program's facts give the
    numbers a row holds: 16 bytes each). Unless ``batch_size`` is given: as many datapoints as
    fit with 64 particles each (fewer if K < 64); then as many particles as fit."""
    obj = as_pair(obj)
    found = program.facts(obj.model, obj.guide, batch, {}, max_plate_nesting=max_plate_nesting, where=model_name(obj))
    device = next((t.device for t in batch if torch.is_tensor(t)), torch.device("cpu"))
    units = max(1, (budget or memory_budget(device)) // (16 * found.numel_per_row))
    if batch_size is None:
        batch_size = int(min(num_data, max(1, units // min(num_samples, 64))))
    return batch_size, int(min(num_samples, max(1, units // batch_size)))


def log_likelihood(
    obj: Any,
    data: TensorData | Tensor | tuple,
    num_samples: int = 5000,
    *,
    batch_size: int | None = None,
    particle_chunk: int | None = None,
    budget: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    jit: bool | None = None,
    data_plate: str | None = None,
    vectorize_particles: bool = True,
) -> Tensor:
    r"""Per-datapoint :math:`\log \hat p(x)` with ``num_samples`` importance samples from the guide.

    Returns a tensor of shape (N,). Chunk sizes come from ``budget`` bytes (default
    :func:`memory_budget`) unless given. ``jit=True``: run the chunks of ``particle_chunk``
    particles through a captured graph of one such chunk per batch size (see
    :mod:`ppmodels.compiled`; compiled when :data:`COMPILE_MIN_CHUNKS` chunks or more will use
    it), used only if it returns what the plain chunk does; the default, None, does so for
    models that declare ``static_structure = True``, for batch sizes that run at least
    :data:`CAPTURE_MIN_CHUNKS` chunks. ``data_plate``: the batch plate's name (None: found).
    ``vectorize_particles=False``: one pass per particle, for models written for one sample.
    """
    obj = as_pair(obj)
    data = as_data(data)
    for key, value in (("num_samples", num_samples), ("batch_size", batch_size), ("particle_chunk", particle_chunk)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PPModelsError(f"log_likelihood: {key} must be an integer >= 1, got {value!r}")
    first, batch_size = _probe(obj, data, batch_size, generator)
    found = _per_datapoint_facts(obj, first, data_plate)
    with torch.no_grad(), pyro.validation_enabled(False):
        if batch_size is None or particle_chunk is None:
            batch_size, auto_chunk = chunk_sizes(obj, first, num_samples, len(data), budget=budget,
                                                 batch_size=batch_size)
            particle_chunk = particle_chunk or auto_chunk

        def chunk(batch: tuple, k: int) -> Tensor:
            r""":math:`\log \sum_k w_k` over k particles, per datapoint of the batch."""
            return torch.logsumexp(_local_log_weights(obj, batch, k, found, vectorize_particles), 0)

        per_batch = num_samples // particle_chunk  # full particle chunks per batch
        may_trace = (bool(getattr(obj, "static_structure", False)) if jit is None else jit) and vectorize_particles
        min_uses = 1 if jit else CAPTURE_MIN_CHUNKS
        params: list[Tensor] | None = None
        traced: dict[int, Callable | None] = {}  # by batch size (the last batch may be smaller)
        out = []
        batches = data.batches(batch_size, shuffle=False, generator=generator)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=data.num_batches(batch_size), desc="log p(x)")
        for batch in batches:
            size = len(batch[0])
            if may_trace and per_batch and size not in traced:
                uses = per_batch * (len(data) // batch_size if size == batch_size else 1)
                traced[size] = None
                if uses >= min_uses:
                    n = len(batch)
                    if params is None:
                        params = list(program.read_parameters(obj, program.probe(obj.model, obj.guide, batch, keep_params=True).param_trace)[0].values())
                    kind = "compiled" if uses >= COMPILE_MIN_CHUNKS else "graph"
                    traced[size], _ = graph_of_call(lambda *inputs: chunk(inputs[:n], particle_chunk), (*batch, *params),
                                                    kind)
            fast = traced.get(size)
            acc = None
            for start in range(0, num_samples, particle_chunk):
                k = min(particle_chunk, num_samples - start)
                lse = fast(*batch, *params) if fast is not None and k == particle_chunk else chunk(batch, k)
                acc = lse if acc is None else torch.logaddexp(acc, lse)
            out.append(acc - math.log(num_samples))
    return torch.cat(out)


def mean_nll(obj: Any, data: TensorData, num_samples: int = 5000, *, generator: torch.Generator | None = None,
             group: Any = None) -> float:
    """Minus the mean over ``data``'s rows of :func:`log_likelihood` (nats per datapoint). With a
    data-parallel ``group`` (:class:`ppmodels.distributed.Group`) each rank takes its block of
    rows and the sums are gathered, so every rank returns the same value."""
    if group is None:
        return -float(log_likelihood(obj, data, num_samples, generator=generator).mean())
    per_row = lambda part: log_likelihood(obj, part, num_samples, generator=generator)  # noqa: E731
    return -float(group.mean_over_rows(per_row, data, data.device))


def importance_diagnostics(
    obj: Any,
    data: TensorData | Tensor | tuple,
    num_samples: int = 5000,
    *,
    batch_size: int | None = None,
    particle_chunk: int | None = None,
    budget: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    data_plate: str | None = None,
    vectorize_particles: bool = True,
) -> "pandas.DataFrame":
    r"""One row per datapoint: ``log_lik``, the importance-sampled :math:`\log\hat p(x)` with
    ``num_samples`` draws from the guide (the estimator of :func:`log_likelihood`), ``khat``,
    the Pareto :math:`\hat k` of those draws' importance weights (ArviZ's PSIS, see
    :mod:`ppmodels.psis`), and ``ess``, their effective sample size :math:`1/\sum \tilde w^2`
    (of the smoothed normalized weights). ``df.attrs["num_samples"]`` holds S;
    :func:`importance_summary` gives the threshold and the fraction of datapoints above it.

    All S log weights of a batch are held at once: a batch has as many rows as fit
    ``WEIGHT_BYTES_PER_DRAW * S`` bytes each into ``budget`` (at most :data:`WEIGHTS_BUDGET`),
    and its draws are made ``particle_chunk`` at a time, as :func:`log_likelihood` makes them.
    Any device: the draws stay on the data's device, the log weights go to the CPU for ArviZ.
    ``num_samples`` must be at least :data:`ppmodels.psis.MIN_DRAWS` (21) for a fit, and a
    thousand or more for a :math:`\hat k` worth reading."""
    import numpy as np
    import pandas as pd

    from . import psis

    obj = as_pair(obj)
    data = as_data(data)
    for key, value in (("num_samples", num_samples), ("batch_size", batch_size), ("particle_chunk", particle_chunk)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PPModelsError(f"importance_diagnostics: {key} must be an integer >= 1, got {value!r}")
    if num_samples < psis.MIN_DRAWS:
        raise PPModelsError(f"importance_diagnostics: num_samples={num_samples} leaves too few draws in the tail for a "
                            f"Pareto fit; use at least {psis.MIN_DRAWS} (1000 or more for a k-hat worth reading)")
    first, batch_size = _probe(obj, data, batch_size, generator)
    found = _per_datapoint_facts(obj, first, data_plate)
    device = next((t.device for t in first if torch.is_tensor(t)), torch.device("cpu"))
    budget = budget or memory_budget(device)
    if batch_size is None:
        rows, _ = chunk_sizes(obj, first, num_samples, len(data), budget=budget)
        batch_size = max(1, min(rows, min(budget, WEIGHTS_BUDGET) // (WEIGHT_BYTES_PER_DRAW * num_samples)))
    if particle_chunk is None:
        _, particle_chunk = chunk_sizes(obj, first, num_samples, len(data), budget=budget, batch_size=batch_size)
    columns: dict[str, list] = {"log_lik": [], "khat": [], "ess": []}
    with torch.no_grad(), pyro.validation_enabled(False):
        batches = data.batches(batch_size, shuffle=False, generator=generator)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=data.num_batches(batch_size), desc="k-hat")
        for batch in batches:
            sizes = [min(particle_chunk, num_samples - start) for start in range(0, num_samples, particle_chunk)]
            chunks = [_local_log_weights(obj, batch, k, found, vectorize_particles) for k in sizes]
            lw = torch.cat(chunks, 0).T.to("cpu", torch.float64)  # (B, S): ArviZ smooths the last axis
            del chunks
            columns["log_lik"].append((torch.logsumexp(lw, 1) - math.log(num_samples)).numpy())
            smoothed, khat = psis.pareto_smooth(lw.numpy())
            columns["khat"].append(khat)
            columns["ess"].append(psis.effective_sample_size(smoothed))
    table = pd.DataFrame({key: np.concatenate(parts) for key, parts in columns.items()})
    table.attrs["num_samples"] = num_samples
    return table


def importance_summary(table: "pandas.DataFrame", num_samples: int | None = None) -> dict[str, Any]:
    """The summary of an :func:`importance_diagnostics` table (see :func:`ppmodels.psis.summarize`):
    the threshold for its S draws, the fraction of datapoints above it, the NLL over all and over
    the reliable datapoints. ``num_samples``: S, if the table lost its ``attrs``."""
    from . import psis

    num_samples = num_samples or table.attrs.get("num_samples")
    if not num_samples:
        raise PPModelsError("importance_summary: the table does not say its number of draws; pass num_samples=S")
    return psis.summarize(table["khat"].to_numpy(), table["log_lik"].to_numpy(), int(num_samples))


def elbo(
    obj: Any,
    data: TensorData | Tensor | tuple,
    num_particles: int = 1,
    *,
    batch_size: int | None = 1000,
    generator: torch.Generator | None = None,
    data_plate: str | None = None,
    vectorize_particles: bool = True,
) -> Tensor:
    r"""Per-datapoint ELBO estimate :math:`\frac1K\sum_k \log w_k`, shape (N,).
    ``data_plate``: the batch plate's name (None: found); ``vectorize_particles=False``: one
    pass per particle."""
    obj = as_pair(obj)
    data = as_data(data)
    first, batch_size = _probe(obj, data, batch_size, generator)
    found = _per_datapoint_facts(obj, first, data_plate)
    batch_size = batch_size or 1000
    with torch.no_grad(), pyro.validation_enabled(False):
        return torch.cat([
            _local_log_weights(obj, batch, num_particles, found, vectorize_particles).mean(0)
            for batch in data.batches(batch_size, shuffle=False, generator=generator)
        ])


def active_units(
    obj: Any, data: TensorData | Tensor | tuple, threshold: float = 0.01, *, batch_size: int = 1000,
    generator: torch.Generator | None = None,
) -> dict[str, int]:
    r"""Active latent units per guide site (Burda et al. 2016): unit u is active when
    :math:`\mathrm{Cov}_x\big(\mathbb E_{q(z|x)}[z_u]\big) > 0.01`. Uses each continuous
    (reparameterizable) site's ``mean``, or the mean of 64 draws where it has none (a flow
    guide); discrete sites are skipped."""
    from pyro import poutine
    from pyro.poutine.util import prune_subsample_sites

    obj = as_pair(obj)
    data = as_data(data)
    means: dict[str, list[Tensor]] = {}
    noises: dict[str, list[Tensor]] = {}
    with torch.no_grad(), pyro.validation_enabled(False):
        for batch in data.batches(batch_size, shuffle=False, generator=generator):
            trace = prune_subsample_sites(poutine.trace(obj.guide).get_trace(*batch))
            for name, site in trace.nodes.items():
                if site["type"] == "sample" and not site["is_observed"] and site["fn"].has_rsample:
                    mean, noise = _mean(site["fn"])
                    means.setdefault(name, []).append(mean.reshape(len(batch[0]), -1))
                    noises.setdefault(name, []).append(noise.reshape(len(batch[0]), -1))
    # a Monte-Carlo mean adds its own variance across x: take it out (zero for exact means)
    return {name: int((torch.cat(m).var(0) - torch.cat(noises[name]).mean(0) > threshold).sum())
            for name, m in means.items()}


def kl_per_unit(
    obj: Any, data: TensorData | Tensor | tuple, *, batch_size: int = 1000, generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    r"""Per latent unit, :math:`\frac1N \sum_n \mathrm{KL}(q(z_u \mid x_n) \,\|\, p(z_u))` for each
    guide site whose distribution and prior have a registered KL on their base (per-unit)
    distributions, e.g. a diagonal Gaussian guide against a fixed diagonal prior; shape
    (units,). A unit whose KL stays near 0 carries no information about x: posterior collapse."""
    obj = as_pair(obj)
    data = as_data(data)
    sums: dict[str, Tensor] = {}
    with torch.no_grad(), pyro.validation_enabled(False):
        for batch in data.batches(batch_size, shuffle=False, generator=generator):
            model_trace, guide_trace = program.run_pair(obj.model, obj.guide, batch)
            for name, site in guide_trace.nodes.items():
                if site["type"] != "sample" or site["is_observed"] or name not in model_trace.nodes:
                    continue
                q, p = _base(site["fn"]), _base(model_trace.nodes[name]["fn"])
                try:
                    kl = torch.distributions.kl_divergence(q, p)
                except NotImplementedError:
                    continue
                kl = kl.reshape(len(batch[0]), -1).sum(0)
                sums[name] = kl if name not in sums else sums[name] + kl
    return {name: total / len(data) for name, total in sums.items()}


def _base(fn: Any) -> Any:
    """A distribution without its ``Independent`` wrapper (its per-unit form)."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn


def _mean(fn: Any, draws: int = 256) -> tuple[Tensor, Tensor]:
    """``(mean, variance of that mean)``: ``fn.mean`` exactly (variance 0), or, for a
    distribution without one, the mean of ``draws`` samples and its Monte-Carlo variance."""
    try:
        mean = fn.mean
        return mean, torch.zeros_like(mean)
    except NotImplementedError:
        z = fn.sample((draws,))
        return z.mean(0), z.var(0) / draws
