"""The unembedding by hand: last-position logits into a reused buffer, and per-token NLL in chunks.

With a 262k vocabulary the unembedding is most of a decoding step (0.34 of 0.54 GFLOP per token
on Gemma-3-270M). A Hugging Face forward allocates a fresh [batch, vocab] logits tensor every step
(100 MB at batch 100: page faults and memory traffic) and, in the prompt pass, computes logits for
every prompt position although only the last is sampled from. :class:`Unembed` runs the model's
trunk (every hook fires as usual) and multiplies the last hidden state by the unembedding matrix
into one buffer. It is used only where it gives the model's own logits: a plain linear
head (no logit soft-capping or scaling), checked against the model's forward once (bit for bit
for the ``mkl`` kernel), and no hook on ``unembed.*`` (a user's hook there would be skipped);
anything else takes the model's own forward. See :data:`KERNELS`.
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from .driver import Runner

KERNELS = ("mkl", "onednn", "model")
"""How logits are computed. ``mkl``: ``torch.mm`` into the reused buffer, the model's own numbers
bit for bit (generation uses it: a seed's sample stays what it was). ``onednn``: a prepacked
oneDNN matmul, about 185 GFLOPS on 2 Zen 3 cores against 105 for ``mm`` on the 262k x 640
unembedding, equal to it within float rounding (about 1e-5) but not bit for bit: resampling 100
seeds x 64 tokens with it changed 5-11 samples, so only scores (NLL) use it; CPU float32 only,
else ``mkl``. ``model``: the model's own forward."""


class _HookedBase:
    """A HookedTransformer's blocks and final norm called like a Hugging Face base model: ``input_ids``,
    ``attention_mask`` (of every position, cached ones included), ``past_key_values`` (transformer-lens'
    KV cache, made on the first call) -> ``.last_hidden_state`` and ``.past_key_values``."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def __call__(self, input_ids: Tensor, past_key_values: Any = None, use_cache: bool = False,
                 attention_mask: Tensor | None = None, position_ids: Tensor | None = None) -> Any:
        from types import SimpleNamespace

        model = self.runner.model
        mask, cache = self.runner.hooked_inputs(input_ids, past_key_values, attention_mask, use_cache)
        resid = model(input_ids, attention_mask=mask, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
        ln = getattr(model, "ln_final", None)
        return SimpleNamespace(last_hidden_state=ln(resid) if ln is not None else resid, past_key_values=cache)


class Unembed:
    """Decoding steps and token NLL of ``runner``'s model with the unembedding done by hand.

    :meth:`of` keeps one per model and kernel (the oneDNN kernel prepacks the weight once).
    """

    _cache: "weakref.WeakKeyDictionary" = None  # model -> {kernel: Unembed}

    @classmethod
    def of(cls, runner: Runner, kernel: str = "mkl") -> "Unembed":
        """The model's instance for ``kernel`` (made on first use)."""
        if cls._cache is None:
            cls._cache = weakref.WeakKeyDictionary()
        per = cls._cache.setdefault(runner.model, {})
        if kernel not in per:
            per[kernel] = cls(runner, kernel)
        return per[kernel]

    def __init__(self, runner: Runner, kernel: str = "mkl"):
        if kernel not in KERNELS:
            raise ValueError(f"unknown unembedding kernel {kernel!r}; use one of {', '.join(KERNELS)}")
        self.runner = runner
        self._buf: Tensor | None = None
        self.weight: Tensor | None = None
        self._packed: Tensor | None = None
        self.kernel = kernel
        hf = runner.hf
        if self.kernel == "model":
            return
        if hf is None:
            self._init_hooked()
            return
        head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
        head = getattr(head, "original_component", head)  # TransformerBridge wraps the head (hooks: unembed.*)
        cfg = getattr(hf, "config", None)
        if (not isinstance(head, nn.Linear)
                or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1.0)
                or getattr(hf, "base_model", hf) is hf):
            return
        placed = set((getattr(hf, "hf_device_map", None) or {}).values())
        if head.weight.device.type == "meta" or len(placed) > 1:  # spread by accelerate: the model's own forward
            return
        self.weight = head.weight.detach()
        self.bias = None if head.bias is None or not head.bias.any() else head.bias.detach()
        self.base = hf.base_model
        if (self.kernel == "onednn" and self.weight.device.type == "cpu" and self.weight.dtype == torch.float32
                and torch.backends.mkldnn.is_available()):
            try:
                self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, 100)
            except (RuntimeError, AttributeError):  # a build without the op
                self._packed = None
        if self._packed is None:
            self.kernel = "mkl"
        if not self._agrees():
            self.weight, self._packed, self.kernel = None, None, "model"

    def _init_hooked(self) -> None:
        """A HookedTransformer: its blocks (``stop_at_layer``, with its own KV cache), ``ln_final``, then
        ``W_U`` by hand (transformer-lens 3.x copies ``W_U.T`` on every forward: 670 MB a step on a 262k
        vocabulary). Soft-capped logits take the model's own forward."""
        model = self.runner.model
        unembed, cfg = getattr(model, "unembed", None), getattr(model, "cfg", None)
        w = getattr(unembed, "W_U", None)
        if not isinstance(w, Tensor) or (getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0) > 0:
            return
        if w.device.type == "meta" or getattr(cfg, "n_devices", 1) > 1:
            return
        self.weight = w.detach().T  # [vocab, d_model]; contiguous where load_model built the model
        b = getattr(unembed, "b_U", None)
        self.bias = None if b is None or not b.any() else b.detach()
        self.base = _HookedBase(self.runner)
        self.kernel = "mkl"
        if not self._agrees():
            self.weight, self.kernel = None, "model"

    @property
    def active(self) -> bool:
        """Whether steps take the by-hand path now (no hook on the unembedding is registered)."""
        if self.weight is None:
            return False
        for name, hp in self.runner.model.hook_dict.items():
            if name.startswith("unembed") and (getattr(hp, "_forward_hooks", None) or getattr(hp, "_forward_pre_hooks", None)):
                return False
        return True

    @torch.no_grad()
    def _agrees(self) -> bool:
        tok = self.runner.bos_id if self.runner.bos_id is not None else self.runner.pad_id
        ids = torch.full((2, 1), tok, dtype=torch.long, device=self.weight.device)
        ref = self.runner.logits(ids)[:, -1]
        mine = self._last_logits(self.base(input_ids=ids, use_cache=False).last_hidden_state)
        if self._packed is None:
            return torch.equal(mine, ref)  # mkl: the model's own numbers, bit for bit
        return torch.allclose(mine, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))

    def _last_logits(self, hidden: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch vocab"]:
        h = hidden[:, -1]
        if self._packed is not None:
            return torch.ops.mkldnn._linear_pointwise(h.contiguous(), self._packed, self.bias, "none", [], "")
        n, v = h.shape[0], self.weight.shape[0]
        if self._buf is None or self._buf.shape[0] < n or self._buf.device != h.device or self._buf.dtype != h.dtype:
            self._buf = torch.empty((n, v), dtype=h.dtype, device=h.device)
        out = self._buf[:n]
        torch.mm(h, self.weight.T, out=out)
        if self.bias is not None:
            out.add_(self.bias)
        return out if out.dtype == torch.float32 else out.float()

    @torch.no_grad()
    def step(self, input_ids: Int[Tensor, "batch new"], past: Any = None, attention_mask: Tensor | None = None,
             position_ids: Tensor | None = None) -> tuple[Float[Tensor, "batch vocab"], Any]:
        """Like :meth:`Runner.step` with the cache: next-token logits of the last position and the
        new cache. The logits live in a buffer reused by the next call: use them before calling again."""
        if not self.active:
            return self.runner.step(input_ids, past, attention_mask=attention_mask, position_ids=position_ids)
        kw: dict[str, Any] = {}
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        if position_ids is not None and self.runner.takes_position_ids:
            kw["position_ids"] = position_ids
        out = self.base(input_ids=input_ids, past_key_values=past, use_cache=True, **kw)
        return self._last_logits(out.last_hidden_state), out.past_key_values

    @torch.no_grad()
    def token_nll(self, seqs: Sequence[Sequence[int]], starts: Sequence[int], batch_size: int = 32,
                  chunk: int = 128) -> list[list[float]]:
        """-log p(token t | tokens < t) of every t >= ``starts[i]`` of ``seqs[i]``, under the model as it is.

        The trunk runs on right-padded batches; logits are computed only for the positions scored
        (no padding, no prompt), ``chunk`` tokens at a time into one buffer, so the 262k-vocabulary
        logits of a whole batch never exist at once.
        """
        runner = self.runner
        out: list[list[float]] = [[] for _ in seqs]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths pad less
        for b in range(0, len(order), batch_size):
            idx = [i for i in order[b:b + batch_size] if len(seqs[i]) > starts[i]]
            if not idx:
                continue
            ids, mask = runner.pad([seqs[i] for i in idx])
            ids, mask = ids.to(runner.device), mask.to(runner.device)
            if self.weight is not None:
                hidden = self.base(input_ids=ids, attention_mask=mask.long(), use_cache=False).last_hidden_state
            else:
                hidden = None
            rows, cols = [], []
            for r, i in enumerate(idx):
                for t in range(max(starts[i], 1), len(seqs[i])):
                    rows.append(r)
                    cols.append(t)
            rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
            target = ids[rows_t, cols_t]
            nll = torch.empty(len(rows), dtype=torch.float64)
            if hidden is not None:
                h = hidden[rows_t, cols_t - 1]  # the state that predicts token t
                for c in range(0, len(rows), chunk):
                    logits = self._last_logits(h[c:c + chunk, None])
                    tgt = logits.gather(1, target[c:c + chunk, None])[:, 0]
                    nll[c:c + chunk] = (torch.logsumexp(logits, -1) - tgt).double().cpu()
            else:
                lp = runner.next_token_logprobs(ids.cpu(), mask.cpu())  # [batch, T-1]
                nll = -lp[rows_t, cols_t - 1]
            for r, t, x in zip(rows, cols, nll.tolist()):
                out[idx[r]].append(x)
        return out
