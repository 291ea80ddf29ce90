"""The four interventions (clamp, add, diffmean, sparse) against slow references on the tiny model,
the residual means that find collects in the same pass, and positions="generated"."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tl_langneurons import LangNeuronsError, LanguageNeurons, collect, find_neurons
from tl_langneurons.steer import methods as M
from tl_langneurons.steer.methods import SteeringConfig, prompt_pass

IDS = torch.tensor([[1, 40, 41, 42, 43, 44]])


@pytest.fixture(scope="module")
def found(tiny_llama, tiny_corpus):
    neurons, pooled, labels = find_neurons(tiny_llama, tiny_corpus, k=5, progress=False, return_activations=True)
    return neurons, pooled, np.asarray(labels)


def _resid(model, layer, ids=IDS, hooks=()):
    seen = {}
    name = f"blocks.{layer}.hook_resid_post"
    with model.hooks(fwd_hooks=list(hooks) + [(name, lambda x, hook: seen.__setitem__("h", x.detach().clone()))]):
        logits = model(ids)
    return seen["h"], logits


def test_residual_means_equal_run_with_cache(found, tiny_llama, tiny_corpus):
    neurons, _, labels = found
    texts, _ = tiny_corpus.flat()
    L = neurons.resid_means.shape[1]
    assert neurons.resid_means.shape == (len(neurons.languages), L, 32) and L == 3
    tok = tiny_llama.tokenizer
    sums = torch.zeros(len(neurons.languages), L, 32, dtype=torch.float64)
    norm_sum, norm_n = torch.zeros(L, dtype=torch.float64), 0
    for text, lab in zip(texts, labels):
        ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"][:511]])
        _, cache = tiny_llama.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
        for layer in range(L):
            h = cache[f"blocks.{layer}.hook_resid_post"][0].double()
            sums[lab, layer] += h.mean(0)
            norm_sum[layer] += h[1:].norm(dim=-1).sum()
        norm_n += ids.shape[1] - 1
    counts = torch.tensor(np.bincount(labels), dtype=torch.float64)[:, None, None]
    assert torch.allclose(neurons.resid_means.double(), sums / counts, atol=1e-5)
    assert torch.allclose(neurons.resid_norms.double(), norm_sum / norm_n, rtol=1e-5)


def test_residual_collection_changes_nothing_else(found, tiny_llama, tiny_corpus):
    _, pooled, _ = found
    texts, _ = tiny_corpus.flat()
    plain = collect(tiny_llama, texts, "mlp_post", progress=False)
    assert torch.equal(plain.values, pooled.values)


def test_means_off_is_the_mean_on_the_other_languages(found):
    neurons, pooled, labels = found
    for li, lang in enumerate(neurons.languages):
        direct = pooled.values[torch.as_tensor(labels != li)].double().mean(0)
        assert torch.allclose(neurons.means_off(lang).double(), direct, atol=1e-5)


def test_add_adds_the_difference_to_exactly_the_selected_neurons(found, tiny_llama):
    neurons, _, _ = found
    cfg = SteeringConfig(method="add", alpha=2.0)
    hooks = cfg.hooks(neurons, "de")
    sel, _ = neurons.selected("de", "both")
    li = neurons.languages.index("de")
    delta = 2.0 * (neurons.means[li] - neurons.means_off("de"))
    for name, fn in hooks:
        x = torch.randn(1, 4, 48)
        out = fn(x.clone(), None)
        layer = int(name.split(".")[1])
        expect = x.clone()
        for n in sel.tolist():
            site, unit = neurons.index.locate(n)
            if site.layer == layer:
                expect[..., unit] += delta[n]
        assert torch.allclose(out, expect, atol=1e-6)
    zero = SteeringConfig(method="add", alpha=0.0).hooks(neurons, "de")
    assert torch.equal(tiny_llama.run_with_hooks(IDS, fwd_hooks=zero), tiny_llama(IDS))
    assert not torch.allclose(tiny_llama.run_with_hooks(IDS, fwd_hooks=hooks), tiny_llama(IDS))


def test_diffmean_adds_the_scaled_unit_difference(found, tiny_llama):
    neurons, _, _ = found
    cfg = SteeringConfig(method="diffmean", alpha=1.5, layer=1)
    means, norms = neurons.residual()
    t = neurons.languages.index("ja")
    v = means[t, 1].double() - means[[i for i in range(len(neurons.languages)) if i != t], 1].double().mean(0)
    vec = (1.5 * norms[1] * v / (v.norm() + 1e-8)).float()
    before, _ = _resid(tiny_llama, 1)
    after, _ = _resid(tiny_llama, 1, hooks=cfg.hooks(neurons, "ja"))
    assert torch.allclose(after, before + vec, atol=1e-5)
    _, logits = _resid(tiny_llama, 1, hooks=SteeringConfig(method="diffmean", alpha=0.0, layer=1).hooks(neurons, "ja"))
    assert torch.allclose(logits, tiny_llama(IDS), atol=1e-6)


def test_sparse_overwrites_the_most_different_dimensions(found, tiny_llama):
    neurons, _, _ = found
    means, _ = neurons.residual()
    t = neurons.languages.index("zh")
    diff = means[t, 2].double() - means[[i for i in range(len(neurons.languages)) if i != t], 2].double().mean(0)
    dims = torch.topk(diff.abs(), 4).indices
    before, _ = _resid(tiny_llama, 2)
    raw, _ = _resid(tiny_llama, 2, hooks=SteeringConfig(method="sparse", layer=2, n_dims=4, coef=0.5,
                                                        restore_norm=False).hooks(neurons, "zh"))
    keep = torch.ones(32, dtype=torch.bool)
    keep[dims] = False
    assert torch.allclose(raw[..., dims], (0.5 * means[t, 2, dims]).expand_as(raw[..., dims]), atol=1e-6)
    assert torch.equal(raw[..., keep], before[..., keep])
    normed, _ = _resid(tiny_llama, 2, hooks=SteeringConfig(method="sparse", layer=2, n_dims=4, coef=0.5)
                       .hooks(neurons, "zh"))
    assert torch.allclose(normed.norm(dim=-1), before.norm(dim=-1), rtol=1e-5)
    assert SteeringConfig(method="sparse").resolved(neurons).n_dims == 2  # 5% of 32, rounded
    assert SteeringConfig(method="sparse").resolved(neurons).layer == 2  # round(0.6 * 3)


@pytest.mark.parametrize("method", ["clamp", "add", "diffmean", "sparse"])
def test_generated_leaves_the_prompt_pass_alone(found, tiny_llama, method):
    neurons, _, _ = found
    hooks = SteeringConfig(method=method, positions="generated", alpha=3.0).hooks(neurons, "de")
    plain = tiny_llama(IDS)
    with prompt_pass():
        assert torch.equal(tiny_llama.run_with_hooks(IDS, fwd_hooks=hooks), plain)
    assert not torch.allclose(tiny_llama.run_with_hooks(IDS, fwd_hooks=hooks), plain)
    all_pos = SteeringConfig(method=method, positions="all", alpha=3.0).hooks(neurons, "de")
    assert torch.equal(tiny_llama.run_with_hooks(IDS, fwd_hooks=hooks), tiny_llama.run_with_hooks(IDS, fwd_hooks=all_pos))
    with tiny_llama.hooks(fwd_hooks=hooks):  # beside run_with_cache
        logits, cache = tiny_llama.run_with_cache(IDS, names_filter="blocks.0.hook_resid_post")
    assert not torch.allclose(logits, plain) and "blocks.0.hook_resid_post" in cache


def test_residual_means_saved_and_old_results_still_clamp(found, tmp_path, tiny_llama):
    neurons, _, _ = found
    neurons.save(tmp_path / "n")
    back = LanguageNeurons.load(tmp_path / "n")
    assert torch.equal(back.resid_means, neurons.resid_means) and torch.equal(back.resid_norms, neurons.resid_norms)
    t = load_file(str(tmp_path / "n" / "neurons.safetensors"))
    save_file({k: v for k, v in t.items() if not k.startswith("resid_")}, str(tmp_path / "n" / "neurons.safetensors"))
    old = LanguageNeurons.load(tmp_path / "n")
    assert old.resid_means is None
    assert SteeringConfig().hooks(old, "de")
    with pytest.raises(LangNeuronsError, match="run find again"):
        SteeringConfig(method="diffmean").hooks(old, "de")


def test_config_is_validated():
    with pytest.raises(LangNeuronsError, match="unknown intervention"):
        SteeringConfig(method="steer-harder")
    with pytest.raises(LangNeuronsError, match="finite"):
        SteeringConfig(method="add", alpha=float("nan"))
    with pytest.raises(LangNeuronsError, match="positions=last"):
        SteeringConfig(method="diffmean", positions="last")


# ---- builders against slow references: a spy before and after the steering hooks at the same hook point ----
def _sandwich(model, hooks, ids=IDS):
    """(activation before the steering hooks, after them, logits) at every hook point the hooks touch."""
    names = sorted({n for n, _ in hooks})
    pre, post = {}, {}

    def spy(store, name):
        return lambda x, hook: store.__setitem__(name, x.detach().clone())

    fwd = [(n, spy(pre, n)) for n in names] + list(hooks) + [(n, spy(post, n)) for n in names]
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
        logits = model(ids)
    return pre, post, logits


def _by_layer(neurons, sel, values):
    """{hook name: (units, values)} of global neuron indices."""
    out = {}
    for n, v in zip(sel.tolist(), values.tolist()):
        site, unit = neurons.index.locate(n)
        out.setdefault(site.hook, []).append((unit, v))
    return out


def _direct_mu(pooled, labels, li):
    on = pooled.values[torch.as_tensor(labels == li)].double().mean(0)
    off = pooled.values[torch.as_tensor(labels != li)].double().mean(0)
    return on, off


def test_neurons_and_ap_identical_with_the_residual_hooks(found, tiny_llama, tiny_corpus):
    neurons, _, labels = found
    texts, _ = tiny_corpus.flat()
    plain = collect(tiny_llama, texts, "mlp_post", progress=False)
    assert plain.resid is None
    before = LanguageNeurons.from_activations(plain, labels, neurons.languages, k=5)
    assert torch.equal(before.ap, neurons.ap) and torch.equal(before.medians, neurons.medians)
    for lang in neurons.languages:
        for w in ("top", "bottom", "middle"):
            assert torch.equal(before.sets[lang][w].neurons, neurons.sets[lang][w].neurons)


@pytest.mark.parametrize("which,source", [("both", None), ("top", "en"), ("bottom", "ja")])
def test_add_against_reference(found, tiny_llama, which, source):
    neurons, pooled, labels = found
    t = neurons.languages.index("de")
    hooks = M.add(neurons, "de", alpha=1.5, which=which, k=4, source=source)
    pre, post, _ = _sandwich(tiny_llama, hooks)
    on, off = _direct_mu(pooled, labels, t)
    sel, _ = neurons.selected("de", which, 4)
    plus = _by_layer(neurons, sel, (1.5 * (on - off))[sel])
    setv = {}
    if source is not None:
        s = neurons.languages.index(source)
        src = torch.topk(neurons.ap[s], 4).indices
        setv = _by_layer(neurons, src, _direct_mu(pooled, labels, s)[1][src])
    assert set(pre) == set(plus) | set(setv)
    for name in pre:
        expect = pre[name].clone()
        for unit, v in plus.get(name, []):
            expect[..., unit] += v
        for unit, v in setv.get(name, []):
            expect[..., unit] = v
        assert torch.allclose(post[name], expect, atol=1e-5), name


def test_clamp_against_reference(found, tiny_llama):
    neurons, pooled, labels = found
    hooks = M.clamp(neurons, "fr", which="both", k=3, scale=0.5)
    pre, post, _ = _sandwich(tiny_llama, hooks)
    sel, _ = neurons.selected("fr", "both", 3)
    med = np.median(pooled.values[torch.as_tensor(labels == neurons.languages.index("fr"))].double().numpy(), 0)
    setv = _by_layer(neurons, sel, 0.5 * torch.from_numpy(med)[sel])
    assert set(pre) == set(setv)
    for name in pre:
        expect = pre[name].clone()
        for unit, v in setv[name]:
            expect[..., unit] = v
        assert torch.allclose(post[name], expect, atol=1e-6)


@pytest.mark.parametrize("source", [None, "en"])
def test_diffmean_and_sparse_against_reference(found, tiny_llama, source):
    neurons, _, _ = found
    means, norms = neurons.residual()
    t = neurons.languages.index("ja")
    other = (means[neurons.languages.index(source), 1] if source else
             means[[i for i in range(len(neurons.languages)) if i != t], 1].mean(0)).double()
    v = means[t, 1].double() - other
    pre, post, _ = _sandwich(tiny_llama, M.diffmean(neurons, "ja", layer=1, alpha=0.7, source=source))
    assert list(pre) == ["blocks.1.hook_resid_post"]
    h = pre["blocks.1.hook_resid_post"]
    assert torch.allclose(post["blocks.1.hook_resid_post"], h + (0.7 * norms[1] * v / (v.norm() + 1e-8)).float(), atol=1e-5)
    dims = torch.topk(v.abs(), 3).indices
    for restore in (False, True):
        pre, post, _ = _sandwich(tiny_llama, M.sparse(neurons, "ja", layer=1, n_dims=3, coef=2.0, restore_norm=restore,
                                                       source=source))
        h = pre["blocks.1.hook_resid_post"]
        expect = h.clone()
        expect[..., dims] = 2.0 * means[t, 1, dims]
        if restore:
            expect = expect * h.norm(dim=-1, keepdim=True) / expect.norm(dim=-1, keepdim=True)
        assert torch.allclose(post["blocks.1.hook_resid_post"], expect, atol=1e-5)


def test_identity_settings_leave_the_logits_unchanged(found, tiny_llama):
    neurons = found[0]
    plain = tiny_llama(IDS)
    for hooks in (M.add(neurons, "zh", alpha=0.0, source=None), M.diffmean(neurons, "zh", alpha=0.0)):
        assert torch.allclose(tiny_llama.run_with_hooks(IDS, fwd_hooks=hooks), plain, atol=1e-6)
    # sparse is an overwrite: it is the identity where h already holds coef * mu_L(t) on its dimensions
    means, _ = neurons.residual()
    t, layer, coef = neurons.languages.index("zh"), 2, 0.3
    diff = means[t, layer] - means[[i for i in range(len(neurons.languages)) if i != t], layer].mean(0)
    dims = torch.topk(diff.abs(), 4).indices

    def put(x, hook):
        x = x.clone()
        x[..., dims] = coef * means[t, layer, dims]
        return x

    name = f"blocks.{layer}.hook_resid_post"
    ref = tiny_llama.run_with_hooks(IDS, fwd_hooks=[(name, put)])
    for restore in (False, True):
        hooks = [(name, put)] + M.sparse(neurons, "zh", layer=layer, n_dims=4, coef=coef, restore_norm=restore)
        assert torch.allclose(tiny_llama.run_with_hooks(IDS, fwd_hooks=hooks), ref, atol=1e-5)


@pytest.mark.parametrize("method,kw", [("clamp", {"scale": 0.5}), ("add", {"alpha": 2.0, "source": "en"}),
                                       ("diffmean", {"alpha": 2.0, "layer": 0}),
                                       ("sparse", {"n_dims": 3, "coef": 0.5, "restore_norm": False})])
def test_one_entry_point_equals_the_builders(found, tiny_llama, method, kw):
    neurons, _, _ = found
    ref = tiny_llama.run_with_hooks(IDS, fwd_hooks=M.BUILDERS[method](neurons, "fr", **kw))
    assert not torch.allclose(ref, tiny_llama(IDS))
    via_neurons = neurons.hooks("fr", method=method, **kw)
    via_config = SteeringConfig(method=method, **kw).hooks(neurons, "fr")
    for hooks in (via_neurons, via_config):
        assert torch.equal(tiny_llama.run_with_hooks(IDS, fwd_hooks=hooks), ref)
        with tiny_llama.hooks(fwd_hooks=hooks):
            assert torch.equal(tiny_llama(IDS), ref)
            logits, cache = tiny_llama.run_with_cache(IDS, names_filter=lambda n: n.endswith("hook_resid_post"))
        assert torch.equal(logits, ref) and len(cache) == 3
    # the defaults of the entry points agree too
    dflt = M.BUILDERS[method](neurons, "fr")
    assert torch.equal(tiny_llama.run_with_hooks(IDS, fwd_hooks=neurons.hooks("fr", method=method)),
                       tiny_llama.run_with_hooks(IDS, fwd_hooks=dflt))
    assert torch.equal(tiny_llama.run_with_hooks(IDS, fwd_hooks=SteeringConfig(method=method).hooks(neurons, "fr")),
                       tiny_llama.run_with_hooks(IDS, fwd_hooks=dflt))


def test_clamp_generated_through_neurons_hooks(found, tiny_llama):
    neurons, _, _ = found
    hooks = neurons.hooks("de", positions="generated")
    with prompt_pass():
        assert torch.equal(tiny_llama.run_with_hooks(IDS, fwd_hooks=hooks), tiny_llama(IDS))
    assert torch.equal(tiny_llama.run_with_hooks(IDS, fwd_hooks=hooks),
                       tiny_llama.run_with_hooks(IDS, fwd_hooks=neurons.hooks("de")))


def test_bad_settings_are_refused(found):
    neurons, _, _ = found
    for kw, msg in [({"method": "diffmean", "layer": 3}, "between 0 and 2"), ({"method": "sparse", "layer": -1}, "at least 0"),
                    ({"method": "add", "source": "de"}, "source and target"),
                    ({"method": "diffmean", "source": "it"}, "no neurons for language 'it'"),
                    ({"method": "sparse", "coef": float("inf")}, "finite"), ({"method": "add", "k": 0}, "at least 1"),
                    ({"method": "add", "which": "all"}, "unknown neuron set"), ({"method": "mix"}, "unknown intervention")]:
        with pytest.raises(LangNeuronsError, match=msg):
            neurons.hooks("de", **kw)
    with pytest.raises(LangNeuronsError, match="between 0 and 2"):
        M.sparse(neurons, "de", layer=7)
    with pytest.raises(LangNeuronsError, match="finite"):
        M.add(neurons, "de", alpha=float("nan"))


def test_sparse_leaves_out_outlier_dimensions(found, tiny_llama):
    """A dimension far above the others in mean magnitude (Gemma-3-270M's 163) is never selected by sparse
    by default, and with ``outlier_factor`` diffmean zeroes it in the difference; off gives the old behaviour."""
    import copy

    neurons = copy.copy(found[0])
    means = neurons.resid_means.clone()
    t, layer, big = neurons.languages.index("zh"), 2, 7
    means[:, layer, big] = 500.0 * (1 + torch.arange(len(neurons.languages), dtype=means.dtype))  # huge, most different
    neurons.resid_means = means
    assert M.outlier_dims(neurons, layer) == [big]
    assert M.outlier_dims(neurons, layer, factor=None) == [] == M.outlier_dims(neurons, layer, factor=0)
    diff = means[t, layer].double() - means[[i for i in range(len(neurons.languages)) if i != t], layer].double().mean(0)
    assert int(diff.abs().argmax()) == big
    score = diff.abs()
    score[big] = -1
    expect = torch.topk(score, 4).indices
    before, _ = _resid(tiny_llama, layer)
    for hooks, dims in [(SteeringConfig(method="sparse", layer=layer, n_dims=4, restore_norm=False).hooks(neurons, "zh"), expect),
                        (M.sparse(neurons, "zh", layer=layer, n_dims=4, restore_norm=False, outlier_factor=0),
                         torch.topk(diff.abs(), 4).indices),
                        (M.sparse(neurons, "zh", layer=layer, n_dims=4, restore_norm=False, exclude_dims=[big]), expect)]:
        after, _ = _resid(tiny_llama, layer, hooks=hooks)
        changed = sorted(int(d) for d in torch.nonzero((after != before).any(0).any(0)).flatten())
        assert changed == sorted(int(d) for d in dims)
    plain = M.diffmean(neurons, "zh", layer=layer)
    cut = SteeringConfig(method="diffmean", layer=layer, outlier_factor=10).hooks(neurons, "zh")
    d_plain = _resid(tiny_llama, layer, hooks=plain)[0] - before
    d_cut = _resid(tiny_llama, layer, hooks=cut)[0] - before
    assert float(d_plain[..., big].abs().max()) > 0 and float(d_cut[..., big].abs().max()) == 0
    assert torch.allclose(d_cut.norm(dim=-1), d_plain.norm(dim=-1), rtol=1e-4)  # still alpha x the norm
    with pytest.raises(LangNeuronsError, match="outlier-factor"):
        SteeringConfig(method="sparse", outlier_factor=0.5)
    with pytest.raises(LangNeuronsError, match="outlier-dims"):
        M.sparse(neurons, "zh", layer=layer, exclude_dims=[99])
    assert "out=off" in SteeringConfig(method="sparse", outlier_factor=0).label()


@pytest.mark.parametrize("method", ["add", "diffmean"])
def test_steer_tokens_steers_the_first_tokens_then_lets_the_model_write(found, tiny_llama, method):
    """steer_tokens=N: the hooks act in the N generation passes that write the first N tokens (so those
    tokens equal the fully steered samples'), then stay out; N >= the sample length is full steering;
    outside generation they act on every pass. Samples keep their cache key when it is unset."""
    from tl_langneurons.steer.generation import generate_many

    neurons, _, _ = found
    full = SteeringConfig(method=method, alpha=4.0)
    first = SteeringConfig(method=method, alpha=4.0, steer_tokens=3)
    reqs = [(None, s) for s in (1, 2, 3, 4)]

    def run(cfg, n=8):
        return [s.tokens for s in generate_many(tiny_llama, reqs, max_new_tokens=n, stop_at_eos=False,
                                                fwd_hooks=cfg.hooks(neurons, "ja"))]

    steered, partly, plain = run(full), run(first), [s.tokens for s in generate_many(
        tiny_llama, reqs, max_new_tokens=8, stop_at_eos=False)]
    assert [t[:3] for t in partly] == [t[:3] for t in steered]
    assert partly != steered and partly != plain
    assert run(SteeringConfig(method=method, alpha=4.0, steer_tokens=8)) == steered
    calls = []
    hooks = [(name, lambda x, hook, fn=fn: (calls.append(1), fn(x, hook))[1]) for name, fn in full.hooks(neurons, "ja")]
    gated = M.only_first_tokens(hooks, 3)
    generate_many(tiny_llama, reqs, max_new_tokens=8, stop_at_eos=False, fwd_hooks=gated)
    assert len(calls) == 3 * len(hooks)  # one batch: passes 0, 1, 2
    assert torch.equal(tiny_llama.run_with_hooks(IDS, fwd_hooks=first.hooks(neurons, "ja")),
                       tiny_llama.run_with_hooks(IDS, fwd_hooks=full.hooks(neurons, "ja")))
    assert "steer_tokens" not in full.key() and first.key()["steer_tokens"] == 3
    assert first.label().endswith(" first 3")
    assert SteeringConfig(method="add", k=9, layers="last").label() == "add k=9 layers=last a=1"
    for bad in (0, True):
        with pytest.raises(LangNeuronsError, match="steer-tokens"):
            SteeringConfig(steer_tokens=bad)
    # 16.0 is refused too: by the check, or first by the runtime type checker the test suite installs (TypeError)
    with pytest.raises((LangNeuronsError, TypeError), match="steer.tokens"):
        SteeringConfig(steer_tokens=16.0)


def test_band_alphas_scale_the_added_difference_by_layer(found):
    """band_alphas: each neuron's addition times its band's factor (layers not named x1; a later band wins)."""
    neurons, _, _ = found
    plain = dict(M.add(neurons, "de", alpha=2.0))
    banded = dict(M.add(neurons, "de", alpha=2.0, band_alphas="0-1:0.5+1-1:3"))
    factor = {0: 0.5, 1: 3.0, 2: 1.0}
    assert set(plain) == set(banded)
    for name, fn in plain.items():
        x = torch.randn(1, 4, 48)
        layer = int(name.split(".")[1])
        want = x + factor[layer] * (fn(x.clone(), None) - x)
        assert torch.allclose(banded[name](x.clone(), None), want, atol=1e-6)
    zero = dict(M.add(neurons, "de", alpha=2.0, band_alphas="0-2:0"))
    x = torch.randn(1, 4, 48)
    assert all(torch.equal(fn(x.clone(), None), x) for fn in zero.values())
    for bad in ("0-1", "late:1", "0-1:x", "0-1:-1", ""):
        with pytest.raises(LangNeuronsError, match="band-alphas|layer subset"):
            SteeringConfig(method="add", band_alphas=bad).hooks(neurons, "de")
    with pytest.raises(LangNeuronsError, match="band-alphas is for add"):
        SteeringConfig(method="diffmean", band_alphas="0-1:2")
    assert SteeringConfig(method="add", band_alphas="last:0.5").label() == "add a=1 bands=last:0.5"


def test_resid_alpha_adds_the_diffmean_term_and_keep_norm_keeps_each_norm(found, tiny_llama):
    """add + resid_alpha: the add hooks and diffmean's at the layer, together; keep_norm rescales each position of
    the residual stream to its norm before the addition (ReCoVeR's norm preservation)."""
    neurons, _, _ = found
    both = M.add(neurons, "ja", alpha=1.0, resid_alpha=0.5, layer=1)
    names = [n for n, _ in both]
    assert names[:-1] == [n for n, _ in M.add(neurons, "ja", alpha=1.0)] and names[-1] == "blocks.1.hook_resid_post"
    before, _ = _resid(tiny_llama, 1, hooks=M.add(neurons, "ja", alpha=1.0))
    after, _ = _resid(tiny_llama, 1, hooks=both)
    dm_before, _ = _resid(tiny_llama, 1)
    dm_after, _ = _resid(tiny_llama, 1, hooks=M.diffmean(neurons, "ja", layer=1, alpha=0.5))
    assert torch.allclose(after - before, dm_after - dm_before, atol=1e-5)
    kept, _ = _resid(tiny_llama, 1, hooks=M.diffmean(neurons, "ja", layer=1, alpha=0.5, keep_norm=True))
    assert torch.allclose(kept.norm(dim=-1), dm_before.norm(dim=-1), rtol=1e-5)
    assert not torch.allclose(kept, dm_after, atol=1e-3)
    want = dm_after * (dm_before.norm(dim=-1, keepdim=True) / dm_after.norm(dim=-1, keepdim=True))
    assert torch.allclose(kept, want, atol=1e-5)
    cfg = SteeringConfig(method="add", resid_alpha=0.5, keep_norm=True)
    assert cfg.resolved(neurons).label() == f"add a=1 +diffmean L{M.default_layer(3)} a=0.5 norm"
    assert cfg.label() == "add a=1 +diffmean a=0.5 norm"  # unresolved: the default layer, unnamed
    # through LanguageNeurons.hooks too
    via = neurons.hooks("ja", method="add", resid_alpha=0.5, layer=1)
    assert [n for n, _ in via] == names
    assert cfg.key()["resid_alpha"] == 0.5 and cfg.key()["keep_norm"] is True
    with pytest.raises(LangNeuronsError, match="keep-norm"):
        SteeringConfig(method="add", keep_norm=True)
    with pytest.raises(LangNeuronsError, match="resid-alpha"):
        SteeringConfig(method="clamp", resid_alpha=0.5)
    assert "norm" in SteeringConfig(method="diffmean", layer=1, keep_norm=True).label()


@pytest.mark.parametrize("method", ["add", "diffmean"])
def test_after_scale_steers_the_first_tokens_fully_then_at_a_share(found, tiny_llama, method):
    """Two-phase strength: the first N tokens equal the fully steered samples', the rest the samples of the
    setting whose later passes steer at after_scale x alpha; after_scale 1 is steering every token, and outside
    generation only the first phase acts (once)."""
    from tl_langneurons.steer.generation import generate_many

    neurons, _, _ = found
    reqs = [(None, s) for s in (1, 2, 3, 4)]

    def run(cfg, n=8):
        return [s.tokens for s in generate_many(tiny_llama, reqs, max_new_tokens=n, stop_at_eos=False,
                                                fwd_hooks=cfg.hooks(neurons, "ja"))]

    full = SteeringConfig(method=method, alpha=4.0)
    two = SteeringConfig(method=method, alpha=4.0, steer_tokens=3, after_scale=0.25)
    first = SteeringConfig(method=method, alpha=4.0, steer_tokens=3)
    got = run(two)
    assert [t[:3] for t in got] == [t[:3] for t in run(full)]
    assert got != run(first) and got != run(full)
    assert run(SteeringConfig(method=method, alpha=4.0, steer_tokens=3, after_scale=1.0)) == run(full)
    # the second phase by hand: step >= 3 at alpha 1
    weak = SteeringConfig(method=method, alpha=1.0).hooks(neurons, "ja")
    by_hand = M.only_first_tokens(full.hooks(neurons, "ja"), 3) + M.only_after_tokens(weak, 3)
    assert got == [s.tokens for s in generate_many(tiny_llama, reqs, max_new_tokens=8, stop_at_eos=False,
                                                   fwd_hooks=by_hand)]
    assert torch.equal(tiny_llama.run_with_hooks(IDS, fwd_hooks=two.hooks(neurons, "ja")),
                       tiny_llama.run_with_hooks(IDS, fwd_hooks=full.hooks(neurons, "ja")))
    assert two.label().endswith("first 3 then x0.25") and two.key()["after_scale"] == 0.25
    with pytest.raises(LangNeuronsError, match="steer-tokens"):
        SteeringConfig(method=method, after_scale=0.5)
    for bad in (-1.0, 0.0):  # 0 would be steer_tokens alone under another key
        with pytest.raises(LangNeuronsError, match="after-scale must be above 0"):
            SteeringConfig(method=method, steer_tokens=3, after_scale=bad)
    with pytest.raises(LangNeuronsError, match="after-scale"):
        SteeringConfig(method="clamp", steer_tokens=3, after_scale=0.5)


def test_keys_of_settings_made_before_the_later_fields_are_unchanged():
    """The sample cache is keyed by SteeringConfig.key(): settings without the later fields keep the keys (and
    so the samples) they had before those fields existed."""
    assert SteeringConfig(method="add", alpha=1.5, source="de", positions="generated").key() == {
        "method": "add", "value": "median", "scale": 1.0, "positions": "generated", "layers": None, "alpha": 1.5,
        "layer": None, "n_dims": None, "coef": 1.0, "restore_norm": True, "source": "de"}
    assert SteeringConfig(method="diffmean", alpha=0.1, layer=12).key() == {
        "method": "diffmean", "positions": "all", "alpha": 0.1, "layer": 12, "n_dims": None, "coef": 1.0,
        "restore_norm": True, "source": None, "outlier_factor": None}
    assert SteeringConfig().key() == {"value": "median", "scale": 1.0, "positions": "all", "layers": None}


@pytest.mark.parametrize("which", ["top", "bottom", "both"])
def test_spread_even_takes_the_best_with_at_most_ceil_k_over_layers_per_layer(found, which):
    """spread="even": a slow loop over the ranking (best first), taking a neuron while its layer holds fewer than
    ceil(k / L), stopping at k; within a layer subset, L is the subset's layers."""
    neurons, _, _ = found
    layer_of = neurons.index.layers()
    for k, layers in ((7, None), (4, "0-1"), (1, None)):
        got, med = neurons.selected("de", which, k, layers, spread="even")
        subset = neurons.layer_subset(layers) or list(range(neurons.index.n_layers))
        cap = -(-k // len(subset))
        want = []
        for w in ("top", "bottom") if which == "both" else (which,):
            order = neurons.selected("de", w, neurons.index.n_neurons)[0].tolist()  # the whole ranking
            taken, per = [], {}
            for n in order:
                if layer_of[n] in subset and per.get(layer_of[n], 0) < cap and len(taken) < k:
                    taken.append(n)
                    per[layer_of[n]] = per.get(layer_of[n], 0) + 1
            want += taken
        assert got.tolist() == want, (k, layers)
        assert torch.equal(med, neurons.medians[neurons.languages.index("de")][got])
    cfg = SteeringConfig(method="add", k=6, spread="even")
    assert cfg.label() == "add k=6 spread=even a=1" and cfg.key()["spread"] == "even"
    hooks = dict(cfg.hooks(neurons, "de"))
    sel = neurons.selected("de", "both", 6, spread="even")[0]
    assert sum((fn(torch.zeros(1, 1, 48), None) != 0).sum().item() for fn in hooks.values()) == len(sel)
    for bad, msg in ((dict(spread="wide"), "--spread must be even"), (dict(method="diffmean", spread="even"), "is for clamp and add, not diffmean"),
                     (dict(which="middle", spread="even"), "middle set cannot be spread")):
        with pytest.raises(LangNeuronsError, match=msg):
            SteeringConfig(**bad)
    with pytest.raises(LangNeuronsError, match="cannot be spread"):
        neurons.selected("de", "middle", 4, spread="even")


def test_the_second_phase_scales_the_diffmean_term_too(found, tiny_llama):
    """add + resid_alpha with a two-phase strength: from token N on, both the addition and the diffmean term are at
    after_scale times their strength (the same samples as those hooks built by hand)."""
    from tl_langneurons.steer.generation import generate_many

    neurons, _, _ = found
    reqs = [(None, s) for s in (1, 2, 3)]
    two = SteeringConfig(method="add", alpha=2.0, resid_alpha=1.0, layer=1, steer_tokens=2, after_scale=0.5)
    full = SteeringConfig(method="add", alpha=2.0, resid_alpha=1.0, layer=1).hooks(neurons, "ja")
    half = SteeringConfig(method="add", alpha=1.0, resid_alpha=0.5, layer=1).hooks(neurons, "ja")
    term_full = SteeringConfig(method="add", alpha=1.0, resid_alpha=1.0, layer=1).hooks(neurons, "ja")
    by_hand = M.only_first_tokens(full, 2) + M.only_after_tokens(half, 2)

    def run(hooks):
        return [s.tokens for s in generate_many(tiny_llama, reqs, max_new_tokens=6, stop_at_eos=False, fwd_hooks=hooks)]

    got = run(two.hooks(neurons, "ja"))
    assert got == run(by_hand)
    assert got != run(M.only_first_tokens(full, 2) + M.only_after_tokens(term_full, 2))  # the term left at full


def _added_by_layer(hooks, d_mlp=48):
    """What each add hook adds, by layer (the hook applied to zeros)."""
    out = {}
    for name, fn in hooks:
        out[int(name.split(".")[1])] = fn(torch.zeros(1, 1, d_mlp), None)[0, 0].double()
    return out


@pytest.mark.parametrize("which", ["both", "top"])
def test_equal_norm_gives_every_language_the_mean_norm(found, which):
    """equal_norm total: each language's whole addition has the mean norm of the languages' additions; quarters:
    each quarter of the depth (layer x 4 // 3 on the 3-layer model: one layer each) has the mean norm there of the
    languages with neurons in it; the direction within a group is unchanged. Norms from the hooks themselves,
    against a slow loop over the selected neurons."""
    neurons, _, _ = found
    langs = neurons.languages
    slow = {}
    for lang in langs:  # the plain addition's squared norm per layer, neuron by neuron
        li = langs.index(lang)
        sel, _ = neurons.selected(lang, which, 6)
        per = {}
        for n in sel.tolist():
            layer = int(neurons.index.layers()[n])
            d = 1.5 * float(neurons.means[li, n] - neurons.means_off(lang)[n])
            per[layer] = per.get(layer, 0.0) + d * d
        slow[lang] = per
    total = {l: sum(p.values()) ** 0.5 for l, p in slow.items()}
    for lang in langs:
        plain = _added_by_layer(M.add(neurons, lang, alpha=1.5, which=which, k=6))
        assert sum(float(v.norm()) ** 2 for v in plain.values()) ** 0.5 == pytest.approx(total[lang], rel=1e-5)
        tot = _added_by_layer(M.add(neurons, lang, alpha=1.5, which=which, k=6, equal_norm="total"))
        got = sum(float(v.norm()) ** 2 for v in tot.values()) ** 0.5
        assert got == pytest.approx(sum(total.values()) / len(langs), rel=1e-5)
        for layer in plain:  # one factor: every layer scaled alike
            assert torch.allclose(tot[layer], plain[layer] * got / total[lang], atol=1e-5)
        quarters = _added_by_layer(M.add(neurons, lang, alpha=1.5, which=which, k=6, equal_norm="quarters"))
        for layer, v in quarters.items():
            there = [p[layer] ** 0.5 for p in slow.values() if p.get(layer, 0) > 0]
            want = sum(there) / len(there) if layer in slow[lang] else 0.0
            assert float(v.norm()) == pytest.approx(want, rel=1e-5, abs=1e-6)
            if layer in slow[lang]:
                assert torch.allclose(v / v.norm(), plain[layer] / plain[layer].norm(), atol=1e-5)
    cfg = SteeringConfig(method="add", alpha=1.5, k=6, which=which, equal_norm="quarters")
    assert cfg.label().startswith(f"add{'' if which == 'both' else ' top'} k=6 a=1.5 eqnorm=quarters")
    assert cfg.key()["equal_norm"] == "quarters" and "equal_norm" not in SteeringConfig(method="add").key()
    for bad, msg in [(dict(method="add", equal_norm="layers"), "--equal-norm must be total or quarters"),
                     (dict(method="diffmean", equal_norm="total"), "--equal-norm is for add, not diffmean"),
                     (dict(method="add", which="middle", equal_norm="total"), "not the middle set")]:
        with pytest.raises(LangNeuronsError, match=msg):
            SteeringConfig(**bad)
