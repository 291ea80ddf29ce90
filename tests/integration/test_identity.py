"""One identity per model: neurons found on one construction of a model's weights steer every other
(the activation signature agrees where the weights fingerprint, which hashes parameter names, differs);
a genuinely different model, or the same in another dtype, is still refused."""

from __future__ import annotations

import logging

import pytest
import torch

from tl_langneurons import LangNeuronsError, find_neurons, load_model
from tl_langneurons.model.identity import SIGNATURE_RTOL, activation_signature, signature_distance
from tl_langneurons.model.load import weights_fingerprint


@pytest.fixture(scope="module")
def found(tiny_dirs, tiny_corpus):
    return find_neurons(load_model(str(tiny_dirs["llama"])), tiny_corpus, k=5, progress=False)


def test_find_records_a_signature_the_fallback_reproduces(found, tiny_dirs):
    sig = found.meta["activation_signature"]
    assert len(sig["values"]) == len(sig["tokens"]) * len(sig["units"]) and sig["tokens"][0] == 1  # BOS first
    hf = load_model(str(tiny_dirs["llama"]), backend="hf")  # another wrapper: float reorderings at most
    assert signature_distance(sig, hf, found.index) < 1e-5
    assert activation_signature(hf, found.index)["units"] == sig["units"]


def test_same_weights_other_layout_is_accepted(found, tiny_dirs, caplog):
    """A wrapper whose parameters hash differently (as a user's own HookedTransformer does) is accepted
    when its activations agree, with a note saying so."""
    model = load_model(str(tiny_dirs["llama"]))
    model._tl_langneurons_fingerprint = "0123456789abcdef"  # what another construction's names would hash to
    assert weights_fingerprint(model) != found.meta["weights_sha"]
    with caplog.at_level(logging.WARNING):
        found.check_model(model)
    assert "the activations at their sites agree" in caplog.text


def test_different_weights_and_dtype_are_refused(found, tiny_dirs):
    model = load_model(str(tiny_dirs["llama"]))
    with torch.no_grad():  # one MLP weight of block 1 changed by 1%: another model
        model.original_model.model.layers[1].mlp.up_proj.weight.mul_(1.01)
    d = signature_distance(found.meta["activation_signature"], model, found.index)
    assert d > 10 * SIGNATURE_RTOL
    with pytest.raises(LangNeuronsError, match="weights differ"):
        found.check_model(model)
    half = load_model(str(tiny_dirs["llama"]), dtype="bfloat16")
    assert signature_distance(found.meta["activation_signature"], half, found.index) > 10 * SIGNATURE_RTOL
    with pytest.raises(LangNeuronsError, match="weights differ"):
        found.check_model(half)
