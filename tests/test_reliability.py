"""Reliability matrix: bad flags, run-directory hazards, bad data, bad options, damaged
checkpoints, NaN faults, concurrent writers, interruption and resume.

Every case asserts the class of outcome and the first line of the message:
- the CLI exits 2 with exactly one line ``ppmodels: error: ...`` (never a traceback);
- Python raises ``PPModelsError`` (a ``ValueError``) with a message of at most three lines;
- nothing on disk is lost.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppmodels import evaluate
from ppmodels.cli import main
from ppmodels.data import TensorData, synthetic_images
from ppmodels.fit import NonFiniteLoss, fit, load_checkpoint
from ppmodels.models import VAE, GaussianMixture, LinearGaussian, SemiSupervisedVAE
from ppmodels.objectives import make
from ppmodels.rundir import PREVIOUS, RunLock
from ppmodels.utils import PPModelsError

from helpers import run_cli, step_clock

SMALL = ["--hidden", "16", "--z-dim", "2", "--num-samples", "4", "--eval-subset", "20", "--quiet", "--train-subset", "200"]
#: SMALL for dvae's categoricals (no Gaussian z: --z-dim would do nothing, and is refused)
DVAE_SMALL = [a for i, a in enumerate(SMALL) if "--z-dim" not in SMALL[max(i - 1, 0):i + 1]]
#: SMALL for gmm: its points are no images (no networks, splits or test NLL)
GMM_SMALL = ["--quiet"]


def assert_one_line_error(code, err, expected):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("ppmodels: error:", "usage:")) or len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained vae run and a gmm run, made once through the CLI."""
    from ppmodels.data import save_mnist_cache

    root = tmp_path_factory.mktemp("rel")
    data_dir = root / "data"
    train_x, train_y = synthetic_images(300, seed=1)
    test_x, test_y = synthetic_images(60, seed=2)
    save_mnist_cache({"train_images": train_x, "train_labels": train_y,
                      "test_images": test_x, "test_labels": test_y}, data_dir)
    old = os.environ.get("PPMODELS_DATA")
    os.environ["PPMODELS_DATA"] = str(data_dir)
    assert main(["train", "vae", "--steps", "3", "--batch-size", "50", "--out", str(root / "vae"), *SMALL]) == 0
    assert main(["train", "gmm", "--steps", "50", "--restarts", "2", "--out", str(root / "gmm")]) == 0
    yield root
    if old is None:
        os.environ.pop("PPMODELS_DATA", None)
    else:
        os.environ["PPMODELS_DATA"] = old


# -- CLI: bad flags and values (exit 2, one line) --------------------------------------------------
def _file(tmp, name, content=b""):
    path = tmp / name
    path.write_bytes(content)
    return path


