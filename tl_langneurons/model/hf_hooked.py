"""Fallback backend: a TransformerLens ``HookedRootModule`` over a plain Hugging Face causal LM.

For models that ``TransformerBridge`` cannot wrap. :class:`HFHookedModel` holds one
``transformer_lens.hook_points.HookPoint`` per hook name, registered as submodules under the
bridge's names (``blocks.{l}.mlp.hook_post`` is the input of the MLP down-projection,
``blocks.{l}.attn.q.hook_out`` the output of the query projection, ``blocks.{l}.hook_resid_post``
the output of the decoder layer, ...), and ``setup()`` builds TransformerLens's own ``hook_dict``
and ``mod_dict`` from them.

The Hugging Face model runs unchanged: plain torch forward hooks and forward pre-hooks, registered
once at construction on its submodules, pass the tensor at each site (a module's output, or its
first input) through the site's HookPoints and substitute what comes back. So everything
TransformerLens does with HookPoints works, whichever forward runs (this wrapper's, the HF model's
own, ``generate``): ``hooks(fwd_hooks=..., bwd_hooks=...)``, ``run_with_hooks``, ``add_hook``,
``reset_hooks``, backward hooks, and ``run_with_cache`` returning an ``ActivationCache``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformer_lens import ActivationCache
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

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


def _first_attr(obj: Any, *names: str) -> Any:
    for name in names:
        val = getattr(obj, name, None)
        if val is not None:
            return val
    return None


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


class _InputTap:
    """Torch forward pre-hook: passes a module's first input through HookPoints, in order."""

    def __init__(self, points: Sequence[HookPoint]):
        self.points = list(points)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        if args and isinstance(args[0], torch.Tensor):
            x = args[0]
            new = x
            for hp in self.points:
                new = hp(new)
            return None if new is x else ((new,) + tuple(args[1:]), kwargs)
        for key in ("input", "hidden_states", "x"):  # called with keywords only
            x = kwargs.get(key)
            if isinstance(x, torch.Tensor):
                new = x
                for hp in self.points:
                    new = hp(new)
                return None if new is x else (args, {**kwargs, key: new})
        return None


class _OutputTap:
    """Torch forward hook: passes a module's output (or the first element of a tuple output)
    through HookPoints, in order."""

    def __init__(self, points: Sequence[HookPoint]):
        self.points = list(points)

    def __call__(self, module: nn.Module, args: tuple, output: Any):
        if isinstance(output, torch.Tensor):
            new = output
            for hp in self.points:
                new = hp(new)
            return None if new is output else new
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            new = output[0]
            for hp in self.points:
                new = hp(new)
            if new is output[0]:
                return None
            return [new, *output[1:]] if isinstance(output, list) else (new, *output[1:])
        return None


