"""Multilingual text: texts per language code, loaders, seeded sampling, 1:1 mixing and splits."""

from __future__ import annotations

import gzip
import json
import random
import warnings
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..config import LANGUAGES, check_lists, option
from ..errors import LangNeuronsError
from ..provenance import sha256_texts

PAPER_LANGUAGES = ("en", "de", "fr", "es", "zh", "ja")

# ISO 639 codes that lid.176 knows (plus a few common extra ones); used to catch typos like "jp".
_KNOWN = set(
    "af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co "
    "cs cv cy da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi "
    "hif hr hsb ht hu hy ia id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li "
    "lmo lo lrc lt lv mai mg mhr min mk ml mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no "
    "oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah sc scn sco sd sh si sk sl so sq sr "
    "su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu xal xmf yi yo yue zh".split()
)


def check_language(code: str) -> str:
    """``code`` if it is a known ISO 639 code, else a clear error (e.g. 'jp' -> use 'ja')."""
    if code not in _KNOWN:
        hint = {"jp": "ja", "cn": "zh", "ge": "de", "sp": "es", "eng": "en", "ger": "de", "fre": "fr"}.get(code)
        extra = f" (did you mean {hint!r}?)" if hint else ""
        raise LangNeuronsError(f"unknown language code {code!r}{extra}; use ISO 639-1 codes such as en de fr es zh ja")
    return code


