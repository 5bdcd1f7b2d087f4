"""The sigmoid belief net (ppmodels.models.sbn) and ``ppmodels train sbn``: its densities against a
hand computation on tiny nets, dynamic binarization through fit, every discrete objective, the
family end to end, bad input."""

import itertools
import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from ppmodels import evaluate
from ppmodels.cli import main
from ppmodels.data import TensorData
from ppmodels.fit import fit, load_run
from ppmodels.models import REGISTRY, SigmoidBeliefNet
from ppmodels.utils import PPModelsError

L, D, B = 3, 4, 5  # the tiny net: 3 latents, 4 pixels, 5 images


def _net(layers: str, seed: int = 0) -> SigmoidBeliefNet:
    """A tiny net with every parameter drawn at random (not its zero-initialised prior)."""
    torch.manual_seed(seed)
    m = SigmoidBeliefNet(latents=L, layers=layers, x_dim=D)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * (1.0 if p.dim() == 1 else 1.5 / math.sqrt(p.shape[1])))
    return m


def _by_hand(seq: nn.Sequential, v: torch.Tensor, slope: float = 0.3) -> torch.Tensor:
    """The MLP's affine maps with LeakyReLU(slope) between them, written out."""
    linears = [layer for layer in seq if isinstance(layer, nn.Linear)]
    for i, lin in enumerate(linears):
        v = v @ lin.weight.T + lin.bias
        if i < len(linears) - 1:
            v = torch.where(v > 0, v, slope * v)
    return v


def _log_bernoulli(value: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """sum_i v_i log sigma(l_i) + (1 - v_i) log sigma(-l_i), over the last dimension."""
    return (value * F.logsigmoid(logits) + (1 - value) * F.logsigmoid(-logits)).sum(-1)


def _hand_log_joint(m: SigmoidBeliefNet, x: torch.Tensor, z: torch.Tensor, slope: float = 0.3) -> torch.Tensor:
    return _log_bernoulli(z, m.prior_logits) + _log_bernoulli(x, _by_hand(m.decoder, z, slope))


STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=L)))


@pytest.mark.parametrize("layers", ["linear", "nonlinear"])
def test_shapes_and_log_probabilities_match_a_hand_computation(layers):
    m = _net(layers)
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((B, D), 0.4), generator=g)
    z = torch.bernoulli(torch.full((B, L), 0.5), generator=g)
    with torch.no_grad():
        guide = poutine.trace(m.guide).get_trace(x)
        model = poutine.trace(poutine.condition(m.model, {"z": z})).get_trace(x)
        guide.compute_log_prob(), model.compute_log_prob()
        assert guide.nodes["z"]["value"].shape == (B, L) and guide.nodes["z"]["log_prob"].shape == (B,)
        assert guide.nodes["z"]["fn"].event_shape == (L,) and not guide.nodes["z"]["infer"].get("enumerate")
        assert model.nodes["x"]["log_prob"].shape == (B,) and model.nodes["z"]["log_prob"].shape == (B,)
        drawn = guide.nodes["z"]["value"]
        assert torch.allclose(guide.nodes["z"]["log_prob"], _log_bernoulli(drawn, _by_hand(m.encoder, x)), atol=1e-5)
        joint = model.nodes["z"]["log_prob"] + model.nodes["x"]["log_prob"]
        assert torch.allclose(joint, _hand_log_joint(m, x, z), atol=1e-5)

        # the marginal likelihood and the ELBO, summed over the 2^3 states by hand
        log_joint = torch.stack([_hand_log_joint(m, x, s.expand(B, L)) for s in STATES], -1)  # (B, 8)
        log_q = torch.stack([_log_bernoulli(s.expand(B, L), _by_hand(m.encoder, x)) for s in STATES], -1)
        assert torch.allclose(m.exact_log_marginal(x), log_joint.logsumexp(-1), atol=1e-5)
        assert torch.allclose(m.exact_elbo(x), (log_q.exp() * (log_joint - log_q)).sum(-1), atol=1e-5)
        # ppmodels.evaluate's importance-sampled likelihood (2000 draws; 20 estimates per image) has it as
        # its mean, within 4 standard errors (its downward bias, about half an estimate's variance, is far less)
        est = evaluate.log_likelihood(m, x.repeat_interleave(20, 0), 2000).reshape(B, 20)
        zs = (est.mean(1) - log_joint.logsumexp(-1)) / (est.std(1) / math.sqrt(20))
        assert zs.abs().max() < 4, zs
        if layers == "nonlinear":  # power: the slope is seen (torch's default 0.01 is another net)
            assert not torch.allclose(joint, _hand_log_joint(m, x, z, slope=0.01), atol=1e-3)


def test_the_monte_carlo_elbo_has_the_enumerated_mean():
    """ppmodels.evaluate.elbo on 4000 copies of each image: the mean within 4 standard errors of
    the enumerated ELBO; the log marginal likelihood (higher by KL(q || p(z | x))) is rejected."""
    m = _net("nonlinear", seed=3)
    x = torch.bernoulli(torch.full((B, D), 0.5), generator=torch.Generator().manual_seed(2))
    R = 4000
    est = evaluate.elbo(m, x.repeat_interleave(R, 0), generator=torch.Generator().manual_seed(0)).reshape(B, R)
    mean, se = est.mean(1), est.std(1) / math.sqrt(R)
    with torch.no_grad():
        assert ((mean - m.exact_elbo(x)) / se).abs().max() < 4
        assert ((mean - m.exact_log_marginal(x)) / se).abs().max() > 4  # power check


