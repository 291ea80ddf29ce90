"""A finished sweep written out: ``sweep.md`` (each language's pick, the shared setting and its options, the
test split's tables, by genre and against the model's own fluency, LCB's scores, every setting tried),
``sweep.json`` and the figures (the trade-off of every setting tried; the test settings genre by genre)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from ...provenance import atomic_write_json, atomic_write_text
from ...tables import dashed as _f, markdown_table
from ..confusion import lcb_markdown, lcb_rows, set_words
from ..control import mean_of
from .config import keeps_floor


@runtime_checkable
class SweepTables(Protocol):
    """What the writer reads of a sweep's result (a :class:`~.results.SweepResult`): its parts as
    ``sweep.json`` holds them."""

    best: dict[str, dict]
    stages: list[dict]
    test: list[dict]
    meta: dict


def _shared_line(res: SweepTables) -> list[str]:
    """The shared setting (one for all languages) as a sentence, if the sweep found one."""
    sh = res.meta.get("shared")
    label = next((r["label"] for r in res.test if r["setting"].startswith("shared")), None)
    if not sh or label is None:
        return []
    what = "gated LPR" if _answers_gate(res.meta["config"]) else "gated rate"
    c = res.meta["config"]
    pick, low, floor = c.get("shared_pick", "mean"), sh.get("val_low_retention"), c.get("shared_floor")
    kept = pick == "floor" and keeps_floor(low, floor)
    if c.get("shared_search"):
        line = (f"One shared setting for all languages (searched as one, from the best of the per-language picks, "
                f"by {_PICK_RULE[pick]}: validation {what} mean "
                f"{sh['val_mean_gated_rate']:.2f}, worst language {sh['val_worst_gated_rate']:.2f}"
                + (f"; lowest retention {_f(low)}, floor {floor:g}{'' if kept else ' not kept'}"
                   if pick == "floor" else "") + f"): {label}")
    elif pick == "floor":
        line = (f"One shared setting for all languages (of the per-language best, the highest mean validation {what} "
                f"({sh['val_mean_gated_rate']:.2f}) "
                + (f"of those whose every language keeps retention >= {floor:g}; its lowest {_f(low)}" if kept else
                   f"of all: none keeps every language's retention >= {floor:g}; its lowest {_f(low)}")
                + f"): {label}")
    elif pick == "worst":
        line = (f"One shared setting for all languages (of the per-language best, the highest validation {what} for "
                f"the language it serves worst, {sh['val_worst_gated_rate']:.2f}; mean {sh['val_mean_gated_rate']:.2f}): "
                f"{label}")
    else:
        line = (f"One shared setting for all languages (of the per-language best, the highest mean validation {what}, "
                f"{sh['val_mean_gated_rate']:.2f}): {label}")
    options = res.meta.get("shared_options") or []
    rows = [[o["label"], f"{o['val_mean_gated_rate']:.2f}", f"{o['val_worst_gated_rate']:.2f} ({o['worst_lang']})",
             _f(o.get("val_low_retention")), _by_lang(o)] for o in options]
    head = ["mean", "worst (language)", "lowest retention", "by language"]
    out = [line, ""] + ([f"The options (each language's pick on every language; validation {what}):", "",
                         markdown_table(["setting", *head], rows).rstrip("\n"), ""]
                        if len(rows) > 1 else [])
    tried = res.meta.get("shared_search")
    if tried:
        rows = [[t["stage"], t["label"], f"{t['val_mean_gated_rate']:.2f}",
                 f"{t['val_worst_gated_rate']:.2f} ({t['worst_lang']})", _f(t.get("val_low_retention")), _by_lang(t)]
                for t in tried]
        out += [f"The shared search (--shared-search; from the best option, each stage's values on every language, "
                f"kept where it ranks higher: {_PICK_RULE[pick]}, then "
                f"NLL; validation {what}):", "",
                markdown_table(["stage", "setting", *head], rows).rstrip("\n"), ""]
    return out


# each --shared-pick's ranking, in words
_PICK_RULE = {"mean": "mean", "worst": "worst language, then mean",
              "floor": "every language's retention at the floor, then mean"}


def _by_lang(row: dict) -> str:
    """A shared option's objective per language, compactly (rows written before it was recorded: empty)."""
    return " ".join(f"{lang} {v['gated']:.2f}" for lang, v in row.get("by_lang", {}).items())


