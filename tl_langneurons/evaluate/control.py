"""The control experiment (paper Table 2 and Figure 5): generate with the language's neurons
clamped, per condition (none, top, bottom, both) and per k, and score every cell.

Each finished cell is written to ``cells/`` with the settings that made it, so an interrupted run
resumes where it stopped: cells whose settings match are read back, never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch.distributed as dist

from ..config import LANGUAGES, Items, check_lists, option
from ..distributed import Shard, agreed, from_main, is_main
from ..distributed import context as dist_context
from ..detect.neurons import LanguageNeurons
from ..detect.ranking import parse_k
from ..errors import LangNeuronsError
from ..model.driver import Runner
from ..model.load import model_name, weights_fingerprint
from ..model.protocol import HookedModel
from ..provenance import atomic_write_json, atomic_write_text, package_versions, sha256_texts
from ..tables import csv_text, markdown_table
from ..results import check_target, fault_point, run_into
from ..steer.generation import SAMPLER, GenerationConfig, generate_many, sample_nll
from ..steer.methods import SteeringConfig
from .samples import SampleStore, sample_problem, setting_key
from .metrics import (
    DEGENERATE_DISTINCT,
    BleuReferences,
    distinct_threshold,
    score_samples,
    text_losses,
    tokenize_for_bleu,
)

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
    samples: int = option(100, "samples per condition, seeds 1..N")
    max_new_tokens: int = option(64, "tokens to generate")
    temperature: float = option(0.8, "sampling temperature over the full vocabulary")
    prompt: str | None = option(None, "prompt (none: BOS only, as the paper)", parse=str)
    # the intervention (clamp by default: the paper); its options come from SteeringConfig
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    ablation_ks: list[int | str] | None = option(
        None, "k values of the ablation, comma-separated counts or percentages; none skips the ablation "
        "(default: 10,100,...,30000 and the neuron count)",
        items=Items("k", "counts such as 10,100 or percentages such as 0.5% (none: no ablation)", empty=True,
                    none="empty"))
    ablation_samples: int | None = option(None, "samples per k (none: --samples)", parse=int)
    batch_size: int = option(100, "samples per batch (the samples do not depend on it)")
    reference_nll_texts: int = option(REFERENCE_NLL_TEXTS, "reference texts per language whose NLL under the "
                                      "model is reported beside the samples' (the demo: 10)")

    def __post_init__(self) -> None:
        check_lists(self)  # languages and ablation_ks: empty items, not a number, out of range, repeated
        if self.reference_nll_texts < 1:
            raise LangNeuronsError(f"--reference-nll-texts must be at least 1, got {self.reference_nll_texts}")
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad:
            raise LangNeuronsError(f"unknown condition(s) {', '.join(bad)}; use {', '.join(CONDITIONS)}")
        if self.samples < 1:
            raise LangNeuronsError(f"samples must be at least 1, got {self.samples}")
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


def _cell_problem(data, seeds: list[int]) -> str | None:
    """What is wrong with a cell file read back (None when it is sound): a dict with ``settings``
    and ``samples``, one sound sample (:func:`~tl_langneurons.evaluate.samples.sample_problem`) per seed, in order."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if not isinstance(data.get("settings"), dict):
        return "field 'settings' is missing or not an object"
    rows = data.get("samples")
    if not isinstance(rows, list):
        return "field 'samples' is missing or not a list"
    if len(rows) != len(seeds):
        return f"field 'samples' has {len(rows)} samples, expected {len(seeds)}"
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            return f"samples[{i}] is not an object"
        seed = r.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed != seeds[i]:
            return f"samples[{i}].seed is {seed!r}, expected {seeds[i]}"
        problem = sample_problem(r)
        if problem is not None:
            return f"samples[{i}].{problem}"
    return None


