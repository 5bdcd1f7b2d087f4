"""``ppmodels train cvae``: quadrant completion by a conditional VAE, after its baseline network."""

from __future__ import annotations

import argparse
from typing import Any

from .base import ImageFamily, TrainingRun
from .common import evaluation_report, fit_stage, network_config, positive, save_grid


class ConditionalVAEFamily(ImageFamily):
    """Two stages: the deterministic baseline (``cvae-baseline``, in RUN_DIR/baseline), then the
    CVAE, whose prior and generation networks see the baseline's prediction unless
    --no-baseline-input. The report is the conditional NLL of both."""

    name = "cvae"
    stages = ("baseline",)
    help = "the conditional VAE (quadrant completion)"
    description = ("Train a conditional VAE that completes MNIST digits from --quadrants given quadrants, after a "
                   "baseline network (in RUN_DIR/baseline); writes history.csv, checkpoint.pt, report.json and "
                   "completions.png to --out and prints both conditional NLLs.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("cvae options")
        g.add_argument("--quadrants", type=int, choices=[1, 2, 3], default=1, help="quadrants given (default 1)")
        g.add_argument("--baseline-epochs", type=positive(int), default=None,
                       help="epochs of the baseline network (default: --epochs)")
        g.add_argument("--no-baseline-input", action="store_true",
                       help="do not feed the baseline's prediction to the prior and generation networks")
        super().add_options(g)

    def config(self, args: argparse.Namespace) -> dict[str, Any]:
        return network_config(args, {"quadrants": args.quadrants})  # "baseline" added by prepare

    def sized(self, args: argparse.Namespace, config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The baseline network, and the CVAE with its copy of it."""
        base = _baseline_config(args)
        return [("cvae-baseline", base), (self.model_key, {**config, "baseline": None if args.no_baseline_input else base})]

    def prepare(self, run: TrainingRun) -> None:
        """Train the baseline network (objective elbo) into RUN_DIR/baseline."""
        from ..models.cvae import QuadrantBaseline

        args = run.args
        base_config = _baseline_config(args)
        baseline = QuadrantBaseline(**base_config)
        _, seconds = fit_stage(baseline, run.train, run.test, args, run.out / "baseline", "cvae-baseline",
                               base_config, "elbo", args.baseline_epochs or args.epochs)
        run.report["baseline_seconds"] = seconds
        run.config["baseline"] = None if args.no_baseline_input else baseline.config
        run.state["baseline"] = baseline

    def build(self, run: TrainingRun) -> Any:
        model = super().build(run)
        if not run.args.no_baseline_input:
            model.baseline.load_state_dict(run.state["baseline"].state_dict())
        return model

    def report(self, model: Any, run: TrainingRun, x: Any) -> dict[str, Any]:
        r"""Conditional NLL :math:`-\log p(y|x)` on binarized test targets: the CVAE by importance
        sampling (its guide as proposal, the prior network as prior), the baseline exactly, on
        one binarization of the first ``--eval-subset`` test images; and completions.png."""
        import torch

        from ..data import as_data

        args, baseline = run.args, run.state["baseline"]
        images = run.test.subset(args.eval_subset).full(torch.Generator(device=run.test.device).manual_seed(args.seed))[0]
        figures = evaluation_report(model, as_data(images), args.num_samples, None, args.seed)
        report = {"cvae_nll": figures.pop("test_nll"), "cvae_elbo": figures.pop("test_elbo"),
                  "baseline_nll": -baseline.log_likelihood(images).mean().item(), "quadrants": args.quadrants,
                  **figures}
        self.images(model, run, x)
        return report

    def images(self, model: Any, run: TrainingRun, x: Any) -> None:
        """completions.png: per row, an image, the baseline's completion and six of the CVAE's."""
        import torch

        if not run.state.get("main", True):  # data-parallel: rank 0 alone writes
            return
        x = x[:8]
        save_grid(torch.cat([x[None], run.state["baseline"].complete(x)[None], model.complete(x, 6)]).transpose(0, 1),
                  run.out / "completions.png", nrow=8)

    def summary(self, report: dict[str, Any], run: TrainingRun) -> list[str]:
        args = run.args
        return [f"{who}: test -log p(y|x) {report[who + '_nll']:.2f} nats ({args.quadrants} quadrant(s) given, "
                f"{report['nll_images']} images{', K=%d' % args.num_samples if who == 'cvae' else ', exact'})"
                for who in ("cvae", "baseline")]


def _baseline_config(args: argparse.Namespace) -> dict[str, Any]:
    """The baseline network's configuration (the CVAE's networks, no latent)."""
    config = network_config(args, {"quadrants": args.quadrants})
    config.pop("z_dim", None)
    return config


FAMILY = ConditionalVAEFamily()
