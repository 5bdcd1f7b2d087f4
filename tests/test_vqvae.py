"""The VQ-VAE (ppmodels.models.vqvae, ppmodels.objectives.vq): the straight-through and codebook
gradients against autograd on a hand-written loss, nearest-codeword assignment against brute
force, the P log K term of the bound, the learned prior's normalisation, training by fit, bad input."""

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from ppmodels import evaluate
from ppmodels.distributions import nearest_codeword
from ppmodels.fit import fit
from ppmodels.models import REGISTRY, VQVAE, CodePrior
from ppmodels.objectives import make
from ppmodels.utils import PPModelsError

K, D, P, X, B = 5, 3, 4, 12, 6


def _net(seed=0):
    torch.manual_seed(seed)
    m = VQVAE(codebook_size=K, code_dim=D, positions=P, x_dim=X, hidden=(10,))
    with torch.no_grad():
        m.codebook.normal_()
    x = torch.bernoulli(torch.full((B, X), 0.4), generator=torch.Generator().manual_seed(seed))
    return m, x


def _hand_loss(m, x, beta, variant="straight-through"):
    """The paper's loss written out: -log p(x|z_q) + ||sg z_e - e||^2 + beta ||z_e - sg e||^2."""
    z_e = m.encoder(x).reshape(B, P, D)
    index = torch.stack([torch.stack([((m.codebook - v) ** 2).sum(-1).argmin() for v in row]) for row in z_e.detach()])
    e = m.codebook[index]
    z_q = {"straight-through": z_e + (e - z_e).detach(), "blocked": e.detach(),  # no gradient to the encoder
           "leaky": e + z_e - z_e.detach()}[variant]  # the decoder's gradient reaching the codebook too
    recon = -F.binary_cross_entropy_with_logits(m.decoder(z_q.flatten(-2)), x, reduction="none").sum(-1)
    return (-recon + ((z_e.detach() - e) ** 2).sum((-2, -1)) + beta * ((z_e - e.detach()) ** 2).sum((-2, -1))).sum()


def _grads(m, loss):
    m.zero_grad()
    loss.backward()
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in m.named_parameters()}


@pytest.mark.parametrize("beta", [0.25, 1.5])
def test_the_gradients_are_the_straight_through_and_the_two_auxiliary_losses(beta):
    m, x = _net()
    seen = {}

    def keep(name, t):  # the tensors of the differentiable pass (the program's probe runs without gradients)
        if t.requires_grad:
            t.retain_grad()
            seen[name] = t

    m.encoder.register_forward_hook(lambda mod, inp, out: keep("z_e", out))
    m.decoder.register_forward_pre_hook(lambda mod, inp: keep("dec_in", inp[0]))
    loss = make("vq", commitment=beta).differentiable_loss(m.model, m.guide, x)
    ours = _grads(m, loss)
    z_e, dec_grad = seen["z_e"].reshape(B, P, D), seen["dec_in"].grad.reshape(B, P, D)
    e = m.codebook[nearest_codeword(z_e.detach(), m.codebook.detach())].detach()
    # the encoder output's gradient: exactly the decoder input's plus the commitment term's
    assert torch.allclose(seen["z_e"].grad.reshape(B, P, D), dec_grad + 2 * beta * (z_e.detach() - e), atol=1e-6)
    # every parameter's gradient equals autograd's on the hand-written loss
    hand = _grads(m, _hand_loss(m, x, beta))
    for name in hand:
        assert torch.allclose(ours[name], hand[name], atol=1e-5), name
    # the codebook gets the codebook loss's gradient alone: sum over assigned positions of 2(e_k - z_e)
    index = nearest_codeword(z_e.detach(), m.codebook.detach())
    expected = torch.zeros(K, D).index_add_(0, index.flatten(), 2 * (e - z_e.detach()).reshape(-1, D))
    assert torch.allclose(ours["codebook"], expected, atol=1e-5)
    # the loss's value is minus the ELBO: log p(x|z_q) - P log K
    elbo = m.reconstruction_log_lik(x) - P * math.log(K)
    assert torch.allclose(loss.detach(), -elbo.sum(), atol=1e-4)
    # power: without the straight-through copy the encoder's gradient is another one
    blocked = _grads(m, _hand_loss(m, x, beta, "blocked"))
    assert not torch.allclose(ours["encoder.0.weight"], blocked["encoder.0.weight"], atol=1e-3)
    # power: a codebook that also took the decoder's gradient would differ
    leaky = _grads(m, _hand_loss(m, x, beta, "leaky"))
    assert not torch.allclose(ours["codebook"], leaky["codebook"], atol=1e-3)


def test_nearest_codeword_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    codebook, z = torch.randn(7, 4, generator=g), torch.randn(5, 6, 4, generator=g)
    brute = torch.tensor([[min(range(7), key=lambda k: float(((z[b, p] - codebook[k]) ** 2).sum()))
                           for p in range(6)] for b in range(5)])
    assert torch.equal(nearest_codeword(z, codebook), brute)
    assert not torch.equal(nearest_codeword(z, codebook), (z @ codebook.T).argmax(-1))  # power: not max inner product


