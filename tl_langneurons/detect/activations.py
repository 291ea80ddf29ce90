"""Step 1 of the method: pooled activations of every neuron on every text.

Texts are tokenized (BOS first, as the paper's code does), sorted by length and batched with
right padding so padding stays small and never shifts positions. Pooling runs inside the hooks,
so the full [batch, pos, d] activations are never kept, and the forward pass stops after the last
block that holds a site (the unembedding is never computed).

With ``token_groups`` (one group, e.g. the language, per text) the same pass also counts token
values for the token-level selectors (``detect/selectors.py``): per group, neuron and bin, the
number of real tokens (BOS left out: its activation is the same for every text) whose value falls
in each bin of a fixed histogram (:func:`token_bins`): bin 0 holds values <= 0, bin 1 (0, 2^-10),
then 1/8-octave bins up to 2^6, the last holding everything >= 2^6. Bin 0 gives LAPE's count of
tokens with activation > 0 exactly; the bins give any high percentile of a neuron to within one
bin (<= 12.5% relative) in one pass, and the exact count of tokens above that bin edge.
Memory: groups x neurons x 131 int32 (116 MB for 6 languages x 36,864 neurons).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import numpy as np
from jaxtyping import Bool, Float
from safetensors import SafetensorError
from torch import Tensor

from ..errors import LangNeuronsError
from ..model.driver import Runner
from ..model.protocol import HookedModel
from ..model.sites import NeuronIndex, flat_units, resolve_sites
from ..progress import progress_bar
from ..provenance import atomic_write_bytes, package_versions, sha256_texts
from ..results import fault_point
from .storage import DiskMatrix, load_checkpoint, save_checkpoint
from .token_bins import N_TOKEN_BINS, TOKEN_BINS, bin_edges, token_bins  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)
POOLINGS = ("mean", "max", "last", "median")

def pool(x: Float[Tensor, "batch pos d"], mask: Bool[Tensor, "batch pos"], how: str) -> Float[Tensor, "batch d"]:
    """Pool over the positions where ``mask`` is True (padding never takes part)."""
    if how == "mean":
        m = mask.to(x.dtype).unsqueeze(-1)
        return (x * m).sum(1) / m.sum(1).clamp_min(1)
    if how == "max":
        return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values
    if how == "last":
        pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask, pos, -1).max(1).values
        return x[torch.arange(x.shape[0], device=x.device), last]
    if how == "median":  # lower median, as torch.median
        return x.masked_fill(~mask.unsqueeze(-1), float("nan")).nanmedian(1).values
    raise LangNeuronsError(f"unknown pooling {how!r}; use one of {', '.join(POOLINGS)}")


@dataclass
class Tokenized:
    ids: list[list[int]]
    n_truncated: int


def tokenize(runner: Runner, texts: Sequence[str], max_length: int | None = None, truncate: bool = True) -> Tokenized:
    """Token ids of each text, BOS first when the tokenizer has one; long texts are truncated."""
    tok = runner.tokenizer
    limit = min(max_length or runner.max_length, runner.max_length)
    enc = tok(list(texts), add_special_tokens=False)["input_ids"]
    bos = runner.bos_id
    out, n_trunc = [], 0
    for i, ids in enumerate(enc):
        ids = ([bos] if bos is not None else []) + list(ids)
        if len(ids) > limit:
            if not truncate:
                raise LangNeuronsError(
                    f"text {i} has {len(ids)} tokens, more than the limit {limit}; shorten it or allow truncation"
                )
            ids = ids[:limit]
            n_trunc += 1
        if len(ids) == 0:
            raise LangNeuronsError(f"text {i} has no tokens")
        out.append(ids)
    if n_trunc:
        warnings.warn(f"{n_trunc} text(s) longer than {limit} tokens were truncated", stacklevel=2)
    return Tokenized(out, n_trunc)


def make_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Text indices grouped by length (longest first), each batch within both limits."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, cur = [], []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) + 1 > batch_size or (len(cur) + 1) * longest > max_batch_tokens):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


@dataclass
class PooledActivations:
    """Pooled activations [n_texts, n_neurons] (float32) with the neuron index table and provenance."""

    values: Float[Tensor, "text neuron"] | DiskMatrix
    index: NeuronIndex
    meta: dict = field(default_factory=dict)
    # with collect(..., resid=True): per text "mean" [text, layer, d_model], "norm_sum" [text, layer], "norm_count"
    resid: dict[str, Tensor] | None = None
    # with collect(..., token_groups=...): "hist" [group, neuron, N_TOKEN_BINS] int32 token counts per bin
    # (see token_bins) and "n_tokens" [group] int64 real tokens (BOS excluded) per group
    tokens: dict[str, Tensor] | None = None

    def header(self) -> dict:
        return {"index": self.index.to_dict(), **self.meta}

    def save(self, path: str | Path) -> None:
        """safetensors with a JSON header (model, sites, pooling, corpus hash, versions); atomic. The token
        histogram and the residual-stream means, when collected, are saved beside the values (so another
        selector can reuse the cache, and its neurons steer with diffmean and sparse too)."""
        from safetensors.torch import save

        tensors = {"values": self.values.contiguous()}
        tensors.update({f"tokens.{k}": v.contiguous() for k, v in (self.tokens or {}).items()})
        tensors.update({f"resid.{k}": v.contiguous() for k, v in (self.resid or {}).items()})
        data = save(tensors, metadata={"tl_langneurons": json.dumps(self.header())})
        atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | Path, expect: dict | None = None) -> "PooledActivations":
        """Load a cache; with ``expect``, refuse it unless every expected header field matches."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                header = json.loads(f.metadata()["tl_langneurons"])
                values = f.get_tensor("values")
                tokens = {k[len("tokens."):]: f.get_tensor(k) for k in f.keys() if k.startswith("tokens.")} or None
                resid = {k[len("resid."):]: f.get_tensor(k) for k in f.keys() if k.startswith("resid.")} or None
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError, RuntimeError) as e:
            raise LangNeuronsError(f"activation cache {path} is corrupt or not a tl-langneurons cache ({e}); delete it") from e
        if expect:
            diff = [k for k, v in expect.items() if header.get(k) != v]
            if diff:
                raise LangNeuronsError(
                    f"activation cache {path} was made for other settings (different {', '.join(diff)}); "
                    "delete it or choose another cache path"
                )
        index = NeuronIndex.from_dict(header.pop("index"))
        if tuple(values.shape) != (header.get("n_texts"), index.n_neurons):
            raise LangNeuronsError(f"activation cache {path} has shape {tuple(values.shape)}, which does not match its header; delete it")
        if tokens is not None and (set(tokens) != {"hist", "n_tokens"} or tokens["hist"].shape[1:] != (index.n_neurons, N_TOKEN_BINS)
                                   or header.get("token_bins") != TOKEN_BINS):
            raise LangNeuronsError(f"activation cache {path} holds token statistics of another layout; delete it")
        if resid is not None and (set(resid) != {"mean", "norm_sum", "norm_count"}
                                  or any(t.shape[0] != values.shape[0] for t in resid.values())):
            raise LangNeuronsError(f"activation cache {path} holds residual means of another layout; delete it")
        return cls(values, index, header, resid=resid, tokens=tokens)


