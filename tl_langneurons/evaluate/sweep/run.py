"""A sweep run end to end (:func:`run_sweep`): the per-language search on the validation split, the shared
setting, the test split, and the result with what the sweep was and did (``meta``), written as a whole."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ...detect.corpus import MultilingualCorpus
from ...detect.neurons import LanguageNeurons
from ...distributed import Shard
from ...distributed import context as dist_context
from ...errors import LangNeuronsError
from ...model.protocol import HookedModel
from ..confusion import LCB_GATE_SEEDS, lcb_left_out
from ..control import result_settings, run_ranked
from ..samples import SampleStore, store_of
from .config import SweepConfig, check_sweep
from .prompts import Genres, check_prompt_texts, heldout_genres
from .results import SweepResult
from .scoring import Scorer
from .search import Search
from .shared import SharedSearch
from .testsplit import SplitReport
from .writer import write_sweep


def run_sweep(model: HookedModel, neurons: LanguageNeurons, references: dict[str, list[str]] | None,
              config: SweepConfig | None = None, out: str | Path | None = None, progress: bool = True,
              overwrite: bool = False, store: str | Path | SampleStore | None = None,
              distributed: bool | None = None, heldout: MultilingualCorpus | Genres | None = None,
              samples: str | Path | None = None, left_out: dict | None = None) -> SweepResult:
    """Search the settings and report the best on fresh seeds (or fresh prompts); with ``out``, written
    there as a whole (finished cells kept for resume), refusing a folder of other settings unless ``overwrite``.

    With ``config.heldout`` the search is on prompts: a setting towards a language is scored on the
    continuations of the other languages' validation prompts, and the report gives the off-diagonal
    cells of the cross-steering matrix on fresh prompts. ``heldout``: that corpus already loaded, or its genres
    (``{name: corpus}``, :func:`heldout_genres`) for a spec ``A+B+C``: each genre gives its own prompts, the
    pick is on all of them, and each test row carries its scores per genre (``row["genres"]``); ``left_out``:
    what :func:`heldout_genres` left out of those genres (recorded with the prompts).

    ``store``: the sample store shared with the other experiments on these neurons, and ``distributed``, as
    :func:`~tl_langneurons.evaluate.control.evaluate_control`: the batches of every stage spread over the ranks
    of a process group, the same search on every rank, rank 0 writing."""
    cfg = config or SweepConfig()
    check_sweep(cfg, neurons)
    if heldout is not None and cfg.heldout is None:
        raise LangNeuronsError("a held-out corpus for prompts needs config.heldout naming it (what the results record)")
    dropped: dict = dict(left_out or {})
    if heldout is None and cfg.heldout is not None:
        heldout, dropped = heldout_genres(cfg.heldout, neurons, cfg.genres)
    if isinstance(heldout, MultilingualCorpus):
        heldout = {cfg.heldout: heldout}
    if heldout is not None:
        check_prompt_texts(cfg, neurons, heldout)
    shard = dist_context(distributed)
    return run_ranked(shard, out, "sweep", result_settings(neurons, cfg), overwrite,
                      lambda cells: _sweep(model, neurons, references, cfg, cells, progress, store_of(store, samples),
                                           shard, heldout, dropped),
                      write_sweep)


def _sweep(model: HookedModel, neurons: LanguageNeurons, references: dict[str, list[str]] | None, cfg: SweepConfig,
           cells_dir: Path | None, progress: bool, store: SampleStore, shard: Shard | None = None,
           heldout: Genres | None = None, dropped: dict | None = None) -> SweepResult:
    """One sweep: the search, the shared setting and the test split, scored by one :class:`~.scoring.Scorer`;
    the typed rows become ``sweep.json``'s dicts here."""
    scorer = Scorer.for_sweep(model, neurons, references, cfg, cells_dir, progress, store, shard, heldout)
    langs = scorer.langs
    found = Search(cfg, neurons, langs, scorer).run()
    shared_search = SharedSearch(cfg, neurons, langs, scorer)
    shared = shared_search.pick(found.picks)
    test = SplitReport(cfg, langs, scorer, neurons.k).rows(found.picks, shared)
    notes = list(found.notes)
    left = lcb_left_out(cfg.languages, neurons.languages, cfg.lcb_set) if cfg.lcb else []
    if left:  # LCB asks for them, the neurons were found without them
        notes.append(f"LCB's {cfg.lcb_set} also asks for {', '.join(left)}, which these neurons do not know (find "
                     "was run without them): left out; find on a corpus with them to sweep them")
    if cfg.lcb and cfg.lcb_gate == "references":  # chat answers seldom pass a gate set on running text
        notes.append("--lcb-gate references: fluent, gated LPR and retention use the reference corpus's fluency gate, "
                     "set on running text, which a chat answer (lists, headings, code) seldom passes; sweep with "
                     "--lcb-gate answers (the default) for a retention that measures the answers")
    if scorer.empty:
        notes.append(f"not scored, as they steer no neuron ({neurons.method} chose none): {'; '.join(scorer.empty)}")
    meta = {**scorer.cells.meta(), "config": asdict(cfg), "languages": langs, "notes": notes,
            "shared": None if shared is None else shared.to_json(),
            "shared_options": [o.to_json() for o in shared_search.options]}
    if cfg.shared_search:
        meta["shared_search"] = [o.to_json() for o in shared_search.tried]
    if scorer.answers_gate:
        meta["lcb_gate"] = {"from": "the unsteered answers to the validation requests behind the system prompt, "
                                    f"seeds {LCB_GATE_SEEDS[0]}..{LCB_GATE_SEEDS[-1]}; 5th percentile of the "
                                    "distinct-token ratio", "pick": "gated LPR (ties: lower NLL)", **scorer.gate}
    if scorer.margin is not None:  # the judge in the pick: each language's bar
        meta["relevance_pick"] = {
            "margin": scorer.margin, "pick": "settings keeping relevance (judge) >= the system prompt's - margin on "
            "the validation requests first, then the objective, then NLL",
            "system_prompt": scorer.bar, "from": "the system prompt's answers to the validation requests, seeds "
            f"{LCB_GATE_SEEDS[0]}..{LCB_GATE_SEEDS[-1]}"}
    if scorer.judge is not None:  # what judged the relevance (judge) column, and what this run scored anew
        meta["judge"] = {**scorer.judge.identity, "scored": scorer.judge.scored, "cached": scorer.judge.cached}
    prompts = scorer.prompts.meta(cfg.heldout, dropped or {})
    if prompts is not None:
        meta["prompts"] = prompts
    return SweepResult({lang: p.to_json() for lang, p in found.picks.items()}, [r.to_json() for r in found.tried],
                       [r.to_json() for r in test], meta)
