"""The control experiment and the sweep end to end on the tiny model (with resume); NLL and the
degeneracy gate against references."""

import json

import pytest

import tl_langneurons.evaluate.cells as pipeline
from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.detect.neurons import find_neurons
from tl_langneurons.evaluate.sweep import SHARED_SCORES
from tl_langneurons.evaluate.control import (
    EvaluateConfig,
    evaluate_control,
)
from tl_langneurons.report.build import build_report
from tl_langneurons.steer.generation import generate, generate_many


def _as_json(rows) -> str:
    """Rows as canonical JSON text (tuples become lists; NaN compares equal to NaN as text)."""
    return json.dumps(json.loads(json.dumps(rows, default=list)), sort_keys=True)


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_control_end_to_end_and_resume(tiny_llama, tiny_corpus, tmp_path, monkeypatch):
    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    neurons.meta["model"] = "tiny"
    neurons.save(tmp_path)
    from tl_langneurons.analyses.placement import write_analysis
    write_analysis(neurons, tmp_path)
    cfg = EvaluateConfig(languages=["de", "ja"], samples=4, max_new_tokens=6, ablation_ks=[1, 5], batch_size=4)
    out = tmp_path / "control"
    res = evaluate_control(tiny_llama, neurons, tiny_corpus.texts, cfg, out, progress=False)
    assert len(res.table2) == 2 * 4 and len(res.ablation) == 2 * 2
    for r in res.table2:
        assert r["n"] == 4 and 0 <= r["rate"] <= 1 and r["ci"][0] <= r["rate"] <= r["ci"][1]
    for name in ("table2.md", "table2.csv", "k_ablation.md", "k_ablation.csv", "k_ablation.png", "samples.md",
                 "evaluation.json"):
        assert (out / name).exists(), name
    assert "| mean |" in (out / "table2.md").read_text()
    n_cells = len(list((out / "cells").glob("*.json")))
    assert n_cells == 1 + 2 * 3 + 2 * 2
    table_csv = (out / "table2.csv").read_bytes()
    cells = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}

    # a rerun reads every cell back: it never generates (generation raises), and its tables are the first run's
    def no_generation(*a, **k):
        raise AssertionError("the rerun generated a cell instead of reading it back")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "generate_many", no_generation)
        again = evaluate_control(tiny_llama, neurons, tiny_corpus.texts, cfg, out, progress=False)
    assert again.meta["timings"] == {}  # every cell was read back, none recomputed
    assert _as_json(again.table2) == _as_json(res.table2)
    assert _as_json(again.ablation) == _as_json(res.ablation)
    assert (out / "table2.csv").read_bytes() == table_csv
    # deleting one cell regenerates exactly that cell, with the same bytes and the same table
    gone = next(n for n in sorted(cells) if n.startswith("top-ja-"))
    (out / "cells" / gone).unlink()
    calls = []

    def counting_generate(model, requests, **k):
        calls.append(len(requests))
        return generate_many(model, requests, **k)

    with monkeypatch.context() as m:
        m.setattr(pipeline, "generate_many", counting_generate)
        third = evaluate_control(tiny_llama, neurons, tiny_corpus.texts, cfg, out, progress=False)
    assert calls == [4]  # one batch: that cell's 4 seeds
    assert list(third.meta["timings"]) == [gone]
    assert {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")} == cells
    assert (out / "table2.csv").read_bytes() == table_csv
    assert _as_json(third.table2) == _as_json(res.table2) and _as_json(third.ablation) == _as_json(res.ablation)
    report = build_report(tmp_path)
    text = report.read_text()
    assert "Table 2" in text and "![layers](layers.png)" in text and "transformer-lens" in text
    assert "<table" in (tmp_path / "report.html").read_text()
    assert "samples per language and k" not in text  # the ablation used Table 2's seeds
    # the demo's shape: fewer seeds per k than per Table 2 cell, stated above the figure
    cfg = EvaluateConfig(languages=["de"], samples=3, max_new_tokens=4, ablation_ks=[1, 5], ablation_samples=2)
    res = evaluate_control(tiny_llama, neurons, tiny_corpus.texts, cfg, out, progress=False, overwrite=True)
    assert {r["n"] for r in res.ablation} == {2} and {r["n"] for r in res.table2} == {3}
    assert "2 samples per language and k (seeds 1..2)." in build_report(tmp_path).read_text()


def test_sample_nll_matches_cross_entropy(tiny_llama):
    import torch

    from tl_langneurons.steer.generation import GenerationConfig, generate, sample_nll

    samples = generate(tiny_llama, GenerationConfig(max_new_tokens=6, seeds=[1, 2], stop_at_eos=False))
    nll = sample_nll(tiny_llama, samples)
    for s, x in zip(samples, nll):
        ids = [tiny_llama.tokenizer.bos_token_id] + s.tokens
        with torch.no_grad():
            logits = tiny_llama(torch.tensor([ids]))
        ref = torch.nn.functional.cross_entropy(logits[0, :-1].double(), torch.tensor(ids[1:]))
        assert abs(x - float(ref)) < 1e-6


def test_distinct_threshold_from_real_text(tiny_llama):
    from tl_langneurons import MultilingualCorpus
    from tl_langneurons.evaluate.metrics import distinct_threshold

    texts = MultilingualCorpus.bundled().texts["de"]
    t = distinct_threshold(tiny_llama.tokenizer, texts)
    assert 0.2 < t < 1.0
    assert distinct_threshold(tiny_llama.tokenizer, ["kurz"]) == 0.4  # too little text: the documented default


SWEEP_SCORES = ("rate", "rate_lingua", "agreement", "gated_rate", "fluent", "retention", "nll", "bleu", "degenerate")


def test_sweep_end_to_end(tiny_llama, tiny_corpus, tmp_path):
    from tl_langneurons.evaluate.sweep import SweepConfig, run_sweep

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    cfg = SweepConfig(languages=["de"], k_fractions=["2%", "5%"], scales=[1.0, 2.0], positions=["all", "last"],
                      layer_sets=["all", "first"], val_samples=2, test_samples=3, max_new_tokens=4)
    res = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path, progress=False)
    assert set(res.best) == {"de"} and res.best["de"]["k"] in (3, 7)
    # positions=last equals all from BOS with the KV cache, so only "all" is left (noted): one value, no stage
    assert [r["stage"] for r in res.stages] == ["k", "k", "scale", "scale", "layers", "layers"]
    assert "positions=last skipped" in (tmp_path / "sweep.md").read_text()
    assert [r["setting"] for r in res.test] == ["none", "paper clamp k=1000", "best clamp", "shared clamp"]
    # one language: the shared setting is its best one, and it scores the same on the test seeds
    shared = {k: v for k, v in res.meta["shared"].items() if k not in SHARED_SCORES}
    assert shared == {k: v for k, v in res.best["de"].items() if k != "val"}
    assert {k: v for k, v in res.test[3].items() if k != "setting"} == {k: v for k, v in res.test[2].items() if k != "setting"}
    assert "One shared setting for all languages" in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / "sweep.md").exists() and (tmp_path / "tradeoff.png").exists()
    # retention is the fluent share over the unsteered run's on the same seeds
    none = res.test[0]
    for r in res.test[1:]:
        assert r["retention"] == pytest.approx(r["fluent"] / none["fluent"])
    again = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path, progress=False)
    assert again.meta["timings"] == {} and again.test == res.test  # resumed from the cells


