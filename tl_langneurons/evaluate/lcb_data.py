"""The Language Confusion Benchmark's test sets (Marchisio et al. 2024): every set of its repository ships with
the package (``data/lcb/test_sets.zip``, the repository's archive unchanged), read by name, or any folder of
``<lang>.csv`` files in LCB's format; the prompts grouped into requests and split into validation and test by
whole requests.

Two kinds of set:

- **cross-lingual** (``crosslingual/okapi``, ``crosslingual/sharegpt``, ``crosslingual/complex_prompts``): a
  request written in English that asks for an answer in the file's language, phrased several times (columns
  ``prompt,location,phrasing,language,source``; ``location`` says where the language instruction sits:
  ``Start``, ``Middle``, ``End``). A request is a ``Start`` row and the rows after it up to the next ``Start``,
  their locations in that order, each at most once: okapi has 33 requests of 3 phrasings and a last one of 1
  (its file stops at row 100), sharegpt 38 of 2 (Start, End) and 8 of 3, complex_prompts 33 of 3;
- **monolingual** (``monolingual/aya``, ``monolingual/dolly``, ``monolingual/native``, ``monolingual/okapi``): a
  request written in the file's language, to be answered in it (columns ``prompt,source,language``); each row
  is a request of its own (100 a file).
"""

from __future__ import annotations

import csv
import io
import random
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

from ..errors import LangNeuronsError

LCB_LANGUAGES = ("ar", "de", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "ru", "tr", "vi", "zh")  # cross-lingual targets
DEFAULT_SET = "crosslingual/okapi"
LCB_SETS = {  # the shipped sets and their languages (the files of test_sets.zip)
    "crosslingual/okapi": LCB_LANGUAGES,
    "crosslingual/sharegpt": LCB_LANGUAGES,
    "crosslingual/complex_prompts": LCB_LANGUAGES,
    "monolingual/aya": ("ar", "en", "pt", "tr", "zh"),
    "monolingual/dolly": ("ar", "es", "fr", "hi", "ru"),
    "monolingual/native": ("es", "fr", "ja", "ko"),
    "monolingual/okapi": ("ar", "de", "en", "es", "fr", "id", "it", "pt", "vi", "zh"),
}
LOCATIONS = ("Start", "Middle", "End")  # where a cross-lingual prompt's language instruction sits, in a request's order
ARCHIVE = "test_sets.zip"
_CROSS = ("prompt", "location", "phrasing", "language")
_MONO = ("prompt", "language")


@dataclass(frozen=True)
class LCBPrompt:
    """One row of an LCB file: the prompt, where (``location``) and how (``phrasing``) it names the language
    (None in a monolingual set), ``index`` the row in the file (0-based) and ``request`` the request it phrases
    (0-based, in file order; a monolingual row is a request of its own)."""

    language: str
    prompt: str
    location: str | None
    phrasing: str | None
    index: int
    request: int


def _data_root():
    return resources.files("tl_langneurons").joinpath("data/lcb")


@lru_cache(maxsize=1)
def _archive() -> dict[str, bytes]:
    """The shipped archive's CSV members by path (``crosslingual/okapi/de.csv``)."""
    with resources.as_file(_data_root().joinpath(ARCHIVE)) as path, zipfile.ZipFile(path) as z:
        return {n.removeprefix("test_sets/"): z.read(n) for n in z.namelist() if n.endswith(".csv")}


def is_folder_set(lcb_set: str | Path) -> bool:
    """Whether ``lcb_set`` names a folder of CSV files rather than one of the shipped sets."""
    return str(lcb_set) not in LCB_SETS


def set_languages(lcb_set: str | Path = DEFAULT_SET) -> tuple[str, ...]:
    """The languages of a set: a shipped set's, or those a folder has a ``<lang>.csv`` for; one clear line for
    a name that is neither."""
    if not is_folder_set(lcb_set):
        return LCB_SETS[str(lcb_set)]
    folder = Path(lcb_set)
    if not folder.is_dir():
        raise LangNeuronsError(f"LCB set {str(lcb_set)!r}: neither a shipped set ({', '.join(LCB_SETS)}) nor a "
                               "folder of <lang>.csv files")
    return tuple(sorted(p.stem for p in folder.glob("*.csv")))


