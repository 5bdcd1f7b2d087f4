"""The semi-supervised VAE (M2) and the conditional VAE: structure, exact pieces, estimators, CLI."""

import json
import math

import pandas as pd
import pyro
import pytest
import torch

from ppmodels import data, evaluate
from ppmodels.cli import main
from ppmodels.fit import fit
from ppmodels.models import ConditionalVAE, QuadrantBaseline, SemiSupervisedVAE
from ppmodels.models.cvae import quadrant_mask
from ppmodels.models.ssvae import semi_supervised
from ppmodels.objectives import make
from ppmodels import program
from ppmodels.utils import PPModelsError

from helpers import assert_unbiased



TINY = ["--epochs", "1", "--train-subset", "200", "--batch-size", "50", "--hidden", "32", "--z-dim", "4",
        "--quiet", "--num-samples", "20", "--eval-subset", "20", "--device", "cpu"]


def _images(n, seed=0):
    x, y = data.synthetic_images(n, seed=seed)
    return torch.bernoulli(x.float() / 255, generator=torch.Generator().manual_seed(seed)), y


# -- semi-supervised VAE ----------------------------------------------------------------------

def test_semi_supervised_keeps_a_balanced_subset_of_labels():
    x, y = data.synthetic_images(500, seed=3)
    part = semi_supervised(data.TensorData(x, y), 50, seed=1)
    kept = part.tensors[1] >= 0
    assert int(kept.sum()) == 50
    assert torch.equal(part.tensors[1][kept], y[kept])
    assert torch.bincount(y[kept], minlength=10).tolist() == [5] * 10
    assert torch.equal(part.tensors[0], x)
    repeated = semi_supervised(data.TensorData(x, y), 50, seed=1, repeats=3)
    assert len(repeated) == 600 and int((repeated.tensors[1] >= 0).sum()) == 150
    appended = repeated.tensors[0][500:]
    assert torch.equal(appended[:50], appended[50:])  # the same 50 rows, twice more
    assert torch.equal(appended[:50].sort(0).values, x[kept].sort(0).values)
    with pytest.raises(PPModelsError, match="multiple of the 10 classes"):
        semi_supervised(data.TensorData(x, y), 55)


def test_ssvae_enumerated_and_sampled_labels_estimate_the_same_bound():
    """U(x): enumerating y (enum) and sampling it (elbo, score function) are both unbiased for
    the same bound, on a batch with labelled and unlabelled rows; their means agree to 5 SE.
    Replicates are vectorized: the 6 rows repeated 100 times make one batch, 40 batches each."""
    torch.manual_seed(0)
    m = SemiSupervisedVAE(hidden=(16,), z_dim=3, aux_loss=0.0)
    x, y = _images(6)
    y = torch.where(torch.arange(6) % 2 == 0, y, -1)
    x, y = x.repeat(100, 1), y.repeat(100)
    enum_loss, sampled_loss = make("enum"), make("elbo")
    with pyro.validation_enabled(False):
        enum = torch.tensor([enum_loss.loss(m.model, m.guide, x, y) for _ in range(40)])
        sampled = torch.tensor([sampled_loss.loss(m.model, m.guide, x, y) for _ in range(40)])
    z = (enum.mean() - sampled.mean()) / (enum.var() / 40 + sampled.var() / 40).sqrt()
    assert abs(z) < 5, z
    assert enum.var() < sampled.var()  # summing out y removes its sampling noise


def _m2_bound_by_hand(m, x, y):
    """M2's bound written in plain torch (one z draw per row and class), summed over rows:
    L(x, c) = log p(x|c,z) + log p(z) - log q(z|x,c) + log 1/C; a labelled row scores
    L(x, y), an unlabelled one sum_c q(c|x) (L(x, c) - log q(c|x))."""
    C, B = m.num_classes, x.shape[0]
    log_qc = torch.log_softmax(m.classifier(x), -1).T  # (C, B)
    onehot = torch.eye(C)[:, None, :].expand(C, B, C)
    loc, scale = m.encoder(torch.cat([x.expand(C, B, x.shape[1]), onehot], -1))
    z = loc + scale * torch.randn_like(loc)
    L = (torch.distributions.Bernoulli(logits=m.decoder(torch.cat([z, onehot], -1))).log_prob(x).sum(-1)
         + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
         - torch.distributions.Normal(loc, scale).log_prob(z).sum(-1) - math.log(C))
    unlabelled = (log_qc.exp() * (L - log_qc)).sum(0)
    labelled = L[y.clamp(min=0), torch.arange(B)]
    return torch.where(y >= 0, labelled, unlabelled).sum()


