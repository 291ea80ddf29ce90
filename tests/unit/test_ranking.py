"""AP equals scikit-learn's average_precision_score exactly (ties included); selection and k."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from tl_langneurons import LangNeuronsError
from tl_langneurons.detect.ranking import (
    average_precision,
    bottom_k,
    middle_k,
    parse_k,
    top_k,
)


def _reference(scores: np.ndarray, labels: np.ndarray, n_lang: int) -> np.ndarray:
    return np.array([[average_precision_score(labels == l, scores[:, j]) for j in range(scores.shape[1])]
                     for l in range(n_lang)])


@pytest.mark.parametrize("levels", [3, 20, None])
def test_ap_matches_sklearn_with_many_ties(levels):
    rng = np.random.default_rng(levels or 0)
    n, m = 400, 120
    scores = rng.integers(0, levels, size=(n, m)).astype(np.float32) if levels else rng.normal(size=(n, m)).astype(np.float32)
    labels = rng.integers(0, 6, size=n)
    ap = average_precision(torch.from_numpy(scores), labels, 6, chunk=17)
    assert ap.dtype == torch.float64 and ap.shape == (6, m)
    np.testing.assert_allclose(ap.numpy(), _reference(scores, labels, 6), atol=1e-9, rtol=0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(4, 40), m=st.integers(1, 6), levels=st.integers(1, 5), n_lang=st.integers(2, 4),
       seed=st.integers(0, 10_000))
def test_ap_property_against_sklearn(n, m, levels, n_lang, seed):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(n_lang), rng.integers(0, n_lang, n - n_lang)])
    scores = rng.integers(0, levels, size=(n, m)).astype(np.float32)
    ap = average_precision(torch.from_numpy(scores), labels, n_lang)
    np.testing.assert_allclose(ap.numpy(), _reference(scores, labels, n_lang), atol=1e-9, rtol=0)


def test_ap_edge_cases_raise_clearly():
    s = torch.zeros(4, 2)
    with pytest.raises(LangNeuronsError, match="no texts: AP is undefined without positives"):
        average_precision(s, np.array([0, 0, 2, 2]), 3)
    with pytest.raises(LangNeuronsError, match="without negatives"):
        average_precision(s, np.array([0, 0, 0, 0]), 1)
    bad = torch.tensor([[0.0, float("nan")], [1.0, 1.0]])
    with pytest.raises(LangNeuronsError, match="non-finite score for neuron 1 on text 0"):
        average_precision(bad, np.array([0, 1]), 2)


def test_selection_orders_and_k():
    ap = torch.tensor([0.5, 0.9, 0.1, 0.9, 0.3, 0.7], dtype=torch.float64)
    assert top_k(ap, 3).tolist() == [1, 3, 5]  # ties: lower index first
    assert bottom_k(ap, 2).tolist() == [2, 4]
    assert middle_k(ap, 2).tolist() == [0, 5]
    assert parse_k("1000", 36864) == 1000
    assert parse_k("0.5%", 36864) == 184
    for bad, msg in [(0, "must be positive"), (-3, "must be positive"), (40000, "larger than the number of neurons"),
                     ("abc", "count like 1000")]:
        with pytest.raises(LangNeuronsError, match=msg):
            parse_k(bad, 36864)


def test_ap_signed_zeros_extremes_threads_and_disk(tmp_path):
    """Negative scores, -0.0 == +0.0 (one tie group), huge and subnormal values, rows with and
    without ties in one chunk, several threads, and a DiskMatrix source: all equal scikit-learn."""
    from tl_langneurons.detect.storage import DiskMatrix

    rng = np.random.default_rng(3)
    n, m = 90, 40
    scores = rng.normal(size=(n, m)).astype(np.float32)
    scores[:, 0] = rng.choice(np.array([-0.0, 0.0, 1.0, -1.0], dtype=np.float32), size=n)
    scores[:, 1] = rng.choice(np.array([-3e38, 3e38, 1e-45, -1e-45, 0.0], dtype=np.float32), size=n)
    scores[:, 2] = np.float32(-0.0)
    scores[::3, 3] = scores[0, 3]
    labels = np.concatenate([np.arange(7), rng.integers(0, 7, n - 7)])
    ref = _reference(scores, labels, 7)
    for kw in ({"chunk": 3, "threads": 2}, {"threads": 1}):
        np.testing.assert_allclose(average_precision(torch.from_numpy(scores), labels, 7, **kw).numpy(), ref,
                                   atol=1e-9, rtol=0)
    disk = DiskMatrix.create(tmp_path / "m.npy", (n, m))
    disk.write_rows(list(range(n)), torch.from_numpy(scores))
    np.testing.assert_allclose(average_precision(disk, labels, 7, chunk=7).numpy(), ref, atol=1e-9, rtol=0)
    many = rng.normal(size=(60, 5)).astype(np.float32)  # more languages than 3 label bits hold
    lab20 = np.arange(60) % 20
    np.testing.assert_allclose(average_precision(torch.from_numpy(many), lab20, 20).numpy(),
                               _reference(many, lab20, 20), atol=1e-9, rtol=0)
