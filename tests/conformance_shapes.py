"""A catalog of small Pyro model/guide pairs ("shapes") for the estimator conformance suite.

Each :class:`Shape` is a tiny model/guide pair modelled on the structures exercised by Pyro's own
``tests/infer/test_valid_models.py`` / ``test_gradient.py`` / ``test_enum.py`` (plates, subsampling,
masks, scales, factors, autoguides, discrete and continuous latents, non-broadcast-safe code, ...).
The code is our own.  The flags on every shape were checked by running Pyro 1.9 on it:

* ``reparam``      every guide latent has ``rsample`` (no score-function term anywhere);
* ``discrete``     some guide latent is discrete;
* ``enumerable``   ``TraceEnum_ELBO(max_plate_nesting=...)`` with ``config_enumerate(guide, "parallel")``
                   runs without warnings and its loss equals the expectation of ``Trace_ELBO``'s;
* ``vectorizable`` ``Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=...)`` runs;
* ``max_plate_nesting`` the number of vectorized plate dims the model uses (0 when it has none);
* ``data_plate``   the plate every latent and observed site (model and guide) lives in, else None;
* ``global_latents`` some guide latent lives outside every vectorized plate (sequential plates
                   and python loops do not count as vectorized plates);
* ``subsampled``   some plate is subsampled (``subsample_size=`` or ``subsample=``).

Parameters are created with ``pyro.param(<shape name>.<...>, lambda: torch.tensor(...))`` so that after
``pyro.clear_param_store()`` the first call re-creates identical values.  The autoguides and the
``nn.Linear`` encoder are rebuilt / reset whenever their parameters are absent from the param store,
for the same reason.  Data tensors are tiny and built at import from a fixed ``torch.Generator``.

Notes on Pyro semantics that the suite relies on (Pyro 1.9.x):

* ``ScoreParts.scale_and_mask`` scales and masks ``log_prob`` and ``entropy_term`` but never the
  ``score_function`` term; the subsample scale (size / subsample_size) and ``poutine.scale`` /
  ``poutine.mask`` reach the score-function part of the surrogate only through the (scaled,
  masked) downstream costs ``log_r`` it is multiplied by.
* An unsized ``pyro.plate("data")`` gets ``size == -1``, takes its size from the shapes of the
  distributions inside it, has scale 1 and no subsample site; it cannot take ``subsample=`` or
  ``subsample_size=`` (an ``AssertionError`` in ``SubsampleMessenger._subsample``).
"""

from dataclasses import dataclass, field
from typing import Callable

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.infer import autoguide
from pyro.infer.autoguide.initialization import init_to_mean
from pyro.ops.indexing import Vindex


@dataclass
class Shape:
    name: str                 # short unique id, e.g. "subsample_discrete_local"
    model: Callable
    guide: Callable
    args: tuple = ()          # positional args passed to model and guide (tensors built deterministically)
    kwargs: dict = field(default_factory=dict)
    reparam: bool = True      # every guide latent has rsample (no score-function term)
    discrete: bool = False    # at least one guide latent is discrete
    enumerable: bool = False  # TraceEnum_ELBO with config_enumerate(guide, "parallel") runs and agrees
    vectorizable: bool = True  # Trace_ELBO(num_particles=4, vectorize_particles=True, ...) runs on it
    max_plate_nesting: int = 1
    data_plate: str | None = None  # per-datapoint plate every latent and observation lives in
    global_latents: bool = False   # some guide latent lives outside every vectorized plate
    subsampled: bool = False
    note: str = ""


# --------------------------------------------------------------------------------------------
# Deterministic data (N <= 8 datapoints, <= 3 features)
# --------------------------------------------------------------------------------------------

_GEN = torch.Generator().manual_seed(20240611)
N = 6
B = 3  # subsample size
X1 = torch.randn(N, generator=_GEN)                      # (N,) continuous observations
X3 = torch.randn(N, 3, generator=_GEN)                   # (N, 3) continuous observations
XBIN = (torch.rand(N, generator=_GEN) > 0.5).float()     # (N,) binary observations
COUNTS = torch.poisson(2.0 * torch.ones(N), generator=_GEN)  # (N,) counts
LABELS = torch.randint(0, 3, (N,), generator=_GEN)       # (N,) labels in {0, 1, 2}
SERIES = torch.randn(4, generator=_GEN)                  # (T=4,) time series
DOC_WORDS = torch.randint(0, 3, (3, 4), generator=_GEN)  # (W=3 words, D=4 docs), vocab 3
IDX = torch.tensor([1, 3, 4])                            # explicit subsample indices
OBS_MASK = torch.tensor([True, False, True, True, False, True])
LAT_MASK = torch.tensor([True, True, False, True, False, True])
TOTAL = X1.sum()                                         # a global observation


def _p(name, init, constraint=constraints.real, **kwargs):
    """pyro.param with a deterministic init built from a (nested) python list."""
    return pyro.param(name, lambda: torch.tensor(init), constraint=constraint, **kwargs)


_pos = constraints.positive
_unit = constraints.unit_interval
_simplex = constraints.simplex


def _ramp(n, lo, hi):
    return [lo + (hi - lo) * i / max(n - 1, 1) for i in range(n)]


VALID: list[Shape] = []
INVALID: list[tuple[str, Callable, Callable, tuple, str]] = []


def _add(*shapes):
    VALID.extend(shapes)


# --------------------------------------------------------------------------------------------
# 1-2. global latents
# --------------------------------------------------------------------------------------------

def _global_scalar_model(x):
    loc = _p("global_scalar.m_loc", 0.2)
    z = pyro.sample("z", dist.Normal(loc, 1.0))
    pyro.sample("x", dist.Normal(z, 0.8), obs=x)


def _global_scalar_guide(x):
    loc = _p("global_scalar.q_loc", 0.5)
    scale = _p("global_scalar.q_scale", 0.7, _pos)
    pyro.sample("z", dist.Normal(loc, scale))


def _global_plate_obs_model(x):
    loc = _p("global_plate_obs.m_loc", -0.1)
    z = pyro.sample("z", dist.Normal(loc, 1.5))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _global_plate_obs_guide(x):
    loc = _p("global_plate_obs.q_loc", 0.3)
    scale = _p("global_plate_obs.q_scale", 0.6, _pos)
    pyro.sample("z", dist.Normal(loc, scale))


_add(
    Shape("global_scalar", _global_scalar_model, _global_scalar_guide, (X1[0],),
          max_plate_nesting=0, global_latents=True,
          note="one global Normal latent, scalar observation"),
    Shape("global_plate_obs", _global_plate_obs_model, _global_plate_obs_guide, (X1,),
          global_latents=True, note="global Normal latent, observations in a vectorized plate"),
)


# --------------------------------------------------------------------------------------------
# 3-5. local reparameterized latents, plate names "data", "batch", "z_minibatch"
# --------------------------------------------------------------------------------------------

def _make_local_reparam(shape_name, plate_name):
    def model(x):
        mu = _p(f"{shape_name}.m_mu", 0.1)
        sigma = _p(f"{shape_name}.m_sigma", 0.9, _pos)
        with pyro.plate(plate_name, len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, sigma), obs=x)

    def guide(x):
        loc = _p(f"{shape_name}.q_loc", _ramp(len(x), -0.5, 0.5))
        scale = _p(f"{shape_name}.q_scale", _ramp(len(x), 0.5, 0.8), _pos)
        with pyro.plate(plate_name, len(x)):
            pyro.sample("z", dist.Normal(loc, scale))

    return Shape(shape_name, model, guide, (X1,), data_plate=plate_name,
                 note=f"local Normal latents in plate {plate_name!r}")


_add(
    _make_local_reparam("local_reparam_data", "data"),
    _make_local_reparam("local_reparam_batch", "batch"),
    _make_local_reparam("local_reparam_z_minibatch", "z_minibatch"),
)


# --------------------------------------------------------------------------------------------
# 5. local discrete latents (Bernoulli, Categorical)
# --------------------------------------------------------------------------------------------

def _local_bernoulli_model(x):
    prior = _p("local_bernoulli.m_prior", 0.4, _unit)
    a = _p("local_bernoulli.m_a", -0.5)
    b = _p("local_bernoulli.m_b", 1.0)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(prior))
        pyro.sample("x", dist.Normal(a + b * z, 1.0), obs=x)


def _local_bernoulli_guide(x):
    probs = _p("local_bernoulli.q_probs", _ramp(len(x), 0.3, 0.7), _unit)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(probs))


def _local_categorical_model(x):
    prior = _p("local_categorical.m_prior", [0.3, 0.3, 0.4], _simplex)
    locs = _p("local_categorical.m_locs", [-1.0, 0.0, 1.0])
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(prior))
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def _local_categorical_guide(x):
    logits = _p("local_categorical.q_logits", [[0.1 * i, 0.0, -0.1 * i] for i in range(len(x))])
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Categorical(logits=logits))


_add(
    Shape("local_bernoulli", _local_bernoulli_model, _local_bernoulli_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, data_plate="data",
          note="local Bernoulli latents in a plate (score function)"),
    Shape("local_categorical", _local_categorical_model, _local_categorical_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, data_plate="data",
          note="local Categorical latents indexing a parameter vector"),
)


# --------------------------------------------------------------------------------------------
# 6-8. subsampled plates
# --------------------------------------------------------------------------------------------

def _subsample_reparam_model(x):
    mu = _p("subsample_reparam_local.m_mu", 0.0)
    sigma = _p("subsample_reparam_local.m_sigma", 0.7, _pos)
    with pyro.plate("data", len(x), subsample_size=B) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, sigma), obs=x[idx])


def _subsample_reparam_guide(x):
    loc = _p("subsample_reparam_local.q_loc", _ramp(len(x), -1.0, 1.0))
    scale = _p("subsample_reparam_local.q_scale", _ramp(len(x), 0.4, 0.9), _pos)
    with pyro.plate("data", len(x), subsample_size=B) as idx:
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]))


