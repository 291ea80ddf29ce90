"""Why steered text fails the fluency gate, language by language: an analysis of a prompted sweep's test samples.

For each target language it reads (from the neurons folder's sample store; nothing is generated when the sweep
has run) three groups of continuations of the sweep's test prompts (its --max-new-tokens):

- ``steered``: the sweep's pick (``--pick best`` or ``shared``) towards the language, on the other languages'
  prompts (the cells the sweep scored);
- ``unsteered, other prompts``: the same prompts and seeds unsteered (the retention baseline);
- ``unsteered, own prompts``: the unsteered continuations of the prompts written in the language (the model's own
  text in it).

and reports, under the language's gate (the distinct-token threshold the sweep used): the share failing it, among
the failures the share with a loop (one n-gram of up to 8 tokens repeated back to back over 8 tokens or more), the
share of tokens repeating the token before them (reduplication such as 票票), of tokens already among the previous
8 (near repetition), and the tokens failing samples repeat most. Issue 29 asks why Chinese loses fluency when
steered; this puts the steered text beside the model's own Chinese and beside the other languages. On a sweep on
several genres (``--genres``) it also splits the three groups by genre: the ceiling the model's own text in the
language sets on retention, genre by genre.

For an ``add`` pick it also attributes the steering to the layers (``--attribution``): the pick's addition summed
over the neurons of each quarter of the depth, through each neuron's output direction and the unembedding (direct
logit attribution, as ``tl-langneurons attribution`` per neuron), gives the tokens each quarter pushes up directly
and the share of its 50 most promoted tokens written in the target's script.

    python benchmarks/analyse_failures.py --neurons runs/gemma --sweep runs/gemma/sweep-add-genres [--pick shared]

On an LCB sweep (``sweep --lcb``) it reads the test answers instead (the pick, unsteered, behind the system
prompt) and says why answers fail LCB's line check: each failing line by kind (math or code, English words, a
line in the target's script that lid.176 misreads, other), and LPR as it would be without the misread lines:

    python benchmarks/analyse_failures.py --neurons runs/qwen --sweep runs/qwen/lcb-add
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, record, table  # noqa: E402


def profile(rows: list[dict], threshold: float, tokenizer) -> dict:
    """The failure profile of samples (dicts with tokens) under a distinct-token threshold."""
    from tl_langneurons.evaluate.metrics import is_degenerate, longest_repeat_run

    fail = [r for r in rows if is_degenerate(r["tokens"], threshold)]
    pairs = near = total = 0
    for r in rows:
        t = r["tokens"]
        total += max(0, len(t) - 1)
        pairs += sum(a == b for a, b in zip(t, t[1:]))
        near += sum(t[i] in t[max(0, i - 8):i] for i in range(1, len(t)))
    counts: collections.Counter = collections.Counter()
    for r in fail:  # tokens a failing sample writes more than once, counted once per extra use
        c = collections.Counter(r["tokens"])
        counts.update({tok: n - 1 for tok, n in c.items() if n > 1})
    top = ", ".join(f"{tokenizer.decode([t])!r} {n}" for t, n in counts.most_common(6))
    return {"n": len(rows), "fail": len(fail) / len(rows) if rows else None,
            "loops": sum(longest_repeat_run(r["tokens"]) >= 8 for r in fail) / len(fail) if fail else None,
            "adjacent": pairs / total if total else None, "near": near / total if total else None, "top": top}


@__import__("torch").no_grad()
def band_attribution(model, neurons, lang: str, st) -> list[list]:
    """Per quarter of the depth: the tokens the ``add`` setting's addition (alpha x (mu_on - mu_off), times its
    equal-norm and band factors) on that quarter's neurons promotes directly (its output through the unembedding)."""
    import torch

    from tl_langneurons.analyses.attribution import neuron_directions, token_matches, unembedding

    sel, delta = st.intervention.deltas(neurons, lang)
    dirs = neuron_directions(model, sel, neurons.index)  # [n, d_model]
    W_U = unembedding(model)
    layer_of = torch.from_numpy(neurons.index.layers())[sel]
    L = neurons.index.n_layers
    rows = []
    for q in range(4):
        lo, hi = q * L // 4, (q + 1) * L // 4 - 1
        inside = (layer_of >= lo) & (layer_of <= hi)
        if not inside.any():
            continue
        v = (delta[inside, None] * dirs[inside]).sum(0)
        top = torch.topk(W_U @ v, 50).indices.tolist()
        words = [model.tokenizer.decode([t]) for t in top]
        share = sum(token_matches(w, lang) for w in words) / len(words)
        rows.append([lang, f"{lo}-{hi}", int(inside.sum()), f"{float(v.norm()):.1f}", f"{share:.2f}",
                     ", ".join(repr(w) for w in words[:10])])
    return rows


