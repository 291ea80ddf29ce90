"""Step 4: where the neurons sit (per-layer counts, first/last-quarter share) and how little the
languages share (overlap matrix), as numbers; ``plots`` draws them and ``write_analysis`` saves
every table (Markdown and CSV) and figure (PNG) into a result folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..detect.neurons import LanguageNeurons
from ..provenance import atomic_write_text
from ..tables import csv_text, markdown_table


def layer_counts(neurons: LanguageNeurons, lang: str, which: str) -> np.ndarray:
    """Number of the language's ``which`` neurons in each layer, [n_layers]."""
    layers = neurons.index.layers()[neurons.sets[lang][which].neurons.numpy()]
    return np.bincount(layers, minlength=neurons.index.n_layers)


def quarter_shares(counts: np.ndarray) -> tuple[float, float]:
    """Share of neurons in the first and in the last quarter of the layers."""
    n = len(counts)
    q = max(1, n // 4)
    total = max(1, counts.sum())
    return counts[:q].sum() / total, counts[-q:].sum() / total


def overlap_matrix(neurons: LanguageNeurons, which: str = "both") -> np.ndarray:
    """Shared selected neurons between every pair of languages, [L, L] (diagonal: set size)."""
    sets = [set(neurons.selected(l, which)[0].tolist()) for l in neurons.languages]
    return np.array([[len(a & b) for b in sets] for a in sets])


def layer_table(neurons: LanguageNeurons) -> tuple[list[str], list[list]]:
    header = ["lang", "which", *[f"L{i}" for i in range(neurons.index.n_layers)], "first_quarter", "last_quarter", "ends"]
    rows = []
    for lang in neurons.languages:
        for which in ("top", "middle", "bottom"):
            c = layer_counts(neurons, lang, which)
            f, l = quarter_shares(c)
            ends = [f"{f:.3f}", f"{l:.3f}", f"{f + l:.3f}"] if c.sum() else ["-"] * 3  # an empty set: no shares
            rows.append([lang, which, *c.tolist(), *ends])
    return header, rows


def draw_placement(neurons: LanguageNeurons, out: str | Path) -> list[Path]:
    """``layers.png`` (per-layer counts of every set) and ``overlap.png`` (top + bottom overlap) into ``out``,
    from the neurons alone: find draws them, and ``report`` draws them again from a folder's saved neurons."""
    from ..report import plots

    out = Path(out)
    counts = {l: {w: layer_counts(neurons, l, w) for w in ("top", "middle", "bottom")} for l in neurons.languages}
    plots.layer_histograms(counts, neurons.k, neurons.index.spec, out / "layers.png")
    plots.overlap_heatmap(overlap_matrix(neurons, "both"), neurons.languages, 2 * neurons.k, out / "overlap.png")
    return [out / "layers.png", out / "overlap.png"]


def write_analysis(neurons: LanguageNeurons, out: str | Path, pooled=None, labels=None) -> dict:
    """Tables and figures of the detection into ``out``; returns the key numbers."""
    from ..report import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    h, rows = layer_table(neurons)
    atomic_write_text(out / "layers.md", markdown_table(h, rows))
    atomic_write_text(out / "layers.csv", csv_text(h, [dict(zip(h, r)) for r in rows]))
    langs = neurons.languages
    md, ovs = [], {}
    for which, size, title in (("both", 2 * neurons.k, f"top-{neurons.k} + bottom-{neurons.k} (the paper's Table 1)"),
                               ("top", neurons.k, f"top-{neurons.k} only"), ("bottom", neurons.k, f"bottom-{neurons.k} only")):
        ov = overlap_matrix(neurons, which)
        ovs[which] = ov
        rows = [[a, *[f"{ov[i, j]} ({100 * ov[i, j] / size:.1f}%)" if i != j else "-" for j in range(len(langs))]]
                for i, a in enumerate(langs)]
        md.append(f"Shared neurons, {title}; percent of {size}\n\n" + markdown_table(["", *langs], rows))
    atomic_write_text(out / "overlap.md", "\n".join(md))
    atomic_write_text(out / "overlap.csv", csv_text(["which", "lang", *langs], [
        {"which": w, "lang": a, **dict(zip(langs, ovs[w][i].tolist()))} for w in ovs for i, a in enumerate(langs)]))
    draw_placement(neurons, out)
    if pooled is not None and labels is not None and isinstance(pooled.values, torch.Tensor):
        plots.activation_distributions(neurons, pooled.values, np.asarray(labels), out / "distributions.png")
    shares = {}
    for which in ("top", "middle", "bottom"):
        c = sum(layer_counts(neurons, l, which) for l in langs)
        f, l = quarter_shares(c)
        shares[which] = {"first_quarter": float(f), "last_quarter": float(l)} if c.sum() else None  # every set empty
    offdiag = ~np.eye(len(langs), dtype=bool)
    return {"quarter_shares": shares,
            "overlap_max": {w: int(o[offdiag].max()) for w, o in ovs.items()},
            "overlap_mean": {w: float(o[offdiag].mean()) for w, o in ovs.items()},
            "top_mean_ap": {l: float(a.mean()) if len(a := neurons.sets[l]["top"].ap) else None for l in langs}}