def _subsample_discrete_model(x):
    prior = _p("subsample_discrete_local.m_prior", 0.35, _unit)
    locs = _p("subsample_discrete_local.m_locs", [-0.8, 0.9])
    with pyro.plate("data", len(x), subsample_size=B) as idx:
        z = pyro.sample("z", dist.Bernoulli(prior))
        pyro.sample("x", dist.Normal(locs[0] + (locs[1] - locs[0]) * z, 1.0), obs=x[idx])


def _subsample_discrete_guide(x):
    probs = _p("subsample_discrete_local.q_probs", _ramp(len(x), 0.2, 0.8), _unit)
    with pyro.plate("data", len(x), subsample_size=B) as idx:
        pyro.sample("z", dist.Bernoulli(probs[idx]))


def _subsample_categorical_model(x):
    prior = _p("subsample_categorical_local.m_prior", [0.5, 0.25, 0.25], _simplex)
    locs = _p("subsample_categorical_local.m_locs", [-1.0, 0.2, 1.1])
    with pyro.plate("data", len(x), subsample_size=B) as idx:
        z = pyro.sample("z", dist.Categorical(prior))
        pyro.sample("x", dist.Normal(locs[z], 0.9), obs=x[idx])


def _subsample_categorical_guide(x):
    probs = _p("subsample_categorical_local.q_probs",
               [[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.3, 0.4, 0.3],
                [0.1, 0.1, 0.8], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]], _simplex)
    with pyro.plate("data", len(x), subsample_size=B) as idx:
        pyro.sample("z", dist.Categorical(probs[idx]))


def _subsample_index_model(x):
    mu = _p("subsample_explicit_index.m_mu", 0.3)
    with pyro.plate("data", len(x), subsample=IDX) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


def _subsample_index_guide(x):
    loc = _p("subsample_explicit_index.q_loc", _ramp(len(x), 0.5, -0.5))
    scale = _p("subsample_explicit_index.q_scale", _ramp(len(x), 0.3, 0.6), _pos)
    with pyro.plate("data", len(x), subsample=IDX) as idx:
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]))


_add(
    Shape("subsample_reparam_local", _subsample_reparam_model, _subsample_reparam_guide, (X1,),
          data_plate="data", subsampled=True,
          note=f"plate('data', {N}, subsample_size={B}), reparameterized local latents"),
    Shape("subsample_discrete_local", _subsample_discrete_model, _subsample_discrete_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, data_plate="data", subsampled=True,
          note="subsampled plate with Bernoulli locals: Pyro never scales the score function "
               "itself, only the log_r costs multiplying it"),
    Shape("subsample_categorical_local", _subsample_categorical_model, _subsample_categorical_guide,
          (X1,), reparam=False, discrete=True, enumerable=True, data_plate="data", subsampled=True,
          note="subsampled plate with Categorical locals"),
    Shape("subsample_explicit_index", _subsample_index_model, _subsample_index_guide, (X1,),
          data_plate="data", subsampled=True,
          note="plate('data', N, subsample=<fixed index tensor>); scale N/len(subsample)"),
)


# --------------------------------------------------------------------------------------------
# 9. unsized plate (size inferred from the distributions' shapes; scale 1)
# --------------------------------------------------------------------------------------------

def _unsized_model(x):
    mu = _p("unsized_plate.m_mu", -0.2)
    with pyro.plate("data"):
        z = pyro.sample("z", dist.Normal(mu, 1.0).expand([len(x)]))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _unsized_guide(x):
    loc = _p("unsized_plate.q_loc", _ramp(len(x), -0.3, 0.3))
    scale = _p("unsized_plate.q_scale", _ramp(len(x), 0.6, 0.9), _pos)
    with pyro.plate("data"):
        pyro.sample("z", dist.Normal(loc, scale))


_add(Shape("unsized_plate", _unsized_model, _unsized_guide, (X1,), data_plate="data",
           note="pyro.plate('data') without size: size -1, shape from the distributions, scale 1; "
                "unsized plates cannot be subsampled"))


# --------------------------------------------------------------------------------------------
# 10-11. sequential plates
# --------------------------------------------------------------------------------------------

def _seq_model(x):
    mu = _p("seq_plate_local.m_mu", 0.1)
    for i in pyro.plate("data", len(x)):
        z = pyro.sample(f"z_{i}", dist.Normal(mu, 1.0))
        pyro.sample(f"x_{i}", dist.Normal(z, 0.8), obs=x[i])


def _seq_guide(x):
    loc = _p("seq_plate_local.q_loc", _ramp(len(x), -0.4, 0.4))
    scale = _p("seq_plate_local.q_scale", _ramp(len(x), 0.5, 0.7), _pos)
    for i in pyro.plate("data", len(x)):
        pyro.sample(f"z_{i}", dist.Normal(loc[i], scale[i]))


def _seq_sub_model(x):
    prior = _p("seq_plate_subsample.m_prior", 0.45, _unit)
    locs = _p("seq_plate_subsample.m_locs", [-0.5, 0.7])
    for i in pyro.plate("data", len(x), subsample_size=B):
        z = pyro.sample(f"z_{i}", dist.Bernoulli(prior))
        pyro.sample(f"x_{i}", dist.Normal(locs[0] + (locs[1] - locs[0]) * z, 1.0), obs=x[i])


def _seq_sub_guide(x):
    probs = _p("seq_plate_subsample.q_probs", _ramp(len(x), 0.25, 0.75), _unit)
    for i in pyro.plate("data", len(x), subsample_size=B):
        pyro.sample(f"z_{i}", dist.Bernoulli(probs[i]))


def _seq_sub_reparam_model(x):
    mu = _p("seq_plate_subsample_reparam.m_mu", 0.2)
    for i in pyro.plate("data", len(x), subsample_size=B):
        z = pyro.sample(f"z_{i}", dist.Normal(mu, 1.0))
        pyro.sample(f"x_{i}", dist.Normal(z, 0.6), obs=x[i])


def _seq_sub_reparam_guide(x):
    loc = _p("seq_plate_subsample_reparam.q_loc", _ramp(len(x), 0.4, -0.4))
    scale = _p("seq_plate_subsample_reparam.q_scale", _ramp(len(x), 0.5, 0.8), _pos)
    for i in pyro.plate("data", len(x), subsample_size=B):
        pyro.sample(f"z_{i}", dist.Normal(loc[i], scale[i]))


_add(
    Shape("seq_plate_local", _seq_model, _seq_guide, (X1,), max_plate_nesting=0,
          global_latents=True,
          note="sequential plate `for i in pyro.plate('data', N)`; sites z_i / x_i are not in any "
               "vectorized plate (so global_latents=True, data_plate=None)"),
    Shape("seq_plate_subsample", _seq_sub_model, _seq_sub_guide, (X1,), max_plate_nesting=0,
          reparam=False, discrete=True, enumerable=True, global_latents=True, subsampled=True,
          note="sequential plate with subsample_size and Bernoulli locals"),
    Shape("seq_plate_subsample_reparam", _seq_sub_reparam_model, _seq_sub_reparam_guide, (X1,),
          max_plate_nesting=0, global_latents=True, subsampled=True,
          note="sequential plate with subsample_size and Normal locals"),
)


# --------------------------------------------------------------------------------------------
# 12-13. nested and non-nested plates
# --------------------------------------------------------------------------------------------

def _nested_model(x):
    mu = _p("nested_plates_local.m_mu", 0.0)
    with pyro.plate("data", x.shape[0], dim=-2):
        u = pyro.sample("u", dist.Normal(mu, 1.0))
        with pyro.plate("features", x.shape[1], dim=-1):
            z = pyro.sample("z", dist.Normal(u, 0.7))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def _nested_guide(x):
    u_loc = _p("nested_plates_local.q_u_loc", [[v] for v in _ramp(x.shape[0], -0.2, 0.2)])
    z_loc = _p("nested_plates_local.q_z_loc", [[0.1 * (i - j) for j in range(x.shape[1])]
                                               for i in range(x.shape[0])])
    z_scale = _p("nested_plates_local.q_z_scale", 0.5, _pos)
    with pyro.plate("data", x.shape[0], dim=-2):
        pyro.sample("u", dist.Normal(u_loc, 0.8))
        with pyro.plate("features", x.shape[1], dim=-1):
            pyro.sample("z", dist.Normal(z_loc, z_scale))


def _two_plates_model(xa, xb):
    mu = _p("two_plates.m_mu", [0.1, -0.1])
    with pyro.plate("a_plate", len(xa)):
        za = pyro.sample("za", dist.Normal(mu[0], 1.0))
        pyro.sample("xa", dist.Normal(za, 0.7), obs=xa)
    with pyro.plate("b_plate", len(xb)):
        zb = pyro.sample("zb", dist.Normal(mu[1], 1.0))
        pyro.sample("xb", dist.Normal(zb, 0.7), obs=xb)


def _two_plates_guide(xa, xb):
    la = _p("two_plates.q_loc_a", _ramp(len(xa), -0.3, 0.3))
    lb = _p("two_plates.q_loc_b", _ramp(len(xb), 0.3, -0.3))
    s = _p("two_plates.q_scale", [0.6, 0.8], _pos)
    with pyro.plate("a_plate", len(xa)):
        pyro.sample("za", dist.Normal(la, s[0]))
    with pyro.plate("b_plate", len(xb)):
        pyro.sample("zb", dist.Normal(lb, s[1]))


_add(
    Shape("nested_plates_local", _nested_model, _nested_guide, (X3,), max_plate_nesting=2,
          data_plate="data",
          note="data (dim -2) x features (dim -1); u in the outer plate, z in the inner one"),
    Shape("two_plates", _two_plates_model, _two_plates_guide, (X1[:4], X3[:3, 0]),
          note="two non-nested plates of sizes 4 and 3, latents in each"),
)


