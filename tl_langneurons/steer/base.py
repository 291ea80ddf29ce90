"""What every intervention is: a class registered by name (:mod:`tl_langneurons.registry`) that reads its
settings from a :class:`~tl_langneurons.steer.setting.SteeringConfig` and says

- which of the config's fields are its own (:attr:`Intervention.fields`) and checks them (:meth:`check`);
- which positions it can steer (:attr:`positions`, a subset of :data:`~.positions.POSITIONS`);
- how it builds its hooks towards a language, for the positions it is given (:meth:`build`), from the public
  selection API of :class:`~tl_langneurons.detect.neurons.LanguageNeurons` (``selected``, ``means_off``,
  ``residual``, ``check_language``);
- its label and its cache key (:meth:`label`, :meth:`key`: the key is what the cached samples are filed under,
  so an intervention's key never changes);
- what a sweep may vary for it (:attr:`axes`, the config's fields searched in order, and :meth:`sweep_start`),
  and which strengths a second phase scales (:attr:`scaled`).

The config's fields beyond an intervention's own keep their defaults there; the generic ones
(``positions``, ``steer_tokens``, ``after_scale``) are handled once for all (:meth:`hooks`). A new intervention
is one module: a subclass with ``name``, ``fields`` and :meth:`build` (and, to be swept, ``axes``), passed to
:func:`~tl_langneurons.registry.register` (``steer/__init__.py`` registers the four of the package).

Example (the intervention ``tests/integration/test_new_intervention.py`` defines and runs through ``steer``,
``evaluate``, ``sweep`` and ``cross-steer``: multiply the selected neurons by ``alpha``)::

    class Multiply(NeuronIntervention):
        name = "multiply"
        fields = (*SELECTION, "alpha")
        scaled = ("alpha",)
        axes = ("k", "alpha", "layers")

        def build(self, neurons, lang, positions):
            sel, _ = self.selection(neurons, lang)
            hooks = [...]  # on neurons.index.slices: flat_units(x)[:, :, units] *= alpha
            return gate(hooks, positions)

    register(Multiply)
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ..detect.ranking import parse_k
from ..errors import LangNeuronsError
from ..registry import INTERVENTIONS, Hooks, owners, spoken
from .positions import only_after_tokens, only_first_tokens

if TYPE_CHECKING:
    from ..detect.neurons import LanguageNeurons

SELECTION = ("which", "k", "layers", "spread")
"""The fields of a neuron-level intervention's selection: which set, how many, among which layers, spread."""

GENERIC = ("method", "positions", "steer_tokens")
"""The fields every intervention has (``after_scale`` too, where it has :attr:`Intervention.scaled` strengths)."""

# fields added after samples were first cached: a setting's key holds them only where they are set, so every
# setting made before them keeps its key (and its samples)
LATER_FIELDS = ("steer_tokens", "after_scale", "band_alphas", "resid_alpha", "keep_norm", "spread", "equal_norm")


class Intervention:
    """One way of steering, over the settings of a :class:`~tl_langneurons.steer.setting.SteeringConfig`
    (``self.setting``). Subclasses set the class attributes and :meth:`build`."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()
    """The config's fields it reads (beyond :data:`GENERIC`); a later field (:data:`LATER_FIELDS`) set on
    another intervention is refused with one line naming the interventions it is for."""
    positions: ClassVar[tuple[str, ...]] = ("all", "generated")
    neuron_level: ClassVar[bool] = False
    """Acts on a set of neurons (which, k, layers): counted, and refused when the set is empty."""
    scaled: ClassVar[tuple[str, ...]] = ()
    """Its strengths: what ``after_scale`` multiplies in the second phase (none: no second phase)."""
    axes: ClassVar[tuple[str, ...]] = ()
    """The config's fields a sweep searches for it, stage by stage in this order (the sweep knows the values of
    each: ``k`` from ``--k-fractions``, ``scale`` from ``--scales``, ``alpha`` from ``--alphas``, ``layers``
    from ``--layer-sets``, ``which`` from ``--neuron-sets``, ``positions``, ``layer`` from ``--resid-layers``,
    ``n_dims`` from ``--dim-fractions``, ``coef`` from ``--coefs``)."""
    key_drops: ClassVar[tuple[str, ...]] = ()
    """Fields left out of its cache key (besides which, k and the later fields not set)."""

    def __init__(self, setting: Any) -> None:
        self.setting = setting

    # ---- settings ----------------------------------------------------------------------------
    def check(self) -> None:
        """Its own fields' checks, beyond the types the config checks (override and call super)."""

    def resolved(self, neurons: LanguageNeurons) -> Any:
        """The config with its model-dependent defaults filled in (e.g. the layer); unchanged by default."""
        return self.setting

    def key(self) -> dict:
        """What the samples depend on (cells are keyed by it): every field but which, k, :attr:`key_drops`, and
        the later fields where they are not set."""
        s = self.setting
        d = asdict(s)
        for f in ("which", "k", *LATER_FIELDS, *self.key_drops):
            d.pop(f, None)
        d.update(_later(s))
        return d

    def key_later(self) -> dict:
        """The later fields the setting sets (:data:`LATER_FIELDS`), as its key holds them."""
        return _later(self.setting)

    def label(self) -> str:
        """A short readable name of the setting: :meth:`describe`, then positions and the token schedule."""
        s = self.setting
        then = "" if s.after_scale is None else f" then x{s.after_scale:g}"
        return (self.describe() + ("" if s.positions == "all" else f" {s.positions} positions")
                + ("" if s.steer_tokens is None else f" first {s.steer_tokens}{then}"))

    def describe(self) -> str:
        """The intervention and its own settings, briefly (override)."""
        return self.name

    # ---- hooks -------------------------------------------------------------------------------
    def build(self, neurons: LanguageNeurons, lang: str, positions: str) -> Hooks:
        """The hooks towards ``lang`` at ``positions`` from the resolved setting (``self.setting``)."""
        raise NotImplementedError

    def hooks(self, neurons: LanguageNeurons, lang: str) -> Hooks:
        """The hooks of the setting towards ``lang``, limited to the first ``steer_tokens`` generation passes
        where that is set, then at ``after_scale`` of the :attr:`scaled` strengths where that is set."""
        s = self.setting.resolved(neurons)
        hooks = type(self)(s).build(neurons, lang, s.positions)
        if s.steer_tokens is None:
            return hooks
        first = only_first_tokens(hooks, s.steer_tokens)
        if not s.after_scale:
            return first
        later = replace(s, steer_tokens=None, after_scale=None, **{
            f: None if getattr(s, f) is None else getattr(s, f) * s.after_scale for f in self.scaled})
        return first + only_after_tokens(type(self)(later).build(neurons, lang, later.positions), s.steer_tokens)

    # ---- sweeps ------------------------------------------------------------------------------
    @classmethod
    def folder(cls) -> str:
        """A sweep's default folder name in the neurons folder: ``sweep-NAME``."""
        return f"sweep-{cls.name}"

    @classmethod
    def sweep_start(cls, cfg: Any, neurons: LanguageNeurons, n: int) -> dict:
        """The setting a sweep starts from (its own fields; the sweep adds method, positions, source, which)."""
        return {}

    @classmethod
    def needs_residual(cls, cfg: Any) -> bool:
        """Whether a sweep of ``cfg`` (a SweepConfig) steers the residual stream (its means must be recorded)."""
        return False