def test_ssvae_bound_and_classifier_gradient_match_a_hand_written_m2():
    """The Pyro program's enumerated bound, and its gradient on the classifier's output bias,
    against M2 written out in torch: unbiased estimates of the same quantities, so their means
    over 40 replicate batches (6 rows, half labelled, repeated 100 times) agree to 5 SE."""
    torch.manual_seed(0)
    m = SemiSupervisedVAE(hidden=(16,), z_dim=3, aux_loss=0.0)
    x, y = _images(6)
    y = torch.where(torch.arange(6) % 2 == 0, y, -1)
    x, y = x.repeat(100, 1), y.repeat(100)
    bias = m.classifier[-1].bias
    enum_loss = make("enum")
    values, grads = {"pyro": [], "hand": []}, {"pyro": [], "hand": []}
    with pyro.validation_enabled(False):
        for _ in range(40):
            for who, bound in (("pyro", lambda: -enum_loss.differentiable_loss(m.model, m.guide, x, y)),
                               ("hand", lambda: _m2_bound_by_hand(m, x, y))):
                value = bound()
                values[who].append(value.detach())
                grads[who].append(torch.autograd.grad(value, bias)[0])
    for what in (values, grads):
        a, b = torch.stack(what["pyro"]), torch.stack(what["hand"])
        z = (a.mean(0) - b.mean(0)) / (a.var(0) / 40 + b.var(0) / 40).sqrt()
        assert z.abs().max() < 5, z
    assert torch.stack(grads["pyro"]).mean(0).abs().max() > 1.0  # the unlabelled rows do train q(y|x)


def test_ssvae_labelled_rows_observe_y_and_add_the_classifier_loss():
    torch.manual_seed(1)
    m = SemiSupervisedVAE(hidden=(16,), z_dim=3, aux_loss=0.0)
    x, y = _images(5)
    # all labelled: q(y|x) is not in the bound, so its gradient is zero in expectation (Pyro's
    # semantics: a masked site is still drawn and its score function is not masked)
    params = list(m.classifier.parameters())
    draws = []
    for _ in range(200):
        loss = make("elbo").differentiable_loss(m.model, m.guide, x, y)
        g = torch.autograd.grad(loss, params, allow_unused=True)
        draws.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1) for gi, p in zip(g, params)]))
    assert_unbiased(torch.stack(draws), torch.zeros_like(draws[0]), what="classifier gradient, all labelled")
    m.aux_loss = 7.0
    torch.manual_seed(2)
    with_aux = make("elbo").differentiable_loss(m.model, m.guide, x, y)
    m.aux_loss = 0.0
    torch.manual_seed(2)
    without = make("elbo").differentiable_loss(m.model, m.guide, x, y)
    log_q = torch.distributions.Categorical(logits=m.classifier(x)).log_prob(y).sum()
    assert torch.allclose(without - with_aux, 7.0 * log_q, rtol=1e-5)


def test_ssvae_rejects_bad_labels():
    m = SemiSupervisedVAE(hidden=(8,), z_dim=2)
    x, _ = _images(3)
    with pytest.raises(PPModelsError, match="SemiSupervisedVAE.model: site 'y' expects labels in"):
        m.model(x, torch.tensor([0, 10, -1]))
    with pytest.raises(PPModelsError, match="site 'y' expects integer labels of shape"):
        m.model(x, torch.zeros(3))


def test_ssvae_learns_to_classify_from_few_labels():
    """Synthetic digits (10 blob prototypes), 30 labels of 1500 images: the classifier beats
    chance (0.1) by far on held-out images after a short run."""
    x, y = data.synthetic_images(2000, seed=5)  # one call: the same prototypes for train and test
    train = semi_supervised(data.TensorData(x[:1500], y[:1500], binarize="dynamic"), 30, seed=0)
    test = data.TensorData(x[1500:], y[1500:], binarize="fixed")
    m = SemiSupervisedVAE(hidden=(64,), z_dim=4)
    fit(m, train, objective="enum", epochs=6, batch_size=100, lr=3e-3, device="cpu", progress=False)
    assert m.accuracy(test) > 0.6