# --------------------------------------------------------------------------------------------
# 14-15. hierarchical; global observation depending on every local latent
# --------------------------------------------------------------------------------------------

def _hier_model(x):
    m = _p("hierarchical.m_loc", 0.0)
    g = pyro.sample("g", dist.Normal(m, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(g, 0.8))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def _hier_guide(x):
    g_loc = _p("hierarchical.q_g_loc", 0.2)
    g_scale = _p("hierarchical.q_g_scale", 0.5, _pos)
    z_loc = _p("hierarchical.q_z_loc", _ramp(len(x), -0.5, 0.5))
    z_w = _p("hierarchical.q_z_w", 0.3)
    g = pyro.sample("g", dist.Normal(g_loc, g_scale))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(z_loc + z_w * g, 0.4))


def _gsum_reparam_model(x, total):
    mu = _p("global_obs_sum_reparam.m_mu", 0.1)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.9), obs=x)
    pyro.sample("total", dist.Normal(z.sum(-1, keepdim=True), 1.0), obs=total.reshape(1))


def _gsum_reparam_guide(x, total):
    loc = _p("global_obs_sum_reparam.q_loc", _ramp(len(x), -0.2, 0.4))
    scale = _p("global_obs_sum_reparam.q_scale", 0.6, _pos)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, scale))


def _gsum_discrete_model(x, total):
    prior = _p("global_obs_sum_discrete.m_prior", 0.5, _unit)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(prior))
        pyro.sample("x", dist.Normal(z - 0.5, 1.0), obs=x)
    pyro.sample("total", dist.Normal(z.sum(-1, keepdim=True), 1.5), obs=total.reshape(1))


def _gsum_discrete_guide(x, total):
    probs = _p("global_obs_sum_discrete.q_probs", _ramp(len(x), 0.3, 0.6), _unit)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(probs))


_add(
    Shape("hierarchical", _hier_model, _hier_guide, (X1,), global_latents=True,
          note="global g -> local z -> obs; the guide's z depends on g"),
    Shape("global_obs_sum_reparam", _gsum_reparam_model, _gsum_reparam_guide, (X1, TOTAL),
          note="a global observation on sum_n z_n, outside the plate (reparameterized locals)"),
    Shape("global_obs_sum_discrete", _gsum_discrete_model, _gsum_discrete_guide, (X1, TOTAL),
          reparam=False, discrete=True, enumerable=False,
          note="a global observation on sum_n z_n of Bernoulli locals; Trace_ELBO's plate "
               "Rao-Blackwellization must keep the global cost; TraceEnum refuses (site outside "
               "the plate depends on enumerated plate sites)"),
)


# --------------------------------------------------------------------------------------------
# 16-19. masks and scales
# --------------------------------------------------------------------------------------------

def _mask_reparam_model(x):
    mu = _p("mask_latent_reparam.m_mu", 0.0)
    with pyro.plate("data", len(x)):
        with poutine.mask(mask=LAT_MASK):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.7), obs=x)


def _mask_reparam_guide(x):
    loc = _p("mask_latent_reparam.q_loc", _ramp(len(x), -0.6, 0.6))
    with pyro.plate("data", len(x)):
        with poutine.mask(mask=LAT_MASK):
            pyro.sample("z", dist.Normal(loc, 0.5))


def _mask_discrete_model(x):
    prior = _p("mask_latent_discrete.m_prior", 0.4, _unit)
    with pyro.plate("data", len(x)):
        with poutine.mask(mask=LAT_MASK):
            z = pyro.sample("z", dist.Bernoulli(prior))
        pyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x)


def _mask_discrete_guide(x):
    probs = _p("mask_latent_discrete.q_probs", _ramp(len(x), 0.3, 0.7), _unit)
    with pyro.plate("data", len(x)):
        with poutine.mask(mask=LAT_MASK):
            pyro.sample("z", dist.Bernoulli(probs))


def _scale_model(x):
    m = _p("poutine_scale.m_loc", 0.0)
    with poutine.scale(scale=0.5):
        z = pyro.sample("z", dist.Normal(m, 1.0))
    with poutine.scale(scale=2.0):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _scale_guide(x):
    loc = _p("poutine_scale.q_loc", 0.1)
    scale = _p("poutine_scale.q_scale", 0.6, _pos)
    with poutine.scale(scale=0.5):
        pyro.sample("z", dist.Normal(loc, scale))


def _scale_discrete_model(x):
    prior = _p("poutine_scale_discrete.m_prior", 0.5, _unit)
    with pyro.plate("data", len(x)):
        with poutine.scale(scale=3.0):
            z = pyro.sample("z", dist.Bernoulli(prior))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _scale_discrete_guide(x):
    probs = _p("poutine_scale_discrete.q_probs", _ramp(len(x), 0.2, 0.6), _unit)
    with pyro.plate("data", len(x)):
        with poutine.scale(scale=3.0):
            pyro.sample("z", dist.Bernoulli(probs))


def _obs_mask_model(x):
    mu = _p("obs_mask.m_mu", 0.1)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.8), obs=x, obs_mask=OBS_MASK)


def _obs_mask_guide(x):
    loc = _p("obs_mask.q_loc", _ramp(len(x), -0.3, 0.3))
    miss_loc = _p("obs_mask.q_miss_loc", 0.0)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, 0.7))
        with poutine.mask(mask=~OBS_MASK):
            pyro.sample("x_unobserved", dist.Normal(miss_loc, 1.0))


def _dist_mask_model(x):
    mu = _p("dist_mask.m_mu", 0.0)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.6).mask(OBS_MASK), obs=x)


def _dist_mask_guide(x):
    loc = _p("dist_mask.q_loc", _ramp(len(x), 0.2, -0.2))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, 0.8))


def _dist_mask_discrete_model(x):
    prior = _p("dist_mask_discrete.m_prior", 0.6, _unit)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(prior).mask(LAT_MASK))
        pyro.sample("x", dist.Normal(z, 1.0).mask(OBS_MASK), obs=x)


def _dist_mask_discrete_guide(x):
    probs = _p("dist_mask_discrete.q_probs", _ramp(len(x), 0.4, 0.6), _unit)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(probs).mask(LAT_MASK))


_add(
    Shape("mask_latent_reparam", _mask_reparam_model, _mask_reparam_guide, (X1,),
          data_plate="data",
          note="poutine.mask on latent z (model and guide); the masked z still feeds obs x"),
    Shape("mask_latent_discrete", _mask_discrete_model, _mask_discrete_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, data_plate="data",
          note="poutine.mask on Bernoulli z (model and guide) feeding obs x; masked z are still "
               "sampled from q and still drive x, Pyro masks only their log p - log q (not the "
               "score function)"),
    Shape("poutine_scale", _scale_model, _scale_guide, (X1,), global_latents=True,
          note="poutine.scale(0.5) on the global latent (model and guide), scale(2) on obs"),
    Shape("poutine_scale_discrete", _scale_discrete_model, _scale_discrete_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, data_plate="data",
          note="poutine.scale(3) on Bernoulli locals and obs"),
    Shape("obs_mask", _obs_mask_model, _obs_mask_guide, (X1,), data_plate="data",
          note="obs_mask= on the observed site: adds latent x_unobserved (masked by ~obs_mask), "
               "which the guide covers; x_observed is observed, x is a deterministic site"),
    Shape("dist_mask", _dist_mask_model, _dist_mask_guide, (X1,), data_plate="data",
          note="Distribution.mask(m) on the observation"),
    Shape("dist_mask_discrete", _dist_mask_discrete_model, _dist_mask_discrete_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, data_plate="data",
          note="Distribution.mask(m) on Bernoulli latents (model and guide) and on obs; masked "
               "latents still feed obs"),
)


# --------------------------------------------------------------------------------------------
# 20-21. factors
# --------------------------------------------------------------------------------------------

def _guide_factor_model(x):
    mu = _p("guide_factor.m_mu", 0.0)
    z = pyro.sample("z", dist.Normal(mu, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _guide_factor_guide(x):
    loc = _p("guide_factor.q_loc", 0.2)
    scale = _p("guide_factor.q_scale", 0.5, _pos)
    z = pyro.sample("z", dist.Normal(loc, scale))
    pyro.factor("guide_penalty", -0.1 * (z - loc) ** 2, has_rsample=True)


def _model_factor_model(x):
    mu = _p("model_factor.m_mu", 0.0)
    z = pyro.sample("z", dist.Normal(mu, 1.0))
    pyro.factor("global_penalty", -0.5 * z ** 2)
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        pyro.factor("local_penalty", -0.1 * (x - z).abs())


def _model_factor_guide(x):
    loc = _p("model_factor.q_loc", -0.1)
    scale = _p("model_factor.q_scale", 0.7, _pos)
    pyro.sample("z", dist.Normal(loc, scale))


def _model_factor_discrete_model(x):
    prior = _p("model_factor_discrete.m_prior", 0.5, _unit)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(prior))
        pyro.factor("local_penalty", -0.3 * z * x ** 2)


def _model_factor_discrete_guide(x):
    probs = _p("model_factor_discrete.q_probs", _ramp(len(x), 0.35, 0.65), _unit)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(probs))


_add(
    Shape("guide_factor", _guide_factor_model, _guide_factor_guide, (X1,), global_latents=True,
          note="guide-side pyro.factor(..., has_rsample=True) (an auxiliary guide site)"),
    Shape("model_factor", _model_factor_model, _model_factor_guide, (X1,), global_latents=True,
          note="model-side pyro.factor outside and inside the plate"),
    Shape("model_factor_discrete", _model_factor_discrete_model, _model_factor_discrete_guide,
          (X1,), reparam=False, discrete=True, enumerable=True, data_plate="data",
          note="model-side pyro.factor on Bernoulli locals (the only likelihood term)"),
)


