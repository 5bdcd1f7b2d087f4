"""The training settings, declared once (ppmodels.settings): fit, the checkpoint's trajectory,
the optimizer and the train command all read the one declaration."""

from dataclasses import fields

import pytest
import torch

from ppmodels import families
from ppmodels.fit import Run, make_optimizer
from ppmodels.cli import build_parser
from ppmodels.settings import ADAM_DEFAULTS, TrainSettings, split_options
from ppmodels.utils import PPModelsError

RULES = {f.name: f.metadata["rule"] for f in fields(TrainSettings)}


def test_every_flagged_setting_is_an_option_of_every_family_with_its_default():
    parse = build_parser().parse_args
    flagged = {name for name, rule in RULES.items() if rule.flag is not None}
    assert {"epochs", "steps", "batch_size", "lr", "lr_schedule", "seed"} <= flagged
    for name in families.FAMILIES:
        args = parse(["train", name, "--out", "r"])
        assert flagged <= set(vars(args)), name
        assert (args.epochs, args.steps, args.lr_schedule, args.seed) == (None, None, "constant", 0)
    vae, gmm = parse(["train", "vae", "--out", "r"]), parse(["train", "gmm", "--out", "r"])
    assert (vae.lr, vae.batch_size, gmm.lr, gmm.batch_size) == (1e-3, 128, 0.05, None)  # gmm's default_lr, ...


def test_fit_stage_passes_every_parsed_setting_to_fit_by_name(monkeypatch, tmp_path):
    import ppmodels.fit
    from ppmodels.families.common import fit_stage

    seen = {}
    monkeypatch.setattr(ppmodels.fit, "fit", lambda model, train, **kw: seen.update(kw))
    args = build_parser().parse_args(["train", "vae", "--steps", "3", "--lr", "0.01", "--seed", "5", "--out", "r"])
    fit_stage(None, None, None, args, tmp_path, "vae", {}, "elbo", None)
    flagged = {name for name, rule in RULES.items() if rule.flag is not None}
    assert flagged <= set(seen) and (seen["steps"], seen["epochs"], seen["lr"], seen["seed"]) == (3, None, 0.01, 5)


def test_the_trajectory_is_the_declared_settings_and_the_objective():
    settings = TrainSettings(steps=4, betas=[0.5, 0.6])
    declared = {name for name, rule in RULES.items() if rule.trajectory}
    assert set(settings.trajectory()) == declared and settings.trajectory()["betas"] == [0.5, 0.6]
    assert settings.betas == (0.5, 0.6)  # kept as fit uses it
    run = Run.of(settings, steps_per_epoch=2, total_steps=4)
    assert set(run.trajectory("elbo")) == {"objective", *declared}
    assert "total_steps" in Run.of(settings, lr_schedule="cosine", steps_per_epoch=2, total_steps=4).trajectory("elbo")
    assert {"keep_checkpoints", "log_every", "eval_particles"}.isdisjoint(declared)  # a resume may change them


def test_adam_gets_the_settings_declared_its():
    assert set(TrainSettings(steps=1).adam()) == set(ADAM_DEFAULTS) >= {"lr", "betas", "eps"}
    opt = make_optimizer([torch.zeros(2, requires_grad=True)], lr=0.5)
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["eps"] == ADAM_DEFAULTS["eps"]
    with pytest.raises(PPModelsError, match="'momentum' is not one of Adam's settings"):
        make_optimizer([torch.zeros(2, requires_grad=True)], momentum=0.9)


def test_settings_and_objective_options_are_told_apart():
    settings, rest = split_options({"lr": 0.1, "num_particles": 5, "steps": 2})
    assert settings == {"lr": 0.1, "steps": 2} and rest == {"num_particles": 5}
    with pytest.raises(PPModelsError, match="fit: drop_last must be True or False, got 1"):
        TrainSettings(steps=1, drop_last=1)
    with pytest.raises(PPModelsError, match=r"fit: give epochs=\.\.\. or steps=\.\.\.$"):
        TrainSettings()


# -- a setting added in one place: Adam's weight_decay ----------------------------------------------
def _decayed_runs(tmp_path, **options):
    from ppmodels.fit import fit
    from ppmodels.models import LinearGaussian
    from ppmodels.rundir import load_checkpoint

    x = LinearGaussian(5, 2, seed=0).sample_data(40, seed=1)
    out = {}
    for name, decay in (("plain", 0.0), ("decayed", 0.5)):
        fit(LinearGaussian(5, 2, seed=0), x, epochs=1, batch_size=20, device="cpu", out=tmp_path / name,
            weight_decay=decay, **options)
        out[name] = load_checkpoint(tmp_path / name)
    return x, out


def test_weight_decay_reaches_adam_and_the_checkpoint(tmp_path):
    _, ckpt = _decayed_runs(tmp_path)
    assert [c["optimizer"]["param_groups"][0]["weight_decay"] for c in ckpt.values()] == [0.0, 0.5]
    assert [c["settings"]["weight_decay"] for c in ckpt.values()] == [0.0, 0.5]
    plain, decayed = ckpt["plain"]["params"], ckpt["decayed"]["params"]
    assert any(not torch.equal(plain[k], decayed[k]) for k in plain)  # it changes the steps
    assert make_optimizer([torch.zeros(1, requires_grad=True)], weight_decay=0.25).param_groups[0]["weight_decay"] == 0.25


def test_a_resume_with_another_weight_decay_is_refused(tmp_path):
    from ppmodels.fit import fit
    from ppmodels.models import LinearGaussian

    x, _ = _decayed_runs(tmp_path)
    with pytest.raises(PPModelsError, match=r"settings differ .*\(weight_decay 0\.5 vs 0\.0\)"):
        fit(LinearGaussian(5, 2, seed=0), x, epochs=2, batch_size=20, device="cpu", out=tmp_path / "decayed",
            resume=True)
    fit(LinearGaussian(5, 2, seed=0), x, epochs=2, batch_size=20, device="cpu", out=tmp_path / "decayed", resume=True,
        weight_decay=0.5)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), "0.1", None])
def test_a_bad_weight_decay_is_one_line(value):
    with pytest.raises(PPModelsError, match=r"^fit: weight_decay must be a finite number >= 0, got "):
        TrainSettings(steps=1, weight_decay=value)


def test_the_train_command_takes_weight_decay(capsys):
    parse = build_parser().parse_args
    assert parse(["train", "vae", "--out", "r"]).weight_decay == 0.0
    assert parse(["train", "gmm", "--guide", "bayes", "--weight-decay", "1e-4", "--out", "r"]).weight_decay == 1e-4
    with pytest.raises(SystemExit) as exit_:
        parse(["train", "vae", "--weight-decay", "-1", "--out", "r"])
    assert exit_.value.code == 2 and "expected a finite number >= 0, got '-1'" in capsys.readouterr().err