class CellRunner:
    """Generates and scores cells (one clamp setting, one language, a list of seeds), reading a cell
    back from ``cells_dir`` when it was made with the same settings: the unit of resume.

    With ``shard=(rank, world)`` (a torch.distributed group, ``distributed.py``) the batches are
    spread over the ranks: rank 0 alone reads and writes the caches and cell files and decides what is
    missing; every rank generates batches ``bi % world == rank`` of the batches one process would form,
    rank 0 gathers and caches them, and every rank returns rank 0's samples. So the samples, scores and
    every decision taken from them (a sweep's next stage) are the same on every rank and the same as
    one process's; the number of collectives depends only on rank 0's decisions.
    """

    def __init__(self, model: HookedModel, neurons: LanguageNeurons, cfg: EvaluateConfig,
                 references: dict[str, list[str]] | None, cells_dir: Path | None, progress: bool = True,
                 store: SampleStore | None = None, shard: Shard | None = None):
        neurons.check_model(model)
        self.shard = shard
        main = is_main(shard)
        self.model, self.neurons, self.cfg, self.progress = model, neurons, cfg, progress and main
        self.cells_dir = cells_dir if main else None
        self.store = store if store is not None and main else SampleStore(None)
        t0 = time.perf_counter()
        self.runner = Runner(model)
        self.refs, self.thresholds, self.ref_nll = {}, {}, {}
        weights = None
        for l in cfg.languages or neurons.languages:
            neurons._check_lang(l)
            texts = (references or {}).get(l)
            self.thresholds[l] = DEGENERATE_DISTINCT
            if texts:
                self.refs[l] = BleuReferences(tokenize_for_bleu(self.runner.tokenizer, texts))
                ref = None
                with agreed(shard):  # rank 0 computes (or reads back) the gate and reference NLL; the others wait
                    if main:
                        weights = weights or weights_fingerprint(model)
                        ref = self.store.memo("references", {"model": model_name(model), "weights_sha": weights,
                                                              "texts_sha": sha256_texts(texts),
                                                              "window": cfg.max_new_tokens,
                                                              "nll_texts": cfg.reference_nll_texts},
                                              lambda texts=texts: self._reference_stats(texts))
                ref = from_main(shard, ref)
                self.thresholds[l], self.ref_nll[l] = ref["threshold"], ref["nll"]
        self.base = {"model": model_name(model), "neurons_model": neurons.meta.get("model"), "sites": neurons.index.spec,
                     "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "prompt": cfg.prompt,
                     "sampler": SAMPLER, "ap_sha": hashlib.sha256(neurons.ap.numpy().tobytes()).hexdigest()[:16]}
        self.timings: dict[str, float] = {}
        self.used: list[str] = []
        self._hooks: dict[str, list] = {}
        # seconds per part of the protocol (references: gate and reference NLL; generate; nll; score)
        self.parts: dict[str, float] = {"references": time.perf_counter() - t0, "generate": 0.0, "nll": 0.0,
                                        "score": 0.0}
        self.tokens = 0  # tokens generated by this runner (cache hits excluded)
        self.generated = 0  # samples generated by this runner
        self.per_rank = [0] * (shard[1] if shard else 1)  # of them, by the rank that generated them

    def _reference_stats(self, texts: list[str]) -> dict:
        """One language's fluency gate (set on real stretches as long as the samples: shorter text has
        more distinct tokens) and the model's NLL per token on its first reference texts."""
        threshold = distinct_threshold(self.runner.tokenizer, texts, window=self.cfg.max_new_tokens)
        total, count = text_losses(self.model, texts[:self.cfg.reference_nll_texts])
        return {"threshold": threshold, "nll": total / count}

    def samples(self, lang: str | None, cond: str, k: int, seeds: Sequence[int],
                steering: SteeringConfig | None = None) -> list[dict]:
        """Samples of one cell: no intervention for cond "none"; otherwise ``steering`` (default: the
        config's) towards ``lang``, on the neuron set ``cond`` with ``k`` neurons for clamp and add."""
        return self.samples_many([(lang, cond, k, seeds, steering)])[0]

    def samples_many(self, cells: Sequence[tuple]) -> list[list[dict]]:
        """Samples of many cells ``(lang, cond, k, seeds[, steering[, prompt]])`` at once (``prompt``:
        token ids the cell continues, for prompted protocols; default the config's prompt).

        A cell is read back from ``cells_dir`` when it was made with the same settings; otherwise its
        seeds come from the sample cache, and the seeds missing from every cell are generated together,
        in batches that mix cells (each batch's samples are cached at once: a killed run resumes there).
        A (setting, seed) asked for by two cells is generated once.
        """
        cfg, shard = self.cfg, self.shard
        rank, world = shard or (0, 1)
        res = [self._resolve(*c) for c in cells]
        # the missing (setting, seed) pairs, each once; group = the first cell that asks for the setting
        todo: dict[tuple[str, int], int] = {}
        for i, r in enumerate(res):
            for seed in r["missing"]:
                todo.setdefault((r["skey"], seed), i)
        todo_list = from_main(shard, list(todo.items()))  # rank 0's caches decide, for every rank
        requests = [(res[g]["prompt"], seed) for (_, seed), g in todo_list]
        groups = [g for _, g in todo_list]
        hooks = [r["hooks"] for r in res]
        starts = list(range(0, len(requests), cfg.batch_size))
        t_cell: dict[int, float] = {}
        # rounds of ``world`` batches: rank r runs batch j + r; rank 0 caches the round's samples (the unit of resume)
        for j in range(0, len(starts), world):
            mine = j + rank < len(starts)
            b = starts[j + rank] if mine else 0
            req, grp = (requests[b:b + cfg.batch_size], groups[b:b + cfg.batch_size]) if mine else ([], [])
            t1 = time.perf_counter()
            rows: list[tuple[int, dict]] = []
            with agreed(shard):
                if req:
                    out = generate_many(self.model, req, max_new_tokens=cfg.max_new_tokens,
                                        temperature=cfg.temperature, batch_size=cfg.batch_size,
                                        progress=self.progress, groups=grp, group_hooks=hooks,
                                        desc=f"generate {b + len(req)}/{len(requests)}")
                    t2 = time.perf_counter()
                    nll = sample_nll(self.model, out, cfg.prompt)  # fluency under the unclamped model
                    self.parts["generate"] += t2 - t1
                    self.parts["nll"] += time.perf_counter() - t2
                    rows = [(g, {"seed": s.seed, "text": s.text, "tokens": s.tokens, "nll": x})
                            for s, x, g in zip(out, nll, grp)]
            if shard is not None:
                parts: list | None = [None] * world if rank == 0 else None
                dist.gather_object(rows, parts, dst=0)
                if rank != 0:
                    continue
                for ri, p in enumerate(parts):
                    self.per_rank[ri] += len(p)
                rows = [x for p in parts for x in p]
            else:
                self.per_rank[0] += len(rows)
            t3 = time.perf_counter()
            self.tokens += sum(len(r["tokens"]) for _, r in rows)
            self.generated += len(rows)
            by_group: dict[int, list[dict]] = {}
            for g, r in rows:
                by_group.setdefault(g, []).append(r)
                t_cell[g] = t_cell.get(g, 0.0) + (t3 - t1) / len(rows)
            for g, grows in by_group.items():
                self.store.put(res[g]["sample_settings"], grows)
            fault_point("batch")
        if not is_main(shard):
            return from_main(shard, None)
        outs = []
        for i, r in enumerate(res):
            if r["rows"] is not None:
                outs.append(r["rows"])
                continue
            found, missing = self.store.get(r["sample_settings"], r["seeds"], count=False)
            assert not missing, missing
            rows = [found[s] for s in r["seeds"]]
            if r["missing"]:
                self.timings[r["name"]] = t_cell.get(i, 0.0)
            if r["path"] is not None:
                atomic_write_json(r["path"], {"settings": r["settings"], "samples": rows})
            outs.append(rows)
        return from_main(shard, outs)

    def _resolve(self, lang: str | None, cond: str, k: int, seeds: Sequence[int],
                 steering: SteeringConfig | None = None, prompt: Sequence[int] | None = None) -> dict:
        """A cell's settings, file, hooks, and its rows (from its file) or the seeds still to generate.
        ``prompt``: token ids this cell's samples continue (default: the config's prompt, BOS if None)."""
        cfg = self.cfg
        seeds = [int(s) for s in seeds]
        steer = replace(steering or cfg.steering, which=cond, k=k) if cond != "none" else None
        clamp = None if steer is None else {"lang": lang, "k": k, **steer.key()}
        prompt = cfg.prompt if prompt is None else [int(t) for t in prompt]
        settings = {**self.base, "prompt": prompt, "condition": cond, "clamp": clamp, "seeds": seeds}
        key = setting_key(settings)
        sample_settings = {k: v for k, v in settings.items() if k != "seeds"}
        r = {"settings": settings, "sample_settings": sample_settings, "skey": setting_key(sample_settings),
             "seeds": seeds, "path": None, "rows": None, "missing": [], "hooks": [], "prompt": prompt,
             "name": f"{cond}-{lang}-{k}-{key}"}
        if self.cells_dir is not None:
            path = self.cells_dir / f"{cond}-{lang if clamp else 'all'}-k{k if clamp else 0}-{key}.json"
            r["path"], r["name"] = path, path.name
            self.used.append(path.name)
            if path.exists():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                    data, problem = None, f"not readable JSON: {e}"
                else:
                    problem = _cell_problem(data, seeds)
                if problem is None and data["settings"] == settings:
                    r["rows"] = data["samples"]
                    return r
                if problem is not None:  # a damaged cell is recomputed (and rewritten)
                    warnings.warn(f"cell {path} is damaged ({problem}); computing it again", stacklevel=3)
        r["hooks"] = [] if steer is None else self.hooks(steer, lang)
        r["missing"] = self.store.get(sample_settings, seeds)[1]
        return r

    def hooks(self, steer: SteeringConfig, lang: str) -> list:
        """``steer.hooks(neurons, lang)``, built once per setting and language (a sweep checks that a
        setting applies, then generates with it)."""
        key = json.dumps([lang, steer.which, steer.k, steer.key()], sort_keys=True, default=str)
        if key not in self._hooks:
            self._hooks[key] = steer.hooks(self.neurons, lang)
        return self._hooks[key]

    def score(self, rows: list[dict], lang: str):
        t0 = time.perf_counter()
        try:
            return self._score(rows, lang)
        finally:
            self.parts["score"] += time.perf_counter() - t0

    def _score(self, rows: list[dict], lang: str):
        return score_samples([r["text"] for r in rows], [r["tokens"] for r in rows], lang, self.refs.get(lang),
                             self.runner.tokenizer, self.thresholds[lang], [r.get("nll", float("nan")) for r in rows],
                             languages=self.neurons.languages)

    def meta(self) -> dict:
        return {**self.base, "distinct_thresholds": self.thresholds, "reference_nll": self.ref_nll,
                "neurons_meta": {k: v for k, v in self.neurons.meta.items() if k != "timings"},
                "versions": package_versions(), "timings": self.timings, "cells": list(dict.fromkeys(self.used)),
                # what this run did (differs between a resumed and an uninterrupted run)
                "run": {"protocol_seconds": self.parts, "tokens_generated": self.tokens,
                        "samples_generated": self.generated, "samples_per_rank": self.per_rank,
                        "sample_cache": {"folder": str(self.store.folder) if self.store.folder else None,
                                         "hits": self.store.hits, "misses": self.store.misses,
                                         "reference_hits": self.store.memo_hits}}}


