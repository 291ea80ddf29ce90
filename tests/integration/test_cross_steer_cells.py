"""cross-steer through the one cell pipeline (``CellRunner``, the sample store): its matrices equal those
of the code it replaced (one ``generate_many`` per cell, kept below as the reference), a second run
generates nothing, and the cells a prompted sweep measured are never generated again."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tl_langneurons import MultilingualCorpus
from tl_langneurons.analyses.cross_steering import CrossSteerConfig, cross_steering
from tl_langneurons.detect.neurons import find_neurons
from tl_langneurons.evaluate.metrics import (
    agreement,
    distinct_threshold,
    is_degenerate,
    is_language,
    is_language_lingua,
    lingua_knows,
)
from tl_langneurons.evaluate.samples import SampleStore
from tl_langneurons.steer.generation import generate_many, sample_nll
from tl_langneurons.steer.methods import SteeringConfig
from tl_langneurons.steer.prompts import token_prompts


def one_by_one(model, neurons, heldout, cfg: CrossSteerConfig) -> dict[str, np.ndarray]:
    """The matrices as cross_steering computed them before it built cells (main at 681e4ae): every cell
    generated alone, the unsteered continuations once per prompt language, scored one by one."""
    langs = [l for l in neurons.languages if l in heldout.texts]
    in_play = [l for l in neurons.languages if lingua_knows(l)]
    prompts = {l: token_prompts(model.tokenizer, heldout.texts[l], cfg.n_prompts, cfg.seed, l) for l in langs}
    thresholds = {l: float(distinct_threshold(model.tokenizer, heldout.texts[l], window=cfg.max_new_tokens))
                  for l in langs}
    L = len(langs)
    rate, base = np.zeros((L, L)), np.zeros((L, L))
    rate_lingua, base_lingua, agree, fluent, gated, retention, nll = (np.full((L, L), np.nan) for _ in range(7))
    none_nll = np.full(L, np.nan)
    seeds = list(range(1, cfg.samples + 1))
    for i, src in enumerate(langs):
        requests = [(p, s) for p in prompts[src] for s in seeds]
        plain_out = generate_many(model, requests, max_new_tokens=cfg.max_new_tokens)
        none_nll[i] = float(np.nanmean(sample_nll(model, plain_out)))
        plain, plain_tokens = [s.text for s in plain_out], [s.tokens for s in plain_out]
        for j, tgt in enumerate(langs):
            base[i, j] = np.mean(is_language(plain, tgt))
            per = (cfg.per_target or {}).get(tgt)
            steer = (replace(cfg.steering, which=cfg.which) if per is None else per).for_prompt(src, tgt)
            out = generate_many(model, requests, max_new_tokens=cfg.max_new_tokens, fwd_hooks=steer.hooks(neurons, tgt))
            texts = [s.text for s in out]
            lid = is_language(texts, tgt)
            rate[i, j] = np.mean(lid)
            ok = [not is_degenerate(s.tokens, thresholds[tgt]) for s in out]
            fluent[i, j] = np.mean(ok)
            plain_ok = np.mean([not is_degenerate(t, thresholds[tgt]) for t in plain_tokens])
            retention[i, j] = fluent[i, j] / plain_ok if plain_ok else np.nan
            gated[i, j] = np.mean([a and b for a, b in zip(lid, ok)])
            nll[i, j] = float(np.nanmean(sample_nll(model, out)))
            if tgt in in_play:
                base_lingua[i, j] = np.mean(is_language_lingua(plain, tgt, in_play))
                second = is_language_lingua(texts, tgt, in_play)
                rate_lingua[i, j] = np.mean(second)
                agree[i, j] = agreement(lid, second)
    return {"rate": rate, "none": base, "rate_lingua": rate_lingua, "none_lingua": base_lingua, "agreement": agree,
            "fluent": fluent, "gated": gated, "retention": retention, "nll": nll, "none_nll": none_nll,
            "thresholds": thresholds}


COUNTS = ("rate", "none", "rate_lingua", "none_lingua", "agreement", "gated")  # shares of counts: exact


def assert_same(res, ref: dict) -> None:
    for name in COUNTS:
        np.testing.assert_array_equal(getattr(res, name), ref[name], err_msg=name)
    # 1 - degenerate share against the fluent share: equal up to the last bit
    for name in ("fluent", "retention"):
        np.testing.assert_allclose(getattr(res, name), ref[name], rtol=0, atol=1e-12, err_msg=name)
    # NLL of the same tokens, scored in other batches (other padding): equal up to float rounding
    for name in ("nll", "none_nll"):
        np.testing.assert_allclose(getattr(res, name), ref[name], rtol=0, atol=1e-5, err_msg=name)
    assert res.thresholds == pytest.approx(ref["thresholds"], abs=0)


@pytest.fixture(scope="module")
def setup(tiny_llama):
    sel, held = MultilingualCorpus.bundled().split(0.1, seed=0)
    neurons = find_neurons(tiny_llama, sel.sample(12, seed=1), k=10, progress=False)
    return neurons, held.select(["en", "de", "ja"])


@pytest.mark.parametrize("cfg", [
    CrossSteerConfig(n_prompts=2, samples=2, max_new_tokens=5),
    CrossSteerConfig(n_prompts=2, samples=2, max_new_tokens=5, which="top",
                     steering=SteeringConfig(method="add", alpha=2.0, source="prompt"),
                     per_target={"de": SteeringConfig(method="diffmean", layer=1, alpha=0.5)}),
], ids=["clamp", "add-prompt-source-per-target"])
def test_matrix_equals_the_one_by_one_reference(tiny_llama, setup, cfg):
    neurons, held = setup
    res = cross_steering(tiny_llama, neurons, held, cfg, progress=False)
    assert_same(res, one_by_one(tiny_llama, neurons, held, cfg))
    assert np.isfinite(res.nll).all() and (res.nll != res.none_nll[:, None]).any()  # the steering changed samples


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_a_second_run_generates_nothing_and_the_sweep_cells_are_read_back(tiny_llama, setup, tmp_path):
    """Through one sample folder: cross-steer again generates no sample; after a prompted sweep, cross-steer
    with the sweep's picks on its test prompts (those of seed 0) generates only the diagonal, which the
    sweep (steering towards the other languages' prompts) never measures."""
    from tl_langneurons.evaluate.sweep import SweepConfig, run_sweep, sweep_settings

    neurons, held = setup
    store = tmp_path / "samples"
    cfg = CrossSteerConfig(n_prompts=2, samples=2, max_new_tokens=5, batch_size=7)
    first = cross_steering(tiny_llama, neurons, held, cfg, progress=False, store=store)
    assert first.run["samples_generated"] == 3 * 2 * 2 * (1 + 3)  # per prompt language: unsteered + 3 targets
    again = cross_steering(tiny_llama, neurons, held, cfg, progress=False, store=store)
    assert again.run["samples_generated"] == 0 and again.run["sample_cache"]["misses"] == 0
    a, b = first.to_json(), again.to_json()
    a.pop("run"), b.pop("run")
    assert a == b

    sw = SweepConfig(languages=["en", "de", "ja"], method="add", k_fractions=("10%",), alphas=(0.5, 2.0),
                     layer_sets=("all",), heldout="held", val_prompts=1, test_prompts=2, val_samples=1, test_samples=3,
                     max_new_tokens=5, batch_size=8)
    run_sweep(tiny_llama, neurons, None, sw, tmp_path / "sweep", progress=False, store=store, heldout=held)
    picks = sweep_settings(tmp_path / "sweep")
    cross = cross_steering(tiny_llama, neurons, held, replace(cfg, per_target=picks), progress=False, store=store)
    assert cross.run["samples_generated"] == 3 * 2 * 2  # the diagonal: 3 languages x 2 prompts x 2 seeds
    assert_same(cross, one_by_one(tiny_llama, neurons, held, replace(cfg, per_target=picks)))
