"""Figures of the study (matplotlib, Agg backend): per-layer histograms (paper Fig. 2), the
overlap heatmap (Table 1), on/off activation distributions (Fig. 4) and the k ablation (Fig. 5)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..provenance import atomic_write_bytes  # noqa: E402


DPI = 110

# the script of every language lid.176 knows that is not written in Latin letters (any other code: Latin); a
# FLORES-style code (arb_Arab) names its own script
_SCRIPTS = {script: codes.split() for script, codes in {
    "Arabic": "ar arz azb ckb fa lrc mzn pnb ps sd ug ur", "Hebrew": "he yi", "Greek": "el",
    "Cyrillic": "av ba be bg bxr ce cv kk krc kv ky lez mhr mk mn mrj myv os ru rue sah sr tg tt tyv uk xal",
    "Devanagari": "bh dty gom hi mai mr ne new sa", "Bengali": "as bn bpy", "Gurmukhi": "pa", "Gujarati": "gu",
    "Oriya": "or", "Tamil": "ta", "Telugu": "te", "Kannada": "kn", "Malayalam": "ml", "Sinhala": "si", "Thai": "th",
    "Lao": "lo", "Khmer": "km", "Myanmar": "my", "Tibetan": "bo", "Armenian": "hy", "Georgian": "ka xmf",
    "Ethiopic": "am", "Thaana": "dv", "Han": "zh wuu yue", "Japanese": "ja", "Hangul": "ko"}.items()}
SCRIPT = {code: script for script, codes in _SCRIPTS.items() for code in codes}


def script_of(lang: str) -> str:
    """The script a language is written in (for grouping languages in figures)."""
    return lang.split("_", 1)[1] if "_" in lang else SCRIPT.get(lang, "Latin")


def by_script(langs: Sequence[str]) -> list[str]:
    """``langs`` grouped by script, the groups in the order of their first language, each group in the given
    order (languages already grouped keep their order)."""
    scripts = list(dict.fromkeys(script_of(l) for l in langs))
    return sorted(langs, key=lambda l: scripts.index(script_of(l)))


def lang_colors(langs: Sequence[str]) -> dict[str, tuple]:
    """One colour per language, distinct up to 20 (tab10, then tab20), a sampled colour map beyond."""
    n = len(langs)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "turbo")
    return {l: cmap(i if n <= 20 else i / max(1, n - 1)) for i, l in enumerate(langs)}


def grid_shape(n: int, max_cols: int = 5) -> tuple[int, int]:
    """(rows, columns) of ``n`` small multiples: one row up to ``max_cols``, then rows of balanced width."""
    rows = -(-n // max_cols)
    return rows, -(-n // rows)


def _panels(n: int, per: int, size: tuple[float, float], max_cols: int = 5, **kw):
    """A figure of ``n`` small multiples in a grid, each ``per`` axes stacked (panel ``size`` inches); returns
    (fig, [[axes of item i] for i]); spare cells hidden."""
    rows, cols = grid_shape(n, max_cols)
    fig, axes = plt.subplots(rows * per, cols, figsize=(size[0] * cols, size[1] * rows * per), squeeze=False, **kw)
    items = [[axes[(i // cols) * per + p][i % cols] for p in range(per)] for i in range(n)]
    for i in range(n, rows * cols):
        for p in range(per):
            axes[(i // cols) * per + p][i % cols].set_visible(False)
    return fig, items


def _save(fig, path: str | Path):
    """Write ``fig`` as a PNG (atomically) and close it; returns the figure (its artists can still be read)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return fig


