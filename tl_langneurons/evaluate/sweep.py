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

from ..config import comma_list, float_list, option
from ..detect.neurons import LanguageNeurons
from ..detect.ranking import parse_k
from ..errors import LangNeuronsError
from ..model.protocol import HookedModel
from ..provenance import atomic_write_json, atomic_write_text
from ..report.tables import markdown_table
from ..results import check_target, staged_folder
from .control import CellRunner, EvaluateConfig, mean_of, result_settings


@dataclass
class SweepConfig:
    """The search space and sample counts of :func:`run_sweep`."""

    languages: list[str] | None = option(None, "comma-separated target languages (none: all)", parse=comma_list)
    k_fractions: Sequence[str] = option(("0.05%", "0.1%", "0.27%", "0.45%", "1%", "2.7%"),
                                        "k values searched, as fractions of the neurons", parse=comma_list)
    scales: Sequence[float] = option((0.5, 1.0, 1.5, 2.0), "clamp scales searched", parse=float_list)
    positions: Sequence[str] = option(("all", "last"), "clamp positions searched", parse=comma_list)
    layer_sets: Sequence[str] = option(("all", "first", "last", "ends"), "layer subsets searched", parse=comma_list)
    val_samples: int = option(20, "validation samples per setting (seeds 1001..)")
    test_samples: int = option(100, "fresh samples for the final report (seeds 1..)")
    max_new_tokens: int = option(48, "tokens to generate")
    temperature: float = 0.8
    batch_size: int = option(100, "samples per batch")

    def __post_init__(self) -> None:
        if self.val_samples < 1 or self.test_samples < 1:
            raise LangNeuronsError("val_samples and test_samples must be at least 1")
        bad = [s for s in self.scales if not (math.isfinite(s) and s > 0)]
        if bad or not self.scales:
            raise LangNeuronsError(f"--scales must be finite numbers above 0 such as 0.5,1,2, got "
                                   f"{','.join(str(s) for s in self.scales) or 'none'}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise LangNeuronsError(f"temperature must be positive and finite (such as 0.8), got {self.temperature}")


@dataclass
class SweepResult:
    best: dict[str, dict]
    stages: list[dict]
    test: list[dict]
    meta: dict = field(default_factory=dict)

    def markdown(self) -> str:
        return sweep_markdown(self)


def run_sweep(model: HookedModel, neurons: LanguageNeurons, references: dict[str, list[str]] | None,
              config: SweepConfig | None = None, out: str | Path | None = None, progress: bool = True,
              overwrite: bool = False) -> SweepResult:
    """Search the settings and report the best on fresh seeds; with ``out``, written there as a whole
    (finished cells kept for resume), refusing a folder of other settings unless ``overwrite``."""
    cfg = config or SweepConfig()
    if out is None:
        return _sweep(model, neurons, references, cfg, None, progress)
    settings = result_settings(neurons, cfg)
    check_target(Path(out), "sweep", settings, overwrite)
    with staged_folder(out, "sweep", settings, keep=("cells",)) as stage:
        result = _sweep(model, neurons, references, cfg, stage / "cells", progress)
        write_sweep(result, stage)
    return result


def _sweep(model: HookedModel, neurons: LanguageNeurons, references: dict[str, list[str]] | None, cfg: SweepConfig,
           cells_dir: Path | None, progress: bool) -> SweepResult:
    langs = cfg.languages or neurons.languages
    ecfg = EvaluateConfig(languages=langs, samples=cfg.test_samples, max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature, batch_size=cfg.batch_size, ablation_ks=[])
    cells = CellRunner(model, neurons, ecfg, references, cells_dir, progress)
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
        cur = {"k": _fraction_k("0.45%", n), "scale": 1.0, "positions": "all", "layers": "all"}
        cur_score = None
        for stage, key, values in (("k", "k", _ks(cfg.k_fractions, n)), ("scale", "scale", cfg.scales),
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
                        ("k=0.45%", {"k": _fraction_k("0.45%", n), "scale": 1.0, "positions": "all", "layers": "all"}),
                        ("best", {k: best[lang][k] for k in ("k", "scale", "positions", "layers")})):
            r = evaluate(lang, s, test_seeds)
            test.append({**r, "setting": name})
    result = SweepResult(best, stages, test, {**cells.meta(), "config": asdict(cfg), "languages": langs, "notes": notes})
    return result


def _fraction_k(fraction: str, n: int) -> int:
    """k of a fraction of the neurons, at least one neuron (small models)."""
    return parse_k(fraction, n) if float(fraction.rstrip("%")) * n >= 100 else 1


def _ks(fractions: Sequence[str], n: int) -> list[int]:
    """The distinct k of the fractions searched, skipping those below one neuron."""
    ks = [parse_k(f, n) for f in fractions if float(str(f).rstrip("%")) * n >= 100]
    return list(dict.fromkeys(ks)) or [1]


def sweep_markdown(res: SweepResult) -> str:
    settings = list(dict.fromkeys(r["setting"] for r in res.test))
    langs = list(dict.fromkeys(r["lang"] for r in res.test))
    get = {(r["lang"], r["setting"]): r for r in res.test}
    best = [[l, f"{b['k']} ({100 * b['val']['k_fraction']:.2f}%)", b["scale"], b["positions"], b["layers"],
             f"{b['val']['gated_rate']:.2f}"] for l, b in res.best.items()]
    tests = []
    for l in langs + ["mean"]:
        cells = []
        for s in settings:
            rs = [get[(x, s)] for x in langs] if l == "mean" else [get[(l, s)]]
            nll = mean_of(rs, "nll")
            cells.append(f"{mean_of(rs, 'rate'):.2f} / {mean_of(rs, 'gated_rate'):.2f} / "
                         f"{1 - mean_of(rs, 'degenerate'):.2f} / "
                         + ("-" if math.isnan(nll) else f"{nll:.2f}"))
        tests.append([l, *cells])
    out = [f"Best setting per language (picked on validation seeds by gated rate), then all settings on fresh "
           f"seeds 1..{res.meta['config']['test_samples']}", "",
           markdown_table(["lang", "best k (fraction)", "scale", "positions", "layers", "val gated"], best),
           "rate: lid.176 > 0.5; gated: target language and not degenerate; ok: share of samples that pass the "
           "degeneracy gate whatever their language (the gated rate cannot exceed it)", "",
           markdown_table(["lang", *[f"{s}: rate / gated / ok / NLL" for s in settings]], tests).rstrip("\n"),
           "", *res.meta.get("notes", [])]
    ref = res.meta.get("reference_nll", {})
    if ref:
        out += ["", "Reference NLL of real text: " + ", ".join(f"{l} {v:.2f}" for l, v in ref.items())]
    trade = [[r["lang"], r["k"], f"{100 * r['k_fraction']:.2f}%", f"{r['rate']:.2f}", f"{r['gated_rate']:.2f}",
              f"{1 - r['degenerate']:.2f}", "-" if r["nll"] is None else f"{r['nll']:.2f}"]
             for r in res.stages if r["stage"] == "k"]
    out += ["", "Trade-off along k (validation seeds, scale 1, all positions, all layers):", "",
            markdown_table(["lang", "k", "fraction", "rate", "gated", "ok", "NLL"], trade)]
    return "\n".join(out)


def write_sweep(res: SweepResult, out: str | Path) -> None:
    from ..report import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.md", sweep_markdown(res))
    atomic_write_json(out / "sweep.json", {"best": res.best, "stages": res.stages, "test": res.test, "meta": res.meta})
    plots.tradeoff([r for r in res.stages if r["stage"] == "k"], out / "tradeoff.png")
