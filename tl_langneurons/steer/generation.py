"""Sampling with clamp hooks active (step 5): batched, KV-cached, reproducible per seed.

Each sample owns a ``torch.Generator`` seeded with its seed and draws one uniform number per step;
the token is found by inverse-CDF sampling over the full vocabulary (temperature 0.8, no top-k or
top-p, as in the paper's code). A sample therefore depends only on its seed, the prompt and the
model, not on the batch it runs in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import LangNeuronsError
from ..model.driver import Runner
from ..model.protocol import HookedModel


@dataclass
class GenerationConfig:
    """Sampling settings; defaults are the paper's (BOS only, T=0.8, 64 tokens, seeds 1..100)."""

    max_new_tokens: int = 64
    temperature: float = 0.8
    seeds: Sequence[int] = field(default_factory=lambda: list(range(1, 101)))
    batch_size: int = 100
    prompt: str | None = None
    use_cache: bool = True
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        import math

        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds:
            raise LangNeuronsError("the seed list is empty; give at least one seed (e.g. --samples 100)")
        if len(set(self.seeds)) != len(self.seeds):
            raise LangNeuronsError("the seed list has duplicates; every sample needs its own seed")
        if self.max_new_tokens < 1:
            raise LangNeuronsError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise LangNeuronsError(f"temperature must be positive and finite (such as 0.8), got {self.temperature}")
        if self.batch_size < 1:
            raise LangNeuronsError("batch_size must be at least 1")


@dataclass
class Sample:
    seed: int
    tokens: list[int]
    text: str


SAMPLER = "inverse-cdf-blocked-v1"  # recorded with every generated cell
_BLOCK = 1024


def sample_next(logits: Float[Tensor, "batch vocab"], temperature: float,
                gens: Sequence[torch.Generator]) -> Int[Tensor, "batch"]:
    """One token per row by inverse-CDF sampling with the row's own generator.

    Exact for the softmax at ``temperature`` over the full vocabulary: each row draws u ~ U(0, 1)
    and takes the first token whose cumulative (unnormalised) probability exceeds u times the total.
    The cumulative sum is taken in two levels (blocks of 1024 tokens, float64), so a step costs
    one pass over the logits; every operation is per row, so a row's token does not depend on
    the other rows of the batch.
    """
    b, v = logits.shape
    x = logits.float() / temperature
    p = torch.exp(x - x.max(-1, keepdim=True).values)
    pad = (-v) % _BLOCK
    if pad:
        p = torch.nn.functional.pad(p, (0, pad))
    blocks = einops.rearrange(p, "b (n block) -> b n block", block=_BLOCK)
    cum_blocks = blocks.sum(-1, dtype=torch.float64).cumsum(-1)  # [b, n_blocks]
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens]).to(p.device)
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


@torch.no_grad()
def generate(model: HookedModel, config: GenerationConfig | None = None, fwd_hooks: Sequence[tuple[str, Callable]] = (),
             progress: bool = False, desc: str = "generate") -> list[Sample]:
    """Samples (one per seed) with ``fwd_hooks`` active; hooks are removed afterwards, also on errors."""
    cfg = config or GenerationConfig()
    runner = Runner(model)
    start = prompt_ids(runner, cfg.prompt)
    eos = getattr(runner.tokenizer, "eos_token_id", None)
    out: list[Sample] = []
    batches = [cfg.seeds[i:i + cfg.batch_size] for i in range(0, len(cfg.seeds), cfg.batch_size)]
    bar = tqdm(total=len(cfg.seeds) * cfg.max_new_tokens, desc=desc, unit="tok", disable=not progress)
    with runner.hooks(list(fwd_hooks)):
        for seeds in batches:
            gens = [torch.Generator().manual_seed(s) for s in seeds]
            ids = torch.tensor([start] * len(seeds), dtype=torch.long, device=runner.device)
            new = torch.empty((len(seeds), 0), dtype=torch.long, device=runner.device)
            done = torch.zeros(len(seeds), dtype=torch.bool)
            past, step_in = None, ids
            for _ in range(cfg.max_new_tokens):
                if cfg.use_cache:
                    logits, past = runner.step(step_in, past)
                else:
                    logits = runner.logits(torch.cat([ids, new], 1))[:, -1, :]
                tok = sample_next(logits, cfg.temperature, gens)
                new = torch.cat([new, tok.unsqueeze(1)], 1)
                step_in = tok.unsqueeze(1)
                bar.update(len(seeds))
                if cfg.stop_at_eos and eos is not None:
                    done |= (tok == eos).cpu()
                    if done.all():
                        break
            for s, row in zip(seeds, new.tolist()):
                if cfg.stop_at_eos and eos is not None and eos in row:
                    row = row[: row.index(eos)]
                out.append(Sample(s, row, runner.tokenizer.decode(row, skip_special_tokens=True)))
    bar.close()
    return out


@torch.no_grad()
def sample_nll(model: HookedModel, samples: Sequence[Sample], prompt: str | None = None, batch_size: int = 50) -> list[float]:
    """Mean per-token negative log-likelihood of each sample's tokens under ``model`` as it is
    (call it without clamp hooks: the fluency of steered text judged by the unclamped model)."""
    runner = Runner(model)
    start = prompt_ids(runner, prompt)
    out: list[float] = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        if max(len(s.tokens) for s in chunk) == 0:
            out += [float("nan")] * len(chunk)
            continue
        ids, mask = runner.pad([start + list(s.tokens) for s in chunk])
        lp = runner.next_token_logprobs(ids, mask)
        lp[:, : len(start) - 1] = 0.0  # only the generated tokens count
        for r, s in enumerate(chunk):
            out.append(float(-lp[r].sum() / len(s.tokens)) if len(s.tokens) else float("nan"))
    return out
