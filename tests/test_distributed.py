"""Data-parallel fit under torchrun (gloo, CPU): the same update as one process on the same
global batches; rank 0 writes the run; a checkpoint resumes with another world size."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_train.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, procs: int, tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    if procs == 1:
        cmd = [sys.executable, str(SCRIPT), *args]
    else:
        cmd = [str(TORCHRUN), "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1", "--master_port",
               str(_port()), str(SCRIPT), *args]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _params(path):
    return torch.load(path, weights_only=True)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_two_processes_give_the_one_process_update_and_the_power_check_fails_without_scaling(tmp_path):
    _run(["gmm", str(tmp_path / "one.pt")], 1, tmp_path)
    _run(["gmm", str(tmp_path / "two.pt")], 2, tmp_path)
    _run(["gmm-unscaled", str(tmp_path / "naive.pt")], 2, tmp_path)
    one, two, naive = (_params(tmp_path / f) for f in ("one.pt", "two.pt", "naive.pt"))
    for key in one:  # 12 Adam steps on batches of 20 of 80 points, exact (enumerated, MAP) gradients
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-5), key
    # counting the global sites' prior once per rank is a different update, and the check sees it
    assert max((one[k] - naive[k]).abs().max().item() for k in one) > 1e-3


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_two_process_vae_is_within_seed_noise_and_resumes_with_one_process(tmp_path):
    _run(["vae", str(tmp_path / "one.pt"), "elbo", "0"], 1, tmp_path)
    _run(["vae", str(tmp_path / "seed1.pt"), "elbo", "1"], 1, tmp_path)
    _run(["vae", str(tmp_path / "two.pt"), "elbo", "0"], 2, tmp_path)
    final = {k: json.loads((tmp_path / f"{k}.pt.json").read_text())["test_elbo"][-1] for k in ("one", "seed1", "two")}
    noise = max(abs(final["one"] - final["seed1"]), 0.5)
    assert abs(final["two"] - final["one"]) < 3 * noise, final
    run = tmp_path / "two.pt.run"  # rank 0 wrote the run directory, and only one history
    assert (run / "checkpoint.pt").exists() and len((run / "history.csv").read_text().splitlines()) == 5
    from ppmodels.data import TensorData, synthetic_images
    from ppmodels.fit import fit
    from ppmodels.models import VAE

    images, _ = synthetic_images(600, seed=0)
    torch.manual_seed(0)
    history = fit(VAE(x_dim=784, z_dim=4, hidden=(32,)), TensorData(images[:400], binarize="dynamic"), epochs=6,
                  batch_size=40, lr=3e-3, seed=0, test=TensorData(images[400:], binarize="dynamic"), device="cpu",
                  out=run, resume=True, progress=False)
    assert list(history["epoch"]) == [1, 2, 3, 4, 5, 6]  # four from two processes, two from one


def test_a_global_batch_not_divisible_by_the_processes_is_refused(monkeypatch):
    from ppmodels import distributed
    from ppmodels.fit import fit
    from ppmodels.models import LinearGaussian
    from ppmodels.utils import PPModelsError

    monkeypatch.setattr(distributed, "setup", lambda device: (distributed.Group(0, 3), device))
    m = LinearGaussian(5, 2, seed=0)
    with pytest.raises(PPModelsError, match="multiple of the 3 processes"):
        fit(m, m.sample_data(20, seed=1), epochs=1, batch_size=10, device="cpu")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_torchrun_cli_trains_with_rank_zero_writing_the_run(fake_mnist, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_port()),
           "-m", "ppmodels", "train", "vae", "--preset", "burda", "--z-dim", "4", "--hidden", "32",
           "--epochs", "2", "--batch-size", "40", "--eval-subset", "20", "--num-samples", "10", "--device", "cpu",
           "--nll-at", "2", "--out", str(out), "--quiet"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test NLL") == 1  # printed by rank 0 only
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2 and report["nll_images"] == 20
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert history["test_nll"].iloc[:1].isna().all() and history["test_nll"].iloc[-1] > 0  # --nll-at 2


def test_plan_sums_over_rows_given_and_averages_over_a_subsampled_whole(monkeypatch):
    """A plate over the rows a rank is given: its loss is its shard's, summed over ranks. A plate
    over the whole data set, subsampled: each rank estimates the whole, averaged. No plate: refused."""
    import pyro
    import pyro.distributions as dist

    from ppmodels import distributed
    from ppmodels.models import CategoricalGaussian
    from ppmodels.utils import PPModelsError

    x = torch.randn(20, 2)
    m = CategoricalGaussian(3, 2, subsample_size=5)
    assert distributed.plan(m.model, m.guide, (x[:10],), (x,)) == (False, "data")

    def whole(x, N=1000):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", N, subsample=torch.arange(x.shape[0])):
            pyro.sample("obs", dist.Normal(loc, 1.0).to_event(1), obs=x)

    assert distributed.plan(whole, lambda x, N=1000: None, (x[:10],), (x,)) == (True, "data")

    def unplated(x):
        pyro.sample("obs", dist.Normal(torch.zeros(x.shape), 1.0).to_event(2), obs=x)

    with pytest.raises(PPModelsError, match="needs a batch plate"):
        distributed.plan(unplated, lambda x: None, (x[:10],), (x,))


def test_importance_nll_callback_splits_the_rows_across_ranks(monkeypatch):
    """Rank 1 of 2 (its all-reduce the identity, so only its own rows count) evaluates the second
    block of rows, with its own seed: the callback's value is that block's NLL, not all rows'."""
    from ppmodels import distributed, evaluate
    from ppmodels.callbacks import FitState, ImportanceNLL
    from ppmodels.data import TensorData, synthetic_images
    from ppmodels.models import VAE

    group = distributed.Group(1, 2)
    monkeypatch.setattr(group, "sum", lambda values, device: [float(v) for v in values])
    images, _ = synthetic_images(20, seed=0)
    data = TensorData(images, binarize="dynamic")
    torch.manual_seed(0)
    model = VAE(x_dim=784, z_dim=4, hidden=(16,))
    state = FitState(model=model, objective=None, optimizer=None, params={}, total_steps=1, steps_per_epoch=1,
                     group=group)
    torch.manual_seed(5)
    ImportanceNLL(data, [1], num_samples=8, seed=3).on_epoch_end(state)
    torch.manual_seed(5)
    block = evaluate.log_likelihood(model, data.subset(slice(10, 20)), 8,
                                    generator=torch.Generator().manual_seed(3 + 1))
    assert state.row["test_nll"] == pytest.approx(-block.mean().item(), abs=1e-4)  # float64 sum
    torch.manual_seed(5)
    every = evaluate.log_likelihood(model, data, 8, generator=torch.Generator().manual_seed(3 + 1))
    assert abs(state.row["test_nll"] + every.mean().item()) > 1e-2  # all rows is another number
    assert "active_units" not in state.row  # rank 0's row alone is kept: the others skip them


