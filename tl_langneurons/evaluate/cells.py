"""The one cell pipeline: every steering measurement is a set of cells given to one runner.

A :class:`Cell` is one generation setting: a target language, a steering setting or none (with its
neuron set ``which`` and count ``k`` inside it), a prompt or BOS, and a list of seeds. Table 2 and its
k ablation (``evaluate``), the sweep from BOS, on held-out prompts or on LCB requests (``sweep``),
``cross-steer`` and ``benchmarks/bench_steering.py`` build cells and give them to a :class:`CellRunner`,
which generates the missing samples of all of them together (batches that mix cells; a (setting, seed)
asked for twice is made once) through the sample store (cache, resume after a kill, torchrun ranks),
and scores them. :meth:`CellRunner.measure` takes groups of cells scored together (a setting on many
prompts), schedules each group's unsteered twin (same prompts and seeds) and returns the measures a
steering comparison reports: rate (lid.176 and lingua), fluent share, retention against the twin, gated
rate and NLL under the unsteered model. A cell measured by one command is read back by every other.

Example:
    >>> from tl_langneurons.steer.setting import SteeringConfig
    >>> cell = Cell("de", SteeringConfig(method="add", which="top", k=100), seeds=[1, 2])
    >>> cell.condition, cell.k, cell.seeds, cell.twin().steering
    ('top', 100, (1, 2), None)
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch.distributed as dist

from ..distributed import Shard, agreed, from_main, is_main
from ..detect.neurons import LanguageNeurons
from ..errors import LangNeuronsError
from ..model.driver import Runner
from ..model.load import model_name, weights_fingerprint
from ..model.protocol import HookedModel
from ..provenance import atomic_write_json, package_versions, sha256_texts
from ..results import fault_point
from ..steer.generation import SAMPLER, generate_many, sample_nll
from ..steer.script_gate import ScriptGate
from ..steer.setting import SteeringConfig
from .samples import SampleStore, sample_problem, setting_key, sha256_problem, with_sha256
from .metrics import (
    DEGENERATE_DISTINCT,
    BleuReferences,
    ConditionScore,
    distinct_threshold,
    score_samples,
    text_losses,
    tokenize_for_bleu,
)

@runtime_checkable
class CellSettings(Protocol):
    """What a :class:`CellRunner` reads of its config (an :class:`~tl_langneurons.evaluate.control.EvaluateConfig`:
    the control experiment's generation fields), named here so that cells need not import the control
    experiment that runs them."""

    languages: list[str] | None
    max_new_tokens: int
    temperature: float
    batch_size: int
    prompt: str | None
    reference_nll_texts: int



@dataclass(frozen=True)
class Cell:
    """Samples towards ``target`` with ``steering`` (None: unsteered), continuing ``prompt`` (token ids;
    None: the runner's config's prompt, BOS by default), one per seed.

    The steering's ``which`` (the neuron set: top, bottom, both) and ``k`` are the cell's condition and
    neuron count; ``k`` must be set for clamp and add. An unsteered cell's samples do not depend on its
    target (it is kept for scoring): every target shares them. ``gate``: a script gate towards the target
    (:class:`~tl_langneurons.steer.script_gate.ScriptGate`) the samples are drawn under, steered or not; it keys
    them apart from ungated ones.
    """

    target: str | None
    steering: SteeringConfig | None = None
    seeds: Sequence[int] = (1,)  # kept as a tuple
    prompt: Sequence[int] | None = None  # kept as a tuple
    gate: ScriptGate | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.prompt is not None:
            object.__setattr__(self, "prompt", tuple(int(t) for t in self.prompt))
        if self.steering is not None:
            if self.target is None:
                raise LangNeuronsError("a steered cell needs a target language")
            if self.steering.neuron_level and self.steering.k is None:
                raise LangNeuronsError(f"a {self.steering.method} cell needs its k (neurons per set)")
        if self.gate is not None and self.gate.lang != self.target:
            raise LangNeuronsError(f"a gated cell's gate is towards its target: {self.gate.lang} is not {self.target}")

    @property
    def condition(self) -> str:
        """``none`` for an unsteered cell, else the steering's neuron set (Table 2's condition)."""
        return "none" if self.steering is None else self.steering.which

    @property
    def k(self) -> int:
        """Neurons per set (0 for an unsteered cell; the recorded k for diffmean and sparse)."""
        return 0 if self.steering is None else int(self.steering.k or 0)

    def twin(self) -> "Cell":
        """The same prompt and seeds, unsteered and ungated: the baseline of this cell's retention and rate."""
        return replace(self, steering=None, gate=None)


