"""Callbacks, the KL weight β and its schedules."""

import math

import numpy as np

import pyro
import pytest
import torch

from ppmodels.analysis import replicate_gradients
from ppmodels.callbacks import EarlyStopping, KLAnnealing
from ppmodels.data import synthetic_images
from ppmodels.fit import fit, make_optimizer, prepare, svi_step
from ppmodels.models import VAE, LinearGaussian
from ppmodels.objectives import make

from helpers import assert_unbiased, z_scores

R = 2000


@pytest.mark.parametrize("name", ["elbo", "meanfield", "stl"])
@pytest.mark.parametrize("beta", [0.5, 4.0])
def test_kl_weight_gradient_is_exact_in_expectation(name, beta):
    m = LinearGaussian(5, 2, seed=0)
    x = m.sample_data(4, seed=1)
    params = m.model_parameters() + m.guide_parameters()
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(-m.elbo(x, beta).sum(), params)])
    grads, bounds = replicate_gradients(make(name, kl_weight=beta), m, (x,), params, R, seed=1)
    assert_unbiased(grads, exact, what=f"{name} kl_weight={beta}")
    assert abs(bounds.mean() - m.elbo(x, beta).sum()) < 5 * bounds.std() / R**0.5


def test_kl_weight_power_an_ignored_weight_fails_the_check():
    m = LinearGaussian(5, 2, seed=0)
    x = m.sample_data(4, seed=1)
    params = m.model_parameters() + m.guide_parameters()
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(-m.elbo(x, 4.0).sum(), params)])
    grads, _ = replicate_gradients(make("elbo"), m, (x,), params, R, seed=1)  # beta = 1, not 4
    assert z_scores(grads, exact).abs().max() > 5


def test_kl_weight_reaches_the_captured_step():
    """A KL weight set between steps is an input of the captured step, not a constant: the
    fast step's losses equal the plain step's for three weights."""
    from ppmodels import compiled

    torch.manual_seed(0)
    vae = VAE(x_dim=784, z_dim=4, hidden=(16,))
    x = (synthetic_images(32, seed=0)[0] > 127).float()
    objective = make("elbo")
    params, fast = prepare(vae, objective, (x,))
    objective._kl_weight(x.device)
    plain_loss = lambda b: objective.differentiable_loss(fast.model, fast.guide, *b)  # noqa: E731
    optimizer = make_optimizer(list(params.values()), lr=1e-3)
    plain = lambda b: svi_step(plain_loss, optimizer, b)  # noqa: E731
    step, info = compiled.build_step(lambda *b: plain_loss(b), (x,), list(params.values()), optimizer,
                                     extra=[objective.kl_weight], plain_step=plain)
    assert step is not None, info.reason
    before = [p.detach().clone() for p in params.values()]
    for beta in (0.0, 0.3, 2.0):
        objective.set_kl_weight(beta)
        losses = []
        for run in (step, plain):
            with torch.no_grad():
                for p, b in zip(params.values(), before):
                    p.copy_(b)
            torch.manual_seed(5)
            losses.append(run((x,)))
        assert torch.allclose(losses[0], losses[1], rtol=1e-5), (beta, losses)


def test_kl_annealing_schedules():
    linear = KLAnnealing(steps=100, start=0.0, end=1.0)
    assert [linear.weight(s) for s in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]
    cyclic = KLAnnealing(steps=100, cycles=4, ratio=0.5)  # 25-step cycles, rising over 12.5 steps
    assert cyclic.weight(0) == 0.0 and cyclic.weight(25) == 0.0 and cyclic.weight(20) == 1.0
    assert math.isclose(cyclic.weight(31.25), 0.5)  # 6.25 steps into the second cycle
    assert cyclic.weight(1000) == 1.0


class Recorder:
    def __init__(self):
        self.calls = []

    def on_fit_start(self, state):
        self.calls.append(("fit_start", state.step))

    def on_epoch_start(self, state):
        self.calls.append(("epoch_start", state.epoch))

    def on_step_start(self, state):
        self.calls.append(("step_start", state.step))

    def on_step_end(self, state):
        self.calls.append(("step_end", state.step))

    def on_epoch_end(self, state):
        self.calls.append(("epoch_end", state.epoch))
        state.row["custom"] = 1.0

    def on_fit_end(self, state):
        self.calls.append(("fit_end", state.step))


