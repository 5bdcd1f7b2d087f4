import copy
import math

import pandas as pd
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppmodels import evaluate
from ppmodels.data import TensorData, synthetic_images
from ppmodels.fit import NonFiniteLoss, fit, load_checkpoint, lr_factor
from ppmodels.models import VAE
from ppmodels.models.conjugate import LinearGaussian
from ppmodels.utils import PPModelsError

from helpers import step_clock


@pytest.fixture
def images():
    x, _ = synthetic_images(400, seed=0)
    return TensorData(x[:300], binarize="dynamic"), TensorData(x[300:], binarize="dynamic")


def small_vae(seed=0):
    torch.manual_seed(seed)
    return VAE(784, 4, (32,), "tanh")


def test_training_reduces_the_loss_and_records_history(images):
    train, test = images
    h = fit(small_vae(), train, epochs=4, batch_size=50, lr=1e-2, test=test, device="cpu")
    assert list(h.columns) == ["epoch", "step", "train_loss", "lr", "test_elbo", "seconds"]
    assert len(h) == 4 and h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]
    assert h["seconds"].is_monotonic_increasing


def test_resume_continues_the_same_trajectory(images, tmp_path):
    train, test = images
    full = fit(small_vae(), train, epochs=3, batch_size=50, lr=1e-2, out=tmp_path / "a", device="cpu",
               objective="iwae", num_particles=2)
    fit(small_vae(), train, epochs=1, batch_size=50, lr=1e-2, out=tmp_path / "b", device="cpu",
        objective="iwae", num_particles=2)
    resumed = fit(small_vae(seed=5), train, epochs=3, batch_size=50, lr=1e-2, out=tmp_path / "b",
                  resume=True, device="cpu", objective="iwae", num_particles=2)
    pd.testing.assert_series_equal(full["train_loss"], resumed["train_loss"])
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k


def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    x = torch.randn(40, 2)

    clock, schedule = step_clock()

    class Exploding:
        def model(self, x):
            loc = pyro.param("loc", torch.zeros(2))
            if clock["step"] >= 12:  # bad from step 13, in the 4th epoch (4 steps an epoch)
                loc = loc * float("nan")
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

        def guide(self, x):
            s = pyro.param("s", torch.ones(2), constraint=dist.constraints.positive)
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(x / 2, s).to_event(1))

    with pytest.raises(NonFiniteLoss, match=r"at step 13;.*checkpoint\.pt") as err:
        fit(Exploding(), x, epochs=6, batch_size=10, out=tmp_path, device="cpu", log_every=1, lr_schedule=schedule)
    assert "Exploding" in str(err.value)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["epoch"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["params"].values())


def test_user_defined_model_trains_and_evaluates():
    x = torch.randn(200, 3) * 0.5 + torch.tensor([1.0, -2.0, 0.5])

    class Gaussian:
        """z ~ N(mu, I), x | z ~ N(z, I); amortized guide N(a x + b, s)."""

        def model(self, x):
            mu = pyro.param("mu", torch.zeros(3))
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

        def guide(self, x):
            a = pyro.param("a", torch.tensor(0.1))
            b = pyro.param("b", torch.zeros(3))
            s = pyro.param("s", torch.ones(3), constraint=dist.constraints.positive)
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(a * x + b, s).to_event(1))

    h = fit(Gaussian(), x, steps=600, batch_size=50, lr=0.05, device="cpu")
    # maximum likelihood: mu = mean(x); the guide at the posterior: a = 1/2, b = mu/2
    assert torch.allclose(pyro.param("mu").detach(), x.mean(0), atol=0.1)
    assert abs(pyro.param("a").item() - 0.5) < 0.1
    assert len(h) == 150 and h["step"].iloc[-1] == 600
    ll = evaluate.log_likelihood(Gaussian(), x, 50).mean()
    exact = dist.Normal(pyro.param("mu"), math.sqrt(2.0)).to_event(1).log_prob(x).mean()
    assert abs(ll - exact) < 0.05


