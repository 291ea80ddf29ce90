"""find_neurons and LanguageNeurons: selection is the AP ranking, the result round-trips and is
byte-identical across runs, and its hooks clamp exactly the selected neurons."""

import csv
import io

import numpy as np
import pytest
import torch

from tl_langneurons import LangNeuronsError, load_model
from tl_langneurons.analyses.placement import (
    layer_counts,
    overlap_matrix,
    quarter_shares,
    write_analysis,
)
from tl_langneurons.detect.neurons import FindConfig, LanguageNeurons, find_neurons
from tl_langneurons.detect.ranking import average_precision


@pytest.fixture(scope="module")
def found(tiny_llama, tiny_corpus):
    return find_neurons(tiny_llama, tiny_corpus, k=10, progress=False, return_activations=True)


def test_selection_follows_ap(found, tiny_corpus):
    neurons, pooled, labels = found
    ap = average_precision(pooled.values, labels, 6)
    for li, lang in enumerate(neurons.languages):
        top = neurons.sets[lang]["top"]
        assert top.neurons.shape == (10,)
        assert top.ap.min() >= torch.sort(ap[li], descending=True).values[9] - 1e-12
        bottom = neurons.sets[lang]["bottom"]
        assert bottom.ap.max() <= torch.sort(ap[li]).values[9] + 1e-12
        pos = torch.as_tensor(labels == li)
        med = pooled.values[pos][:, top.neurons].double().numpy()
        np.testing.assert_allclose(top.median_on.numpy(), np.median(med, axis=0), rtol=1e-6, atol=1e-6)