GROUPS = ("steered", "unsteered, other prompts", "unsteered, own prompts")  # the three groups of each target


def show(x: float | None, digits: int = 2) -> str:
    """A table cell: the number, or - where there is none."""
    return "-" if x is None else f"{x:.{digits}f}"


def genre_row(lang: str, genre: str, parts: dict[str, list[dict]], threshold: float, tokenizer) -> list:
    """One target on one genre's prompts (``parts``: the rows of each of :data:`GROUPS`): each group's share
    failing the gate, the retention they give and the ceiling the model's own text in the language sets on it."""
    prs = [profile(parts.get(name, []), threshold, tokenizer) for name in GROUPS]
    s, u, o = (None if pr["fail"] is None else 1 - pr["fail"] for pr in prs)

    def ratio(a, b):
        return show(a / b if a is not None and b else None)
    return [lang, genre, *(show(pr["fail"]) for pr in prs), ratio(s, u), ratio(s, o), ratio(o, u),
            show(prs[0]["loops"])]


def lcb_lines(study, runner, data: dict, picks: dict, seeds: list[int], args) -> str:
    """An LCB sweep's test answers (its pick, behind the system prompt too after --lcb-system; unsteered; behind
    the system prompt) against LCB's line check: the answers failing it and their failing lines by kind
    (:func:`~tl_langneurons.evaluate.lcb.failing_lines`), and LPR as it would be if the lines lid.176 misreads
    counted as the target's (zh, ja). The requests are the sweep's own (``meta.prompts``: whatever its set)."""
    from tl_langneurons.evaluate.cells import Cell, steered
    from tl_langneurons.evaluate.confusion import BEHIND
    from tl_langneurons.evaluate.lcb import LINE_FAILURES, failing_lines, line_pass

    cfg, prompts = data["meta"]["config"], data["meta"]["prompts"]
    lcb = {part: {lang: [tuple(p) for p in ps] for lang, ps in prompts[part].items()} for part in ("test", "system")}
    body, examples = [], []
    steered_on, behind = ("system", BEHIND) if cfg.get("lcb_system") else ("test", "")  # --lcb-system
    for lang, st in picks.items():
        k = st.k if st.k is not None else study.neurons.k
        groups = {f"{args.pick} ({st.resolved(study.neurons).label()}){behind}":
                  [steered(lang, st.for_prompt("en"), st.which, k, seeds, p) for p in lcb[steered_on][lang]],
                  "none": [Cell(None, None, tuple(seeds), p) for p in lcb["test"][lang]],
                  "system prompt": [Cell(None, None, tuple(seeds), p) for p in lcb["system"][lang]]}
        for name, cells in groups.items():
            texts = [r["text"] for got in runner.samples_many(cells) for r in got]
            passes = [line_pass(t, lang) for t in texts]
            fails = [failing_lines(t, lang) for t in texts]
            kinds = collections.Counter(kind for f in fails for _, kind in f)
            scored = [p for p in passes if p is not None]
            # misread lines counted as the target's: an answer fails only by its other lines
            lenient = [p is True or not any(kind != "misread" for _, kind in f)
                       for p, f in zip(passes, fails) if p is not None]
            body.append([lang, name, len(texts), f"{sum(scored) / len(scored):.2f}" if scored else "-",
                         sum(p is False for p in passes), *(kinds[k] for k in LINE_FAILURES),
                         f"{sum(lenient) / len(lenient):.2f}" if lenient else "-"])
            examples += [[lang, name, kind, line[:80]] for f in fails for line, kind in f][:3]
    header = ["target", "answers", "n", "LPR", "failing answers", *(f"lines: {k}" for k in LINE_FAILURES),
              "LPR, misread lines as the target's"]
    return (f"Sweep {args.sweep} (pick: {args.pick}), LCB test requests of {prompts.get('lcb') or 'crosslingual/okapi'} "
            f"({cfg['test_prompts']} per language x "
            f"{len(seeds)} answer{'s' if len(seeds) > 1 else ''}, {cfg['max_new_tokens']} tokens at T = {cfg['temperature']}). A failing line is "
            "a line of 5 tokens or more that lid.176 (.ftz) does not label the target above 0.3; its kind: math or "
            "code (LaTeX, code symbols), English words (zh, ja: Latin words; else lid.176 says English), misread "
            "(zh, ja: 4 or more letters of the target's script and no Latin word, labelled otherwise), other.\n\n" + table(header, body)
            + "\n\nFailing lines (the first three of each group):\n\n"
            + table(["target", "answers", "kind", "line"], examples))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: the neurons folder, the sweep and which of its picks to analyse."""
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--neurons", required=True, help="the find folder (its samples/ store)")
    ap.add_argument("--sweep", required=True, help="a sweep folder on held-out prompts or on LCB's (sweep.json)")
    ap.add_argument("--pick", default="best", choices=("best", "shared"), help="the sweep's setting to analyse")
    ap.add_argument("--attribution", action="store_true", help="add picks: the tokens each quarter of the depth "
                    "pushes up directly (direct logit attribution of the addition)")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    return ap.parse_args(argv)


def load_sweep(args) -> tuple | None:
    """The study, the sweep's picks and its sweep.json, checked to be a finished sweep on held-out or LCB prompts
    before anything is read from the store; None (after one line on stderr) where it is not."""
    from tl_langneurons import Study
    from tl_langneurons.errors import LangNeuronsError
    from tl_langneurons.evaluate.sweep import sweep_settings

    try:
        study = Study(args.neurons, progress=False)
        picks = sweep_settings(args.sweep, args.pick, neurons=study.neurons)  # one clear line if not a sweep
    except LangNeuronsError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    data = json.loads((Path(args.sweep) / "sweep.json").read_text())
    cfg = data["meta"]["config"]
    if not cfg.get("heldout") and not cfg.get("lcb"):
        print(f"error: {args.sweep} is not a sweep on held-out prompts (--heldout) or LCB's (--lcb); this reads its "
              "test prompts", file=sys.stderr)
        return None
    return study, picks, data


def profile_rows(study, runner, picks: dict, seeds: list[int], data: dict) -> tuple[list, list]:
    """Per target, the failure profile of each of :data:`GROUPS` (the sweep's own test cells, read from the store),
    and with a sweep on several genres the by-genre rows; returns (rows, by-genre rows)."""
    from tl_langneurons.evaluate.cells import Cell, steered

    prompts, gates, tok = data["meta"].get("prompts"), data["meta"]["distinct_thresholds"], study.model.tokenizer
    test = {l: [tuple(p) for p in ps] for l, ps in prompts["test"].items()}
    genre_of = (prompts.get("genre") or {}).get("test")  # a sweep on several genres: each test prompt's genre
    genre = {l: genre_of[l] if genre_of else [None] * len(ps) for l, ps in test.items()}
    body, by_genre = [], []
    for lang in picks:
        st = picks[lang]
        units = [(src, p) for src, ps in test.items() if src != lang for p in ps]
        k = st.k if st.k is not None else study.neurons.k
        groups = dict(zip(GROUPS, ([steered(lang, st.for_prompt(src), st.which, k, seeds, p) for src, p in units],
                                   [Cell(None, None, tuple(seeds), p) for _, p in units],
                                   [Cell(None, None, tuple(seeds), p) for p in test.get(lang, [])])))
        other_genres = [g for src, gs in genre.items() if src != lang for g in gs]  # the genre of each unit
        unit_genres = dict(zip(GROUPS, (other_genres, other_genres, genre.get(lang, []))))
        per_genre: dict = {}
        for name, cells in groups.items():
            got = runner.samples_many(cells)
            rows = [r for g in got for r in g]
            for g, unit in zip(unit_genres[name], got):
                per_genre.setdefault(g, {}).setdefault(name, []).extend(unit)
            pr = profile(rows, gates[lang], tok)
            label = st.resolved(study.neurons).label()
            body.append([lang, name if name != "steered" else f"steered ({label})", pr["n"], show(pr["fail"]),
                         show(pr["loops"]), show(pr["adjacent"], 3), show(pr["near"], 3), pr["top"]])
        if genre_of:
            by_genre += [genre_row(lang, g, parts, gates[lang], tok) for g, parts in per_genre.items()]
    return body, by_genre


def fluency_text(study, runner, cfg: dict, picks: dict, seeds: list[int], data: dict, args) -> str:
    """The analysis of a sweep on held-out prompts: the failure profile per target and group, by genre where the
    sweep has several, and the direct logit attribution of add picks with --attribution."""
    from tl_langneurons.steer.add import Add

    langs, gates = list(picks), data["meta"]["distinct_thresholds"]
    body, by_genre = profile_rows(study, runner, picks, seeds, data)
    header = ["target", "samples", "n", "failing the gate", "of those: loops", "token = previous", "token in previous 8",
              "most repeated tokens in failing samples (extra uses)"]
    text = (f"Sweep {args.sweep} (pick: {args.pick}), test prompts of {cfg['heldout']}, {cfg['max_new_tokens']} tokens "
            f"at T = {cfg['temperature']}, seeds {seeds[0]}..{seeds[-1]}; gates (distinct-token thresholds) "
            + ", ".join(f"{l} {gates[l]:.3f}" for l in langs) + ".\n\n" + table(header, body))
    if by_genre:
        text += ("\n\nBy genre: the share failing the gate of the steered samples, of the unsteered continuations of "
                 "the same prompts and of the model's own text in the language (its unsteered continuations of the "
                 "genre's prompts written in it); retention = steered fluent share / unsteered, own retention = "
                 "steered / own, and the ceiling own / unsteered: the retention steered text reaches when it is as "
                 "fluent as the model's own text in the language.\n\n"
                 + table(["target", "genre", "failing: steered", "unsteered", "own", "retention", "own retention",
                          "ceiling", "steered failures: loops"], by_genre))
    if args.attribution:
        dla = [row for lang in langs if isinstance(picks[lang].intervention, Add)
               for row in band_attribution(study.model, study.neurons, lang, picks[lang])]
        text += ("\n\nDirect logit attribution of each pick's addition by quarter of the depth (summed over that "
                 "quarter's steered neurons; norm of the summed output direction; share of the 50 most promoted "
                 "tokens in the target's script; the 10 most promoted):\n\n"
                 + table(["target", "layers", "neurons", "norm", "target script", "most promoted tokens"], dla))
    return text


def main(argv: list[str] | None = None) -> int:
    """Check the sweep, read its test samples from the store (LCB answers or continuations), and report."""
    args = parse_args(argv)
    from tl_langneurons.evaluate.cells import CellRunner
    from tl_langneurons.evaluate.control import EvaluateConfig
    from tl_langneurons.evaluate.samples import SampleStore

    loaded = load_sweep(args)
    if loaded is None:
        return 2
    study, picks, data = loaded
    cfg = data["meta"]["config"]
    seeds = list(range(1, cfg["test_samples"] + 1))
    ecfg = EvaluateConfig(languages=list(picks), samples=len(seeds), max_new_tokens=cfg["max_new_tokens"],
                          temperature=cfg["temperature"], batch_size=cfg["batch_size"], ablation_ks=[])
    runner = CellRunner(study.model, study.neurons, ecfg, None, None, False, SampleStore(Path(args.neurons) / "samples"))
    command = "python benchmarks/analyse_failures.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if cfg.get("lcb"):
        return _report("Why answers fail LCB's line check, by language", lcb_lines(study, runner, data, picks, seeds,
                                                                                    args), command, args.no_record)
    return _report("Why steered text fails the fluency gate, by language",
                   fluency_text(study, runner, cfg, picks, seeds, data, args), command, args.no_record)


def _report(title: str, text: str, command: str, no_record: bool) -> int:
    """Print the analysis, or append it to RESULTS.md under ``title`` with the command."""
    if no_record:
        print(f"Machine: {machine()}\n\n{text}")
    else:
        record(title, text, f"Command: `{command}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
