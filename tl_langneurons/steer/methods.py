"""Four ways to steer the language a model writes, each an ordinary list of TransformerLens
``fwd_hooks`` (definitions and sources: Kojima et al. 2024; Gurgurov et al. 2025; CLaS-Bench 2026;
Zhong et al. 2026):

- ``clamp``: overwrite the language's top/bottom-k neurons with their median (times a scale): the
  paper's method and the default;
- ``add``: add ``alpha * (mu_on - mu_off)`` to those neurons, keeping the token-to-token variation
  that overwriting destroys; optionally set a source language's top neurons to their off-language
  mean ("deactivate the source");
- ``diffmean``: at one layer, add ``alpha * ||h_L|| * u`` to the residual stream, with ``u`` the unit
  difference of the target's mean residual and the other languages' (or the source's);
- ``sparse``: at one layer, overwrite the K residual dimensions where the target's mean differs most
  with ``coef`` times the target's mean, optionally restoring each position's norm. The model's outlier
  dimensions (:func:`outlier_dims`) are excluded from the selection and never overwritten (Zhong et al.
  zero a model's known outlier dimensions in the difference); ``diffmean`` can exclude them too.

One builder per method (:func:`clamp`, :func:`add`, :func:`diffmean`, :func:`sparse`, each
``(neurons, lang, ...settings) -> fwd_hooks``), one dataclass that holds a method and its settings
(:class:`SteeringConfig`, whose fields the command line exposes; ``hooks(neurons, lang)``), and the same
through ``LanguageNeurons.hooks(lang, method=...)``. The hooks are plain ``(hook_name, fn)`` pairs: use
them in ``model.hooks(fwd_hooks=...)``, ``model.run_with_hooks(...)`` or around ``run_with_cache``.

Defaults (recorded here and in each builder): ``add`` alpha 1 (the neuron's mean moves from the other
languages' level to the target's); ``diffmean`` alpha 1 times the layer's typical residual norm
``resid_norms[L]``, at layer ``round(0.6 * n_layers)`` (middle-to-late, where CLaS-Bench and Zhong et
al. find language best steered); ``sparse`` K = 5% of d_model, coef 1, restore_norm True, same layer,
outlier dimensions excluded (factor :data:`DEFAULT_OUTLIER_FACTOR`; ``diffmean`` excludes none by default).
The residual methods need the per-language residual means that ``find`` records; results found
before then raise "found before residual means were recorded; run find again".

Positions: ``all`` (every position, the paper), ``last`` (the newest; clamp only) and
``generated``: only the positions the model writes. This uses the context variable
:data:`PROMPT_PASS` (``steer/positions.py``): generation runs its prompt pass (the first forward of
a KV-cached generation) inside :func:`prompt_pass`, which sets it to True, and ``generated`` hooks
return without touching the activation while it is True, so the prompt's keys and values in the
cache stay unsteered and every later (one-position) step is steered. Outside generation the variable
is unset (False) and ``generated`` steers every position, like ``all``; wrap a forward pass in
``with prompt_pass():`` to run it unsteered. Being a ``contextvars.ContextVar``, it is per thread
and per asyncio task.

Example:
    >>> cfg = SteeringConfig(method="diffmean", alpha=2.0)            # doctest: +SKIP
    >>> with model.hooks(fwd_hooks=cfg.hooks(neurons, "de")): ...     # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import Tensor

from ..config import check_numbers, number_or_name, option
from ..errors import LangNeuronsError
from ..model.sites import NeuronIndex, flat_units
from .interventions import clamp_hooks
from .positions import GEN_STEP, PROMPT_PASS, prompt_pass  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # the builders read a LanguageNeurons; detect/neurons.py calls them (LanguageNeurons.hooks)
    from ..detect.neurons import LanguageNeurons

METHODS = ("clamp", "add", "diffmean", "sparse")
POSITIONS = ("all", "last", "generated")
Hooks = list[tuple[str, Callable]]


def _inactive_when(hooks: Hooks, off: Callable[[], bool]) -> Hooks:
    """The same hooks, leaving the activation alone in the passes where ``off()`` is true."""
    def gate(fn: Callable) -> Callable:
        def gated(x, hook):
            return None if off() else fn(x, hook)
        return gated
    return [(name, gate(fn)) for name, fn in hooks]


def only_generated(hooks: Hooks) -> Hooks:
    """The same hooks, inactive during the prompt pass."""
    return _inactive_when(hooks, PROMPT_PASS.get)


def only_first_tokens(hooks: Hooks, n: int) -> Hooks:
    """The same hooks, active only in the generation passes that write the first ``n`` tokens (steps
    0 .. n-1, step 0 being the prompt pass); outside generation they act on every pass."""
    def past_n() -> bool:
        step = GEN_STEP.get()
        return step is not None and step >= n
    return _inactive_when(hooks, past_n)


def only_after_tokens(hooks: Hooks, n: int) -> Hooks:
    """The same hooks, active only in the generation passes after the first ``n`` tokens (steps n, n+1, ...):
    the second phase of a two-phase strength; outside generation they act on no pass (the first phase's
    hooks, :func:`only_first_tokens`, act there)."""
    def before_n() -> bool:
        step = GEN_STEP.get()
        return step is None or step < n
    return _inactive_when(hooks, before_n)


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


def add_hooks(index: NeuronIndex, neurons: torch.Tensor, deltas: torch.Tensor) -> Hooks:
    """Hooks that add ``deltas`` to ``neurons`` (global indices into ``index``) at every position."""
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    deltas = torch.as_tensor(deltas, dtype=torch.float32)
    hooks = []
    for sl in index.slices:
        sel = (neurons >= sl.offset) & (neurons < sl.offset + sl.size)
        if not sel.any():
            continue
        vec = torch.zeros(sl.size)
        vec.index_add_(0, neurons[sel] - sl.offset, deltas[sel])

        def fn(x, hook, _vec=vec):
            flat = flat_units(x)
            return (flat + _vec.to(device=flat.device, dtype=flat.dtype)).reshape(x.shape)

        hooks.append((sl.hook, fn))
    return hooks


def residual_add_hook(layer: int, vector: torch.Tensor, keep_norm: bool = False) -> Hooks:
    """``h_L <- h_L + vector`` at every position of ``blocks.L.hook_resid_post``; with ``keep_norm`` each
    position is then rescaled to its norm before the addition (norm-preserving, as ReCoVeR's restore_norm:
    the direction moves, the scale the next block expects does not)."""
    def fn(x, hook):
        h = x + vector.to(device=x.device, dtype=x.dtype)
        if keep_norm:
            h = h * (x.norm(dim=-1, keepdim=True) / h.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        return h
    return [(f"blocks.{layer}.hook_resid_post", fn)]


def residual_overwrite_hook(layer: int, dims: torch.Tensor, values: torch.Tensor, restore_norm: bool) -> Hooks:
    """``h_L[d] <- values`` for ``dims`` at every position, optionally rescaled to the old norm."""
    def fn(x, hook):
        h = x.clone()
        h[..., dims.to(x.device)] = values.to(device=x.device, dtype=x.dtype)
        if restore_norm:
            h = h * (x.norm(dim=-1, keepdim=True) / h.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        return h
    return [(f"blocks.{layer}.hook_resid_post", fn)]


def _finite(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise LangNeuronsError(f"{name} must be a finite number such as 1.5, got {v!r}")


def _positions(positions: str, allowed: tuple[str, ...] = ("all", "generated")) -> None:
    if positions not in allowed:
        raise LangNeuronsError(f"unknown positions {positions!r} for this method; use {', '.join(allowed)}")


def _gate(hooks: Hooks, positions: str) -> Hooks:
    return only_generated(hooks) if positions == "generated" else hooks


def default_layer(n_layers: int) -> int:
    """The residual methods' default layer: ``round(0.6 * n_layers)``, a middle-to-late layer (CLaS-Bench
    finds layer 20 of 32 best on Llama-3.1-8B, Zhong et al. layer 18 of 32 on Llama-2-7B)."""
    return min(n_layers - 1, round(0.6 * n_layers))


def default_n_dims(d_model: int) -> int:
    """The sparse method's default K: 5% of d_model, rounded (Zhong et al. use 400 of 4096, about 10%; 5%
    keeps more of the residual intact on small models)."""
    return max(1, round(0.05 * d_model))


DEFAULT_OUTLIER_FACTOR = 10.0


def outlier_dims(neurons: LanguageNeurons, layer: int | None = None,
                 factor: float | None = DEFAULT_OUTLIER_FACTOR) -> list[int]:
    """The outlier residual dimensions at ``blocks.L.hook_resid_post`` (ascending): the dimensions d whose
    ``mean_l |mu_L(l)[d]|`` (the absolute per-language mean, averaged over the languages) exceeds ``factor``
    times its median over the d_model dimensions. ``factor`` None or 0: none.

    Zhong et al. (EACL 2026; ku-nlp/language-specific-dimensions) zero a hand-made list of each model's
    known outlier dimensions in the difference before the top-K selection (Llama-2-7B: 1415 and 2533;
    Llama-2-13B: 2100, its massive-activation dimensions) and give no rule for other models; this is the
    rule that finds such dimensions from the recorded means. On Gemma-3-270M, dimension 163 is 850 times
    the median at the default layer 11 and would otherwise be the first one selected for every language.
    """
    means, _, layer = _layer(neurons, layer)
    factor = _outlier_factor(factor)
    if not factor:
        return []
    mag = means[:, layer].double().abs().mean(0)
    median = torch.quantile(mag, 0.5)
    return sorted(int(d) for d in torch.nonzero(mag > factor * median).flatten())


def _outlier_factor(factor: float | None) -> float:
    """The factor as a float (None: 0, no exclusion), or a clear error."""
    if factor is None:
        return 0.0
    _finite("--outlier-factor", factor)
    if factor != 0 and factor < 1:
        raise LangNeuronsError(f"--outlier-factor must be 0 (no exclusion) or at least 1 (a dimension is an outlier "
                               f"above that many times the median), got {factor!r}")
    return float(factor)


def _excluded(neurons: LanguageNeurons, layer: int, d: int, factor: float | None,
              exclude: Sequence[int] | None) -> list[int]:
    """The dimensions a residual method leaves alone: ``exclude`` if given, else the outliers by ``factor``."""
    if exclude is None:
        return outlier_dims(neurons, layer, factor)
    dims = sorted({int(x) for x in exclude})
    bad = [x for x in exclude if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < d]
    if bad:
        raise LangNeuronsError(f"--outlier-dims must be residual dimensions between 0 and {d - 1}, got {bad}")
    if len(dims) >= d:
        raise LangNeuronsError("--outlier-dims excludes every residual dimension; leave some to steer")
    return dims


def _word_or_none(s: str) -> str | None:
    """A word option whose ``none`` means unset."""
    s = s.strip()
    return None if s.lower() in ("", "none") else s


def _parse_outlier_factor(s: str) -> float | None:
    """``--outlier-factor``: a number; ``none`` for the method's default; ``off`` for 0."""
    s = s.strip().lower()
    if s in ("", "none", "default"):
        return None
    if s == "off":
        return 0.0
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 10, 0 (off) or none (the method's default), "
                                         f"got {s!r}") from None