class HFHookedConfig:
    """The TransformerLens ``cfg`` fields this backend can state. ``HookedRootModule`` itself needs
    none; ``ActivationCache`` reads ``n_layers`` and the Runner ``n_layers`` / ``n_ctx``."""

    def __init__(self, hf_model: nn.Module, n_layers: int, d_mlp: int | None):
        c = getattr(hf_model, "config", None)
        self.n_layers = n_layers
        # None where the model has no fixed context (BLOOM's ALiBi): the Runner then uses its default.
        self.n_ctx = _first_attr(c, "max_position_embeddings", "n_positions")
        self.d_model = _first_attr(c, "hidden_size", "d_model", "n_embd")
        self.d_vocab = _first_attr(c, "vocab_size")
        self.n_heads = _first_attr(c, "num_attention_heads", "attention_heads", "n_head")
        self.d_mlp = d_mlp
        self._hf = hf_model

    @property
    def device(self) -> torch.device:
        p = next(self._hf.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(self._hf.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def __repr__(self) -> str:
        return (f"HFHookedConfig(n_layers={self.n_layers}, n_ctx={self.n_ctx}, d_model={self.d_model}, "
                f"d_mlp={self.d_mlp}, d_vocab={self.d_vocab})")


class HFHookedModel(HookedRootModule):
    """A Hugging Face causal LM as a TransformerLens ``HookedRootModule``.

    ``hook_dict`` maps each hook name to a ``HookPoint`` (submodules ``blocks.{l}.mlp.hook_post``,
    ``blocks.{l}.attn.q.hook_out``, ...); the HF model is ``original_model``. Hook functions have the
    TransformerLens signature ``fn(tensor, hook)`` and may return a replacement tensor.
    """

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None):
        super().__init__()
        layers = find_layers(hf_model)
        self.tokenizer = tokenizer
        self.n_layers = len(layers)
        self._sizes: dict[str, int] = {}
        # (module, "in"|"out") -> hook names fired there, in data-flow order
        taps: dict[tuple[int, str], tuple[nn.Module, list[str]]] = {}
        d_model = _first_attr(getattr(hf_model, "config", None), "hidden_size", "d_model", "n_embd")
        self.blocks = nn.ModuleList(nn.Module() for _ in layers)
        for idx, layer in enumerate(layers):
            for name, module, where, size in self._layer_sites(idx, layer, d_model):
                self._install(name)
                self._sizes[name] = size
                taps.setdefault((id(module), where), (module, []))[1].append(name)
        if not any(n.endswith("mlp.hook_post") for n in self._sizes):
            raise LangNeuronsError(
                f"unsupported model {type(hf_model).__name__}: no MLP down-projection found in its "
                "layers; pass a TransformerBridge for this architecture"
            )
        self.original_model = hf_model
        self.setup()
        d_mlp = self._sizes.get("blocks.0.mlp.hook_post")
        self.cfg = HFHookedConfig(hf_model, self.n_layers, d_mlp)
        # The torch hooks that fire the HookPoints: registered once, for the model's lifetime.
        self._taps = []
        for (_, where), (module, names) in taps.items():
            points = [self.hook_dict[n] for n in names]
            if where == "in":
                handle = module.register_forward_pre_hook(_InputTap(points), with_kwargs=True)
            else:
                handle = module.register_forward_hook(_OutputTap(points))
            self._taps.append(handle)

    @staticmethod
    def _layer_sites(idx: int, layer: nn.Module, d_model: int | None):
        """(hook name, HF module, "in"|"out", units) of one decoder layer, in data-flow order."""
        p = f"blocks.{idx}"
        sites: list[tuple[str, nn.Module, str, int]] = []
        found: dict[str, nn.Linear] = {}
        for role, names in _ROLES.items():
            for name in names:
                mod = _get(layer, name)
                if isinstance(mod, nn.Linear):
                    found[role] = mod
                    break
        for role, mod in found.items():
            if role == "mlp.out":  # the activation first, then what the down-projection sees
                sites.append((f"{p}.mlp.hook_post", mod, "in", mod.in_features))
            sites.append((f"{p}.{role}.hook_in", mod, "in", mod.in_features))
            sites.append((f"{p}.{role}.hook_out", mod, "out", mod.out_features))
            if role == "mlp.gate" or (role == "mlp.in" and "mlp.gate" not in found):
                sites.append((f"{p}.mlp.hook_pre", mod, "out", mod.out_features))
            if role == "mlp.in" and "mlp.gate" in found:
                sites.append((f"{p}.mlp.hook_pre_linear", mod, "out", mod.out_features))
        width = d_model or (found["mlp.out"].out_features if "mlp.out" in found else -1)
        sites.append((f"{p}.hook_resid_post", layer, "out", int(width)))
        return sites

    def _install(self, name: str) -> None:
        """Register a HookPoint at the dotted ``name``, creating container modules on the way."""
        parts = name.split(".")
        mod: nn.Module = self
        for part in parts[:-1]:
            child = mod._modules.get(part)
            if child is None:
                child = nn.Module()
                mod.add_module(part, child)
            mod = child
        mod.add_module(parts[-1], HookPoint())

    def setup(self) -> None:
        """TransformerLens's ``setup()`` over the hook tree only: the HF model's own modules are not
        renamed (``module.name``) nor listed in ``mod_dict``."""
        hf = self._modules.pop("original_model", None)
        try:
            super().setup()
        finally:
            if hf is not None:
                self._modules["original_model"] = hf

    # ---- hook names ---------------------------------------------------------------------------
    def _check(self, name: str) -> HookPoint:
        hp = self.hook_dict.get(name) if isinstance(name, str) else None
        if hp is None:
            raise LangNeuronsError(
                f"hook {name!r} does not exist on this model; `tl-langneurons info --model M` lists its sites"
            )
        return hp

    def hook_size(self, name: str) -> int:
        """Number of units at a hook (known without a forward pass, also on the meta device)."""
        self._check(name)
        return self._sizes[name]

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:
        if isinstance(name, str):
            self._check(name)
        super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def _enable_hook(self, name, hook, dir):
        if isinstance(name, str):
            self._check(name)
        super()._enable_hook(name=name, hook=hook, dir=dir)

    # ---- running --------------------------------------------------------------------------------
    def _input_device(self) -> torch.device | None:
        get = getattr(self.original_model, "get_input_embeddings", None)
        w = getattr(get() if get is not None else None, "weight", None)
        return w.device if isinstance(w, torch.Tensor) and w.device.type != "meta" else None

    def forward(self, input_ids: Any, attention_mask: torch.Tensor | None = None,
                return_type: str | None = "logits", **kw: Any):
        """Logits [batch, pos, vocab] of ``input_ids`` (token ids, or a string / list of strings,
        tokenized with ``self.tokenizer``). ``return_type``: ``"logits"``, ``"loss"`` (mean
        next-token cross-entropy over the real tokens), ``"both"`` (logits, loss) or ``None``."""
        if isinstance(input_ids, str) or (isinstance(input_ids, (list, tuple)) and input_ids
                                          and isinstance(input_ids[0], str)):
            if self.tokenizer is None:
                raise LangNeuronsError("string input needs a tokenizer: HFHookedModel(hf_model, tokenizer)")
            enc = self.tokenizer(input_ids if isinstance(input_ids, str) else list(input_ids),
                                 return_tensors="pt", padding=not isinstance(input_ids, str))
            input_ids = enc.input_ids
            if attention_mask is None:
                attention_mask = enc.get("attention_mask")
        device = self._input_device()
        if device is not None and isinstance(input_ids, torch.Tensor) and input_ids.device != device:
            input_ids = input_ids.to(device)
            if attention_mask is not None:
                attention_mask = attention_mask.to(device)
        kw.setdefault("use_cache", False)
        logits = self.original_model(input_ids=input_ids, attention_mask=attention_mask, **kw).logits
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        if return_type not in ("loss", "both"):
            raise LangNeuronsError(f"unknown return_type {return_type!r}; use logits, loss, both or None")
        loss = _next_token_loss(logits, input_ids, attention_mask)
        return loss if return_type == "loss" else (logits, loss)

    def run_with_cache(self, *model_args: Any, names_filter: Any = None, device: Any = None,
                       remove_batch_dim: bool = False, incl_bwd: bool = False, reset_hooks_end: bool = True,
                       clear_contexts: bool = False, pos_slice: Any = None, return_cache_object: bool = True,
                       **model_kwargs: Any):
        """``(output, cache)`` as ``HookedRootModule.run_with_cache``, the cache an ``ActivationCache``
        (a plain dict with ``return_cache_object=False``). ``names_filter`` is None, a hook name, a
        list of names or a predicate on names; a name that does not exist is an error."""
        if isinstance(names_filter, str):
            self._check(names_filter)
        elif isinstance(names_filter, (list, tuple, set, frozenset)):
            names_filter = list(names_filter)
            for name in names_filter:
                self._check(name)
        elif names_filter is not None and not callable(names_filter):
            raise LangNeuronsError("names_filter must be a hook name, a list of hook names or a function of a name")
        out, cache = super().run_with_cache(
            *model_args, names_filter=names_filter, device=device, remove_batch_dim=remove_batch_dim,
            incl_bwd=incl_bwd, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts,
            pos_slice=pos_slice, **model_kwargs,
        )
        if not return_cache_object:
            return out, cache
        return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)


def _next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy of token t+1 given tokens <= t, over positions whose target is real."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = input_ids[:, 1:].to(logp.device)
    nll = -logp.gather(-1, target[..., None])[..., 0]
    if attention_mask is None:
        return nll.mean()
    mask = attention_mask[:, 1:].to(nll.device, nll.dtype)
    return (nll * mask).sum() / mask.sum().clamp(min=1)