def load_lcb_prompts(languages: Sequence[str] | str | None = None, folder: str | Path | None = None,
                     lcb_set: str | Path = DEFAULT_SET) -> list[LCBPrompt]:
    """The prompts of ``languages`` (default: every language of the set), in file order, from a shipped set (``lcb_set``, default
    ``crosslingual/okapi``) or a folder of ``<lang>.csv`` files in LCB's format (``folder``, or a path as
    ``lcb_set``, e.g. an unzipped ``test_sets/crosslingual/sharegpt``)."""
    if folder is not None:
        lcb_set = folder
    if isinstance(languages, str):
        languages = (languages,)
    if languages is None:
        languages = set_languages(lcb_set)
    out: list[LCBPrompt] = []
    if not is_folder_set(lcb_set):
        have = LCB_SETS[str(lcb_set)]
        unknown = [lang for lang in languages if lang not in have]
        if unknown:
            raise LangNeuronsError(f"LCB's {lcb_set} has {', '.join(have)}; not {', '.join(map(repr, unknown))}")
        for lang in languages:
            out.extend(_parse(_archive()[f"{lcb_set}/{lang}.csv"], lang, f"{lcb_set}/{lang}.csv"))
        return out
    set_languages(lcb_set)  # a folder, or one clear line
    for lang in languages:
        path = Path(lcb_set) / f"{lang}.csv"
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise LangNeuronsError(f"no LCB file {path} for language {lang!r}") from e
        out.extend(_parse(raw, lang, str(path)))
    return out


def _parse(raw: bytes, lang: str, where: str) -> list[LCBPrompt]:
    """The prompts of one file: cross-lingual (with a ``location`` column) or monolingual."""
    try:
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as e:
        raise LangNeuronsError(f"{where}: not a UTF-8 CSV file ({e})") from e
    if not rows:
        raise LangNeuronsError(f"{where}: no rows (an LCB file has a header {','.join(_CROSS)},source (cross-lingual) "
                               f"or {','.join(_MONO)},source (monolingual) and one prompt a row)")
    columns = _CROSS if "location" in rows[0] else _MONO
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise LangNeuronsError(f"{where}: missing column(s) {', '.join(missing)}; an LCB file has "
                               f"{','.join(_CROSS)},source (cross-lingual) or {','.join(_MONO)},source (monolingual)")
    out, request, last = [], -1, None
    for i, row in enumerate(rows):
        if any(row.get(c) is None for c in columns) or None in row:
            raise LangNeuronsError(f"{where}: row {i + 2} has {'too many' if None in row else 'too few'} fields")
        if row["language"] != lang:
            raise LangNeuronsError(f"{where}: row {i + 2} is for language {row['language']!r}, the file for {lang!r}")
        if not row["prompt"].strip():
            raise LangNeuronsError(f"{where}: row {i + 2} has an empty prompt")
        if columns is _MONO:
            out.append(LCBPrompt(lang, row["prompt"], None, None, i, i))
            continue
        loc = row["location"]
        if loc not in LOCATIONS:
            raise LangNeuronsError(f"{where}: row {i + 2} has location {loc!r}; LCB's are {', '.join(LOCATIONS)}")
        if loc == "Start":
            request += 1
        elif last is None or LOCATIONS.index(loc) <= LOCATIONS.index(last):
            raise LangNeuronsError(f"{where}: row {i + 2} has location {loc!r} after {last or 'the header'!r}; a "
                                   "request's phrasings run Start, Middle, End (each at most once), a new request at "
                                   "each Start")
        last = loc
        out.append(LCBPrompt(lang, row["prompt"], loc, row["phrasing"], i, request))
    return out


def requests_of(prompts: Sequence[LCBPrompt]) -> dict[tuple[str, int], list[LCBPrompt]]:
    """The prompts by (language, request), in order."""
    out: dict[tuple[str, int], list[LCBPrompt]] = {}
    for p in prompts:
        out.setdefault((p.language, p.request), []).append(p)
    return out


def whole_requests(prompts: Sequence[LCBPrompt]) -> list[LCBPrompt]:
    """``prompts`` less a last request cut short by the end of its file: one with fewer phrasings than every
    other request of its language (okapi's row 99, a Start phrasing alone after 33 requests of three)."""
    by = requests_of(prompts)
    cut = set()
    for lang in dict.fromkeys(p.language for p in prompts):
        sizes = {r: len(ps) for (l, r), ps in by.items() if l == lang}
        last = max(sizes)
        if len(sizes) > 1 and sizes[last] < min(n for r, n in sizes.items() if r != last):
            cut.add((lang, last))
    return [p for p in prompts if (p.language, p.request) not in cut]


