"""The four selectors on the tiny model: each equals a slow numpy reference computed from the
activations of ``run_with_cache``; the token statistics come from the one collection pass (and a
cache serves every method); ``--method`` works on the command line; results round-trip."""

import json
import math

import numpy as np
import pytest
import torch

from tl_langneurons import LangNeuronsError
from tl_langneurons.cli import main
from tl_langneurons.detect.activations import bin_edges
from tl_langneurons.detect.neurons import FindConfig, LanguageNeurons, find_neurons

K = 10
TOP_RATE = 0.1  # 14 of the 144 neurons (the paper's 1% keeps one neuron of the tiny model)


@pytest.fixture(scope="module")
def tokens_ref(tiny_llama, tiny_corpus):
    """Every real (non-BOS) token's mlp_post values per language, {language index: [tokens, 144]},
    one text at a time through run_with_cache."""
    texts, labels = tiny_corpus.flat()
    tok = tiny_llama.tokenizer
    out: dict[int, list] = {}
    with torch.no_grad():
        for text, l in zip(texts, labels):
            ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
            _, cache = tiny_llama.run_with_cache(torch.tensor([ids]))
            v = torch.cat([cache[f"blocks.{i}.mlp.hook_post"][0] for i in range(3)], dim=-1)[1:]
            out.setdefault(int(l), []).append(v.double().numpy())
    return {l: np.concatenate(v) for l, v in out.items()}


def find(model, corpus, method, **kw):
    # batch_size=1: each text runs alone, as in the reference (no padding, the same floats)
    return find_neurons(model, corpus, k=K, method=method, lape_top_rate=TOP_RATE, batch_size=1, progress=False, **kw)


@pytest.fixture(scope="module")
def results(tiny_llama, tiny_corpus):
    return {m: find(tiny_llama, tiny_corpus, m, return_activations=True) for m in ("ap", "lape", "actprob", "meandiff")}


def lape_ref(p: np.ndarray, top_rate: float, filter_rate: float = 0.95, bar_ratio: float = 0.95) -> list[list[int]]:
    """RUCAIBox identify.py with plain loops; ``p`` [language, neuron]; each language's neurons by entropy."""
    L, N = p.shape
    ent = []
    for m in range(N):
        s = p[:, m].sum()
        ent.append(-sum(q * math.log(q) for q in (p[:, m] / s if s > 0 else np.zeros(L)) if q > 0))
    flat = sorted(p.flatten().tolist())
    top_prob, bar = flat[round(len(flat) * filter_rate) - 1], flat[round(len(flat) * bar_ratio) - 1]
    live = [m for m in range(N) if (p[:, m] > top_prob).any()]
    kept = sorted(live, key=lambda m: (ent[m], m))[:round(N * top_rate)]
    return [[m for m in kept if p[l, m] > bar] for l in range(L)]


def threshold_ref(all_tokens: np.ndarray, pct: float = 90.0) -> np.ndarray:
    """Per neuron: the lowest candidate edge (0 exclusive, then the bin edges inclusive) that at most
    (100 - pct)% of all tokens reach."""
    edges = bin_edges()
    out = []
    for m in range(all_tokens.shape[1]):
        x = all_tokens[:, m].astype(np.float32)
        reach = [(x > 0).sum()] + [(x >= e).sum() for e in edges[2:]]
        j = next((i for i, r in enumerate(reach) if r <= (1 - pct / 100) * len(x)), len(reach) - 1)
        out.append(edges[j + 1])
    return np.array(out)


def test_token_statistics_equal_reference(results, tokens_ref):
    n = results["lape"][0]
    st = n.token_stats
    L = len(n.languages)
    assert st["n_tokens"].tolist() == [len(tokens_ref[l]) for l in range(L)]
    for l in range(L):
        assert st["active"][l].tolist() == (tokens_ref[l].astype(np.float32) > 0).sum(0).tolist()
    everything = np.concatenate([tokens_ref[l] for l in range(L)])
    thr = threshold_ref(everything)
    np.testing.assert_array_equal(st["threshold"].double().numpy(), thr)
    for l in range(L):
        x = tokens_ref[l].astype(np.float32)
        want = [int((x[:, m] > 0).sum()) if thr[m] == 0 else int((x[:, m] >= thr[m]).sum()) for m in range(x.shape[1])]
        assert st["above"][l].tolist() == want
    # the threshold is the 90th percentile rounded up to the next bin edge (bins at most 12.5% wide)
    edges = bin_edges()
    for m in range(everything.shape[1]):
        q = np.quantile(everything[:, m], 0.9)
        j = int(st["threshold_bin"][m])
        if 2 < j < len(edges) - 1:
            assert edges[j - 1] <= q * (1 + 1e-6) and q <= edges[j] * (1 + 1e-6), m
    # every method keeps the same statistics: they come from the collection, not the selector
    for m in ("ap", "actprob", "meandiff"):
        for key, t in st.items():
            assert torch.equal(results[m][0].token_stats[key], t), (m, key)


