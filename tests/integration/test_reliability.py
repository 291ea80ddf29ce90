"""Hook hygiene after normal and raising calls (bridge and fallback), and reproducibility of
evaluate (same seeds, same generations and numbers)."""


import pytest
import torch
from torch import nn

import tl_langneurons.detect.activations as activations
from tl_langneurons import load_model
from tl_langneurons.detect.neurons import find_neurons
from tl_langneurons.evaluate.control import EvaluateConfig, evaluate_control
from tl_langneurons.steer.generation import GenerationConfig, generate


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module", params=["bridge", "hf"])
def model(request, tiny_dirs):
    m = load_model(str(tiny_dirs["llama"]), backend=request.param)
    with torch.no_grad():
        m(torch.tensor([[1, 5, 6]]))  # the bridge installs its own internal hooks on the first forward
    return m


def test_no_hooks_left_after_normal_calls(model, tiny_corpus):
    before = hook_count(model)
    neurons = find_neurons(model, tiny_corpus, k=5, progress=False)
    generate(model, GenerationConfig(max_new_tokens=3, seeds=[1, 2]), neurons.hooks("de"))
    assert hook_count(model) == before


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_no_hooks_left_when_a_hook_raises(model, tiny_corpus, monkeypatch, exc):
    before = hook_count(model)

    def boom(*a, **k):
        raise exc("inside a hook")

    monkeypatch.setattr(activations, "pool", boom)
    with pytest.raises(exc):
        activations.collect(model, ["a text", "another"], "mlp_post", progress=False)
    assert hook_count(model) == before


def test_evaluate_is_reproducible(model, tiny_corpus, tmp_path):
    neurons = find_neurons(model, tiny_corpus, k=5, progress=False)
    cfg = EvaluateConfig(languages=["fr"], samples=3, max_new_tokens=5, ablation_ks=[2])
    a = evaluate_control(model, neurons, tiny_corpus.texts, cfg, tmp_path / "a", progress=False)
    b = evaluate_control(model, neurons, tiny_corpus.texts, cfg, tmp_path / "b", progress=False)
    assert a.table2 == b.table2 and a.ablation == b.ablation
    assert (tmp_path / "a" / "samples.md").read_text() == (tmp_path / "b" / "samples.md").read_text()
    assert b.meta["timings"]  # b really generated again, from scratch


def test_batch_size_does_not_change_pooled_values(model, tiny_corpus):
    texts = tiny_corpus.flat()[0][:20]
    a = activations.collect(model, texts, "mlp_post", batch_size=1, progress=False).values
    b = activations.collect(model, texts, "mlp_post", batch_size=16, progress=False).values
    assert torch.allclose(a, b, atol=1e-5)