@pytest.mark.parametrize("method,stages", [
    ("add", ["k", "k", "alpha", "alpha", "layers", "steer_tokens"]),
    ("diffmean", ["layer", "layer", "alpha", "alpha"]),
    ("sparse", ["layer", "layer", "n_dims", "n_dims", "coef"]),
])
def test_sweep_of_every_method(tiny_llama, tiny_corpus, tmp_path, method, stages):
    from tl_langneurons.evaluate.sweep import SweepConfig, run_sweep

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    cfg = SweepConfig(method=method, languages=["ja"], k_fractions=["2%", "5%"], alphas=[0.5, 2.0], layer_sets=["all"],
                      resid_layers=[1, 2], dim_fractions=[0.05, 0.1], coefs=[1.0], val_samples=2, test_samples=2,
                      max_new_tokens=4, steer_tokens=[2] if method == "add" else ())
    res = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path, progress=False)
    assert [r["stage"] for r in res.stages] == stages
    if method == "add":  # the last stage: the best setting so far, steered only while 2 tokens are written
        last = res.stages[-1]
        assert last["steer_tokens"] == 2 and last["label"].endswith(" first 2")
        assert {k: v for k, v in last.items() if k not in SWEEP_SCORES + ("stage", "label", "steer_tokens")} == \
            {k: v for k, v in res.stages[-2].items() if k not in SWEEP_SCORES + ("stage", "label")}
    assert [r["setting"] for r in res.test] == ["none", "paper clamp k=1000", f"best {method}", f"shared {method}"]
    assert res.test[2]["label"].startswith(method) and res.best["ja"]["method"] == method
    assert f"Method {method}" in (tmp_path / "sweep.md").read_text()


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_sweep_on_prompts_scores_the_off_diagonal_continuations(tiny_llama, tiny_dirs, tiny_corpus, tmp_path, capsys):
    """With --heldout the sweep scores a setting towards a language on the other languages' validation
    prompts (disjoint from the test prompts, which are cross-steer's seed-0 prompts); a stage's rate is
    that of the same continuations generated one by one, and the test's unsteered row is the target's
    rate among the unsteered continuations of the test prompts. Resumes from the cells; the CLI runs it,
    and steer / cross-steer --from-sweep use its picks."""
    from tl_langneurons import MultilingualCorpus
    from tl_langneurons.cli import main
    from tl_langneurons.evaluate.metrics import is_language
    from tl_langneurons.evaluate.sweep import SweepConfig, run_sweep
    from tl_langneurons.steer.methods import SteeringConfig
    from tl_langneurons.steer.prompts import token_prompts

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    held = MultilingualCorpus.bundled()
    cfg = SweepConfig(method="add", languages=["ja"], heldout="bundled", k_fractions=["5%"], alphas=[0.5, 4.0],
                      layer_sets=["all"], val_prompts=2, test_prompts=2, test_samples=2, max_new_tokens=4)
    assert (cfg.val_samples, cfg.test_samples) == (1, 2)  # per prompt: 1 by default with prompts
    res = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path, progress=False)
    tok, langs = tiny_llama.tokenizer, neurons.languages
    prompts = res.meta["prompts"]
    assert set(prompts["test"]) == set(langs)
    for lang in langs:
        assert prompts["test"][lang] == token_prompts(tok, held.texts[lang], 2, 0, lang)
        for v in prompts["val"][lang]:
            assert all(v[:len(t)] != t and t[:len(v)] != v for t in prompts["test"][lang])
    assert [r["stage"] for r in res.stages] == ["k", "alpha", "alpha", "layers"]

    def one_by_one(kind, seeds, hooks=()):
        reqs = [(p, s) for src in langs if src != "ja" for p in prompts[kind][src] for s in seeds]
        return [generate_many(tiny_llama, [r], max_new_tokens=4, fwd_hooks=hooks)[0].text for r in reqs]

    for row in res.stages[1:3]:
        steer = SteeringConfig(method="add", alpha=row["alpha"], layers=None, which="both", k=row["k"])
        texts = one_by_one("val", [1001], steer.hooks(neurons, "ja"))
        assert len(texts) == 2 * (len(langs) - 1)
        assert row["rate"] == pytest.approx(sum(is_language(texts, "ja")) / len(texts))
    none = one_by_one("test", [1, 2])
    assert res.test[0]["setting"] == "none"
    assert res.test[0]["rate"] == pytest.approx(sum(is_language(none, "ja")) / len(none))
    # the model's own fluency in ja: its unsteered continuations of the ja test prompts, under ja's gate
    from tl_langneurons.evaluate.metrics import is_degenerate

    own = [generate_many(tiny_llama, [(p, s)], max_new_tokens=4)[0].tokens for p in prompts["test"]["ja"] for s in (1, 2)]
    want = 1 - sum(is_degenerate(t, res.meta["distinct_thresholds"]["ja"]) for t in own) / len(own)
    assert res.test[0]["own_fluent"] == pytest.approx(want)
    for r in res.test[1:]:
        assert r["own_retention"] == (r["fluent"] / res.test[0]["own_fluent"] if res.test[0]["own_fluent"] else None)
    md = (tmp_path / "sweep.md").read_text()
    assert "The model's own fluency in each language" in md
    assert "from prompts of bundled" in md and "Every setting tried (validation prompts)" in md
    again = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path, progress=False)
    assert again.meta["timings"] == {} and again.test == res.test  # resumed from the cells

    # the command line: a missing held-out folder is refused (one line, exit 2) before anything is written
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "12", "--k", "20",
                 "--out", str(tmp_path / "n"), "--device", "cpu", "--quiet"]) == 0
    common = ["sweep", "--neurons", str(tmp_path / "n"), "--languages", "de", "--method", "diffmean", "--resid-layers",
              "1", "--alphas", "0.5", "--val-prompts", "1", "--test-prompts", "1", "--test-samples", "1",
              "--max-new-tokens", "3", "--quiet"]
    assert main([*common, "--heldout", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "n" / "sweep-diffmean").exists()
    assert main([*common, "--heldout", "bundled"]) == 0
    assert "from prompts of bundled" in (tmp_path / "n" / "sweep-diffmean" / "sweep.md").read_text()

    # steer and cross-steer with the sweep's picks (--from-sweep): de at its best setting, the others the default
    from tl_langneurons import Study
    from tl_langneurons.analyses.cross_steering import CrossSteerConfig
    from tl_langneurons.evaluate.sweep import sweep_settings

    sw = tmp_path / "n" / "sweep-diffmean"
    picks = sweep_settings(sw)
    assert list(picks) == ["de"] and picks["de"].method == "diffmean" and picks["de"].layer == 1
    assert sweep_settings(sw, "shared") == picks  # one language: its best is the shared setting
    assert sweep_settings(sw, neurons=Study(tmp_path / "n", progress=False).neurons) == picks
    with pytest.raises(LangNeuronsError, match="made on other neurons"):
        sweep_settings(sw, neurons=neurons)  # the fixture's neurons, not the folder's
    small = dict(n_prompts=1, samples=1, max_new_tokens=3)
    alone = Study(tmp_path / "n", progress=False).cross_steer("bundled", CrossSteerConfig(**small, steering=picks["de"]))
    cli = ["--n-prompts", "1", "--samples", "1", "--max-new-tokens", "3", "--quiet"]
    assert main(["cross-steer", "--neurons", str(tmp_path / "n"), "--heldout", "bundled", "--from-sweep", str(sw),
                 *cli]) == 0
    got = json.loads((tmp_path / "n" / "analyses" / "cross_steering.json").read_text())
    de = got["languages"].index("de")
    assert got["method"].startswith("per target: ") and "de diffmean L1 a=0.5" in got["method"]
    assert [row[de] for row in got["rate"]] == alone.rate[:, de].tolist()
    assert [row[de] for row in got["nll"]] == pytest.approx(alone.nll[:, de].tolist(), nan_ok=True)
    capsys.readouterr()
    assert main(["steer", "--neurons", str(tmp_path / "n"), "--lang", "de", "--from-sweep", str(sw), "--samples", "1",
                 "--max-new-tokens", "3", "--quiet"]) == 0
    assert "(diffmean L1 a=0.5" in capsys.readouterr().out
    assert main(["steer", "--neurons", str(tmp_path / "n"), "--lang", "ja", "--from-sweep", str(sw)]) == 2
    assert "has no setting for 'ja'" in capsys.readouterr().err
    assert main(["cross-steer", "--neurons", str(tmp_path / "n"), "--heldout", "bundled", "--from-sweep",
                 str(tmp_path / "missing"), "--sweep-pick", "shared"]) == 2


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_sweep_on_prompts_searches_the_prompt_as_source_and_generated_positions(tiny_llama, tiny_corpus, tmp_path):
    """sources=none,prompt is a first stage: with "prompt" each continuation is steered away from its own
    prompt's language (add deactivates that language's neurons), the same text as the source named
    outright; neuron_sets=both,top follows the layers, positions=all,generated is a stage of add on
    prompts. Bad values are refused up front."""
    from tl_langneurons.evaluate.metrics import is_language
    from tl_langneurons.evaluate.sweep import SweepConfig, run_sweep
    from tl_langneurons.steer.methods import SteeringConfig

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    cfg = SweepConfig(method="add", languages=["ja"], heldout="bundled", k_fractions=["5%"], alphas=[4.0],
                      layer_sets=["all"], sources=["none", "prompt"], positions=["all", "generated"],
                      neuron_sets=["both", "top"], val_prompts=2, test_prompts=1, test_samples=1, max_new_tokens=4)
    res = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path, progress=False)
    src, which = res.best["ja"]["source"], res.best["ja"]["which"]
    assert [(r["stage"], r.get("source"), r.get("which", "both"), r["positions"]) for r in res.stages] == [
        ("source", None, "both", "all"), ("source", "prompt", "both", "all"), ("k", src, "both", "all"),
        ("alpha", src, "both", "all"), ("layers", src, "both", "all"), ("which", src, "both", "all"),
        ("which", src, "top", "all"), ("positions", src, which, "all"), ("positions", src, which, "generated")]
    assert "src=prompt" in res.stages[1]["label"] and "generated positions" in res.stages[-1]["label"]
    assert res.stages[6]["label"].startswith("add top k=")
    prompts = res.meta["prompts"]["val"]
    for row in res.stages[:2] + res.stages[6:7] + res.stages[-1:]:
        texts = []
        for src in neurons.languages:
            if src == "ja":
                continue
            steer = SteeringConfig(method="add", alpha=row["alpha"], which=row.get("which", "both"), k=row["k"],
                                   positions=row["positions"], source=src if row.get("source") == "prompt" else None)
            texts += [generate_many(tiny_llama, [(p, 1001)], max_new_tokens=4, fwd_hooks=steer.hooks(neurons, "ja"))
                      [0].text for p in prompts[src]]
        assert row["rate"] == pytest.approx(sum(is_language(texts, "ja")) / len(texts)), row["label"]
    # the source changes what is written (the prompt language's neurons are set to their off-language mean)
    with_src = [r for r in res.stages if r["stage"] == "source"]
    assert with_src[0]["nll"] != with_src[1]["nll"]
    with pytest.raises(LangNeuronsError, match="layer range '0-99'"):  # refused before anything runs
        run_sweep(tiny_llama, neurons, None, SweepConfig(method="add", layer_sets=["all", "0-99"]), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    # a single value is no stage: every setting tried has it
    from tl_langneurons.evaluate.sweep import _search_space
    one = SweepConfig(method="diffmean", heldout="bundled", sources=["prompt"], positions=["generated"])
    start, stages, _ = _search_space(one, neurons, neurons.index.n_neurons)
    assert (start["source"], start["positions"]) == ("prompt", "generated")
    assert [s[0] for s in stages] == ["layer", "alpha"]
    start, stages, _ = _search_space(SweepConfig(method="add", neuron_sets=["top"]), neurons, neurons.index.n_neurons)
    assert start["which"] == "top" and "which" not in [s[0] for s in stages]
    # from BOS too: generated leaves the BOS position unsteered
    start, stages, _ = _search_space(SweepConfig(method="add", positions=["all", "generated"]), neurons,
                                     neurons.index.n_neurons)
    assert start["positions"] == "all" and stages[-1] == ("positions", "positions", ["all", "generated"])
    start, stages, _ = _search_space(SweepConfig(method="clamp", positions=["generated"], heldout="bundled"), neurons,
                                     neurons.index.n_neurons)
    assert start["positions"] == "generated" and "positions" not in [s[0] for s in stages]
    for bad, msg in [(dict(sources=["prompt"]), "needs --heldout"),
                     (dict(positions=["last"]), "--positions last: add steers all or generated"),
                     (dict(method="clamp", sources=["none", "prompt"], heldout="bundled"), "--sources prompt is for add, diffmean and sparse"),
                     (dict(positions=["everywhere"]), "--positions must be"),
                     (dict(neuron_sets=["middle"]), "--neuron-sets must be"),
                     (dict(method="sparse", neuron_sets=["top"]), "--neuron-sets is for clamp and add")]:
        with pytest.raises(LangNeuronsError, match=msg):
            SweepConfig(**{"method": "add", **bad})


def test_sweep_of_two_languages_equals_each_alone_and_shares_one_setting(tiny_llama, tiny_corpus, tmp_path):
    """Languages searched together (their cells share batches) pick what each picks alone; the shared
    setting is one of their best settings, scored on every language."""
    from tl_langneurons.evaluate.sweep import SweepConfig, run_sweep

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    kw = dict(method="diffmean", resid_layers=[1, 2], alphas=[0.5, 2.0], val_samples=3, test_samples=2,
              max_new_tokens=4)
    both = run_sweep(tiny_llama, neurons, tiny_corpus.texts, SweepConfig(languages=["de", "ja"], **kw), progress=False)
    for lang in ("de", "ja"):
        alone = run_sweep(tiny_llama, neurons, tiny_corpus.texts, SweepConfig(languages=[lang], **kw), progress=False)
        assert both.best[lang] == alone.best[lang]
        assert [r for r in both.stages if r["lang"] == lang] == alone.stages
    shared = {k: v for k, v in both.meta["shared"].items() if k not in SHARED_SCORES}
    assert shared in [{k: v for k, v in both.best[l].items() if k != "val"} for l in ("de", "ja")]
    # the options: each pick scored on both languages; mean picks the highest mean, worst the highest minimum
    opts = both.meta["shared_options"]
    assert both.meta["shared"]["val_mean_gated_rate"] == max(o["val_mean_gated_rate"] for o in opts)
    worst = run_sweep(tiny_llama, neurons, tiny_corpus.texts, SweepConfig(languages=["de", "ja"], shared_pick="worst",
                                                                          **kw), progress=False)
    assert worst.meta["shared_options"] == opts  # the same options, scored alike
    assert worst.meta["shared"]["val_worst_gated_rate"] == max(o["val_worst_gated_rate"] for o in opts)
    # what --from-sweep reads back: each language's best, or the shared setting for both
    from tl_langneurons.evaluate.sweep import sweep_settings, write_sweep
    from tl_langneurons.steer.methods import SteeringConfig

    write_sweep(both, tmp_path / "s")
    as_config = lambda st: SteeringConfig(**{k: v for k, v in st.items()
                                             if k not in ("val", *SHARED_SCORES)})
    assert sweep_settings(tmp_path / "s") == {l: as_config(both.best[l]) for l in ("de", "ja")}
    assert sweep_settings(tmp_path / "s", "shared") == {l: as_config(both.meta["shared"]) for l in ("de", "ja")}
    assert sorted(r["lang"] for r in both.test if r["setting"] == "shared diffmean") == ["de", "ja"]


def test_shared_search_ranks_one_setting_on_every_language_and_resumes(tiny_llama, tiny_corpus, tmp_path):
    """--shared-search: from the best of the languages' picks, each stage's values (equal norms first, each later
    stage with its idea off too) scored on every language; the kept setting ranks highest by --shared-pick of all
    tried, its scores are those it was tried with, the report tables the search, and a second run generates
    nothing."""
    from dataclasses import replace

    from tl_langneurons.evaluate.sweep import SHARED_SCORES, SweepConfig, run_sweep, sweep_markdown

    def setting_fields(st):
        return {k: v for k, v in st.items() if k not in SHARED_SCORES}

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    cfg = SweepConfig(method="add", languages=["de", "ja"], k_fractions=["5%"], alphas=[1.0, 4.0], layer_sets=["all"],
                      band_alphas=["last:0.5"], steer_tokens=[2], shared_search=True, equal_norms=["total", "quarters"],
                      shared_pick="worst", val_samples=3, test_samples=2, max_new_tokens=4)
    res = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path, progress=False)
    tried, options, shared = res.meta["shared_search"], res.meta["shared_options"], res.meta["shared"]
    assert list(dict.fromkeys(t["stage"] for t in tried)) == ["equal norm", "k", "alpha", "layers", "bands",
                                                               "steer_tokens"]
    eq = [t["label"] for t in tried if t["stage"] == "equal norm"]
    assert sum("eqnorm=total" in x for x in eq) == 1 and sum("eqnorm=quarters" in x for x in eq) == 1
    assert any("bands" not in t["label"] for t in tried if t["stage"] == "bands")  # the idea off, among the values
    assert any("first 2" not in t["label"] for t in tried if t["stage"] == "steer_tokens")
    # ranked by the language served worst, then the mean: nothing tried (nor any option) ranks above the kept one
    rank = lambda t: (t["val_worst_gated_rate"], t["val_mean_gated_rate"])
    assert all(rank(t) <= rank(shared) for t in tried + options)
    # the kept setting is the start or a value tried, with the scores it had there
    label = next(r["label"] for r in res.test if r["setting"] == "shared add")
    assert any(t["label"] == label and rank(t) == rank(shared) for t in tried + options)
    assert set(SHARED_SCORES) <= set(shared)
    text = sweep_markdown(res)
    assert "searched as one" in text and "The shared search (--shared-search" in text
    again = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path, progress=False)  # from the cache
    assert again.meta["shared"] == shared and again.meta["run"]["samples_generated"] == 0
    # --test-settings: a setting of one's own on the test split; given the shared setting, its rows are the shared
    # rows (the same cells: nothing generated)
    spec = "mine=add:" + ",".join(f"{k}={v}" for k, v in setting_fields(shared).items() if v is not None and k != "method")
    mine = run_sweep(tiny_llama, neurons, tiny_corpus.texts, replace(cfg, test_settings=[spec]), tmp_path / "mine",
                     progress=False, store=tmp_path / "samples")
    again = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path / "again", progress=False,
                      store=tmp_path / "samples")
    assert again.meta["run"]["samples_generated"] == 0  # the shared rows were the same cells as "mine"
    rows = {(r["setting"], r["lang"]): r for r in mine.test}
    for lang in ("de", "ja"):
        a, b = rows[("mine", lang)], rows[("shared add", lang)]
        assert {k: a[k] for k in ("rate", "gated_rate", "retention", "nll")} == {
            k: b[k] for k in ("rate", "gated_rate", "retention", "nll")}
    assert "mine: rate / lingua" in sweep_markdown(mine)  # a column of the test table
    for bad, msg in [(dict(method="add", equal_norms=["total"]), "--equal-norms is a stage of the shared search"),
                     (dict(test_settings=["none=add:k=5"]), "the sweep's own row"),
                     (dict(test_settings=["a=add:k=5", "a=clamp"]), "a name is given twice"),
                     (dict(test_settings=["a=add:equal_norm=layers"]), "--test-settings a: --equal-norm must be"),
                     (dict(test_settings=["a=steer:k=5"]), "--test-settings must be NAME=METHOD"),
                     (dict(method="clamp", shared_search=True, equal_norms=["total"]), "--equal-norms"),
                     (dict(method="add", shared_search=True, equal_norms=["layers"]), "equal-norms")]:
        with pytest.raises(LangNeuronsError, match=msg):
            SweepConfig(**bad)


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_sweeps_of_two_methods_sit_side_by_side_in_the_report(tiny_llama, tiny_corpus, tmp_path):
    """Study.sweep writes clamp to DIR/sweep and another method to DIR/sweep-METHOD; the report shows
    both sections and one figure with every setting of both methods (a sweep on prompts apart)."""
    from tl_langneurons import Study
    from tl_langneurons.analyses.placement import write_analysis
    from tl_langneurons.evaluate.sweep import SweepConfig

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    neurons.meta["model"] = "tiny"
    neurons.save(tmp_path)
    write_analysis(neurons, tmp_path)
    study = Study(tmp_path, tiny_llama, progress=False)
    kw = dict(languages=["ja"], k_fractions=["5%"], scales=[1.0], alphas=[0.5], layer_sets=["all"], positions=["all"],
              val_samples=2, test_samples=2, max_new_tokens=4)
    study.sweep(SweepConfig(**kw))
    study.sweep(SweepConfig(method="add", **kw))
    # a sweep on prompts gets its own section and stays out of the BOS sweeps' figure
    study.sweep(SweepConfig(method="add", heldout="bundled", val_prompts=1, test_prompts=1,
                            **{**kw, "val_samples": 1, "test_samples": 1}), out=tmp_path / "sweep-add-prompts")
    assert (tmp_path / "sweep" / "sweep.md").exists() and (tmp_path / "sweep-add" / "sweep.md").exists()
    text = study.report().read_text()
    assert "## Fluent steering: clamp settings sweep from BOS (sweep)" in text
    assert "## Fluent steering: add settings sweep from BOS (sweep-add)" in text
    assert "## Fluent steering: add settings sweep from prompts (sweep-add-prompts)" in text
    assert "![sweeps](sweeps.png)" in text and (tmp_path / "sweeps.png").stat().st_size > 0
    assert not (tmp_path / "sweeps-prompts.png").exists()  # one prompted sweep: no figure of several


