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
"""

from __future__ import annotations

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
           "write_report", "strict_json", "REPORT"]

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
#: files whose presence means a directory holds a run
REPORT = "report.json"
RUN_FILES = (CHECKPOINT, "history.csv", REPORT)


#: a kept checkpoint's file name (the epoch, then ".tmp" for a partial copy)
KEPT = re.compile(r"checkpoint-epoch([0-9]+)\.pt(\.tmp)?")


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


def atomic_copy(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file and one rename: ``target`` is
    either absent, the old file, or the whole copy."""
    staged = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, staged)
    os.replace(staged, target)


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


def open_run(path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> RunLock:
    """Check ``path`` as a run directory and lock it; see the module docstring. Errors name
    the path and what to do."""
    if path is None or str(path).strip() == "":
        raise PPModelsError("run directory: an empty path was given; pass --out DIR")
    directory = Path(path)
    for parent in [directory, *directory.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == directory else f"is under the file {parent}"
            raise PPModelsError(f"run directory {directory} {where}; pass a directory for --out")
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


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``directory/checkpoint.pt`` (see the module docstring); raise
    :class:`NonFiniteState` without writing if a parameter or optimizer tensor is not finite."""
    directory = Path(directory)
    bad = _non_finite(state)
    if bad:
        raise NonFiniteState(f"{len(bad)} tensors are NaN/inf (first: {bad[0]}); the checkpoint was not replaced")
    state = {**state, "checksum": checksum(state)}
    target, tmp, previous = directory / CHECKPOINT, directory / (CHECKPOINT + ".tmp"), directory / PREVIOUS
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    load_checkpoint(tmp)  # read back and verify before anything is replaced
    if target.exists():  # a copy becomes the previous one: checkpoint.pt is never missing
        atomic_copy(target, previous)
    os.replace(tmp, target)  # one atomic rename
    return target


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint, loaded with ``weights_only=True`` and verified (one-line errors)."""
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
    """Replace ``directory/report.json`` by ``report`` at once: through a temporary file, synced,
    and one rename. Non-finite numbers are written as the strings "inf", "-inf", "nan" (strict
    JSON has none)."""
    import json

    path = Path(directory) / REPORT
    staged = path.with_name(REPORT + ".tmp")
    with open(staged, "w") as f:
        f.write(json.dumps(strict_json(report), indent=2, allow_nan=False))
        f.flush()
        os.fsync(f.fileno())
    os.replace(staged, path)
    return path
