"""``ppmodels train vqvae``: the VQ-VAE on binarized MNIST (objective ``vq``), then its learned
prior over the codes (an autoregressive categorical, in RUN_DIR/prior, trained by ``fit`` with
the ELBO, which for a program with no latents is the codes' log-likelihood).

The prior stage is trained afresh by every command (also on --resume): its data are the codes
of the autoencoder as it ends, so a resumed run's prior is the one an uninterrupted run trains.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from .base import ImageFamily, TrainingRun
from .common import fit_stage, ints, nonnegative, positive, save_grid


class VQVAEFamily(ImageFamily):
    name = "vqvae"
    help = "the VQ-VAE (a codebook, straight-through gradients) and its learned prior over codes"
    description = ("Train a VQ-VAE on binarized MNIST (objective vq), then an autoregressive prior over its codes "
                   "(in RUN_DIR/prior); writes history.csv, checkpoint.pt, report.json (reconstruction term, the "
                   "bound with its P log K term, the prior's log-likelihood of the codes), samples.png (learned "
                   "prior) and reconstructions.png to --out.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("vqvae options")
        g.add_argument("--codebook-size", type=positive(int), default=64, help="codewords K (default 64)")
        g.add_argument("--code-dim", type=positive(int), default=16, help="codeword dimension D (default 16)")
        g.add_argument("--positions", type=positive(int), default=16, help="codes per image P (default 16)")
        g.add_argument("--commitment", type=nonnegative, default=None, help="β, the commitment weight (default 0.25)")
        g.add_argument("--prior-epochs", type=positive(int), default=None, help="epochs of the prior (default: --epochs)")
        g.add_argument("--prior-hidden", type=ints, default=(256,), help="hidden sizes of the prior (default 256)")
        g.add_argument("--hidden", type=ints, help="hidden sizes of encoder and decoder (default 400)")
        g.add_argument("--activation", help="activation (default relu)")
        parser.allow_abbrev = False

    def config(self, args: argparse.Namespace) -> dict[str, Any]:
        config = {"codebook_size": args.codebook_size, "code_dim": args.code_dim, "positions": args.positions}
        config.update({k: getattr(args, k) for k in ("hidden", "activation") if getattr(args, k) is not None})
        return config

    def report(self, model: Any, run: TrainingRun, x: Any) -> dict[str, Any]:
        import torch

        from .. import evaluate
        from ..models import CodePrior

        args = run.args
        g = torch.Generator(device=run.test.device).manual_seed(args.seed)
        train_x, test_x = run.train.full(g)[0], run.test.full(g)[0]
        recon = model.reconstruction_log_lik(test_x)
        kl = model.P * math.log(model.K)
        test_elbo = evaluate.elbo(model, test_x).mean().item()  # through the program: recon - P log K
        train_codes, test_codes = model.encode(train_x), model.encode(test_x)
        prior_config = {"codebook_size": model.K, "positions": model.P, "hidden": tuple(args.prior_hidden)}
        if getattr(args, "activation", None):
            prior_config["activation"] = args.activation
        prior = CodePrior(**prior_config)
        stage = argparse.Namespace(**{**vars(args), "resume": False, "overwrite": True, "commitment": None,
                                      "num_particles": None, "alpha": None, "baseline": None, "kl_weight": None,
                                      "free_bits": None, "kl_warmup": None, "tensorboard": None})
        _, prior_seconds = fit_stage(prior, train_codes, test_codes, stage, run.out / "prior", "vq-prior",
                                     prior_config, "elbo", args.prior_epochs or args.epochs)
        prior.eval()
        with torch.no_grad():
            prior_ll = prior.log_prob(test_codes)
        used = int(torch.unique(test_codes).numel())
        report = {"test_reconstruction": recon.mean().item(), "kl_term": kl, "test_elbo": test_elbo,
                  "prior_test_log_likelihood": prior_ll.mean().item(),
                  "prior_train_log_likelihood": prior.log_prob(train_codes).mean().item(),
                  "test_bound_learned_prior": (recon + prior_ll).mean().item(),
                  "codes_used": used, "codebook_size": model.K, "positions": model.P,
                  "prior_seconds": prior_seconds, "test_images": len(test_x)}
        if run.state.get("main", True):
            samples = model.decode(prior.sample(64, torch.Generator(device="cpu").manual_seed(args.seed)
                                                if prior.net[-1].weight.device.type == "cpu" else None))
            save_grid(samples, run.out / "samples.png")
            save_grid(torch.cat([x.reshape(4, 8, -1), model.reconstruct(x).reshape(4, 8, -1)], 1),
                      run.out / "reconstructions.png")
        return report

    def summary(self, report: dict[str, Any], run: TrainingRun) -> list[str]:
        return [f"test log p(x|z_q) {report['test_reconstruction']:.2f} nats; test ELBO {report['test_elbo']:.2f} nats "
                f"(uniform prior: minus P log K = {report['kl_term']:.2f}); {report['codes_used']} of "
                f"{report['codebook_size']} codes used",
                f"learned prior: test log p(codes) {report['prior_test_log_likelihood']:.2f} nats; bound with it "
                f"{report['test_bound_learned_prior']:.2f} nats ({report['prior_seconds']:.0f}s)"]


FAMILY = VQVAEFamily()
