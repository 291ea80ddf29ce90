"""Analyses that compose with TransformerLens: deactivation, logit attribution, token view and
cross-language steering, through the API and the command line, on the tiny model."""

import json

import numpy as np
import pytest
import torch

from tl_langneurons import MultilingualCorpus
from tl_langneurons.analyses.attribution import (
    logit_attribution,
    neuron_directions,
    token_matches,
)
from tl_langneurons.analyses.cross_steering import cross_steering
from tl_langneurons.analyses.deactivation import deactivation, random_like
from tl_langneurons.analyses.token_view import token_view
from tl_langneurons.cli import main
from tl_langneurons.detect.neurons import find_neurons
from tl_langneurons.evaluate.metrics import text_losses


@pytest.fixture(scope="module")
def setup(tiny_llama, tiny_corpus):
    sel, held = MultilingualCorpus.bundled().split(0.1, seed=0)
    neurons = find_neurons(tiny_llama, sel.sample(12, seed=1), k=10, progress=False)
    return neurons, held


def test_text_losses_match_manual_cross_entropy(tiny_llama):
    text = "Der Hund schläft."
    total, count = text_losses(tiny_llama, [text])
    ids = torch.tensor([[1] + tiny_llama.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = tiny_llama(ids)
    ref = torch.nn.functional.cross_entropy(logits[0, :-1].double(), ids[0, 1:], reduction="sum")
    assert count == ids.shape[1] - 1 and abs(total - float(ref)) < 1e-7 * float(ref)  # float32 logits


def test_deactivation_matrix(tiny_llama, setup, tmp_path):
    neurons, held = setup
    res = deactivation(tiny_llama, neurons, held, n_texts=3, progress=False)
    assert res.delta.shape == (6, 6) and res.delta_random.shape == (6, 6)
    assert np.isfinite(res.delta).all() and (np.abs(res.delta) > 0).any()
    assert "Control: random neurons" in res.markdown()
    res.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deactivation.json", "deactivation.md", "deactivation.png"]
    assert json.loads((tmp_path / "deactivation.json").read_text()) == res.to_json()
    assert (tmp_path / "deactivation.md").read_text() == res.markdown()
    sel, _ = neurons.selected("de")
    rnd = random_like(neurons, sel, 0)
    assert len(rnd) == len(sel) and not torch.equal(rnd.sort().values, sel.sort().values)


def test_logit_attribution(tiny_llama, setup, tmp_path):
    neurons, _ = setup
    res = logit_attribution(tiny_llama, neurons, languages=["ja"], n_neurons=3, top_tokens=5)
    rows = res.rows
    assert len(rows) == 3 and all(len(r.promoted) == 5 and 0 <= r.match_share <= 1 for r in rows)
    assert rows[0].neuron == int(neurons.sets["ja"]["top"].neurons[0]) and "| ja |" in res.markdown()
    res.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attribution.json", "attribution.md"]
    assert json.loads((tmp_path / "attribution.json").read_text())["rows"][0]["promoted"] == rows[0].promoted
    # the direction really is the down-projection column: its logits equal clamping the unit alone
    n = neurons.sets["ja"]["top"].neurons[:1]
    d = neuron_directions(tiny_llama, n, neurons.index)
    site, unit = neurons.index.locate(int(n))
    W = tiny_llama.original_model.model.layers[site.layer].mlp.down_proj
    W = getattr(W, "original_component", W).weight
    assert torch.allclose(d[0], W[:, unit].float() * (getattr(tiny_llama.original_model.model.norm, "original_component",
                                                               tiny_llama.original_model.model.norm).weight.float()))


def test_token_matches():
    assert token_matches("ですね", "ja") and not token_matches("ですね", "zh")
    assert token_matches("中国", "zh")
    assert not token_matches("ab", "en")


def test_token_view(tiny_llama, setup, tmp_path):
    neurons, _ = setup
    res = token_view(tiny_llama, neurons, "Hello world. こんにちは世界。")
    assert res.activation.shape == res.score.shape == (6, len(res.tokens)) and np.isfinite(res.score).all()
    assert res.languages == neurons.languages and len(res.lines()) == len(res.tokens)
    assert res.markdown().count("\n") == len(res.tokens) + 2
    res.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.png"]


def test_cross_steering(tiny_llama, setup, tmp_path):
    neurons, held = setup
    res = cross_steering(tiny_llama, neurons, held.select(["en", "ja"]), n_prompts=2, samples=1, max_new_tokens=4,
                         progress=False)
    assert res.languages == ["en", "ja"]
    assert res.rate.shape == res.none.shape == (2, 2) and ((0 <= res.rate) & (res.rate <= 1)).all()
    for m in (res.rate_lingua, res.none_lingua, res.agreement, res.fluent, res.gated):
        assert m.shape == (2, 2) and ((0 <= m) & (m <= 1)).all()
    assert (res.gated <= np.minimum(res.rate, res.fluent)).all()
    assert sorted(res.thresholds) == ["en", "ja"]
    # the identifiers disagree on at least the difference of their rates; all-or-nothing alike: agree
    assert (res.agreement <= 1 - np.abs(res.rate - res.rate_lingua) + 1e-12).all()
    both = (res.rate == res.rate_lingua) & np.isin(res.rate, [0.0, 1.0])
    assert (res.agreement[both] == 1).all()
    assert "lingua" in res.markdown() and "fluent" in res.markdown()
    res.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cross_steering.json", "cross_steering.md", "cross_steering.png"]
    assert json.loads((tmp_path / "cross_steering.json").read_text()) == res.to_json()


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_analysis_commands(tiny_dirs, tmp_path, capsys):
    model = str(tiny_dirs["llama"])
    out = tmp_path / "run"
    assert main(["find", "--model", model, "--n-per-lang", "8", "--k", "5", "--out", str(out), "--quiet"]) == 0
    held = tmp_path / "held"
    held.mkdir()
    for lang, texts in MultilingualCorpus.bundled().sample(4, seed=9).texts.items():
        (held / f"{lang}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["deactivate", "--neurons", str(out), "--heldout", str(held), "--n-texts", "2", "--quiet"]) == 0
    assert main(["attribution", "--neurons", str(out), "--n-neurons", "2", "--top-tokens", "3"]) == 0
    assert main(["tokens", "--neurons", str(out), "Guten Morgen"]) == 0
    assert main(["cross-steer", "--neurons", str(out), "--heldout", str(held), "--n-prompts", "1", "--samples", "1",
                 "--max-new-tokens", "3", "--quiet"]) == 0
    for name in ("deactivation.md", "deactivation.png", "attribution.md", "tokens.png", "cross_steering.json",
                 "cross_steering.png"):
        assert (out / "analyses" / name).exists(), name
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "Deactivation" in text and "Cross-language steering" in text and "Token-level view" in text


def test_cross_steering_nll_and_prompt_source(tiny_llama, setup, monkeypatch):
    """Each cell's NLL is the mean of its samples' NLL under the unsteered model (generated again here
    with the same prompts and seeds); source="prompt" steers away from each row's prompt language."""
    from dataclasses import replace

    from tl_langneurons.steer.prompts import token_prompts
    from tl_langneurons.steer.generation import generate_many, sample_nll
    from tl_langneurons.steer.methods import SteeringConfig

    neurons, held = setup
    held = held.select(["en", "ja"])
    kw = dict(n_prompts=2, samples=2, max_new_tokens=4, progress=False)
    auto = cross_steering(tiny_llama, neurons, held, steering=SteeringConfig(method="add", source="prompt"), **kw)
    prompts = token_prompts(tiny_llama.tokenizer, held.texts["en"], 2, 0, "en")
    requests = [(p, s) for p in prompts for s in (1, 2)]
    plain = generate_many(tiny_llama, requests, max_new_tokens=4)
    assert auto.none_nll[0] == pytest.approx(np.nanmean(sample_nll(tiny_llama, plain)), abs=1e-6)
    steer = SteeringConfig(method="add", source="en", which="both")
    out = generate_many(tiny_llama, requests, max_new_tokens=4, fwd_hooks=steer.hooks(neurons, "ja"))
    assert auto.nll[0, 1] == pytest.approx(np.nanmean(sample_nll(tiny_llama, out)), abs=1e-6)
    explicit = cross_steering(tiny_llama, neurons, held, steering=SteeringConfig(method="add", source="en"), **kw)
    assert explicit.nll[0, 1] == auto.nll[0, 1] and explicit.rate[0, 1] == auto.rate[0, 1]
    none = cross_steering(tiny_llama, neurons, held, steering=SteeringConfig(method="add"), **kw)
    assert none.nll[0, 1] != auto.nll[0, 1]  # the source's deactivation changed the samples
    assert "NLL per token" in auto.markdown() and "nll" in auto.off_diagonal()
    assert auto.to_json()["none_nll"] == pytest.approx(list(auto.none_nll))
    # the unsteered continuations kept across calls in one sample store: generated once, the same matrices
    from tl_langneurons.evaluate.samples import SampleStore

    def same(a, b):
        a, b = a.to_json(), b.to_json()
        assert a.pop("run")["samples_generated"] > 0 and b.pop("run")["samples_generated"] > 0
        assert a == b

    shared = SampleStore(None)
    first = cross_steering(tiny_llama, neurons, held, steering=SteeringConfig(method="add", source="en"),
                           store=shared, **kw)
    same(first, explicit)
    again = cross_steering(tiny_llama, neurons, held, steering=SteeringConfig(method="add"), store=shared, **kw)
    # the steered cells towards ja only (2 prompt languages x 2 prompts x 2 seeds): towards en the source en was
    # dropped (a source equal to the target), so those cells are the same setting as without one
    assert again.run["samples_generated"] == 2 * 2 * 2
    same(again, none)
