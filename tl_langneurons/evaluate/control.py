"""The control experiment (paper Table 2 and Figure 5): generate with the language's neurons
clamped, per condition (none, top, bottom, both) and per k, and score every cell.

Each finished cell is written to ``cells/`` with the settings that made it, so an interrupted run
resumes where it stopped: cells whose settings match are read back, never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ..config import LANGUAGES, Items, check_options, option
from ..distributed import Shard, agreed, is_main
from ..distributed import context as dist_context
from ..detect.neurons import LanguageNeurons
from ..detect.ranking import parse_k
from ..errors import LangNeuronsError
from ..model.protocol import HookedModel
from ..provenance import atomic_write_json, atomic_write_text
from ..tables import csv_text, markdown_table
from ..results import check_target, fault_point, run_into
from ..steer.generation import GenerationConfig
from ..steer.setting import LATER_FIELDS, SteeringConfig
from .cells import Cell, CellRunner, steered
from .samples import SampleStore, store_of

CONDITIONS = ("none", "top", "bottom", "both")
PAPER_KS = (10, 100, 1000, 3000, 10000, 30000)
REFERENCE_NLL_TEXTS = 100  # reference texts per language whose NLL under the model is reported beside the samples


def default_ablation_ks(n_neurons: int) -> list[int]:
    """10 .. 30000 (within the neuron count), plus the neuron count where it is below 100,000."""
    ks = [k for k in PAPER_KS if k <= n_neurons]
    if n_neurons < 100_000 and n_neurons not in ks:
        ks.append(n_neurons)
    return ks


@dataclass
class EvaluateConfig:
    """Settings of the control experiment; defaults are the paper's."""

    languages: list[str] | None = option(None, "comma-separated target languages (none: all)", items=LANGUAGES)
    conditions: Sequence[str] = CONDITIONS
    samples: int = option(100, "samples per condition, seeds 1..N", at_least=1)
    max_new_tokens: int = option(64, "tokens to generate", at_least=1)
    temperature: float = option(0.8, "sampling temperature over the full vocabulary", positive=True)
    prompt: str | None = option(None, "prompt (none: BOS only, as the paper)", parse=str)
    # the intervention (clamp by default: the paper); its options come from SteeringConfig
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    ablation_ks: list[int | str] | None = option(
        None, "k values of the ablation, comma-separated counts or percentages; none skips the ablation "
        "(default: 10,100,...,30000 and the neuron count)",
        items=Items("k", "counts such as 10,100 or percentages such as 0.5% (none: no ablation)", empty=True,
                    none="empty"))
    ablation_samples: int | None = option(None, "samples per k (none: --samples)", parse=int, at_least=1)
    batch_size: int = option(100, "samples per batch (the samples do not depend on it)", at_least=1)
    reference_nll_texts: int = option(REFERENCE_NLL_TEXTS, "reference texts per language whose NLL under the "
                                      "model is reported beside the samples' (the demo: 10)", at_least=1)

    def __post_init__(self) -> None:
        check_options(self)  # the lists (languages, ablation_ks) and the numbers, as declared above
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad:
            raise LangNeuronsError(f"unknown condition(s) {', '.join(bad)}; use {', '.join(CONDITIONS)}")
        GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, seeds=[1],
                         batch_size=self.batch_size, prompt=self.prompt)


@dataclass
class ControlResult:
    """Scores per cell: rows of dicts (lang, condition, k, n, rate, ci, bleu, gated_rate, ...)."""

    table2: list[dict]
    ablation: list[dict]
    meta: dict = field(default_factory=dict)

    def markdown(self) -> str:
        """Table 2 and, when run, the k ablation."""
        return table2_markdown(self.table2) + ("\n" + ablation_markdown(self.ablation) if self.ablation else "")


# fields added to a config after results were written: left out at their default, so that those folders still resume
# (each field's values that reproduce what was done before it existed)
_LATER_FIELDS = {"lcb": (False,), "lcb_gate": (None, "references"), "lcb_system": (False,), "genres": (False,), "after_scales": ((), []),
                 "band_alphas": ((), []), "resid_alphas": ((), []), "keep_norm_stage": (False,), "spreads": ((), []),
                 "shared_pick": ("mean",), "shared_floor": (None,), "shared_search": (False,), "equal_norms": ((), []),
                 "test_settings": ((), []), "lcb_set": (None, "crosslingual/okapi"),
                 "judge": (None,), "script_gate": (False,), "script_gate_latin": (False,), "paper_row": (True,),
                 "relevance_margin": (None,)}