class _Batches:
    """Records each step's batch (the observations as served)."""

    def __init__(self):
        self.seen = []

    def on_step_start(self, state):
        self.seen.append(state.batch[0].clone())


def _served(binarize: str, epochs: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The batches fit serves an SBN over ``epochs`` epochs of 200 copies of one grey image."""
    grey = torch.linspace(0.05, 0.95, 64)
    data = TensorData(grey.expand(200, 64).clone(), binarize=binarize)
    rec = _Batches()
    fit(SigmoidBeliefNet(latents=2, x_dim=64), data, objective="rloo", num_particles=2, steps=epochs,
        batch_size=200, device="cpu", callbacks=[rec])
    return torch.stack(rec.seen), grey


def _max_pixel_z(batch: torch.Tensor, p: torch.Tensor) -> float:
    """The largest |z| over pixels of the batch's pixel means against intensities p."""
    return float(((batch.mean(0) - p) / (p * (1 - p) / batch.shape[0]).sqrt()).abs().max())


def test_dynamic_binarization_draws_new_binary_batches_each_epoch_with_the_right_mean():
    served, p = _served("dynamic")
    assert served.shape == (3, 200, 64) and bool(((served == 0) | (served == 1)).all())
    column_sums = served.sum(1)  # a batch's rows are a permutation: compare what permutations keep
    assert not torch.equal(column_sums[0], column_sums[1]) and not torch.equal(column_sums[1], column_sums[2])
    # each epoch's pixel means: Bernoulli(grey level); 64 pixels, |z| < 4 (Bonferroni-safe)
    assert max(_max_pixel_z(batch, p) for batch in served) < 4
    # power checks: static binarization repeats the same binary images (permuted) every epoch; a
    # threshold at 1/2 is binary but has the wrong mean
    fixed, _ = _served("fixed")
    assert torch.equal(fixed.sum(1)[0], fixed.sum(1)[1]) and torch.equal(fixed.sum(1)[1], fixed.sum(1)[2])
    assert _max_pixel_z((p > 0.5).float().expand(200, 64), p) > 4


OBJECTIVES = ["reinforce", "rloo", "arm", "disarm", "gumbel", "st-gumbel", "vimco"]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_discrete_objective_trains_the_sbn(objective):
    layers = "nonlinear" if OBJECTIVES.index(objective) % 2 else "linear"
    m = SigmoidBeliefNet(latents=4, layers=layers, x_dim=16)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.bernoulli(torch.full((32, 16), 0.3), generator=torch.Generator().manual_seed(0))
    history = fit(m, x, objective=objective, num_particles=2, steps=2, batch_size=16, lr=1e-2, device="cpu")
    assert len(history) == 1 and math.isfinite(history["train_loss"].iloc[-1])
    for name in ("prior_logits", "encoder.0.weight", "decoder.0.weight"):  # each part learns
        assert not torch.equal(m.state_dict()[name], before[name]), name


def test_the_family_trains_end_to_end_and_evaluate_and_sample_work(fake_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sbn", "--latents", "8", "--layers", "nonlinear", "--steps", "2", "--eval-subset", "20",
                 "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    for name in ("history.csv", "checkpoint.pt", "report.json", "samples.png", "reconstructions.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["nll_samples"] == 100 and report["nll_images"] == 20 and report["test_bound"] == -report["test_nll"]
    assert report["test_bound"] > report["test_elbo"] - 5 and "active_units" not in report
    assert "test bound" in capsys.readouterr().out
    model, ckpt = load_run(out, "cpu")
    assert isinstance(model, SigmoidBeliefNet) and model.config == {"latents": 8, "layers": "nonlinear", "x_dim": 784}
    assert ckpt["meta"]["args"]["objective"] == "None" and ckpt["settings"]["lr"] == 1e-4
    assert ckpt["settings"]["batch_size"] == 50 and "disarm" in ckpt["settings"]["objective"].lower()
    assert main(["evaluate", str(out), "--num-samples", "10", "--subset", "10", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["nll_samples"] == 10
    assert main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "s.png").is_file()


def _exit(args):
    try:
        return main(args)
    except SystemExit as e:  # argparse
        return e.code


@pytest.mark.parametrize("args, says", [
    (["--latents", "0"], "--latents"),
    (["--layers", "deep"], "--layers"),
    (["--objective", "arm", "-K", "3"], "even integer"),
    (["--objective", "dreg"], "reparameterizable"),
])
def test_bad_options_are_one_line_errors(args, says, fake_mnist, tmp_path, capsys):
    code = _exit(["train", "sbn", *args, "--steps", "1", "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err


def test_bad_model_input_is_a_short_error():
    assert REGISTRY["sbn"] is SigmoidBeliefNet and SigmoidBeliefNet.default_objective == "disarm"
    for config in ({"layers": "deep"}, {"latents": 0}, {"x_dim": 2.5}):
        with pytest.raises(PPModelsError, match="SigmoidBeliefNet"):
            SigmoidBeliefNet(**config)
    m = SigmoidBeliefNet(latents=20, x_dim=4)
    with pytest.raises(PPModelsError, match=r"expects a batch of shape \(B, 4\)"):
        m.model(torch.zeros(3, 5))
    with pytest.raises(PPModelsError, match="latents <= 12"):
        m.exact_log_marginal(torch.zeros(3, 4))
    with pyro.validation_enabled(False):
        assert m.sample(3).shape == (3, 4) and m.reconstruct(torch.zeros(3, 4)).shape == (3, 4)
