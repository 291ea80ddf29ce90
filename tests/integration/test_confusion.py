"""Language confusion: ``sweep --lcb`` on LCB's cross-lingual requests through the chat template, its LCB
scores against LCB's metric on the same answers generated one by one, the relevance proxy against a slow
loop over the model's logits, resume, and the ``lcb`` table through the command line."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("jieba", reason="LCB's metric tokenizes Chinese with jieba: pip install 'tl-langneurons[lcb]'")
pytest.importorskip("fugashi", reason="LCB's metric tokenizes Japanese with fugashi: pip install 'tl-langneurons[lcb]'")

from tl_langneurons.detect.neurons import find_neurons  # noqa: E402
from tl_langneurons.evaluate.lcb import lcb_metrics, load_lcb_prompts  # noqa: E402
from tl_langneurons.steer.prompts import chat_ids  # noqa: E402

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_chat_ids_follow_the_template_or_write_plain_text(tiny_llama):
    tok = tiny_llama.tokenizer
    had = getattr(tok, "chat_template", None)
    try:
        tok.chat_template = None
        assert chat_ids(tok, "Reply in German. Hi") == tok("Reply in German. Hi\n\n", add_special_tokens=False)["input_ids"]
        assert chat_ids(tok, "Hi", system="Be brief.") == tok("Be brief.\n\nHi\n\n", add_special_tokens=False)["input_ids"]
        tok.chat_template = TEMPLATE
        want = tok("<system>Be brief.</system><user>Hi</user><assistant>", add_special_tokens=False)["input_ids"]
        assert chat_ids(tok, "Hi", system="Be brief.") == want
    finally:
        tok.chat_template = had


def _slow_nll(model, prompt: list[int], tokens: list[int]) -> float:
    """Mean NLL of ``tokens`` after ``prompt`` (BOS in front), from the whole sequence's logits."""
    from tl_langneurons.model.driver import Runner

    runner = Runner(model)
    start = ([runner.bos_id] if prompt[:1] != [runner.bos_id] else []) + list(prompt)
    ids = torch.tensor([start + list(tokens)])
    with torch.no_grad():
        logp = runner.hf(ids).logits.float().log_softmax(-1)[0]
    n = len(start)
    return float(-torch.stack([logp[n - 1 + i, t] for i, t in enumerate(tokens)]).mean())


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_lcb_sweep_scores_answers_as_lcb_and_resumes(tiny_llama, tiny_dirs, tiny_corpus, tmp_path):
    from tl_langneurons.cli import main
    from tl_langneurons.evaluate.sweep import SweepConfig, run_sweep
    from tl_langneurons.steer.generation import generate_many

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    tok = tiny_llama.tokenizer
    cfg = SweepConfig(method="add", lcb=True, languages=["de", "ja"], k_fractions=["5%"], alphas=[0.5, 4.0],
                      layer_sets=["all"], val_prompts=3, test_prompts=6, max_new_tokens=6, temperature=0.3)
    res = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path / "sw", progress=False)
    prompts = res.meta["prompts"]
    for lang in ("de", "ja"):
        known = {p.prompt: p for p in load_lcb_prompts([lang])}
        val, test = prompts["requests"]["val"][lang], prompts["requests"]["test"][lang]
        assert (len(val), len(test)) == (3, 6)
        assert {known[t].request for t in val}.isdisjoint({known[t].request for t in test})  # whole requests apart
        assert prompts["test"][lang] == [chat_ids(tok, t) for t in test]
        assert all(len({known[t].request for t in test[i:i + 3]}) == 1 for i in (0, 3))  # in requests of three
    settings = [r["setting"] for r in res.test if r["lang"] == "de"]
    assert settings == ["none", "system prompt", "paper clamp k=1000", "best add", "shared add"]

    # the unsteered row: LCB's metric and the rate on the same answers generated one by one
    for lang in ("de", "ja"):
        row = next(r for r in res.test if r["lang"] == lang and r["setting"] == "none")
        out = [generate_many(tiny_llama, [(p, 1)], max_new_tokens=6, temperature=0.3)[0]
               for p in prompts["test"][lang]]
        m = lcb_metrics([s.text for s in out], lang)
        assert (row["lpr"], row["lcb_acc"], row["lcb_scored"]) == (m["lpr"], m["acc"], m["n_scored"])
        assert (row["wpr"] is None) == (lang == "de")
        # relevance: NLL after the next request (same phrasing) minus after its own, from the full logits
        ps = prompts["test"][lang]
        gains = [_slow_nll(tiny_llama, ps[(i + 3) % 6], s.tokens) - _slow_nll(tiny_llama, ps[i], s.tokens)
                 for i, s in enumerate(out) if s.tokens]
        assert row["relevance"] == pytest.approx(sum(gains) / len(gains), abs=1e-4)
        assert row["on_topic"] == pytest.approx(sum(g > 0 for g in gains) / len(gains))
        sysrow = next(r for r in res.test if r["lang"] == lang and r["setting"] == "system prompt")
        assert prompts["system"][lang][0] != prompts["test"][lang][0] and 0 <= sysrow["lpr"] <= 1
    # the gate (lcb_gate answers): from the unsteered answers to the validation requests behind the system
    # prompt, generated one by one; every row's gated LPR on that gate; the pick by gated LPR
    from tl_langneurons.evaluate.confusion import LCB_GATE_SEEDS, gated_lpr
    from tl_langneurons.evaluate.lcb import line_pass
    from tl_langneurons.evaluate.metrics import answers_threshold, is_degenerate

    assert cfg.lcb_gate == "answers"
    from tl_langneurons.errors import LangNeuronsError
    with pytest.raises(LangNeuronsError, match="--lcb-gate is for --lcb sweeps"):
        SweepConfig(lcb_gate="answers")
    for lang in ("de", "ja"):
        answers = [generate_many(tiny_llama, [(p, s)], max_new_tokens=6, temperature=0.3)[0]
                   for p in prompts["system_val"][lang] for s in LCB_GATE_SEEDS]
        thr = answers_threshold([a.tokens for a in answers])
        assert res.meta["lcb_gate"][lang]["threshold"] == thr == res.meta["distinct_thresholds"][lang]
        assert res.meta["lcb_gate"][lang]["answers"] == 3 * len(LCB_GATE_SEEDS)
        out = [generate_many(tiny_llama, [(p, 1)], max_new_tokens=6, temperature=0.3)[0] for p in prompts["test"][lang]]
        row = next(r for r in res.test if r["lang"] == lang and r["setting"] == "none")
        ok = [line_pass(a.text, lang) is True and not is_degenerate(a.tokens, thr) for a in out]
        assert row["lpr_gated"] == sum(ok) / len(ok)
        assert gated_lpr([{"text": a.text, "tokens": a.tokens} for a in out], lang, thr)["lpr_gated"] == row["lpr_gated"]
        tried = [r for r in res.stages if r["lang"] == lang]
        top = max((r["lpr_gated"], -(r["nll"] or 99)) for r in tried)
        assert (res.best[lang]["val"]["lpr_gated"], -(res.best[lang]["val"]["nll"] or 99)) == top
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert "Language Confusion Benchmark" in md and "| system prompt |" in md and "val gated LPR" in md
    again = run_sweep(tiny_llama, neurons, tiny_corpus.texts, cfg, tmp_path / "sw", progress=False)
    assert again.meta["timings"] == {} and again.test == res.test  # resumed from the cells

    # the command line: sweep --lcb into DIR/lcb-METHOD, then the lcb table of every such sweep
    n = tmp_path / "n"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "12", "--k", "20",
                 "--out", str(n), "--device", "cpu", "--quiet"]) == 0
    assert main(["lcb", str(n)]) == 2  # no LCB sweep yet: one line
    common = ["sweep", "--neurons", str(n), "--lcb", "--languages", "de", "--val-prompts", "3", "--test-prompts",
              "6", "--max-new-tokens", "4", "--quiet"]
    for bad in (["--heldout", "bundled"], ["--languages", "en"], ["--val-prompts", "4"]):
        assert main([*common, "--method", "add", "--k-fractions", "5%", "--alphas", "1", "--layer-sets", "all",
                     *bad]) == 2
    assert not (n / "lcb-add").exists()
    assert main([*common, "--method", "add", "--k-fractions", "5%", "--alphas", "1", "--layer-sets", "all"]) == 0
    assert main([*common, "--method", "diffmean", "--resid-layers", "1", "--alphas", "0.5"]) == 0
    assert main(["lcb", str(n)]) == 0
    table = json.loads((n / "lcb" / "lcb.json").read_text())
    got = [r["setting"] for r in table["rows"]]
    assert got == ["none", "system prompt", "paper clamp k=1000", "best add", "shared add", "best diffmean",
                   "shared diffmean"]
    assert "| system prompt |" in (n / "lcb" / "lcb.md").read_text()
    assert main([*common, "--method", "clamp", "--k-fractions", "5%", "--scales", "1", "--layer-sets", "all",
                 "--max-new-tokens", "5"]) == 0
    assert main(["lcb", str(n), "--overwrite"]) == 2  # made on other answers (5 tokens against 4): not one table


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_lcb_system_steers_the_requests_behind_the_system_prompt(tiny_llama, tiny_dirs, tiny_corpus, tmp_path):
    """``--lcb-system``: the steered cells answer the requests behind the system prompt, so a setting that adds
    nothing (add at alpha 0) gives the system prompt's answers there and the bare request's answers without the
    option; the unsteered (none) row stays the bare request either way."""
    from tl_langneurons.cli import main
    from tl_langneurons.errors import LangNeuronsError
    from tl_langneurons.evaluate.sweep import SweepConfig, run_sweep

    neurons = find_neurons(tiny_llama, tiny_corpus, k=10, progress=False)
    common = dict(method="add", lcb=True, languages=["de"], k_fractions=["5%"], alphas=[1.0], layer_sets=["all"],
                  val_prompts=3, test_prompts=6, max_new_tokens=6, temperature=0.3, test_settings=["zero=add:alpha=0"])
    with pytest.raises(LangNeuronsError, match="give --lcb too"):
        SweepConfig(lcb_system=True)
    bare = run_sweep(tiny_llama, neurons, tiny_corpus.texts, SweepConfig(**common), tmp_path / "bare", progress=False)
    from tl_langneurons.evaluate.cells import CellRunner

    asked, real = [], CellRunner.samples_many

    def spy(self, cells):  # the prompts of every steered cell, validation and test
        asked.extend(c.prompt for c in cells if c.steering is not None)
        return real(self, cells)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CellRunner, "samples_many", spy)
        behind = run_sweep(tiny_llama, neurons, tiny_corpus.texts, SweepConfig(**common, lcb_system=True),
                           tmp_path / "behind", progress=False)
    p = behind.meta["prompts"]
    assert {tuple(x) for x in p["system_val"]["de"]} <= set(asked)  # the search too, not only the report
    assert set(asked) == {tuple(x) for x in p["system_val"]["de"] + p["system"]["de"]}
    row = {(name, s): next(r for r in res.test if r["setting"] == s)
           for name, res in (("bare", bare), ("behind", behind)) for s in ("none", "system prompt", "zero")}
    keys = ("lpr", "lcb_acc", "lcb_scored", "fluent", "nll", "relevance")
    assert all(row["bare", s][k] == row["behind", s][k] for s in ("none", "system prompt") for k in keys)
    assert all(row["bare", "zero"][k] == row["bare", "none"][k] for k in keys)
    assert all(row["behind", "zero"][k] == row["behind", "system prompt"][k] for k in keys)
    assert row["behind", "zero"]["retention"] == 1.0  # against its twins: the system prompt's answers
    assert behind.meta["prompts"]["system"]["de"] != bare.meta["prompts"]["test"]["de"]
    assert "steering on top of prompting" in (tmp_path / "behind" / "sweep.md").read_text()

    # the command line: into DIR/lcb-system-METHOD, named apart in the lcb table
    n = tmp_path / "n"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "12", "--k", "20",
                 "--out", str(n), "--device", "cpu", "--quiet"]) == 0
    args = ["sweep", "--neurons", str(n), "--languages", "de", "--val-prompts", "3", "--test-prompts", "6",
            "--max-new-tokens", "4", "--quiet", "--method", "add", "--k-fractions", "5%", "--alphas", "1",
            "--layer-sets", "all"]
    assert main([*args, "--lcb-system"]) == 2  # without --lcb: one line, nothing written
    assert not list(n.glob("lcb*"))
    assert main([*args, "--lcb"]) == 0 and main([*args, "--lcb", "--lcb-system"]) == 0
    assert (n / "lcb-system-add" / "sweep.json").is_file()
    assert main(["lcb", str(n)]) == 0
    got = [r["setting"] for r in json.loads((n / "lcb" / "lcb.json").read_text())["rows"]]
    assert got == ["none", "system prompt", "paper clamp k=1000", "best add", "shared add",
                   "paper clamp k=1000 + system prompt", "best add + system prompt", "shared add + system prompt"]
    assert "rows ending + system prompt are against the system prompt's" in (n / "lcb" / "lcb.md").read_text()
    assert main(["report", str(n)]) == 0
    md = (n / "report.md").read_text()
    assert "add settings sweep on LCB's requests behind the system prompt (lcb-system-add)" in md
    assert "add settings sweep on LCB's requests (lcb-add)" in md
    with pytest.raises(LangNeuronsError, match="is the sweep's own row"):  # a name the lcb table gives
        SweepConfig(lcb=True, test_settings=["mine + system prompt=add:alpha=1"])


