"""One identity per model, whatever wrapper holds its weights.

The weights fingerprint (:func:`~tl_langneurons.model.load.weights_fingerprint`) hashes parameters by
name, so the same weights under another layout (a ``HookedTransformer`` a user built with
``from_pretrained_no_processing``, a ``HookedSAETransformer``, a wrapper of their own) hash differently.
What neurons need is narrower: that the units at their sites compute the same function. So ``find``
also records an *activation signature*: the activations of a strided sample of the units, at every
position of a fixed token sequence. A model whose fingerprint differs is accepted when its signature
agrees to float tolerance (another construction of the same weights: different summation order, a
folded LayerNorm); a different model, or the same one in another dtype, differs by orders of magnitude
more and is still refused.
"""

from __future__ import annotations

import math

import torch

from .driver import Runner
from .protocol import HookedModel
from .sites import NeuronIndex, flat_units

SIGNATURE_POSITIONS = 12
SIGNATURE_UNITS = 32  # per site slice
SIGNATURE_RTOL = 1e-3
"""Signatures agree when max |a - b| <= SIGNATURE_RTOL x the recorded values' RMS. Float32 reorderings
(bridge vs HookedTransformer vs fallback) differ by about 1e-6 of it; another model by about its size."""


def _tokens(runner: Runner) -> list[int]:
    """A fixed, tokenizer-independent sequence: BOS (where the model has one), then ids spread over the
    vocabulary."""
    vocab = runner._vocab_size()
    ids = [(7919 * (i + 1) + 13) % vocab for i in range(SIGNATURE_POSITIONS)]
    return ([runner.bos_id] if runner.bos_id is not None else []) + ids


def _units(index: NeuronIndex) -> list[int]:
    """A strided sample of each slice's units (global indices)."""
    out = []
    for sl in index.slices:
        step = max(1, sl.size // SIGNATURE_UNITS)
        out += [sl.offset + u for u in range(0, sl.size, step)][:SIGNATURE_UNITS]
    return out


@torch.no_grad()
def _activations(model: HookedModel, index: NeuronIndex, tokens: list[int], units: list[int]) -> list[float]:
    runner = Runner(model)
    want = torch.as_tensor(units)
    got: dict[int, torch.Tensor] = {}

    def grab(i, sl):
        mine = want[(want >= sl.offset) & (want < sl.offset + sl.size)] - sl.offset

        def hook(x, hook):
            got[i] = flat_units(x)[0, :, mine].double().cpu()
        return hook

    hooks = [(sl.hook, grab(i, sl)) for i, sl in enumerate(index.slices)]
    hooks.append(runner.stopper(max(sl.layer for sl in index.slices)))
    ids = torch.tensor([tokens], device=runner.device)
    with runner.hooks(hooks):
        runner.trunk(ids, torch.ones_like(ids))
    return torch.cat([got[i] for i in range(len(index.slices))], 1).reshape(-1).tolist()


def activation_signature(model: HookedModel, index: NeuronIndex) -> dict:
    """What ``find`` records: the token sequence, the sampled units and their activations (float64,
    rounded to 9 significant digits), [positions x units] row-major."""
    runner = Runner(model)
    tokens, units = _tokens(runner), _units(index)
    values = _activations(model, index, tokens, units)
    return {"tokens": tokens, "units": units, "values": [float(f"{v:.9g}") for v in values]}


def signature_distance(recorded: dict, model: HookedModel, index: NeuronIndex) -> float:
    """max |recorded - this model's| over the signature, relative to the recorded values' RMS; inf where
    the model cannot reproduce it (other units, a shorter vocabulary)."""
    try:
        values = _activations(model, index, list(recorded["tokens"]), list(recorded["units"]))
    except (KeyError, IndexError, RuntimeError, ValueError, TypeError):
        return math.inf
    ref = recorded["values"]
    if len(values) != len(ref) or not ref:
        return math.inf
    rms = math.sqrt(sum(v * v for v in ref) / len(ref)) or 1.0
    diff = max(abs(a - b) for a, b in zip(values, ref))
    return diff / rms if math.isfinite(diff) else math.inf
