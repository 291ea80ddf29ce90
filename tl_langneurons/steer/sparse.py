"""sparse (Zhong et al., EACL 2026): at one layer, overwrite the K residual dimensions where the target's mean
differs most with ``coef`` times the target's mean, optionally restoring each position's norm; the model's
outlier dimensions are excluded from the selection and never overwritten."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

import torch

from ..errors import LangNeuronsError
from ..registry import Hooks
from .base import Intervention
from .positions import check_positions, gate
from .residual import (DEFAULT_OUTLIER_FACTOR, default_n_dims, difference, excluded, finite, layer_means, outliers,
                       residual_overwrite_hook, sourced)

if TYPE_CHECKING:
    from ..detect.neurons import LanguageNeurons


def sparse(neurons: LanguageNeurons, lang: str, layer: int | None = None, n_dims: int | None = None,
           coef: float = 1.0, restore_norm: bool = True, source: str | None = None,
           positions: str = "all", outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR,
           exclude_dims: Sequence[int] | None = None) -> Hooks:
    """Zhong et al.: at ``blocks.L.hook_resid_post``, the ``n_dims`` dimensions d with the largest
    ``|mu_L(t)[d] - mean_{l != t} mu_L(l)[d]|`` (or vs ``source``) are overwritten with ``coef * mu_L(t)[d]``
    at every position; with ``restore_norm`` each position is then rescaled to its norm before the
    overwrite. Defaults: the default layer, :func:`~tl_langneurons.steer.residual.default_n_dims`, coef 1 (the
    target's mean itself), restore_norm True (keeps the scale the next block expects).

    The layer's outlier dimensions (:func:`~tl_langneurons.steer.residual.outlier_dims` with ``outlier_factor``,
    default :data:`~tl_langneurons.steer.residual.DEFAULT_OUTLIER_FACTOR`; or the dimensions ``exclude_dims``
    names) are left out of the selection, as Zhong et al. zero them in the difference, and never overwritten (at
    most d_model minus their number dimensions are). ``outlier_factor`` None or 0 selects among every dimension."""
    finite("--coef", coef)
    check_positions(positions, ("all", "generated"), "sparse")
    means, _, layer = layer_means(neurons, layer)
    d = means.shape[2]
    if n_dims is None:
        n_dims = default_n_dims(d)
    if isinstance(n_dims, bool) or not isinstance(n_dims, int) or n_dims < 1:
        raise LangNeuronsError(f"--n-dims must be at least 1, got {n_dims!r}")
    target, diff = difference(neurons, means, layer, lang, source)
    score = diff.abs()
    out = excluded(neurons, layer, d, outlier_factor, exclude_dims)
    if out:
        score[out] = -math.inf
    dims = torch.topk(score, min(n_dims, d - len(out))).indices
    return gate(residual_overwrite_hook(layer, dims, (float(coef) * target[dims]).float(), bool(restore_norm)),
                positions)


class Sparse(Intervention):
    """``h_L[d] <- coef * mu_L(t)[d]`` on the K most different dimensions (:func:`sparse`)."""

    name = "sparse"
    fields = ("layer", "n_dims", "coef", "restore_norm", "source", "outlier_factor")
    axes = ("layer", "n_dims", "coef", "positions")
    key_drops = ("value", "scale", "layers")

    def resolved(self, neurons: LanguageNeurons):
        s = self.setting
        means, _, layer = layer_means(neurons, s.layer)
        n_dims = default_n_dims(means.shape[2]) if s.n_dims is None else min(s.n_dims, means.shape[2])
        return replace(s, layer=layer, n_dims=n_dims)

    def describe(self) -> str:
        s = self.setting
        return (f"sparse L{s.layer} K={s.n_dims} c={s.coef:g}" + ("" if s.restore_norm else " raw") + outliers(s)
                + sourced(s))

    def build(self, neurons: LanguageNeurons, lang: str, positions: str) -> Hooks:
        s = self.setting
        factor = DEFAULT_OUTLIER_FACTOR if s.outlier_factor is None else s.outlier_factor
        return sparse(neurons, lang, s.layer, s.n_dims, s.coef, s.restore_norm, s.source, positions, factor)

    @classmethod
    def sweep_start(cls, cfg, neurons: LanguageNeurons, n: int) -> dict:
        means, _ = neurons.residual()
        return {"k": neurons.k, "layer": round(0.6 * means.shape[1]), "n_dims": max(1, round(0.05 * means.shape[2])),
                "coef": 1.0}

    @classmethod
    def needs_residual(cls, cfg) -> bool:
        return True
