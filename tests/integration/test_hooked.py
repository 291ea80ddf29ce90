"""A HookedTransformer (transformer-lens 3.x) as a first-class model: built offline from the local weights,
it gives the bridge's activations, neurons, steered samples and results, through the API and the CLI.

transformer-lens 4.x has no HookedTransformer: there these tests skip (and the one-line refusal of
``--backend hooked`` is tested instead); CI runs them in its transformer-lens 3.x + sae-lens environment."""

import numpy as np
import pytest
import torch

from tl_langneurons import LangNeuronsError, collect, find_neurons, load_model, resolve_sites
from tl_langneurons.cli import main
from tl_langneurons.steer.generation import generate_many
from tl_langneurons.steer.methods import SteeringConfig

try:
    from transformer_lens import HookedTransformer
except ImportError:  # transformer-lens 4.x
    HookedTransformer = None

needs_hooked = pytest.mark.skipif(HookedTransformer is None,
                                  reason="transformer-lens 4.x has no HookedTransformer (CI runs this in its 3.x env)")

REQUESTS = [("Hello world", 1), (None, 2), ("Das ist ein Test der", 3), ("Hello world", 4), ([40, 41], 5)]


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    if HookedTransformer is None:
        pytest.skip("transformer-lens 4.x has no HookedTransformer")
    d = str(tiny_dirs["llama"])
    return load_model(d, backend="bridge"), load_model(d, backend="hooked")


@pytest.fixture(scope="module")
def found_pair(pair, tiny_corpus):
    return [find_neurons(m, tiny_corpus, k=5, progress=False, return_activations=True) for m in pair]


@needs_hooked
def test_load_hooked_is_a_hooked_transformer_with_the_models_logits(pair, tiny_dirs):
    from transformers import AutoModelForCausalLM

    bridge, ht = pair
    assert isinstance(ht, HookedTransformer)
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["llama"])).eval()
    ids = torch.tensor([[1, 5, 9, 30, 40, 7]])
    with torch.no_grad():
        assert torch.allclose(ht(ids), hf(ids).logits, atol=1e-5)
    from tl_langneurons.model.load import weights_fingerprint

    assert weights_fingerprint(ht) == weights_fingerprint(bridge)  # neurons found on one steer the other


@needs_hooked
@pytest.mark.parametrize("sites", ["mlp_post", "mlp_pre"])
def test_pooled_values_equal_the_bridge(pair, tiny_corpus, sites):
    texts = tiny_corpus.flat()[0][:12]
    a, b = (collect(m, texts, sites, pooling="mean", progress=False).values for m in pair)
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()


@needs_hooked
def test_paper_sites_on_a_hooked_transformer(pair):
    bridge, ht = pair
    ib, ih = resolve_sites(bridge, "paper"), resolve_sites(ht, "paper")
    assert ib.n_neurons == ih.n_neurons
    assert {s.hook.split(".", 2)[2] for s in ih.slices} >= {"attn.hook_q", "mlp.hook_pre_linear"}  # its own hooks
    assert ih == ib  # recorded under the bridge's names (tests/integration/test_hooked_sites.py)


@needs_hooked
def test_find_gives_the_bridges_ap_and_sets(found_pair):
    (nb, pb, _), (nh, ph, _) = found_pair
    assert torch.allclose(pb.values, ph.values, atol=1e-5)
    assert torch.allclose(nb.ap, nh.ap, atol=1e-6)
    for lang in nb.languages:
        for which in ("top", "bottom"):
            assert set(nb.sets[lang][which].neurons.tolist()) == set(nh.sets[lang][which].neurons.tolist())
    assert torch.allclose(nb.resid_means, nh.resid_means, atol=1e-5)


@needs_hooked
def test_generation_batched_equals_alone_and_equals_the_bridge(pair):
    bridge, ht = pair
    mixed = generate_many(ht, REQUESTS, max_new_tokens=10, stop_at_eos=False)
    alone = [generate_many(ht, [r], max_new_tokens=10, stop_at_eos=False)[0] for r in REQUESTS]
    assert [s.tokens for s in mixed] == [s.tokens for s in alone]
    ref = generate_many(bridge, REQUESTS, max_new_tokens=10, stop_at_eos=False)
    assert [s.tokens for s in mixed] == [s.tokens for s in ref]
    uncached = generate_many(ht, REQUESTS, max_new_tokens=10, stop_at_eos=False, use_cache=False)
    assert [s.tokens for s in uncached] == [s.tokens for s in mixed]


@needs_hooked
@pytest.mark.parametrize("method,extra", [("clamp", {}), ("add", {"alpha": 4.0}), ("diffmean", {"layer": 1, "alpha": 2.0}),
                                          ("sparse", {"layer": 1, "n_dims": 4, "coef": 2.0}),
                                          ("clamp", {"positions": "generated"})])