def test_bad_input_is_refused_before_training(images):
    train, _ = images
    vae = small_vae()
    bad = (train.tensors[0] > 127).float()
    bad[3, 5] = float("nan")
    with pytest.raises(PPModelsError, match="training data, row 3: VAE: batch argument 0 .* has 1 NaN"):
        fit(vae, bad, steps=1, device="cpu")
    late = (train.tensors[0] > 127).float()
    late[250, 7] = 0.5  # after the first batch: every row is checked once
    with pytest.raises(PPModelsError, match="training data, row 250: VAE: observed site 'x' has values outside"):
        fit(vae, late, steps=1, device="cpu")
    with pytest.raises(PPModelsError, match="VAE: observed site 'x' has values outside the likelihood's support"):
        fit(vae, torch.full((10, 784), 0.5), steps=1, device="cpu")
    with pytest.raises(PPModelsError, match=r"VAE.*site 'x' expects a batch of shape \(B, 784\)"):
        fit(vae, torch.zeros(10, 100), steps=1, device="cpu")
    with pytest.raises(PPModelsError, match="unknown objective 'elbow'"):
        fit(vae, train, steps=1, objective="elbow", device="cpu")
    with pytest.raises(PPModelsError, match="does not follow the model protocol.*guide"):
        fit(object(), train, steps=1)
    with pytest.raises(PPModelsError, match="give epochs"):
        fit(vae, train, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(images):
    with pytest.raises(PPModelsError, match="no CUDA device"):
        fit(small_vae(), images[0], steps=1, device="cuda")


@pytest.mark.cuda
def test_fit_and_evaluate_on_cuda(images):
    train, test = images
    vae = small_vae()
    h = fit(vae, train, epochs=2, batch_size=50, lr=1e-2, test=test, device="cuda")
    assert next(vae.parameters()).is_cuda and math.isfinite(h["test_elbo"].iloc[-1])
    nll = -evaluate.log_likelihood(vae, test.to("cuda"), 100).mean()
    assert math.isfinite(nll.item())


def test_lr_schedules():
    assert lr_factor("cosine", 0, 100, 10) == 1.0
    assert lr_factor("cosine", 100, 100, 10) == pytest.approx(0.0)
    # Burda et al.: 1 pass at 1e-3, 3 passes at 1e-3 * 10^(-1/7), ...
    assert lr_factor("burda", 0, 10**6, 1) == 1.0
    assert lr_factor("burda", 1, 10**6, 1) == pytest.approx(10 ** (-1 / 7))
    assert lr_factor("burda", 3, 10**6, 1) == pytest.approx(10 ** (-1 / 7))
    assert lr_factor("burda", 4, 10**6, 1) == pytest.approx(10 ** (-2 / 7))
    with pytest.raises(PPModelsError, match="lr_schedule"):
        lr_factor("linear", 0, 10, 1)


def test_linear_gaussian_trains_with_every_reparameterized_objective():
    m = LinearGaussian(5, 2, seed=1)
    x = LinearGaussian(5, 2, seed=2).sample_data(256)
    exact_before = m.log_marginal(x).mean().item()
    for name, opts in [("elbo", {}), ("iwae", {"num_particles": 5}), ("dreg", {"num_particles": 5}),
                       ("stl", {}), ("renyi", {"num_particles": 5, "alpha": 0.5}), ("meanfield", {})]:
        m = LinearGaussian(5, 2, seed=1)
        fit(m, x, steps=300, batch_size=64, lr=0.03, objective=name, device="cpu", **opts)
        assert m.log_marginal(x).mean().item() > exact_before + 1.0, name


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_fast_path_is_used_only_where_proven_equal(images, device):
    """jit=True: the captured step for the objectives that keep no state, equal to the plain
    step run for run (losses and parameters); REINFORCE keeps state: plain, and the history
    says why."""
    x = images[0].full(torch.Generator().manual_seed(0))[0][:60].to(device)
    for name, expected in [("elbo", "graph"), ("iwae", "graph"), ("stl", "graph"), ("dreg", "graph"),
                           ("reinforce", "plain")]:
        opts = {"num_particles": 3} if name in ("iwae", "dreg") else {}
        runs = []
        for jit in (True, False):
            vae = small_vae().to(device)
            history = fit(vae, x, objective=name, steps=4, batch_size=20, lr=1e-2, device=device, jit=jit, seed=2,
                          **opts)
            runs.append((history, [p.detach().clone() for p in vae.parameters()]))
        (fast, p_fast), (plain, p_plain) = runs
        assert fast.attrs["fast_path"] == expected, (name, fast.attrs["fast_path_reason"])
        assert plain.attrs["fast_path"] == "plain" and plain.attrs["fast_path_reason"] == "asked (jit=False)"
        if expected == "plain":
            assert "keeps state" in fast.attrs["fast_path_reason"]
        assert np.allclose(fast["train_loss"], plain["train_loss"], rtol=1e-4), name
        assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(p_fast, p_plain)), name


