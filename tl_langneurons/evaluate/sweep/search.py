"""The per-language coordinate search on the validation split: from the start of the search space, each stage
in turn, every language and value of the stage scored in one batched call, each language keeping its best
setting so far (:meth:`~.scoring.Scorer.better`: the higher objective, ties broken by the lower NLL)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...detect.neurons import LanguageNeurons
from ...errors import LangNeuronsError
from .config import SweepConfig
from .rows import Candidate, Pick, Scored
from .scoring import Scorer
from .space import _later_stages, _search_space


def candidates(cands: list[tuple[str | None, Candidate, str | tuple[str, ...], object]]
               ) -> list[tuple[str | None, Candidate]]:
    """(lang, setting, field(s), value) -> (lang, the setting with the value): those that are settings of the
    intervention (e.g. norm preservation needs a residual term to keep the norm of), the others left out of the
    stage rather than scored."""
    out = []
    for lang, cur, key, value in cands:
        try:
            out.append((lang, cur.with_(key, value)))
        except LangNeuronsError:
            continue
    return out


@dataclass
class SearchResult:
    """Each language's pick, every setting tried (in language order, then as tried) and the notes of the
    search space."""

    picks: dict[str, Pick]
    tried: list[Scored]
    notes: list[str] = field(default_factory=list)


class Search:
    """The per-language search of a sweep of ``cfg`` over ``langs``, scored by ``scorer`` (anything with
    ``evaluate_many`` and ``better``)."""

    def __init__(self, cfg: SweepConfig, neurons: LanguageNeurons, langs: list[str], scorer: Scorer):
        self.cfg, self.neurons, self.langs, self.scorer = cfg, neurons, langs, scorer

    def run(self) -> SearchResult:
        """The coordinate search per language: each stage of the search space and the later stages in turn."""
        start, stages, notes = _search_space(self.cfg, self.neurons, self.scorer.n)
        stages = [*stages, *_later_stages(self.cfg, self.neurons)]
        first = Candidate.of(start)
        cur = {lang: Pick(first, None) for lang in self.langs}
        tried: dict[str, list[Scored]] = {lang: [] for lang in self.langs}
        for stage, key, values in stages:
            # a key of several fields (e.g. steer_tokens with after_scale) takes a tuple of values
            cands = candidates([(lang, cur[lang].candidate, key, v) for lang in self.langs for v in values])
            for (lang, c), r in zip(cands, self.scorer.evaluate_many(cands, "val")):
                if r is None:
                    continue
                tried[lang].append(replace(r, stage=stage))
                if cur[lang].val is None or self.scorer.better(r, cur[lang].val):
                    cur[lang] = Pick(c, r)
        return SearchResult(cur, [r for lang in self.langs for r in tried[lang]], notes)