@pytest.mark.parametrize("method", ["lape", "actprob"])
def test_lape_and_actprob_equal_reference(results, tokens_ref, method):
    n = results[method][0]
    L = len(n.languages)
    st = n.token_stats
    if method == "lape":
        p = np.stack([(tokens_ref[l].astype(np.float32) > 0).mean(0) for l in range(L)])
    else:
        thr = st["threshold"].double().numpy()
        p = np.stack([np.where(thr == 0, tokens_ref[l].astype(np.float32) > 0, tokens_ref[l].astype(np.float32) >= thr).mean(0)
                      for l in range(L)])
    ref = lape_ref(p, TOP_RATE)
    for li, lang in enumerate(n.languages):
        assert n.sets[lang]["top"].neurons.tolist() == ref[li][:K], lang
        assert len(n.sets[lang]["bottom"].neurons) == 0  # LAPE selects one side only
        sel, med = n.selected(lang, "both")
        assert sel.tolist() == ref[li][:K] and torch.equal(med, n.medians[li][sel])
        assert n.selected(lang, "top", k=3)[0].tolist() == ref[li][:3]
    assert n.meta["method"] == method and n.meta["thresholds"]["top_rate"] == TOP_RATE
    assert n.meta["set_sizes"] == {l: len(ref[i][:K]) for i, l in enumerate(n.languages)}
    assert sum(len(r) for r in ref) > 0  # the test selects something
    # the AP stays the AP of every neuron, whichever method selected
    assert torch.equal(n.ap, results["ap"][0].ap)


def test_meandiff_equals_reference(results):
    n, pooled, labels = results["meandiff"]
    v = pooled.values.double().numpy()
    for li, lang in enumerate(n.languages):
        z = []
        for m in range(v.shape[1]):
            on, off = v[labels == li, m], v[labels != li, m]
            se = math.sqrt(on.var(ddof=1) / len(on) + off.var(ddof=1) / len(off))
            z.append((on.mean() - off.mean()) / se if se > 0 else 0.0)
        z = np.array(z)
        np.testing.assert_allclose(n.score[li].numpy(), z, rtol=1e-9, atol=1e-9)
        order = sorted(range(len(z)), key=lambda m: (-z[m], m))
        assert n.sets[lang]["top"].neurons.tolist() == order[:K]
        assert n.sets[lang]["bottom"].neurons.tolist() == sorted(range(len(z)), key=lambda m: (z[m], m))[:K]
    assert n.meta["method"] == "meandiff"


def test_ap_method_is_the_default_and_sklearn(results, tiny_llama, tiny_corpus):
    from sklearn.metrics import average_precision_score

    n, pooled, labels = results["ap"]
    default = find_neurons(tiny_llama, tiny_corpus, k=K, batch_size=1, progress=False)
    assert torch.equal(n.ap, default.ap) and n.score is None and default.meta["method"] == "ap"
    v = pooled.values.double().numpy()
    for li, lang in enumerate(n.languages):
        ap = [average_precision_score(labels == li, v[:, m]) for m in range(v.shape[1])]
        order = sorted(range(len(ap)), key=lambda m: (-ap[m], m))
        assert n.sets[lang]["top"].neurons.tolist() == order[:K]
        assert torch.equal(n.sets[lang]["top"].neurons, default.sets[lang]["top"].neurons)
        assert torch.equal(n.sets[lang]["bottom"].neurons, default.sets[lang]["bottom"].neurons)


def test_one_forward_pass_and_cache_serves_every_method(tiny_llama, tiny_corpus, tmp_path):
    hf = tiny_llama.original_model.base_model
    calls = []
    handle = hf.layers[0].register_forward_pre_hook(lambda mod, args: calls.append(1))
    cache = tmp_path / "acts.safetensors"
    try:
        find_neurons(tiny_llama, tiny_corpus, k=K, token_stats=False, batch_size=8, progress=False)
        bare_calls = len(calls)
        calls.clear()
        first = find_neurons(tiny_llama, tiny_corpus, k=K, method="lape", lape_top_rate=TOP_RATE, batch_size=8,
                             cache=cache, progress=False)
        # pooled values and token counts come from the same forward passes: not one more
        n_texts = sum(len(t) for t in tiny_corpus.texts.values())
        assert len(calls) == bare_calls and math.ceil(n_texts / 8) <= bare_calls < n_texts
        calls.clear()
        again = {m: find_neurons(tiny_llama, tiny_corpus, k=K, method=m, lape_top_rate=TOP_RATE, batch_size=8,
                                 cache=cache, progress=False) for m in ("ap", "lape", "actprob", "meandiff")}
        # the cache serves every method: no collection (a find probes the sites with one short forward)
        assert len(calls) <= 4 < math.ceil(n_texts / 8)
    finally:
        handle.remove()
    assert torch.equal(again["lape"].eligible, first.eligible)
    for key, t in first.token_stats.items():
        assert torch.equal(again["actprob"].token_stats[key], t)
    # a cache without token statistics serves ap and meandiff, and refuses lape with one clear line
    bare = tmp_path / "bare.safetensors"
    find_neurons(tiny_llama, tiny_corpus, k=K, token_stats=False, cache=bare, progress=False)
    find_neurons(tiny_llama, tiny_corpus, k=K, method="meandiff", cache=bare, progress=False)
    with pytest.raises(LangNeuronsError, match="holds no token statistics"):
        find_neurons(tiny_llama, tiny_corpus, k=K, method="lape", cache=bare, progress=False)
    with pytest.raises(LangNeuronsError, match="needs the token statistics"):
        FindConfig(method="actprob", token_stats=False)