def test_callbacks_run_in_order_and_add_history_columns():
    m = LinearGaussian(5, 2, seed=0)
    rec = Recorder()
    history = fit(m, m.sample_data(20, seed=1), epochs=2, batch_size=10, device="cpu", callbacks=[rec])
    assert rec.calls == [("fit_start", 0), ("epoch_start", 0),
                         ("step_start", 0), ("step_end", 1), ("step_start", 1), ("step_end", 2), ("epoch_end", 0),
                         ("epoch_start", 1),
                         ("step_start", 2), ("step_end", 3), ("step_start", 3), ("step_end", 4), ("epoch_end", 1),
                         ("fit_end", 4)]
    assert list(history["custom"]) == [1.0, 1.0]
    # the built-ins filled the row before the user's hook, and closed it after
    assert list(history.columns) == ["epoch", "step", "train_loss", "lr", "custom", "seconds"]


def test_on_fit_end_runs_when_training_fails_and_the_first_error_wins(tmp_path):
    from ppmodels.fit import NonFiniteLoss

    class Blow:
        def on_step_end(self, state):
            if state.step == 3:
                with torch.no_grad():
                    next(iter(state.params.values())).fill_(float("nan"))

    class Seen:
        error = None

        def on_fit_end(self, state):
            Seen.error = state.error
            raise RuntimeError("a broken on_fit_end")

    m = LinearGaussian(5, 2, seed=0)
    with pytest.raises(NonFiniteLoss, match="at step 4"):
        fit(m, m.sample_data(20, seed=1), epochs=3, batch_size=10, device="cpu", callbacks=[Blow(), Seen()],
            out=tmp_path / "run", log_every=1)
    assert isinstance(Seen.error, NonFiniteLoss)
    assert (tmp_path / "run" / "checkpoint.pt").exists()  # epoch 1's checkpoint, the last good one


def test_kl_annealing_in_fit_records_the_weight_and_resumes(tmp_path):
    m = LinearGaussian(5, 2, seed=0)
    x = m.sample_data(40, seed=1)
    history = fit(m, x, epochs=3, batch_size=10, device="cpu", callbacks=[KLAnnealing(steps=8)], out=tmp_path / "a")
    assert list(history["kl_weight"]) == [3 / 8, 7 / 8, 1.0]
    m2 = LinearGaussian(5, 2, seed=0)
    fit(m2, x, epochs=1, batch_size=10, device="cpu", callbacks=[KLAnnealing(steps=8)], out=tmp_path / "b")
    m2 = LinearGaussian(5, 2, seed=0)
    fit(m2, x, epochs=3, batch_size=10, device="cpu", callbacks=[KLAnnealing(steps=8)], out=tmp_path / "b", resume=True)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), m2.parameters()))


def test_early_stopping_stops_and_keeps_the_checkpoint(tmp_path):
    m = LinearGaussian(5, 2, seed=0)
    x = m.sample_data(40, seed=1)

    class Flat:  # a metric that never improves after the first epoch
        def on_epoch_end(self, state):
            state.row["score"] = 0.0

    history = fit(m, x, epochs=50, batch_size=20, device="cpu", out=tmp_path,
                  callbacks=[Flat(), EarlyStopping("score", patience=2)])
    assert len(history) == 3 and bool(history["stopped_early"].iloc[-1])
    from ppmodels.fit import load_checkpoint

    assert load_checkpoint(tmp_path)["epoch"] == 3


def test_a_callback_without_hooks_is_refused():
    from ppmodels.utils import PPModelsError

    m = LinearGaussian(5, 2, seed=0)
    with pytest.raises(PPModelsError, match="has none of the hooks"):
        fit(m, m.sample_data(20, seed=1), epochs=1, device="cpu", callbacks=[object()])


