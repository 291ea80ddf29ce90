"""Generation of many prompts at once (``generate_many``): left-padded batches give every
(prompt, seed) exactly the tokens it gets alone, on the bridge and on the fallback backend, with
and without clamp hooks; the left-padded prompt pass has the logits of the unpadded one."""

import pytest
import torch

from tl_langneurons import LangNeuronsError, load_model, resolve_sites
from tl_langneurons.model.driver import Runner
from tl_langneurons.steer.generation import (
    GenerationConfig,
    Sample,
    generate,
    generate_many,
)
from tl_langneurons.steer.interventions import clamp_hooks

PROMPTS = [None, "Der Hund", "The weather today is fine and the sun", "日本語の文", [5, 17, 42, 99, 7, 300, 12]]


@pytest.fixture(scope="module", params=["bridge", "hf"])
def model(request, tiny_llama, tiny_dirs):
    return tiny_llama if request.param == "bridge" else load_model(str(tiny_dirs["llama"]), backend="hf")


def _clamp(model):
    index = resolve_sites(model, "mlp_post")
    neurons = torch.tensor([3, 20, 48 + 7, 2 * 48 + 11, 2 * 48 + 40])  # in all three layers (d_mlp 48)
    return clamp_hooks(index, neurons, torch.full((5,), 6.0))


@pytest.mark.parametrize("with_hooks", [False, True])
def test_mixed_batch_equals_each_alone(model, with_hooks):
    hooks = _clamp(model) if with_hooks else []
    requests = [(p, s) for s in (3, 11) for p in PROMPTS]  # interleaved: sorting by length reorders them
    mixed = generate_many(model, requests, max_new_tokens=10, batch_size=len(requests), fwd_hooks=hooks,
                          stop_at_eos=False)
    assert [(s.prompt, s.seed) for s in mixed] == [(p, s) for p, s in requests]
    for (prompt, seed), got in zip(requests, mixed):
        alone = generate_many(model, [(prompt, seed)], max_new_tokens=10, batch_size=1, fwd_hooks=hooks,
                              stop_at_eos=False)[0]
        assert alone.tokens == got.tokens and alone.text == got.text, (prompt, seed)
        assert len(got.tokens) == 10
    assert len({tuple(s.tokens) for s in mixed}) == len(mixed)
    # small batches (several padded batches) and the uncached path give the same tokens too
    small = generate_many(model, requests, max_new_tokens=10, batch_size=3, fwd_hooks=hooks, stop_at_eos=False)
    uncached = generate_many(model, requests, max_new_tokens=10, fwd_hooks=hooks, stop_at_eos=False, use_cache=False)
    assert [s.tokens for s in small] == [s.tokens for s in uncached] == [s.tokens for s in mixed]


def test_hooks_change_prompted_generation(model):
    requests = [(p, 1) for p in PROMPTS]
    plain = generate_many(model, requests, max_new_tokens=8, stop_at_eos=False)
    clamped = generate_many(model, requests, max_new_tokens=8, fwd_hooks=_clamp(model), stop_at_eos=False)
    assert [s.tokens for s in plain] != [s.tokens for s in clamped]


def test_generate_is_generate_many_of_one_prompt(model):
    cfg = GenerationConfig(max_new_tokens=8, seeds=[4, 5, 6], prompt="Der Hund", batch_size=2, stop_at_eos=False)
    one = generate(model, cfg)
    many = generate_many(model, [("Der Hund", s) for s in (4, 5, 6)], max_new_tokens=8, stop_at_eos=False)
    assert [(s.seed, s.tokens, s.prompt) for s in one] == [(s.seed, s.tokens, s.prompt) for s in many]


def test_stop_at_eos_in_a_mixed_batch(model):
    requests = [(p, s) for p in PROMPTS[:3] for s in range(1, 7)]
    full = generate_many(model, requests, max_new_tokens=12, stop_at_eos=False)
    # the random model never writes its EOS: make a token it does write the EOS for this test
    eos, real_eos = full[0].tokens[4], model.tokenizer.eos_token_id
    model.tokenizer.eos_token_id = eos
    try:
        cut = generate_many(model, requests, max_new_tokens=12, stop_at_eos=True)
        alone = [generate_many(model, [r], max_new_tokens=12)[0] for r in requests[::5]]
    finally:
        model.tokenizer.eos_token_id = real_eos
    assert model.tokenizer.eos_token_id == real_eos
    for f, c in zip(full, cut):
        assert c.tokens == (f.tokens[: f.tokens.index(eos)] if eos in f.tokens else f.tokens)
    assert len(cut[0].tokens) == full[0].tokens.index(eos) <= 4
    assert [a.tokens for a in alone] == [c.tokens for c in cut[::5]]