# --------------------------------------------------------------------------------------------
# 22-25. Delta guides and autoguides
# --------------------------------------------------------------------------------------------

def _delta_model(x):
    mu = _p("delta_guide_map.m_mu", 0.0)
    z = pyro.sample("z", dist.Normal(mu, 2.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _delta_guide(x):
    z_map = _p("delta_guide_map.q_z", 0.3)
    pyro.sample("z", dist.Delta(z_map))


def _delta_local_model(x):
    mu = _p("delta_local_map.m_mu", 0.0)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def _delta_local_guide(x):
    z_map = _p("delta_local_map.q_z", _ramp(len(x), -0.5, 0.5))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Delta(z_map))


class _FreshAutoGuide:
    """Calls an autoguide built by ``make``; rebuilds it (deterministic init) whenever none of
    its parameters is in the param store, e.g. after ``pyro.clear_param_store()``."""

    def __init__(self, name, make):
        self.name = name
        self.__name__ = name
        self._make = make
        self._guide = None

    def __call__(self, *args, **kwargs):
        prefix = self.name + "."
        if self._guide is None or not any(k.startswith(prefix) for k in pyro.get_param_store().keys()):
            guide = self._make()
            guide._pyro_name = self.name  # param names "<shape name>.locs.z", ... unique per shape
            self._guide = guide
        return self._guide(*args, **kwargs)


def _auto_local_model(x):
    mu = _p("auto_normal_local.m_mu", 0.2)
    sigma = _p("auto_normal_local.m_sigma", 0.8, _pos)
    g = pyro.sample("g", dist.Normal(mu, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(g, 1.0))
        pyro.sample("x", dist.Normal(z, sigma), obs=x)


def _auto_delta_model(x):
    mu = _p("auto_delta.m_mu", -0.2)
    g = pyro.sample("g", dist.Normal(mu, 1.0))
    s = pyro.sample("s", dist.LogNormal(0.0, 0.5))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(g, 1.0))
        pyro.sample("x", dist.Normal(z, s), obs=x)


def _auto_diag_model(x):
    mu = _p("auto_diagonal_normal.m_mu", [0.0, 0.0])
    w = pyro.sample("w", dist.Normal(mu, 1.0).to_event(1))
    s = pyro.sample("s", dist.Gamma(2.0, 2.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(w[..., 0] + w[..., 1] * x[:, 0], s), obs=x[:, 1])


_add(
    Shape("delta_guide_map", _delta_model, _delta_guide, (X1,), global_latents=True,
          note="Delta (MAP) guide for a global latent"),
    Shape("delta_local_map", _delta_local_model, _delta_local_guide, (X1,), data_plate="data",
          note="Delta (MAP) guide for local latents"),
    Shape("auto_normal_local", _auto_local_model,
          _FreshAutoGuide("auto_normal_local",
                          lambda: autoguide.AutoNormal(_auto_local_model, init_loc_fn=init_to_mean,
                                                       init_scale=0.5)),
          (X1,), global_latents=True,
          note="AutoNormal(init_to_mean) on a model with a global and local latents"),
    Shape("auto_delta", _auto_delta_model,
          _FreshAutoGuide("auto_delta",
                          lambda: autoguide.AutoDelta(_auto_delta_model, init_loc_fn=init_to_mean)),
          (X1,), global_latents=True,
          note="AutoDelta(init_to_mean) on a model with global (one positive) and local latents"),
    Shape("auto_diagonal_normal", _auto_diag_model,
          _FreshAutoGuide("auto_diagonal_normal",
                          lambda: autoguide.AutoDiagonalNormal(_auto_diag_model,
                                                               init_loc_fn=init_to_mean,
                                                               init_scale=0.3)),
          (X3[:, :2],), global_latents=True,
          note="AutoDiagonalNormal on a global-only regression model (vector + Gamma latents)"),
)


# --------------------------------------------------------------------------------------------
# 26. non-mean-field guides
# --------------------------------------------------------------------------------------------

def _nmf_cont_model(x):
    m = _p("non_mean_field_continuous.m_loc", 0.0)
    a = pyro.sample("a", dist.Normal(m, 1.0))
    b = pyro.sample("b", dist.Normal(a, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(b, 1.0), obs=x)


def _nmf_cont_guide(x):
    qa = _p("non_mean_field_continuous.q_a", [0.1, 0.6])
    qb = _p("non_mean_field_continuous.q_b", [0.2, 0.5, 0.4])
    a = pyro.sample("a", dist.Normal(qa[0], qa[1].abs() + 0.1))
    pyro.sample("b", dist.Normal(qb[0] + qb[1] * a, qb[2].abs() + 0.1))


def _nmf_disc_model(x):
    pc = _p("non_mean_field_discrete.m_pc", 0.5, _unit)
    pd = _p("non_mean_field_discrete.m_pd", [0.3, 0.7], _unit)
    c = pyro.sample("c", dist.Bernoulli(pc))
    with pyro.plate("data", len(x)):
        d = pyro.sample("d", dist.Bernoulli(pd[0] + (pd[1] - pd[0]) * c))
        pyro.sample("x", dist.Normal(d + 0.5 * c, 1.0), obs=x)


def _nmf_disc_guide(x):
    qc = _p("non_mean_field_discrete.q_c", 0.4, _unit)
    qd0 = _p("non_mean_field_discrete.q_d0", _ramp(len(x), 0.2, 0.6), _unit)
    qd1 = _p("non_mean_field_discrete.q_d1", _ramp(len(x), 0.7, 0.4), _unit)
    c = pyro.sample("c", dist.Bernoulli(qc))
    with pyro.plate("data", len(x)):
        pyro.sample("d", dist.Bernoulli(qd0 + (qd1 - qd0) * c))


def _disc_cont_model(x):
    prior = _p("discrete_cont_child.m_prior", 0.5, _unit)
    locs = _p("discrete_cont_child.m_locs", [-1.0, 1.0])
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Bernoulli(prior))
        z = pyro.sample("z", dist.Normal(locs[0] + (locs[1] - locs[0]) * c, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def _disc_cont_guide(x):
    probs = _p("discrete_cont_child.q_probs", _ramp(len(x), 0.3, 0.7), _unit)
    g = _p("discrete_cont_child.q_g", [-0.5, 1.0])
    scale = _p("discrete_cont_child.q_scale", 0.6, _pos)
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Bernoulli(probs))
        pyro.sample("z", dist.Normal(g[0] + g[1] * c, scale))


_add(
    Shape("non_mean_field_continuous", _nmf_cont_model, _nmf_cont_guide, (X1,),
          global_latents=True, note="guide b depends on guide a (continuous)"),
    Shape("non_mean_field_discrete", _nmf_disc_model, _nmf_disc_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, global_latents=True,
          note="guide local Bernoulli d depends on the global Bernoulli c"),
    Shape("discrete_cont_child", _disc_cont_model, _disc_cont_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, data_plate="data",
          note="local Bernoulli c with a continuous child z whose guide depends on c"),
)


# --------------------------------------------------------------------------------------------
# 27-28. multivariate / event / non-Gaussian reparameterized latents
# --------------------------------------------------------------------------------------------

def _mvn_model(x):
    loc = _p("mvn_latent.m_loc", [0.0, 0.0])
    z = pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=torch.eye(2)))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def _mvn_guide(x):
    loc = _p("mvn_latent.q_loc", [0.2, -0.1])
    tril = _p("mvn_latent.q_tril", [[0.7, 0.0], [0.2, 0.6]], constraints.lower_cholesky)
    pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril))


def _to_event_model(x):
    mu = _p("to_event_local.m_mu", [0.0, 0.1, -0.1])
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 0.6).to_event(1), obs=x)


def _to_event_guide(x):
    loc = _p("to_event_local.q_loc", [[0.1 * (i - j) for j in range(x.shape[1])]
                                      for i in range(x.shape[0])])
    scale = _p("to_event_local.q_scale", [0.5, 0.6, 0.7], _pos)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def _onehot_model(x):
    prior = _p("onehot_categorical_local.m_prior", [0.2, 0.5, 0.3], _simplex)
    locs = _p("onehot_categorical_local.m_locs", [-1.0, 0.0, 1.0])
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.OneHotCategorical(prior))
        pyro.sample("x", dist.Normal((z * locs).sum(-1), 1.0), obs=x)


def _onehot_guide(x):
    logits = _p("onehot_categorical_local.q_logits",
                [[0.2 * i, 0.1, -0.2 * i] for i in range(len(x))])
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.OneHotCategorical(logits=logits))


def _gamma_poisson_model(counts):
    a = _p("gamma_poisson.m_conc", 2.0, _pos)
    rate = pyro.sample("rate", dist.Gamma(a, 1.0))
    with pyro.plate("data", len(counts)):
        pyro.sample("counts", dist.Poisson(rate), obs=counts)


def _gamma_poisson_guide(counts):
    qa = _p("gamma_poisson.q_conc", 3.0, _pos)
    qb = _p("gamma_poisson.q_rate", 1.5, _pos)
    pyro.sample("rate", dist.Gamma(qa, qb))


def _dirichlet_cat_model(labels):
    conc = _p("dirichlet_categorical.m_conc", [1.0, 1.0, 1.0], _pos)
    probs = pyro.sample("probs", dist.Dirichlet(conc))
    with pyro.plate("data", len(labels)):
        pyro.sample("labels", dist.Categorical(probs), obs=labels)


def _dirichlet_cat_guide(labels):
    qc = _p("dirichlet_categorical.q_conc", [2.0, 1.5, 2.5], _pos)
    pyro.sample("probs", dist.Dirichlet(qc))


