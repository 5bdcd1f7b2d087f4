"""Run directories that lose nothing: a guard with a lock, and a checkpoint writer that verifies.

- :func:`open_run` checks a run directory before any work starts: a usable path, writable, not
  holding another run unless resumed or overwritten on purpose, and not in use by another
  training (an exclusive ``flock`` on ``RUN/.lock``, released when the process ends, even by
  ``kill -9``).
- :func:`save_checkpoint` writes ``checkpoint.pt`` only after checking that every tensor in it
  is finite; it writes a temporary file, reads it back, checks its checksum, keeps the previous
  checkpoint as ``checkpoint.prev.pt`` and then renames. A crash at any point leaves a
  complete checkpoint on disk. Checkpoints of chosen epochs are kept as copies,
  ``checkpoint-epoch{N}.pt`` (:func:`kept_checkpoint`); a run replacing the directory's run
  removes them (:func:`remove_kept`).
- :func:`load_checkpoint` reads with ``weights_only=True`` and verifies the checksum: a
  truncated, corrupted or foreign file is one clear error, never a silent load.
- :func:`read_report` and :func:`write_report`: a finished run's ``report.json``, read with
  one-line errors and replaced atomically (a temporary file and one rename), so that a command
  adding its own key (``evaluate --diagnostics``) never leaves half a report.
- :func:`write_artifact` is the one writer of every file a command leaves behind (checkpoints,
  history, reports, tables, figures, a sweep's summary): it refuses a file that exists and that
  the directory's manifest (``.manifest.json``: file name -> the writer, ``run``, ``compare``,
  ``sweep``...) does not record as the same writer's, records the file before writing it (the
  manifest read and rewritten under an ``flock`` on ``.manifest.lock``), writes
  a temporary file beside it (synced) and renames it into place. A kill at any point leaves the
  old file or the new one, never half of one, and never a file of another writer replaced.
  :func:`replace_run` removes the files of the run a replacing run (``--overwrite``) replaces,
  just before its first checkpoint, so that they never pass for the new run's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from .utils import PPModelsError

__all__ = ["open_run", "RunLock", "save_checkpoint", "load_checkpoint", "checksum", "CHECKPOINT", "PREVIOUS",
           "NonFiniteState", "kept_checkpoint", "remove_kept", "atomic_copy", "run_checkpoint", "read_report",
           "write_report", "strict_json", "REPORT", "write_artifact", "replace_run", "MANIFEST", "staged_name", "check_writable",
           "write_json", "write_csv", "write_figure", "check_folder"]

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
#: files whose presence means a directory holds a run
REPORT = "report.json"
RUN_FILES = (CHECKPOINT, "history.csv", REPORT)


#: a kept checkpoint's file name (the epoch, then ".tmp.pt" for a partial copy)
KEPT = re.compile(r"checkpoint-epoch([0-9]+)\.pt(\.tmp\.pt)?")
#: the record of which writer wrote each file of a directory (see :func:`write_artifact`)
MANIFEST = ".manifest.json"
#: the lock a command holds while it reads and rewrites a directory's manifest
MANIFEST_LOCK = ".manifest.lock"
#: the writers of :func:`write_artifact`, as its errors name them
WRITERS = {"run": "a training run", "compare": "ppmodels compare", "sweep": "ppmodels sweep",
           "sample": "ppmodels sample", "variance": "ppmodels variance"}


def kept_checkpoint(epoch: int) -> str:
    """The file name of the checkpoint kept after ``epoch`` (1-based): ``checkpoint-epoch{N}.pt``."""
    return f"checkpoint-epoch{epoch}.pt"


def run_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file that ``path`` names: a run directory's ``checkpoint.pt``, or the file
    itself (e.g. a kept ``checkpoint-epoch{N}.pt``); a one-line error if there is none."""
    path = Path(path)
    if path.is_file():
        return path
    if not (path / CHECKPOINT).exists():
        why = "no such path" if not path.exists() else f"no {CHECKPOINT}"
        raise PPModelsError(f"{path}: not a run directory ({why}); give one of `ppmodels train` or one of its "
                            "checkpoint files")
    return path / CHECKPOINT


