"""Neuron selectors: which neurons are a language's, by four published criteria, all from one
collection pass (``collect(..., token_groups=labels)``).

| method | score of neuron m for language l | sets |
|---|---|---|
| ``ap`` (Kojima et al. 2024, the default) | AP of the pooled values against "text is in l" | top-k, bottom-k |
| ``lape`` (Tang et al. ACL 2024) | minus the entropy of the neuron's language distribution of P(z > 0) | top only |
| ``actprob`` (act-prob-90p, LSN toolkit of Mondal et al. 2025) | the same with P(z >= the neuron's 90th percentile) | top only |
| ``meandiff`` | Welch z of the pooled means on vs off l | top-k (z > 0 end), bottom-k |

LAPE follows RUCAIBox/Language-Specific-Neurons ``identify.py``: p[l, m] = share of l's tokens with
activation > 0; H[m] = entropy of p[:, m] / sum_l p[l, m]; a neuron is dismissed unless some
language's p exceeds the ``filter_rate`` (0.95) quantile of all p (``kthvalue`` at round(0.95 * n));
the ``top_rate`` (1%) of all neurons with the lowest entropy are kept; a kept neuron belongs to every
language whose p exceeds the ``bar_ratio`` (0.95) quantile of all p. A language's set is the kept
neurons it owns, lowest entropy first, at most k: its size varies per language, and there is no
bottom set (LAPE has no "fires against the language" side). ``actprob`` applies the same selection
to P(z >= t_m), t_m the neuron's 90th percentile over all detection tokens (rounded up to the
token histogram's bin edge, see ``activations.token_bins``: one pass, no second one for the exact
percentile). The LSN toolkit takes a per-language percentile; one threshold per neuron over all
languages keeps the probabilities comparable between languages.

Token statistics leave BOS out (its activation is the same for every text) and count the
real tokens of each text, as LAPE counts every token of its training chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import LangNeuronsError
from .token_bins import N_TOKEN_BINS, bin_edges
from .ranking import bottom_k, middle_k, top_k

SELECTORS = ("ap", "lape", "actprob", "meandiff")
METHODS = SELECTORS  # the earlier name (a selector is not an intervention: see tl_langneurons.registry)
ONE_SIDED = ("lape", "actprob")  # no bottom set
TOKEN_METHODS = ("lape", "actprob")  # need the token histogram of the collection


@dataclass(frozen=True)
class SelectorSettings:
    """Which selector and its thresholds (defaults: the papers')."""

    method: str = "ap"
    top_rate: float = 0.01  # LAPE: share of all neurons kept (lowest entropy)
    filter_rate: float = 0.95  # LAPE: quantile of all activation probabilities one language must exceed
    bar_ratio: float = 0.95  # LAPE: quantile a language's probability must exceed for the neuron to be its
    percentile: float = 90.0  # actprob: the high percentile of each neuron's token activations

    def __post_init__(self) -> None:
        if self.method not in SELECTORS:
            raise LangNeuronsError(f"unknown selection method {self.method!r}; use one of {', '.join(METHODS)}")
        for name in ("top_rate", "filter_rate", "bar_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 1):
                raise LangNeuronsError(f"lape_{name} must be a number in (0, 1], got {v!r}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) or not 0 < self.percentile < 100:
            raise LangNeuronsError(f"actprob_percentile must be a number between 0 and 100, got {self.percentile!r}")

    def record(self) -> dict:
        """What the result's meta records about the selection."""
        out: dict = {"method": self.method}
        if self.method in ("lape", "actprob"):
            out["thresholds"] = {"top_rate": self.top_rate, "filter_rate": self.filter_rate, "bar_ratio": self.bar_ratio,
                                 "source": "Tang et al. ACL 2024, RUCAIBox/Language-Specific-Neurons identify.py"}
        if self.method == "actprob":
            out["thresholds"]["percentile"] = self.percentile
            out["thresholds"]["percentile_note"] = ("per neuron over all detection tokens, rounded up to the token "
                                                    "histogram's bin edge (1/8 octave); one collection pass")
        if self.method == "meandiff":
            out["score"] = "Welch z: (mean_on - mean_off) / sqrt(var_on/n_on + var_off/n_off), 0 where both variances are 0"
        return out


@dataclass
class Selection:
    """What a selector returns: scores, which neurons it may pick, the sets, and meta."""

    score: Float[Tensor, "language neuron"] | None  # float64; None for ap (the score is the AP)
    eligible: Bool[Tensor, "language neuron"] | None  # one-sided methods: the neurons the method selects
    sets: dict[str, dict[str, Tensor]]  # lang -> top / bottom / middle -> int64 neuron indices
    meta: dict = field(default_factory=dict)


def token_counts(hist: Int[Tensor, "group neuron bin"], n_tokens: Int[Tensor, "group"],
                 percentile: float = 90.0) -> dict[str, Tensor]:
    """Per group (language) and neuron from the token histogram: ``active`` = tokens with value > 0
    (LAPE), ``above`` = tokens at or above ``threshold`` (act-prob), and ``n_tokens``.

    ``threshold`` [neuron] is the lowest bin edge that at most (100 - percentile)% of all tokens
    reach: the ``percentile`` rounded up to a bin edge (0 meaning "> 0" when at most that share is
    positive; the top edge 2^6 when more reach it).
    """
    if hist.shape[-1] != N_TOKEN_BINS:
        raise LangNeuronsError(f"token histogram has {hist.shape[-1]} bins, expected {N_TOKEN_BINS}")
    total = hist.sum(0, dtype=torch.int64)  # [neuron, bin]
    tail = total.flip(-1).cumsum(-1).flip(-1)  # tokens in bin >= j
    n_all = int(n_tokens.sum())
    allowed = (1 - percentile / 100) * n_all
    ok = tail[:, 1:] <= allowed  # candidate bins 1..B-1, non-decreasing in j
    first = torch.where(ok.any(1), ok.to(torch.int8).argmax(1) + 1, torch.full((hist.shape[1],), N_TOKEN_BINS - 1))
    edges = torch.from_numpy(bin_edges())
    keep = torch.arange(N_TOKEN_BINS) >= first.unsqueeze(1)  # [neuron, bin]
    above = torch.stack([(hist[g].long() * keep).sum(1) for g in range(hist.shape[0])])
    active = hist[:, :, 1:].sum(-1, dtype=torch.int64)
    return {"n_tokens": n_tokens.to(torch.int64).clone(), "active": active, "above": above,
            "threshold": edges[first].to(torch.float32), "threshold_bin": first.to(torch.int64)}


def _kth(flat: np.ndarray, rate: float) -> float:
    """``torch.kthvalue(flat, round(len(flat) * rate))``: the k-th smallest (k >= 1)."""
    k = min(len(flat), max(1, round(len(flat) * rate)))
    return float(np.partition(flat, k - 1)[k - 1])


def lape_select(probs: Float[Tensor, "language neuron"], top_rate: float, filter_rate: float,
                bar_ratio: float) -> tuple[Float[Tensor, "neuron"], Bool[Tensor, "language neuron"], dict]:
    """LAPE's selection (``identify.py``) on activation probabilities: (entropy, owned, meta).

    ``owned[l, m]``: neuron m is kept (not dismissed, among the ``top_rate`` lowest entropies) and
    p[l, m] exceeds the ``bar_ratio`` quantile of all probabilities.
    """
    p = probs.double()
    total = p.sum(0, keepdim=True)
    normed = torch.where(total > 0, p / total.clamp_min(1e-300), torch.zeros_like(p))
    entropy = -(normed * torch.where(normed > 0, normed.log(), torch.zeros_like(normed))).sum(0)
    flat = p.flatten().numpy()
    top_prob = _kth(flat, filter_rate)
    kept_h = entropy.masked_fill(~(p > top_prob).any(0), math.inf)
    n_keep = min(max(1, round(p.shape[1] * top_rate)), int(torch.isfinite(kept_h).sum()))
    order = torch.sort(kept_h, stable=True).indices[:n_keep]  # lowest entropy first, ties: lower index
    kept = torch.zeros(p.shape[1], dtype=torch.bool)
    kept[order] = True
    bar = _kth(flat, bar_ratio)
    owned = kept.unsqueeze(0) & (p > bar)
    meta = {"filter_value": top_prob, "activation_bar": bar, "n_kept": n_keep,
            "kept_entropy_max": float(kept_h[order].max()) if n_keep else None}
    return entropy, owned, meta


def welch_z(values, labels: np.ndarray, n_languages: int, chunk_bytes: float = 32e6) -> Float[Tensor, "language neuron"]:
    """Welch z of every neuron's pooled values, on vs off each language [L, n_neurons] (float64).
    Reads ``values`` (tensor or DiskMatrix) in column chunks."""
    n, m = values.shape
    out = torch.empty((n_languages, m), dtype=torch.float64)
    masks = [torch.as_tensor(labels == li) for li in range(n_languages)]
    chunk = max(1, int(chunk_bytes / (8 * n)))
    for a in range(0, m, chunk):
        v = values[:, a:a + chunk].double()
        for li, pos in enumerate(masks):
            on, off = v[pos], v[~pos]
            if len(on) < 2 or len(off) < 2:
                raise LangNeuronsError("meandiff needs at least 2 texts of every language and 2 of the others")
            diff = on.mean(0) - off.mean(0)
            se = (on.var(0) / len(on) + off.var(0) / len(off)).sqrt()
            out[li, a:a + v.shape[1]] = torch.where(se > 0, diff / se.clamp_min(1e-300), torch.zeros_like(diff))
    return out


def select(settings: SelectorSettings, languages: list[str], k: int, ap: Float[Tensor, "language neuron"],
           values=None, labels: np.ndarray | None = None,
           tokens: dict[str, Tensor] | None = None) -> Selection:
    """The sets of ``settings.method``: ``ap`` needs the AP, ``meandiff`` the pooled ``values`` and
    ``labels``, ``lape`` and ``actprob`` the ``tokens`` of :func:`token_counts`."""
    method = settings.method
    meta = settings.record()
    if method == "ap":
        sets = {l: {"top": top_k(ap[li], k), "bottom": bottom_k(ap[li], k), "middle": middle_k(ap[li], k)}
                for li, l in enumerate(languages)}
        return Selection(None, None, sets, meta)
    if method == "meandiff":
        z = welch_z(values, np.asarray(labels), len(languages))
        sets = {l: {"top": top_k(z[li], k), "bottom": bottom_k(z[li], k), "middle": middle_k(z[li], k)}
                for li, l in enumerate(languages)}
        return Selection(z, None, sets, meta)
    if tokens is None:
        raise LangNeuronsError(f"method {method} needs the token statistics of the collection; run find again "
                               "without --no-token-stats (or delete an activation cache made without them)")
    n = tokens["n_tokens"].double().clamp_min(1).unsqueeze(1)
    probs = (tokens["active"] if method == "lape" else tokens["above"]).double() / n
    entropy, owned, extra = lape_select(probs, settings.top_rate, settings.filter_rate, settings.bar_ratio)
    score = (-entropy).unsqueeze(0).expand(len(languages), -1).contiguous()
    sets = {}
    for li, l in enumerate(languages):
        mine = torch.nonzero(owned[li]).flatten()
        order = mine[torch.sort(entropy[mine], stable=True).indices][:k]
        sets[l] = {"top": order, "bottom": order.new_empty(0), "middle": middle_k(score[li], k)}
    meta.update(extra)
    meta["set_sizes"] = {l: int(len(sets[l]["top"])) for l in languages}
    return Selection(score, owned, sets, meta)