def _beta_bern_model(y):
    ab = _p("beta_bernoulli.m_ab", [1.5, 1.5], _pos)
    p = pyro.sample("p", dist.Beta(ab[0], ab[1]))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(p), obs=y)


def _beta_bern_guide(y):
    qab = _p("beta_bernoulli.q_ab", [2.0, 3.0], _pos)
    pyro.sample("p", dist.Beta(qab[0], qab[1]))


def _local_gamma_model(counts):
    a = _p("local_gamma_poisson.m_conc", 2.0, _pos)
    with pyro.plate("data", len(counts)):
        rate = pyro.sample("rate", dist.Gamma(a, 1.0))
        pyro.sample("counts", dist.Poisson(rate), obs=counts)


def _local_gamma_guide(counts):
    qa = _p("local_gamma_poisson.q_conc", _ramp(len(counts), 1.5, 3.0), _pos)
    qb = _p("local_gamma_poisson.q_rate", 1.2, _pos)
    with pyro.plate("data", len(counts)):
        pyro.sample("rate", dist.Gamma(qa, qb))


def _lognormal_model(x):
    m = _p("lognormal_local.m_loc", 0.0)
    with pyro.plate("data", len(x)):
        s = pyro.sample("s", dist.LogNormal(m, 0.5))
        pyro.sample("x", dist.Normal(0.0, s), obs=x)


def _lognormal_guide(x):
    loc = _p("lognormal_local.q_loc", _ramp(len(x), -0.3, 0.3))
    base = dist.Normal(loc, 0.4)
    with pyro.plate("data", len(x)):
        pyro.sample("s", dist.TransformedDistribution(base, [dist.transforms.ExpTransform()]))


_add(
    Shape("mvn_latent", _mvn_model, _mvn_guide, (X3[:, :2],), global_latents=True,
          note="MultivariateNormal global latent (lower-Cholesky param), to_event(1) obs"),
    Shape("to_event_local", _to_event_model, _to_event_guide, (X3,), data_plate="data",
          note="local vector latents Normal(...).to_event(1)"),
    Shape("onehot_categorical_local", _onehot_model, _onehot_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, data_plate="data",
          note="local OneHotCategorical latents (event_dim 1)"),
    Shape("gamma_poisson", _gamma_poisson_model, _gamma_poisson_guide, (COUNTS,),
          global_latents=True, note="Gamma latent (reparameterized), Poisson obs"),
    Shape("dirichlet_categorical", _dirichlet_cat_model, _dirichlet_cat_guide, (LABELS,),
          global_latents=True, note="Dirichlet latent, Categorical obs"),
    Shape("beta_bernoulli", _beta_bern_model, _beta_bern_guide, (XBIN,), global_latents=True,
          note="Beta latent, Bernoulli obs"),
    Shape("local_gamma_poisson", _local_gamma_model, _local_gamma_guide, (COUNTS,),
          data_plate="data", note="local Gamma latents, Poisson obs"),
    Shape("lognormal_local", _lognormal_model, _lognormal_guide, (X1,), data_plate="data",
          note="local LogNormal latents; the guide is a TransformedDistribution(Normal, Exp)"),
)


# --------------------------------------------------------------------------------------------
# 29. models written for one sample that are not broadcast-safe
# --------------------------------------------------------------------------------------------

def _nbs_discrete_model(x):
    prior = _p("not_broadcast_safe_discrete.m_prior", [0.2, 0.5, 0.3], _simplex)
    locs = _p("not_broadcast_safe_discrete.m_locs", [-1.0, 0.0, 1.0])
    c = pyro.sample("c", dist.Categorical(prior))
    loc = locs[int(c)]  # python int: only valid for a single, non-batched sample
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)


def _nbs_discrete_guide(x):
    probs = _p("not_broadcast_safe_discrete.q_probs", [0.3, 0.3, 0.4], _simplex)
    pyro.sample("c", dist.Categorical(probs))


def _nbs_reparam_model(x):
    mu = _p("not_broadcast_safe_reparam.m_mu", [0.0, 0.0])
    w = pyro.sample("w", dist.Normal(mu, 1.0).to_event(1))
    intercept, slope = w  # unpacks dim 0: only valid for a single, non-batched sample
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(intercept + slope * x[:, 0], 0.8), obs=x[:, 1])


def _nbs_reparam_guide(x):
    loc = _p("not_broadcast_safe_reparam.q_loc", [0.1, -0.1])
    scale = _p("not_broadcast_safe_reparam.q_scale", [0.5, 0.5], _pos)
    pyro.sample("w", dist.Normal(loc, scale).to_event(1))


def _nbs_view_model(x):
    mu = _p("not_broadcast_safe_view.m_mu", 0.0)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
    flat = z.view(-1)  # flattening a batched z would mix particles and data
    pyro.sample("x", dist.Normal(flat, 0.7).to_event(1), obs=x[:, 0])


def _nbs_view_guide(x):
    loc = _p("not_broadcast_safe_view.q_loc", _ramp(x.shape[0], -0.2, 0.2))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, 0.6))


_add(
    Shape("not_broadcast_safe_discrete", _nbs_discrete_model, _nbs_discrete_guide, (X1,),
          reparam=False, discrete=True, enumerable=False, vectorizable=False,
          global_latents=True, note="locs[int(c)] with a scalar Categorical c"),
    Shape("not_broadcast_safe_reparam", _nbs_reparam_model, _nbs_reparam_guide, (X3[:, :2],),
          vectorizable=False, global_latents=True,
          note="`intercept, slope = w` unpacks a (2,) latent along dim 0"),
    Shape("not_broadcast_safe_view", _nbs_view_model, _nbs_view_guide, (X3[:, :2],),
          vectorizable=False,
          note="z.view(-1) of local latents feeding an event-shaped obs outside the plate"),
)


# --------------------------------------------------------------------------------------------
# 30-31. explicit plate dims; nested subsampled plates; plate reuse; ragged
# --------------------------------------------------------------------------------------------

def _explicit_dims_model(y):
    mu = _p("explicit_dims.m_mu", [0.0, 0.0])
    rows = pyro.plate("rows", y.shape[0], dim=-2)
    cols = pyro.plate("cols", y.shape[1], dim=-1)
    with rows:
        r = pyro.sample("r", dist.Normal(mu[0], 1.0))
    with cols:
        c = pyro.sample("c", dist.Normal(mu[1], 1.0))
    with rows, cols:
        pyro.sample("y", dist.Normal(r + c, 0.8), obs=y)


def _explicit_dims_guide(y):
    r_loc = _p("explicit_dims.q_r", [[v] for v in _ramp(y.shape[0], -0.3, 0.3)])
    c_loc = _p("explicit_dims.q_c", _ramp(y.shape[1], 0.2, -0.2))
    with pyro.plate("rows", y.shape[0], dim=-2):
        pyro.sample("r", dist.Normal(r_loc, 0.5))
    with pyro.plate("cols", y.shape[1], dim=-1):
        pyro.sample("c", dist.Normal(c_loc, 0.5))


def _nested_sub_model(x):
    mu = _p("nested_subsampled.m_mu", 0.0)
    with pyro.plate("data", x.shape[0], subsample_size=B, dim=-2) as i:
        with pyro.plate("features", x.shape[1], subsample_size=2, dim=-1) as j:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.7), obs=x[i.unsqueeze(-1), j])


def _nested_sub_guide(x):
    loc = _p("nested_subsampled.q_loc", [[0.1 * (i - j) for j in range(x.shape[1])]
                                         for i in range(x.shape[0])])
    scale = _p("nested_subsampled.q_scale", 0.6, _pos)
    with pyro.plate("data", x.shape[0], subsample_size=B, dim=-2) as i:
        with pyro.plate("features", x.shape[1], subsample_size=2, dim=-1) as j:
            pyro.sample("z", dist.Normal(loc[i.unsqueeze(-1), j], scale))


def _plate_reuse_model(x):
    mu = _p("plate_reuse.m_mu", [0.0, 0.0])
    data = pyro.plate("data", x.shape[0], dim=-1)
    feats = pyro.plate("features", x.shape[1], dim=-2)
    with data:
        u = pyro.sample("u", dist.Normal(mu[0], 1.0))
    with feats:
        v = pyro.sample("v", dist.Normal(mu[1], 1.0))
    with data, feats:
        pyro.sample("x", dist.Normal(u + v, 1.0), obs=x.T)


def _plate_reuse_guide(x):
    u_loc = _p("plate_reuse.q_u", _ramp(x.shape[0], -0.2, 0.2))
    v_loc = _p("plate_reuse.q_v", [[v] for v in _ramp(x.shape[1], 0.1, -0.1)])
    data = pyro.plate("data", x.shape[0], dim=-1)
    feats = pyro.plate("features", x.shape[1], dim=-2)
    with data:
        pyro.sample("u", dist.Normal(u_loc, 0.6))
    with feats:
        pyro.sample("v", dist.Normal(v_loc, 0.6))


_RAGGED = (X1[:4], X1[4:])


def _ragged_model(groups):
    mu = _p("ragged_groups.m_mu", [0.0, 0.5])
    for g in pyro.plate("groups", len(groups)):
        with pyro.plate(f"items_{g}", len(groups[g])):
            z = pyro.sample(f"z_{g}", dist.Normal(mu[g], 1.0))
            pyro.sample(f"x_{g}", dist.Normal(z, 0.6), obs=groups[g])


def _ragged_guide(groups):
    locs = [_p(f"ragged_groups.q_loc_{g}", _ramp(len(groups[g]), -0.1, 0.1))
            for g in range(len(groups))]
    for g in pyro.plate("groups", len(groups)):
        with pyro.plate(f"items_{g}", len(groups[g])):
            pyro.sample(f"z_{g}", dist.Normal(locs[g], 0.5))