def test_token_counts_survive_an_interrupted_collection(tiny_llama, tiny_corpus, tmp_path):
    from tl_langneurons.detect.activations import collect

    texts, labels = tiny_corpus.flat()
    full = collect(tiny_llama, texts, "mlp_post", batch_size=8, progress=False, token_groups=labels)
    ckpt = tmp_path / "partial.safetensors"

    def interrupt(bi, n):
        if bi == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(tiny_llama, texts, "mlp_post", batch_size=8, progress=False, token_groups=labels, checkpoint=ckpt,
                on_batch=interrupt)
    resumed = collect(tiny_llama, texts, "mlp_post", batch_size=8, progress=False, token_groups=labels, checkpoint=ckpt)
    assert torch.equal(resumed.tokens["hist"], full.tokens["hist"])
    assert torch.equal(resumed.tokens["n_tokens"], full.tokens["n_tokens"])
    assert torch.equal(resumed.values, full.values)


@pytest.mark.parametrize("method", ["lape", "meandiff"])
def test_save_load_round_trip_and_hooks(results, tiny_llama, tmp_path, method):
    n = results[method][0]
    n.save(tmp_path / method)
    back = LanguageNeurons.load(tmp_path / method)
    assert back.method == method and back.meta["method"] == method
    assert torch.equal(back.score, n.score) and torch.equal(back.ap, n.ap)
    assert (back.eligible is None) == (n.eligible is None)
    if n.eligible is not None:
        assert torch.equal(back.eligible, n.eligible)
    for key, t in n.token_stats.items():
        assert torch.equal(back.token_stats[key], t)
    for lang in n.languages:
        for w in ("top", "bottom", "middle"):
            assert torch.equal(back.sets[lang][w].neurons, n.sets[lang][w].neurons)
        sel, med = n.selected(lang, "both")
        hooks = back.hooks(lang)
        want = {s.hook for s in n.index.slices if ((sel >= s.offset) & (sel < s.offset + s.size)).any()}
        assert {h for h, _ in hooks} == want
    if method == "lape":
        assert all(back.hooks(l, "bottom") == [] for l in n.languages)
        assert "top only" in back.summary() and "| - |" in back.summary()
    header = (tmp_path / method / "neurons.csv").read_text().splitlines()[0]
    assert header.endswith(",score")


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_cli_find_method(tiny_dirs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["find", "--help"])
    assert "{ap,lape,actprob,meandiff}" in capsys.readouterr().out
    out = tmp_path / "lape"
    model = str(tiny_dirs["llama"])
    assert main(["find", "--model", model, "--n-per-lang", "8", "--k", "5", "--method", "lape", "--lape-top-rate", "0.2",
                 "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "selected by lape (top only: no bottom set)" in text
    meta = json.loads((out / "neurons.json").read_text())["meta"]
    assert meta["method"] == "lape" and meta["config"]["method"] == "lape" and meta["thresholds"]["top_rate"] == 0.2
    assert LanguageNeurons.load(out).eligible is not None
    # the report shows the method, and the selector table that bench_selectors.py --out writes
    (out / "selectors").mkdir()
    (out / "selectors" / "selectors.md").write_text("| method | x |\n|---|---|\n| lape | 1 |\n")
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Neuron selectors compared" in report and "| lape | 1 |" in report and "| method | lape |" in report
    with pytest.raises(SystemExit) as e:
        main(["find", "--model", model, "--n-per-lang", "8", "--method", "probe", "--out", str(tmp_path / "x"), "--quiet"])
    assert e.value.code == 2 and "invalid choice: 'probe'" in capsys.readouterr().err
    assert main(["find", "--model", model, "--n-per-lang", "8", "--method", "lape", "--lape-top-rate", "2",
                 "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "lape_top_rate must be a number in (0, 1]" in capsys.readouterr().err
