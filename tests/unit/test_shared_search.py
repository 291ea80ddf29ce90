"""The shared search (``sweep --shared-search``) on scripted scores, and equal norms per quarter of a deeper
model than the tiny one: what is kept, in what order, and what an idea's "off" value is."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tl_langneurons.detect.neurons import LanguageNeurons
from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.evaluate.sweep import (SHARED_SCORES, Candidate, Scored, Scorer, SharedOption, SharedPick,
                                           SharedSearch, SweepConfig, SweepResult, _shared_line, _shared_stages, _with,
                                           keeps_floor)
from tl_langneurons.steer.methods import equal_norm_factors

LANGS = ["de", "fr", "zh"]


class _Fake(LanguageNeurons):
    """Only the parts of LanguageNeurons that are read, set by hand (a LanguageNeurons to the type checks)."""

    def __init__(self, **parts):
        self.__dict__.update(parts)


def _residual():
    return torch.zeros(2, 18, 4), torch.ones(18)


class _Scorer(Scorer):
    """A Scorer whose evaluate_many returns ``score(lang, setting)`` (a gated rate) instead of generating, and
    records each call's settings."""

    def __init__(self, score):
        self.score, self.calls, self.n, self.answers_gate = score, [], 1000, False

    def evaluate_many(self, cands, phase):
        self.calls.append([c.to_json() for _, c in cands])
        out = []
        for lang, c in cands:
            st = c.to_json()
            got = self.score(lang, st)  # a gated rate, or (gated rate, retention)
            gated, retention = got if isinstance(got, tuple) else (got, 1.0)
            out.append(Scored(lang, {"gated_rate": gated, "retention": retention, "nll": 1.0}, c,
                              label=json.dumps(st, sort_keys=True)))
        return out


def _search(cfg: SweepConfig, score) -> SharedSearch:
    """The shared search of ``cfg`` over LANGS, scored by ``score(lang, setting)``."""
    return SharedSearch(cfg, _Fake(residual=_residual), LANGS, _Scorer(score))


def _start(st: dict, mean: float, worst: float, low: float) -> SharedPick:
    """A shared pick of ``st`` with the given scores, where the shared search starts."""
    return SharedPick(Candidate.of(st), SharedOption("start", mean, worst, low, "de", {}))


START = {"method": "add", "k": 10, "alpha": 1.0, "layers": None, "positions": "generated", "steer_tokens": 16,
         "after_scale": 0.25, "band_alphas": "last:0.5", "resid_alpha": 0.05, "layer": 12, "keep_norm": True}


def _cfg(**kw) -> SweepConfig:
    return SweepConfig(method="add", k_fractions=["1%"], alphas=[1.0, 1.5], layer_sets=["all"], positions=["generated"],
                       band_alphas=["last:0.5"], resid_alphas=[0.05], resid_layers=[12], keep_norm_stage=True,
                       steer_tokens=[16], after_scales=[0.25], shared_search=True, equal_norms=["total"], **kw)


def test_every_later_idea_is_tried_off_from_a_start_that_carries_it():
    """From a start with every idea on, each stage's values include the setting without it (dependent fields
    cleared: no second phase without the first N tokens, no term's layer or norm without the term); a scripted
    score that rewards each idea being off ends with all of them off, equal norms on and alpha 1.5."""
    def score(lang, st):
        off = sum([st.get("after_scale") is None, st.get("steer_tokens") is None, st.get("band_alphas") is None,
                   st.get("resid_alpha") is None, st.get("equal_norm") == "total", st["alpha"] == 1.5])
        return off / 6 - (0.3 if lang == "zh" else 0)
    s = _search(_cfg(shared_pick="worst"), score)
    got = s.search(_start(START, 0.0, 0.0, 1.0), (-1.0, -1.0, -1.0)).to_json()
    assert got["equal_norm"] == "total" and got["alpha"] == 1.5
    assert got["steer_tokens"] is None and got["after_scale"] is None
    assert got["band_alphas"] is None and got["resid_alpha"] is None and got["layer"] is None
    assert got["keep_norm"] is False
    assert got["val_worst_gated_rate"] == pytest.approx(1 - 0.3) and got["val_mean_gated_rate"] == pytest.approx(0.9)
    stages = [t.stage for t in s.tried]
    assert stages[0] == "equal norm" and stages.index("k") < stages.index("alpha") < stages.index("bands")
    # every candidate scored on every language at once, none without its dependent fields cleared
    for call in s.scorer.calls:
        for st in call:
            assert st.get("after_scale") is None or st.get("steer_tokens") is not None
            assert st.get("resid_alpha") is not None or (st.get("layer") is None and st.get("keep_norm") is False)


