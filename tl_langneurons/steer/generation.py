"""Sampling with clamp hooks active (step 5): batched, KV-cached, reproducible per seed.

Each sample owns a ``torch.Generator`` seeded with its seed and draws one uniform number per step;
the token is found by inverse-CDF sampling over the full vocabulary (temperature 0.8, no top-k or
top-p, as in the paper's code). A sample therefore depends only on its seed, the prompt and the
model, not on the batch it runs in.

:func:`generate` samples many seeds of one prompt; :func:`generate_many` takes (prompt, seed)
requests of different prompts, left-pads each batch and gives every request exactly the tokens it
gets alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..config import check_number, check_numbers, option
from ..errors import LangNeuronsError
from ..model.driver import Runner
from ..model.protocol import HookedModel
from ..model.unembed import Unembed
from ..progress import progress_bar
from .positions import generation_step
from .script_gate import ScriptGate, blocked_rows


@dataclass
class GenerationConfig:
    """Sampling settings; defaults are the paper's (BOS only, T=0.8, 64 tokens, seeds 1..100)."""

    max_new_tokens: int = option(64, at_least=1)
    temperature: float = option(0.8, positive=True)
    seeds: Sequence[int] = field(default_factory=lambda: list(range(1, 101)))
    batch_size: int = option(100, at_least=1)
    prompt: str | None = None
    use_cache: bool = True
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds:
            raise LangNeuronsError("the seed list is empty; give at least one seed (e.g. --samples 100)")
        if len(set(self.seeds)) != len(self.seeds):
            raise LangNeuronsError("the seed list has duplicates; every sample needs its own seed")
        check_numbers(self)  # max_new_tokens, temperature, batch_size


Prompt = str | Sequence[int] | None
"""A prompt: text, token ids, or None (BOS only)."""


@dataclass
class Sample:
    """One generated continuation: its seed, new tokens (EOS and after cut off), their text and
    the prompt it continues (as given: text, token ids or None for BOS only)."""

    seed: int
    tokens: list[int]
    text: str
    prompt: str | list[int] | None = None


SAMPLER = "inverse-cdf-blocked-v1"  # recorded with every generated cell
_BLOCK = 1024


def sample_next(logits: Float[Tensor, "batch vocab"], temperature: float,
                gens: Sequence[torch.Generator], rows_per_chunk: int = 4,
                blocked: Bool[Tensor, "batch vocab"] | None = None) -> Int[Tensor, "batch"]:
    """One token per row by inverse-CDF sampling with the row's own generator.

    Exact for the softmax at ``temperature`` over the full vocabulary: each row draws u ~ U(0, 1)
    and takes the first token whose cumulative (unnormalised) probability exceeds u times the total.
    The cumulative sum is taken in two levels (blocks of 1024 tokens, float64), so a step costs
    one pass over the logits; every operation is per row, so a row's token does not depend on
    the other rows of the batch.

    Rows go ``rows_per_chunk`` at a time through one reused buffer (4 rows of a 262k vocabulary
    stay in the L3 cache; a fresh 100-row tensor per operation costs page faults and memory
    traffic): the operations and their order per row are those of the one-shot version, so the
    tokens are the same (``tests/data/golden_samples.json``).

    ``blocked``: per row the tokens it may not take (a script gate, :mod:`.script_gate`): their logits are set to
    -inf before the softmax, so they get probability 0 and the row samples from the others renormalised; a row
    with nothing blocked gets the tokens it gets without ``blocked``.
    """
    b, v = logits.shape
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
    pad = (-v) % _BLOCK
    out = torch.empty(b, dtype=torch.long)
    buf = torch.empty((min(b, rows_per_chunk), v + pad), dtype=torch.float32, device=logits.device)
    for r0 in range(0, b, rows_per_chunk):
        rows = slice(r0, min(b, r0 + rows_per_chunk))
        n = rows.stop - rows.start
        x = buf[:n, :v]
        torch.div(logits[rows].float(), temperature, out=x)
        if blocked is not None:
            x.masked_fill_(blocked[rows], float("-inf"))
        x.sub_(x.max(-1, keepdim=True).values).exp_()
        if pad:
            buf[:n, v:] = 0.0
        out[rows] = _inverse_cdf(buf[:n], u[rows].to(logits.device), v).cpu()
    return out.to(logits.device)


