"""The typed rows of a sweep: a setting it tries (:class:`Candidate`), a setting scored towards a language
(:class:`Scored`), a language's pick (:class:`Pick`), a setting scored on every language for the shared setting
(:class:`SharedOption`) and the shared pick (:class:`SharedPick`).

Inside the search only these travel; each turns into the dict ``sweep.json`` holds (``to_json``) at the file
boundary, with the keys and values the sweep wrote before its rows were typed: a setting is the sparse dict of
the fields its search set (its cells are keyed by them), a scored row that setting with its label, k fraction
and measures, a pick the setting with ``val``, a shared option its validation objective over the languages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ...steer.setting import SteeringConfig

MEASURES = ("rate", "rate_lingua", "agreement", "gated_rate", "fluent", "retention", "nll", "bleu", "degenerate")
"""The measures of a steering comparison (:meth:`~tl_langneurons.evaluate.metrics.ConditionScore.steering_row`)."""

SHARED_SCORES = ("val_mean_gated_rate", "val_worst_gated_rate", "val_low_retention")
"""A shared setting's scores beside its fields in ``meta.shared``: its mean and worst validation objective over
the languages and the lowest retention of any language."""

# fields that mean nothing without another: turning the other off clears them (a second phase needs the first N
# tokens; a diffmean term's layer and norm preservation need the term)
_DEPENDENT = {"steer_tokens": {"after_scale": None}, "resid_alpha": {"layer": None, "keep_norm": False}}


def _with(cur: dict, key: str | tuple[str, ...], value) -> dict:
    """``cur`` with a stage's field(s) set to ``value`` (a tuple for a key of several fields); a field set to
    none also clears what depends on it (:data:`_DEPENDENT`), so an idea's "off" value is the setting without it."""
    new = {**cur, **(dict(zip(key, value)) if isinstance(key, tuple) else {key: value})}
    for field_, cleared in _DEPENDENT.items():
        if field_ in new and new[field_] is None:
            new.update(cleared)
    return new


@dataclass(frozen=True)
class Candidate:
    """A setting the sweep tries: ``steering`` (its neuron set ``which`` and count ``k`` inside) and ``given``,
    the fields the search set, in the order set (what ``sweep.json`` records, and what its cells are keyed by;
    the others keep :class:`SteeringConfig`'s defaults)."""

    steering: SteeringConfig
    given: tuple[str, ...]

    @classmethod
    def of(cls, setting: Mapping[str, Any], method: str | None = None) -> "Candidate":
        """The candidate of a setting as ``sweep.json`` holds it (its fields and k; ``method`` where it names
        none); :class:`~tl_langneurons.errors.LangNeuronsError` where it is not a setting of its intervention."""
        kw = {"method": method, **setting} if method is not None and "method" not in setting else dict(setting)
        return cls(SteeringConfig(**kw), tuple(setting))

    def to_json(self) -> dict:
        """The setting as ``sweep.json`` holds it: the fields the search set, with their values."""
        return {f: getattr(self.steering, f) for f in self.given}

    def with_(self, key: str | tuple[str, ...], value) -> "Candidate":
        """This setting with a stage's field(s) set to ``value`` (:func:`_with`); LangNeuronsError where that is
        no setting of the intervention (e.g. norm preservation without a residual term)."""
        return Candidate.of(_with(self.to_json(), key, value))

    @property
    def id(self) -> str:
        """The setting as canonical JSON text: two candidates with the same id are the same setting."""
        return json.dumps(self.to_json(), sort_keys=True)

    @property
    def k(self) -> int:
        return int(self.steering.k or 0)


@dataclass
class Scored:
    """A setting (or, for the unsteered and system-prompt rows of the test split, none) scored towards ``lang``:
    its label and k fraction, the measures beside its unsteered twin (:data:`MEASURES`), in an LCB sweep LCB's
    scores (``lcb``), on several genres its scores genre by genre (``genres``), on held-out prompts the
    model's own fluency (``own``: ``own_fluent`` of the unsteered row, ``own_retention`` of a steered one).
    ``stage`` names the search stage that tried it, ``setting`` the row of the test split."""

    lang: str
    measures: dict[str, float | None]
    candidate: Candidate | None = None
    label: str | None = None
    k_fraction: float | None = None
    lcb: dict[str, Any] = field(default_factory=dict)
    genres: dict[str, dict[str, float | None]] | None = None
    own: dict[str, float | None] = field(default_factory=dict)
    stage: str | None = None
    setting: str | None = None

    def __getitem__(self, name: str):
        """A measure or LCB score by name (what the pick and the shared ranking compare)."""
        return self.lcb[name] if name in self.lcb else self.measures[name]

    def get(self, name: str, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def to_json(self) -> dict:
        """The row as ``sweep.json`` holds it (a stage, a language's ``val``, a row of ``test``)."""
        out: dict[str, Any] = {} if self.stage is None else {"stage": self.stage}
        out["lang"] = self.lang
        if self.candidate is not None:
            out.update(self.candidate.to_json())
            out.update(label=self.label, k_fraction=self.k_fraction)
        out.update(self.measures)
        out.update(self.lcb)
        if self.genres is not None:
            out["genres"] = self.genres
        out.update(self.own)
        if self.setting is not None:
            out["setting"] = self.setting
        return out


@dataclass
class Pick:
    """A language's pick: its best setting and that setting's validation scores (None: no setting was scored)."""

    candidate: Candidate
    val: Scored | None

    def to_json(self) -> dict:
        return {**self.candidate.to_json(), "val": None if self.val is None else self.val.to_json()}


@dataclass(frozen=True)
class SharedOption:
    """A setting scored on every language for the shared setting: its label, the mean and worst validation
    objective over the languages and the worst's language, the lowest retention (None: a language has none),
    and each language's objective, rate and retention; ``stage`` names the shared search's stage that tried it."""

    label: str
    mean: float
    worst: float
    low_retention: float | None
    worst_lang: str
    by_lang: dict[str, dict[str, float | None]]
    stage: str | None = None

    def scores(self) -> dict:
        """Its :data:`SHARED_SCORES`, as ``meta.shared`` holds them beside the setting."""
        return dict(zip(SHARED_SCORES, (self.mean, self.worst, self.low_retention)))

    def to_json(self) -> dict:
        head = {} if self.stage is None else {"stage": self.stage}
        return {**head, "label": self.label, **self.scores(), "worst_lang": self.worst_lang, "by_lang": self.by_lang}

    def at(self, stage: str) -> "SharedOption":
        return replace(self, stage=stage)


@dataclass(frozen=True)
class SharedPick:
    """The shared setting: one setting for every language, with its :class:`SharedOption` scores."""

    candidate: Candidate
    option: SharedOption

    def to_json(self) -> dict:
        return {**self.candidate.to_json(), **self.option.scores()}
