"""Steering interventions side by side on the same neurons, seeds, prompts and fluency gate.

    python benchmarks/bench_steering.py --neurons runs/gemma \
        --setting "paper clamp=clamp" --setting "clamp k=100=clamp:k=100" \
        --setting "add=add:alpha=1" --setting "diffmean=diffmean:layer=12,alpha=0.05" --setting "sparse=sparse" \
        [--samples 100] [--max-new-tokens 64] [--heldout ../shared/data/tatoeba-laser --n-prompts 20 \
         --prompt-samples 5 --prompt-tokens 32] [--out runs/gemma/steering]

From BOS (the paper's Table 2 protocol): every setting towards every language on seeds 1..N, beside
the unsteered samples of the same seeds, all generated in shared batches and kept in the neurons
folder's sample cache (a rerun, or Table 2 and the sweep on the same settings, reuse them). From
real prompts (``--heldout``): the 6 x 6 matrix of :func:`cross_steering` per setting (prompts never
used for selection), off-diagonal means and the diagonal. Every rate comes with the quality beside
it: lid.176 rate, lingua rate, their agreement, fluent share (the distinct-token gate set from the
reference texts named in the output), retention (fluent share / the unsteered share on the same
seeds or prompts), gated rate (target and fluent) and NLL under the unsteered model.

A setting is ``NAME=METHOD[:key=value,...]`` with the fields of
:class:`~tl_langneurons.steer.methods.SteeringConfig` (``k``, ``which``, ``scale``, ``alpha``,
``layer``, ``n_dims``, ``coef``, ``restore_norm``, ``source``, ``positions``, ``outlier_factor``, ``steer_tokens``,
``after_scale``, ``band_alphas``, ``resid_alpha``, ``keep_norm``, ``spread``, ``equal_norm``), e.g.
``add banded=add:k=369,positions=generated,band_alphas=last:0.5``.
``--sweep-best NAME=DIR`` adds a setting of each language's own: the per-language best of the sweep
in DIR (its ``sweep.json``), towards each target that target's setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_gib, record, table  # noqa: E402

from tl_langneurons import LangNeuronsError, MultilingualCorpus  # noqa: E402
from tl_langneurons.analyses.cross_steering import CrossSteerConfig, cross_steering  # noqa: E402
from tl_langneurons.evaluate.cells import Cell, CellRunner, steered  # noqa: E402
from tl_langneurons.evaluate.control import EvaluateConfig  # noqa: E402
from tl_langneurons.evaluate.samples import SampleStore  # noqa: E402
from tl_langneurons.evaluate.sweep import sweep_settings  # noqa: E402
from tl_langneurons.provenance import atomic_write_text  # noqa: E402
from tl_langneurons.steer.methods import SteeringConfig, check_not_empty, parse_setting  # noqa: E402
from tl_langneurons.study import Study  # noqa: E402

def sweep_best(spec: str) -> tuple[str, dict[str, SteeringConfig]]:
    """``NAME=DIR`` -> (NAME, {lang: the per-language best setting of the sweep in DIR})."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip():
        raise LangNeuronsError(f"--sweep-best must be NAME=DIR (a sweep's folder), got {spec!r}")
    try:
        return name.strip(), sweep_settings(path.strip())
    except LangNeuronsError as e:
        raise LangNeuronsError(f"--sweep-best {name.strip()}: {e}") from None