def test_the_bound_counts_log_k_per_position():
    m, x = _net(1)
    elbo = evaluate.elbo(m, x)
    assert torch.allclose(elbo, m.reconstruction_log_lik(x) - P * math.log(K), atol=1e-4)
    assert not torch.allclose(elbo, m.reconstruction_log_lik(x), atol=1e-2)


def test_the_learned_prior_is_normalised_over_every_code_sequence():
    torch.manual_seed(0)
    prior = CodePrior(codebook_size=3, positions=3, hidden=(8, 8))
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_()
    every = torch.tensor(list(itertools.product(range(3), repeat=3)))
    assert torch.allclose(prior.log_prob(every).exp().sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(evaluate.elbo(prior, every), prior.log_prob(every), atol=1e-5)  # the program's bound
    # power: a mask that lets each position see itself is not a distribution
    with torch.no_grad():
        prior.net[-1].mask.fill_(1.0)
    assert abs(prior.log_prob(every).exp().sum().item() - 1.0) > 1e-2


def test_fit_trains_the_autoencoder_and_then_the_prior_on_its_codes():
    torch.manual_seed(0)
    x = (torch.rand(200, X) < torch.linspace(0.1, 0.9, X)).float()
    m = VQVAE(codebook_size=K, code_dim=D, positions=P, x_dim=X, hidden=(16,))
    before = m.codebook.detach().clone()
    history = fit(m, x, steps=40, batch_size=50, lr=1e-2, device="cpu")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert not torch.equal(m.codebook.detach(), before)
    codes = m.encode(x)
    prior = CodePrior(codebook_size=K, positions=P, hidden=(16,))
    before_ll = prior.log_prob(codes).mean().item()
    fit(prior, codes, steps=40, batch_size=50, lr=1e-2, device="cpu")
    assert prior.log_prob(codes).mean().item() > before_ll
    draws = prior.sample(8, torch.Generator().manual_seed(0))
    assert draws.shape == (8, P) and m.decode(draws).shape == (8, X)


def test_bad_input_is_a_short_error():
    assert REGISTRY["vqvae"] is VQVAE and VQVAE.default_objective == "vq"
    for config in ({"codebook_size": 1}, {"code_dim": 0}, {"positions": 2.5}):
        with pytest.raises(PPModelsError, match="VQVAE"):
            VQVAE(**config)
    with pytest.raises(PPModelsError, match="commitment"):
        make("vq", commitment=-1.0)
    with pytest.raises(PPModelsError, match=r"expects a batch of shape \(B, 784\)"):
        VQVAE().model(torch.zeros(3, 5))
    with pytest.raises(PPModelsError, match="codes must be a long tensor"):
        CodePrior(codebook_size=4, positions=3).log_prob(torch.zeros(2, 3))
    from ppmodels.models import SigmoidBeliefNet
    sbn = SigmoidBeliefNet(latents=2, x_dim=4)
    with pytest.raises(PPModelsError, match="no VectorQuantized site"):
        make("vq").loss(sbn.model, sbn.guide, torch.zeros(3, 4))


TINY = ["--codebook-size", "8", "--code-dim", "4", "--positions", "4", "--hidden", "32", "--prior-hidden", "16",
        "--device", "cpu", "--quiet"]


def _exit(args):
    from ppmodels.cli import main

    try:
        return main(args)
    except SystemExit as e:  # argparse
        return e.code


def test_the_family_trains_end_to_end_and_resumes(fake_mnist, tmp_path, capsys):
    import json

    from ppmodels.fit import load_run

    out = tmp_path / "run"
    assert _exit(["train", "vqvae", *TINY, "--steps", "3", "--commitment", "0.5", "--out", str(out)]) == 0
    for name in ("history.csv", "checkpoint.pt", "report.json", "samples.png", "reconstructions.png",
                 "prior/checkpoint.pt"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["kl_term"] == pytest.approx(4 * math.log(8))
    assert report["test_elbo"] == pytest.approx(report["test_reconstruction"] - report["kl_term"], abs=1e-3)
    assert report["test_bound_learned_prior"] == pytest.approx(
        report["test_reconstruction"] + report["prior_test_log_likelihood"], abs=1e-3)
    assert "learned prior" in capsys.readouterr().out
    model, ckpt = load_run(out, "cpu")
    assert isinstance(model, VQVAE) and "commitment=0.5" in ckpt["settings"]["objective"]
    assert _exit(["train", "vqvae", *TINY, "--steps", "6", "--commitment", "0.5", "--out", str(out), "--resume"]) == 0
    assert load_run(out, "cpu")[1]["step"] == 6


@pytest.mark.parametrize("args, says", [
    (["--codebook-size", "1"], "codebook_size"),
    (["--commitment", "-1"], "--commitment"),
    (["--objective", "vq", "--kl-weight", "2"], "kl_weight"),
])
def test_bad_options_are_one_line_errors(args, says, fake_mnist, tmp_path, capsys):
    code = _exit(["train", "vqvae", *TINY, *args, "--steps", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
