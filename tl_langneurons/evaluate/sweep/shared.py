"""The shared setting of a sweep: one setting for every language. Of the languages' picks, the one that ranks
highest by ``--shared-pick`` (the mean validation objective over the languages, the language served worst, or
the mean among settings whose every language keeps its retention at a floor); with ``--shared-search``, that pick
is the start of a coordinate search of its own, each value scored on every language at once."""

from __future__ import annotations

from ...detect.neurons import LanguageNeurons
from ..control import mean_of
from .config import SweepConfig, keeps_floor
from .rows import Candidate, Pick, Scored, SharedOption, SharedPick
from .scoring import Scorer
from .search import candidates
from .space import _shared_stages


def shared_option(rs: list[Scored], objective: str) -> SharedOption:
    """One setting scored on every language (``rs``, one row per language) as a shared option: its label, its
    mean and worst validation ``objective``, the language of the worst, the lowest retention."""
    retention = [r.get("retention") for r in rs]  # none: the unsteered samples had no fluent one
    return SharedOption(
        label=rs[0].label, mean=mean_of([{"x": r[objective]} for r in rs], "x"), worst=min(r[objective] for r in rs),
        low_retention=None if None in retention else min(retention),  # none: a language has none
        worst_lang=min(rs, key=lambda r: r[objective]).lang,
        by_lang={r.lang: {"gated": r[objective], "rate": r.get("rate"), "retention": r.get("retention")} for r in rs})


class SharedSearch:
    """The shared setting of a sweep of ``cfg`` over ``langs``, every setting scored on every language by
    ``scorer``. :attr:`options` holds each language's pick scored on every language (:meth:`pick`), and
    :attr:`tried` every value the shared search tried (:meth:`search`)."""

    def __init__(self, cfg: SweepConfig, neurons: LanguageNeurons, langs: list[str], scorer: Scorer):
        self.cfg, self.neurons, self.langs, self.scorer = cfg, neurons, langs, scorer
        self.options: list[SharedOption] = []
        self.tried: list[SharedOption] = []

    def rank(self, rs: list[Scored | None]) -> tuple[tuple, SharedOption] | None:
        """(sort key, option) of one setting scored on every language, ranked by ``shared_pick``; None unless it
        applies to every language."""
        if any(r is None for r in rs):
            return None
        option = shared_option(rs, self.scorer.objective)
        nll = -mean_of([{"nll": r["nll"] if r["nll"] is not None else 99} for r in rs], "nll")  # as better()
        pick = self.cfg.shared_pick
        if getattr(self.scorer, "margin", None) is not None:  # --relevance-margin: settings keeping every language's relevance first
            key, option = self._rank(rs, option, nll, pick)
            return (all(r.get("keeps_relevance") for r in rs), *key), option
        return self._rank(rs, option, nll, pick)

    def _rank(self, rs: list[Scored], option: SharedOption, nll: float, pick: str) -> tuple[tuple, SharedOption]:
        """:meth:`rank`'s key by ``--shared-pick`` alone."""
        if pick == "floor":  # a language without a retention (no fluent unsteered sample) cannot show it keeps one
            kept = all(keeps_floor(r.get("retention"), self.cfg.shared_floor) for r in rs)
            return (kept, option.mean, nll), option
        return ((option.mean, nll) if pick == "mean" else (option.worst, option.mean, nll)), option

    def rank_all(self, settings: list[Candidate]) -> list[tuple[tuple, SharedOption] | None]:
        """:meth:`rank` of each setting, every setting scored on every language in one batched call."""
        langs = self.langs
        scores = self.scorer.evaluate_many([(lang, c) for c in settings for lang in langs], "val")
        return [self.rank(scores[i * len(langs):(i + 1) * len(langs)]) for i in range(len(settings))]

    def pick(self, picks: dict[str, Pick]) -> SharedPick | None:
        """Of the languages' picks, the one that ranks highest (ties: the first), None if none applies to every
        language; with ``shared_search`` the start of :meth:`search`."""
        options = list({picks[l].candidate.id: picks[l].candidate for l in self.langs}.values())
        best, best_key = None, None
        self.options = []
        for c, rank in zip(options, self.rank_all(options)):
            if rank is None:
                continue
            key, option = rank
            self.options.append(option)
            if best_key is None or key > best_key:
                best, best_key = SharedPick(c, option), key
        if best is not None and self.cfg.shared_search:
            best = self.search(best, best_key)
        return best

    def search(self, start: SharedPick, start_key: tuple) -> SharedPick:
        """The shared setting searched as one: from ``start`` (ranked ``start_key``), each stage of
        :func:`~.space._shared_stages` in turn, each value kept where it ranks higher by ``shared_pick``."""
        cur, cur_key = start, start_key
        for stage, key, values in _shared_stages(self.cfg, self.neurons, self.scorer.n):
            cands = [c for _, c in candidates([(None, cur.candidate, key, v) for v in values])]
            cands = list({c.id: c for c in cands}.values())
            for c, rank in zip(cands, self.rank_all(cands)):
                if rank is None:
                    continue
                self.tried.append(rank[1].at(stage))
                if rank[0] > cur_key:
                    cur, cur_key = SharedPick(c, rank[1]), rank[0]
        return cur
