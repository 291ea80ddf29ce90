"""The user-facing setting of an intervention, :class:`SteeringConfig` (its fields are the command line's
options), read back from JSON and from ``NAME=METHOD[:key=value,...]``, and what it counts.

Example:
    >>> cfg = SteeringConfig(method="diffmean", alpha=2.0)            # doctest: +SKIP
    >>> with model.hooks(fwd_hooks=cfg.hooks(neurons, "de")): ...     # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from ..config import check_numbers, number_or_name, option
from ..errors import LangNeuronsError
from ..registry import NAMES, Hooks, intervention, set_settings
from .base import LATER_FIELDS, Intervention, check_fields
from .positions import POSITIONS
from .residual import check_outlier_factor, finite, parse_outlier_factor

if TYPE_CHECKING:
    from ..detect.neurons import LanguageNeurons


def _word_or_none(s: str) -> str | None:
    """A word option whose ``none`` means unset."""
    s = s.strip()
    return None if s.lower() in ("", "none") else s


@dataclass
class SteeringConfig:
    """One intervention and its settings: the user-facing config (and the command line's options) of every
    intervention. ``method`` names the intervention (:data:`~tl_langneurons.registry.INTERVENTIONS`); the fields it
    reads are its own (``intervention.fields``), the others keep their defaults. ``hooks(neurons, lang)`` builds it
    for a target language."""

    method: str = option("clamp", "intervention: clamp (the paper), add, diffmean, sparse or any registered one "
                         "(--method is its earlier name)", choices=NAMES, flag=("--intervention", "--method"))
    which: str = "both"  # neuron set of clamp/add (Table 2 sets it per condition)
    k: int | None = option(None, at_least=1)  # neurons per set of clamp/add (None: the k of the result)
    value: str | float = option("median", "clamp value: median, zero, or a number", parse=number_or_name)
    scale: float = option(1.0, "multiply the clamp value")
    positions: str = option("all", "steer every position, the newest only (clamp), or only generated positions",
                            choices=POSITIONS)
    layers: str | list[int] | tuple[int, ...] | None = None  # clamp/add: choose the k neurons among these layers
    alpha: float = option(1.0, "strength of add (times mu_on - mu_off) and diffmean (times the residual norm)")
    layer: int | None = option(None, "layer of diffmean and sparse (none: 0.6 x the number of layers)", parse=int,
                               at_least=0)
    n_dims: int | None = option(None, "sparse: residual dimensions overwritten (none: 5% of d_model)", parse=int,
                                at_least=1)
    coef: float = option(1.0, "sparse: the target's mean on those dimensions is multiplied by this")
    restore_norm: bool = option(True, "sparse: do not rescale each position to its norm before the overwrite",
                                flag="--no-restore-norm")
    source: str | None = option(None, "source language: add deactivates its top neurons; diffmean and sparse "
                                "use it instead of the mean of the other languages; cross-steer: prompt for each prompt's language",
                                parse=str)
    outlier_factor: float | None = option(
        None, "diffmean and sparse: leave out the residual dimensions whose mean magnitude is above this many "
        "times the median (none: the method's default, 10 for sparse and off for diffmean; off: leave none out)",
        parse=parse_outlier_factor)
    steer_tokens: int | None = option(
        None, "steer only while the first N tokens are written, then let the model write on unsteered (with the "
        "KV cache the steered tokens stay in its context); none: every token", parse=int, at_least=1)
    after_scale: float | None = option(
        None, "with --steer-tokens N (add, diffmean): after the first N tokens keep steering at this share of the "
        "strength (a two-phase strength: 0.25 steers at a quarter of alpha, and of a diffmean term, from token N on; "
        "a source's neurons stay deactivated); none: unsteered after N",
        parse=float)
    band_alphas: str | None = option(
        None, "add: alpha multiplied per layer band, SUBSET:FACTOR joined by + such as 0-8:1.5+13-17:0.5 (layers "
        "not named x1)", parse=str)
    resid_alpha: float | None = option(
        None, "add: also add a diffmean term of this strength (times the residual norm) at --layer (add plus "
        "diffmean)", parse=float)
    spread: str | None = option(
        None, "clamp, add: even spreads the k neurons over the layers (the best of the ranking, at most ceil(k / "
        "layers) from any one layer); none: the k best overall", parse=_word_or_none)
    keep_norm: bool = option(
        False, "diffmean, and add's diffmean term: rescale each position of the residual stream to its norm before "
        "the addition (norm-preserving, as ReCoVeR)")
    equal_norm: str | None = option(
        None, "add: scale each language's addition (mu_on - mu_off on its k neurons) to the mean norm over the "
        "result's languages, total (one factor) or quarters (one per quarter of the depth, layer x 4 // layers), so "
        "one alpha steers every target equally hard (a shared setting; --band-alphas multiply after it); none: as "
        "found", parse=_word_or_none)

    def __post_init__(self) -> None:
        cls = intervention(self.method)
        if self.positions not in POSITIONS:
            raise LangNeuronsError(f"unknown positions {self.positions!r}; use {', '.join(POSITIONS)}")
        for name in ("scale", "alpha", "coef"):
            finite(f"--{name}", getattr(self, name))
        if not (self.value in ("median", "zero") or (isinstance(self.value, (int, float)) and not isinstance(
                self.value, bool) and math.isfinite(self.value))):
            raise LangNeuronsError(f"--value must be median, zero or a finite number, got {self.value}")
        # n_dims, k, steer_tokens (a whole number: 16.0 would key its samples apart from 16's) and layer (its upper
        # bound needs the model: checked in resolved())
        check_numbers(self)
        check_outlier_factor(self.outlier_factor)
        if self.keep_norm is not False and not isinstance(self.keep_norm, bool):
            raise LangNeuronsError(f"keep_norm must be true or false, got {self.keep_norm!r}")
        if self.after_scale is not None:
            finite("--after-scale", self.after_scale)
            if self.after_scale <= 0:
                raise LangNeuronsError(f"--after-scale must be above 0 (a share of the strength; leave it out to stop "
                                       f"steering after the first N tokens), got {self.after_scale!r}")
            if self.steer_tokens is None:
                raise LangNeuronsError("--after-scale is the strength after the first --steer-tokens N tokens; set "
                                       "--steer-tokens too")
        check_fields(cls, self)
        cls(self).check()
        if self.which not in ("both", "top", "bottom", "middle"):
            raise LangNeuronsError(f"unknown neuron set {self.which!r}; use top, bottom, both or middle")

    @property
    def intervention(self) -> Intervention:
        """The intervention ``method`` names, over these settings."""
        return intervention(self.method)(self)

    @property
    def neuron_level(self) -> bool:
        """Whether the intervention acts on a set of neurons (clamp, add), not the residual stream."""
        return self.intervention.neuron_level

    def key(self) -> dict:
        """What the samples depend on (cells are keyed by it; the intervention's :meth:`Intervention.key`)."""
        return self.intervention.key()

    def label(self) -> str:
        """A short readable name of the setting."""
        return self.intervention.label()

    def for_prompt(self, prompt_lang: str | None, target: str | None = None) -> "SteeringConfig":
        """This setting for a prompt in ``prompt_lang`` (None: no prompt, e.g. from BOS): source "prompt"
        becomes that language, and a source equal to ``target`` is dropped (steering towards the prompt's
        own language has nothing to steer away from)."""
        src = prompt_lang if self.source == "prompt" else self.source
        if target is not None and src == target:
            src = None
        return self if src == self.source else replace(self, source=src)

    def resolved(self, neurons: LanguageNeurons) -> "SteeringConfig":
        """The config with its model-dependent defaults filled in (e.g. layer, n_dims) and the layer checked
        against the recorded residual means."""
        return self.intervention.resolved(neurons)

    def hooks(self, neurons: LanguageNeurons, lang: str) -> Hooks:
        """The fwd_hooks of this intervention towards ``lang``, limited to the first ``steer_tokens`` generation
        passes where that is set (:meth:`Intervention.hooks`)."""
        return self.intervention.hooks(neurons, lang)


set_settings(SteeringConfig)


# a setting read back from JSON (a sweep's picks): what each field of SteeringConfig must be where it is given
SETTING_FIELDS: dict[str, tuple[str, ...]] = {
    "method": ("string", "absent"), "which": ("string", "absent"), "k": ("integer", "null"),
    "value": ("string", "number", "absent"), "scale": ("number", "absent"), "positions": ("string", "absent"),
    "layers": ("string", "list", "null"), "layers.[]": ("integer",), "alpha": ("number", "absent"),
    "layer": ("integer", "null"), "n_dims": ("integer", "null"), "coef": ("number", "absent"),
    "restore_norm": ("bool", "absent"), "source": ("string", "null"), "outlier_factor": ("number", "null"),
    "steer_tokens": ("integer", "null"), "after_scale": ("number", "null"), "band_alphas": ("string", "null"),
    "resid_alpha": ("number", "null"), "keep_norm": ("bool", "absent"), "spread": ("string", "null"),
    "equal_norm": ("string", "null")}


def _setting_value(key: str, s: str):
    """One ``key=value`` of :func:`parse_setting` as the field's type: the kinds :data:`SETTING_FIELDS` gives
    it (a bool, a word, a whole number or a number; clamp's value a word unless it starts with a digit)."""
    s, kinds = s.strip(), SETTING_FIELDS[key]
    if s.lower() in ("none", "null"):
        return None
    if "bool" in kinds:
        return s.lower() in ("1", "true", "yes")
    if "string" in kinds and ("number" not in kinds or not s[:1].isdigit()):
        return s
    x = float(s)
    if "integer" in kinds:
        if x != int(x):
            raise ValueError(s)
        return int(x)
    return x


def parse_setting(spec: str, flag: str = "--setting") -> tuple[str, "SteeringConfig"]:
    """``NAME=METHOD[:key=value,...]`` (the fields of :class:`SteeringConfig`) -> (NAME, SteeringConfig); one
    clear line otherwise. NAME may hold "=" (``clamp k=100=clamp:k=100``): the split is at the "=" before a
    method name.

    Example:
        >>> parse_setting("eq=add:k=369,equal_norm=total,positions=generated")[1].label()
        'add k=369 a=1 eqnorm=total generated positions'
    """
    import re

    m = re.match(rf"^(.+?)=({'|'.join(NAMES)})(?::(.*))?$", spec.strip())
    if not m or not m.group(1).strip():
        raise LangNeuronsError(f"{flag} must be NAME=METHOD[:key=value,...] with METHOD one of "
                               f"{', '.join(NAMES)}, got {spec!r}")
    name, method, opts = m.group(1), m.group(2), m.group(3) or ""
    names = [f.name for f in fields(SteeringConfig)]
    kw = {"method": method.strip()}
    for item in filter(None, (x.strip() for x in opts.split(","))):
        key, sep, val = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in names or key == "method":
            raise LangNeuronsError(f"{flag} {name}: unknown option {item!r}; use key=value with one of "
                                   f"{', '.join(k for k in names if k != 'method')}")
        try:
            kw[key] = _setting_value(key, val)
        except ValueError:
            whole = "whole " if "integer" in SETTING_FIELDS[key] else ""
            raise LangNeuronsError(f"{flag} {name}: {key} must be a {whole}number, got {val!r}") from None
    try:
        return name.strip(), SteeringConfig(**kw)
    except LangNeuronsError as e:
        raise LangNeuronsError(f"{flag} {name.strip()}: {e}") from None


def setting_from_json(data: dict, where: str, field_: str, again: str) -> "SteeringConfig":
    """The :class:`SteeringConfig` of a setting read back from a JSON file ``where`` (at ``field_``, such as
    ``best.de``), its other keys ignored; one clear line naming the field where it is not a setting."""
    from ..results import check_fields

    check_fields(data, SETTING_FIELDS, where, again, prefix=field_)
    names = {f.name for f in fields(SteeringConfig)}
    try:
        return SteeringConfig(**{k: v for k, v in data.items() if k in names})
    except LangNeuronsError as e:
        raise LangNeuronsError(f"{where}: field {field_!r} is not a setting this version can use ({e}); {again}") from None


def neuron_count(neurons: LanguageNeurons, steering: "SteeringConfig", lang: str) -> int | None:
    """How many neurons ``steering`` acts on towards ``lang``: for clamp and add its neuron set at its k and
    layers (lape and actprob select at most k top neurons, and no bottom ones, so fewer than k, or none);
    None for diffmean and sparse, which steer the residual stream."""
    if not steering.intervention.neuron_level:
        return None
    return len(neurons.selected(lang, steering.which, steering.k, steering.layers, steering.spread)[0])


def full_count(neurons: LanguageNeurons, steering: "SteeringConfig") -> int:
    """The neurons a clamp or add setting names: k per set, two sets for both (one for lape and actprob)."""
    k = steering.k if steering.k is not None else neurons.k
    return k * (2 if steering.which == "both" and not neurons.one_sided else 1)


def check_not_empty(neurons: LanguageNeurons, steering: "SteeringConfig", lang: str) -> int | None:
    """:func:`neuron_count`, refused with one clear line when it is 0 (the steering would change nothing)."""
    n = neuron_count(neurons, steering, lang)
    if n == 0:
        if steering.which == "bottom" and neurons.one_sided:
            raise LangNeuronsError(f"--which bottom: {neurons.method} selects top neurons only (its bottom sets are "
                                   "empty), so nothing would be steered; use top or both")
        where = "" if steering.layers in (None, "all") else f" in layers {steering.layers}"
        raise LangNeuronsError(f"{neurons.method} selected no {steering.which} neurons for {lang!r}{where}, so nothing "
                               "would be steered; choose another language, or find neurons with another --method")
    return n


