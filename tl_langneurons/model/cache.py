"""The cache folder's own files: a writable-folder check that names ``TL_LANGNEURONS_CACHE``, and
temporary files and folders owned by a process, removed by a later run once that process is gone.

A process killed with SIGKILL never removes its temporaries (an offload folder; a GGUF's chunks
concatenated for conversion, the model's size; a half-written converted copy). Each is named
``.{kind}-{host}-{pid}-...`` so that the next run on the same machine can tell the dead process's
files from those of a run still going, and delete only the former.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

from ..config import cache_dir
from ..errors import LangNeuronsError
from ..results import process_alive

log = logging.getLogger(__name__)

LEGACY_AGE_S = 3600.0
"""Temporaries named the old way (``.concat-XXXXXXXX.gguf``, no process id) are removed once this old."""


def writable(folder: Path | None = None) -> Path:
    """``folder`` (default the cache folder, ``models/`` under it for a converted model), created if need
    be and checked writable; one line naming ``TL_LANGNEURONS_CACHE`` otherwise."""
    folder = cache_dir() if folder is None else folder
    where = "TL_LANGNEURONS_CACHE" if "TL_LANGNEURONS_CACHE" in os.environ else "the default cache"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LangNeuronsError(f"the cache folder {folder} is a file, not a folder; point TL_LANGNEURONS_CACHE "
                               f"at a writable folder (now {where})") from None
    except OSError as e:
        raise LangNeuronsError(f"cannot create the cache folder {folder} ({e.strerror or e}); point "
                               f"TL_LANGNEURONS_CACHE at a writable folder (now {where})") from None
    if not folder.is_dir():
        raise LangNeuronsError(f"the cache folder {folder} is not a folder; point TL_LANGNEURONS_CACHE at a "
                               f"writable folder (now {where})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LangNeuronsError(f"the cache folder {folder} is not writable; point TL_LANGNEURONS_CACHE at a "
                               f"writable folder (now {where})")
    return folder


def owned_prefix(kind: str) -> str:
    """``.{kind}-{host}-{pid}-``: the name prefix of a temporary of this process."""
    return f"{host_prefix(kind)}{os.getpid()}-"


def host_prefix(kind: str) -> str:
    """``.{kind}-{host}-``: the temporaries of ``kind`` made by this machine's processes."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"
    return f".{kind}-{host}-"


def _remove(p: Path) -> bool:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
    return not p.exists()


def remove_stale(folder: Path, kinds: tuple[str, ...], legacy: tuple[str, ...] = ()) -> list[Path]:
    """Delete in ``folder`` the temporaries of ``kinds`` left by this machine's processes that are no longer
    running, and those matching the ``legacy`` globs (named without a process id) older than
    :data:`LEGACY_AGE_S`; returns those deleted. Another machine's temporaries (a shared cache) are left."""
    gone: list[Path] = []
    if not folder.is_dir():
        return gone
    for kind in kinds:
        prefix = host_prefix(kind)
        for p in folder.glob(f"{glob.escape(prefix)}*"):
            pid = p.name[len(prefix):].split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid() or process_alive(int(pid)):
                continue
            if _remove(p):
                log.warning("removed %s, left by process %s, which is no longer running", p, pid)
                gone.append(p)
    now = time.time()
    for pattern in legacy:
        for p in folder.glob(pattern):
            try:
                old = now - p.lstat().st_mtime > LEGACY_AGE_S
            except OSError:
                continue
            if old and _remove(p):
                log.warning("removed %s, a temporary file of an earlier run", p)
                gone.append(p)
    return gone
