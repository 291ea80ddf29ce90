"""How the cost of finding language neurons grows: collection time against the number of tokens
(three corpus sizes) and AP time against the number of neurons (three matrix widths), measured
here, then extrapolated to XGLM-2.9B and Llama-2-13B at the paper's sites on 1 and 8 GPUs under
the assumptions printed with the table.

    python benchmarks/bench_scaling.py --tiny                    # tiny random Llama (seconds)
    python benchmarks/bench_scaling.py --model gemma-3-270m      # the default sizes (a few minutes)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import publish, table, tiny_model  # noqa: E402

from tl_langneurons import CorpusConfig, collect, load_model  # noqa: E402
from tl_langneurons.detect.ranking import average_precision  # noqa: E402

# the paper's models at its sites (every linear output of every block); non-embedding parameters
# (the collection forward stops before the unembedding): from the models' config.json
TARGETS = {
    # 48 layers, d_model 2048, ffn 8192: per layer q,k,v,o (4 x 2048) + fc1 8192 + fc2 2048
    "XGLM-2.9B": {"params": 48 * (4 * 2048**2 + 2 * 2048 * 8192), "neurons": 48 * (4 * 2048 + 8192 + 2048),
                  "bf16_gb": 2.94e9 * 2 / 1e9},
    # 40 layers, d_model 5120, ffn 13824: q,k,v,o (4 x 5120) + gate, up (2 x 13824) + down 5120
    "Llama-2-13B": {"params": 40 * (4 * 5120**2 + 3 * 5120 * 13824), "neurons": 40 * (5 * 5120 + 2 * 13824),
                    "bf16_gb": 13.0e9 * 2 / 1e9},
}


def non_embedding_params(model) -> int:
    hf = getattr(model, "original_model", None) or model
    skip = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        mod = getattr(hf, get, lambda: None)()
        if mod is not None and getattr(mod, "weight", None) is not None:
            skip.add(id(mod.weight))
    return sum(p.numel() for p in hf.parameters() if id(p) not in skip)


def fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares y = a + b x."""
    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(a), float(b)


def hms(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def parse_args() -> argparse.Namespace:
    """The command line: the measured sizes and the assumptions of the extrapolation."""
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="model name or folder")
    ap.add_argument("--tiny", action="store_true", help="use the tests' tiny random Llama instead of --model")
    ap.add_argument("--corpus", default="bundled")
    ap.add_argument("--texts", default="60,120,240", help="three corpus sizes (texts per language)")
    ap.add_argument("--sites", default="mlp_post")
    ap.add_argument("--repeats", type=int, default=2, help="collection runs per size (the fastest counts)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ap-texts", type=int, default=3000, help="texts of the random AP matrices (the paper: 3000)")
    ap.add_argument("--ap-neurons", default="16384,65536,262144", help="three AP matrix widths")
    ap.add_argument("--paper-texts", type=int, default=3000, help="texts of the extrapolated runs")
    ap.add_argument("--tokens-per-text", type=float, default=None,
                    help="tokens per text of the extrapolated runs (default: the mean measured here)")
    ap.add_argument("--gpu-tflops", type=float, default=100.0,
                    help="assumed effective bf16 forward throughput of one GPU, TFLOP/s")
    ap.add_argument("--gpu-ap-speedup", type=float, default=20.0,
                    help="assumed speed of the torch AP on one GPU relative to the numpy AP measured here")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    return ap.parse_args()


def measure_collection(model, args) -> dict:
    """Collection time against tokens: the fastest of --repeats runs at each of the three corpus sizes, the
    linear fit and the tokens per text; its table."""
    rows, toks, secs = [], [], []
    sizes = [int(x) for x in args.texts.split(",")]
    collect(model, CorpusConfig(corpus=args.corpus, n_per_lang=2).load().flat()[0], args.sites, progress=False)  # warm-up
    for n in sizes:
        texts = CorpusConfig(corpus=args.corpus, n_per_lang=n).load().flat()[0]
        s = float("inf")
        for _ in range(args.repeats):  # the fastest of the repeats: other load on the machine only adds
            t0 = time.perf_counter()
            res = collect(model, texts, args.sites, progress=False)
            s = min(s, time.perf_counter() - t0)
        toks.append(res.meta["tokens"])
        secs.append(s)
        rows.append([len(texts), res.meta["tokens"], res.values.shape[1], f"{s:.2f}", f"{res.meta['tokens'] / s:.0f}"])
    a_c, b_c = fit(toks, secs)
    tokens_per_text = args.tokens_per_text or toks[-1] / (sizes[-1] * len(CorpusConfig(corpus=args.corpus).load().languages))
    return {"a": a_c, "b": b_c, "tokens_per_text": tokens_per_text,
            "table": table(["texts", "tokens", "neurons", "collect s", "tokens/s"], rows)}