@pytest.mark.parametrize("options", [{"weight_decay": 0.1}, {"clip_norm": 0.5}, {"lr_schedule": "cosine"}],
                         ids=lambda o: next(iter(o)))
def test_the_fast_step_follows_the_plain_one_with_weight_decay_clipping_and_a_schedule(images, options):
    """The graph gives the loss and the gradients; clipping and the optimizer's own step follow
    it: eight steps with weight decay, gradient clipping or a changing learning rate end where
    the plain steps do."""
    x = images[0].full(torch.Generator().manual_seed(0))[0][:60]
    runs = []
    for jit in (True, False):
        vae = small_vae()
        history = fit(vae, x, steps=8, batch_size=20, lr=1e-2, device="cpu", jit=jit, seed=2, **options)
        runs.append((history, [p.detach().clone() for p in vae.parameters()]))
    (fast, p_fast), (plain, p_plain) = runs
    assert fast.attrs["fast_path"] == "graph", fast.attrs["fast_path_reason"]
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(p_fast, p_plain))


def test_models_that_index_with_tensors_take_the_graph(images):
    """``image[:, target]`` (the quadrant models) and ``locs[c]`` (the mixture's components) are
    ``aten::index``, which the uncompiled graph runs as its overload (``Tensor.index`` is
    another function): their fast step is the graph, equal to the plain one run for run."""
    from ppmodels.models.cvae import QuadrantBaseline
    from ppmodels.models.discrete_vae import DiscreteVAE

    x = images[0].full(torch.Generator().manual_seed(0))[0][:60]
    cases = [(lambda: QuadrantBaseline(1, (8,)), x, {}),
             (lambda: DiscreteVAE("mixture", 16, classes=3, z_dim=2, hidden=(8,)), x[:, :16].contiguous(),
              {"objective": "rloo", "num_particles": 2})]
    for make_model, data, opts in cases:
        runs = []
        for jit in (None, False):
            torch.manual_seed(0)
            runs.append(fit(make_model(), data, steps=60, batch_size=20, lr=1e-2, device="cpu", seed=0, jit=jit,
                            log_every=1, **opts))
        fast, plain = runs
        assert fast.attrs["fast_path"] == "graph", fast.attrs["fast_path_reason"]
        assert np.allclose(fast["train_loss"], plain["train_loss"], rtol=1e-4)


class _Branchy(torch.nn.Module):
    """Declares static_structure, and branches in Python on its batch's mean (a false promise)."""

    static_structure = True

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))

    def model(self, x):
        pyro.module("branchy", self)
        loc = self.a if float(x.mean()) < 0 else self.b
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x):
        pass