@torch.no_grad()
def collect(model: HookedModel, texts: Sequence[str], sites: str | NeuronIndex = "mlp_post", pooling: str = "mean",
            include_bos: bool = True, batch_size: int = 32, max_batch_tokens: int = 8192,
            max_length: int | None = 512, progress: bool = True,
            on_batch: Callable[[int, int], None] | None = None, truncate: bool = True,
            checkpoint: str | Path | None = None, checkpoint_every_s: float = 30.0,
            store: str | Path | None = None, keep_checkpoint: bool = False, resid: bool = False,
            token_groups: Sequence[int] | np.ndarray | None = None,
            shard: tuple[int, int] | None = None) -> PooledActivations | None:
    """Pooled activations of ``texts`` at ``sites`` (step 1 of the method).

    ``pooling`` is mean (the paper), max, last or median over each text's real tokens; the BOS
    position takes part unless ``include_bos`` is False. Texts longer than ``max_length`` tokens
    are truncated with a warning, or refused when ``truncate`` is False. With ``checkpoint``, the
    finished batches are saved there (every ``checkpoint_every_s`` and when interrupted) and a
    rerun with the same arguments skips them; the file is removed once the run completes, or (with
    ``keep_checkpoint``) holds every row, for a caller whose later steps may still be interrupted.
    With ``store`` (a ``.npy`` path) the values go to a :class:`DiskMatrix` there instead of memory.
    With ``resid``, the same pass also pools the residual stream of every layer up to the last site
    (``blocks.L.hook_resid_post``) into ``.resid`` (for residual steering: the means per language).
    With ``token_groups`` (an integer group per text, e.g. its language), the same pass counts the
    token values of each group in a fixed histogram per neuron into ``.tokens`` (see the module
    docstring; for LAPE and act-prob-90p). Returns float32 values [n_texts, n_neurons].
    With ``shard=(rank, world)`` (a torch.distributed group; see ``distributed.py`` and ``detect/gather.py``) this process
    runs only batches ``rank, rank + world, ...`` of the batches one process would form, and the rows go
    to rank 0, which returns the whole result (identical to one process); the other ranks return None.
    """
    settings = CollectSettings(poolings=(pooling,), include_bos=include_bos, batch_size=batch_size,
                               max_batch_tokens=max_batch_tokens, max_length=max_length, truncate=truncate, resid=resid)
    run = _Collection(model, texts, sites, settings, checkpoint=checkpoint, checkpoint_every_s=checkpoint_every_s,
                      store=store, keep_checkpoint=keep_checkpoint, token_groups=token_groups, shard=shard)
    out = run.run(progress=progress, on_batch=on_batch)
    return None if out is None else out[pooling]