def read_lines(path: str | Path) -> list[str]:
    """Texts of a one-text-per-line file (.txt or .txt.gz); empty lines and bad UTF-8 are errors.
    A UTF-8 byte-order mark at the start is dropped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # truncated or not gzip at all
        raise LangNeuronsError(f"{path} is not a readable gzip file ({e}); download or compress it again") from e
    except OSError as e:
        raise LangNeuronsError(f"cannot read {path}: {e}") from e
    lines = raw.split(b"\n")
    if lines and lines[-1] in (b"", b"\r"):
        lines.pop()
    out = []
    for i, line in enumerate(lines, 1):
        try:  # utf-8-sig on the first line: a byte-order mark is not part of the first text
            text = line.decode("utf-8-sig" if i == 1 else "utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise LangNeuronsError(f"{path}:{i}: not UTF-8 ({e.reason} at byte {e.start}); convert the file to UTF-8") from e
        if not text.strip():
            raise LangNeuronsError(f"{path}:{i}: empty line; remove it (one text per line)")
        out.append(text.strip())
    return out


def warn_duplicates(texts: dict[str, list[str]], name: str) -> None:
    """Warn (without dropping anything) when a language has the same text more than once: each
    copy counts again in the AP and the medians, so a corpus should not repeat texts."""
    dups = {lang: len(t) - len(set(t)) for lang, t in texts.items()}
    dups = {lang: n for lang, n in dups.items() if n}
    if dups:
        counts = ", ".join(f"{lang}: {n} of {len(texts[lang])}" for lang, n in dups.items())
        warnings.warn(f"corpus {name!r} has duplicate texts ({counts}); they are kept, each copy counting again "
                      "in the AP and medians; remove them from the files for a clean corpus", stacklevel=3)


@dataclass
class MultilingualCorpus:
    """Texts per language code. Every language needs at least 2 texts and there must be 2 languages."""

    texts: dict[str, list[str]]
    name: str = "custom"
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.texts) < 2:
            raise LangNeuronsError(
                f"corpus {self.name!r} has {len(self.texts)} language(s); the method needs at least 2 "
                "(positives and negatives)"
            )
        for lang, texts in self.texts.items():
            check_language(lang)
            if len(texts) < 2:
                raise LangNeuronsError(
                    f"language {lang!r} of corpus {self.name!r} has {len(texts)} text(s); give it at least 2"
                )
            for i, t in enumerate(texts):
                if not isinstance(t, str) or not t.strip():
                    raise LangNeuronsError(f"text {i} of language {lang!r} in corpus {self.name!r} is empty")

    # ---- views ----------------------------------------------------------------------------
    @property
    def languages(self) -> list[str]:
        return list(self.texts)

    def __len__(self) -> int:
        return sum(len(v) for v in self.texts.values())

    def flat(self) -> tuple[list[str], np.ndarray]:
        """All texts in language order and the language index of each, [n_texts]."""
        texts, labels = [], []
        for i, lang in enumerate(self.languages):
            texts.extend(self.texts[lang])
            labels.extend([i] * len(self.texts[lang]))
        return texts, np.asarray(labels, dtype=np.int64)

    def sha256(self) -> str:
        texts, labels = self.flat()
        return sha256_texts([f"{self.languages[l]}\t{t}" for t, l in zip(texts, labels)])

    def summary(self) -> str:
        return ", ".join(f"{l}: {len(t)}" for l, t in self.texts.items())

    # ---- transforms -----------------------------------------------------------------------
    def select(self, languages: Sequence[str]) -> "MultilingualCorpus":
        missing = [l for l in languages if l not in self.texts]
        for l in languages:
            check_language(l)
        if missing:
            raise LangNeuronsError(
                f"language(s) {', '.join(missing)} not in corpus {self.name!r} (it has {', '.join(self.languages)})"
            )
        return MultilingualCorpus({l: list(self.texts[l]) for l in languages}, self.name, list(self.sources))

    def sample(self, n: int, seed: int = 0) -> "MultilingualCorpus":
        """At most ``n`` texts per language, drawn without replacement with ``seed``."""
        if n < 2:
            raise LangNeuronsError(f"n per language must be at least 2, got {n}")
        out = {}
        for lang, texts in self.texts.items():
            rng = random.Random(f"{seed}-{lang}")
            out[lang] = list(texts) if len(texts) <= n else rng.sample(texts, n)
        return MultilingualCorpus(out, f"{self.name}[n={n},seed={seed}]", list(self.sources))

    def split(self, n_heldout: int | float = 0.2, seed: int = 0) -> tuple["MultilingualCorpus", "MultilingualCorpus"]:
        """Disjoint (selection, held-out) parts; ``n_heldout`` is a count or a fraction per language."""
        a, b = {}, {}
        for lang, texts in self.texts.items():
            idx = list(range(len(texts)))
            random.Random(f"split-{seed}-{lang}").shuffle(idx)
            k = int(round(len(texts) * n_heldout)) if isinstance(n_heldout, float) else int(n_heldout)
            k = min(max(k, 0), len(texts))
            b[lang] = [texts[i] for i in sorted(idx[:k])]
            a[lang] = [texts[i] for i in sorted(idx[k:])]
        return (MultilingualCorpus(a, f"{self.name}[select]", list(self.sources)),
                MultilingualCorpus(b, f"{self.name}[heldout]", list(self.sources)))

    @classmethod
    def mix(cls, corpora: Sequence["MultilingualCorpus"], n: int, seed: int = 0) -> "MultilingualCorpus":
        """``n`` texts per language, taken in equal shares from each corpus (the paper mixes 1:1)."""
        if not corpora:
            raise LangNeuronsError("nothing to mix: give at least one corpus")
        langs = [l for l in corpora[0].languages if all(l in c.texts for c in corpora)]
        share = [n // len(corpora) + (1 if i < n % len(corpora) else 0) for i in range(len(corpora))]
        out: dict[str, list[str]] = {l: [] for l in langs}
        for c, k in zip(corpora, share):
            part = c.select(langs).sample(max(k, 2), seed) if k else None
            for l in langs:
                if part is not None:
                    seen = set(out[l])
                    out[l].extend(t for t in part.texts[l][:k] if t not in seen)
        name = "+".join(c.name for c in corpora) + f"[n={n},seed={seed}]"
        return cls(out, name, [s for c in corpora for s in c.sources])

    # ---- loaders --------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | Path, languages: Iterable[str] | None = None) -> "MultilingualCorpus":
        """A folder of ``{lang}.txt`` or ``{lang}.txt.gz`` files, one text per line."""
        path = Path(path)
        if not path.is_dir():
            raise LangNeuronsError(f"corpus folder {path} does not exist")
        files: dict[str, Path] = {}
        for f in sorted(path.iterdir()):
            for suffix in (".txt.gz", ".txt"):
                if f.name.endswith(suffix):
                    files[f.name[: -len(suffix)]] = f
        langs = list(languages) if languages is not None else [l for l in PAPER_LANGUAGES if l in files] + sorted(
            l for l in files if l not in PAPER_LANGUAGES)
        missing = [l for l in langs if l not in files]
        if missing:
            raise LangNeuronsError(f"corpus folder {path} has no file for {', '.join(missing)} ({{lang}}.txt or .txt.gz)")
        texts = {l: read_lines(files[l]) for l in langs}
        warn_duplicates(texts, path.name)
        return cls(texts, path.name, [str(path)])

    @classmethod
    def from_jsonl(cls, path: str | Path) -> "MultilingualCorpus":
        """A JSONL file with one object per line, fields ``text`` and ``lang``."""
        path = Path(path)
        out: dict[str, list[str]] = {}
        for i, line in enumerate(read_lines(path), 1):
            try:
                row = json.loads(line)
                lang, text = row["lang"], row["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise LangNeuronsError(f"{path}:{i}: not a JSON object with 'text' and 'lang' ({e})") from e
            for key, value, example in (("lang", lang, '"en"'), ("text", text, '"Hello."')):
                if not isinstance(value, str):
                    raise LangNeuronsError(f"{path}:{i}: field {key!r} must be a string such as {example}, "
                                           f"got {type(value).__name__} {json.dumps(value)}")
            out.setdefault(lang, []).append(text)
        warn_duplicates(out, path.stem)
        return cls(out, path.stem, [str(path)])

    @classmethod
    def bundled(cls) -> "MultilingualCorpus":
        """The corpus shipped with the package: 320 parallel original sentences in en de fr es zh ja."""
        root = resources.files("tl_langneurons").joinpath("data/corpus")
        out = {}
        for lang in PAPER_LANGUAGES:
            with resources.as_file(root.joinpath(f"{lang}.txt")) as p:
                out[lang] = read_lines(p)
        return cls(out, "bundled", ["tl_langneurons/data/corpus"])

    @classmethod
    def from_hf(cls, dataset: str, languages: Sequence[str] = PAPER_LANGUAGES, split: str = "dev") -> "MultilingualCorpus":
        """FLORES+ (``openlanguagedata/flores_plus``) or PAWS-X (``google-research-datasets/paws-x``)
        from the Hugging Face hub (needs the ``datasets`` package and network or a local HF cache)."""
        try:
            import datasets  # noqa: F401
            from datasets import load_dataset
        except ImportError as e:
            raise LangNeuronsError("loading from the hub needs the datasets package: pip install datasets") from e
        flores_codes = {"en": "eng_Latn", "de": "deu_Latn", "fr": "fra_Latn", "es": "spa_Latn",
                        "zh": "cmn_Hans", "ja": "jpn_Jpan"}
        out: dict[str, list[str]] = {}
        try:
            for lang in languages:
                if dataset == "flores":
                    ds = load_dataset("openlanguagedata/flores_plus", flores_codes[lang], split=split)
                    out[lang] = [r["text"] for r in ds]
                elif dataset == "pawsx":
                    ds = load_dataset("google-research-datasets/paws-x", lang, split="validation" if split == "dev" else split)
                    out[lang] = list(dict.fromkeys(t for r in ds for t in (r["sentence1"], r["sentence2"]) if t.strip()))
                else:
                    raise LangNeuronsError(f"unknown hub dataset {dataset!r}; use flores or pawsx")
        except LangNeuronsError:
            raise
        except KeyError as e:
            raise LangNeuronsError(f"language {e} is not mapped for {dataset}; use a folder corpus") from e
        except Exception as e:  # noqa: BLE001 - network/cache errors from datasets
            raise LangNeuronsError(
                f"cannot load {dataset} from the Hugging Face hub ({type(e).__name__}); without network, "
                "use a local folder of {lang}.txt files: --corpus /path/to/folder"
            ) from e
        warn_duplicates(out, f"hf:{dataset}")
        return cls(out, f"hf:{dataset}", [f"hf:{dataset}"])

    @classmethod
    def load(cls, spec: str, n_per_language: int | None = None, seed: int = 0,
             languages: Sequence[str] | None = None) -> "MultilingualCorpus":
        """A corpus from a spec: ``bundled``, a folder, a ``.jsonl`` file, ``hf:flores`` / ``hf:pawsx``,
        or several joined with ``+`` (mixed in equal shares, as the paper mixes PAWS-X and FLORES)."""
        parts = spec_parts(spec)
        if not parts:
            raise LangNeuronsError("empty corpus spec; use bundled, a folder, a .jsonl file or hf:flores")
        corpora = []
        for p in parts:
            if p == "bundled":
                c = cls.bundled()
            elif p.startswith("hf:"):
                c = cls.from_hf(p[3:], languages or PAPER_LANGUAGES)
            elif p.endswith(".jsonl"):
                c = cls.from_jsonl(p)
            else:
                c = cls.from_folder(p, languages)
            corpora.append(c.select(languages) if languages else c)
        if len(corpora) > 1:
            n = n_per_language or min(len(t) for c in corpora for t in c.texts.values()) * len(corpora)
            return cls.mix(corpora, n, seed)
        c = corpora[0]
        return c.sample(n_per_language, seed) if n_per_language else c


def spec_parts(spec: str) -> list[str]:
    """The corpora a spec joins with ``+`` (``"a+b"`` -> ``["a", "b"]``; empty parts dropped)."""
    return [p for p in spec.split("+") if p]


def find_texts(meta: dict, languages: Sequence[str]) -> dict[str, set[str]] | None:
    """The texts ``find`` selected neurons on, read again from its recorded corpus spec, sample size and seed
    (``LanguageNeurons.meta``); None when no spec is recorded or the corpus is not at hand here."""
    if not meta.get("corpus_spec"):
        return None
    try:
        found = MultilingualCorpus.load(meta["corpus_spec"], meta.get("n_per_lang"), meta.get("corpus_seed", 0),
                                        list(languages)).texts
    except (LangNeuronsError, OSError):
        return None
    return {l: set(ts) for l, ts in found.items()}


def without(corpus: MultilingualCorpus, texts: dict[str, set[str]]) -> tuple[MultilingualCorpus, dict[str, int]]:
    """``corpus`` without ``texts`` (e.g. those find selected on), and how many each language lost."""
    kept = {l: [t for t in ts if t not in texts.get(l, ())] for l, ts in corpus.texts.items()}
    dropped = {l: len(corpus.texts[l]) - len(kept[l]) for l in kept if len(kept[l]) != len(corpus.texts[l])}
    short = [l for l in dropped if len(kept[l]) < 2]
    if short:
        raise LangNeuronsError(f"corpus {corpus.name!r} keeps {', '.join(f'{len(kept[l])} {l}' for l in short)} "
                               f"text(s) once the {', '.join(f'{dropped[l]} {l}' for l in short)} left out are gone "
                               "(texts find selected the neurons on); use held-out text apart from the find corpus")
    return (MultilingualCorpus(kept, corpus.name, list(corpus.sources)) if dropped else corpus), dropped


def draw(texts: Sequence[str], n: int, seed: int, lang: str) -> list[str]:
    """At most ``n`` of ``texts``, drawn with ``seed`` (the same draw as MultilingualCorpus.sample)."""
    if n < 1:
        raise LangNeuronsError(f"need at least 1 held-out text per language, got {n}")
    return list(texts) if len(texts) <= n else random.Random(f"{seed}-{lang}").sample(list(texts), n)


@dataclass
class CorpusConfig:
    """Which texts detection runs on: a spec for :meth:`MultilingualCorpus.load`, sampled per language."""

    corpus: str = option("bundled", "bundled, a folder of {lang}.txt[.gz], a .jsonl with text and lang, hf:flores, "
                         "hf:pawsx; join several with + to mix them 1:1")
    n_per_lang: int | None = option(None, "texts per language (none: all; mixed sources: the smallest x sources)",
                                    parse=int)
    seed: int = option(0, "seed of the corpus sampling")
    languages: list[str] | None = option(None, "comma-separated language codes (none: all in the corpus)",
                                         items=LANGUAGES)

    def __post_init__(self) -> None:
        check_lists(self)  # no empty or repeated language
        if self.n_per_lang is not None and (isinstance(self.n_per_lang, bool) or self.n_per_lang < 1):
            raise LangNeuronsError(f"n_per_lang must be at least 1, got {self.n_per_lang}; "
                                   "omit --n-per-lang to use all texts")

    def load(self) -> MultilingualCorpus:
        return MultilingualCorpus.load(self.corpus, self.n_per_lang, self.seed, self.languages)