@pytest.fixture(scope="module")
def short_lcb(tiny_dirs, tmp_path_factory):
    """A find folder with one LCB sweep (add) of 4-token answers: too short for LCB to score any (it scores
    lines of 5 tokens or more)."""
    from tl_langneurons.cli import main

    n = tmp_path_factory.mktemp("short-lcb") / "n"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "6", "--k", "20",
                 "--out", str(n), "--device", "cpu", "--quiet"]) == 0
    assert main(["sweep", "--neurons", str(n), "--lcb", "--languages", "de", "--val-prompts", "3", "--test-prompts", "6",
                 "--max-new-tokens", "4", "--quiet", "--method", "add", "--k-fractions", "5%", "--alphas", "1",
                 "--layer-sets", "all"]) == 0
    return n


def _sweep_copy(src, folder, change) -> None:
    """``src``'s lcb-add sweep.json copied into ``folder``/lcb-add, edited by ``change(data)``."""
    data = json.loads((src / "lcb-add" / "sweep.json").read_text())
    change(data)
    (folder / "lcb-add").mkdir(parents=True)
    (folder / "lcb-add" / "sweep.json").write_text(json.dumps(data))


def _one_line(capsys, code, *needles) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and all(n in err[0] for n in needles), err
    return err[0]


@pytest.mark.slow  # a sweep end to end
def test_lcb_refuses_sweeps_of_other_models_or_neurons(short_lcb, tmp_path, capsys):
    """Sweeps made on another model or other neurons never merge into one table (issue 39: f1's rows were
    dropped silently behind f0's); one model under another name (the same weights) is the same model."""
    from tl_langneurons.cli import main

    mine = short_lcb / "lcb-add"

    def other(name, change):
        _sweep_copy(short_lcb, tmp_path / name, change)
        return main(["lcb", str(short_lcb), "--sweeps", str(mine), str(tmp_path / name / "lcb-add"),
                     "--out", str(tmp_path / "table")])

    def model(d):  # another model: its name, weights and so its neurons' AP
        d["meta"].update(model="other-model", ap_sha="0" * 16)
        d["meta"]["neurons_meta"]["weights_sha"] = "f" * 16

    _one_line(capsys, other("f1", model), str(mine), str(tmp_path / "f1" / "lcb-add"),
                     "different models or neurons", "model other-model vs", "weights fingerprint ffff",
                     "neurons (AP hash) 0000")
    _one_line(capsys, other("k10", lambda d: d["meta"]["neurons_meta"].update(k=10)), "k 10 vs 20")
    _one_line(capsys, other("lape", lambda d: d["meta"]["neurons_meta"].update(method="lape")),
              "neuron method lape vs ap")
    _one_line(capsys, other("ap", lambda d: d["meta"].update(ap_sha="1" * 16)), "neurons (AP hash) 1111")
    assert not (tmp_path / "table").exists()
    # the same neurons and weights, the model by another name (e.g. a folder and a hub name): one table
    assert other("renamed", lambda d: d["meta"].update(model="the-same-weights")) == 0
    # another folder's sweep alone, written into these neurons' folder: refused as well
    assert main(["lcb", str(short_lcb), "--sweeps", str(tmp_path / "f1" / "lcb-add"), "--out", str(tmp_path / "t2")]) == 2
    assert "different models or neurons" in capsys.readouterr().err and not (tmp_path / "t2").exists()