def steered(target: str, steering: SteeringConfig, which: str, k: int, seeds: Sequence[int],
            prompt: Sequence[int] | None = None) -> Cell:
    """A cell of ``steering`` on the neuron set ``which`` with ``k`` neurons (the form every caller had)."""
    return Cell(target, replace(steering, which=which, k=k), tuple(seeds), None if prompt is None else tuple(prompt))


@dataclass
class Measured:
    """A group of cells scored together on its target (e.g. one setting over many prompts), beside its
    unsteered twin scored on the same target."""

    cells: list[Cell]
    samples: list[dict]
    score: ConditionScore
    baseline: ConditionScore = field(repr=False)

    @property
    def retention(self) -> float | None:
        """Fluent share against the twin's (None where the twin has no fluent sample)."""
        return self.score.fluent / self.baseline.fluent if self.baseline.fluent else None

    def row(self) -> dict:
        """The measures of a steering comparison (rate, lingua, agreement, gated rate, fluent share,
        retention, NLL, BLEU, degenerate share)."""
        return self.score.steering_row(self.baseline.fluent)


def _cell_problem(data, seeds: list[int]) -> str | None:
    """What is wrong with a cell file read back (None when it is sound): a dict with ``settings``
    and ``samples``, one sound sample (:func:`~tl_langneurons.evaluate.samples.sample_problem`) per seed, in order,
    and content that matches its checksum (when it records one: cells written before it do not)."""
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
    return sha256_problem(data)