def test_every_method_steers_the_hooked_transformer_as_the_bridge(pair, found_pair, method, extra):
    bridge, ht = pair
    (nb, _, _), (nh, _, _) = found_pair
    steering = SteeringConfig(method=method, **extra)
    lang = nb.languages[1]
    out = {}
    for model, neurons in ((bridge, nb), (ht, nh)):
        out[type(model).__name__] = generate_many(model, REQUESTS, max_new_tokens=8, stop_at_eos=False,
                                                  fwd_hooks=steering.hooks(neurons, lang))
    plain = generate_many(ht, REQUESTS, max_new_tokens=8, stop_at_eos=False)
    assert [s.tokens for s in out["HookedTransformer"]] == [s.tokens for s in out["TransformerBridge"]]
    assert [s.tokens for s in out["HookedTransformer"]] != [s.tokens for s in plain]


@needs_hooked
def test_attribution_and_nll_on_the_hooked_transformer(pair, found_pair):
    from tl_langneurons.analyses.attribution import logit_attribution
    from tl_langneurons.steer.generation import sample_nll

    bridge, ht = pair
    (nb, _, _), (nh, _, _) = found_pair
    a = logit_attribution(bridge, nb, n_neurons=3, top_tokens=5)
    b = logit_attribution(ht, nh, n_neurons=3, top_tokens=5)
    assert [(r.neuron, r.promoted) for r in a.rows] == [(r.neuron, r.promoted) for r in b.rows]
    samples = generate_many(ht, REQUESTS, max_new_tokens=6, stop_at_eos=False)
    assert np.allclose(sample_nll(ht, samples), sample_nll(bridge, samples), atol=1e-4)


@needs_hooked
def test_cli_find_steer_evaluate_with_backend_hooked(tiny_dirs, tmp_path, capsys):
    model, out = str(tiny_dirs["llama"]), tmp_path / "run"
    common = ["--backend", "hooked", "--quiet"]
    assert main(["find", "--model", model, "--n-per-lang", "8", "--k", "5", "--out", str(out), *common]) == 0
    assert (out / "neurons.json").exists()
    capsys.readouterr()
    assert main(["steer", "--neurons", str(out), "--lang", "de", "--samples", "2", "--max-new-tokens", "6",
                 "Hello", *common]) == 0
    assert "de" in capsys.readouterr().out
    assert main(["evaluate", "--neurons", str(out), "--samples", "3", "--max-new-tokens", "6", "--ablation-ks", "3", "--reference-nll-texts", "2",
                 "--out", str(tmp_path / "ev"), *common]) == 0
    assert (tmp_path / "ev" / "evaluation.json").exists()
    # the sweep on prompts, the analyses and the report, on the same HookedTransformer neurons
    assert main(["sweep", "--neurons", str(out), "--languages", "de", "--method", "diffmean", "--resid-layers", "1",
                 "--alphas", "0.5", "--val-prompts", "1", "--test-prompts", "1", "--test-samples", "1",
                 "--max-new-tokens", "3", "--heldout", "bundled", *common]) == 0
    assert main(["deactivate", "--neurons", str(out), "--heldout", "bundled", "--n-texts", "2", *common]) == 0
    assert main(["attribution", "--neurons", str(out), "--n-neurons", "2", "--top-tokens", "3", "--backend",
                 "hooked"]) == 0
    assert main(["cross-steer", "--neurons", str(out), "--heldout", "bundled", "--n-prompts", "1", "--samples", "1",
                 "--max-new-tokens", "3", *common]) == 0
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "Deactivation" in text and "Cross-language steering" in text


@needs_hooked
def test_a_hooked_transformer_passed_in_is_used_as_is(pair):
    _, ht = pair
    assert load_model(ht) is ht