def _layer(neurons: LanguageNeurons, layer: int | None) -> tuple[Tensor, Tensor, int]:
    means, norms = neurons.residual()
    n_layers = means.shape[1]
    layer = default_layer(n_layers) if layer is None else layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise LangNeuronsError(f"--layer must be between 0 and {n_layers - 1} (residual means were recorded for "
                               f"{n_layers} layers), got {layer!r}")
    return means, norms, layer


def _difference(neurons: LanguageNeurons, means: Tensor, layer: int, lang: str, source: str | None
                ) -> tuple[Tensor, Tensor]:
    """(mu_L(t), mu_L(t) - mu_L(s)) with s the source, or the mean of the other languages (float64)."""
    neurons._check_lang(lang)
    t = neurons.languages.index(lang)
    target = means[t, layer].double()
    if source is not None:
        _check_source(neurons, lang, source)
        other = means[neurons.languages.index(source), layer].double()
    else:
        rest = [i for i in range(len(neurons.languages)) if i != t]
        if not rest:
            raise LangNeuronsError("residual steering needs at least two languages (target minus the others)")
        other = means[rest, layer].double().mean(0)
    return target, target - other


def _check_source(neurons: LanguageNeurons, lang: str, source: str) -> None:
    neurons._check_lang(source)
    if source == lang:
        raise LangNeuronsError(f"source and target are both {lang!r}; choose another --source or none")