def _inverse_cdf(p: Float[Tensor, "rows padded"], u: Float[Tensor, "rows"], v: int) -> Int[Tensor, "rows"]:
    """First index whose cumulative sum of ``p`` exceeds ``u`` times the total (two-level, float64)."""
    b = p.shape[0]
    blocks = einops.rearrange(p, "b (n block) -> b n block", block=_BLOCK)
    cum_blocks = blocks.sum(-1, dtype=torch.float64).cumsum(-1)  # [b, n_blocks]
    target = u * cum_blocks[:, -1]
    j = torch.searchsorted(cum_blocks, target.unsqueeze(1)).squeeze(1).clamp_max(cum_blocks.shape[1] - 1)
    before = torch.where(j > 0, cum_blocks.gather(1, (j - 1).clamp_min(0).unsqueeze(1)).squeeze(1), 0.0)
    within = blocks[torch.arange(b, device=p.device), j].to(torch.float64).cumsum(-1)  # [b, block]
    i = torch.searchsorted(within, (target - before).unsqueeze(1)).squeeze(1).clamp_max(_BLOCK - 1)
    return (j * _BLOCK + i).clamp_max(v - 1)


def prompt_ids(runner: Runner, prompt: str | None) -> list[int]:
    """BOS, then the prompt's tokens (if any)."""
    ids = [] if runner.bos_id is None else [runner.bos_id]
    if prompt:
        ids += runner.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise LangNeuronsError("nothing to start from: the tokenizer has no BOS token and the prompt is empty")
    return ids


def start_ids(runner: Runner, prompt: Prompt) -> list[int]:
    """The ids a prompt starts from: BOS, then the prompt's tokens. Token ids are used as given,
    BOS put in front unless they already start with it."""
    if prompt is None or isinstance(prompt, str):
        return prompt_ids(runner, prompt)
    ids = [int(t) for t in prompt]
    bos = runner.bos_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if not ids:
        raise LangNeuronsError("nothing to start from: the tokenizer has no BOS token and the prompt is empty")
    return ids


@torch.no_grad()
def generate(model: HookedModel, config: GenerationConfig | None = None, fwd_hooks: Sequence[tuple[str, Callable]] = (),
             progress: bool = False, desc: str = "generate", gate: ScriptGate | None = None) -> list[Sample]:
    """Samples (one per seed) with ``fwd_hooks`` active (and the script ``gate``, if any); hooks are removed
    afterwards, also on errors."""
    cfg = config or GenerationConfig()
    return generate_many(model, [(cfg.prompt, s) for s in cfg.seeds], max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, batch_size=cfg.batch_size, fwd_hooks=fwd_hooks,
                         progress=progress, stop_at_eos=cfg.stop_at_eos, use_cache=cfg.use_cache, desc=desc,
                         gates=None if gate is None else [gate] * len(cfg.seeds))


