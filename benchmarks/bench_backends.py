"""TransformerBridge against HookedTransformer on the same weights, side by side in one run: pooled values,
AP, the top/bottom-k sets, steered samples on the same seeds, and the time of find and of generation.
Needs transformer-lens 3.x (the only line with both classes).

    python benchmarks/bench_backends.py --tiny                                    # tiny random Llama (seconds)
    python benchmarks/bench_backends.py --model gemma-3-270m --n-per-lang 100 --k 1000 --samples 20

Overlap is |A & B| / |A| per language and side (A the bridge's set); "samples equal" counts the seeds whose
steered tokens are identical on both.
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

from tl_langneurons import CorpusConfig, LangNeuronsError, find_neurons, load_model  # noqa: E402
from tl_langneurons.steer.generation import generate_many  # noqa: E402
from tl_langneurons.steer.methods import SteeringConfig  # noqa: E402


def parse_args(argv) -> argparse.Namespace:
    """The command line: the model, the corpus, k and the steered samples."""
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--tiny", action="store_true", help="the tiny random Llama of the tests")
    p.add_argument("--corpus", default="bundled")
    p.add_argument("--n-per-lang", type=int, default=100)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--samples", type=int, default=20, help="seeds per steered language")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--methods", default="clamp,add")
    p.add_argument("--no-record", action="store_true")
    return p.parse_args(argv)


def run_backend(spec: str, backend: str, corpus, steerings: list, args) -> dict:
    """One backend on the weights: its load and find times, its neurons and pooled values, and its steered
    samples (every method towards every language on seeds 1..--samples) with their time."""
    t0 = time.perf_counter()
    model = load_model(spec, backend=backend)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    neurons, pooled, _ = find_neurons(model, corpus, k=args.k, progress=False, return_activations=True)
    find_s = time.perf_counter() - t0
    samples, gen_s = {}, 0.0
    for steering in steerings:
        for lang in neurons.languages:
            t0 = time.perf_counter()
            samples[steering.method, lang] = generate_many(
                model, [(None, s) for s in range(1, args.samples + 1)], max_new_tokens=args.max_new_tokens,
                fwd_hooks=steering.hooks(neurons, lang))
            gen_s += time.perf_counter() - t0
    res = dict(name=type(model).__name__, load=load_s, find=find_s, gen=gen_s, neurons=neurons,
               pooled=pooled.values, samples=samples)
    del model
    return res


def compare(res: dict, methods: list[str], spec: str, args) -> tuple[str, str]:
    """The two backends side by side: set overlap and equal samples per language, the times, and the largest
    differences of the pooled values and AP in the notes; returns (body, notes)."""
    b, h = res["bridge"], res["hooked"]
    nb, nh = b["neurons"], h["neurons"]
    pooled_diff = float((b["pooled"] - h["pooled"]).abs().max())
    pooled_scale = float(b["pooled"].abs().max())
    ap_diff = float((nb.ap - nh.ap).abs().max())
    rows = []
    for lang in nb.languages:
        ov = []
        for which in ("top", "bottom"):
            A = set(nb.sets[lang][which].neurons.tolist())
            B = set(nh.sets[lang][which].neurons.tolist())
            ov.append(f"{len(A & B) / max(1, len(A)):.4f}")
        eq = [sum(x.tokens == y.tokens for x, y in zip(b["samples"][m, lang], h["samples"][m, lang]))
              for m in methods]
        rows.append([lang, *ov, *[f"{e}/{args.samples}" for e in eq]])
    body = table(["language", "top-k overlap", "bottom-k overlap", *[f"{m}: samples equal" for m in methods]], rows)
    body += "\n\n" + table(["", "TransformerBridge", "HookedTransformer"], [
        ["load s", f"{b['load']:.1f}", f"{h['load']:.1f}"],
        ["find s", f"{b['find']:.1f}", f"{h['find']:.1f}"],
        [f"generation s ({len(methods)} methods x {len(nb.languages)} languages x {args.samples} seeds x "
         f"{args.max_new_tokens} tokens)", f"{b['gen']:.1f}", f"{h['gen']:.1f}"],
    ])
    notes = (f"Model {'tiny random Llama' if args.tiny else spec}, corpus {args.corpus} ({args.n_per_lang} texts per "
             f"language), sites mlp_post, k = {args.k}. Pooled values: max |diff| {pooled_diff:.2e} (largest value "
             f"{pooled_scale:.1f}); AP: max |diff| {ap_diff:.2e}.")
    return body, notes


def main(argv=None) -> int:
    """Check the install and the options, run both backends on the same weights, compare and record."""
    args = parse_args(argv)
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        print("bench_backends needs transformer-lens 3.x (HookedTransformer): pip install 'transformer-lens>=3.9,<4'",
              file=sys.stderr)
        return 2
    try:
        corpus = CorpusConfig(args.corpus, n_per_lang=args.n_per_lang).load()
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        steerings = [SteeringConfig(method=m) for m in methods]
    except LangNeuronsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.model
        if args.tiny:
            spec = tiny_model(Path(tmp))
            args.k = min(args.k, 20)
        res = {backend: run_backend(spec, backend, corpus, steerings, args) for backend in ("bridge", "hooked")}
    body, notes = compare(res, methods, spec, args)
    publish("Backends: TransformerBridge against HookedTransformer (same weights)", body, notes, args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
