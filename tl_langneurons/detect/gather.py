"""Collection over many processes: the rows of every rank gathered to rank 0 in text order.

Every rank tokenizes all texts and forms exactly the batches one process would form (a text's pooled
row depends on the padding of its batch at float-rounding level), then runs whole batches ``bi % world
== rank`` only. The rows of every rank are gathered to rank 0 and put back in text order; the token
histograms are summed as integers. Rank 0 thus holds the very matrix one process computes, and ranking,
statistics and the result folder come from rank 0 alone: the result is byte-identical to one process.

The general
plumbing (shards, agreed errors, rank 0's decisions, the process group) is :mod:`tl_langneurons.distributed`."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..errors import LangNeuronsError


def gather_collection(run) -> bool:
    """Gather the rows of a sharded ``activations._Collection`` to rank 0 and put them in text order
    there (values, other poolings, residual rows); token counts are summed as int64 (then int32, as one
    process keeps them). Returns True on rank 0 (``run`` then holds every row), False elsewhere."""
    rank, world = run.shard
    part = {"rows": run.rows, "values": run.out, "extra": run.extra,
            "resid": run.resid if run.resid_layers else None,
            "tokens": run.tokens if run.groups is not None else None}
    parts: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(part, parts, dst=0)
    if rank != 0:
        return False
    n = len(run.texts)
    rows = torch.cat([p["rows"] for p in parts])
    if len(rows) != n or not torch.equal(rows.sort().values, torch.arange(n)):
        raise LangNeuronsError(f"the ranks returned {len(rows)} rows for {n} texts; every rank must run the same "
                               "texts with the same settings")

    def place(key, sub=None) -> torch.Tensor:
        got = [p[key] if sub is None else p[key][sub] for p in parts]
        full = torch.empty((n, *got[0].shape[1:]), dtype=got[0].dtype)
        for p, g in zip(parts, got):
            full[p["rows"]] = g
        return full

    run.out = place("values")
    run.extra = {k: place("extra", k) for k in run.extra}
    if run.resid_layers:
        run.resid = {k: place("resid", k) for k in run.resid}
    if run.groups is not None:
        hist = sum(p["tokens"]["hist"].to(torch.int64) for p in parts)
        if int(hist.max()) > torch.iinfo(torch.int32).max:
            raise LangNeuronsError("a token histogram count exceeds int32; use fewer or shorter texts per language")
        run.tokens = {"hist": hist.to(torch.int32), "n_tokens": sum(p["tokens"]["n_tokens"].to(torch.int64) for p in parts)}
    run.rows, run.local = torch.arange(n), torch.arange(n)
    run.done[:] = True
    return True