def test_a_step_that_reads_values_from_tensors_stays_plain():
    """Two clusters, so the batches' means take either sign: the plain step trains both ``a``
    and ``b``, a graph captured on the first batch would train one of them. The step reads a
    Python number from a tensor, so fit runs it plain, says why, and trains as the plain run."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100, 2, generator=g) - 3, torch.randn(100, 2, generator=g) + 3])
    runs = []
    for jit in (None, False):
        m = _Branchy()
        runs.append((fit(m, x, steps=60, batch_size=20, lr=5e-2, device="cpu", seed=0, jit=jit), m))
    (fast, m_fast), (_, m_plain) = runs
    assert fast.attrs["fast_path"] == "plain" and "reads 1 Python value" in fast.attrs["fast_path_reason"]
    assert torch.equal(m_fast.a, m_plain.a) and torch.equal(m_fast.b, m_plain.b)
    assert m_plain.a.abs().min() > 0.1 and m_plain.b.abs().min() > 0.1  # both branches ran


class _Shifted(torch.nn.Module):
    """A static-structure model whose likelihood reads a plain tensor attribute (a capture
    records ``shift`` as a constant) and, when ``python_noise``, Python's own random numbers
    (which a capture freezes: the captured step differs from the plain one)."""

    static_structure = True
    python_noise = False

    def __init__(self):
        super().__init__()
        self.loc, self.q_loc = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
        self.shift = torch.tensor(0.0)

    def model(self, x):
        import random

        pyro.module("shifted", self)
        noise = 1.0 + (random.random() if self.python_noise else 0.0)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.loc, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + self.shift, noise).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("shifted", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.q_loc + 0.5 * x, 1.0).to_event(1))


def test_each_fit_captures_its_own_step_and_a_step_that_differs_is_not_used():
    """A constant the capture recorded (``shift``) changed between calls: the next call's step
    sees the new value (it equals the plain run). A program whose Python randomness the capture
    freezes differs from its plain step on the first batch: plain, with the reason."""
    m, x = _Shifted(), torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    for shift in (0.0, 3.0):
        m.shift.fill_(shift)
        a = fit(copy.deepcopy(m), x, steps=3, batch_size=20, lr=1e-2, device="cpu", seed=0, jit=True)
        b = fit(copy.deepcopy(m), x, steps=3, batch_size=20, lr=1e-2, device="cpu", seed=0, jit=False)
        assert a.attrs["fast_path"] == "graph"
        assert np.allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
    m.python_noise = True
    history = fit(m, x, steps=3, batch_size=20, lr=1e-2, device="cpu", seed=0, jit=True)
    assert history.attrs["fast_path"] == "plain"
    assert "differs from the plain step" in history.attrs["fast_path_reason"]


def test_the_fast_path_policy_by_steps():
    from ppmodels.compiled import CAPTURE_MIN_STEPS, choose

    assert choose(10, 5000, None) == "plain" and choose(10, 5000, True) == "graph"
    assert choose(CAPTURE_MIN_STEPS, 5000, None) == "graph" and choose(5000, 5000, None) == "compiled"
    assert choose(10**6, 0, None) == "graph" and choose(10**6, 5000, False) == "plain"
    assert choose(CAPTURE_MIN_STEPS - 1, 5000, None) == "plain"
    m, x = _Shifted(), torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    history = fit(m, x, steps=3, batch_size=20, device="cpu", seed=0)
    assert history.attrs["fast_path"] == "plain" and "pay back a capture" in history.attrs["fast_path_reason"]


def test_the_compiled_step_equals_the_plain_one():
    """compile_min_steps reached: the step runs through torch.compile, equal to the plain run."""
    m, x = _Shifted(), torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    a = fit(copy.deepcopy(m), x, steps=4, batch_size=20, lr=1e-2, device="cpu", seed=0, compile_min_steps=1)
    b = fit(copy.deepcopy(m), x, steps=4, batch_size=20, lr=1e-2, device="cpu", seed=0, jit=False)
    assert a.attrs["fast_path"] == "compiled", a.attrs["fast_path_reason"]
    assert a.attrs["compile_seconds"] > 0
    assert np.allclose(a["train_loss"], b["train_loss"], rtol=1e-5)


def test_fit_does_not_keep_a_captured_model_alive():
    import gc
    import weakref

    m, x = _Shifted(), torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    assert fit(m, x, epochs=1, batch_size=20, device="cpu", seed=0, jit=True).attrs["jit"]
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None


def test_fast_path_results_are_compared_up_to_rounding_only():
    from ppmodels.compiled import _close

    g = torch.randn(50, 20, generator=torch.Generator().manual_seed(0)) * 100
    assert _close(g, g + 3e-7 * g.abs().max())  # a graph's own summation order
    assert not _close(g, g * (1 + 1e-3)) and not _close(g, g + 1e-4 * g.abs().max())
    small = g.clone()
    small[0, 0] = 1e-3 * g.abs().max()  # a small entry (1e-3 of the largest) off by 10x fails
    wrong = small.clone()
    wrong[0, 0] *= 10
    assert not _close(wrong, small)
    assert not _close(g, g[:, :10])


def test_training_with_and_without_jit_agrees(images):
    train, _ = images
    a = fit(small_vae(), train, epochs=3, batch_size=50, lr=1e-2, device="cpu", jit=True, seed=3)
    b = fit(small_vae(), train, epochs=3, batch_size=50, lr=1e-2, device="cpu", jit=False, seed=3)
    assert a.attrs["jit"] and not b.attrs["jit"]
    assert torch.allclose(torch.tensor(a["train_loss"].values), torch.tensor(b["train_loss"].values), rtol=1e-3)


def _captured_gradient(m, name, x, **opts):
    """The objective's gradient as the fast path records it (a captured graph), in the order of
    the LinearGaussian's parameters."""
    from ppmodels.analysis import flat_grad
    from ppmodels.compiled import capture
    from ppmodels.fit import prepare
    from ppmodels.objectives import make

    obj = make(name, **opts)
    params, pair = prepare(m, obj, (x,))
    order = [params[f"module.{n}"] for n in ("W", "b", "log_psi", "A", "c", "log_s")]

    def grad(x, *ps):
        with torch.enable_grad():
            loss = obj.differentiable_loss(pair.model, pair.guide, x)
            return flat_grad(torch.autograd.grad(loss, order), order)

    with torch.no_grad():
        gm = capture(grad, (x, *order))

    def call():
        with torch.no_grad():
            return gm(x, *order)
    return call


