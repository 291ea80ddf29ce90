"""A slow reference of the script gate (tl_langneurons/steer/script_gate.py), token by token: each token decoded
alone, each character's class from its Unicode category and a scan of the script ranges, and a fragment's
trailing partial character judged by decoding every completion of it. The tests compare the vectorised mask
with it."""

from __future__ import annotations

import codecs
import functools
import itertools
import unicodedata

from tl_langneurons.steer import script_gate as sg


def slow_class(ch: str) -> int:
    cp, cat = ord(ch), unicodedata.category(ch)
    if cat in ("Cn", "Co", "Cs"):
        return sg.OTHER
    if any(lo <= cp <= hi for lo, hi in sg.SHARED) or cat[0] not in "LM":
        return 0
    for bit, ranges in sg.RANGES.items():
        if any(lo <= cp <= hi for lo, hi in ranges):
            return bit
    return sg.OTHER


@functools.cache
def completions(pending: bytes) -> int:
    """The classes of every character the partial UTF-8 sequence ``pending`` can become."""
    need = 2 if pending[0] < 0xE0 else 3 if pending[0] < 0xF0 else 4
    out = 0
    for rest in itertools.product(range(0x80, 0xC0), repeat=need - len(pending)):
        try:
            out |= slow_class((pending + bytes(rest)).decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return out


def slow_allowed(tok, i: int, allow: int, special: set[int]) -> bool:
    """Whether token ``i`` is allowed under the script bits ``allow``."""
    if i in special:
        return True
    text = tok.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    raw = sg.piece_bytes(tok.convert_ids_to_tokens(i)) if "\ufffd" in text else None
    if raw is None:
        return all(not slow_class(c) & ~allow for c in text)
    raw = raw.lstrip(bytes(range(0x80, 0xC0)))  # finishing a character begun before
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        whole = dec.decode(raw, final=False)
    except UnicodeDecodeError:
        return False
    pending = dec.getstate()[0]
    if any(slow_class(c) & ~allow for c in whole):
        return False
    if not pending:
        return True
    can = completions(pending)
    return can == 0 or bool(can & allow)
