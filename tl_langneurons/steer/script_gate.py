"""A decoding-time script gate: the tokens whose letters fall outside a language's scripts masked while sampling.

The rule-based counterpart of the Language Confusion Gate (ICLR 2026), which masks the tokens of the wrong
language family with a learned gate: here a token is allowed towards a language when every letter (and
combining mark) it writes belongs to one of the language's scripts (:data:`SCRIPTS`). Digits, punctuation,
symbols, whitespace and controls are allowed everywhere (code's ASCII operators and brackets among them), so
are combining marks shared by every script (U+0300-036F and kin), and so are the tokens the tokenizer marks
special (EOS, end of turn: they are no text, and masking them would change where an answer stops). Letters of
any script not named (Greek, Thai, private use, unassigned code points) are masked.

Tokens are read as they decode alone. A token that decodes to a replacement character (U+FFFD) is a
fragment of a character (a byte of SentencePiece's byte fallback, ``<0xE3>``, or a piece of byte-level
BPE): its bytes are read from its piece, whole characters inside it are judged as above, leading
continuation bytes are allowed (they finish a character an allowed token began), and a trailing partial
character is allowed when the code points it can begin hold a letter of the language's scripts (``0xE3``:
U+3000-3FFF, kana for Japanese; no Latin letter, so masked in German). A fragment whose bytes cannot be read
(neither form) is judged by its whole characters alone.

``latin=True`` also allows Latin letters towards the languages of other scripts (code identifiers and names in
a Japanese answer); without it an English line cannot be written in a Japanese answer at all.
The mask is built once per (tokenizer, language, latin) from one ``batch_decode`` of the vocabulary and a
table of every code point's class (numpy), and kept in memory (``benchmarks/bench_script_gate.py``).

Example:
    >>> allowed_letter("ja", "ア"), allowed_letter("ja", "A"), allowed_letter("ja", "A", latin=True)
    (True, False, True)
"""

from __future__ import annotations

import functools
import re
import unicodedata
import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor

from ..errors import LangNeuronsError

GATE_VERSION = 1  # recorded in the cache keys of gated samples: a change of the rules below makes new keys
LATIN, CYRILLIC, ARABIC, DEVANAGARI, HAN, HIRAGANA, KATAKANA, HANGUL, OTHER = (1 << i for i in range(9))

# the letters (and marks) of each script by code point ranges (the Unicode blocks that hold them)
RANGES = {
    LATIN: [(0x41, 0x5A), (0x61, 0x7A), (0xAA, 0xAA), (0xBA, 0xBA), (0xC0, 0x24F), (0x250, 0x2FF), (0x1D00, 0x1DBF),
            (0x1E00, 0x1EFF), (0x2071, 0x209C), (0x2C60, 0x2C7F), (0xA720, 0xA7FF), (0xAB30, 0xAB6F), (0xFB00, 0xFB06), (0xFF21, 0xFF3A),
            (0xFF41, 0xFF5A)],
    CYRILLIC: [(0x400, 0x52F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F)],
    ARABIC: [(0x600, 0x6FF), (0x750, 0x77F), (0x870, 0x8FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)],
    DEVANAGARI: [(0x900, 0x97F), (0xA8E0, 0xA8FF), (0x11B00, 0x11B5F)],
    HAN: [(0x2E80, 0x2FDF), (0x3005, 0x3007), (0x3021, 0x3029), (0x3038, 0x303B), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
          (0xF900, 0xFAFF), (0x20000, 0x323AF)],
    HIRAGANA: [(0x3031, 0x3035), (0x3041, 0x309F), (0x1B000, 0x1B16F)],
    KATAKANA: [(0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F)],
    HANGUL: [(0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF), (0xFFA0, 0xFFDC)],
}
# allowed everywhere, as punctuation is: the combining marks every script uses (Unicode's "Inherited"), and the
# letters that serve as symbols (letterlike symbols such as the Kelvin sign and the litre, mathematical letters)
SHARED = [(0x300, 0x36F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0x2100, 0x214F), (0xFE20, 0xFE2F),
          (0x1D400, 0x1D7FF)]