@pytest.mark.parametrize("where,key,value", [
    ("test", "rate", "x"), ("test", "lpr", "x"), ("test", "lcb_scored", "x"), ("test", "nll", [1.0]),
    ("test", "retention", True), ("config", "max_new_tokens", "4"), ("config", "method", 5),
])
@pytest.mark.slow  # a sweep end to end (once for the module)
def test_lcb_damaged_numbers_are_one_line(short_lcb, tmp_path, capsys, where, key, value):
    """A number of a sweep's sweep.json replaced by text (or a count by a string, a flag by a list) is one
    line naming the file and the field, exit 2; not a TypeError, nor a table of it."""
    from tl_langneurons.cli import main

    def damage(d):
        (d["test"][0] if where == "test" else d["meta"]["config"])[key] = value

    _sweep_copy(short_lcb, tmp_path / "f", damage)
    field = f"test[0].{key}" if where == "test" else f"meta.config.{key}"
    _one_line(capsys, main(["lcb", str(tmp_path / "f")]), str(tmp_path / "f" / "lcb-add" / "sweep.json"),
              f"field {field!r} must be")
    assert not (tmp_path / "f" / "lcb").exists()


@pytest.mark.slow  # a sweep end to end (once for the module)
def test_lcb_shows_no_lpr_where_no_answer_was_scored(short_lcb, tmp_path, capsys):
    """4-token answers have no line LCB scores: its metric says LPR 1.0, the tables show "-" and say why,
    and a mean leaves out the languages not scored."""
    from tl_langneurons.cli import main

    rows = json.loads((short_lcb / "lcb-add" / "sweep.json").read_text())["test"]
    assert [r["lcb_scored"] for r in rows if "lpr" in r] == [0] * 5 and all(r["lpr"] == 1.0 for r in rows if "lpr" in r)
    assert main(["lcb", str(short_lcb), "--out", str(tmp_path / "t")]) == 0
    md = capsys.readouterr().out
    none = next(line for line in md.splitlines() if line.startswith("| none |"))
    assert none.startswith("| none | - | 0.00 | - | - |") and none.endswith("| - |")  # LPR, line acc, WPR; LPR de
    assert "LCB scored none of the answers" in md and "Unscored: none (de); system prompt (de)" in md
    assert "LCB scored none of the answers" in (short_lcb / "lcb-add" / "sweep.md").read_text()
    assert "lcb_scored" in (tmp_path / "t" / "lcb.csv").read_text().splitlines()[0]

    def scored_ja(d):  # another language whose answers were scored: the mean is its LPR alone
        d["test"] += [{**r, "lang": "ja", "lcb_scored": 6, "lpr": 0.5} for r in d["test"] if "lpr" in r]
        d["meta"]["config"]["languages"] = None

    _sweep_copy(short_lcb, tmp_path / "two", scored_ja)
    assert main(["lcb", str(tmp_path / "two")]) == 0
    none = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| none |"))
    assert none.startswith("| none | 0.50 |") and none.endswith("| - | 0.50 |")