# fields added to a config after results were written: left out at their default, so that those folders still resume
_LATER_FIELDS = {"lcb": False}


def result_settings(neurons: LanguageNeurons, config) -> dict:
    """What a control or sweep folder's results depend on: its config and the neurons' AP."""
    cfg = {k: v for k, v in asdict(config).items() if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]}
    return {"config": cfg, "neurons_ap_sha": hashlib.sha256(neurons.ap.numpy().tobytes()).hexdigest()[:16]}


def evaluate_control(model: HookedModel, neurons: LanguageNeurons, references: dict[str, list[str]] | None = None,
                     config: EvaluateConfig | None = None, out: str | Path | None = None,
                     progress: bool = True, overwrite: bool = False,
                     samples: str | Path | None = None, distributed: bool | None = None) -> ControlResult:
    """Run the control experiment and, with ``out``, write its tables, figure and samples there.

    ``samples`` is a folder of cached samples shared with other experiments on the same neurons
    (:class:`~tl_langneurons.evaluate.samples.SampleStore`; ``Study`` uses ``DIR/samples``).

    ``out`` is written as a whole (finished cells are kept for resume until it is complete); a
    folder with results of other settings is refused unless ``overwrite``.

    ``distributed``: spread the batches over the ranks of a torch.distributed process group (see
    :class:`CellRunner`); None (default) does so whenever an initialized group has more than one process.
    Every rank returns the same result; rank 0 alone reads and writes ``out`` and ``samples``.
    """
    cfg = config or EvaluateConfig()
    shard = dist_context(distributed)
    return run_ranked(shard, out, "control", result_settings(neurons, cfg), overwrite,
                      lambda cells: _control(model, neurons, references, cfg, cells, progress,
                                             SampleStore(samples), shard),
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
    wanted = ([(None, "none", 0, seeds)] if "none" in conditions else [])
    wanted += [(lang, cond, neurons.k, seeds) for lang in langs for cond in conditions if cond != "none"]
    wanted += [(lang, "both", k, ab_seeds) for k in ks for lang in langs]
    got = dict(zip(((c[0], c[1], c[2], len(c[3])) for c in wanted), cells.samples_many(wanted)))
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
                       ("Fluency: mean per-token NLL of the samples under the unclamped model (lower is more natural)", "nll")):
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
