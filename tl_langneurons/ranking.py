"""Step 3 of the method: average precision of every neuron for every language, and selection.

``average_precision`` equals scikit-learn's ``average_precision_score`` (step-wise, tied scores
form one threshold) for all neurons and all languages at once: one sort per neuron serves every
language. With ties, AP = (1/P) * sum_i y_i * precision(end of i's tie group), which needs only
the sorted labels' cumulative sum and the end index of each tie group.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .errors import LangNeuronsError


def check_labels(labels: np.ndarray, n_languages: int) -> None:
    counts = np.bincount(labels, minlength=n_languages)
    if (counts == 0).any():
        raise LangNeuronsError(
            f"language index {int(np.argmin(counts))} has no texts: AP is undefined without positives"
        )
    if (counts == len(labels)).any():
        raise LangNeuronsError("every text has the same language: AP is undefined without negatives")


@torch.no_grad()
def average_precision(scores: Float[Tensor, "text neuron"], labels: Int[Tensor, "text"] | np.ndarray,
                      n_languages: int | None = None, chunk: int | None = None,
                      progress: bool = False) -> Float[Tensor, "language neuron"]:
    """AP [n_languages, n_neurons] (float64) of each neuron's scores against "text is language l".

    Per neuron: one descending sort of all texts; each text gets the end position e of its tie
    group (texts with equal scores form one threshold, as in scikit-learn). For the P positives
    of a language, AP = (1/P) * sum_r #{e <= e_r} / (e_r + 1): precision at each positive's
    threshold, averaged. That needs only a small sort of the positives' e per language.
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n, m = scores.shape
    if labels.shape != (n,):
        raise LangNeuronsError(f"labels have shape {tuple(labels.shape)}, expected ({n},)")
    n_lang = int(n_languages if n_languages is not None else int(labels.max()) + 1)
    check_labels(labels.numpy(), n_lang)
    grouped = torch.sort(labels, stable=True).indices  # texts grouped by language
    bounds = [0] + torch.cumsum(torch.bincount(labels, minlength=n_lang), 0).tolist()
    # memory per chunk ~ n * chunk * 40 bytes; keep it near 256 MB
    chunk = chunk or max(1, int(256e6 / (40 * n)))
    out = torch.empty((n_lang, m), dtype=torch.float64)
    arange = torch.arange(n)
    for start in tqdm(range(0, m, chunk), desc="AP", unit="chunk", disable=not progress):
        s = scores[:, start:start + chunk]
        if not torch.isfinite(s).all():
            bad = (~torch.isfinite(s)).nonzero()[0]
            raise LangNeuronsError(f"non-finite score for neuron {start + int(bad[1])} on text {int(bad[0])}")
        st = s.T[:, grouped].contiguous()  # [c, n], rows = neurons
        c = st.shape[0]
        sorted_s, order = torch.sort(st, dim=1, descending=True)
        last = torch.ones_like(sorted_s, dtype=torch.bool)
        last[:, :-1] = sorted_s[:, :-1] != sorted_s[:, 1:]  # end of a tie group
        end = arange.expand(c, n)
        tied = ~last.all(1)  # only neurons with tied scores need the end of each tie group
        if bool(tied.any()):
            end = end.clone()
            e = torch.where(last[tied], arange, n)
            end[tied] = torch.flip(torch.cummin(torch.flip(e, [1]), 1).values, [1])
        end_of_text = torch.empty((c, n), dtype=torch.long).scatter_(1, order, end)
        for li in range(n_lang):
            e = torch.sort(end_of_text[:, bounds[li]:bounds[li + 1]], dim=1).values
            tp = torch.searchsorted(e, e, right=True)  # positives at or above each threshold
            out[li, start:start + c] = (tp.to(torch.float64) / (e + 1).to(torch.float64)).mean(1)
    return out


def top_k(ap: Float[Tensor, "neuron"], k: int) -> Int[Tensor, "k"]:
    """Indices of the k highest-AP neurons, best first (ties: lower index first)."""
    order = torch.sort(-ap, stable=True).indices
    return order[:k]


def bottom_k(ap: Float[Tensor, "neuron"], k: int) -> Int[Tensor, "k"]:
    """Indices of the k lowest-AP neurons, lowest first."""
    return torch.sort(ap, stable=True).indices[:k]


def middle_k(ap: Float[Tensor, "neuron"], k: int) -> Int[Tensor, "k"]:
    """The k neurons around the median AP."""
    order = torch.sort(ap, stable=True).indices
    start = max(0, (len(ap) - k) // 2)
    return order[start:start + k]


def check_k(k: int, n_neurons: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise LangNeuronsError(f"k must be an integer, got {k!r}")
    if k <= 0:
        raise LangNeuronsError(f"k must be positive, got {k}")
    if k > n_neurons:
        raise LangNeuronsError(f"k={k} is larger than the number of neurons ({n_neurons}); choose k <= {n_neurons}")
    return int(k)


def parse_k(spec: str | int | float, n_neurons: int) -> int:
    """k from a count (``1000``) or a fraction of the site's neurons (``"0.5%"``)."""
    if isinstance(spec, str):
        s = spec.strip()
        try:
            if s.endswith("%"):
                frac = float(s[:-1]) / 100
                return check_k(max(1, int(round(frac * n_neurons))), n_neurons)
            return check_k(int(s), n_neurons)
        except ValueError as e:
            if isinstance(e, LangNeuronsError):
                raise
            raise LangNeuronsError(f"k must be a count like 1000 or a percentage like 0.5%, got {spec!r}") from e
    return check_k(spec, n_neurons)