@pytest.mark.slow  # a sweep end to end
def test_sweep_on_sharegpt_from_the_command_line(short_lcb, tmp_path, capsys):
    """``sweep --lcb --lcb-set crosslingual/sharegpt``: its requests (2 or 3 phrasings) whole on one side, the set
    recorded, its own default folder; ``lcb --lcb-set`` tables it apart from the okapi sweep beside it."""
    import shutil

    from tl_langneurons.cli import main

    n = tmp_path / "n"
    shutil.copytree(short_lcb, n)
    assert main(["sweep", "--neurons", str(n), "--lcb", "--lcb-set", "crosslingual/sharegpt", "--languages", "de,ja",
                 "--val-prompts", "5", "--test-prompts", "6", "--max-new-tokens", "6", "--quiet", "--method", "add",
                 "--k-fractions", "5%", "--alphas", "1", "--layer-sets", "all"]) == 0
    data = json.loads((n / "lcb-crosslingual-sharegpt-add" / "sweep.json").read_text())
    assert data["meta"]["config"]["lcb_set"] == "crosslingual/sharegpt"
    assert data["meta"]["prompts"]["lcb"].startswith("for-ai/language-confusion test_sets/crosslingual/sharegpt")
    for lang in ("de", "ja"):
        known = {p.prompt: p for p in load_lcb_prompts([lang], lcb_set="crosslingual/sharegpt")}
        val, test = (data["meta"]["prompts"]["requests"][k][lang] for k in ("val", "test"))
        assert (len(val), len(test)) == (5, 6)
        v, t = {known[x].request for x in val}, {known[x].request for x in test}
        assert not v & t
        for requests, texts in ((v, val), (t, test)):  # every phrasing of each request taken
            assert sum(1 for p in known.values() if p.request in requests) == len(texts)
    rows = [r for r in data["test"] if r["lang"] == "de"]
    assert [r["setting"] for r in rows][:2] == ["none", "system prompt"] and all("lpr" in r for r in rows)
    capsys.readouterr()
    assert main(["lcb", str(n), "--lcb-set", "crosslingual/sharegpt"]) == 0
    table = (n / "lcb-crosslingual-sharegpt" / "lcb.md").read_text(encoding="utf-8")
    assert table.startswith("Language confusion on LCB's cross-lingual sharegpt requests; sweeps: ")
    assert "lcb-crosslingual-sharegpt-add" in table and "lcb-add" not in table.split("\n")[0].split("sharegpt requests")[1]
    capsys.readouterr()
    assert main(["lcb", str(n), "--out", str(tmp_path / "okapi")]) == 0  # the okapi sweep alone, as before
    assert "cross-lingual okapi requests" in (tmp_path / "okapi" / "lcb.md").read_text(encoding="utf-8")
    empty = tmp_path / "m"
    empty.mkdir()
    shutil.copytree(n / "lcb-crosslingual-sharegpt-add", empty / "lcb-crosslingual-sharegpt-add")
    capsys.readouterr()
    _one_line(capsys, main(["lcb", str(empty)]), "no finished LCB sweep on crosslingual/okapi",
              "it has lcb-crosslingual-sharegpt-add: name their set with --lcb-set")


