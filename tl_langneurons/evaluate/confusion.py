"""Language confusion (Marchisio et al. 2024): an instruction model asked in English to answer in another
language answers in English. ``sweep --lcb`` searches steering settings on the Language Confusion
Benchmark's cross-lingual prompts and reports LCB's line-level pass rate beside quality; this module holds
what that adds to the sweep: the prompts through the chat template, the system-prompt baseline, the
scores of one cell, and the table that puts several methods' sweeps side by side (``lcb`` command).

Answer relevance is measured offline by the unsteered model itself: the mean per-token NLL of an answer
after another request of the same language (same phrasing) minus after its own request. An answer tied
to its request is likelier after it (positive); a generic or derailed answer scores about zero. It is a
proxy: the judge is the model being steered, and an answer that repeats the request's words scores high.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import LangNeuronsError
from ..model.load import model_name, weights_fingerprint
from ..model.protocol import HookedModel
from ..provenance import atomic_write_json, atomic_write_text
from ..results import check_target, read_json, staged_folder
from ..steer.generation import Sample, sample_nll
from ..steer.prompts import chat_ids
from ..tables import csv_text, dashed as _f, markdown_table
from .lcb import lcb_metrics, line_pass
from .lcb_data import (DEFAULT_SET, LCB_SETS, is_monolingual, load_lcb_prompts, set_languages, split_by_prompts,
                       whole_requests)
from .metrics import is_degenerate

if TYPE_CHECKING:
    from .samples import SampleStore

LANGUAGE_NAMES = {"ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French", "hi": "Hindi",
                  "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "pt": "Portuguese",
                  "ru": "Russian", "tr": "Turkish", "vi": "Vietnamese", "zh": "Chinese"}  # LCB's languages, as its prompts name them
SYSTEM_PROMPT = "You are a helpful assistant. Always answer in {name}, whatever the language of the request."
SPLIT_SEED = 0
BEHIND = " + system prompt"  # the lcb table's suffix of the rows of an --lcb-system sweep
GATED = " + script gate"  # the suffix of a steered row whose answers were sampled under the script gate
SCRIPT_GATE = "script gate"  # the row of the unsteered answers sampled under the script gate (--script-gate)
FIRST_FIVE = ("de", "es", "fr", "ja", "zh")  # the okapi languages shipped first: the default order of a sweep's targets


def lcb_languages(languages: Sequence[str] | None, known: Sequence[str], lcb_set: str = DEFAULT_SET) -> list[str]:
    """The target languages of an LCB sweep on ``lcb_set``: those asked for (each one of the set's and of the
    neurons'), else every language of the set the neurons know (de es fr ja zh first, in that order, as before
    the other nine were read); one clear line otherwise."""
    have = set_languages(lcb_set)
    if languages:
        bad = [l for l in languages if l not in have]
        if bad:
            raise LangNeuronsError(f"--lcb: LCB's {lcb_set} asks for {', '.join(have)}; not {', '.join(bad)}")
        nameless = [l for l in languages if l not in LANGUAGE_NAMES]
        if nameless:
            raise LangNeuronsError(f"--lcb: no language name for the system prompt of {', '.join(nameless)} (LCB's "
                                   f"languages are {', '.join(LANGUAGE_NAMES)})")
        return list(languages)
    ordered = [l for l in FIRST_FIVE if l in have] + [l for l in have if l not in FIRST_FIVE]
    out = [l for l in ordered if l in known and l in LANGUAGE_NAMES]
    if not out:
        raise LangNeuronsError(f"--lcb: the neurons know none of the languages of LCB's {lcb_set} "
                               f"({', '.join(have)}); they know {', '.join(known)}")
    return out


def lcb_left_out(languages: Sequence[str] | None, known: Sequence[str], lcb_set: str = DEFAULT_SET) -> list[str]:
    """The target languages of ``lcb_set`` an LCB sweep leaves out when none are asked for (``languages`` None):
    those the neurons do not know (what :func:`lcb_languages` drops, said in the sweep's notes)."""
    if languages:
        return []
    taken = lcb_languages(None, known, lcb_set)
    return [l for l in set_languages(lcb_set) if l not in taken]


def set_source(lcb_set: str | None) -> str:
    """Where an LCB set's prompts come from, as a sweep records it (``meta.prompts.lcb``)."""
    lcb_set = lcb_set or DEFAULT_SET
    if lcb_set in LCB_SETS:
        return f"for-ai/language-confusion test_sets/{lcb_set} (tl_langneurons/data/lcb/test_sets.zip)"
    return f"{lcb_set} (a folder of LCB-format files)"


def set_words(lcb_set: str | None) -> str:
    """An LCB set's requests in words, for the tables: ``cross-lingual okapi requests (asked in English to answer
    in the language``."""
    lcb_set = lcb_set or DEFAULT_SET
    kind, _, name = lcb_set.partition("/")
    if lcb_set in LCB_SETS and kind == "crosslingual":
        return f"cross-lingual {name} requests (asked in English to answer in the language"
    if lcb_set in LCB_SETS:
        return f"monolingual {name} requests (asked in the language to answer in it"
    return f"requests of {lcb_set} (LCB's format"


def lcb_split(langs: Sequence[str], n_val: int, n_test: int, lcb_set: str = DEFAULT_SET) -> dict:
    """``{lang: (validation, test)}``: each language's prompts of ``lcb_set``, whole requests apart
    (:func:`~tl_langneurons.evaluate.lcb_data.split_by_prompts`; a last request cut short by the end of its file
    left out), ``n_val`` and ``n_test`` prompts. Reads CSV files only: run before the model loads, its errors are
    the sweep's."""
    out = {}
    for lang in langs:
        prompts = whole_requests(load_lcb_prompts([lang], lcb_set=lcb_set))  # okapi: less row 99 (one phrasing)
        out[lang] = split_by_prompts(prompts, n_val, n_test, seed=SPLIT_SEED, what=f"LCB's {lcb_set}")
    return out


def lcb_prompts(tokenizer, langs: Sequence[str], n_val: int, n_test: int, lcb_set: str = DEFAULT_SET) -> dict:
    """``{"val": {lang: ids}, "test": {lang: ids}, "system": {lang: ids}, "system_val": {lang: ids}, "requests":
    {...}, "monolingual": bool}``: each target language's validation and test prompts of ``lcb_set`` (whole requests apart,
    :func:`lcb_split`) through the chat template, the test and the validation
    prompts again behind a system message that asks for the language (prompting alone; the model's answers to
    the validation ones set the fluency gate of an LCB sweep), and their texts (what the results record)."""
    out: dict = {"val": {}, "test": {}, "system": {}, "system_val": {}, "requests": {"val": {}, "test": {}}}
    split = lcb_split(langs, n_val, n_test, lcb_set)
    out["monolingual"] = any(is_monolingual(v + t) for v, t in split.values())
    for lang, (val, test) in split.items():
        system = SYSTEM_PROMPT.format(name=LANGUAGE_NAMES[lang])
        out["val"][lang] = [chat_ids(tokenizer, p.prompt) for p in val]
        out["test"][lang] = [chat_ids(tokenizer, p.prompt) for p in test]
        out["system"][lang] = [chat_ids(tokenizer, p.prompt, system=system) for p in test]
        out["system_val"][lang] = [chat_ids(tokenizer, p.prompt, system=system) for p in val]  # the LCB gate's
        out["requests"]["val"][lang] = [p.prompt for p in val]
        out["requests"]["test"][lang] = [p.prompt for p in test]
    return out


def gated_lpr(rows: Sequence[dict], lang: str, threshold: float) -> dict:
    """What an LCB sweep picks settings by: ``lpr_gated``, the share of answers that pass LCB's line check
    (every line of 5 tokens or more in ``lang``) and the fluency gate (distinct-token ratio at least
    ``threshold``); answers LCB skips (no line of 5 tokens) count as failing. Beside it LCB's own ``lpr``
    (scored answers only)."""
    passes = [line_pass(r["text"], lang) for r in rows]
    ok = [p is True and not is_degenerate(r["tokens"], threshold) for p, r in zip(passes, rows)]
    scored = [p for p in passes if p is not None]
    return {"lpr_gated": sum(ok) / len(rows) if rows else 0.0,
            "lpr": sum(scored) / len(scored) if scored else 1.0}


def lcb_quality(model: HookedModel, rows: Sequence[dict], prompts: Sequence[Sequence[int]], lang: str,
                per_prompt: int, store: "SampleStore | None" = None) -> dict:
    """LCB's scores of one cell's answers (``rows``: ``per_prompt`` answers of each of ``prompts`` in turn)
    and the relevance proxy: ``lpr`` (line-level pass rate), ``lcb_acc`` (mean share of lines in the language),
    ``wpr`` (word-level pass rate, ar hi ja ko ru zh), ``relevance`` (mean NLL gain of an answer after its own request
    over another request of the language, nats per token) and ``on_topic`` (share of answers with a gain).
    ``store``: the answers' NLL after the other requests is kept there (keyed by the model's weights and the
    token sequences), so a rerun of a sweep scores nothing again."""
    texts = [r["text"] for r in rows]
    m = lcb_metrics(texts, lang)
    out = {"lpr": m["lpr"], "lcb_acc": m["acc"], "wpr": m.get("wpr"), "lcb_scored": m["n_scored"],
           "relevance": None, "on_topic": None}
    n_prompts = len(prompts)
    # the prompt 3 on is always another request (a request has at most 3 phrasings; okapi: the same phrasing)
    if n_prompts < 6 or len(rows) != n_prompts * per_prompt:
        return out
    other = [list(prompts[(i // per_prompt + 3) % n_prompts]) for i in range(len(rows))]
    samples = [Sample(seed=0, tokens=list(r["tokens"]), text=r["text"], prompt=p) for r, p in zip(rows, other)]
    away = _away_nll(model, samples, store)
    gains = [a - r["nll"] for a, r in zip(away, rows) if a == a and r.get("nll") is not None and r["nll"] == r["nll"]]
    if gains:
        out["relevance"] = sum(gains) / len(gains)
        out["on_topic"] = sum(g > 0 for g in gains) / len(gains)
    return out


def _away_nll(model: HookedModel, samples: list[Sample], store: "SampleStore | None") -> list[float]:
    """Each sample's NLL per token after its (other) prompt, read from ``store`` when it was scored before by the
    same weights."""
    def make() -> dict:
        return {"nll": sample_nll(model, samples)}
    if store is None:
        return make()["nll"]
    seqs = json.dumps([[list(s.prompt), list(s.tokens)] for s in samples])
    key = {"model": model_name(model), "weights_sha": weights_fingerprint(model),
           "sequences_sha": hashlib.sha256(seqs.encode()).hexdigest()[:32], "n": len(samples)}
    return [float(x) for x in store.memo("relevance-nll", key, make)["nll"]]


LCB_COLUMNS = ("lpr", "lpr_gated", "lcb_acc", "wpr", "rate", "gated_rate", "fluent", "retention", "nll", "relevance",
               "on_topic", "relevance_judge", "on_topic_judge")
LCB_HEADERS = ("LPR", "gated LPR", "line acc", "WPR", "rate", "gated", "fluent", "retention", "NLL", "relevance",
               "on topic", "relevance (judge)", "on topic (judge)")
JUDGE_COLUMNS = ("relevance_judge", "on_topic_judge")  # shown where a judge scored (sweep --lcb --judge)
LCB_GATE_SEEDS = tuple(range(2001, 2011))  # answers per system-prompted validation request that set an LCB gate


def lcb_rows(test: Sequence[dict]) -> list[dict]:
    """The LCB rows of a sweep's test table (those that carry ``lpr``)."""
    return [{"lang": r["lang"], "setting": r["setting"], **{k: r.get(k) for k in LCB_COLUMNS},
             "lcb_scored": r.get("lcb_scored"), "label": r.get("label")} for r in test if "lpr" in r]


# LCB's rates over its scored answers: with none scored the metric gives 1.0, which is no measurement
SCORED_ONLY = ("lpr", "lcb_acc", "wpr")


def _shown(row: dict, key: str):
    """A row's value as the table shows it: None for LCB's rates where no answer was scored."""
    return None if key in SCORED_ONLY and row.get("lcb_scored") == 0 else row.get(key)


def lcb_markdown(rows: Sequence[dict]) -> str:
    """One table: a line per setting, a column group per measure, languages averaged (mean) and each
    language's LPR beside it. Where LCB scored no answer (none has a line of 5 tokens or more) its rates
    show "-" (not the 1.0 its metric gives), with a note under the table."""
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    get = {(r["lang"], r["setting"]): r for r in rows}
    judged = any(r.get(k) is not None for r in rows for k in JUDGE_COLUMNS)
    cols = [(k, h) for k, h in zip(LCB_COLUMNS, LCB_HEADERS) if judged or k not in JUDGE_COLUMNS]
    body = []
    for s in settings:
        rs = [get[(l, s)] for l in langs if (l, s) in get]
        mean = {k: _mean([_shown(r, k) for r in rs]) for k, _ in cols}
        body.append([s, *(_f(mean[k]) for k, _ in cols), *(_f(_shown(get[(l, s)], "lpr")) if (l, s) in get
                                                          else "-" for l in langs)])
    table = markdown_table(["setting", *(f"{h} (mean)" for _, h in cols), *(f"LPR {l}" for l in langs)], body)
    unscored: dict[str, list[str]] = {}
    for r in rows:
        if r.get("lcb_scored") == 0:
            unscored.setdefault(r["setting"], []).append(r["lang"])
    if unscored:
        table += ("\nLPR, line acc and WPR `-`: LCB scored none of the answers (it scores lines of 5 tokens or more; "
                  "too few --max-new-tokens leave none), so there is no pass rate (LCB's metric gives 1.00 then); "
                  "the means are over the languages scored. Unscored: "
                  + "; ".join(f"{s} ({', '.join(ls)})" for s, ls in unscored.items()) + ".\n")
    return table


def _mean(xs: Sequence) -> float | None:
    xs = [x for x in xs if x is not None and x == x]
    return sum(xs) / len(xs) if xs else None


def lcb_csv(rows: Sequence[dict]) -> str:
    fields = ["lang", "setting", *LCB_COLUMNS, "lcb_scored"]
    return csv_text(fields, [{k: r.get(k) for k in fields} for r in rows])


LCB_SWEEP_FIELDS = {
    "meta": ("object",), "meta.config": ("object",), "test": ("list",), "test.[]": ("object",),
    "test.[].lang": ("string",), "test.[].setting": ("string",), "test.[].label": ("string", "null"),
    **{f"test.[].{k}": ("number", "null") for k in LCB_COLUMNS}, "test.[].lcb_scored": ("integer", "null"),
    "meta.config.method": ("string", "null"), "meta.config.lcb_system": ("bool", "null"),
    "meta.config.lcb_set": ("string", "null"), "meta.config.judge": ("string", "null"),
    "meta.judge": ("object", "null"), "meta.judge.name": ("string", "null"),
    "meta.judge.fingerprint": ("string", "null"), "meta.config.script_gate": ("bool", "null"),
    "meta.config.script_gate_latin": ("bool", "null"),
    **{f"meta.config.{k}": ("integer", "null") for k in ("val_prompts", "test_prompts", "test_samples", "max_new_tokens")},
    "meta.config.temperature": ("number", "null"),
    # what the sweep was made on (sweeps before these were recorded: null)
    "meta.model": ("string", "null"), "meta.sites": ("string", "null"), "meta.ap_sha": ("string", "null"),
    "meta.neurons_meta": ("object", "null"), "meta.neurons_meta.weights_sha": ("string", "null"),
    "meta.neurons_meta.method": ("string", "null"), "meta.neurons_meta.k": ("integer", "null"),
}


def read_lcb_sweep(folder: str | Path) -> dict:
    """A finished ``sweep --lcb`` folder's ``sweep.json``, its fields checked; one clear line when it is not
    one (missing, damaged, or a sweep from BOS or on held-out prompts)."""
    f = Path(folder) / "sweep.json"
    if not f.is_file():
        raise LangNeuronsError(f"{folder} holds no finished sweep (no sweep.json); run sweep --lcb there first")
    data = read_json(f, LCB_SWEEP_FIELDS, "run the sweep again")
    cfg = data["meta"]["config"]
    if not cfg.get("lcb"):
        raise LangNeuronsError(f"{folder} is a sweep on {'held-out prompts' if cfg.get('heldout') else 'BOS'}, "
                               "not on LCB's prompts; run sweep --lcb")
    return data


def gather_lcb(sweeps: Sequence[dict]) -> list[dict]:
    """The LCB rows of finished ``sweep --lcb`` results (:func:`read_lcb_sweep`), each method's picks named by
    method (``+ system prompt`` when steered behind it, ``--lcb-system``); the unsteered, system-prompt and
    paper-clamp rows once (every sweep measures them on the same answers), the paper's clamp behind the system
    prompt apart. The rows under the script gate (``--script-gate``) keep their name (``script gate``, ``... +
    script gate``), ``(Latin allowed)`` after it where the gate let Latin letters through."""
    rows, seen = [], set()
    for data in sweeps:
        cfg = data["meta"]["config"]
        method, behind = cfg.get("method", "clamp"), BEHIND if cfg.get("lcb_system") else ""
        latin = " (Latin allowed)" if cfg.get("script_gate_latin") else ""
        for r in lcb_rows(data["test"]):
            name, gated = r["setting"], ""
            if name.endswith(GATED):
                name, gated = name[:-len(GATED)], GATED + latin
            if name == SCRIPT_GATE:
                name += latin
            elif name.startswith(("best ", "shared ")):
                name = f"{name.split()[0]} {method}{behind}"
            elif name not in ("none", "system prompt"):  # the paper's clamp and the user's own settings
                name += behind
            name += gated
            key = (r["lang"], name)
            if key in seen:
                continue
            seen.add(key)
            rows.append({**r, "setting": name})
    return rows


@dataclass
class LCBTable:
    """Every LCB sweep of a neurons folder in one table: the unsteered answers, the system prompt, the paper's
    clamp and each method's per-language (best) and shared picks, on the same test requests and seeds."""

    rows: list[dict]
    sweeps: list[str]
    meta: dict = field(default_factory=dict)

    def markdown(self) -> str:
        behind = any(r["setting"].endswith(BEHIND) for r in self.rows)
        words = set_words(self.meta.get("config", {}).get("lcb_set")).split(" (")[0]
        return (f"Language confusion on LCB's {words}; sweeps: {', '.join(self.sweeps)}\n\n"
                + lcb_markdown(self.rows)
                + ("\nRetention: against the unsteered answers to the same requests, so the system prompt's is against "
                   f"none's and the rows ending{BEHIND} are against the system prompt's.\n" if behind else "")
                + (f"\n{SCRIPT_GATE}: a decoding-time baseline, not the fluency gate: the tokens whose letters fall "
                   "outside the language's scripts are masked at every sampled step (digits, punctuation, symbols and "
                   "code stay allowed); its rows' retention is against the ungated answers to the same requests.\n"
                   if any(SCRIPT_GATE in r["setting"] for r in self.rows) else ""))

    def save(self, out: str | Path) -> list[Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "lcb.md", out / "lcb.csv", out / "lcb.json"]
        atomic_write_text(paths[0], self.markdown())
        atomic_write_text(paths[1], lcb_csv(self.rows))
        atomic_write_json(paths[2], {"rows": self.rows, "sweeps": self.sweeps, "meta": self.meta})
        return paths


def set_slug(lcb_set: str | Path | None) -> str:
    """An LCB set in a folder name: '' for the default (okapi's folders stay ``lcb-METHOD``), else the set with
    ``-`` for ``/`` (``crosslingual-sharegpt``) or a folder's name."""
    lcb_set = str(lcb_set or DEFAULT_SET)
    if lcb_set == DEFAULT_SET:
        return ""
    return lcb_set.replace("/", "-") if lcb_set in LCB_SETS else Path(lcb_set).name


def _same_set(a: str | None, b: str | None) -> bool:
    a, b = str(a or DEFAULT_SET), str(b or DEFAULT_SET)
    if a in LCB_SETS or b in LCB_SETS:
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def lcb_sweeps(directory: str | Path, lcb_set: str | None = None) -> list[Path]:
    """The ``sweep --lcb`` folders (``lcb-METHOD``, ``lcb-system-METHOD``; on other sets ``lcb-SET-METHOD``) of a
    neurons folder that finished on ``lcb_set`` (default crosslingual/okapi; sweeps that recorded no set are okapi's)."""
    import json

    out = []
    for p in sorted(Path(directory).glob("lcb-*")):
        if not (p / "sweep.json").is_file():
            continue
        try:
            made_on = json.loads((p / "sweep.json").read_text(encoding="utf-8"))["meta"]["config"].get("lcb_set")
        except (ValueError, KeyError, TypeError, AttributeError):
            made_on = None  # read_lcb_sweep says what is wrong with it
        if _same_set(made_on, lcb_set):
            out.append(p)
    return out


def lcb_table(directory: str | Path, folders: Sequence[str | Path] | None = None, lcb_set: str | None = None,
              judge: str | None = None) -> LCBTable:
    """The LCB table of ``folders`` (default: every finished ``lcb-*`` sweep in ``directory`` on ``lcb_set``,
    default crosslingual/okapi); refused when there is none, when they were made on other models or neurons, or on
    other requests, sets, seeds, generation settings or relevance judges (not comparable). ``judge``: the
    independent judge the sweeps' relevance (judge) column must come from (``sweep --lcb --judge``)."""
    folders = [Path(f) for f in folders] if folders else lcb_sweeps(directory, lcb_set)
    if not folders:
        others = lcb_sweeps_any(directory)
        raise LangNeuronsError(f"{directory} holds no finished LCB sweep on {lcb_set or DEFAULT_SET}"
                               + (f" (it has {', '.join(p.name for p in others)}: name their set with --lcb-set)"
                                  if others else "")
                               + f"; run e.g. tl-langneurons sweep --neurons {directory} --lcb --method add first")
    same = ("val_prompts", "test_prompts", "test_samples", "max_new_tokens", "temperature", "languages", "lcb_gate",
            "lcb_set", "judge")
    sweeps = [read_lcb_sweep(f) for f in folders]
    if judge is not None:
        for f, data in zip(folders, sweeps):
            if data["meta"]["config"].get("judge") != judge:
                made = data["meta"]["config"].get("judge")
                raise LangNeuronsError(f"{f} was {'judged by ' + made if made else 'made without a judge'}, not "
                                       f"{judge}: rerun it with sweep --lcb ... --judge {judge} --overwrite (its answers "
                                       "come from the sample store; only the judge runs)")
    for f, data in zip(folders[1:], sweeps[1:]):
        _same_neurons(folders[0], sweeps[0], f, data)
    if (Path(directory) / "neurons.json").exists():  # the table is written into these neurons' folder
        mine = _neurons_made_on(directory)
        for f, data in zip(folders, sweeps):
            _same_neurons(Path(directory), mine, f, data)
    seen = None
    for f, data in zip(folders, sweeps):
        these = {k: data["meta"]["config"].get(k) for k in same}
        these["lcb_gate"] = these["lcb_gate"] or "references"  # sweeps made before the answers gate existed
        these["lcb_set"] = these["lcb_set"] or DEFAULT_SET  # sweeps made before other sets were read: okapi
        if seen is not None and these != seen[1]:
            diff = [k for k in same if these[k] != seen[1][k]]
            raise LangNeuronsError(f"{f} and {seen[0]} were made with different {', '.join(diff)}: their LCB rows "
                                   "are not on the same answers; sweep them alike")
        seen = (f, these)
    return LCBTable(gather_lcb(sweeps), [str(f) for f in folders], {"config": seen[1]})


def lcb_sweeps_any(directory: str | Path) -> list[Path]:
    """Every finished ``lcb-*`` sweep of a neurons folder, on any set."""
    return sorted(p for p in Path(directory).glob("lcb-*") if (p / "sweep.json").is_file())


def _made_on(data: dict) -> dict:
    """What an LCB sweep (its ``sweep.json``) was made on: the model, its weights fingerprint, the sites and
    the neurons (the hash of their AP, the method that selected them, k); None where not recorded."""
    meta = data["meta"]
    found = meta.get("neurons_meta") or {}
    return {"model": meta.get("model"), "weights fingerprint": found.get("weights_sha"), "sites": meta.get("sites"),
            "neurons (AP hash)": meta.get("ap_sha"), "neuron method": found.get("method", "ap") if found else None,
            "k": found.get("k")}


def _neurons_made_on(directory: str | Path) -> dict:
    """What the neurons in ``directory`` are, in the shape of an LCB sweep's ``sweep.json`` (for :func:`_made_on`)."""
    import hashlib

    from ..detect.neurons_io import load_fields

    fields = load_fields(directory)
    meta = {k: v for k, v in fields["meta"].items() if k != "timings"}
    return {"meta": {"model": meta.get("model"), "sites": fields["index"].spec, "neurons_meta": {**meta, "k": fields["k"]},
                     "ap_sha": hashlib.sha256(fields["ap"].numpy().tobytes()).hexdigest()[:16]}}


def _same_neurons(first: Path, a: dict, other: Path, b: dict) -> None:
    """Refuse two sweeps made on other models or neurons: their rows would sit in one table as if of one model.
    What either did not record is not compared; one model under two names (the same weights fingerprint) is
    the same model."""
    x, y = _made_on(a), _made_on(b)
    diff = [k for k in x if x[k] is not None and y[k] is not None and x[k] != y[k]]
    if x["weights fingerprint"] and x["weights fingerprint"] == y["weights fingerprint"] and "model" in diff:
        diff.remove("model")
    if diff:
        raise LangNeuronsError(f"{other} and {first} were made on different models or neurons ("
                               + "; ".join(f"{k} {y[k]} vs {x[k]}" for k in diff)
                               + "): their LCB rows do not belong in one table; give the sweeps of one neurons folder")


def write_lcb_table(table: LCBTable, out: str | Path, overwrite: bool = False) -> list[Path]:
    """``table`` written into ``out`` as a whole (the folder of another table is refused unless ``overwrite``)."""
    settings = {"sweeps": table.sweeps}
    check_target(Path(out), "lcb", settings, overwrite)
    with staged_folder(out, "lcb", settings) as stage:
        names = [p.name for p in table.save(stage)]
    return [Path(out) / n for n in names]
