"""Method choices on Gemma-3-270M: pooling (mean, max, last, median) and sites (mlp_post, paper),
each judged by the same measures, side by side in one run.

    python benchmarks/bench_methods.py [--data ../shared/data] [--samples 30] [--work benchmarks/.work]

Per configuration: mean AP of the top-k on the selection texts (500 per language, PAWS-X and
FLORES mixed 1:1, as the paper), the same neurons' AP recomputed on held-out texts never used for
selection (UD dev/test and Tatoeba), the top+bottom overlap between languages, the share of the
top-k in the first and last quarter of the layers, split-half stability (neurons selected on two
disjoint halves of the selection texts: share of the top-k found by both), and the occurrence rate
of Table 2 with top and bottom clamped (raw and gated, ``--samples`` per language, 64 tokens).
One forward pass collects all four poolings; pooled matrices and generated cells are cached in
``--work`` so a rerun resumes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import halves, heldout_ap, peak_rss_gib, record, table  # noqa: E402

from tl_langneurons import (  # noqa: E402
    LangNeuronsError,
    LanguageNeurons,
    MultilingualCorpus,
    PooledActivations,
    collect_poolings,
    load_model,
    resolve_sites,
)
from tl_langneurons.analyses.placement import (  # noqa: E402
    layer_counts,
    overlap_matrix,
    quarter_shares,
)
from tl_langneurons.detect.ranking import average_precision, bottom_k, top_k  # noqa: E402
from tl_langneurons.evaluate.cells import CellRunner, steered  # noqa: E402
from tl_langneurons.evaluate.control import EvaluateConfig  # noqa: E402
from tl_langneurons.provenance import sha256_texts  # noqa: E402

CONFIGS = [("mlp_post", "mean"), ("mlp_post", "max"), ("mlp_post", "last"), ("mlp_post", "median"), ("paper", "mean")]


def pooled_sets(model, name: str, texts: list[str], sites: str, poolings: list[str], work: Path) -> dict[str, PooledActivations]:
    """Pooled matrices of ``texts`` for each pooling, from ``work`` when cached there."""
    sha = sha256_texts(texts)
    index = resolve_sites(model, sites)
    out, missing = {}, []
    for p in poolings:
        path = work / f"acts-{name}-{sites}-{p}.safetensors"
        try:
            out[p] = PooledActivations.load(path, expect={"texts_sha256": sha, "pooling": p, "sites": index.spec})
        except LangNeuronsError:
            missing.append(p)
    if missing:
        t0 = time.perf_counter()
        new = collect_poolings(model, texts, index, missing)
        print(f"collected {name} {sites} {'+'.join(missing)}: {len(texts)} texts in {time.perf_counter() - t0:.0f} s", flush=True)
        for p, res in new.items():
            res.save(work / f"acts-{name}-{sites}-{p}.safetensors")
            out[p] = res
    return out


def parse_args() -> argparse.Namespace:
    """The command line: the model, the data, k, the samples and the configurations (sites:pooling)."""
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--n-per-lang", type=int, default=500)
    ap.add_argument("--heldout-per-lang", type=int, default=200)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=30, help="generated samples per language for the Table 2 rate")
    ap.add_argument("--work", default=str(Path(__file__).parent / ".work"))
    ap.add_argument("--configs", default=",".join(f"{s}:{p}" for s, p in CONFIGS))
    return ap.parse_args()


def stability(values, labels, langs: list[str], k: int) -> dict:
    """Split-half stability: select on each half, the share of the top-k (and bottom-k) found by both."""
    half = halves(labels)
    a_idx, b_idx = np.flatnonzero(half == 0), np.flatnonzero(half == 1)
    stab = {}
    ap_a = average_precision(values[a_idx], labels[a_idx], len(langs))
    ap_b = average_precision(values[b_idx], labels[b_idx], len(langs))
    for which, select in (("top", top_k), ("bottom", bottom_k)):
        stab[which] = np.mean([len(set(select(ap_a[li], k).tolist()) & set(select(ap_b[li], k).tolist())) / k
                               for li in range(len(langs))])
    return stab


def measure(model, sites: str, p: str, pooled: dict, ho: dict, labels, langs: list[str], refs: dict, args) -> list:
    """One configuration's table row: its sets' AP (selection, held-out), overlap, quarter shares, split-half
    stability, and the Table 2 "both" rate on a few samples per language."""
    k = args.k
    t0 = time.perf_counter()
    neurons = LanguageNeurons.from_activations(pooled[p], labels, langs, k)
    rank_s = time.perf_counter() - t0
    top_ap = np.mean([neurons.sets[l]["top"].ap.mean().item() for l in langs])
    ho_ap = {name: {w: heldout_ap(neurons, hp[p].values, hl, langs, w) for w in ("top", "bottom")}
             for name, (hp, hl) in ho.items()}
    ov = overlap_matrix(neurons, "both")
    off = ov[~np.eye(len(langs), dtype=bool)] / (2 * k)
    shares = np.array([quarter_shares(layer_counts(neurons, l, "top")) for l in langs])
    stab = stability(pooled[p].values, labels, langs, k)
    # Table 2 "both" rate on a few samples per language
    ecfg = EvaluateConfig(languages=langs, samples=args.samples, ablation_ks=[], batch_size=50)
    cells = CellRunner(model, neurons, ecfg, refs, Path(args.work) / f"cells-{sites}-{p}", progress=False)
    t0 = time.perf_counter()
    scores = [cells.score(cells.samples(steered(l, ecfg.steering, "both", k, range(1, args.samples + 1))), l) for l in langs]
    gen_s = time.perf_counter() - t0
    return [
        sites, p, f"{k} ({100 * k / neurons.index.n_neurons:.1f}%)", f"{top_ap:.3f}",
        f"{ho_ap['ud-dev-test']['top']:.3f} / {ho_ap['ud-dev-test']['bottom']:.3f}",
        f"{ho_ap['tatoeba-laser']['top']:.3f} / {ho_ap['tatoeba-laser']['bottom']:.3f}",
        f"{100 * off.mean():.1f} / {100 * off.max():.1f}",
        f"{100 * shares[:, 0].mean():.0f} / {100 * shares[:, 1].mean():.0f}",
        f"{100 * stab['top']:.0f} / {100 * stab['bottom']:.0f}",
        f"{100 * np.mean([s.rate for s in scores]):.0f} / {100 * np.mean([s.gated_rate for s in scores]):.0f}",
        f"{np.mean([s.bleu for s in scores]):.3f}", f"{rank_s:.0f} / {gen_s:.0f}"]


def method_notes(n_texts: int, args) -> str:
    """What the table measured and how: the texts, each column's definition, and the peak memory."""
    return (f"Selection: {n_texts} texts ({args.n_per_lang} per language, PAWS-X + FLORES dev 1:1, seed 0); held-out: "
            f"{args.heldout_per_lang} per language of UD dev/test and of Tatoeba (never used for selection). "
            f"Held-out AP: the selected neurons' AP for their language recomputed on the held-out texts, mean over "
            f"neurons and languages (top / bottom; chance = 1/6 = 0.167). Overlap: top+bottom sets shared between two "
            f"languages, share of 2k (mean / max over pairs). Quarter shares of the top-k (first / last quarter of "
            f"the layers, mean over languages). Stability: select on two disjoint halves ({args.n_per_lang // 2} + "
            f"{args.n_per_lang - args.n_per_lang // 2} texts per language), share of the top-k / bottom-k selected by "
            f"both. Table 2 rate: top and bottom clamped to "
            f"the median, {args.samples} samples per language from BOS, 64 tokens, T = 0.8 (raw lid.176 / gated by "
            f"the degeneracy gate). Peak RSS {peak_rss_gib():.1f} GiB.")


