"""Reliability matrix of run artefacts, ``compare``, sweeps, ``torchrun`` and checkpoints
(issue 23, part A). Every case is classified by the rules of ``tests/test_reliability.py``:

- ``cli``: the CLI exits 2 with exactly one line ``ppmodels: error: ...`` (never a traceback);
- ``api``: Python raises ``PPModelsError`` with a message of at most three lines;
- ``disk``: nothing on disk is lost (a file another writer wrote is kept byte for byte, a
  killed write leaves the old file or the new one, and a resume completes the run);
- ``hang``: no process is left behind or waits forever (signals reach the workers, a peer's
  death ends the other ranks).

Kills are simulated deterministically: :func:`ppmodels.rundir._fault` is called at each write
point of :func:`ppmodels.rundir.write_artifact`, and a test replaces it by one that raises there
(and makes every later write raise too: after a kill nothing more is written).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ppmodels import rundir
from ppmodels.cli import main
from ppmodels.fit import fit, load_checkpoint, load_run
from ppmodels.models import LinearGaussian
from ppmodels.utils import PPModelsError

from helpers import run_cli

SMALL = ["--hidden", "16", "--z-dim", "2", "--num-samples", "4", "--eval-subset", "20", "--quiet", "--train-subset",
         "200"]
COUNTS: dict[str, int] = {}


def assert_cli_error(code, err, expected):
    """Class ``cli``: exit 2, one line ``ppmodels: error: ...`` holding ``expected``."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("ppmodels: error:"), err
    assert expected in lines[0], lines[0]