# SteeringConfig fields added after results were written, dropped from a nested steering config at their default
# (steer_tokens is not: configs have recorded it, as null, since before these)
_LATER_STEERING = tuple(f for f in LATER_FIELDS if f != "steer_tokens")


def _without_later_steering(v):
    """A nested config dict (e.g. EvaluateConfig.steering) without the later steering fields at their default."""
    if isinstance(v, dict):
        return {k: _without_later_steering(x) for k, x in v.items()
                if not (k in _LATER_STEERING and (x is None or x is False))}
    return v


def result_settings(neurons: LanguageNeurons, config) -> dict:
    """What a control or sweep folder's results depend on: its config and the neurons' AP."""
    cfg = {k: _without_later_steering(v) for k, v in asdict(config).items()
           if k not in _LATER_FIELDS or v not in _LATER_FIELDS[k]}
    return {"config": cfg, "neurons_ap_sha": hashlib.sha256(neurons.ap.numpy().tobytes()).hexdigest()[:16]}


def evaluate_control(model: HookedModel, neurons: LanguageNeurons, references: dict[str, list[str]] | None = None,
                     config: EvaluateConfig | None = None, out: str | Path | None = None,
                     progress: bool = True, overwrite: bool = False,
                     store: str | Path | SampleStore | None = None, distributed: bool | None = None,
                     samples: str | Path | None = None) -> ControlResult:
    """Run the control experiment and, with ``out``, write its tables, figure and samples there.

    ``store`` is the sample store shared with other experiments on the same neurons: a folder (``Study``
    uses ``DIR/samples``), a :class:`~tl_langneurons.evaluate.samples.SampleStore`, or None (in memory).
    ``samples`` is its earlier, deprecated name.

    ``out`` is written as a whole (finished cells are kept for resume until it is complete); a
    folder with results of other settings is refused unless ``overwrite``.

    ``distributed``: spread the batches over the ranks of a torch.distributed process group (see
    :class:`CellRunner`); None (default) does so whenever an initialized group has more than one process.
    Every rank returns the same result; rank 0 alone reads and writes ``out`` and ``store``.
    """
    cfg = config or EvaluateConfig()
    store = store_of(store, samples)
    shard = dist_context(distributed)
    return run_ranked(shard, out, "control", result_settings(neurons, cfg), overwrite,
                      lambda cells: _control(model, neurons, references, cfg, cells, progress,
                                             store, shard),
                      write_control)


def run_ranked(shard: Shard | None, out: str | Path | None, kind: str, settings: dict, overwrite: bool, run, write):
    """:func:`~tl_langneurons.results.run_into` on rank 0 (or the only process); ``run(None)`` on the
    other ranks, which compute alongside and write nothing. A refusal on rank 0 ends every rank, and so
    does a failure on rank 0 after the ranks' last exchange (e.g. writing the folder): the other ranks
    do not exit 0 while rank 0 fails."""
    if shard is None:
        return run_into(out, kind, settings, overwrite, run, write)
    main = is_main(shard)
    with agreed(shard):
        if main and out is not None:
            check_target(Path(out), kind, settings, overwrite)
    with agreed(shard):
        result = run_into(out, kind, settings, overwrite, run, write) if main else run(None)
    return result


