"""The torch implementation of exact AP (chosen for a matrix on a GPU) equals scikit-learn and the
numpy implementation, ties included, through the same ``average_precision`` call on CPU tensors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from tl_langneurons import LangNeuronsError
from tl_langneurons.detect import ranking
from tl_langneurons.detect.ranking import average_precision
from tl_langneurons.detect.storage import DiskMatrix


def _reference(scores: np.ndarray, labels: np.ndarray, n_lang: int) -> np.ndarray:
    return np.array([[average_precision_score(labels == l, scores[:, j]) for j in range(scores.shape[1])]
                     for l in range(n_lang)])


@pytest.mark.parametrize("levels", [2, 3, 20, None])
def test_torch_ap_matches_sklearn_and_numpy(levels):
    rng = np.random.default_rng(levels or 0)
    n, m = 300, 90
    scores = (rng.integers(0, levels, size=(n, m)).astype(np.float32) if levels
              else rng.normal(size=(n, m)).astype(np.float32))
    labels = rng.integers(0, 6, size=n)
    t = torch.from_numpy(scores)
    ap_torch = average_precision(t, labels, 6, chunk=17, device="cpu")
    ap_numpy = average_precision(t, labels, 6, chunk=17)
    assert ap_torch.dtype == torch.float64 and ap_torch.shape == (6, m) and ap_torch.device.type == "cpu"
    np.testing.assert_allclose(ap_torch.numpy(), _reference(scores, labels, 6), atol=1e-12, rtol=0)
    np.testing.assert_allclose(ap_torch.numpy(), ap_numpy.numpy(), atol=1e-12, rtol=0)
    assert torch.equal(t, torch.from_numpy(scores))  # the input is not modified


@settings(max_examples=80, deadline=None)
@given(n=st.integers(5, 40), m=st.integers(1, 6), levels=st.integers(1, 5), n_lang=st.integers(2, 5),
       seed=st.integers(0, 10_000), signed_zero=st.booleans())
def test_torch_ap_property_against_sklearn(n, m, levels, n_lang, seed, signed_zero):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(n_lang), rng.integers(0, n_lang, n - n_lang)])
    scores = (rng.integers(0, levels, size=(n, m)).astype(np.float32) - levels // 2)
    if signed_zero:  # -0.0 and +0.0 are one score (one tie group), as in scikit-learn
        scores[scores == 0] = rng.choice(np.array([-0.0, 0.0], dtype=np.float32), size=int((scores == 0).sum()))
    ap = average_precision(torch.from_numpy(scores), labels, n_lang, device="cpu")
    np.testing.assert_allclose(ap.numpy(), _reference(scores, labels, n_lang), atol=1e-12, rtol=0)


def test_torch_ap_on_disk_matrix_and_bf16_values(tmp_path):
    rng = np.random.default_rng(1)
    n, m = 120, 40
    # bf16-representable values: the many ties a bfloat16 model produces
    vals = torch.from_numpy(rng.normal(size=(n, m)).astype(np.float32)).bfloat16().float()
    labels = np.repeat(np.arange(4), n // 4)
    dm = DiskMatrix.create(tmp_path / "m.npy", (n, m))
    dm.write_rows(list(range(n)), vals)
    ap = average_precision(dm, labels, 4, chunk=7, device="cpu")
    np.testing.assert_allclose(ap.numpy(), _reference(vals.numpy(), labels, 4), atol=1e-12, rtol=0)


def test_device_chooses_the_implementation(monkeypatch):
    rng = np.random.default_rng(2)
    s = torch.from_numpy(rng.normal(size=(30, 5)).astype(np.float32))
    labels = np.arange(30) % 3
    calls = []
    real = ranking._average_precision_torch

    def spy(*a, **kw):
        calls.append(a[3])
        return real(*a, **kw)

    monkeypatch.setattr(ranking, "_average_precision_torch", spy)
    average_precision(s, labels, 3)  # a CPU tensor: numpy
    assert calls == []
    average_precision(s, labels, 3, device="cpu")
    assert calls == [torch.device("cpu")]


def test_torch_ap_errors():
    bad = torch.tensor([[0.0, float("inf")], [1.0, 1.0]])
    with pytest.raises(LangNeuronsError, match="non-finite score for neuron 1 on text 0"):
        average_precision(bad, np.array([0, 1]), 2, device="cpu")
    with pytest.raises(LangNeuronsError, match="MPS lacks"):
        average_precision(torch.zeros(2, 2), np.array([0, 1]), 2, device="mps")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matrix_uses_torch_on_the_gpu():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(500, 64)), 1).astype(np.float32)
    labels = rng.integers(0, 6, size=500)
    ap = average_precision(torch.from_numpy(scores).cuda(), labels, 6)
    np.testing.assert_allclose(ap.numpy(), _reference(scores, labels, 6), atol=1e-12, rtol=0)
