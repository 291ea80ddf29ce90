"""Rank activations the user already has: a ``run_with_cache`` result (per-token activations and their
attention mask), or a ``[texts, units]`` matrix with a language per text, through the same selectors as
:func:`~tl_langneurons.detect.neurons.find_neurons` and into the same result type.

Per-token activations are pooled by the tool's rules (:func:`~tl_langneurons.detect.activations.pool`:
padding never takes part; the BOS token left out unless ``include_bos``), and their token histograms are
counted as a collection counts them, so every selector (AP, LAPE, act-prob, mean-diff) ranks them.

Example (a TransformerLens model, texts of two languages in one padded batch):

    >>> toks = model.to_tokens(texts)                       # doctest: +SKIP
    >>> mask = toks != model.tokenizer.pad_token_id         # doctest: +SKIP
    >>> _, cache = model.run_with_cache(toks, attention_mask=mask)  # doctest: +SKIP
    >>> neurons = tln.rank_units(cache, ["en", "en", "fr", "fr"], attention_mask=mask, k=50)  # doctest: +SKIP
    >>> neurons.top("fr")                                   # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import LangNeuronsError
from ..model.sites import PRESETS, NeuronIndex, SiteSlice, flat_units, templates_for
from .activations import N_TOKEN_BINS, POOLINGS, TOKEN_BINS, PooledActivations, pool, token_bins

_LAYER = re.compile(r"^blocks\.(\d+)\.")


def _labels(labels: Sequence[Any] | np.ndarray | Tensor, languages: Sequence[str] | None, n: int) -> tuple[np.ndarray, list[str]]:
    """Language ids per text and the language order: codes (order of first appearance unless
    ``languages``), or ids into ``languages``."""
    labels = list(labels.tolist() if isinstance(labels, (np.ndarray, Tensor)) else labels)
    if len(labels) != n:
        raise LangNeuronsError(f"{len(labels)} labels for {n} texts; give one language per text")
    if all(isinstance(l, (int, np.integer)) and not isinstance(l, bool) for l in labels):
        if languages is None:
            raise LangNeuronsError("labels are language ids: pass languages=[...] to name them")
        bad = [l for l in labels if not 0 <= l < len(languages)]
        if bad:
            raise LangNeuronsError(f"label {bad[0]} is not an index into the {len(languages)} languages")
        return np.asarray(labels, dtype=np.int64), list(languages)
    if not all(isinstance(l, str) and l for l in labels):
        raise LangNeuronsError("labels must be language codes (strings) or ids into languages=[...]")
    order = list(languages) if languages is not None else list(dict.fromkeys(labels))
    missing = sorted(set(labels) - set(order))
    if missing:
        raise LangNeuronsError(f"label {missing[0]!r} is not one of the languages {order}")
    if len(set(order)) != len(order):
        raise LangNeuronsError(f"languages {order} name one language twice")
    return np.asarray([order.index(l) for l in labels], dtype=np.int64), order


def _hooks(keys: Sequence[str], sites: str) -> list[tuple[str, str, int]]:
    """(hook, template, layer) of ``sites`` in a cache's ``keys``, layer by layer as :func:`resolve_sites`
    orders them. A part of ``sites`` is a preset, a template with ``{l}``, or one hook name (e.g. an SAE's
    ``blocks.6.hook_resid_post.hook_sae_acts_post``, which exists on one layer)."""
    names = set(keys)
    chosen: list[tuple[str, str, int]] = []
    for part in (p.strip() for p in sites.split(",")):
        if part in names and "{l}" not in part and part not in PRESETS:
            m = _LAYER.match(part)
            chosen.append((part, part, int(m.group(1)) if m else 0))
            continue
        for t, required in templates_for(part):
            pat = re.compile("^" + re.escape(t).replace(re.escape("{l}"), r"(\d+)") + "$")
            found = [(k, t, int(m.group(1))) for k in names if (m := pat.match(k))]
            if not found and required:
                some = ", ".join(sorted(names)[:4])
                raise LangNeuronsError(f"site {t!r} is not in the activations (they hold {len(names)} hooks: {some}"
                                       f"{', ...' if len(names) > 4 else ''}); cache those hooks or pass sites=")
            chosen.extend(found)
    if not chosen:
        raise LangNeuronsError(f"site spec {sites!r} matched none of the activations' hooks")
    unique = list(dict.fromkeys(chosen))
    order = {t: i for i, (_, t, _) in enumerate(unique)}
    return sorted(unique, key=lambda c: (c[2], order[c[1]]))


def _masks(mask: Tensor, bos: bool, include_bos: bool) -> tuple[Tensor, Tensor]:
    """(pooling mask, real-token mask): the first real token of every text is its BOS where ``bos``."""
    mask = mask.bool()
    first = torch.zeros_like(mask)
    if bos:
        rows = mask.any(1).nonzero().squeeze(1)
        first[rows, mask.int().argmax(1)[rows]] = True
    real = mask & ~first
    pooled = mask if include_bos else real
    if (pooled.sum(1) == 0).any():
        raise LangNeuronsError("a text has no token to pool (only its BOS, or none at all in the attention mask)")
    return pooled, real


def _pool_cache(cache: Any, mask: Tensor | None, hooks: list[tuple[str, str, int]], pooling: str, bos: bool,
                include_bos: bool, groups: Tensor) -> tuple[Tensor, list[int], Tensor, Tensor]:
    """One batch: pooled [texts, units], the size of each hook, and the token histogram of each group."""
    first = cache[hooks[0][0]]
    if first.dim() < 3:
        raise LangNeuronsError(f"activation {hooks[0][0]} has shape {tuple(first.shape)}; per-token activations "
                               "are [batch, pos, ...] (a pooled [texts, units] matrix is passed as a tensor)")
    b, p = first.shape[:2]
    if mask is None:
        mask = torch.ones((b, p), dtype=torch.bool)
    if tuple(mask.shape) != (b, p):
        raise LangNeuronsError(f"attention mask of shape {tuple(mask.shape)} for activations of {b} texts x {p} "
                               "positions")
    pool_mask, real = _masks(mask, bos, include_bos)
    cols, sizes = [], []
    n_groups = int(groups.max()) + 1
    hists, n_tok = [], torch.zeros(n_groups, dtype=torch.int64)
    for g in range(n_groups):
        n_tok[g] = int((real & (groups == g).unsqueeze(1)).sum())
    for name, _, _ in hooks:
        x = flat_units(cache[name].detach()).float().cpu()
        if x.shape[:2] != (b, p):
            raise LangNeuronsError(f"activation {name} has {tuple(x.shape[:2])} texts x positions, "
                                   f"{hooks[0][0]} has {(b, p)}")
        vals = pool(x, pool_mask, pooling)
        if not torch.isfinite(vals).all():
            raise LangNeuronsError(f"non-finite activation at {name}; check the model weights and dtype")
        cols.append(vals)
        sizes.append(x.shape[-1])
        d = x.shape[-1]
        hist = torch.zeros((n_groups, d, N_TOKEN_BINS), dtype=torch.int64)
        offsets = torch.arange(d) * N_TOKEN_BINS
        for g in range(n_groups):
            sel = real & (groups == g).unsqueeze(1)
            if sel.any():
                idx = (token_bins(x[sel]) + offsets).reshape(-1)
                hist[g] = torch.bincount(idx, minlength=d * N_TOKEN_BINS).view(d, N_TOKEN_BINS)
        hists.append(hist)
    return torch.cat(cols, 1), sizes, torch.cat(hists, 1), n_tok


def rank_units(activations: Any, labels: Sequence[Any] | np.ndarray | Tensor, languages: Sequence[str] | None = None, *,
               attention_mask: Tensor | Sequence[Tensor] | None = None, sites: str = "mlp_post",
               pooling: str = "mean", include_bos: bool = True, bos: bool = True, k: int | str = 1000,
               selector: Any = None, index: NeuronIndex | None = None, meta: dict | None = None):
    """Rank and select language-specific units from activations you already have; a
    :class:`~tl_langneurons.detect.neurons.LanguageNeurons`, as :func:`find_neurons` returns.

    ``activations`` is one of:

    - an ``ActivationCache`` from ``run_with_cache`` (or a dict of hook name -> ``[batch, pos, ...]``), or a
      list of them (one per batch, with a list of masks); ``attention_mask`` ``[batch, pos]`` marks the real
      tokens (padding never pools). ``sites`` picks the hooks (a preset, templates with ``{l}``, or hook
      names, e.g. an SAE's ``blocks.6.hook_resid_post.hook_sae_acts_post``). Where ``bos``, the first real
      token of each text is its BOS: pooled only with ``include_bos`` (the default, as ``find``'s), and
      always left out of the token statistics that LAPE and act-prob use, as a collection does.
    - a ``[texts, units]`` tensor already pooled; ``index`` names its units (default: one site
      ``units`` of all of them). LAPE and act-prob need per-token statistics, so take a cache.

    ``labels`` gives each text's language (codes, or ids into ``languages``); ``k`` and ``selector`` are
    :func:`find_neurons`' (k a count or a percentage; selector ``ap``, ``lape``, ``actprob``, ``meandiff``).
    """
    from .neurons import LanguageNeurons

    if pooling not in POOLINGS:
        raise LangNeuronsError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    info: dict[str, Any] = {"source": "rank_units", "pooling": pooling, "include_bos": include_bos}
    if isinstance(activations, Tensor):
        if activations.dim() != 2:
            raise LangNeuronsError(f"a pooled activation matrix is [texts, units], got shape {tuple(activations.shape)}; "
                                   "pass per-token activations as a cache with their attention mask")
        ids, langs = _labels(labels, languages, activations.shape[0])
        n = activations.shape[1]
        index = index or NeuronIndex("units", [SiteSlice("units", "units", 0, n, 0)])
        if index.n_neurons != n:
            raise LangNeuronsError(f"the index names {index.n_neurons} units, the matrix has {n}")
        values = activations.detach().float().cpu().contiguous()
        if not torch.isfinite(values).all():
            raise LangNeuronsError("the activation matrix holds non-finite values")
        pooled = PooledActivations(values, index, {**info, "n_texts": len(ids)})
    else:
        caches = list(activations) if isinstance(activations, (list, tuple)) else [activations]
        masks = (list(attention_mask) if isinstance(attention_mask, (list, tuple))
                 else [attention_mask] * len(caches) if attention_mask is None else [attention_mask])
        if len(masks) != len(caches):
            raise LangNeuronsError(f"{len(caches)} caches and {len(masks)} attention masks; give one mask per cache")
        if not all(isinstance(c, Mapping) or hasattr(c, "keys") for c in caches):
            raise LangNeuronsError("activations must be an ActivationCache, a dict of hook name -> tensor, a list of "
                                   "them, or a [texts, units] tensor")
        hooks = _hooks(list(caches[0].keys()), sites)
        sizes_texts = [int(c[hooks[0][0]].shape[0]) for c in caches]
        ids, langs = _labels(labels, languages, sum(sizes_texts))
        groups = torch.as_tensor(ids)
        parts, start, hist, n_tok, sizes = [], 0, None, None, None
        for c, m, nb in zip(caches, masks, sizes_texts):
            vals, sizes, h, nt = _pool_cache(c, None if m is None else torch.as_tensor(m), hooks, pooling, bos,
                                             include_bos, groups[start:start + nb])
            parts.append(vals)
            pad = len(langs) - h.shape[0]  # languages absent from this batch
            h = torch.cat([h, h.new_zeros((pad, *h.shape[1:]))]) if pad > 0 else h
            nt = torch.cat([nt, nt.new_zeros(pad)]) if pad > 0 else nt
            hist, n_tok = (h, nt) if hist is None else (hist + h, n_tok + nt)
            start += nb
        slices, offset = [], 0
        for (name, t, layer), size in zip(hooks, sizes):
            slices.append(SiteSlice(name, t, layer, size, offset))
            offset += size
        index = NeuronIndex(sites, slices)
        pooled = PooledActivations(torch.cat(parts), index, {**info, "token_bins": TOKEN_BINS, "n_texts": len(ids)},
                                   tokens={"hist": hist.to(torch.int32), "n_tokens": n_tok})
    return LanguageNeurons.from_activations(pooled, ids, langs, k=k, meta={**info, **(meta or {})},
                                            selector=selector)
