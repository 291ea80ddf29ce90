"""A relevance judge validated on LCB's published completions: the answers other models gave to LCB's requests
(the benchmark repository's ``outputs/*.csv``, columns ``id,model,completion,task,source,language``), each scored
against its own request and against another request of the same language and set; the ROC AUC of own against
other says how well a judge tells an answer's request apart (0.5: not at all).

``id`` is the row of the request in the set's file (0-based: the published ``crosslingual/okapi`` answer ``id`` 7
in ``fr`` answers row 7 of ``test_sets/crosslingual/okapi/fr.csv``); ``task`` and ``source`` name the set.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import LangNeuronsError
from .judge import CachedJudge, Judge, roc_auc
from .lcb_data import LCB_SETS, load_lcb_prompts

# (task, source) as the published files name them -> the set's name here
PUBLISHED_SETS = {("crosslingual", "okapi"): "crosslingual/okapi", ("crosslingual", "sharegpt"): "crosslingual/sharegpt",
                  ("crosslingual", "complex_prompts"): "crosslingual/complex_prompts",
                  ("monolingual", "okapi"): "monolingual/okapi", ("monolingual", "native_prompts"): "monolingual/native",
                  ("monolingual", "aya_human_annotated"): "monolingual/aya",
                  ("monolingual", "dolly_human_edited"): "monolingual/dolly"}
COLUMNS = ("id", "model", "completion", "task", "source", "language")


@dataclass(frozen=True)
class JudgedPair:
    """One published answer with its own request and another request of its language and set."""

    lcb_set: str
    language: str
    model: str
    id: int
    answer: str
    own: str
    other: str


def read_published(text: str, where: str = "published completions") -> list[dict]:
    """The rows of one published completions file (its CSV text), their columns checked."""
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if not rows or any(c not in rows[0] for c in COLUMNS):
        raise LangNeuronsError(f"{where}: not LCB's published completions (columns {','.join(COLUMNS)})")
    return rows


def published_pairs(rows: Iterable[dict], sets: Sequence[str], per_cell: int, seed: int = 0,
                    languages: Sequence[str] | None = None) -> list[JudgedPair]:
    """Up to ``per_cell`` non-empty answers of each (set, language) of ``sets`` (the set's names,
    ``crosslingual/okapi``), drawn by ``seed`` among every model's, each with its own request (the row ``id`` of the
    set's file) and another request of the set in that language: drawn among the other requests' rows with the same
    location (where the language instruction sits), so the two differ in what they ask, not in how."""
    unknown = [s for s in sets if s not in LCB_SETS]
    if unknown:
        raise LangNeuronsError(f"unknown LCB set(s) {', '.join(unknown)}; the sets are {', '.join(LCB_SETS)}")
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        name = PUBLISHED_SETS.get((r["task"], r["source"]))
        if name in sets and (languages is None or r["language"] in languages) and r["completion"].strip():
            cells.setdefault((name, r["language"]), []).append(r)
    out = []
    for (name, lang), rs in sorted(cells.items()):
        if lang not in LCB_SETS[name]:
            continue
        prompts = load_lcb_prompts([lang], lcb_set=name)
        rng = random.Random(f"{seed}-{name}-{lang}")
        rs = sorted((r for r in rs if int(r["id"]) < len(prompts)), key=lambda r: (r["model"], int(r["id"])))
        for r in rng.sample(rs, min(per_cell, len(rs))):
            own = prompts[int(r["id"])]
            others = [p for p in prompts if p.request != own.request]
            alike = [p for p in others if p.location == own.location] or others
            out.append(JudgedPair(name, lang, r["model"], int(r["id"]), r["completion"], own.prompt,
                                  rng.choice(alike).prompt))
    return out


def judge_pairs(judge: Judge | CachedJudge, pairs: Sequence[JudgedPair]) -> tuple[list[float], list[float]]:
    """Each pair's score against its own request and against the other (:meth:`Judge.score`)."""
    n = len(pairs)
    s = judge.score([p.own for p in pairs] + [p.other for p in pairs], [p.answer for p in pairs] * 2)
    return s[:n], s[n:]


def auc_by_language(pairs: Sequence[JudgedPair], own: Sequence[float], other: Sequence[float]) -> dict[str, float]:
    """The ROC AUC of own against other (:func:`~.judge.roc_auc`) per language and over all (``all``); pairs with a
    nan score left out."""
    keep = [(p.language, a, b) for p, a, b in zip(pairs, own, other) if a == a and b == b]
    out = {}
    for lang in sorted({k for k, _, _ in keep}):
        out[lang] = roc_auc([a for k, a, _ in keep if k == lang], [b for k, _, b in keep if k == lang])
    out["all"] = roc_auc([a for _, a, _ in keep], [b for _, _, b in keep])
    return out
