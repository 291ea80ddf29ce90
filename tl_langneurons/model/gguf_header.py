"""The header of a GGUF file, read and checked against itself before any weight is converted.

:func:`read_header` parses the metadata and tensor table with bounded cost: every length the file
claims (a string, an array, the tensor table) is compared with the bytes left before anything is read,
arrays of numbers are skipped rather than held, nesting is walked without recursion, and the buffer
holds at most one block beyond what is being parsed. So a file that claims a 1 GB array is refused at
once, at baseline memory, and the walk costs what the header's real size costs.

:func:`check_structure` then compares the header with itself: ``block_count`` against the blocks the
tensor table holds, the tensor names against the architecture's (the ``gguf`` package's table), no
tensor twice, the shape keys (``embedding_length``, ``feed_forward_length``) against the tensors'
shapes, and, for dense decoders whose blocks are all alike, every block holding what the others hold.
A file that fails is one line (:class:`~tl_langneurons.errors.LangNeuronsError`) naming the first
problem; nothing is converted or cached.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, no_type_check, runtime_checkable

from ..errors import LangNeuronsError

MAGIC = b"GGUF"
_BLOCK = 1 << 20
MAX_NESTING = 8
"""Arrays of arrays deeper than this are refused (GGUF files in use nest one level at most)."""


@runtime_checkable
class _Stream(Protocol):
    def read(self, n: int) -> bytes: ...


@dataclass(frozen=True)
class TensorInfo:
    """One row of the tensor table: name, dimensions (GGUF order: the fastest-varying first), GGML type,
    offset in the data section."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int


@dataclass(frozen=True)
class GGUFHeader:
    """What the header of a GGUF file says (no tensor data read)."""

    version: int
    architecture: str
    name: str | None
    n_tensors: int
    metadata: dict = field(repr=False)  # scalar values, and ("array", length) for each array
    tokenizer: str | None
    needed_size: int  # bytes the tensor table says the file holds
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)

    def describe(self) -> str:
        return (f"GGUF v{self.version}, {self.architecture}{f' ({self.name})' if self.name else ''}, "
                f"{self.n_tensors} tensors")


@no_type_check  # called per token string (262k for Gemma): runtime type checks in the tests would cost a minute
class _Cursor:
    """Reads a stream of known total ``size`` front to back; every claim is checked against the bytes left."""

    def __init__(self, stream: _Stream, label: str, size: int):
        self.stream, self.label, self.size = stream, label, size
        self.buf, self.start, self.pos = b"", 0, 0  # self.buf holds bytes [start, start + len(buf))

    def left(self) -> int:
        return self.size - self.pos

    def _claim(self, n: int, what: str) -> None:
        if n > self.left():
            raise LangNeuronsError(
                f"{self.label} is truncated or corrupt inside its GGUF header: {what} at byte {self.pos} claims "
                f"{n} bytes, but only {max(self.left(), 0)} remain (an incomplete download, a missing chunk or "
                "a damaged file)")

    def _fill(self, n: int) -> None:
        """Make bytes [pos, pos + n) available in ``buf`` (n at most one block beyond what is claimed)."""
        have = self.start + len(self.buf) - self.pos
        if have >= n:
            return
        keep = self.buf[self.pos - self.start:]
        parts = [keep]
        while have < n:
            more = self.stream.read(max(_BLOCK, n - have))
            if not more:
                raise LangNeuronsError(f"{self.label} is truncated: it ends inside its GGUF header, at byte "
                                       f"{self.pos + have} (an incomplete download or a missing chunk)")
            parts.append(more)
            have += len(more)
        self.buf, self.start = b"".join(parts), self.pos

    def take(self, n: int, what: str = "a value") -> bytes:
        self._claim(n, what)
        self._fill(n)
        i = self.pos - self.start
        self.pos += n
        return self.buf[i:i + n]

    def skip(self, n: int, what: str) -> None:
        """Pass over ``n`` claimed bytes without holding them."""
        self._claim(n, what)
        while n > 0:
            step = min(n, _BLOCK)
            self._fill(step)
            self.pos += step
            n -= step

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self, what: str = "a string") -> str:
        (n,) = self.unpack("<Q")
        return self.take(n, f"{what} of {n} bytes").decode("utf-8", errors="replace")


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _value(cur: _Cursor, vtype: int, keep_strings: bool = False) -> Any:
    """One metadata value: a scalar, a string, or ("array", n) for an array (the tokenizer's strings kept
    when ``keep_strings``). Nested arrays are walked with an explicit stack, at most :data:`MAX_NESTING` deep."""
    if vtype in _SCALAR:
        return cur.unpack(_SCALAR[vtype])[0]
    if vtype == 8:
        return cur.string()
    if vtype != 9:
        raise LangNeuronsError(f"{cur.label}: corrupt GGUF header (unknown value type {vtype} at byte {cur.pos})")
    top: Any = None
    stack: list[int] = [1]  # items left to read at each open level; the outermost is this one value
    while stack:
        if stack[-1] == 0:
            stack.pop()
            continue
        stack[-1] -= 1
        (etype,) = cur.unpack("<I")
        (n,) = cur.unpack("<Q")
        if top is None:
            top = ("array", n)
        if etype in _SCALAR:
            width = struct.calcsize(_SCALAR[etype])
            cur._claim(n * width, f"an array of {n} items")
            cur.skip(n * width, f"an array of {n} items")
        elif etype == 8:
            cur._claim(8 * n, f"an array of {n} strings")  # each string has at least its 8-byte length
            items = [cur.string() for _ in range(n)]
            if keep_strings and len(stack) == 1:
                top = items
        elif etype == 9:
            cur._claim(12 * n, f"an array of {n} arrays")  # each has at least its type and length
            if len(stack) >= MAX_NESTING:
                raise LangNeuronsError(f"{cur.label}: corrupt GGUF header (arrays nested more than {MAX_NESTING} "
                                       f"deep at byte {cur.pos})")
            stack.append(n)
        else:
            raise LangNeuronsError(f"{cur.label}: corrupt GGUF header (unknown array type {etype} at byte {cur.pos})")
    return top