def layer_histograms(counts: dict[str, dict[str, np.ndarray]], k: int, spec: str, path: str | Path):
    """Neurons per layer, ``counts[lang][which]`` (which: top, middle, bottom): one panel per language on shared
    axes, in rows of at most five (languages grouped by script), one legend for all."""
    langs = by_script(list(counts))
    n_layers = len(next(iter(counts[langs[0]].values())))
    fig, items = _panels(len(langs), 1, (2.9, 2.2), sharex=True, sharey=True, layout="constrained")
    cols, x = grid_shape(len(langs))[1], np.arange(n_layers)
    several = len({script_of(l) for l in langs}) > 1
    used = {int(i) for c in counts.values() for v in c.values() for i in np.flatnonzero(v)}
    one = used.pop() if len(used) == 1 else None  # a one-layer site (an SAE's latents): points, not a curve
    for i, (lang, (ax,)) in enumerate(zip(langs, items)):
        for which, color in (("top", "tab:red"), ("middle", "tab:gray"), ("bottom", "tab:blue")):
            if one is None:
                ax.plot(x, counts[lang][which], marker=".", ms=3, lw=1.1, color=color, label=which)
            else:  # three bars side by side at that layer, on the axis of the layers before it
                shift = {"top": -0.27, "middle": 0.0, "bottom": 0.27}[which]
                ax.bar([one + shift], [counts[lang][which][one]], width=0.27, color=color, label=which)
                ax.set_xlim(-0.5, n_layers - 0.5)
        ax.set_title(f"{lang} ({script_of(lang)})" if several else lang, fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if i + cols >= len(langs):  # no panel below: this one carries the layer axis
            ax.set_xlabel("layer")
            ax.xaxis.set_tick_params(labelbottom=True)
        if i % cols == 0:
            ax.set_ylabel(f"neurons (k={k})")
    fig.legend(*items[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle(f"Layer of top / middle / bottom-{k} neurons ({spec})" if one is None else
                 f"Top / middle / bottom-{k} units ({spec}): a one-layer site, every unit at layer {one}")
    return _save(fig, path)


def _annotation_size(values: np.ndarray, cell: float) -> float | None:
    """The font size (points) at which the widest of ``values`` fits a ``cell``-inch square, or None under 5."""
    digits = max(len(str(int(v))) for v in np.ravel(values)) if np.size(values) else 1
    size = min(9.0, 0.85 * cell * 72 / (0.62 * digits), 0.6 * cell * 72)
    return size if size >= 5 else None


def overlap_heatmap(ov: np.ndarray, langs: Sequence[str], size: int, path: str | Path):
    """Shared neurons of every pair of languages (Table 1): the colour is the percent of ``size``, the count is
    written where it fits; languages grouped by script (white lines between the groups); the figure grows
    with the number of languages."""
    order = by_script(langs)
    idx = [list(langs).index(l) for l in order]
    ov, n = np.asarray(ov)[np.ix_(idx, idx)], len(order)
    cell = max(min(0.8, 4.5 / n), min(0.45, 12 / n))  # inches per language
    fig, ax = plt.subplots(figsize=(n * cell + 1.8, n * cell + 1.0))
    pct = 100 * ov.astype(float) / size
    np.fill_diagonal(pct, np.nan)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.9")
    im = ax.imshow(pct, cmap=cmap, vmin=0)
    ax.set_xticks(range(n), order, rotation=90 if n * max(map(len, order)) > 40 else 0)
    ax.set_yticks(range(n), order)
    off = ov[~np.eye(n, dtype=bool)]
    font = _annotation_size(off, cell)
    for i in range(n):
        for j in range(n):
            if font and i != j:
                r, g, b, _ = cmap(im.norm(pct[i, j]))
                ax.text(j, i, str(ov[i, j]), ha="center", va="center", fontsize=font,
                        color="k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "w")
    scripts = [script_of(l) for l in order]
    for b in (i for i in range(1, n) if scripts[i] != scripts[i - 1]):
        ax.axhline(b - 0.5, color="w", lw=2)
        ax.axvline(b - 0.5, color="w", lw=2)
    fig.colorbar(im, ax=ax, label=f"% of {size} shared", shrink=min(0.85, 0.5 + 0.05 * n))
    grouped = " (grouped by script)" if len(set(scripts)) > 1 else ""
    ax.set_title(f"Overlap of language-specific neurons{grouped}" + ("" if font else "\n(counts: overlap.md)"),
                 fontsize=10)
    return _save(fig, path)


def activation_distributions(neurons, values, labels: np.ndarray, path: str | Path):
    """Pooled activation of each language's top (upper) and bottom (lower) neurons on its texts and on the
    others' (paper Fig. 4): a pair of panels per language, in rows of at most five."""
    langs = neurons.languages
    fig, items = _panels(len(langs), 2, (3.0, 2.4), layout="constrained")
    for j, lang in enumerate(langs):
        pos = labels == j
        for i, which in enumerate(("top", "bottom")):
            idx = neurons.sets[lang][which].neurons
            ax = items[j][i]
            if len(idx) == 0:  # lape / actprob have no bottom set
                ax.set_title(f"{lang} {which}: none ({neurons.meta.get('method', 'ap')})", fontsize=9)
                ax.axis("off")
                continue
            v = values[:, idx].numpy()
            on, off = v[pos].ravel(), v[~pos].ravel()
            lo, hi = np.percentile(np.concatenate([on, off]), [0.5, 99.5])
            bins = np.linspace(lo, hi, 60)
            ax.hist(off, bins=bins, density=True, alpha=0.5, label="other languages", color="tab:gray")
            ax.hist(on, bins=bins, density=True, alpha=0.6, label=f"the language ({which})",
                    color="tab:red" if which == "top" else "tab:blue")
            ax.set_title(f"{lang} {which}-{neurons.k}", fontsize=9)
    handles = {l: h for ax in (items[0][0], items[0][1]) for h, l in zip(*ax.get_legend_handles_labels())}
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle("Pooled activation of selected neurons on and off the language")
    return _save(fig, path)


def _curves(rows: list[dict], x, left: str, right: str, ylabels: tuple[str, str], xlabel: str, title: str,
            path: str | Path, log_x: bool = False):
    """Two panels of per-language curves over k: ``left`` and ``right`` keys against ``x(row)``."""
    langs = sorted({r["lang"] for r in rows})
    colors = lang_colors(langs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for lang in langs:
        rs = sorted((r for r in rows if r["lang"] == lang), key=lambda r: r["k"])
        xs = [x(r) for r in rs]
        for ax, key in zip(axes, (left, right)):
            ax.plot(xs, [np.nan if r[key] is None else r[key] for r in rs], marker="o", label=lang,
                    color=colors[lang])
    for ax, label in zip(axes, ylabels):
        ax.set_ylabel(label)
        ax.set_xlabel(xlabel)
        if log_x:
            ax.set_xscale("log")
    axes[1].legend(fontsize=8, ncol=1 + len(langs) // 8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    return _save(fig, path)


def k_ablation(rows: list[dict], path: str | Path):
    """rows: {k, lang, rate, bleu} -> rate and BLEU against log10 k (paper Fig. 5)."""
    return _curves(rows, lambda r: np.log10(r["k"]), "rate", "bleu", ("occurrence rate", "BLEU-4"), "log10 k",
            "Intervention strength (k top + k bottom neurons)", path)


def matrix_heatmap(m: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, path: str | Path,
                   fmt: str = ".2f", cmap: str = "viridis", center: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(cols), 0.8 + 0.6 * len(rows)))
    kw = {}
    if center:
        v = float(np.nanmax(np.abs(m))) or 1.0
        kw = {"vmin": -v, "vmax": v}
    im = ax.imshow(m, cmap=cmap, **kw)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=7,
                    color="k" if center else "w")
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def token_strip(tokens: Sequence[str], score: np.ndarray, langs: Sequence[str], path: str | Path) -> None:
    """Per-token language score of each language (rows) over the tokens (columns)."""
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(tokens)), 0.5 + 0.4 * len(langs)))
    v = float(np.abs(score).max()) or 1.0
    ax.imshow(score, cmap="RdBu_r", vmin=-v, vmax=v, aspect="auto")
    ax.set_yticks(range(len(langs)), langs)
    ax.set_xticks(range(len(tokens)), [t.replace("\n", "\\n") for t in tokens], rotation=70, fontsize=7)
    ax.set_title("Per-token language score from the language neurons (top minus bottom)", fontsize=9)
    _save(fig, path)


def _finish_pareto(fig, ax, title: str, path: str | Path):
    """The axes, 0.9 guides, title and legend of a rate-against-retention figure, then save it."""
    ax.axvline(0.9, color="grey", lw=0.6, ls="--")
    ax.axhline(0.9, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("fluency retention (fluent share steered / unsteered)")
    ax.set_ylabel("target rate (lid.176 > 0.5)")
    ax.set_title(title, fontsize=9)
    many = len(ax.get_legend_handles_labels()[1]) > 8  # a long legend goes beside the axes, not over the points
    ax.legend(fontsize=7, **({"loc": "center left", "bbox_to_anchor": (1.01, 0.5)} if many else {}))
    return _save(fig, path)


def pareto(rows: list[dict], path: str | Path, title: str = "Target rate against fluency retention"):
    """One point per setting tried: target rate (lid.176) against fluency retention, per language."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    colors = lang_colors(langs)
    for lang in langs:
        pts = [(r["retention"], r["rate"]) for r in rows if r["lang"] == lang and r.get("retention") is not None]
        if pts:
            ax.scatter(*zip(*pts), label=lang, s=18, color=colors[lang])
    return _finish_pareto(fig, ax, title, path)


def genres(test: list[dict], path: str | Path,
           title: str = "Test prompts by genre: target rate against fluency retention") -> None:
    """A sweep on several genres: one panel per genre, each test setting (none, the paper's clamp, each
    language's pick, the shared setting) as its languages (small) and their mean (large, labelled)."""
    names = list(dict.fromkeys(g for r in test for g in r.get("genres", {})))
    settings = list(dict.fromkeys(r["setting"] for r in test if r.get("genres")))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), sharey=True, squeeze=False)
    for ax, g in zip(axes[0], names):
        for i, s in enumerate(settings):
            pts = [(r["genres"][g]["retention"], r["genres"][g]["rate"]) for r in test
                   if r["setting"] == s and g in r.get("genres", {}) and r["genres"][g].get("retention") is not None]
            if not pts:
                continue
            ax.scatter(*zip(*pts), s=10, alpha=0.4, color=f"C{i}")
            mx, my = float(np.mean([p[0] for p in pts])), float(np.mean([p[1] for p in pts]))
            ax.scatter([mx], [my], s=50, color=f"C{i}", edgecolor="black", lw=0.5, label=s)
        ax.axvline(0.9, color="grey", lw=0.6, ls="--")
        ax.axhline(0.9, color="grey", lw=0.6, ls="--")
        ax.set_title(g, fontsize=9)
        ax.set_xlabel("fluency retention")
    axes[0][0].set_ylabel("target rate (lid.176 > 0.5)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def setting_means(rows: list[dict]) -> list[tuple[float, float]]:
    """(mean retention, mean rate) over the languages of every setting (by label) that was scored on
    every language of ``rows``; a setting a stage scored twice for one language counts it once."""
    langs = {r["lang"] for r in rows}
    by_setting: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r.get("retention") is not None:
            by_setting.setdefault(r["label"], {})[r["lang"]] = r
    return [(float(np.mean([r["retention"] for r in per.values()])), float(np.mean([r["rate"] for r in per.values()])))
            for per in by_setting.values() if set(per) == langs]


def pareto_methods(rows_by_method: dict[str, list[dict]], path: str | Path,
                   title: str = "Every setting tried, by method: target rate against fluency retention") -> None:
    """The sweeps of several methods in one figure: one point per (language, setting) tried, coloured
    by method, and each method's mean over the languages per setting as a larger marker."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (method, rows) in enumerate(rows_by_method.items()):
        color = f"C{i}"
        pts = [(r["retention"], r["rate"]) for r in rows if r.get("retention") is not None]
        if pts:
            ax.scatter(*zip(*pts), s=12, alpha=0.45, color=color, label=f"{method}: a language x setting")
        means = setting_means(rows)
        if means:
            ax.scatter(*zip(*means), s=46, color=color, edgecolor="black", lw=0.5,
                       label=f"{method}: mean over languages (settings tried on all)")
    _finish_pareto(fig, ax, title, path)


def placement_comparison(models: Sequence, langs: Sequence[str], path: str | Path):
    """Paper Fig. 2 across models: for each language (and all pooled), the per-layer share of its top
    (upper panel) and bottom (lower panel) neurons against relative depth, one line per model; shares are
    scaled by the number of layers, so the dotted line at 1 is an even spread. Pairs of panels in rows of at
    most five, languages grouped by script."""
    cols = [*by_script(langs), "all"]
    fig, items = _panels(len(cols), 2, (2.6, 2.5), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    per_row = grid_shape(len(cols))[1]
    for j, col in enumerate(cols):
        for i, which in enumerate(("top", "bottom")):
            ax = items[j][i]
            if j:  # every top panel on one y-axis, every bottom panel on another
                ax.sharey(items[0][i])
            drawn = False
            for m, color in zip(models, colors * 4):
                y = m.profile(list(langs) if col == "all" else [col], which)  # NaN: an empty set, no line
                drawn = drawn or not bool(np.isnan(y).all())
                ax.plot(m.depth(), y, marker=".", color=color, lw=1.2, ms=4,
                        label=f"{m.label} ({m.n_layers} layers, k={m.k})")
            if not drawn:
                ax.text(0.5, 0.5, "empty sets", ha="center", va="center", transform=ax.transAxes, color="0.5")
            ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
            for edge in (0.25, 0.75):
                ax.axvline(edge, color="0.85", lw=0.8)
            ax.set_xlim(0, 1)
            ax.set_title(f"{col} {which}", fontsize=9)
            if i:
                ax.set_xlabel("relative depth")
            if j % per_row == 0:
                ax.set_ylabel(f"{which}: share x layers")
    handles, labels = items[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=min(len(models), 4))
    fig.suptitle("Where language neurons sit across models (1 = even spread; grey lines: quarter depths)")
    return _save(fig, path)
