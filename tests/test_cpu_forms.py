"""The CPU forms of softplus, the Bernoulli likelihood and tanh (``ppmodels.cpu_forms``): their
accuracy against float64, their equality with ATen's operations, and their use by the compiled
fast path."""

import numpy as np
import torch
import torch.nn.functional as F

from ppmodels import cpu_forms
from ppmodels.cpu_forms import binary_cross_entropy_with_logits, log1p_unit, log_sigmoid, softplus, tanh


def _ulps(approx: torch.Tensor, exact: np.ndarray) -> np.ndarray:
    """|approx - exact| in units of float32's spacing at the exact value."""
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(approx.double().numpy() - exact) / spacing


def _unit_interval() -> torch.Tensor:
    return torch.cat([torch.linspace(0, 1, 1_000_001), torch.logspace(-40, 0, 20_001)])


def test_log1p_unit_is_within_3_ulp_of_float64_on_the_unit_interval():
    u = _unit_interval()
    exact = np.log1p(u.double().numpy())
    assert _ulps(log1p_unit(u), exact).max() <= 3.0
    assert log1p_unit(torch.tensor(0.0)) == 0
    # the bound has power: the fit one degree lower (its last coefficient dropped) is far outside it
    saved = cpu_forms.LOG1P_COEFFICIENTS
    try:
        cpu_forms.LOG1P_COEFFICIENTS = saved[:-1]
        assert _ulps(log1p_unit(u), exact).max() > 100
    finally:
        cpu_forms.LOG1P_COEFFICIENTS = saved


def test_tanh_is_within_2_ulp_of_float64():
    x = torch.linspace(0, 12, 2_000_001)
    x = torch.cat([x, -x, torch.logspace(-40, 0, 20_001), cpu_forms.TANH_CUT + torch.linspace(-1e-6, 1e-6, 101)])
    exact = np.tanh(x.double().numpy())
    assert _ulps(tanh(x), exact).max() <= 2.0
    special = torch.tensor([0.0, -0.0, 1e-45, float("inf"), float("-inf"), float("nan"), 1e4, -1e4])
    torch.testing.assert_close(tanh(special), torch.tanh(special), rtol=0, atol=0, equal_nan=True)
    assert torch.equal(tanh(special).signbit(), torch.tanh(special).signbit())
    # power: the polynomial one degree lower, or the cut where the subtraction loses digits, fails
    saved = cpu_forms.TANH_COEFFICIENTS, cpu_forms.TANH_CUT
    try:
        cpu_forms.TANH_COEFFICIENTS = saved[0][:-1]
        assert _ulps(tanh(x), exact).max() > 2.0
        cpu_forms.TANH_COEFFICIENTS, cpu_forms.TANH_CUT = saved[0], 0.05
        assert _ulps(tanh(x), exact).max() > 2.0
    finally:
        cpu_forms.TANH_COEFFICIENTS, cpu_forms.TANH_CUT = saved


def _logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    edge = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-4, -1e-4, 19.99, 20.0, 20.01, 40.0, -40.0, 88.0, -88.0, 104.0,
                         -104.0, 1e4, -1e4])
    return torch.cat([torch.randn(20_000, generator=g) * 6, edge])


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, rtol=4e-7, atol=1e-30, equal_nan=True)


def test_softplus_and_log_sigmoid_equal_torchs():
    x = _logits()
    for beta, threshold in ((1.0, 20.0), (2.0, 20.0), (0.5, 5.0), (3.0, 1.0)):
        _assert_close(softplus(x, beta, threshold), F.softplus(x, beta, threshold))
    _assert_close(log_sigmoid(x), F.logsigmoid(x))
    special = torch.tensor([float("inf"), float("-inf"), float("nan")])
    _assert_close(softplus(special), F.softplus(special))
    _assert_close(log_sigmoid(special), F.logsigmoid(special))


def _within_rounding(ours: torch.Tensor, exact: torch.Tensor, input: torch.Tensor) -> bool:
    """|ours - exact| <= 4 float32 epsilons of |input| + |exact| + 1 (the inputs' own rounding
    moves a form such as (1 - y) x + ... by that much), entry by entry, NaN where exact is."""
    bound = 4 * torch.finfo(torch.float32).eps * (input.double().abs() + exact.abs() + 1)
    err = (ours.double() - exact).abs()
    return bool(((err <= bound) | (ours.isnan() & exact.isnan())).all())