def _plate_in_seq_model(x):
    mu = _p("vectorized_in_sequential.m_mu", 0.0)
    data = pyro.plate("data", x.shape[0])  # built once: a plate's name may occur once per trace
    for k in pyro.plate("repeats", 2):
        with data:
            z = pyro.sample(f"z_{k}", dist.Normal(mu, 1.0))
            pyro.sample(f"x_{k}", dist.Normal(z, 0.7), obs=x[:, k])


def _plate_in_seq_guide(x):
    loc = _p("vectorized_in_sequential.q_loc", [[0.1 * (i - 2) * (k + 1) for k in range(2)]
                                                for i in range(x.shape[0])])
    data = pyro.plate("data", x.shape[0])
    for k in pyro.plate("repeats", 2):
        with data:
            pyro.sample(f"z_{k}", dist.Normal(loc[:, k], 0.6))


_add(
    Shape("explicit_dims", _explicit_dims_model, _explicit_dims_guide, (X3[:4],),
          max_plate_nesting=2,
          note="plate('rows', dim=-2), plate('cols', dim=-1); latents in each, obs in both"),
    Shape("nested_subsampled", _nested_sub_model, _nested_sub_guide, (X3,), max_plate_nesting=2,
          data_plate="data", subsampled=True,
          note="data (6 -> 3, dim -2) x features (3 -> 2, dim -1), both subsampled"),
    Shape("plate_reuse", _plate_reuse_model, _plate_reuse_guide, (X3,), max_plate_nesting=2,
          note="plate objects entered several times, alone and together (data dim -1, "
               "features dim -2)"),
    Shape("ragged_groups", _ragged_model, _ragged_guide, (_RAGGED,),
          note="sequential plate over groups, each with its own vectorized plate of a different "
               "size"),
    Shape("vectorized_in_sequential", _plate_in_seq_model, _plate_in_seq_guide, (X3[:, :2],),
          data_plate="data",
          note="the same vectorized plate 'data' inside each step of a sequential plate"),
)


# --------------------------------------------------------------------------------------------
# 33-35. Poisson latent, discrete global, Markov chains
# --------------------------------------------------------------------------------------------

def _poisson_latent_model(x):
    rate = _p("poisson_latent.m_rate", 1.5, _pos)
    with pyro.plate("data", len(x)):
        k = pyro.sample("k", dist.Poisson(rate))
        pyro.sample("x", dist.Normal(0.5 * k, 1.0), obs=x)


def _poisson_latent_guide(x):
    q = _p("poisson_latent.q_rate", _ramp(len(x), 0.8, 2.0), _pos)
    with pyro.plate("data", len(x)):
        pyro.sample("k", dist.Poisson(q))


def _disc_global_model(x):
    prior = _p("discrete_global_only.m_prior", 0.5, _unit)
    locs = _p("discrete_global_only.m_locs", [-0.5, 0.5])
    c = pyro.sample("c", dist.Bernoulli(prior))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(locs[0] + (locs[1] - locs[0]) * c, 1.0), obs=x)


def _disc_global_guide(x):
    q = _p("discrete_global_only.q_probs", 0.3, _unit)
    pyro.sample("c", dist.Bernoulli(q))


def _markov_model(xs):
    a = _p("markov_chain.m_a", 0.8)
    z = torch.tensor(0.0)
    for t in range(len(xs)):
        z = pyro.sample(f"z_{t}", dist.Normal(a * z, 1.0))
        pyro.sample(f"x_{t}", dist.Normal(z, 0.5), obs=xs[t])


def _markov_guide(xs):
    loc = _p("markov_chain.q_loc", _ramp(len(xs), -0.2, 0.2))
    w = _p("markov_chain.q_w", 0.3)
    z = torch.tensor(0.0)
    for t in range(len(xs)):
        z = pyro.sample(f"z_{t}", dist.Normal(loc[t] + w * z, 0.5))


def _hmm_model(xs):
    init = _p("hmm_discrete.m_init", [0.6, 0.4], _simplex)
    trans = _p("hmm_discrete.m_trans", [[0.8, 0.2], [0.3, 0.7]], _simplex)
    locs = _p("hmm_discrete.m_locs", [-0.5, 0.8])
    z = None
    for t in pyro.markov(range(len(xs))):
        probs = init if z is None else Vindex(trans)[..., z, :]
        z = pyro.sample(f"z_{t}", dist.Categorical(probs))
        pyro.sample(f"x_{t}", dist.Normal(Vindex(locs)[..., z], 0.7), obs=xs[t])


def _hmm_guide(xs):
    q = _p("hmm_discrete.q_probs", [[0.5 + 0.1 * (t % 2), 0.5 - 0.1 * (t % 2)]
                                    for t in range(len(xs))], _simplex)
    for t in pyro.markov(range(len(xs))):
        pyro.sample(f"z_{t}", dist.Categorical(q[t]))


_add(
    Shape("poisson_latent", _poisson_latent_model, _poisson_latent_guide, (X1,),
          reparam=False, discrete=True, enumerable=False, data_plate="data",
          note="local Poisson latents: score function, no enumerate_support"),
    Shape("discrete_global_only", _disc_global_model, _disc_global_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, global_latents=True,
          note="the only latent is one global Bernoulli"),
    Shape("markov_chain", _markov_model, _markov_guide, (SERIES,), max_plate_nesting=0,
          global_latents=True, note="Gaussian chain z_t | z_{t-1} in a python loop; "
                                    "structured guide"),
    Shape("hmm_discrete", _hmm_model, _hmm_guide, (SERIES[:3],), max_plate_nesting=0,
          reparam=False, discrete=True, enumerable=True, global_latents=True,
          note="discrete HMM (pyro.markov loop), mean-field Categorical guide"),
)


# --------------------------------------------------------------------------------------------
# 36-40. user plate "num_particles", data kwarg, GMM, LDA, scale + subsampling
# --------------------------------------------------------------------------------------------

def _num_particles_model(x):
    mu = _p("user_plate_num_particles.m_mu", 0.0)
    with pyro.plate("num_particles", 2, dim=-2):
        g = pyro.sample("g", dist.Normal(mu, 1.0))
        with pyro.plate("data", len(x), dim=-1):
            pyro.sample("x", dist.Normal(g, 1.0), obs=x)


def _num_particles_guide(x):
    loc = _p("user_plate_num_particles.q_loc", [[0.1], [-0.1]])
    with pyro.plate("num_particles", 2, dim=-2):
        pyro.sample("g", dist.Normal(loc, 0.5))


def _kwarg_model(x=None):
    mu = _p("data_kwarg.m_mu", 0.0)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.9), obs=x)


def _kwarg_guide(x=None):
    loc = _p("data_kwarg.q_loc", _ramp(len(x), -0.1, 0.3))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, 0.6))


_K = 2


def _gmm_model(x):
    conc = _p("gmm_subsampled.m_conc", [1.0, 1.0], _pos)
    scale = _p("gmm_subsampled.m_scale", 0.8, _pos)
    weights = pyro.sample("weights", dist.Dirichlet(conc))
    with pyro.plate("components", _K):
        locs = pyro.sample("locs", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(x), subsample_size=B) as idx:
        a = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(Vindex(locs.unsqueeze(-2))[..., a], scale), obs=x[idx])


def _gmm_guide(x):
    w = _p("gmm_subsampled.q_weights", [0.4, 0.6], _simplex)
    loc = _p("gmm_subsampled.q_locs", [-0.7, 0.7])
    sc = _p("gmm_subsampled.q_loc_scale", [0.3, 0.3], _pos)
    assign = _p("gmm_subsampled.q_assign", [[0.2 + 0.1 * i, 0.8 - 0.1 * i] for i in range(len(x))],
                _simplex)
    pyro.sample("weights", dist.Delta(w, event_dim=1))
    with pyro.plate("components", _K):
        pyro.sample("locs", dist.Normal(loc, sc))
    with pyro.plate("data", len(x), subsample_size=B) as idx:
        pyro.sample("assignment", dist.Categorical(assign[idx]))


def _lda_model(words):
    beta = _p("lda_like.m_beta", 0.8, _pos)
    alpha = _p("lda_like.m_alpha", 1.2, _pos)
    n_words, n_docs = words.shape
    with pyro.plate("topics", 2):
        topic_words = pyro.sample("topic_words", dist.Dirichlet(beta * torch.ones(3)))
    with pyro.plate("docs", n_docs, dim=-1):
        doc_topics = pyro.sample("doc_topics", dist.Dirichlet(alpha * torch.ones(2)))
        with pyro.plate("words", n_words, dim=-2):
            wt = pyro.sample("word_topics", dist.Categorical(doc_topics))
            # topic_words' batch dims sit left of the consumed 'topics' dim: shift them by one
            probs = Vindex(topic_words.unsqueeze(-3))[..., wt, :]
            pyro.sample("doc_words", dist.Categorical(probs), obs=words)


def _lda_guide(words):
    n_words, n_docs = words.shape
    tw = _p("lda_like.q_topic_words", [[1.0, 2.0, 1.5], [2.0, 1.0, 1.2]], _pos)
    dt = _p("lda_like.q_doc_topics", [[1.0 + 0.2 * d, 1.5] for d in range(n_docs)], _pos)
    wt = _p("lda_like.q_word_topics", [[[0.3 + 0.1 * w, 0.7 - 0.1 * w] for _ in range(n_docs)]
                                       for w in range(n_words)], _simplex)
    with pyro.plate("topics", 2):
        pyro.sample("topic_words", dist.Dirichlet(tw))
    with pyro.plate("docs", n_docs, dim=-1):
        pyro.sample("doc_topics", dist.Dirichlet(dt))
        with pyro.plate("words", n_words, dim=-2):
            pyro.sample("word_topics", dist.Categorical(wt))


def _scale_sub_model(x):
    mu = _p("scale_subsample_reparam.m_mu", 0.0)
    with poutine.scale(scale=0.25):
        with pyro.plate("data", len(x), subsample_size=B) as idx:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.8), obs=x[idx])


