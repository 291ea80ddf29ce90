"""Language-specific neurons: ``find_neurons`` (steps 1-3) and the ``LanguageNeurons`` result.

``LanguageNeurons`` holds, per language, the top-k, bottom-k and middle-k neurons by AP (or by the
score of another selector, ``FindConfig.method``; see ``detect/selectors.py``) with
their AP, clamp value (median over the language's texts) and on/off statistics (``neuron_sets.py``). It
selects sets and layer subsets and gives steering hooks for TransformerLens (clamp, the paper's, by
default; any other intervention through ``hooks(method=...)``, built by its class in ``steer/``); its
``save``, ``load``, ``table`` and ``summary`` are those of ``neurons_io.py``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..config import count_or_percent, option
from ..errors import LangNeuronsError
from ..model.identity import activation_signature, check_same_model
from ..model.load import model_name, model_source, weights_fingerprint
from ..model.protocol import HookedModel
from ..model.sae import sae_meta
from ..model.sites import NeuronIndex, resolve_sites
from ..provenance import package_versions, peak_rss_gb
from ..registry import steering
from ..results import fault_point
from .neuron_sets import WHICH, NeuronSet, make_set, median0, neuron_statistics  # noqa: F401  (re-exported)
# saving, loading and describing live in neurons_io; their names stay importable from here
from .neurons_io import FORMAT_VERSION, load_fields, neuron_table, read_neurons_json, save_neurons, summary_markdown

__all__ = ["FORMAT_VERSION", "WHICH", "FindConfig", "LanguageNeurons", "NeuronSet", "find_neurons", "neuron_statistics",
           "read_neurons_json"]
from .activations import POOLINGS, PooledActivations, collect
from .corpus import MultilingualCorpus
from ..distributed import agreed, from_main, is_main
from ..distributed import context as dist_context
from .ranking import average_precision, bottom_k, check_k, middle_k, parse_k, top_k
from .selectors import SELECTORS, ONE_SIDED, TOKEN_METHODS, SelectorSettings, select, token_counts

log = logging.getLogger(__name__)

@dataclass
class FindConfig:
    """Settings of detection; defaults are the paper's."""

    sites: str = option("mlp_post", "mlp_post, mlp_pre, paper (every linear output of every block), hook "
                        "templates with {l} such as blocks.{l}.hook_resid_post, or hook names on one layer such as "
                        "an SAE's blocks.6.hook_resid_post.hook_sae_acts_post")
    pooling: str = option("mean", "pooling over each text's tokens", choices=POOLINGS)
    include_bos: bool = option(True, "leave the BOS position out of the pooling", flag="--no-bos")
    k: int | str = option(1000, "neurons per set: a count or a percentage of the neurons such as 0.5%",
                          parse=count_or_percent)
    batch_size: int = option(32, "texts per forward pass")
    max_batch_tokens: int = 8192
    max_length: int = option(512, "truncate texts longer than this many tokens")
    truncate: bool = option(True, "refuse texts longer than --max-length instead of truncating them",
                            flag="--refuse-long")
    method: str = option("ap", "neuron selector: ap (the paper: AP of pooled values), lape (entropy of per-language "
                         "P(activation > 0), Tang et al. 2024; top only), actprob (the same with P(activation above "
                         "the neuron's 90th percentile)), meandiff (Welch z of pooled means on vs off); --method is its earlier name",
                         choices=SELECTORS, flag=("--selector", "--method"))
    lape_top_rate: float = option(0.01, "lape/actprob: share of all neurons kept (lowest entropy)")
    lape_filter_rate: float = option(0.95, "lape/actprob: a kept neuron's top language probability must exceed this "
                                     "quantile of all probabilities")
    lape_bar_ratio: float = option(0.95, "lape/actprob: a language owns a kept neuron when its probability exceeds "
                                   "this quantile of all probabilities")
    actprob_percentile: float = option(90.0, "actprob: the percentile of each neuron's token activations")
    token_stats: bool = option(True, "skip the token statistics of lape/actprob (saves memory: neurons x languages x "
                               "131 x 4 bytes)", flag="--no-token-stats")

    def selector(self) -> SelectorSettings:
        return SelectorSettings(self.method, self.lape_top_rate, self.lape_filter_rate, self.lape_bar_ratio,
                                self.actprob_percentile)

    def __post_init__(self) -> None:
        self.selector()  # checks the method and its thresholds
        if self.method in TOKEN_METHODS and not self.token_stats:
            raise LangNeuronsError(f"method {self.method} needs the token statistics; drop --no-token-stats")
        if self.pooling not in POOLINGS:
            raise LangNeuronsError(f"unknown pooling {self.pooling!r}; use one of {', '.join(POOLINGS)}")
        if self.batch_size < 1 or self.max_batch_tokens < 1:
            raise LangNeuronsError("batch_size and max_batch_tokens must be positive")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, (int, np.integer)) or self.max_length < 2:
            raise LangNeuronsError(f"max_length must be at least 2 tokens (BOS and one token of text), got "
                                   f"{self.max_length!r}; for no limit give a large number such as 100000 "
                                   "(texts never exceed the model's context)")
        if isinstance(self.k, (int, np.integer)) and not isinstance(self.k, bool):
            check_k(int(self.k), 10**12)
        elif isinstance(self.k, str):
            parse_k(self.k, 10**12)  # the form only; the neuron count is known later
        else:
            raise LangNeuronsError(f"k must be a count such as 1000 or a percentage such as '0.5%', got {self.k!r}")


