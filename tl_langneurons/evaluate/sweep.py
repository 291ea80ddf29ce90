"""Find clamp settings that give fluent text in the target language (beyond the paper's protocol).

A staged search per language, on validation seeds: k (as a fraction of the site's neurons), then
the clamp scale, then the positions, then the layer subset, each stage keeping the best setting
so far by the gated rate (target language and not degenerate; ties broken by lower NLL). The
best setting of each language is then reported on fresh seeds, beside the paper's setting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ..detect.neurons import LanguageNeurons
from ..detect.ranking import parse_k
from ..errors import LangNeuronsError
from ..provenance import atomic_write_json, atomic_write_text
from .control import CellRunner, EvaluateConfig, mean_of


@dataclass
class SweepConfig:
    languages: list[str] | None = None
    k_fractions: Sequence[str] = ("0.05%", "0.1%", "0.27%", "0.45%", "1%", "2.7%")
    scales: Sequence[float] = (0.5, 1.0, 1.5, 2.0)
    positions: Sequence[str] = ("all", "last")
    layer_sets: Sequence[str] = ("all", "first", "last", "ends")
    val_samples: int = 20  # validation seeds 1001..1000+val_samples
    test_samples: int = 100  # fresh seeds 1..test_samples
    max_new_tokens: int = 48
    temperature: float = 0.8
    batch_size: int = 100

    def __post_init__(self) -> None:
        if self.val_samples < 1 or self.test_samples < 1:
            raise LangNeuronsError("val_samples and test_samples must be at least 1")


@dataclass
class SweepResult:
    best: dict[str, dict]
    stages: list[dict]
    test: list[dict]
    meta: dict = field(default_factory=dict)


def run_sweep(model, neurons: LanguageNeurons, references: dict[str, list[str]] | None, config: SweepConfig | None = None,
              out: str | Path | None = None, progress: bool = True) -> SweepResult:
    cfg = config or SweepConfig()
    langs = cfg.languages or neurons.languages
    ecfg = EvaluateConfig(languages=langs, samples=cfg.test_samples, max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature, batch_size=cfg.batch_size, ablation_ks=[])
    out = Path(out) if out is not None else None
    cells = CellRunner(model, neurons, ecfg, references, out / "cells" if out else None, progress)
    n = neurons.index.n_neurons
    val = list(range(1001, 1001 + cfg.val_samples))
    stages: list[dict] = []

    def evaluate(lang, s, seeds):
        rows = cells.samples(lang, "both", s["k"], seeds, scale=s["scale"], positions=s["positions"], layers=s["layers"])
        sc = cells.score(rows, lang)
        return {"lang": lang, **s, "k_fraction": s["k"] / n, "rate": sc.rate, "gated_rate": sc.gated_rate,
                "nll": sc.nll, "bleu": sc.bleu, "degenerate": sc.degenerate}

    def better(a, b):
        return (a["gated_rate"], -(a["nll"] or 99)) > (b["gated_rate"], -(b["nll"] or 99))

    # Generation starts from BOS alone with the KV cache, so every forward pass holds only the newest
    # position: clamping "last" gives exactly the samples of "all" and is not searched.
    positions = [p for p in cfg.positions if p != "last"] or ["all"]
    notes = ["positions=last skipped: from BOS with the KV cache it equals positions=all"] if "last" in cfg.positions else []
    best: dict[str, dict] = {}
    for lang in langs:
        cur = {"k": parse_k("0.45%", n), "scale": 1.0, "positions": "all", "layers": "all"}
        cur_score = None
        for stage, key, values in (("k", "k", [parse_k(f, n) for f in cfg.k_fractions]), ("scale", "scale", cfg.scales),
                                   ("positions", "positions", positions), ("layers", "layers", cfg.layer_sets)):
            for v in values:
                s = {**cur, key: v}
                try:
                    r = evaluate(lang, s, val)
                except LangNeuronsError:  # e.g. k larger than a layer subset
                    continue
                stages.append({"stage": stage, **r})
                if cur_score is None or better(r, cur_score):
                    cur, cur_score = s, r
        best[lang] = {**cur, "val": cur_score}
    test_seeds = list(range(1, cfg.test_samples + 1))
    test = []
    none = cells.samples(None, "none", 0, test_seeds)
    for lang in langs:
        sc = cells.score(none, lang)
        test.append({"lang": lang, "setting": "none", "rate": sc.rate, "gated_rate": sc.gated_rate, "nll": sc.nll,
                     "bleu": sc.bleu, "degenerate": sc.degenerate})
        for name, s in (("paper k=1000", {"k": min(1000, n), "scale": 1.0, "positions": "all", "layers": "all"}),
                        ("k=0.45%", {"k": parse_k("0.45%", n), "scale": 1.0, "positions": "all", "layers": "all"}),
                        ("best", {k: best[lang][k] for k in ("k", "scale", "positions", "layers")})):
            r = evaluate(lang, s, test_seeds)
            test.append({**r, "setting": name})
    result = SweepResult(best, stages, test, {**cells.meta(), "config": asdict(cfg), "languages": langs, "notes": notes})
    if out is not None:
        write_sweep(result, out)
    return result


def sweep_markdown(res: SweepResult) -> str:
    settings = list(dict.fromkeys(r["setting"] for r in res.test))
    langs = list(dict.fromkeys(r["lang"] for r in res.test))
    get = {(r["lang"], r["setting"]): r for r in res.test}
    out = [f"Best setting per language (picked on validation seeds by gated rate), then all settings on fresh "
           f"seeds 1..{res.meta['config']['test_samples']}", "",
           "| lang | best k (fraction) | scale | positions | layers | val gated |", "|---|---|---|---|---|---|"]
    for l, b in res.best.items():
        out.append(f"| {l} | {b['k']} ({100 * b['val']['k_fraction']:.2f}%) | {b['scale']} | {b['positions']} | "
                   f"{b['layers']} | {b['val']['gated_rate']:.2f} |")
    out += ["", "rate: lid.176 > 0.5; gated: target language and not degenerate; ok: share of samples that pass the "
            "degeneracy gate whatever their language (the gated rate cannot exceed it)", "",
            "| lang | " + " | ".join(f"{s}: rate / gated / ok / NLL" for s in settings) + " |",
            "|---|" + "---|" * len(settings)]
    for l in langs + ["mean"]:
        cells = []
        for s in settings:
            rs = [get[(x, s)] for x in langs] if l == "mean" else [get[(l, s)]]
            nll = mean_of(rs, "nll")
            cells.append(f"{mean_of(rs, 'rate'):.2f} / {mean_of(rs, 'gated_rate'):.2f} / "
                         f"{1 - mean_of(rs, 'degenerate'):.2f} / "
                         + ("-" if math.isnan(nll) else f"{nll:.2f}"))
        out.append(f"| {l} | " + " | ".join(cells) + " |")
    out += ["", *res.meta.get("notes", [])]
    ref = res.meta.get("reference_nll", {})
    if ref:
        out += ["", "Reference NLL of real text: " + ", ".join(f"{l} {v:.2f}" for l, v in ref.items())]
    out += ["", "Trade-off along k (validation seeds, scale 1, all positions, all layers):", "",
            "| lang | k | fraction | rate | gated | ok | NLL |", "|---|---|---|---|---|---|---|"]
    for r in res.stages:
        if r["stage"] == "k":
            out.append(f"| {r['lang']} | {r['k']} | {100 * r['k_fraction']:.2f}% | {r['rate']:.2f} | {r['gated_rate']:.2f} | "
                       f"{1 - r['degenerate']:.2f} | "
                       + (f"{r['nll']:.2f} |" if r["nll"] is not None else "- |"))
    return "\n".join(out) + "\n"


def write_sweep(res: SweepResult, out: str | Path) -> None:
    from ..report import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.md", sweep_markdown(res))
    atomic_write_json(out / "sweep.json", {"best": res.best, "stages": res.stages, "test": res.test, "meta": res.meta})
    plots.tradeoff([r for r in res.stages if r["stage"] == "k"], out / "tradeoff.png")