def assert_api_error(excinfo, expected):
    """Class ``api``: a PPModelsError of at most three lines holding ``expected``."""
    message = str(excinfo.value)
    assert isinstance(excinfo.value, PPModelsError)
    assert expected in message and len(message.splitlines()) <= 3, message


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny vae run trained through the CLI on a fake MNIST, made once."""
    from ppmodels.data import save_mnist_cache, synthetic_images

    root = tmp_path_factory.mktemp("runs")
    train_x, train_y = synthetic_images(300, seed=1)
    test_x, test_y = synthetic_images(60, seed=2)
    save_mnist_cache({"train_images": train_x, "train_labels": train_y, "test_images": test_x,
                      "test_labels": test_y}, root / "data")
    old = os.environ.get("PPMODELS_DATA")
    os.environ["PPMODELS_DATA"] = str(root / "data")
    assert main(["train", "vae", "--steps", "4", "--batch-size", "100", "--out", str(root / "vae"), *SMALL]) == 0
    yield root
    if old is None:
        os.environ.pop("PPMODELS_DATA", None)
    else:
        os.environ["PPMODELS_DATA"] = old


def _copy(runs, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(runs / "vae", target)
    return target


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}


# -- 8. compare on files that are not a run's: one line naming the file ---------------------------
def _no_epoch(run):
    (run / "history.csv").write_text("step,train_loss\n1,2.0\n")


def _empty_history(run):
    (run / "history.csv").write_text("")


def _binary_history(run):
    (run / "history.csv").write_bytes(bytes(range(256)) * 8)


def _text_epoch(run):
    (run / "history.csv").write_text("epoch,train_loss\none,2.0\n")


def _list_report(run):
    (run / "report.json").write_text("[1, 2, 3]")


def _bad_json_report(run):
    (run / "report.json").write_text("{\"test_nll\": ")


def _foreign_checkpoint(run):
    state = {"params": {"w": torch.zeros(2)}, "meta": [1, 2]}
    torch.save({**state, "checksum": rundir.checksum(state)}, run / "checkpoint.pt")


def _no_history(run):
    (run / "history.csv").unlink()


FOREIGN = [("history-without-epoch", _no_epoch, "history.csv is not a run's history (no numeric epoch column)"),
           ("history-empty", _empty_history, "history.csv is not a run's history (EmptyDataError"),
           ("history-binary", _binary_history, "history.csv is not a run's history"),
           ("history-text-epoch", _text_epoch, "no numeric epoch column"),
           ("report-a-list", _list_report, "report.json holds a JSON list, not an object"),
           ("report-not-json", _bad_json_report, "report.json is not valid JSON"),
           ("checkpoint-foreign-meta", _foreign_checkpoint, "checkpoint.pt is not a run's checkpoint"),
           ("no-history", _no_history, "has no history.csv")]


@pytest.mark.parametrize("case,damage,expected", FOREIGN, ids=[c[0] for c in FOREIGN])
def test_cli_compare_on_a_foreign_file_names_it(case, damage, expected, runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    damage(run)
    code, _, err = run_cli(["compare", runs / "vae", run, "--out", tmp_path / "c.png"], capsys)
    assert_cli_error(code, err, expected)
    assert str(run) in err and not (tmp_path / "c.csv").exists()


@pytest.mark.parametrize("case,damage,expected", FOREIGN[:3], ids=[c[0] for c in FOREIGN[:3]])
def test_api_compare_runs_on_a_foreign_file_names_it(case, damage, expected, runs, tmp_path):
    from ppmodels.compare import compare_runs

    run = _copy(runs, tmp_path)
    damage(run)
    with pytest.raises(PPModelsError) as err:
        compare_runs([run])
    assert_api_error(err, expected)


# -- 1. compare's --out never replaces a run's or a sweep's files --------------------------------
def _sweep_root(tmp_path):
    root = tmp_path / "grid"
    root.mkdir()
    rundir.write_csv(root / "summary.csv", pd.DataFrame({"run": ["a"]}), owner="sweep")
    return root


def _users_file(tmp_path):
    (tmp_path / "mine.csv").write_text("my numbers\n")
    return tmp_path


CLOBBER = [("run-history", lambda runs, t: (_copy(runs, t), "history.png", "history.csv", "written by a training run")),
           ("run-report-figure", lambda runs, t: (_copy(runs, t), "samples.png", "samples.png", "written by a training run")),
           ("sweep-summary", lambda runs, t: (_sweep_root(t), "summary.png", "summary.csv", "written by ppmodels sweep")),
           ("users-file", lambda runs, t: (_users_file(t), "mine.png", "mine.csv", "written by none of"))]


@pytest.mark.parametrize("case,make", CLOBBER, ids=[c[0] for c in CLOBBER])
def test_compare_out_never_replaces_another_writers_file(case, make, runs, tmp_path, capsys):
    folder, figure, victim, expected = make(runs, tmp_path)
    before = _snapshot(folder)
    code, _, err = run_cli(["compare", runs / "vae", "--out", folder / figure], capsys)
    assert_cli_error(code, err, expected)
    assert (folder / victim).read_bytes() == before[victim]
    assert _snapshot(folder) == before


def test_compare_replaces_its_own_table_and_figure(runs, tmp_path, capsys):
    for _ in range(2):
        code, out, err = run_cli(["compare", runs / "vae", runs / "vae", "--out", tmp_path / "c.png"], capsys)
        assert code == 0, err
    table = pd.read_csv(tmp_path / "c.csv")
    history = pd.read_csv(runs / "vae" / "history.csv")
    assert len(table) == 2 and table["epoch"].tolist() == [history["epoch"].iloc[-1]] * 2
    assert json.loads((tmp_path / rundir.MANIFEST).read_text())["files"] == {"c.csv": "compare", "c.png": "compare"}


# -- 9. a checkpoint without a checksum is refused unless trusted ---------------------------------
def _unsummed(run, change=True):
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["checksum"]
    if change:
        key = next(iter(state["params"]))
        state["params"][key].view(-1)[0] += 1.0
    torch.save(state, run / "checkpoint.pt")
    return run


UNSUMMED = [("evaluate", lambda run: ["evaluate", run, "--num-samples", "2"]),
            ("sample", lambda run: ["sample", run, "--out", run.parent / "s.png"]),
            ("evaluate-diagnostics", lambda run: ["evaluate", run, "--diagnostics", "--num-samples", "60"]),
            ("resume", lambda run: ["train", "vae", "--resume", "--steps", "6", "--batch-size", "100", "--out", run,
                                    *SMALL]),
            ("compare", lambda run: ["compare", run, "--out", run.parent / "c.png"])]


@pytest.mark.parametrize("command,argv", UNSUMMED, ids=[c[0] for c in UNSUMMED])
def test_cli_a_checkpoint_without_its_checksum_is_refused(command, argv, runs, tmp_path, capsys):
    run = _unsummed(_copy(runs, tmp_path))
    before = _snapshot(run)
    code, _, err = run_cli(argv(run), capsys)
    assert_cli_error(code, err, "has no checksum")
    assert _snapshot(run) == before


def test_cli_trust_checkpoint_loads_it(runs, tmp_path, capsys):
    run = _unsummed(_copy(runs, tmp_path), change=False)
    code, out, err = run_cli(["evaluate", run, "--num-samples", "2", "--subset", "5", "--trust-checkpoint"], capsys)
    assert code == 0, err
    assert "test_nll" in json.loads(out)


def test_cli_resume_with_trust_checkpoint_continues_an_unsummed_run(runs, tmp_path, capsys):
    run = _unsummed(_copy(runs, tmp_path), change=False)
    code, _, err = run_cli(["train", "vae", "--resume", "--trust-checkpoint", "--steps", "6", "--batch-size", "100",
                            "--out", run, *SMALL], capsys)
    assert code == 0, err
    assert load_checkpoint(run)["step"] == 6  # resumed from step 4, and the new checkpoint has its checksum


def _claim_many(directory: str, prefix: str, n: int) -> None:
    for i in range(n):
        rundir.write_artifact(Path(directory) / f"{prefix}{i}.txt", lambda staged: Path(staged).write_text("x"),
                              owner="compare")


def test_commands_writing_into_one_folder_at_once_keep_every_manifest_entry(tmp_path):
    """Four processes record 25 files each in one folder at the same moment (two `compare`s
    into one --out): the manifest holds all 100 (without its lock, entries were lost)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_claim_many, args=(str(tmp_path), f"w{k}-", 25)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    files = json.loads((tmp_path / rundir.MANIFEST).read_text())["files"]
    assert len(files) == 100 and set(files.values()) == {"compare"}


