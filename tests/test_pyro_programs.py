"""Pyro's example programs, written as Pyro writes them, through fit, evaluate and the lab.

The programs are in ``pyro_style_models.py``: a VAE, SS-VAE M2 (unsized plate), a CVAE
(boolean masks, written for one sample), the GMM tutorial (model-side enumeration, AutoDelta),
sparse gamma DEF (per-datapoint guide parameters), a DMM (plate ``z_minibatch``, masks,
``poutine.scale``) and amortized LDA (subsampled documents, enumerated word topics).
"""

import math

import pyro
import pytest
import torch

from ppmodels import evaluate
from ppmodels.analysis import gradient_study
from ppmodels.fit import fit
from ppmodels.objectives import make
from ppmodels.protocol import ModelGuide
from ppmodels.utils import PPModelsError

from pyro_style_models import NAMES, make_programs


def pair(program):
    return ModelGuide(program.model, program.guide, program.name)


def natural(program):
    options = dict(program.natural_options)
    if not program.broadcast_safe:
        options["vectorize_particles"] = False
    return make(program.natural, **options)


@pytest.mark.parametrize("name", NAMES)
def test_trains_with_its_natural_objective(name):
    program = make_programs(0)[name]
    history = fit(pair(program), program.data, objective=natural(program), steps=30, batch_size=16,
                  lr=1e-2, device="cpu", jit=False)
    assert len(history) >= 1 and math.isfinite(history["train_loss"].iloc[-1])


MODEL_SIDE_ENUMERATION = {"gmm_tutorial", "amortized_lda"}  # their local latent has no guide site


@pytest.mark.parametrize("name", NAMES)
def test_trains_with_elbo_at_one_particle(name):
    program = make_programs(0)[name]
    if name in MODEL_SIDE_ENUMERATION:
        with pytest.raises(PPModelsError, match="is not sampled by the guide"):
            fit(pair(program), program.data, objective="elbo", steps=2, batch_size=16, device="cpu")
        return
    history = fit(pair(program), program.data, objective="elbo", steps=30, batch_size=16, lr=1e-2,
                  device="cpu", jit=False)
    assert math.isfinite(history["train_loss"].iloc[-1])


def test_a_program_written_for_one_sample_runs_its_particles_in_a_loop_by_itself():
    """As Pyro's multi-particle ELBOs do: found out once, said once with the cost, then looped."""
    program = make_programs(0)["cvae"]
    pyro.set_rng_seed(0)
    with pytest.warns(UserWarning, match="fails under 3 vectorized particles.*loop.*vectorize_particles=False"):
        found = make("iwae", num_particles=3).loss(program.model, program.guide, *program.data)
    pyro.set_rng_seed(0)
    loop = make("iwae", num_particles=3, vectorize_particles=False)
    assert loop.loss(program.model, program.guide, *program.data) == found  # the same draws as the loop chosen


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("gmm_tutorial", "amortized_lda", "sparse_gamma")])
def test_per_datapoint_programs_are_evaluated(name):
    program = make_programs(0)[name]
    p = pair(program)
    fit(p, program.data, objective=natural(program), steps=10, batch_size=16, device="cpu", jit=False)
    n = len(program.data[0])
    ll = evaluate.log_likelihood(p, program.data, 20, vectorize_particles=program.broadcast_safe)
    el = evaluate.elbo(p, program.data, vectorize_particles=program.broadcast_safe)
    assert ll.shape == (n,) and el.shape == (n,)
    assert torch.isfinite(ll).all()
    # the IS estimate is (up to Monte-Carlo error) above the ELBO on average
    assert ll.mean() > el.mean() - 1.0


@pytest.mark.parametrize("name", ["sparse_gamma", "gmm_tutorial"])
def test_programs_with_global_latents_refuse_per_datapoint_evaluation(name):
    program = make_programs(0)[name]
    with pytest.raises(PPModelsError, match="global latents"):
        evaluate.log_likelihood(pair(program), program.data, 5, vectorize_particles=program.broadcast_safe)


@pytest.mark.parametrize("name", ["vae", "ssvae_m2", "cvae", "sparse_gamma", "dmm"])
def test_programs_enter_the_variance_lab(name):
    program = make_programs(0)[name]
    batch = tuple(t[:8] for t in program.data)
    objectives = ["elbo", make("elbo", num_particles=2, vectorize_particles=program.broadcast_safe)]
    df = gradient_study(program.model, program.guide, *batch, objectives=objectives, num_particles=(1,),
                        replicates=20, exact=None, device="cpu", progress=False)
    assert not df.empty, df.attrs["skipped"]
    assert (df["total_variance"] >= 0).all()
    assert set(df["group"]) <= {"model", "guide"}
