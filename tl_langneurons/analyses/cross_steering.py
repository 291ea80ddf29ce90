"""Cross-language steering: prompt in one language, clamp another's neurons, measure how often the
continuation is in the clamped language."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import option
from ..detect.corpus import MultilingualCorpus
from ..detect.neurons import LanguageNeurons
from ..errors import LangNeuronsError
from ..evaluate.metrics import (
    agreement,
    distinct_threshold,
    is_degenerate,
    is_language,
    is_language_lingua,
    lingua_knows,
)
from ..model.protocol import HookedModel
from ..progress import progress_bar
from ..provenance import write_md_json
from ..report.tables import markdown_matrix
from ..steer.generation import generate_many, sample_nll
from ..steer.methods import SteeringConfig
from ..steer.prompts import token_prompts


def _json_matrix(m: np.ndarray) -> list:
    """A matrix as nested lists, NaN (not measured) as None."""
    return [[None if np.isnan(v) else float(v) for v in row] for row in np.asarray(m, dtype=float)]


@dataclass
class CrossSteeringResult:
    """Rates of ``cross_steering`` [prompt language, target language]; ``save`` writes
    cross_steering.md, .json and .png.

    ``rate`` / ``none``: lid.176 target rate with / without the target's neurons clamped;
    ``rate_lingua`` / ``none_lingua``: the same by lingua (NaN where lingua does not know the
    target); ``agreement``: share of the clamped samples on which the two identifiers agree
    (target or not); ``fluent``: share of the clamped samples that are not degenerate (distinct-token
    ratio at least ``thresholds[target]``, the 5th percentile of held-out text of the target in
    stretches as long as the samples); ``gated``: lid.176 target and fluent.
    """

    languages: list[str]
    rate: np.ndarray  # target rate with the target's neurons clamped
    none: np.ndarray  # target rate without clamping
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
              + "\nWithout clamping (rate of the column language)\n\n" + markdown_matrix(L, L, self.none, ".2f"))
        if self.rate_lingua is not None:
            md += ("\nThe same rate by a second identifier, lingua (among the languages in play)\n\n"
                   + markdown_matrix(L, L, self.rate_lingua, ".2f"))
        if self.none_lingua is not None:
            md += "\nWithout clamping, by lingua\n\n" + markdown_matrix(L, L, self.none_lingua, ".2f")
        if self.agreement is not None:
            md += ("\nAgreement of lid.176 and lingua on the clamped samples (both say target, or both not)\n\n"
                   + markdown_matrix(L, L, self.agreement, ".2f"))
        if self.fluent is not None:
            gate = ", ".join(f"{l} {t:.2f}" for l, t in (self.thresholds or {}).items())
            md += ("\nShare of fluent clamped samples (distinct-token ratio at least the target's gate"
                   + (f": {gate}" if gate else "") + ")\n\n" + markdown_matrix(L, L, self.fluent, ".2f"))
        if self.gated is not None:
            md += "\nGated rate: lid.176 target and fluent\n\n" + markdown_matrix(L, L, self.gated, ".2f")
        if self.retention is not None:
            md += ("\nFluency retention: fluent share steered / unsteered (same prompts, seeds and gate)\n\n"
                   + markdown_matrix(L, L, self.retention, ".2f"))
        if self.nll is not None:
            md += ("\nNLL per token of the steered samples under the unsteered model\n\n"
                   + markdown_matrix(L, L, self.nll, ".2f"))
            if self.none_nll is not None:
                md += ("\nUnsteered samples of each prompt language: " + ", ".join(
                    f"{l} {v:.2f}" for l, v in zip(L, self.none_nll)) + "\n")
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
        return out

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``cross_steering.md``, ``cross_steering.json`` and the heatmap ``cross_steering.png``."""
        from ..report import plots

        paths = write_md_json(directory, "cross_steering", self.markdown(), self.to_json()) + [Path(directory) / "cross_steering.png"]
        plots.matrix_heatmap(self.rate, self.languages, self.languages,
                             "Target rate: row = prompt language, column = clamped language", paths[2])
        return paths


@dataclass
class CrossSteerConfig:
    """How many held-out prompts, samples and tokens :func:`cross_steering` generates."""

    n_prompts: int = option(10, "held-out prompts per language")
    samples: int = option(2, "samples per prompt")
    max_new_tokens: int = option(32, "tokens to generate")
    seed: int = option(0, "seed of the prompt draw")
    which: str = option("both", "which neurons to clamp", choices=("both", "top", "bottom"))
    # the intervention (clamp by default: the paper); its options come from SteeringConfig
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    # a setting of its own for some targets (e.g. a sweep's per-language best); the others take ``steering``
    per_target: dict[str, SteeringConfig] | None = None

    def __post_init__(self) -> None:
        if min(self.n_prompts, self.samples, self.max_new_tokens) < 1:
            raise LangNeuronsError("n_prompts, samples and max_new_tokens must be at least 1")


