"""Sweeps: expansion, local processes and Ray give the numbers of the runs made one by one,
and a sweep resumes after a run is deleted."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from ppmodels.sweep import expand, run_name, sweep
from ppmodels.utils import PPModelsError

COMMAND = ["train", "gmm", "--guide", "bayes", "--steps", "40", "--seed", "0,1", "--lr", "0.05,0.1"]


def test_expand_is_the_cartesian_product_and_keeps_list_valued_options():
    runs = expand(["train", "vae", "--objective", "elbo,iwae", "-K", "1,5,50", "--hidden", "200,200"])
    assert len(runs) == 6
    assert runs[0] == ({"objective": "elbo", "K": "1"}, ["train", "vae", "--objective", "elbo", "-K", "1",
                                                         "--hidden", "200,200"])
    assert run_name(runs[-1][0]) == "objective=iwae,K=50"
    variance = expand(["variance", "--model", "vae", "--objectives", "elbo,iwae", "--num-particles", "1,5",
                       "--seed", "0,1"])
    assert [s for s, _ in variance] == [{"seed": "0"}, {"seed": "1"}]
    assert [s for s, _ in expand(["train", "vae", "--seed=0,1", "--nll-at", "12,40"])] == [{"seed": "0"}, {"seed": "1"}]
    negative = expand(["train", "vae", "--objective", "renyi", "--alpha", "-0.5,0.5", "--seed", "0"])
    assert [argv[4:] for _, argv in negative] == [["--alpha=-0.5", "--seed", "0"], ["--alpha", "0.5", "--seed", "0"]]
    from ppmodels.cli import build_parser

    assert build_parser().parse_args([*negative[0][1], "--out", "x"]).alpha == -0.5
    attached = expand(["train", "vae", "--alpha=-0.5,abc"])  # --opt=value stays attached, swept or not
    assert [argv[2:] for _, argv in attached] == [["--alpha=-0.5"], ["--alpha=abc"]]
    with pytest.raises(PPModelsError, match="repeats a value"):
        expand(["train", "vae", "--seed", "1,1"])
    with pytest.raises(PPModelsError, match="expected a command"):
        expand(["fit", "vae"])


def test_a_familys_list_valued_options_come_from_its_parser(monkeypatch):
    from ppmodels import families
    from ppmodels.argtypes import ints, list_valued
    from ppmodels.families.base import Family

    class Layers(Family):
        name, help, default_objective = "layers", "a family with list options", "elbo"

        def add_options(self, parser):
            list_valued(parser.add_argument("--names", default="a"))  # marked
            parser.add_argument("--widths", type=ints)  # comma-separated integers
            parser.add_argument("--width", type=int)

    monkeypatch.setattr(families, "FAMILIES", {**families.FAMILIES, "layers": Layers()})
    runs = expand(["train", "layers", "--names", "x,y", "--widths=3,4", "--width", "5,6", "--seed", "0,1"])
    assert [s for s, _ in runs] == [{"width": w, "seed": s} for w in ("5", "6") for s in ("0", "1")]
    assert runs[0][1] == ["train", "layers", "--names", "x,y", "--widths=3,4", "--width", "5", "--seed", "0"]
    # the list options are the named family's: vae's --nll-at is one, a family without it sweeps its values
    assert len(expand(["train", "vae", "--nll-at", "1,2"])) == 1 and len(expand(["train", "layers", "--nll-at", "1,2"])) == 2


def test_a_run_directory_of_another_command_is_not_taken_for_done(tmp_path):
    (tmp_path / "s" / "seed=0").mkdir(parents=True)
    (tmp_path / "s" / "seed=0" / "sweep.json").write_text(json.dumps({"argv": ["train", "gmm", "--seed", "0"]}))
    with pytest.raises(PPModelsError, match="holds a run of another command"):
        sweep(["train", "gmm", "--steps", "7", "--seed", "0,1"], tmp_path / "s", workers=1)
    with pytest.raises(PPModelsError, match="retries must be"):
        sweep(["train", "gmm", "--seed", "0,1"], tmp_path / "t", retries=-1)


def test_a_bad_value_in_any_run_is_refused_before_any_run(tmp_path):
    with pytest.raises(PPModelsError, match="steps 10,-1|expected a positive int"):
        sweep(["train", "gmm", "--steps", "10,-1"], tmp_path / "s", workers=1)
    assert not any((tmp_path / "s").glob("*/report.json"))


def _alone(tmp_path):
    """The four runs made as single, separate `ppmodels train` commands (one thread each, as in
    the sweep; started together to save the test's time: each is its own process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    outs = {run_name(settings): (argv, tmp_path / "alone" / run_name(settings)) for settings, argv in expand(COMMAND)}
    procs = [subprocess.Popen([sys.executable, "-m", "ppmodels", *argv, "--out", str(out)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for argv, out in outs.values()]
    assert all(p.wait() == 0 for p in procs)
    return {name: json.loads((out / "report.json").read_text())["log_likelihood"] for name, (_, out) in outs.items()}


def test_local_processes_and_ray_give_the_numbers_of_single_runs_and_resume(tmp_path):
    alone = _alone(tmp_path)
    table = sweep(COMMAND, tmp_path / "local", workers=2)
    assert list(table["status"]) == ["done"] * 4
    assert dict(zip(table["run"], table["log_likelihood"])) == alone  # exactly
    assert (tmp_path / "local" / "summary.csv").exists()
    shutil.rmtree(tmp_path / "local" / "seed=1,lr=0.05")
    again = sweep(COMMAND, tmp_path / "local", workers=2)
    assert sorted(again["status"]) == ["done", "skipped", "skipped", "skipped"]
    assert dict(zip(again["run"], again["log_likelihood"])) == alone
    pytest.importorskip("ray")
    on_ray = sweep(COMMAND, tmp_path / "ray")
    assert on_ray.attrs["engine"] == "ray" and list(on_ray["status"]) == ["done"] * 4
    assert dict(zip(on_ray["run"], on_ray["log_likelihood"])) == alone


def test_cli_sweep_prints_the_summary_and_refuses_a_bad_run_in_one_line(tmp_path):
    base = [sys.executable, "-m", "ppmodels", "sweep"]
    ok = subprocess.run([*base, "train", "gmm", "--guide", "bayes", "--steps", "20", "--seed", "0,1",
                         "--out", str(tmp_path / "s"), "--workers", "2"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "2 rows on 2 local processes" in ok.stdout and (tmp_path / "s" / "summary.csv").exists()
    bad = subprocess.run([*base, "train", "gmm", "--steps", "5,-1", "--out", str(tmp_path / "b"), "--workers", "1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "steps=5").exists()


def test_a_variance_sweep_gathers_every_study_row(tmp_path):
    table = sweep(["variance", "--model", "linear-gaussian", "--objectives", "elbo,iwae", "--num-particles", "1,5",
                   "--replicates", "30", "--seed", "0,1"], tmp_path / "v", workers=2)
    assert set(table["run"]) == {"seed=0", "seed=1"} and set(table["status"]) == {"done"}
    # each run's study: 2 objectives x 2 K x (model, guide) rows, with the run's own columns kept apart
    assert len(table) == 16 and {"run_seconds", "objective", "num_particles"} <= set(table.columns)


def test_a_run_with_an_earlier_stages_checkpoint_is_resumed(tmp_path, monkeypatch):
    """A cvae run killed between its stages has only baseline/checkpoint.pt: the retry resumes."""
    from ppmodels import sweep as sweep_module

    commands = []

    def fake_call(cmd, env):
        commands.append(cmd)
        (tmp_path / "run" / "report.json").write_text("{}")
        return 0, ""

    monkeypatch.setattr(sweep_module._CHILDREN, "call", fake_call)
    (tmp_path / "run" / "baseline").mkdir(parents=True)
    (tmp_path / "run" / "baseline" / "checkpoint.pt").write_bytes(b"")
    sweep_module.run_one(["train", "cvae", "--epochs", "1"], str(tmp_path / "run"), "report.json", 1, 0)
    assert commands[0][-1] == "--resume"