def measure_ap(args) -> dict:
    """AP time against neurons on random matrices of the three widths (numpy, and torch on the CPU on at most
    16384 columns, scaled), the linear fit; its table."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), args.ap_texts // 6)
    rows, ns, ap_secs = [], [], []
    for m in (int(x) for x in args.ap_neurons.split(",")):
        scores = torch.from_numpy(np.round(rng.normal(size=(len(labels), m)), 2).astype(np.float32))
        t0 = time.perf_counter()
        average_precision(scores, labels, 6)
        s = time.perf_counter() - t0
        t0 = time.perf_counter()
        average_precision(scores[:, : min(m, 16384)], labels, 6, device="cpu")
        s_torch = (time.perf_counter() - t0) * m / min(m, 16384)
        ns.append(m)
        ap_secs.append(s)
        rows.append([f"{len(labels)} x {m}", f"{s:.2f}", f"{s_torch:.2f}", f"{m / s:.0f}"])
        del scores
    a_a, b_a = fit(ns, ap_secs)
    return {"a": a_a, "b": b_a, "n_texts": len(labels),
            "table": table(["texts x neurons", "numpy AP s", "torch AP on CPU s (scaled)", "neurons/s (numpy)"], rows)}


def extrapolate(coll: dict, ap: dict, flops: float, args) -> str:
    """The table of find's time (collection + AP) on the paper's models, here, on 1 GPU and on 8."""
    n = ap["n_texts"]
    ap_scale = args.paper_texts * np.log2(args.paper_texts) / (n * np.log2(n))
    rows = []
    for name, t in TARGETS.items():
        tokens = args.paper_texts * coll["tokens_per_text"]
        cpu_coll = tokens * 2 * t["params"] / flops
        gpu_coll = tokens * 2 * t["params"] / (args.gpu_tflops * 1e12)
        cpu_ap = ap["b"] * t["neurons"] * ap_scale
        gpu_ap = cpu_ap / args.gpu_ap_speedup
        matrix_gb = args.paper_texts * t["neurons"] * 4 / 1e9
        rows.append([name, f"{t['params'] / 1e9:.2f}B", f"{t['neurons']:,}", f"{matrix_gb:.1f}", f"{t['bf16_gb']:.1f}",
                     hms(cpu_coll + cpu_ap), hms(gpu_coll + gpu_ap), hms(gpu_coll / 8 + gpu_ap)])
    return table(["model", "non-embedding params", "paper neurons", "pooled matrix GB (float32)", "weights GB (bf16)",
                  "here (CPU)", "1 GPU", "8 GPUs"], rows)


def assumptions(label: str, p_model: int, coll: dict, ap: dict, flops: float, args) -> str:
    """What was measured and the assumptions the extrapolation rests on, printed with the table."""
    return "\n".join([
        f"Measured on {label} ({p_model / 1e6:.2f}M non-embedding parameters, {args.dtype}, {args.device}, sites "
        f"{args.sites}): collection {coll['b'] * 1e3:.3f} ms per token (fastest of {args.repeats} runs, fit over three "
        f"sizes, intercept {coll['a']:.2f} s), "
        f"i.e. {flops / 1e9:.2f} GFLOP/s effective; numpy AP {ap['b'] * 1e6:.1f} us per neuron at {ap['n_texts']} texts "
        f"(intercept {ap['a']:.2f} s).",
        "Assumptions of the extrapolation:",
        f"- {args.paper_texts} texts of {coll['tokens_per_text']:.1f} tokens each (the mean measured here); every token "
        "costs 2 x non-embedding parameters FLOPs (forward only: the collection stops before the unembedding); hooks and "
        "pooling add what they add here (they are in the measured rate).",
        f"- CPU: the effective FLOP/s measured here holds for the larger model (it usually rises with layer width, so "
        f"this is pessimistic); one GPU: {args.gpu_tflops:.0f} TFLOP/s effective bf16 (about a third of an A100's "
        "peak, a sixth of an H100's); the model fits on one GPU in bf16 (weights column), so 8 GPUs run 8 copies on "
        "shards of the texts (collection / 8, gathering the rows costs nothing in comparison).",
        f"- AP: the measured numpy time per neuron, scaled by n log n to {args.paper_texts} texts; on a GPU, "
        f"{args.gpu_ap_speedup:.0f}x faster (torch path, unmeasured here: benchmarks/gpu_check.sh measures it), "
        "run once (not split over GPUs); the pooled matrix must fit in host memory (or --on-disk).",
        "- Not included: loading the model, writing results, the analysis step.",
    ])


def main() -> None:
    """Load the model, measure collection and AP, extrapolate, and print or record the tables."""
    args = parse_args()
    tmp = tempfile.TemporaryDirectory() if args.tiny else None
    spec = tiny_model(Path(tmp.name)) if tmp else args.model
    label = "tiny random Llama (tests/helpers.py)" if tmp else args.model
    model = load_model(spec, dtype=args.dtype, device=args.device)
    p_model = non_embedding_params(model)
    coll = measure_collection(model, args)
    flops = 2 * p_model / coll["b"]  # effective forward FLOP/s here
    ap = measure_ap(args)
    extra = extrapolate(coll, ap, flops, args)
    body = (f"Collection time against tokens:\n\n{coll['table']}\n\nAP time against neurons:\n\n{ap['table']}\n\n"
            f"Extrapolated time of find (collection + AP):\n\n{extra}")
    title = f"Scaling: collection against tokens, AP against neurons, extrapolation ({label})"
    publish(title, body, assumptions(label, p_model, coll, ap, flops, args), args.no_record, heading=True)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
