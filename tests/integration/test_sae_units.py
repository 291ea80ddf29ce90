"""A plain SAELens SAE applied by the tool (``attach_sae``, ``find --sae``): outputs unchanged (SAELens' error term),
its latents ranked exactly as on a ``HookedSAETransformer`` with the SAE attached, the SAE recorded in the neurons
folder and re-attached by ``steer`` (whose samples equal the API's), and every bad input in one line.

Needs sae-lens and transformer-lens 3.x (CI runs it in its transformer-lens 3.x + sae-lens environment); the
refusal in a transformer-lens 4.x environment is tested in ``test_bad_input.py``."""

import json
import shutil

import pytest
import torch

pytest.importorskip("sae_lens", reason="sae-lens is not installed (CI runs this in its transformer-lens 3.x + "
                    "sae-lens environment)")
try:
    from transformer_lens import HookedTransformer  # noqa: F401
except ImportError:
    pytest.skip("transformer-lens 4.x: SAELens attaches SAEs to transformer-lens 3.x models", allow_module_level=True)

import tl_langneurons as tln
from tl_langneurons.cli import main
from tl_langneurons.model.driver import Runner
from tl_langneurons.model.sae import weights_sha256
from tl_langneurons.steer.pairs import SteerPairsConfig, steer_pairs

LAYER, D_SAE, K = 1, 64, 4
SITE = f"blocks.{LAYER}.hook_resid_post.hook_sae_acts_post"


def make_sae(d_in: int, hook: str, seed: int = 0):
    """A small TopK SAE on ``hook`` with random weights of a trained SAE's scale."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=D_SAE, k=8))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    sae.cfg.metadata.hook_name = hook
    return sae


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sae") / "sae"
    make_sae(32, f"blocks.{LAYER}.hook_resid_post").save_model(d)
    return d


@pytest.fixture(scope="module")
def corpus():
    return tln.MultilingualCorpus.bundled().sample(8, seed=3)


def _logits(model):
    ids = torch.tensor([[1, 5, 9, 30, 40, 2, 77, 100]])
    return Runner(model).logits(ids, torch.ones_like(ids))


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_attached_sae_keeps_outputs_and_ranks_latents_as_a_hooked_sae_transformer(tiny_dirs, sae_dir, corpus, backend):
    from sae_lens import SAE, HookedSAETransformer

    model = tln.load_model(str(tiny_dirs["llama"]), backend=backend)
    before = _logits(model)
    site = tln.attach_sae(model, sae_dir)
    assert site == (SITE if backend == "hooked" else f"blocks.{LAYER}.hook_out.hook_sae_acts_post")
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=1e-5)  # the error term: outputs unchanged
    got = tln.find_neurons(model, corpus, sites=site, k=K, progress=False)
    assert [(s.hook, s.layer, s.size) for s in got.index.slices] == [(site, LAYER, D_SAE)]
    assert got.meta["sae"] == {"path": str(sae_dir.resolve()), "sha256": weights_sha256(sae_dir), "site": site,
                               "backend": backend,
                               "hook_name": f"blocks.{LAYER}.hook_resid_post", "d_in": 32, "d_sae": D_SAE,
                               "architecture": "topk"}
    # the reference: SAELens' own HookedSAETransformer with the same SAE attached
    plain = tln.load_model(str(tiny_dirs["llama"]), backend="hooked")
    ref_model = HookedSAETransformer(plain.cfg, tokenizer=plain.tokenizer)
    ref_model.load_state_dict(plain.state_dict(), strict=False)
    ref_model.add_sae(SAE.load_from_disk(sae_dir))
    ref = tln.find_neurons(ref_model, corpus, sites=SITE, k=K, progress=False)
    torch.testing.assert_close(got.ap, ref.ap, rtol=0, atol=1e-6)
    for lang in corpus.languages:
        for which in ("top", "bottom"):
            assert set(got.sets[lang][which].neurons.tolist()) == set(ref.sets[lang][which].neurons.tolist())
    # clamping the latents steers: the text changes
    requests = [(None, s) for s in (1, 2, 3)]
    plain_s = tln.generate_many(model, requests, max_new_tokens=6, stop_at_eos=False)
    with model.hooks(fwd_hooks=got.hooks("de", scale=8.0)):
        steered = tln.generate_many(model, requests, max_new_tokens=6, stop_at_eos=False)
    assert [s.text for s in plain_s] != [s.text for s in steered]


def _steered_texts(out: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("with:")]


@pytest.mark.slow  # find and steer through the command line
def test_cli_find_sae_then_steer_reattaches_and_equals_the_api(tiny_dirs, sae_dir, tmp_path, capsys):
    out = tmp_path / "latents"
    model_dir = str(tiny_dirs["llama"])
    assert main(["find", "--model", model_dir, "--backend", "hooked", "--corpus", "bundled", "--n-per-lang", "6",
                 "--k", str(K), "--sae", str(sae_dir), "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "neurons.json").read_text())["meta"]
    assert meta["sae"]["sha256"] == weights_sha256(sae_dir) and meta["sae"]["site"] == SITE
    assert meta["sites"] == SITE
    capsys.readouterr()
    steer = ["steer", "--neurons", str(out), "--lang", "de", "--samples", "3", "--max-new-tokens", "6", "--scale", "8"]
    assert main(steer) == 0
    printed = capsys.readouterr().out
    without = [l.split(":", 1)[1].strip() for l in printed.splitlines() if l.strip().startswith("without:")]
    cli = _steered_texts(printed)
    assert len(cli) == 3 and cli != without
    # the API: the tool's model, the SAE attached by hand, the folder's latents, the same setting
    model = tln.load_model(model_dir, backend="hooked")
    tln.attach_sae(model, sae_dir)
    neurons = tln.LanguageNeurons.load(out)
    cfg = SteerPairsConfig(lang="de", samples=3, max_new_tokens=6, steering=tln.SteeringConfig(scale=8.0))
    api = [" ".join(p.steered.text.split()) for p in steer_pairs(model, neurons, cfg)]
    assert api == cli
    # add steers the latents too (alpha x (mean on - mean off)), through the recorded SAE
    assert main(steer[:-2] + ["--method", "add", "--alpha", "20"]) == 0
    assert _steered_texts(capsys.readouterr().out) != without

    # the SAE changed: refused in one line; gone: refused in one line
    changed = tmp_path / "changed"
    shutil.copytree(sae_dir, changed)
    saved = tmp_path / "latents-changed"
    shutil.copytree(out, saved)
    meta_path = saved / "neurons.json"
    info = json.loads(meta_path.read_text())
    info["meta"]["sae"]["path"] = str(changed)
    meta_path.write_text(json.dumps(info))
    from sae_lens import SAE

    other = SAE.load_from_disk(changed)
    with torch.no_grad():
        other.W_dec.mul_(2)
    other.save_model(changed)
    assert main(["steer", "--neurons", str(saved), "--lang", "de", "--samples", "1"]) == 2
    err = capsys.readouterr().err
    assert "has changed since these units were found" in err and "Traceback" not in err
    shutil.rmtree(changed)
    assert main(["steer", "--neurons", str(saved), "--lang", "de", "--samples", "1"]) == 2
    assert "which is gone" in capsys.readouterr().err


def _error(capsys, code: int) -> str:
    """Exit status 2 and one error line, the last (progress lines of the corpus and model may come before it)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("tl-langneurons: error:")]
    assert code == 2 and len(errors) == 1 and err[-1] == errors[0] and "Traceback" not in "\n".join(err), err
    return errors[0]


