"""The real default model: Gemma-3-270M installed from PyPI, converted once and loaded offline."""

import pytest
import torch

from tl_langneurons import collect, resolve_sites
from tl_langneurons.cli import main
from tl_langneurons.steer.generation import GenerationConfig, generate
from tl_langneurons.steer.interventions import clamp_hooks

pytestmark = pytest.mark.real


def test_info_prints_18_layers_and_36864_neurons(capsys):
    assert main(["info", "--model", "gemma-3-270m"]) == 0
    out = capsys.readouterr().out
    assert "layers: 18" in out
    assert "site mlp_post: 36864 neurons (2048 per layer)" in out
    assert "site paper: 124416 neurons" in out


def test_batch_shapes_and_clamp_changes_output(gemma):
    tok = gemma.tokenizer
    ids = tok(["Der Hund schläft im Garten."], return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    _, cache = gemma.run_with_cache(ids, names_filter=lambda n: n.endswith("mlp.hook_post"))
    assert cache["blocks.0.mlp.hook_post"].shape == (1, ids.shape[1], 2048)
    pooled = collect(gemma, ["Der Hund schläft im Garten.", "The dog sleeps."], "mlp_post", progress=False)
    assert pooled.values.shape == (2, 36864)
    assert torch.allclose(pooled.values[0, :2048], cache["blocks.0.mlp.hook_post"][0].mean(0), atol=1e-4)
    idx = resolve_sites(gemma, "mlp_post")
    with torch.no_grad():
        plain = gemma(ids)
        with gemma.hooks(fwd_hooks=clamp_hooks(idx, torch.tensor([17 * 2048 + 5]), torch.tensor([50.0]))):
            clamped = gemma(ids)
    assert (plain - clamped).abs().max() > 1e-3


def test_cached_equals_uncached_on_gemma(gemma):
    kw = dict(max_new_tokens=8, seeds=[1, 2], stop_at_eos=False)
    a = generate(gemma, GenerationConfig(use_cache=True, **kw))
    b = generate(gemma, GenerationConfig(use_cache=False, **kw))
    assert [s.tokens for s in a] == [s.tokens for s in b]


def test_prompted_batch_equals_alone_on_gemma(gemma):
    from tl_langneurons.steer.generation import generate_many

    prompts = [None, "Der Hund schläft im", "The weather today is fine and the sun is shining over the"]
    requests = [(p, s) for p in prompts for s in (1, 2)]
    mixed = generate_many(gemma, requests, max_new_tokens=8, stop_at_eos=False)
    alone = [generate_many(gemma, [r], max_new_tokens=8, stop_at_eos=False)[0] for r in requests]
    assert [s.tokens for s in mixed] == [s.tokens for s in alone]
    assert len({tuple(s.tokens) for s in mixed}) == len(requests)


def test_gemma_samples_equal_the_recorded_ones(gemma):
    """Seeds' samples (BOS and prompted, plain and clamped) equal those of the code before the
    by-hand unembedding and the chunked sampler (tests/data/golden_samples.json)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
    from test_golden_samples import GOLDEN, gemma_key, golden_run

    entry = GOLDEN[gemma_key()]
    got = golden_run(gemma, entry)
    assert got["plain"] == entry["plain"]
    assert got["clamp"] == entry["clamp"]