CLI_CASES = [
    ("epochs-0", lambda t, r: ["train", "vae", "--epochs", "0", "--out", t / "o"], "positive"),
    ("epochs-float", lambda t, r: ["train", "vae", "--epochs", "1.5", "--out", t / "o"], "expected a int"),
    ("hidden-negative", lambda t, r: ["train", "vae", "--hidden", "-5", "--epochs", "1", "--out", t / "o"], "positive integers"),
    ("hidden-zero", lambda t, r: ["train", "vae", "--hidden", "0", "--epochs", "1", "--out", t / "o"], "positive integers"),
    ("seed-25-digits", lambda t, r: ["train", "vae", "--seed", "1" * 25, "--epochs", "1", "--out", t / "o"], "--seed must be in"),
    ("seed-negative", lambda t, r: ["train", "vae", "--seed", "-1", "--epochs", "1", "--out", t / "o"], "--seed must be in"),
    ("out-empty", lambda t, r: ["train", "vae", "--epochs", "1", "--out", ""], "empty path"),
    ("out-is-a-file", lambda t, r: ["train", "vae", "--epochs", "1", "--out", _file(t, "f")], "is a file"),
    ("out-under-a-file", lambda t, r: ["train", "vae", "--epochs", "1", "--out", _file(t, "g") / "run"], "is under the file"),
    ("out-not-writable", lambda t, r: ["train", "vae", "--epochs", "1", "--out", "/proc/ppmodels-run"], "not writable"),
    ("epochs-and-steps", lambda t, r: ["train", "vae", "--epochs", "1", "--steps", "2", "--out", t / "o"], "not both"),
    ("neither-epochs-nor-steps", lambda t, r: ["train", "vae", "--out", t / "o"], "give --epochs"),
    ("unknown-objective", lambda t, r: ["train", "vae", "--objective", "elbow", "--epochs", "1", "--out", t / "o"], "invalid choice"),
    ("lr-zero", lambda t, r: ["train", "vae", "--lr", "0", "--epochs", "1", "--out", t / "o"], "positive"),
    ("lr-nan", lambda t, r: ["train", "vae", "--lr", "nan", "--epochs", "1", "--out", t / "o"], "positive"),
    ("lr-inf", lambda t, r: ["train", "vae", "--lr", "inf", "--epochs", "1", "--out", t / "o"], "positive"),
    ("aux-loss-nan", lambda t, r: ["train", "ssvae", "--aux-loss", "nan", "--epochs", "1", "--out", t / "o"], "finite number"),
    ("particles-zero", lambda t, r: ["train", "vae", "-K", "0", "--epochs", "1", "--out", t / "o"], "positive"),
    ("batch-size-zero", lambda t, r: ["train", "vae", "--batch-size", "0", "--epochs", "1", "--out", t / "o"], "positive"),
    ("weight-decay-negative", lambda t, r: ["train", "vae", "--weight-decay", "-1", "--epochs", "1", "--out", t / "o"], "finite number >= 0"),
    ("train-subset-zero", lambda t, r: ["train", "vae", "--train-subset", "0", "--epochs", "1", "--out", t / "o"], "positive"),
    ("alpha-one", lambda t, r: ["train", "vae", "--objective", "renyi", "--alpha", "1", "--steps", "1", "--out", t / "o", *SMALL], "alpha=1.0 is not allowed"),
    ("vimco-one-particle", lambda t, r: ["train", "dvae", "--objective", "vimco", "-K", "1", "--steps", "1", "--out", t / "o", *DVAE_SMALL], "num_particles must be >= 2"),
    ("resume-without-run", lambda t, r: ["train", "vae", "--resume", "--epochs", "1", "--out", t / "o"], "has no checkpoint.pt"),
    ("resume-and-overwrite", lambda t, r: ["train", "vae", "--resume", "--overwrite", "--epochs", "1", "--out", r / "vae"], "contradict"),
    ("out-holds-a-run", lambda t, r: ["train", "vae", "--epochs", "1", "--out", r / "vae"], "already holds a run"),
    ("out-holds-another-family", lambda t, r: ["train", "dvae", "--epochs", "1", "--out", r / "gmm"], "already holds a run"),
    ("gmm-missing-csv", lambda t, r: ["train", "gmm", "--data", t / "missing.csv", "--out", t / "o"], "neither 'tutorial' nor a CSV"),
    ("gmm-empty-csv", lambda t, r: ["train", "gmm", "--data", _file(t, "e.csv"), "--out", t / "o"], "not a readable CSV"),
    ("gmm-binary-csv", lambda t, r: ["train", "gmm", "--data", _file(t, "b.csv", bytes(range(256)) * 4), "--out", t / "o"], "gmm:"),
    ("gmm-text-column", lambda t, r: ["train", "gmm", "--data", _file(t, "t.csv", b"a,name\n1,x\n2,y\n"), "--out", t / "o"], "not numeric"),
    ("gmm-nan", lambda t, r: ["train", "gmm", "--data", _file(t, "n.csv", b"a,b\n1,2\nnan,3\n"), "--out", t / "o"], "NaN"),
    ("gmm-components-zero", lambda t, r: ["train", "gmm", "--components", "0", "--out", t / "o"], "positive"),
    ("evaluate-missing-run", lambda t, r: ["evaluate", t / "nothing"], "not a run directory"),
    ("evaluate-gmm-run", lambda t, r: ["evaluate", r / "gmm"], "a gmm run has no images"),
    ("sample-gmm-run", lambda t, r: ["sample", r / "gmm", "--out", t / "s.png"], "a gmm run has no images"),
    ("sample-out-missing-folder", lambda t, r: ["sample", r / "vae", "--out", t / "no" / "s.png"], "does not exist"),
    ("sample-out-extension", lambda t, r: ["sample", r / "vae", "--out", t / "s.txt"], "must end in .png"),
    ("sample-n-zero", lambda t, r: ["sample", r / "vae", "-n", "0"], "positive"),
    ("sample-n-huge", lambda t, r: ["sample", r / "vae", "-n", "100000000"], "at most 10000"),
    ("evaluate-samples-zero", lambda t, r: ["evaluate", r / "vae", "--num-samples", "0"], "positive"),
    ("evaluate-samples-float", lambda t, r: ["evaluate", r / "vae", "--num-samples", "1e12"], "expected a int"),
    ("huge-K", lambda t, r: ["train", "vae", "-K", "1000000000", "--steps", "1", "--out", t / "o", *SMALL], "GiB is free"),
    ("huge-batch-and-K", lambda t, r: ["train", "vae", "-K", "100000", "--batch-size", "100000", "--steps", "1",
                                       "--out", t / "o"], "GiB is free"),
    ("huge-restarts", lambda t, r: ["train", "gmm", "--restarts", "10000000000", "--out", t / "o"], "GiB is free"),
    ("evaluate-samples-huge", lambda t, r: ["evaluate", r / "vae", "--num-samples", "1000000000000"], "at most 1000000"),
    ("variance-k-zero", lambda t, r: ["variance", "--model", "linear-gaussian", "--num-particles", "0", "--out", t / "v"], "positive integers"),
    ("variance-empty-objectives", lambda t, r: ["variance", "--model", "linear-gaussian", "--objectives", ",", "--out", t / "v"], "names no objective"),
    ("variance-unknown-objective", lambda t, r: ["variance", "--model", "linear-gaussian", "--objectives", "elbow", "--out", t / "v"], "unknown objective"),
]


