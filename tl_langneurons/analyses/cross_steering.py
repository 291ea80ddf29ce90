"""Cross-language steering: prompt in one language, steer towards another (by any intervention), measure how
often the continuation is in the target language."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import check_options, option
from ..detect.corpus import MultilingualCorpus
from ..distributed import context as dist_context
from ..detect.neurons import LanguageNeurons
from ..evaluate.cells import Cell, CellRunner
from ..evaluate.control import EvaluateConfig
from ..evaluate.samples import SampleStore
from ..model.protocol import HookedModel
from ..provenance import write_md_json
from ..tables import markdown_matrix
from ..steer.setting import SteeringConfig
from ..steer.prompts import token_prompts


def _json_matrix(m: np.ndarray) -> list:
    """A matrix as nested lists, NaN (not measured) as None."""
    return [[None if np.isnan(v) else float(v) for v in row] for row in np.asarray(m, dtype=float)]


@dataclass
class CrossSteeringResult:
    """Rates of ``cross_steering`` [prompt language, target language]; ``save`` writes
    cross_steering.md, .json and .png.

    ``rate`` / ``none``: lid.176 target rate with / without steering towards the target;
    ``rate_lingua`` / ``none_lingua``: the same by lingua (NaN where lingua does not know the
    target); ``agreement``: share of the steered samples on which the two identifiers agree
    (target or not); ``fluent``: share of the steered samples that are not degenerate (distinct-token
    ratio at least ``thresholds[target]``, the 5th percentile of held-out text of the target in
    stretches as long as the samples); ``gated``: lid.176 target and fluent.
    """

    languages: list[str]
    rate: np.ndarray  # target rate steered towards the target
    none: np.ndarray  # target rate unsteered
    n_prompts: int
    samples: int
    max_new_tokens: int
    which: str
    k: int
    rate_lingua: np.ndarray | None = None
    none_lingua: np.ndarray | None = None
    agreement: np.ndarray | None = None
    fluent: np.ndarray | None = None
    gated: np.ndarray | None = None
    thresholds: dict[str, float] | None = None
    retention: np.ndarray | None = None  # fluent share steered / unsteered, same prompts and seeds
    method: str = "clamp"  # the intervention's label
    nll: np.ndarray | None = None  # mean NLL per token of the steered samples under the unsteered model
    none_nll: np.ndarray | None = None  # [source]: the same of the unsteered samples
    reference_nll: dict[str, float] | None = None  # NLL per token of real held-out text of each language
    run: dict | None = None  # what this run did: samples generated, sample cache hits and misses, seconds

    def off_diagonal(self) -> dict[str, float]:
        """Means over the cells whose prompt language is not the target (the steering that matters)."""
        off = ~np.eye(len(self.languages), dtype=bool)
        out = {}
        for name in ("rate", "rate_lingua", "gated", "fluent", "retention", "nll"):
            m = getattr(self, name)
            if m is not None:
                out[name] = float(np.nanmean(m[off])) if off.any() else float("nan")
        return out

    def markdown(self) -> str:
        L = self.languages
        md = (f"Target-language rate when continuing {self.n_prompts} held-out prompts x {self.samples} samples "
              f"({self.max_new_tokens} tokens) of the row language, steered towards the column language with "
              f"{self.method} (lid.176)\n\n" + markdown_matrix(L, L, self.rate, ".2f")
              + "\nUnsteered (rate of the column language)\n\n" + markdown_matrix(L, L, self.none, ".2f"))
        gate = ", ".join(f"{l} {t:.2f}" for l, t in (self.thresholds or {}).items())
        for name, title in (
                ("rate_lingua", "The same rate by a second identifier, lingua (among the languages in play)"),
                ("none_lingua", "Unsteered, by lingua"),
                ("agreement", "Agreement of lid.176 and lingua on the steered samples (both say target, or both not)"),
                ("fluent", "Share of fluent steered samples (distinct-token ratio at least the target's gate"
                 + (f": {gate}" if gate else "") + ")"),
                ("gated", "Gated rate: lid.176 target and fluent"),
                ("retention", "Fluency retention: fluent share steered / unsteered (same prompts, seeds and gate)"),
                ("nll", "NLL per token of the steered samples under the unsteered model")):
            m = getattr(self, name)
            if m is not None:
                md += f"\n{title}\n\n" + markdown_matrix(L, L, m, ".2f")
        if self.nll is not None:
            if self.none_nll is not None:
                md += ("\nUnsteered samples of each prompt language: " + ", ".join(
                    f"{l} {v:.2f}" for l, v in zip(L, self.none_nll)) + "\n")
            if self.reference_nll:
                md += ("Real held-out text of each language: " + ", ".join(
                    f"{l} {v:.2f}" for l, v in self.reference_nll.items()) + "\n")
        off = self.off_diagonal()
        md += ("\nMean over the off-diagonal cells: " + ", ".join(f"{k} {v:.3f}" for k, v in off.items()) + "\n")
        return md

    def to_json(self) -> dict:
        out = {"languages": self.languages, "rate": self.rate.tolist(), "none": self.none.tolist(),
               "n_prompts": self.n_prompts, "samples": self.samples, "max_new_tokens": self.max_new_tokens,
               "which": self.which, "k": self.k, "method": self.method, "off_diagonal": self.off_diagonal()}
        for name in ("rate_lingua", "none_lingua", "agreement", "fluent", "gated", "retention", "nll"):
            m = getattr(self, name)
            if m is not None:
                out[name] = _json_matrix(m)
        if self.none_nll is not None:
            out["none_nll"] = [None if not np.isfinite(v) else float(v) for v in self.none_nll]
        if self.thresholds is not None:
            out["thresholds"] = dict(self.thresholds)
        if self.reference_nll is not None:
            out["reference_nll"] = dict(self.reference_nll)
        if self.run is not None:  # differs between a resumed and an uninterrupted run
            out["run"] = self.run
        return out

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``cross_steering.md``, ``cross_steering.json`` and the heatmap ``cross_steering.png``."""
        from ..report import plots

        paths = write_md_json(directory, "cross_steering", self.markdown(), self.to_json()) + [Path(directory) / "cross_steering.png"]
        plots.matrix_heatmap(self.rate, self.languages, self.languages,
                             "Target rate: row = prompt language, column = target language", paths[2])
        return paths


