"""Unit hooks: overwrite chosen units with fixed values, or add to them, during the forward pass (step 5).

Each is a list of TransformerLens ``fwd_hooks`` ``(hook_name, fn)``: pass it to
``model.hooks(fwd_hooks=...)`` or ``model.run_with_hooks(..., fwd_hooks=...)``. The interventions of
``steer/`` (clamp, add, ...) build on these.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import LangNeuronsError
from ..model.sites import NeuronIndex, flat_units
from ..registry import Hooks
from .positions import POSITIONS, check_positions, gate


def _per_slice(index: NeuronIndex, neurons: Tensor):
    """(slice, the mask of ``neurons`` in it) for each site slice that holds one of them."""
    for sl in index.slices:
        sel = (neurons >= sl.offset) & (neurons < sl.offset + sl.size)
        if sel.any():
            yield sl, sel


def clamp_hooks(index: NeuronIndex, neurons: Int[Tensor, "n"], values: Float[Tensor, "n"],
                positions: str = "all") -> Hooks:
    """Hooks that set ``neurons`` (global indices into ``index``) to ``values``.

    ``positions="all"`` clamps every position (the paper); ``"last"`` only the newest one, which
    with a KV cache during generation is the token being produced; ``"generated"`` every position
    outside a generation's prompt pass (``steer/positions.py``). "all" and "last" differ only where one
    forward pass holds several positions (a prompt, or generation without the cache): generating
    from BOS alone with the cache, they give the same tokens.
    """
    check_positions(positions, POSITIONS, "a clamp")
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    values = torch.as_tensor(values, dtype=torch.float32)
    if neurons.shape != values.shape:
        raise LangNeuronsError("neurons and values must have the same length")
    if len(neurons) and (neurons.min() < 0 or neurons.max() >= index.n_neurons):
        raise LangNeuronsError(f"neuron index out of range 0..{index.n_neurons - 1}")
    last = positions == "last"
    hooks = []
    for sl, sel in _per_slice(index, neurons):
        def fn(x, hook, _units=neurons[sel] - sl.offset, _vals=values[sel]):
            shape = x.shape
            flat = flat_units(x)
            if flat.requires_grad:
                flat = flat.clone()
            v = _vals.to(device=flat.device, dtype=flat.dtype)
            u = _units.to(flat.device)
            if last:
                flat[:, -1, u] = v
            else:
                flat[:, :, u] = v
            return flat.reshape(shape)

        hooks.append((sl.hook, fn))
    return gate(hooks, positions)


def add_hooks(index: NeuronIndex, neurons: Int[Tensor, "n"], deltas: Float[Tensor, "n"],
              positions: str = "all") -> Hooks:
    """Hooks that add ``deltas`` to ``neurons`` (global indices into ``index``) at every position (or, with
    ``positions="generated"``, outside the prompt pass)."""
    check_positions(positions, ("all", "generated"), "an addition")
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    deltas = torch.as_tensor(deltas, dtype=torch.float32)
    hooks = []
    for sl, sel in _per_slice(index, neurons):
        vec = torch.zeros(sl.size)
        vec.index_add_(0, neurons[sel] - sl.offset, deltas[sel])

        def fn(x, hook, _vec=vec):
            flat = flat_units(x)
            return (flat + _vec.to(device=flat.device, dtype=flat.dtype)).reshape(x.shape)

        hooks.append((sl.hook, fn))
    return gate(hooks, positions)
