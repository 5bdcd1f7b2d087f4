"""The model protocol: anything with ``model(*batch)`` and ``guide(*batch)`` Pyro programs.

:func:`check_batch` runs the pair once on a batch, with Pyro's validation on, and turns
whatever is wrong — NaN/inf data, data outside the likelihood's support, a wrong shape, a
tensor on the wrong device — into a :class:`PPModelsError` naming the model, the site or
argument, and what was expected. ``fit`` and ``evaluate`` call it before any work starts.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import program
from .program import named_parameters, parameters
from .utils import PPModelsError, first_line, model_name

__all__ = ["ModelGuide", "as_pair", "check_batch", "check_data", "check_rows", "parameters", "named_parameters"]


class ModelGuide:
    """A (model, guide) pair of functions, for users who have two functions and no object."""

    def __init__(self, model: Callable, guide: Callable, name: str | None = None) -> None:
        self.model, self.guide = model, guide
        self.name = name or getattr(model, "__name__", "model")

    def __repr__(self) -> str:
        return f"ModelGuide({self.name})"


def as_pair(obj: Any) -> Any:
    """Check that ``obj`` follows the protocol; return it."""
    missing = [m for m in ("model", "guide") if not callable(getattr(obj, m, None))]
    if missing:
        raise PPModelsError(
            f"{type(obj).__name__} does not follow the model protocol: it needs callable "
            f"`model(*batch)` and `guide(*batch)` methods (missing: {', '.join(missing)}); "
            "wrap two functions with ppmodels.protocol.ModelGuide(model, guide)"
        )
    return obj


def _describe(t: Any) -> str:
    return f"{tuple(t.shape)} {t.dtype} on {t.device}" if torch.is_tensor(t) else type(t).__name__


def check_batch(obj: Any, batch: tuple, device: torch.device | None = None, keep_params: bool = False) -> program.Probe:
    """Probe ``obj``'s pair once on ``batch`` (:func:`ppmodels.program.probe`, with Pyro's
    validation on); raise a clear error on bad input. The probe's facts are remembered
    (:func:`ppmodels.program.remember`), so the program is not run again for them; the probe
    is returned (its traces, and the ``pyro.param`` sites read); ``keep_params``: keep the
    parameters it created (see :func:`ppmodels.program.probe`)."""
    name = model_name(obj)
    as_pair(obj)
    params = parameters(obj)
    for i, t in enumerate(batch):
        if not torch.is_tensor(t):
            continue
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise PPModelsError(f"{name}: batch argument {i} ({_describe(t)}) has {bad} NaN/inf values")
        if params and t.is_floating_point() and t.dtype != params[0].dtype:
            raise PPModelsError(
                f"{name}: batch argument {i} is {t.dtype} but the model's parameters are {params[0].dtype}; "
                f"convert the data with .to({params[0].dtype})"
            )
        want = device or (params[0].device if params else None)
        if want is not None and t.device.type != torch.device(want).type:
            raise PPModelsError(
                f"{name}: batch argument {i} is on {t.device} but the model is on {want}; "
                "move the data (or pass device=...) so both are on one device"
            )
    if params and device is not None and params[0].device.type != device.type:
        raise PPModelsError(f"{name}: parameters are on {params[0].device}, expected {device}")
    try:
        seen = program.probe(obj.model, obj.guide, batch, validate=True, keep_params=keep_params)
        with torch.no_grad():
            for trace in (seen.model_trace, seen.guide_trace):
                for site_name, site in trace.nodes.items():
                    if site["type"] != "sample":
                        continue
                    value = site["value"]
                    if site["is_observed"] and torch.is_tensor(value):
                        support = site["fn"].support
                        if value.is_floating_point() and not torch.isfinite(value).all():
                            raise PPModelsError(f"{name}: observed site {site_name!r} has NaN/inf values")
                        ok = support.check(value)
                        if not bool(ok.all()):
                            raise PPModelsError(
                                f"{name}: observed site {site_name!r} has values outside the "
                                f"likelihood's support (expected {support}); e.g. binarize the "
                                "data for a Bernoulli likelihood"
                            )
                trace.compute_log_prob()
    except PPModelsError as e:
        raise PPModelsError(first_line(e)) from e
    except Exception as e:  # noqa: BLE001 - re-raised with the model's name
        raise PPModelsError(
            f"{name}: running model/guide on a batch of {[_describe(t) for t in batch]} failed: "
            f"{first_line(e, with_type=True)}"
        ) from e
    program.remember(obj.model, obj.guide, batch, {}, seen)
    return seen


#: rows per pass of :func:`check_data`
CHECK_ROWS = 1024


def check_data(obj: Any, data: Any, what: str = "data", device: torch.device | None = None,
               rows: int = CHECK_ROWS, keep_params: bool = False) -> program.Probe:
    """:func:`check_batch` on every row of ``data`` (a ``TensorData``), once. The model runs on
    the first :data:`CHECK_ROWS` rows; when every batch tensor is itself the value of an observed
    site (a VAE's ``obs=x``), the rest is checked tensor-wise against that site's support in one
    vectorized pass (a binarized image tensor needs none: its values are 0 and 1, from
    intensities checked when the ``TensorData`` was made); otherwise the model runs on every
    pass of :data:`CHECK_ROWS` rows. A bad row is located (bisection) and the error names it.
    ``rows``: the rows of the first pass (``fit`` gives its batch size, so that the probe of
    the first pass is the probe of its training batches). Returns the probe of the first pass
    (its facts are remembered); ``keep_params``: that probe keeps the parameters it created."""
    n = len(data)
    with program.forked_rng():
        first = next(data.batches(min(rows, n), shuffle=False))
        seen = check_rows(obj, first, 0, what, device, keep_params)
        if n <= len(first[0]):
            return seen
        observed = program.facts(obj.model, obj.guide, first).observed_arguments  # remembered: no new run
        supports = dict(observed) if observed is not None else None
        if supports is not None:
            if getattr(data, "binarize", None) is not None:  # drawn in {0, 1} from checked intensities:
                supports.pop(0, None)  # every row takes the values the first pass already passed
            if not supports:
                return seen
            full = data.full()
            for i, support in supports.items():
                t = full[i]
                ok = torch.isfinite(t).reshape(n, -1).all(1) if t.is_floating_point() else torch.ones(n, dtype=torch.bool)
                ok = ok & support.check(t).reshape(n, -1).all(1)
                if not bool(ok.all()):
                    row = int((~ok).nonzero()[0])
                    check_rows(obj, tuple(x[row : row + 1] if torch.is_tensor(x) else x for x in full), row, what, device)
                    raise PPModelsError(f"{what}, row {row}: values outside the support of the observed site")
            return seen
        start = 0
        for batch in data.batches(min(CHECK_ROWS, n), shuffle=False):
            check_rows(obj, batch, start, what, device)
            start += len(batch[0])
    return seen


def check_rows(obj: Any, batch: tuple, start: int, what: str, device: torch.device | None,
                keep_params: bool = False) -> program.Probe:
    """:func:`check_batch`; on failure, the error names the first bad row (``start`` + its index)."""
    try:
        return check_batch(obj, batch, device, keep_params)
    except PPModelsError:
        bad = _first_bad_row(obj, batch, device)
        try:
            check_batch(obj, tuple(t[bad : bad + 1] if torch.is_tensor(t) else t for t in batch), device)
        except PPModelsError as e:
            raise PPModelsError(f"{what}, row {start + bad}: {e}") from e
        raise


def _first_bad_row(obj: Any, batch: tuple, device: torch.device | None) -> int:
    """The index of the first row of ``batch`` that fails :func:`check_batch` (bisection)."""
    lo, hi = 0, len(batch[0])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            check_batch(obj, tuple(t[lo:mid] if torch.is_tensor(t) else t for t in batch), device)
            lo = mid
        except PPModelsError:
            hi = mid
    return lo