def _scale_sub_guide(x):
    loc = _p("scale_subsample_reparam.q_loc", _ramp(len(x), -0.4, 0.4))
    with poutine.scale(scale=0.25):
        with pyro.plate("data", len(x), subsample_size=B) as idx:
            pyro.sample("z", dist.Normal(loc[idx], 0.6))


def _scale_sub_disc_model(x):
    prior = _p("scale_subsample_discrete.m_prior", 0.5, _unit)
    with poutine.scale(scale=0.25):
        with pyro.plate("data", len(x), subsample_size=B) as idx:
            z = pyro.sample("z", dist.Bernoulli(prior))
            pyro.sample("x", dist.Normal(1.5 * z - 0.5, 1.0), obs=x[idx])


def _scale_sub_disc_guide(x):
    probs = _p("scale_subsample_discrete.q_probs", _ramp(len(x), 0.25, 0.75), _unit)
    with poutine.scale(scale=0.25):
        with pyro.plate("data", len(x), subsample_size=B) as idx:
            pyro.sample("z", dist.Bernoulli(probs[idx]))


_add(
    Shape("user_plate_num_particles", _num_particles_model, _num_particles_guide, (X1,),
          max_plate_nesting=2,
          note="a user plate named 'num_particles' (dim -2) around the data plate; Pyro's own "
               "particle plate is 'num_particles_vectorized'"),
    Shape("data_kwarg", _kwarg_model, _kwarg_guide, (), {"x": X1}, data_plate="data",
          note="data passed as keyword argument x="),
    Shape("gmm_subsampled", _gmm_model, _gmm_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, global_latents=True, subsampled=True,
          note="GMM: Delta guide on Dirichlet weights, Normal guide on locs (components plate), "
               "Categorical assignments in a subsampled data plate"),
    Shape("lda_like", _lda_model, _lda_guide, (DOC_WORDS,), max_plate_nesting=2,
          reparam=False, discrete=True, enumerable=True,
          note="LDA-like: topic_words in a 'topics' plate (global w.r.t. the data but inside a "
               "vectorized plate), Dirichlet doc_topics, Categorical word_topics in docs x words"),
    Shape("scale_subsample_reparam", _scale_sub_model, _scale_sub_guide, (X1,), data_plate="data",
          subsampled=True, note="poutine.scale(0.25) around a subsampled plate, Normal locals"),
    Shape("scale_subsample_discrete", _scale_sub_disc_model, _scale_sub_disc_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, data_plate="data", subsampled=True,
          note="poutine.scale(0.25) around a subsampled plate, Bernoulli locals"),
)


# --------------------------------------------------------------------------------------------
# 41+. auxiliary guide sites, forced score function, amortized guide, semi-supervised, ...
# --------------------------------------------------------------------------------------------

def _aux_model(x):
    mu = _p("auxiliary_guide_site.m_mu", 0.0)
    z = pyro.sample("z", dist.Normal(mu, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _aux_guide(x):
    loc = _p("auxiliary_guide_site.q_loc", 0.1)
    w = _p("auxiliary_guide_site.q_w", 0.3)
    u = pyro.sample("u_aux", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
    pyro.sample("z", dist.Normal(loc + w * u, 0.5))


def _forced_sf_model(x):
    mu = _p("forced_score_function.m_mu", 0.0)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.8), obs=x)


def _forced_sf_guide(x):
    loc = _p("forced_score_function.q_loc", _ramp(len(x), -0.3, 0.3))
    scale = _p("forced_score_function.q_scale", 0.7, _pos)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, scale).has_rsample_(False))


with torch.random.fork_rng():
    torch.manual_seed(0)
    _ENCODER = torch.nn.Linear(1, 2)
_ENCODER_INIT = {k: v.detach().clone() for k, v in _ENCODER.state_dict().items()}


def _amortized_model(x):
    mu = _p("amortized_nn_guide.m_mu", 0.0)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.7), obs=x)


def _amortized_guide(x):
    if not any(k.startswith("amortized_nn_guide.encoder$$$") for k in pyro.get_param_store().keys()):
        with torch.no_grad():
            _ENCODER.load_state_dict(_ENCODER_INIT)  # deterministic re-init after clear_param_store
    enc = pyro.module("amortized_nn_guide.encoder", _ENCODER)
    out = enc(x.unsqueeze(-1))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(out[..., 0], torch.nn.functional.softplus(out[..., 1]) + 0.1))


def _make_semi_supervised(shape_name):
    """The same semi-supervised model under two shape names (param names stay unique)."""

    def model(x, y=None):
        prior = _p(f"{shape_name}.m_prior", [0.5, 0.5], _simplex)
        locs = _p(f"{shape_name}.m_locs", [-0.6, 0.6])
        with pyro.plate("data", len(x)):
            y = pyro.sample("y", dist.Categorical(prior), obs=y)
            pyro.sample("x", dist.Normal(locs[y], 1.0), obs=x)

    def guide(x, y=None):
        if y is None:  # y is latent only when it is not given
            w = _p(f"{shape_name}.q_w", [0.0, 0.5])
            with pyro.plate("data", len(x)):
                logits = torch.stack([torch.zeros_like(x), w[0] + w[1] * x], -1)
                pyro.sample("y", dist.Categorical(logits=logits))

    return model, guide


_semi_model, _semi_guide = _make_semi_supervised("semi_supervised_unlabeled")
_semi_labeled_model, _semi_labeled_guide = _make_semi_supervised("semi_supervised_labeled")


def _empty_guide_model(x):
    mu = _p("empty_guide.m_mu", 0.2)
    sigma = _p("empty_guide.m_sigma", 1.1, _pos)
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, sigma), obs=x)


def _empty_guide_guide(x):
    pass


def _no_model_params_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _no_model_params_guide(x):
    loc = _p("no_model_params.q_loc", 0.1)
    scale = _p("no_model_params.q_scale", 0.5, _pos)
    pyro.sample("z", dist.Normal(loc, scale))


def _pyro_subsample_model(x):
    mu = _p("pyro_subsample_helper.m_mu", 0.0)
    with pyro.plate("data", len(x), subsample_size=B):
        xs = pyro.subsample(x, event_dim=0)
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.9), obs=xs)


def _pyro_subsample_guide(x):
    with pyro.plate("data", len(x), subsample_size=B):
        loc = _p("pyro_subsample_helper.q_loc", _ramp(len(x), -0.5, 0.5), event_dim=0)
        pyro.sample("z", dist.Normal(loc, 0.6))


def _masked_obs_sub_model(x):
    mu = _p("masked_obs_subsample.m_mu", 0.0)
    with pyro.plate("data", len(x), subsample_size=4) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        with poutine.mask(mask=OBS_MASK[idx]):
            pyro.sample("x", dist.Normal(z, 0.8), obs=x[idx])


def _masked_obs_sub_guide(x):
    loc = _p("masked_obs_subsample.q_loc", _ramp(len(x), 0.3, -0.3))
    with pyro.plate("data", len(x), subsample_size=4) as idx:
        pyro.sample("z", dist.Normal(loc[idx], 0.7))


def _deterministic_model(x):
    mu = _p("deterministic_site.m_mu", 0.0)
    z = pyro.sample("z", dist.Normal(mu, 1.0))
    loc = pyro.deterministic("loc", 2.0 * z)
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)


def _deterministic_guide(x):
    loc = _p("deterministic_site.q_loc", 0.0)
    pyro.sample("z", dist.Normal(loc, 0.4))


def _binomial_model(counts):
    ab = _p("beta_binomial_local.m_ab", [2.0, 2.0], _pos)
    with pyro.plate("data", len(counts)):
        p = pyro.sample("p", dist.Beta(ab[0], ab[1]))
        pyro.sample("counts", dist.Binomial(6, p), obs=counts)


def _binomial_guide(counts):
    qa = _p("beta_binomial_local.q_a", _ramp(len(counts), 1.5, 3.0), _pos)
    qb = _p("beta_binomial_local.q_b", 2.5, _pos)
    with pyro.plate("data", len(counts)):
        pyro.sample("p", dist.Beta(qa, qb))


def _mixed_model(x):
    m = _p("mixed_global_discrete_local.m_loc", 0.0)
    prior = _p("mixed_global_discrete_local.m_prior", 0.5, _unit)
    g = pyro.sample("g", dist.Normal(m, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(prior))
        pyro.sample("x", dist.Normal(g * (2.0 * z - 1.0), 1.0), obs=x)


def _mixed_guide(x):
    loc = _p("mixed_global_discrete_local.q_loc", 0.5)
    scale = _p("mixed_global_discrete_local.q_scale", 0.3, _pos)
    probs = _p("mixed_global_discrete_local.q_probs", _ramp(len(x), 0.3, 0.7), _unit)
    pyro.sample("g", dist.Normal(loc, scale))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(probs))


