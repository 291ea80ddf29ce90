"""Command line: parse, one call of the Python API, print.

    tl-langneurons info     --model M                       layers, sites and neuron counts
    tl-langneurons find     --model M --corpus C --out DIR  language neurons + analysis (steps 1-4)
    tl-langneurons steer    --neurons DIR --lang de "..."   text with and without steering
    tl-langneurons evaluate --neurons DIR                   Table 2, k ablation, samples (steps 5-6)
    tl-langneurons report   DIR                             report.md / report.html
    tl-langneurons compare  DIR DIR ... --out OUT           placement of several models side by side
    tl-langneurons sweep    --neurons DIR --lcb --method M  steering settings on LCB's requests (language confusion)
    tl-langneurons lcb      DIR                             the LCB sweeps of DIR in one table (DIR/lcb)
    tl-langneurons demo                                     all of it on the defaults

Every option's default comes from a config dataclass (``FindConfig``, ``EvaluateConfig``, ...).
Errors print one line and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

from .analyses.attribution import AttributionConfig
from .analyses.cross_steering import CrossSteerConfig
from .analyses.deactivation import DeactivationConfig
from .config import add_options, from_args
from .detect.corpus import CorpusConfig
from .detect.neurons import FindConfig
from .errors import LangNeuronsError
from .evaluate.control import EvaluateConfig
from .evaluate.sweep import SweepConfig, sweep_settings
from .model.load import ModelConfig
from .steer.pairs import SteerPairsConfig, steer_label, with_sweep_pick
from .study import DemoConfig, Study, run_demo


def _echo(s: str) -> None:
    print(s, file=sys.stderr)


def _study(args) -> Study:
    # device, dtype and device map are checked here, before the neurons or the model load
    return Study(args.neurons, from_args(ModelConfig, args, model=args.model), progress=not args.quiet, echo=_echo)


def cmd_info(args) -> None:
    from .model.load import model_source
    from .model.sites import describe

    model = from_args(ModelConfig, args).load()
    print(f"model: {args.model}")
    source = model_source(model)
    if source:
        what = [source.get("architecture"), f"({source['name']})" if source.get("name") else None,
                source.get("gguf") if not source.get("architecture") else None]
        print(f"gguf: {' '.join(w for w in what if w)}, sha256 {source.get('gguf_sha256')}")
    print(describe(model, list_hooks=args.hooks))


@contextlib.contextmanager
def _process_group(args) -> Iterator[tuple[ModelConfig, bool]]:
    """Under torchrun (WORLD_SIZE > 1) join the process group: yields this rank's model config (on
    ``cuda:LOCAL_RANK`` for ``--device cuda``) and whether it is rank 0, which alone prints."""
    from .distributed import process_group_from_env

    model_cfg = from_args(ModelConfig, args, **({"model": args.model} if hasattr(args, "neurons") else {}))
    with process_group_from_env(model_cfg.device, model_cfg.device_map) as device:
        yield ModelConfig(**{**vars(model_cfg), "device": device}), int(os.environ.get("RANK", "0") or 0) == 0


def _ranked_study(args, run) -> None:
    """``print(run(study))`` on the neurons folder, with every rank of a torchrun group sharing the
    generation (evaluate, sweep) and rank 0 alone writing and printing."""
    with _process_group(args) as (model_cfg, main_rank):
        study = Study(args.neurons, model_cfg, progress=not args.quiet and main_rank,
                      echo=_echo if main_rank else lambda s: None)
        text = run(study)
        if main_rank:
            print(text)


def cmd_find(args) -> None:
    # with --sae the units are that SAE's latents: --sites left at its default reads as them
    if args.sae is not None and args.sites != FindConfig.sites and not args.sites.endswith(".hook_sae_acts_post"):
        raise LangNeuronsError(f"--sae ranks that SAE's latents; --sites {args.sites} names other units: leave --sites "
                               "out, or find those without --sae")
    # under torchrun (WORLD_SIZE > 1) every rank runs a share of the batches and rank 0 writes the folder
    with _process_group(args) as (model_cfg, main_rank):
        study = Study.find(args.out, model_cfg, from_args(CorpusConfig, args), from_args(FindConfig, args),
                           overwrite=args.overwrite, cache=args.cache, on_disk=args.on_disk, sae=args.sae,
                           progress=not args.quiet and main_rank, echo=_echo if main_rank else lambda s: None)
        if study is not None:
            print(study.find_summary())


def _from_sweep(args, study: Study) -> dict | None:
    """``--from-sweep DIR``: the sweep's picks per language (read before the model loads; refused when made on
    other neurons), else None."""
    if args.from_sweep is None:
        if args.sweep_pick is not None:
            raise LangNeuronsError(f"--sweep-pick {args.sweep_pick} picks among a sweep's settings; give the sweep "
                                   "with --from-sweep DIR")
        return None
    return sweep_settings(args.from_sweep, args.sweep_pick or "best", study.neurons)


def cmd_steer(args) -> None:
    cfg = from_args(SteerPairsConfig, args)
    study = _study(args)
    picks = _from_sweep(args, study)
    if picks is not None:
        cfg, note = with_sweep_pick(cfg, picks, f"the sweep in {args.from_sweep}")
        if note:
            print(f"note: {note}", file=sys.stderr)
    pairs = study.steer(cfg)
    print(f"prompt: {cfg.prompt!r}   steering: {steer_label(study.neurons, cfg)} towards {cfg.lang!r} "
          f"({cfg.steering.label()})\n")
    for p in pairs:
        print(f"--- seed {p.without.seed}")
        print(f"  without: {' '.join(p.without.text.split())}")
        print(f"  with:    {' '.join(p.steered.text.split())}")


def cmd_evaluate(args) -> None:
    # under torchrun the batches are spread over the ranks; rank 0 writes and prints
    cfg = from_args(EvaluateConfig, args)
    _ranked_study(args, lambda study: study.evaluate(cfg, args.out, args.corpus, args.overwrite).markdown())


def cmd_sweep(args) -> None:
    cfg = from_args(SweepConfig, args)
    _ranked_study(args, lambda study: study.sweep(cfg, args.out, args.corpus, args.overwrite).markdown())


def cmd_report(args) -> None:
    path = Study(args.dir).report()
    print(f"report: {path} and {path.with_suffix('.html')}")


def cmd_compare(args) -> None:
    from .analyses.compare import compare_placement, write_comparison

    result, paths = write_comparison(compare_placement(args.dirs, args.labels), args.out, args.overwrite)
    print(result.markdown())
    print(f"figure: {paths[0]}; tables: {', '.join(str(p) for p in paths[1:])}")


def cmd_lcb(args) -> None:
    from .evaluate.confusion import lcb_table, set_slug, write_lcb_table
    from .evaluate.judge import judge_kind

    if args.judge is not None:
        judge_kind(args.judge)
    out = args.out or str(Path(args.dir) / ("lcb-" + set_slug(args.lcb_set) if set_slug(args.lcb_set) else "lcb"))
    table = lcb_table(args.dir, args.sweeps, args.lcb_set, args.judge)
    paths = write_lcb_table(table, out, args.overwrite)
    print(table.markdown())
    print(f"written: {', '.join(str(p) for p in paths)}")


def cmd_demo(args) -> None:
    run_demo(from_args(DemoConfig, args), progress=not args.quiet)


def cmd_deactivate(args) -> None:
    print(_study(args).deactivate(args.heldout, from_args(DeactivationConfig, args)).markdown())


def cmd_attribution(args) -> None:
    print(_study(args).attribution(from_args(AttributionConfig, args)).markdown())


def cmd_tokens(args) -> None:
    study = _study(args)
    res = study.tokens(args.text)
    print("\n".join(res.lines()))
    print(f"figure: {study.analyses_dir / 'tokens.png'}")


def cmd_cross_steer(args) -> None:
    # under torchrun the batches are spread over the ranks; rank 0 writes and prints
    def run(study: Study) -> str:
        picks = _from_sweep(args, study)
        cfg = from_args(CrossSteerConfig, args, per_target=picks)
        if picks is not None:
            rest = [l for l in study.neurons.languages if l not in picks]
            if rest:
                study.echo(f"note: the sweep searched {', '.join(picks)}; towards {', '.join(rest)} the matrix steers "
                           f"with {cfg.steering.label()}")
        return study.cross_steer(args.heldout, cfg).markdown()

    _ranked_study(args, run)


_HELDOUT = "held-out corpus (never used for selection), e.g. ../shared/data/ud-dev-test"
_OVERWRITE = ("--overwrite", dict(action="store_true", help="replace a result of the same kind made with other "
                                  "settings (files it did not write, and results of other kinds, are kept)"))
_REFERENCES = "real text for BLEU, the degeneracy gate and NLL (default: the corpus of the find run)"
_FROM_SWEEP = [("--from-sweep", dict(default=None, metavar="DIR", help="steer with the settings a finished sweep "
                                     "picked (its sweep.json; instead of --method and its options)")),
               ("--sweep-pick", dict(default=None, choices=("best", "shared"),
                                     help="with --from-sweep: each language's own setting, or the one shared by all "
                                     "(default best)"))]

# subcommand, help, function, options from configs, options of its own, whether it reads a neurons folder
_COMMANDS = [
    ("info", "load a model and print its layers, sites and neuron counts", cmd_info, (), [
        ("--hooks", dict(action="store_true", help="also list every hook name"))], False),
    ("find", "find each language's neurons and write the analysis", cmd_find, (CorpusConfig, FindConfig), [
        ("--cache", dict(default=None, help="pooled-activation cache file (.safetensors)")),
        ("--on-disk", dict(default=None, metavar="NPY",
                           help="keep the pooled matrix in this .npy file instead of memory (huge neuron counts)")),
        ("--out", dict(required=True, help="output folder")),
        ("--sae", dict(default=None, metavar="DIR", help="an SAE folder (SAELens' sae.save_model): attach it at the hook "
                       "it reads (outputs unchanged) and rank its latents instead of neurons (sae-lens, "
                       "transformer-lens 3.x)")),
        _OVERWRITE], False),
    ("steer", "generate with and without steering towards a language", cmd_steer, (SteerPairsConfig,), [
        ("prompt", dict(nargs="?", default=SteerPairsConfig.prompt, help="prompt (default: BOS only)")), *_FROM_SWEEP],
     True),
    ("evaluate", "the control experiment: Table 2, k ablation and samples", cmd_evaluate, (EvaluateConfig,), [
        ("--out", dict(default=None, help="output folder (default NEURONS/control)")),
        ("--corpus", dict(default=None, help=_REFERENCES)), _OVERWRITE], True),
    ("sweep", "search steering settings (clamp: k %%, scale, positions, layers; add, diffmean, sparse: theirs) for "
              "fluent steering", cmd_sweep,
     (SweepConfig,), [("--out", dict(default=None, help="output folder (default NEURONS/sweep; NEURONS/sweep-METHOD "
                                                       "for add, diffmean and sparse)")),
                      ("--corpus", dict(default=None, help=_REFERENCES)), _OVERWRITE], True),
    ("deactivate", "loss change on held-out texts when a language's neurons are ablated", cmd_deactivate,
     (DeactivationConfig,), [("--heldout", dict(required=True, help=_HELDOUT))], True),
    ("attribution", "tokens promoted by each top mlp_post neuron (direct logit attribution)", cmd_attribution,
     (AttributionConfig,), [], True),
    ("tokens", "per-token activation and language score of one text (heat strip)", cmd_tokens, (), [
        ("text", dict())], True),
    ("cross-steer", "prompt in one language, steer towards another: target-rate matrix", cmd_cross_steer,
     (CrossSteerConfig,), [("--heldout", dict(required=True, help=_HELDOUT)), *_FROM_SWEEP], True),
]


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False on the parser and on every subcommand (add_parser does not inherit it): an abbreviation
    # would read a mistyped option as another one (sweep --layer as --layer-sets, steer --out as --outlier-factor)
    p = argparse.ArgumentParser(prog="tl-langneurons", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, allow_abbrev=False)

    for name, help_text, func, configs, own, reads_neurons in _COMMANDS:
        q = command(name, help_text)
        if reads_neurons:
            q.add_argument("--neurons", required=True, help="a find output folder")
            q.add_argument("--model", default=None, help="the model (default: the one the neurons were found on)")
        add_options(q, ModelConfig, skip=("model",) if reads_neurons else ())
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        for cfg in configs:
            add_options(q, cfg)
        for flag, kw in own:
            q.add_argument(flag, **kw)
        q.set_defaults(func=func)

    q = command("report", "write report.md and report.html for a find output folder (layers.png and overlap.png "
                "drawn again from its saved neurons)")
    q.add_argument("dir")
    q.set_defaults(func=cmd_report)
    q = command("compare", "placement of several find folders side by side (paper Fig. 2 across "
                           "models): per-layer share of each language's top/bottom neurons against "
                           "relative depth, first/last-quarter shares")
    q.add_argument("dirs", nargs="+", help="find output folders (two or more)")
    q.add_argument("--labels", default=None, help="one name per folder, comma-separated (default: each model)")
    q.add_argument("--out", required=True, help="output folder (placement.png, .md, .csv, .json)")
    q.add_argument(*_OVERWRITE[:1], **_OVERWRITE[1])
    q.set_defaults(func=cmd_compare)
    q = command("lcb", "the language-confusion sweeps (sweep --lcb) of a find folder in one table: LCB's "
                       "line-level pass rate beside quality, per method")
    q.add_argument("dir", help="a find output folder holding lcb-METHOD (lcb-system-METHOD) sweeps")
    q.add_argument("--sweeps", nargs="+", default=None, help="the sweep folders (default: every DIR/lcb-* on --lcb-set)")
    q.add_argument("--lcb-set", default=None, help="the LCB test set whose sweeps are gathered (default "
                   "crosslingual/okapi; another set's name, e.g. crosslingual/sharegpt, or the folder a sweep read)")
    q.add_argument("--out", default=None, help="output folder (default DIR/lcb: lcb.md, .csv, .json; on another set "
                   "DIR/lcb-SET)")
    q.add_argument("--judge", default=None, metavar="JUDGE", help="the independent relevance judge (sweep --lcb "
                   "--judge) every sweep's relevance (judge) column must come from (default: whatever they share)")
    q.add_argument(*_OVERWRITE[:1], **_OVERWRITE[1])
    q.set_defaults(func=cmd_lcb)
    q = command("demo", "find, evaluate and report on the defaults")
    add_options(q, DemoConfig)
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from .distributed import exit_if_left_group

    code = _main(argv)
    exit_if_left_group(code)  # under torchrun: past the interpreter's shutdown, which gloo can abort
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args.func(args)
    except LangNeuronsError as e:
        if args.debug:
            raise
        print(f"tl-langneurons: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tl-langneurons: interrupted; finished parts are saved, rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