def test_bad_sae_input_is_one_line(tiny_dirs, sae_dir, tmp_path, capsys, monkeypatch):
    from tl_langneurons.model.load import ModelConfig

    base = ["find", "--model", str(tiny_dirs["llama"]), "--backend", "hooked", "--corpus", "bundled", "--n-per-lang",
            "4", "--k", "2", "--quiet"]
    with monkeypatch.context() as m:  # these are refused before the model loads
        m.setattr(ModelConfig, "load", lambda *a, **k: pytest.fail("the model loaded"))
        assert "no such folder" in _error(capsys, main(base + ["--sae", str(tmp_path / "nope"), "--out",
                                                               str(tmp_path / "a")]))
        (tmp_path / "empty").mkdir()
        assert "is not an SAE folder: it lacks cfg.json and sae_weights.safetensors" in _error(
            capsys, main(base + ["--sae", str(tmp_path / "empty"), "--out", str(tmp_path / "b")]))
        assert "--sites mlp_pre names other units" in _error(
            capsys, main(base + ["--sae", str(sae_dir), "--sites", "mlp_pre", "--out", str(tmp_path / "c")]))
    wrong_layer = tmp_path / "sae-l9"
    make_sae(32, "blocks.9.hook_resid_post").save_model(wrong_layer)
    assert "reads 'blocks.9.hook_resid_post', which this model lacks" in _error(
        capsys, main(base + ["--sae", str(wrong_layer), "--out", str(tmp_path / "d")]))
    wide = tmp_path / "sae-wide"
    make_sae(48, f"blocks.{LAYER}.hook_resid_post").save_model(wide)
    assert "reads 48 values at blocks.1.hook_resid_post; this model has 32 there" in _error(
        capsys, main(base + ["--sae", str(wide), "--out", str(tmp_path / "e")]))
    assert not any((tmp_path / x).exists() for x in "abcde")  # nothing written
