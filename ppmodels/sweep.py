r"""Sweeps: one command, comma-separated values expanded into the Cartesian product of runs.

``ppmodels sweep train vae --objective elbo,iwae -K 1,5,50 --seed 0,1,2 --out runs/table1``
is 18 runs of ``ppmodels train``, each in its own process writing ``runs/table1/<name>/``
(``name`` from the swept values, e.g. ``objective=iwae,K=5,seed=1``), then
``runs/table1/summary.csv``: one row per run, its swept settings and its final metrics
(``report.json`` for ``train``; the rows of ``study.csv`` for ``variance``).

Runs are tasks on Ray (``ray.init()`` locally, or ``address=`` an existing cluster; one CPU, or
``gpus_per_run`` GPUs, per run; ``max_concurrent`` in flight) when Ray is installed and
``workers`` is not given, else ``workers`` local processes. A run that exits with an error is
retried (``retries``) and continues from its checkpoint; a run already complete is skipped, so
re-running a sweep resumes it. Each run gets ``threads`` torch threads (``OMP_NUM_THREADS``),
and with the same thread count its numbers are those of the same command run alone.

Run directories are named injectively (:func:`run_name`: different values never share one).
The grid's size is known before any command is parsed and capped (``max_runs``, default
:data:`MAX_RUNS`; ``--max-runs`` raises it); each value is parsed once, not each run. A run
directory that holds a run made otherwise (no ``sweep.json``, or another command's) is refused.
A retry continues a run whose family can resume it (``--resume``) and starts again one whose
family cannot (``--overwrite``: a MAP mixture killed before its report). SIGTERM, SIGINT or
SIGHUP to a sweep on local processes reaches its runs (each in its own session), and nothing
is retried after it.

Options that hold a list in a single run (``--hidden 200,200``; variance's ``--objectives``
and ``--num-particles``) are not expanded: the command's parser says which they are
(:func:`ppmodels.argtypes.is_list_valued`). Ray is imported only when a sweep runs on it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .argtypes import is_list_valued
from .parser import build_parser
from .rundir import check_writable, write_csv, write_json
from .utils import PPModelsError

__all__ = ["expand", "sweep", "list_valued_options", "run_name", "MAX_RUNS"]

DONE = {"train": "report.json", "variance": "study.csv"}
#: the most runs a sweep makes unless told otherwise (``max_runs``, ``--max-runs``)
MAX_RUNS = 10_000


def list_valued_options(parser: argparse.ArgumentParser, command: Sequence[str]) -> set[str]:
    """The options of ``command``'s sub-command (``train vae``: that family's parser) that hold a
    list in one run, as :func:`ppmodels.argtypes.is_list_valued` says."""
    for token in command:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or token not in sub.choices:
            break
        parser = sub.choices[token]
    return {option for action in parser._actions if is_list_valued(action) for option in action.option_strings}


def expand(command: Sequence[str], parser: argparse.ArgumentParser | None = None,
           max_runs: int = MAX_RUNS) -> list[tuple[dict[str, str], list[str]]]:
    """The runs of ``command`` (without ``--out``): ``(swept values by option, argv)`` for each
    element of the Cartesian product of its comma-separated option values, but for the options
    ``parser`` (default: the ``ppmodels`` command's) says hold a list in one run. More than
    ``max_runs`` runs is an error, raised before any is listed."""
    tokens: list[str] = []
    attached: set[int] = set()  # values given as --opt=value: they stay attached
    for token in command:
        if token.startswith("--") and "=" in token:
            tokens += token.split("=", 1)
            attached.add(len(tokens) - 1)
        else:
            tokens.append(token)
    if not tokens or tokens[0] not in DONE:
        raise PPModelsError(f"sweep: expected a command, train or variance, got {tokens[:1] or 'nothing'}")
    keep = list_valued_options(parser or build_parser(), tokens)
    slots: list[tuple[int, str, list[str]]] = []
    for i, token in enumerate(tokens):
        if i and tokens[i - 1].startswith("-") and tokens[i - 1] not in keep and "," in token \
                and (i in attached or _is_value(token)):
            values = [v for v in token.split(",") if v != ""]
            if not values:
                raise PPModelsError(f"sweep: {tokens[i - 1]} {token!r} gives no value; give values between the commas")
            if len(values) != len(set(values)):
                raise PPModelsError(f"sweep: {tokens[i - 1]} {token} repeats a value")
            slots.append((i, tokens[i - 1].lstrip("-"), values))
    size = 1
    for _, _, values in slots:
        size *= len(values)
    if size > max_runs:
        raise PPModelsError(f"sweep: the grid has {size} runs, more than {max_runs}; sweep fewer values, or raise "
                            "the cap with --max-runs N (max_runs=N)")
    runs = []
    for combo in itertools.product(*(values for _, _, values in slots)):
        argv = list(tokens)
        for (i, _, _), value in zip(slots, combo):
            argv[i] = value
        # a negative value joins its option (--alpha=-0.5): argparse may take a lone one for an option
        joined = attached | {i for i, _, _ in slots if argv[i].startswith("-")}
        runs.append(({key: value for (_, key, _), value in zip(slots, combo)}, _joined(argv, joined)))
    return runs


def _is_value(token: str) -> bool:
    """Whether ``token``, after an option, is its value: not an option, or numbers (-0.5,0.5)."""
    if not token.startswith("-"):
        return True
    try:
        [float(v) for v in token.split(",") if v]
    except ValueError:
        return False
    return True


def _joined(argv: list[str], values: set[int]) -> list[str]:
    """``argv`` with each token at ``values`` attached to the option before it (``--opt=value``)."""
    out: list[str] = []
    for i, token in enumerate(argv):
        if i in values:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def run_name(settings: dict[str, str]) -> str:
    """A directory name from the swept values (``run`` when nothing is swept): ``key=value``
    pairs joined by commas, each character of a value outside ``A-Za-z0-9._-`` written as
    ``%XX`` (its UTF-8 bytes), so that different values never share a directory; a name longer
    than 200 characters keeps its first 180 and a digest of the whole."""
    import hashlib
    from urllib.parse import quote

    name = ",".join(f"{k}={quote(v, safe='')}" for k, v in settings.items()) or "run"
    if len(name) > 200:
        name = f"{name[:180]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return name


class _Children:
    """The processes of a sweep's runs, so that a signal to the sweep reaches them: after
    :meth:`stop`, each running one has the signal and no new one starts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen] = set()
        self.stopped: int | None = None

    def call(self, cmd: list[str], env: dict[str, str]) -> tuple[int | None, str]:
        """Run ``cmd``, in its own session; its exit code (None if stopped first) and stderr."""
        with self.lock:
            if self.stopped is not None:
                return None, "stopped"
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            self.running.add(proc)
        try:
            _, err = proc.communicate()
        finally:
            with self.lock:
                self.running.discard(proc)
        return proc.returncode, err

    def stop(self, signum: int) -> None:
        with self.lock:
            self.stopped = signum
            for proc in self.running:
                try:
                    proc.send_signal(signum)
                except ProcessLookupError:
                    pass