def remove_kept(directory: Path) -> None:
    """Remove the kept checkpoints (``checkpoint-epoch{N}.pt`` and their partial copies) of the
    run in ``directory``: a run replacing it calls this on writing its first checkpoint."""
    for path in Path(directory).iterdir():
        if KEPT.fullmatch(path.name) and path.is_file():
            try:
                path.unlink()
            except OSError as e:
                raise PPModelsError(f"cannot remove {path}, a kept checkpoint of the replaced run ({e.strerror}); "
                                    "remove it by hand and resume") from None


def atomic_copy(source: Path, target: Path, owner: str = "run") -> None:
    """Copy ``source`` to ``target`` by :func:`write_artifact`: ``target`` is either absent, the
    old file, or the whole copy."""
    write_artifact(target, lambda staged: shutil.copyfile(source, staged), owner=owner)


def staged_name(path: Path) -> Path:
    """The temporary file beside ``path`` that :func:`write_artifact` writes first (its suffix
    kept, so that writers choosing a format by the suffix write the right one)."""
    return path.with_name(f"{path.name}.tmp{path.suffix}")


def _fault(point: str, path: Path, staged: Path) -> None:
    """A no-op, called at each write point of :func:`write_artifact` (``start``, ``claimed``,
    ``staged``, ``replaced``); tests replace it to simulate a kill there."""


def _read_manifest(directory: Path) -> dict[str, str] | None:
    """The manifest of ``directory`` (file name -> writer), or None if it has none."""
    import json

    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text()).get("files", {})
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise PPModelsError(f"{path} is damaged (not the manifest ppmodels writes); remove it and run again") from None
    if not isinstance(files, dict):
        raise PPModelsError(f"{path} is damaged (not the manifest ppmodels writes); remove it and run again")
    return files