def test_setting_means_need_every_language_once():
    """A setting scored twice for one language (a stage re-scoring the incumbent) and missing another
    gets no mean marker; one scored on every language gets the mean of one row per language."""
    from tl_langneurons.report.plots import setting_means

    rows = [{"lang": "de", "label": "a", "rate": 1.0, "retention": 0.5},
            {"lang": "de", "label": "a", "rate": 1.0, "retention": 0.5},
            {"lang": "de", "label": "b", "rate": 0.2, "retention": 1.0},
            {"lang": "ja", "label": "b", "rate": 0.6, "retention": 0.0}]
    assert setting_means(rows) == [(0.5, pytest.approx(0.4))]


def test_sweep_searches_band_strengths_a_diffmean_term_norm_and_two_phases(tiny_llama, tiny_corpus, tmp_path):
    """The later stages (issue 29's ideas): band strengths, a diffmean term, norm preservation, the first N
    tokens, then a two-phase strength; each stage's rows are the pick so far with that field set, scored as the
    same setting measured alone; settings that do not exist (norm without a residual term) are left out."""
    from tl_langneurons.evaluate.cells import Cell, CellRunner, steered
    from tl_langneurons.evaluate.control import EvaluateConfig
    from tl_langneurons.evaluate.sweep import SweepConfig, run_sweep
    from tl_langneurons.steer.methods import SteeringConfig

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    cfg = SweepConfig(method="add", languages=["ja"], heldout="bundled", k_fractions=["5%"], alphas=[4.0],
                      layer_sets=["all"], spreads=["even"], band_alphas=["last:0.5", "first:2+last:0"], resid_alphas=[0.5],
                      resid_layers=[1], keep_norm_stage=True, steer_tokens=[2], after_scales=[0.5],
                      val_prompts=2, test_prompts=1, test_samples=1, max_new_tokens=4)
    res = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path, progress=False)
    stages = [r["stage"] for r in res.stages]
    assert stages == ["k", "alpha", "layers", "spread", "bands", "bands", "diffmean term", "diffmean term",
                      "steer_tokens", "two-phase"], stages
    assert "spread=even" in res.stages[3]["label"]
    terms = [r for r in res.stages if r["stage"] == "diffmean term"]
    assert [(r["layer"], r["resid_alpha"], r["keep_norm"]) for r in terms] == [(1, 0.5, False), (1, 0.5, True)]
    assert terms[0]["label"].endswith("+diffmean L1 a=0.5") and terms[1]["label"].endswith("+diffmean L1 a=0.5 norm")
    assert terms[0]["rate"] != terms[1]["rate"] or terms[0]["nll"] != terms[1]["nll"]
    rows = {r["stage"]: r for r in res.stages}
    assert rows["two-phase"]["label"].endswith("first 2 then x0.5")
    # the two-phase row scored as that setting measured alone, beside its unsteered twins
    r = rows["two-phase"]
    st = SteeringConfig(**{k: r[k] for k in ("method", "alpha", "band_alphas", "resid_alpha", "layer", "keep_norm",
                                             "steer_tokens", "after_scale", "positions", "spread") if k in r})
    runner = CellRunner(tiny_llama, neurons, EvaluateConfig(languages=["ja"], max_new_tokens=4, ablation_ks=[]),
                        tiny_corpus.texts, None, False)
    prompts = res.meta["prompts"]["val"]
    cells = [steered("ja", st, "both", r["k"], [1001], p) for src, ps in prompts.items() if src != "ja" for p in ps]
    m = runner.measure([cells])[0]
    assert r["rate"] == pytest.approx(m.row()["rate"]) and r["nll"] == pytest.approx(m.row()["nll"])
    assert all(isinstance(c, Cell) for c in cells)
    # a second run generates nothing new (every stage from the cache)
    again = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path, progress=False)
    assert again.best == res.best
    for bad, msg in [(dict(after_scales=[0.5]), "give --steer-tokens"),
                     (dict(method="clamp", steer_tokens=[2], after_scales=[0.5]), "--after-scale is for add and diffmean, not clamp"),
                     (dict(method="diffmean", band_alphas=["last:0.5"]), "--band-alphas is for add .it varies band_alphas., not diffmean"),
                     (dict(band_alphas=["late:0.5"]), "band-alphas"),
                     (dict(keep_norm_stage=True), "keep-norm-stage"),
                     (dict(resid_alphas=[0]), "--resid-alphas"),
                     (dict(method="diffmean", spreads=["even"]), "--spreads is for clamp and add")]:
        with pytest.raises(LangNeuronsError, match=msg):
            SweepConfig(**{"method": "add", **bad})


def test_later_stages_are_checked_against_the_neurons_before_the_model_runs(tiny_llama, tiny_corpus):
    from tl_langneurons.evaluate.sweep import SweepConfig, check_sweep

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    with pytest.raises(LangNeuronsError, match="layer range '0-7'"):
        check_sweep(SweepConfig(method="add", band_alphas=["0-7:0.5"]), neurons)
    with pytest.raises(LangNeuronsError, match="no layer 9"):
        check_sweep(SweepConfig(method="add", resid_alphas=[0.1], resid_layers=[9]), neurons)
    check_sweep(SweepConfig(method="add", band_alphas=["0-2:0.5"], resid_alphas=[0.1], resid_layers=[1]), neurons)
