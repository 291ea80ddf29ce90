"""``rank_units`` ranks activations a user already has (a ``run_with_cache`` result with its attention
mask, or a pooled matrix) and equals ``find_neurons`` on the same texts: pooled values, AP, and every
selector's sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tl_langneurons as tln
from tl_langneurons.detect.activations import tokenize
from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.model.driver import Runner


def _caches(model, texts, batch=8):
    """The user's way: the model's own tokenization (BOS first), right-padded batches, run_with_cache on
    the MLP activations, the attention mask beside each cache."""
    runner = Runner(model)
    ids = tokenize(runner, texts).ids
    caches, masks = [], []
    for i in range(0, len(ids), batch):
        toks, mask = runner.pad(ids[i:i + batch])
        with torch.no_grad():
            _, cache = model.run_with_cache(toks, attention_mask=mask.long(),
                                            names_filter=lambda n: n.endswith("mlp.hook_post"))
        caches.append(cache)
        masks.append(mask)
    return caches, masks


@pytest.mark.parametrize("method", ["ap", "lape", "actprob", "meandiff"])
def test_rank_units_equals_find_neurons(tiny_llama, tiny_corpus, method):
    found, pooled, labels = tln.find_neurons(tiny_llama, tiny_corpus, k=6, method=method, progress=False,
                                             return_activations=True)
    texts, _ = tiny_corpus.flat()
    caches, masks = _caches(tiny_llama, texts)
    codes = [tiny_corpus.languages[i] for i in labels]
    mine = tln.rank_units(caches, codes, tiny_corpus.languages, attention_mask=masks, k=6, selector=method)
    assert mine.index.n_neurons == found.index.n_neurons
    assert [s.hook for s in mine.index.slices] == [s.hook for s in found.index.slices]
    torch.testing.assert_close(mine.ap, found.ap, rtol=0, atol=1e-6)
    for lang in found.languages:
        for which in ("top", "bottom"):
            assert mine.sets[lang][which].neurons.tolist() == found.sets[lang][which].neurons.tolist(), (lang, which)
    # the pooled matrix as a tensor, with its language ids: the same ranking (AP, mean-diff)
    if method in ("ap", "meandiff"):
        again = tln.rank_units(pooled.values, labels, tiny_corpus.languages, k=6, selector=method, index=pooled.index)
        assert torch.equal(again.ap, found.ap)
        assert all(again.sets[l][w].neurons.tolist() == found.sets[l][w].neurons.tolist()
                   for l in found.languages for w in ("top", "bottom"))


def test_rank_units_single_hook_and_bad_input(tiny_llama, tiny_corpus):
    """One hook on one layer (as an SAE's latents are): ranked alone; and bad input is one clear error."""
    texts, labels = tiny_corpus.flat()
    caches, masks = _caches(tiny_llama, texts, batch=len(texts))
    codes = [tiny_corpus.languages[i] for i in labels]
    one = tln.rank_units(caches[0], codes, attention_mask=masks[0], sites="blocks.1.mlp.hook_post", k=3)
    assert [s.layer for s in one.index.slices] == [1] and one.languages == list(dict.fromkeys(codes))
    with pytest.raises(LangNeuronsError, match="labels for"):
        tln.rank_units(caches[0], codes[:-1], attention_mask=masks[0])
    with pytest.raises(LangNeuronsError, match="is not in the activations"):
        tln.rank_units(caches[0], codes, attention_mask=masks[0], sites="blocks.{l}.hook_resid_post")
    with pytest.raises(LangNeuronsError, match="attention mask of shape"):
        tln.rank_units(caches[0], codes, attention_mask=masks[0][:, :2])
    with pytest.raises(LangNeuronsError, match="needs the token statistics"):
        tln.rank_units(torch.randn(len(codes), 10), codes, selector="lape", k=2)
    with pytest.raises(LangNeuronsError, match="pass languages"):
        tln.rank_units(torch.randn(4, 10), np.array([0, 1, 0, 1]), k=2)