_CHILDREN = _Children()
#: the signals a sweep passes on to its runs
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Forwarding:
    """While a sweep on local processes runs (in the main thread): a signal of :data:`FORWARDED`
    goes to every run, then the sweep stops (``KeyboardInterrupt``: the CLI says "interrupted")."""

    def __init__(self, children: _Children) -> None:
        self.children, self.previous = children, {}

    def _handle(self, signum, frame) -> None:
        self.children.stop(signum)
        raise KeyboardInterrupt(f"sweep stopped by signal {signum}")

    def __enter__(self) -> "_Forwarding":
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in FORWARDED}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def resume_flag(argv: list[str], path: Path) -> list[str]:
    """How a retry of the run ``argv`` continues what its run directory ``path`` holds: nothing
    when nothing was started, ``--resume`` when its family can resume it (see
    :meth:`ppmodels.families.base.Family.resumable`), else ``--overwrite`` (the directory holds
    this sweep's own run of the same command, which ``sweep.json`` records)."""
    started = (path / "checkpoint.pt").exists() or any(path.glob("*/checkpoint.pt"))  # or an earlier stage
    if not started or argv[0] != "train":
        return []
    from . import families

    args = build_parser().parse_args([*argv, "--out", str(path)])
    return ["--resume"] if families.FAMILIES[args.model].resumable(args) else ["--overwrite"]


def run_one(argv: list[str], out: str, done: str, threads: int, retries: int,
            children: _Children | None = None) -> dict[str, Any]:
    """One run as ``python -m ppmodels ARGV --out OUT``: skipped when ``OUT/done`` exists,
    continued (:func:`resume_flag`) when something was started, retried ``retries`` times on
    failure, never after the sweep was stopped."""
    children = children or _CHILDREN
    path = Path(out)
    if (path / done).exists():
        return {"status": "skipped", "attempts": 0, "run_seconds": 0.0}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # a run is one process, whatever launched the sweep
    t0, error, attempt = time.perf_counter(), "", 0
    for attempt in range(1, retries + 2):
        cmd = [sys.executable, "-m", "ppmodels", *argv, "--out", str(path), *resume_flag(argv, path)]
        code, stderr = children.call(cmd, env)
        if code == 0 and (path / done).exists():
            return {"status": "done", "attempts": attempt, "run_seconds": time.perf_counter() - t0}
        error = (stderr.strip().splitlines() or ["exit code %s" % code])[-1]
        if code == 2 or children.stopped is not None:  # the command's own one-line error, or the sweep stopped
            break
    return {"status": "failed", "attempts": attempt, "run_seconds": time.perf_counter() - t0, "error": error}