def _write_manifest(directory: Path, files: dict[str, str]) -> None:
    import json

    path = directory / MANIFEST
    staged = staged_name(path)
    with open(staged, "w") as f:
        f.write(json.dumps({"files": dict(sorted(files.items()))}, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(staged, path)


@contextlib.contextmanager
def _manifest_held(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s manifest for one read and rewrite: an exclusive ``flock`` on
    ``.manifest.lock`` beside it (released on exit, or when the process dies), so that two
    commands writing into one folder at the same moment never drop each other's entries. Where
    there is no ``fcntl`` (Windows), nothing is held."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(directory / MANIFEST_LOCK, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _claim(path: Path, owner: str, record: bool = True) -> None:
    """Check that ``owner`` may write ``path`` (absent, or recorded as ``owner``'s) and record it
    (``record=False``: only check; a command writing several files checks them all first)."""
    with _manifest_held(path.parent) if record else contextlib.nullcontext():
        _claim_unlocked(path, owner, record)


def _claim_unlocked(path: Path, owner: str, record: bool) -> None:
    directory, name = path.parent, path.name
    files = _read_manifest(directory)
    if files is None:
        files = {}
        if (directory / CHECKPOINT).is_file():  # a run written before manifests: its files are its own
            files = {p.name: "run" for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")}
    recorded = files.get(name)
    if path.exists() and recorded != owner:
        if path.is_dir():
            raise PPModelsError(f"{path} is a directory; {owner} writes a file there: move it away or write elsewhere")
        who = WRITERS.get(recorded, recorded) if recorded else "none of this directory's ppmodels commands"
        raise PPModelsError(f"{path} exists and was written by {who}, not by {WRITERS.get(owner, owner)}, which does "
                            "not replace it; move it away or write elsewhere")
    if record and (recorded != owner or not (directory / MANIFEST).exists()):
        files[name] = owner
        _write_manifest(directory, files)


def check_writable(*paths: str | os.PathLike, owner: str = "run") -> None:
    """The error :func:`write_artifact` would raise for any of ``paths``, before any is written."""
    for path in paths:
        _claim(Path(path), owner, record=False)


def write_artifact(path: str | os.PathLike, write: Any, *, owner: str = "run") -> Path:
    """Write the file ``path`` by ``write(staged)``, which writes the whole content to the path it
    is given; see the module docstring. ``owner``: the writer (``run`` for a training run's
    files), which alone may replace the file later. A file that exists and is not ``owner``'s is
    refused (one-line :class:`~ppmodels.utils.PPModelsError`) before anything is written."""
    path = Path(path)
    staged = staged_name(path)
    _fault("start", path, staged)
    _claim(path, owner)
    _fault("claimed", path, staged)
    try:
        write(staged)
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    _fault("staged", path, staged)
    os.replace(staged, path)
    _fault("replaced", path, staged)
    return path


def replace_run(directory: str | os.PathLike, keep: tuple[str, ...] = (CHECKPOINT,)) -> None:
    """Remove the files of the run in ``directory`` (those its manifest records as the run's, its
    kept checkpoints and its previous checkpoint), but ``keep``: what a run replacing it does
    before its first checkpoint, so that the old run's report, history or figures never stand
    beside the new run's checkpoint."""
    directory = Path(directory)
    with _manifest_held(directory):
        files = _read_manifest(directory)
        if files is None:
            files = {p.name: "run" for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")
                     and (p.name in RUN_FILES or p.name == PREVIOUS)} if (directory / CHECKPOINT).is_file() else {}
        remove_kept(directory)
        doomed = [name for name, owner in files.items() if owner == "run" and name not in keep]
        for name in doomed:
            try:
                (directory / name).unlink(missing_ok=True)
            except OSError as e:
                raise PPModelsError(f"cannot remove {directory / name}, a file of the replaced run ({e.strerror}); "
                                    "remove it by hand and run again") from None
        left = {name: owner for name, owner in files.items() if name not in doomed and not KEPT.fullmatch(name)}
        if (directory / MANIFEST).exists() or left:
            _write_manifest(directory, left)


class NonFiniteState(PPModelsError, FloatingPointError):
    """Parameters or optimizer state became NaN or inf: nothing was written."""


_HELD: dict[str, list] = {}  # resolved run directory -> [locked file, holders in this process]


class RunLock:
    """An exclusive lock on a run directory (``RUN/.lock``), held until :meth:`release`.
    Re-entrant within a process (the CLI holds it for a whole command, ``fit`` inside it takes
    it again); another process gets a clear error."""

    def __init__(self, directory: Path) -> None:
        import fcntl

        self.directory = Path(directory)
        self.path = self.directory / ".lock"
        self._key = str(self.directory.resolve())
        self._released = False
        if self._key in _HELD:
            _HELD[self._key][1] += 1
            return
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            owner = file.read().strip() or "another process"
            file.close()
            raise PPModelsError(
                f"run directory {self.directory} is in use by another training ({owner}); wait for it, or use another --out"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()}")
        file.flush()
        _HELD[self._key] = [file, 1]

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        entry = _HELD[self._key]
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].close()
            del _HELD[self._key]

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_folder(directory: Path, what: str) -> None:
    """One line if ``directory`` (for --out) is a file or lies under one."""
    for parent in [directory, *directory.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == directory else f"is under the file {parent}"
            raise PPModelsError(f"{what} {directory} {where}; pass a directory for --out")


def open_run(path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> RunLock:
    """Check ``path`` as a run directory and lock it; see the module docstring. Errors name
    the path and what to do."""
    if path is None or str(path).strip() == "":
        raise PPModelsError("run directory: an empty path was given; pass --out DIR")
    directory = Path(path)
    check_folder(directory, "run directory")
    if resume and overwrite:
        raise PPModelsError("run directory: --resume and --overwrite contradict each other; pass one")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PPModelsError(f"run directory {directory} is not writable ({e.strerror}); choose another --out") from None
    present = [name for name in RUN_FILES if (directory / name).exists()]
    if resume and not (directory / CHECKPOINT).exists():
        raise PPModelsError(f"run directory {directory} has no {CHECKPOINT} to resume from; drop --resume")
    if present and not resume and not overwrite:
        raise PPModelsError(
            f"run directory {directory} already holds a run ({', '.join(present)}); "
            "pass --resume to continue it or --overwrite to replace it"
        )
    return RunLock(directory)


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a nested dict/list, with a path, in a fixed order."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _tensors(obj[key], f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}/{i}")


def checksum(state: dict[str, Any]) -> str:
    """SHA-256 of the parameters' and optimizer state's tensors (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for key in ("params", "optimizer"):
        for name, t in _tensors(state.get(key, {}), key):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _non_finite(state: dict[str, Any]) -> list[str]:
    return [name for key in ("params", "optimizer") for name, t in _tensors(state.get(key, {}), key)
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any], replacing: bool = False) -> Path:
    """Write ``state`` as ``directory/checkpoint.pt`` (see the module docstring); raise
    :class:`NonFiniteState` without writing if a parameter or optimizer tensor is not finite.
    ``replacing``: the first checkpoint of a run that replaces the directory's run: the old
    run's files go first (:func:`replace_run`), and no previous checkpoint is kept."""
    directory = Path(directory)
    bad = _non_finite(state)
    if bad:
        raise NonFiniteState(f"{len(bad)} tensors are NaN/inf (first: {bad[0]}); the checkpoint was not replaced")
    state = {**state, "checksum": checksum(state)}
    target, previous = directory / CHECKPOINT, directory / PREVIOUS
    buffer = io.BytesIO()
    torch.save(state, buffer)

    def write(staged: Path) -> None:
        staged.write_bytes(buffer.getvalue())
        load_checkpoint(staged)  # read back and verify before anything is replaced

    if replacing:
        replace_run(directory)
    elif target.exists():  # a copy becomes the previous one: checkpoint.pt is never missing
        atomic_copy(target, previous)
    return write_artifact(target, write)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", trust: bool = False) -> dict[str, Any]:
    """A checkpoint, loaded with ``weights_only=True`` and verified (one-line errors): its
    checksum must match, and one without a checksum (not written by ppmodels, or with the entry
    removed) is refused unless ``trust=True`` (the CLI's ``--trust-checkpoint``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise PPModelsError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise PPModelsError(f"checkpoint {path} is empty; use {PREVIOUS} beside it, or train again")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise PPModelsError(
            f"checkpoint {path} was refused: it is not a file of tensors and plain data (damaged, foreign, or "
            f"holding code); use {PREVIOUS} beside it, or train again"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError, ImportError) as e:
        raise PPModelsError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: truncated or not a checkpoint); "
            f"use {PREVIOUS} beside it, or train again"
        ) from None
    if not isinstance(state, dict) or "params" not in state:
        raise PPModelsError(f"checkpoint {path} is not a ppmodels checkpoint (no parameters)")
    expected = state.get("checksum")
    if expected is None and not trust:
        raise PPModelsError(f"checkpoint {path} has no checksum, so its weights cannot be verified; if you trust the "
                            "file, pass --trust-checkpoint (trust=True)")
    if expected is not None and checksum(state) != expected:
        raise PPModelsError(f"checkpoint {path} is corrupted (checksum mismatch); use {PREVIOUS} beside it, or train again")
    return state


def read_report(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``report.json`` of the run in ``directory`` (written when its training finished), as
    a dict; a one-line error if there is none or it is not a JSON object."""
    import json

    path = Path(directory) / REPORT
    if not path.is_file():
        raise PPModelsError(f"{Path(directory)} has no {REPORT} (its training has not finished); finish or resume "
                            "the training first")
    try:
        report = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise PPModelsError(f"{path} is not valid JSON ({e}); restore it or train again") from None
    if not isinstance(report, dict):
        raise PPModelsError(f"{path} holds a JSON {type(report).__name__}, not an object; restore it or train again")
    return report


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float in it (nested dicts and lists too) as the string
    "inf", "-inf" or "nan": what strict JSON can hold."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_report(directory: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Replace ``directory/report.json`` by ``report`` at once (:func:`write_artifact`).
    Non-finite numbers are written as the strings "inf", "-inf", "nan" (strict JSON has none)."""
    return write_json(Path(directory) / REPORT, report)


def write_json(path: str | os.PathLike, value: Any, owner: str = "run") -> Path:
    """``value`` as strict JSON in ``path`` (:func:`write_artifact`)."""
    import json

    text = json.dumps(strict_json(value), indent=2, allow_nan=False)
    return write_artifact(path, lambda staged: Path(staged).write_text(text), owner=owner)


def write_csv(path: str | os.PathLike, frame: Any, owner: str = "run") -> Path:
    """A pandas table as CSV in ``path`` (:func:`write_artifact`)."""
    return write_artifact(path, lambda staged: frame.to_csv(staged, index=False), owner=owner)


def write_figure(path: str | os.PathLike, fig: Any, owner: str = "run", **savefig: Any) -> Path:
    """A matplotlib figure in ``path`` (:func:`write_artifact`); the figure is closed."""
    import matplotlib.pyplot as plt

    try:
        return write_artifact(path, lambda staged: fig.savefig(staged, **savefig), owner=owner)
    finally:
        plt.close(fig)
