"""Collection speed: pooled-activation collection (pooling inside hooks, stop after the last
block, no unembedding) against a bare Hugging Face forward pass with logits over the same
length-sorted batches, on Gemma-3-270M.

    python benchmarks/bench_collection.py [--texts 600] [--corpus bundled]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_gib, record, table  # noqa: E402

from tl_langneurons import MultilingualCorpus, collect, load_model  # noqa: E402
from tl_langneurons.detect.activations import make_batches, tokenize  # noqa: E402
from tl_langneurons.model.driver import Runner  # noqa: E402


@torch.no_grad()
def bare_forward(model, texts, batch_size, max_batch_tokens, logits=True):
    runner = Runner(model)
    tokd = tokenize(runner, texts, 512)
    lengths = [len(t) for t in tokd.ids]
    for b in make_batches(lengths, batch_size, max_batch_tokens):
        ids, mask = runner.pad([tokd.ids[i] for i in b])
        mask = mask.long()
        if logits:
            runner.hf(input_ids=ids, attention_mask=mask, use_cache=False)
        else:
            runner.hf.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
    return sum(lengths)


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--corpus", default="bundled")
    ap.add_argument("--texts", type=int, default=100, help="texts per language")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    model = load_model(args.model)
    texts = MultilingualCorpus.load(args.corpus, args.texts, 0).flat()[0]
    rows = []
    bare_forward(model, texts[:32], args.batch_size, 8192)  # warm-up
    for name, fn in (
        ("bare HF forward with logits", lambda: bare_forward(model, texts, args.batch_size, 8192, True)),
        ("bare HF forward, no unembedding", lambda: bare_forward(model, texts, args.batch_size, 8192, False)),
        ("collect mlp_post (mean)", lambda: collect(model, texts, "mlp_post", batch_size=args.batch_size, progress=False)),
        ("collect paper (mean)", lambda: collect(model, texts, "paper", batch_size=args.batch_size, progress=False)),
    ):
        t0 = time.perf_counter()
        res = fn()
        t = time.perf_counter() - t0
        tokens = res if isinstance(res, int) else res.meta["tokens"]
        pad = "" if isinstance(res, int) else f"{100 * res.meta['padded_share']:.1f}%"
        rows.append([name, f"{t:.1f}", f"{len(texts) / t:.1f}", f"{tokens / t:.0f}", pad])
    base = float(rows[0][1])
    for r in rows:
        r.append(f"{base / float(r[1]):.2f}x")
    record("Collection: pooled activations vs bare forward (same batches)",
           table(["pass", "seconds", "texts/s", "tokens/s", "padded share", "speed vs bare+logits"], rows),
           f"{len(texts)} texts ({args.corpus}, {args.texts} per language), batch {args.batch_size}, model {args.model}. "
           f"Target: collection no slower than the bare forward with logits; padded share < 10%. "
           f"Peak RSS {peak_rss_gib():.1f} GiB.")


if __name__ == "__main__":
    main()
