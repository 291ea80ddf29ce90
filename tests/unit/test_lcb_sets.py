"""Every LCB test set ships (the repository's test_sets.zip, its sha256s in PROVENANCE.md) and reads: requests
grouped from the Start/Middle/End locations (okapi 33 x 3 + 1, sharegpt 38 x 2 + 8 x 3, complex_prompts 33 x 3,
monolingual one a row), whole requests on one side of the validation/test split, sets by name or folder, and
one clear line for an unknown set or language."""

from __future__ import annotations

import collections
import fnmatch
import hashlib
import re
import tomllib
import zipfile
from pathlib import Path

import pytest

from tl_langneurons import LangNeuronsError
from tl_langneurons.evaluate import lcb_data as d
from tl_langneurons.evaluate.confusion import LANGUAGE_NAMES, SYSTEM_PROMPT, lcb_languages, lcb_split

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = Path(d.__file__).resolve().parents[1] / "data" / "lcb"
ARCHIVE_SHA = "3425337489fa65ff15d977e981e9748c86ce8e88ef0f4457ecdb4a65d8702712"  # the repository's test_sets.zip
SHAPES = {"crosslingual/okapi": {3: 33, 1: 1}, "crosslingual/sharegpt": {2: 38, 3: 8},
          "crosslingual/complex_prompts": {3: 33}}  # phrasings per request: requests, in every language


def _provenance() -> dict[str, str]:
    text = (SHIPPED / "PROVENANCE.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", text, re.M))


def test_the_archive_and_every_member_match_provenance():
    listed = _provenance()
    raw = (SHIPPED / "test_sets.zip").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == listed["test_sets.zip"] == ARCHIVE_SHA
    assert hashlib.sha256((SHIPPED / "words.gz").read_bytes()).hexdigest() == listed["words.gz"]
    with zipfile.ZipFile(SHIPPED / "test_sets.zip") as z:
        members = {n.removeprefix("test_sets/"): z.read(n) for n in z.namelist() if n.endswith(".csv")}
    assert len(members) == 66
    assert {n: hashlib.sha256(b).hexdigest() for n, b in members.items()} == {
        n: sha for n, sha in listed.items() if n.endswith(".csv")}
    # the shipped sets are the archive's folders, each language a file
    assert {f"{s}/{lang}.csv" for s, langs in d.LCB_SETS.items() for lang in langs} == set(members)
    # the five okapi files shipped unzipped before are the same bytes
    before = {"de": "4ab2dbba7eb6763203c76b9e66855d03e4f426a03a17cd99c314a388c0aea897",
              "zh": "b94ad4fae250b4992917945750bcb1cd019b3a8fac8253450299a763fe0b6aff"}
    assert all(listed[f"crosslingual/okapi/{lang}.csv"] == sha for lang, sha in before.items())


def test_package_data_includes_the_archive():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tl_langneurons"]
    for name in ("test_sets.zip", "words.gz", "PROVENANCE.md"):
        assert any(fnmatch.fnmatch(f"data/lcb/{name}", p) for p in patterns), name


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


@pytest.mark.parametrize("name", list(d.LCB_SETS))
def test_every_shipped_file_reads_in_whole_requests(name):
    langs = d.LCB_SETS[name]
    prompts = d.load_lcb_prompts(None, lcb_set=name)
    assert sorted({p.language for p in prompts}) == sorted(langs)
    for lang in langs:
        rows = [p for p in prompts if p.language == lang]
        assert [p.index for p in rows] == list(range(len(rows)))
        by = collections.defaultdict(list)
        for p in rows:
            by[p.request].append(p)
        assert sorted(by) == list(range(len(by)))  # numbered in file order
        if name.startswith("monolingual/"):
            assert len(rows) == 100 and all(p.request == p.index and p.location is None for p in rows)
            continue
        assert dict(collections.Counter(len(ps) for ps in by.values())) == SHAPES[name]
        for ps in by.values():  # Start first, then Middle and End in order, each at most once
            locs = [p.location for p in ps]
            assert locs[0] == "Start" and locs == sorted(set(locs), key=d.LOCATIONS.index)
            assert all(LANGUAGE_NAMES[lang] in p.prompt for p in ps)
        firsts = {r: _words(ps[0].prompt) for r, ps in by.items()}
        for r, ps in by.items():  # each phrasing is nearest (shared words) to its own request's Start
            for p in ps[1:]:
                w = _words(p.prompt)
                assert max(firsts, key=lambda q: len(w & firsts[q]) / len(w | firsts[q])) == r
        for v, t in (d.split_by_prompts(d.whole_requests(rows), n, m) for n, m in ((6, 30), (12, 12), (0, 60))):
            assert not {p.request for p in v} & {p.request for p in t}  # no request on both sides
            assert all(len([p for p in rows if p.request == r]) == len([p for p in v + t if p.request == r])
                       for r in {p.request for p in v + t})  # whole requests only


