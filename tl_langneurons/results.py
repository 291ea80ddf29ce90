"""Result folders are written as a whole, by one run at a time, and never over what the tool did not
write.

A run writes into a staging folder beside the result (``.NAME.partial``), which also keeps what an
interrupted run resumes from (the collection checkpoint, finished control cells). When the result
is complete, a marker is written last and the staging folder replaces the result in two renames;
a run that dies between them is finished by the next one. While a run writes, ``.NAME.lock``
beside the folder holds its process id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Iterator

from .errors import LangNeuronsError
from .provenance import atomic_write_json

log = logging.getLogger(__name__)

MARKER = ".tl-langneurons.json"  # kind and settings of the run that wrote the folder; written last
_OURS = ("neurons.json", "evaluation.json", "sweep.json", MARKER)  # files only this tool writes


def fault_point(stage: str) -> None:
    """Kill this process with SIGKILL at ``stage`` when ``$TL_LANGNEURONS_FAULT`` names it (fault
    injection for the tests; a no-op otherwise)."""
    if os.environ.get("TL_LANGNEURONS_FAULT") == stage:
        os.kill(os.getpid(), signal.SIGKILL)


def check_writable(out: Path, what: str = "--out") -> None:
    """A path where a result folder can be created: not a file, not under a file, writable."""
    if out.exists() and not out.is_dir():
        raise LangNeuronsError(f"{what} {out} is a file, not a folder; choose a folder path")
    parent = out if out.exists() else out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise LangNeuronsError(f"{what} {out} lies under {parent}, which is a file; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LangNeuronsError(f"{what} {out}: {parent} is not writable; choose another path")


def read_marker(folder: Path) -> dict | None:
    """The kind and settings recorded in a result folder, or None when it has no marker."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_ours(folder: Path) -> bool:
    return any((folder / name).exists() for name in _OURS)


def check_target(out: Path, kind: str, settings: dict, overwrite: bool, what: str = "--out",
                 old_settings: dict | None = None) -> bool:
    """Refuse ``out`` when it holds files the tool did not write, or a run of other settings
    (unless ``overwrite``). ``old_settings`` are the settings of a folder written before markers.
    Returns whether ``out`` holds a run of these very settings."""
    check_writable(out, what)
    pid = _read_pid(out.parent / f".{out.name}.lock")
    if pid is not None and pid != os.getpid() and _alive(pid):
        raise LangNeuronsError(f"{out} is being written by process {pid}; wait for it to finish or stop it")
    if not out.exists() or not any(out.iterdir()):
        return False
    if not is_ours(out):
        raise LangNeuronsError(f"{what} {out} holds files that tl-langneurons did not write; choose an empty or new folder")
    marker = read_marker(out)
    old = marker.get("settings") if marker and marker.get("kind") == kind else old_settings
    if old is None:
        return False
    old = json.loads(json.dumps(old))
    new = json.loads(json.dumps(settings))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff and not overwrite:
        raise LangNeuronsError(
            f"{out} holds a run with other settings (different {', '.join(diff)}); choose another {what} or pass --overwrite"
        )
    return not diff


class FolderLock:
    """``.NAME.lock`` beside a result folder while a run writes it; a second run is refused with the
    holder's process id, and a lock left by a dead process is taken over with a note."""

    def __init__(self, folder: Path):
        self.path = folder.parent / f".{folder.name}.lock"
        self.folder = folder
        self.held = False

    def __enter__(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _read_pid(self.path)
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise LangNeuronsError(
                        f"{self.folder} is being written by process {pid} (lock {self.path}); wait for it to finish or stop it"
                    ) from None
                log.warning("taking over the lock of %s left by process %s, which is no longer running", self.folder, pid)
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return self
        raise LangNeuronsError(f"could not take the lock {self.path}; delete it if no run is writing {self.folder}")

    def __exit__(self, *exc) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _old_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.old"


def finish_swap(out: Path, locked: bool = False) -> None:
    """Complete a swap that a killed run left half done (staging complete, result moved aside);
    nothing while a live run holds the folder's lock (unless ``locked``: the caller holds it)."""
    stage, old = staging_dir(out), _old_dir(out)
    if not locked:
        pid = _read_pid(out.parent / f".{out.name}.lock")
        if pid is not None and _alive(pid):
            return
    if stage.exists() and read_marker(stage) is not None and not out.exists():
        os.replace(stage, out)
    if old.exists() and out.exists():
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(out: str | Path, kind: str, settings: dict, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield the staging folder of ``out``; on success write the marker into it and put it in place
    of ``out``. ``keep`` names sub-folders of an existing ``out`` carried into the new result (e.g.
    finished cells). On an error the staging folder stays, for the next run to resume from."""
    out = Path(out)
    with FolderLock(out):
        finish_swap(out, locked=True)
        stage = staging_dir(out)
        stage.mkdir(parents=True, exist_ok=True)
        for name in keep:
            src, dst = out / name, stage / name
            if src.is_dir() and not dst.exists():
                shutil.copytree(src, dst)
        yield stage
        fault_point("write")
        atomic_write_json(stage / MARKER, {"kind": kind, "settings": settings})
        old = _old_dir(out)
        if out.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        fault_point("swap")
        os.replace(stage, out)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)


def run_into(out: str | Path | None, kind: str, settings: dict, overwrite: bool, run, write):
    """``run(cells_dir)`` and, with ``out``, ``write(result, folder)``, into a folder written as a whole
    with its finished cells kept for resume; a folder of other settings is refused unless ``overwrite``."""
    if out is None:
        return run(None)
    check_target(Path(out), kind, settings, overwrite)
    with staged_folder(out, kind, settings, keep=("cells",)) as stage:
        result = run(stage / "cells")
        write(result, stage)
    return result