def _seeds(n: int, first: int) -> str:
    """``n`` seeds from ``first``, in words: "1 seed (1)", "3 seeds (1001..)"."""
    return f"1 seed ({first})" if n == 1 else f"{n} seeds ({first}..)"


def _answers_gate(config: dict) -> bool:
    """Whether a sweep (as recorded) is an LCB sweep with the gate from the model's answers and the pick by gated LPR."""
    return bool(config.get("lcb")) and config.get("lcb_gate") == "answers"


def _scored_on(config: dict) -> str:
    """What a sweep of ``config`` (as recorded) scored its settings on: prompts or seeds from BOS."""
    return "LCB prompts" if config.get("lcb") else "prompts" if config.get("heldout") else "seeds"


def sweep_markdown(res: SweepTables) -> str:
    settings = list(dict.fromkeys(r["setting"] for r in res.test))
    langs = list(dict.fromkeys(r["lang"] for r in res.test))
    get = {(r["lang"], r["setting"]): r for r in res.test}
    objective = "lpr_gated" if _answers_gate(res.meta["config"]) else "gated_rate"
    best = [[l, b["val"]["label"], f"{b['val'][objective]:.2f}", _f(b["val"]["retention"])]
            for l, b in res.best.items() if b.get("val")]
    tests = []
    for l in langs + ["mean"]:
        cells = []
        for s in settings:
            rs = [get[(x, s)] for x in (langs if l == "mean" else [l]) if (x, s) in get]  # none: not applicable
            cells.append(" / ".join(_f(mean_of(rs, key)) for key in
                                    ("rate", "rate_lingua", "gated_rate", "fluent", "retention", "nll")))
        tests.append([l, *cells])
    c = res.meta["config"]
    method = c.get("method", "clamp")
    if c.get("lcb"):
        protocol = (f"on the Language Confusion Benchmark's {set_words(c.get('lcb_set'))}; the model's chat template; "
                    f"{c['max_new_tokens']} tokens at temperature "
                    f"{c.get('temperature', 0.8)}). Picked on {c['val_prompts']} validation prompts per language x "
                    f"{_seeds(c['val_samples'], 1001)} by "
                    + ("gated LPR (answers passing LCB's line check and the fluency gate, the gate set from the "
                       "unsteered answers to the validation requests behind the system prompt)" if _answers_gate(c)
                       else "gated rate")
                    + f" (ties: lower NLL); then the settings on "
                    f"{c['test_prompts']} other prompts per language (other requests) x {_seeds(c['test_samples'], 1)}; "
                    f"none: the unsteered answers; system prompt: the same requests behind a system message "
                    f"asking for the language, unsteered"
                    + ("; every steered setting answers the requests behind that system message too (--lcb-system: "
                       "steering on top of prompting; retention against the system prompt's answers)"
                       if c.get("lcb_system") else "")
                    + ("; script gate: the unsteered answers sampled with the tokens whose letters fall outside the "
                       "language's scripts masked" + (" (Latin letters allowed too)" if c.get("script_gate_latin")
                                                      else "") + ", and each pick so (+ script gate)"
                       if c.get("script_gate") else ""))
    elif c.get("heldout"):
        protocol = (f"from prompts of {c['heldout']}: a setting towards a language continues the other languages' "
                    f"prompts (the off-diagonal cells of cross-steering; {c['max_new_tokens']} tokens). Picked on "
                    f"{c['val_prompts']} validation prompts per language x {_seeds(c['val_samples'], 1001)} by "
                    f"gated rate (ties: lower NLL); then the settings on {c['test_prompts']} fresh prompts per "
                    f"language x {_seeds(c['test_samples'], 1)}; none: the unsteered continuations")
    else:
        protocol = (f"from BOS: picked on validation seeds 1001.. by gated rate (ties: lower NLL); then the settings "
                    f"on fresh seeds 1..{c['test_samples']}")
    out = [f"Method {method}, best setting per language {protocol}", "",
           markdown_table(["lang", "best setting", "val gated LPR" if objective == "lpr_gated" else "val gated",
                           "val retention"], best),
           *_shared_line(res),
           "rate: lid.176 > 0.5; lingua: the second identifier; gated: target language and fluent; fluent: share of "
           "samples that pass the degeneracy gate whatever their language; retention: fluent share / the unsteered "
           "fluent share on the same seeds; NLL under the unsteered model", "",
           markdown_table(["lang", *[f"{s}: rate / lingua / gated / fluent / retention / NLL" for s in settings]],
                          tests).rstrip("\n"),
           "", *res.meta.get("notes", [])]
    out += _genre_lines(res.test, settings, langs)
    out += _own_lines(res.test, settings, langs)
    out += _genre_language_lines(res.test, settings, langs)
    lrows = lcb_rows(res.test)
    if lrows:
        out += ["", "Language confusion (LCB's metric: LPR = share of answers whose every line of 5 tokens or more "
                "lid.176 labels the language, above 0.3; gated LPR = share of all answers that pass LPR and the "
                "fluency gate; line acc = mean share of such lines; WPR (ja, zh) = share "
                "of passing answers without an English word; relevance = NLL of the answer after another request "
                "minus after its own, nats/token, under the unsteered model; on topic = share with a positive gain"
                + (f"; relevance (judge) = the same gain under the judge {res.meta['judge']['name']} (not steered; "
                   f"{_judge_words(res.meta['judge'])}), on topic (judge) its share" if res.meta.get("judge") else "")
                + "):",
                "", lcb_markdown(lrows).rstrip("\n")]
    ref = res.meta.get("reference_nll", {})
    if ref:
        out += ["", "Reference NLL of real text: " + ", ".join(f"{l} {v:.2f}" for l, v in ref.items())]
    trade = [[r["lang"], r["stage"], r["label"], _f(r["rate"]), _f(r.get("rate_lingua")), _f(r["gated_rate"]),
              _f(r.get("fluent")), _f(r.get("retention")), _f(r["nll"])] for r in res.stages]
    out += ["", f"Every setting tried (validation {_scored_on(c)}); the Pareto figure plots rate against "
            "retention:", "",
            markdown_table(["lang", "stage", "setting", "rate", "lingua", "gated", "fluent", "retention", "NLL"], trade)]
    return "\n".join(out)