def test_cli_variance_writes_through_the_writer_and_never_over_a_run(runs, tmp_path, capsys, monkeypatch):
    import ppmodels.analysis

    studies = []
    study = ppmodels.analysis.gradient_study
    monkeypatch.setattr(ppmodels.analysis, "gradient_study", lambda *a, **k: studies.append(1) or study(*a, **k))
    run = _copy(runs, tmp_path)
    (run / "study.csv").write_text("a user's own table\n")
    before = _snapshot(run)
    argv = ["variance", "--model", "linear-gaussian", "--objectives", "elbo", "--replicates", "5", "--out"]
    code, _, err = run_cli([*argv, run], capsys)
    assert_cli_error(code, err, "study.csv exists")
    assert _snapshot(run) == before and not studies  # refused before the study: nothing written
    out = tmp_path / "study"
    assert run_cli([*argv, out], capsys)[0] == 0
    assert run_cli([*argv, out], capsys)[0] == 0  # its own files: replaced
    assert json.loads((out / rundir.MANIFEST).read_text())["files"] == {"study.csv": "variance", "study.png": "variance"}


API_UNSUMMED = [("load-checkpoint", lambda run: load_checkpoint(run)),
                ("load-run", lambda run: load_run(run, "cpu")),
                ("resume-path", lambda run: fit(LinearGaussian(5, 2, seed=0), torch.zeros(10, 5), epochs=1,
                                                resume=run / "checkpoint.pt", device="cpu"))]


@pytest.mark.parametrize("case,call", API_UNSUMMED, ids=[c[0] for c in API_UNSUMMED])
def test_api_a_checkpoint_without_its_checksum_is_refused(case, call, runs, tmp_path):
    run = _unsummed(_copy(runs, tmp_path))
    with pytest.raises(PPModelsError) as err:
        call(run)
    assert_api_error(err, "has no checksum")
    assert load_checkpoint(run, trust=True)["params"]  # trusted: loaded as it is


# -- 6. sweeps ------------------------------------------------------------------------------------
TRICKY = ["sub/x.csv", "sub_x.csv", "sub%2Fx.csv", "sub x.csv", "sub\\x.csv", "..", ".", "ü", "u", "a=b", "a%3Db",
          "-1", "_1", "x" * 300, "x" * 299 + "y"]