@torch.no_grad()
def collect_poolings(model: HookedModel, texts: Sequence[str], sites: str | NeuronIndex = "mlp_post",
                     poolings: Sequence[str] = POOLINGS, include_bos: bool = True, batch_size: int = 32,
                     max_batch_tokens: int = 8192, max_length: int | None = 512,
                     progress: bool = True) -> dict[str, PooledActivations]:
    """Several poolings of the same texts from one forward pass (e.g. to compare mean, max, last
    and median): ``{pooling: PooledActivations}``, each equal to :func:`collect` with that pooling."""
    if not poolings or len(set(poolings)) != len(poolings):
        raise LangNeuronsError("poolings must be a non-empty list without repeats")
    settings = CollectSettings(poolings=tuple(poolings), include_bos=include_bos, batch_size=batch_size,
                               max_batch_tokens=max_batch_tokens, max_length=max_length)
    return _Collection(model, texts, sites, settings).run(progress=progress)


@dataclass(frozen=True)
class CollectSettings:
    """What shapes the pooled values (the first pooling is the one a checkpoint or store holds)."""

    poolings: tuple[str, ...] = ("mean",)
    include_bos: bool = True
    batch_size: int = 32
    max_batch_tokens: int = 8192
    max_length: int | None = 512
    truncate: bool = True
    resid: bool = False  # also the per-text mean residual stream of every layer (for residual steering)

    def __post_init__(self) -> None:
        for p in self.poolings:
            if p not in POOLINGS:
                raise LangNeuronsError(f"unknown pooling {p!r}; use one of {', '.join(POOLINGS)}")


