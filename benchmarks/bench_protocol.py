"""The paper's Table 2 protocol end to end: 19 cells (none, and top / bottom / both for 6 languages)
x 100 seeds x 64 tokens from BOS, with every measure (lid.176, lingua, the degeneracy gate, BLEU,
NLL under the unsteered model), from nothing cached, per neurons folder.

    python benchmarks/bench_protocol.py --neurons runs/gemma,runs/gemma-paper [--samples 100] [--tokens 64]

Prints the seconds of each part (model load, references: the gate and the reference NLL, generation,
NLL, scoring, writing) beside a FLOP-based floor: the tokens generated and scored times the FLOP
per token of the model (2 x the trunk's matrix parameters + 2 x vocabulary x width), divided by the
GFLOPS these cores sustain on the unembedding's matrix product, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_gib, record, table  # noqa: E402

import torch  # noqa: E402

from tl_langneurons import Study  # noqa: E402
from tl_langneurons.evaluate.control import EvaluateConfig, evaluate_control  # noqa: E402
from tl_langneurons.model.driver import Runner  # noqa: E402


def flop_per_token(model) -> tuple[float, float]:
    """(trunk, unembedding) FLOP of one token: 2 x matrix parameters of the blocks, 2 x vocab x d."""
    hf = Runner(model).hf
    head = hf.get_output_embeddings()
    head = getattr(head, "original_component", head)
    vocab, d = head.weight.shape
    emb = hf.get_input_embeddings()
    emb = getattr(emb, "original_component", emb)
    skip = {id(head.weight), id(emb.weight)}
    trunk = sum(p.numel() for p in hf.parameters() if p.dim() >= 2 and id(p) not in skip)
    return 2.0 * trunk, 2.0 * vocab * d


def sustained_gflops(d: int, vocab: int, rows: int = 100) -> float:
    """GFLOPS of ``torch.mm`` [rows, d] x [d, vocab] into a reused buffer (the unembedding of a step)."""
    w, h, out = torch.randn(vocab, d), torch.randn(rows, d), torch.empty(rows, vocab)
    torch.mm(h, w.T, out=out)
    t0 = time.perf_counter()
    for _ in range(5):
        torch.mm(h, w.T, out=out)
    return 2.0 * rows * d * vocab * 5 / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--neurons", default="runs/gemma", help="comma-separated find folders")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--languages", default=None, help="comma-separated (default: all of the folder's)")
    ap.add_argument("--corpus", default=None, help="references (default: the find corpus)")
    args = ap.parse_args()
    rows, notes = [], []
    for folder in args.neurons.split(","):
        study = Study(folder, progress=False)
        t0 = time.perf_counter()
        model = study.model
        t_load = time.perf_counter() - t0
        refs = study.references(args.corpus)
        cfg = EvaluateConfig(languages=args.languages.split(",") if args.languages else None, samples=args.samples,
                             max_new_tokens=args.tokens, ablation_ks=[])
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = evaluate_control(model, study.neurons, refs, cfg, Path(tmp) / "control", progress=False)
            total = time.perf_counter() - t0
        run = res.meta["run"]
        parts = run["protocol_seconds"]
        write = total - sum(parts.values())
        trunk, unemb = flop_per_token(model)
        d = Runner(model).d_model()
        gf = sustained_gflops(d, int(unemb / 2 / d))
        gen_tokens = run["tokens_generated"]
        scored = gen_tokens  # every generated token is scored once, under the unsteered model
        gen_floor = gen_tokens * (trunk + unemb) / gf / 1e9
        nll_floor = scored * (trunk + unemb) / gf / 1e9
        name = f"{folder} ({study.neurons.index.spec}, {study.neurons.index.n_neurons} neurons)"
        cells = len({(r['lang'] if r['condition'] != 'none' else '', r['condition']) for r in res.table2})
        rows += [
            [name, "model load", f"{t_load:.0f}", ""],
            ["", "references (gate, reference NLL)", f"{parts['references']:.0f}", ""],
            ["", f"generation ({gen_tokens} tokens)", f"{parts['generate']:.0f}", f"{gen_floor:.0f}"],
            ["", f"NLL under the unsteered model ({scored} tokens)", f"{parts['nll']:.0f}", f"{nll_floor:.0f}"],
            ["", "scoring (lid.176, lingua, gate, BLEU)", f"{parts['score']:.0f}", ""],
            ["", "writing the folder", f"{write:.0f}", ""],
            ["", f"**Table 2 ({cells} cells x {args.samples} x {args.tokens})**", f"**{total:.0f} ({total / 60:.1f} min)**",
             f"{gen_floor + nll_floor:.0f}"],
        ]
        notes.append(f"{folder}: {(trunk + unemb) / 1e9:.3f} GFLOP/token ({trunk / 1e9:.3f} trunk + {unemb / 1e9:.3f} "
                     f"unembedding); sustained {gf:.0f} GFLOPS on the unembedding product; sample cache hits "
                     f"{run['sample_cache']['hits']}, misses {run['sample_cache']['misses']}")
    body = table(["neurons", "part", "seconds", "FLOP floor (s)"], rows)
    record("Table 2 protocol end to end (bench_protocol.py)", body,
           "\n".join(notes) + f"\npeak RSS {peak_rss_gib():.2f} GiB. Floor = FLOP / sustained GFLOPS of the "
           "unembedding's matrix product; generation also pays the per-step trunk at batch 100.")


if __name__ == "__main__":
    main()