def cross_steering(model: HookedModel, neurons: LanguageNeurons, heldout: MultilingualCorpus,
                   config: CrossSteerConfig | None = None, *, progress: bool = True,
                   unsteered: dict | None = None, **overrides) -> CrossSteeringResult:
    """Occurrence rate of the target language [source prompt language, target] when the target's
    neurons are clamped while continuing held-out prompts of the source language; plus the
    unclamped rate of each target under each source ("none").

    Every prompt x seed of a cell is generated in one batched call (left-padded prompts, see
    :func:`~tl_langneurons.steer.generation.generate_many`), the unclamped run once per source.
    Each clamped cell is judged by lid.176 and by lingua (choosing among the neurons' languages
    lingua knows), their agreement, the share of fluent (not degenerate) samples, and the NLL of its
    samples under the unsteered model. ``per_target`` gives some targets a setting of their own (its
    ``which`` included). ``steering.source == "prompt"`` uses each row's prompt language
    as the source (add deactivates its neurons; diffmean and sparse steer away from its mean); a cell
    whose target is the source steers without one.

    ``unsteered``: a dict kept by the caller across calls (e.g. one per intervention compared) in which
    the unsteered continuations are stored by their prompts, seeds and length, so they are generated once.
    """
    cfg = replace(config or CrossSteerConfig(), **overrides)
    n_prompts, samples, max_new_tokens, seed, which = cfg.n_prompts, cfg.samples, cfg.max_new_tokens, cfg.seed, cfg.which
    neurons.check_model(model)
    langs = [l for l in neurons.languages if l in heldout.texts]
    in_play = [l for l in neurons.languages if lingua_knows(l)]
    prompts = {l: token_prompts(model.tokenizer, heldout.texts[l], n_prompts, seed, l) for l in langs}
    # the degeneracy gate of each target, from its held-out text in stretches as long as the samples
    thresholds = {l: float(distinct_threshold(model.tokenizer, heldout.texts[l], window=max_new_tokens)) for l in langs}
    L = len(langs)
    rate, base = np.zeros((L, L)), np.zeros((L, L))
    rate_lingua, base_lingua, agree, fluent, gated, retention, nll = (np.full((L, L), np.nan) for _ in range(7))
    none_nll = np.full(L, np.nan)
    seeds = list(range(1, samples + 1))
    bar = progress_bar(total=L * (L + 1), desc="cross-steering", unit="cell", disable=not progress)
    for i, src in enumerate(langs):
        requests = [(p, s) for p in prompts[src] for s in seeds]
        key = (id(model), json.dumps([prompts[src], seeds, max_new_tokens]))
        if unsteered is not None and key in unsteered:
            plain_out, none_nll[i] = unsteered[key]
        else:
            plain_out = generate_many(model, requests, max_new_tokens=max_new_tokens)
            none_nll[i] = float(np.nanmean(sample_nll(model, plain_out)))
            if unsteered is not None:
                unsteered[key] = (plain_out, none_nll[i])
        plain, plain_tokens = [s.text for s in plain_out], [s.tokens for s in plain_out]
        bar.update(1)
        for j, tgt in enumerate(langs):
            base[i, j] = np.mean(is_language(plain, tgt))
            per = (cfg.per_target or {}).get(tgt)
            steer = (replace(cfg.steering, which=which) if per is None else per).for_prompt(src, tgt)
            hooks = steer.hooks(neurons, tgt)
            out = generate_many(model, requests, max_new_tokens=max_new_tokens, fwd_hooks=hooks)
            texts = [s.text for s in out]
            lid = is_language(texts, tgt)
            rate[i, j] = np.mean(lid)
            ok = [not is_degenerate(s.tokens, thresholds[tgt]) for s in out]
            fluent[i, j] = np.mean(ok)
            plain_ok = np.mean([not is_degenerate(t, thresholds[tgt]) for t in plain_tokens])
            retention[i, j] = fluent[i, j] / plain_ok if plain_ok else np.nan
            gated[i, j] = np.mean([a and b for a, b in zip(lid, ok)])
            nll[i, j] = float(np.nanmean(sample_nll(model, out)))
            if tgt in in_play:
                base_lingua[i, j] = np.mean(is_language_lingua(plain, tgt, in_play))
                second = is_language_lingua(texts, tgt, in_play)
                rate_lingua[i, j] = np.mean(second)
                agree[i, j] = agreement(lid, second)
            bar.update(1)
    bar.close()
    return CrossSteeringResult(langs, rate, base, n_prompts, samples, max_new_tokens, which, neurons.k,
                               rate_lingua=rate_lingua, none_lingua=base_lingua, agreement=agree, fluent=fluent,
                               gated=gated, thresholds=thresholds, retention=retention,
                               method=_label(cfg, neurons, langs), nll=nll, none_nll=none_nll)


def _label(cfg: CrossSteerConfig, neurons: LanguageNeurons, langs: list[str]) -> str:
    """The intervention's label; with per-target settings, each target's."""
    if not cfg.per_target:
        return cfg.steering.resolved(neurons).label()
    return "per target: " + "; ".join(
        f"{t} {cfg.per_target.get(t, replace(cfg.steering, which=cfg.which)).resolved(neurons).label()}" for t in langs)
