"""The interventions by name: ``tl_langneurons.steer`` registers its classes here on import (``steer/__init__.py``
passes each to :func:`register`), and everything that takes an intervention's name (the command line,
:class:`~tl_langneurons.steer.setting.SteeringConfig`, ``LanguageNeurons.hooks``, the sweep) looks it up here. A
new intervention is one module with a class, and one :func:`register` call; no other code branches on a name.

The registry is a base module so that every stage may read it (``detect`` builds hooks through it without
importing ``steer``, which sits above it); importing the package imports ``steer`` and so fills it.

Example:
    >>> from tl_langneurons.registry import INTERVENTIONS
    >>> sorted(INTERVENTIONS)[:2]
    ['add', 'clamp']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, TypeVar

from .errors import LangNeuronsError

INTERVENTIONS: dict[str, Any] = {}
"""Name -> intervention class (a subclass of :class:`~tl_langneurons.steer.base.Intervention`), in the order
they were registered; ``INTERVENTIONS.keys()`` is the live list of names (the command line's choices)."""

T = TypeVar("T")


class _Names(Sequence):
    """The registered names, read when asked (a command line's ``choices`` sees an intervention registered after
    the option was declared)."""

    def __getitem__(self, i):
        return list(INTERVENTIONS)[i]

    def __len__(self) -> int:
        return len(INTERVENTIONS)

    def __repr__(self) -> str:
        return repr(tuple(INTERVENTIONS))


NAMES: Sequence[str] = _Names()
"""The names of the registered interventions, live."""


def register(cls: T) -> T:
    """Class decorator: make ``cls`` (with a ``name``) an intervention the tool knows by that name."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"an intervention needs a name that is an identifier, got {name!r}")
    INTERVENTIONS[name] = cls
    return cls


def intervention(name: str) -> Any:
    """The class registered under ``name``; one clear line naming the known ones otherwise."""
    try:
        return INTERVENTIONS[name]
    except (KeyError, TypeError):
        raise LangNeuronsError(f"unknown intervention {name!r}; use one of {', '.join(INTERVENTIONS)}") from None


def owners(field: str, attr: str = "fields") -> list[str]:
    """The names of the interventions whose ``attr`` (a tuple of names) holds ``field``: who a setting is for."""
    return [n for n, cls in INTERVENTIONS.items() if field in getattr(cls, attr, ())]


def spoken(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


Hooks = list[tuple[str, Callable]]


_SETTINGS: list[Any] = []


def set_settings(cls: Any) -> None:
    """Make ``cls`` (:class:`~tl_langneurons.steer.setting.SteeringConfig`) what :func:`steering` builds."""
    _SETTINGS[:] = [cls]


def steering(**settings: Any) -> Any:
    """A setting of an intervention from keywords (a ``SteeringConfig``): how stages below ``steer`` (such as
    ``LanguageNeurons.hooks``) build one without importing it."""
    if not _SETTINGS:
        raise LangNeuronsError("no intervention is registered; import tl_langneurons (it registers them)")
    return _SETTINGS[0](**settings)
