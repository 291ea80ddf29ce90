"""What a sweep's settings are scored on: seeds from BOS, the prompts of held-out text (one corpus, or several
genres each giving its own prompts) or LCB's requests, split into validation and test (:class:`SweepPrompts`);
the held-out genres and their checks before the model loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...detect.corpus import MultilingualCorpus, find_texts, spec_parts, without
from ...detect.neurons import LanguageNeurons
from ...errors import LangNeuronsError
from ...provenance import sha256_texts
from ...steer.prompts import split_prompts
from ..confusion import SPLIT_SEED, SYSTEM_PROMPT, lcb_prompts, set_source
from .config import SweepConfig

Genres = dict[str, MultilingualCorpus]
"""Held-out text by genre (name: corpus), each giving its own prompts."""


def heldout_genres(spec: str, neurons: LanguageNeurons, genres: bool = True) -> tuple[Genres, dict]:
    """The genres of a held-out spec: with ``genres`` and ``A+B+C`` each part on its own (not mixed), without
    the texts ``find`` selected these neurons on (e.g. the FLORES sentences of its corpus), and what was left
    out (per genre and language; ``{"unchecked": why}`` when the find corpus is not at hand); otherwise one
    corpus (``A+B`` mixed in equal shares), as ``cross-steer`` reads it."""
    parts = spec_parts(spec)
    if len(parts) == 1 or not genres:
        return {spec: MultilingualCorpus.load(spec, languages=neurons.languages)}, {}
    used = find_texts(neurons.meta, neurons.languages)
    genres_: Genres = {}
    dropped: dict = {} if used is not None else {
        "unchecked": f"the find corpus ({neurons.meta.get('corpus_spec') or 'not recorded'}) is not at hand here: "
                     "texts it shares with the genres were not left out"}
    for p in parts:
        name = Path(p).name or p
        if name in genres_:
            raise LangNeuronsError(f"--heldout {spec}: two genres are named {name!r}; give each folder once")
        genres_[name], lost = without(MultilingualCorpus.load(p, languages=neurons.languages), used or {})
        if lost:
            dropped[name] = lost
    return genres_, dropped


def check_prompt_texts(cfg: SweepConfig, neurons: LanguageNeurons, heldout: Genres | MultilingualCorpus) -> None:
    """Before the model loads: the held-out text of every prompt language (in each genre) has a text for each
    test and validation prompt asked for (the prompts are never fewer than the config records)."""
    genres = heldout if isinstance(heldout, dict) else {cfg.heldout: heldout}
    for name, corpus in genres.items():
        for l in neurons.languages:
            have = len(corpus.texts.get(l, ()))
            if 0 < have < cfg.test_prompts + cfg.val_prompts:
                raise LangNeuronsError(f"--test-prompts {cfg.test_prompts} and --val-prompts {cfg.val_prompts} need "
                                       f"{cfg.test_prompts + cfg.val_prompts} held-out {l} texts, each its own prompt; "
                                       f"{name or 'the held-out corpus'} has {have}: ask for fewer prompts")


def sweep_prompts(tokenizer, neurons: LanguageNeurons, heldout: Genres | MultilingualCorpus, cfg: SweepConfig) -> dict:
    """The prompts of a prompted sweep: ``{"val": {lang: prompts}, "test": {lang: prompts}}`` for every
    language of the neurons that the held-out corpus has, from disjoint texts (test: those of
    ``cross-steer`` with seed 0). With several genres, each genre's prompts in turn (the counts per genre)
    and ``"genre": {"val": {lang: [genre of each prompt]}, "test": {...}}``."""
    genres = heldout if isinstance(heldout, dict) else {cfg.heldout: heldout}
    out: dict = {"val": {}, "test": {}}
    if len(genres) > 1:
        out["genre"] = {"val": {}, "test": {}}
    for name, corpus in genres.items():
        srcs = [l for l in neurons.languages if l in corpus.texts]
        if len(srcs) < 2:
            raise LangNeuronsError(f"a prompted sweep needs held-out text in at least 2 of the neurons' languages "
                                   f"({', '.join(neurons.languages)}); {name or 'the held-out corpus'} has "
                                   f"{', '.join(srcs) or 'none'}")
        for l in srcs:
            test, val = split_prompts(tokenizer, corpus.texts[l], cfg.test_prompts, cfg.val_prompts, l)
            if (len(test), len(val)) != (cfg.test_prompts, cfg.val_prompts):  # texts too short for a prompt
                raise LangNeuronsError(f"--test-prompts {cfg.test_prompts} and --val-prompts {cfg.val_prompts}: the "
                                       f"held-out {l} text of {name or 'the held-out corpus'} gives {len(test)} test "
                                       f"and {len(val)} validation prompts (texts of at least 14 tokens); ask for at "
                                       "most that many")
            for phase, ps in (("test", test), ("val", val)):
                out[phase].setdefault(l, []).extend(ps)
                if "genre" in out:
                    out["genre"][phase].setdefault(l, []).extend([name] * len(ps))
    return out



@dataclass
class SweepPrompts:
    """What a setting towards a language is scored on in each phase ("val", "test"): the seeds of the phase
    (``seeds``), and the prompts they continue: none from BOS, the held-out prompts (:func:`sweep_prompts`) of
    every other language, or LCB's requests that ask for the language (``lcb``: all of LCB's prompts, the steered
    ones in ``prompts``). ``genres``: the genres of a sweep on several held-out genres (``A+B+C``), in order;
    ``texts_sha``: the hashes of the held-out texts (per genre where there are several); ``lcb_set``: the LCB set,
    ``monolingual`` whether its requests are written in the language they ask for (else in English)."""

    seeds: dict[str, list[int]]
    prompts: dict | None = None
    lcb: dict | None = None
    genres: list[str] = field(default_factory=list)
    texts_sha: dict | None = None
    lcb_set: str | None = None
    monolingual: bool = False

    @classmethod
    def of(cls, tokenizer, neurons: LanguageNeurons, cfg: SweepConfig, langs: list[str],
           heldout: Genres | None) -> "SweepPrompts":
        seeds = {"val": list(range(1001, 1001 + cfg.val_samples)), "test": list(range(1, cfg.test_samples + 1))}
        if cfg.lcb:
            lcb = lcb_prompts(tokenizer, langs, cfg.val_prompts, cfg.test_prompts, cfg.lcb_set)
            monolingual = lcb.pop("monolingual")
            steered = ("system_val", "system") if cfg.lcb_system else ("val", "test")  # what the steered cells continue
            return cls(seeds, {"val": lcb[steered[0]], "test": lcb[steered[1]]}, lcb, lcb_set=cfg.lcb_set,
                       monolingual=monolingual)
        if heldout is None:
            return cls(seeds)
        prompts = sweep_prompts(tokenizer, neurons, heldout, cfg)
        sha = {g: {l: sha256_texts(c.texts[l]) for l in prompts["val"] if l in c.texts} for g, c in heldout.items()}
        return cls(seeds, prompts, None, list(heldout) if "genre" in prompts else [],
                   sha[cfg.heldout] if len(sha) == 1 else sha)

    def units(self, lang: str, phase: str) -> list[tuple[str | None, list[int] | None, list[int]]]:
        """What a setting towards ``lang`` is scored on in ``phase``: (prompt language, prompt, seeds); from BOS
        one (None, None, seeds), with prompts every prompt of every other language (the off-diagonal cells of
        cross-steering)."""
        seeds = self.seeds[phase]
        if self.prompts is None:
            return [(None, None, seeds)]
        if self.lcb:  # LCB: the requests that ask for ``lang``, written in English (monolingual sets: in ``lang``)
            return [(lang if self.monolingual else "en", p, seeds) for p in self.prompts[phase][lang]]
        return [(src, p, seeds) for src, ps in self.prompts[phase].items() if src != lang for p in ps]

    def by_genre(self, lang: str, phase: str, items: list) -> dict[str, list]:
        """``items`` (one per unit of ``lang`` in ``phase``, or lists of rows per unit) split by genre."""
        out: dict[str, list] = {name: [] for name in self.genres}
        g = self.prompts["genre"][phase]
        for genre, x in zip([x for src, gs in g.items() if src != lang for x in gs], items):
            out[genre].append(x)
        return out

    def meta(self, heldout_spec: str | None, dropped: dict) -> dict | None:
        """The prompts as the sweep records them (``meta.prompts``): LCB's, with their source and split, or the
        held-out prompts with the hashes of their texts (per genre) and what was left out of the genres."""
        if self.lcb:
            return {"lcb": set_source(self.lcb_set), "split_seed": SPLIT_SEED, "system_prompt": SYSTEM_PROMPT, **self.lcb}
        if self.prompts is None:
            return None
        out = {"heldout": heldout_spec, "texts_sha": self.texts_sha, **self.prompts}
        if dropped:  # the texts find selected these neurons on, left out of the genres
            out["left_out"] = dropped
        return out
