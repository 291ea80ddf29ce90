"""Samples are cached per (setting, seed) and shared between experiments on the same neurons: a
cached sample equals the one generated fresh, only missing seeds are generated, a damaged cache file
is regenerated with a warning."""

import json

import pytest

from tl_langneurons.detect.neurons import find_neurons
from tl_langneurons.evaluate.control import EvaluateConfig, evaluate_control
from tl_langneurons.evaluate.samples import SampleStore


@pytest.fixture(scope="module")
def neurons(tiny_llama, tiny_corpus):
    n = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    n.meta["model"] = "tiny"
    return n


def _cfg(**kw):
    return EvaluateConfig(**{"languages": ["de"], "samples": 4, "max_new_tokens": 5, "ablation_ks": [],
                             "batch_size": 3, **kw})


def _rows(res):
    """The scores of every cell; NLL to 6 decimals (a sample's NLL is computed in a batch with other
    samples, whose padding changes its float rounding, about 1e-8)."""
    return [(r["lang"], r["condition"], r["k"], r["rate"], round(r["nll"], 6), r["distinct"])
            for r in res.table2 + res.ablation]


def test_experiments_share_samples_and_cached_equals_fresh(tiny_llama, neurons, tmp_path):
    store = tmp_path / "samples"
    fresh = evaluate_control(tiny_llama, neurons, None, _cfg(ablation_ks=[10], ablation_samples=2), progress=False)
    run = fresh.meta["run"]
    # the ablation's k = 10 cell is Table 2's "both" cell on seeds 1..2: generated once, for both
    assert run["samples_generated"] == 4 * 4  # none, top, bottom, both: 4 seeds each
    assert run["tokens_generated"] <= 4 * 4 * 5
    a = evaluate_control(tiny_llama, neurons, None, _cfg(ablation_ks=[10], ablation_samples=2), tmp_path / "a",
                         progress=False, store=store)
    assert _rows(a) == _rows(fresh)
    # a second experiment with more seeds generates only the new ones
    b = evaluate_control(tiny_llama, neurons, None, _cfg(samples=6), tmp_path / "b", progress=False, store=store)
    assert b.meta["run"]["sample_cache"]["hits"] == 4 * 4 and b.meta["run"]["sample_cache"]["misses"] == 4 * 2
    c = evaluate_control(tiny_llama, neurons, None, _cfg(samples=6), progress=False)  # no cache at all
    assert _rows(b) == _rows(c)
    assert len(list(store.glob("*.json"))) == 4  # one file per setting (none, top, bottom, both)


def test_damaged_cache_file_is_regenerated_with_a_warning(tiny_llama, neurons, tmp_path):
    store = tmp_path / "samples"
    ref = evaluate_control(tiny_llama, neurons, None, _cfg(conditions=("none",)), progress=False, store=store)
    (path,) = store.glob("*.json")
    path.write_text(json.dumps({"settings": {}, "samples": []}))
    with pytest.warns(UserWarning, match="damaged"):
        again = evaluate_control(tiny_llama, neurons, None, _cfg(conditions=("none",)), progress=False, store=store)
    assert _rows(again) == _rows(ref)
    assert again.meta["run"]["sample_cache"]["misses"] == 4


def test_store_in_memory_and_on_disk():
    s = SampleStore(None)
    s.put({"a": 1}, [{"seed": 2, "text": "x", "tokens": [1], "nll": None}])
    assert s.get({"a": 1}, [1, 2]) == ({2: {"seed": 2, "text": "x", "tokens": [1], "nll": None}}, [1])
    assert s.get({"a": 2}, [2]) == ({}, [2])


def test_gate_and_reference_nll_are_computed_once_per_folder(tiny_llama, neurons, tiny_corpus, tmp_path, monkeypatch):
    """The fluency gate and reference NLL are read back on the next run (no model call), equal to a fresh
    computation; other texts or another window compute them again."""
    from tl_langneurons.evaluate import cells as control  # the cell pipeline computes the gate and reference NLL

    refs = {"de": tiny_corpus.texts["de"][:6]}
    store = tmp_path / "samples"
    fresh = evaluate_control(tiny_llama, neurons, refs, _cfg(conditions=("none",)), progress=False)
    first = evaluate_control(tiny_llama, neurons, refs, _cfg(conditions=("none",)), progress=False, store=store)
    calls = []
    real = control.text_losses
    monkeypatch.setattr(control, "text_losses", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = evaluate_control(tiny_llama, neurons, refs, _cfg(conditions=("none",)), progress=False, store=store)
    assert calls == [] and again.meta["run"]["sample_cache"]["reference_hits"] == 1
    for res in (first, again):
        assert res.meta["distinct_thresholds"] == fresh.meta["distinct_thresholds"]
        assert res.meta["reference_nll"] == fresh.meta["reference_nll"]
    assert _rows(again) == _rows(first)
    (memo,) = store.glob("references-*.json")
    assert json.loads(memo.read_text())["settings"]["window"] == 5
    evaluate_control(tiny_llama, neurons, {"de": refs["de"][:5]}, _cfg(conditions=("none",)), progress=False, store=store)
    evaluate_control(tiny_llama, neurons, refs, _cfg(conditions=("none",), max_new_tokens=6), progress=False, store=store)
    assert len(calls) == 2 and len(list(store.glob("references-*.json"))) == 3


def test_edited_sample_is_detected_by_its_checksum(tiny_llama, neurons, tmp_path):
    """A sample whose text was edited (the file still well formed) is found by the file's sha256 and
    generated again with a warning, as a damaged file; a store written before the checksum (none) is read
    as it is, and so is a file only re-indented."""
    store = tmp_path / "samples"
    ref = evaluate_control(tiny_llama, neurons, None, _cfg(conditions=("none",)), progress=False, store=store)
    (path,) = store.glob("*.json")
    data = json.loads(path.read_text())
    assert len(data["sha256"]) == 64
    path.write_text(json.dumps(data))  # another layout, the same content: still sound
    again = evaluate_control(tiny_llama, neurons, None, _cfg(conditions=("none",)), progress=False, store=store)
    assert again.meta["run"]["sample_cache"]["hits"] == 4 and _rows(again) == _rows(ref)

    data["samples"][0]["text"] += " edited"
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="damaged .*does not match its sha256"):
        fresh = evaluate_control(tiny_llama, neurons, None, _cfg(conditions=("none",)), progress=False, store=store)
    assert fresh.meta["run"]["sample_cache"]["misses"] == 4 and _rows(fresh) == _rows(ref)
    assert "edited" not in path.read_text()  # written anew, with its checksum

    old = json.loads(path.read_text())
    del old["sha256"]
    old["samples"][0]["text"] += " kept"  # a store of an earlier version: no checksum, read as it is
    path.write_text(json.dumps(old))
    store_obj = SampleStore(store)
    rows, missing = store_obj.get(old["settings"], [s["seed"] for s in old["samples"]])
    assert missing == [] and rows[old["samples"][0]["seed"]]["text"].endswith(" kept")


def test_edited_memo_is_detected_by_its_checksum(tmp_path):
    store = SampleStore(tmp_path)
    assert store.memo("gate", {"lang": "de"}, lambda: {"threshold": 0.5}) == {"threshold": 0.5}
    (path,) = tmp_path.glob("gate-*.json")
    data = json.loads(path.read_text())
    data["value"]["threshold"] = 0.1
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="does not match its sha256"):
        assert SampleStore(tmp_path).memo("gate", {"lang": "de"}, lambda: {"threshold": 0.5}) == {"threshold": 0.5}
