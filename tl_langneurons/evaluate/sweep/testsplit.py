"""The test split of a sweep: unsteered, the system prompt (LCB), the script gate (LCB, ``--script-gate``), the
paper's clamp, each language's pick, the shared setting, the user's own settings (``--test-settings``) and the picks
under the script gate, per language on fresh seeds or prompts; on held-out prompts beside the model's own fluency in
the language (overall and genre by genre)."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Callable

from ...progress import progress_bar
from ...steer.setting import parse_setting
from ..confusion import GATED, SCRIPT_GATE
from .config import SweepConfig
from .prompts import SweepPrompts
from .rows import Candidate, Pick, Scored, SharedPick
from .scoring import GENRE_MEASURES, Scorer


def own_fluency(prompts: SweepPrompts, answers: dict[str, list[dict]],
                fluent: Callable[[list[dict], str], float]) -> dict[str, dict[str | None, float]]:
    """On held-out prompts: each language's fluent share (``fluent(rows, lang)``, under its own gate) of
    ``answers``, the unsteered continuations of the test prompts written in it: the model's own text in the
    language (key None), and in a sweep on several genres the same on each genre's prompts (key: the genre).
    Retention compares a steered cell with the unsteered continuations of the other languages' prompts (the same
    prompts); this is the ceiling the model itself sets when writing the language."""
    per = len(prompts.seeds["test"])
    out: dict[str, dict[str | None, float]] = {}
    for lang, rows in answers.items():
        parts: dict[str | None, list[dict]] = {None: rows}
        if prompts.genres:  # rows are in prompt order, ``per`` seeds each
            for i, g in enumerate(prompts.prompts["genre"]["test"][lang]):
                parts.setdefault(g, []).extend(rows[i * per:(i + 1) * per])
        out[lang] = {g: fluent(rs, lang) for g, rs in parts.items()}
    return out


class SplitReport:
    """The rows of a sweep's test split (``sweep.json``'s ``test``), scored by ``scorer``."""

    def __init__(self, cfg: SweepConfig, langs: list[str], scorer: Scorer, recorded_k: int):
        self.cfg, self.langs, self.scorer, self.recorded_k = cfg, langs, scorer, recorded_k
        self.prompts = scorer.prompts

    def rows(self, picks: dict[str, Pick], shared: SharedPick | None) -> list[Scored]:
        """Every row of the test split, language by language; on LCB with a progress line as the rows are scored
        (LCB's check, the relevance proxy's forward passes and the judge take minutes a row on a CPU)."""
        scorer, steered = self.scorer, self.steered(picks, shared)
        if self.prompts.lcb:  # a tick per (row, language): none, system prompt, the two gate rows, the steered rows
            kinds = 2 + (2 if scorer.gates else 0) + len(steered)
            scorer.score_bar = progress_bar(kinds * len(self.langs), "score the test rows", unit="cell",
                                            disable=not scorer.cells.progress)
        try:
            return self._rows(steered)
        finally:
            if scorer.score_bar is not None:
                scorer.score_bar.close()
                scorer.score_bar = None

    def steered(self, picks: dict[str, Pick],
                shared: SharedPick | None) -> list[tuple[str, dict[str, Candidate], bool]]:
        """The steered rows (:meth:`named`), each with whether its answers are sampled under the script gate: with
        ``--script-gate`` each pick (best, shared) again under the gate."""
        named = [(name, per, False) for name, per in self.named(picks, shared)]
        if self.scorer.gates:
            named += [(name + GATED, per, True) for name, per, _ in named if name.startswith(("best ", "shared "))]
        return named

    def _rows(self, named: list[tuple[str, dict[str, Candidate], bool]]) -> list[Scored]:
        test, fluent = self.unsteered_rows()
        own_g = self.own_fluency()
        own = {lang: by[None] for lang, by in own_g.items()}
        for r in test:
            if r.lang in own:
                r.own["own_fluent"] = own[r.lang]
                for g, x in (r.genres or {}).items():
                    x["own_fluent"] = own_g[r.lang].get(g)
        system = self.system_rows(fluent)
        test += system + self.gate_rows(fluent, {r.lang: r["fluent"] for r in system})
        scores = iter(self.scorer.evaluate_many([(lang, per[lang]) for _, per, _ in named for lang in self.langs],
                                                "test", [g for _, _, g in named for _ in self.langs]))
        for name, per, _ in named:
            for lang in self.langs:
                r = next(scores)
                if r is None:
                    continue
                if lang in own:  # fluency against the model's own text in the language
                    r.own["own_retention"] = r["fluent"] / own[lang] if own[lang] else None
                    for g, x in (r.genres or {}).items():  # and against its own text of the genre
                        o = own_g[lang].get(g)
                        x["own_retention"] = x["fluent"] / o if o else None
                test.append(replace(r, setting=name))
        test.sort(key=lambda r: self.langs.index(r.lang))
        return test

    def own_fluency(self) -> dict[str, dict[str | None, float]]:
        """:func:`own_fluency` of this sweep's test prompts (empty from BOS and on LCB). Each language's prompts
        are units of the other targets, so with every language searched these samples are the sweep's own (a
        sweep of fewer targets generates the missing ones, test prompts x test seeds per language)."""
        p = self.prompts
        if p.prompts is None or p.lcb:
            return {}
        scorer = self.scorer
        return own_fluency(p, scorer.answers(p.prompts["test"], p.seeds["test"]),
                           lambda rows, lang: scorer.cells.score(rows, lang).fluent)

    def unsteered_rows(self) -> tuple[list[Scored], dict[str, float]]:
        """The unsteered row of each language (retention 1; on several genres, genre by genre), and each
        language's unsteered fluent share (the system prompt's retention baseline on LCB)."""
        scorer, p, out, fluent = self.scorer, self.prompts, [], {}
        none = scorer.answers(p.lcb["test"], p.seeds["test"]) if p.lcb else scorer.unsteered("test")
        for lang in self.langs:
            sc = scorer.cells.score(none[lang], lang)
            fluent[lang] = sc.fluent
            row = Scored(lang, {**sc.steering_row(sc.fluent), "retention": 1.0}, setting="none",
                         lcb=scorer.lcb_scores(lang, "test", none[lang], "test" if p.lcb else None))
            if p.genres:  # the unsteered continuations of each genre's prompts
                per = len(p.seeds["test"])
                units = [none[lang][i * per:(i + 1) * per] for i in range(len(none[lang]) // per)]
                row.genres = {
                    g: {**{k: sc_g.steering_row(sc_g.fluent)[k] for k in GENRE_MEASURES}, "retention": 1.0}
                    for g, us in p.by_genre(lang, "test", units).items() if us
                    for sc_g in [scorer.cells.score([r for u in us for r in u], lang)]}
            out.append(row)
        return out, fluent

    def system_rows(self, fluent: dict[str, float]) -> list[Scored]:
        """LCB: prompting alone, the same requests behind a system message that asks for the language (retention
        against the unsteered answers)."""
        p, scorer = self.prompts, self.scorer
        if not p.lcb:
            return []
        return [Scored(lang, scorer.cells.score(rows, lang).steering_row(fluent[lang]), setting="system prompt",
                       lcb=scorer.lcb_scores(lang, "test", rows, "system"))
                for lang, rows in scorer.answers(p.lcb["system"], p.seeds["test"]).items()]

    def gate_rows(self, fluent: dict[str, float], system_fluent: dict[str, float]) -> list[Scored]:
        """LCB with ``--script-gate``: decoding alone, the bare requests' unsteered answers sampled under each
        language's script gate, and prompting with decoding, the requests behind the system prompt sampled so
        (the same seeds; each row's retention against its ungated twin: the unsteered answers, the system prompt's)."""
        p, scorer = self.prompts, self.scorer
        if not p.lcb or not scorer.gates:
            return []
        return [Scored(lang, scorer.cells.score(rows, lang).steering_row(base[lang]), setting=name,
                       lcb=scorer.lcb_scores(lang, "test", rows, prompts))
                for name, prompts, base in ((SCRIPT_GATE, "test", fluent), ("system prompt" + GATED, "system",
                                                                             system_fluent))
                for lang, rows in scorer.answers(p.lcb[prompts], p.seeds["test"], gated=True).items()]

    def named(self, picks: dict[str, Pick], shared: SharedPick | None) -> list[tuple[str, dict[str, Candidate]]]:
        """The steered rows, each a setting per language: the paper's clamp, each language's pick, the shared
        setting and the user's own."""
        cfg, langs = self.cfg, self.langs
        paper = Candidate.of({"method": "clamp", "k": min(1000, self.scorer.n), "scale": 1.0, "positions": "all",
                              "layers": None})
        named = [("paper clamp k=1000", {l: paper for l in langs})] if cfg.paper_row else []
        named.append((f"best {cfg.method}", {l: picks[l].candidate for l in langs}))
        if shared is not None:
            named.append((f"shared {cfg.method}", {l: shared.candidate for l in langs}))
        for spec in cfg.test_settings:  # the user's own settings, on the same test cells
            name, st = parse_setting(spec, "--test-settings")
            setting = Candidate.of({**asdict(st), "k": st.k if st.k is not None else self.recorded_k})
            named.append((name, {l: setting for l in langs}))
        return named
