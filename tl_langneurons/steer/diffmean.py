"""diffmean (CLaS-Bench 2026): at one layer, add ``alpha * ||h_L|| * u`` to the residual stream, ``u`` the unit
difference of the target's mean residual and the other languages' (or the source's)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

from ..registry import Hooks
from .base import Intervention
from .positions import check_positions, gate
from .residual import difference, excluded, finite, layer_means, outliers, residual_add_hook, sourced

if TYPE_CHECKING:
    from ..detect.neurons import LanguageNeurons


def diffmean(neurons: LanguageNeurons, lang: str, layer: int | None = None, alpha: float = 1.0,
             source: str | None = None, positions: str = "all", outlier_factor: float | None = None,
             exclude_dims: Sequence[int] | None = None, keep_norm: bool = False) -> Hooks:
    """CLaS-Bench: at ``blocks.L.hook_resid_post``, ``h <- h + alpha * resid_norms[L] * u`` at every position,
    ``u`` the unit vector of ``mu_L(t) - mean_{l != t} mu_L(l)`` (or ``- mu_L(source)``). alpha is relative
    to the layer's typical residual norm, so one range fits every layer and model; ``layer`` defaults to
    :func:`~tl_langneurons.steer.residual.default_layer`. alpha = 0 is the identity. With ``outlier_factor``
    (default None: off, as CLaS-Bench) the :func:`~tl_langneurons.steer.residual.outlier_dims` of the layer are
    zeroed in the difference before it is normalised, so ``u`` is 0 there; ``exclude_dims`` names the dimensions
    instead of the rule. ``keep_norm`` rescales each position to its norm before the addition
    (norm-preserving, as ReCoVeR)."""
    finite("--alpha", alpha)
    check_positions(positions, ("all", "generated"), "diffmean")
    means, norms, layer = layer_means(neurons, layer)
    _, diff = difference(neurons, means, layer, lang, source)
    out = excluded(neurons, layer, means.shape[2], outlier_factor, exclude_dims)
    if out:
        diff = diff.clone()
        diff[out] = 0.0
    u = diff / (diff.norm() + 1e-8)
    return gate(residual_add_hook(layer, (float(alpha) * float(norms[layer]) * u).float(), keep_norm), positions)


class Diffmean(Intervention):
    """``h_L <- h_L + alpha * ||h_L|| * u`` (:func:`diffmean`)."""

    name = "diffmean"
    fields = ("layer", "alpha", "source", "outlier_factor", "keep_norm")
    scaled = ("alpha",)
    axes = ("layer", "alpha", "positions")
    key_drops = ("value", "scale", "layers")

    def resolved(self, neurons: LanguageNeurons):
        return replace(self.setting, layer=layer_means(neurons, self.setting.layer)[2])

    def describe(self) -> str:
        s = self.setting
        return f"diffmean L{s.layer} a={s.alpha:g}{' norm' if s.keep_norm else ''}{outliers(s)}{sourced(s)}"

    def build(self, neurons: LanguageNeurons, lang: str, positions: str) -> Hooks:
        s = self.setting
        return diffmean(neurons, lang, s.layer, s.alpha, s.source, positions, s.outlier_factor,
                        keep_norm=bool(s.keep_norm))

    @classmethod
    def sweep_start(cls, cfg, neurons: LanguageNeurons, n: int) -> dict:
        # the layer stage runs at the weakest strength searched: on models with an outlier residual dimension
        # (Gemma-3's dim 163 sets the norm) alpha 1 x the norm breaks every layer alike
        means, _ = neurons.residual()
        return {"k": neurons.k, "layer": round(0.6 * means.shape[1]), "alpha": min(cfg.alphas)}

    @classmethod
    def needs_residual(cls, cfg) -> bool:
        return True
