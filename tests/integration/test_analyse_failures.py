"""benchmarks/analyse_failures.py on a tiny prompted sweep: its groups are the sweep's own cells (nothing is
generated again), so the unsteered share failing the gate is one minus the sweep's unsteered fluent share, the
steered one is one minus the pick's fluent share, and the own-prompt group is the sweep's own fluency."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tl_langneurons.cli import main

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "analyse_failures.py"


def _script():
    """benchmarks/analyse_failures.py as a module."""
    spec = importlib.util.spec_from_file_location("analyse_failures", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _find(tiny_dirs, n: Path) -> Path:
    """A find folder of the tiny Llama (8 texts per language, k = 5)."""
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--n-per-lang", "8", "--k", "5", "--out", str(n),
                 "--quiet"]) == 0
    return n


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_failure_profile_matches_the_sweep(tiny_dirs, tmp_path, capsys):
    mod, n = _script(), _find(tiny_dirs, tmp_path / "n")
    assert main(["sweep", "--neurons", str(n), "--method", "add", "--languages", "de,ja", "--heldout", "bundled",
                 "--k-fractions", "5%", "--alphas", "2", "--layer-sets", "all", "--val-prompts", "1",
                 "--test-prompts", "2", "--test-samples", "2", "--max-new-tokens", "6", "--quiet",
                 "--out", str(n / "sweep-add")]) == 0
    before = len(list((n / "samples").glob("*.json")))
    capsys.readouterr()
    assert mod.main(["--neurons", str(n), "--sweep", str(n / "sweep-add"), "--no-record"]) == 0
    out = capsys.readouterr().out
    assert len(list((n / "samples").glob("*.json"))) == before  # read from the store, nothing generated
    test = json.loads((n / "sweep-add" / "sweep.json").read_text())["test"]
    get = {(r["lang"], r["setting"]): r for r in test}
    for lang in ("de", "ja"):
        rows = {m.group(1): float(m.group(2)) for m in re.finditer(
            rf"^\| {lang} \| ([^|]+?)(?: \([^|]*\))? \| \d+ \| ([0-9.]+) \|", out, re.M)}
        assert rows["unsteered, other prompts"] == pytest.approx(1 - get[(lang, "none")]["fluent"], abs=0.005)
        assert rows["steered"] == pytest.approx(1 - get[(lang, "best add")]["fluent"], abs=0.005)
        assert rows["unsteered, own prompts"] == pytest.approx(1 - get[(lang, "none")]["own_fluent"], abs=0.005)
    # the attribution by quarter: one row per quarter of the depth that holds steered neurons
    assert mod.main(["--neurons", str(n), "--sweep", str(n / "sweep-add"), "--no-record", "--attribution"]) == 0
    out = capsys.readouterr().out
    assert "Direct logit attribution" in out and re.search(r"^\| de \| 0-\d+ \| \d+ \|", out, re.M)
    assert mod.main(["--neurons", str(n), "--sweep", str(n), "--no-record"]) == 2  # no sweep there: one line
    assert "is not a finished sweep's result" in capsys.readouterr().err


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
@pytest.mark.parametrize("behind", [[], ["--lcb-system"], ["--lcb-set", "monolingual/okapi", "--sources", "en"]],
                         ids=["bare", "lcb-system", "monolingual"])
def test_lcb_line_failures_match_the_sweep(tiny_dirs, tmp_path, capsys, behind):
    """On an LCB sweep the script reads the test answers from the store (nothing generated): its LPR of the pick,
    the unsteered answers and the system prompt equals the sweep's, and its failing answers are those LCB fails;
    with ``--lcb-system`` the pick's answers are those to the requests behind the system prompt; on another set
    (monolingual okapi) the requests are that set's (the sweep's own, not okapi's cross-lingual ones)."""
    pytest.importorskip("jieba", reason="LCB's metric tokenizes Chinese with jieba: pip install 'tl-langneurons[lcb]'")
    mod, n = _script(), _find(tiny_dirs, tmp_path / "n")
    assert main(["sweep", "--neurons", str(n), "--method", "add", "--lcb", "--languages", "de", "--k-fractions", "5%",
                 "--alphas", "2", "--layer-sets", "all", "--val-prompts", "3", "--test-prompts", "3",
                 "--max-new-tokens", "40", "--temperature", "0.3", "--lcb-gate", "references", "--quiet",
                 "--out", str(n / "lcb-add"), *behind]) == 0
    before = len(list((n / "samples").glob("*.json")))
    capsys.readouterr()
    # the reference gate on chat answers: the sweep's notes say what its retention is not
    assert "--lcb-gate references: fluent, gated LPR and retention use the reference corpus's fluency gate" in \
        (n / "lcb-add" / "sweep.md").read_text()
    assert mod.main(["--neurons", str(n), "--sweep", str(n / "lcb-add"), "--no-record"]) == 0
    out = capsys.readouterr().out
    assert len(list((n / "samples").glob("*.json"))) == before  # read from the store, nothing generated
    get = {r["setting"]: r for r in json.loads((n / "lcb-add" / "sweep.json").read_text())["test"]}
    rows = {m.group(1): m.group(2) for m in re.finditer(
        r"^\| de \| ([^|]+?)(?: \([^|]*\))?(?: \+ system prompt)? \| 3 \| ([0-9.]+|-) \|", out, re.M)}
    assert set(rows) == {"best", "none", "system prompt"} and any(v != "-" for v in rows.values())
    for name, setting in (("best", "best add"), ("none", "none"), ("system prompt", "system prompt")):
        if rows[name] != "-":  # "-": no answer had a line of 5 tokens (the sweep scores that 1.0, LCB skips it)
            assert float(rows[name]) == pytest.approx(get[setting]["lpr"], abs=0.005)


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_failure_profile_by_genre_matches_the_sweep(tiny_dirs, tmp_path, capsys):
    """On a sweep on two genres the by-genre table's groups are the sweep's cells of each genre: its failing shares
    are one minus the sweep's fluent shares of that genre (the pick, unsteered, the model's own text)."""
    mod, n = _script(), _find(tiny_dirs, tmp_path / "n")
    from tl_langneurons import MultilingualCorpus

    texts = MultilingualCorpus.bundled().texts
    for name, part in (("news", slice(20, 40)), ("chat", slice(40, 60))):
        (tmp_path / name).mkdir()
        for lang, ts in texts.items():
            (tmp_path / name / f"{lang}.txt").write_text("\n".join(ts[part]) + "\n", encoding="utf-8")
    assert main(["sweep", "--neurons", str(n), "--method", "add", "--languages", "de,ja", "--k-fractions", "5%",
                 "--heldout", f"{tmp_path / 'news'}+{tmp_path / 'chat'}", "--genres", "--alphas", "4",
                 "--layer-sets", "all", "--val-prompts", "1", "--test-prompts", "3", "--test-samples", "2",
                 "--max-new-tokens", "24", "--temperature", "0.1", "--quiet", "--out", str(n / "sweep-genres")]) == 0
    capsys.readouterr()
    assert mod.main(["--neurons", str(n), "--sweep", str(n / "sweep-genres"), "--no-record"]) == 0
    out = capsys.readouterr().out
    get = {(r["lang"], r["setting"]): r for r in json.loads((n / "sweep-genres" / "sweep.json").read_text())["test"]}
    seen = []
    for lang in ("de", "ja"):
        for g in ("news", "chat"):
            m = re.search(rf"^\| {lang} \| {g} \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", out, re.M)
            none, best = get[(lang, "none")]["genres"][g], get[(lang, "best add")]["genres"][g]
            steered, unsteered, own = map(float, m.groups())
            assert steered == pytest.approx(1 - best["fluent"], abs=0.005)
            assert unsteered == pytest.approx(1 - none["fluent"], abs=0.005)
            assert own == pytest.approx(1 - none["own_fluent"], abs=0.005)
            seen += [steered, unsteered, own]
    assert len(set(seen)) > 2  # the tiny model's text fails the gate now and then: the shares differ
