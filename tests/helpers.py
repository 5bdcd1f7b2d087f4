"""Statistical helpers for the exact-gradient tests."""

import torch

Z_BOUND = 5.0


def z_scores(samples: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Per-coordinate z-score of the replicate mean against ``exact``: (mean - exact) / (std / sqrt(R)).

    Coordinates with zero spread (a deterministic estimator) get z = 0 when the mean equals
    ``exact`` to float precision, else inf: an exact estimator must be exact.
    """
    R = samples.shape[0]
    mean = samples.mean(0)
    se = samples.std(0) / R**0.5
    tiny = 1e-7 * (1 + exact.abs())
    z = (mean - exact) / se.clamp_min(1e-30)
    deterministic = se < tiny
    exact_match = (mean - exact).abs() < 1e-4 * (1 + exact.abs())
    z = torch.where(deterministic, torch.where(exact_match, 0.0, float("inf")), z)
    return z


def assert_unbiased(samples, exact, bound=Z_BOUND, what=""):
    z = z_scores(samples, exact)
    worst = z.abs().max().item()
    assert worst < bound, f"{what}: max |z| = {worst:.2f} >= {bound} (R = {samples.shape[0]})"
    return worst


def step_clock():
    """``(clock, schedule)``: pass ``lr_schedule=schedule`` to fit and read ``clock["step"]``, the
    0-based step being taken (-1 before training), from inside a model."""
    clock = {"step": -1}

    def schedule(step):
        clock["step"] = step
        return 1.0

    return clock, schedule


def run_cli(args, capsys):
    """``(exit code, stdout, stderr)`` of ``ppmodels ARGS`` run in this process (argparse's
    SystemExit taken as the exit code)."""
    from ppmodels.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
