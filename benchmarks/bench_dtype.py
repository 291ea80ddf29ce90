"""bf16 against float32 collection: how much of each language's top-k and bottom-k sets survive
when the model runs in bfloat16 (pooled values and AP still in float32/float64), the AP
difference, and the timings, on the CPU (or --device).

    python benchmarks/bench_dtype.py --tiny                      # tiny random Llama (seconds)
    python benchmarks/bench_dtype.py --model gemma-3-270m --n-per-lang 300 --k 1000

Overlap is |A & B| / k (the share of float32's set that bf16 finds too) and Jaccard |A & B| / |A | B|.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import publish, table, tiny_model  # noqa: E402

from tl_langneurons import CorpusConfig, FindConfig, LangNeuronsError, find_neurons, load_model  # noqa: E402
from tl_langneurons.model.load import runtime_info  # noqa: E402


def run(model_spec: str, dtype: str, device: str, corpus, cfg: FindConfig):
    t0 = time.perf_counter()
    model = load_model(model_spec, dtype=dtype, device=device)
    load_s = time.perf_counter() - t0
    neurons = find_neurons(model, corpus, cfg, progress=False)
    return neurons, load_s, runtime_info(model)


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="model name or folder (default gemma-3-270m)")
    ap.add_argument("--tiny", action="store_true", help="use the tests' tiny random Llama instead of --model")
    ap.add_argument("--corpus", default="bundled")
    ap.add_argument("--n-per-lang", type=int, default=None, help="texts per language (default: all)")
    ap.add_argument("--k", default=None, help="neurons per set: a count or a percentage (default 1000; --tiny: 20 "
                    "of its 144)")
    ap.add_argument("--sites", default="mlp_post")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--low", default="bfloat16", choices=("bfloat16", "float16"), help="the dtype compared to float32")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    try:
        compare(args)
    except LangNeuronsError as e:
        print(f"bench_dtype: error: {e}", file=sys.stderr)
        raise SystemExit(2)


def compare(args) -> None:
    tmp = tempfile.TemporaryDirectory() if args.tiny else None
    spec = tiny_model(Path(tmp.name)) if tmp else args.model
    label = "tiny random Llama (tests/helpers.py)" if tmp else args.model
    corpus = CorpusConfig(corpus=args.corpus, n_per_lang=args.n_per_lang).load()
    k = args.k or ("20" if args.tiny else "1000")
    k = int(k) if k.isdigit() else k
    cfg = FindConfig(sites=args.sites, k=k, batch_size=args.batch_size)

    ref, load32, rt32 = run(spec, "float32", args.device, corpus, cfg)
    low, load_low, rt_low = run(spec, args.low, args.device, corpus, cfg)
    rows = []
    for li, lang in enumerate(ref.languages):
        d = (low.ap[li] - ref.ap[li]).abs()
        cells = [lang]
        for which in ("top", "bottom"):
            a = set(ref.sets[lang][which].neurons.tolist())
            b = set(low.sets[lang][which].neurons.tolist())
            cells += [f"{len(a & b) / len(a):.3f}", f"{len(a & b) / len(a | b):.3f}"]
        cells += [f"{float(d.max()):.2e}", f"{float(d.mean()):.2e}"]
        rows.append(cells)
    body = table(["language", "top-k overlap", "top-k Jaccard", "bottom-k overlap", "bottom-k Jaccard",
                  "max |AP diff|", "mean |AP diff|"], rows)
    t32, tlow = ref.meta["timings"], low.meta["timings"]
    timing = table(["dtype", "device", "load s", "collect s", "rank s", "tokens"], [
        ["float32", rt32["device"], f"{load32:.1f}", f"{t32['collect_s']:.1f}", f"{t32['rank_s']:.1f}", ref.meta["tokens"]],
        [args.low, rt_low["device"], f"{load_low:.1f}", f"{tlow['collect_s']:.1f}", f"{tlow['rank_s']:.1f}",
         low.meta["tokens"]]])
    notes = (f"Model {label}, sites {args.sites}, {ref.index.n_neurons} neurons, k={ref.k}, corpus {corpus.name} "
             f"({sum(len(t) for t in corpus.texts.values())} texts). Pooled values are float32 and AP float64 in both "
             f"runs; only the model's weights and activations are {args.low}.")
    title = f"{args.low} vs float32 collection: top-k agreement and AP difference ({label})"
    publish(title, body + "\n\n" + timing, notes, args.no_record, heading=True)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
