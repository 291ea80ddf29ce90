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

import logging

from ..errors import LangNeuronsError
from .driver import Runner
from .fingerprint import legacy_fingerprint, model_dtype, weights_fingerprint
from .protocol import HookedModel
from .sites import NeuronIndex, canonical_hook, counterpart_note, flat_units, resolve_sites

log = logging.getLogger(__name__)
_NOTED: set[tuple[str, str]] = set()  # (found-on, this model) weights fingerprints already accepted by signature

SIGNATURE_POSITIONS = 12
SIGNATURE_UNITS = 32  # per site slice
SIGNATURE_RTOL = 1e-3
"""Signatures agree when max |a - b| <= SIGNATURE_RTOL x the recorded values' RMS. Float32 reorderings
(bridge vs HookedTransformer vs fallback) differ by about 1e-6 of it; another model by about its size."""


def _tokens(runner: Runner) -> list[int]:
    """A fixed, tokenizer-independent sequence: BOS (where the model has one), then ids spread over the
    vocabulary."""
    vocab = runner.vocab_size()
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


def check_same_model(index: NeuronIndex, meta: dict, model: HookedModel) -> NeuronIndex:
    """Refuse a model other than the one neurons at ``index`` (with a find result's ``meta``) were found on: one
    that lacks their sites, whose weights differ (unless its activation signature at those sites agrees: the same
    weights under another wrapper or construction, accepted with a note said once per process), in another dtype,
    or whose neuron index differs. Returns ``index`` on ``model``: the same units, by the model's hook names (a
    HookedTransformer's for the sites it names its own way)."""
    try:
        other = resolve_sites(model, index.spec)
    except LangNeuronsError as e:
        raise LangNeuronsError(f"these neurons were found at sites {index.spec!r}, which this model lacks: {e}") from e
    theirs = meta.get("weights_sha")
    mine = weights_fingerprint(model) if theirs else None
    if theirs and theirs != mine and theirs != legacy_fingerprint(model):
        signature = meta.get("activation_signature")
        if signature and [(a.size, a.offset) for a in other.slices] == [(a.size, a.offset) for a in index.slices]:
            distance = signature_distance(signature, model, other)
            if distance <= SIGNATURE_RTOL:  # the same function under another layout or construction
                if (theirs, mine) in _NOTED:
                    return _check_index(index, meta, other, model)
                _NOTED.add((theirs, mine))  # said once per process
                log.warning("these neurons were found on %s (weights %s), this model's weights hash to %s (another "
                            "wrapper or construction of the same weights); the activations at their sites agree "
                            "(max difference %.1e of their RMS): accepted", meta.get("model", "a model"),
                            theirs, mine, distance)
                return _check_index(index, meta, other, model)
        found_in, dtype = meta.get("dtype"), model_dtype(model)
        if found_in and found_in != dtype:  # the same model in another precision: say so
            raise LangNeuronsError(
                f"these neurons were found on {meta.get('model', 'another model')} in {found_in}; this model "
                f"is in {dtype}: a dtype mismatch (its weights differ). Load the model in {found_in} (--dtype "
                f"{found_in}) or find neurons in {dtype}")
        raise LangNeuronsError(
            f"these neurons were found on {meta.get('model', 'another model')} (weights {theirs}); this model's "
            f"weights differ ({mine}){_processed(model)}. Use neurons found on this model"
        )
    return _check_index(index, meta, other, model)


def _check_index(index: NeuronIndex, meta: dict, other: NeuronIndex, model: HookedModel) -> NeuronIndex:
    """``other``, this model's index of these neurons' sites; refuse it where it differs from theirs (other hooks,
    sizes or order; a site without a counterpart on this backend)."""
    pair = index.mismatch(other)
    if pair is None:
        return other
    a, b = pair
    if b is None:
        where = f"{len(index.slices)} hooks there, {len(other.slices)} here"
    elif (a.layer, a.size, a.offset) == (b.layer, b.size, b.offset):
        raise LangNeuronsError(
            f"these neurons' site {canonical_hook(a)} (found on {meta.get('model', 'another model')}, sites "
            f"{index.spec!r}) has no counterpart on this {type(model).__name__}: {counterpart_note(a.template, b.template)}"
            "; steer them on the backend they were found on (--backend), or find neurons on this one")
    elif (a.size, a.offset) != (b.size, b.offset):
        where = f"{a.hook}: {a.size} neurons at offset {a.offset} there, {b.size} at offset {b.offset} here"
    else:
        where = f"{a.hook}: {a} there, {b} here"
    raise LangNeuronsError(
        f"these neurons were found on {meta.get('model', 'another model')} at sites {index.spec!r} that "
        f"differ from this model's, first at {where}. Use neurons found on this model"
    )


def _processed(model: HookedModel) -> str:
    """Why a HookedTransformer's weights may differ from the model's own: transformer-lens' processing."""
    norm = str(getattr(getattr(model, "cfg", None), "normalization_type", "") or "")
    if getattr(model, "original_model", None) is None and norm.endswith("Pre"):
        return (f" and its activations at these sites too: it is a HookedTransformer with its normalization folded into "
                f"the weights (normalization_type {norm}, from from_pretrained's processing); build it with "
                "from_pretrained_no_processing, as load_model(..., backend='hooked') does")
    return ""