def test_cli_kl_warmup_and_tensorboard_write_readable_events(fake_mnist, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ppmodels.cli import main

    out = tmp_path / "run"
    assert main(["train", "vae", "--steps", "6", "--batch-size", "50", "--kl-warmup", "4", "--tensorboard",
                 "--hidden", "16", "--z-dim", "2", "--num-samples", "4", "--eval-subset", "20", "--quiet",
                 "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "epoch/train_loss" in scalars and "epoch/kl_weight" in scalars and "epoch/test_elbo" in scalars
    assert events.Scalars("epoch/kl_weight")[-1].value == 1.0
    assert "samples" in events.Tags()["images"]


def test_core_does_not_import_tensorboard():
    import subprocess
    import sys

    code = "import sys, ppmodels.fit, ppmodels.callbacks, ppmodels.cli; print('tensorboard' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_collapse_diagnostics_record_kl_per_unit_and_write_the_heat_map(tmp_path):
    from ppmodels.callbacks import CollapseDiagnostics
    from ppmodels.evaluate import kl_per_unit

    m = LinearGaussian(5, 2, seed=0)
    x = m.sample_data(60, seed=1)
    diag = CollapseDiagnostics(x[:30])
    history = fit(m, x, epochs=3, batch_size=20, device="cpu", out=tmp_path, callbacks=[diag])
    assert {"kl", "active_units"} <= set(history.columns)
    # the KL term against the closed form: KL(N(m, s^2) || N(0, 1)) per unit, averaged over x
    mean = x[:30] @ m.A.T + m.c
    s2 = (2 * m.log_s).exp()
    exact = 0.5 * (mean**2 + s2 - 1 - s2.log()).mean(0)
    assert torch.allclose(kl_per_unit(m, x[:30])["z"], exact.detach(), atol=1e-5)
    assert abs(history["kl"].iloc[-1] - float(exact.sum())) < 1e-4
    assert (tmp_path / "kl_units.png").exists() and (tmp_path / "kl_units.csv").exists()


def test_compare_puts_runs_side_by_side(fake_mnist, tmp_path, capsys):
    import pandas as pd

    from ppmodels.cli import main

    small = ["--steps", "4", "--batch-size", "50", "--hidden", "16", "--z-dim", "2", "--num-samples", "4",
             "--eval-subset", "20", "--quiet"]
    for beta in ("0.5", "2"):
        assert main(["train", "vae", "--kl-weight", beta, "--out", str(tmp_path / f"b{beta}"), *small]) == 0
    capsys.readouterr()
    figure = tmp_path / "cmp.png"
    assert main(["compare", str(tmp_path / "b0.5"), str(tmp_path / "b2"), "--out", str(figure)]) == 0
    table = pd.read_csv(tmp_path / "cmp.csv")
    assert list(table["kl_weight"]) == [0.5, 2.0] and {"test_nll", "test_elbo", "kl", "active_units"} <= set(table.columns)
    assert figure.exists() and "test_nll" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "nothing"), "--out", str(figure)]) == 2


