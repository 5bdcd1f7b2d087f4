"""Reliability matrix, part B: callbacks' arguments, recipes, options that need or exclude others,
resume of schedules and resource bounds. Each case asserts its class of outcome, by the rules of
tests/test_reliability.py's docstring:

- ``cli``: the CLI exits 2 with exactly one line ``ppmodels: error: ...`` (no traceback), and
  --out is not created;
- ``api``: Python raises ``PPModelsError`` with a message of at most three lines;
- ``ok``: the option is taken (its value reaches the run), nothing on disk is lost.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from ppmodels.callbacks import CollapseDiagnostics, EarlyStopping, ImportanceNLL, KLAnnealing, TensorBoard
from ppmodels.cli import main
from ppmodels.fit import fit, load_checkpoint
from ppmodels.models import LinearGaussian
from ppmodels.parser import build_parser
from ppmodels.utils import PPModelsError

from helpers import run_cli

SMALL = ["--hidden", "16", "--z-dim", "2", "--num-samples", "4", "--eval-subset", "20", "--quiet", "--train-subset", "200"]


def assert_cli_refused(code, err, expected):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppmodels: error:"), err
    assert expected in lines[0], lines[0]


def assert_api_refused(call, expected):
    with pytest.raises(PPModelsError) as e:
        call()
    assert len(str(e.value).strip().splitlines()) <= 3, str(e.value)
    assert expected in str(e.value), str(e.value)


# -- options that need or exclude others, found in every family (cli) ------------------------------
OPTIONS = [
    ("kl-cycles-without-warmup", ["vae", "--kl-cycles", "3", "--steps", "1"], "--kl-cycles needs --kl-warmup"),
    ("kl-cycles-1-without-warmup", ["vae", "--kl-cycles", "1", "--steps", "1"], "--kl-cycles needs --kl-warmup"),
    ("flow-layers-without-iaf", ["vae", "--flow-layers", "3", "--steps", "1"], "--flow-layers needs --guide iaf"),
    ("flow-layers-diagonal", ["vae", "--guide", "diagonal", "--flow-layers", "2", "--steps", "1"], "--guide iaf"),
    ("passes-without-recipe", ["vae", "--passes", "3", "--epochs", "1"], "--passes needs --recipe burda2016"),
    ("epochs-and-steps", ["vae", "--epochs", "1", "--steps", "2"], "not both"),
    ("epochs-and-steps-gmm", ["gmm", "--guide", "bayes", "--epochs", "1", "--steps", "2"], "not both"),
    ("recipe-batch-size", ["vae", "--recipe", "burda2016", "--batch-size", "64"], "drop --batch-size"),
    ("recipe-batch-size-as-default", ["vae", "--recipe", "burda2016", "--batch-size", "128"], "drop --batch-size"),
    ("recipe-lr", ["vae", "--recipe", "burda2016", "--lr", "0.01"], "drop --lr"),
    ("recipe-lr-schedule", ["vae", "--recipe", "burda2016", "--lr-schedule", "cosine"], "drop --lr-schedule"),
    ("recipe-binarize", ["vae", "--recipe", "burda2016", "--binarize", "fixed"], "drop --binarize"),
    ("recipe-epochs", ["vae", "--recipe", "burda2016", "--epochs", "3"], "drop --epochs"),
    ("recipe-steps", ["vae", "--recipe", "burda2016", "--steps", "3"], "drop --steps"),
    ("recipe-preset-pyro", ["vae", "--recipe", "burda2016", "--preset", "pyro"], "--preset burda or burda2"),
    ("dvae-groups-mixture", ["dvae", "--latent", "mixture", "--groups", "3", "--steps", "1"], "--groups needs --latent categorical"),
    ("dvae-z-dim-categorical", ["dvae", "--z-dim", "3", "--steps", "1"], "--z-dim needs --latent mixture"),
    ("gmm-map-epochs", ["gmm", "--epochs", "3"], "--epochs needs --guide bayes"),
    ("gmm-map-batch-size", ["gmm", "--batch-size", "3"], "--batch-size needs --guide bayes"),
    ("gmm-map-objective", ["gmm", "--objective", "elbo"], "--objective needs --guide bayes"),
    ("gmm-map-particles", ["gmm", "-K", "2"], "--num-particles needs --guide bayes"),
    ("gmm-map-kl-warmup", ["gmm", "--kl-warmup", "3"], "--kl-warmup needs --guide bayes"),
    ("gmm-map-tensorboard", ["gmm", "--tensorboard"], "--tensorboard needs --guide bayes"),
    ("gmm-map-lr-schedule", ["gmm", "--lr-schedule", "cosine"], "--lr-schedule needs --guide bayes"),
    ("gmm-map-weight-decay", ["gmm", "--weight-decay", "0.1"], "--weight-decay needs --guide bayes"),
    ("gmm-map-device", ["gmm", "--device", "cpu"], "--device needs --guide bayes"),
    ("gmm-map-resume", ["gmm", "--resume"], "--resume needs --guide bayes"),
    ("gmm-bayes-restarts", ["gmm", "--guide", "bayes", "--restarts", "3"], "--restarts needs --guide map"),
    ("gmm-hidden", ["gmm", "--hidden", "5"], "unrecognized arguments: --hidden"),
    ("gmm-z-dim", ["gmm", "--z-dim", "5"], "unrecognized arguments: --z-dim"),
    ("gmm-binarize", ["gmm", "--binarize", "fixed"], "unrecognized arguments: --binarize"),
    ("gmm-validation", ["gmm", "--validation", "10"], "unrecognized arguments: --validation"),
    ("gmm-train-subset", ["gmm", "--train-subset", "3"], "unrecognized arguments: --train-subset"),
    ("gmm-eval-subset", ["gmm", "--eval-subset", "3"], "unrecognized arguments: --eval-subset"),
    ("gmm-num-samples", ["gmm", "--num-samples", "3"], "unrecognized arguments: --num-samples"),
    ("max-parameters-zero", ["vae", "--max-parameters", "0", "--steps", "1"], "positive"),
]


@pytest.mark.parametrize("name,args,expected", OPTIONS, ids=[c[0] for c in OPTIONS])
def test_option_conflict_is_one_line(name, args, expected, capsys, tmp_path):
    code, _, err = run_cli(["train", *args, "--out", tmp_path / "o"], capsys)
    assert_cli_refused(code, err, expected)
    assert not (tmp_path / "o").exists()


def test_a_sweep_checks_the_rules_of_every_run(tmp_path, capsys):
    code, _, err = run_cli(["sweep", "train", "vae", "--kl-cycles", "2,3", "--steps", "1", "--workers", "1",
                            "--out", tmp_path / "s"], capsys)
    assert_cli_refused(code, err, "--kl-cycles needs --kl-warmup")
    assert not list((tmp_path / "s").glob("*/checkpoint.pt"))


def test_the_parser_records_what_was_typed_not_defaults():
    args = build_parser().parse_args(["train", "vae", "--out", "o", "-K", "2", "--batch-size", "128"])
    assert {"--num-particles", "--batch-size", "--out"} <= args.given_options
    assert "--lr" not in args.given_options and "--num-samples" not in args.given_options


# -- recipes take the user's value or refuse it (ok) -----------------------------------------------
@pytest.mark.parametrize("typed,expected", [([], (5000, None)), (["--num-samples", "1000"], (1000, None)),
                                            (["--eval-subset", "1000"], (5000, 1000))],
                         ids=["paper-defaults", "typed-num-samples-as-default", "typed-eval-subset-as-default"])
def test_recipe_takes_the_typed_evaluation(typed, expected):
    from ppmodels.families.vae import _burda2016

    args = build_parser().parse_args(["train", "vae", "--recipe", "burda2016", "--passes", "2", "--out", "o", *typed])
    _burda2016(args)
    assert (args.num_samples, args.eval_subset) == expected
    assert (args.batch_size, args.lr, args.epochs, args.binarize) == (20, 1e-3, 2, "dynamic")


# -- resource bounds (cli and api) -----------------------------------------------------------------
BOUNDS = [
    ("iaf-million-layers", ["vae", "--guide", "iaf", "--flow-layers", "1000000", "--steps", "1"], "more than 100,000,000 parameters"),
    ("hidden-billion", ["vae", "--hidden", "1000000000", "--steps", "1"], "more than 100,000,000 parameters"),
    ("z-dim-billion", ["vae", "--z-dim", "1000000000", "--steps", "1"], "more than 100,000,000 parameters"),
    ("sbn-latents-billion", ["sbn", "--latents", "1000000000", "--steps", "1"], "more than 100,000,000 parameters"),
    ("dvae-classes-billion", ["dvae", "--classes", "1000000000", "--steps", "1"], "more than 100,000,000 parameters"),
    ("cvae-hidden-billion", ["cvae", "--hidden", "1000000000", "--steps", "1"], "more than 100,000,000 parameters"),
    ("gmm-components-billion", ["gmm", "--components", "1000000000"], "more than 100,000,000 parameters"),
    ("max-parameters-lower", ["vae", "--max-parameters", "1000", "--steps", "1"], "more than 1,000 parameters"),
    ("raised-bound-meets-memory", ["vae", "--guide", "iaf", "--flow-layers", "1000000", "--max-parameters",
                                   "100000000000000", "--steps", "1"], "GiB is free"),
]


@pytest.mark.parametrize("name,args,expected", BOUNDS, ids=[c[0] for c in BOUNDS])
def test_model_too_large_is_refused_before_it_is_built(name, args, expected, capsys, tmp_path):
    import time

    t0 = time.perf_counter()
    code, _, err = run_cli(["train", *args, "--device", "cpu", "--out", tmp_path / "o"] if args[0] != "gmm"
                           else ["train", *args, "--out", tmp_path / "o"], capsys)
    assert_cli_refused(code, err, expected)
    assert time.perf_counter() - t0 < 10  # counted, not built
    assert not (tmp_path / "o").exists()


def test_parameters_are_counted_exactly():
    from ppmodels.families.common import count_parameters
    from ppmodels.models import PRESETS, build

    config = dict(PRESETS["pyro"], guide="iaf", flow_layers=3)
    real = sum(p.numel() for p in build("vae", **config).parameters())
    assert count_parameters("vae", config, 10**9, ("flow_layers",)) == real
    assert count_parameters("vae", config, 10**9) == real


# -- callbacks' arguments (api) --------------------------------------------------------------------
def _lg():
    m = LinearGaussian(5, 2, seed=0)
    return m, m.sample_data(40, seed=1)


CALLBACKS = [
    ("class-instead-of-instance", lambda t: fit(*_lg(), epochs=1, device="cpu", callbacks=[EarlyStopping]), "class"),
    ("early-stopping-min-delta-string", lambda t: EarlyStopping(min_delta="0.1"), "min_delta"),
    ("early-stopping-min-delta-nan", lambda t: EarlyStopping(min_delta=math.nan), "min_delta"),
    ("early-stopping-patience-zero", lambda t: EarlyStopping(patience=0), "patience"),
    ("importance-nll-epochs-int", lambda t: ImportanceNLL(_lg()[1], 5), "at_epochs"),
    ("importance-nll-no-data", lambda t: ImportanceNLL(None, [1]), "data"),
    ("importance-nll-past-end", lambda t: fit(*_lg(), epochs=2, device="cpu",
                                              callbacks=[ImportanceNLL(_lg()[1], [7], 2)]), "ends at epoch 2"),
    ("tensorboard-every-zero", lambda t: TensorBoard(t, every=0), "every"),
    ("tensorboard-no-dir", lambda t: TensorBoard(None), "log_dir"),
    ("collapse-threshold-negative", lambda t: CollapseDiagnostics(_lg()[1], threshold=-1), "threshold"),
    ("kl-annealing-steps-zero", lambda t: KLAnnealing(0), "steps"),
]


@pytest.mark.parametrize("name,call,expected", CALLBACKS, ids=[c[0] for c in CALLBACKS])
def test_bad_callback_is_refused_in_at_most_three_lines(name, call, expected, tmp_path):
    assert_api_refused(lambda: call(tmp_path), expected)


# -- resume of schedules ---------------------------------------------------------------------------
def test_resume_with_another_kl_warmup_is_refused(tmp_path):
    m, x = _lg()
    fit(m, x, epochs=1, batch_size=10, device="cpu", callbacks=[KLAnnealing(steps=8)], out=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    m2, _ = _lg()
    assert_api_refused(lambda: fit(m2, x, epochs=3, batch_size=10, device="cpu", callbacks=[KLAnnealing(steps=5)],
                                   out=tmp_path, resume=True), "KLAnnealing")
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # nothing lost


def test_early_stopping_patience_survives_an_interruption(tmp_path):
    class Flat:  # a metric that improves once, then never
        def on_epoch_end(self, state):
            state.row["score"] = min(state.epoch, 2) * 1.0

    m, x = _lg()
    whole = fit(m, x, epochs=50, batch_size=20, device="cpu", out=tmp_path / "whole",
                callbacks=[Flat(), EarlyStopping("score", patience=3)])
    m2, _ = _lg()
    fit(m2, x, epochs=3, batch_size=20, device="cpu", out=tmp_path / "cut",
        callbacks=[Flat(), EarlyStopping("score", patience=3)])  # interrupted after epoch 3
    m3, _ = _lg()
    resumed = fit(m3, x, epochs=50, batch_size=20, device="cpu", out=tmp_path / "cut", resume=True,
                  callbacks=[Flat(), EarlyStopping("score", patience=3)])
    assert len(whole) == len(resumed) < 10 and bool(resumed["stopped_early"].iloc[-1])
    assert load_checkpoint(tmp_path / "cut")["epoch"] == load_checkpoint(tmp_path / "whole")["epoch"] == len(whole)


def test_a_kl_warmup_longer_than_the_run_is_said_once(tmp_path):
    m, x = _lg()
    with pytest.warns(UserWarning, match=r"warm-up of 50 steps is longer than the run's 4; β ends at 0\.06") as seen:
        fit(m, x, epochs=1, batch_size=10, device="cpu", callbacks=[KLAnnealing(steps=50)])
    assert len([w for w in seen if "warm-up" in str(w.message)]) == 1
    m2, _ = _lg()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warm-up the run finishes: no word
        fit(m2, x, epochs=2, batch_size=10, device="cpu", callbacks=[KLAnnealing(steps=8)])


def test_cli_warnings_are_one_line_each(fake_mnist, tmp_path, capsys):
    code, _, err = run_cli(["train", "vae", "--steps", "2", "--batch-size", "100", "--kl-warmup", "50", "--out",
                            tmp_path / "w", *SMALL], capsys)
    assert code == 0, err
    lines = [line for line in err.strip().splitlines() if line]
    assert lines and all(line.startswith("ppmodels: warning: ") for line in lines), err
    assert any("warm-up of 50 steps is longer than the run's 2" in line for line in lines), err


def test_cli_resume_with_another_kl_warmup_is_one_line(fake_mnist, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "vae", "--steps", "2", "--batch-size", "100", "--kl-warmup", "4", "--out", str(out), *SMALL]) == 0
    capsys.readouterr()  # its warning: the warm-up outlasts this first part of the run
    before = (out / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(["train", "vae", "--steps", "4", "--batch-size", "100", "--kl-warmup", "8", "--resume",
                            "--out", out, *SMALL], capsys)
    assert_cli_refused(code, err, "KLAnnealing")
    assert (out / "checkpoint.pt").read_bytes() == before