def test_run_names_are_injective_and_safe():
    from ppmodels.sweep import run_name

    names = [run_name({"data": v, "seed": "0"}) for v in TRICKY]
    assert len(set(names)) == len(TRICKY)  # different values never share a directory
    assert all("/" not in n and "\\" not in n and len(n) <= 200 and n not in (".", "..") for n in names)
    assert run_name({"objective": "iwae", "K": "50"}) == "objective=iwae,K=50"  # plain values read as before


SWEEP_CLI = [("empty-seed-list", lambda t: ["sweep", "train", "gmm", "--seed", ",", "--out", t / "s"], "gives no value"),
             ("empty-attached-list", lambda t: ["sweep", "train", "gmm", "--seed=,", "--out", t / "s"], "gives no value"),
             ("million-runs", lambda t: ["sweep", "train", "gmm", "--seed", ",".join(map(str, range(1000))),
                                         "--restarts", ",".join(map(str, range(1, 1001))), "--out", t / "s"],
              "the grid has 1000000 runs, more than 10000"),
             ("over-a-lowered-cap", lambda t: ["sweep", "train", "gmm", "--seed", "0,1,2", "--max-runs", "2",
                                               "--out", t / "s"], "the grid has 3 runs, more than 2"),
             ("cap-zero", lambda t: ["sweep", "train", "gmm", "--seed", "0,1", "--max-runs", "0", "--out", t / "s"],
              "max_runs must be an integer >= 1"),
             ("foreign-run-dir", lambda t: _foreign_run_dir(t), "holds files this sweep did not make"),
             ("damaged-record", lambda t: _damaged_record(t), "sweep.json is damaged"),
             ("foreign-summary", lambda t: _foreign_summary(t), "summary.csv exists and was written by none of")]


def _foreign_run_dir(t):
    (t / "s" / "seed=0").mkdir(parents=True)
    (t / "s" / "seed=0" / "report.json").write_text("{\"log_likelihood\": 1.0}")  # another run's numbers
    return ["sweep", "train", "gmm", "--seed", "0,1", "--out", t / "s"]


def _damaged_record(t):
    (t / "s" / "seed=0").mkdir(parents=True)
    (t / "s" / "seed=0" / "sweep.json").write_text("{\"argv\": [")
    return ["sweep", "train", "gmm", "--seed", "0,1", "--out", t / "s"]


def _foreign_summary(t):
    (t / "s").mkdir()
    (t / "s" / "summary.csv").write_text("my table\n")
    return ["sweep", "train", "gmm", "--seed", "0,1", "--out", t / "s"]


@pytest.mark.parametrize("case,argv,expected", SWEEP_CLI, ids=[c[0] for c in SWEEP_CLI])
def test_cli_sweep_refuses_in_one_line_before_any_run(case, argv, expected, tmp_path, capsys):
    args = argv(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    t0 = time.perf_counter()
    code, _, err = run_cli(args, capsys)
    assert_cli_error(code, err, expected)
    assert time.perf_counter() - t0 < 5  # the million-run grid: refused before its commands are parsed
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.rglob("checkpoint.pt"))


RESUME_FLAGS = [("gmm-map", ["train", "gmm"], ["--overwrite"]), ("gmm-bayes", ["train", "gmm", "--guide", "bayes"], ["--resume"]),
                ("vae", ["train", "vae", "--epochs", "1"], ["--resume"]), ("variance", ["variance", "--model", "vae"], [])]


@pytest.mark.parametrize("case,argv,flag", RESUME_FLAGS, ids=[c[0] for c in RESUME_FLAGS])
def test_a_retry_knows_what_each_family_can_resume(case, argv, flag, tmp_path):
    from ppmodels.sweep import resume_flag

    assert resume_flag(argv, tmp_path) == []  # nothing started: a plain run
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert resume_flag(argv, tmp_path) == flag


def _in_process(monkeypatch):
    """A sweep's runs as ``main(argv)`` in this process (its own processes: the SIGTERM test)."""
    from ppmodels import sweep as sweep_module

    def call(self, cmd, env):
        assert cmd[1:3] == ["-m", "ppmodels"]
        return main(cmd[3:]), ""

    monkeypatch.setattr(sweep_module._Children, "call", call)