def test_okapi_split_is_the_one_before_other_sets_were_read():
    """With okapi's requests of three (less row 99) the split by prompts is split_prompts' by requests: the
    validation requests of the seeded draw, then the first test prompts; the results of okapi sweeps stay."""
    for lang in ("de", "ko"):
        whole = d.whole_requests(d.load_lcb_prompts([lang]))
        assert len(whole) == 99 and whole[-1].index == 98
        for n_val, n_test in ((6, 30), (3, 3), (30, 69), (0, 99)):
            val, test = d.split_prompts(whole, n_val // 3, seed=0)
            assert d.split_by_prompts(whole, n_val, n_test, seed=0) == (val, test[:n_test])


def test_sharegpt_requests_of_two_phrasings():
    rows = d.load_lcb_prompts(["de"], lcb_set="crosslingual/sharegpt")
    assert [p.location for p in rows[:4]] == ["Start", "End", "Start", "End"]
    assert rows[0].request == rows[1].request == 0 and rows[2].request == 1
    assert d.whole_requests(rows) == rows  # its last request (Start, End) is whole
    val, test = d.split_by_prompts(rows, 5, 7)
    assert (len(val), len(test)) == (5, 7)
    sizes = collections.Counter(p.request for p in val)
    assert sorted(sizes.values()) == [2, 3]
    with pytest.raises(LangNeuronsError, match="--val-prompts 1: whole de requests .* 2 or 3 phrasings"):
        d.split_by_prompts(rows, 1, 7)
    with pytest.raises(LangNeuronsError, match="--test-prompts 99: .* has 94 de prompts besides the 6"):
        d.split_by_prompts(rows, 6, 99)


def test_monolingual_set_asks_in_its_own_language():
    rows = d.load_lcb_prompts(["ja"], lcb_set="monolingual/native")
    assert len(rows) == 100 and d.is_monolingual(rows) and not d.is_monolingual(d.load_lcb_prompts(["ja"]))
    assert all(p.phrasing is None and p.language == "ja" for p in rows)
    val, test = d.split_by_prompts(rows, 4, 10)
    assert (len(val), len(test)) == (4, 10) and not {p.request for p in val} & {p.request for p in test}
    assert [p.language for p in d.load_lcb_prompts(None, lcb_set="monolingual/aya")][::100] == ["ar", "en", "pt", "tr",
                                                                                                 "zh"]


def test_take_requests():
    assert d.take_requests([3, 3, 3], 6) == [0, 1]
    assert d.take_requests([2, 3, 2], 4) == [0, 2]  # greedy would take 2 + ... and miss
    assert d.take_requests([3, 2, 2], 4) == [1, 2]
    assert d.take_requests([2, 2], 3) is None and d.take_requests([], 0) == []


def test_a_folder_reads_as_the_set_it_holds(tmp_path):
    with zipfile.ZipFile(SHIPPED / "test_sets.zip") as z:
        for lang in ("de", "fr"):
            (tmp_path / f"{lang}.csv").write_bytes(z.read(f"test_sets/crosslingual/sharegpt/{lang}.csv"))
    assert d.set_languages(tmp_path) == ("de", "fr")
    assert d.load_lcb_prompts(None, lcb_set=str(tmp_path)) == d.load_lcb_prompts(["de", "fr"],
                                                                                 lcb_set="crosslingual/sharegpt")
    assert d.load_lcb_prompts("de", folder=tmp_path) == d.load_lcb_prompts("de", lcb_set="crosslingual/sharegpt")


def test_unknown_sets_and_languages_say_what_there_is():
    with pytest.raises(LangNeuronsError, match="'crosslingual/nope': neither a shipped set .*monolingual/okapi"):
        d.load_lcb_prompts(["de"], lcb_set="crosslingual/nope")
    with pytest.raises(LangNeuronsError, match="monolingual/native has es, fr, ja, ko; not 'de'"):
        d.load_lcb_prompts(["de"], lcb_set="monolingual/native")
    with pytest.raises(LangNeuronsError, match="LCB's monolingual/dolly asks for ar, es, fr, hi, ru; not de"):
        lcb_languages(["de"], ["de", "en"], "monolingual/dolly")
    with pytest.raises(LangNeuronsError, match="the neurons know none of the languages of LCB's monolingual/native"):
        lcb_languages(None, ["de", "en"], "monolingual/native")


def test_fifteen_languages_have_names_and_a_system_prompt():
    langs = {*d.LCB_LANGUAGES, "en"}
    assert len(langs) == 15 and set(LANGUAGE_NAMES) == langs
    for s, have in d.LCB_SETS.items():
        assert set(have) <= langs, s
    for lang in d.LCB_LANGUAGES:  # every cross-lingual prompt names its language as LANGUAGE_NAMES does
        assert all(LANGUAGE_NAMES[lang] in p.prompt for p in d.load_lcb_prompts([lang]))
    assert SYSTEM_PROMPT.format(name=LANGUAGE_NAMES["ko"]).endswith("Always answer in Korean, whatever the language "
                                                                     "of the request.")
    # the default targets: de es fr ja zh first as before, then the others the neurons know
    assert lcb_languages(None, ["en", "ko", "de", "zh", "ar"]) == ["de", "zh", "ar", "ko"]
    assert lcb_languages(None, ["de", "en"], "monolingual/okapi") == ["de", "en"]
    assert [len(v + t) for v, t in lcb_split(["ar", "vi"], 6, 30).values()] == [36, 36]


def test_the_languages_a_sweep_leaves_out_are_named():
    """A sweep over LCB's set without --languages takes the targets the neurons know; the rest are named in its
    notes (:func:`lcb_left_out`), not dropped silently."""
    from tl_langneurons.evaluate.confusion import lcb_languages, lcb_left_out

    known = ["en", "de", "fr", "es", "zh", "ja"]
    taken = lcb_languages(None, known)
    left = lcb_left_out(None, known)
    assert taken == ["de", "es", "fr", "ja", "zh"]
    assert left == ["ar", "hi", "id", "it", "ko", "pt", "ru", "tr", "vi"]
    assert sorted(taken + left) == sorted(d.set_languages("crosslingual/okapi"))
    assert lcb_left_out(["de"], known) == []  # languages asked for: nothing is left out by the sweep
    assert lcb_left_out(None, known, "monolingual/okapi") == ["ar", "id", "it", "pt", "vi"]