@pytest.mark.slow  # a sweep end to end
def test_sweep_lcb_with_the_script_gate(tiny_dirs, tmp_path, capsys, monkeypatch):
    """``sweep --lcb --script-gate``: the rows script gate and each pick + script gate, scored as the others, their
    answers free of masked tokens and cached apart from the ungated ones; the lcb table shows them; bad input is
    one line before the model loads."""
    from tl_langneurons.cli import main
    from tl_langneurons.steer import script_gate as sg

    n = tmp_path / "n"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "6", "--k", "20",
                 "--out", str(n), "--device", "cpu", "--quiet"]) == 0
    args = ["sweep", "--neurons", str(n), "--languages", "de,ja", "--val-prompts", "3", "--test-prompts", "6",
            "--max-new-tokens", "6", "--quiet", "--method", "add", "--k-fractions", "5%", "--alphas", "1",
            "--layer-sets", "all"]
    capsys.readouterr()  # find's lines
    _one_line(capsys, main([*args, "--script-gate"]), "--script-gate is a baseline on LCB's requests: give --lcb")
    _one_line(capsys, main([*args, "--lcb", "--script-gate-latin"]), "give --script-gate")
    with monkeypatch.context() as mp:
        mp.delitem(sg.SCRIPTS, "ja")
        _one_line(capsys, main([*args, "--lcb", "--script-gate"]), "--script-gate: the script gate has no scripts "
                                                                   "for 'ja'")
    assert not list(n.glob("lcb*"))
    capsys.readouterr()
    assert main([*[a for a in args if a != "--quiet"], "--lcb", "--script-gate"]) == 0
    # the scoring says where it is: a tick per (row, language) of the test split, 9 rows (4 unsteered, the paper's
    # clamp, best, shared, and best and shared under the gate) x 2 languages, and a last line once all are scored
    err = capsys.readouterr().err.splitlines()
    assert "score the test rows: started, 18 cell" in err
    assert any(ln.startswith("score the test rows: done in") for ln in err)
    data = json.loads((n / "lcb-add" / "sweep.json").read_text())
    rows = {(r["lang"], r["setting"]): r for r in data["test"]}
    for lang in ("de", "ja"):
        for name in ("none", "system prompt", "script gate", "system prompt + script gate", "best add", "shared add",
                     "best add + script gate", "shared add + script gate"):
            r = rows[(lang, name)]
            assert all(r[k] is not None for k in ("lpr", "retention", "nll", "relevance")), (lang, name)
    assert rows[("ja", "script gate")]["lpr"] != rows[("ja", "none")]["lpr"] or \
        rows[("ja", "script gate")]["nll"] != rows[("ja", "none")]["nll"]
    for lang in ("de", "ja"):  # each gated row's retention is against its ungated twin
        for gated, twin in (("script gate", "none"), ("system prompt + script gate", "system prompt")):
            g, t = rows[(lang, gated)], rows[(lang, twin)]
            if t["fluent"]:
                assert g["retention"] == pytest.approx(g["fluent"] / t["fluent"]), (lang, gated)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs["llama"]))
    gated = [json.loads(f.read_text()) for f in (n / "samples").glob("*.json")]
    gated = [d for d in gated if "script_gate" in d.get("settings", {})]
    assert {d["settings"]["script_gate"]["lang"] for d in gated} == {"de", "ja"}
    for d in gated:
        mask = sg.script_mask(tok, d["settings"]["script_gate"]["lang"])
        assert all(mask[t] for s in d["samples"] for t in s["tokens"])
    assert main(["lcb", str(n)]) == 0
    got = list(dict.fromkeys(r["setting"] for r in json.loads((n / "lcb" / "lcb.json").read_text())["rows"]))
    assert got == ["none", "system prompt", "script gate", "system prompt + script gate", "paper clamp k=1000",
                   "best add", "shared add", "best add + script gate", "shared add + script gate"]
    assert "a decoding-time baseline, not the fluency gate" in (n / "lcb" / "lcb.md").read_text()