class NeuronIntervention(Intervention):
    """An intervention on a set of neurons: the language's ``which`` set at ``k`` among ``layers``
    (``LanguageNeurons.selected``)."""

    neuron_level = True
    fields = SELECTION

    def check(self) -> None:
        s = self.setting
        if s.spread is not None:
            if s.spread != "even":
                raise LangNeuronsError(f"--spread must be even (or none), got {s.spread!r}")
            if s.which == "middle":
                raise LangNeuronsError("--spread spreads the top and bottom sets; the middle set cannot be spread")

    def selection(self, neurons: LanguageNeurons, lang: str, which: str | None = None):
        """(neurons, their medians) of the setting's selection towards ``lang`` (``which`` overrides the set)."""
        s = self.setting
        return neurons.selected(lang, which or s.which, s.k, s.layers, s.spread)

    def selection_label(self) -> str:
        """The selection in words: `` top k=100 layers=first spread=even`` (empty for the defaults)."""
        s = self.setting
        k = "" if s.k is None else f" k={s.k}"
        if s.which != "both":
            k = f" {s.which}{k}"
        if s.layers not in (None, "all"):  # the layer subset the k neurons are chosen in
            k += f" layers={s.layers if isinstance(s.layers, str) else ','.join(map(str, s.layers))}"
        if s.spread is not None:
            k += f" spread={s.spread}"
        return k

    @classmethod
    def sweep_start(cls, cfg: Any, neurons: LanguageNeurons, n: int) -> dict:
        return {"k": fraction_k("0.45%", n), "positions": "all", "layers": None}


def _later(s: Any) -> dict:
    """The later fields that are set (:data:`LATER_FIELDS`)."""
    return {f: getattr(s, f) for f in LATER_FIELDS if getattr(s, f) is not None and getattr(s, f) is not False}


def check_fields(cls: type[Intervention], s: Any) -> None:
    """The later fields ``s`` sets belong to ``cls`` (one line naming the interventions they are for), and its
    positions are among those ``cls`` steers."""
    if s.positions not in cls.positions:
        who = spoken(owners(s.positions, "positions"))
        raise LangNeuronsError(f"positions={s.positions} is for {who}; use {' or '.join(cls.positions)}")
    for f in LATER_FIELDS:
        if f == "steer_tokens" or f not in _later(s):
            continue
        own = owners(f) if f != "after_scale" else [n for n, c in INTERVENTIONS.items() if c.scaled]
        if cls.name not in own:
            raise LangNeuronsError(f"--{f.replace('_', '-')} is for {spoken(own) if own else 'no intervention'}, "
                                   f"not {cls.name}")


def fraction_k(fraction: str, n: int) -> int:
    """k of a fraction of the neurons, at least one neuron (small models)."""
    return parse_k(fraction, n) if float(fraction.rstrip("%")) * n >= 100 else 1


def ks(fractions: Any, n: int) -> tuple[list[int], list[str]]:
    """The distinct k of the fractions searched, skipping those below one neuron (named in the notes, with
    the fractions that give the same k); refused when none reaches one neuron."""
    below = [f for f in fractions if float(str(f).rstrip("%")) * n < 100]
    if len(below) == len(fractions):
        least = 100 / n  # the smallest percentage of 3 digits that is one neuron
        digits = 2 - math.floor(math.log10(least))
        raise LangNeuronsError(f"--k-fractions {','.join(fractions)}: every value is less than one of the {n} neurons; "
                               f"use at least {math.ceil(least * 10 ** digits) / 10 ** digits:g}% (one neuron)")
    by_k: dict[int, list[str]] = {}
    for f in fractions:
        if f not in below:
            by_k.setdefault(parse_k(f, n), []).append(f)
    notes = [f"k={','.join(below)} skipped: less than one of the {n} neurons"] if below else []
    notes += [f"k={','.join(fs)} all give k={k} of {n} neurons: searched once" for k, fs in by_k.items() if len(fs) > 1]
    return list(by_k), notes