_add(
    Shape("auxiliary_guide_site", _aux_model, _aux_guide, (X1,), global_latents=True,
          note="guide samples u_aux with infer={'is_auxiliary': True} (absent from the model; its "
               "log q stays in the guide term); z depends on it"),
    Shape("forced_score_function", _forced_sf_model, _forced_sf_guide, (X1,),
          reparam=False, data_plate="data",
          note="continuous Normal guide with has_rsample_(False): score-function estimator"),
    Shape("amortized_nn_guide", _amortized_model, _amortized_guide, (X1,), data_plate="data",
          note="pyro.module of an nn.Linear(1, 2) encoder (fixed seed, reset when absent from "
               "the param store)"),
    Shape("semi_supervised_unlabeled", _semi_model, _semi_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, data_plate="data",
          note="semi-supervised: y=None, so y is latent; guide Categorical q(y|x)"),
    Shape("semi_supervised_labeled", _semi_labeled_model, _semi_labeled_guide, (X1,),
          {"y": LABELS.clamp(max=1)}, data_plate="data",
          note="semi-supervised with labels given: no latents; the guide has no params or sites"),
    Shape("empty_guide", _empty_guide_model, _empty_guide_guide, (X1,), data_plate="data",
          note="no latents: the guide has no params or sample sites"),
    Shape("no_model_params", _no_model_params_model, _no_model_params_guide, (X1,),
          global_latents=True, note="the model has no params (fixed prior and likelihood)"),
    Shape("pyro_subsample_helper", _pyro_subsample_model, _pyro_subsample_guide, (X1,),
          data_plate="data", subsampled=True,
          note="pyro.subsample(x, event_dim=0) and pyro.param(..., event_dim=0) inside a "
               "subsampled plate"),
    Shape("masked_obs_subsample", _masked_obs_sub_model, _masked_obs_sub_guide, (X1,),
          data_plate="data", subsampled=True,
          note="poutine.mask(obs_mask[idx]) on the observation in a subsampled plate"),
    Shape("deterministic_site", _deterministic_model, _deterministic_guide, (X1,),
          global_latents=True, note="model records pyro.deterministic('loc', ...)"),
    Shape("beta_binomial_local", _binomial_model, _binomial_guide, (COUNTS.clamp(max=6),),
          data_plate="data", note="local Beta latents, Binomial(6) obs"),
    Shape("mixed_global_discrete_local", _mixed_model, _mixed_guide, (X1,),
          reparam=False, discrete=True, enumerable=True, global_latents=True,
          note="global reparameterized Normal g and local Bernoulli z"),
)


# --------------------------------------------------------------------------------------------
# INVALID pairs: (name, model, guide, args, expected_substring)
# --------------------------------------------------------------------------------------------

def _inv_base_model(x):
    mu = _p("invalid.m_mu", 0.0)
    z = pyro.sample("z", dist.Normal(mu, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _inv_extra_guide(x):
    loc = _p("invalid_extra.q_loc", 0.0)
    pyro.sample("z", dist.Normal(loc, 1.0))
    pyro.sample("stray_latent", dist.Normal(loc, 1.0))


def _inv_uncovered_model(x):
    mu = _p("invalid_uncovered.m_mu", 0.0)
    z = pyro.sample("z", dist.Normal(mu, 1.0))
    w = pyro.sample("uncovered_w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z + w, 1.0), obs=x)


def _inv_uncovered_guide(x):
    loc = _p("invalid_uncovered.q_loc", 0.0)
    pyro.sample("z", dist.Normal(loc, 1.0))


def _inv_shape_model(x):
    mu = _p("invalid_shape.m_mu", [0.0, 0.0])
    z = pyro.sample("wrong_shape_z", dist.Normal(mu, 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0), obs=x)


def _inv_shape_guide(x):
    loc = _p("invalid_shape.q_loc", [0.0, 0.0, 0.0])
    pyro.sample("wrong_shape_z", dist.Normal(loc, 1.0).to_event(1))


def _inv_undeclared_model(x):
    mu = _p("invalid_undeclared.m_mu", 0.0)
    z = pyro.sample("undeclared_z", dist.Normal(mu, 1.0).expand([len(x)]))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _inv_undeclared_guide(x):
    loc = _p("invalid_undeclared.q_loc", _ramp(len(x), -0.1, 0.1))
    pyro.sample("undeclared_z", dist.Normal(loc, 1.0))


def _inv_plate_size_model(x):
    mu = _p("invalid_plate_size.m_mu", 0.0)
    with pyro.plate("sized_plate", len(x)):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("sized_obs", dist.Normal(z, 1.0), obs=x)


def _inv_plate_size_guide(x):
    loc = _p("invalid_plate_size.q_loc", _ramp(len(x) - 1, -0.1, 0.1))
    with pyro.plate("sized_plate", len(x) - 1):
        pyro.sample("z", dist.Normal(loc, 1.0))


def _inv_support_model(x):
    p = _p("invalid_support.m_p", 0.5, _unit)
    c = pyro.sample("bernoulli_c", dist.Bernoulli(p))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(c, 1.0), obs=x)


def _inv_support_guide(x):
    loc = _p("invalid_support.q_loc", 0.3)
    pyro.sample("bernoulli_c", dist.Normal(loc, 1.0))


def _inv_event_dim_model(x):
    mu = _p("invalid_event_dim.m_mu", [0.0, 0.0])
    z = pyro.sample("event_z", dist.Normal(mu, 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0), obs=x)


def _inv_event_dim_guide(x):
    loc = _p("invalid_event_dim.q_loc", [[0.0, 0.0]])
    pyro.sample("event_z", dist.Normal(loc, 1.0).to_event(2))


def _inv_guide_plate_model(x):
    mu = _p("invalid_guide_plate.m_mu", 0.0)
    z = pyro.sample("z", dist.Normal(mu, 1.0))
    pyro.sample("x", dist.Normal(z, 1.0).expand([len(x)]).to_event(1), obs=x)


def _inv_guide_plate_guide(x):
    loc = _p("invalid_guide_plate.q_loc", 0.0)
    with pyro.plate("guide_only_plate", len(x)):
        pass
    pyro.sample("z", dist.Normal(loc, 1.0))


def _inv_duplicate_model(x):
    mu = _p("invalid_duplicate.m_mu", 0.0)
    z = pyro.sample("dup_site", dist.Normal(mu, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _inv_duplicate_guide(x):
    loc = _p("invalid_duplicate.q_loc", 0.0)
    pyro.sample("dup_site", dist.Normal(loc, 1.0))
    pyro.sample("dup_site", dist.Normal(loc, 1.0))


def _inv_factor_model(x):
    return _inv_base_model(x)


def _inv_factor_guide(x):
    loc = _p("invalid_factor.q_loc", 0.0)
    z = pyro.sample("z", dist.Normal(loc, 1.0))
    pyro.factor("guide_factor_no_rsample", -z ** 2)


def _inv_enum_model(x):
    p = _p("invalid_enumerated.m_p", 0.5, _unit)
    c = pyro.sample("enumerated_c", dist.Bernoulli(p))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(c, 1.0), obs=x)


def _inv_enum_guide(x):
    q = _p("invalid_enumerated.q_p", 0.4, _unit)
    pyro.sample("enumerated_c", dist.Bernoulli(q), infer={"enumerate": "parallel"})


def _inv_dim_collision_model(x):
    mu = _p("invalid_dim_collision.m_mu", 0.0)
    with pyro.plate("collide_outer", x.shape[0], dim=-1):
        with pyro.plate("collide_inner", x.shape[1], dim=-1):
            pyro.sample("collide_z", dist.Normal(mu, 1.0))


def _inv_dim_collision_guide(x):
    loc = _p("invalid_dim_collision.q_loc", 0.0)
    with pyro.plate("collide_outer", x.shape[0], dim=-1):
        with pyro.plate("collide_inner", x.shape[1], dim=-1):
            pyro.sample("collide_z", dist.Normal(loc, 1.0))


INVALID.extend([
    ("guide_site_not_in_model", _inv_base_model, _inv_extra_guide, (X1,), "stray_latent"),
    ("model_latent_not_in_guide", _inv_uncovered_model, _inv_uncovered_guide, (X1,), "uncovered_w"),
    ("model_guide_shape_mismatch", _inv_shape_model, _inv_shape_guide, (X1,), "wrong_shape_z"),
    ("undeclared_batch_dim", _inv_undeclared_model, _inv_undeclared_guide, (X1,), "undeclared_z"),
    ("plate_size_mismatch", _inv_plate_size_model, _inv_plate_size_guide, (X1,), "sized_obs"),
    ("discrete_model_continuous_guide", _inv_support_model, _inv_support_guide, (X1,),
     "bernoulli_c"),
    ("event_dim_mismatch", _inv_event_dim_model, _inv_event_dim_guide, (X1,), "event_z"),
    ("plate_in_guide_not_model", _inv_guide_plate_model, _inv_guide_plate_guide, (X1,),
     "guide_only_plate"),
    ("duplicate_site_name", _inv_base_model, _inv_duplicate_guide, (X1,), "dup_site"),
    ("guide_factor_without_has_rsample", _inv_factor_model, _inv_factor_guide, (X1,),
     "guide_factor_no_rsample"),
    ("enumerated_guide_site_under_trace_elbo", _inv_enum_model, _inv_enum_guide, (X1,),
     "enumerated_c"),
    ("plate_dim_collision", _inv_dim_collision_model, _inv_dim_collision_guide, (X3,),
     "collide"),
])


def _check_unique_names():
    names = [s.name for s in VALID] + [t[0] for t in INVALID]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"duplicate shape names: {sorted(dupes)}"


_check_unique_names()


if __name__ == "__main__":
    cols = ["name", "reparam", "discrete", "enum", "vec", "mpn", "data_plate", "global", "subs"]
    print(f"{cols[0]:<36}{cols[1]:>8}{cols[2]:>9}{cols[3]:>6}{cols[4]:>5}{cols[5]:>5}"
          f"  {cols[6]:<13}{cols[7]:>7}{cols[8]:>6}")

    def yn(b):
        return "y" if b else "."

    for s in VALID:
        print(f"{s.name:<36}{yn(s.reparam):>8}{yn(s.discrete):>9}{yn(s.enumerable):>6}"
              f"{yn(s.vectorizable):>5}{s.max_plate_nesting:>5}  {str(s.data_plate):<13}"
              f"{yn(s.global_latents):>7}{yn(s.subsampled):>6}")
    print(f"\n{len(VALID)} valid shapes")
    print(f"\n{'invalid':<40}expected substring")
    for name, _, _, _, sub in INVALID:
        print(f"{name:<40}{sub}")
    print(f"\n{len(INVALID)} invalid shapes")