@pytest.mark.slow  # sweeps end to end
def test_sweep_lcb_with_a_language_as_source_and_no_paper_row(tiny_dirs, tmp_path, capsys):
    """``--sources en`` names one source for every request: on LCB's cross-lingual requests (written in English)
    its cells are those of ``--sources prompt`` (read back, nothing generated); on a monolingual set, where
    ``prompt`` is refused, it steers away from English. ``--no-paper-row`` leaves the paper's clamp out."""
    from tl_langneurons.cli import main

    n = tmp_path / "n"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "6", "--k", "20",
                 "--out", str(n), "--device", "cpu", "--quiet"]) == 0
    args = ["sweep", "--neurons", str(n), "--lcb", "--languages", "de,ja", "--val-prompts", "3", "--test-prompts", "6",
            "--max-new-tokens", "6", "--quiet", "--method", "add", "--k-fractions", "5%", "--alphas", "1",
            "--layer-sets", "all", "--no-paper-row"]
    capsys.readouterr()
    _one_line(capsys, main([*args, "--sources", "xx"]), "--sources xx: each is none, prompt or a language of the "
                                                              "neurons")
    _one_line(capsys, main([*args, "--sources", "en", "--lcb-set", "monolingual/okapi", "--languages", "de,xx"]),
              "not xx")
    assert not list(n.glob("lcb*"))
    assert main([*args, "--sources", "prompt", "--out", str(tmp_path / "p")]) == 0
    made = {f.name for f in (n / "samples").glob("*.json")}
    assert main([*args, "--sources", "en", "--out", str(tmp_path / "e")]) == 0
    assert {f.name for f in (n / "samples").glob("*.json")} == made  # the same cells: nothing generated
    p, e = (json.loads((tmp_path / d / "sweep.json").read_text()) for d in ("p", "e"))
    assert [r["setting"] for r in e["test"] if r["lang"] == "de"] == ["none", "system prompt", "best add",
                                                                       "shared add"]
    assert [(r["lang"], r["setting"], r["lpr"], r["nll"]) for r in e["test"]] == \
        [(r["lang"], r["setting"], r["lpr"], r["nll"]) for r in p["test"]]
    assert all(e["best"][l]["source"] == "en" and p["best"][l]["source"] == "prompt" for l in ("de", "ja"))
    capsys.readouterr()  # the sweeps' lines
    _one_line(capsys, main([*args, "--sources", "prompt", "--lcb-set", "monolingual/okapi",
                            "--out", str(tmp_path / "m")]), "--sources prompt steers away from the request's language")
    assert main([*args, "--sources", "en", "--lcb-set", "monolingual/okapi", "--languages", "de,es",
                 "--val-prompts", "2", "--test-prompts", "6", "--out", str(tmp_path / "m")]) == 0
    m = json.loads((tmp_path / "m" / "sweep.json").read_text())
    assert m["meta"]["config"]["sources"] == ["en"] and m["meta"]["config"]["paper_row"] is False
    assert all(m["best"][l]["source"] == "en" for l in ("de", "es"))
    assert {r["setting"] for r in m["test"]} == {"none", "system prompt", "best add", "shared add"}


