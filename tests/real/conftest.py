"""Real-model tests run with two torch threads, as their recorded samples (tests/data/golden_samples.json)
were made, even under `./run.sh test`'s one-thread workers: bit-identical samples are promised for the
machine's usual setting, and another thread count may split MKL's work differently."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
