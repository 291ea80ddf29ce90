"""Generation speed: batched, KV-cached sampling with clamp hooks against one sample at a time
with the same hooks (the reference code's approach), same seeds, on Gemma-3-270M.

    python benchmarks/bench_generation.py [--samples 100] [--tokens 64] [--sequential 5]

The sequential side runs ``--sequential`` samples and is scaled to ``--samples`` (stated in the
table); the batched side checks that its samples equal the sequential ones token for token.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_gib, record, table  # noqa: E402

from tl_langneurons import MultilingualCorpus, find_neurons, load_model  # noqa: E402
from tl_langneurons.steer.generation import GenerationConfig, generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--sequential", type=int, default=5)
    ap.add_argument("--batch-sizes", default="25,50,100")
    args = ap.parse_args()
    model = load_model(args.model)
    neurons = find_neurons(model, MultilingualCorpus.bundled().sample(40), k=1000, progress=False)
    hooks = neurons.hooks("de")
    rows = []
    seq_cfg = GenerationConfig(args.tokens, seeds=list(range(1, args.sequential + 1)), batch_size=1, stop_at_eos=False)
    t0 = time.perf_counter()
    seq = generate(model, seq_cfg, hooks)
    t_seq = (time.perf_counter() - t0) * args.samples / args.sequential
    rows.append(["one at a time (reference)", 1, f"{t_seq:.0f} (from {args.sequential} samples)",
                 f"{args.samples * args.tokens / t_seq:.1f}", "1.0x", "-"])
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        cfg = GenerationConfig(args.tokens, seeds=list(range(1, args.samples + 1)), batch_size=bs, stop_at_eos=False)
        t0 = time.perf_counter()
        out = generate(model, cfg, hooks)
        t = time.perf_counter() - t0
        same = all(a.tokens == b.tokens for a, b in zip(out, seq))
        rows.append(["batched, KV cache", bs, f"{t:.0f}", f"{args.samples * args.tokens / t:.1f}", f"{t_seq / t:.1f}x",
                     "yes" if same else "NO"])
    best = min(float(r[2].split()[0]) for r in rows[1:])
    cells = 1 + 6 * 3
    record("Generation: batched + KV cache vs one sample at a time (clamp hooks active)",
           table(["mode", "batch", f"seconds for {args.samples} x {args.tokens} tokens", "tokens/s", "speed-up",
                  "same tokens as sequential"], rows),
           f"Model {args.model}; clamp: top+bottom-1000 of de (median). Target: >= 10x at 100 samples. "
           f"Table 2 protocol ({cells} cells: none once + 6 languages x top/bottom/both) at the best batch size: "
           f"about {cells * best / 60:.0f} min. Peak RSS {peak_rss_gib():.1f} GiB.")


if __name__ == "__main__":
    main()