def test_binary_cross_entropy_with_logits_equals_atens_with_every_option():
    x = _logits().reshape(-1, 1).expand(-1, 3)
    g = torch.Generator().manual_seed(1)
    y = torch.bernoulli(torch.full(x.shape, 0.4), generator=g)
    soft = torch.rand(x.shape, generator=g)  # a likelihood of probabilities in [0, 1] too
    w, pw = torch.rand(3, generator=g), torch.rand(3, generator=g) * 3
    aten_bce = torch.ops.aten.binary_cross_entropy_with_logits
    for target in (y, soft):
        for weight, pos_weight in ((None, None), (w, None), (None, pw), (w, pw)):
            exact = aten_bce(x.double(), target.double(), *(None if t is None else t.double() for t in (weight, pos_weight)), 0)
            ours = binary_cross_entropy_with_logits(x, target, weight, pos_weight, 0)
            assert _within_rounding(ours, exact, x)
            assert _within_rounding(aten_bce(x, target, weight, pos_weight, 0), exact, x)  # ATen's own float32 too
            for reduction in (1, 2):
                torch.testing.assert_close(binary_cross_entropy_with_logits(x, target, weight, pos_weight, reduction),
                                           aten_bce(x, target, weight, pos_weight, reduction), rtol=1e-6, atol=0)
    # power: the same form with log(1 + u) computed as u (a biased likelihood) fails the bound
    wrong = (1 - y) * x - (x.clamp_max(0) - (-x.abs()).exp())
    assert not _within_rounding(wrong, aten_bce(x.double(), y.double(), None, None, 0), x)


def test_rewrite_replaces_the_ops_and_keeps_the_values_and_the_gradients():
    from ppmodels.compiled import capture

    g = torch.Generator().manual_seed(2)
    w = torch.randn(5, 7, generator=g, requires_grad=True)
    x, y = torch.randn(11, 5, generator=g), torch.bernoulli(torch.full((11, 7), 0.5), generator=g)

    def loss_and_grad(x, y, w):
        with torch.enable_grad():
            h = F.softplus(x @ w)
            loss = F.binary_cross_entropy_with_logits(torch.tanh(h - 1.0) * 3, y, reduction="sum")
            return loss, torch.autograd.grad(loss, w)[0]

    gm = capture(loss_and_grad, [x, y, w])
    before = gm(x, y, w)
    assert cpu_forms.rewrite(gm) == 3
    assert not {n.target for n in gm.graph.nodes} & {torch.ops.aten.softplus.default, torch.ops.aten.tanh.default,
                                                      torch.ops.aten.binary_cross_entropy_with_logits.default}
    after = gm(x, y, w)
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert cpu_forms.rewrite(gm) == 0


