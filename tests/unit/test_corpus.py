"""Corpus: the bundled corpus is what it claims (parallel, 6 languages, identified by lid.176),
loaders read the shared data formats, and bad input gets a one-line error."""

import gzip
import json

import pytest

from tl_langneurons import PAPER_LANGUAGES, LangNeuronsError, MultilingualCorpus
from tl_langneurons.evaluate.metrics import identify


def test_bundled_corpus_is_parallel_and_sized():
    c = MultilingualCorpus.bundled()
    assert c.languages == list(PAPER_LANGUAGES)
    for lang, texts in c.texts.items():
        assert len(texts) == 320  # the documented size
        assert len(set(texts)) == len(texts), f"duplicates in {lang}"
    assert len({len(t) for t in c.texts.values()}) == 1  # the same sentences in every language
    for t in c.texts["en"]:
        assert 5 <= len(t.split()) <= 60


def test_bundled_corpus_every_line_identified_as_its_language():
    c = MultilingualCorpus.bundled()
    for lang, texts in c.texts.items():
        bad = [(t, l, p) for t, (l, p) in zip(texts, identify(texts)) if l != lang or p <= 0.5]
        assert not bad, f"{lang}: {bad[:3]}"


def test_folder_loader_txt_and_gz(tmp_path):
    (tmp_path / "en.txt").write_text("one text\nanother text\n", encoding="utf-8")
    with gzip.open(tmp_path / "de.txt.gz", "wt", encoding="utf-8") as f:
        f.write("ein Text\nnoch ein Text\n")
    c = MultilingualCorpus.from_folder(tmp_path)
    assert c.texts == {"en": ["one text", "another text"], "de": ["ein Text", "noch ein Text"]}
    texts, labels = c.flat()
    assert texts[2] == "ein Text" and labels.tolist() == [0, 0, 1, 1]


def test_jsonl_loader(tmp_path):
    p = tmp_path / "c.jsonl"
    rows = [{"text": f"t{i}", "lang": l} for i, l in enumerate(["en", "fr", "en", "fr"])]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    c = MultilingualCorpus.load(str(p))
    assert c.texts == {"en": ["t0", "t2"], "fr": ["t1", "t3"]}


def test_bad_input_messages(tmp_path):
    (tmp_path / "en.txt").write_text("a\n\nb\n", encoding="utf-8")
    (tmp_path / "de.txt").write_bytes(b"gut\n\xff\xfe kaputt\n")
    with pytest.raises(LangNeuronsError, match=r"en.txt:2: empty line"):
        MultilingualCorpus.from_folder(tmp_path, ["en"])
    with pytest.raises(LangNeuronsError, match=r"de.txt:2: not UTF-8"):
        MultilingualCorpus.from_folder(tmp_path, ["de"])
    with pytest.raises(LangNeuronsError, match=r"unknown language code 'jp' \(did you mean 'ja'\?\)"):
        MultilingualCorpus({"en": ["a", "b"], "jp": ["c", "d"]})
    with pytest.raises(LangNeuronsError, match="has 1 text"):
        MultilingualCorpus({"en": ["a", "b"], "de": ["c"]})
    with pytest.raises(LangNeuronsError, match="at least 2"):
        MultilingualCorpus({"en": ["a", "b"]})
    with pytest.raises(LangNeuronsError, match="has no file for fr"):
        MultilingualCorpus.from_folder(tmp_path, ["fr"])


def test_hub_datasets_fail_clearly_offline():
    with pytest.raises(LangNeuronsError, match="(hub|datasets)"):
        MultilingualCorpus.from_hf("flores")


def test_sample_mix_split_are_seeded_and_disjoint():
    c = MultilingualCorpus.bundled()
    a, b = c.sample(50, seed=1), c.sample(50, seed=1)
    assert a.texts == b.texts and a.texts != c.sample(50, seed=2).texts
    sel, held = c.split(0.25, seed=0)
    for lang in c.languages:
        assert not set(sel.texts[lang]) & set(held.texts[lang])
        assert len(held.texts[lang]) == 80 and len(sel.texts[lang]) == 240
    mixed = MultilingualCorpus.mix([sel, held], n=40, seed=0)
    for lang in c.languages:
        assert len(mixed.texts[lang]) == 40
        assert sum(t in held.texts[lang] for t in mixed.texts[lang]) == 20  # 1:1


@pytest.mark.skipif(not (__import__("pathlib").Path(__file__).resolve().parents[3] / "shared/data").exists(),
                    reason="../shared/data is not beside the project (it is in CI and on developer machines)")
def test_paper_mix_from_shared_data():
    from helpers import SHARED

    spec = f"{SHARED}/data/pawsx-dev+{SHARED}/data/flores200-dev"
    c = MultilingualCorpus.load(spec, n_per_language=500, seed=0)
    flores = MultilingualCorpus.from_folder(SHARED / "data/flores200-dev")
    for lang in PAPER_LANGUAGES:
        assert len(c.texts[lang]) == 500
        assert sum(t in set(flores.texts[lang]) for t in c.texts[lang]) == 250
