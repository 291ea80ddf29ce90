"""A sweep's ``sweep.json`` is what the sweep wrote before it was split by job (issue 40): the same keys and
values of ``best``, ``stages``, ``test`` and ``meta``, and the same ``sweep.md``, for small sweeps of the tiny model (from BOS; on held-out
prompts of two genres with every later stage and the shared search; on LCB's requests), recorded in
tests/data/sweep_golden.json by running the code of commit f740869. Only what differs between runs and
machines is masked (timings, the run's counts, versions, paths, the model's folder and the names and keys that
hold it); floats compare to 6 significant digits. A rerun reads every cell back and generates nothing.
Issue 42 (every LCB test set) changed the recorded meta alone, by four lines of the golden file: ``config.lcb_set``
(null, or crosslingual/okapi for the LCB sweep) and ``prompts.lcb`` naming the shipped archive the okapi files
are now read from; every result and sweep.md stayed as they were. The independent judge (``--judge``) added
``config.judge`` (null) to each, three lines; the script gate (issue 42) added ``config.script_gate`` and
``config.script_gate_latin`` (false) alone; ``--no-paper-row`` and ``--relevance-margin`` added ``config.paper_row`` (true) and ``config.relevance_margin`` (null), six lines.

``TL_RECORD_SWEEP_GOLDEN=1`` writes the golden file anew (only on code known to be right)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

import tl_langneurons.evaluate.cells as pipeline
from tl_langneurons import MultilingualCorpus
from tl_langneurons.detect.neurons import find_neurons
from tl_langneurons.evaluate.sweep import SweepConfig, run_sweep

GOLDEN = Path(__file__).parents[1] / "data" / "sweep_golden.json"
RECORD = os.environ.get("TL_RECORD_SWEEP_GOLDEN") == "1"

# what differs between runs or machines: masked at any depth
MASKED = {"timings", "run", "versions", "cells", "model", "neurons_model", "neurons_meta", "unchecked"}

CONFIGS = {
    "clamp-bos": dict(languages=["de", "ja"], k_fractions=["2%", "5%"], scales=[1.0, 2.0], positions=["all", "last"],
                      layer_sets=["all", "first"], neuron_sets=["both", "top"], shared_pick="floor", val_samples=2,
                      test_samples=2, max_new_tokens=4, test_settings=["mine=clamp:k=3,scale=1.5"]),
    "add-genres": dict(method="add", languages=["de", "ja"], k_fractions=["5%"], alphas=[0.5, 2.0],
                       layer_sets=["all"], positions=["all", "generated"], sources=["none", "prompt"],
                       spreads=["even"], band_alphas=["last:0.5"], resid_alphas=[0.1], resid_layers=[1],
                       keep_norm_stage=True, steer_tokens=[2], after_scales=[0.5], shared_search=True,
                       shared_pick="worst", equal_norms=["total"], genres=True, val_prompts=1, test_prompts=1,
                       val_samples=1, test_samples=1, max_new_tokens=4),
    "diffmean-lcb": dict(method="diffmean", lcb=True, languages=["de", "ja"], alphas=[0.5, 2.0], resid_layers=[1, 2],
                         keep_norm_stage=True, val_prompts=3, test_prompts=3, max_new_tokens=4, temperature=0.3),
}


def _write(folder: Path, texts: dict[str, list[str]]) -> Path:
    folder.mkdir()
    for lang, ts in texts.items():
        (folder / f"{lang}.txt").write_text("\n".join(ts) + "\n", encoding="utf-8")
    return folder


def _masked(x, root: str):
    """``x`` with :data:`MASKED` keys dropped, the temporary folder named ROOT, floats to 6 significant digits."""
    if isinstance(x, dict):
        return {k.replace(root, "ROOT"): _masked(v, root) for k, v in x.items() if k not in MASKED}
    if isinstance(x, list):
        return [_masked(v, root) for v in x]
    if isinstance(x, float):
        return "nan" if math.isnan(x) else float(f"{x:.6g}")
    if isinstance(x, str):
        return x.replace(root, "ROOT")
    return x


@pytest.mark.slow  # three small sweeps end to end
def test_sweep_json_is_what_it_was_before_the_split(tiny_llama, tiny_corpus, tmp_path, monkeypatch):
    if "diffmean-lcb" in CONFIGS:
        pytest.importorskip("jieba", reason="LCB's metric needs jieba")
        pytest.importorskip("fugashi", reason="LCB's metric needs fugashi")
    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    bundled = MultilingualCorpus.bundled()
    a = _write(tmp_path / "newsish", {l: ts[:40] for l, ts in bundled.texts.items()})
    b = _write(tmp_path / "chatty", {l: ts[40:80] for l, ts in bundled.texts.items()})
    got = {}
    for name, kw in CONFIGS.items():
        kw = {**kw, "heldout": f"{a}+{b}"} if kw.get("genres") else kw
        cfg, out = SweepConfig(**kw), tmp_path / name
        run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, out, progress=False)
        first = json.loads((out / "sweep.json").read_text())
        got[name] = _masked(first, str(tmp_path))
        markdown = (out / "sweep.md").read_text(encoding="utf-8")

        def no_generation(*a, **k):
            raise AssertionError("the rerun generated a cell instead of reading it back")

        with monkeypatch.context() as m:  # a rerun on the folder reads every cell back
            m.setattr(pipeline, "generate_many", no_generation)
            again = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, out, progress=False)
        assert again.meta["timings"] == {}, name
        assert _masked(json.loads((out / "sweep.json").read_text()), str(tmp_path)) == got[name], name
        assert (out / "sweep.md").read_text(encoding="utf-8") == markdown, name
        got[name]["markdown"] = markdown.replace(str(tmp_path), "ROOT").splitlines()
    if RECORD:
        GOLDEN.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for name in CONFIGS:
        assert sorted(got[name]) == sorted(want[name]) == ["best", "markdown", "meta", "stages", "test"]
        for part in ("best", "stages", "test", "meta", "markdown"):  # sweep.json's keys are sorted on disk
            assert got[name][part] == want[name][part], (name, part)