def test_other_dtypes_keep_torchs_operations():
    """The forms are exact to float32's precision only: float64 keeps torch's values exactly, and
    a recorded float64 graph is left as it is."""
    from ppmodels.compiled import capture

    x = _logits().double()
    y = torch.bernoulli(torch.full(x.shape, 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(3))
    assert torch.equal(softplus(x, 2.0, 5.0), F.softplus(x, 2.0, 5.0)) and torch.equal(tanh(x), torch.tanh(x))
    assert torch.equal(binary_cross_entropy_with_logits(x, y, None, None, 0),
                       F.binary_cross_entropy_with_logits(x, y, reduction="none"))
    gm = capture(lambda x, y: (F.binary_cross_entropy_with_logits(torch.tanh(F.softplus(x)), y),), [x, y])
    assert cpu_forms.rewrite(gm) == 0
    mixed = capture(lambda x, y: (torch.tanh(x.float()).double() + torch.tanh(x),), [x, y])
    assert cpu_forms.rewrite(mixed) == 1  # the float32 tanh only


def test_the_compiled_fit_step_on_a_cpu_uses_the_forms_and_equals_the_plain_step(monkeypatch):
    """A VAE (softplus layers, a Bernoulli likelihood) compiled by fit on the CPU: both operations
    are rewritten, and the run equals the plain one."""
    from ppmodels.fit import fit
    from ppmodels.models import VAE

    rewritten = []
    original = cpu_forms.rewrite
    monkeypatch.setattr(cpu_forms, "rewrite", lambda gm: rewritten.append(original(gm)) or rewritten[-1])
    x = torch.bernoulli(torch.full((40, 20), 0.3), generator=torch.Generator().manual_seed(0))
    runs = []
    for opts in ({"compile_min_steps": 1}, {"jit": False}):
        torch.manual_seed(0)
        runs.append(fit(VAE(x_dim=20, z_dim=3, hidden=(8,)), x, steps=4, batch_size=20, lr=1e-2, device="cpu", seed=0,
                        **opts))
    assert runs[0].attrs["fast_path"] == "compiled", runs[0].attrs["fast_path_reason"]
    assert rewritten and rewritten[0] >= 3  # the encoder's and decoder's softplus, the likelihood
    assert f"{rewritten[0]} operations in ppmodels.cpu_forms' forms" in runs[0].attrs["fast_path_reason"]
    assert np.allclose(runs[0]["train_loss"], runs[1]["train_loss"], rtol=1e-5)


def test_the_forms_take_atens_defaults_as_recorded():
    """A recording keeps only the arguments given (F.binary_cross_entropy_with_logits(x, y) is
    recorded without its reduction, the mean): the forms' defaults must be ATen's. Also softplus at
    its threshold (torch returns x only above it)."""
    from ppmodels.compiled import capture

    g = torch.Generator().manual_seed(4)
    x = torch.cat([torch.rand(1000, generator=g) * 15 + 5, torch.randn(1000, generator=g) * 3, torch.ones(1)])
    y = torch.bernoulli(torch.full(x.shape, 0.5), generator=g)
    calls = lambda x, y: (F.binary_cross_entropy_with_logits(x, y), F.softplus(x), F.softplus(x, 1, 1),  # noqa: E731
                          F.softplus(x, beta=2))
    gm = capture(calls, [x, y])
    assert cpu_forms.rewrite(gm) == 4
    for ours, theirs in zip(gm(x, y), calls(x, y)):
        torch.testing.assert_close(ours, theirs, rtol=4e-7, atol=1e-30)
    at_threshold = softplus(torch.ones(1), 1, 1)
    torch.testing.assert_close(at_threshold, F.softplus(torch.ones(1), 1, 1), rtol=4e-7, atol=0)
    assert at_threshold != 1.0


def test_the_forms_compiled_keep_their_bounds():
    """Compiled by inductor (its own exp, fused with the polynomial), against float64: tanh within
    2 ulp, softplus within 3."""
    x = torch.cat([torch.linspace(-12, 12, 400_001), torch.logspace(-30, 1, 10_001)])
    both = torch.compile(lambda x: (tanh(x), softplus(x)), dynamic=False)
    t, s = both(x)
    assert _ulps(t, np.tanh(x.double().numpy())).max() <= 2.0
    assert _ulps(s, F.softplus(x.double()).numpy()).max() <= 3.0


class _PyroExampleVAE(torch.nn.Module):
    """The VAE as Pyro's ``examples/vae/vae.py`` writes it (softplus layers, a sigmoid decoder,
    ``Bernoulli(probs)``, ``pyro.module`` per network), small, declared static."""

    static_structure = True

    def __init__(self, z_dim=3, hidden=16, x_dim=20):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = (torch.nn.Linear(x_dim, hidden), torch.nn.Linear(hidden, z_dim),
                                          torch.nn.Linear(hidden, z_dim))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(z_dim, hidden), torch.nn.Softplus(),
                                           torch.nn.Linear(hidden, x_dim), torch.nn.Sigmoid())
        self.z_dim = z_dim

    def model(self, x):
        import pyro
        import pyro.distributions as dist

        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(self.decoder(z), validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        import pyro
        import pyro.distributions as dist

        pyro.module("encoder", torch.nn.ModuleList([self.fc1, self.fc21, self.fc22]))
        with pyro.plate("data", x.shape[0]):
            hidden = F.softplus(self.fc1(x))
            pyro.sample("latent", dist.Normal(self.fc21(hidden), self.fc22(hidden).exp()).to_event(1))


def test_a_pyro_example_vae_compiled_with_the_forms_gives_pyros_trace_elbo():
    """Pyro's own Trace_ELBO, under one seed and the same parameters, is the reference for the
    compiled step's loss, and its gradients for the compiled step's."""
    import pyro
    from pyro.infer import Trace_ELBO

    from ppmodels.compiled import build_step
    from ppmodels.fit import prepare, svi_step
    from ppmodels.objectives import make

    torch.manual_seed(0)
    vae = _PyroExampleVAE()
    x = torch.bernoulli(torch.full((30, 20), 0.3), generator=torch.Generator().manual_seed(5))
    pyro.clear_param_store()
    objective = make("elbo")
    params, pair = prepare(vae, objective, (x,))
    loss = lambda b: objective.differentiable_loss(pair.model, pair.guide, *b)  # noqa: E731
    optimizer = torch.optim.SGD(list(params.values()), lr=0.0)  # lr 0: the parameters stay the reference's
    step, info = build_step(lambda *b: loss(b), (x,), list(params.values()), optimizer, kind="compiled",
                            plain_step=lambda b: svi_step(loss, optimizer, b))
    assert step is not None and info.cpu_forms >= 3, info  # two softplus, the likelihood
    torch.manual_seed(7)
    ours = step((x,))
    ours_grads = [p.grad.clone() for p in params.values()]
    torch.manual_seed(7)
    theirs = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    theirs_grads = torch.autograd.grad(theirs, list(params.values()))
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=0)
    for g, h in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-5 * float(h.abs().max()))