def test_a_sweep_of_two_data_files_with_one_sanitized_name_and_a_map_gmm_killed_before_its_report(tmp_path, capsys,
                                                                                                   monkeypatch):
    """``--data sub/x.csv,sub_x.csv``: two run directories, each with its own file's numbers; a MAP
    gmm run killed between its checkpoint and its report is re-run by the retry (was: --resume
    refused every time)."""
    _in_process(monkeypatch)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.csv").write_text("a\n0\n1\n10\n")
    (tmp_path / "sub_x.csv").write_text("a\n0\n1\n10\n11\n12\n")
    out = tmp_path / "grid"
    command = ["train", "gmm", "--data", f"{tmp_path}/sub/x.csv,{tmp_path}/sub_x.csv", "--restarts", "2", "--steps", "20"]
    from ppmodels.sweep import expand, run_name

    (settings, argv), _ = expand(command)
    killed = out / run_name(settings)
    killed.mkdir(parents=True)
    rundir.write_json(killed / "sweep.json", {"argv": argv}, owner="sweep")
    assert main([*argv, "--out", str(killed)]) == 0
    (killed / "report.json").unlink()  # as if killed after the checkpoint, before the report
    code, _, err = run_cli(["sweep", *command, "--out", out, "--workers", "1", "--retries", "0"], capsys)
    assert code == 0, err
    table = pd.read_csv(out / "summary.csv")
    assert sorted(table["points"]) == [3, 5] and list(table["status"]) == ["done", "done"]
    assert table["run"].nunique() == 2


