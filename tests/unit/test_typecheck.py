"""The tests run with every annotation of the package checked (jaxtyping + beartype, installed in
conftest.py): a wrong shape or type fails loudly instead of broadcasting silently."""

import pytest
import torch
from jaxtyping import TypeCheckError

from tl_langneurons.detect.activations import pool
from tl_langneurons.detect.ranking import top_k
from tl_langneurons.steer.interventions import clamp_hooks


def test_shapes_are_checked():
    with pytest.raises(TypeCheckError):
        top_k(torch.zeros(3, 4), 2)  # AP of one language is 1-D [neuron]
    with pytest.raises(TypeCheckError):  # mask [batch pos] must match x [batch pos d]
        pool(torch.zeros(2, 5, 3), torch.ones(2, 4, dtype=torch.bool), "mean")
    with pytest.raises(TypeCheckError):  # neurons and values share the dimension n
        clamp_hooks(None, torch.arange(3), torch.zeros(4))


def test_types_are_checked():
    with pytest.raises(TypeCheckError):
        top_k(torch.zeros(4), "2")
    assert top_k(torch.tensor([0.1, 0.9, 0.5]), 2).tolist() == [1, 2]
