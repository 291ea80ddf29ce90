"""One selected set of neurons (a language's top, bottom or middle k) and its statistics: the unit that
``LanguageNeurons`` holds per language and that ``neurons_io`` saves and loads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

WHICH = ("top", "bottom", "middle")


@dataclass
class NeuronSet:
    """Selected neurons of one language and kind, with their statistics (all [k])."""

    neurons: Tensor  # int64 global indices
    ap: Tensor
    median_on: Tensor  # clamp value: median pooled value over the language's texts
    mean_on: Tensor
    std_on: Tensor
    mean_off: Tensor
    std_off: Tensor

    FIELDS = ("neurons", "ap", "median_on", "mean_on", "std_on", "mean_off", "std_off")


def make_set(stats: dict[str, Tensor], li: int, neurons: Tensor, ap: Tensor) -> NeuronSet:
    neurons = neurons.to(torch.int64)
    return NeuronSet(neurons=neurons.clone(), ap=ap[neurons].double(),
                     **{k: stats[k][li][neurons].clone() for k in ("median_on", "mean_on", "std_on", "mean_off", "std_off")})
