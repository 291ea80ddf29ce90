"""One selected set of neurons (a language's top, bottom or middle k) and its statistics: the unit that
``LanguageNeurons`` holds per language and that ``neurons_io`` saves and loads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
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


def median0(x: Float[Tensor, "n m"], chunk: int = 8192) -> Float[Tensor, "m"]:
    """Median over dim 0 as numpy computes it (mean of the two middle values), chunked over columns."""
    out = torch.empty(x.shape[1], dtype=torch.float32)
    n = x.shape[0]
    for i in range(0, x.shape[1], chunk):
        s = x[:, i:i + chunk].double().sort(0).values
        out[i:i + chunk] = ((s[(n - 1) // 2] + s[n // 2]) / 2).float()
    return out


def neuron_statistics(values, labels: np.ndarray, n_languages: int,
                      chunk_bytes: float = 32e6) -> dict[str, Tensor]:
    """Per language and neuron: median, mean and std on the language's texts, mean and std off
    them ([L, n_neurons] each), and the mean over all texts ([n_neurons]). Reads ``values`` (a
    tensor or an on-disk ``DiskMatrix``) in column chunks, so it never needs the whole matrix."""
    n, m = values.shape
    out = {k: torch.empty((n_languages, m), dtype=torch.float32)
           for k in ("median_on", "mean_on", "std_on", "mean_off", "std_off")}
    out["mean_all"] = torch.empty(m, dtype=torch.float32)
    masks = [torch.as_tensor(labels == li) for li in range(n_languages)]
    chunk = max(1, int(chunk_bytes / (8 * n)))
    for a in range(0, m, chunk):
        v = values[:, a:a + chunk].double()
        b = a + v.shape[1]
        out["mean_all"][a:b] = v.mean(0).float()
        for li, pos in enumerate(masks):
            on, off = v[pos], v[~pos]
            out["median_on"][li, a:b] = median0(on)
            out["mean_on"][li, a:b] = on.mean(0).float()
            out["std_on"][li, a:b] = on.std(0).float()
            out["mean_off"][li, a:b] = off.mean(0).float()
            out["std_off"][li, a:b] = off.std(0).float()
    return out
