"""Memory of `find` on Gemma-3-270M: peak RSS after each stage against the size of the pooled
matrix plus the model, measured in one process.

    python benchmarks/bench_memory.py [--texts 500] [--sites mlp_post]
"""

from __future__ import annotations

import argparse
import gc
import time
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import record, table  # noqa: E402


def rss_now() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    from _common import peak_rss_gib

    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--corpus", default="bundled")
    ap.add_argument("--texts", type=int, default=320, help="texts per language")
    ap.add_argument("--sites", default="mlp_post")
    ap.add_argument("--backend", default="auto", help="auto (the bridge), hooked (a HookedTransformer: "
                    "transformer-lens 3.x) or hf; run once per backend to compare their peaks")
    ap.add_argument("--k", default="1000")
    args = ap.parse_args()
    rows = [["python start", f"{rss_now():.2f}", f"{peak_rss_gib():.2f}"]]
    import torch  # noqa: F401

    import tl_langneurons as tln
    rows.append(["after imports", f"{rss_now():.2f}", f"{peak_rss_gib():.2f}"])
    t0 = time.perf_counter()
    model = tln.load_model(args.model, backend=args.backend)
    load_s = time.perf_counter() - t0
    weights = getattr(model, "original_model", model)
    n_params = sum(p.numel() for p in weights.parameters())
    model_gib = sum(p.numel() * p.element_size() for p in weights.parameters()) / 2**30
    rows.append(["after load_model", f"{rss_now():.2f}", f"{peak_rss_gib():.2f}"])
    corpus = tln.MultilingualCorpus.load(args.corpus, args.texts, 0)
    neurons, pooled, labels = tln.find_neurons(model, corpus, sites=args.sites, k=args.k, progress=False,
                                               return_activations=True)
    matrix_gib = pooled.values.numel() * 4 / 2**30
    rows.append(["after find (collect + rank)", f"{rss_now():.2f}", f"{peak_rss_gib():.2f}"])
    t = neurons.meta["timings"]
    del pooled
    gc.collect()
    base = rows[1][1]
    target = 1.2 * (matrix_gib + model_gib) + 1.0
    record(f"Memory of find ({args.sites}, {len(corpus)} texts, backend {args.backend}: {type(model).__name__}, "
           f"loaded in {load_s:.1f} s)",
           table(["point", "RSS GiB", "peak RSS GiB"], rows),
           f"Model {args.model}: {n_params / 1e6:.0f}M parameters = {model_gib:.2f} GiB float32; pooled matrix "
           f"{len(corpus)} x {neurons.index.n_neurons} = {matrix_gib:.2f} GiB. Stage peaks (from find): collect "
           f"{t['peak_rss_gb_after_collect']:.2f}, rank {t['peak_rss_gb_after_rank']:.2f} GiB. Imports alone: {base} GiB. "
           f"Target: peak <= 1.2 x (matrix + model) + 1 GiB = {target:.2f} GiB; measured peak {peak_rss_gib():.2f} GiB.")


if __name__ == "__main__":
    main()
