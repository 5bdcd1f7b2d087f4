"""Burda et al. (2016)'s protocol: schedule, initialisation, the two-layer model, the recipe."""

import math

import pytest
import torch

from ppmodels import evaluate
from ppmodels.callbacks import lr_factor
from ppmodels.data import TensorData, synthetic_images
from ppmodels.fit import load_run
from ppmodels.models import VAE
from ppmodels.recipes import burda2016


def test_compressed_schedule_is_burdas_at_3280_passes_and_shrinks_in_proportion():
    spe = 7  # steps per pass
    full = 3280 * spe
    assert all(lr_factor("burda", s, full, spe) == lr_factor("burda-compressed", s, full, spe)
               for s in range(0, full, 13))
    # at 328 passes stage i spans 3^i * 0.1 passes: the last stage starts after 109.3 passes
    spe = 100
    T = 328 * spe
    assert lr_factor("burda-compressed", int(109.2 * spe), T, spe) == pytest.approx(10 ** (-6 / 7))
    assert lr_factor("burda-compressed", int(109.4 * spe), T, spe) == pytest.approx(0.1)
    assert lr_factor("burda-compressed", 0, T, spe) == 1.0


def test_burda_init_glorot_weights_zero_biases_and_output_bias_at_the_mean_pixel():
    torch.manual_seed(0)
    m = VAE.preset("burda")
    mean = torch.rand(784) * 0.9 + 0.05
    m.burda_init(mean)
    first = m.encoder.net[0]
    bound = math.sqrt(6 / (784 + 200))
    assert first.weight.abs().max() <= bound and first.weight.abs().max() > 0.9 * bound
    assert torch.all(first.bias == 0)
    assert torch.allclose(torch.sigmoid(m.decoder[-1].bias), mean, atol=1e-6)


def test_two_layer_vae_sites_sampling_and_its_likelihood_against_ancestral_sampling():
    """The guide's IS estimate of log p(x) agrees with a plain Monte-Carlo average of p(x | z1)
    over ancestral draws of (z2, z1) from the prior (no guide involved)."""
    torch.manual_seed(0)
    m = VAE.preset("burda2", x_dim=16, z_dim=(6, 3), hidden=((12,), (8,)))
    x = torch.bernoulli(torch.full((5, 16), 0.3))
    assert m.sites == ("z1", "z2")
    assert m.sample(4).shape == (4, 16)
    torch.manual_seed(1)
    a = evaluate.log_likelihood(m, TensorData(x), 20000)
    with torch.no_grad():
        n = 1_000_000
        loc, scale = m.down[0](torch.randn(n, 3))
        log_px = m.likelihood_dist((loc + scale * torch.randn_like(loc))[:, None]).log_prob(x)
        brute = torch.logsumexp(log_px, 0) - math.log(n)
    assert torch.allclose(a, brute, atol=0.4), (a, brute)
    assert a.mean() < brute.mean() + 0.05  # IS is a lower bound in expectation
    assert sorted(evaluate.active_units(m, TensorData(x))) == ["z1", "z2"]
    with pytest.raises(Exception, match="iaf guide is for one stochastic layer"):
        VAE.preset("burda2", guide="iaf")


