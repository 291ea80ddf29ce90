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

from ..provenance import atomic_write_bytes  # noqa: E402


def _save(fig, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def layer_histograms(counts: dict[str, dict[str, np.ndarray]], k: int, spec: str, path: str | Path) -> None:
    """Neurons per layer, ``counts[lang][which]`` (which: top, middle, bottom), one panel per language."""
    langs = list(counts)
    n_layers = len(next(iter(counts[langs[0]].values())))
    fig, axes = plt.subplots(1, len(langs), figsize=(3.2 * len(langs), 3), sharey=True, squeeze=False)
    x = np.arange(n_layers)
    for ax, lang in zip(axes[0], langs):
        for which, color in (("top", "tab:red"), ("middle", "tab:gray"), ("bottom", "tab:blue")):
            ax.plot(x, counts[lang][which], marker=".", color=color, label=which)
        ax.set_title(lang)
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel(f"neurons (k={k})")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Layer of top / middle / bottom-{k} neurons ({spec})")
    _save(fig, path)


def overlap_heatmap(ov: np.ndarray, langs: Sequence[str], size: int, path: str | Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    pct = 100 * ov / size
    np.fill_diagonal(pct, np.nan)
    im = ax.imshow(pct, cmap="viridis")
    ax.set_xticks(range(len(langs)), langs)
    ax.set_yticks(range(len(langs)), langs)
    for i in range(len(langs)):
        for j in range(len(langs)):
            if i != j:
                ax.text(j, i, str(ov[i, j]), ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label=f"% of {size} shared")
    ax.set_title("Overlap of language-specific neurons")
    _save(fig, path)


def activation_distributions(neurons, values, labels: np.ndarray, path: str | Path) -> None:
    langs = neurons.languages
    fig, axes = plt.subplots(2, len(langs), figsize=(3.2 * len(langs), 5.5), squeeze=False)
    for j, lang in enumerate(langs):
        pos = labels == j
        for i, which in enumerate(("top", "bottom")):
            idx = neurons.sets[lang][which].neurons
            ax = axes[i][j]
            if len(idx) == 0:  # lape / actprob have no bottom set
                ax.set_title(f"{lang} {which}: none ({neurons.meta.get('method', 'ap')})", fontsize=9)
                ax.axis("off")
                continue
            v = values[:, idx].numpy()
            on, off = v[pos].ravel(), v[~pos].ravel()
            lo, hi = np.percentile(np.concatenate([on, off]), [0.5, 99.5])
            bins = np.linspace(lo, hi, 60)
            ax.hist(off, bins=bins, density=True, alpha=0.5, label="other languages", color="tab:gray")
            ax.hist(on, bins=bins, density=True, alpha=0.6, label=lang, color="tab:red" if which == "top" else "tab:blue")
            ax.set_title(f"{lang} {which}-{neurons.k}", fontsize=9)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Pooled activation of selected neurons on and off the language")
    _save(fig, path)


def _curves(rows: list[dict], x, left: str, right: str, ylabels: tuple[str, str], xlabel: str, title: str,
            path: str | Path, log_x: bool = False) -> None:
    """Two panels of per-language curves over k: ``left`` and ``right`` keys against ``x(row)``."""
    langs = sorted({r["lang"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for lang in langs:
        rs = sorted((r for r in rows if r["lang"] == lang), key=lambda r: r["k"])
        xs = [x(r) for r in rs]
        for ax, key in zip(axes, (left, right)):
            ax.plot(xs, [np.nan if r[key] is None else r[key] for r in rs], marker="o", label=lang)
    for ax, label in zip(axes, ylabels):
        ax.set_ylabel(label)
        ax.set_xlabel(xlabel)
        if log_x:
            ax.set_xscale("log")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def k_ablation(rows: list[dict], path: str | Path) -> None:
    """rows: {k, lang, rate, bleu} -> rate and BLEU against log10 k (paper Fig. 5)."""
    _curves(rows, lambda r: np.log10(r["k"]), "rate", "bleu", ("occurrence rate", "BLEU-4"), "log10 k",
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


def _finish_pareto(fig, ax, title: str, path: str | Path) -> None:
    """The axes, 0.9 guides, title and legend of a rate-against-retention figure, then save it."""
    ax.axvline(0.9, color="grey", lw=0.6, ls="--")
    ax.axhline(0.9, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("fluency retention (fluent share steered / unsteered)")
    ax.set_ylabel("target rate (lid.176 > 0.5)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def pareto(rows: list[dict], path: str | Path, title: str = "Target rate against fluency retention") -> None:
    """One point per setting tried: target rate (lid.176) against fluency retention, per language."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    for lang in langs:
        pts = [(r["retention"], r["rate"]) for r in rows if r["lang"] == lang and r.get("retention") is not None]
        if pts:
            ax.scatter(*zip(*pts), label=lang, s=18)
    _finish_pareto(fig, ax, title, path)


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


def placement_comparison(models: Sequence, langs: Sequence[str], path: str | Path) -> None:
    """Paper Fig. 2 across models: for each language (and all pooled), the per-layer share of its top
    (upper row) and bottom (lower row) neurons against relative depth, one line per model; shares are
    scaled by the number of layers, so the dotted line at 1 is an even spread."""
    cols = [*langs, "all"]
    fig, axes = plt.subplots(2, len(cols), figsize=(2.6 * len(cols), 5.2), sharex=True, sharey="row", squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, which in enumerate(("top", "bottom")):
        for j, col in enumerate(cols):
            ax = axes[i][j]
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
            if i == 0:
                ax.set_title(col)
            else:
                ax.set_xlabel("relative depth")
        axes[i][0].set_ylabel(f"{which}: share per layer x layers")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(models), bbox_to_anchor=(0.5, -0.04))
    fig.suptitle("Where language neurons sit across models (1 = even spread; grey lines: quarter depths)")
    _save(fig, path)