def test_captured_linear_gaussian_gradients_are_unbiased():
    """The exact-gradient check, run on the captured (fast-path) gradient."""
    from helpers import assert_unbiased

    from ppmodels.analysis import flat_grad

    m = LinearGaussian(5, 2, seed=0)
    x = m.sample_data(4, seed=1)
    params_list = m.model_parameters() + m.guide_parameters()
    exact = flat_grad(torch.autograd.grad(-m.elbo(x).sum(), params_list), params_list)
    for name in ("elbo", "stl"):
        call = _captured_gradient(m, name, x)
        torch.manual_seed(0)
        grads = torch.stack([call() for _ in range(1500)])
        assert_unbiased(grads, exact, what=f"captured {name}")


def test_captured_dreg_agrees_with_captured_iwae_in_expectation():
    """DReG on the captured path (its gradient scaling recorded by the capture) against IWAE on
    the same path: both unbiased for the IWAE-5 gradient, a two-sample z-test."""
    m = LinearGaussian(5, 2, seed=0)
    x = m.sample_data(4, seed=1)
    R, grads = 1500, {}
    for name in ("iwae", "dreg"):
        call = _captured_gradient(m, name, x, num_particles=5)
        torch.manual_seed(1 if name == "iwae" else 2)
        grads[name] = torch.stack([call() for _ in range(R)])
    a, b = grads["iwae"], grads["dreg"]
    z = (a.mean(0) - b.mean(0)) / ((a.var(0) + b.var(0)) / R).sqrt()
    assert z.abs().max() < 5, z
    k = sum(p.numel() for p in m.model_parameters())
    assert b[:, k:].var(0).sum() < a[:, k:].var(0).sum()  # and DReG's guide gradient is quieter



@pytest.mark.parametrize("optimizer", ["sgd", "adam-with-state"])
def test_the_fast_step_takes_any_optimizer_and_leaves_its_state_as_found(optimizer):
    """The graph gives loss and gradients only, so the fast step takes any optimizer (SGD with
    momentum here) and equals the plain step over five steps; an Adam that has taken steps
    before keeps its state through the check (the check's two steps are undone)."""
    from ppmodels import compiled
    from ppmodels.fit import make_optimizer, prepare, svi_step
    from ppmodels.objectives import make

    m, x = _Shifted(), torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    obj = make("elbo")
    params, pair = prepare(m, obj, (x,))
    plist = list(params.values())
    plain_loss = lambda b: obj.differentiable_loss(pair.model, pair.guide, *b)  # noqa: E731
    results = []
    for fast in (True, False):
        with torch.no_grad():
            for p in plist:
                p.zero_()
        if optimizer == "sgd":
            opt = torch.optim.SGD(plist, lr=0.05, momentum=0.9)
        else:
            opt = make_optimizer(plist, lr=0.05)
            torch.manual_seed(1)
            for _ in range(3):
                svi_step(plain_loss, opt, (x,))
        state = {(i, k): v.clone() for i, p in enumerate(plist) for k, v in opt.state[p].items() if torch.is_tensor(v)}
        kept = [p.detach().clone() for p in plist]
        plain = lambda b: svi_step(plain_loss, opt, b)  # noqa: E731
        step = plain
        if fast:
            step, info = compiled.build_step(lambda *b: plain_loss(b), (x,), plist, opt, plain_step=plain)
            assert step is not None, info.reason
            assert all(torch.equal(p, k) for p, k in zip(plist, kept))
            now = {(i, k): v for i, p in enumerate(plist) for k, v in opt.state[p].items() if torch.is_tensor(v)}
            assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
        torch.manual_seed(2)
        losses = [float(step((x,))) for _ in range(5)]
        results.append((losses, [p.detach().clone() for p in plist]))
    (a, pa), (b, pb) = results
    assert np.allclose(a, b, rtol=1e-5) and all(torch.allclose(u, v, rtol=1e-5, atol=1e-7) for u, v in zip(pa, pb))