def sweep(
    command: Sequence[str],
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    gpus_per_run: float = 0,
    threads: int = 1,
    retries: int = 2,
    max_runs: int = MAX_RUNS,
) -> pd.DataFrame:
    """Run the sweep of ``command`` (a ``ppmodels`` command line without ``--out``, e.g.
    ``["train", "vae", "--objective", "elbo,iwae", "--seed", "0,1"]``) into ``out``; return the
    summary (also written to ``out/summary.csv``). See the module docstring."""
    for name, value, least in (("workers", workers, 1), ("max_concurrent", max_concurrent, 1), ("threads", threads, 1),
                               ("retries", retries, 0), ("max_runs", max_runs, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise PPModelsError(f"sweep: {name} must be an integer >= {least}, got {value!r}")
    if not (isinstance(gpus_per_run, (int, float)) and gpus_per_run >= 0):
        raise PPModelsError(f"sweep: gpus_per_run must be a number >= 0, got {gpus_per_run!r}")
    parser = build_parser()
    runs = expand(command, parser, max_runs)
    _check(runs, parser)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    check_writable(root / "summary.csv", owner="sweep")  # before any run, not after them all
    done = DONE[runs[0][1][0]]
    jobs = [(settings, argv, str(root / run_name(settings))) for settings, argv in runs]
    for _, argv, path in jobs:  # a run directory holds one command's run: a changed command is not "done"
        recorded = _recorded_argv(Path(path))
        if recorded is not None and recorded != argv:
            raise PPModelsError(f"sweep: {path} holds a run of another command (`ppmodels {' '.join(map(str, recorded))}`); "
                                "use another --out")
        if recorded is None and Path(path).is_dir() and any(p.name != ".manifest.json" for p in Path(path).iterdir()):
            raise PPModelsError(f"sweep: {path} holds files this sweep did not make (no sweep.json); move them away or "
                                "use another --out")
    for _, argv, path in jobs:
        Path(path).mkdir(parents=True, exist_ok=True)
        if _recorded_argv(Path(path)) is None:
            write_json(Path(path) / "sweep.json", {"argv": argv}, owner="sweep")
    use_ray = workers is None and _has_ray()
    if use_ray:
        results = _on_ray(jobs, done, threads, retries, address, max_concurrent, gpus_per_run)
    else:
        children = _Children()
        with _Forwarding(children), ThreadPoolExecutor(max_workers=workers or 1) as pool:  # a thread waits on each run
            results = list(pool.map(lambda job: run_one(job[1], job[2], done, threads, retries, children), jobs))
    table = summarize(jobs, results, done)
    table.attrs["engine"] = "ray" if use_ray else f"{workers or 1} local processes"
    write_csv(root / "summary.csv", table, owner="sweep")
    return table


def _recorded_argv(path: Path) -> list[str] | None:
    """The command that ``path/sweep.json`` records (None if there is none); one-line errors."""
    record = path / "sweep.json"
    if not record.exists():
        return None
    try:
        argv = json.loads(record.read_text())["argv"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise PPModelsError(f"sweep: {record} is damaged (not the record a sweep writes); remove the run directory "
                            "or use another --out") from None
    if not isinstance(argv, list):
        raise PPModelsError(f"sweep: {record} is damaged (not the record a sweep writes); remove the run directory "
                            "or use another --out")
    return argv


def _check(runs: list[tuple[dict[str, str], list[str]]], parser: argparse.ArgumentParser) -> None:
    """Every run's command line checked before any runs: a bad value is one error now. The
    parser judges each token alone, so the first run and, for each swept option, each of its
    other values in the first run's line are parsed: every value once, not every run."""
    import contextlib
    import io

    first_settings, first = runs[0]
    lines = [first]
    for key, value in first_settings.items():
        seen = {value}
        for settings, argv in runs:
            if settings[key] not in seen and all(settings[k] == first_settings[k] for k in first_settings if k != key):
                seen.add(settings[key])
                lines.append(argv)
    for argv in lines:
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):
                parser.parse_args([*argv, "--out", "_sweep_check"])
        except SystemExit:
            why = said.getvalue().strip().splitlines()[-1:] or ["invalid"]
            why = why[0].removeprefix("ppmodels: error: ").split(" (see `")[0]
            raise PPModelsError(f"sweep: run `ppmodels {' '.join(argv)}`: {why}") from None


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _on_ray(jobs, done, threads, retries, address, max_concurrent, gpus_per_run) -> list[dict[str, Any]]:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_run, max_retries=retries)(run_one)
    pending: dict[Any, int] = {}
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    queue = list(enumerate(jobs))
    while queue or pending:
        while queue and (max_concurrent is None or len(pending) < max_concurrent):
            i, (_, argv, path) = queue.pop(0)
            pending[task.remote(argv, path, done, threads, retries)] = i
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            results[pending.pop(ref)] = ray.get(ref)
    return results  # type: ignore[return-value]


def summarize(jobs, results, done: str) -> pd.DataFrame:
    """One row per run (per study row for ``variance``): swept settings, status, final metrics."""
    rows = []
    for (settings, argv, path), result in zip(jobs, results):
        base = {"run": Path(path).name, **settings, **result}
        target = Path(path) / done
        if done == "report.json" and target.exists():
            from .rundir import read_report

            rows.append({**base, **read_report(path)})
        elif done == "study.csv" and target.exists():
            rows.extend({**base, **row} for row in pd.read_csv(target).to_dict("records"))
        else:
            rows.append(base)
    return pd.DataFrame(rows)
