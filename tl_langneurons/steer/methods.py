"""Four ways to steer the language a model writes, each an ordinary list of TransformerLens
``fwd_hooks`` (definitions and sources: Kojima et al. 2024; Gurgurov et al. 2025; CLaS-Bench 2026;
Zhong et al. 2026):

- ``clamp``: overwrite the language's top/bottom-k neurons with their median (times a scale): the
  paper's method and the default;
- ``add``: add ``alpha * (mu_on - mu_off)`` to those neurons, keeping the token-to-token variation
  that overwriting destroys; optionally set a source language's top neurons to their off-language
  mean ("deactivate the source");
- ``diffmean``: at one layer, add ``alpha * ||h_L|| * u`` to the residual stream, with ``u`` the unit
  difference of the target's mean residual and the other languages' (or the source's);
- ``sparse``: at one layer, overwrite the K residual dimensions where the target's mean differs most
  with ``coef`` times the target's mean, optionally restoring each position's norm.

Positions: ``all`` (every position, the paper), ``last`` (the newest; clamp only) and
``generated``: positions the model writes. During generation the prompt pass runs inside
:func:`prompt_pass`, which ``generated`` hooks leave alone, so the prompt's keys and values stay
unsteered; outside generation (no prompt pass marked) ``generated`` steers every position.

Example:
    >>> cfg = SteeringConfig(method="diffmean", alpha=2.0)            # doctest: +SKIP
    >>> with model.hooks(fwd_hooks=cfg.hooks(neurons, "de")): ...     # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..config import number_or_name, option
from ..detect.neurons import LanguageNeurons
from ..errors import LangNeuronsError
from ..model.sites import NeuronIndex, flat_units
from .interventions import clamp_hooks
from .positions import PROMPT_PASS, prompt_pass  # noqa: F401  (re-exported)

METHODS = ("clamp", "add", "diffmean", "sparse")
POSITIONS = ("all", "last", "generated")
Hooks = list[tuple[str, Callable]]

def only_generated(hooks: Hooks) -> Hooks:
    """The same hooks, inactive during the prompt pass."""
    def gate(fn: Callable) -> Callable:
        def gated(x, hook):
            return None if PROMPT_PASS.get() else fn(x, hook)
        return gated
    return [(name, gate(fn)) for name, fn in hooks]


def add_hooks(index: NeuronIndex, neurons: torch.Tensor, deltas: torch.Tensor) -> Hooks:
    """Hooks that add ``deltas`` to ``neurons`` (global indices into ``index``) at every position."""
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    deltas = torch.as_tensor(deltas, dtype=torch.float32)
    hooks = []
    for sl in index.slices:
        sel = (neurons >= sl.offset) & (neurons < sl.offset + sl.size)
        if not sel.any():
            continue
        vec = torch.zeros(sl.size)
        vec.index_add_(0, neurons[sel] - sl.offset, deltas[sel])

        def fn(x, hook, _vec=vec):
            flat = flat_units(x)
            return (flat + _vec.to(device=flat.device, dtype=flat.dtype)).reshape(x.shape)

        hooks.append((sl.hook, fn))
    return hooks


def residual_add_hook(layer: int, vector: torch.Tensor) -> Hooks:
    """``h_L <- h_L + vector`` at every position of ``blocks.L.hook_resid_post``."""
    def fn(x, hook):
        return x + vector.to(device=x.device, dtype=x.dtype)
    return [(f"blocks.{layer}.hook_resid_post", fn)]


def residual_overwrite_hook(layer: int, dims: torch.Tensor, values: torch.Tensor, restore_norm: bool) -> Hooks:
    """``h_L[d] <- values`` for ``dims`` at every position, optionally rescaled to the old norm."""
    def fn(x, hook):
        h = x.clone()
        h[..., dims.to(x.device)] = values.to(device=x.device, dtype=x.dtype)
        if restore_norm:
            h = h * (x.norm(dim=-1, keepdim=True) / h.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        return h
    return [(f"blocks.{layer}.hook_resid_post", fn)]


def _finite(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise LangNeuronsError(f"{name} must be a finite number such as 1.5, got {v!r}")


@dataclass
class SteeringConfig:
    """One intervention and its settings; ``hooks(neurons, lang)`` builds it for a target language."""

    method: str = option("clamp", "intervention: clamp (the paper), add, diffmean or sparse", choices=METHODS)
    which: str = "both"  # neuron set of clamp/add (Table 2 sets it per condition)
    k: int | None = None  # neurons per set of clamp/add (None: the k of the result)
    value: str | float = option("median", "clamp value: median, zero, or a number", parse=number_or_name)
    scale: float = option(1.0, "multiply the clamp value")
    positions: str = option("all", "steer every position, the newest only (clamp), or only generated positions",
                            choices=POSITIONS)
    layers: str | None = None  # clamp/add: choose the k neurons among these layers (all, first, last, ends)
    alpha: float = option(1.0, "strength of add (times mu_on - mu_off) and diffmean (times the residual norm)")
    layer: int | None = option(None, "layer of diffmean and sparse (none: 0.6 x the number of layers)", parse=int)
    n_dims: int | None = option(None, "sparse: residual dimensions overwritten (none: 5% of d_model)", parse=int)
    coef: float = option(1.0, "sparse: the target's mean on those dimensions is multiplied by this")
    restore_norm: bool = option(True, "sparse: do not rescale each position to its norm before the overwrite",
                                flag="--no-restore-norm")
    source: str | None = option(None, "source language: add deactivates its top neurons; diffmean and sparse "
                                "use it instead of the mean of the other languages", parse=str)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LangNeuronsError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.positions not in POSITIONS:
            raise LangNeuronsError(f"unknown positions {self.positions!r}; use {', '.join(POSITIONS)}")
        if self.positions == "last" and self.method != "clamp":
            raise LangNeuronsError("positions=last is for clamp; use all or generated")
        for name in ("scale", "alpha", "coef"):
            _finite(f"--{name}", getattr(self, name))
        if not (self.value in ("median", "zero") or (isinstance(self.value, (int, float)) and not isinstance(
                self.value, bool) and math.isfinite(self.value))):
            raise LangNeuronsError(f"--value must be median, zero or a finite number, got {self.value}")
        if self.n_dims is not None and self.n_dims < 1:
            raise LangNeuronsError(f"--n-dims must be at least 1, got {self.n_dims}")

    @property
    def neuron_level(self) -> bool:
        return self.method in ("clamp", "add")

    def key(self) -> dict:
        """What the samples depend on (cells are keyed by it). For clamp, the same keys as before
        methods existed, so earlier cells are read back."""
        if self.method == "clamp":
            return {"value": self.value, "scale": self.scale, "positions": self.positions,
                    "layers": self.layers if self.layers not in (None, "all") else None}
        d = asdict(self)
        for f in ("which", "k"):
            d.pop(f)
        if not self.neuron_level:
            for f in ("value", "scale", "layers"):
                d.pop(f)
        return d

    def label(self) -> str:
        """A short readable name of the setting."""
        if self.method == "clamp":
            return f"clamp x{self.scale:g}"
        if self.method == "add":
            return f"add a={self.alpha:g}" + (f" src={self.source}" if self.source else "")
        if self.method == "diffmean":
            return f"diffmean L{self.layer} a={self.alpha:g}"
        return f"sparse L{self.layer} K={self.n_dims} c={self.coef:g}" + ("" if self.restore_norm else " raw")

    def resolved(self, neurons: LanguageNeurons) -> "SteeringConfig":
        """The config with its model-dependent defaults filled in (layer, n_dims)."""
        from dataclasses import replace

        if self.neuron_level:
            return self
        means, _ = neurons.residual()
        n_layers, d = means.shape[1], means.shape[2]
        layer = round(0.6 * n_layers) if self.layer is None else self.layer
        if not 0 <= layer < n_layers:
            raise LangNeuronsError(f"--layer must be between 0 and {n_layers - 1}, got {layer}")
        n_dims = max(1, round(0.05 * d)) if self.n_dims is None else min(self.n_dims, d)
        return replace(self, layer=layer, n_dims=n_dims if self.method == "sparse" else self.n_dims)

    def hooks(self, neurons: LanguageNeurons, lang: str) -> Hooks:
        """The fwd_hooks of this intervention towards ``lang``."""
        cfg = self.resolved(neurons)
        if cfg.method == "clamp":
            hooks = neurons.hooks(lang, cfg.which, cfg.value, cfg.scale,
                                  "all" if cfg.positions == "generated" else cfg.positions, k=cfg.k, layers=cfg.layers)
        elif cfg.method == "add":
            neurons._check_lang(lang)
            li = neurons.languages.index(lang)
            sel, _ = neurons.selected(lang, cfg.which, cfg.k, cfg.layers)
            delta = cfg.alpha * (neurons.means[li] - neurons.means_off(lang))[sel]
            hooks = add_hooks(neurons.index, sel, delta)
            if cfg.source:
                src, _ = neurons.selected(cfg.source, "top", cfg.k)
                hooks += clamp_hooks(neurons.index, src, neurons.means_off(cfg.source)[src])
        else:
            means, norms = neurons.residual()
            neurons._check_lang(lang)
            t = neurons.languages.index(lang)
            target = means[t, cfg.layer].double()
            if cfg.source:
                neurons._check_lang(cfg.source)
                other = means[neurons.languages.index(cfg.source), cfg.layer].double()
            else:
                rest = [i for i in range(len(neurons.languages)) if i != t]
                other = means[rest, cfg.layer].double().mean(0)
            diff = target - other
            if cfg.method == "diffmean":
                u = diff / (diff.norm() + 1e-8)
                hooks = residual_add_hook(cfg.layer, (cfg.alpha * float(norms[cfg.layer]) * u).float())
            else:
                dims = torch.topk(diff.abs(), cfg.n_dims).indices
                hooks = residual_overwrite_hook(cfg.layer, dims, (cfg.coef * target[dims]).float(), cfg.restore_norm)
        return only_generated(hooks) if cfg.positions == "generated" else hooks
