"""Result folders are written as a whole, by one run at a time, and never over what the tool did not
write.

A run writes into a staging folder beside the result (``.NAME.partial``), which also keeps what an
interrupted run resumes from (the collection checkpoint, finished control cells). When the result
is complete, a marker is written last and the staging folder replaces the result in two renames;
a run that dies between them is finished by the next one. While a run writes, ``.NAME.lock``
beside the folder holds its process id.

One rule for every result folder, enforced here (:func:`check_target` before a run, :func:`staged_folder`
at its end): a folder holds one kind of result (find, control, sweep). A run replaces only the files
the previous result of its kind wrote there (the marker lists them); everything else in the folder is
carried into the new result: files the user added, and the results written inside it by other commands
(a find folder's sample cache ``samples/``, its ``control*`` and ``sweep*`` folders, ``analyses/``,
``report.md``, the benchmarks' folders). A result of another kind is never replaced, with or without
``--overwrite``; files of the previous result that the new one does not write are named when dropped.
A link to a folder is written through (the folder it points to holds the result); a dangling link is
refused before the run.
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

MARKER = ".tl-langneurons.json"  # kind, settings and files of the run that wrote the folder; written last
_OURS = ("neurons.json", "evaluation.json", "sweep.json", MARKER)  # files only this tool writes
# the file that shows a folder's kind where its marker predates kinds, and what each kind writes at the top of
# its folder (for folders whose marker predates the list of files)
_KIND_FILES = {"neurons.json": "find", "evaluation.json": "control", "sweep.json": "sweep"}
OUTPUTS = {
    "find": ("neurons.json", "neurons.safetensors", "neurons.csv", "summary.md", "timings.json", "layers.md",
             "layers.csv", "layers.png", "overlap.md", "overlap.csv", "overlap.png", "distributions.png"),
    "control": ("table2.md", "table2.csv", "k_ablation.md", "k_ablation.csv", "k_ablation.png", "evaluation.json",
                "samples.md", "cells"),
    "sweep": ("sweep.md", "sweep.json", "tradeoff.png", "cells"),
}
KINDS = {"find": "find result (neurons)", "control": "control experiment (evaluate)", "sweep": "sweep",
         "lcb": "language-confusion table (lcb)"}


def fault_point(stage: str) -> None:
    """Kill this process with SIGKILL at ``stage`` when ``$TL_LANGNEURONS_FAULT`` names it (fault
    injection for the tests; a no-op otherwise)."""
    if os.environ.get("TL_LANGNEURONS_FAULT") == stage:
        os.kill(os.getpid(), signal.SIGKILL)


def resolve_link(out: str | Path, what: str = "--out") -> Path:
    """``out``, or the folder it links to (a result is written through a link, never over it); a dangling
    link, or a loop of links, is refused."""
    out = Path(out)
    if not out.is_symlink():
        return out
    try:
        target = out.resolve(strict=True)
    except (OSError, RuntimeError):
        raise LangNeuronsError(f"{what} {out} is a symbolic link to {os.readlink(out)}, which does not exist; create "
                               "that folder first or choose another path") from None
    return target


def check_writable(out: Path, what: str = "--out") -> None:
    """A path where a result folder can be created: not a dangling link, not a file, not under a file,
    writable."""
    out = resolve_link(out, what)
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


def result_kind(folder: str | Path) -> str | None:
    """The kind of result in ``folder`` (find, control, sweep): its marker's, or for a folder written before
    markers had kinds the one its files show; None when it holds no result."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is not None and isinstance(marker.get("kind"), str):
        return marker["kind"]
    return next((kind for name, kind in _KIND_FILES.items() if (folder / name).exists()), None)


def describe_kind(kind: str) -> str:
    return KINDS.get(kind, f"{kind} result")


def _own_files(folder: Path, kind: str) -> set[str]:
    """What the result of ``kind`` in ``folder`` wrote there: the files its marker lists, else (a marker
    written before the list) every name such a result writes."""
    marker = read_marker(folder) or {}
    files = marker.get("files")
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return {*files, MARKER}
    return {*OUTPUTS.get(kind, ()), MARKER}


def _running_inside(out: Path) -> None:
    """Refuse while another command writes a result inside ``out`` (its lock is there)."""
    for lock in out.glob(".*.lock"):
        pid = _read_pid(lock)
        if pid is not None and pid != os.getpid() and process_alive(pid):
            raise LangNeuronsError(f"process {pid} is writing {out / lock.name[1:-len('.lock')]} inside {out}; wait for "
                                   "it to finish or stop it")


