"""find_neurons and LanguageNeurons: selection is the AP ranking, the result round-trips and is
byte-identical across runs, and its hooks clamp exactly the selected neurons."""

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


def test_hooks_clamp_values_inside_forward(found, tiny_llama):
    neurons = found[0]
    hooks = neurons.hooks("de", "both")
    sel, med = neurons.selected("de", "both")
    seen = {}

    def spy(x, hook, name):
        seen[name] = x.detach().clone()

    names = sorted({h for h, _ in hooks})
    spies = [(n, lambda x, hook, n=n: spy(x, hook, n)) for n in names]
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with tiny_llama.hooks(fwd_hooks=hooks + spies):
        tiny_llama(ids)
    for n_global, value in zip(sel.tolist(), med.tolist()):
        site, unit = neurons.index.locate(n_global)
        assert torch.allclose(seen[site.hook][0, :, unit], torch.tensor(value)), (site.hook, unit)
    zero = dict(neurons.hooks("de", "top", value="zero"))
    scaled = neurons.hooks("de", "top", value=2.0, scale=0.5)
    assert len(zero) >= 1 and len(scaled) >= 1
    for bad, msg in [({"which": "all"}, "unknown neuron set"), ({"value": "mean"}, "unknown clamp value"),
                     ({"positions": "first"}, "unknown clamp positions")]:
        with pytest.raises(LangNeuronsError, match=msg):
            neurons.hooks("de", **bad)
    with pytest.raises(LangNeuronsError, match="no neurons for language 'it'"):
        neurons.hooks("it")


def test_hooks_for_larger_k_use_full_ranking(found):
    neurons = found[0]
    sel, med = neurons.selected("ja", "top", k=30)
    assert sel[:10].tolist() == neurons.sets["ja"]["top"].neurons.tolist()
    assert torch.equal(med, neurons.medians[neurons.languages.index("ja")][sel])


def test_analysis_outputs(found, tmp_path):
    neurons, pooled, labels = found
    stats = write_analysis(neurons, tmp_path, pooled, labels)
    for name in ("layers.png", "layers.md", "layers.csv", "overlap.png", "overlap.md", "overlap.csv", "distributions.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    ov = overlap_matrix(neurons)
    assert ov.shape == (6, 6) and (np.diag(ov) <= 20).all() and (ov == ov.T).all()
    c = layer_counts(neurons, "en", "top")
    assert c.sum() == 10 and len(c) == 3
    assert quarter_shares(np.array([4, 0, 0, 0, 0, 0, 0, 6])) == (0.4, 0.6)
    assert set(stats["quarter_shares"]) == {"top", "middle", "bottom"}


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
    with pytest.raises(LangNeuronsError, match="larger than the number of neurons \\(48\\)"):
        neurons.selected("de", k=49, layers="first")
