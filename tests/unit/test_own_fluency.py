"""The model's own fluency in a language, overall and genre by genre (the ceiling of a genre's retention), and
the sweep table that sets each steered setting's retention beside it."""

from types import SimpleNamespace

from tl_langneurons.evaluate.sweep import SweepPrompts, _genre_language_lines, own_fluency


def _own(genres: list[str]):
    """Two test prompts per genre and language, two seeds each; a sample is fluent where its text is "ok"."""
    langs = ("zh", "de")
    genre = {l: [g for g in genres or ["a", "b"] for _ in range(2)] for l in langs}
    prompts = {l: [[i] for i in range(len(genre[l]))] for l in langs}
    # zh: every sample of the first genre fails the gate but the last prompt's second seed; de: all fluent
    texts = {"zh": {0: ["bad", "bad"], 1: ["bad", "ok"]}, "de": {}}
    answers = {l: [{"text": texts[l].get(i, ["ok", "ok"])[j]} for i in range(len(prompts[l])) for j in range(2)]
               for l in langs}

    def fluent(rows, lang):
        return sum(r["text"] == "ok" for r in rows) / len(rows)

    split = SweepPrompts(seeds={"test": [1, 2]}, prompts={"test": prompts, "genre": {"test": genre}}, genres=genres)
    return own_fluency(split, answers, fluent)


def test_own_fluency_is_split_by_the_genre_of_each_prompt():
    got = _own(["ud", "flores"])
    assert got["zh"] == {None: 5 / 8, "ud": 1 / 4, "flores": 1.0}
    assert got["de"] == {None: 1.0, "ud": 1.0, "flores": 1.0}
    one = _own([])  # one genre: the overall share only
    assert one["zh"] == {None: 5 / 8}


def test_the_genre_and_language_table_sets_retention_beside_the_models_own_fluency():
    test = [{"lang": "zh", "setting": "none", "genres": {"ud": {"fluent": 0.9, "own_fluent": 0.25}}},
            {"lang": "zh", "setting": "shared add",
             "genres": {"ud": {"rate": 0.8, "retention": 0.7, "own_retention": 2.52}}}]
    md = "\n".join(_genre_language_lines(test, ["none", "shared add"], ["zh"]))
    assert "| none | zh | 0.90 / 0.25 |" in md and "| shared add | zh | 0.80 / 0.70 / 2.52 |" in md
    test[0]["genres"]["ud"].pop("own_fluent")  # a sweep made before the own fluency by genre: no table
    assert _genre_language_lines(test, ["none", "shared add"], ["zh"]) == []
