"""The script gate's mask on Gemma-3-270M's tokenizer (262k SentencePiece tokens, byte fallback) against the slow
token-by-token reference."""

import pytest

from gate_reference import slow_allowed
from tl_langneurons.steer.script_gate import script_mask, scripts_of, special_ids

pytestmark = pytest.mark.real


def test_gemma_mask_equals_the_slow_reference(gemma):
    tok = gemma.tokenizer
    special = special_ids(tok)
    for lang, latin in (("en", False), ("ru", False), ("hi", False), ("ja", False), ("zh", False), ("ja", True)):
        got = script_mask(tok, lang, latin)
        want = [slow_allowed(tok, i, scripts_of(lang, latin), special) for i in range(len(tok))]
        bad = [i for i, (a, b) in enumerate(zip(got.tolist(), want)) if a != b]
        assert not bad, (lang, latin, [(i, tok.convert_ids_to_tokens(i)) for i in bad[:10]])
        assert 0.05 < sum(want) / len(want) < 0.95
    assert script_mask(tok, "ja")[tok.encode("日本", add_special_tokens=False)].all()
    assert not script_mask(tok, "ja")[tok.encode(" the", add_special_tokens=False)].any()
    assert script_mask(tok, "ja")[tok.eos_token_id]
