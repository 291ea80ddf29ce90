"""What the residual-stream interventions (diffmean, sparse, add's diffmean term) share: the hooks that add to
or overwrite ``blocks.L.hook_resid_post``, the default layer and width, the model's outlier dimensions, and the
target-minus-others difference of the per-language residual means that ``find`` records.

Results found before those means were recorded raise "found before residual means were recorded; run find
again" (:meth:`LanguageNeurons.residual`).
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from ..errors import LangNeuronsError
from ..registry import Hooks

if TYPE_CHECKING:
    from ..detect.neurons import LanguageNeurons

DEFAULT_OUTLIER_FACTOR = 10.0


def residual_add_hook(layer: int, vector: Tensor, keep_norm: bool = False) -> Hooks:
    """``h_L <- h_L + vector`` at every position of ``blocks.L.hook_resid_post``; with ``keep_norm`` each
    position is then rescaled to its norm before the addition (norm-preserving, as ReCoVeR's restore_norm:
    the direction moves, the scale the next block expects does not)."""
    def fn(x, hook):
        h = x + vector.to(device=x.device, dtype=x.dtype)
        if keep_norm:
            h = h * (x.norm(dim=-1, keepdim=True) / h.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        return h
    return [(f"blocks.{layer}.hook_resid_post", fn)]


def residual_overwrite_hook(layer: int, dims: Tensor, values: Tensor, restore_norm: bool) -> Hooks:
    """``h_L[d] <- values`` for ``dims`` at every position, optionally rescaled to the old norm."""
    def fn(x, hook):
        h = x.clone()
        h[..., dims.to(x.device)] = values.to(device=x.device, dtype=x.dtype)
        if restore_norm:
            h = h * (x.norm(dim=-1, keepdim=True) / h.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        return h
    return [(f"blocks.{layer}.hook_resid_post", fn)]


def finite(name: str, v: float) -> None:
    """One clear line unless ``v`` is a finite number (not a bool)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise LangNeuronsError(f"{name} must be a finite number such as 1.5, got {v!r}")


def default_layer(n_layers: int) -> int:
    """The residual methods' default layer: ``round(0.6 * n_layers)``, a middle-to-late layer (CLaS-Bench
    finds layer 20 of 32 best on Llama-3.1-8B, Zhong et al. layer 18 of 32 on Llama-2-7B)."""
    return min(n_layers - 1, round(0.6 * n_layers))


def default_n_dims(d_model: int) -> int:
    """The sparse method's default K: 5% of d_model, rounded (Zhong et al. use 400 of 4096, about 10%; 5%
    keeps more of the residual intact on small models)."""
    return max(1, round(0.05 * d_model))


def layer_means(neurons: LanguageNeurons, layer: int | None) -> tuple[Tensor, Tensor, int]:
    """(per-language residual means [lang, layer, d], typical norms [layer], the layer): ``layer`` None is
    :func:`default_layer`; one clear line for a layer the means were not recorded for."""
    means, norms = neurons.residual()
    n_layers = means.shape[1]
    layer = default_layer(n_layers) if layer is None else layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise LangNeuronsError(f"--layer must be between 0 and {n_layers - 1} (residual means were recorded for "
                               f"{n_layers} layers), got {layer!r}")
    return means, norms, layer


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
    means, _, layer = layer_means(neurons, layer)
    factor = check_outlier_factor(factor)
    if not factor:
        return []
    mag = means[:, layer].double().abs().mean(0)
    median = torch.quantile(mag, 0.5)
    return sorted(int(d) for d in torch.nonzero(mag > factor * median).flatten())


def check_outlier_factor(factor: float | None) -> float:
    """The factor as a float (None: 0, no exclusion), or a clear error."""
    if factor is None:
        return 0.0
    finite("--outlier-factor", factor)
    if factor != 0 and factor < 1:
        raise LangNeuronsError(f"--outlier-factor must be 0 (no exclusion) or at least 1 (a dimension is an outlier "
                               f"above that many times the median), got {factor!r}")
    return float(factor)


def parse_outlier_factor(s: str) -> float | None:
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


def excluded(neurons: LanguageNeurons, layer: int, d: int, factor: float | None,
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


def check_source(neurons: LanguageNeurons, lang: str, source: str) -> None:
    """The source is one of the neurons' languages, and not the target."""
    neurons.check_language(source)
    if source == lang:
        raise LangNeuronsError(f"source and target are both {lang!r}; choose another --source or none")


def difference(neurons: LanguageNeurons, means: Tensor, layer: int, lang: str, source: str | None
               ) -> tuple[Tensor, Tensor]:
    """(mu_L(t), mu_L(t) - mu_L(s)) with s the source, or the mean of the other languages (float64)."""
    neurons.check_language(lang)
    t = neurons.languages.index(lang)
    target = means[t, layer].double()
    if source is not None:
        check_source(neurons, lang, source)
        other = means[neurons.languages.index(source), layer].double()
    else:
        rest = [i for i in range(len(neurons.languages)) if i != t]
        if not rest:
            raise LangNeuronsError("residual steering needs at least two languages (target minus the others)")
        other = means[rest, layer].double().mean(0)
    return target, target - other


def residual_layers(n_layers: int, given: Sequence[int] | None) -> list[int]:
    """The layers a sweep searches for a residual method: those given, else 4 from a third to five sixths of the
    depth."""
    if given is not None:
        return list(given)
    return sorted({round(n_layers * f) for f in (1 / 3, 1 / 2, 2 / 3, 5 / 6)})


def outliers(s) -> str:
    """The outlier setting in a residual intervention's label."""
    return "" if s.outlier_factor is None else (" out=off" if not s.outlier_factor else f" out>{s.outlier_factor:g}")


def sourced(s) -> str:
    """The source in a residual intervention's label."""
    return f" src={s.source}" if s.source else ""