def main() -> None:
    """Load the model and texts, pool once per sites, measure every configuration, and record the table."""
    args = parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    configs = [tuple(c.split(":")) for c in args.configs.split(",")]
    model = load_model(args.model)
    sel = MultilingualCorpus.load(f"{data / 'pawsx-dev'}+{data / 'flores200-dev'}", args.n_per_lang, 0)
    heldout = {name: MultilingualCorpus.load(str(data / name), args.heldout_per_lang, 0) for name in ("ud-dev-test", "tatoeba-laser")}
    langs = sel.languages
    texts, labels = sel.flat()
    refs = {l: sel.texts[l] for l in langs}
    rows = []
    for sites in dict.fromkeys(s for s, _ in configs):
        poolings = [p for s, p in configs if s == sites]
        pooled = pooled_sets(model, "selection", texts, sites, poolings, work)
        ho = {}
        for name, corpus in heldout.items():
            ho_texts, ho_labels = corpus.flat()
            assert corpus.languages == langs
            ho[name] = (pooled_sets(model, name, ho_texts, sites, poolings, work), ho_labels)
        for p in poolings:
            rows.append(measure(model, sites, p, pooled, ho, labels, langs, refs, args))
            print(table(HEADER, rows[-1:]), flush=True)
    record("Method choices: pooling and sites (Gemma-3-270M)", table(HEADER, rows), method_notes(len(texts), args))


HEADER = ["sites", "pooling", "k", "top AP (selection)", "held-out AP UD top / bottom", "held-out AP Tatoeba top / bottom",
          "overlap % mean / max", "top in first / last quarter %", "split-half stability top / bottom %",
          "Table 2 both: rate / gated %", "BLEU", "rank s / generate s"]


if __name__ == "__main__":
    main()
