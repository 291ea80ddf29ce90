"""Generated samples cached per (setting, seed), shared by every experiment on one neurons folder.

A sample depends on the model, the neurons, the intervention and the sampling settings, and on its
seed: not on the cell, the batch or the experiment that asked for it. Table 2, the k = 1000 point
of the k ablation, the sweep's paper setting and a method comparison therefore share every sample
they have in common. The store keeps one JSON file per setting (``<key>.json``: the setting and its
samples by seed, each with its NLL under the unsteered model), written atomically after every batch,
so a long cell killed half way resumes from its last batch. Small results derived from the model
and the reference texts alone (the fluency gate, the reference NLL) are kept beside them by
:meth:`SampleStore.memo`, so they too are computed once per folder.

Each file carries the sha256 of its content (``sha256``): a file edited by hand, or damaged in a way that
leaves valid JSON, is treated as any damaged file (a warning, and its samples are generated again). Files
written before the checksum existed have none and are read as they are.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, Sequence

from ..errors import LangNeuronsError
from ..provenance import atomic_write_json


def setting_key(settings: dict) -> str:
    """A short hash of a setting (seeds excluded by the caller)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def content_sha256(data: dict) -> str:
    """The checksum of a store file's content: its JSON without the ``sha256`` field, keys sorted."""
    body = {k: v for k, v in data.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def with_sha256(data: dict) -> dict:
    """``data`` with its checksum, taken as it will read back (JSON turns tuples to lists, keys to strings)."""
    return {**data, "sha256": content_sha256(json.loads(json.dumps(data)))}


def sha256_problem(data) -> str | None:
    """What is wrong when ``data`` records a checksum its content does not match (an edited file), else None
    (also for files written before the checksum existed)."""
    if isinstance(data, dict) and "sha256" in data and data["sha256"] != content_sha256(data):
        return "its content does not match its sha256 (edited after it was written)"
    return None


def sample_problem(r) -> str | None:
    """What is wrong with one stored sample (None when it is sound): a dict with seed (int), text
    (str), tokens (list of int) and nll (number or null). Shared by the cache and the cell files."""
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(r, dict):
        return "is not an object"
    if not is_int(r.get("seed")):
        return f"seed is {r.get('seed')!r}, not an integer"
    if not isinstance(r.get("text"), str):
        return "text is not a string"
    if not isinstance(r.get("tokens"), list) or not all(is_int(t) for t in r["tokens"]):
        return "tokens is not a list of integers"
    if "nll" not in r or not (r["nll"] is None or (isinstance(r["nll"], (int, float)) and not isinstance(r["nll"], bool))):
        return "nll is not a number or null"
    return None


def store_of(store: "str | Path | SampleStore | None", samples: "str | Path | None" = None) -> "SampleStore":
    """The sample store of an experiment: ``store`` as given (a folder, a :class:`SampleStore`, or None: in
    memory, for one run). ``samples`` is its earlier keyword (deprecated: beside ``EvaluateConfig.samples``,
    a count, it read as one).

    Example:
        >>> store_of(None).folder is None
        True
    """
    if samples is not None:
        if store is not None:
            raise LangNeuronsError("give store= alone (samples= is its earlier, deprecated name)")
        warnings.warn("samples= (the folder of cached samples) is deprecated; use store=", DeprecationWarning,
                      stacklevel=3)
        store = samples
    return store if isinstance(store, SampleStore) else SampleStore(store)


class SampleStore:
    """Samples by (setting, seed) in ``folder`` (None: in memory only, for one run).

    Example:
        >>> store = SampleStore(None)
        >>> store.put({"cond": "none"}, [{"seed": 1, "text": "a", "tokens": [5], "nll": 2.0}])
        >>> store.get({"cond": "none"}, [1, 2])
        ({1: {'seed': 1, 'text': 'a', 'tokens': [5], 'nll': 2.0}}, [2])
    """

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None
        self._mem: dict[str, dict[int, dict]] = {}
        self._memo: dict[str, dict] = {}
        self.hits = 0
        self.misses = 0
        self.memo_hits = 0

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.json"

    @staticmethod
    def _read(path: Path, settings: dict) -> dict:
        """A store file's content: its checksum holds and it was made with ``settings`` (ValueError otherwise)."""
        data = json.loads(path.read_text(encoding="utf-8"))
        edited = sha256_problem(data)
        if edited:
            raise ValueError(edited)
        if data.get("settings") != settings:
            raise ValueError("its settings differ from the file name's")
        return data

    def _load(self, settings: dict) -> dict[int, dict]:
        key = setting_key(settings)
        if key in self._mem:
            return self._mem[key]
        rows: dict[int, dict] = {}
        path = self._path(key)
        if path is not None and path.exists():
            try:
                for r in self._read(path, settings)["samples"]:
                    problem = sample_problem(r)
                    if problem is not None:
                        raise ValueError(f"a sample {problem}: {str(r)[:80]}")
                    rows[r["seed"]] = r
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
                warnings.warn(f"sample cache {path} is damaged ({e}); its samples are generated again", stacklevel=3)
                rows = {}
        self._mem[key] = rows
        return rows

    def get(self, settings: dict, seeds: Sequence[int], count: bool = True) -> tuple[dict[int, dict], list[int]]:
        """The cached samples of ``seeds`` under ``settings`` and the seeds still missing (in order);
        ``count`` adds them to :attr:`hits` and :attr:`misses`."""
        rows = self._load(settings)
        found = {s: rows[s] for s in seeds if s in rows}
        missing = [s for s in seeds if s not in rows]
        if count:
            self.hits += len(found)
            self.misses += len(missing)
        return found, missing

    def put(self, settings: dict, new_rows: Sequence[dict]) -> None:
        """Add samples (one dict per seed) and write the setting's file."""
        rows = self._load(settings)
        for r in new_rows:
            rows[r["seed"]] = r
        path = self._path(setting_key(settings))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, with_sha256({"settings": settings, "samples": [rows[s] for s in sorted(rows)]}))

    def memo(self, name: str, settings: dict, make: Callable[[], dict]) -> dict:
        """``make()`` once per ``settings``: read back from ``<name>-<key>.json`` when it was made with the
        same settings, else made and written. For small results that depend only on what ``settings``
        names (e.g. a language's fluency gate and reference NLL: the model's weights and the texts).

        Example:
            >>> store = SampleStore(None)
            >>> store.memo("gate", {"lang": "de"}, lambda: {"threshold": 0.5})
            {'threshold': 0.5}
            >>> store.memo("gate", {"lang": "de"}, lambda: {"threshold": 0.0}), store.memo_hits
            ({'threshold': 0.5}, 1)
        """
        key = f"{name}-{setting_key(settings)}"
        if key in self._memo:
            self.memo_hits += 1
            return self._memo[key]
        path = self._path(key)
        if path is not None and path.exists():
            try:
                data = self._read(path, settings)
                if not isinstance(data.get("value"), dict):
                    raise ValueError("it holds no value")
                self._memo[key] = data["value"]
                self.memo_hits += 1
                return data["value"]
            except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
                warnings.warn(f"cache file {path} is damaged ({e}); it is computed again", stacklevel=2)
        value = make()
        self._memo[key] = value
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, with_sha256({"settings": settings, "value": value}))
        return value