@pytest.mark.slow  # sweeps end to end
def test_relevance_margin_puts_the_judge_in_the_pick(tiny_dirs, tmp_path, capsys):
    """``--relevance-margin M``: every validation setting carries the judge's relevance and whether it keeps the
    system prompt's (``meta.relevance_pick``) within M; each language's pick is the best by (keeps, gated LPR,
    lower NLL), recomputed here from the stages; a margin no setting falls outside picks as no margin does; bad
    input is one line before the model loads."""
    from tl_langneurons.cli import main

    n = tmp_path / "n"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "6", "--k", "20",
                 "--out", str(n), "--device", "cpu", "--quiet"]) == 0
    args = ["sweep", "--neurons", str(n), "--lcb", "--languages", "de,ja", "--val-prompts", "6", "--test-prompts", "6",
            "--max-new-tokens", "8", "--quiet", "--method", "add", "--k-fractions", "2%,5%", "--alphas", "0.5,8",
            "--layer-sets", "all", "--no-paper-row", "--test-samples", "1"]
    capsys.readouterr()
    _one_line(capsys, main([*args, "--relevance-margin", "0.05"]), "--relevance-margin picks by the independent "
                                                                    "judge's relevance: give --judge too")
    _one_line(capsys, main([*args, "--judge", "lexical", "--relevance-margin", "-1"]), "--relevance-margin must be")
    _one_line(capsys, main([*args, "--judge", "lexical", "--relevance-margin", "0.05", "--val-prompts", "3"]),
              "give --val-prompts 6 or more")
    assert not list(n.glob("lcb*"))
    runs = {}
    for name, extra in (("plain", []), ("m0", ["--relevance-margin", "0"]), ("wide", ["--relevance-margin", "100"])):
        assert main([*args, "--judge", "lexical", *extra, "--out", str(tmp_path / name)]) == 0
        runs[name] = json.loads((tmp_path / name / "sweep.json").read_text())
    m0 = runs["m0"]
    bar = m0["meta"]["relevance_pick"]["system_prompt"]
    assert m0["meta"]["relevance_pick"]["margin"] == 0 and set(bar) == {"de", "ja"}
    assert all(isinstance(bar[l], float) for l in bar)
    for lang in ("de", "ja"):
        rows = [r for r in m0["stages"] if r["lang"] == lang]
        assert rows and all(r["relevance_judge"] is not None for r in rows)
        assert all(r["keeps_relevance"] == (r["relevance_judge"] >= bar[lang]) for r in rows)
        best = max(rows, key=lambda r: (r["keeps_relevance"], r["lpr_gated"], -r["nll"]))
        assert m0["best"][lang]["val"]["label"] == best["label"]
        assert runs["wide"]["best"][lang]["val"]["label"] == runs["plain"]["best"][lang]["val"]["label"]
    assert "relevance_pick" not in runs["plain"]["meta"]