def test_train_ssvae_cli(fake_mnist, tmp_path):
    out = tmp_path / "ss"
    assert main(["train", "ssvae", "--labels", "20", "--out", str(out), *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["labels"] == 20 and 0 <= report["test_accuracy"] <= 1 and report["test_nll"] > 0
    assert (out / "analogies.png").exists() and (out / "samples.png").exists()
    assert main(["evaluate", str(out), "--num-samples", "5", "--subset", "5", "--device", "cpu"]) == 0


# -- conditional VAE --------------------------------------------------------------------------

@pytest.mark.parametrize("quadrants", [1, 2, 3])
def test_quadrant_masks(quadrants):
    given = quadrant_mask(quadrants).reshape(28, 28)
    assert int(given.sum()) == 196 * quadrants
    assert bool(given[14:, :14].all()) and not bool(given[:14, 14:].any())  # bottom-left given, top-right never


def test_cvae_importance_weights_are_unbiased_for_the_conditional_likelihood():
    """With a 1-d z, p(y|x) = ∫ p(z|x) p(y|x,z) dz by quadrature; the mean importance weight
    p(y, z|x)/q(z|x, y) over z ~ q must match it (delta-method z-bound on the log scale)."""
    torch.manual_seed(3)
    base = QuadrantBaseline(2, hidden=(16,))
    m = ConditionalVAE(2, z_dim=1, hidden=(16,), baseline=base)
    with torch.no_grad():
        m.generation_net[0].weight[:, -1] *= 3.0  # make y depend on z strongly enough to matter
    image, _ = _images(3)
    K = 20000
    with torch.no_grad(), pyro.validation_enabled(False):
        found = program.facts(m.model, m.guide, (image,))
        traces = program.run_pair(m.model, m.guide, (image,), num_particles=K, max_plate_nesting=found.max_plate_nesting)
        lw = program.log_weights(*traces, found, num_particles=K).local  # (K, B)
        inputs, y = m.split(image, "test")
        context = m._context(inputs)
        loc, scale = m.prior_net(context)
        grid = torch.linspace(-12, 12, 24001)[:, None, None] * scale + loc  # (G, B, 1)
        logits = m.generation_net(torch.cat([context.expand(len(grid), *context.shape), grid], -1))
        log_joint = torch.distributions.Normal(loc, scale).log_prob(grid).squeeze(-1) + \
            torch.distributions.Bernoulli(logits=logits).log_prob(y).sum(-1)
        exact = torch.logsumexp(log_joint, 0) + math.log(24 / 24000) + scale.squeeze(-1).log()
    shift = lw.max(0).values
    w = (lw - shift).exp()
    estimate = w.mean(0).log() + shift
    se = w.std(0) / w.mean(0) / math.sqrt(K)
    z = (estimate - exact) / se
    assert z.abs().max() < 5, (estimate, exact, se)


def test_cvae_baseline_is_frozen_and_exact():
    torch.manual_seed(4)
    images, _ = _images(64)
    train = data.TensorData(images)
    base = QuadrantBaseline(1, hidden=(16,))
    history = fit(base, train, epochs=2, batch_size=32, device="cpu", progress=False)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert torch.allclose(evaluate.log_likelihood(base, images[:8], 3), base.log_likelihood(images[:8]))
    m = ConditionalVAE(1, z_dim=2, hidden=(16,), baseline=base)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    fit(m, train, epochs=1, batch_size=32, device="cpu", progress=False)
    assert all(torch.equal(before[k], v) for k, v in m.baseline.state_dict().items())
    completions = m.complete(images[:4], 3)
    assert completions.shape == (3, 4, 784)
    given = quadrant_mask(1)
    assert torch.equal(completions[:, :, given], images[:4, given].expand(3, 4, -1))
    with pytest.raises(PPModelsError, match="ConditionalVAE.model: site 'image' expects a batch of shape"):
        m.model(images[:, :100])
    with pytest.raises(PPModelsError, match="completes 1 quadrants, the CVAE 2"):
        ConditionalVAE(2, baseline=base)


def test_train_cvae_cli(fake_mnist, tmp_path):
    out = tmp_path / "cv"
    assert main(["train", "cvae", "--quadrants", "3", "--out", str(out), *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["quadrants"] == 3 and report["cvae_nll"] > 0 and report["baseline_nll"] > 0
    assert (out / "completions.png").exists() and (out / "baseline" / "checkpoint.pt").exists()
    assert main(["evaluate", str(out), "--num-samples", "5", "--subset", "5", "--device", "cpu"]) == 0


# -- Gaussian mixture from the command line ----------------------------------------------------

def test_train_gmm_cli_reproduces_the_pyro_tutorial(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["train", "gmm", "--data", "tutorial", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["weights"]) == pytest.approx([0.375, 0.625], abs=0.01)
    assert sorted(l[0] for l in report["locs"]) == pytest.approx([0.50, 10.98], abs=0.02)
    assert len(pd.read_csv(out / "responsibilities.csv")) == 5


def test_train_gmm_cli_on_a_csv_with_a_bayesian_guide(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(60, 2, generator=g) - 3, torch.randn(40, 2, generator=g) + 3])
    pd.DataFrame(x.numpy(), columns=["a", "b"]).to_csv(tmp_path / "pts.csv", index=False)
    out = tmp_path / "gb"
    assert main(["train", "gmm", "--data", str(tmp_path / "pts.csv"), "--guide", "bayes", "--covariance", "diag",
                 "--steps", "250", "--quiet", "--out", str(out)]) == 0
    assert sorted(json.loads((out / "report.json").read_text())["weights"]) == pytest.approx([0.4, 0.6], abs=0.05)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\nnan,3\n")
    assert main(["train", "gmm", "--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "gb2")]) == 2
    assert "NaN" in capsys.readouterr().err
    assert main(["train", "gmm", "--data", str(tmp_path / "pts.csv"), "--out", str(out)]) == 2  # holds a run
    assert "--overwrite" in capsys.readouterr().err
