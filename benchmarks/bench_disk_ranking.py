"""Ranking a pooled matrix larger than a set memory limit: the matrix lives in a .npy file
(DiskMatrix) and AP plus per-neuron statistics read it in column chunks.

    python benchmarks/bench_disk_ranking.py [--texts 3000] [--neurons 300000] [--limit-gib 2.5]

The limit is an address-space limit (RLIMIT_AS) set after writing the file, below the matrix size,
so loading the matrix into memory would fail while the chunked ranking runs.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_gib, record, table  # noqa: E402

from tl_langneurons.detect.neurons import neuron_statistics  # noqa: E402
from tl_langneurons.detect.ranking import average_precision  # noqa: E402
from tl_langneurons.detect.storage import DiskMatrix  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    ap.add_argument("--texts", type=int, default=3000)
    ap.add_argument("--neurons", type=int, default=300_000)
    ap.add_argument("--limit-gib", type=float, default=2.5)
    ap.add_argument("--dir", default=None, help="folder for the matrix (default: a temporary folder)")
    args = ap.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="tlln-disk-"))
    path = folder / "pooled.npy"
    n, m = args.texts, args.neurons
    labels = np.repeat(np.arange(6), n // 6)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    mat = DiskMatrix.create(path, (n, m))
    for a in range(0, n, 100):
        rows = rng.normal(size=(min(100, n - a), m)).astype(np.float32)
        rows[:, : m // 10] += labels[a:a + 100, None] * 0.1  # some signal
        mat.write_rows(range(a, a + len(rows)), torch.from_numpy(rows))
    t_write = time.perf_counter() - t0
    size_gib = n * m * 4 / 2**30
    limit = int(args.limit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        np.load(path)
        whole = "loaded (limit too high for the demonstration)"
    except MemoryError:
        whole = "MemoryError, as expected"
    t0 = time.perf_counter()
    ap_ = average_precision(mat, labels, 6)
    neuron_statistics(mat, labels, 6)  # medians, means and stds per language, also chunked
    t_rank = time.perf_counter() - t0
    top = int(torch.argmax(ap_[5]))
    rows = [[f"{n} x {m}", f"{size_gib:.2f}", f"{args.limit_gib:.2f}", whole, f"{t_write:.0f}", f"{t_rank:.0f}",
             f"{peak_rss_gib():.2f}", f"neuron {top} (signal in the first {m // 10})"]]
    record("Out-of-core ranking: pooled matrix larger than the memory limit",
           table(["texts x neurons", "matrix GiB", "RLIMIT_AS GiB", "np.load of the whole matrix", "write s",
                  "AP + statistics s", "peak RSS GiB", "top neuron of language 5"], rows),
           "The matrix is read in column chunks with plain file reads (no memory map), so resident memory "
           "stays at the chunk size plus the AP temporaries.")
    path.unlink()


if __name__ == "__main__":
    main()
