"""A sweep's scoring: (language, setting) candidates turned into :class:`~.rows.Scored` rows through the one cell
pipeline (:meth:`~tl_langneurons.evaluate.cells.CellRunner.measure`: a setting's cells beside their unsteered
twins), with an LCB sweep's scores and a sweep on several genres' scores genre by genre; the pick's comparison
(:meth:`Scorer.better`), and the fluency gate an LCB sweep sets from the model's own answers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ...distributed import Shard
from ...detect.neurons import LanguageNeurons
from ...errors import LangNeuronsError
from ...model.protocol import HookedModel
from ...steer.script_gate import ScriptGate
from ...steer.setting import full_count, neuron_count
from ..cells import Cell, CellRunner
from ..confusion import LCB_GATE_SEEDS, gated_lpr, lcb_languages, lcb_quality
from ..control import EvaluateConfig
from ..judge import CachedJudge, judged_relevance, sweep_judge
from ..metrics import answers_threshold
from ..samples import SampleStore
from .config import SweepConfig
from .prompts import Genres, SweepPrompts
from .rows import Candidate, Scored

GENRE_MEASURES = ("rate", "gated_rate", "fluent", "retention", "nll")  # a test row's scores per genre


class Scorer:
    """Scores a sweep's candidates on what :class:`~.prompts.SweepPrompts` gives each phase, generating what the
    cells (``cells``, a :class:`CellRunner`) do not hold yet. ``answers_gate``: an LCB sweep whose fluency gate
    comes from the model's own answers (:meth:`calibrate`) and whose pick is by gated LPR; ``model`` scores an
    LCB answer's relevance (``judge``: an independent judge's too); ``gates``: each language's script gate
    (``--script-gate``: what the gated rows sample under). Settings that steer no neuron are never scored, and named
    in :attr:`empty`."""

    def __init__(self, cells: CellRunner, neurons: LanguageNeurons, prompts: SweepPrompts, langs: list[str],
                 answers_gate: bool = False, model: HookedModel | None = None, judge: CachedJudge | None = None,
                 gates: dict[str, ScriptGate] | None = None, margin: float | None = None):
        self.cells, self.neurons, self.prompts, self.langs = cells, neurons, prompts, langs
        self.answers_gate, self.model, self.judge, self.gates = answers_gate, model, judge, gates or {}
        self.margin = margin  # --relevance-margin: the judge in the pick
        self.bar: dict[str, float | None] = {}  # each language's system-prompt relevance (judge) on validation
        self.n = neurons.index.n_neurons
        self.empty: dict[str, None] = {}  # settings that steer no neuron (lape, actprob): in the notes
        self.gate: dict = {}  # each language's gate from the model's answers (answers_gate)
        self.score_bar = None  # the test split's scoring progress (:meth:`SplitReport.rows`, LCB): a tick per cell

    @classmethod
    def for_sweep(cls, model: HookedModel, neurons: LanguageNeurons, references: dict[str, list[str]] | None,
                  cfg: SweepConfig, cells_dir: Path | None, progress: bool, store: SampleStore,
                  shard: Shard | None = None, heldout: Genres | None = None) -> "Scorer":
        """The scorer of a sweep of ``cfg``: its languages, cells, prompts and (LCB) gate."""
        langs = lcb_languages(cfg.languages, neurons.languages, cfg.lcb_set) if cfg.lcb else cfg.languages or neurons.languages
        ecfg = EvaluateConfig(languages=langs, samples=cfg.test_samples, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, batch_size=cfg.batch_size, ablation_ks=[])
        cells = CellRunner(model, neurons, ecfg, references, cells_dir, progress, store, shard)
        prompts = SweepPrompts.of(model.tokenizer, neurons, cfg, langs, heldout)
        judge = None
        if cfg.lcb and cfg.judge is not None:  # scores kept beside the samples: a rerun scores nothing again
            judge = sweep_judge(cfg.judge, model, None if store.folder is None else store.folder / "judge")
        gates = {l: ScriptGate(l, cfg.script_gate_latin) for l in langs} if cfg.script_gate else None
        scorer = cls(cells, neurons, prompts, langs, cfg.lcb and cfg.lcb_gate == "answers", model, judge, gates,
                     cfg.relevance_margin)
        if scorer.answers_gate or scorer.margin is not None:
            scorer.calibrate()
        return scorer

    # ---- the pick --------------------------------------------------------------------------------
    @property
    def objective(self) -> str:
        """What the pick maximises: the gated LPR in an LCB sweep with the answers gate, else the gated rate."""
        return "lpr_gated" if self.answers_gate else "gated_rate"

    def better(self, a: Scored, b: Scored) -> bool:
        """The pick: the higher objective, ties broken by the lower NLL; with a relevance margin, settings that keep
        the system prompt's relevance (judge) within it first."""
        o = self.objective
        keep = (lambda r: (bool(r.get("keeps_relevance")),)) if self.margin is not None else (lambda r: ())
        return (*keep(a), a[o], -(a["nll"] or 99)) > (*keep(b), b[o], -(b["nll"] or 99))

    # ---- samples ---------------------------------------------------------------------------------
    def calibrate(self) -> None:
        """Each language's fluency gate from the unsteered model's answers to its validation requests behind
        the system prompt (seeds 2001..2010 each): the 5th percentile of their distinct-token ratios, in place
        of the reference corpus's (whose running text repeats itself far less than a chat answer does)."""
        for lang, rows in self.answers(self.prompts.lcb["system_val"], list(LCB_GATE_SEEDS)).items():
            if self.margin is not None:  # the bar of --relevance-margin: the system prompt's answers, judged
                self.bar[lang] = self._judged(rows, "val", lang, len(LCB_GATE_SEEDS))["relevance_judge"]
            if not self.answers_gate:
                continue
            before = self.cells.thresholds[lang]
            self.cells.thresholds[lang] = answers_threshold([r["tokens"] for r in rows])
            self.gate[lang] = {"threshold": self.cells.thresholds[lang], "answers": len(rows),
                               "reference_threshold": before}

    def answers(self, prompts: dict[str, list], seeds: list[int], gated: bool = False) -> dict[str, list[dict]]:
        """Each language's unsteered answers to its ``prompts`` (``seeds`` each, in prompt order), read or made
        together, under its script gate where ``gated``; languages without prompts left out."""
        langs = [lang for lang in self.langs if prompts.get(lang)]
        cells = [Cell(lang, None, seeds, p, self.gates[lang]) if gated else Cell(None, None, seeds, p)
                 for lang in langs for p in prompts[lang]]
        got = iter(self.cells.samples_many(cells))
        return {lang: [r for _ in prompts[lang] for r in next(got)] for lang in langs}

    def unsteered(self, phase: str) -> dict[str, list[dict]]:
        """Each language's unsteered samples in ``phase``, every (prompt, seeds) cell read or made once."""
        def key(p):
            return None if p is None else tuple(p)
        units = {lang: self.prompts.units(lang, phase) for lang in self.langs}
        todo = {key(p): (p, s) for lang in self.langs for _, p, s in units[lang]}
        got = dict(zip(todo, self.cells.samples_many([Cell(None, None, s, p) for p, s in todo.values()])))
        return {lang: [r for _, p, _ in units[lang] for r in got[key(p)]] for lang in self.langs}

    # ---- scores ----------------------------------------------------------------------------------
    def evaluate_many(self, cands: list[tuple[str, Candidate]], phase: str,
                      gated: list[bool] | None = None) -> list[Scored | None]:
        """Scores of (lang, setting) candidates, generated together (with their unsteered, ungated twins, the
        baseline of retention), each under its language's script gate where ``gated`` says so; None where the
        setting does not apply (e.g. k larger than a layer subset) or would steer no neuron (an empty set of lape
        or actprob)."""
        checked = [self._check(lang, c, phase) for lang, c in cands]
        gated = gated or [False] * len(cands)
        good = [(lang, c, g) for (lang, c), g, (ok, _) in zip(cands, gated, checked) if ok]
        groups = [[Cell(lang, c.steering.for_prompt(src), s, p, self.gates[lang] if g else None)
                   for src, p, s in self.prompts.units(lang, phase)] for lang, c, g in good]
        by_genre = bool(self.prompts.genres) and phase == "test"
        measured = iter(self.cells.measure(groups))
        per_genre = iter(self.genre_scores([(lang, c) for lang, c, _ in good], groups) if by_genre else [])
        out: list[Scored | None] = []
        for (lang, c), (ok, count) in zip(cands, checked):
            if not ok:
                out.append(None)
                continue
            m = next(measured)
            out.append(Scored(lang, m.row(), c, self._label(c, count), c.k / self.n,
                              self.lcb_scores(lang, phase, m.samples), next(per_genre) if by_genre else None))
        return out

    def _check(self, lang: str, c: Candidate, phase: str) -> tuple[bool, int | None]:
        """Whether ``c`` applies towards ``lang`` (its hooks build, and it steers a neuron), and its neuron count
        where it is fewer than it names (lape, actprob; None otherwise)."""
        full = c.steering
        try:
            src = self.prompts.units(lang, phase)[0][0]
            count = neuron_count(self.neurons, full, lang)
            if count == 0:
                self.empty[f"{lang}: {full.label()}"] = None
                raise LangNeuronsError("no neuron")
            self.cells.hooks(full.for_prompt(src), lang)
        except LangNeuronsError:
            return False, None
        return True, None if count is None or count == full_count(self.neurons, full) else count

    def _label(self, c: Candidate, count: int | None) -> str:
        """The setting's label (its k only where it steers neurons), with the real neuron count where it is fewer
        than k names."""
        steer = c.steering
        label = replace(steer, k=c.k if steer.neuron_level else None).resolved(self.neurons).label()
        if count is not None:
            label += f" ({count} neuron{'s' if count != 1 else ''})"
        return label

    def genre_scores(self, cands: list[tuple[str, Candidate]], groups: list[list[Cell]]) -> list[dict[str, dict]]:
        """Each candidate's test cells measured genre by genre (beside their twins of that genre)."""
        parts = [(i, g, sub) for i, ((lang, _), group) in enumerate(zip(cands, groups))
                 for g, sub in self.prompts.by_genre(lang, "test", group).items() if sub]
        out: list[dict[str, dict]] = [{} for _ in cands]
        for (i, g, _), m in zip(parts, self.cells.measure([sub for _, _, sub in parts])):
            out[i][g] = {k: m.row()[k] for k in GENRE_MEASURES}
        return out

    def lcb_scores(self, lang: str, phase: str, rows: list[dict], prompts: str | None = None) -> dict:
        """LCB sweeps only: the gated LPR of a cell's answers (what the pick compares, with the answers gate)
        and, on the test split, LCB's pass rates and the relevance proxy; ``prompts`` names the requests the
        answers continue (``test``: bare, ``system``: behind the system prompt; None: the steered cells')."""
        out = gated_lpr(rows, lang, self.cells.thresholds[lang]) if self.answers_gate else {}
        lcb = self.prompts.lcb
        if lcb and phase == "val" and self.margin is not None:  # the judge in the pick
            rel = self._judged(rows, "val", lang, len(self.prompts.seeds["val"]))["relevance_judge"]
            bar = self.bar.get(lang)
            out.update({"relevance_judge": rel, "keeps_relevance": rel is not None and (
                bar is None or rel >= bar - self.margin - 1e-12)})
        if lcb and phase == "test":
            asked = self.prompts.prompts["test"] if prompts is None else lcb[prompts]
            out.update(lcb_quality(self.model, rows, asked[lang], lang, len(self.prompts.seeds["test"]),
                                   self.cells.store))
            if self.judge is not None:
                out.update(self._judged(rows, "test", lang, len(self.prompts.seeds["test"])))
            if self.score_bar is not None:
                self.score_bar.update(1)
        return out

    def _judged(self, rows: list[dict], split: str, lang: str, per_request: int) -> dict:
        """The judge's relevance of ``rows`` (``per_request`` answers to each of the split's requests in turn),
        judged against the bare requests whatever the prompt carried (a system message)."""
        return judged_relevance(self.judge, [r["text"] for r in rows], self.prompts.lcb["requests"][split][lang],
                                per_request)
