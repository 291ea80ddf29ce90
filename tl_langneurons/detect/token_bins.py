"""The token histogram of lape and actprob: each activation's bin, read from its float32 bits (8 bins per octave,
3 mantissa bits, from 2^LO to 2^HI), so one collection pass counts exactly what a per-token threshold compares."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

# the token histogram: 8 bins per octave (3 mantissa bits of the float32) from 2^LO to 2^HI
TOKEN_BINS_LO, TOKEN_BINS_HI, _MANTISSA_BITS = -10, 6, 3
N_TOKEN_BINS = (TOKEN_BINS_HI - TOKEN_BINS_LO) * (1 << _MANTISSA_BITS) + 3
_BIN_BASE = ((127 + TOKEN_BINS_LO) << _MANTISSA_BITS) - 2
TOKEN_BINS = {"lo": TOKEN_BINS_LO, "hi": TOKEN_BINS_HI, "per_octave": 1 << _MANTISSA_BITS, "n_bins": N_TOKEN_BINS}


def token_bins(x: Float[Tensor, "n d"]) -> Int[Tensor, "n d"]:
    """Histogram bin of each float32 value: 0 for x <= 0 (and NaN), 1 for 0 < x < 2^-10, j >= 2 for
    x >= ``bin_edges()[j]`` (and below the next edge), the last bin for x >= 2^6. The bin is read from
    the float's bits (exponent and 3 mantissa bits), so it agrees exactly with the edges."""
    x = x.to(torch.float32).contiguous()
    code = (x.view(torch.int32) >> (23 - _MANTISSA_BITS)) - _BIN_BASE  # increasing with x for x > 0
    return torch.where(x > 0, code.clamp(1, N_TOKEN_BINS - 1), torch.zeros_like(code))


def bin_edges() -> np.ndarray:
    """Lower edge of every bin (float64, exact float32 values): -inf, 0 (exclusive: x > 0), then
    2^e * (1 + i/8) (inclusive) for the 1/8-octave bins; bin(x) >= j  <=>  x passes edge j."""
    per = 1 << _MANTISSA_BITS
    tail = [2.0 ** (TOKEN_BINS_LO + j // per) * (1 + (j % per) / per) for j in range(N_TOKEN_BINS - 2)]
    return np.array([-np.inf, 0.0, *tail])