class _Collection:
    """One collection run: tokenized, length-sorted batches; pooling inside the hooks; the rows of
    finished batches in memory or a :class:`DiskMatrix`, checkpointed for resume.

    With ``shard=(rank, world)`` every rank tokenizes all texts and forms the batches one process would
    (a row's value depends on its batch's padding at float-rounding level), runs batches ``bi % world ==
    rank`` only, and keeps just their rows (``self.rows``, in text order; ``self.local`` maps a text to
    its row here); ``distributed.gather_collection`` puts them together on rank 0."""

    def __init__(self, model: HookedModel, texts: Sequence[str], sites: str | NeuronIndex, settings: CollectSettings, *,
                 checkpoint: str | Path | None = None, checkpoint_every_s: float = 30.0,
                 store: str | Path | None = None, keep_checkpoint: bool = False,
                 token_groups: Sequence[int] | np.ndarray | None = None, shard: tuple[int, int] | None = None):
        if len(texts) == 0:
            raise LangNeuronsError("no texts to run; the corpus is empty")
        if shard is not None and (store is not None or checkpoint is not None):
            raise LangNeuronsError("an on-disk matrix (--on-disk) or a checkpoint cannot be used with several processes; "
                                   "run on one process for those")
        self.s, self.texts = settings, texts
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every_s, self.store, self.keep_checkpoint = checkpoint_every_s, store, keep_checkpoint
        self.runner = Runner(model)
        self.index = sites if isinstance(sites, NeuronIndex) else resolve_sites(self.runner, sites)
        self.tokd = tokenize(self.runner, texts, settings.max_length, settings.truncate)
        self.lengths = [len(t) for t in self.tokd.ids]
        self.batches = make_batches(self.lengths, settings.batch_size, settings.max_batch_tokens)
        self.first = settings.poolings[0]
        self.shard = shard
        if shard is None:
            self.mine = list(range(len(self.batches)))
            self.rows = torch.arange(len(texts))
        else:
            rank, world = shard
            self.mine = list(range(rank, len(self.batches), world))
            self.rows = torch.tensor(sorted(i for bi in self.mine for i in self.batches[bi]), dtype=torch.long)
        self.local = torch.full((len(texts),), -1, dtype=torch.long)
        self.local[self.rows] = torch.arange(len(self.rows))
        shape = (len(self.rows), self.index.n_neurons)
        self.out = self._matrix(store, shape)
        self.extra = {p: torch.empty(shape, dtype=torch.float32) for p in settings.poolings[1:]}
        self.done = torch.zeros(len(texts), dtype=torch.bool)
        self.header = {"texts_sha256": sha256_texts(texts), "pooling": self.first, "include_bos": settings.include_bos,
                       "index": self.index.to_dict(), "max_length": settings.max_length, "n_texts": len(texts)}
        self.resid_layers = list(range(max(sl.layer for sl in self.index.slices) + 1)) if settings.resid else []
        if self.resid_layers:
            self.header["resid"] = True
            d = self.runner.d_model()
            # per text: mean residual (pooled like the neurons), summed norm over non-BOS tokens, their count
            self.resid = {"mean": torch.zeros((len(self.rows), len(self.resid_layers), d)),
                          "norm_sum": torch.zeros((len(self.rows), len(self.resid_layers)), dtype=torch.float64),
                          "norm_count": torch.zeros(len(self.rows), dtype=torch.float64)}
        self.groups: Tensor | None = None
        if token_groups is not None:
            self._token_histogram(token_groups)
        if self.checkpoint is not None and self.checkpoint.exists():
            self._resume(store)
        # the batch being run: pooling mask, text rows, and one output buffer per pooling
        self._mask: Tensor | None = None
        self._rows: Tensor | None = None
        self._buf: dict[str, Tensor] = {}
        self._tok_sel: list[tuple[int, Tensor]] = []

    def _matrix(self, store: str | Path | None, shape: tuple[int, int]) -> Tensor | DiskMatrix:
        """Where the pooled rows go: memory, or the on-disk matrix ``store`` (a new one, or the one of the
        interrupted run the checkpoint resumes; never another file)."""
        if store is None:
            return torch.empty(shape, dtype=torch.float32)
        resume = self.checkpoint is not None and self.checkpoint.exists() and Path(store).exists()
        if Path(store).exists() and not resume:
            raise LangNeuronsError(f"{store} exists and is not a matrix of an interrupted run to resume; choose a new "
                                   "path for the on-disk matrix (it is never overwritten)")
        out = DiskMatrix(store) if resume else DiskMatrix.create(store, shape)
        if out.shape != shape:
            raise LangNeuronsError(f"{store} holds a {out.shape} matrix, not {shape}; delete it")
        return out

    def _token_histogram(self, token_groups: Sequence[int] | np.ndarray) -> None:
        """Keep the token histogram of each group of texts (a language's: lape and actprob read it)."""
        groups = torch.as_tensor(np.asarray(token_groups), dtype=torch.long)
        if groups.shape != (len(self.texts),) or (len(groups) and int(groups.min()) < 0):
            raise LangNeuronsError(f"token_groups must hold one group index >= 0 per text ({len(self.texts)}), got "
                                   f"shape {tuple(groups.shape)}")
        self.groups = groups
        n_groups = int(groups.max()) + 1
        self.header["token_bins"] = TOKEN_BINS
        self.header["token_groups_sha256"] = sha256_texts([str(g) for g in groups.tolist()])
        self.tokens = {"hist": torch.zeros((n_groups, self.index.n_neurons, N_TOKEN_BINS), dtype=torch.int32),
                       "n_tokens": torch.zeros(n_groups, dtype=torch.int64)}
        # counts of the running batch, added to self.tokens only once the batch is done (a resumed run never
        # counts a batch twice)
        self._tok_buf = torch.zeros_like(self.tokens["hist"])

    def _resume(self, store: str | Path | None) -> None:
        """Take up the finished batches of the checkpoint, if it belongs to this run."""
        prev = load_checkpoint(self.checkpoint, self.header)
        if prev is None:
            return
        values, self.done, extra = prev
        if self.resid_layers:
            self.resid = {k: extra[k] for k in self.resid}
        if self.groups is not None:
            self.tokens = {k: extra[f"tokens.{k}"] for k in self.tokens}
        if store is None:
            self.out = values
        log.warning("resuming from %s: %d of %d texts already done", self.checkpoint, int(self.done.sum()),
                    len(self.texts))

    def _hook(self, sl):
        def hook_fn(x, hook):
            flat = flat_units(x).float()
            for p in self.s.poolings:
                vals = pool(flat, self._mask.to(flat.device), p)
                if not torch.isfinite(vals).all():
                    bad = (~torch.isfinite(vals)).nonzero()[0]
                    raise LangNeuronsError(
                        f"non-finite activation at {sl.hook}[{int(bad[1])}] on text {self._rows[int(bad[0])]}; "
                        "check the model weights and dtype (use float32)"
                    )
                self._buf[p][:, sl.offset: sl.offset + sl.size] = vals.cpu()
            if self.groups is not None:
                self._count_tokens(flat, sl)
        return hook_fn

    def _count_tokens(self, flat: Float[Tensor, "batch pos d"], sl) -> None:
        d = flat.shape[-1]
        offsets = torch.arange(d, device=flat.device) * N_TOKEN_BINS
        for g, sel in self._tok_sel:
            idx = (token_bins(flat[sel]) + offsets).reshape(-1)
            counts = torch.bincount(idx, minlength=d * N_TOKEN_BINS).view(d, N_TOKEN_BINS)
            self._tok_buf[g, sl.offset: sl.offset + sl.size] += counts.to(torch.int32).cpu()

    def _extra(self) -> dict[str, Tensor] | None:
        extra = dict(self.resid) if self.resid_layers else {}
        if self.groups is not None:
            extra.update({f"tokens.{k}": v for k, v in self.tokens.items()})
        return extra or None

    def _resid_hook(self, i: int):
        def hook_fn(x, hook):
            h = x.float()
            self._resid_buf["mean"][:, i] = pool(h, self._mask.to(h.device), "mean").cpu()
            real = self._real.to(h.device)
            self._resid_buf["norm_sum"][:, i] = (h.norm(dim=-1) * real).sum(1).double().cpu()
        return hook_fn

    def _run_batch(self, b: list[int]) -> None:
        runner, device = self.runner, self.runner.device
        ids, mask = runner.pad([self.tokd.ids[i] for i in b])
        pool_mask = mask.clone()
        if not self.s.include_bos and runner.bos_id is not None:
            pool_mask[:, 0] = False
            if (pool_mask.sum(1) == 0).any():
                raise LangNeuronsError("a text has only the BOS token; with include_bos=False it has nothing to pool")
        self._mask, self._rows = pool_mask.to(device), torch.tensor(b)
        self._buf = {p: torch.empty((len(b), self.index.n_neurons), dtype=torch.float32) for p in self.s.poolings}
        if self.resid_layers:
            real = mask.clone()
            if runner.bos_id is not None:
                real[:, 0] = False  # the typical norm leaves out BOS, whose residual is an outlier in many models
            self._real = real.to(torch.float32)
            self._resid_buf = {"mean": torch.zeros((len(b), len(self.resid_layers), self.resid["mean"].shape[2])),
                               "norm_sum": torch.zeros((len(b), len(self.resid_layers)), dtype=torch.float64)}
        if self.groups is not None:
            real = mask.clone()
            if runner.bos_id is not None:
                real[:, 0] = False  # BOS: the same activation for every text, whatever its language
            g_rows = self.groups[b]
            self._tok_sel = [(int(g), (real & (g_rows == g).unsqueeze(1)).to(device)) for g in torch.unique(g_rows)]
            for g, _ in self._tok_sel:
                self._tok_buf[g].zero_()  # an interrupted batch may have left counts here
        runner.trunk(ids.to(device), mask.long().to(device))
        if self.groups is not None:
            for g, sel in self._tok_sel:
                self.tokens["hist"][g] += self._tok_buf[g]
                self.tokens["n_tokens"][g] += int(sel.sum())
        rows = self.local[b]  # = b on one process
        if self.resid_layers:
            self.resid["mean"][rows] = self._resid_buf["mean"]
            self.resid["norm_sum"][rows] = self._resid_buf["norm_sum"]
            self.resid["norm_count"][rows] = self._real.sum(1).double()
        if self.store is not None:
            self.out.write_rows(b, self._buf[self.first])
        else:
            self.out[rows] = self._buf[self.first]
        for p in self.s.poolings[1:]:
            self.extra[p][rows] = self._buf[p]
        self.done[b] = True

    def run(self, progress: bool = True, on_batch: Callable[[int, int], None] | None = None
            ) -> dict[str, PooledActivations] | None:
        hooks = [(sl.hook, self._hook(sl)) for sl in self.index.slices]
        hooks += [(self.runner.resid_post(layer), self._resid_hook(i)) for i, layer in enumerate(self.resid_layers)]
        hooks.append(self.runner.stopper(max(sl.layer for sl in self.index.slices)))
        t0 = time.perf_counter()
        bar = progress_bar(total=len(self.rows), desc=f"collect {'+'.join(self.s.poolings)} @ {self.index.spec}",
                           unit="text", disable=not progress, initial=int(self.done.sum()))
        last_save = time.perf_counter()
        from ..distributed import agreed
        from .gather import gather_collection

        try:
            with agreed(self.shard), self.runner.hooks(hooks):  # an error on one rank is raised on every rank
                for bi in self.mine:
                    b = self.batches[bi]
                    if bool(self.done[b].all()):
                        continue
                    self._run_batch(b)
                    fault_point("collect")
                    bar.update(len(b))
                    if self.checkpoint is not None and time.perf_counter() - last_save > self.checkpoint_every_s:
                        save_checkpoint(self.checkpoint, self.header, self.out, self.done, self._extra())
                        last_save = time.perf_counter()
                    if on_batch:
                        on_batch(bi, len(self.batches))
        except BaseException:
            if self.checkpoint is not None and self.done.any():
                save_checkpoint(self.checkpoint, self.header, self.out, self.done, self._extra())
            raise
        finally:
            bar.close()
        if self.checkpoint is not None and self.keep_checkpoint:
            save_checkpoint(self.checkpoint, self.header, self.out, self.done, self._extra())
        elif self.checkpoint is not None and self.checkpoint.exists():
            self.checkpoint.unlink()
        if self.shard is not None and not gather_collection(self):
            return None  # not rank 0: its rows went there
        return self._result(time.perf_counter() - t0)

    def _result(self, seconds: float) -> dict[str, PooledActivations]:
        n_real = sum(self.lengths)
        n_padded = sum(len(b) * self.lengths[b[0]] for b in self.batches)
        meta = {
            "n_texts": len(self.texts),
            "pooling": self.first,
            "include_bos": self.s.include_bos,
            "sites": self.index.spec,
            "texts_sha256": self.header["texts_sha256"],
            "max_length": self.s.max_length,
            "n_truncated": self.tokd.n_truncated,
            "tokens": n_real,
            "padded_share": 1 - n_real / n_padded,
            "seconds": seconds,
            "versions": package_versions(),
        }
        if self.groups is not None:
            meta["token_bins"] = TOKEN_BINS
        log.info("collected %d texts in %.1fs (%.1f texts/s), padded share %.1f%%", len(self.texts), seconds,
                 len(self.texts) / max(seconds, 1e-9), 100 * meta["padded_share"])
        out = {p: PooledActivations(self.out if p == self.first else self.extra[p], self.index, {**meta, "pooling": p})
                for p in self.s.poolings}
        if self.resid_layers:
            out[self.first].resid = self.resid
        if self.groups is not None:
            out[self.first].tokens = self.tokens
        return out
