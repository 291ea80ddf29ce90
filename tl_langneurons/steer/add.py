"""add (Gurgurov et al. 2025): add ``alpha * (mu_on - mu_off)`` to the language's neurons, keeping the
token-to-token variation that overwriting destroys; optionally set a source language's top neurons to their
off-language mean ("deactivate the source"). Beyond the method as published: a strength per layer band
(``band_alphas``), equal norms across languages (``equal_norm``) and a diffmean term (``resid_alpha``)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from ..errors import LangNeuronsError
from ..registry import Hooks
from .base import SELECTION, NeuronIntervention
from .diffmean import diffmean
from .interventions import add_hooks, clamp_hooks
from .positions import check_positions
from .residual import check_source, finite, layer_means

if TYPE_CHECKING:
    from ..detect.neurons import LanguageNeurons


def parse_bands(spec: str) -> list[tuple[str, float]]:
    """``--band-alphas``: layer subsets and their strength multipliers, ``SUBSET:FACTOR`` joined by ``+``
    (``0-8:1.5+13-17:0.5``; a subset is a band A-B, first, last or ends, as for ``--layers``); layers not
    named keep factor 1, and a later band overrides an earlier one where they overlap. One clear line for
    anything else (the layers themselves are checked against the model when the hooks are built)."""
    if not isinstance(spec, str) or not spec.strip():
        raise LangNeuronsError(f"--band-alphas must be SUBSET:FACTOR joined by + such as 0-8:1.5+13-17:0.5, got {spec!r}")
    out = []
    for part in spec.split("+"):
        subset, colon, factor = part.strip().rpartition(":")
        try:
            value = float(factor)
        except ValueError:
            value = math.nan
        a, dash, b = subset.strip().partition("-")
        known = subset.strip() in ("first", "last", "ends") or (dash and a.isdigit() and b.isdigit())
        if not colon or not known or not math.isfinite(value) or value < 0:
            raise LangNeuronsError(f"--band-alphas: {part.strip()!r} is not SUBSET:FACTOR with a layer subset (A-B, "
                                   "first, last, ends) and a factor of at least 0, such as 13-17:0.5")
        out.append((subset.strip(), value))
    return out


def band_factors(neurons: LanguageNeurons, sel: Tensor, spec: str | None) -> Tensor:
    """The strength multiplier of each neuron in ``sel`` (global indices) by its layer under ``spec``
    (:func:`parse_bands`; None: 1 everywhere), float64."""
    factors = torch.ones(len(sel), dtype=torch.float64)
    if not spec:
        return factors
    layers = torch.from_numpy(neurons.index.layers())[sel]
    for subset, factor in parse_bands(spec):
        factors[torch.isin(layers, torch.tensor(neurons.layer_subset(subset)))] = factor
    return factors


EQUAL_NORMS = ("total", "quarters")


def equal_norm_factors(neurons: LanguageNeurons, lang: str, sel: Tensor, how: str | None, which: str = "both",
                       k: int | None = None, layers: str | Sequence[int] | None = None,
                       spread: str | None = None) -> Tensor:
    """The multiplier of each of ``lang``'s selected neurons ``sel`` (global indices) that gives its addition
    ``mu_on - mu_off`` the mean norm over the result's languages (all of them, whichever a sweep targets; each at
    the same which, k, layers and spread): ``how`` "total", one factor for the whole addition, or "quarters", one
    per quarter of the depth (``layer * 4 // n_layers``: on 18 layers 0-4, 5-8, 9-13, 14-17; not the first / last
    quarters of ``layers``, which are ``n_layers // 4`` layers each), each quarter to the mean norm there of the
    languages whose addition there is not zero. The factors are not capped: a language with a few weak neurons
    in a quarter gets them pushed as hard as the others' many. None: 1 everywhere (float64). ``band_alphas``
    multiply after this, so with bands the norms differ again by the bands' factors.

    Why: one alpha moves languages unequally. On Gemma-3-270M at k = 369 the addition's norm is 7.7 for fr and
    es and 11-17 for en, zh and ja, and zh's last quarter is the largest; a shared setting then either
    under-steers fr and es or over-steers zh. Equal norms make alpha one strength for every language."""
    factors = torch.ones(len(sel), dtype=torch.float64)
    if how is None:
        return factors
    if how not in EQUAL_NORMS:
        raise LangNeuronsError(f"--equal-norm must be {' or '.join(EQUAL_NORMS)} (or none), got {how!r}")
    if which not in ("both", "top", "bottom"):
        raise LangNeuronsError("--equal-norm scales the top and bottom sets' additions; not the middle set")
    groups = 1 if how == "total" else 4
    group_of = torch.from_numpy(neurons.index.layers()) * groups // neurons.index.n_layers  # each neuron's quarter

    def norms(l: str, s: Tensor) -> Tensor:
        d = (neurons.means[neurons.languages.index(l)].double() - neurons.means_off(l).double())[s]
        return torch.zeros(groups, dtype=torch.float64).index_add_(0, group_of[s], d * d).sqrt()

    own = norms(lang, sel)
    every = torch.stack([norms(l, neurons.selected(l, which, k, layers, spread)[0]) for l in neurons.languages])
    ref = every.sum(0) / (every > 0).sum(0).clamp_min(1)  # the mean over the languages with neurons there
    per_group = torch.where(own > 0, ref / own.clamp_min(1e-30), torch.ones_like(own))
    return per_group[group_of[sel]]


def add_deltas(neurons: LanguageNeurons, lang: str, alpha: float = 1.0, which: str = "both", k: int | None = None,
               layers: str | Sequence[int] | None = None, spread: str | None = None, band_alphas: str | None = None,
               equal_norm: str | None = None) -> tuple[Tensor, Tensor]:
    """(the selected neurons, what :func:`add` adds to each): ``alpha * (mu_on - mu_off)``, times the equal-norm
    factors and the band factors (float32)."""
    neurons.check_language(lang)
    li = neurons.languages.index(lang)
    sel, _ = neurons.selected(lang, which, k, layers, spread)
    delta = float(alpha) * (neurons.means[li].double() - neurons.means_off(lang).double())[sel]
    delta = delta * equal_norm_factors(neurons, lang, sel, equal_norm, which, k, layers, spread)
    return sel, (delta * band_factors(neurons, sel, band_alphas)).float()


def add(neurons: LanguageNeurons, lang: str, alpha: float = 1.0, which: str = "both", k: int | None = None,
        layers: str | Sequence[int] | None = None, source: str | None = None, positions: str = "all",
        band_alphas: str | None = None, resid_alpha: float | None = None, layer: int | None = None,
        keep_norm: bool = False, spread: str | None = None, equal_norm: str | None = None) -> Hooks:
    """Gurgurov et al.: ``a_n <- a_n + alpha * (mu_on(n, t) - mu_off(n, t))`` on the target's ``which``
    neurons (k, layers as for clamp), every other activation intact. With ``source``, the source's top-k
    neurons (same k and layers) are also set to ``mu_off(n, s)`` ("deactivate the source"; applied after
    the addition where the two sets share a neuron). alpha = 1 moves a neuron's mean from the other
    languages' level to the target's; alpha = 0 is the identity.

    Beyond the method as published: ``band_alphas`` (:func:`parse_bands`) multiplies alpha by layer band (a
    strength per band, e.g. weaker in the last layers where steering costs fluency); ``resid_alpha`` adds a
    :func:`~tl_langneurons.steer.diffmean.diffmean` term of that strength at ``layer`` (default
    :func:`~tl_langneurons.steer.residual.default_layer`; towards the target, away from ``source`` where given;
    norm-preserving with ``keep_norm``); ``spread`` "even" spreads the k neurons over the layers
    (``LanguageNeurons.selected``; the source's too); ``equal_norm`` scales the addition to the languages' mean
    norm, as a whole or per quarter of the depth (:func:`equal_norm_factors`), so one alpha is one strength for
    every target."""
    finite("--alpha", alpha)
    check_positions(positions, ("all", "generated"), "add")
    sel, delta = add_deltas(neurons, lang, alpha, which, k, layers, spread, band_alphas, equal_norm)
    hooks = add_hooks(neurons.index, sel, delta, positions)
    if source is not None:
        check_source(neurons, lang, source)
        src, _ = neurons.selected(source, "top", k, layers, spread)
        hooks += clamp_hooks(neurons.index, src, neurons.means_off(source)[src], positions)
    if resid_alpha:
        hooks += diffmean(neurons, lang, layer, resid_alpha, source, positions, keep_norm=keep_norm)
    return hooks


class Add(NeuronIntervention):
    """``a_n <- a_n + alpha * (mu_on - mu_off)`` on the selected neurons (:func:`add`)."""

    name = "add"
    fields = (*SELECTION, "alpha", "source", "band_alphas", "equal_norm", "resid_alpha", "layer", "keep_norm")
    scaled = ("alpha", "resid_alpha")
    axes = ("k", "alpha", "layers", "which", "positions")
    key_drops = ("outlier_factor",)

    def check(self) -> None:
        super().check()
        s = self.setting
        if s.band_alphas is not None:
            parse_bands(s.band_alphas)
        if s.equal_norm is not None:
            if s.equal_norm not in EQUAL_NORMS:
                raise LangNeuronsError(f"--equal-norm must be {' or '.join(EQUAL_NORMS)} (or none), got {s.equal_norm!r}")
            if s.which == "middle":
                raise LangNeuronsError("--equal-norm scales the top and bottom sets' additions; not the middle set")
        if s.resid_alpha is not None:
            finite("--resid-alpha", s.resid_alpha)
        if s.keep_norm and not s.resid_alpha:
            raise LangNeuronsError("--keep-norm is for a residual addition: diffmean, or add with --resid-alpha")

    def resolved(self, neurons: LanguageNeurons):
        s = self.setting
        if s.resid_alpha:  # the layer of its diffmean term
            return replace(s, layer=layer_means(neurons, s.layer)[2])
        return s

    def describe(self) -> str:
        s = self.setting
        bands = (f" eqnorm={s.equal_norm}" if s.equal_norm else "") + (f" bands={s.band_alphas}" if s.band_alphas else "")
        at = "" if s.layer is None else f" L{s.layer}"  # None: the default layer (resolved() names it)
        resid = f" +diffmean{at} a={s.resid_alpha:g}{' norm' if s.keep_norm else ''}" if s.resid_alpha else ""
        return f"add{self.selection_label()} a={s.alpha:g}{bands}{resid}" + (f" src={s.source}" if s.source else "")

    def deltas(self, neurons: LanguageNeurons, lang: str) -> tuple[Tensor, Tensor]:
        """(neurons, the addition to each) towards ``lang`` (:func:`add_deltas`)."""
        s = self.setting
        return add_deltas(neurons, lang, s.alpha, s.which, s.k, s.layers, s.spread, s.band_alphas, s.equal_norm)

    def build(self, neurons: LanguageNeurons, lang: str, positions: str) -> Hooks:
        s = self.setting
        return add(neurons, lang, s.alpha, s.which, s.k, s.layers, s.source, positions, s.band_alphas,
                   s.resid_alpha, s.layer, bool(s.keep_norm), s.spread, s.equal_norm)

    @classmethod
    def sweep_start(cls, cfg, neurons: LanguageNeurons, n: int) -> dict:
        return {**super().sweep_start(cfg, neurons, n), "alpha": 1.0}

    @classmethod
    def needs_residual(cls, cfg) -> bool:
        return bool(cfg.resid_alphas)