SCRIPTS = {**{l: LATIN for l in ("de", "en", "es", "fr", "id", "it", "pt", "tr", "vi")}, "ru": CYRILLIC,
           "ar": ARABIC, "hi": DEVANAGARI, "zh": HAN, "ja": HAN | HIRAGANA | KATAKANA, "ko": HANGUL | HAN}
"""The scripts of each LCB language (``confusion.LANGUAGE_NAMES``): the letters a gated answer may write."""


def scripts_of(lang: str, latin: bool = False) -> int:
    """The script bits ``lang`` allows (with Latin where ``latin``); one clear line for a language without an entry."""
    if lang not in SCRIPTS:
        raise LangNeuronsError(f"the script gate has no scripts for {lang!r}; it knows {', '.join(sorted(SCRIPTS))}")
    return SCRIPTS[lang] | (LATIN if latin else 0)


@functools.cache
def code_point_classes() -> np.ndarray:
    """Every code point's class: 0 for what any language may write (digits, punctuation, symbols, separators,
    controls, format characters, shared combining marks), a script's bit for its letters and marks, OTHER for
    any other letter or mark and for private-use, unassigned and surrogate code points. Built once (~0.5 s)."""
    kind = {"L": 1, "M": 1, "Cn": 2, "Co": 2, "Cs": 2}
    cats = np.frombuffer(bytes(kind.get(c, kind.get(c[0], 0)) for c in map(unicodedata.category, map(chr, range(0x110000)))),
                         dtype=np.uint8)
    out = np.where(cats == 1, OTHER, 0).astype(np.uint16)
    for bit, ranges in RANGES.items():
        for lo, hi in ranges:
            part = out[lo:hi + 1]
            part[part == OTHER] = bit
    for lo, hi in SHARED:
        out[lo:hi + 1] = 0
    out[cats == 2] = OTHER
    return out