def test_cli_trains_and_reports_an_iaf_guide(fake_mnist, tmp_path):
    import json

    from ppmodels.cli import main

    out = tmp_path / "iaf"
    assert main(["train", "vae", "--guide", "iaf", "--flow-layers", "2", "--steps", "4", "--batch-size", "50",
                 "--hidden", "16", "--z-dim", "2", "--num-samples", "4", "--eval-subset", "20", "--quiet",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["active_units"] >= 0 and report["test_nll"] > 0
    assert main(["evaluate", str(out), "--num-samples", "4", "--subset", "10"]) == 0


def test_a_run_reloads_with_the_iaf_masks_it_was_trained_with(tmp_path):
    from ppmodels.fit import load_run

    torch.manual_seed(0)
    vae = VAE(x_dim=784, z_dim=4, hidden=(16,), guide="iaf")
    x = (synthetic_images(40, seed=0)[0] > 127).float()
    fit(vae, x, epochs=1, batch_size=20, device="cpu", out=tmp_path / "run", meta={"family": "vae", "config": vae.config})
    torch.manual_seed(1)  # another seed: other random masks, unless they come from the checkpoint
    loaded, _ = load_run(tmp_path / "run", device="cpu")
    for (name, a), (_, b) in zip(vae.named_buffers(), loaded.named_buffers()):
        assert torch.equal(a, b), name


def _grads(objective, m, x, seed=3):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    params = m.model_parameters() + m.guide_parameters()
    loss = objective.differentiable_loss(m.model, m.guide, x)
    return loss, [g.reshape(-1) for g in torch.autograd.grad(loss, params)]


@pytest.mark.parametrize("name", ["elbo", "stl"])
def test_free_bits_is_the_clamped_kl_per_dimension(name):
    """Free bits, on the same draws: λ = 0 is the ELBO; a dimension whose batch KL is above λ gets
    the ELBO's guide gradient, one below λ gets the reconstruction's only (β = 0)."""
    m = LinearGaussian(5, 2, seed=0)
    with torch.no_grad():
        m.c.copy_(torch.tensor([3.0, 0.0]))  # dimension 0: KL about 4.5 nats; dimension 1: small
        m.A[1].zero_()
        m.log_s[1] = -0.3  # KL about 0.07 nats, below λ = 1, and not q = p (where STL has no KL gradient)
    x = m.sample_data(16, seed=1)
    plain, plain_g = _grads(make(name), m, x)
    zero, zero_g = _grads(make(name, free_bits=0.0), m, x)
    assert torch.equal(plain, zero) and all(torch.equal(a, b) for a, b in zip(plain_g, zero_g))
    _, fb_g = _grads(make(name, free_bits=1.0), m, x)
    _, recon_g = _grads(make(name, kl_weight=0.0), m, x)
    # guide parameters: A (2x5), c (2), log_s (2); dimension 0 is row 0 / entry 0
    A, c, log_s = fb_g[3:]
    A_full, c_full, s_full = plain_g[3:]
    A_rec, c_rec, s_rec = recon_g[3:]
    assert torch.allclose(A[:5], A_full[:5], atol=1e-4) and torch.allclose(c[0], c_full[0], atol=1e-4)
    assert torch.allclose(A[5:], A_rec[5:], atol=1e-4) and torch.allclose(log_s[1], s_rec[1], atol=1e-4)
    assert not torch.allclose(log_s[1], s_full[1], atol=1e-3)  # the check can tell the two apart
    _, all_clamped = _grads(make(name, free_bits=1e6), m, x)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(all_clamped, recon_g))


def test_free_bits_refused_where_it_does_not_apply():
    from ppmodels.utils import PPModelsError

    with pytest.raises(PPModelsError, match="free_bits is for elbo and stl"):
        make("reinforce", free_bits=0.5)
    with pytest.raises(PPModelsError, match="free_bits must be"):
        make("elbo", free_bits=-1)
    assert make("elbo", free_bits=0.5).options()["free_bits"] == 0.5


def test_a_kl_schedule_reaches_fits_fast_path():
    """KL warm-up through fit: the captured step's losses follow β step by step, as the plain
    step's do. β is a tensor the graph reads; were it the float 1.0 when the step is captured,
    the graph would keep 1.0 and the losses would part."""
    from ppmodels.callbacks import KLAnnealing

    x = (synthetic_images(80, seed=0)[0] > 127).float()
    runs = []
    for jit in (True, False):
        torch.manual_seed(0)
        vae = VAE(x_dim=784, z_dim=4, hidden=(16,))
        runs.append(fit(vae, x, steps=8, batch_size=20, lr=1e-2, device="cpu", seed=1, jit=jit, log_every=1,
                        callbacks=[KLAnnealing(steps=8)]))
    fast, plain = runs
    assert fast.attrs["fast_path"] == "graph", fast.attrs["fast_path_reason"]
    assert np.allclose(fast["train_loss"], plain["train_loss"], rtol=1e-5)


def test_a_kl_weight_set_by_any_callback_reaches_fits_fast_path():
    """A user's own callback that changes β through the public ``set_kl_weight`` (0 for 30
    steps, then 1), marked in no way: the captured step (60 steps: the graph) trains as the
    plain step does. Fails if β = 1 at the capture freezes it in the graph."""

    class StepWarmup:
        def on_step_start(self, state):
            state.objective.set_kl_weight(0.0 if state.step < 30 else 1.0)

    x = (torch.rand(200, 16, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    runs = []
    for jit in (None, False):
        torch.manual_seed(0)
        runs.append(fit(VAE(16, 3, (8,), "tanh"), x, steps=60, batch_size=20, lr=1e-2, device="cpu", seed=0, jit=jit,
                        log_every=1, callbacks=[StepWarmup()]))
    fast, plain = runs
    assert fast.attrs["fast_path"] == "graph", fast.attrs["fast_path_reason"]
    assert np.allclose(fast["train_loss"], plain["train_loss"], rtol=1e-5)