def split_prompts(prompts: Sequence[LCBPrompt], n_val: int, seed: int = 0) -> tuple[list[LCBPrompt], list[LCBPrompt]]:
    """(validation, test): per language, ``n_val`` requests drawn at random (by ``seed``) with all their
    phrasings go to validation, the rest to test, so the two never share a request. Both keep the input order.

    ``n_val`` counts requests, not prompts (okapi: three prompts a request, the last of a file one). The draw
    depends on the set of requests alone, so languages with the same requests (the cross-lingual files of a set:
    the same English prompts, only the language name differs) hold out the same ones.
    """
    order = _request_order(prompts, seed)
    val_requests: dict[str, set[int]] = {}
    for lang, requests in order.items():
        if not 0 <= n_val <= len(requests):
            raise LangNeuronsError(f"n_val={n_val} requests for validation, but {lang!r} has {len(requests)}; "
                                   f"choose 0 to {len(requests)}")
        val_requests[lang] = set(requests[:n_val])
    val = [p for p in prompts if p.request in val_requests[p.language]]
    test = [p for p in prompts if p.request not in val_requests[p.language]]
    return val, test


def _request_order(prompts: Sequence[LCBPrompt], seed: int) -> dict[str, list[int]]:
    """Each language's requests in the order of the seeded draw."""
    by_lang: dict[str, set[int]] = {}
    for p in prompts:
        by_lang.setdefault(p.language, set()).add(p.request)
    out = {}
    for lang, requests in by_lang.items():
        order = sorted(requests)
        random.Random(seed).shuffle(order)
        out[lang] = order
    return out


def take_requests(sizes: Sequence[int], n: int) -> list[int] | None:
    """The positions of the earliest entries of ``sizes`` (prompts per request, in the order requests are taken)
    whose sizes add up to exactly ``n``: each is taken when the rest can still be made of those after it; None
    when no choice adds up to ``n``. With requests of one size s this is the first n / s of them."""
    reach = [{0}]  # reach[i]: the sums the requests from i on can make
    for s in reversed(sizes):
        reach.insert(0, reach[0] | {x + s for x in reach[0] if x + s <= n})
    if n not in reach[0]:
        return None
    out, left = [], n
    for i, s in enumerate(sizes):
        if left and s <= left and left - s in reach[i + 1]:
            out.append(i)
            left -= s
    return out


def split_by_prompts(prompts: Sequence[LCBPrompt], n_val: int, n_test: int, seed: int = 0,
                     what: str = "LCB") -> tuple[list[LCBPrompt], list[LCBPrompt]]:
    """(validation, test) of ``n_val`` and ``n_test`` prompts per language, made of whole requests: validation the
    earliest requests of the seeded draw (:func:`split_prompts`'s order) that add up to ``n_val``, test the earliest
    of the others in file order that add up to ``n_test``. With requests of 3 phrasings (okapi less its last row)
    this is :func:`split_prompts` with ``n_val // 3`` requests and the first ``n_test`` test prompts. One clear
    line when whole requests cannot make a count."""
    by = requests_of(prompts)
    val_keys, test_keys = set(), set()
    for lang, order in _request_order(prompts, seed).items():
        sizes = sorted({len(by[lang, r]) for r in order})
        picked = take_requests([len(by[lang, r]) for r in order], n_val)
        if picked is None:
            raise LangNeuronsError(f"--val-prompts {n_val}: whole {lang} requests of {what} ({len(order)} requests of "
                                   f"{' or '.join(map(str, sizes))} phrasings, {sum(len(by[lang, r]) for r in order)} "
                                   "prompts) cannot make that many validation prompts; ask for another count")
        val_keys |= {(lang, order[i]) for i in picked}
        rest = [r for r in sorted(order) if (lang, r) not in val_keys]
        picked = take_requests([len(by[lang, r]) for r in rest], n_test)
        if picked is None:
            raise LangNeuronsError(f"--test-prompts {n_test}: {what} has {sum(len(by[lang, r]) for r in rest)} {lang} "
                                   f"prompts besides the {n_val} for validation, in whole requests of "
                                   f"{' or '.join(map(str, sizes))} phrasings, which cannot make {n_test}; ask for "
                                   "fewer (or another count)")
        test_keys |= {(lang, rest[i]) for i in picked}
    return ([p for p in prompts if (p.language, p.request) in val_keys],
            [p for p in prompts if (p.language, p.request) in test_keys])


def phrasings_per_request(lcb_set: str | Path) -> int | None:
    """The phrasings every whole request of a shipped set has (okapi, complex_prompts: 3; monolingual: 1), None
    where they differ (sharegpt: 2 or 3) or for a folder (read it to know)."""
    if is_folder_set(lcb_set):
        return None
    return 1 if str(lcb_set).startswith("monolingual/") else None if str(lcb_set) == "crosslingual/sharegpt" else 3


def is_monolingual(prompts: Sequence[LCBPrompt]) -> bool:
    """Whether the prompts are of a monolingual set (written in the language they ask for)."""
    return bool(prompts) and prompts[0].location is None
