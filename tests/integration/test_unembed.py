"""The by-hand unembedding gives the model's own logits (bit for bit with mm, within rounding with
oneDNN) and the chunked token NLL equals the full-logits reference."""

import pytest
import torch

from tl_langneurons.model.driver import Runner
from tl_langneurons.model.unembed import Unembed
from tl_langneurons.steer.generation import Sample, generate_many, sample_nll


def test_step_equals_the_models_forward_bit_for_bit(tiny_llama):
    """One new position per row (every step from BOS, every step after a prompt): bit for bit. The
    prompt pass multiplies only the last position (the model's forward multiplies all of them, a
    matrix of other shape): equal within float rounding."""
    runner = Runner(tiny_llama)
    head = Unembed(runner, "mkl")
    assert head.active and head.kernel == "mkl"
    bos = torch.tensor([[1], [1]])
    assert torch.equal(head.step(bos)[0], runner.step(bos)[0])
    ids = torch.tensor([[1, 40, 41, 42], [1, 50, 51, 52]])
    ref, past_ref = runner.step(ids)
    got, past = head.step(ids)
    assert torch.allclose(got, ref, atol=1e-5)
    nxt = torch.tensor([[7], [9]])
    assert torch.equal(head.step(nxt, past)[0], runner.step(nxt, past_ref)[0])


def test_hook_on_the_unembedding_takes_the_models_path(tiny_llama):
    runner = Runner(tiny_llama)
    head = Unembed(runner, "mkl")
    name = next((n for n in tiny_llama.hook_dict if n.startswith("unembed")), None)
    if name is None:
        pytest.skip("this model has no unembed hook point")
    seen = []
    with tiny_llama.hooks(fwd_hooks=[(name, lambda x, hook: seen.append(1))]):
        assert not head.active
        head.step(torch.tensor([[1, 40]]))
    assert seen  # the user's hook fired
    assert head.active


@pytest.mark.parametrize("kernel", ["mkl", "onednn", "model"])
def test_token_nll_equals_the_full_logits_reference(tiny_llama, kernel):
    runner = Runner(tiny_llama)
    seqs = [[1, 40, 41, 42, 43, 44], [1, 50, 51], [1, 60, 61, 62, 63]]
    starts = [3, 1, 2]
    got = Unembed(runner, kernel).token_nll(seqs, starts, batch_size=2, chunk=3)
    ids, mask = runner.pad(seqs)
    lp = runner.next_token_logprobs(ids, mask)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        ref = [-float(lp[i, t - 1]) for t in range(st, len(s))]
        assert got[i] == pytest.approx(ref, abs=1e-5)


def test_sample_nll_uses_each_samples_own_prompt(tiny_llama):
    out = generate_many(tiny_llama, [("Der Hund", 1), (None, 2)], max_new_tokens=5, stop_at_eos=False)
    nll = sample_nll(tiny_llama, out)
    runner = Runner(tiny_llama)
    prompt = [1] + runner.tokenizer("Der Hund", add_special_tokens=False)["input_ids"]
    ids, mask = runner.pad([prompt + out[0].tokens])
    lp = runner.next_token_logprobs(ids, mask)[0, len(prompt) - 1:]
    assert nll[0] == pytest.approx(float(-lp.mean()), abs=1e-5)
    assert sample_nll(tiny_llama, [Sample(3, [], "", None)]) != sample_nll(tiny_llama, [Sample(3, [], "", None)])  # nan