def _control(model: HookedModel, neurons: LanguageNeurons, references: dict[str, list[str]] | None,
             cfg: EvaluateConfig, cells_dir: Path | None, progress: bool, store: SampleStore,
             shard: Shard | None = None) -> ControlResult:
    cells = CellRunner(model, neurons, cfg, references, cells_dir, progress, store, shard)
    langs = cfg.languages or neurons.languages
    seeds = list(range(1, cfg.samples + 1))
    # residual methods (diffmean, sparse) have no neuron sets: "both" is the steered run, and no k ablation
    conditions = cfg.conditions if cfg.steering.neuron_level else [c for c in cfg.conditions if c in ("none", "both")]
    n = neurons.index.n_neurons
    ks = default_ablation_ks(n) if cfg.ablation_ks is None else [parse_k(k, n) for k in cfg.ablation_ks]
    ks = ks if cfg.steering.neuron_level else []
    ab_seeds = list(range(1, (cfg.ablation_samples or cfg.samples) + 1))
    # every cell of the run, generated together (cells share batches; shared samples are made once)
    none = Cell(None, None, seeds)
    wanted = ([none] if "none" in conditions else [])
    wanted += [steered(lang, cfg.steering, cond, neurons.k, seeds) for lang in langs for cond in conditions
               if cond != "none"]
    wanted += [steered(lang, cfg.steering, "both", k, ab_seeds) for k in ks for lang in langs]
    got = dict(zip(((c.target, c.condition, c.k, len(c.seeds)) for c in wanted), cells.samples_many(wanted)))
    fault_point("cell")
    table2 = []
    for lang in langs:
        for cond in conditions:
            rows = got[(None, "none", 0, len(seeds))] if cond == "none" else got[(lang, cond, neurons.k, len(seeds))]
            table2.append({"lang": lang, "condition": cond, "k": neurons.k, **cells.score(rows, lang).as_dict()})
    ablation = []
    for k in ks:
        for lang in langs:
            rows = got[(lang, "both", k, len(ab_seeds))]
            ablation.append({"lang": lang, "condition": "both", "k": k, "k_fraction": k / neurons.index.n_neurons,
                             **cells.score(rows, lang).as_dict()})
    meta = {**cells.meta(), "languages": langs, "config": asdict(cfg), "ablation_ks": ks, "seeds": f"1..{cfg.samples}",
            "steering": asdict(cfg.steering),
            "bleu_references": {l: len(references[l]) for l in cells.refs} if references else {}}
    return ControlResult(table2, ablation, meta)


