"""Fallback backend: TransformerLens-style hook points on a plain Hugging Face causal LM.

For models that ``TransformerBridge`` cannot wrap. It exposes the bridge's hook names
(``blocks.{l}.mlp.hook_post`` is the input of the MLP down-projection, ``blocks.{l}.attn.q.hook_out``
the output of the query projection, ...), hook functions with the signature ``fn(tensor, hook)``
that may return a replacement tensor, ``run_with_hooks`` and a ``hooks()`` context that always
removes its hooks, also when the forward pass raises.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import LangNeuronsError

HookFn = Callable[..., Any]

# Module names inside one decoder layer, per role; the first that exists wins.
_ROLES: dict[str, tuple[str, ...]] = {
    "attn.q": ("self_attn.q_proj", "attn.q_proj", "attention.q_proj"),
    "attn.k": ("self_attn.k_proj", "attn.k_proj", "attention.k_proj"),
    "attn.v": ("self_attn.v_proj", "attn.v_proj", "attention.v_proj"),
    "attn.qkv": ("self_attention.query_key_value", "attention.query_key_value", "self_attn.qkv_proj"),
    "attn.o": ("self_attn.o_proj", "self_attn.out_proj", "self_attention.dense", "attention.dense",
               "attn.out_proj"),
    "mlp.gate": ("mlp.gate_proj",),
    "mlp.in": ("mlp.up_proj", "fc1", "mlp.dense_h_to_4h", "mlp.fc1", "mlp.fc_in"),
    "mlp.out": ("mlp.down_proj", "fc2", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.fc_out"),
}
_LAYER_LISTS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers",
                "model.decoder.layers", "layers", "h")


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    for part in dotted.split("."):
        if not hasattr(module, part):
            return None
        module = getattr(module, part)
    return module if isinstance(module, nn.Module) else None


def find_layers(hf_model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM."""
    for path in _LAYER_LISTS:
        layers = _get(hf_model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise LangNeuronsError(
        f"unsupported model {type(hf_model).__name__}: no decoder layer list found "
        f"(looked for {', '.join(_LAYER_LISTS)}); pass a TransformerBridge instead"
    )


@dataclass
class _Point:
    """Where a hook name attaches: a module's output ('out') or its first input ('in')."""

    module: nn.Module
    where: str  # "out" | "in"
    size: int


class HookPointRef:
    """What a hook function receives as ``hook``: it carries the hook's name, as in TransformerLens."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"HookPointRef({self.name!r})"


class HFHookedModel(nn.Module):
    """A Hugging Face causal LM with TransformerLens hook names, via plain PyTorch forward hooks."""

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None):
        super().__init__()
        self.original_model = hf_model
        self.tokenizer = tokenizer
        self._points: dict[str, _Point] = {}
        self._handles: list[Any] = []
        layers = find_layers(hf_model)
        self.n_layers = len(layers)
        for idx, layer in enumerate(layers):
            self._map_layer(idx, layer)
        if not any(n.endswith("mlp.hook_post") for n in self._points):
            raise LangNeuronsError(
                f"unsupported model {type(hf_model).__name__}: no MLP down-projection found in its "
                "layers; pass a TransformerBridge for this architecture"
            )

    def _map_layer(self, idx: int, layer: nn.Module) -> None:
        p = f"blocks.{idx}"
        self._points[f"{p}.hook_resid_post"] = _Point(layer, "out", -1)
        found: dict[str, nn.Module] = {}
        for role, names in _ROLES.items():
            for name in names:
                mod = _get(layer, name)
                if isinstance(mod, nn.Linear):
                    found[role] = mod
                    self._points[f"{p}.{role}.hook_out"] = _Point(mod, "out", mod.out_features)
                    self._points[f"{p}.{role}.hook_in"] = _Point(mod, "in", mod.in_features)
                    break
        if "mlp.out" in found:
            self._points[f"{p}.mlp.hook_post"] = _Point(found["mlp.out"], "in", found["mlp.out"].in_features)
        pre = found.get("mlp.gate", found.get("mlp.in"))
        if pre is not None:
            self._points[f"{p}.mlp.hook_pre"] = _Point(pre, "out", pre.out_features)
        if "mlp.gate" in found and "mlp.in" in found:
            self._points[f"{p}.mlp.hook_pre_linear"] = _Point(found["mlp.in"], "out", found["mlp.in"].out_features)

    # ---- TransformerLens-compatible surface -------------------------------------------------
    @property
    def hook_dict(self) -> dict[str, _Point]:
        return dict(self._points)

    def hook_size(self, name: str) -> int:
        """Number of units at a hook (known without a forward pass, also on the meta device)."""
        return self._points[name].size

    def _check(self, name: str) -> _Point:
        if name not in self._points:
            raise LangNeuronsError(
                f"hook {name!r} does not exist on this model; see `tl-langneurons info` for its sites"
            )
        return self._points[name]

    def add_hook(self, name: str, fn: HookFn) -> None:
        point = self._check(name)
        ref = HookPointRef(name)
        if point.where == "out":
            def out_hook(module, args, output, _fn=fn, _ref=ref):
                if isinstance(output, tuple):
                    new = _fn(output[0], hook=_ref)
                    return output if new is None else (new,) + tuple(output[1:])
                new = _fn(output, hook=_ref)
                return output if new is None else new
            handle = point.module.register_forward_hook(out_hook)
        else:
            def in_hook(module, args, _fn=fn, _ref=ref):
                new = _fn(args[0], hook=_ref)
                return None if new is None else (new,) + tuple(args[1:])
            handle = point.module.register_forward_pre_hook(in_hook)
        self._handles.append(handle)

    def reset_hooks(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]] = (), **_: Any) -> Iterator["HFHookedModel"]:
        """Add hooks for the body of a ``with`` block; they are removed on exit, also on errors."""
        start = len(self._handles)
        try:
            for name, fn in fwd_hooks:
                self.add_hook(name, fn)
            yield self
        finally:
            while len(self._handles) > start:
                self._handles.pop().remove()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: Any):
        return self.original_model(input_ids=input_ids, attention_mask=attention_mask, **kw).logits

    def run_with_hooks(self, input_ids: torch.Tensor, fwd_hooks: Sequence[tuple[str, HookFn]] = (), **kw: Any):
        with self.hooks(fwd_hooks):
            return self(input_ids, **kw)

    def run_with_cache(self, input_ids: torch.Tensor, names_filter: Callable[[str], bool] | None = None, **kw: Any):
        """Logits and a dict of the (detached) activations at every hook that passes the filter."""
        cache: dict[str, torch.Tensor] = {}

        def save(t, hook):
            cache[hook.name] = t.detach()

        names = [n for n in self._points if names_filter is None or names_filter(n)]
        with self.hooks([(n, save) for n in names]):
            logits = self(input_ids, **kw)
        return logits, cache