def clamp(neurons: LanguageNeurons, lang: str, which: str = "both", k: int | None = None,
          layers: str | Sequence[int] | None = None, value: str | float = "median", scale: float = 1.0,
          positions: str = "all", spread: str | None = None) -> Hooks:
    """Kojima et al.: ``a_n <- scale * value`` on ``lang``'s ``which`` neurons (value: the median on the
    language, "zero", or a number). ``positions``: all (the paper), last (the newest position) or generated
    (every position outside the prompt pass: the hooks of ``all``, inactive while the prompt runs). ``spread``
    "even" spreads the k neurons over the layers (``LanguageNeurons.selected``)."""
    if positions not in POSITIONS:
        raise LangNeuronsError(f"unknown clamp positions {positions!r}; use {', '.join(POSITIONS)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
        raise LangNeuronsError(f"clamp value must be a finite number, median or zero, got {value}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise LangNeuronsError(f"clamp scale must be a finite number, got {scale!r}")
    sel, medians = neurons.selected(lang, which, k, layers, spread)
    if value == "median":
        vals = medians
    elif value == "zero":
        vals = torch.zeros_like(medians)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        vals = torch.full_like(medians, float(value))
    else:
        raise LangNeuronsError(f"unknown clamp value {value!r}; use median, zero or a number")
    hooks = clamp_hooks(neurons.index, sel, vals * float(scale), "all" if positions == "generated" else positions)
    return _gate(hooks, positions)


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
    :func:`diffmean` term of that strength at ``layer`` (default :func:`default_layer`; towards the target,
    away from ``source`` where given; norm-preserving with ``keep_norm``); ``spread`` "even" spreads the k
    neurons over the layers (``LanguageNeurons.selected``; the source's too); ``equal_norm`` scales the
    addition to the languages' mean norm, as a whole or per quarter of the depth (:func:`equal_norm_factors`), so
    one alpha is one strength for every target."""
    _finite("--alpha", alpha)
    _positions(positions)
    neurons._check_lang(lang)
    li = neurons.languages.index(lang)
    sel, _ = neurons.selected(lang, which, k, layers, spread)
    delta = float(alpha) * (neurons.means[li].double() - neurons.means_off(lang).double())[sel]
    delta = delta * equal_norm_factors(neurons, lang, sel, equal_norm, which, k, layers, spread)
    hooks = add_hooks(neurons.index, sel, (delta * band_factors(neurons, sel, band_alphas)).float())
    if source is not None:
        _check_source(neurons, lang, source)
        src, _ = neurons.selected(source, "top", k, layers, spread)
        hooks += clamp_hooks(neurons.index, src, neurons.means_off(source)[src])
    if resid_alpha:
        hooks += diffmean(neurons, lang, layer, resid_alpha, source, keep_norm=keep_norm)
    return _gate(hooks, positions)


def diffmean(neurons: LanguageNeurons, lang: str, layer: int | None = None, alpha: float = 1.0,
             source: str | None = None, positions: str = "all", outlier_factor: float | None = None,
             exclude_dims: Sequence[int] | None = None, keep_norm: bool = False) -> Hooks:
    """CLaS-Bench: at ``blocks.L.hook_resid_post``, ``h <- h + alpha * resid_norms[L] * u`` at every position,
    ``u`` the unit vector of ``mu_L(t) - mean_{l != t} mu_L(l)`` (or ``- mu_L(source)``). alpha is relative
    to the layer's typical residual norm, so one range fits every layer and model; ``layer`` defaults to
    :func:`default_layer`. alpha = 0 is the identity. With ``outlier_factor`` (default None: off, as
    CLaS-Bench) the :func:`outlier_dims` of the layer are zeroed in the difference before it is normalised,
    so ``u`` is 0 there; ``exclude_dims`` names the dimensions instead of the rule. ``keep_norm`` rescales each
    position to its norm before the addition (norm-preserving, as ReCoVeR)."""
    _finite("--alpha", alpha)
    _positions(positions)
    means, norms, layer = _layer(neurons, layer)
    _, diff = _difference(neurons, means, layer, lang, source)
    out = _excluded(neurons, layer, means.shape[2], outlier_factor, exclude_dims)
    if out:
        diff = diff.clone()
        diff[out] = 0.0
    u = diff / (diff.norm() + 1e-8)
    return _gate(residual_add_hook(layer, (float(alpha) * float(norms[layer]) * u).float(), keep_norm), positions)


def sparse(neurons: LanguageNeurons, lang: str, layer: int | None = None, n_dims: int | None = None,
           coef: float = 1.0, restore_norm: bool = True, source: str | None = None,
           positions: str = "all", outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR,
           exclude_dims: Sequence[int] | None = None) -> Hooks:
    """Zhong et al.: at ``blocks.L.hook_resid_post``, the ``n_dims`` dimensions d with the largest
    ``|mu_L(t)[d] - mean_{l != t} mu_L(l)[d]|`` (or vs ``source``) are overwritten with ``coef * mu_L(t)[d]``
    at every position; with ``restore_norm`` each position is then rescaled to its norm before the
    overwrite. Defaults: :func:`default_layer`, :func:`default_n_dims`, coef 1 (the target's mean itself),
    restore_norm True (keeps the scale the next block expects).

    The layer's outlier dimensions (:func:`outlier_dims` with ``outlier_factor``, default
    :data:`DEFAULT_OUTLIER_FACTOR`; or the dimensions ``exclude_dims`` names) are left out of the selection,
    as Zhong et al. zero them in the difference, and never overwritten (at most d_model minus their number
    dimensions are). ``outlier_factor`` None or 0 selects among every dimension (the previous behaviour)."""
    _finite("--coef", coef)
    _positions(positions)
    means, _, layer = _layer(neurons, layer)
    d = means.shape[2]
    if n_dims is None:
        n_dims = default_n_dims(d)
    if isinstance(n_dims, bool) or not isinstance(n_dims, int) or n_dims < 1:
        raise LangNeuronsError(f"--n-dims must be at least 1, got {n_dims!r}")
    target, diff = _difference(neurons, means, layer, lang, source)
    score = diff.abs()
    out = _excluded(neurons, layer, d, outlier_factor, exclude_dims)
    if out:
        score[out] = -math.inf
    dims = torch.topk(score, min(n_dims, d - len(out))).indices
    return _gate(residual_overwrite_hook(layer, dims, (float(coef) * target[dims]).float(), bool(restore_norm)),
                 positions)


BUILDERS: dict[str, Callable[..., Hooks]] = {"clamp": clamp, "add": add, "diffmean": diffmean, "sparse": sparse}


# a setting read back from JSON (a sweep's picks): what each field of SteeringConfig must be where it is given
SETTING_FIELDS: dict[str, tuple[str, ...]] = {
    "method": ("string", "absent"), "which": ("string", "absent"), "k": ("integer", "null"),
    "value": ("string", "number", "absent"), "scale": ("number", "absent"), "positions": ("string", "absent"),
    "layers": ("string", "list", "null"), "layers.[]": ("integer",), "alpha": ("number", "absent"),
    "layer": ("integer", "null"), "n_dims": ("integer", "null"), "coef": ("number", "absent"),
    "restore_norm": ("bool", "absent"), "source": ("string", "null"), "outlier_factor": ("number", "null"),
    "steer_tokens": ("integer", "null"), "after_scale": ("number", "null"), "band_alphas": ("string", "null"),
    "resid_alpha": ("number", "null"), "keep_norm": ("bool", "absent"), "spread": ("string", "null"),
    "equal_norm": ("string", "null")}

# fields added after samples were first cached: a setting's key holds them only where they are set, so every
# setting made before them keeps its key (and its samples)
LATER_FIELDS = ("steer_tokens", "after_scale", "band_alphas", "resid_alpha", "keep_norm", "spread", "equal_norm")


def _setting_value(key: str, s: str):
    """One ``key=value`` of :func:`parse_setting` as the field's type: the kinds :data:`SETTING_FIELDS` gives
    it (a bool, a word, a whole number or a number; clamp's value a word unless it starts with a digit)."""
    s, kinds = s.strip(), SETTING_FIELDS[key]
    if s.lower() in ("none", "null"):
        return None
    if "bool" in kinds:
        return s.lower() in ("1", "true", "yes")
    if "string" in kinds and ("number" not in kinds or not s[:1].isdigit()):
        return s
    x = float(s)
    if "integer" in kinds:
        if x != int(x):
            raise ValueError(s)
        return int(x)
    return x


def parse_setting(spec: str, flag: str = "--setting") -> tuple[str, "SteeringConfig"]:
    """``NAME=METHOD[:key=value,...]`` (the fields of :class:`SteeringConfig`) -> (NAME, SteeringConfig); one
    clear line otherwise. NAME may hold "=" (``clamp k=100=clamp:k=100``): the split is at the "=" before a
    method name.

    Example:
        >>> parse_setting("eq=add:k=369,equal_norm=total,positions=generated")[1].label()
        'add k=369 a=1 eqnorm=total generated positions'
    """
    import re

    m = re.match(rf"^(.+?)=({'|'.join(METHODS)})(?::(.*))?$", spec.strip())
    if not m or not m.group(1).strip():
        raise LangNeuronsError(f"{flag} must be NAME=METHOD[:key=value,...] with METHOD one of "
                               f"{', '.join(METHODS)}, got {spec!r}")
    name, method, opts = m.group(1), m.group(2), m.group(3) or ""
    names = [f.name for f in fields(SteeringConfig)]
    kw = {"method": method.strip()}
    for item in filter(None, (x.strip() for x in opts.split(","))):
        key, sep, val = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in names or key == "method":
            raise LangNeuronsError(f"{flag} {name}: unknown option {item!r}; use key=value with one of "
                                   f"{', '.join(k for k in names if k != 'method')}")
        try:
            kw[key] = _setting_value(key, val)
        except ValueError:
            whole = "whole " if "integer" in SETTING_FIELDS[key] else ""
            raise LangNeuronsError(f"{flag} {name}: {key} must be a {whole}number, got {val!r}") from None
    try:
        return name.strip(), SteeringConfig(**kw)
    except LangNeuronsError as e:
        raise LangNeuronsError(f"{flag} {name.strip()}: {e}") from None


def setting_from_json(data: dict, where: str, field_: str, again: str) -> "SteeringConfig":
    """The :class:`SteeringConfig` of a setting read back from a JSON file ``where`` (at ``field_``, such as
    ``best.de``), its other keys ignored; one clear line naming the field where it is not a setting."""
    from ..results import check_fields

    check_fields(data, SETTING_FIELDS, where, again, prefix=field_)
    names = {f.name for f in fields(SteeringConfig)}
    try:
        return SteeringConfig(**{k: v for k, v in data.items() if k in names})
    except LangNeuronsError as e:
        raise LangNeuronsError(f"{where}: field {field_!r} is not a setting this version can use ({e}); {again}") from None


def neuron_count(neurons: LanguageNeurons, steering: "SteeringConfig", lang: str) -> int | None:
    """How many neurons ``steering`` acts on towards ``lang``: for clamp and add its neuron set at its k and
    layers (lape and actprob select at most k top neurons, and no bottom ones, so fewer than k, or none);
    None for diffmean and sparse, which steer the residual stream."""
    if not steering.neuron_level:
        return None
    return len(neurons.selected(lang, steering.which, steering.k, steering.layers, steering.spread)[0])


def full_count(neurons: LanguageNeurons, steering: "SteeringConfig") -> int:
    """The neurons a clamp or add setting names: k per set, two sets for both (one for lape and actprob)."""
    k = steering.k if steering.k is not None else neurons.k
    return k * (2 if steering.which == "both" and not neurons.one_sided else 1)


def check_not_empty(neurons: LanguageNeurons, steering: "SteeringConfig", lang: str) -> int | None:
    """:func:`neuron_count`, refused with one clear line when it is 0 (the steering would change nothing)."""
    n = neuron_count(neurons, steering, lang)
    if n == 0:
        if steering.which == "bottom" and neurons.one_sided:
            raise LangNeuronsError(f"--which bottom: {neurons.method} selects top neurons only (its bottom sets are "
                                   "empty), so nothing would be steered; use top or both")
        where = "" if steering.layers in (None, "all") else f" in layers {steering.layers}"
        raise LangNeuronsError(f"{neurons.method} selected no {steering.which} neurons for {lang!r}{where}, so nothing "
                               "would be steered; choose another language, or find neurons with another --method")
    return n


@dataclass
class SteeringConfig:
    """One intervention and its settings; ``hooks(neurons, lang)`` builds it for a target language."""

    method: str = option("clamp", "intervention: clamp (the paper), add, diffmean or sparse", choices=METHODS)
    which: str = "both"  # neuron set of clamp/add (Table 2 sets it per condition)
    k: int | None = option(None, at_least=1)  # neurons per set of clamp/add (None: the k of the result)
    value: str | float = option("median", "clamp value: median, zero, or a number", parse=number_or_name)
    scale: float = option(1.0, "multiply the clamp value")
    positions: str = option("all", "steer every position, the newest only (clamp), or only generated positions",
                            choices=POSITIONS)
    layers: str | list[int] | tuple[int, ...] | None = None  # clamp/add: choose the k neurons among these layers
    alpha: float = option(1.0, "strength of add (times mu_on - mu_off) and diffmean (times the residual norm)")
    layer: int | None = option(None, "layer of diffmean and sparse (none: 0.6 x the number of layers)", parse=int,
                               at_least=0)
    n_dims: int | None = option(None, "sparse: residual dimensions overwritten (none: 5% of d_model)", parse=int,
                                at_least=1)
    coef: float = option(1.0, "sparse: the target's mean on those dimensions is multiplied by this")
    restore_norm: bool = option(True, "sparse: do not rescale each position to its norm before the overwrite",
                                flag="--no-restore-norm")
    source: str | None = option(None, "source language: add deactivates its top neurons; diffmean and sparse "
                                "use it instead of the mean of the other languages; cross-steer: prompt for each prompt's language",
                                parse=str)
    outlier_factor: float | None = option(
        None, "diffmean and sparse: leave out the residual dimensions whose mean magnitude is above this many "
        "times the median (none: the method's default, 10 for sparse and off for diffmean; off: leave none out)",
        parse=_parse_outlier_factor)
    steer_tokens: int | None = option(
        None, "steer only while the first N tokens are written, then let the model write on unsteered (with the "
        "KV cache the steered tokens stay in its context); none: every token", parse=int, at_least=1)
    after_scale: float | None = option(
        None, "with --steer-tokens N (add, diffmean): after the first N tokens keep steering at this share of the "
        "strength (a two-phase strength: 0.25 steers at a quarter of alpha, and of a diffmean term, from token N on; "
        "a source's neurons stay deactivated); none: unsteered after N",
        parse=float)
    band_alphas: str | None = option(
        None, "add: alpha multiplied per layer band, SUBSET:FACTOR joined by + such as 0-8:1.5+13-17:0.5 (layers "
        "not named x1)", parse=str)
    resid_alpha: float | None = option(
        None, "add: also add a diffmean term of this strength (times the residual norm) at --layer (add plus "
        "diffmean)", parse=float)
    spread: str | None = option(
        None, "clamp, add: even spreads the k neurons over the layers (the best of the ranking, at most ceil(k / "
        "layers) from any one layer); none: the k best overall", parse=_word_or_none)
    keep_norm: bool = option(
        False, "diffmean, and add's diffmean term: rescale each position of the residual stream to its norm before "
        "the addition (norm-preserving, as ReCoVeR)")
    equal_norm: str | None = option(
        None, "add: scale each language's addition (mu_on - mu_off on its k neurons) to the mean norm over the "
        "result's languages, total (one factor) or quarters (one per quarter of the depth, layer x 4 // layers), so "
        "one alpha steers every target equally hard (a shared setting; --band-alphas multiply after it); none: as "
        "found", parse=_word_or_none)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LangNeuronsError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.positions not in POSITIONS:
            raise LangNeuronsError(f"unknown positions {self.positions!r}; use {', '.join(POSITIONS)}")
        if self.positions == "last" and self.method != "clamp":
            raise LangNeuronsError("positions=last is for clamp; use all or generated")
        for name in ("scale", "alpha", "coef"):
            _finite(f"--{name}", getattr(self, name))
        if not (self.value in ("median", "zero") or (isinstance(self.value, (int, float)) and not isinstance(
                self.value, bool) and math.isfinite(self.value))):
            raise LangNeuronsError(f"--value must be median, zero or a finite number, got {self.value}")
        # n_dims, k, steer_tokens (a whole number: 16.0 would key its samples apart from 16's) and layer (its upper
        # bound needs the model: checked in resolved())
        check_numbers(self)
        _outlier_factor(self.outlier_factor)
        self._check_later()
        if self.which not in ("both", "top", "bottom", "middle"):
            raise LangNeuronsError(f"unknown neuron set {self.which!r}; use top, bottom, both or middle")

    def _check_later(self) -> None:
        """The two-phase strength, the band strengths, the spread, equal norms, the diffmean term and norm
        preservation: numbers and names, and the methods they belong to."""
        if self.after_scale is not None:
            _finite("--after-scale", self.after_scale)
            if self.after_scale <= 0:
                raise LangNeuronsError(f"--after-scale must be above 0 (a share of the strength; leave it out to stop "
                                       f"steering after the first N tokens), got {self.after_scale!r}")
            if self.steer_tokens is None:
                raise LangNeuronsError("--after-scale is the strength after the first --steer-tokens N tokens; set "
                                       "--steer-tokens too")
            if self.method not in ("add", "diffmean"):
                raise LangNeuronsError(f"--after-scale scales alpha (add, diffmean), not {self.method}")
        if self.band_alphas is not None:
            if self.method != "add":
                raise LangNeuronsError(f"--band-alphas is for add, not {self.method}")
            parse_bands(self.band_alphas)
        if self.spread is not None:
            if self.spread != "even":
                raise LangNeuronsError(f"--spread must be even (or none), got {self.spread!r}")
            if not self.neuron_level:
                raise LangNeuronsError(f"--spread chooses neurons (clamp, add), not for {self.method}")
            if self.which == "middle":
                raise LangNeuronsError("--spread spreads the top and bottom sets; the middle set cannot be spread")
        if self.equal_norm is not None:
            if self.equal_norm not in EQUAL_NORMS:
                raise LangNeuronsError(f"--equal-norm must be {' or '.join(EQUAL_NORMS)} (or none), got {self.equal_norm!r}")
            if self.method != "add":
                raise LangNeuronsError(f"--equal-norm scales add's addition, not {self.method}")
            if self.which == "middle":
                raise LangNeuronsError("--equal-norm scales the top and bottom sets' additions; not the middle set")
        if self.resid_alpha is not None:
            _finite("--resid-alpha", self.resid_alpha)
            if self.method != "add":
                raise LangNeuronsError(f"--resid-alpha adds a diffmean term to add, not to {self.method}")
        if self.keep_norm is not False:
            if not isinstance(self.keep_norm, bool):
                raise LangNeuronsError(f"keep_norm must be true or false, got {self.keep_norm!r}")
            if self.keep_norm and not (self.method == "diffmean" or (self.method == "add" and self.resid_alpha)):
                raise LangNeuronsError("--keep-norm is for a residual addition: diffmean, or add with --resid-alpha")

    @property
    def neuron_level(self) -> bool:
        return self.method in ("clamp", "add")

    def key(self) -> dict:
        """What the samples depend on (cells are keyed by it). For clamp, the same keys as before
        methods existed, so earlier cells are read back."""
        # the later fields only where set: every setting made before they existed keeps its key (and its samples)
        later = {f: getattr(self, f) for f in LATER_FIELDS if getattr(self, f) is not None and getattr(self, f) is not False}
        if self.method == "clamp":
            return {"value": self.value, "scale": self.scale, "positions": self.positions,
                    "layers": self.layers if self.layers not in (None, "all") else None, **later}
        d = asdict(self)
        for f in ("which", "k", *LATER_FIELDS):
            d.pop(f)
        d.update(later)
        if not self.neuron_level:
            for f in ("value", "scale", "layers"):
                d.pop(f)
        else:
            d.pop("outlier_factor")
        return d

    def label(self) -> str:
        """A short readable name of the setting."""
        then = "" if self.after_scale is None else f" then x{self.after_scale:g}"
        return (self._label() + ("" if self.positions == "all" else f" {self.positions} positions")
                + ("" if self.steer_tokens is None else f" first {self.steer_tokens}{then}"))

    def _label(self) -> str:
        k = "" if self.k is None else f" k={self.k}"
        if self.neuron_level and self.which != "both":
            k = f" {self.which}{k}"
        if self.layers not in (None, "all"):  # the layer subset the k neurons are chosen in
            k += f" layers={self.layers if isinstance(self.layers, str) else ','.join(map(str, self.layers))}"
        if self.spread is not None:
            k += f" spread={self.spread}"
        if self.method == "clamp":
            return f"clamp{k} x{self.scale:g}"
        if self.method == "add":
            bands = (f" eqnorm={self.equal_norm}" if self.equal_norm else "") + (
                f" bands={self.band_alphas}" if self.band_alphas else "")
            at = "" if self.layer is None else f" L{self.layer}"  # None: the default layer (resolved() names it)
            resid = (f" +diffmean{at} a={self.resid_alpha:g}{' norm' if self.keep_norm else ''}"
                     if self.resid_alpha else "")
            return f"add{k} a={self.alpha:g}{bands}{resid}" + (f" src={self.source}" if self.source else "")
        out = "" if self.outlier_factor is None else (" out=off" if not self.outlier_factor
                                                      else f" out>{self.outlier_factor:g}")
        src = f" src={self.source}" if self.source else ""
        if self.method == "diffmean":
            return f"diffmean L{self.layer} a={self.alpha:g}{' norm' if self.keep_norm else ''}{out}{src}"
        return f"sparse L{self.layer} K={self.n_dims} c={self.coef:g}" + ("" if self.restore_norm else " raw") + out + src

    def for_prompt(self, prompt_lang: str | None, target: str | None = None) -> "SteeringConfig":
        """This setting for a prompt in ``prompt_lang`` (None: no prompt, e.g. from BOS): source "prompt"
        becomes that language, and a source equal to ``target`` is dropped (steering towards the prompt's
        own language has nothing to steer away from)."""
        src = prompt_lang if self.source == "prompt" else self.source
        if target is not None and src == target:
            src = None
        return self if src == self.source else replace(self, source=src)

    def resolved(self, neurons: LanguageNeurons) -> "SteeringConfig":
        """The config with its model-dependent defaults filled in (layer, n_dims) and the layer checked
        against the recorded residual means; clamp and add are returned unchanged."""
        if self.neuron_level:
            if self.method == "add" and self.resid_alpha:  # the layer of its diffmean term
                return replace(self, layer=_layer(neurons, self.layer)[2])
            return self
        means, _, layer = _layer(neurons, self.layer)
        n_dims = (default_n_dims(means.shape[2]) if self.n_dims is None else min(self.n_dims, means.shape[2]))
        return replace(self, layer=layer, n_dims=n_dims if self.method == "sparse" else self.n_dims)

    def hooks(self, neurons: LanguageNeurons, lang: str) -> Hooks:
        """The fwd_hooks of this intervention towards ``lang`` (the builder of ``method`` with these settings),
        limited to the first ``steer_tokens`` generation passes where that is set."""
        hooks = self._hooks(neurons, lang)
        if self.steer_tokens is None:
            return hooks
        first = only_first_tokens(hooks, self.steer_tokens)
        if not self.after_scale:
            return first
        s = self.after_scale  # the second phase: the same intervention at this share of its strength
        later = replace(self, alpha=self.alpha * s, resid_alpha=None if self.resid_alpha is None else self.resid_alpha * s,
                        steer_tokens=None, after_scale=None)
        return first + only_after_tokens(later._hooks(neurons, lang), self.steer_tokens)

    def _hooks(self, neurons: LanguageNeurons, lang: str) -> Hooks:
        cfg = self.resolved(neurons)
        if cfg.method == "clamp":
            return clamp(neurons, lang, cfg.which, cfg.k, cfg.layers, cfg.value, cfg.scale, cfg.positions, cfg.spread)
        if cfg.method == "add":
            return add(neurons, lang, cfg.alpha, cfg.which, cfg.k, cfg.layers, cfg.source, cfg.positions,
                       cfg.band_alphas, cfg.resid_alpha, cfg.layer, bool(cfg.keep_norm), cfg.spread, cfg.equal_norm)
        if cfg.method == "diffmean":
            return diffmean(neurons, lang, cfg.layer, cfg.alpha, cfg.source, cfg.positions, cfg.outlier_factor,
                            keep_norm=bool(cfg.keep_norm))
        factor = DEFAULT_OUTLIER_FACTOR if cfg.outlier_factor is None else cfg.outlier_factor
        return sparse(neurons, lang, cfg.layer, cfg.n_dims, cfg.coef, cfg.restore_norm, cfg.source, cfg.positions,
                      factor)