def _f(v, fmt=".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--neurons", required=True, help="a find output folder with residual means")
    ap.add_argument("--setting", action="append", default=[], help="NAME=METHOD[:key=value,...] (repeat)")
    ap.add_argument("--sweep-best", action="append", default=[],
                    help="NAME=DIR: each language's best setting of the sweep in DIR (repeat)")
    ap.add_argument("--samples", type=int, default=100, help="BOS seeds per language (the paper: 100)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--corpus", default=None, help="reference texts for the gate (default: the find corpus)")
    ap.add_argument("--heldout", default=None, help="held-out folder for the prompted matrix (none: BOS only)")
    ap.add_argument("--n-prompts", type=int, default=20)
    ap.add_argument("--prompt-samples", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--prompted-only", default=None, help="comma-separated setting names for the prompted matrix "
                    "(default: all)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--out", default=None, help="folder for steering.md and .json (default NEURONS/steering)")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        run(args)
    except LangNeuronsError as e:  # bad settings, neurons or options: one line, whenever it is found
        print(f"bench_steering: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def check_settings(neurons, langs: list[str], resolved: list, per_target: dict) -> None:
    """Before the model loads: every setting builds its hooks towards every language on these neurons (k,
    layers, layer and the like exist) and steers at least one neuron."""
    for name, st0 in resolved:
        for lang in langs:
            st = per_target[name].get(lang, st0) if name in per_target else st0
            st = st.for_prompt(None)
            try:
                check_not_empty(neurons, st, lang)
                st.hooks(neurons, lang)
            except LangNeuronsError as e:
                raise LangNeuronsError(f"--setting {name} towards {lang}: {e}") from None


class Plan(NamedTuple):
    """The checked command line: the settings by name, each sweep's per-language best, what runs from prompts
    and where the run writes."""

    settings: list  # (name, SteeringConfig) in the order given
    sweep_sets: dict  # name -> {lang: SteeringConfig}
    sweep_dirs: dict  # name -> the sweep's folder
    prompted: list  # the settings' names for the prompted matrix
    out: Path


def check_args(args) -> Plan:
    """Every check that needs neither the neurons nor the model, so a bad command line is one line at once."""
    for flag in ("samples", "max_new_tokens", "n_prompts", "prompt_samples", "prompt_tokens", "batch_size"):
        if getattr(args, flag) < 1:
            raise LangNeuronsError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    pairs = [sweep_best(s) for s in args.sweep_best]
    sweep_sets = dict(pairs)
    if len(sweep_sets) < len(pairs):
        raise LangNeuronsError(f"--sweep-best names must differ, got {[n for n, _ in pairs]}")
    sweep_dirs = {n: s.partition("=")[2].strip() for (n, _), s in zip(pairs, args.sweep_best)}
    settings = [parse_setting(s) for s in args.setting] + [(n, next(iter(v.values()))) for n, v in sweep_sets.items()]
    settings = settings or [("paper clamp", SteeringConfig())]
    names = [n for n, _ in settings]
    if len(set(names)) != len(names):
        raise LangNeuronsError(f"--setting names must differ, got {names}")
    if not Path(args.neurons).is_dir():
        raise LangNeuronsError(f"--neurons {args.neurons} is not a folder")
    if args.heldout and not Path(args.heldout).exists():
        raise LangNeuronsError(f"--heldout {args.heldout} does not exist")
    prompted = (names if args.prompted_only is None else
                [x.strip() for x in args.prompted_only.split(",") if x.strip()])
    bad = [x for x in prompted if x not in names]
    if bad:
        raise LangNeuronsError(f"--prompted-only names no setting: {bad}")
    out = Path(args.out) if args.out else Path(args.neurons) / "steering"
    return Plan(settings, sweep_sets, sweep_dirs, prompted, out)


def resolve_settings(plan: Plan, neurons) -> tuple[list, dict]:
    """Every setting resolved on the neurons, each sweep checked to be made on them for every language, and every
    hook built: all checks on the neurons before the model loads. Returns (resolved, per_target)."""
    langs = list(neurons.languages)
    resolved = []
    for n, st in plan.settings:
        try:
            resolved.append((n, st.resolved(neurons)))
        except LangNeuronsError as e:
            raise LangNeuronsError(f"--setting {n}: {e}") from None
    per_target = {n: {lang: st.resolved(neurons) for lang, st in v.items()} for n, v in plan.sweep_sets.items()}
    for n, v in per_target.items():
        try:
            sweep_settings(plan.sweep_dirs[n], neurons=neurons)  # made on these neurons
        except LangNeuronsError as e:
            raise LangNeuronsError(f"--sweep-best {n}: {e}") from None
        if set(langs) - set(v):
            raise LangNeuronsError(f"--sweep-best {n}: the sweep searched {', '.join(v)}, not "
                                   f"{', '.join(sorted(set(langs) - set(v)))}")
    check_settings(neurons, langs, resolved, per_target)
    return resolved, per_target


class SteeringRun:
    """One comparison after the checks: the BOS cells, the prompted matrices, and steering.md / .json written
    after each step, so an interrupted run keeps what it finished."""

    def __init__(self, args, plan: Plan, study, resolved: list, per_target: dict):
        self.args, self.plan, self.study, self.neurons = args, plan, study, study.neurons
        self.langs = list(self.neurons.languages)
        self.resolved, self.per_target = resolved, per_target
        self.md: list[str] = []
        self.result: dict = {}
        self.prows: list[list[str]] = []
        self.todo_prompted = [name for name, _ in resolved if name in plan.prompted] if args.heldout else []
        self.t_bos = 0.0

    def of(self, name: str, st: SteeringConfig, lang: str) -> SteeringConfig:
        """The setting ``name`` towards ``lang`` (a sweep's per-language best: that language's)."""
        return self.per_target[name].get(lang, st) if name in self.per_target else st

    def measure_bos(self) -> None:
        """Every setting towards every language from BOS beside the unsteered samples of the same seeds (the
        paper's Table 2 protocol), through the one cell pipeline and its sample cache; then its tables."""
        args, neurons, langs = self.args, self.neurons, self.langs
        cfg = EvaluateConfig(samples=args.samples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        refs = self.study.references(args.corpus)
        ref_name = args.corpus or neurons.meta.get("corpus_spec") or "none (fixed gate)"
        t0 = time.perf_counter()
        self.cells = cells = CellRunner(self.study.model, neurons, cfg, refs, None, progress=not args.quiet,
                                        store=SampleStore(self.study.samples_dir))
        seeds = list(range(1, args.samples + 1))
        groups = []
        for name, st0 in self.resolved:
            for lang in langs:
                st = self.of(name, st0, lang)
                groups.append([steered(lang, st.for_prompt(None), st.which, st.k if st.k is not None else neurons.k,
                                       seeds)])
        # every setting's cells and their unsteered twin (the same seeds from BOS) through the one cell pipeline
        rows = iter(cells.measure(groups)) if groups else iter(())
        base = {lang: cells.score(cells.samples(Cell(lang, None, seeds)), lang) for lang in langs}
        bos: dict[str, dict] = {"none": {lang: {**base[lang].steering_row(base[lang].fluent), "retention": 1.0}
                                         for lang in langs}}
        self.labels = labels = {"none": "no intervention"}
        for name, st in self.resolved:
            labels[name] = (f"each language its best of {self.plan.sweep_dirs[name]}" if name in self.per_target else
                            replace(st, k=st.k if st.k is not None else (neurons.k if st.neuron_level else None)).label())
            bos[name] = {}
            for lang in langs:
                bos[name][lang] = next(rows).row()
        self.t_bos = time.perf_counter() - t0
        self.md = self.bos_markdown(bos, ref_name)
        self.result = self.bos_result(bos, ref_name)

    def bos_markdown(self, bos: dict, ref_name: str) -> list[str]:
        """The BOS tables: the means over languages per setting, then rate / gated / retention per language."""
        args, langs, neurons = self.args, self.langs, self.neurons
        measures = ("rate", "rate_lingua", "agreement", "fluent", "retention", "gated_rate", "nll")

        def mean(d: dict, m: str):
            vals = [d[lang][m] for lang in langs if d[lang][m] is not None and np.isfinite(d[lang][m])]
            return float(np.mean(vals)) if vals else None

        head = ["setting", "intervention", "rate", "lingua", "agree", "fluent", "retention", "gated", "NLL"]
        body = [[n, self.labels[n], *[_f(mean(bos[n], m)) for m in measures]] for n in bos]
        per_lang = [[n, *[f"{_f(bos[n][l]['rate'])} / {_f(bos[n][l]['gated_rate'])} / {_f(bos[n][l]['retention'])}"
                          for l in langs]] for n in bos]
        md = [f"From BOS: {args.samples} seeds x {args.max_new_tokens} tokens per language, temperature 0.8; "
              f"means over {', '.join(langs)}. Gate references: {ref_name}; reference NLL of real text: "
              + ", ".join(f"{l} {v:.2f}" for l, v in self.cells.ref_nll.items()), "",
              table(head, body), "", "Per language: rate / gated / retention", "",
              table(["setting", *langs], per_lang)]
        # source=prompt names each prompt's language (the prompted matrix); from BOS there is none, so no source
        no_prompt = [n for n, st in self.resolved if any(self.of(n, st, l).source == "prompt" for l in langs)]
        if no_prompt:
            md += ["", f"From BOS without a source (there is no prompt language): {', '.join(no_prompt)}."]
        for n, v in self.per_target.items():
            md += ["", f"{n}, towards each language: " + "; ".join(
                f"{l} {replace(st, k=st.k if st.k is not None or not st.neuron_level else neurons.k).label()}"
                for l, st in v.items())]
        return md

    def bos_result(self, bos: dict, ref_name: str) -> dict:
        """steering.json after the BOS step: the rows, the settings and the gate they were judged by."""
        args, cells = self.args, self.cells
        return {"neurons": str(args.neurons), "bos": bos, "labels": self.labels, "samples": args.samples,
                "max_new_tokens": args.max_new_tokens, "references": ref_name, "thresholds": cells.thresholds,
                "reference_nll": cells.ref_nll, "settings": {n: st.key() | {"method": st.method, "k": st.k}
                                                             for n, st in self.resolved if n not in self.per_target},
                "per_language_settings": {n: {l: st.key() | {"method": st.method, "k": st.k} for l, st in v.items()}
                                          for n, v in self.per_target.items()},
                "seconds_bos": self.t_bos, "sample_cache": {"hits": cells.store.hits, "misses": cells.store.misses}}

    def write(self) -> str:
        """steering.md and .json as far as the run has come: after the BOS table and after every
        prompted matrix, so an interrupted run keeps what it finished."""
        args, result, out = self.args, self.result, self.plan.out
        done = self.md
        if args.heldout:
            left = len(self.todo_prompted) - len(self.prows)
            done = done + ["", f"From real prompts ({args.heldout}): {args.n_prompts} prompts x {args.prompt_samples} "
                           f"samples x {args.prompt_tokens} tokens per cell, 6 x 6 matrix; means over the off-diagonal "
                           "cells (prompt language is not the target). Unsteered: the NLL of the plain continuations "
                           "and the rate of the prompt's own language without steering."
                           + (f" ({left} of {len(self.todo_prompted)} settings not run yet.)" if left else ""), "",
                           table(["setting", "intervention", "rate", "lingua", "fluent", "retention", "gated", "NLL",
                                  "unsteered NLL", "unsteered own-language rate"], self.prows)]
        done = done + ["", f"Time: BOS {self.t_bos:.0f} s" + (f", prompted {result['seconds_prompted']:.0f} s"
                                                              if "seconds_prompted" in result else "")
                       + f"; sample cache hits {self.cells.store.hits}, misses {self.cells.store.misses}; peak RSS "
                       f"{peak_rss_gib():.2f} GiB"]
        text = "\n".join(done)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "steering.md", text + "\n")
        atomic_write_text(out / "steering.json", json.dumps(result, indent=1, default=float))
        return text

    def measure_prompted(self, text: str) -> str:
        """The 6 x 6 matrix of :func:`cross_steering` per prompted setting on the held-out prompts, written after
        each; returns steering.md's text as last written."""
        args, out, result = self.args, self.plan.out, self.result
        held = MultilingualCorpus.load(args.heldout, None, 0, self.langs)
        t1 = time.perf_counter()
        result["prompted"] = {}  # the unsteered continuations are generated once for all settings (sample store)
        for name, st in self.resolved:
            if name not in self.plan.prompted:
                continue
            res = cross_steering(self.study.model, self.neurons, held, CrossSteerConfig(
                n_prompts=args.n_prompts, samples=args.prompt_samples, max_new_tokens=args.prompt_tokens,
                which=st.which, steering=st, per_target=self.per_target.get(name)), progress=not args.quiet,
                store=self.cells.store)
            off, eye = res.off_diagonal(), np.eye(len(res.languages), dtype=bool)
            diag_none = float(np.mean(res.none[eye]))
            result["prompted"][name] = res.to_json()
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / f"prompted-{name.replace(' ', '_')}.md", res.markdown())
            self.prows.append([name, self.labels[name], _f(off.get("rate")), _f(off.get("rate_lingua")),
                               _f(off.get("fluent")), _f(off.get("retention")), _f(off.get("gated")),
                               _f(off.get("nll")),
                               _f(float(np.nanmean(res.none_nll)) if res.none_nll is not None else None),
                               _f(diag_none)])
            result["seconds_prompted"] = time.perf_counter() - t1
            text = self.write()
            print(res.markdown(), flush=True)
        return text


def run(args) -> None:
    """The checks (the command line, then the neurons), the BOS step, the prompted step, and the recording."""
    plan = check_args(args)
    study = Study(args.neurons, progress=not args.quiet, echo=print)
    resolved, per_target = resolve_settings(plan, study.neurons)
    bench = SteeringRun(args, plan, study, resolved, per_target)
    bench.measure_bos()
    text = bench.write()
    if args.heldout:
        text = bench.measure_prompted(text)
    if args.no_record:
        print(text)
    else:
        record(f"Steering interventions compared ({Path(args.neurons).name})", text,
               f"Command: python benchmarks/bench_steering.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
