"""Work over many processes with ``torch.distributed`` (``torchrun --nproc_per_node N``): the plumbing
that ``find`` (``detect/gather.py``: gathering the collection), ``evaluate``, ``sweep`` and
``cross-steer`` share: the shard of this process, errors agreed on every rank, rank 0's decisions, and
joining and leaving the group torchrun describes.

``find_neurons`` spreads its collection automatically when a process group of more than one process is
initialized (``distributed=False`` keeps every rank on the whole corpus); ``tl-langneurons find`` under
torchrun initializes the group itself (:func:`process_group_from_env`): gloo on the CPU, nccl on CUDA
(each rank on ``cuda:LOCAL_RANK``). An error on one rank is raised on every rank (:func:`agreed`), so
bad input still ends every rank with one line.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .errors import LangNeuronsError

Shard = tuple[int, int]  # (rank, world size)
_left_group = False  # whether this process joined and left a group (process_group_from_env)


def context(distributed: bool | None = None) -> Shard | None:
    """(rank, world) when work is to be spread over ranks, else None. ``distributed=None``: spread
    when an initialized process group has more than one process; True: require one; False: never."""
    if distributed is False:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        if distributed:
            raise LangNeuronsError("distributed=True needs an initialized torch.distributed process group "
                                   "(torch.distributed.init_process_group, or launch with torchrun)")
        return None
    world = dist.get_world_size()
    return (dist.get_rank(), world) if world > 1 else None


def is_main(shard: Shard | None) -> bool:
    """Whether this process writes results: the only one, or rank 0."""
    return shard is None or shard[0] == 0


@contextlib.contextmanager
def agreed(shard: Shard | None) -> Iterator[None]:
    """Run the block on every rank, then compare: if it failed on any rank, it fails on every rank
    (the failing rank re-raises its own error, the others a LangNeuronsError naming it), so no rank
    waits forever in a later collective. A no-op on one process."""
    if shard is None:
        yield
        return
    err: Exception | None = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - reported to the other ranks, then re-raised
        err = e
    msg = None if err is None else (str(err) if isinstance(err, LangNeuronsError) else f"{type(err).__name__}: {err}")
    msgs: list[Any] = [None] * shard[1]
    dist.all_gather_object(msgs, msg)
    if err is not None:
        raise err
    failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if failed:
        raise LangNeuronsError((failed[0][1].splitlines() or ["failed"])[0])


def from_main(shard: Shard | None, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. whether a cache exists: one decision for all)."""
    if shard is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def process_group_from_env(device: str = "auto", device_map: Any = None) -> Iterator[str]:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) when
    WORLD_SIZE > 1 and none is initialized: gloo on the CPU, nccl on CUDA with ``cuda`` meaning
    ``cuda:LOCAL_RANK``. Yields the device this rank should load the model on; leaves the group at the end."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield device
        return
    if not dist.is_available():
        raise LangNeuronsError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    if device_map is not None:
        raise LangNeuronsError("--device-map spreads one model over devices and cannot be combined with several "
                               "processes; use one of them")
    from .model.load import resolve_device

    dev = resolve_device(device)
    if dev.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        if dev == "cuda":  # one GPU per rank
            n = torch.cuda.device_count()
            if local >= n:
                raise LangNeuronsError(f"local rank {local} has no GPU of its own (this machine has {n}); start at most "
                                       f"{n} processes per machine (--nproc_per_node) or use --device cpu")
            dev = f"cuda:{local}"
        torch.cuda.set_device(torch.device(dev))
        backend = "nccl"
    elif dev == "cpu":
        backend = "gloo"
    else:
        raise LangNeuronsError(f"several processes run on cpu or cuda, not {dev}; use --device cpu or cuda")
    try:
        dist.init_process_group(backend=backend)
    except (ValueError, RuntimeError, OSError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise LangNeuronsError(f"cannot join the process group of WORLD_SIZE={world} (backend {backend}): {first}; "
                               "launch with torchrun, which sets RANK, MASTER_ADDR and MASTER_PORT") from e
    global _left_group
    try:
        yield dev
        dist.barrier()  # every rank done before any leaves
    finally:
        dist.destroy_process_group()
        _left_group = True


def exit_if_left_group(code: int) -> None:
    """End the process now with ``code`` (stdout and stderr flushed) if it joined and left a process
    group (:func:`process_group_from_env`), else return. Gloo's threads can abort the interpreter's
    shutdown after every result is written ("terminate called without an active exception", SIGABRT):
    2 of 40 two-rank runs of a test worker here, 0 of 60 when the worker ended with ``os._exit``."""
    if _left_group:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
