"""The script gate on the tiny model (a byte-level BPE tokenizer, so fragments of characters): its mask equals the
slow token-by-token reference, gated sampling never emits a masked token and equals a loop that masks the logits
by hand, rows of other gates (or none) in one batch get their own tokens, and gated samples are keyed apart."""

import pytest
import torch

from gate_reference import slow_allowed
from tl_langneurons.evaluate.cells import Cell, CellRunner
from tl_langneurons.evaluate.control import EvaluateConfig
from tl_langneurons.evaluate.samples import SampleStore
from tl_langneurons.model.driver import Runner
from tl_langneurons.steer.generation import generate_many, sample_next, start_ids
from tl_langneurons.steer.script_gate import ScriptGate, script_mask, scripts_of, special_ids

LANGS = [("ja", False), ("de", False), ("zh", False), ("ru", False), ("ja", True)]


@pytest.mark.parametrize("lang, latin", LANGS)
def test_mask_equals_the_slow_reference(tiny_llama, lang, latin):
    tok = tiny_llama.tokenizer
    special = special_ids(tok)
    want = [slow_allowed(tok, i, scripts_of(lang, latin), special) for i in range(len(tok))]
    got = script_mask(tok, lang, latin, vocab=len(tok) + 3)
    assert got[:len(tok)].tolist() == want and not got[len(tok):].any()  # ids past the tokenizer: masked
    assert 0 < sum(want) < len(tok)


def _by_hand(model, prompt, seed, allowed, n, temperature=0.8):
    """One sample token by token: the whole sequence's logits, the masked tokens' set to -inf by hand."""
    ids, g, out = start_ids(Runner(model), prompt), torch.Generator().manual_seed(seed), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids + out]))[0, -1].float()
            if allowed is not None:
                logits = torch.where(allowed, logits, torch.tensor(float("-inf")))
            out.append(int(sample_next(logits[None], temperature, [g])[0]))
    return out


def test_gated_sampling_equals_masking_by_hand(tiny_llama):
    tok = tiny_llama.tokenizer
    gates = [ScriptGate("ja"), None, ScriptGate("de"), ScriptGate("ja"), None, ScriptGate("zh", latin=True)]
    requests = [(None, 1), (None, 2), ("The weather today", 3), ("Der Hund", 4), ("The weather today", 5), (None, 6)]
    mixed = generate_many(tiny_llama, requests, max_new_tokens=10, stop_at_eos=False, gates=gates, batch_size=6)
    plain = generate_many(tiny_llama, requests, max_new_tokens=10, stop_at_eos=False, batch_size=6)
    vocab = tiny_llama(torch.tensor([[1]])).shape[-1]
    for (prompt, seed), gate, s, p in zip(requests, gates, mixed, plain):
        allowed = None if gate is None else script_mask(tok, gate.lang, gate.latin, vocab)
        assert s.tokens == _by_hand(tiny_llama, prompt, seed, allowed, 10)
        if gate is None:
            assert s.tokens == p.tokens  # a row without a gate is untouched by its neighbours' gates
        else:
            special = special_ids(tok)
            assert all(slow_allowed(tok, t, scripts_of(gate.lang, gate.latin), special) for t in s.tokens)
    assert [s.tokens for s, g in zip(mixed, gates) if g] != [p.tokens for p, g in zip(plain, gates) if g]
    alone = [generate_many(tiny_llama, [r], max_new_tokens=10, stop_at_eos=False, gates=[g])[0].tokens
             for r, g in zip(requests, gates)]
    assert alone == [s.tokens for s in mixed]  # batch-invariant


def test_gated_cells_are_keyed_apart(tiny_llama, tiny_corpus, tmp_path):
    from tl_langneurons.detect.neurons import find_neurons

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    cfg = EvaluateConfig(languages=["ja"], samples=2, max_new_tokens=6, batch_size=4, ablation_ks=[])
    prompt = start_ids(Runner(tiny_llama), "The weather")
    cells = [Cell(None, None, (1, 2), prompt), Cell("ja", None, (1, 2), prompt, ScriptGate("ja")),
             Cell("ja", None, (1, 2), prompt, ScriptGate("ja", latin=True))]
    runner = CellRunner(tiny_llama, neurons, cfg, None, tmp_path / "cells", False, SampleStore(tmp_path / "s"))
    res = [runner._resolve(c) for c in cells]
    assert "script_gate" not in res[0]["settings"]  # an ungated cell's key is the key it always had
    assert len({r["skey"] for r in res}) == 3 and res[0]["path"].name.startswith("none-all-")
    got = runner.samples_many(cells)
    assert got[0] != got[1] and runner.generated == 6
    again = CellRunner(tiny_llama, neurons, cfg, None, tmp_path / "cells2", False, SampleStore(tmp_path / "s"))
    assert again.samples_many(cells) == got and again.generated == 0  # read back, each from its own key
    with pytest.raises(Exception, match="gate is towards its target"):
        Cell("de", None, (1,), prompt, ScriptGate("ja"))
    assert Cell("ja", None, (1,), prompt, ScriptGate("ja")).twin().gate is None