@pytest.mark.parametrize("case,argv,expected", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_and_exit_2(case, argv, expected, trained, tmp_path, capsys):
    code, _, err = run_cli(argv(tmp_path, trained), capsys)
    assert_one_line_error(code, err, expected)


def test_cli_data_root_that_is_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PPMODELS_DATA", str(_file(tmp_path, "not-a-dir")))
    code, _, err = run_cli(["data"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# -- damaged checkpoints: evaluate, sample and --resume refuse them in one line --------------------
def _damage(run: Path, how: str, tmp: Path) -> Path:
    import shutil

    target = tmp / f"damaged-{how}"
    shutil.copytree(run, target)
    ckpt = target / "checkpoint.pt"
    data = ckpt.read_bytes()
    if how == "empty":
        ckpt.write_bytes(b"")
    elif how == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif how == "random":
        ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "malicious":
        class Payload:
            def __reduce__(self):
                return (os.system, ("touch " + str(tmp / "PWNED"),))
        ckpt.write_bytes(pickle.dumps({"params": Payload()}, protocol=2))
    elif how == "bitflip":
        state = torch.load(ckpt, weights_only=True)
        key = next(iter(state["params"]))
        state["params"][key].view(-1)[0] += 1.0  # a changed weight, the stored checksum kept
        torch.save(state, ckpt)
    elif how == "optimizer-bitflip":
        state = torch.load(ckpt, weights_only=True)
        exp_avg = next(iter(state["optimizer"]["state"].values()))["exp_avg"]
        exp_avg.view(-1)[0] += 1.0
        torch.save(state, ckpt)
    return target


DAMAGE = [("empty", "is empty"), ("truncated", "cannot be read"), ("random", "was refused"),
          ("malicious", "was refused"), ("bitflip", "corrupted"), ("optimizer-bitflip", "corrupted")]
COMMANDS = [("evaluate", lambda run: ["evaluate", run, "--num-samples", "2"]),
            ("sample", lambda run: ["sample", run]),
            ("resume", lambda run: ["train", "vae", "--resume", "--steps", "4", "--batch-size", "50", "--out", run, *SMALL])]


@pytest.mark.parametrize("how,expected", DAMAGE, ids=[d[0] for d in DAMAGE])
@pytest.mark.parametrize("command,argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_damaged_checkpoints_are_refused(how, expected, command, argv, trained, tmp_path, capsys):
    run = _damage(trained / "vae", how, tmp_path)
    code, _, err = run_cli(argv(run), capsys)
    assert_one_line_error(code, err, expected)
    assert not (tmp_path / "PWNED").exists()


# -- resume with other settings: refused, listing what differs -------------------------------------
RESUME_CHANGES = [("hidden", ["--hidden", "8"], "module.decoder.0.bias (16,) vs (8,)"), ("lr", ["--lr", "0.01"], "lr"),
                  ("objective", ["--objective", "iwae"], "objective"), ("batch-size", ["--batch-size", "20"], "batch_size"),
                  ("seed", ["--seed", "3"], "seed"), ("weight-decay", ["--weight-decay", "0.01"], "weight_decay 0.0 vs 0.01")]


@pytest.mark.parametrize("what,extra,expected", RESUME_CHANGES, ids=[c[0] for c in RESUME_CHANGES])
def test_resume_with_other_settings_is_refused(what, extra, expected, trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained / "vae", run)
    args = ["train", "vae", "--resume", "--steps", "6", "--batch-size", "50", "--out", run, *SMALL]
    args = [a for a in args]
    for flag, value in zip(extra[::2], extra[1::2]):  # replace or add the flag
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, expected)
    assert "settings differ" in err or "do not match" in err


# -- Python API: bad options and data (PPModelsError, at most three lines) -------------------------
def _lg_data():
    m = LinearGaussian(5, 2, seed=0)
    return m, m.sample_data(40, seed=1)


def _binary(n=300):
    x, _ = synthetic_images(n, seed=3)
    return (x > 127).float()


def _vae():
    return VAE(x_dim=784, z_dim=2, hidden=(8,))


def _with(x, row, col, value):
    x = x.clone()
    x[row, col] = value
    return x


API_CASES = [
    ("numpy-data", lambda: fit(_lg_data()[0], _lg_data()[1].numpy(), steps=1, device="cpu"), "expected a tensor"),
    ("list-data", lambda: fit(_lg_data()[0], [[1.0] * 5] * 4, steps=1, device="cpu"), "expected a tensor"),
    ("str-data", lambda: fit(_lg_data()[0], "data.csv", steps=1, device="cpu"), "expected a tensor"),
    ("empty-data", lambda: fit(_lg_data()[0], torch.zeros(0, 5), steps=1, device="cpu"), "no rows"),
    ("scalar-data", lambda: fit(_lg_data()[0], torch.tensor(1.0), steps=1, device="cpu"), "0-d tensor"),
    ("eval-particles-zero", lambda: fit(*_lg_data(), steps=1, eval_particles=0, device="cpu"), "eval_particles must be"),
    ("log-every-zero", lambda: fit(*_lg_data(), steps=1, log_every=0, device="cpu"), "log_every must be"),
    ("betas-out-of-range", lambda: fit(*_lg_data(), steps=1, betas=(1.5, 0.9), device="cpu"), "betas must be"),
    ("eps-zero", lambda: fit(*_lg_data(), steps=1, eps=0.0, device="cpu"), "eps must be"),
    ("weight-decay-nan", lambda: fit(*_lg_data(), steps=1, weight_decay=float("nan"), device="cpu"), "weight_decay must be"),
    ("batch-size-float", lambda: fit(*_lg_data(), steps=1, batch_size=2.5, device="cpu"), "batch_size must be"),
    ("epochs-float", lambda: fit(*_lg_data(), epochs=1.5, device="cpu"), "epochs must be"),
    ("steps-zero", lambda: fit(*_lg_data(), steps=0, device="cpu"), "steps must be"),
    ("epochs-and-steps", lambda: fit(*_lg_data(), epochs=1, steps=2, device="cpu"), "not both"),
    ("clip-norm-negative", lambda: fit(*_lg_data(), steps=1, clip_norm=-1.0, device="cpu"), "clip_norm must be"),
    ("clip-norm-nan", lambda: fit(*_lg_data(), steps=1, clip_norm=float("nan"), device="cpu"), "clip_norm must be"),
    ("lr-nan", lambda: fit(*_lg_data(), steps=1, lr=float("nan"), device="cpu"), "lr must be"),
    ("seed-negative", lambda: fit(*_lg_data(), steps=1, seed=-1, device="cpu"), "seed must be"),
    ("seed-huge", lambda: fit(*_lg_data(), steps=1, seed=10**25, device="cpu"), "seed must be"),
    ("bad-schedule", lambda: fit(*_lg_data(), steps=1, lr_schedule="linear", device="cpu"), "lr_schedule must be"),
    ("device-name", lambda: fit(*_lg_data(), steps=1, device="tpu"), "expected 'cpu', 'cuda' or 'auto'"),
    ("nan-row-250", lambda: fit(_vae(), _with(_binary(), 250, 3, float("nan")), steps=1, device="cpu"), "row 250"),
    ("half-pixel-row-250", lambda: fit(_vae(), _with(_binary(), 250, 3, 0.5), steps=1, device="cpu"), "row 250"),
    ("pixel-255-row-250", lambda: fit(_vae(), _with(_binary(), 250, 3, 255.0), steps=1, device="cpu"), "row 250"),
    ("negative-pixel-row-250", lambda: fit(_vae(), _with(_binary(), 250, 3, -5.0), steps=1, device="cpu"), "row 250"),
    ("bad-test-row", lambda: fit(_vae(), _binary(), steps=1, device="cpu", test=TensorData(_with(_binary(50), 40, 0, 0.5))),
     "test data, row 40"),
    ("bad-validation-row", lambda: fit(_vae(), _binary(), steps=1, device="cpu",
                                       validation=TensorData(_with(_binary(50), 7, 0, float("nan")))), "validation data, row 7"),
    ("half-pixel-row-4500", lambda: fit(_vae(), _with(_binary(5000), 4500, 3, 0.5), steps=1, device="cpu"),
     "row 4500"),  # past the first 4096 rows the model sees: the vectorized support check
    ("nan-row-4500", lambda: fit(_vae(), _with(_binary(5000), 4500, 3, float("nan")), steps=1, device="cpu"),
     "row 4500"),
    ("dynamic-intensity-negative", lambda: TensorData(_with(_binary(), 250, 3, -5.0), binarize="dynamic"), "row 250"),
    ("ssvae-label-ten", lambda: fit(SemiSupervisedVAE(hidden=(8,), z_dim=2), (_binary(), _labels(250, 10)), steps=1,
                                    device="cpu"), "row 250"),
    ("ssvae-label-minus-five", lambda: fit(SemiSupervisedVAE(hidden=(8,), z_dim=2), (_binary(), _labels(250, -5)),
                                           steps=1, device="cpu"), "row 250"),
    ("wrong-width", lambda: fit(_vae(), torch.zeros(10, 100), steps=1, device="cpu"), "expects a batch of shape"),
    ("unknown-objective", lambda: fit(*_lg_data(), steps=1, objective="elbow", device="cpu"), "unknown objective"),
    ("objective-option", lambda: make("elbo", bogus=1), "does not take option"),
    ("particles-zero", lambda: make("iwae", num_particles=0), "num_particles must be"),
    ("renyi-alpha-one", lambda: make("renyi", alpha=1.0), "alpha=1.0 is not allowed"),
    ("reinforce-baseline", lambda: make("reinforce", baseline="average"), "baseline must be one of"),
    ("ll-samples-zero", lambda: evaluate.log_likelihood(*_lg_data(), num_samples=0), "num_samples must be"),
    ("ll-samples-float", lambda: evaluate.log_likelihood(*_lg_data(), num_samples=2.5), "num_samples must be"),
    ("ll-chunk-zero", lambda: evaluate.log_likelihood(*_lg_data(), num_samples=5, particle_chunk=0), "particle_chunk must be"),
    ("not-a-model", lambda: fit(object(), torch.zeros(3, 2), steps=1), "does not follow the model protocol"),
    ("gmm-float64-data", lambda: fit(GaussianMixture(2, dim=2), torch.randn(20, 2, dtype=torch.float64), steps=1,
                                     device="cpu"), "float64"),
]


def _labels(row, value):
    y = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(0))
    y[row] = value
    return y


@pytest.mark.parametrize("case,call,expected", API_CASES, ids=[c[0] for c in API_CASES])
def test_python_bad_input_is_a_short_ppmodels_error(case, call, expected):
    with pytest.raises(PPModelsError) as err:
        call()
    message = str(err.value)
    assert expected in message, message
    assert len(message.splitlines()) <= 3, message


# -- run directories: nothing lost -----------------------------------------------------------------
def test_fit_refuses_a_directory_holding_a_run_unless_asked(tmp_path):
    m, x = _lg_data()
    fit(m, x, epochs=1, batch_size=20, out=tmp_path, device="cpu")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(PPModelsError, match="already holds a run"):
        fit(m, x, epochs=1, batch_size=20, out=tmp_path, device="cpu")
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    fit(m, x, epochs=1, batch_size=20, out=tmp_path, device="cpu", overwrite=True)


def test_a_second_writer_is_refused_while_another_process_holds_the_directory(tmp_path):
    m, x = _lg_data()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ppmodels.rundir import RunLock\n"
                               "lock = RunLock(__import__('pathlib').Path(sys.argv[1]))\nprint('held', flush=True)\n"
                               "time.sleep(60)", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        with pytest.raises(PPModelsError, match="in use by another training"):
            fit(m, x, epochs=1, batch_size=20, out=tmp_path, device="cpu")
    finally:
        holder.kill()
        holder.wait()
    fit(m, x, epochs=1, batch_size=20, out=tmp_path, device="cpu")  # free again
    with RunLock(tmp_path):  # this process may take it again (the CLI holds it around fit)
        fit(m, x, epochs=1, batch_size=20, out=tmp_path, device="cpu", overwrite=True)


def test_two_processes_training_into_one_directory(tmp_path):
    """Two real processes: one trains, the other gets a clear error; the run is the first's. A
    handshake through files (not a sleep): the first waits at its second step until the second
    has been refused."""
    script = (
        "import pathlib, sys, time\n"
        "from ppmodels.models import LinearGaussian\n"
        "from ppmodels.fit import fit\n"
        "flags = pathlib.Path(sys.argv[2])\n"
        "def hold(step):\n"
        "    if step == 1:\n"
        "        (flags / 'training').touch()\n"
        "        deadline = time.monotonic() + 120\n"
        "        while not (flags / 'refused').exists() and time.monotonic() < deadline:\n"
        "            time.sleep(0.02)\n"
        "    return 1.0\n"
        "m = LinearGaussian(5, 2, seed=0)\n"
        "fit(m, m.sample_data(400, seed=1), epochs=3, batch_size=10, out=sys.argv[1], device='cpu', lr_schedule=hold)\n"
    )
    run, flags = tmp_path / "run", tmp_path / "flags"
    flags.mkdir()
    first = subprocess.Popen([sys.executable, "-c", script, str(run), str(flags)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (flags / "training").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert (flags / "training").exists(), "the first process did not start training"
        second = subprocess.run([sys.executable, "-c", script, str(run), str(tmp_path / "unused")],
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        (flags / "refused").touch()
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert second.returncode != 0 and ("in use by another training" in second.stderr or "already holds a run" in second.stderr)
    assert load_checkpoint(run)["epoch"] == 3


def test_a_nan_gradient_at_an_epochs_last_step_keeps_the_last_good_checkpoint(tmp_path):
    """The loss is finite, the gradient NaN, at the last step of epoch 2: the epoch-2 checkpoint is
    not written; epoch 1's stays, and the error names it."""
    clock, schedule = step_clock()

    class NanGradient:
        def model(self, x):
            loc = pyro.param("loc", torch.zeros(2))
            if clock["step"] == 7:  # the last step of epoch 2 (4 steps an epoch)
                # the value is loc (finite); the gradient flows through sqrt(-10) too: NaN
                loc = torch.where(torch.ones_like(loc, dtype=torch.bool), loc, torch.sqrt(loc - 10))
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

        def guide(self, x):
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(x / 2, 1.0).to_event(1))

    x = torch.randn(40, 2)
    with pytest.raises(NonFiniteLoss) as err:
        fit(NanGradient(), x, epochs=3, batch_size=10, out=tmp_path, device="cpu", lr_schedule=schedule, log_every=1)
    assert "NaN gradient" in str(err.value) and "checkpoint.pt" in str(err.value)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["params"].values())


def test_the_previous_checkpoint_is_kept(tmp_path):
    m, x = _lg_data()
    fit(m, x, epochs=2, batch_size=20, out=tmp_path, device="cpu")
    assert load_checkpoint(tmp_path / PREVIOUS)["epoch"] == 1 and load_checkpoint(tmp_path)["epoch"] == 2


def test_kept_checkpoints_survive_a_resume_and_an_overwrite_removes_them(tmp_path):
    m, x = _lg_data()
    fit(m, x, epochs=2, batch_size=20, out=tmp_path, device="cpu", keep_checkpoints=[1])
    # another set of kept epochs on resume is not another trajectory
    fit(m, x, epochs=4, batch_size=20, out=tmp_path, device="cpu", resume=True, keep_checkpoints=[3])
    kept = {p.name: load_checkpoint(p)["epoch"] for p in tmp_path.glob("checkpoint-epoch*.pt")}
    assert kept == {"checkpoint-epoch1.pt": 1, "checkpoint-epoch3.pt": 3}
    (tmp_path / "checkpoint-epoch3-good.pt").write_bytes(b"the user's")  # not a kept checkpoint's name

    class Fails:
        def on_fit_start(self, state):
            raise RuntimeError("before the first checkpoint")

    # an overwrite that fails before its first checkpoint keeps the old run's kept checkpoints
    with pytest.raises(RuntimeError):
        fit(m, x, epochs=1, batch_size=20, out=tmp_path, device="cpu", overwrite=True, callbacks=[Fails()])
    assert len(list(tmp_path.glob("checkpoint-epoch*.pt"))) == 3
    # the new run's first checkpoint removes them: they would pass for the new run's
    fit(m, x, epochs=1, batch_size=20, out=tmp_path, device="cpu", overwrite=True)
    assert [p.name for p in tmp_path.glob("checkpoint-epoch*.pt")] == ["checkpoint-epoch3-good.pt"]


def test_a_kept_checkpoint_lost_to_a_kill_after_its_epoch_is_kept_on_resume(tmp_path):
    m, x = _lg_data()
    fit(m, x, epochs=2, batch_size=20, out=tmp_path, device="cpu", keep_checkpoints=[2])
    (tmp_path / "checkpoint-epoch2.pt").unlink()  # as if killed between the checkpoint and its copy
    fit(m, x, epochs=3, batch_size=20, out=tmp_path, device="cpu", resume=True, keep_checkpoints=[2])
    assert load_checkpoint(tmp_path / "checkpoint-epoch2.pt")["epoch"] == 2


def test_importance_nll_keeps_its_epochs_checkpoints_unless_told_not_to(tmp_path):
    from ppmodels.callbacks import ImportanceNLL

    m, x = _lg_data()
    for keep, out in ((True, tmp_path / "a"), (False, tmp_path / "b")):
        fit(m, x, epochs=3, batch_size=20, out=out, device="cpu",
            callbacks=[ImportanceNLL(x, [2], num_samples=5, keep_checkpoints=keep)])
        assert [p.name for p in out.glob("checkpoint-epoch*.pt")] == (["checkpoint-epoch2.pt"] if keep else [])
    fit(m, x, epochs=1, batch_size=20, device="cpu", callbacks=[ImportanceNLL(x, [1], num_samples=5)])  # no out: none


@pytest.mark.parametrize("keep,out,match", [([0], True, "epoch numbers >= 1"), (["a"], True, "epoch numbers >= 1"),
                                            ([1.5], True, "epoch numbers >= 1"), ([True], True, "epoch numbers >= 1"),
                                            ([float("inf")], True, "epoch numbers >= 1"), (None, True, "epoch numbers"),
                                            ("12", True, "got '12'"),
                                            ([2], True, "ends at epoch 1"), ([1], False, "needs out=")])
def test_bad_kept_checkpoints_are_one_line_errors(keep, out, match, tmp_path):
    m, x = _lg_data()
    with pytest.raises(PPModelsError, match=match) as err:
        fit(m, x, epochs=1, batch_size=20, out=tmp_path if out else None, device="cpu", keep_checkpoints=keep)
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())


# -- the same seed, the same run; kill -9 and resume ----------------------------------------------
def test_the_cli_seed_gives_the_same_run_bit_for_bit(trained, tmp_path, capsys):
    outs = []
    for name in ("a", "b"):
        assert main(["train", "vae", "--steps", "2", "--batch-size", "50", "--seed", "7", "--out", str(tmp_path / name),
                     *SMALL]) == 0
        outs.append(load_checkpoint(tmp_path / name)["params"])
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


RESUMES = [("vae", "dreg"), ("dvae", "vimco"), ("ssvae", "enum"), ("cvae", "elbo"), ("gmm", "enum")]


@pytest.mark.parametrize("family,objective", RESUMES, ids=[f"{f}-{o}" for f, o in RESUMES])
def test_kill_dash_9_mid_run_then_resume_is_bit_identical(family, objective, trained, tmp_path):
    """Train 3 epochs uninterrupted; train again, kill -9 after the first checkpoint, resume:
    the final parameters are equal bit for bit (CPU, the CLI's --seed alone)."""
    env = {**os.environ, "PPMODELS_DATA": os.environ["PPMODELS_DATA"], "PYTHONUNBUFFERED": "1"}
    extra = ["-K", "2"] if objective in ("iwae", "dreg", "vimco") else []
    small = {"dvae": DVAE_SMALL, "gmm": GMM_SMALL}.get(family, SMALL)
    base = [sys.executable, "-m", "ppmodels.cli", "train", family, "--objective", objective, "--epochs", "3",
            "--batch-size", "50", "--seed", "3", *extra, *small]
    if family == "ssvae":
        base += ["--labels", "50"]
    if family == "gmm":  # the tutorial's points, one step an epoch: a checkpoint every step
        base = [a if a != "3" else "40" for a in base] + ["--guide", "bayes", "--covariance", "diag"]
    subprocess.run([*base, "--out", str(tmp_path / "whole")], env=env, check=True, capture_output=True, timeout=300)
    victim = subprocess.Popen([*base, "--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert ckpt.exists()
    done = load_checkpoint(ckpt)["epoch"]
    resumed = subprocess.run([*base, "--out", str(tmp_path / "killed"), "--resume"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(ckpt)
    assert a["epoch"] == b["epoch"] and done < a["epoch"]
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k


RESUME_OBJECTIVES = [("elbo", {}), ("meanfield", {}), ("stl", {}), ("iwae", {"num_particles": 3}),
                     ("renyi", {"num_particles": 3}), ("dreg", {"num_particles": 3}), ("reinforce", {}),
                     ("reinforce", {"baseline": "neural"}), ("vimco", {"num_particles": 3}), ("enum", {})]


@pytest.mark.parametrize("name,options", RESUME_OBJECTIVES, ids=[f"{n}{o}" for n, o in RESUME_OBJECTIVES])
def test_every_objective_resumes_bit_identically(name, options, tmp_path):
    """2 epochs straight = 1 epoch, then resume to 2 (params, optimizer, RNG and the objective's
    own state, e.g. REINFORCE's baseline average, all restored)."""
    from ppmodels.models import CategoricalGaussian

    def model():
        if name in ("reinforce", "vimco", "enum"):
            return CategoricalGaussian(3, 2, seed=0), torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
        m = LinearGaussian(5, 2, seed=0)
        return m, m.sample_data(60, seed=1)

    m, x = model()
    fit(m, x, epochs=2, batch_size=20, out=tmp_path / "a", device="cpu", objective=name, **options)
    m, x = model()
    fit(m, x, epochs=1, batch_size=20, out=tmp_path / "b", device="cpu", objective=name, **options)
    m, x = model()
    fit(m, x, epochs=2, batch_size=20, out=tmp_path / "b", resume=True, device="cpu", objective=name, **options)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k


def test_evaluate_into_a_closed_pipe_is_quiet(trained):
    """`ppmodels evaluate RUN | head -1`: no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = f"{sys.executable} -m ppmodels.cli evaluate {trained / 'vae'} --num-samples 2 | head -1"
    done = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "{"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_a_cvae_killed_between_its_stages_resumes_without_retraining_the_baseline(trained, tmp_path, capsys):
    """The baseline stage finished, the CVAE's had not begun (no checkpoint in RUN_DIR): --resume
    keeps the baseline's checkpoint and trains the CVAE (was: refused, only --overwrite helped)."""
    out = tmp_path / "cvae"
    base = ["train", "cvae", "--epochs", "1", "--batch-size", "50", "--seed", "3", *SMALL, "--out", out]
    assert run_cli(base, capsys)[0] == 0
    baseline = load_checkpoint(out / "baseline")["params"]
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "history.csv", "report.json"):
        (out / name).unlink(missing_ok=True)
    code, _, err = run_cli([*base, "--resume"], capsys)
    assert code == 0, err
    assert (out / "report.json").exists() and load_checkpoint(out)["epoch"] == 1
    again = load_checkpoint(out / "baseline")["params"]
    assert all(torch.equal(baseline[k], again[k]) for k in baseline)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli([*base[:-1], empty, "--resume"], capsys)  # nothing at all to resume: still refused
    assert code == 2 and "no checkpoint.pt to resume from" in err
    # a family without stages is not taken in by a sub-directory's checkpoint (a sweep's root)
    shutil.copytree(out / "baseline", empty / "seed=0")
    code, _, err = run_cli(["train", "vae", "--epochs", "1", *SMALL, "--out", empty, "--resume"], capsys)
    assert code == 2 and "no checkpoint.pt to resume from" in err
    code, _, err = run_cli([*base, "--resume", "--overwrite"], capsys)
    assert code == 2 and "contradict" in err