def allowed_letter(lang: str, ch: str, latin: bool = False) -> bool:
    """Whether the gate towards ``lang`` lets the character ``ch`` be written."""
    return not int(code_point_classes()[ord(ch)]) & ~scripts_of(lang, latin)


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's characters back to the bytes they stand for (GPT-2's ``bytes_to_unicode``, inverted)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def piece_bytes(piece: str) -> bytes | None:
    """The bytes of a fragment's piece: SentencePiece's byte fallback (``<0xE3>``) or a piece of byte-level BPE;
    None when it is neither."""
    m = _BYTE_PIECE.fullmatch(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    dec = _byte_decoder()
    return bytes(dec[c] for c in piece) if piece and all(c in dec for c in piece) else None


@functools.cache
def _span_classes(lo: int, hi: int) -> int:
    """The classes of the code points lo..hi together (what a partial character may still become)."""
    return int(np.bitwise_or.reduce(code_point_classes()[lo:hi + 1]))


def fragment_classes(b: bytes) -> tuple[int, int]:
    """A fragment's (classes of its whole characters, classes a trailing partial character can become; 0: none).
    Leading continuation bytes finish a character begun before and count as nothing; a byte no UTF-8 text holds
    there is OTHER."""
    classes, i, bits = code_point_classes(), 0, 0
    while i < len(b) and 0x80 <= b[i] < 0xC0:
        i += 1
    while i < len(b):
        lead = b[i]
        need = 1 if lead < 0x80 else 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF5 else 0
        seq = b[i:i + need]
        if need == 0 or any(not 0x80 <= c < 0xC0 for c in seq[1:]):
            return bits | OTHER, 0
        if len(seq) == need:
            try:
                bits |= int(classes[ord(seq.decode("utf-8"))])
            except UnicodeDecodeError:  # an overlong form or a surrogate
                return bits | OTHER, 0
            i += need
            continue
        cp = lead & (0x7F >> need)
        for c in seq[1:]:
            cp = (cp << 6) | (c & 0x3F)
        rest = 6 * (need - len(seq))
        lo = max(cp << rest, (0, 0, 0x80, 0x800, 0x10000)[need])
        hi = min((cp << rest) | ((1 << rest) - 1), 0x10FFFF)
        return bits, (_span_classes(lo, hi) or 0) if lo <= hi else OTHER
    return bits, 0


def special_ids(tokenizer) -> set[int]:
    """The ids the tokenizer marks special (EOS, BOS, pad, end of turn, unused): no text, never masked."""
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(t, "special", False):
            ids.add(int(i))
    return ids


_CLASSES: dict[int, tuple[weakref.ref, np.ndarray, np.ndarray]] = {}


def token_classes(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Per token id below ``len(tokenizer)``: the classes of its characters as it decodes alone, and the classes
    a fragment's trailing partial character can become (0 for most tokens); special tokens 0. Built once per
    tokenizer (kept while it lives)."""
    got = _CLASSES.get(id(tokenizer))
    if got is not None and got[0]() is tokenizer:
        return got[1], got[2]
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    per_char = code_point_classes()[np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)]
    bits, partial = np.zeros(n, np.uint16), np.zeros(n, np.uint16)
    some = lengths > 0
    if some.any():
        bits[some] = np.bitwise_or.reduceat(per_char, (np.cumsum(lengths) - lengths)[some])
    fragments = [i for i, t in enumerate(texts) if "\ufffd" in t]
    for i, piece in zip(fragments, tokenizer.convert_ids_to_tokens(fragments)):
        b = piece_bytes(piece) if isinstance(piece, str) else None
        if b is not None:  # else judged by its whole characters (U+FFFD is a symbol)
            bits[i], partial[i] = fragment_classes(b)
    special = [i for i in special_ids(tokenizer) if 0 <= i < n]
    bits[special], partial[special] = 0, 0
    try:
        ref = weakref.ref(tokenizer)
    except TypeError:
        ref = lambda tokenizer=tokenizer: tokenizer  # noqa: E731 (kept alive: it cannot be referred to weakly)
    _CLASSES[id(tokenizer)] = (ref, bits, partial)
    return bits, partial


_MASKS: dict[tuple, Tensor] = {}


def script_mask(tokenizer, lang: str, latin: bool = False, vocab: int | None = None) -> Bool[Tensor, "vocab"]:
    """The tokens the gate towards ``lang`` allows (True), over ``vocab`` ids (the model's logits; default the
    tokenizer's length): every letter in the language's scripts (with Latin where ``latin``), a fragment's
    trailing partial character able to become one; ids past the tokenizer's length are masked. Kept in memory
    per (tokenizer, lang, latin, vocab)."""
    allow = scripts_of(lang, latin)
    n = len(tokenizer)
    vocab = n if vocab is None else int(vocab)
    key = (id(tokenizer), lang, latin, vocab)
    hit = _MASKS.get(key)
    if hit is not None and _CLASSES.get(id(tokenizer), (lambda: None,))[0]() is tokenizer:
        return hit
    bits, partial = token_classes(tokenizer)
    ok = ((bits & np.uint16(~allow & 0xFFFF)) == 0) & ((partial == 0) | ((partial & allow) != 0))
    out = torch.zeros(vocab, dtype=torch.bool)
    m = min(n, vocab)
    out[:m] = torch.from_numpy(ok[:m].copy())
    _MASKS[key] = out
    return out


@dataclass(frozen=True)
class ScriptGate:
    """The script gate towards ``lang`` (with Latin letters allowed too where ``latin``): what a gated sample is
    generated under and keyed by."""

    lang: str
    latin: bool = False

    def __post_init__(self) -> None:
        scripts_of(self.lang)  # one clear line for a language without scripts

    def key(self) -> dict:
        """What the gate adds to a sample's cache key (its rules' version included)."""
        return {"kind": "script", "lang": self.lang, "latin": self.latin, "version": GATE_VERSION}

    def mask(self, tokenizer, vocab: int | None = None) -> Bool[Tensor, "vocab"]:
        """The tokens it allows (:func:`script_mask`)."""
        return script_mask(tokenizer, self.lang, self.latin, vocab)


def blocked_rows(tokenizer, gates: Sequence[ScriptGate | None], vocab: int, device) -> Bool[Tensor, "rows vocab"] | None:
    """Per row the tokens its gate masks (True; nothing for a row without a gate); None when no row has one."""
    if all(g is None for g in gates):
        return None
    masks = {g: ~g.mask(tokenizer, vocab) for g in set(gates) if g is not None}
    none = torch.zeros(vocab, dtype=torch.bool)
    return torch.stack([none if g is None else masks[g] for g in gates]).to(device)
