"""Find steering settings that give fluent text in the target language (beyond the paper's protocol).

A staged search per language, on validation seeds from BOS or on validation prompts (``heldout``: the
first tokens of held-out sentences of the other languages, continued while steering). For clamp: k
(as a fraction of the site's neurons), then the clamp scale, then the positions, then the layer
subset (then, with ``neuron_sets``, top against both); for add: k, alpha, layer subset (the same);
for diffmean: layer, alpha; for sparse: layer, K, coef. On
prompts, optionally a first stage that takes each prompt's language as the source (``sources``); for
add, diffmean and sparse, a positions stage (``all`` against ``generated``: from BOS, generated leaves
the BOS position alone). Then, each only where asked for: the k neurons spread over the layers (``spreads``),
alpha per layer band (``band_alphas``), a diffmean term on add (``resid_alphas``, with ``keep_norm_stage`` also
norm-preserving), norm preservation for diffmean (``keep_norm_stage``), steering only the first N tokens
(``steer_tokens``), and a two-phase strength (``after_scales``: the first N tokens at full strength, the rest at a
share of it). Each stage keeps
the best setting so far by the gated rate (target language and not degenerate; ties broken by lower
NLL). The best setting of each language, and one shared setting for all, are then reported on fresh
seeds (or fresh prompts), beside the paper's setting.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from ..config import LANGUAGES, Items, check_lists, check_numbers, option
from ..detect.corpus import MultilingualCorpus, find_texts, spec_parts, without
from ..distributed import Shard
from ..distributed import context as dist_context
from ..detect.neurons import LanguageNeurons
from ..detect.ranking import parse_k
from ..errors import LangNeuronsError
from ..model.protocol import HookedModel
from ..provenance import atomic_write_json, atomic_write_text, sha256_texts
from ..results import read_json
from ..tables import dashed as _f, markdown_table
from ..registry import NAMES, intervention, owners, spoken
from ..steer.add import EQUAL_NORMS, parse_bands
from ..steer.base import ks
from ..steer.positions import POSITIONS
from ..steer.residual import default_layer, residual_layers
from ..steer.setting import SteeringConfig, check_not_empty, full_count, neuron_count, parse_setting, setting_from_json
from ..steer.prompts import split_prompts
from .samples import SampleStore, store_of
from .confusion import (
    BEHIND,
    LCB_GATE_SEEDS,
    SPLIT_SEED,
    SYSTEM_PROMPT,
    gated_lpr,
    lcb_languages,
    lcb_markdown,
    lcb_prompts,
    lcb_quality,
    lcb_rows,
)
from .metrics import answers_threshold
from .cells import Cell, CellRunner, steered
from .control import EvaluateConfig, mean_of, result_settings, run_ranked


SHARED_PICKS = ("mean", "worst", "floor")  # how the shared setting is ranked (SweepConfig.shared_pick)


def keeps_floor(retention: float | None, floor: float) -> bool:
    """Whether a validation retention keeps the floor of ``--shared-pick floor``; a ratio at the floor keeps it
    though floating point puts it a hair under (a fluent share of 0.6 over 0.75 is 0.7999999999999999)."""
    return retention is not None and retention >= floor - 1e-9


@dataclass
class SweepConfig:
    """The search space and sample counts of :func:`run_sweep`."""

    languages: list[str] | None = option(None, "comma-separated target languages (none: all)", items=LANGUAGES)
    k_fractions: Sequence[str] = option(("0.05%", "0.1%", "0.27%", "0.45%", "1%", "2.7%"),
                                        "k values searched, as percentages of the neurons, each with % (0.5% is "
                                        "half a percent)", items=Items("percent", "percentages of the neurons "
                                                                       "above 0% and at most 100% such as 0.5%,1%"))
    scales: Sequence[float] = option((0.5, 1.0, 1.5, 2.0), "clamp scales searched",
                                     items=Items("float", "finite numbers above 0 such as 0.5,1,2", low=0, above=True))
    positions: Sequence[str] = option(("all", "last"), "positions searched: all, last (clamp), generated (the "
                                      "prompt, or BOS alone, left unsteered)",
                                      items=Items("str", f"some of {','.join(POSITIONS)}", choices=POSITIONS))
    layer_sets: Sequence[str] = option(("all", "first", "last", "ends"), "layer subsets searched: all, first, last, "
                                       "ends (quarters of the depth) or bands A-B such as 0-5",
                                       items=Items("str", "layer subsets such as all,first,last,ends,0-5"))
    method: str = option("clamp", "intervention searched: clamp, add, diffmean or sparse", choices=NAMES)
    alphas: Sequence[float] = option((0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
                                     "strengths searched (add, diffmean; diffmean's layer stage uses the smallest)",
                                     items=Items("float", "finite numbers above 0 such as 0.5,1,2", low=0, above=True))
    resid_layers: Sequence[int] | None = option(None, "layers searched (diffmean, sparse; none: 4 layers from a third "
                                                "to five sixths of the depth)",
                                                items=Items("int", "layer numbers such as 4,6 (none: the default)",
                                                            low=0, none="default"))
    dim_fractions: Sequence[float] = option((0.01, 0.05, 0.1), "shares of d_model overwritten (sparse), above 0 and "
                                            "at most 1", items=Items("float", "shares of d_model above 0 and at most 1 "
                                                                     "such as 0.01,0.05", low=0, above=True, high=1))
    coefs: Sequence[float] = option((0.5, 1.0, 1.5), "coefficients searched (sparse)",
                                    items=Items("float", "finite numbers above 0 such as 0.5,1,1.5", low=0, above=True))
    neuron_sets: Sequence[str] = option(("both",), "neuron sets searched (clamp, add) after the layers: both, top "
                                        "(the language's own neurons only), bottom",
                                        items=Items("str", "some of both,top,bottom", choices=("both", "top", "bottom")))
    sources: Sequence[str] = option(("none",), "with --heldout, a first stage: none, prompt (each prompt's "
                                    "language is the source: add deactivates its neurons, diffmean and sparse steer "
                                    "away from its mean; Gurgurov et al. and CLaS-Bench steer from a known source)",
                                    items=Items("str", "none and/or prompt", choices=("none", "prompt")))
    steer_tokens: Sequence[int] = option((), "a late stage: steer only while the first N tokens are written, these "
                                         "N searched against steering every token (none: no such stage)",
                                         items=Items("int", "whole numbers of at least 1 such as 8,16 (none: no such "
                                                     "stage)", low=1, empty=True, none="empty"))
    after_scales: Sequence[float] = option((), "a stage after --steer-tokens (add, diffmean): keep steering after the "
                                           "first N tokens at these shares of the strength (a two-phase strength), "
                                           "against the pick (none: no such stage)",
                                           items=Items("float", "shares of the strength above 0 such as "
                                                       "0.25,0.5 (none: no such stage)", low=0, above=True,
                                                       empty=True, none="empty"))
    band_alphas: Sequence[str] = option((), "a stage after the positions (add): alpha multiplied per layer band, "
                                        "each SUBSET:FACTOR joined by + such as last:0.5,0-8:1.5+last:0.5 (none: "
                                        "no such stage)",
                                        items=Items("str", "band strengths such as last:0.5,0-8:1.5+last:0.5 (none: "
                                                    "no such stage)", empty=True, none="empty"))
    resid_alphas: Sequence[float] = option((), "a stage after the bands (add): also add a diffmean term of these "
                                           "strengths at each --resid-layers layer (none given: 0.6 x the depth); "
                                           "none: no such stage",
                                           items=Items("float", "finite numbers above 0 such as 0.05,0.1 (none: no "
                                                       "such stage)", low=0, above=True, empty=True, none="empty"))
    spreads: Sequence[str] = option((), "a stage after the positions (clamp, add): the k neurons spread over the "
                                    "layers (even: at most ceil(k / layers) from any one), against the k best overall "
                                    "(none: no such stage)",
                                    items=Items("str", "even (none: no such stage)", choices=("even",), empty=True,
                                                none="empty"))
    shared_pick: str = option("mean", "the shared setting (one for all languages, of the languages' picks): mean, "
                              "the highest mean validation objective over the languages; worst, the highest for the "
                              "language it serves worst (a setting no language falls far behind on); floor, the "
                              "highest mean among settings whose every language keeps validation retention >= "
                              "--shared-floor (the highest mean if none does)",
                              choices=SHARED_PICKS)
    shared_floor: float | None = option(None, "with --shared-pick floor: the validation retention every language "
                                        "must keep (none: 0.8, the per-language floor of issue 29)", parse=float,
                                        positive=True)
    shared_search: bool = option(False, "search the shared setting itself: from the shared pick (--shared-pick), a "
                                 "coordinate search over the sweep's stages for one setting for every language, each "
                                 "value scored on all of them by --shared-pick, each later stage also tried without "
                                 "its idea; without it the shared setting is the best of the languages' picks")
    equal_norms: Sequence[str] = option((), "with --shared-search (add): its first stage, each language's addition "
                                        "scaled to the languages' mean norm (total: one factor; quarters: one per "
                                        "quarter of the depth), against as found (none: no such stage)",
                                        items=Items("str", "total and/or quarters (none: no such stage)",
                                                    choices=EQUAL_NORMS, empty=True, none="empty"))
    test_settings: Sequence[str] = option((), "settings of your own reported on the test split beside the picks "
                                          "(not picked: to measure a setting on the same prompts, seeds and gate), "
                                          "separated by ; each NAME=METHOD[:key=value,...] with SteeringConfig's "
                                          "fields such as eq=add:k=369,equal_norm=total,positions=generated (k none: "
                                          "the result's); none: no such rows",
                                          items=Items("str", "settings NAME=METHOD[:key=value,...] separated by ; "
                                                      "(none: no such rows)", empty=True, none="empty", sep=";"))
    keep_norm_stage: bool = option(False, "diffmean: a stage of the residual addition norm-preserving, as ReCoVeR, "
                                   "against not; add: the diffmean term of --resid-alphas tried both ways")
    heldout: str | None = option(None, "search on prompts: held-out text (never used for selection; a folder, a "
                                 ".jsonl file or bundled) whose sentences' first 10-16 tokens are continued, steered "
                                 "towards every other language (none: from BOS); A+B mixes corpora in equal shares "
                                 "(see --genres)")
    genres: bool = option(False, "with --heldout A+B+C: each part is a genre of its own (its own prompts, the counts "
                          "below per genre; picked on all at once, reported per genre too; the texts find selected "
                          "on left out) instead of one corpus mixed in equal shares")
    lcb: bool = option(False, "search on the Language Confusion Benchmark's cross-lingual prompts instead (okapi: "
                       "asked in English to answer in de, es, fr, ja or zh; through the model's chat template); the "
                       "report adds LCB's line-level pass rate, a system-prompt baseline and answer relevance")
    lcb_gate: str | None = option(None, "with --lcb: answers (the default) sets each language's fluency gate from the "
                                  "unsteered model's answers to the validation requests behind the system prompt "
                                  "(5th percentile of their distinct-token ratios) and picks settings by gated LPR "
                                  "(answers passing LCB's line check and the gate); references: the gate of the "
                                  "reference corpus and the pick by gated rate (the first LCB sweeps)",
                                  choices=("answers", "references"), parse=str)
    lcb_system: bool = option(False, "with --lcb: the steered requests carry the system prompt too (steering on top "
                              "of prompting, searched and reported so); the system-prompt row is then their "
                              "unsteered twin, the bar steering has to raise, and none stays the bare request")
    val_prompts: int | None = option(None, "with --heldout: validation prompts per prompt language and genre (none: 4); with "
                                     "--lcb: per target language, whole requests of 3 phrasings (none: 6)", parse=int,
                                     at_least=1)
    test_prompts: int | None = option(None, "with --heldout: fresh prompts per prompt language and genre for the final report "
                                      "(those of cross-steer --seed 0; none: 20); with --lcb: per target language, "
                                      "whole requests of 3 phrasings (none: 30)", parse=int, at_least=1)
    val_samples: int | None = option(None, "validation samples per setting from BOS (seeds 1001..), or per prompt "
                                     "with --heldout (none: 20 from BOS, 1 per prompt)", parse=int, at_least=1)
    test_samples: int | None = option(None, "fresh samples for the final report (seeds 1..) from BOS, or per prompt "
                                      "with --heldout or --lcb (none: 100 from BOS, 5 per held-out prompt, 1 per LCB "
                                      "request)", parse=int, at_least=1)
    max_new_tokens: int = option(48, "tokens to generate", at_least=1)
    temperature: float = option(0.8, "sampling temperature over the full vocabulary (the paper's 0.8; LCB samples "
                                "at 0.3, with nucleus 0.75)", positive=True)
    batch_size: int = option(100, "samples per batch", at_least=1)

    def __post_init__(self) -> None:
        check_lists(self)  # every list option: empty, not a number, nan, out of range, repeated
        check_numbers(self)  # the numbers given (those left at none are set below)
        if self.lcb and self.heldout is not None:
            raise LangNeuronsError("--lcb and --heldout are two sources of prompts; pass one")
        prompted = self.heldout is not None or self.lcb
        if self.val_prompts is None:
            self.val_prompts = 6 if self.lcb else 4
        if self.test_prompts is None:
            self.test_prompts = 30 if self.lcb else 20
        if self.genres and (self.heldout is None or len(spec_parts(self.heldout)) < 2):
            raise LangNeuronsError("--genres needs --heldout with several corpora joined by + (A+B+C)")
        for b in self.band_alphas:
            parse_bands(b)
        if self.after_scales and not self.steer_tokens:
            raise LangNeuronsError("--after-scales is the strength after the first N tokens; give --steer-tokens too")
        self._check_axes()
        names = [parse_setting(t, "--test-settings")[0] for t in self.test_settings]
        for name in names:
            if (name in ("none", "system prompt", "paper clamp k=1000") or name.startswith(("best ", "shared "))
                    or name.endswith(BEHIND)):
                raise LangNeuronsError(f"--test-settings: the name {name!r} is the sweep's own row; choose another")
        if len(set(names)) < len(names):
            raise LangNeuronsError(f"--test-settings: a name is given twice ({', '.join(names)})")
        if self.equal_norms and not self.shared_search:
            raise LangNeuronsError("--equal-norms is a stage of the shared search: give --shared-search")
        if self.lcb_gate is not None and not self.lcb:
            raise LangNeuronsError("--lcb-gate is for --lcb sweeps")
        if self.lcb_system and not self.lcb:
            raise LangNeuronsError("--lcb-system steers LCB's requests behind the system prompt: give --lcb too")
        if self.lcb_gate not in (None, "answers", "references"):
            raise LangNeuronsError(f"--lcb-gate must be answers or references, got {self.lcb_gate!r}")
        if self.shared_floor is not None and self.shared_pick != "floor":
            raise LangNeuronsError("--shared-floor is the retention of --shared-pick floor; give that pick too")
        if self.shared_pick == "floor" and self.shared_floor is None:
            self.shared_floor = 0.8
        if self.lcb and self.lcb_gate is None:
            self.lcb_gate = "answers"
        if self.lcb and (self.val_prompts % 3 or self.test_prompts % 3):
            raise LangNeuronsError(f"--val-prompts {self.val_prompts} and --test-prompts {self.test_prompts}: LCB's "
                                   "prompts come in requests of 3 phrasings (start, middle, end), kept on one side; "
                                   "use multiples of 3 such as 6 and 30")
        if self.val_samples is None:
            self.val_samples = 1 if prompted else 20
        if self.test_samples is None:  # LCB: one answer per request, as the benchmark
            self.test_samples = 1 if self.lcb else 5 if prompted else 100
        if "prompt" in self.sources and not prompted:
            raise LangNeuronsError("--sources prompt needs --heldout or --lcb: from BOS there is no prompt language")

    def _check_axes(self) -> None:
        """Every stage asked for varies a field the intervention has: each is tried as a setting of it, and one
        line says which interventions a field is for (the interventions' own checks, not a list here)."""
        cls = intervention(self.method)
        if self.positions and all(p not in cls.positions for p in self.positions):
            raise LangNeuronsError(f"--positions {','.join(self.positions)}: {self.method} steers "
                                   f"{' or '.join(cls.positions)}")
        probes = [("neuron-sets", "which", list(self.neuron_sets) != ["both"], {}),
                  ("sources prompt", "source", "prompt" in self.sources, {}),
                  ("spreads", "spread", bool(self.spreads), {"spread": "even"}),
                  ("band-alphas", "band_alphas", bool(self.band_alphas), {"band_alphas": (self.band_alphas or [""])[0]}),
                  ("resid-alphas", "resid_alpha", bool(self.resid_alphas), {"resid_alpha": (self.resid_alphas or [0])[0]}),
                  ("equal-norms", "equal_norm", bool(self.equal_norms), {"equal_norm": (self.equal_norms or [""])[0]}),
                  ("after-scales", "after_scale", bool(self.after_scales),
                   {"steer_tokens": 1, "after_scale": (self.after_scales or [1.0])[0]}),
                  ("keep-norm-stage", "keep_norm", self.keep_norm_stage,
                   {"keep_norm": True, "resid_alpha": (self.resid_alphas or [None])[0]})]
        for option_, field_, asked, setting in probes:
            if not asked:
                continue
            if field_ not in cls.fields and field_ != "after_scale":
                raise LangNeuronsError(f"--{option_} is for {spoken(owners(field_))} (it varies {field_}), "
                                       f"not {self.method}")
            try:
                SteeringConfig(method=self.method, **setting)
            except LangNeuronsError as e:
                raise LangNeuronsError(f"--{option_}: {e}") from None


def sweep_folder(method: str, lcb: bool = False, system: bool = False) -> str:
    """A sweep's default folder in the neurons folder: ``sweep`` for clamp, ``sweep-METHOD`` otherwise;
    ``lcb-METHOD`` for a sweep on LCB's prompts, ``lcb-system-METHOD`` when they carry the system prompt."""
    if lcb:
        return f"lcb-system-{method}" if system else f"lcb-{method}"
    return intervention(method).folder()


@dataclass
class SweepResult:
    best: dict[str, dict]
    stages: list[dict]
    test: list[dict]
    meta: dict = field(default_factory=dict)

    def markdown(self) -> str:
        return sweep_markdown(self)


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


def sweep_settings(directory: str | Path, pick: str = "best", neurons: LanguageNeurons | None = None
                   ) -> dict[str, SteeringConfig]:
    """The settings a finished sweep picked, ``{lang: SteeringConfig}``: each language's own (``best``) or
    the one shared by all (``shared``), for ``steer``/``cross-steer --from-sweep`` and the benchmarks.
    With ``neurons``, a sweep made on other neurons (another AP: model, corpus or sites) is refused.

    Example:
        >>> per_lang = sweep_settings("runs/gemma/sweep-add")                      # doctest: +SKIP
        >>> cross_steering(model, neurons, held, CrossSteerConfig(per_target=per_lang))  # doctest: +SKIP
    """
    if pick not in ("best", "shared"):
        raise LangNeuronsError(f"a sweep's pick is best or shared, got {pick!r}")
    f = Path(directory) / "sweep.json"
    if not f.is_file():
        raise LangNeuronsError(f"{f} is not a finished sweep's result (there is no such file); run the sweep first")
    again = "run the sweep again, or name another sweep"
    data = read_json(f, {"best": ("object",), "best.*": ("object",), "meta": ("object", "null"),
                         "meta.ap_sha": ("string", "null"), "meta.shared": ("object", "null")}, again)
    meta = data.get("meta") or {}
    if neurons is not None:
        made_on = meta.get("ap_sha")
        if made_on != hashlib.sha256(neurons.ap.numpy().tobytes()).hexdigest()[:16]:
            raise LangNeuronsError(f"the sweep in {directory} was made on other neurons (AP {made_on}); its settings "
                                   "(k, layers) do not carry over: sweep these neurons")
    # a language whose every setting steered no neuron (or did not apply) has no pick: it was never scored
    best = {lang: st for lang, st in data["best"].items() if "val" not in st or st["val"] is not None}
    if not best:
        raise LangNeuronsError(f"{f}: field 'best' holds no setting that was scored; {again}")
    if pick == "shared":
        shared = meta.get("shared")
        if not shared:
            raise LangNeuronsError(f"{f} has no shared setting (no setting applied to every language)")
        setting = setting_from_json(shared, str(f), "meta.shared", again)
        return {lang: setting for lang in best}
    return {lang: setting_from_json(st, str(f), f"best.{lang}", again) for lang, st in best.items()}


def check_sweep(cfg: SweepConfig, neurons: LanguageNeurons) -> None:
    """What the config asks of the neurons, checked before the model loads: the languages are the neurons',
    the test settings build towards each, for clamp and add a k value reaches one neuron and the layer subsets
    exist, for diffmean and sparse the residual means were recorded and the layers searched exist."""
    langs = lcb_languages(cfg.languages, neurons.languages) if cfg.lcb else cfg.languages or neurons.languages
    for lang in langs:
        neurons.check_language(lang)
    for spec in cfg.test_settings:  # each of the user's settings builds for every target (k, layers, bands, source)
        name, st = parse_setting(spec, "--test-settings")
        for lang in langs:
            try:
                if st.neuron_level:
                    check_not_empty(neurons, st, lang)
                st.for_prompt(None if st.source == "prompt" else st.source, lang).hooks(neurons, lang)
            except LangNeuronsError as e:
                raise LangNeuronsError(f"--test-settings {name} towards {lang}: {e}") from None
    if cfg.lcb and "prompt" in cfg.sources:
        neurons.check_language("en")  # LCB's requests are English: the source steered away from
    cls = intervention(cfg.method)
    if cls.neuron_level:
        k_values, _ = ks(cfg.k_fractions, neurons.index.n_neurons)
        for x in cfg.layer_sets:
            neurons.layer_subset(x)
        if neurons.one_sided and list(cfg.neuron_sets) == ["bottom"]:
            raise LangNeuronsError(f"--neuron-sets bottom: {neurons.method} selects top neurons only (its bottom sets "
                                   "are empty), so nothing would be steered; search top or both")
        for lang in langs:  # a language without neurons has nothing to search
            check_not_empty(neurons, SteeringConfig(which="top", k=max(k_values)), lang)
        for spec in cfg.band_alphas:  # the bands' layers exist
            for subset, _ in parse_bands(spec):
                neurons.layer_subset(subset)
    if not cls.needs_residual(cfg):
        return
    means, _ = neurons.residual()  # diffmean, sparse and add's diffmean term: the residual means and layers
    n_layers = means.shape[1]
    bad = [l for l in cfg.resid_layers or () if l >= n_layers]
    if bad:
        raise LangNeuronsError(f"--resid-layers {','.join(map(str, cfg.resid_layers))}: there is no layer {bad[0]}; "
                               f"the residual means were recorded for {n_layers} layers (0-{n_layers - 1})")


Genres = dict[str, MultilingualCorpus]
"""Held-out text by genre (name: corpus), each giving its own prompts."""


def heldout_genres(spec: str, neurons: LanguageNeurons, genres: bool = True) -> tuple[Genres, dict]:
    """The genres of a held-out spec: with ``genres`` and ``A+B+C`` each part on its own (not mixed), without
    the texts ``find`` selected these neurons on (e.g. the FLORES sentences of its corpus), and what was left
    out (per genre and language; ``{"unchecked": why}`` when the find corpus is not at hand); otherwise one
    corpus (``A+B`` mixed in equal shares), as ``cross-steer`` reads it."""
    parts = spec_parts(spec)
    if len(parts) == 1 or not genres:
        return {spec: MultilingualCorpus.load(spec, languages=neurons.languages)}, {}
    used = find_texts(neurons.meta, neurons.languages)
    genres_: Genres = {}
    dropped: dict = {} if used is not None else {
        "unchecked": f"the find corpus ({neurons.meta.get('corpus_spec') or 'not recorded'}) is not at hand here: "
                     "texts it shares with the genres were not left out"}
    for p in parts:
        name = Path(p).name or p
        if name in genres_:
            raise LangNeuronsError(f"--heldout {spec}: two genres are named {name!r}; give each folder once")
        genres_[name], lost = without(MultilingualCorpus.load(p, languages=neurons.languages), used or {})
        if lost:
            dropped[name] = lost
    return genres_, dropped


def check_prompt_texts(cfg: SweepConfig, neurons: LanguageNeurons, heldout: Genres | MultilingualCorpus) -> None:
    """Before the model loads: the held-out text of every prompt language (in each genre) has a text for each
    test and validation prompt asked for (the prompts are never fewer than the config records)."""
    genres = heldout if isinstance(heldout, dict) else {cfg.heldout: heldout}
    for name, corpus in genres.items():
        for l in neurons.languages:
            have = len(corpus.texts.get(l, ()))
            if 0 < have < cfg.test_prompts + cfg.val_prompts:
                raise LangNeuronsError(f"--test-prompts {cfg.test_prompts} and --val-prompts {cfg.val_prompts} need "
                                       f"{cfg.test_prompts + cfg.val_prompts} held-out {l} texts, each its own prompt; "
                                       f"{name or 'the held-out corpus'} has {have}: ask for fewer prompts")


def sweep_prompts(tokenizer, neurons: LanguageNeurons, heldout: Genres | MultilingualCorpus, cfg: SweepConfig) -> dict:
    """The prompts of a prompted sweep: ``{"val": {lang: prompts}, "test": {lang: prompts}}`` for every
    language of the neurons that the held-out corpus has, from disjoint texts (test: those of
    ``cross-steer`` with seed 0). With several genres, each genre's prompts in turn (the counts per genre)
    and ``"genre": {"val": {lang: [genre of each prompt]}, "test": {...}}``."""
    genres = heldout if isinstance(heldout, dict) else {cfg.heldout: heldout}
    out: dict = {"val": {}, "test": {}}
    if len(genres) > 1:
        out["genre"] = {"val": {}, "test": {}}
    for name, corpus in genres.items():
        srcs = [l for l in neurons.languages if l in corpus.texts]
        if len(srcs) < 2:
            raise LangNeuronsError(f"a prompted sweep needs held-out text in at least 2 of the neurons' languages "
                                   f"({', '.join(neurons.languages)}); {name or 'the held-out corpus'} has "
                                   f"{', '.join(srcs) or 'none'}")
        for l in srcs:
            test, val = split_prompts(tokenizer, corpus.texts[l], cfg.test_prompts, cfg.val_prompts, l)
            if (len(test), len(val)) != (cfg.test_prompts, cfg.val_prompts):  # texts too short for a prompt
                raise LangNeuronsError(f"--test-prompts {cfg.test_prompts} and --val-prompts {cfg.val_prompts}: the "
                                       f"held-out {l} text of {name or 'the held-out corpus'} gives {len(test)} test "
                                       f"and {len(val)} validation prompts (texts of at least 14 tokens); ask for at "
                                       "most that many")
            for phase, ps in (("test", test), ("val", val)):
                out[phase].setdefault(l, []).extend(ps)
                if "genre" in out:
                    out["genre"][phase].setdefault(l, []).extend([name] * len(ps))
    return out


def _sweep(model: HookedModel, neurons: LanguageNeurons, references: dict[str, list[str]] | None, cfg: SweepConfig,
           cells_dir: Path | None, progress: bool, store: SampleStore, shard: Shard | None = None,
           heldout: Genres | None = None, dropped: dict | None = None) -> SweepResult:
    return _Search(model, neurons, references, cfg, cells_dir, progress, store, shard, heldout, dropped).run()


GENRE_MEASURES = ("rate", "gated_rate", "fluent", "retention", "nll")  # a test row's scores per genre


class _Search:
    """One sweep: what its settings are scored on (seeds from BOS, held-out prompts or LCB requests), the
    coordinate search on the validation split, the shared setting, and the report on the test split. Every
    score comes from the one cell pipeline (:meth:`CellRunner.measure`: a setting's cells beside their
    unsteered twins)."""

    def __init__(self, model: HookedModel, neurons: LanguageNeurons, references: dict[str, list[str]] | None,
                 cfg: SweepConfig, cells_dir: Path | None, progress: bool, store: SampleStore,
                 shard: Shard | None, heldout: Genres | None, dropped: dict | None = None):
        self.model, self.neurons, self.cfg, self.heldout, self.dropped = model, neurons, cfg, heldout, dropped or {}
        self.langs = lcb_languages(cfg.languages, neurons.languages) if cfg.lcb else cfg.languages or neurons.languages
        ecfg = EvaluateConfig(languages=self.langs, samples=cfg.test_samples, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, batch_size=cfg.batch_size, ablation_ks=[])
        self.cells = CellRunner(model, neurons, ecfg, references, cells_dir, progress, store, shard)
        self.n = neurons.index.n_neurons
        self.seeds_of = {"val": list(range(1001, 1001 + cfg.val_samples)), "test": list(range(1, cfg.test_samples + 1))}
        self.lcb = lcb_prompts(model.tokenizer, self.langs, cfg.val_prompts, cfg.test_prompts) if cfg.lcb else None
        steered = ("system_val", "system") if cfg.lcb_system else ("val", "test")  # what LCB's steered cells continue
        self.prompts = ({"val": self.lcb[steered[0]], "test": self.lcb[steered[1]]} if self.lcb else
                        None if heldout is None else sweep_prompts(model.tokenizer, neurons, heldout, cfg))
        self.empty: dict[str, None] = {}  # settings that steer no neuron (lape, actprob): never scored, in the notes
        self.shared_options: list[dict] = []  # each language's pick scored on every language (see shared())
        self.shared_tried: list[dict] = []  # every value the shared search tried (see search_shared())
        # an LCB sweep's gate from the model's own answers, and the pick by gated LPR (see SweepConfig.lcb_gate)
        self.answers_gate = bool(self.lcb) and cfg.lcb_gate == "answers"
        self.gate: dict = {}
        if self.answers_gate:
            self.calibrate()

    def calibrate(self) -> None:
        """Each language's fluency gate from the unsteered model's answers to its validation requests behind
        the system prompt (seeds 2001..2010 each): the 5th percentile of their distinct-token ratios, in place
        of the reference corpus's (whose running text repeats itself far less than a chat answer does)."""
        for lang, rows in self.answers(self.lcb["system_val"], list(LCB_GATE_SEEDS)).items():
            before = self.cells.thresholds[lang]
            self.cells.thresholds[lang] = answers_threshold([r["tokens"] for r in rows])
            self.gate[lang] = {"threshold": self.cells.thresholds[lang], "answers": len(rows),
                               "reference_threshold": before}

    def units(self, lang: str, phase: str) -> list[tuple[str | None, list[int] | None, list[int]]]:
        """What a setting towards ``lang`` is scored on in ``phase`` ("val" or "test"): (prompt language,
        prompt, seeds); from BOS one (None, None, seeds), with prompts every prompt of every other language
        (the off-diagonal cells of cross-steering)."""
        seeds = self.seeds_of[phase]
        if self.prompts is None:
            return [(None, None, seeds)]
        if self.lcb:  # LCB: the requests that ask for ``lang``, written in English
            return [("en", p, seeds) for p in self.prompts[phase][lang]]
        return [(src, p, seeds) for src, ps in self.prompts[phase].items() if src != lang for p in ps]

    @property
    def genres(self) -> list[str]:
        """The genres of a sweep on several held-out genres (``A+B+C``), in order; empty otherwise."""
        return list(self.heldout) if self.prompts and "genre" in self.prompts else []

    def unit_genres(self, lang: str, phase: str) -> list[str]:
        """The genre of each of :meth:`units` (a sweep on several genres)."""
        g = self.prompts["genre"][phase]
        return [x for src, gs in g.items() if src != lang for x in gs]

    def by_genre(self, lang: str, phase: str, items: list) -> dict[str, list]:
        """``items`` (one per unit of ``lang`` in ``phase``, or lists of rows per unit) split by genre."""
        out: dict[str, list] = {name: [] for name in self.genres}
        for g, x in zip(self.unit_genres(lang, phase), items):
            out[g].append(x)
        return out

    def unsteered(self, phase: str) -> dict[str, list[dict]]:
        """Each language's unsteered samples in ``phase``, every (prompt, seeds) cell read or made once."""
        def key(p):
            return None if p is None else tuple(p)
        todo = {key(p): (p, s) for lang in self.langs for _, p, s in self.units(lang, phase)}
        got = dict(zip(todo, self.cells.samples_many([Cell(None, None, s, p) for p, s in todo.values()])))
        return {lang: [r for _, p, _ in self.units(lang, phase) for r in got[key(p)]] for lang in self.langs}

    def setting_of(self, s: dict) -> SteeringConfig:
        """The SteeringConfig of a setting row (its k and method apart)."""
        return SteeringConfig(method=s.get("method", self.cfg.method),
                              **{k: v for k, v in s.items() if k not in ("k", "method")})

    def evaluate_many(self, cands: list[tuple[str, dict]], phase: str) -> list[dict | None]:
        """Scores of (lang, setting) candidates, generated together (with their unsteered twins, the
        baseline of retention); None where the setting does not apply (e.g. k larger than a layer subset)
        or would steer no neuron (an empty set of lape or actprob)."""
        neurons = self.neurons
        steers = [self.setting_of(st) for _, st in cands]
        ok, counts = [], []
        for (lang, st), steer in zip(cands, steers):
            full = replace(steer, which=st.get("which", "both"), k=st["k"])
            try:
                src = self.units(lang, phase)[0][0]
                count = neuron_count(neurons, full, lang)
                if count == 0:
                    self.empty[f"{lang}: {full.label()}"] = None
                    raise LangNeuronsError("no neuron")
                self.cells.hooks(full.for_prompt(src), lang)
                ok.append(True)
            except LangNeuronsError:
                count = None
                ok.append(False)
            counts.append(None if count is None or count == full_count(neurons, full) else count)
        groups = [[steered(lang, steer.for_prompt(src), st.get("which", "both"), st["k"], s, p)
                   for src, p, s in self.units(lang, phase)]
                  for (lang, st), steer, good in zip(cands, steers, ok) if good]
        measured = iter(self.cells.measure(groups))
        per_genre = iter(self.genre_scores([c for c, good in zip(cands, ok) if good], groups)
                         if self.genres and phase == "test" else [])
        out: list[dict | None] = []
        for (lang, st), steer, good, count in zip(cands, steers, ok, counts):
            if not good:
                out.append(None)
                continue
            m = next(measured)
            label = replace(steer, k=st["k"] if steer.neuron_level else None).resolved(neurons).label()
            if count is not None:  # fewer neurons than k names (lape, actprob): the real count
                label += f" ({count} neuron{'s' if count != 1 else ''})"
            out.append({"lang": lang, **st, "label": label, "k_fraction": st["k"] / self.n,
                        **m.row(), **self.lcb_scores(lang, phase, m.samples)})
            if self.genres and phase == "test":
                out[-1]["genres"] = next(per_genre)
        return out

    def genre_scores(self, cands: list[tuple[str, dict]], groups: list[list[Cell]]) -> list[dict[str, dict]]:
        """Each candidate's test cells measured genre by genre (beside their twins of that genre)."""
        parts = [(i, g, sub) for i, ((lang, _), group) in enumerate(zip(cands, groups))
                 for g, sub in self.by_genre(lang, "test", group).items() if sub]
        out: list[dict[str, dict]] = [{} for _ in cands]
        for (i, g, _), m in zip(parts, self.cells.measure([sub for _, _, sub in parts])):
            out[i][g] = {k: m.row()[k] for k in GENRE_MEASURES}
        return out

    def own_fluent_by_genre(self) -> dict[str, dict[str | None, float]]:
        """On held-out prompts: each language's fluent share (under its own gate) of the unsteered continuations
        of the test prompts written in it, the model's own text in the language (key None), and in a sweep on
        several genres the same on each genre's prompts (key: the genre). Retention compares a steered cell with
        the unsteered continuations of the other languages' prompts (the same prompts); this is the ceiling the
        model itself sets when writing the language. Each language's prompts are units of the other targets, so
        with every language searched these samples are the sweep's own (a sweep of fewer targets generates the
        missing ones, test prompts x test seeds per language); empty from BOS and on LCB."""
        if self.prompts is None or self.lcb:
            return {}
        per = len(self.seeds_of["test"])
        out: dict[str, dict[str | None, float]] = {}
        for lang, rows in self.answers(self.prompts["test"], self.seeds_of["test"]).items():
            parts: dict[str | None, list[dict]] = {None: rows}
            if self.genres:  # rows are in prompt order, ``per`` seeds each
                for i, g in enumerate(self.prompts["genre"]["test"][lang]):
                    parts.setdefault(g, []).extend(rows[i * per:(i + 1) * per])
            out[lang] = {g: self.cells.score(rs, lang).fluent for g, rs in parts.items()}
        return out

    def lcb_scores(self, lang: str, phase: str, rows: list[dict], prompts: str | None = None) -> dict:
        """LCB sweeps only: the gated LPR of a cell's answers (what the pick compares, with the answers gate)
        and, on the test split, LCB's pass rates and the relevance proxy; ``prompts`` names the requests the
        answers continue (``test``: bare, ``system``: behind the system prompt; None: the steered cells')."""
        out = gated_lpr(rows, lang, self.cells.thresholds[lang]) if self.answers_gate else {}
        if self.lcb and phase == "test":
            asked = self.prompts["test"] if prompts is None else self.lcb[prompts]
            out.update(lcb_quality(self.model, rows, asked[lang], lang, len(self.seeds_of["test"])))
        return out

    def answers(self, prompts: dict[str, list], seeds: list[int]) -> dict[str, list[dict]]:
        """Each language's unsteered answers to its ``prompts`` (``seeds`` each, in prompt order), read or made
        together; languages without prompts left out."""
        langs = [lang for lang in self.langs if prompts.get(lang)]
        got = iter(self.cells.samples_many([Cell(None, None, seeds, p) for lang in langs for p in prompts[lang]]))
        return {lang: [r for _ in prompts[lang] for r in next(got)] for lang in langs}

    @property
    def objective(self) -> str:
        """What the pick maximises: the gated LPR in an LCB sweep with the answers gate, else the gated rate."""
        return "lpr_gated" if self.answers_gate else "gated_rate"

    def better(self, a: dict, b: dict) -> bool:
        """The pick: the higher objective, ties broken by the lower NLL."""
        o = self.objective
        return (a[o], -(a["nll"] or 99)) > (b[o], -(b["nll"] or 99))

    def search(self, notes: list[str]) -> tuple[dict[str, dict], dict[str, dict | None], list[dict]]:
        """The coordinate search per language on the validation split, each stage running every language and
        value in one batched call: (each language's best setting, its validation scores, every setting tried)."""
        start, stages_of, more = _search_space(self.cfg, self.neurons, self.n)
        notes += more
        stages_of = [*stages_of, *_later_stages(self.cfg, self.neurons)]
        cur = {lang: dict(start) for lang in self.langs}
        cur_score: dict[str, dict | None] = {lang: None for lang in self.langs}
        tried: dict[str, list[dict]] = {lang: [] for lang in self.langs}
        for stage, key, values in stages_of:
            # a key of several fields (e.g. steer_tokens with after_scale) takes a tuple of values
            cands = [(lang, _with(cur[lang], key, v)) for lang in self.langs for v in values]
            cands = [(lang, st) for lang, st in cands if self.applies(st)]
            for (lang, st), r in zip(cands, self.evaluate_many(cands, "val")):
                if r is None:
                    continue
                tried[lang].append({"stage": stage, **r})
                if cur_score[lang] is None or self.better(r, cur_score[lang]):
                    cur[lang], cur_score[lang] = st, r
        return cur, cur_score, [r for lang in self.langs for r in tried[lang]]

    def applies(self, st: dict) -> bool:
        """Whether a setting of a later stage exists (e.g. norm preservation needs a residual term to keep the
        norm of): those that do not are left out of the stage rather than scored."""
        try:
            self.setting_of(st)
        except LangNeuronsError:
            return False
        return True

    def shared(self, cur: dict[str, dict]) -> dict | None:
        """One shared setting for all languages: of the languages' best settings, the one with the highest
        mean validation objective (gated rate; gated LPR on LCB) over every language, or with ``shared_pick``
        "worst" the highest for the language it serves worst (ties: the mean, then lower mean NLL), or with "floor"
        the highest mean of those whose every language keeps retention >= ``shared_floor``; None if none
        applies to all. Every option's scores go to :attr:`shared_options`. With ``shared_search`` that pick is
        the start of :meth:`search_shared`."""
        langs = self.langs
        options = list({json.dumps(cur[l], sort_keys=True): cur[l] for l in langs}.values())
        shared, shared_key = None, None
        self.shared_options = []
        for st, rank in zip(options, self.rank_all(options)):
            if rank is None:
                continue
            key, row = rank
            self.shared_options.append(row)
            if shared_key is None or key > shared_key:
                shared, shared_key = {**st, **{k: row[k] for k in SHARED_SCORES}}, key
        if shared is not None and self.cfg.shared_search:
            shared = self.search_shared(shared, shared_key)
        return shared

    def shared_rank(self, rs: list[dict | None]) -> tuple[tuple, dict] | None:
        """(sort key, scores) of one setting scored on every language: its label, its mean and worst validation
        objective and the language of the worst, ranked by ``shared_pick``; None unless it applies to every language."""
        if any(r is None for r in rs):
            return None
        mean, worst = mean_of(rs, self.objective), min(r[self.objective] for r in rs)
        retention = [r.get("retention") for r in rs]  # none: the unsteered samples had no fluent one
        row = {"label": rs[0]["label"], "val_mean_gated_rate": mean, "val_worst_gated_rate": worst,
               "val_low_retention": None if None in retention else min(retention),  # none: a language has none
               "worst_lang": min(rs, key=lambda r: r[self.objective])["lang"],
               "by_lang": {r["lang"]: {"gated": r[self.objective], "rate": r.get("rate"), "retention": r.get("retention")}
                           for r in rs}}
        nll = -mean_of([{"nll": r["nll"] if r["nll"] is not None else 99} for r in rs], "nll")  # as better()
        pick = self.cfg.shared_pick
        if pick == "floor":  # a language without a retention (no fluent unsteered sample) cannot show it keeps one
            kept = all(keeps_floor(x, self.cfg.shared_floor) for x in retention)
            return (kept, mean, nll), row
        return ((mean, nll) if pick == "mean" else (worst, mean, nll)), row

    def rank_all(self, settings: list[dict]) -> list[tuple[tuple, dict] | None]:
        """:meth:`shared_rank` of each setting, every setting scored on every language in one batched call."""
        langs = self.langs
        scores = self.evaluate_many([(lang, st) for st in settings for lang in langs], "val")
        return [self.shared_rank(scores[i * len(langs):(i + 1) * len(langs)]) for i in range(len(settings))]

    def search_shared(self, start: dict, start_key: tuple) -> dict:
        """The shared setting searched as one: from ``start`` (with its scores), each stage of
        :func:`_shared_stages` in turn, each value scored on every language at once and kept where it ranks higher
        by ``shared_pick``. Every value tried goes to :attr:`shared_tried`."""
        cur = {k: v for k, v in start.items() if k not in SHARED_SCORES}
        cur_scores, cur_key = {k: start[k] for k in SHARED_SCORES}, start_key
        for stage, key, values in _shared_stages(self.cfg, self.neurons, self.n):
            cands = [_with(cur, key, v) for v in values]
            cands = [st for st in {json.dumps(st, sort_keys=True): st for st in cands}.values() if self.applies(st)]
            for st, rank in zip(cands, self.rank_all(cands)):
                if rank is None:
                    continue
                self.shared_tried.append({"stage": stage, **rank[1]})
                if rank[0] > cur_key:
                    cur, cur_key, cur_scores = st, rank[0], {k: rank[1][k] for k in SHARED_SCORES}
        return {**cur, **cur_scores}

    def report(self, best: dict[str, dict], shared: dict | None) -> list[dict]:
        """The test split: unsteered, the system prompt (LCB), the paper's clamp, each language's best and
        the shared setting, per language."""
        cfg, langs, cells, lcb = self.cfg, self.langs, self.cells, self.lcb
        test = []
        paper = {"method": "clamp", "k": min(1000, self.n), "scale": 1.0, "positions": "all", "layers": None}
        fluent_test = {}
        none_test = self.answers(lcb["test"], self.seeds_of["test"]) if lcb else self.unsteered("test")
        for lang in langs:
            sc = cells.score(none_test[lang], lang)
            fluent_test[lang] = sc.fluent
            test.append({"lang": lang, "setting": "none", **sc.steering_row(sc.fluent), "retention": 1.0,
                         **self.lcb_scores(lang, "test", none_test[lang], "test" if lcb else None)})
            if self.genres:  # the unsteered continuations of each genre's prompts
                per = len(self.seeds_of["test"])
                units = [none_test[lang][i * per:(i + 1) * per] for i in range(len(none_test[lang]) // per)]
                test[-1]["genres"] = {
                    g: {**{k: sc_g.steering_row(sc_g.fluent)[k] for k in GENRE_MEASURES}, "retention": 1.0}
                    for g, us in self.by_genre(lang, "test", units).items() if us
                    for sc_g in [cells.score([r for u in us for r in u], lang)]}
        own_g = self.own_fluent_by_genre()
        own = {lang: by[None] for lang, by in own_g.items()}
        for r in test:
            if r["lang"] in own:
                r["own_fluent"] = own[r["lang"]]
                for g, x in r.get("genres", {}).items():
                    x["own_fluent"] = own_g[r["lang"]].get(g)
        if lcb:  # prompting alone: the same requests behind a system message that asks for the language
            for lang, rows in self.answers(lcb["system"], self.seeds_of["test"]).items():
                sc = cells.score(rows, lang)
                test.append({"lang": lang, "setting": "system prompt", **sc.steering_row(fluent_test[lang]),
                             **self.lcb_scores(lang, "test", rows, "system")})
        named = [("paper clamp k=1000", {l: paper for l in langs}),
                 (f"best {cfg.method}", {l: {k: v for k, v in best[l].items() if k != "val"} for l in langs})]
        if shared is not None:
            named.append((f"shared {cfg.method}", {l: {k: v for k, v in shared.items() if k not in SHARED_SCORES}
                                                   for l in langs}))
        for spec in cfg.test_settings:  # the user's own settings, on the same test cells
            name, st = parse_setting(spec, "--test-settings")
            setting = {**asdict(st), "k": st.k if st.k is not None else self.neurons.k}
            named.append((name, {l: setting for l in langs}))
        scores = iter(self.evaluate_many([(lang, per[lang]) for _, per in named for lang in langs], "test"))
        for name, per in named:
            for lang in langs:
                r = next(scores)
                if r is not None:
                    if lang in own:  # fluency against the model's own text in the language
                        r["own_retention"] = r["fluent"] / own[lang] if own[lang] else None
                        for g, x in r.get("genres", {}).items():  # and against its own text of the genre
                            o = own_g[lang].get(g)
                            x["own_retention"] = x["fluent"] / o if o else None
                    test.append({**r, "setting": name})
        test.sort(key=lambda r: langs.index(r["lang"]))
        return test

    def run(self) -> SweepResult:
        notes: list[str] = []
        cur, cur_score, stages = self.search(notes)
        best = {lang: {**cur[lang], "val": cur_score[lang]} for lang in self.langs}
        shared = self.shared(cur)
        test = self.report(best, shared)
        if self.empty:
            notes.append(f"not scored, as they steer no neuron ({self.neurons.method} chose none): "
                         f"{'; '.join(self.empty)}")
        meta = {**self.cells.meta(), "config": asdict(self.cfg), "languages": self.langs, "notes": notes,
                "shared": shared, "shared_options": self.shared_options}
        if self.cfg.shared_search:
            meta["shared_search"] = self.shared_tried
        if self.answers_gate:
            meta["lcb_gate"] = {"from": "the unsteered answers to the validation requests behind the system prompt, "
                                        f"seeds {LCB_GATE_SEEDS[0]}..{LCB_GATE_SEEDS[-1]}; 5th percentile of the "
                                        "distinct-token ratio", "pick": "gated LPR (ties: lower NLL)", **self.gate}
        if self.lcb:
            meta["prompts"] = {"lcb": "for-ai/language-confusion test_sets/crosslingual/okapi (tl_langneurons/data/lcb)",
                               "split_seed": SPLIT_SEED, "system_prompt": SYSTEM_PROMPT, **self.lcb}
        elif self.prompts is not None:
            sha = {g: {l: sha256_texts(c.texts[l]) for l in self.prompts["val"] if l in c.texts}
                   for g, c in self.heldout.items()}
            meta["prompts"] = {"heldout": self.cfg.heldout,
                               "texts_sha": sha[self.cfg.heldout] if len(sha) == 1 else sha, **self.prompts}
            if self.dropped:  # the texts find selected these neurons on, left out of the genres
                meta["prompts"]["left_out"] = self.dropped
        return SweepResult(best, stages, test, meta)


def _search_space(cfg: SweepConfig, neurons: LanguageNeurons, n: int) -> tuple[dict, list, list[str]]:
    """The starting setting and the stages (name, field, values) searched for the intervention: a source stage
    first where asked for, then its :attr:`~tl_langneurons.steer.base.Intervention.axes` in order, each with the
    values the config gives (:data:`AXES`); a single value is not a stage (every setting tried has it)."""
    cls = intervention(cfg.method)
    notes = []
    first = [("source", "source", [None if x == "none" else x for x in cfg.sources])] if len(cfg.sources) > 1 else []
    # positions searched: "last" (clamp's) from BOS with the KV cache equals "all"
    if "last" in cls.positions and (cfg.heldout or cfg.lcb):
        moved = list(cfg.positions)
    else:
        moved = [p for p in cfg.positions if p != "last"] or ["all"]
        if "last" in cfg.positions and "last" in cls.positions:
            notes.append("positions=last skipped: from BOS with the KV cache it equals positions=all")
        elif "last" in cfg.positions and tuple(cfg.positions) != tuple(SweepConfig.positions):
            notes.append(f"positions=last skipped: it is for {spoken(owners('last', 'positions'))}, not {cfg.method}")
    fixed = {"positions": moved[0]} if len(moved) == 1 and moved[0] != "all" else {}
    if list(cfg.sources) == ["prompt"]:
        fixed["source"] = "prompt"
    start = {"method": cfg.method, **cls.sweep_start(cfg, neurons, n), **fixed}
    if "which" in cls.axes and (len(cfg.neuron_sets) > 1 or list(cfg.neuron_sets) != ["both"]):
        start["which"] = cfg.neuron_sets[0]
    stages = list(first)
    for axis in cls.axes:
        values, more = AXES[axis](cfg, neurons, n, moved)
        notes += more
        if values is not None and (len(values) > 1 or axis not in ("which", "positions")):
            stages.append((axis, axis, values))
    return start, stages, notes


def _residual_shape(neurons: LanguageNeurons) -> tuple[int, int]:
    means, _ = neurons.residual()
    return means.shape[1], means.shape[2]


# the values a sweep searches for each field an intervention names in its axes: (config, neurons, n, positions)
# -> (values, notes)
AXES = {
    "k": lambda cfg, neurons, n, moved: ks(cfg.k_fractions, n),
    "scale": lambda cfg, neurons, n, moved: (list(cfg.scales), []),
    "alpha": lambda cfg, neurons, n, moved: (list(cfg.alphas), []),
    "layers": lambda cfg, neurons, n, moved: ([None if x == "all" else x for x in cfg.layer_sets], []),
    "which": lambda cfg, neurons, n, moved: (list(cfg.neuron_sets), []),
    "positions": lambda cfg, neurons, n, moved: (moved, []),
    "layer": lambda cfg, neurons, n, moved: (residual_layers(_residual_shape(neurons)[0], cfg.resid_layers), []),
    "n_dims": lambda cfg, neurons, n, moved: (sorted({max(1, round(f * _residual_shape(neurons)[1]))
                                                     for f in cfg.dim_fractions}), []),
    "coef": lambda cfg, neurons, n, moved: (list(cfg.coefs), []),
}


# a shared setting's scores, beside its fields: its mean and worst validation objective over the languages and the
# lowest retention of any language
SHARED_SCORES = ("val_mean_gated_rate", "val_worst_gated_rate", "val_low_retention")

# fields that mean nothing without another: turning the other off clears them (a second phase needs the first N
# tokens; a diffmean term's layer and norm preservation need the term)
_DEPENDENT = {"steer_tokens": {"after_scale": None}, "resid_alpha": {"layer": None, "keep_norm": False}}


def _with(cur: dict, key: str | tuple[str, ...], value) -> dict:
    """``cur`` with a stage's field(s) set to ``value`` (a tuple for a key of several fields); a field set to
    none also clears what depends on it (:data:`_DEPENDENT`), so an idea's "off" value is the setting without it."""
    new = {**cur, **(dict(zip(key, value)) if isinstance(key, tuple) else {key: value})}
    for field_, cleared in _DEPENDENT.items():
        if field_ in new and new[field_] is None:
            new.update(cleared)
    return new


def _later_stages(cfg: SweepConfig, neurons: LanguageNeurons) -> list[tuple[str, str | tuple[str, ...], list]]:
    """The stages after the method's own (issue 29's ideas, each only where asked for): the k neurons spread over
    the layers (clamp, add), strength per layer band and a diffmean term (add), norm preservation (diffmean, add's
    term), the first N tokens only, and a two-phase strength (the first N tokens at full strength, the rest at a
    share of it)."""
    stages: list[tuple[str, str | tuple[str, ...], list]] = []
    if cfg.spreads:
        stages.append(("spread", "spread", list(cfg.spreads)))
    if cfg.band_alphas:
        stages.append(("bands", "band_alphas", list(cfg.band_alphas)))
    if cfg.resid_alphas:
        means, _ = neurons.residual()
        layers = list(cfg.resid_layers) if cfg.resid_layers is not None else [default_layer(means.shape[1])]
        norms = [False, True] if cfg.keep_norm_stage else [False]  # the term as it is and norm-preserving
        stages.append(("diffmean term", ("layer", "resid_alpha", "keep_norm"),
                       [(L, a, kn) for L in layers for a in cfg.resid_alphas for kn in norms]))
    elif cfg.keep_norm_stage:  # diffmean
        stages.append(("keep_norm", "keep_norm", [True]))
    if cfg.steer_tokens:  # the best setting, steered only while its first N tokens are written
        stages.append(("steer_tokens", "steer_tokens", list(cfg.steer_tokens)))
    if cfg.after_scales:
        stages.append(("two-phase", ("steer_tokens", "after_scale"),
                       [(n, a) for n in cfg.steer_tokens for a in cfg.after_scales]))
    return stages


def _shared_stages(cfg: SweepConfig, neurons: LanguageNeurons, n: int) -> list[tuple[str, str | tuple[str, ...], list]]:
    """The stages of the shared search (``--shared-search``): equal norms first (so the strength stages after it
    tune the equalised addition), the method's own stages, then the later stages each with its idea off among
    the values (the start may carry it: a language's pick)."""
    _, own, _ = _search_space(cfg, neurons, n)
    out: list[tuple[str, str | tuple[str, ...], list]] = (
        [("equal norm", "equal_norm", [None, *cfg.equal_norms])] if cfg.equal_norms else [])
    out += own
    for stage, key, values in _later_stages(cfg, neurons):
        if stage == "two-phase":  # off: the first N tokens at full strength then unsteered, or every token steered
            off = [(None, None), *((n_tokens, None) for n_tokens in cfg.steer_tokens)]
        elif isinstance(key, tuple):  # the diffmean term: none (its layer and norm preservation with it)
            off = [tuple(False if f == "keep_norm" else None for f in key)]
        else:
            off = [False if key == "keep_norm" else None]
        out.append((stage, key, [*off, *values]))
    return out


def _shared_line(res: SweepResult) -> list[str]:
    """The shared setting (one for all languages) as a sentence, if the sweep found one."""
    sh = res.meta.get("shared")
    label = next((r["label"] for r in res.test if r["setting"].startswith("shared")), None)
    if not sh or label is None:
        return []
    what = "gated LPR" if _answers_gate(res.meta["config"]) else "gated rate"
    c = res.meta["config"]
    pick, low, floor = c.get("shared_pick", "mean"), sh.get("val_low_retention"), c.get("shared_floor")
    kept = pick == "floor" and keeps_floor(low, floor)
    if c.get("shared_search"):
        line = (f"One shared setting for all languages (searched as one, from the best of the per-language picks, "
                f"by {_PICK_RULE[pick]}: validation {what} mean "
                f"{sh['val_mean_gated_rate']:.2f}, worst language {sh['val_worst_gated_rate']:.2f}"
                + (f"; lowest retention {_f(low)}, floor {floor:g}{'' if kept else ' not kept'}"
                   if pick == "floor" else "") + f"): {label}")
    elif pick == "floor":
        line = (f"One shared setting for all languages (of the per-language best, the highest mean validation {what} "
                f"({sh['val_mean_gated_rate']:.2f}) "
                + (f"of those whose every language keeps retention >= {floor:g}; its lowest {_f(low)}" if kept else
                   f"of all: none keeps every language's retention >= {floor:g}; its lowest {_f(low)}")
                + f"): {label}")
    elif pick == "worst":
        line = (f"One shared setting for all languages (of the per-language best, the highest validation {what} for "
                f"the language it serves worst, {sh['val_worst_gated_rate']:.2f}; mean {sh['val_mean_gated_rate']:.2f}): "
                f"{label}")
    else:
        line = (f"One shared setting for all languages (of the per-language best, the highest mean validation {what}, "
                f"{sh['val_mean_gated_rate']:.2f}): {label}")
    options = res.meta.get("shared_options") or []
    rows = [[o["label"], f"{o['val_mean_gated_rate']:.2f}", f"{o['val_worst_gated_rate']:.2f} ({o['worst_lang']})",
             _f(o.get("val_low_retention")), _by_lang(o)] for o in options]
    head = ["mean", "worst (language)", "lowest retention", "by language"]
    out = [line, ""] + ([f"The options (each language's pick on every language; validation {what}):", "",
                         markdown_table(["setting", *head], rows).rstrip("\n"), ""]
                        if len(rows) > 1 else [])
    tried = res.meta.get("shared_search")
    if tried:
        rows = [[t["stage"], t["label"], f"{t['val_mean_gated_rate']:.2f}",
                 f"{t['val_worst_gated_rate']:.2f} ({t['worst_lang']})", _f(t.get("val_low_retention")), _by_lang(t)]
                for t in tried]
        out += [f"The shared search (--shared-search; from the best option, each stage's values on every language, "
                f"kept where it ranks higher: {_PICK_RULE[pick]}, then "
                f"NLL; validation {what}):", "",
                markdown_table(["stage", "setting", *head], rows).rstrip("\n"), ""]
    return out


# each --shared-pick's ranking, in words
_PICK_RULE = {"mean": "mean", "worst": "worst language, then mean",
              "floor": "every language's retention at the floor, then mean"}


def _by_lang(row: dict) -> str:
    """A shared option's objective per language, compactly (rows written before it was recorded: empty)."""
    return " ".join(f"{lang} {v['gated']:.2f}" for lang, v in row.get("by_lang", {}).items())


def _seeds(n: int, first: int) -> str:
    """``n`` seeds from ``first``, in words: "1 seed (1)", "3 seeds (1001..)"."""
    return f"1 seed ({first})" if n == 1 else f"{n} seeds ({first}..)"


def _answers_gate(config: dict) -> bool:
    """Whether a sweep (as recorded) is an LCB sweep with the gate from the model's answers and the pick by gated LPR."""
    return bool(config.get("lcb")) and config.get("lcb_gate") == "answers"


def _scored_on(config: dict) -> str:
    """What a sweep of ``config`` (as recorded) scored its settings on: prompts or seeds from BOS."""
    return "LCB prompts" if config.get("lcb") else "prompts" if config.get("heldout") else "seeds"


def sweep_markdown(res: SweepResult) -> str:
    settings = list(dict.fromkeys(r["setting"] for r in res.test))
    langs = list(dict.fromkeys(r["lang"] for r in res.test))
    get = {(r["lang"], r["setting"]): r for r in res.test}
    objective = "lpr_gated" if _answers_gate(res.meta["config"]) else "gated_rate"
    best = [[l, b["val"]["label"], f"{b['val'][objective]:.2f}", _f(b["val"]["retention"])]
            for l, b in res.best.items() if b.get("val")]
    tests = []
    for l in langs + ["mean"]:
        cells = []
        for s in settings:
            rs = [get[(x, s)] for x in (langs if l == "mean" else [l]) if (x, s) in get]  # none: not applicable
            cells.append(" / ".join(_f(mean_of(rs, key)) for key in
                                    ("rate", "rate_lingua", "gated_rate", "fluent", "retention", "nll")))
        tests.append([l, *cells])
    c = res.meta["config"]
    method = c.get("method", "clamp")
    if c.get("lcb"):
        protocol = (f"on the Language Confusion Benchmark's cross-lingual okapi requests (asked in English to answer in "
                    f"the language; the model's chat template; {c['max_new_tokens']} tokens at temperature "
                    f"{c.get('temperature', 0.8)}). Picked on {c['val_prompts']} validation prompts per language x "
                    f"{_seeds(c['val_samples'], 1001)} by "
                    + ("gated LPR (answers passing LCB's line check and the fluency gate, the gate set from the "
                       "unsteered answers to the validation requests behind the system prompt)" if _answers_gate(c)
                       else "gated rate")
                    + f" (ties: lower NLL); then the settings on "
                    f"{c['test_prompts']} other prompts per language (other requests) x {_seeds(c['test_samples'], 1)}; "
                    f"none: the unsteered answers; system prompt: the same requests behind a system message "
                    f"asking for the language, unsteered"
                    + ("; every steered setting answers the requests behind that system message too (--lcb-system: "
                       "steering on top of prompting; retention against the system prompt's answers)"
                       if c.get("lcb_system") else ""))
    elif c.get("heldout"):
        protocol = (f"from prompts of {c['heldout']}: a setting towards a language continues the other languages' "
                    f"prompts (the off-diagonal cells of cross-steering; {c['max_new_tokens']} tokens). Picked on "
                    f"{c['val_prompts']} validation prompts per language x {_seeds(c['val_samples'], 1001)} by "
                    f"gated rate (ties: lower NLL); then the settings on {c['test_prompts']} fresh prompts per "
                    f"language x {_seeds(c['test_samples'], 1)}; none: the unsteered continuations")
    else:
        protocol = (f"from BOS: picked on validation seeds 1001.. by gated rate (ties: lower NLL); then the settings "
                    f"on fresh seeds 1..{c['test_samples']}")
    out = [f"Method {method}, best setting per language {protocol}", "",
           markdown_table(["lang", "best setting", "val gated LPR" if objective == "lpr_gated" else "val gated",
                           "val retention"], best),
           *_shared_line(res),
           "rate: lid.176 > 0.5; lingua: the second identifier; gated: target language and fluent; fluent: share of "
           "samples that pass the degeneracy gate whatever their language; retention: fluent share / the unsteered "
           "fluent share on the same seeds; NLL under the unsteered model", "",
           markdown_table(["lang", *[f"{s}: rate / lingua / gated / fluent / retention / NLL" for s in settings]],
                          tests).rstrip("\n"),
           "", *res.meta.get("notes", [])]
    out += _genre_lines(res.test, settings, langs)
    out += _own_lines(res.test, settings, langs)
    out += _genre_language_lines(res.test, settings, langs)
    lrows = lcb_rows(res.test)
    if lrows:
        out += ["", "Language confusion (LCB's metric: LPR = share of answers whose every line of 5 tokens or more "
                "lid.176 labels the language, above 0.3; gated LPR = share of all answers that pass LPR and the "
                "fluency gate; line acc = mean share of such lines; WPR (ja, zh) = share "
                "of passing answers without an English word; relevance = NLL of the answer after another request "
                "minus after its own, nats/token, under the unsteered model; on topic = share with a positive gain):",
                "", lcb_markdown(lrows).rstrip("\n")]
    ref = res.meta.get("reference_nll", {})
    if ref:
        out += ["", "Reference NLL of real text: " + ", ".join(f"{l} {v:.2f}" for l, v in ref.items())]
    trade = [[r["lang"], r["stage"], r["label"], _f(r["rate"]), _f(r.get("rate_lingua")), _f(r["gated_rate"]),
              _f(r.get("fluent")), _f(r.get("retention")), _f(r["nll"])] for r in res.stages]
    out += ["", f"Every setting tried (validation {_scored_on(c)}); the Pareto figure plots rate against "
            "retention:", "",
            markdown_table(["lang", "stage", "setting", "rate", "lingua", "gated", "fluent", "retention", "NLL"], trade)]
    return "\n".join(out)


def _genre_lines(test: list[dict], settings: list[str], langs: list[str]) -> list[str]:
    """A sweep on several genres: each setting's test scores genre by genre (mean over languages, and the
    lowest language's retention), so a setting's transfer across genres shows."""
    genres = list(dict.fromkeys(g for r in test for g in r.get("genres", {})))
    if not genres:
        return []
    get = {(r["lang"], r["setting"]): r for r in test}
    body = []
    for s in settings:
        cells = []
        for g in genres:
            gr = [get[(l, s)]["genres"][g] for l in langs if g in get.get((l, s), {}).get("genres", {})]
            low = min((x["retention"] for x in gr if x["retention"] is not None), default=None)
            cells.append(" / ".join(_f(mean_of(gr, k)) for k in ("rate", "gated_rate", "retention")) + f" / {_f(low)}")
        body.append([s, *cells])
    return ["", "By genre (the same settings on each genre's test prompts; mean over languages; figure genres.png): "
            "rate / gated / retention / lowest language's retention", "",
            markdown_table(["setting", *genres], body).rstrip("\n")]


def _own_lines(test: list[dict], settings: list[str], langs: list[str]) -> list[str]:
    """A sweep on held-out prompts: the model's own fluency in each language beside the retention baseline, and
    each steered setting's fluent share against it (own retention)."""
    get = {(r["lang"], r["setting"]): r for r in test}
    none = {l: get[(l, "none")] for l in langs if "own_fluent" in get.get((l, "none"), {})}
    if not none:
        return []
    steered = [s for s in settings if s != "none" and any("own_retention" in get.get((l, s), {}) for l in none)]
    body = [[l, _f(none[l]["fluent"]), _f(none[l]["own_fluent"]),
             *[" / ".join(_f(get.get((l, s), {}).get(k)) for k in ("fluent", "retention", "own_retention"))
               for s in steered]] for l in none]
    return ["", "The model's own fluency in each language (fluent share of the unsteered continuations of the "
            "test prompts written in it, under its gate) beside the retention baseline (the unsteered continuations "
            "of the other languages' prompts); each setting's fluent / retention / own retention (fluent share over "
            "the model's own):", "",
            markdown_table(["lang", "unsteered, other prompts", "unsteered, own prompts",
                            *[f"{s}: fluent / retention / own" for s in steered]], body).rstrip("\n")]


def _genre_language_lines(test: list[dict], settings: list[str], langs: list[str]) -> list[str]:
    """A sweep on several genres: each language on each genre, the unsteered fluent share of the other
    languages' prompts (retention's baseline) beside the model's own text in the language (its ceiling), then
    each steered setting's rate / retention / own retention, so a genre's weak language shows whether steering
    or the model's own fluency in the language limits it."""
    genres = list(dict.fromkeys(g for r in test for g in r.get("genres", {})))
    get = {(r["lang"], r["setting"]): r for r in test}
    if not genres or not any("own_fluent" in get.get((l, "none"), {}).get("genres", {}).get(g, {})
                             for l in langs for g in genres):
        return []
    body = []
    for s in settings:
        for l in langs:
            gs = get.get((l, s), {}).get("genres", {})
            if not gs:
                continue
            keys = ("fluent", "own_fluent") if s == "none" else ("rate", "retention", "own_retention")
            body.append([s, l, *[" / ".join(_f(gs.get(g, {}).get(k)) for k in keys) for g in genres]])
    return ["", "By genre and language: none gives the unsteered fluent share of the other languages' prompts "
            "(retention's baseline) / of the language's own prompts (the model's own text in it); each steered "
            "setting its rate / retention / own retention (fluent share over the model's own text of the genre):",
            "", markdown_table(["setting", "lang", *genres], body).rstrip("\n")]


def write_sweep(res: SweepResult, out: str | Path) -> None:
    from ..report import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.md", sweep_markdown(res))
    atomic_write_json(out / "sweep.json", {"best": res.best, "stages": res.stages, "test": res.test, "meta": res.meta})
    plots.pareto(res.stages, out / "tradeoff.png", title=f"{res.meta['config'].get('method', 'clamp')}: target rate "
                 f"against fluency retention, one point per setting (validation {_scored_on(res.meta['config'])})")
    if any(r.get("genres") for r in res.test):  # a sweep on several genres: the test settings genre by genre
        plots.genres(res.test, out / "genres.png", title=f"{res.meta['config'].get('method', 'clamp')}: test prompts by "
                     "genre, target rate against fluency retention (small: a language; large: the mean)")
