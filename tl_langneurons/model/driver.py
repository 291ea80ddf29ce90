"""How tl-langneurons drives any supported hooked model: the trunk forward that stops after the
last block it needs, and one decoding step with a KV cache.

Supported: ``TransformerBridge`` and :class:`HFHookedModel` (both wrap a Hugging Face model whose
forward fires their hooks), and a ``HookedTransformer`` (transformer-lens 3.x, also SAELens'
``HookedSAETransformer``: its own forward, with its own KV cache).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..errors import LangNeuronsError
from .protocol import HookedModel


def kv_cache_class() -> type:
    """transformer-lens' KV cache for HookedTransformer (renamed in 3.x)."""
    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        return TransformerLensKeyValueCache
    except ImportError:  # transformer-lens 2.x
        from transformer_lens.past_key_value_caching import HookedTransformerKeyValueCache
        return HookedTransformerKeyValueCache


class StopForward(Exception):
    """Raised by a hook to end a forward pass once every activation needed has been seen."""


class Runner:
    """A thin driver over a hooked model; it never changes the model."""

    def __init__(self, model: HookedModel):
        if not hasattr(model, "hooks"):
            raise LangNeuronsError(
                f"unsupported model object {type(model).__name__}: it has no TransformerLens hooks; "
                "load it with tl_langneurons.load_model(...)"
            )
        self.model = model
        self.hf = getattr(model, "original_model", None)
        self.tokenizer = getattr(model, "tokenizer", None)
        if self.tokenizer is None:
            raise LangNeuronsError("the model has no tokenizer; load it with load_model(..., tokenizer=tok)")
        cfg = getattr(model, "cfg", None)
        self.n_layers = int(getattr(cfg, "n_layers", 0) or getattr(model, "n_layers", 0))
        self._sizes: dict[str, int] = {}

    @property
    def hook_names(self) -> list[str]:
        return list(self.model.hook_dict.keys())

    def d_model(self) -> int:
        """Width of the residual stream."""
        cfg = getattr(self.model, "cfg", None)
        if getattr(cfg, "d_model", None):
            return int(cfg.d_model)
        c = self.hf.config
        return int(getattr(c, "hidden_size", None) or getattr(c, "d_model", None) or c.n_embd)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device, else the first parameter not offloaded
        (a model spread over devices by accelerate moves activations between its layers itself)."""
        get = getattr(self.hf, "get_input_embeddings", None)
        w = getattr(get() if get is not None else None, "weight", None)
        if isinstance(w, torch.Tensor) and w.device.type != "meta":
            return w.device
        for p in self.model.parameters():
            if p.device.type != "meta":
                return p.device
        return torch.device("cpu")

    @property
    def bos_id(self) -> int | None:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return int(bos) if bos is not None else None

    @property
    def pad_id(self) -> int:
        for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
            val = getattr(self.tokenizer, attr, None)
            if val is not None:
                return int(val)
        return 0

    @property
    def max_length(self) -> int:
        cfg = getattr(self.model, "cfg", None)
        n_ctx = getattr(cfg, "n_ctx", None)
        if not n_ctx and self.hf is not None:
            c = self.hf.config
            n_ctx = getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)
        return int(n_ctx or 2048)

    def hooks(self, fwd_hooks: Sequence[tuple[str, Callable]]):
        return self.model.hooks(fwd_hooks=list(fwd_hooks))

    def check_hook(self, name: str) -> None:
        if name not in self.model.hook_dict:
            raise LangNeuronsError(
                f"hook {name!r} does not exist on this model; `tl-langneurons info --model M` lists its sites"
            )

    def trunk(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Run the transformer blocks (never the unembedding); hooks see every activation."""
        try:
            if self.hf is not None:
                self.hf.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            else:  # HookedTransformer: the blocks only (stop_at_layer skips the final norm and unembedding)
                self.model(input_ids, attention_mask=attention_mask, stop_at_layer=self.n_layers)
        except StopForward:
            pass

    def stopper(self, last_layer: int) -> tuple[str, Callable]:
        """A hook that ends the forward pass after block ``last_layer``."""

        def stop(x, hook):
            raise StopForward

        return (self.resid_post(last_layer), stop)

    def resid_post(self, layer: int) -> str:
        """The hook of block ``layer``'s output: ``blocks.L.hook_resid_post``, or, where SAELens has spliced an SAE
        in there (the name is then the SAE, not a hook point; ``blocks.L.hook_out`` on SAELens' bridge), the SAE's
        output hook, which is what the next block reads."""
        name, hooks = f"blocks.{layer}.hook_resid_post", self.model.hook_dict
        for spliced in (f"{name}.hook_sae_output", f"blocks.{layer}.hook_out.hook_sae_output"):
            if name not in hooks and spliced in hooks:
                return spliced
        return name

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, past: Any = None, attention_mask: torch.Tensor | None = None,
             position_ids: torch.Tensor | None = None, use_cache: bool = True) -> tuple[torch.Tensor, Any]:
        """Next-token logits [batch, vocab] for ``input_ids`` (new tokens only when ``past`` is given).

        For left-padded rows pass ``attention_mask`` [batch, past + new] (1 = real token, covering
        the cached positions too) and ``position_ids`` [batch, new] (positions counting real tokens
        only). ``position_ids`` goes to models whose forward takes it; the others (BLOOM's ALiBi)
        derive positions from the mask. With ``use_cache=False`` nothing is cached and the second
        value is None. Without a mask (every row the same length) the call is the plain one.
        """
        if self.hf is not None:
            kw: dict[str, Any] = {}
            if attention_mask is not None:
                kw["attention_mask"] = attention_mask
            if position_ids is not None and self.takes_position_ids:
                kw["position_ids"] = position_ids
            out = self.hf(input_ids=input_ids, past_key_values=past, use_cache=use_cache, **kw)
            return out.logits[:, -1, :].float(), (out.past_key_values if use_cache else None)
        return self._hooked_step(input_ids, past, attention_mask, use_cache)

    def _hooked_step(self, input_ids: torch.Tensor, past: Any, attention_mask: torch.Tensor | None,
                     use_cache: bool) -> tuple[torch.Tensor, Any]:
        """A HookedTransformer step through its own forward (logits of every position): used where a hook
        sits on the unembedding; :class:`~tl_langneurons.model.unembed.Unembed` does the usual steps."""
        mask, cache = self.hooked_inputs(input_ids, past, attention_mask, use_cache)
        logits = self.model(input_ids, attention_mask=mask, past_kv_cache=cache, return_type="logits")
        return logits[:, -1, :].float(), cache

    def hooked_inputs(self, input_ids: torch.Tensor, past: Any, attention_mask: torch.Tensor | None,
                      use_cache: bool) -> tuple[torch.Tensor, Any]:
        """The mask of the new positions and the KV cache (``past``, or a new one on the first step; None
        without ``use_cache``) of a HookedTransformer forward. Its cache keeps the attention mask of the
        cached positions; rotary positions of left-padded rows follow from that mask. The mask is always
        given: without one, transformer-lens masks every token equal to the pad id, and a pad id that is
        also EOS or BOS would hide real tokens."""
        n, new = input_ids.shape
        mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask[:, -new:]).long()
        if not use_cache:
            return mask, None
        return mask, past if past is not None else kv_cache_class().init_cache(self.model.cfg, self.device, n)

    @property
    def takes_position_ids(self) -> bool:
        """Whether the Hugging Face model's forward accepts ``position_ids``."""
        import inspect

        if self.hf is None:
            return False
        return "position_ids" in inspect.signature(self.hf.forward).parameters

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Full logits [batch, pos, vocab] (no cache)."""
        if self.hf is not None:
            logits = self.hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            return logits if logits.dtype == torch.float32 else logits.float()
        return self.model(input_ids, attention_mask=attention_mask, return_type="logits").float()

    def pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded token ids [batch, longest] and the mask of real tokens (padding after the
        text never changes a causal model's activations on the text)."""
        longest = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.bool)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[r, : len(seq)] = True
        return ids, mask

    @torch.no_grad()
    def next_token_logprobs(self, ids: torch.Tensor, mask: torch.Tensor, max_logits: int = 2**26) -> torch.Tensor:
        """log p(token t | tokens < t) for t = 1..T-1, [batch, T-1] (float64), 0 at padding.

        Rows run in groups so that at most ``max_logits`` logits (256 MiB in float32) exist at once:
        a 262k vocabulary makes the full [batch, pos, vocab] tensor many gigabytes.
        """
        out = torch.zeros((ids.shape[0], ids.shape[1] - 1), dtype=torch.float64)
        step = max(1, max_logits // (ids.shape[1] * self.vocab_size()))
        for i in range(0, ids.shape[0], step):
            sub, m = ids[i:i + step], mask[i:i + step]
            logits = self.logits(sub.to(self.device), m.long().to(self.device))[:, :-1]
            target = logits.gather(-1, sub[:, 1:, None].to(logits.device))[..., 0]
            lp = (target - torch.logsumexp(logits, -1)).double().cpu()
            out[i:i + step] = lp * m[:, 1:]
        return out

    def vocab_size(self) -> int:
        """The number of logits a forward pass gives (the unembedding's rows)."""
        if self.hf is not None:
            return int(self.hf.get_output_embeddings().weight.shape[0]) if hasattr(
                self.hf.get_output_embeddings(), "weight") else int(self.hf.config.vocab_size)
        return int(getattr(self.model.cfg, "d_vocab", 50_000))

    def hook_size(self, name: str) -> int:
        """Units at a hook, flattened over trailing dims (heads x d_head for q/k/v)."""
        self.check_hook(name)
        if name in self._sizes:
            return self._sizes[name]
        if hasattr(self.model, "hook_size"):
            size = int(self.model.hook_size(name))
            if size > 0:
                self._sizes[name] = size
                return size
        self.probe([name])
        return self._sizes[name]

    @torch.no_grad()
    def probe(self, names: Sequence[str]) -> None:
        """Learn the sizes of many hooks with one forward pass over two tokens."""
        todo = [n for n in names if n not in self._sizes]
        if not todo:
            return
        for n in todo:
            self.check_hook(n)

        def make(name):
            def record(x, hook):
                self._sizes[name] = int(x[0, 0].numel())
            return record

        tok = self.bos_id if self.bos_id is not None else self.pad_id
        ids = torch.full((1, 2), tok, dtype=torch.long, device=self.device)
        with self.hooks([(n, make(n)) for n in todo]):
            self.trunk(ids, torch.ones_like(ids))
        silent = [n for n in todo if n not in self._sizes]
        if silent:
            raise LangNeuronsError(
                f"hook {silent[0]!r} exists but never fires in this model's forward pass; choose another site"
            )