@dataclass
class LanguageNeurons:
    """The language-specific neurons of one model, per language (see module docstring)."""

    languages: list[str]
    index: NeuronIndex
    k: int
    sets: dict[str, dict[str, NeuronSet]]
    ap: Float[Tensor, "language neuron"]  # float64: AP of every neuron
    medians: Float[Tensor, "language neuron"]  # median of every neuron over the language's texts
    means: Float[Tensor, "language neuron"]  # mean of every neuron over the language's texts
    mean_all: Float[Tensor, "neuron"]  # mean of every neuron over all texts (for mean-ablation)
    meta: dict = field(default_factory=dict)
    # residual stream per language and layer (mean over texts of the pooled blocks.L.hook_resid_post), and the
    # typical residual norm per layer (mean over real non-BOS tokens); None for results found before they were kept
    resid_means: Float[Tensor, "language layer d_model"] | None = None
    resid_norms: Float[Tensor, "layer"] | None = None
    # the selector's score of every neuron (float64, higher = more the language's) when the method is not
    # ap (for ap it is ``ap``); lape/actprob: minus the entropy, the same for every language
    score: Float[Tensor, "language neuron"] | None = None
    # lape/actprob: the neurons the method selects for each language (its top sets, before the cap at k)
    eligible: Bool[Tensor, "language neuron"] | None = None
    # token statistics of the collection (see selectors.token_counts): "n_tokens" [L], "active" [L, N]
    # (tokens > 0), "above" [L, N] (tokens >= threshold), "threshold" [N], "threshold_bin" [N]
    token_stats: dict[str, Tensor] | None = None

    @property
    def method(self) -> str:
        """The selector that chose the sets (``ap`` for results found before there were others)."""
        return self.meta.get("method", "ap")

    @property
    def one_sided(self) -> bool:
        """Whether the method has only top sets (lape, actprob: bottom sets are empty)."""
        return self.method in ONE_SIDED

    def ranking(self) -> Tensor:
        """The score that orders the neurons of each language [L, N]: AP, or the method's score."""
        return self.ap if self.score is None else self.score

    def _pick(self, li: int, which: str, k: int, keep: Tensor | None = None) -> Tensor:
        """The ``which`` neurons of language ``li`` at any k (only among ``keep`` when given)."""
        s = self.ranking()[li]
        if which == "middle":
            return middle_k(s, k)
        if which == "bottom" and self.one_sided:
            return torch.zeros(0, dtype=torch.int64)
        allowed = keep
        if which == "top" and self.eligible is not None:
            allowed = self.eligible[li] if keep is None else self.eligible[li] & keep
        if allowed is None:
            return (top_k if which == "top" else bottom_k)(s, k)
        s = s.masked_fill(~allowed, float("-inf") if which == "top" else float("inf"))
        return (top_k if which == "top" else bottom_k)(s, min(k, int(allowed.sum())))

    def means_off(self, lang: str) -> Tensor:
        """Mean pooled activation of every neuron on the texts of the other languages (``mu_off``)."""
        self.check_language(lang)
        counts = self.meta.get("texts_per_language") or {}
        if not all(l in counts for l in self.languages):
            raise LangNeuronsError("this result does not record its texts per language; run find again")
        li = self.languages.index(lang)
        n_all = sum(counts[l] for l in self.languages)
        n_on = counts[lang]
        return (self.mean_all.double() * n_all - self.means[li].double() * n_on).float() / max(1, n_all - n_on)

    def residual(self) -> tuple[Tensor, Tensor]:
        """(resid_means, resid_norms), or a clear error for results found before they were recorded."""
        if self.resid_means is None or self.resid_norms is None:
            raise LangNeuronsError("these neurons were found before residual means were recorded; run find again "
                                   "for residual steering (diffmean, sparse)")
        return self.resid_means, self.resid_norms

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_activations(cls, pooled: PooledActivations, labels: np.ndarray, languages: Sequence[str],
                         k: int | str = 1000, meta: dict | None = None, progress: bool = False,
                         selector: SelectorSettings | str | None = None) -> "LanguageNeurons":
        """Rank and select from pooled activations (steps 2-3) with ``selector`` (default: AP, the paper).

        The AP of every neuron is computed for every method (``.ap``); lape and actprob need the token
        histogram of the collection (``pooled.tokens``), whose counts are kept in ``.token_stats``.
        """
        k = parse_k(k, pooled.index.n_neurons)
        settings = SelectorSettings(selector) if isinstance(selector, str) else (selector or SelectorSettings())
        labels = np.asarray(labels)
        ap = average_precision(pooled.values, labels, len(languages), progress=progress)
        stats = neuron_statistics(pooled.values, labels, len(languages))
        tokens = None
        if pooled.tokens is not None:
            hist, n_tok = pooled.tokens["hist"], pooled.tokens["n_tokens"]
            if hist.shape[0] < len(languages):  # a language none of whose texts had a real token
                pad = len(languages) - hist.shape[0]
                hist = torch.cat([hist, hist.new_zeros((pad, *hist.shape[1:]))])
                n_tok = torch.cat([n_tok, n_tok.new_zeros(pad)])
            tokens = token_counts(hist, n_tok, settings.percentile)
        chosen = select(settings, list(languages), k, ap, pooled.values, labels, tokens)
        sets: dict[str, dict[str, NeuronSet]] = {}
        for li, lang in enumerate(languages):
            sets[lang] = {w: make_set(stats, li, chosen.sets[lang][w], ap[li]) for w in WHICH}
        m = dict(meta or {})
        m.update(chosen.meta)  # the method and its thresholds
        m.update({"k": k, "k_fraction": k / pooled.index.n_neurons, "n_neurons": pooled.index.n_neurons,
                  "pooling": pooled.meta.get("pooling"), "include_bos": pooled.meta.get("include_bos"),
                  "sites": pooled.index.spec})
        counts = np.bincount(labels.astype(np.int64), minlength=len(languages))  # for means_off (mu_off)
        m.setdefault("texts_per_language", {l: int(c) for l, c in zip(languages, counts)})
        if tokens is not None:
            m["token_stats"] = {"bins": pooled.meta.get("token_bins"), "percentile": settings.percentile,
                                "bos": "excluded"}
        return cls(list(languages), pooled.index, k, sets, ap, stats["median_on"], stats["mean_on"], stats["mean_all"], m,
                   score=chosen.score, eligible=chosen.eligible, token_stats=tokens)

    # ---- access ---------------------------------------------------------------------------
    def check_language(self, lang: str) -> None:
        """One clear line unless these neurons hold ``lang``."""
        if lang not in self.sets:
            raise LangNeuronsError(f"no neurons for language {lang!r}; this result has {', '.join(self.languages)}")

    def layer_subset(self, layers: str | Sequence[int] | None) -> list[int] | None:
        """Layer numbers of a subset: all (None), first / last quarter, ends (both), a range ``"A-B"``
        (A to B, both included: a band of layers, for per-layer curves), or a list."""
        if layers is None or layers == "all":
            return None
        n = self.index.n_layers
        q = max(1, n // 4)
        named = {"first": list(range(q)), "last": list(range(n - q, n)), "ends": list(range(q)) + list(range(n - q, n))}
        if isinstance(layers, str):
            a, dash, b = layers.partition("-")
            if dash and a.strip().isdigit() and b.strip().isdigit():
                if not int(a) <= int(b) < n:
                    raise LangNeuronsError(f"layer range {layers!r} must be A-B with A <= B <= {n - 1}")
                return list(range(int(a), int(b) + 1))
            if layers not in named:
                raise LangNeuronsError(f"unknown layer subset {layers!r}; use all, first, last, ends, a range A-B or "
                                       "a list of layers")
            return named[layers]
        out = sorted({int(l) for l in layers})
        if not out or out[0] < 0 or out[-1] >= n:
            raise LangNeuronsError(f"layers must be between 0 and {n - 1}, got {list(layers)}")
        return out

    def selected(self, lang: str, which: str = "both", k: int | None = None,
                 layers: str | Sequence[int] | None = None, spread: str | None = None) -> tuple[Tensor, Tensor]:
        """(neurons, median clamp values) of ``which`` (top, bottom, both = top + bottom, middle).

        ``k`` defaults to the k of the result; any k up to the neuron count works, since the AP (or
        the method's score) and median of every neuron are kept. ``layers`` ranks only the neurons of
        those layers (see ``layer_subset``), so k neurons are chosen inside the subset. For lape and
        actprob, top holds at most the neurons the method selects (often fewer than k) and bottom is
        empty, so both = top.
        """
        if spread is not None:
            return self._spread(lang, which, k, layers, spread)
        subset = self.layer_subset(layers)
        if subset is not None:
            self.check_language(lang)
            li = self.languages.index(lang)
            keep = torch.from_numpy(np.isin(self.index.layers(), subset))
            k = self.k if k is None else k
            check_k(k, int(keep.sum()))
            out = []
            for w in {"both": ("top", "bottom"), "top": ("top",), "bottom": ("bottom",)}.get(which, ()):
                out.append(self._pick(li, w, k, keep))
            if not out:
                raise LangNeuronsError(f"neuron set {which!r} cannot be restricted to layers; use top, bottom or both")
            neurons = torch.cat(out)
            return neurons, self.medians[li][neurons]
        self.check_language(lang)
        kinds = {"both": ("top", "bottom"), "top": ("top",), "bottom": ("bottom",), "middle": ("middle",)}
        if which not in kinds:
            raise LangNeuronsError(f"unknown neuron set {which!r}; use top, bottom, both or middle")
        li = self.languages.index(lang)
        if k is None or k == self.k:
            idx = [self.sets[lang][w].neurons for w in kinds[which]]
        else:
            check_k(k, self.index.n_neurons)
            idx = [self._pick(li, w, k) for w in kinds[which]]
        neurons = torch.cat(idx)
        return neurons, self.medians[li][neurons]

    def _spread(self, lang: str, which: str, k: int | None, layers: str | Sequence[int] | None,
                spread: str) -> tuple[Tensor, Tensor]:
        """``selected`` with the k neurons of each set spread over the layers (``spread="even"``): the best of
        the ranking, taking at most ceil(k / L) from any one of the L layers (of ``layers``), so a language
        whose best neurons crowd into a few layers is steered across the depth."""
        if spread != "even":
            raise LangNeuronsError(f"unknown spread {spread!r}; use even (or none: the k best overall)")
        kinds = {"both": ("top", "bottom"), "top": ("top",), "bottom": ("bottom",)}
        if which not in kinds:
            raise LangNeuronsError(f"neuron set {which!r} cannot be spread over the layers; use top, bottom or both")
        self.check_language(lang)
        li = self.languages.index(lang)
        subset = self.layer_subset(layers)
        layer_of = torch.from_numpy(self.index.layers())
        keep = None if subset is None else torch.from_numpy(np.isin(self.index.layers(), subset))
        n_allowed = self.index.n_neurons if keep is None else int(keep.sum())
        k = self.k if k is None else k
        check_k(k, n_allowed)
        cap = -(-k // (self.index.n_layers if subset is None else len(subset)))
        out = []
        for w in kinds[which]:
            order = self._pick(li, w, n_allowed, keep)  # every allowed neuron, best first
            lay = layer_of[order]
            rank = torch.empty_like(order)  # each neuron's place within its layer in that order
            for layer in torch.unique(lay):
                at = torch.nonzero(lay == layer).flatten()
                rank[at] = torch.arange(len(at))
            out.append(order[rank < cap][:k])
        neurons = torch.cat(out)
        return neurons, self.medians[li][neurons]

    def hooks(self, lang: str, which: str = "both", value: str | float = "median", scale: float = 1.0,
              positions: str = "all", k: int | None = None,
              layers: str | Sequence[int] | None = None, *, method: str = "clamp", **settings: Any
              ) -> list[tuple[str, Callable]]:
        """TransformerLens ``fwd_hooks`` that steer towards the language (by default: clamp its neurons).

        ``value``: "median" (the paper: median over the language's texts), "zero", or a number.
        ``scale`` multiplies the value. ``k`` overrides the number of neurons per set.
        ``positions``: "all" (the paper), "last" (only the newest position; clamp) or "generated"
        (positions the model writes; see ``steer/positions.py``).
        ``layers``: choose the k neurons only among these layers (all, first, last, ends, or a list).
        ``method``: the intervention (clamp, the paper; add, diffmean, sparse, or any registered one) and
        ``settings`` its other fields: the same hooks as ``SteeringConfig(method=..., ...).hooks(self, lang)``,
        defaults there.
        """
        subset = layers if isinstance(layers, str) or layers is None else [int(l) for l in layers]
        return steering(method=method, which=which, k=k, value=value, scale=scale, positions=positions,
                        layers=subset, **settings).hooks(self, lang)

    def table(self, lang: str, which: str = "top") -> list[dict]:
        """One row per selected neuron: rank, hook, layer, unit, AP and statistics."""
        self.check_language(lang)
        return neuron_table(self, lang, which)

    def summary(self) -> str:
        """Markdown table: per language the mean AP of top/middle/bottom and their mean values."""
        return summary_markdown(self)

    def __repr__(self) -> str:
        return (f"LanguageNeurons(languages={self.languages}, k={self.k}, sites={self.index.spec!r}, "
                f"n_neurons={self.index.n_neurons})")

    def save(self, directory: str | Path) -> Path:
        """Write ``neurons.safetensors``, ``neurons.json``, ``neurons.csv`` and ``summary.md`` (each atomically;
        :func:`~tl_langneurons.detect.neurons_io.save_neurons`)."""
        return save_neurons(self, directory)

    @classmethod
    def load(cls, directory: str | Path) -> "LanguageNeurons":
        """The neurons a find folder holds, every file and field checked (one clear error naming what is wrong)."""
        return cls(**load_fields(directory))

    def check_model(self, model: HookedModel) -> None:
        """Refuse to steer a model other than the one these neurons were found on: its sites, its weights (or,
        under another wrapper of the same weights, its activations at these sites: the activation signature),
        its neuron index (:func:`~tl_langneurons.model.identity.check_same_model`). Accepted, the neurons are bound
        to ``model``: their hooks are then its names for their sites (a HookedTransformer names the paper's sites
        its own way; folders record the bridge's names)."""
        self.index = check_same_model(self.index, self.meta, model)


def find_neurons(model: HookedModel, corpus: MultilingualCorpus, config: FindConfig | None = None, *,
                 cache: str | Path | None = None, checkpoint: str | Path | None = None,
                 store: str | Path | None = None, progress: bool = True,
                 return_activations: bool = False, keep_checkpoint: bool = False, distributed: bool | None = None,
                 **overrides):
    """Steps 1-3 of the method on ``model`` and ``corpus``: a :class:`LanguageNeurons`.

    ``cache`` is an optional path of a pooled-activation cache: used when its header matches
    (model, sites, pooling, texts), refused with an error when it does not, written otherwise.
    ``checkpoint`` is a file for the finished batches of an interrupted collection (see ``collect``).
    ``store`` keeps the pooled matrix in a ``.npy`` file instead of memory (for neuron counts that
    do not fit); ranking and statistics then read it in column chunks.
    ``overrides`` set :class:`FindConfig` fields (``k=100``, ``pooling="max"``, ...).
    ``config.method`` picks the selector (``detect/selectors.py``); the one collection pass also
    counts the token statistics of lape and actprob (unless ``token_stats`` is False), and a cache
    holds them, so the same cache serves every method.

    ``distributed``: spread the collection over the ranks of a torch.distributed process group
    (``detect/gather.py``); None (default) does so whenever an initialized group has more than one
    process, False never. Each rank runs whole batches of the texts and rank 0 gathers the rows, ranks
    and returns the result, byte-identical to one process; the other ranks return None. A cache is read
    and written by rank 0 only; ``checkpoint`` is not used over several processes and ``store`` is refused.
    """
    config = config or FindConfig()
    if overrides:
        config = FindConfig(**{**asdict(config), **overrides})
    texts, labels = corpus.flat()
    index = resolve_sites(model, config.sites)
    k = parse_k(config.k, index.n_neurons)
    timings: dict[str, float] = {}
    expect = {"model": model_name(model), "weights_sha": weights_fingerprint(model), "sites": index.spec, "pooling": config.pooling,
              "include_bos": config.include_bos, "corpus_sha256": corpus.sha256(), "max_length": config.max_length}
    expect.update(sae_meta(model, [s.hook for s in index.slices]))  # an attached SAE's latents: its record
    if cache is not None and store is not None:
        raise LangNeuronsError("use either cache (in-memory matrix saved to a file) or store (matrix kept on disk), not both")
    shard = dist_context(distributed)
    if shard is not None and store is not None:
        raise LangNeuronsError("an on-disk matrix (--on-disk) cannot be used with several processes; run one process")
    t0 = time.perf_counter()
    with agreed(shard):  # over several processes rank 0 alone reads the cache; its errors end every rank
        pooled = _read_cache(cache, expect, index, config) if is_main(shard) else None
    if from_main(shard, pooled is not None):
        if not is_main(shard):
            return None
    else:
        pooled = collect(model, texts, index, config.pooling, config.include_bos, config.batch_size,
                         config.max_batch_tokens, config.max_length, progress, truncate=config.truncate,
                         checkpoint=None if shard else checkpoint, store=store, keep_checkpoint=keep_checkpoint,
                         resid=True, token_groups=labels if config.token_stats else None, shard=shard)
        if pooled is None:  # another rank than 0: its rows went to rank 0
            return None
        pooled.meta.update(expect)
        # the same weights under another wrapper hash differently; their activations agree (check_model)
        pooled.meta["activation_signature"] = activation_signature(model, index)
        if cache is not None:
            pooled.save(cache)
    timings["collect_s"] = time.perf_counter() - t0
    fault_point("rank")
    timings["peak_rss_gb_after_collect"] = peak_rss_gb()
    t0 = time.perf_counter()
    meta = {**expect, "corpus": corpus.name, "corpus_sources": corpus.sources,
            "texts_per_language": {l: len(t) for l, t in corpus.texts.items()},
            "padded_share": pooled.meta.get("padded_share"), "tokens": pooled.meta.get("tokens"),
            "n_truncated": pooled.meta.get("n_truncated"), "config": asdict(config),
            "versions": package_versions()}
    source = model_source(model)
    if source is not None:  # a model converted from a GGUF: that file's sha256 and architecture
        meta["model_source"] = source
    # kept in the cache with the activations (a cache made before signatures: computed now, one short forward)
    meta["activation_signature"] = pooled.meta.get("activation_signature") or activation_signature(model, index)
    result = LanguageNeurons.from_activations(pooled, labels, corpus.languages, k, meta, progress=progress,
                                              selector=config.selector())
    if pooled.resid is not None:  # what the residual interventions steer by
        result.resid_means, result.resid_norms = _residual_means(pooled, labels, len(corpus.languages))
    timings["rank_s"] = time.perf_counter() - t0
    timings["peak_rss_gb_after_rank"] = peak_rss_gb()
    result.meta["timings"] = timings
    if return_activations:
        return result, pooled, labels
    return result


def _read_cache(cache: str | Path | None, expect: dict, index: NeuronIndex, config: FindConfig
                ) -> PooledActivations | None:
    """The pooled activations of an existing ``cache`` whose header matches ``expect`` (None when there is none);
    one clear line for a cache of another index, or without what this find needs."""
    if cache is None or not Path(cache).exists():
        return None
    pooled = PooledActivations.load(cache, expect=expect)
    if pooled.index.mismatch(index) is not None:
        raise LangNeuronsError(f"activation cache {cache} has another neuron index than this model; delete it")
    pooled.index = index  # the cache records canonical site names; the hooks are this model's
    if pooled.resid is None:  # without them the neurons could not steer with diffmean or sparse
        raise LangNeuronsError(f"activation cache {cache} holds no residual-stream means (made before they "
                               "were kept in the cache), which find records for diffmean and sparse steering; "
                               "delete it and the run collects again (and writes it with them)")
    if pooled.tokens is None and config.method in TOKEN_METHODS:
        raise LangNeuronsError(f"activation cache {cache} holds no token statistics (made before they were "
                               f"collected, or with --no-token-stats), which method {config.method} needs; delete it")
    return pooled


def _residual_means(pooled: PooledActivations, labels, n_languages: int) -> tuple[Tensor, Tensor]:
    """(each language's mean residual stream [language, layer, d_model], the typical residual norm per layer)."""
    lab = torch.as_tensor(np.asarray(labels))
    means = torch.stack([pooled.resid["mean"][lab == i].double().mean(0) for i in range(n_languages)]).float()
    return means, (pooled.resid["norm_sum"].sum(0) / pooled.resid["norm_count"].sum().clamp_min(1)).float()