def test_tensors_given_to_collectives_are_released_at_exit_only_after_the_worker_lets_go(monkeypatch):
    """gloo's worker drops a finished collective's tensors after all_reduce returns; freeing them
    from Python first made a rank abort at exit. Every collective's tensor is kept, and the exit
    hook waits for the worker's reference (here: an autograd graph holding the tensor, dropped by
    a thread only once the hook is waiting)."""
    import threading
    import time

    from ppmodels import distributed

    monkeypatch.setattr(distributed, "_SENT", distributed.deque(maxlen=8))
    given = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: given.append(t))
    monkeypatch.setattr(torch.distributed, "broadcast", lambda t, src: given.append(t))
    group = distributed.Group(rank=0, world_size=1)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    group.reduce_gradients([p])
    group.average_([torch.ones(2)])
    assert group.sum([1.0, 2.0], torch.device("cpu")) == [1.0, 2.0]
    group.broadcast_([p])
    assert len(given) == 4 and all(any(t is k for k in distributed._SENT) for t in given)  # each one kept

    distributed._SENT.clear()
    waiting, released = threading.Event(), []
    real_sleep = time.sleep
    monkeypatch.setattr(distributed.time, "sleep", lambda s: (waiting.set(), real_sleep(s)))
    held = {}

    def fake_all_reduce(flat):  # a C++ reference that outlives the call, like gloo's worker
        held["graph"] = (flat * torch.ones_like(flat, requires_grad=True)).sum()

        def let_go():
            waiting.wait(10)
            released.append(time.monotonic())
            held.clear()

        threading.Thread(target=let_go).start()

    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    group.sum([1.0], torch.device("cpu"))
    assert distributed._SENT[-1]._use_count() > 1  # the "worker" still holds it
    assert distributed._release_sent(timeout=10.0)
    assert released and time.monotonic() >= released[0] and not distributed._SENT
    # a reference that is never released: the hook gives up after its timeout, keeping the tensor
    group.sum([3.0], torch.device("cpu"))
    forever = (distributed._SENT[-1] * torch.ones(1, requires_grad=True)).sum()
    assert not distributed._release_sent(timeout=0.05) and distributed._SENT
    del forever