@torch.no_grad()
def generate_many(model: HookedModel, requests: Sequence[tuple[Prompt, int]], max_new_tokens: int = 64,
                  temperature: float = 0.8, batch_size: int = 100, fwd_hooks: Sequence[tuple[str, Callable]] = (),
                  progress: bool = False, stop_at_eos: bool = True, use_cache: bool = True,
                  desc: str = "generate", groups: Sequence[int] | None = None,
                  group_hooks: Sequence[Sequence[tuple[str, Callable]]] = (),
                  gates: Sequence[ScriptGate | None] | None = None) -> list[Sample]:
    """One sample per ``(prompt, seed)`` request, in the order of ``requests``, with ``fwd_hooks`` active
    (removed afterwards, also on errors).

    A prompt is text (BOS + its tokens), token ids (BOS put in front unless they start with it) or
    None (BOS only). Requests are sorted by prompt length (stably) and cut into batches of
    ``batch_size``; within a batch shorter prompts are left-padded with the tokenizer's pad id, the
    ``attention_mask`` masks the padding in the prompt pass and in every KV-cached step after it,
    and ``position_ids`` count real tokens only (models without ``position_ids``, such as BLOOM's
    ALiBi, take positions from the mask). Each request samples with its own generator, so it gets
    the tokens it gets alone: padded logits differ from unpadded ones only by float rounding (about
    3e-5 on Gemma-3-270M), which changes a token only if a draw falls that close to a boundary of
    the inverse CDF. A batch whose prompts all have the same length runs unpadded, with no mask:
    :func:`generate` is this function on one prompt.

    Logits come from :class:`~tl_langneurons.model.unembed.Unembed`: the model's unembedding into a
    reused buffer, bit for bit the model's logits on every single-position step, so samples from
    BOS are those of earlier versions (``tests/data/golden_samples.json``). The prompt pass
    multiplies only the last prompt position, which differs from the model's all-position product
    by float rounding only.

    Several interventions in one run: ``groups[i]`` names the entry of ``group_hooks`` (a list of
    fwd_hooks) that steers request ``i``, so cells of different languages, conditions or methods
    share batches (small cells alone leave the matrix products half idle). Each group's hooks see
    only its own rows (``x[rows]``, written back), so a request gets the tokens it gets in a run of
    its group alone; ``fwd_hooks`` apply to every row. ``gates[i]``: the script gate of request ``i`` (or None).

    The hooks see the padded batch: a clamp at ``positions="all"`` also writes the pad positions.
    That is harmless, since no real token attends to them, but a hook that reads activations
    (a cache, a mean over positions) sees the padding too.
    """
    check_number("max_new_tokens", max_new_tokens, at_least=1)
    check_number("temperature", temperature, positive=True)
    check_number("batch_size", batch_size, at_least=1)
    runner = Runner(model)
    eos = getattr(runner.tokenizer, "eos_token_id", None) if stop_at_eos else None
    known: dict = {}
    starts: list[list[int]] = []
    for prompt, _ in requests:
        key = prompt if prompt is None or isinstance(prompt, str) else tuple(int(t) for t in prompt)
        if key not in known:
            known[key] = start_ids(runner, prompt)
        starts.append(known[key])
    order = sorted(range(len(requests)), key=lambda i: len(starts[i]))
    out: list[Sample | None] = [None] * len(requests)
    bar = progress_bar(total=len(requests) * max_new_tokens, desc=desc, unit="tok", disable=not progress)
    head = Unembed.of(runner)
    if groups is not None:
        groups = [int(g) for g in groups]
        if len(groups) != len(requests):
            raise LangNeuronsError(f"groups has {len(groups)} entries for {len(requests)} requests")
        if groups and (min(groups) < 0 or max(groups) >= len(group_hooks)):
            raise LangNeuronsError(f"a group index is outside 0..{len(group_hooks) - 1}")
        # requests of one group next to each other within a prompt length: fewer row slices per hook
        order = sorted(range(len(requests)), key=lambda i: (len(starts[i]), groups[i]))
    if gates is not None and len(gates) != len(requests):
        raise LangNeuronsError(f"gates has {len(gates)} entries for {len(requests)} requests")
    try:
        with runner.hooks(list(fwd_hooks)):
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                seeds = [int(requests[i][1]) for i in idx]
                batch_hooks = [] if groups is None else _row_group_hooks([groups[i] for i in idx], group_hooks)
                with runner.hooks(batch_hooks):
                    rows = _sample_batch(runner, head, [starts[i] for i in idx], seeds, max_new_tokens, temperature,
                                         eos, use_cache, bar, None if gates is None else [gates[i] for i in idx])
                for i, seed, row in zip(idx, seeds, rows):
                    prompt = requests[i][0]
                    if prompt is not None and not isinstance(prompt, str):
                        prompt = [int(t) for t in prompt]
                    out[i] = Sample(seed, row, runner.tokenizer.decode(row, skip_special_tokens=True), prompt)
    finally:
        bar.close()
    return [s for s in out if s is not None]


