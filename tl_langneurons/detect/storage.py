"""Where pooled activations live outside memory: the partial-run checkpoint of an interrupted
collection, and :class:`DiskMatrix`, a float32 ``.npy`` matrix written by rows and read by column
chunks for neuron counts larger than memory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from torch import Tensor

from ..errors import LangNeuronsError
from ..provenance import atomic_write_bytes

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, header: dict, values, done: Tensor, extra: dict[str, Tensor] | None = None) -> None:
    """The finished rows of a collection (``extra``: more per-row tensors, e.g. residual means)."""
    from safetensors.torch import save

    kept = values.contiguous() if isinstance(values, Tensor) else torch.zeros(0)  # a DiskMatrix is on disk already
    more = {f"extra.{k}": v.contiguous() for k, v in (extra or {}).items()}
    data = save({"values": kept, "done": done.to(torch.uint8), **more},
                metadata={"tl_langneurons_partial": json.dumps(header, sort_keys=True)})
    atomic_write_bytes(path, data)


def load_checkpoint(path: Path, header: dict) -> tuple[Tensor, Tensor, dict[str, Tensor]] | None:
    """(values, done, extra) of a partial run with the same header; None (and a warning) otherwise."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            saved = json.loads(f.metadata()["tl_langneurons_partial"])
            values, done = f.get_tensor("values"), f.get_tensor("done").bool()
            extra = {k[len("extra."):]: f.get_tensor(k) for k in f.keys() if k.startswith("extra.")}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, RuntimeError) as e:
        log.warning("ignoring unreadable partial run %s (%s); starting over", path, e)
        return None
    if saved != json.loads(json.dumps(header, sort_keys=True)):
        raise LangNeuronsError(
            f"partial run {path} was made with other settings; delete it to start over, or rerun with the same arguments"
        )
    return values, done, extra


class DiskMatrix:
    """A float32 [rows, cols] matrix in a ``.npy`` file, written by rows and read by column chunks
    with plain file reads (no memory map), for pooled matrices larger than memory (e.g. the
    ``paper`` sites of Llama-2-13B: 2.1M neurons x 3,000 texts = 25.6 GB). Ranking and statistics
    read it ``values[:, a:b]`` at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                self.offset = f.tell()
        except (OSError, ValueError) as e:
            raise LangNeuronsError(f"{self.path} is not a readable .npy matrix ({e})") from e
        if dtype != np.float32 or fortran or len(shape) != 2:
            raise LangNeuronsError(f"{self.path} must hold a 2-D C-ordered float32 matrix")
        self.shape = tuple(int(x) for x in shape)

    @classmethod
    def create(cls, path: str | Path, shape: tuple[int, int]) -> "DiskMatrix":
        """A new zero-filled (sparse) file of ``shape``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
            offset = f.tell()
            f.truncate(offset + 4 * shape[0] * shape[1])
        return cls(path)

    def write_rows(self, rows: Sequence[int], values: Tensor) -> None:
        data = values.detach().to(torch.float32).contiguous().numpy()
        with open(self.path, "r+b") as f:
            for r, row in zip(rows, data):
                f.seek(self.offset + 4 * int(r) * self.shape[1])
                f.write(row.tobytes())

    def __getitem__(self, key) -> Tensor:
        rows, cols = key
        if rows != slice(None) or not isinstance(cols, slice) or cols.step not in (None, 1):
            raise LangNeuronsError("DiskMatrix reads column chunks only: values[:, a:b]")
        a, b, _ = cols.indices(self.shape[1])
        out = np.empty((self.shape[0], max(0, b - a)), dtype=np.float32)
        with open(self.path, "rb") as f:
            for r in range(self.shape[0]):
                f.seek(self.offset + 4 * (r * self.shape[1] + a))
                f.readinto(memoryview(out[r]))
        return torch.from_numpy(out)
