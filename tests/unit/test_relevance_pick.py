"""The judge in the pick (``sweep --lcb --judge J --relevance-margin M``): a setting that keeps the system prompt's
relevance (judge) within M ranks before any that does not, whatever their gated LPR; without a margin the pick is
the gated LPR, then the lower NLL, as before."""

from __future__ import annotations

from tl_langneurons.evaluate.sweep.rows import Scored
from tl_langneurons.evaluate.sweep.scoring import Scorer


def _scorer(margin):
    s = Scorer.__new__(Scorer)  # the pick alone: no model, cells or prompts
    s.answers_gate, s.margin = True, margin
    return s


def _row(lpr_gated, nll, keeps):
    return Scored("de", {"nll": nll}, lcb={"lpr_gated": lpr_gated, "keeps_relevance": keeps,
                                           "relevance_judge": 0.1 if keeps else -0.2})


def test_a_setting_keeping_relevance_ranks_first():
    loud, kept = _row(0.95, 1.0, False), _row(0.60, 2.0, True)
    assert _scorer(0.05).better(kept, loud) and not _scorer(0.05).better(loud, kept)
    assert _scorer(None).better(loud, kept) and not _scorer(None).better(kept, loud)


def test_among_settings_that_keep_it_the_gated_lpr_then_the_nll_decide():
    s = _scorer(0.0)
    assert s.better(_row(0.9, 2.0, True), _row(0.8, 1.0, True))
    assert s.better(_row(0.9, 1.0, True), _row(0.9, 1.5, True))
    assert s.better(_row(0.9, 1.0, False), _row(0.8, 1.0, False))