def mean_of(rows: list[dict], key: str) -> float:
    """Mean of ``key`` over the rows that have a value (NLL is None for empty samples); nan if none."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def table2_markdown(rows: list[dict]) -> str:
    """Paper Table 2 layout: occurrence rate (%) per language and condition, raw and gated."""
    conds = [c for c in CONDITIONS if any(r["condition"] == c for r in rows)]
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    get = {(r["lang"], r["condition"]): r for r in rows}
    if "none" in conds:  # fluency retention: fluent share steered / unsteered, on the same seeds
        for r in rows:
            base = get[(r["lang"], "none")].get("fluent")
            r["retention"] = r["fluent"] / base if r.get("fluent") is not None and base else None
    out = []
    for title, key in (("Occurrence rate of the target language (%), lid.176 score > 0.5; [95% Wilson CI]", "rate"),
                       ("Occurrence rate (%) by lingua, a second language identifier (confidence > 0.5 among the "
                        "study's languages)", "rate_lingua"),
                       ("Fluent share (%): samples that pass the degeneracy gate, whatever their language", "fluent"),
                       ("Fluency retention (%): fluent share with the intervention / without it, same seeds", "retention"),
                       ("Gated occurrence rate (%): target language and not degenerate (distinct-token ratio at or above the "
                        "5th percentile of real text of the language, in stretches as long as the samples)", "gated_rate"),
                       ("BLEU-4 of target-language samples against the language's texts", "bleu"),
                       ("Degenerate samples (%): distinct-token ratio below the language's gate", "degenerate"),
                       ("Fluency: mean per-token NLL of the samples under the unsteered model (lower is more natural)", "nll")):
        rows_md = []
        for lang in langs + ["mean"]:
            cells = []
            for c in conds:
                if lang == "mean":
                    v = mean_of([get[(l, c)] for l in langs], key)
                    cells.append(f"{v:.3f}" if key in ("bleu", "nll") else f"{100 * v:.1f}")
                    continue
                r = get[(lang, c)]
                if r.get(key, 0) is None or (key not in r and key in ("rate_lingua", "fluent", "retention")):
                    cells.append("-")
                elif key == "rate":
                    cells.append(f"{100 * r['rate']:.1f} [{100 * r['ci'][0]:.0f}-{100 * r['ci'][1]:.0f}]")
                elif key in ("bleu", "nll"):
                    cells.append("-" if r[key] is None else f"{r[key]:.3f}")
                else:
                    cells.append(f"{100 * r[key]:.1f}")
            rows_md.append([lang, *cells])
        out += [f"**{title}**", "", markdown_table(["lang", *conds], rows_md)]
    return "\n".join(out)


def ablation_markdown(rows: list[dict]) -> str:
    ks = sorted({r["k"] for r in rows})
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    get = {(r["lang"], r["k"]): r for r in rows}
    header = ["k", "log10 k", "fraction", *[f"{l} rate / gated / BLEU" for l in langs],
              "mean rate", "mean gated", "mean BLEU", "mean NLL"]
    out = []
    for k in ks:
        rs = [get[(l, k)] for l in langs]
        out.append([k, f"{math.log10(k):.2f}", f"{100 * rs[0]['k_fraction']:.2f}%",
                    *[f"{100 * r['rate']:.0f} / {100 * r['gated_rate']:.0f} / {r['bleu']:.3f}" for r in rs],
                    f"{100 * mean_of(rs, 'rate'):.1f}", f"{100 * mean_of(rs, 'gated_rate'):.1f}",
                    f"{mean_of(rs, 'bleu'):.3f}", f"{mean_of(rs, 'nll'):.3f}"])
    return markdown_table(header, out)


def write_control(result: ControlResult, out: str | Path) -> None:
    from ..report import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = result.meta
    notes = ""
    if m.get("distinct_thresholds"):
        notes += (f"Degeneracy gate (distinct-token ratio, 5th percentile of real {m.get('max_new_tokens', '?')}-token "
                  "stretches): ") + ", ".join(
            f"{l} {v:.2f}" for l, v in m["distinct_thresholds"].items()) + "\n\n"
    if m.get("reference_nll"):
        n_ref = (m.get("config") or {}).get("reference_nll_texts")
        notes += ("Fluency reference: NLL per token of real text of the language"
                  + (f" (its first {n_ref} reference texts)" if n_ref else "") + ": ") + ", ".join(
            f"{l} {v:.3f}" for l, v in m["reference_nll"].items()) + "\n"
    atomic_write_text(out / "table2.md", table2_markdown(result.table2) + "\n" + notes)
    cols = ["lang", "condition", "k", "n", "hits", "rate", "ci_low", "ci_high", "gated_rate", "bleu", "degenerate",
            "distinct", "longest_run", "nll", "threshold"]

    def csv(rows):
        return csv_text(cols, ({
            "lang": r["lang"], "condition": r["condition"], "k": r["k"], "n": r["n"], "hits": r["hits"],
            "rate": f"{r['rate']:.4f}", "ci_low": f"{r['ci'][0]:.4f}", "ci_high": f"{r['ci'][1]:.4f}",
            "gated_rate": f"{r['gated_rate']:.4f}", "bleu": f"{r['bleu']:.4f}", "degenerate": f"{r['degenerate']:.4f}",
            "distinct": f"{r['distinct']:.4f}", "longest_run": f"{r['longest_run']:.2f}",
            "nll": None if r["nll"] is None else f"{r['nll']:.4f}", "threshold": f"{r['threshold']:.3f}"} for r in rows))

    atomic_write_text(out / "table2.csv", csv(result.table2))
    if result.ablation:
        atomic_write_text(out / "k_ablation.md", ablation_markdown(result.ablation))
        atomic_write_text(out / "k_ablation.csv", csv(result.ablation))
        plots.k_ablation(result.ablation, out / "k_ablation.png")
    atomic_write_json(out / "evaluation.json", {"meta": result.meta, "table2": result.table2, "ablation": result.ablation})
    # a few samples per cell, for reading
    lines = ["# Sample generations", ""]
    for name in result.meta.get("cells", []):
        path = out / "cells" / name
        if not path.exists():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        st = data["settings"]
        c = st.get("clamp") or {}
        desc = " ".join(f"{k}={v}" for k, v in c.items() if k not in ("lang", "k") and v is not None)
        lines += [f"## {st['condition']} {c.get('lang', '')} k={c.get('k', 0)} {desc}".rstrip(), ""]
        lines += [f"- seed {r['seed']}: {' '.join(r['text'].split())[:300]!s}" for r in data["samples"][:5]] + [""]
    atomic_write_text(out / "samples.md", "\n".join(lines))
