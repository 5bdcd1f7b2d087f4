"""The structure checks of a program, read from its :class:`~ppmodels.program.facts.ProgramFacts`.

Pyro's model/guide checks (``pyro.util.check_model_guide_match``, ``check_site_shape``) as short
errors that name the site and the fix: every guide latent is in the model (or marked
``is_auxiliary``), every model latent is in the guide (or enumerated in the model, where the
objective enumerates), the guide's plates are the model's, a guide factor says whether it is
reparameterized, and every site's batch shape is declared by its plates. The facts were computed
once; checking them is a few set operations, so every call may check.
"""

from __future__ import annotations

import weakref

from ..utils import PPModelsError
from .facts import ProgramFacts, warn_once

_PASSED: "weakref.WeakKeyDictionary[ProgramFacts, set[tuple[str, bool]]]" = weakref.WeakKeyDictionary()

__all__ = ["check_program"]


def check_program(found: ProgramFacts, *, where: str, enumerates: bool = False, sampling_ok: bool = False) -> None:
    """Raise a one-line :class:`PPModelsError` for the first structure problem of ``found``;
    ``enumerates``: the objective sums out model-side enumerated latents (and guide sites
    marked for enumeration), so they need no guide site and no declared shape. Otherwise a
    guide site marked for enumeration is warned about once (it is sampled), unless
    ``sampling_ok`` (evaluation by importance sampling, where drawing it is the method). A
    check that passed is not repeated for the same facts (every draw calls this)."""
    passed = _PASSED.setdefault(found, set())
    if (where, enumerates, sampling_ok) in passed:
        return
    for kind, detail in found.problems:
        if kind == "stray_plate":
            plate, site = detail
            raise PPModelsError(f"{where}: guide plate {plate!r} (at site {site!r}) is not in the model; "
                                "use the same plates in model and guide")
        if kind == "guide_factor":
            raise PPModelsError(f"{where}: guide factor {detail!r} does not say whether it is reparameterized; "
                                "pass pyro.factor(..., has_rsample=True or False) in a guide")
        if kind == "log_prob":
            raise PPModelsError(f"{where}: computing log-densities failed: {detail}")
    _check_sites(set(found.guide_latents), set(found.model_latents), set(found.auxiliary),
                 set(found.model_enumerated) if enumerates else set(), where)
    for kind, detail in found.problems:
        if kind == "event_dim":
            name, m_event, g_event = detail
            raise PPModelsError(f"{where}: site {name!r} has event_dim {m_event} in the model but {g_event} in the "
                                "guide; use the same .to_event(...) on both sides")
        if kind == "shape":
            name, g_shape, m_shape = detail
            raise PPModelsError(f"{where}: site {name!r} has shape {g_shape} in the guide but the model's distribution "
                                f"has shape {m_shape}; make the guide sample the model's shape")
    for name, shape, enumerated in found.shape_errors:
        if enumerates and enumerated:
            continue
        raise PPModelsError(f"{where}: site {name!r} has batch shape {shape} that its plates do not declare; "
                            "wrap its batch dims in pyro.plate or use .to_event()")
    if not enumerates and not sampling_ok:
        for name in found.guide_marked:
            warn_once(found, f"{where}: guide site {name!r} is marked for enumeration, which this objective does "
                             "not do: it is sampled; use objective 'enum' to enumerate it")
    passed.add((where, enumerates, sampling_ok))


def _check_sites(guide_latents: set, model_latents: set, aux: set, enumerated: set, where: str) -> None:
    extra = sorted(guide_latents - model_latents - aux)
    if extra:
        raise PPModelsError(f"{where}: guide site {extra[0]!r} is not in the model; add it to the model, or mark it "
                            "infer={'is_auxiliary': True}")
    missing = sorted(model_latents - guide_latents - enumerated)
    if missing:
        raise PPModelsError(f"{where}: model latent {missing[0]!r} is not sampled by the guide; sample it in the "
                            "guide, or enumerate it in the model (infer={'enumerate': 'parallel'}) and use objective 'enum'")