def parse_header(stream: _Stream, label: str, size: int) -> GGUFHeader:
    """The header of the GGUF file of ``size`` bytes that ``stream`` reads from its start; one line for a
    file that is not GGUF, is cut short, or claims more than it holds."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    magic = stream.read(4)
    if magic != MAGIC:
        what = "is empty" if not magic else f"starts with {magic!r}, not the GGUF magic b'GGUF'"
        raise LangNeuronsError(f"{label} is not a GGUF file: it {what}")
    cur = _Cursor(stream, label, size)
    cur.pos = cur.start = 4
    (version,) = cur.unpack("<I")
    if version not in (2, 3):
        raise LangNeuronsError(f"{label}: GGUF version {version} is not supported (versions 2 and 3 are)")
    n_tensors, n_kv = cur.unpack("<QQ")
    # each metadata key takes at least 13 bytes (length, type, one byte of value), each tensor 24
    if 13 * n_kv + 24 * n_tensors > cur.left():
        raise LangNeuronsError(f"{label} is truncated or corrupt inside its GGUF header: {n_tensors} tensors and "
                               f"{n_kv} metadata keys cannot fit in the {cur.left()} bytes left")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        (vtype,) = cur.unpack("<I")
        meta[key] = _value(cur, vtype)
    tensors, end = [], 0
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        (nd,) = cur.unpack("<I")
        if nd > 8:
            raise LangNeuronsError(f"{label}: corrupt GGUF tensor table ({name}: {nd} dimensions)")
        dims = cur.unpack(f"<{nd}Q")
        ttype, offset = cur.unpack("<IQ")
        try:
            block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise LangNeuronsError(f"{label}: tensor {name} has GGML type {ttype}, which the gguf package does "
                                   "not know (a newer quantization? upgrade gguf)") from None
        n = 1
        for d in dims:
            n *= d
        tensors.append(TensorInfo(name, tuple(dims), ttype, offset))
        end = max(end, offset + n // block * nbytes)
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0:
        raise LangNeuronsError(f"{label}: corrupt GGUF header (general.alignment {align!r})")
    data_start = -(-cur.pos // align) * align
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise LangNeuronsError(f"{label}: the GGUF header has no general.architecture")
    name = meta.get("general.name")
    header = GGUFHeader(version, arch, name if isinstance(name, str) else None, n_tensors, meta,
                        meta.get("tokenizer.ggml.model"), data_start + end, tuple(tensors))
    if size < header.needed_size:
        raise LangNeuronsError(f"{label} is truncated: {size} bytes, its tensor table needs {header.needed_size} "
                               f"({header.needed_size - size} missing: an incomplete download or a missing chunk)")
    return header


# ---- the header against itself ----------------------------------------------------------------------------------
UNIFORM = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "stablelm", "starcoder2",
           "gpt2", "olmo", "olmo2", "granite", "command-r", "nemotron", "exaone", "internlm2", "bloom", "falcon")
"""Dense decoders whose blocks all hold the same tensors: a block lacking one the others hold is refused
before conversion (other architectures, hybrids and mixtures of experts among them, may vary by block;
for them the conversion's own report of missing weights is the check)."""

_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


def _kind(name: str) -> tuple[int | None, str]:
    """``blk.3.ffn_down.weight`` -> (3, "ffn_down.weight"); ``token_embd.weight`` -> (None, "token_embd.weight")."""
    m = _BLK.match(name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


def _arch_names(arch: str) -> list[re.Pattern] | None:
    """The tensor names the ``gguf`` package knows for ``arch`` (patterns over the base name, any suffix
    such as ``.weight`` or ``.bias``), or None where it does not know the architecture."""
    try:
        from gguf.constants import MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES
    except ImportError:  # pragma: no cover - gguf is a dependency
        return None
    by_name = {v: k for k, v in MODEL_ARCH_NAMES.items()}
    if arch not in by_name:
        return None
    return [re.compile("^" + re.escape(TENSOR_NAMES[t]).replace(re.escape("{bid}"), r"\d+") + r"(\.[A-Za-z0-9_]+)*$")
            for t in MODEL_TENSORS[by_name[arch]]]


def _int_key(header: GGUFHeader, key: str, label: str) -> int | None:
    v = header.metadata.get(f"{header.architecture}.{key}")
    if v is None or isinstance(v, tuple):  # absent, or an array (a per-layer value)
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise LangNeuronsError(f"{label}: corrupt GGUF header ({header.architecture}.{key} is {v!r}, not a count)")
    return v


def check_structure(header: GGUFHeader, label: str) -> None:
    """The header agrees with itself: no tensor twice; the tensor names are the architecture's; the blocks
    the tensor table holds are exactly ``block_count``'s; the shape keys match the tensors; in a dense
    decoder every block holds what the others hold. One line naming the first problem."""
    arch = header.architecture
    names = [t.name for t in header.tensors]
    twice = [n for n, c in Counter(names).items() if c > 1]
    if twice:
        raise LangNeuronsError(f"{label}: the tensor table holds {twice[0]} {Counter(names)[twice[0]]} times")
    known = _arch_names(arch)
    if known is not None:
        for n in names:
            if not any(p.match(n) for p in known):
                raise LangNeuronsError(f"{label}: tensor {n} is not a tensor of architecture {arch!r} (its "
                                       f"general.architecture); a mislabelled or damaged file")
    blocks: dict[int, set[str]] = {}
    for n in names:
        b, kind = _kind(n)
        if b is not None:
            blocks.setdefault(b, set()).add(kind)
    count = _int_key(header, "block_count", label)
    if count is None:
        if blocks:
            raise LangNeuronsError(f"{label}: the GGUF header has no {arch}.block_count, but its tensor table holds "
                                   f"{len(blocks)} blocks")
    else:
        beyond = sorted(b for b in blocks if b >= count)
        if beyond:
            raise LangNeuronsError(f"{label}: {arch}.block_count is {count}, but the tensor table holds block "
                                   f"{beyond[0]} (blk.{beyond[0]}.*)")
        empty = [b for b in range(count) if b not in blocks]
        if empty:
            raise LangNeuronsError(
                f"{label}: {arch}.block_count is {count}, but the tensor table holds no tensor of block {empty[0]}"
                f" ({len(empty)} of {count} blocks empty; they would be random weights)")
    if arch in UNIFORM and blocks:
        every = set.union(*blocks.values())
        for b in sorted(blocks):
            lacking = sorted(every - blocks[b])
            if lacking:
                others = sum(lacking[0] in k for k in blocks.values())
                raise LangNeuronsError(f"{label}: tensor blk.{b}.{lacking[0]} is missing ({others} of {len(blocks)} "
                                       f"blocks hold it; it would be a random weight)")
    _check_shapes(header, label)


_SHAPE_RULES = (("token_embd.weight", 0, "embedding_length"), ("output_norm.weight", 0, "embedding_length"),
                ("output.weight", 0, "embedding_length"), ("attn_norm.weight", 0, "embedding_length"),
                ("ffn_norm.weight", 0, "embedding_length"), ("attn_q.weight", 0, "embedding_length"),
                ("ffn_up.weight", 0, "embedding_length"), ("ffn_gate.weight", 0, "embedding_length"),
                ("ffn_down.weight", 1, "embedding_length"), ("ffn_gate.weight", 1, "feed_forward_length"),
                ("ffn_down.weight", 0, "feed_forward_length"))
"""(tensor kind, dimension, shape key): GGUF lists a matrix's dimensions input first ([in, out]); every norm
and projection that reads the residual stream is ``embedding_length`` wide, every dense MLP
``feed_forward_length`` (where that key is one number; some architectures give one per layer)."""


def _check_shapes(header: GGUFHeader, label: str) -> None:
    """The shape keys of the header against the shapes of the tensors that :data:`_SHAPE_RULES` names."""
    want = {key: _int_key(header, key, label) for key in ("embedding_length", "feed_forward_length")}
    for t in header.tensors:
        kind = _kind(t.name)[1]
        for rule_kind, dim, key in _SHAPE_RULES:
            if kind == rule_kind and want[key] is not None and (len(t.dims) <= dim or t.dims[dim] != want[key]):
                raise LangNeuronsError(f"{label}: tensor {t.name} has shape {list(t.dims)}, but "
                                       f"{header.architecture}.{key} is {want[key]}")
