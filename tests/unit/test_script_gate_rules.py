"""The script gate's rules without a model: each script's letters, what every language may write, fragments of
characters read from their bytes, and a language without scripts refused in one line."""

import pytest

from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.evaluate.confusion import LANGUAGE_NAMES
from tl_langneurons.steer import script_gate as sg


def test_every_lcb_language_has_scripts():
    assert set(sg.SCRIPTS) == set(LANGUAGE_NAMES)
    with pytest.raises(LangNeuronsError, match="no scripts for 'sw'; it knows ar, de"):
        sg.ScriptGate("sw")


@pytest.mark.parametrize("lang, allowed, masked", [
    ("de", "aßÄéẞ", "жあ中한αी"),
    ("vi", "ệươ", "ж"),
    ("ru", "жЁ", "aéあ中"),
    ("ar", "عربي", "aж"),
    ("hi", "हिंदी", "aж"),
    ("zh", "中文々", "aあア한"),
    ("ja", "日本語あアーｱ", "a한ж"),
    ("ko", "한국어漢", "aあ"),
])
def test_letters_of_the_language_pass_and_others_do_not(lang, allowed, masked):
    assert all(sg.allowed_letter(lang, c) for c in allowed)
    assert not any(sg.allowed_letter(lang, c) for c in masked)


def test_digits_punctuation_code_and_shared_marks_pass_everywhere():
    neutral = "0123456789 \n\t.,;:!?()[]{}<>=+-*/%&|^~_\"'`#@$\\«»。、！？（）٠١२३—…€°\u0301\u200d℃ℓ"
    for lang in sg.SCRIPTS:
        assert all(sg.allowed_letter(lang, c) for c in neutral), lang
    assert not sg.allowed_letter("de", "\ue000")  # private use
    assert not sg.allowed_letter("de", "α") and not sg.allowed_letter("ru", "α")  # Greek: no LCB language's


def test_latin_allowed_opens_latin_letters_only():
    assert sg.allowed_letter("ja", "x", latin=True) and sg.allowed_letter("ru", "é", latin=True)
    assert not sg.allowed_letter("ja", "ж", latin=True)
    assert sg.scripts_of("de", latin=True) == sg.scripts_of("de")


def test_fragments_are_read_from_their_bytes():
    assert sg.piece_bytes("<0xE3>") == b"\xe3"
    assert sg.piece_bytes("Ã©") == "é".encode()  # byte-level BPE's characters
    assert sg.piece_bytes("▁hi") is None
    lead, partial = sg.fragment_classes(b"\xe3")  # U+3000-3FFF: kana and Han, no Latin
    assert lead == 0 and partial & sg.HIRAGANA and partial & sg.HAN and not partial & sg.LATIN
    whole, partial = sg.fragment_classes(b"a\xe3\x81")  # U+3040-307F: hiragana (and unassigned U+3040)
    assert whole == sg.LATIN and partial & sg.HIRAGANA and not partial & (sg.HAN | sg.KATAKANA | sg.LATIN)
    assert sg.fragment_classes(b"\xc3") == (0, sg.LATIN)
    assert sg.fragment_classes(b"\xa9\x80") == (0, 0)  # finishes a character begun before
    assert sg.fragment_classes(b"\xc3\xa9") == (sg.LATIN, 0)
    for bad in (b"\xff", b"\xc0\x80", b"\xe3a", b"a\x80"):
        assert sg.fragment_classes(bad)[0] & sg.OTHER, bad