def test_token_ids_prompt_gets_bos_once(model):
    runner = Runner(model)
    text_ids = model.tokenizer("Der Hund", add_special_tokens=False)["input_ids"]
    a, b, c = generate_many(model, [("Der Hund", 1), (text_ids, 1), ([runner.bos_id] + text_ids, 1)],
                            max_new_tokens=6, stop_at_eos=False)
    assert a.tokens == b.tokens == c.tokens
    assert b.prompt == text_ids and isinstance(a, Sample)


def test_left_padded_prompt_logits_equal_unpadded(model):
    runner = Runner(model)
    tok = model.tokenizer
    seqs = [[runner.bos_id] + tok(t, add_special_tokens=False)["input_ids"]
            for t in ("Hi", "The weather today is fine and the sun shines", "Der Hund schläft im Garten.")]
    longest = max(map(len, seqs))
    ids = torch.full((len(seqs), longest), runner.pad_id)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, longest - len(s):] = torch.tensor(s)
        mask[r, longest - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        padded = runner.hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        for r, s in enumerate(seqs):
            alone = runner.hf(input_ids=torch.tensor([s]), use_cache=False).logits[0]
            torch.testing.assert_close(padded[r, longest - len(s):], alone, atol=1e-4, rtol=0)
            assert torch.isfinite(padded[r]).all()
    # the KV-cached step after a padded prompt pass: next token's logits equal the unpadded ones
    nxt = torch.tensor([[7]] * len(seqs))
    with torch.no_grad():
        _, past = runner.step(ids, None, attention_mask=mask, position_ids=pos)
        got, _ = runner.step(nxt, past, attention_mask=torch.cat([mask, torch.ones_like(nxt)], 1),
                             position_ids=pos[:, -1:] + 1)
        for r, s in enumerate(seqs):
            want, _ = runner.step(torch.tensor([s + [7]]), None)
            torch.testing.assert_close(got[r], want[0], atol=1e-4, rtol=0)


def test_generate_many_errors(model):
    with pytest.raises(LangNeuronsError, match="max_new_tokens"):
        generate_many(model, [(None, 1)], max_new_tokens=0)
    with pytest.raises(LangNeuronsError, match="temperature"):
        generate_many(model, [(None, 1)], temperature=float("nan"))
    assert generate_many(model, [], max_new_tokens=3) == []


@pytest.mark.parametrize("arch", ["xglm", "bloom"])
def test_other_positions_schemes(tiny_dirs, arch):
    """XGLM's learned positions take ``position_ids``; BLOOM's ALiBi takes positions from the mask."""
    model = load_model(str(tiny_dirs[arch]))
    requests = [(p, s) for p in PROMPTS for s in (1, 2)]
    mixed = generate_many(model, requests, max_new_tokens=8, stop_at_eos=False)
    for r, got in zip(requests, mixed):
        assert generate_many(model, [r], max_new_tokens=8, stop_at_eos=False)[0].tokens == got.tokens, r


def test_grouped_hooks_give_each_group_its_own_tokens(tiny_llama):
    """Requests of several interventions in one batch get the tokens their intervention gives alone."""
    import torch

    from tl_langneurons import resolve_sites
    from tl_langneurons.steer.generation import generate_many
    from tl_langneurons.steer.interventions import clamp_hooks

    idx = resolve_sites(tiny_llama, "mlp_post")
    hooks = [[], clamp_hooks(idx, torch.tensor([0, 5, 50]), torch.full((3,), 3.0)),
             clamp_hooks(idx, torch.tensor([7, 60, 100]), torch.full((3,), -2.0))]
    requests = [(p, s) for p in (None, "Der Hund") for s in (1, 2, 3)]
    groups = [i % 3 for i in range(len(requests))]
    mixed = generate_many(tiny_llama, requests, max_new_tokens=6, stop_at_eos=False, batch_size=4,
                          groups=groups, group_hooks=hooks)
    for g in range(3):
        mine = [r for r, x in zip(requests, groups) if x == g]
        alone = generate_many(tiny_llama, mine, max_new_tokens=6, stop_at_eos=False, fwd_hooks=hooks[g])
        assert [s.tokens for s, x in zip(mixed, groups) if x == g] == [s.tokens for s in alone]
    assert len({tuple(s.tokens) for s in mixed}) > len(requests) // 2
