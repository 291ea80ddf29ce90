"""tl_langneurons.analyses.sae_directions and examples/sae_language_directions.py: an SAE trained by SAELens itself on the tiny Llama's residual stream
(not random weights), the language directions read through it (one row per language), steering by an SAE
latent, and the script end to end (training an SAE, and loading one from a folder).

Needs sae-lens and transformer-lens 3.x: transformer-lens 4.x has no HookedTransformer, which SAELens
trains on and ``backend="hooked"`` builds; there this file skips. CI runs it in its transformer-lens 3.x +
sae-lens environment."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sae_lens", reason="sae-lens is not installed (CI runs this in its transformer-lens 3.x + "
                    "sae-lens environment)")
try:
    from transformer_lens import HookedTransformer  # noqa: F401
except ImportError:
    pytest.skip("transformer-lens 4.x has no HookedTransformer, which SAELens and backend='hooked' need "
                "(CI runs this in its transformer-lens 3.x + sae-lens environment)", allow_module_level=True)

import tl_langneurons as tln
from tl_langneurons.analyses import sae_directions as sd

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "sae_language_directions.py"
LAYER = 1
STEPS = 300


@pytest.fixture(scope="module")
def ex():
    spec = importlib.util.spec_from_file_location("sae_language_directions", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def setup(ex, tiny_dirs):
    """The tiny Llama as a HookedTransformer, its neurons, held-out texts, and an SAE trained on it."""
    model = tln.load_model(str(tiny_dirs["llama"]), backend="hooked")
    select, held = tln.MultilingualCorpus.bundled().split(0.2, seed=0)
    neurons = tln.find_neurons(model, select.sample(8, seed=0), k=5, progress=False)
    texts = select.sample(96, seed=1).flat()[0]
    sae = sd.train_sae(model, texts, LAYER, STEPS, batch_tokens=256, seed=0)
    return model, neurons, held.sample(16, seed=0), sae


@pytest.fixture(scope="module")
def found(ex, setup):
    model, neurons, held, sae = setup
    return sd.read_directions(model, neurons, sae, held.texts, LAYER, top=3)


def test_the_sae_is_trained_by_saelens_not_random(ex, setup):
    from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig

    model, _, held, sae = setup
    assert isinstance(sae, SAE) and sae.cfg.metadata.hook_name == f"blocks.{LAYER}.hook_resid_post"
    assert sd.sae_layer(sae, model) == LAYER
    x = torch.cat(sd.token_residuals(model, held.flat()[0], LAYER))  # tokens the SAE was not trained on
    torch.manual_seed(0)
    fresh = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, k=sae.cfg.k))
    # fraction of variance unexplained on held-out activations
    trained, untrained = 1 - sd.explained_variance(sae, x), 1 - sd.explained_variance(fresh, x)
    assert untrained > 0.9, untrained
    assert trained < 0.35, trained  # explained variance above 0.65 after 300 steps (about 0.76 here)
    assert trained < untrained / 3


def test_the_table_has_a_row_per_language_read_through_the_sae(ex, setup, found):
    model, neurons, _, sae = setup
    assert list(found) == neurons.languages
    table = sd.latents_table(found, LAYER)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(neurons.languages)
    assert [line.split("|")[1].strip() for line in lines[2:]] == neurons.languages
    for lang, r in found.items():
        u = sd.direction(neurons, lang, LAYER)
        # the direction is the one diffmean steers along
        hook = tln.SteeringConfig(method="diffmean", layer=LAYER, alpha=1.0).hooks(neurons, lang)[0][1]
        added = hook(torch.zeros(model.cfg.d_model), None)
        assert torch.allclose(added / added.norm(), u, atol=1e-6)
        w = sae.W_dec.detach()
        cos = (w @ u) / w.norm(dim=1)
        assert r.by_cosine[0][0] == int(cos.argmax()) and abs(r.by_cosine[0][1] - float(cos.max())) < 1e-5
        assert len(r.by_activation) == 3 and r.by_activation[0][1] > 0  # the steer latent is more active on lang
        assert r.kept > 0.3, (lang, r.kept)  # the SAE's reconstruction keeps much of the direction


def test_latent_steering_changes_the_samples(ex, setup, found):
    model, neurons, _, sae = setup
    latent = found["de"].steer_latent
    conds = sd.compare_steering(model, neurons, sae, LAYER, "de", latent, alpha=1.0, methods=("clamp", "add"),
                                seeds=(1, 2, 3), max_new_tokens=8)
    by = {c.name.split()[0]: c for c in conds}
    assert list(by) == ["unsteered", "clamp", "add", "SAE"]
    plain, steered = by["unsteered"].samples, by["SAE"].samples
    assert [s.seed for s in steered] == [s.seed for s in plain] == [1, 2, 3]
    assert all(a.tokens != b.tokens for a, b in zip(plain, steered))
    # the batched conditions are each condition alone: the latent's samples are its hook's alone
    alone = tln.generate_many(model, [(None, s) for s in (1, 2, 3)], max_new_tokens=8,
                              fwd_hooks=sd.latent_hooks(sae, latent, LAYER, float(neurons.resid_norms[LAYER]),
                                                        "generated"))
    assert [s.tokens for s in alone] == [s.tokens for s in steered]
    assert 0.0 <= by["SAE"].rate("de") <= 1.0 and len(by["SAE"].languages) == 3
    assert "lid.176 rate of de" in sd.steering_table(conds, "de")


def test_sae_path_loads_a_saved_sae(ex, setup, tiny_dirs, tmp_path, capsys):
    from sae_lens import SAE

    _, _, _, sae = setup
    sae.save_model(tmp_path / "sae")
    assert torch.equal(SAE.load_from_disk(tmp_path / "sae").W_dec, sae.W_dec)
    args = ["--model", str(tiny_dirs["llama"]), "--sae-path", str(tmp_path / "sae"), "--n-per-lang", "8", "--k", "5",
            "--n-read", "8", "--samples", "2", "--max-new-tokens", "6", "--methods", "add"]
    assert ex.main(args) == 0
    out = capsys.readouterr().out
    assert f"latents on blocks.{LAYER}.hook_resid_post" in out and "SAE latent" in out
    with pytest.raises(SystemExit, match="reads layer 1, not --layer 2"):
        ex.main(args + ["--layer", "2"])


def test_the_script_trains_an_sae_and_runs_end_to_end(tiny_dirs, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(SCRIPT), "--model", str(tiny_dirs["llama"]), "--train-steps", "100",
           "--batch-tokens", "256", "--n-train", "32", "--layer", "2", "--n-per-lang", "8", "--k", "5",
           "--n-read", "8", "--samples", "2", "--max-new-tokens", "6", "--lang", "fr",
           "--save-sae", str(tmp_path / "sae")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("SAE: topk with 128 latents on blocks.2.hook_resid_post, explained variance 0.")
    rows = [line for line in lines if line.startswith("| ") and line.split("|")[1].strip() in tln.PAPER_LANGUAGES]
    assert len(rows) == 6
    assert any(line.startswith("| SAE latent") for line in lines)
    assert (tmp_path / "sae" / "cfg.json").exists()
    assert "trained the SAE" in run.stderr


def test_sae_latents_are_units_find_ranks_and_clamp_steers(setup):
    """An SAE spliced into a HookedSAETransformer: its latents (one layer's hook_sae_acts_post) are ranked by
    find like neurons (the index holds that hook only, d_sae units), rank_units on run_with_cache gives the
    same AP, and clamping a language's latents changes what the model writes."""
    from sae_lens import HookedSAETransformer

    from tl_langneurons.steer.generation import generate_many

    model, _, held, sae = setup
    hs = HookedSAETransformer(model.cfg, tokenizer=model.tokenizer)
    hs.load_state_dict(model.state_dict(), strict=False)
    hs.add_sae(sae)
    site = f"blocks.{LAYER}.hook_resid_post.hook_sae_acts_post"
    corpus = held.sample(8, seed=3)
    latents = tln.find_neurons(hs, corpus, sites=site, k=4, progress=False)
    assert [(s.hook, s.layer, s.size) for s in latents.index.slices] == [(site, LAYER, sae.cfg.d_sae)]
    # the same latents from the user's own cache (one padded batch, right padding, BOS first)
    from tl_langneurons.detect.activations import tokenize
    from tl_langneurons.model.driver import Runner

    runner = Runner(hs)
    texts, labels = corpus.flat()
    toks, mask = runner.pad(tokenize(runner, texts).ids)
    with torch.no_grad():
        _, cache = hs.run_with_cache(toks, attention_mask=mask.long(), names_filter=site)
    ranked = tln.rank_units(cache, labels, corpus.languages, attention_mask=mask, sites=site, k=4)
    torch.testing.assert_close(ranked.ap, latents.ap, rtol=0, atol=1e-5)
    lang = corpus.languages[1]
    requests = [(None, s) for s in (1, 2, 3)]
    plain = generate_many(hs, requests, max_new_tokens=6, stop_at_eos=False)
    with hs.hooks(fwd_hooks=latents.hooks(lang, scale=8.0)):
        steered = generate_many(hs, requests, max_new_tokens=6, stop_at_eos=False)
    assert [s.text for s in plain] != [s.text for s in steered]
    from tl_langneurons import SteeringConfig  # add: alpha x (mu_on - mu_off) on the latents, as on neurons

    add = SteeringConfig(method="add", alpha=20.0).hooks(latents, lang)
    assert {name for name, _ in add} == {site}
    with hs.hooks(fwd_hooks=add):
        added = generate_many(hs, requests, max_new_tokens=6, stop_at_eos=False)
    assert [s.text for s in plain] != [s.text for s in added]