def check_target(out: Path, kind: str, settings: dict, overwrite: bool, what: str = "--out",
                 old_settings: dict | None = None) -> bool:
    """Refuse ``out`` when it holds files the tool did not write (and no result), a result of another
    kind, or a run of other settings (unless ``overwrite``), before anything runs. ``old_settings`` are the
    settings of a folder written before markers. Returns whether ``out`` holds a run of these very settings."""
    out = resolve_link(out, what)
    check_writable(out, what)
    pid = _read_pid(out.parent / f".{out.name}.lock")
    if pid is not None and pid != os.getpid() and process_alive(pid):
        raise LangNeuronsError(f"{out} is being written by process {pid}; wait for it to finish or stop it")
    if not out.exists() or not any(out.iterdir()):
        return False
    found = result_kind(out)
    if found is None:
        raise LangNeuronsError(f"{what} {out} holds files that tl-langneurons did not write; choose an empty or new folder")
    if found != kind:
        raise LangNeuronsError(f"{what} {out} holds a {describe_kind(found)}, which a {describe_kind(kind)} never "
                               f"replaces (with or without --overwrite); choose another {what}")
    _running_inside(out)
    own = _own_files(out, kind)
    theirs = sorted(p.name for p in out.iterdir() if p.name not in own and p.name in OUTPUTS.get(kind, ()))
    if theirs:
        raise LangNeuronsError(f"{out / theirs[0]} was not written by the result in {out}, and a {describe_kind(kind)} "
                               "writes that name; move it away first")
    marker = read_marker(out)
    old = marker.get("settings") if marker else old_settings
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
                if pid is not None and pid != os.getpid() and process_alive(pid):
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


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a lock's or an offload folder's owner); one we may not signal counts as running."""
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


def _carry(old: Path, out: Path) -> tuple[list[str], list[str]]:
    """Move into the new result ``out`` everything of the previous result ``old`` that the previous run did
    not write itself (the user's files, results written inside it by other commands); what is left in
    ``old`` is the previous result's own files. Returns (carried, dropped): the names moved, and the
    previous result's own files that the new result does not have."""
    if old.is_symlink():  # an earlier version moved a link to the result here: the folder it points to stays
        log.warning("removing %s, a link to %s left by an earlier version (the folder it points to is kept)", old,
                    os.readlink(old))
        old.unlink()
        return [], []
    kind = result_kind(old)
    own = _own_files(old, kind) if kind else {MARKER}
    carried, dropped = [], []
    for p in sorted(old.iterdir()):
        if p.name in own:
            if not (out / p.name).exists():
                dropped.append(p.name)
            continue
        dst = out / p.name
        n = 1
        while dst.exists() or dst.is_symlink():  # the new result wrote the same name: keep both
            dst = out / f"{p.name}.kept{'' if n == 1 else f'-{n}'}"
            n += 1
        if dst.name != p.name:
            log.warning("%s was not written by the previous result and the new one writes that name: kept as %s",
                        out / p.name, dst)
        os.replace(p, dst)
        carried.append(p.name)
    return carried, dropped


def _drop_old(old: Path, out: Path) -> tuple[list[str], list[str]]:
    """Carry what is not the previous result's own out of ``old``, then delete ``old`` (its own files)."""
    carried, dropped = _carry(old, out)
    if old.exists() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    return carried, dropped


def finish_swap(out: Path, locked: bool = False) -> None:
    """Complete a swap that a killed run left half done (staging complete, result moved aside, or what
    the previous result held not yet carried over); nothing while a live run holds the folder's lock
    (unless ``locked``: the caller holds it)."""
    out = Path(out)
    if out.is_symlink() and out.exists():
        out = out.resolve()
    stage, old = staging_dir(out), _old_dir(out)
    if not locked:
        pid = _read_pid(out.parent / f".{out.name}.lock")
        if pid is not None and process_alive(pid):
            return
    if stage.exists() and read_marker(stage) is not None and not out.exists():
        os.replace(stage, out)
    if (old.exists() or old.is_symlink()) and out.exists():
        _drop_old(old, out)


@contextlib.contextmanager
def staged_folder(out: str | Path, kind: str, settings: dict, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield the staging folder of ``out``; on success write the marker into it (with the files the run
    wrote) and put it in place of ``out``, carrying over everything the previous result did not write
    itself (see the module docstring). ``keep`` names sub-folders of an existing ``out`` copied into the
    staging folder at the start (e.g. finished cells). On an error the staging folder stays, for the next
    run to resume from."""
    out = resolve_link(out)
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
        files = sorted(p.name for p in stage.iterdir() if p.name != MARKER)
        atomic_write_json(stage / MARKER, {"kind": kind, "settings": settings, "files": files})
        old = _old_dir(out)
        if out.exists():
            if old.exists() or old.is_symlink():
                _drop_old(old, out)
            os.replace(out, old)
        fault_point("swap")
        os.replace(stage, out)
        if old.exists() or old.is_symlink():
            _, dropped = _drop_old(old, out)
            if dropped:
                log.warning("note: the previous %s in %s had %s, which this run does not write: replaced without them",
                            describe_kind(kind), out, ", ".join(dropped))


def run_into(out: str | Path | None, kind: str, settings: dict, overwrite: bool, run, write):
    """``run(cells_dir)`` and, with ``out``, ``write(result, folder)``, into a folder written as a whole
    with its finished cells kept for resume; a folder of other settings is refused unless ``overwrite``."""
    if out is None:
        return run(None)
    out = resolve_link(out)
    check_target(out, kind, settings, overwrite)
    with staged_folder(out, kind, settings, keep=("cells",)) as stage:
        result = run(stage / "cells")
        write(result, stage)
    return result


# ---- JSON read back from a result folder ------------------------------------------------------------------------
_TYPES = {"object": dict, "list": list, "string": str, "bool": bool}
_WANT = {"absent": "absent", "object": "an object", "list": "a list", "string": "a string", "bool": "true or false", "number": "a number",
         "integer": "a whole number", "null": "null"}


def _is(value, kind: str) -> bool:
    if kind == "absent":
        return False
    if kind == "null":
        return value is None
    if kind in ("number", "integer"):  # a number may be NaN (the tool writes NaN where nothing was measured)
        return isinstance(value, int if kind == "integer" else (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def _nodes(data, path: str, prefix: str = "") -> list[tuple[str, object, bool]]:
    """(name, value, present) of every node at ``path`` (dotted keys; ``[]`` each item of a list, ``*``
    each value of an object); below an absent or null node nothing."""
    nodes = [(prefix, data, True)]
    for tok in path.split("."):
        nxt = []
        for name, v, present in nodes:
            if tok == "[]" and isinstance(v, list):
                nxt += [(f"{name}[{i}]", x, True) for i, x in enumerate(v)]
            elif tok == "*" and isinstance(v, dict):
                nxt += [(f"{name}.{k}" if name else str(k), x, True) for k, x in v.items()]
            elif tok not in ("[]", "*") and isinstance(v, dict):
                nxt.append((f"{name}.{tok}" if name else tok, v.get(tok), tok in v))
        nodes = nxt
    return nodes


def check_fields(data, fields: dict[str, tuple[str, ...]], where: str, again: str, prefix: str = "") -> None:
    """Check the named fields of JSON read back (``{"meta.config.samples": ("integer",), ...}``; a parent
    before its children): one :class:`LangNeuronsError` line naming the file, the field, what it must be
    and what it holds, and ``again`` (how to make it anew). A field that may be absent allows "null" or
    "absent" (absent, but not null)."""
    for path, kinds in fields.items():
        for name, value, present in _nodes(data, path, prefix):
            if not present:
                if "null" in kinds or "absent" in kinds:
                    continue
                raise LangNeuronsError(f"{where}: field {name!r} is missing; {again}")
            if not any(_is(value, k) for k in kinds):
                got = json.dumps(value)
                raise LangNeuronsError(f"{where}: field {name!r} must be {' or '.join(_WANT[k] for k in kinds if k != 'absent')}, got "
                                       f"{got if len(got) <= 60 else got[:57] + '...'}; {again}")


def read_json(path: str | Path, fields: dict[str, tuple[str, ...]], again: str) -> dict:
    """A JSON object the tool wrote, read back with :func:`check_fields`; unreadable JSON or another JSON
    value than an object is one clear line too."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LangNeuronsError(f"{path} is not readable JSON ({type(e).__name__}: {e}); {again}") from None
    if not isinstance(data, dict):
        raise LangNeuronsError(f"{path} must hold a JSON object, got a JSON {type(data).__name__}; {again}")
    check_fields(data, fields, str(path), again)
    return data
