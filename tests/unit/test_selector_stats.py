"""Selector building blocks against slow, plain-loop references: the token histogram's bins, the
percentile threshold and counts, LAPE's selection (RUCAIBox identify.py, written out literally)
and the Welch z of meandiff."""

import math

import numpy as np
import pytest
import torch

from tl_langneurons import LangNeuronsError
from tl_langneurons.detect.activations import N_TOKEN_BINS, bin_edges, token_bins
from tl_langneurons.detect.selectors import SelectorSettings, lape_select, token_counts, welch_z


def ref_bin(x: float, edges: np.ndarray) -> int:
    """Bin of one value by the documented rule: 0 for x <= 0, else the last edge it passes."""
    if not x > 0:
        return 0
    j = 1
    for i in range(2, len(edges)):
        if x >= edges[i]:
            j = i
    return j


def test_token_bins_follow_edges():
    edges = bin_edges()
    assert len(edges) == N_TOKEN_BINS == 131 and edges[2] == 2.0 ** -10 and edges[-1] == 2.0 ** 6
    assert np.all(np.diff(edges[1:]) > 0) and np.all(edges[3:] / edges[2:-1] <= 1.125 + 1e-12)
    rng = np.random.default_rng(0)
    vals = np.concatenate([
        rng.normal(0, 1, 500), rng.lognormal(-3, 3, 500), edges[1:], np.nextafter(edges[2:].astype(np.float32), 0),
        [0.0, -0.0, 1e-45, 1e-30, 1e9, np.inf, -np.inf, np.nan, 2.0 ** 6 * 1.01]]).astype(np.float32)
    got = token_bins(torch.from_numpy(vals).view(-1, 1)).flatten().tolist()
    want = [ref_bin(float(v), edges) for v in vals]
    assert got == want


def test_token_counts_equal_loop_reference():
    rng = np.random.default_rng(1)
    hist = torch.from_numpy(rng.integers(0, 6, size=(3, 40, N_TOKEN_BINS)).astype(np.int32))
    n_tok = hist.sum(-1).amax(1).long()  # tokens per group; each neuron's counts must add up to it
    hist[:, :, 0] += (n_tok[:, None] - hist.sum(-1)).int()
    hist[:, 0, 0], hist[:, 0, 1:] = n_tok.int(), 0  # a neuron that is never positive
    hist[:, 1, -1], hist[:, 1, :-1] = n_tok.int(), 0  # one that is always above the top edge
    edges = bin_edges()
    for pct in (90.0, 75.0, 99.0):
        got = token_counts(hist, n_tok, pct)
        n_all = int(n_tok.sum())
        for m in range(40):
            total = [int(hist[:, m, b].sum()) for b in range(N_TOKEN_BINS)]
            j = next((j for j in range(1, N_TOKEN_BINS) if sum(total[j:]) <= (1 - pct / 100) * n_all), N_TOKEN_BINS - 1)
            assert got["threshold_bin"][m] == j and got["threshold"][m] == np.float32(edges[j])
            for g in range(3):
                assert got["above"][g, m] == sum(int(hist[g, m, b]) for b in range(j, N_TOKEN_BINS))
                assert got["active"][g, m] == sum(int(hist[g, m, b]) for b in range(1, N_TOKEN_BINS))
        assert got["threshold_bin"][0] == 1 and got["threshold_bin"][1] == N_TOKEN_BINS - 1
    assert torch.equal(got["n_tokens"], n_tok)


def lape_reference(p: np.ndarray, top_rate: float, filter_rate: float, bar_ratio: float) -> list[list[int]]:
    """identify.py of RUCAIBox/Language-Specific-Neurons, one neuron and one language at a time.
    ``p`` is [language, neuron]; returns each language's neurons, lowest entropy first."""
    L, N = p.shape
    entropy = []
    for m in range(N):
        s = sum(p[l, m] for l in range(L))
        h = 0.0
        for l in range(L):
            q = p[l, m] / s if s > 0 else 0.0
            if q > 0:
                h -= q * math.log(q)
        entropy.append(h)
    flat = sorted(p.flatten().tolist())
    top_prob = flat[round(len(flat) * filter_rate) - 1]
    bar = flat[round(len(flat) * bar_ratio) - 1]
    live = [m for m in range(N) if any(p[l, m] > top_prob for l in range(L))]
    kept = sorted(live, key=lambda m: (entropy[m], m))[:round(N * top_rate)]
    return [[m for m in kept if p[l, m] > bar] for l in range(L)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lape_select_equals_identify_py(seed):
    rng = np.random.default_rng(seed)
    p = rng.beta(0.5, 2, size=(4, 300))
    p[:, 5] = 0  # a never-active neuron: entropy 0 by the NaN rule, dismissed by the filter
    p[:, 7], p[2, 7] = 0.001, 0.999  # a clearly language-2 neuron
    entropy, owned, meta = lape_select(torch.from_numpy(p), 0.05, 0.9, 0.8)
    ref = lape_reference(p, 0.05, 0.9, 0.8)
    for l in range(4):
        mine = torch.nonzero(owned[l]).flatten()
        order = mine[torch.sort(entropy[mine], stable=True).indices].tolist()
        assert order == ref[l], l
    assert 7 in ref[2] and meta["n_kept"] == 15
    assert not owned[:, 5].any()


def test_welch_z_equals_numpy_loop():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), [5, 7, 6])
    v = rng.normal(size=(18, 12)).astype(np.float32)
    v[labels == 1, 3] += 2.0
    v[:, 4] = 1.5  # constant: z = 0
    z = welch_z(torch.from_numpy(v), labels, 3, chunk_bytes=8 * 18 * 5)  # several column chunks
    for l in range(3):
        for m in range(12):
            on, off = v[labels == l, m].astype(np.float64), v[labels != l, m].astype(np.float64)
            se = math.sqrt(on.var(ddof=1) / len(on) + off.var(ddof=1) / len(off))
            want = (on.mean() - off.mean()) / se if se > 0 else 0.0
            assert z[l, m].item() == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert z[1].argmax() == 3


def test_selector_settings_validation():
    with pytest.raises(LangNeuronsError, match="unknown selection method 'probe'"):
        SelectorSettings("probe")
    with pytest.raises(LangNeuronsError, match="lape_top_rate must be a number in \\(0, 1\\]"):
        SelectorSettings("lape", top_rate=0)
    with pytest.raises(LangNeuronsError, match="actprob_percentile must be a number between 0 and 100"):
        SelectorSettings("actprob", percentile=100)
    rec = SelectorSettings("lape").record()
    assert rec["method"] == "lape" and rec["thresholds"]["top_rate"] == 0.01 and rec["thresholds"]["bar_ratio"] == 0.95