def test_relevance_proxy_is_kept_in_the_store(tiny_llama, tmp_path):
    """The relevance proxy's NLL after the other requests is scored once per weights and answers: a second store on
    the same folder reads it back (no forward pass), the figures equal the storeless ones, and other answers are
    scored afresh."""
    import tl_langneurons.evaluate.confusion as confusion
    from tl_langneurons.evaluate.samples import SampleStore
    from tl_langneurons.steer.generation import generate_many, sample_nll

    tok = tiny_llama.tokenizer
    prompts = [chat_ids(tok, t) for t in (f"Write about topic {i} in German." for i in range(6))]
    out = generate_many(tiny_llama, [(p, 1) for p in prompts], max_new_tokens=6, temperature=0.3)
    own = sample_nll(tiny_llama, out)
    rows = [{"text": s.text, "tokens": s.tokens, "nll": n} for s, n in zip(out, own)]
    calls = []

    def spy(model, samples, *a, **kw):
        calls.append(len(samples))
        return sample_nll(model, samples, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(confusion, "sample_nll", spy)
        plain = confusion.lcb_quality(tiny_llama, rows, prompts, "de", 1)
        first = confusion.lcb_quality(tiny_llama, rows, prompts, "de", 1, SampleStore(tmp_path))
        again = confusion.lcb_quality(tiny_llama, rows, prompts, "de", 1, SampleStore(tmp_path))
        assert calls == [6, 6] and plain == first == again and plain["relevance"] is not None
        confusion.lcb_quality(tiny_llama, rows[::-1], prompts, "de", 1, SampleStore(tmp_path))
        assert calls == [6, 6, 6]
    assert len(list(tmp_path.glob("**/relevance-nll-*.json"))) == 2