def test_worst_ranks_by_the_language_served_worst_and_mean_by_the_mean_and_ties_keep_the_start():
    """alpha 1.5 lifts the mean (de, fr) but sinks zh: the worst pick keeps alpha 1, the mean pick takes 1.5; a
    value that only ties keeps what was there."""
    def score(lang, st):
        if st["alpha"] == 1.5:
            return {"de": 1.0, "fr": 1.0, "zh": 0.4}[lang]
        return 0.6
    start = {k: v for k, v in START.items() if k not in ("steer_tokens", "after_scale", "band_alphas", "resid_alpha",
                                                           "layer", "keep_norm")}
    for pick, alpha in (("worst", 1.0), ("mean", 1.5)):
        s = _search(_cfg(shared_pick=pick), score)
        key = (0.6, 0.6, -1.0) if pick == "worst" else (0.6, -1.0)
        got = s.search(_start(start, 0.6, 0.6, 1.0), key).to_json()
        assert got["alpha"] == alpha, pick
        assert got.get("equal_norm") is None  # scores tie with the start: kept as it was
    # candidates that come out the same are scored once
    s = _search(_cfg(), score)
    s.search(_start(start, 0.6, 0.6, 1.0), (0.6, -1.0))
    for call in s.scorer.calls:
        keys = [json.dumps(st, sort_keys=True) for st in call[::len(LANGS)]]
        assert len(keys) == len(set(keys))


def test_off_values_and_stage_order():
    stages = _shared_stages(_cfg(), _Fake(residual=_residual), 1000)
    named = {name: (key, values) for name, key, values in stages}
    assert [n for n, _, _ in stages][0] == "equal norm" and named["equal norm"][1] == [None, "total"]
    assert named["bands"][1][0] is None and named["steer_tokens"][1][0] is None
    assert named["diffmean term"][1][0] == (None, None, False)
    assert (None, None) in named["two-phase"][1] and (16, None) in named["two-phase"][1]
    assert _with({"steer_tokens": 16, "after_scale": 0.5}, "steer_tokens", None) == {"steer_tokens": None,
                                                                                     "after_scale": None}
    assert _with({"resid_alpha": 0.05, "layer": 12, "keep_norm": True}, ("layer", "resid_alpha", "keep_norm"),
                 (None, None, False)) == {"resid_alpha": None, "layer": None, "keep_norm": False}
    assert _with({"a": 1}, "steer_tokens", 16) == {"a": 1, "steer_tokens": 16}