@needs_hooked
def test_an_architecture_hooked_transformer_lacks_is_one_line(tiny_dirs, capsys):
    with pytest.raises(LangNeuronsError, match="HookedTransformer cannot build XGLMForCausalLM"):
        load_model(str(tiny_dirs["xglm"]), backend="hooked")
    assert main(["info", "--model", str(tiny_dirs["xglm"]), "--backend", "hooked"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --backend bridge or hf" in err[0]


@pytest.mark.skipif(HookedTransformer is not None, reason="this transformer-lens has HookedTransformer")
def test_backend_hooked_without_hooked_transformer_is_one_line(tiny_dirs, capsys):
    assert main(["info", "--model", str(tiny_dirs["llama"]), "--backend", "hooked"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "transformer-lens>=3.9,<4" in err[0]


def test_a_model_class_the_tool_cannot_drive_is_one_line(capsys):
    with pytest.raises(LangNeuronsError, match="pass a TransformerBridge, a HookedTransformer"):
        load_model(torch.nn.Linear(2, 2))


def _users_hooked_transformer(folder, processed: bool):
    """A HookedTransformer as a user builds one (from the Hugging Face model, its own parameter names, no
    fingerprint recorded by this tool): unprocessed as from_pretrained_no_processing, or processed as
    from_pretrained (normalization folded into the weights, writing weights centred)."""
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tl_langneurons.model.load import _hooked_config

    hf = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    with _hooked_config(hf.config, torch.float32, "cpu") as (name, cfg):
        state = loading.get_pretrained_state_dict(name, cfg, hf, dtype=torch.float32)
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False, default_padding_side="left")
        model.load_and_process_state_dict(state, fold_ln=processed, center_writing_weights=processed,
                                          center_unembed=processed, fold_value_biases=processed)
    return model.eval()


@needs_hooked
@pytest.mark.parametrize("processed", [False, True])
def test_a_users_own_hooked_transformer_and_the_cli_share_neurons(pair, found_pair, tiny_dirs, tiny_corpus, tmp_path,
                                                                    capsys, caplog, processed):
    """Neurons found on the bridge steer a HookedTransformer the user built (its parameters hash otherwise;
    its activations agree), and neurons found on the user's model steer and evaluate from the command line;
    a different model is still refused."""
    import logging

    from tl_langneurons.model.identity import signature_distance
    from tl_langneurons.model.load import weights_fingerprint

    bridge, _ = pair
    user = _users_hooked_transformer(tiny_dirs["llama"], processed)
    assert weights_fingerprint(user) != weights_fingerprint(bridge)
    bridges = found_pair[0][0]
    with caplog.at_level(logging.WARNING):
        bridges.check_model(user)  # accepted: the same function
    assert "the activations at their sites agree" in caplog.text
    mine = find_neurons(user, tiny_corpus, k=5, progress=False)
    assert signature_distance(mine.meta["activation_signature"], bridge, mine.index) < 1e-4
    mine.save(tmp_path / "user")
    model = str(tiny_dirs["llama"])
    capsys.readouterr()
    assert main(["steer", "--neurons", str(tmp_path / "user"), "--model", model, "--lang", "de", "--samples", "2",
                 "--max-new-tokens", "5", "--quiet"]) == 0
    assert main(["evaluate", "--neurons", str(tmp_path / "user"), "--model", model, "--samples", "2",
                 "--max-new-tokens", "4", "--ablation-ks", "3", "--languages", "de,ja", "--reference-nll-texts", "2",
                 "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    other = _users_hooked_transformer(tiny_dirs["llama"], processed)
    with torch.no_grad():
        other.blocks[1].mlp.W_in.mul_(1.01)
    with pytest.raises(LangNeuronsError, match="weights differ"):
        bridges.check_model(other)


@needs_hooked
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_hooked_transformer_shares_the_weights_and_equals_transformer_lens_own_build(tiny_dirs, dtype):
    """load_model builds it on the meta device and hands it the converted tensors (the MLP matrices and the
    unembedding as views of the Hugging Face weights); every parameter equals the classic build's (allocate,
    initialise, copy) in value, dtype and stride, every buffer too, and the logits are bit-identical."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tl_langneurons.model.hooked import to_hooked

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["llama"]), dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_dirs["llama"]))
    classic, shared = to_hooked(hf, tok, dtype, classic=True), to_hooked(hf, tok, dtype)
    a, b = dict(classic.named_parameters()), dict(shared.named_parameters())
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]) and a[name].dtype == b[name].dtype, name
        assert a[name].stride() == b[name].stride() and a[name].requires_grad == b[name].requires_grad, name
    assert all(torch.equal(x, y) for x, y in zip(classic.buffers(), shared.buffers()))
    hf_storages = {p.untyped_storage().data_ptr() for p in hf.parameters()}
    views = {n for n, p in b.items() if p.untyped_storage().data_ptr() in hf_storages}
    assert {"unembed.W_U", "blocks.0.mlp.W_in", "blocks.0.mlp.W_gate", "blocks.0.mlp.W_out"} <= views
    assert not {n for n, p in a.items() if p.untyped_storage().data_ptr() in hf_storages}
    ids = torch.tensor([[1, 5, 9, 30, 40, 7], [0, 0, 1, 5, 9, 30]])
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        assert torch.equal(classic(ids, attention_mask=mask), shared(ids, attention_mask=mask))
    assert classic._tl_langneurons_fingerprint == shared._tl_langneurons_fingerprint