@dataclass
class CrossSteerConfig:
    """How many held-out prompts, samples and tokens :func:`cross_steering` generates."""

    n_prompts: int = option(10, "held-out prompts per language", at_least=1)
    samples: int = option(2, "samples per prompt", at_least=1)
    max_new_tokens: int = option(32, "tokens to generate", at_least=1)
    seed: int = option(0, "seed of the prompt draw")
    which: str = option("both", "which neurons to steer (clamp, add)", choices=("both", "top", "bottom"))
    batch_size: int = option(100, "samples per batch (the samples do not depend on it)", at_least=1)
    # the intervention (clamp by default: the paper); its options come from SteeringConfig
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    # a setting of its own for some targets (e.g. a sweep's per-language best); the others take ``steering``
    per_target: dict[str, SteeringConfig] | None = None

    def __post_init__(self) -> None:
        check_options(self)


def cross_steering(model: HookedModel, neurons: LanguageNeurons, heldout: MultilingualCorpus,
                   config: CrossSteerConfig | None = None, *, progress: bool = True,
                   store: str | Path | SampleStore | None = None, distributed: bool | None = None,
                   **overrides) -> CrossSteeringResult:
    """Occurrence rate of the target language [source prompt language, target] when the target's
    neurons are steered while continuing held-out prompts of the source language; plus the
    unsteered rate of each target under each source ("none").

    The matrix is a set of cells of the one cell pipeline (:class:`~tl_langneurons.evaluate.cells.CellRunner`):
    each (target, setting, prompt, seeds) and each prompt's unsteered continuation is a cell, all generated
    together in batches that mix cells (left-padded prompts, see
    :func:`~tl_langneurons.steer.generation.generate_many`), through the sample store ``store`` (a folder,
    a :class:`~tl_langneurons.evaluate.samples.SampleStore`, or None: in memory): a sample cached by any
    experiment on these neurons (a prompted sweep's test cells, an earlier or killed cross-steer) is read
    back, never generated again. ``distributed``: spread the batches over the ranks of a torch.distributed
    group (None: whenever one of several processes is initialized); every rank returns the same result.

    Each steered cell is judged by lid.176 and by lingua (choosing among the neurons' languages
    lingua knows), their agreement, the share of fluent (not degenerate) samples, and the NLL of its
    samples under the unsteered model. ``per_target`` gives some targets a setting of their own (its
    ``which`` included). ``steering.source == "prompt"`` uses each row's prompt language
    as the source (add deactivates its neurons; diffmean and sparse steer away from its mean); a cell
    whose target is the source steers without one.
    """
    cfg = replace(config or CrossSteerConfig(), **overrides)
    neurons.check_model(model)
    langs = [l for l in neurons.languages if l in heldout.texts]
    prompts = {l: token_prompts(model.tokenizer, heldout.texts[l], cfg.n_prompts, cfg.seed, l) for l in langs}
    seeds = list(range(1, cfg.samples + 1))
    store = store if isinstance(store, SampleStore) else SampleStore(store)
    # the degeneracy gate of each target: from its held-out text in stretches as long as the samples
    ecfg = EvaluateConfig(languages=langs, samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, ablation_ks=[],
                          batch_size=cfg.batch_size)
    runner = CellRunner(model, neurons, ecfg, {l: heldout.texts[l] for l in langs}, None, progress, store,
                        dist_context(distributed))
    settings = {tgt: _setting(cfg, neurons, tgt) for tgt in langs}
    # one group of cells per (source, target): the target's setting on every prompt of the source, scored
    # beside its unsteered twin (the same prompts, scored on the target)
    measured = iter(runner.measure([[Cell(tgt, settings[tgt].for_prompt(src, tgt), seeds, p) for p in prompts[src]]
                                    for src in langs for tgt in langs]))
    L = len(langs)
    rate, base = np.zeros((L, L)), np.zeros((L, L))
    rate_lingua, base_lingua, agree, fluent, gated, retention, nll = (np.full((L, L), np.nan) for _ in range(7))
    none_nll = np.full(L, np.nan)
    for i, src in enumerate(langs):
        for j, tgt in enumerate(langs):
            m = next(measured)
            sc, b = m.score, m.baseline
            if tgt == src:  # the NLL of the unsteered continuations does not depend on the target
                none_nll[i] = _nan(b.nll)
            rate[i, j], base[i, j], fluent[i, j], gated[i, j], nll[i, j] = (
                sc.rate, b.rate, sc.fluent, sc.gated_rate, _nan(sc.nll))
            retention[i, j] = _nan(m.retention)
            rate_lingua[i, j], base_lingua[i, j], agree[i, j] = (_nan(sc.rate_lingua), _nan(b.rate_lingua),
                                                                 _nan(sc.agreement))
    meta = runner.meta()
    return CrossSteeringResult(langs, rate, base, cfg.n_prompts, cfg.samples, cfg.max_new_tokens, cfg.which, neurons.k,
                               rate_lingua=rate_lingua, none_lingua=base_lingua, agreement=agree, fluent=fluent,
                               gated=gated, thresholds={l: float(runner.thresholds[l]) for l in langs},
                               retention=retention, method=_label(cfg, neurons, langs), nll=nll, none_nll=none_nll,
                               reference_nll=dict(runner.ref_nll), run=meta["run"])


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _setting(cfg: CrossSteerConfig, neurons: LanguageNeurons, target: str) -> SteeringConfig:
    """The setting towards ``target``: its own (``per_target``), else ``steering`` on the neurons ``which``
    names; k filled in (the result's k where unset), so a cell's key is the sweep's for the same setting."""
    per = (cfg.per_target or {}).get(target)
    steer = replace(cfg.steering, which=cfg.which) if per is None else per
    return replace(steer, k=steer.k if steer.k is not None else neurons.k)


def _label(cfg: CrossSteerConfig, neurons: LanguageNeurons, langs: list[str]) -> str:
    """The intervention's label; with per-target settings, each target's."""
    if not cfg.per_target:
        return cfg.steering.resolved(neurons).label()
    return "per target: " + "; ".join(
        f"{t} {cfg.per_target.get(t, replace(cfg.steering, which=cfg.which)).resolved(neurons).label()}" for t in langs)