class _HalfUsed(_Shifted):
    """``_Shifted`` whose model reads only the first entry of ``loc``: the second's gradient is
    exactly zero."""

    def model(self, x):
        pyro.module("shifted", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.loc * torch.tensor([1.0, 0.0]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def test_the_rule_compares_gradients_not_the_parameters_after_the_update():
    """Gradients that differ by rounding (1e-6 where the exact gradient is 0) are equal steps,
    although Adam's first update moves that entry by lr·sign(g), lr against 0: the check compares
    the loss and the gradients, not the parameters after the optimizer's step (which is the
    optimizer's own code on both paths). A rule on the parameters would refuse this step."""
    from ppmodels import compiled
    from ppmodels.fit import make_optimizer, prepare, svi_step
    from ppmodels.objectives import make

    m, x = _HalfUsed(), torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    obj = make("elbo")
    params, pair = prepare(m, obj, (x,))
    plist = list(params.values())
    loc = params["module.loc"]
    optimizer = make_optimizer(plist, lr=0.05)
    plain_loss = lambda b: obj.differentiable_loss(pair.model, pair.guide, *b)  # noqa: E731
    rounding = lambda: loc.grad[1].add_(1e-6)  # noqa: E731 - what a reordered sum could leave
    plain = lambda b: svi_step(plain_loss, optimizer, b, after_backward=rounding)  # noqa: E731
    step, info = compiled.build_step(lambda *b: plain_loss(b), (x,), plist, optimizer, plain_step=plain)
    assert step is not None, info.reason
    before = loc.detach().clone()
    torch.manual_seed(0)
    step((x,))
    assert loc.grad[1] == 0 and loc[1] == before[1]  # the fast step: exact zero, no move
    with torch.no_grad():
        loc.copy_(before)
    fresh = make_optimizer(plist, lr=0.05)
    torch.manual_seed(0)
    svi_step(plain_loss, fresh, (x,), after_backward=rounding)
    assert abs(float(loc.detach()[1] - before[1])) > 0.04  # the plain step's rounding: moved by about lr


def test_a_fast_path_not_taken_changes_nothing():
    """A step whose capture differs from the plain step (Python randomness frozen): build_step
    returns None, and the parameters, Adam's state (none yet) and the random state are as before."""
    from ppmodels import compiled
    from ppmodels.fit import make_optimizer, prepare, svi_step
    from ppmodels.objectives import make

    m, x = _Shifted(), torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    m.python_noise = True
    obj = make("elbo")
    params, pair = prepare(m, obj, (x,))
    plist = list(params.values())
    optimizer = make_optimizer(plist, lr=1e-2)
    plain_loss = lambda b: obj.differentiable_loss(pair.model, pair.guide, *b)  # noqa: E731
    before, rng = [p.detach().clone() for p in plist], torch.get_rng_state()
    step, info = compiled.build_step(lambda *b: plain_loss(b), (x,), plist, optimizer,
                                     plain_step=lambda b: svi_step(plain_loss, optimizer, b))
    assert step is None and "differs" in info.reason
    assert len(optimizer.state) == 0
    assert all(torch.equal(p, b) for p, b in zip(plist, before)) and all(p.grad is None for p in plist)
    assert torch.equal(torch.get_rng_state(), rng)
