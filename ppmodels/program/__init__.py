"""The program layer: everything ppmodels knows about a (model, guide) pair, found out in one place.

- :mod:`.probe`: the one guide-run/model-replay (:func:`run_pair`) and the side-effect-free look
  at a program (:func:`probe`);
- :mod:`.facts`: the facts of a program, computed once per program and input shapes, frozen,
  cached weakly (:func:`facts`);
- :mod:`.checks`: the structure checks, read from the facts (:func:`check_program`);
- :mod:`.params`: parameter discovery (:func:`read_parameters`, :class:`KnownParams`);
- :mod:`.weights`: log weights with Pyro's semantics (:func:`log_weights`);
- :mod:`.attempt`: a try that changes nothing when it fails (:func:`attempt`).
"""

from .attempt import attempt, param_store_snapshot, restore_param_store
from .checks import check_program
from .facts import (AmbiguousPlate, ProgramFacts, facts, find_data_plate, mark_not_vectorizable, mark_vectorizes,
                    remember, trace_numel, vectorizes, warn_once)
from .params import KnownParams, named_parameters, parameters, read_parameters
from .probe import PARTICLE_PLATE, Probe, forked_rng, probe, probe_runs, run_pair
from .weights import LogWeights, draw, log_mean_exp, log_weights, require_reparameterized, terms

__all__ = ["attempt", "param_store_snapshot", "restore_param_store", "check_program", "AmbiguousPlate", "ProgramFacts", "facts", "find_data_plate",
           "mark_not_vectorizable", "mark_vectorizes", "remember", "trace_numel", "vectorizes", "warn_once",
           "KnownParams", "named_parameters", "parameters", "read_parameters", "PARTICLE_PLATE", "probe_runs", "Probe",
           "forked_rng", "probe", "run_pair", "LogWeights", "draw", "log_mean_exp", "log_weights", "require_reparameterized",
           "terms"]
