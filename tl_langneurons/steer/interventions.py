"""Clamp hooks: overwrite chosen neurons with fixed values during the forward pass (step 5).

A clamp is a list of TransformerLens ``fwd_hooks`` ``(hook_name, fn)``: pass it to
``model.hooks(fwd_hooks=...)`` or ``model.run_with_hooks(..., fwd_hooks=...)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import LangNeuronsError
from ..model.sites import NeuronIndex, flat_units

POSITIONS = ("all", "last")


def clamp_hooks(index: NeuronIndex, neurons: Int[Tensor, "n"], values: Float[Tensor, "n"],
                positions: str = "all") -> list[tuple[str, Callable]]:
    """Hooks that set ``neurons`` (global indices into ``index``) to ``values``.

    ``positions="all"`` clamps every position (the paper); ``"last"`` only the newest one, which
    with a KV cache during generation is the token being produced. The two differ only where one
    forward pass holds several positions (a prompt, or generation without the cache): generating
    from BOS alone with the cache, they give the same tokens.
    """
    if positions not in POSITIONS:
        raise LangNeuronsError(f"unknown clamp positions {positions!r}; use all or last")
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    values = torch.as_tensor(values, dtype=torch.float32)
    if neurons.shape != values.shape:
        raise LangNeuronsError("neurons and values must have the same length")
    if len(neurons) and (neurons.min() < 0 or neurons.max() >= index.n_neurons):
        raise LangNeuronsError(f"neuron index out of range 0..{index.n_neurons - 1}")
    hooks = []
    for sl in index.slices:
        sel = (neurons >= sl.offset) & (neurons < sl.offset + sl.size)
        if not sel.any():
            continue
        units = neurons[sel] - sl.offset
        vals = values[sel]

        def fn(x, hook, _units=units, _vals=vals):
            shape = x.shape
            flat = flat_units(x)
            if flat.requires_grad:
                flat = flat.clone()
            v = _vals.to(device=flat.device, dtype=flat.dtype)
            u = _units.to(flat.device)
            if positions == "all":
                flat[:, :, u] = v
            else:
                flat[:, -1, u] = v
            return flat.reshape(shape)

        hooks.append((sl.hook, fn))
    return hooks