def _genre_lines(test: list[dict], settings: list[str], langs: list[str]) -> list[str]:
    """A sweep on several genres: each setting's test scores genre by genre (mean over languages, and the
    lowest language's retention), so a setting's transfer across genres shows."""
    genres = list(dict.fromkeys(g for r in test for g in r.get("genres", {})))
    if not genres:
        return []
    get = {(r["lang"], r["setting"]): r for r in test}
    body = []
    for s in settings:
        cells = []
        for g in genres:
            gr = [get[(l, s)]["genres"][g] for l in langs if g in get.get((l, s), {}).get("genres", {})]
            low = min((x["retention"] for x in gr if x["retention"] is not None), default=None)
            cells.append(" / ".join(_f(mean_of(gr, k)) for k in ("rate", "gated_rate", "retention")) + f" / {_f(low)}")
        body.append([s, *cells])
    return ["", "By genre (the same settings on each genre's test prompts; mean over languages; figure genres.png): "
            "rate / gated / retention / lowest language's retention", "",
            markdown_table(["setting", *genres], body).rstrip("\n")]


def _own_lines(test: list[dict], settings: list[str], langs: list[str]) -> list[str]:
    """A sweep on held-out prompts: the model's own fluency in each language beside the retention baseline, and
    each steered setting's fluent share against it (own retention)."""
    get = {(r["lang"], r["setting"]): r for r in test}
    none = {l: get[(l, "none")] for l in langs if "own_fluent" in get.get((l, "none"), {})}
    if not none:
        return []
    steered = [s for s in settings if s != "none" and any("own_retention" in get.get((l, s), {}) for l in none)]
    body = [[l, _f(none[l]["fluent"]), _f(none[l]["own_fluent"]),
             *[" / ".join(_f(get.get((l, s), {}).get(k)) for k in ("fluent", "retention", "own_retention"))
               for s in steered]] for l in none]
    return ["", "The model's own fluency in each language (fluent share of the unsteered continuations of the "
            "test prompts written in it, under its gate) beside the retention baseline (the unsteered continuations "
            "of the other languages' prompts); each setting's fluent / retention / own retention (fluent share over "
            "the model's own):", "",
            markdown_table(["lang", "unsteered, other prompts", "unsteered, own prompts",
                            *[f"{s}: fluent / retention / own" for s in steered]], body).rstrip("\n")]