def _row_group_hooks(row_groups: Sequence[int], group_hooks: Sequence[Sequence[tuple[str, Callable]]]
                     ) -> list[tuple[str, Callable]]:
    """One hook per hook name that applies each group's hook functions to that group's rows only."""
    by_name: dict[str, list[tuple[Tensor, Callable]]] = {}
    for g in sorted(set(row_groups)):
        rows = torch.tensor([r for r, x in enumerate(row_groups) if x == g])
        for name, fn in group_hooks[g]:
            by_name.setdefault(name, []).append((rows, fn))

    def make(entries):
        def apply(x, hook):
            for rows, fn in entries:
                r = rows.to(x.device)
                part = x[r]
                y = fn(part, hook)
                x[r] = part if y is None else y
            return x
        return apply

    return [(name, make(entries)) for name, entries in by_name.items()]


def _sample_batch(runner: Runner, head: Unembed, starts: Sequence[list[int]], seeds: Sequence[int], max_new_tokens: int,
                  temperature: float, eos: int | None, use_cache: bool, bar,
                  gates: Sequence[ScriptGate | None] | None = None) -> list[list[int]]:
    """New tokens of each row (cut at EOS when ``eos`` is given) for left-padded ``starts``, each row under its
    script gate (``gates``; its mask built at the first step, when the logits' width is known)."""
    n, longest = len(starts), max(len(s) for s in starts)
    dev = runner.device
    ids = torch.full((n, longest), runner.pad_id, dtype=torch.long)
    mask = torch.zeros((n, longest), dtype=torch.long)
    for r, s in enumerate(starts):
        ids[r, longest - len(s):] = torch.as_tensor(s, dtype=torch.long)
        mask[r, longest - len(s):] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    padded = bool((mask == 0).any())
    # positions count real tokens only; the pads (masked) sit at 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0) if padded else None
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    new = torch.empty((n, 0), dtype=torch.long, device=dev)
    done = torch.zeros(n, dtype=torch.bool)
    past, step_in, blocked = None, ids, None
    for step in range(max_new_tokens):
        if use_cache:
            # the first pass holds the prompt: hooks for positions="generated" leave it alone
            with generation_step(step, prompt=step == 0):
                logits, past = head.step(step_in, past, attention_mask=mask if padded else None,
                                         position_ids=None if pos is None else pos[:, -step_in.shape[1]:])
        else:
            with generation_step(step):
                logits, _ = runner.step(torch.cat([ids, new], 1), None, attention_mask=mask if padded else None,
                                        position_ids=pos, use_cache=False)
        if step == 0 and gates is not None:
            blocked = blocked_rows(runner.tokenizer, gates, logits.shape[-1], logits.device)
        tok = sample_next(logits, temperature, gens, blocked=blocked)
        new = torch.cat([new, tok.unsqueeze(1)], 1)
        step_in = tok.unsqueeze(1)
        if padded:
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=dev)], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
        bar.update(n)
        if eos is not None:
            done |= (tok == eos).cpu()
            if done.all():
                bar.update(n * (max_new_tokens - step - 1))  # the steps skipped count as done
                break
    rows = new.tolist()
    if eos is not None:
        rows = [row[: row.index(eos)] if eos in row else row for row in rows]
    return rows


@torch.no_grad()
def sample_nll(model: HookedModel, samples: Sequence[Sample], prompt: str | None = None, batch_size: int = 32) -> list[float]:
    """Mean per-token negative log-likelihood of each sample's tokens under ``model`` as it is
    (call it without clamp hooks: the fluency of steered text judged by the unclamped model);
    nan for an empty sample. A sample's own prompt (``Sample.prompt``) is used where it has one,
    else ``prompt``; only the generated tokens are scored."""
    runner = Runner(model)
    seqs, starts = [], []
    for s in samples:
        start = start_ids(runner, s.prompt if s.prompt is not None else prompt)
        seqs.append(start + list(s.tokens))
        starts.append(len(start))
    nll = Unembed.of(runner, kernel="onednn").token_nll(seqs, starts, batch_size=batch_size)
    return [sum(x) / len(x) if x else float("nan") for x in nll]