def test_recipe_trains_with_the_protocol_and_measures_the_curve(tmp_path):
    images, _ = synthetic_images(240, seed=0)
    train, test = TensorData(images[:200], binarize="dynamic"), TensorData(images[200:], binarize="dynamic")
    states = {}

    class Snapshot:  # the model's state at each epoch's end, as the curve's callback saw it
        def on_epoch_end(self, state):
            states[state.epoch + 1] = {k: v.clone() for k, v in state.model.state_dict().items()}

    model, history, report = burda2016("burda", "iwae", 2, passes=3, train=train, test=test, nll_at=[1, 2],
                                       num_samples=20, device="cpu", out=tmp_path / "run", progress=False,
                                       callbacks=[Snapshot()])
    assert list(history["step"]) == [10, 20, 30]  # batch 20
    assert history["test_nll"].notna().tolist() == [True, True, False]
    assert history["lr"].iloc[0] < 1e-3  # the compressed schedule: stage 0 is a tiny part of pass 1
    assert report["passes"] == 3 and math.isfinite(report["test_nll"]) and report["nll_images"] == 40
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["settings"]["eps"] == 1e-4 and ckpt["settings"]["batch_size"] == 20
    assert ckpt["settings"]["lr_schedule"] == "burda-compressed"
    # the checkpoints of the curve's passes are kept, each the model of its pass
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-epoch*.pt")) == [
        "checkpoint-epoch1.pt", "checkpoint-epoch2.pt"]
    for epoch in (1, 2):
        kept, ckpt = load_run(tmp_path / "run" / f"checkpoint-epoch{epoch}.pt", device="cpu")
        assert ckpt["epoch"] == epoch
        assert all(torch.equal(v, states[epoch][k]) for k, v in kept.state_dict().items())
    assert not all(torch.equal(v, states[2][k]) for k, v in model.state_dict().items())


def test_a_resumed_recipe_reports_the_whole_runs_training_time(tmp_path):
    class StopAfterTwo:
        def on_epoch_end(self, state):
            state.stop = state.epoch + 1 == 2

    images, _ = synthetic_images(240, seed=0)
    train, test = TensorData(images[:200], binarize="dynamic"), TensorData(images[200:], binarize="dynamic")
    kw = dict(train=train, test=test, num_samples=5, device="cpu", out=tmp_path / "run", progress=False)
    _, first, _ = burda2016("burda", "elbo", 1, passes=3, callbacks=[StopAfterTwo()], **kw)
    _, history, report = burda2016("burda", "elbo", 1, passes=3, resume=True, **kw)
    assert list(first["epoch"]) == [1, 2] and list(history["epoch"]) == [1, 2, 3]
    assert report["train_seconds"] == history["seconds"].iloc[-1] > first["seconds"].iloc[-1]


def test_cli_recipe_trains_with_the_protocol_and_the_nll_along_the_way(fake_mnist, tmp_path):
    import json

    from ppmodels.cli import main

    out = tmp_path / "burda"
    assert main(["train", "vae", "--recipe", "burda2016", "--passes", "2", "--nll-at", "1", "--eval-subset", "20",
                 "--num-samples", "10", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    settings = ckpt["settings"]
    assert (settings["batch_size"], settings["eps"], settings["lr_schedule"]) == (20, 1e-4, "burda-compressed")
    assert ckpt["meta"]["config"]["hidden"] == (200, 200)  # the burda preset
    assert len(ckpt["history"]["test_nll"]) == 2 and math.isfinite(ckpt["history"]["test_nll"][0])
    report = json.loads((out / "report.json").read_text())
    assert report["epochs"] == 2 and report["nll_images"] == 20
    assert [p.name for p in out.glob("checkpoint-epoch*.pt")] == ["checkpoint-epoch1.pt"]  # the --nll-at pass's
    assert main(["evaluate", str(out / "checkpoint-epoch1.pt"), "--num-samples", "5", "--subset", "20", "--device", "cpu"]) == 0
    assert main(["sample", str(out / "checkpoint-epoch1.pt"), "-n", "4"]) == 0
    assert (out / "samples-checkpoint-epoch1.png").exists()
    for refused in (["--recipe", "burda2016", "--epochs", "3"], ["--passes", "3", "--epochs", "1"]):
        with pytest.raises(SystemExit) as e:  # the parser's rules (parsers exit)
            main(["train", "vae", *refused, "--out", str(tmp_path / "x")])
        assert e.value.code == 2
    assert main(["train", "vae", "--preset", "burda2", "--hidden", "32", "--epochs", "1", "--out", str(tmp_path / "z")]) == 2