def test_sigterm_to_a_workers_sweep_reaches_its_runs(tmp_path):
    """The sweep (here, in this process's main thread) is sent SIGTERM while its run (a process of
    its own) trains: the run ends too (its lock is free), and the sweep stops without retrying."""
    import threading

    from ppmodels.sweep import sweep

    out = tmp_path / "grid"
    lock, seen = out / "seed=0" / ".lock", {}

    def signal_when_training():
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().startswith("pid")) and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["pid"] = int(lock.read_text().split()[1])
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda *a: None)  # a late signal does nothing here
    try:
        thread = threading.Thread(target=signal_when_training, daemon=True)
        thread.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            sweep(["train", "gmm", "--guide", "bayes", "--steps", "1000000", "--seed", "0,1"], out, workers=1)
        thread.join(5)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert time.monotonic() - t0 < 60 and not (out / "seed=1" / ".lock").exists()  # no other run started
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(seen["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the run (pid {seen['pid']}) still trains after the sweep was stopped")
    with rundir.RunLock(out / "seed=0"):  # free again
        pass


# -- 1. a kill at each write point of each artefact, then a resume that completes -----------------
class Killed(BaseException):
    """A simulated kill: nothing catches it, and after it nothing more is written."""


POINTS = ("start", "claimed", "partial", "staged", "replaced")


def _killer(monkeypatch, name, point, nth=1):
    """Kill at the ``nth`` write of the file ``name`` at ``point`` (``partial``: the staged file
    half written); every write after it is refused too."""
    seen = {"n": 0, "dead": False}

    def fault(at, path, staged):
        if seen["dead"]:
            raise Killed("written after the kill")
        if path.name == name and at == ("staged" if point == "partial" else point):
            seen["n"] += 1
            if seen["n"] == nth:
                if point == "partial":
                    staged.write_bytes(staged.read_bytes()[: staged.stat().st_size // 2])
                seen["dead"] = True
                raise Killed(f"killed at {point} of {name}")

    monkeypatch.setattr(rundir, "_fault", fault)
    return seen


def _lg():
    m = LinearGaussian(5, 2, seed=0)
    return m, m.sample_data(60, seed=1)


def _fit_run(out, **kw):
    from ppmodels.callbacks import CollapseDiagnostics

    m, x = _lg()
    return fit(m, x, epochs=3, batch_size=20, out=out, device="cpu", keep_checkpoints=[2],
               callbacks=[CollapseDiagnostics(x[:20])], **kw)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted fit run the killed ones must end up equal to."""
    out = tmp_path_factory.mktemp("whole") / "run"
    _fit_run(out)
    return out


def _assert_complete(out, whole):
    """The run in ``out`` is the uninterrupted one: the same checkpoint parameters, history and
    KL table (all epochs, not only the resumed ones); no staged file left; the manifest records
    every file there."""
    a, b = load_checkpoint(whole), load_checkpoint(out)
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])
    assert load_checkpoint(out / "checkpoint-epoch2.pt")["epoch"] == 2 and load_checkpoint(out / rundir.PREVIOUS)["epoch"] == 2
    for table in ("history.csv", "kl_units.csv"):
        left, right = pd.read_csv(whole / table), pd.read_csv(out / table)
        assert list(right["epoch"]) == [1, 2, 3], table
        assert left.drop(columns=["seconds"], errors="ignore").equals(right.drop(columns=["seconds"], errors="ignore"))
    files = json.loads((out / rundir.MANIFEST).read_text())["files"]
    present = {p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert present <= set(files) and not [n for n in present if ".tmp" in n], present


def _whole_or_absent(path: Path) -> bool:
    """``path`` is absent or a whole file of its kind (a checkpoint that verifies, a CSV table
    ending in a newline with epochs 1, 2, ..., a PNG ending in its IEND chunk, JSON that parses)."""
    if not path.exists():
        return True
    if path.suffix == ".pt":
        return bool(load_checkpoint(path))
    data = path.read_bytes()
    if path.suffix == ".png":
        return data.endswith(b"IEND\xaeB`\x82")
    if path.suffix == ".json":
        return isinstance(json.loads(data), dict)
    epochs = pd.read_csv(path)["epoch"].tolist()
    return data.endswith(b"\n") and epochs == list(range(1, len(epochs) + 1))


FIT_ARTEFACTS = [("checkpoint.pt", 2), ("checkpoint.prev.pt", 1), ("history.csv", 2), ("checkpoint-epoch2.pt", 1),
                 ("kl_units.csv", 1), ("kl_units.png", 1)]
FIT_KILLS = [(name, nth, point) for name, nth in FIT_ARTEFACTS for point in POINTS]


@pytest.mark.parametrize("name,nth,point", FIT_KILLS, ids=[f"{n}-{p}" for n, _, p in FIT_KILLS])
def test_fit_killed_at_a_write_point_resumes_to_the_whole_run(name, nth, point, whole, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _killer(monkeypatch, name, point, nth)
    with pytest.raises(Killed):
        _fit_run(out)
    monkeypatch.setattr(rundir, "_fault", lambda *a: None)
    assert _whole_or_absent(out / name)
    _fit_run(out, resume=(out / "checkpoint.pt").exists())  # what a retry does
    _assert_complete(out, whole)


TRAIN = ["train", "vae", "--steps", "4", "--batch-size", "100", *SMALL]
CLI_KILLS = [("report.json", "claimed"), ("report.json", "partial"), ("samples.png", "partial")]  # the fit artefacts: every point


def _same_report(a: Path, b: Path) -> None:
    left, right = rundir.read_report(a), rundir.read_report(b)
    drop = lambda r: {k: v for k, v in r.items() if "seconds" not in k}  # noqa: E731
    assert drop(left) == drop(right)


@pytest.mark.parametrize("name,point", CLI_KILLS, ids=[f"{n}-{p}" for n, p in CLI_KILLS])
def test_cli_train_killed_at_a_report_or_figure_write_resumes_to_the_whole_run(name, point, runs, tmp_path, monkeypatch,
                                                                               capsys):
    out = tmp_path / "run"
    _killer(monkeypatch, name, point)
    with pytest.raises(Killed):
        main([*TRAIN, "--out", str(out)])
    monkeypatch.setattr(rundir, "_fault", lambda *a: None)
    assert _whole_or_absent(out / name) and load_checkpoint(out)["epoch"] == 2
    code, _, err = run_cli([*TRAIN, "--out", out, "--resume"], capsys)
    assert code == 0, err
    _same_report(runs / "vae", out)
    assert all(_whole_or_absent(out / n) and (out / n).exists() for n in ("samples.png", "reconstructions.png"))


@pytest.mark.parametrize("point", ["start", "replaced"])
def test_a_killed_overwrite_never_leaves_the_replaced_runs_report_beside_its_checkpoint(point, runs, tmp_path,
                                                                                         monkeypatch, capsys):
    run = _copy(runs, tmp_path)
    (run / "notes.txt").write_text("mine")  # not the run's: kept
    old = load_checkpoint(run)["params"]
    _killer(monkeypatch, "checkpoint.pt", point)
    with pytest.raises(Killed):
        main([*TRAIN, "--seed", "5", "--overwrite", "--out", str(run)])
    monkeypatch.setattr(rundir, "_fault", lambda *a: None)
    assert not (run / "report.json").exists() and not (run / "history.csv").exists()
    assert not (run / rundir.PREVIOUS).exists() and (run / "notes.txt").read_text() == "mine"
    new = not all(torch.equal(old[k], v) for k, v in load_checkpoint(run)["params"].items())
    assert new == (point == "replaced")
    code, _, err = run_cli(["compare", run, "--out", tmp_path / "c.png"], capsys)  # the old report is not shown
    assert_cli_error(code, err, "has no history.csv")
    code, _, err = run_cli([*TRAIN, "--seed", "5", "--out", run, "--resume" if new else "--overwrite"], capsys)
    assert code == 0, err
    assert rundir.read_report(run)["test_elbo"] != rundir.read_report(runs / "vae")["test_elbo"]


GMM = ["train", "gmm", "--restarts", "2", "--steps", "20"]


@pytest.mark.parametrize("name", ["checkpoint.pt", "responsibilities.csv", "report.json"])
def test_a_map_gmm_killed_at_any_artefact_is_run_again_by_a_retry(name, tmp_path, monkeypatch, capsys):
    from ppmodels.sweep import resume_flag

    out = tmp_path / "gmm"
    assert main([*GMM, "--out", str(tmp_path / "whole")]) == 0
    _killer(monkeypatch, name, "claimed")
    with pytest.raises(Killed):
        main([*GMM, "--out", str(out)])
    monkeypatch.setattr(rundir, "_fault", lambda *a: None)
    code, _, err = run_cli([*GMM, "--out", out, *resume_flag(GMM, out)], capsys)
    assert code == 0, err
    drop = lambda r: {k: v for k, v in r.items() if "seconds" not in k}  # noqa: E731
    assert drop(rundir.read_report(out)) == drop(rundir.read_report(tmp_path / "whole"))


# -- 7. a peer's death under data-parallel training: one line, non-zero, no hang ------------------
def test_when_rank_0_is_killed_the_other_rank_says_so_in_one_line(runs, tmp_path):
    """Two ranks of ``ppmodels train`` (the environment torchrun sets, gloo on the CPU); rank 0 is
    killed once it has written its first checkpoint (both ranks are then training): rank 1
    stops within seconds with one line naming the lost peer, exit code 2."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    ranks = []
    for rank in (0, 1):
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        ranks.append(subprocess.Popen([sys.executable, "-m", "ppmodels", "train", "vae", "--steps", "100000",
                                       "--batch-size", "20", "--train-subset", "40", "--hidden", "8", "--z-dim", "2",
                                       "--quiet", "--device", "cpu", "--no-jit", "--out", str(out)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 90
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline and ranks[0].poll() is None:
            time.sleep(0.05)
        assert (out / "checkpoint.pt").exists(), ranks[0].communicate(timeout=5)[1][-2000:]
        ranks[0].send_signal(signal.SIGKILL)
        _, err = ranks[1].communicate(timeout=60)
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert ranks[1].returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppmodels: error: data-parallel rank 1 of 2: a peer process died"), err
    assert load_checkpoint(out)["epoch"] >= 1  # rank 0's last checkpoint is whole


@pytest.mark.parametrize("where,expected", [("file", "is a file"), ("under", "is under the file")])
def test_cli_variance_out_on_a_file_is_one_line_before_the_study(where, expected, tmp_path, capsys):
    (tmp_path / "f").write_text("a user's file\n")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "lab"
    code, _, err = run_cli(["variance", "--model", "linear-gaussian", "--objectives", "elbo", "--replicates", "5",
                            "--out", out], capsys)
    assert_cli_error(code, err, expected)
    assert (tmp_path / "f").read_text() == "a user's file\n"