class CellRunner:
    """Generates and scores :class:`Cell` s, reading a cell back from ``cells_dir`` when it was made with
    the same settings (the unit of resume) and its samples from the sample store ``store`` (shared by every
    command on one neurons folder; a killed run resumes from its last batch).

    With ``shard=(rank, world)`` (a torch.distributed group, ``distributed.py``) the batches are
    spread over the ranks: rank 0 alone reads and writes the caches and cell files and decides what is
    missing; every rank generates batches ``bi % world == rank`` of the batches one process would form,
    rank 0 gathers and caches them, and every rank returns rank 0's samples. So the samples, scores and
    every decision taken from them (a sweep's next stage) are the same on every rank and the same as
    one process's; the number of collectives depends only on rank 0's decisions.
    """

    def __init__(self, model: HookedModel, neurons: LanguageNeurons, cfg: CellSettings,
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
            neurons.check_language(l)
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

    def samples(self, cell: Cell) -> list[dict]:
        """The samples of one cell, one per seed in order."""
        return self.samples_many([cell])[0]

    def samples_many(self, cells: Sequence[Cell]) -> list[list[dict]]:
        """The samples of many cells at once, each one per seed in order.

        A cell is read back from ``cells_dir`` when it was made with the same settings; otherwise its
        seeds come from the sample cache, and the seeds missing from every cell are generated together,
        in batches that mix cells (each batch's samples are cached at once: a killed run resumes there).
        A (setting, seed) asked for by two cells is generated once.
        """
        cfg, shard = self.cfg, self.shard
        rank, world = shard or (0, 1)
        res = [self._resolve(c) for c in cells]
        # the missing (setting, seed) pairs, each once; group = the first cell that asks for the setting
        todo: dict[tuple[str, int], int] = {}
        for i, r in enumerate(res):
            for seed in r["missing"]:
                todo.setdefault((r["skey"], seed), i)
        todo_list = from_main(shard, list(todo.items()))  # rank 0's caches decide, for every rank
        requests = [(res[g]["prompt"], seed) for (_, seed), g in todo_list]
        groups = [g for _, g in todo_list]
        hooks = [r["hooks"] for r in res]
        gates = [res[g]["gate"] for g in groups]
        starts = list(range(0, len(requests), cfg.batch_size))
        t_cell: dict[int, float] = {}
        # rounds of ``world`` batches: rank r runs batch j + r; rank 0 caches the round's samples (the unit of resume)
        for j in range(0, len(starts), world):
            mine = j + rank < len(starts)
            b = starts[j + rank] if mine else 0
            req, grp = (requests[b:b + cfg.batch_size], groups[b:b + cfg.batch_size]) if mine else ([], [])
            gts = gates[b:b + cfg.batch_size] if mine and any(gates) else None
            t1 = time.perf_counter()
            rows: list[tuple[int, dict]] = []
            with agreed(shard):
                if req:
                    out = generate_many(self.model, req, max_new_tokens=cfg.max_new_tokens,
                                        temperature=cfg.temperature, batch_size=cfg.batch_size,
                                        progress=self.progress, groups=grp, group_hooks=hooks, gates=gts,
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
                atomic_write_json(r["path"], with_sha256({"settings": r["settings"], "samples": rows}))
            outs.append(rows)
        return from_main(shard, outs)

    def _resolve(self, cell: Cell) -> dict:
        """A cell's settings, file, hooks, and its rows (from its file) or the seeds still to generate."""
        if not isinstance(cell, Cell):
            raise TypeError(f"CellRunner takes Cell objects, got {type(cell).__name__}")
        lang, cond, k, steer, seeds = cell.target, cell.condition, cell.k, cell.steering, list(cell.seeds)
        # the setting's key: "clamp" names the intervention of any method (the key predates the others, and
        # renaming it would orphan every cached cell and sample)
        clamp = None if steer is None else {"lang": lang, "k": k, **steer.key()}
        prompt = self.cfg.prompt if cell.prompt is None else list(cell.prompt)
        settings = {**self.base, "prompt": prompt, "condition": cond, "clamp": clamp, "seeds": seeds}
        if cell.gate is not None:  # only gated cells carry the key: every earlier key stays as it was
            settings["script_gate"] = cell.gate.key()
            cond = f"{cond}-gated"
        key = setting_key(settings)
        sample_settings = {k: v for k, v in settings.items() if k != "seeds"}
        r = {"settings": settings, "sample_settings": sample_settings, "skey": setting_key(sample_settings),
             "seeds": seeds, "path": None, "rows": None, "missing": [], "hooks": [], "prompt": prompt,
             "name": f"{cond}-{lang}-{k}-{key}", "gate": cell.gate}
        if self.cells_dir is not None:
            where = lang if clamp or cell.gate else "all"
            path = self.cells_dir / f"{cond}-{where}-k{k if clamp else 0}-{key}.json"
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

    def measure(self, groups: Sequence[Sequence[Cell]]) -> list[Measured]:
        """Each group of cells (one target) generated, its samples pooled and scored on the target, beside
        its unsteered twin (the same prompts and seeds) scored on the same target. Every cell and twin of
        every group is generated in one :meth:`samples_many` call; a twin shared by groups is scored once
        per target."""
        for g in groups:
            if not g or len({c.target for c in g}) != 1:
                raise LangNeuronsError("a measured group is one or more cells of one target")
        twins = [[c.twin() for c in g] for g in groups]
        flat = [c for g in groups for c in g] + [c for t in twins for c in t]
        got = iter(self.samples_many(flat))
        rows = [[r for _ in g for r in next(got)] for g in groups]
        twin_rows = [[r for _ in t for r in next(got)] for t in twins]
        base: dict[str, ConditionScore] = {}
        out = []
        for g, t, r, tr in zip(groups, twins, rows, twin_rows):
            target = g[0].target
            key = json.dumps([target, [[c.seeds, c.prompt] for c in t]])
            if key not in base:
                base[key] = self.score(tr, target)
            out.append(Measured(list(g), r, self.score(r, target), base[key]))
        return out

    def score(self, rows: list[dict], lang: str) -> ConditionScore:
        """``rows`` (samples of one or more cells) scored on ``lang``: rate, lingua, fluent share, gated rate, NLL, BLEU."""
        t0 = time.perf_counter()
        try:
            return self._score(rows, lang)
        finally:
            self.parts["score"] += time.perf_counter() - t0

    def _score(self, rows: list[dict], lang: str) -> ConditionScore:
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