def test_save_load_round_trip_and_byte_identical(found, tiny_llama, tiny_corpus, tmp_path):
    neurons = found[0]
    neurons.save(tmp_path / "a")
    back = LanguageNeurons.load(tmp_path / "a")
    assert back.languages == neurons.languages and back.k == neurons.k and back.index == neurons.index
    assert torch.equal(back.ap, neurons.ap) and torch.equal(back.medians, neurons.medians)
    for lang in neurons.languages:
        assert torch.equal(back.sets[lang]["top"].neurons, neurons.sets[lang]["top"].neurons)
    again = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    again.save(tmp_path / "b")
    for name in ("neurons.safetensors", "neurons.json", "neurons.csv", "summary.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_load_refuses_corrupt_folder(found, tmp_path):
    with pytest.raises(LangNeuronsError, match="holds no neurons"):
        LanguageNeurons.load(tmp_path)
    found[0].save(tmp_path)
    data = (tmp_path / "neurons.safetensors").read_bytes()
    (tmp_path / "neurons.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LangNeuronsError, match="corrupt or incomplete"):
        LanguageNeurons.load(tmp_path)


def _spied_forward(model, hooks, ids):
    """Run ``model`` on ``ids`` with ``hooks``; for each clamp hook, what its site held just before
    and just after it ({hook name: tensor}). The clamp writes in place, so the spies clone."""
    before, after, fwd = {}, {}, []
    for name, fn in hooks:
        fwd += [(name, lambda x, hook, n=name: before.__setitem__(n, x.detach().clone())), (name, fn),
                (name, lambda x, hook, n=name: after.__setitem__(n, x.detach().clone()))]
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
        model(ids)
    return before, after


def _expected_clamp(neurons, sel, med, value, scale):
    """{hook: {unit: value}} that the hooks must set."""
    base = {"median": med, "zero": torch.zeros_like(med)}.get(value)
    vals = (torch.full_like(med, float(value)) if base is None else base) * float(scale)
    out = {}
    for n, v in zip(sel.tolist(), vals.tolist()):
        site, unit = neurons.index.locate(n)
        out.setdefault(site.hook, {})[unit] = v
    return out


IDS = torch.tensor([[1, 40, 41, 42, 43], [1, 300, 7, 99, 12]])


@pytest.mark.parametrize("which", ["top", "bottom", "both"])
@pytest.mark.parametrize("value,scale", [("median", 1.0), ("zero", 1.0), (2.5, 1.0), ("median", 0.5), (-3.0, 2.0)])
def test_hooks_clamp_exactly_the_selected_neurons(found, tiny_llama, which, value, scale):
    neurons = found[0]
    sel, med = neurons.selected("de", which)
    assert len(sel) == (20 if which == "both" else 10) and len(set(sel.tolist())) == len(sel)
    want = _expected_clamp(neurons, sel, med, value, scale)
    hooks = neurons.hooks("de", which, value=value, scale=scale)
    # one hook per site that holds a selected neuron, in the order of the sites
    assert [h for h, _ in hooks] == [s.hook for s in neurons.index.slices if s.hook in want]
    _, unclamped = tiny_llama.run_with_cache(IDS)
    before, after = _spied_forward(tiny_llama, hooks, IDS)
    first = hooks[0][0]
    # upstream of the first clamp nothing changed: its input is the unclamped forward pass
    assert torch.equal(before[first], unclamped[first])
    for name, fn in hooks:
        units = torch.tensor(sorted(want[name]))
        vals = torch.tensor([want[name][u] for u in units.tolist()])
        rest = torch.ones(before[name].shape[-1], dtype=torch.bool)
        rest[units] = False
        # every selected unit holds its value at every position, in the forward pass
        torch.testing.assert_close(after[name][..., units], vals.expand_as(after[name][..., units]), rtol=0, atol=1e-6)
        # every other unit is exactly what the site held before the clamp
        assert torch.equal(after[name][..., rest], before[name][..., rest]), name
        # and the hook alone, applied to the unclamped forward pass's activation, does the same
        x = unclamped[name].clone()
        y = fn(x, None)
        assert torch.equal(y[..., rest], unclamped[name][..., rest]), name
        torch.testing.assert_close(y[..., units], vals.expand_as(y[..., units]), rtol=0, atol=1e-6)
    # sites with no selected neuron get no hook at all
    assert set(want) == {h for h, _ in hooks}


def test_hooks_clamp_last_position_only(found, tiny_llama):
    neurons = found[0]
    sel, med = neurons.selected("ja", "both")
    want = _expected_clamp(neurons, sel, med, 4.0, 1.0)
    hooks = neurons.hooks("ja", "both", value=4.0, positions="last")
    before, after = _spied_forward(tiny_llama, hooks, IDS)
    for name, _ in hooks:
        units = torch.tensor(sorted(want[name]))
        assert torch.equal(after[name][:, :-1], before[name][:, :-1]), name  # earlier positions untouched
        assert (after[name][:, -1, units] == 4.0).all(), name
        rest = torch.ones(before[name].shape[-1], dtype=torch.bool)
        rest[units] = False
        assert torch.equal(after[name][:, -1, rest], before[name][:, -1, rest]), name


def test_hooks_for_k_and_layers_clamp_that_selection(found, tiny_llama):
    neurons = found[0]
    for kw in ({"k": 3}, {"k": 30}, {"layers": "last", "k": 4}):
        sel, med = neurons.selected("fr", "both", **kw)
        want = _expected_clamp(neurons, sel, med, "median", 1.0)
        hooks = neurons.hooks("fr", "both", **kw)
        assert [h for h, _ in hooks] == [s.hook for s in neurons.index.slices if s.hook in want], kw
        assert sum(len(u) for u in want.values()) == len(sel)
        before, after = _spied_forward(tiny_llama, hooks, IDS)
        for name, _ in hooks:
            units = torch.tensor(sorted(want[name]))
            rest = torch.ones(before[name].shape[-1], dtype=torch.bool)
            rest[units] = False
            vals = torch.tensor([want[name][u] for u in units.tolist()])
            torch.testing.assert_close(after[name][..., units], vals.expand_as(after[name][..., units]), rtol=0, atol=1e-6)
            assert torch.equal(after[name][..., rest], before[name][..., rest]), (kw, name)
    assert [h for h, _ in neurons.hooks("fr", "both", layers="last", k=4)] == ["blocks.2.mlp.hook_post"]


def test_hooks_refuse_bad_arguments(found):
    neurons = found[0]
    for bad, msg in [({"which": "all"}, "unknown neuron set"), ({"value": "mean"}, "--value must be median, zero or a finite number"),
                     ({"positions": "first"}, "unknown positions .first.")]:
        with pytest.raises(LangNeuronsError, match=msg):
            neurons.hooks("de", **bad)
    with pytest.raises(LangNeuronsError, match="no neurons for language 'it'"):
        neurons.hooks("it")


def test_hooks_for_larger_k_use_full_ranking(found):
    neurons = found[0]
    sel, med = neurons.selected("ja", "top", k=30)
    assert sel[:10].tolist() == neurons.sets["ja"]["top"].neurons.tolist()
    assert torch.equal(med, neurons.medians[neurons.languages.index("ja")][sel])


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_analysis_outputs(found, tmp_path):
    neurons, pooled, labels = found
    stats = write_analysis(neurons, tmp_path, pooled, labels)
    for name in ("layers.png", "overlap.png", "distributions.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    langs = neurons.languages
    sets = {w: [set(neurons.selected(l, w)[0].tolist()) for l in langs] for w in ("both", "top", "bottom")}
    ov = overlap_matrix(neurons)
    assert ov.tolist() == [[len(a & b) for b in sets["both"]] for a in sets["both"]]
    assert (np.diag(ov) == 20).all() and (ov == ov.T).all()  # top and bottom never overlap
    # the CSV tables hold exactly these numbers
    rows = list(csv.DictReader(io.StringIO((tmp_path / "overlap.csv").read_text())))
    assert [(r["which"], r["lang"]) for r in rows] == [(w, l) for w in ("both", "top", "bottom") for l in langs]
    for r in rows:
        i = langs.index(r["lang"])
        assert [int(r[l]) for l in langs] == [len(sets[r["which"]][i] & b) for b in sets[r["which"]]], r
    rows = list(csv.DictReader(io.StringIO((tmp_path / "layers.csv").read_text())))
    assert [(r["lang"], r["which"]) for r in rows] == [(l, w) for l in langs for w in ("top", "middle", "bottom")]
    for r in rows:
        layers = neurons.index.layers()[neurons.sets[r["lang"]][r["which"]].neurons.numpy()]
        assert [int(r[f"L{i}"]) for i in range(3)] == np.bincount(layers, minlength=3).tolist(), r
    assert "| de |" in (tmp_path / "layers.md").read_text() and "Shared neurons" in (tmp_path / "overlap.md").read_text()
    c = layer_counts(neurons, "en", "top")
    assert c.sum() == 10 and len(c) == 3
    assert quarter_shares(np.array([4, 0, 0, 0, 0, 0, 0, 6])) == (0.4, 0.6)
    assert set(stats["quarter_shares"]) == {"top", "middle", "bottom"}
    total = sum(layer_counts(neurons, l, "top") for l in langs)
    assert stats["quarter_shares"]["top"] == dict(zip(("first_quarter", "last_quarter"), quarter_shares(total)))


def test_config_validation_and_k_errors(tiny_llama, tiny_corpus):
    with pytest.raises(LangNeuronsError, match="unknown pooling 'avg'"):
        FindConfig(pooling="avg")
    with pytest.raises(LangNeuronsError, match="larger than the number of neurons \\(144\\)"):
        find_neurons(tiny_llama, tiny_corpus, k=145, progress=False)


def test_check_model_refuses_other_model(found, tiny_dirs):
    other = load_model(str(tiny_dirs["xglm"]))
    with pytest.raises(LangNeuronsError, match="Use neurons found on this model"):
        found[0].check_model(other)


def test_find_with_cache(tiny_llama, tiny_corpus, tmp_path):
    cache = tmp_path / "acts.safetensors"
    a = find_neurons(tiny_llama, tiny_corpus, k=5, cache=cache, progress=False)
    assert cache.exists()
    b = find_neurons(tiny_llama, tiny_corpus, k=5, cache=cache, progress=False)
    assert torch.equal(a.ap, b.ap)
    with pytest.raises(LangNeuronsError, match="other settings"):
        find_neurons(tiny_llama, tiny_corpus, k=5, cache=cache, pooling="max", progress=False)


def test_layer_subsets(found):
    neurons = found[0]
    assert neurons.layer_subset("first") == [0] and neurons.layer_subset("ends") == [0, 2]
    sel, _ = neurons.selected("de", "top", k=5, layers="last")
    assert set(neurons.index.layers()[sel.numpy()].tolist()) == {2}
    li = neurons.languages.index("de")
    in_last = torch.from_numpy(neurons.index.layers() == 2)
    assert neurons.ap[li][sel].min() >= neurons.ap[li][in_last].sort(descending=True).values[4]
    with pytest.raises(LangNeuronsError, match="unknown layer subset 'middle'"):
        neurons.selected("de", layers="middle")
    # a band A-B (both ends in it): the per-layer curves of a sweep's --layer-sets
    assert neurons.layer_subset("1-2") == [1, 2] and neurons.layer_subset("1-1") == [1]
    sel, _ = neurons.selected("de", "top", k=5, layers="1-2")
    assert sel.tolist() == neurons.selected("de", "top", k=5, layers=[1, 2])[0].tolist()
    for bad in ("2-1", "1-3"):
        with pytest.raises(LangNeuronsError, match="must be A-B with A <= B <= 2"):
            neurons.layer_subset(bad)
    with pytest.raises(LangNeuronsError, match="larger than the number of neurons \\(48\\)"):
        neurons.selected("de", k=49, layers="first")
