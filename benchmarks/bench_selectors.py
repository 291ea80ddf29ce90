"""Neuron selectors side by side on the same model and texts: ap (the paper), lape (Tang et al. 2024),
actprob (act-prob-90p) and meandiff (Welch z of pooled means), all from ONE collection pass.

    python benchmarks/bench_selectors.py [--model gemma-3-270m] [--data ../shared/data] [--n-per-lang 500]
        [--samples 0] [--out runs/gemma] [--no-record]

Quick run on a tiny model folder: ``--model PATH --n-per-lang 20 --heldout-per-lang 10 --deact-texts 3 --k 10``.

Per method: set sizes, the sets' AP on the selection texts and on held-out text of other genres
(UD dev/test, Tatoeba; never used for selection), split-half stability (Jaccard of the sets selected
on two disjoint halves; the token counts of the halves come from the same pass, grouped by
language x half), the deactivation effect (next-token loss change on held-out text of the language
and of the others when the top set is zeroed, beside random neurons with the same count per site)
and, with ``--samples N``, the Table 2 occurrence rate with the paper's clamp (top + bottom to the
median; same seeds 1..N for every method). Then per language the Jaccard overlap of the top sets of
every pair of methods, and the layer histograms of the top sets side by side. With ``--out`` (a
find folder), the tables go to ``OUT/selectors/selectors.md`` for the report.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import halves, heldout_ap, peak_rss_gib, publish, table  # noqa: E402

from tl_langneurons import LanguageNeurons, MultilingualCorpus, collect, load_model, resolve_sites  # noqa: E402
from tl_langneurons.analyses.deactivation import DeactivationConfig, deactivation  # noqa: E402
from tl_langneurons.analyses.placement import layer_counts  # noqa: E402
from tl_langneurons.detect.activations import PooledActivations  # noqa: E402
from tl_langneurons.detect.selectors import SELECTORS, SelectorSettings  # noqa: E402
from tl_langneurons.model.load import model_name, weights_fingerprint  # noqa: E402
from tl_langneurons.provenance import atomic_write_text  # noqa: E402


def subset(pooled: PooledActivations, rows: np.ndarray, groups: list[int]) -> PooledActivations:
    """The pooled values of ``rows`` and the token histogram of ``groups`` summed (one per language)."""
    hist = pooled.tokens["hist"]
    n_tok = pooled.tokens["n_tokens"]
    return PooledActivations(pooled.values[rows], pooled.index, dict(pooled.meta),
                             tokens={"hist": hist[groups].clone(), "n_tokens": n_tok[groups].clone()})


def jaccard(a, b) -> float:
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / len(a | b) if a | b else float("nan")


def fmt(x: float, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def parse_args() -> argparse.Namespace:
    """The command line (the flags are the module docstring's)."""
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--n-per-lang", type=int, default=500)
    ap.add_argument("--heldout-per-lang", type=int, default=200)
    ap.add_argument("--sites", default="mlp_post")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--lape-top-rate", type=float, default=0.01, help="LAPE/actprob top rate (paper: 0.01)")
    ap.add_argument("--deact-texts", type=int, default=50, help="held-out texts per language for deactivation "
                    "(0: skip it; e.g. on a large-vocabulary model, where `tl-langneurons deactivate` can run it apart)")
    ap.add_argument("--samples", type=int, default=0, help="steering samples per language (0: skip)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--work", default=str(Path(__file__).parent / ".work"))
    ap.add_argument("--out", default=None, help="a find folder: write OUT/selectors/selectors.md for the report")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    return ap.parse_args()


class Collected(NamedTuple):
    """What every selector is judged on, from one collection pass: the texts, their halves and pooled values."""

    sel: MultilingualCorpus
    heldout: dict  # name -> MultilingualCorpus (never used for selection)
    texts: list
    labels: np.ndarray
    half: np.ndarray  # 0/1 per text
    index: object  # the sites
    full: PooledActivations  # every selection text, token histograms per language
    parts: list  # the two halves' PooledActivations
    meta: dict
    ho_pooled: dict  # name -> (pooled held-out values, their labels)
    collect_s: float

    @property
    def langs(self) -> list[str]:
        return self.sel.languages


def collect_once(model, args) -> Collected:
    """ONE pass over the selection texts (pooled values + token histograms per language x half), and the held-out
    texts' pooled values, so every selector is judged on the same numbers."""
    data = Path(args.data)
    sel = MultilingualCorpus.load(f"{data / 'pawsx-dev'}+{data / 'flores200-dev'}", args.n_per_lang, 0)
    heldout = {name: MultilingualCorpus.load(str(data / name), args.heldout_per_lang, 0, sel.languages)
               for name in ("ud-dev-test", "tatoeba-laser")}
    L = len(sel.languages)
    texts, labels = sel.flat()
    labels = np.asarray(labels)
    half = halves(labels)
    index = resolve_sites(model, args.sites)
    t0 = time.perf_counter()
    pooled = collect(model, texts, index, batch_size=args.batch_size, token_groups=labels + L * half)
    collect_s = time.perf_counter() - t0
    hist, n_tok = pooled.tokens["hist"], pooled.tokens["n_tokens"]
    full = PooledActivations(pooled.values, index, dict(pooled.meta),
                             tokens={"hist": hist[:L] + hist[L:], "n_tokens": n_tok[:L] + n_tok[L:]})
    parts = [subset(pooled, np.flatnonzero(half == h), list(range(h * L, (h + 1) * L))) for h in (0, 1)]
    meta = {"model": model_name(model), "weights_sha": weights_fingerprint(model)}
    ho_pooled = {}
    for name, corpus in heldout.items():
        ho_texts, ho_labels = corpus.flat()
        ho_pooled[name] = (collect(model, ho_texts, index, batch_size=args.batch_size), np.asarray(ho_labels))
    return Collected(sel, heldout, texts, labels, half, index, full, parts, meta, ho_pooled, collect_s)


def deactivation_effect(model, n: LanguageNeurons, c: Collected, args) -> tuple[float, float, float]:
    """The next-token loss change with the top set zeroed: own language, other languages, own with random
    neurons (nan when --deact-texts 0 skips it)."""
    if args.deact_texts <= 0:  # skipped (--deact-texts 0)
        return float("nan"), float("nan"), float("nan")
    de = deactivation(model, n, c.heldout["ud-dev-test"], DeactivationConfig(which="top", n_texts=args.deact_texts),
                      progress=False)
    eye = np.eye(len(de.languages), dtype=bool)
    return de.delta[eye].mean(), de.delta[~eye].mean(), de.delta_random[eye].mean()


def steering_rate(model, n: LanguageNeurons, c: Collected, method: str, args) -> str:
    """The Table 2 occurrence rate with the paper's clamp on seeds 1..--samples: raw / gated, in %."""
    from tl_langneurons.evaluate.cells import CellRunner, steered
    from tl_langneurons.evaluate.control import EvaluateConfig

    langs = c.langs
    refs = {l: c.sel.texts[l] for l in langs}
    ecfg = EvaluateConfig(languages=langs, samples=args.samples, ablation_ks=[], batch_size=50)
    cells = CellRunner(model, n, ecfg, refs, Path(args.work) / f"selector-cells-{Path(args.model).name}-{method}",
                       progress=False)
    seeds = list(range(1, args.samples + 1))
    scores = [cells.score(cells.samples(steered(l, ecfg.steering, "both", n.k, seeds)), l) for l in langs]
    return f"{100 * np.mean([s.rate for s in scores]):.0f} / {100 * np.mean([s.gated_rate for s in scores]):.0f}"


def judge(method: str, model, c: Collected, args) -> tuple[LanguageNeurons, list]:
    """One selector on the collected values: its sets and their table row (sizes, AP, held-out AP, split-half
    stability, deactivation, steering, selection time)."""
    langs, k = c.langs, args.k
    settings = SelectorSettings(method, top_rate=args.lape_top_rate)
    t0 = time.perf_counter()
    n = LanguageNeurons.from_activations(c.full, c.labels, langs, k, dict(c.meta), selector=settings)
    select_s = time.perf_counter() - t0
    sizes = {w: np.mean([len(n.sets[l][w].neurons) for l in langs]) for w in ("top", "bottom")}
    top_ap = np.nanmean([n.sets[l]["top"].ap.mean().item() if len(n.sets[l]["top"].neurons) else np.nan for l in langs])
    ho = {(name, w): heldout_ap(n, hp.values, hl, langs, w) for name, (hp, hl) in c.ho_pooled.items()
          for w in ("top", "bottom")}
    a, b = (LanguageNeurons.from_activations(p, c.labels[c.half == h], langs, k, dict(c.meta), selector=settings)
            for h, p in enumerate(c.parts))
    stab = {w: float(np.nanmean([jaccard(a.sets[l][w].neurons, b.sets[l][w].neurons) for l in langs]))
            for w in ("top", "bottom")}
    own, other, rand_own = deactivation_effect(model, n, c, args)
    row = [method, f"{sizes['top']:.0f} / {sizes['bottom']:.0f}", fmt(top_ap),
           f"{fmt(ho['ud-dev-test', 'top'])} / {fmt(ho['ud-dev-test', 'bottom'])}",
           f"{fmt(ho['tatoeba-laser', 'top'])} / {fmt(ho['tatoeba-laser', 'bottom'])}",
           f"{fmt(100 * stab['top'], '.0f')} / {fmt(100 * stab['bottom'], '.0f')}",
           f"{own:+.3f} / {other:+.3f} / {rand_own:+.3f}" if args.deact_texts > 0 else "- (skipped)"]
    if args.samples > 0:
        row.append(steering_rate(model, n, c, method, args))
    row.append(f"{select_s:.1f}")
    return n, row


def comparison_tables(results: dict[str, LanguageNeurons], rows: list, c: Collected, args) -> str:
    """The selectors' table, the per-language Jaccard overlap of every pair's top sets, and the layer histograms
    of the sets side by side."""
    langs = c.langs
    pairs = list(itertools.combinations(SELECTORS, 2))
    jac_rows = [[f"{m1} vs {m2}", *[fmt(jaccard(results[m1].sets[l]["top"].neurons, results[m2].sets[l]["top"].neurons))
                                    for l in langs],
                 fmt(float(np.nanmean([jaccard(results[m1].sets[l]["top"].neurons, results[m2].sets[l]["top"].neurons)
                                       for l in langs])))] for m1, m2 in pairs]
    # layer histograms of the top sets (summed over languages), side by side
    n_layers = c.index.n_layers
    layer_rows = [[m, w, *sum(layer_counts(results[m], l, w) for l in langs).tolist()]
                  for m in SELECTORS for w in ("top", "bottom") if not (w == "bottom" and results[m].one_sided)]
    return "\n\n".join([
        table(header(args), rows),
        "Jaccard overlap of the top sets, per language\n\n" + table(["methods", *langs, "mean"], jac_rows),
        "Layer of the selected neurons (summed over languages)\n\n"
        + table(["method", "set", *[f"L{i}" for i in range(n_layers)]], layer_rows)])


def selector_notes(model, lape_meta: dict, c: Collected, args, t_start: float) -> str:
    """What the tables measured and how: the texts, the thresholds, each column's definition, time and memory."""
    return (f"Model {model_name(model)}, sites {c.index.spec} ({c.index.n_neurons} neurons), k = {args.k}. Selection: "
            f"{len(c.texts)} texts ({args.n_per_lang} per language, PAWS-X + FLORES dev 1:1, seed 0), one collection pass "
            f"({c.collect_s:.0f} s, token histograms per language x half). LAPE / actprob thresholds (Tang et al. ACL "
            f"2024, identify.py): top rate {args.lape_top_rate}, filter rate 0.95, activation bar 0.95 (LAPE kept "
            f"{lape_meta.get('n_kept')} neurons; filter value {fmt(lape_meta.get('filter_value'), '.4f')}, bar "
            f"{fmt(lape_meta.get('activation_bar'), '.4f')}); actprob: P(activation >= the neuron's 90th percentile "
            "over all detection tokens, rounded up to a 1/8-octave bin edge). Both select top sets only (sizes vary "
            "per language, at most k); meandiff: Welch z, top = largest, bottom = most negative. Held-out AP: the "
            f"sets' AP for their language on {args.heldout_per_lang} held-out texts per language (chance "
            f"1/{len(c.langs)}). Stability: Jaccard of the sets selected on two disjoint halves (mean over languages). "
            + (f"Deactivation: top set zeroed, next-token loss change in nats/token on {args.deact_texts} UD texts per "
               "language: own language / other languages / own language with random neurons of the same per-site "
               "counts." if args.deact_texts > 0 else "Deactivation skipped (--deact-texts 0).")
            + (f" Steering: top + bottom clamped to the median, {args.samples} samples per language from BOS, "
               "seeds 1..N, 64 tokens, T = 0.8 (raw lid.176 / gated)." if args.samples > 0 else "")
            + f" Total {time.perf_counter() - t_start:.0f} s, peak RSS {peak_rss_gib():.1f} GiB.")


def main() -> None:
    """Collect once, judge every selector on it, compare their sets, then write and record the tables."""
    args = parse_args()
    warnings.filterwarnings("ignore", "Mean of empty slice")  # lape / actprob have no bottom sets
    t_start = time.perf_counter()
    model = load_model(args.model)
    c = collect_once(model, args)
    results: dict[str, LanguageNeurons] = {}
    rows = []
    for method in SELECTORS:
        results[method], row = judge(method, model, c, args)
        rows.append(row)
        print(table(header(args), rows[-1:]), flush=True)
    body = comparison_tables(results, rows, c, args)
    notes = selector_notes(model, results["lape"].meta, c, args, t_start)
    if args.out:
        out = Path(args.out) / "selectors"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "selectors.md", body + "\n\n" + notes + "\n")
    publish(f"Neuron selectors: ap, lape, actprob, meandiff ({model_name(model)})", body, notes, args.no_record)


def header(args) -> list[str]:
    h = ["method", "set size top / bottom", "top AP (selection)", "held-out AP UD top / bottom",
         "held-out AP Tatoeba top / bottom", "split-half Jaccard top / bottom %",
         "deactivation own / other / random (nats)"]
    if args.samples > 0:
        h.append("clamp rate / gated %")
    return h + ["select s"]


if __name__ == "__main__":
    main()
