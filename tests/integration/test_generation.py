"""Generation: a sample depends only on its seed (not its batch), KV-cached equals uncached
(the guard against transformers' KV-cache break), and hooks never outlive a call."""

import pytest
import torch
from torch import nn

from tl_langneurons import LangNeuronsError
from tl_langneurons.detect.neurons import find_neurons
from tl_langneurons.steer.generation import GenerationConfig, generate, sample_next


def _hooks_on(model: nn.Module) -> int:
    n = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return n + sum(len(getattr(hp, "_forward_hooks", {})) for hp in getattr(model, "hook_dict", {}).values()
                   if isinstance(hp, nn.Module))


@pytest.fixture(scope="module")
def clamp(tiny_llama, tiny_corpus):
    return find_neurons(tiny_llama, tiny_corpus, k=10, progress=False).hooks("ja", "both")


@pytest.mark.parametrize("with_hooks", [False, True])
def test_batch_equals_alone(tiny_llama, clamp, with_hooks):
    hooks = clamp if with_hooks else []
    cfg = GenerationConfig(max_new_tokens=12, seeds=[1, 2, 3, 4, 5], batch_size=5, stop_at_eos=False)
    batched = generate(tiny_llama, cfg, hooks)
    for s in batched:
        alone = generate(tiny_llama, GenerationConfig(max_new_tokens=12, seeds=[s.seed], batch_size=1, stop_at_eos=False), hooks)
        assert alone[0].tokens == s.tokens
    assert len({tuple(s.tokens) for s in batched}) > 1  # seeds differ


@pytest.mark.parametrize("prompt", [None, "The weather today"])
def test_cached_equals_uncached(tiny_llama, clamp, prompt):
    kw = dict(max_new_tokens=10, seeds=[7, 8, 9], prompt=prompt, stop_at_eos=False)
    cached = generate(tiny_llama, GenerationConfig(use_cache=True, **kw), clamp)
    uncached = generate(tiny_llama, GenerationConfig(use_cache=False, **kw), clamp)
    assert [s.tokens for s in cached] == [s.tokens for s in uncached]


def test_clamp_changes_generation(tiny_llama, clamp):
    cfg = GenerationConfig(max_new_tokens=10, seeds=list(range(1, 9)), stop_at_eos=False)
    assert [s.tokens for s in generate(tiny_llama, cfg)] != [s.tokens for s in generate(tiny_llama, cfg, clamp)]


def test_hooks_removed_after_errors(tiny_llama, clamp):
    before = _hooks_on(tiny_llama)

    def boom(x, hook):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(tiny_llama, GenerationConfig(max_new_tokens=3, seeds=[1]), clamp + [("blocks.1.mlp.hook_post", boom)])
    assert _hooks_on(tiny_llama) == before
    generate(tiny_llama, GenerationConfig(max_new_tokens=3, seeds=[1]), clamp)
    assert _hooks_on(tiny_llama) == before


def test_sampling_follows_probabilities():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    gens = [torch.Generator().manual_seed(s) for s in range(2000)]
    draws = torch.cat([sample_next(logits, 1.0, [g]) for g in gens])
    freq = torch.bincount(draws, minlength=3).double() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), atol=0.04)


def test_config_errors():
    with pytest.raises(LangNeuronsError, match="seed list is empty"):
        GenerationConfig(seeds=[])
    with pytest.raises(LangNeuronsError, match="temperature must be positive"):
        GenerationConfig(temperature=0)
    with pytest.raises(LangNeuronsError, match="duplicates"):
        GenerationConfig(seeds=[1, 1])


@pytest.mark.parametrize("backend", ["bridge", "hf"])
def test_generate_inside_user_hooks_context(tiny_dirs, tiny_corpus, backend):
    """The README pattern: `with model.hooks(neurons.hooks("de")): generate(...)` clamps every step."""
    from tl_langneurons import load_model

    model = load_model(str(tiny_dirs["llama"]), backend=backend)
    neurons = find_neurons(model, tiny_corpus, k=10, progress=False)
    cfg = GenerationConfig(max_new_tokens=8, seeds=[1, 2, 3], prompt="The weather today is", stop_at_eos=False)
    inside = None
    with model.hooks(fwd_hooks=neurons.hooks("de")):
        inside = generate(model, cfg)
        again = generate(model, cfg)  # the outer hooks are still active after an inner call
    explicit = generate(model, cfg, neurons.hooks("de"))
    plain = generate(model, cfg)
    assert [s.tokens for s in inside] == [s.tokens for s in explicit] == [s.tokens for s in again]
    assert [s.tokens for s in plain] != [s.tokens for s in explicit]


def test_clamp_last_equals_all_from_bos_but_not_after_a_prompt(tiny_llama, tiny_corpus):
    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    for prompt, same in ((None, True), ("The weather today is fine and", False)):
        cfg = GenerationConfig(max_new_tokens=8, seeds=[1, 2, 3, 4], prompt=prompt, stop_at_eos=False)
        every = generate(tiny_llama, cfg, neurons.hooks("ja", "both", positions="all", scale=5.0))
        newest = generate(tiny_llama, cfg, neurons.hooks("ja", "both", positions="last", scale=5.0))
        assert ([a.tokens for a in every] == [b.tokens for b in newest]) is same, prompt
