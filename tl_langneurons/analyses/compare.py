"""Placement across models (the paper's Fig. 2 over model families): where each language's top and
bottom neurons sit, against relative depth, for several find folders side by side, with the share of
every set in the first and in the last quarter of the layers.

Models of different depths are put on one axis by relative depth (layer + 0.5) / layers, and the
per-layer share of a set is scaled by the number of layers, so 1 means an even spread over the layers
whatever the depth. The quarters are the existing ones (:func:`~.placement.quarter_shares`: the first
and last ``layers // 4`` layers), and each row gives the share an even spread would put there.

An empty set (lape and actprob select no bottom set, and may keep none of a language's neurons) has no
placement: its shares are None, shown as "-" with the reason, never as 0%.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..detect.neurons import LanguageNeurons
from ..detect.selectors import ONE_SIDED
from ..errors import LangNeuronsError
from ..provenance import atomic_write_json, atomic_write_text
from ..tables import csv_text, markdown_table
from .placement import layer_counts, quarter_shares

SIDES = ("top", "bottom")


@dataclass
class ModelPlacement:
    """One find folder's placement: per-layer counts of every language's top and bottom set."""

    label: str
    directory: str
    model: str
    n_layers: int
    n_neurons: int
    k: int
    sites: str
    method: str
    gguf_sha256: str | None
    counts: dict[str, dict[str, list[int]]]  # lang -> which -> per-layer counts

    @property
    def k_share(self) -> float:
        return self.k / max(1, self.n_neurons)

    def profile(self, langs: Sequence[str], which: str) -> np.ndarray:
        """Per-layer share of the ``which`` sets of ``langs`` pooled, times the layers (1: an even spread);
        NaN where the sets are empty (no placement, and a figure draws no line)."""
        c = np.sum([self.counts[l][which] for l in langs], axis=0)
        return c / c.sum() * self.n_layers if c.sum() else np.full(self.n_layers, np.nan)

    def why_empty(self, which: str) -> str:
        """Why a ``which`` set of this model is empty, in words."""
        if which == "bottom" and self.method in ONE_SIDED:
            return f"{self.method} selects top sets only"
        return f"{self.method} kept no neuron of the language"

    def depth(self) -> np.ndarray:
        return (np.arange(self.n_layers) + 0.5) / self.n_layers


@dataclass
class PlacementComparison:
    models: list[ModelPlacement]
    languages: list[str]
    rows: list[dict] = field(default_factory=list)

    HEADER = ("model", "lang", "which", "neurons", "first_quarter", "last_quarter", "ends", "even_ends")

    def markdown(self) -> str:
        out = ["| model | path | layers | neurons | k | k share | sites | method | GGUF sha256 |", "|" + "---|" * 9]
        for m in self.models:
            out.append(f"| {m.label} | {m.directory} | {m.n_layers} | {m.n_neurons} | {m.k} | {100 * m.k_share:.2f}% "
                       f"| {m.sites} | {m.method} | {m.gguf_sha256[:16] + '..' if m.gguf_sha256 else '-'} |")
        q = ", ".join(f"{m.label}: first and last {max(1, m.n_layers // 4)} of {m.n_layers} layers"
                      for m in self.models)
        table = markdown_table(self.HEADER, ([_shown(r[h]) for h in self.HEADER] for r in self.rows))
        summary = [r for r in self.rows if r["lang"] == "all"]
        lines = [f"- {r['model']} {r['which']}: empty ({r['empty']}), no placement" if r["ends"] is None else
                 f"- {r['model']} {r['which']}: {100 * r['ends']:.1f}% in the first and last quarter "
                 f"({100 * r['first_quarter']:.1f}% + {100 * r['last_quarter']:.1f}%; an even spread: "
                 f"{100 * r['even_ends']:.1f}%)" for r in summary]
        empty: dict[tuple[str, str, str], list[str]] = {}
        for r in self.rows:
            if r["ends"] is None and r["lang"] != "all":
                empty.setdefault((r["model"], r["which"], r["empty"]), []).append(r["lang"])
        note = ("\nEmpty sets (0 neurons; `-`: no placement, not 0%): " + "; ".join(
            f"{m} {w} {', '.join(ls)}: {why}" for (m, w, why), ls in empty.items()) + ".\n") if empty else ""
        return ("\n".join(out) + "\n\n" + "\n".join(lines) + f"\n\nShares of each set in the first / last quarter ({q}); "
                "`even_ends` is what an even spread over the layers would put in both ends.\n\n" + table + note)

    def save(self, out: str | Path) -> list[Path]:
        from ..report import plots

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plots.placement_comparison(self.models, self.languages, out / "placement.png")
        atomic_write_text(out / "placement.md", "# Placement of language neurons across models\n\n"
                          "![placement](placement.png)\n\n" + self.markdown())
        atomic_write_text(out / "placement.csv", csv_text(self.HEADER, self.rows))
        atomic_write_json(out / "placement.json", {
            "models": [{**{k: v for k, v in vars(m).items()}, "k_share": m.k_share} for m in self.models],
            "languages": self.languages, "rows": self.rows})
        return [out / f"placement.{s}" for s in ("png", "md", "csv", "json")]


def _shown(value) -> object:
    """A cell of the placement table: a share to 3 decimals, a count as it is, a missing share "-"."""
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else value


def model_placement(directory: str | Path, label: str | None = None) -> ModelPlacement:
    neurons = LanguageNeurons.load(directory)
    meta = neurons.meta
    counts = {l: {w: layer_counts(neurons, l, w).tolist() for w in SIDES} for l in neurons.languages}
    return ModelPlacement(label or str(meta.get("model") or Path(directory).name), str(directory),
                          str(meta.get("model")), neurons.index.n_layers, neurons.index.n_neurons, int(neurons.k),
                          neurons.index.spec, str(meta.get("method", "ap")),
                          (meta.get("model_source") or {}).get("gguf_sha256"), counts)


def parse_labels(labels: str | Sequence[str] | None, n: int) -> list[str | None]:
    if labels is None:
        return [None] * n
    items = [x.strip() for x in labels.split(",")] if isinstance(labels, str) else list(labels)
    if len(items) != n or not all(items):
        raise LangNeuronsError(f"--labels gives {len(items)} label(s) for {n} folders; give one per folder, "
                               "comma-separated (e.g. gemma,qwen)")
    if len(set(items)) != n:
        raise LangNeuronsError(f"--labels {','.join(items)}: labels must differ")
    return items


def compare_placement(directories: Sequence[str | Path], labels: str | Sequence[str] | None = None
                      ) -> PlacementComparison:
    """The placement of the neurons in each of ``directories`` (find folders of any models), side by
    side; the languages they share are compared."""
    if len(directories) < 2:
        raise LangNeuronsError("compare needs two or more find folders (e.g. runs/gemma runs/qwen)")
    names = parse_labels(labels, len(directories))
    seen_at: dict[Path, str | Path] = {}
    for d in directories:  # the same folder twice (also by a link or another spelling) would give duplicate rows
        real = Path(d).resolve()
        if real in seen_at:
            same = "" if str(seen_at[real]) == str(d) else f" and {d}"
            raise LangNeuronsError(f"compare: {seen_at[real]}{same} {'are' if same else 'is'} the same folder "
                                   f"({real}) given twice; give each find folder once")
        seen_at[real] = d
    models = [model_placement(d, n) for d, n in zip(directories, names)]
    seen: dict[str, int] = {}
    for m in models:  # two folders of the same model: tell them apart by folder
        seen[m.label] = seen.get(m.label, 0) + 1
    for m in models:
        if seen[m.label] > 1:
            m.label = f"{m.label} ({Path(m.directory).name})"
    common = [l for l in models[0].counts if all(l in m.counts for m in models[1:])]
    if not common:
        raise LangNeuronsError("the folders share no language: " + "; ".join(
            f"{m.directory}: {', '.join(m.counts)}" for m in models))
    rows = []
    for m in models:
        q = max(1, m.n_layers // 4)
        for lang in [*common, "all"]:
            for which in SIDES:
                c = (np.sum([m.counts[l][which] for l in common], axis=0) if lang == "all"
                     else np.asarray(m.counts[lang][which]))
                row = {"model": m.label, "lang": lang, "which": which, "neurons": int(c.sum()),
                       "first_quarter": None, "last_quarter": None, "ends": None, "even_ends": 2 * q / m.n_layers}
                if c.sum():
                    first, last = quarter_shares(c)
                    row.update(first_quarter=float(first), last_quarter=float(last), ends=float(first + last))
                else:  # an empty set sits nowhere: no share, not 0%
                    row["empty"] = m.why_empty(which)
                rows.append(row)
    return PlacementComparison(models, common, rows)


def write_comparison(result: PlacementComparison, out: str | Path, overwrite: bool = False
                     ) -> tuple[PlacementComparison, list[Path]]:
    """``result`` written into ``out`` as a whole (a folder of another comparison is refused unless
    ``overwrite``; one with files this tool did not write always)."""
    from ..results import check_target, staged_folder

    settings = {"dirs": [m.directory for m in result.models], "labels": [m.label for m in result.models]}
    check_target(Path(out), "compare", settings, overwrite)
    with staged_folder(out, "compare", settings) as stage:
        names = [p.name for p in result.save(stage)]
    return result, [Path(out) / n for n in names]
