"""clamp (Kojima et al., NAACL 2024; the paper's method and the default): overwrite the language's top and
bottom-k neurons with their median on the language's texts (or zero, or a number), times a scale."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch

from ..errors import LangNeuronsError
from ..registry import Hooks
from .base import SELECTION, NeuronIntervention
from .interventions import clamp_hooks
from .positions import POSITIONS, check_positions

if TYPE_CHECKING:
    from ..detect.neurons import LanguageNeurons


def clamp(neurons: LanguageNeurons, lang: str, which: str = "both", k: int | None = None,
          layers: str | Sequence[int] | None = None, value: str | float = "median", scale: float = 1.0,
          positions: str = "all", spread: str | None = None) -> Hooks:
    """Kojima et al.: ``a_n <- scale * value`` on ``lang``'s ``which`` neurons (value: the median on the
    language, "zero", or a number). ``positions``: all (the paper), last (the newest position) or generated
    (every position outside the prompt pass: the hooks of ``all``, inactive while the prompt runs). ``spread``
    "even" spreads the k neurons over the layers (``LanguageNeurons.selected``)."""
    check_positions(positions, POSITIONS, "clamp")
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
    return clamp_hooks(neurons.index, sel, vals * float(scale), positions)


class Clamp(NeuronIntervention):
    """``a_n <- scale * value`` on the selected neurons (:func:`clamp`)."""

    name = "clamp"
    fields = (*SELECTION, "value", "scale")
    positions = POSITIONS
    axes = ("k", "scale", "positions", "layers", "which")

    def key(self) -> dict:
        # the keys of before other interventions existed, so the earliest cells are read back
        s = self.setting
        return {"value": s.value, "scale": s.scale, "positions": s.positions,
                "layers": s.layers if s.layers not in (None, "all") else None, **super().key_later()}

    def describe(self) -> str:
        return f"clamp{self.selection_label()} x{self.setting.scale:g}"

    def build(self, neurons: LanguageNeurons, lang: str, positions: str) -> Hooks:
        s = self.setting
        return clamp(neurons, lang, s.which, s.k, s.layers, s.value, s.scale, positions, s.spread)

    @classmethod
    def folder(cls) -> str:
        return "sweep"  # the first sweeps' folder, from before there were other interventions

    @classmethod
    def sweep_start(cls, cfg, neurons: LanguageNeurons, n: int) -> dict:
        return {**super().sweep_start(cfg, neurons, n), "scale": 1.0}
