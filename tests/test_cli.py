import json
import os
import subprocess
import sys

import pytest

from ppmodels.cli import main

TINY = ["--epochs", "1", "--train-subset", "200", "--batch-size", "50", "--hidden", "32", "--z-dim", "4",
        "--quiet", "--num-samples", "20", "--eval-subset", "20", "--device", "cpu"]


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_the_run_and_reports(fake_mnist, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run(["train", "vae", "--preset", "burda", "--out", str(out_dir), *TINY], capsys)
    assert code == 0, err
    for name in ("history.csv", "checkpoint.pt", "samples.png", "reconstructions.png", "report.json"):
        assert (out_dir / name).exists(), name
    assert "test ELBO" in out and "test NLL" in out
    report = json.loads((out_dir / "report.json").read_text())
    assert report["test_nll"] > 0

    code, out, err = run(["evaluate", str(out_dir), "--num-samples", "10", "--subset", "10", "--device", "cpu"], capsys)
    assert code == 0, err
    assert json.loads(out)["nll_samples"] == 10

    code, out, err = run(["sample", str(out_dir), "-n", "16", "--out", str(tmp_path / "s.png"), "--device", "cpu"], capsys)
    assert code == 0 and (tmp_path / "s.png").exists()

    two_epochs = ["--epochs", "2", *TINY[2:]]
    code, out, err = run(["train", "vae", "--preset", "burda", "--out", str(out_dir), *two_epochs, "--resume"], capsys)
    assert code == 0, err
    assert json.loads((out_dir / "report.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("objective", [
    ["--objective", "iwae", "-K", "3"], ["--objective", "dreg", "-K", "3"],
    ["--objective", "renyi", "--alpha", "0.5", "-K", "3"], ["--objective", "stl"], ["--objective", "meanfield"],
])
def test_train_with_each_objective(fake_mnist, tmp_path, capsys, objective):
    code, out, err = run(["train", "vae", "--out", str(tmp_path / "r"), *TINY, *objective], capsys)
    assert code == 0, err


@pytest.mark.parametrize("latent,objective", [
    ("categorical", ["--objective", "vimco", "-K", "3"]),
    ("categorical", ["--objective", "reinforce", "--baseline", "neural"]),
    ("mixture", ["--objective", "enum"]),
    ("mixture", ["--objective", "reinforce", "--baseline", "decaying"]),
])
def test_train_discrete_vae(fake_mnist, tmp_path, capsys, latent, objective):
    out_dir = tmp_path / "d"
    # the categoricals have groups and no Gaussian z, the mixture the other way round
    own = (["--groups", "4", *[a for a in TINY if a not in ("--z-dim", "4")]] if latent == "categorical" else TINY)
    code, out, err = run(["train", "dvae", "--latent", latent, "--classes", "3", "--out", str(out_dir), *own,
                          *objective], capsys)
    assert code == 0, err
    assert json.loads((out_dir / "report.json").read_text())["test_nll"] > 0
    code, out, err = run(["evaluate", str(out_dir), "--num-samples", "5", "--subset", "5", "--device", "cpu"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("args,message", [
    (["train", "vae", "--epochs", "-1", "--out", "x"], "expected a positive int"),
    (["train", "vae", "--objective", "nope", "--epochs", "1", "--out", "x"], "invalid choice"),
    (["train", "vae", "--out", "x"], "give --epochs"),
    (["train", "vae", "--epochs", "1", "--out", "x", "--objective", "renyi", "--alpha", "1"], "alpha = 1 is the ELBO"),
    (["train", "vae", "--epochs", "1", "--out", "x", "--device", "tpu"], "device"),
    (["evaluate", "/nonexistent/run"], "not a run directory"),
    (["sample", "/nonexistent/run"], "not a run directory"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_give_one_line_and_exit_2(fake_mnist, capsys, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --out paths land here, not in the checkout
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_help_everywhere(capsys):
    for args in (["--help"], ["train", "--help"], ["evaluate", "--help"], ["sample", "--help"], ["data", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_console_script_entry_point(fake_mnist, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "ppmodels")
    proc = subprocess.run([exe, "evaluate", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("ppmodels: error:")
    proc = subprocess.run([exe, "data"], capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 0 and "600 train" in proc.stdout


EXAMPLES = sorted((__import__("pathlib").Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_compile_and_document_their_command(path):
    source = path.read_text()
    compile(source, str(path), "exec")
    assert source.startswith('"""') and f"python examples/{path.name}" in source
    if "argparse" in source:
        proc = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
