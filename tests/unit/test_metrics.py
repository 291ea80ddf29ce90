"""Metrics without a model: lid.176, Wilson intervals, BLEU equal to NLTK's, degeneracy, and the
checks of the evaluation config."""

import random

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from tl_langneurons import LangNeuronsError
from tl_langneurons.evaluate.control import EvaluateConfig, default_ablation_ks
from tl_langneurons.evaluate.metrics import (
    BleuReferences,
    identify,
    is_degenerate,
    is_language,
    longest_repeat_run,
    wilson,
)


def test_lid_handles_languages_and_newlines():
    res = identify(["Das ist ein schöner Tag im Park.", "これは日本語の文章です。\n二行目もあります。", ""])
    assert res[0][0] == "de" and res[0][1] > 0.5
    assert res[1][0] == "ja"
    assert res[2] == ("", 0.0)
    assert is_language(["Ceci est une phrase en français, sans aucun doute."], "fr") == [True]


def test_wilson_reference_values():
    lo, hi = wilson(8, 10)
    assert abs(lo - 0.4902) < 1e-4 and abs(hi - 0.9433) < 1e-4  # published Wilson interval of 8/10
    assert wilson(0, 100)[0] == 0.0 and wilson(100, 100)[1] == 1.0


def test_bleu_equals_nltk():
    rng = random.Random(0)
    vocab = list("abcdefgh")
    for _ in range(300):
        refs = [[rng.choice(vocab) for _ in range(rng.randint(1, 15))] for _ in range(rng.randint(1, 6))]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 12))]
        ref = sentence_bleu(refs, hyp, smoothing_function=SmoothingFunction().method1)
        assert abs(BleuReferences(refs).score(hyp) - ref) < 1e-12


def test_degeneracy():
    assert is_degenerate([5] * 20) and is_degenerate([])
    assert not is_degenerate(list(range(20)))
    assert longest_repeat_run([1, 2, 3, 4, 3, 4, 3, 4, 9]) == 6
    assert longest_repeat_run([1, 2, 3]) == 0


def test_ablation_ks():
    assert default_ablation_ks(36864) == [10, 100, 1000, 3000, 10000, 30000, 36864]
    assert default_ablation_ks(221184) == [10, 100, 1000, 3000, 10000, 30000]
    assert default_ablation_ks(144) == [10, 100, 144]


def test_evaluate_config_errors():
    with pytest.raises(LangNeuronsError, match="unknown condition"):
        EvaluateConfig(conditions=["top", "middle-ish"])
    with pytest.raises(LangNeuronsError, match="samples must be at least 1"):
        EvaluateConfig(samples=0)


KNOWN_SENTENCES = {
    "en": "The weather is nice today, so we are going for a walk in the park.",
    "de": "Das Wetter ist heute schön, deshalb gehen wir im Park spazieren.",
    "fr": "Il fait beau aujourd'hui, alors nous allons nous promener dans le parc.",
    "es": "Hoy hace buen tiempo, así que vamos a dar un paseo por el parque.",
    "zh": "今天天气很好，所以我们去公园散步。",
    "ja": "今日は天気がいいので、公園を散歩しに行きます。",
}


def test_both_identifiers_know_the_six_languages():
    from tl_langneurons.evaluate.metrics import (
        identify,
        identify_lingua,
        is_language,
        is_language_lingua,
    )

    langs = list(KNOWN_SENTENCES)
    texts = list(KNOWN_SENTENCES.values())
    assert [l for l, _ in identify(texts)] == langs
    got = identify_lingua(texts + ["", "  \n\t "], langs)
    assert [l for l, _ in got[:6]] == langs and all(p > 0.5 for _, p in got[:6])
    assert got[6:] == [(None, 0.0), (None, 0.0)]
    for lang, text in KNOWN_SENTENCES.items():
        others = [l for l in langs if l != lang]
        assert is_language([text], lang) == [True]
        assert is_language_lingua([text, text.replace(" ", "\n", 2)], lang, langs) == [True, True]
        assert is_language_lingua([text], others[0], langs) == [False]
    # the target is added to the set when it is not in play; codes are case- and region-insensitive
    assert is_language_lingua([KNOWN_SENTENCES["de"]], "DE", ["en", "fr"]) == [True]
    assert identify_lingua([KNOWN_SENTENCES["zh"]], ["zh-CN", "en"])[0][0] == "zh"
    with pytest.raises(LangNeuronsError, match="ISO 639-1"):
        identify_lingua(["x"], ["en", "xx"])


def test_agreement():
    from tl_langneurons.evaluate.metrics import agreement

    assert agreement([True, False, True, False], [True, True, True, False]) == 0.75
    assert agreement([True, False], [False, True]) == 0.0 and agreement([False], [False]) == 1.0
    assert agreement([], []) != agreement([], [])  # NaN: nothing to compare
    with pytest.raises(LangNeuronsError, match="same samples"):
        agreement([True], [True, False])
