"""Step 3 of the method: average precision of every neuron for every language, and selection.

``average_precision`` equals scikit-learn's ``average_precision_score`` (step-wise, tied scores
form one threshold) for all neurons and all languages at once: one sort per neuron serves every
language.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import LangNeuronsError
from ..progress import progress_bar
from .storage import DiskMatrix


def check_labels(labels: np.ndarray, n_languages: int) -> None:
    counts = np.bincount(labels, minlength=n_languages)
    if (counts == 0).any():
        raise LangNeuronsError(
            f"language index {int(np.argmin(counts))} has no texts: AP is undefined without positives"
        )
    if (counts == len(labels)).any():
        raise LangNeuronsError("every text has the same language: AP is undefined without negatives")


def average_precision(scores: Float[Tensor, "text neuron"] | DiskMatrix, labels: Int[Tensor, "text"] | np.ndarray,
                      n_languages: int | None = None, chunk: int | None = None,
                      progress: bool = False, threads: int | None = None,
                      device: str | torch.device | None = None) -> Float[Tensor, "language neuron"]:
    """AP [n_languages, n_neurons] (float64) of each neuron's scores against "text is language l".

    Per neuron: one sort of all texts serves every language. Each score becomes an integer key
    that orders like the float (descending), with the text's language in its low bits, so a plain
    (SIMD) integer sort yields the languages in rank order; a stable sort of those codes (radix)
    gives each language's positive positions p_1 < ... < p_P, and AP = (1/P) * sum_r r / (p_r + 1).
    Tied scores form one threshold (as in scikit-learn): for neurons with ties, each positive's
    position is replaced by the end of its tie group and r by the positives up to that end.
    ``scores`` may be anything indexable as ``scores[:, a:b]`` (a tensor or a DiskMatrix); chunks
    of neurons run on ``threads`` threads (default: torch's thread count).

    ``device``: None chooses the torch implementation of the same algorithm (:func:`_ap_rows_torch`)
    on the matrix's device when ``scores`` is a tensor on a CUDA device, and numpy on the CPU
    otherwise; a device (``"cuda"``, ``"cpu"``, ...) runs the torch implementation there, chunks
    of a CPU tensor or DiskMatrix moved to it. The result is float64 on the CPU either way.
    """
    labels = np.asarray(labels.numpy() if isinstance(labels, Tensor) else labels)
    n, m = scores.shape
    if labels.shape != (n,):
        raise LangNeuronsError(f"labels have shape {tuple(labels.shape)}, expected ({n},)")
    labels = labels.astype(np.int64)
    n_lang = int(n_languages if n_languages is not None else int(labels.max()) + 1)
    check_labels(labels, n_lang)
    sizes = np.bincount(labels, minlength=n_lang)
    # memory per chunk ~ n * chunk * 40 bytes; keep it near 64 MB per thread
    chunk = chunk or max(1, int(64e6 / (40 * n)))
    if device is None and isinstance(scores, Tensor) and scores.device.type == "cuda":
        device = scores.device
    if device is not None:
        return _average_precision_torch(scores, labels, sizes, torch.device(device), chunk, progress)
    out = np.empty((n_lang, m), dtype=np.float64)
    threads = max(1, threads or torch.get_num_threads())

    def work(start: int) -> int:
        s = scores[:, start:start + chunk]
        s = s.numpy() if isinstance(s, Tensor) else np.asarray(s)
        st = np.array(s.T, dtype=np.float32, order="C")  # [c, n], rows = neurons (own copy)
        if not np.isfinite(st).all():
            bad = np.argwhere(~np.isfinite(st))[0]
            raise LangNeuronsError(f"non-finite score for neuron {start + int(bad[0])} on text {int(bad[1])}")
        out[:, start:start + st.shape[0]] = _ap_rows(st, labels, sizes)
        return st.shape[0]

    with progress_bar(total=m, desc="AP", unit="neuron", disable=not progress) as bar, \
            ThreadPoolExecutor(threads) as pool:
        for done in pool.map(work, range(0, m, chunk)):
            bar.update(done)
    return torch.from_numpy(out)


def _ap_rows(st: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """AP [n_languages, c] of each row of ``st`` [c, n] (float32, modified in place)."""
    c, n = st.shape
    st += np.float32(0)  # -0.0 -> +0.0: equal scores must get equal keys
    i = st.view(np.int32)
    key = i ^ ((i >> 31) & np.int32(0x7FFFFFFF))  # int32 ordered as the floats
    key = (~key).astype(np.int64)  # descending
    bits = max(1, (len(sizes) - 1).bit_length())
    key <<= bits
    key |= labels
    key.sort(axis=1)
    lang = (key & ((1 << bits) - 1)).astype(np.int8 if bits < 8 else np.int16 if bits < 16 else np.int32)  # radix sort
    pos = np.argsort(lang, axis=1, kind="stable")  # [c, n]: positions of language 0, then 1, ...
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    rank = np.concatenate([np.arange(1, p + 1) for p in sizes]).astype(np.float64)  # r within each language
    prec = rank / (pos + 1)
    vals = key >> bits
    last = np.ones((c, n), dtype=bool)  # end of a tie group
    np.not_equal(vals[:, :-1], vals[:, 1:], out=last[:, :-1])
    tied = np.flatnonzero(~last.all(1))
    if len(tied):  # precision at the end of each positive's tie group
        e = np.take_along_axis(_next_true(last[tied]), pos[tied], 1)  # non-decreasing within a language
        lastp = np.ones(e.shape, dtype=bool)
        np.not_equal(e[:, :-1], e[:, 1:], out=lastp[:, :-1])
        lastp[:, bounds[1:-1] - 1] = True  # never look past a language's segment
        upto = _next_true(lastp)
        seg_start = np.repeat(bounds[:-1], sizes)
        prec[tied] = (upto - seg_start + 1) / (e + 1)
    return np.stack([prec[:, a:b].mean(1) for a, b in zip(bounds[:-1], bounds[1:])])


def _average_precision_torch(scores, labels: np.ndarray, sizes: np.ndarray, device: torch.device,
                             chunk: int | None, progress: bool) -> Tensor:
    """:func:`average_precision` with the torch implementation on ``device``, chunk by chunk."""
    n, m = scores.shape
    if device.type == "mps":  # no float64 there: AP would lose digits against scikit-learn
        raise LangNeuronsError("exact AP needs float64, which MPS lacks; rank on the CPU (device=None or 'cpu')")
    # ~ n * chunk * 60 bytes per chunk: 64 MB on the CPU, 1 GB on a GPU
    chunk = chunk or max(1, int((1e9 if device.type == "cuda" else 64e6) / (60 * n)))
    lab = torch.as_tensor(labels, dtype=torch.int64, device=device)
    out = torch.empty((len(sizes), m), dtype=torch.float64)
    with progress_bar(total=m, desc="AP", unit="neuron", disable=not progress) as bar:
        for start in range(0, m, chunk):
            s = scores[:, start:start + chunk]
            s = s if isinstance(s, Tensor) else torch.from_numpy(np.asarray(s))
            st = s.to(device=device, dtype=torch.float32).T.contiguous()  # [c, n], rows = neurons (own copy)
            finite = torch.isfinite(st)
            if not bool(finite.all()):
                bad = (~finite).nonzero()[0]
                raise LangNeuronsError(f"non-finite score for neuron {start + int(bad[0])} on text {int(bad[1])}")
            out[:, start:start + st.shape[0]] = _ap_rows_torch(st, lab, sizes).cpu()
            bar.update(st.shape[0])
    return out


def _ap_rows_torch(st: Tensor, labels: Tensor, sizes: np.ndarray) -> Tensor:
    """:func:`_ap_rows` in torch on ``st``'s device: AP [n_languages, c] (float64) of each row of
    ``st`` [c, n] (float32); ``labels`` [n] int64 on the same device."""
    c, n = st.shape
    dev = st.device
    st = st + 0.0  # -0.0 -> +0.0: equal scores must get equal keys (a new tensor: the input stays as it is)
    i = st.view(torch.int32)
    key = i ^ ((i >> 31) & 0x7FFFFFFF)  # int32 ordered as the floats
    key = (~key).to(torch.int64)  # descending
    bits = max(1, (len(sizes) - 1).bit_length())
    key = (key << bits) | labels
    key = torch.sort(key, dim=1).values
    lang = key & ((1 << bits) - 1)
    pos = torch.sort(lang, dim=1, stable=True).indices  # [c, n]: positions of language 0, then 1, ...
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    rank = torch.cat([torch.arange(1, int(p) + 1, device=dev, dtype=torch.float64) for p in sizes])
    prec = rank / (pos + 1).to(torch.float64)
    vals = key >> bits
    last = torch.ones((c, n), dtype=torch.bool, device=dev)  # end of a tie group
    last[:, :-1] = vals[:, :-1] != vals[:, 1:]
    tied = (~last.all(1)).nonzero().squeeze(1)
    if len(tied):  # precision at the end of each positive's tie group
        e = torch.gather(_next_true_torch(last[tied]), 1, pos[tied])  # non-decreasing within a language
        lastp = torch.ones(e.shape, dtype=torch.bool, device=dev)
        lastp[:, :-1] = e[:, :-1] != e[:, 1:]
        lastp[:, torch.as_tensor(bounds[1:-1] - 1, device=dev)] = True  # never look past a language's segment
        upto = _next_true_torch(lastp)
        seg_start = torch.repeat_interleave(torch.as_tensor(bounds[:-1], device=dev),
                                            torch.as_tensor(sizes, device=dev))
        prec[tied] = (upto - seg_start + 1).to(torch.float64) / (e + 1).to(torch.float64)
    return torch.stack([prec[:, a:b].mean(1) for a, b in zip(bounds[:-1], bounds[1:])])


def _next_true_torch(mask: Tensor) -> Tensor:
    """:func:`_next_true` in torch."""
    n = mask.shape[1]
    idx = torch.where(mask, torch.arange(n, device=mask.device), n)
    return torch.flip(torch.cummin(torch.flip(idx, [1]), dim=1).values, [1])


def _next_true(mask: np.ndarray) -> np.ndarray:
    """For each position of each row, the index of the first True at or after it (the end of its group)."""
    idx = np.where(mask, np.arange(mask.shape[1]), mask.shape[1])
    return np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]


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
                pct = float(s[:-1])
                if not np.isfinite(pct) or pct <= 0:
                    raise LangNeuronsError(f"k={spec!r}: a percentage of the neurons must be a positive number such as 0.5%")
                exact = pct / 100 * n_neurons
                k = int(round(exact))
                if k < 1:  # the smallest percentage (3 digits) that rounds to one neuron
                    least = 50 / n_neurons
                    while int(round(float(f"{least:.3g}") / 100 * n_neurons)) < 1:
                        least *= 1.001
                    raise LangNeuronsError(f"k={spec!r} of {n_neurons} neurons is {exact:.4g} neurons, less than one; "
                                           f"use at least {float(f'{least:.3g}'):g}% or a count such as 1")
                return check_k(k, n_neurons)
            return check_k(int(s), n_neurons)
        except ValueError as e:
            if isinstance(e, LangNeuronsError):
                raise
            raise LangNeuronsError(f"k must be a count like 1000 or a percentage like 0.5%, got {spec!r}") from e
    return check_k(spec, n_neurons)