def _fake_neurons(n_layers=8, per_layer=3, seed=0):
    """The parts of LanguageNeurons equal_norm_factors reads, for a model of ``n_layers`` layers: random means,
    and each language's selection a fixed random subset (recording the arguments it was asked with)."""
    g = torch.Generator().manual_seed(seed)
    n = n_layers * per_layer
    means = torch.rand(len(LANGS), n, generator=g, dtype=torch.float64) * 3
    layers = np.repeat(np.arange(n_layers), per_layer)
    sel = {lang: torch.randperm(n, generator=g)[:n // 2].sort().values for lang in LANGS}
    calls = []

    def selected(lang, which, k, layers_, spread):
        calls.append((lang, which, k, layers_, spread))
        return sel[lang], None
    fake = _Fake(languages=LANGS, means=means, index=SimpleNamespace(layers=lambda: layers, n_layers=n_layers),
                           means_off=lambda l: means[[i for i, x in enumerate(LANGS) if x != l]].mean(0),
                           selected=selected)
    return fake, sel, layers, calls


def test_equal_norm_quarters_group_layers_by_quarter_of_the_depth():
    """On 8 layers a quarter is two layers (layer x 4 // 8): the two share one factor, and each quarter's scaled
    norm is the mean over the languages with neurons there (slow loop); the other languages' selections are
    asked with the same which, k, layers and spread."""
    fake, sel, layers, calls = _fake_neurons()
    slow = {}
    for lang in LANGS:
        d = {}
        li = LANGS.index(lang)
        for i in sel[lang].tolist():
            q = int(layers[i]) // 2
            x = float(fake.means[li, i] - fake.means_off(lang)[i])
            d[q] = d.get(q, 0.0) + x * x
        slow[lang] = {q: v ** 0.5 for q, v in d.items()}
    for lang in LANGS:
        calls.clear()
        f = equal_norm_factors(fake, lang, sel[lang], "quarters", "top", 7, "0-5", "even")
        assert {c[0] for c in calls} == set(LANGS) and all(c[1:] == ("top", 7, "0-5", "even") for c in calls)
        li = LANGS.index(lang)
        d = (fake.means[li] - fake.means_off(lang))[sel[lang]]
        for q in range(4):
            at = torch.from_numpy(layers[sel[lang].numpy()] // 2 == q)
            if not at.any():
                continue
            assert len(set(f[at].tolist())) == 1  # one factor for both layers of the quarter
            there = [v[q] for v in slow.values() if q in v]
            assert float((d[at] * f[at]).norm()) == pytest.approx(sum(there) / len(there), rel=1e-9)
    with pytest.raises(Exception, match="middle"):
        equal_norm_factors(fake, "de", sel["de"], "total", "middle")


def test_floor_ranks_by_the_mean_among_settings_whose_every_language_keeps_its_retention():
    """alpha 1.5 has the higher mean but costs zh its retention (0.7 < 0.8): the floor pick keeps alpha 1 (every
    language >= 0.8), the mean pick takes 1.5. With a floor no setting keeps (0.95), the mean decides again; a
    language without a retention (no fluent unsteered sample) does not keep one."""
    def score(lang, st):
        if st["alpha"] == 1.5:
            return {"de": 1.0, "fr": 1.0, "zh": 0.5}[lang], 0.7 if lang == "zh" else 1.0
        return 0.6, 0.9
    start = {k: v for k, v in START.items() if k not in ("steer_tokens", "after_scale", "band_alphas", "resid_alpha",
                                                           "layer", "keep_norm")}
    for pick, floor, alpha in (("floor", 0.8, 1.0), ("mean", 0.8, 1.5), ("floor", 0.95, 1.5)):
        s = _search(_cfg(shared_pick=pick, shared_floor=floor if pick == "floor" else None), score)
        start_key, option = s.rank_all([Candidate.of(start)])[0]
        got = s.search(SharedPick(Candidate.of(start), option), start_key).to_json()
        assert got["alpha"] == alpha, (pick, floor)
        assert got["val_low_retention"] == (0.9 if alpha == 1.0 else 0.7)
    s = _search(_cfg(shared_pick="floor"), lambda lang, st: (0.6, None if lang == "zh" else 1.0))
    key, row = s.rank_all([Candidate.of(start)])[0]
    assert key[0] is False and row.low_retention is None and set(row.scores()) == set(SHARED_SCORES)


def test_a_retention_at_the_floor_keeps_it_whatever_floating_point_makes_of_it():
    """zh at retention 0.6 / 0.75 (0.7999999999999999 in floating point) keeps a floor of 0.8: the floor pick
    keeps alpha 1 against the higher mean of alpha 1.5, and the report says the floor is kept (a real sweep's
    floor pick once lost its only setting at the floor this way)."""
    at_floor = 0.6 / 0.75
    assert at_floor < 0.8 and keeps_floor(at_floor, 0.8) and not keeps_floor(0.79, 0.8) and not keeps_floor(None, 0.8)

    def score(lang, st):
        if st["alpha"] == 1.5:
            return {"de": 1.0, "fr": 1.0, "zh": 0.5}[lang], 0.7 if lang == "zh" else 1.0
        return 0.6, at_floor if lang == "zh" else 1.0
    start = {k: v for k, v in START.items() if k not in ("steer_tokens", "after_scale", "band_alphas", "resid_alpha",
                                                           "layer", "keep_norm")}
    s = _search(_cfg(shared_pick="floor", shared_floor=0.8), score)
    key, row = s.rank_all([Candidate.of(start)])[0]
    got = s.search(SharedPick(Candidate.of(start), row), key).to_json()
    assert got["alpha"] == 1.0 and got["val_low_retention"] == at_floor
    res = SweepResult(best={}, stages=[], test=[{"setting": "shared add", "label": "add k=10 a=1"}],
                      meta={"config": {"shared_pick": "floor", "shared_floor": 0.8, "lcb": False, "shared_search": True},
                            "shared": {"val_mean_gated_rate": 0.6, "val_worst_gated_rate": 0.6,
                                       "val_low_retention": at_floor}})
    assert "lowest retention 0.80, floor 0.8)" in "\n".join(_shared_line(res))


def test_the_floor_pick_is_written_in_the_report():
    """The shared line names the rule, the floor and the pick's lowest retention; the tables add a column."""
    meta = {"config": {"shared_pick": "floor", "shared_floor": 0.8, "lcb": False},
            "shared": {"val_mean_gated_rate": 0.7, "val_worst_gated_rate": 0.5, "val_low_retention": 0.83},
            "shared_options": [{"label": f"a={a}", "val_mean_gated_rate": 0.7, "val_worst_gated_rate": 0.5,
                                "val_low_retention": r, "worst_lang": "zh", "by_lang": {}} for a, r in ((1, 0.83), (2, 0.6))]}
    res = SweepResult(best={}, stages=[], test=[{"setting": "shared add", "label": "add k=10 a=1"}], meta=meta)
    text = "\n".join(_shared_line(res))
    assert "of those whose every language keeps retention >= 0.8; its lowest 0.83): add k=10 a=1" in text
    assert "| lowest retention |" in text and "| 0.60 |" in text
    meta["shared"]["val_low_retention"] = 0.6  # no option kept the floor: the line says so
    assert "of all: none keeps every language's retention >= 0.8; its lowest 0.60)" in "\n".join(_shared_line(res))
    meta["config"]["shared_search"] = True
    assert "lowest retention 0.60, floor 0.8 not kept): add k=10 a=1" in "\n".join(_shared_line(res))


def test_a_floor_above_zero_and_only_for_the_floor_pick():
    with pytest.raises(LangNeuronsError, match="shared-floor"):
        SweepConfig(shared_pick="floor", shared_floor=0)
    with pytest.raises(LangNeuronsError, match="--shared-floor is the retention of --shared-pick floor"):
        SweepConfig(shared_floor=0.9)
    assert SweepConfig(shared_pick="floor").shared_floor == 0.8 and SweepConfig().shared_floor is None