def _genre_language_lines(test: list[dict], settings: list[str], langs: list[str]) -> list[str]:
    """A sweep on several genres: each language on each genre, the unsteered fluent share of the other
    languages' prompts (retention's baseline) beside the model's own text in the language (its ceiling), then
    each steered setting's rate / retention / own retention, so a genre's weak language shows whether steering
    or the model's own fluency in the language limits it."""
    genres = list(dict.fromkeys(g for r in test for g in r.get("genres", {})))
    get = {(r["lang"], r["setting"]): r for r in test}
    if not genres or not any("own_fluent" in get.get((l, "none"), {}).get("genres", {}).get(g, {})
                             for l in langs for g in genres):
        return []
    body = []
    for s in settings:
        for l in langs:
            gs = get.get((l, s), {}).get("genres", {})
            if not gs:
                continue
            keys = ("fluent", "own_fluent") if s == "none" else ("rate", "retention", "own_retention")
            body.append([s, l, *[" / ".join(_f(gs.get(g, {}).get(k)) for k in keys) for g in genres]])
    return ["", "By genre and language: none gives the unsteered fluent share of the other languages' prompts "
            "(retention's baseline) / of the language's own prompts (the model's own text in it); each steered "
            "setting its rate / retention / own retention (fluent share over the model's own text of the genre):",
            "", markdown_table(["setting", "lang", *genres], body).rstrip("\n")]


def write_sweep(res: SweepTables, out: str | Path) -> None:
    from ...report import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.md", sweep_markdown(res))
    atomic_write_json(out / "sweep.json", {"best": res.best, "stages": res.stages, "test": res.test, "meta": res.meta})
    plots.pareto(res.stages, out / "tradeoff.png", title=f"{res.meta['config'].get('method', 'clamp')}: target rate "
                 f"against fluency retention, one point per setting (validation {_scored_on(res.meta['config'])})")
    if any(r.get("genres") for r in res.test):  # a sweep on several genres: the test settings genre by genre
        plots.genres(res.test, out / "genres.png", title=f"{res.meta['config'].get('method', 'clamp')}: test prompts by "
                     "genre, target rate against fluency retention (small: a language; large: the mean)")


def _judge_words(judge: dict) -> str:
    """What a sweep's judge measured, for the LCB table's legend."""
    kind = judge.get("kind")
    if kind == "model":
        return "its NLL of the answer's text after the request through its own chat template"
    if kind == "encoder":
        return "cosine of request and answer, multilingual sentence encoder"
    return "word overlap of request and answer"
