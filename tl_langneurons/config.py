"""Config dataclasses are the single source of defaults: each field that the command line exposes
carries its help text (and, where needed, its flag and parser) in ``field(metadata=...)``, and
:func:`add_options` turns a dataclass into ``argparse`` options with the dataclass's own defaults.

Example:
    >>> import argparse
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     k: int = option(1000, "neurons per set")
    >>> p = argparse.ArgumentParser()
    >>> add_options(p, Demo)
    >>> from_args(Demo, p.parse_args(["--k", "5"]))
    Demo(k=5)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import numbers
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import LangNeuronsError


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | tuple[str, ...] | None = None,
           parse: Callable[[str], Any] | None = None, choices: Sequence[str] | None = None,
           metavar: str | None = None, default_factory: Callable[[], Any] | None = None,
           items: "Items | None" = None, at_least: int | None = None, positive: bool = False) -> Any:
    """A dataclass field that is also a command-line option (``--name-with-dashes`` unless ``flag``; a tuple of
    flags: the first is the option's name, the others earlier names it still answers to).
    ``items``: a list option, split by :func:`split_items` and checked by :func:`check_lists`. A number's
    range is declared here and checked by :func:`check_options` (one message for every config):
    ``at_least``: a whole number of at least this; ``positive``: a finite number above 0. ``help=""``
    declares a checked field that is not a command-line option."""
    if items is not None:
        parse = functools.partial(split_items, sep=items.sep)
    meta = {"help": help, "flag": flag, "parse": parse, "choices": choices, "metavar": metavar, "items": items,
            "at_least": at_least, "positive": positive}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def comma_list(s: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    return [x.strip() for x in s.split(",") if x.strip()]


def split_items(s: str, sep: str = ",") -> list[str]:
    """How every list option is read from the command line: ``"a, b,c"`` -> ``["a", "b", "c"]``, ``""`` ->
    ``[]``; empty items are kept (``"a,,b"``) so that :func:`check_list` refuses them. Nothing is converted
    here: the config checks and converts the items (one message for every list option). ``sep``: the
    separator (";" for items that hold commas themselves, see :class:`Items`)."""
    return [] if not s.strip() else [x.strip() for x in s.split(sep)]


@dataclasses.dataclass(frozen=True)
class Items:
    """What the items of a list option must be (see :func:`check_list`).

    ``kind``: ``str``, ``float``, ``int``, ``percent`` (a number with ``%``, such as ``0.5%``) or ``k`` (a
    count such as 1000 or a percentage); ``low``/``high``: the range (``low`` excluded when ``above``);
    ``choices``: the allowed words; ``empty``: an empty list is allowed (it means none); ``none``: what
    the word ``none`` stands for (``"default"``: the field's default, None; ``"empty"``: the empty list;
    None: not allowed); ``want``: the items as the message asks for them; ``sep``: what separates them on the
    command line (``;`` where an item holds commas). Repeated items are refused.
    """

    kind: str
    want: str
    low: float | None = None
    high: float | None = None
    above: bool = False
    choices: tuple[str, ...] | None = None
    empty: bool = False
    none: str | None = None
    sep: str = ","


def _item(x: Any, spec: Items) -> tuple[Any, str | None]:
    """One item converted to the spec's kind, or (x, the problem)."""
    if isinstance(x, bool):
        return x, f"{x!r} is not a {'word' if spec.kind == 'str' else 'number'}"
    if isinstance(x, str):
        x = x.strip()
        if not x:
            return x, "an item is empty (two commas in a row, or one at an end)"
    if spec.kind == "str":
        if not isinstance(x, str):
            return x, f"{x!r} is not a word"
        if spec.choices is not None and x not in spec.choices:
            return x, f"{x!r} is not one of {','.join(spec.choices)}"
        return x, None
    pct = spec.kind == "percent" or (spec.kind == "k" and isinstance(x, str) and x.endswith("%"))
    if pct:
        if not isinstance(x, str) or not x.endswith("%"):
            if not _number(x):
                return x, f"{x!r} is not a percentage such as 0.5%"
            return x, (f"{x} has no %: the values are percentages, so write {x}% for {x} percent, or "
                       f"{_g(float(x) * 100)}% for a share of {x}")
        try:
            v = float(x[:-1])
        except ValueError:
            return x, f"{x!r} is not a percentage such as 0.5%"
        if not math.isfinite(v) or v <= 0 or v > 100:
            return x, f"{x} is not above 0% and at most 100%"
        return x, None
    if isinstance(x, str):
        try:
            v = int(x) if spec.kind in ("int", "k") else float(x)
        except ValueError:
            return x, f"{x!r} is not a {'whole number' if spec.kind in ('int', 'k') else 'number'}"
    elif isinstance(x, (int, float)):
        v = x
    else:
        return x, f"{x!r} is not a number"
    if spec.kind in ("int", "k"):
        if isinstance(v, float):
            if not v.is_integer():
                return x, f"{x!r} is not a whole number"
            v = int(v)
    else:
        v = float(v)
        if not math.isfinite(v):
            return x, f"{x} is not a finite number"
    low = 1 if spec.kind == "k" else spec.low
    if low is not None and (v <= low if spec.above else v < low):
        return x, f"{_g(v)} is {'not above' if spec.above else 'below'} {_g(low)}"
    if spec.high is not None and v > spec.high:
        return x, f"{_g(v)} is above {_g(spec.high)}"
    return v, None


def _number(s: Any) -> bool:
    try:
        return math.isfinite(float(s))
    except (TypeError, ValueError):
        return False


def _g(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def check_list(name: str, values: Any, spec: Items) -> list | None:
    """The one check of every list option: ``values`` (a list, or a comma-separated string) converted
    to the spec's kind, or one :class:`LangNeuronsError` line naming the option, what it must hold, what
    it got and the first problem (an empty list or item, a word that is not a number, nan or inf, a
    value out of range, a repeated value). Returns None for ``none`` where that means the default."""
    if isinstance(values, str):
        values = split_items(values, spec.sep)
    values = [] if values is None else list(values)
    shown = spec.sep.join(str(v) for v in values) or '""'
    if [str(v).strip().lower() for v in values] == ["none"] and spec.none is not None:
        return None if spec.none == "default" else []
    problem = None
    if not values and not spec.empty:
        problem = "the list is empty" + ("; leave the option out for its default" if spec.none == "default" else "")
    out = []
    for x in values:
        if problem:
            break
        v, problem = _item(x, spec)
        if problem is None and v in out:
            problem = f"{x} is repeated"
        out.append(v)
    if problem:
        raise LangNeuronsError(f"{name} must be {spec.want}, got {shown}: {problem}")
    return out


def _checked(f: dataclasses.Field, value: Any) -> Any:
    """``value`` of the field ``f``, checked and converted by :func:`check_list` if it is a list option."""
    spec = f.metadata.get("items")
    if spec is None or (value is None and _default(f) is None):
        return value
    return check_list(flag_of(f), value, spec)


def check_lists(cfg: Any) -> None:
    """Check and convert every list option of the dataclass ``cfg`` in place (from ``__post_init__``),
    before any model loads: each field declared with ``option(..., items=Items(...))``. :func:`from_args`
    does the same on the command line's words before it builds the config."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        checked = _checked(f, value)
        if checked is not value:
            setattr(cfg, f.name, checked)


def check_number(name: str, value: Any, *, at_least: int | None = None, positive: bool = False) -> None:
    """The one check of a number option: a whole number of at least ``at_least``, or a finite number above
    0 (``positive``); else one :class:`LangNeuronsError` line naming it, what it must be and what it got.

    Example:
        >>> check_number("--samples", 0, at_least=1)
        Traceback (most recent call last):
        ...
        tl_langneurons.errors.LangNeuronsError: --samples must be at least 1, got 0
    """
    if at_least is not None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy integers are whole numbers too
            whole = isinstance(value, float) and value.is_integer()
            raise LangNeuronsError(f"{name} must be a whole number of at least {at_least}, got {value!r}"
                                   + ("" if not whole else f" (write {int(value)})"))
        if value < at_least:
            raise LangNeuronsError(f"{name} must be at least {at_least}, got {value}")
    if positive and (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
                     or value <= 0):
        raise LangNeuronsError(f"{name} must be positive and finite (such as 0.8), got {value}")


def check_options(cfg: Any) -> None:
    """Every declared check of the dataclass ``cfg`` (from its ``__post_init__``, before any model loads):
    the list options (:func:`check_lists`) and the numbers (:func:`check_numbers`)."""
    check_lists(cfg)
    check_numbers(cfg)


def check_numbers(cfg: Any) -> None:
    """The numbers of the dataclass ``cfg`` declared with ``option(..., at_least=N)`` or ``positive=True``,
    each by :func:`check_number` (None passes where it is the field's default)."""
    for f in dataclasses.fields(cfg):
        m = f.metadata
        if not (m.get("at_least") is not None or m.get("positive")):
            continue
        value = getattr(cfg, f.name)
        if value is None and _default(f) is None:
            continue
        check_number(flag_of(f), value, at_least=m.get("at_least"),
                     positive=m.get("positive", False))


# the target languages of an experiment (or of a corpus): codes, none for all
LANGUAGES = Items("str", "comma-separated language codes such as de,ja (none: all)", none="default")


def _typed_list(s: str, kind: type, what: str) -> list:
    try:
        return [kind(x) for x in comma_list(s)]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {s!r}") from e


def float_list(s: str) -> list[float]:
    return _typed_list(s, float, "numbers")


def count_or_percent(s: str) -> int | str:
    """A k: ``"1000"`` -> 1000; ``"0.5%"`` stays a string, resolved against the neuron count later."""
    s = s.strip()
    if s.isdigit():
        return int(s)
    try:
        float(s[:-1]) if s.endswith("%") else float("x")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count such as 1000 or a percentage such as 0.5%, got {s!r}") from None
    return s


def k_list(s: str) -> list[int | str]:
    """k values: ``"10,100,0.5%"``; ``"none"`` or ``""`` is the empty list."""
    return [] if s.strip().lower() in ("", "none") else [count_or_percent(x) for x in comma_list(s)]


def int_list(s: str) -> list[int]:
    return _typed_list(s, int, "whole numbers")


def number_or_name(s: str) -> str | float:
    """A clamp value: a number, or a name such as ``median`` / ``zero``."""
    try:
        return float(s)
    except ValueError:
        return s


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _show(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v) or "none"
    return "none" if v is None else str(v)


def _nested(f: dataclasses.Field) -> bool:
    factory = f.default_factory  # type: ignore[misc]
    return factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory) and bool(cli_fields(factory))


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line options."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help")]


def add_options(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """Add one option per exposed field of ``cls``; the default is the dataclass's own."""
    for f in dataclasses.fields(cls):  # a nested config (e.g. the steering of an evaluation) adds its own options
        if _nested(f) and f.name not in skip:
            add_options(parser, f.default_factory, skip)  # type: ignore[arg-type]
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        m, default = f.metadata, _default(f)
        flags = flags_of(f)
        if default is dataclasses.MISSING:
            parser.add_argument(*flags, dest=f.name, required=True, help=m["help"], metavar=m["metavar"])
            continue
        if isinstance(default, bool):
            parser.add_argument(*flags, dest=f.name, action="store_false" if default else "store_true", help=m["help"])
            continue
        kind = m["parse"] or (type(default) if default is not None and not isinstance(default, (list, tuple)) else str)
        help_text = m["help"].replace("%", "%%")
        if default is not None:
            help_text += f" (default {_show(default).replace('%', '%%')})"
        parser.add_argument(*flags, dest=f.name, default=default, type=kind, choices=m["choices"], help=help_text,
                            metavar=m["metavar"])


def flags_of(f: dataclasses.Field) -> tuple[str, ...]:
    """The command-line flags of an option field: its name (``--name-with-dashes`` unless declared), then any
    earlier names."""
    flag = f.metadata.get("flag")
    if flag is None:
        return ("--" + f.name.replace("_", "-"),)
    return (flag,) if isinstance(flag, str) else tuple(flag)


def flag_of(f: dataclasses.Field) -> str:
    """The flag an option is named by in messages (its first)."""
    return flags_of(f)[0]


def from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """An instance of ``cls`` from the parsed options (plus ``extra`` fields)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {n: _checked(f, getattr(args, n)) for n, f in fields.items() if hasattr(args, n)}
    for f in dataclasses.fields(cls):
        if _nested(f) and f.name not in extra:
            values[f.name] = from_args(f.default_factory, args)  # type: ignore[arg-type]
    values.update(extra)
    try:
        return cls(**values)
    except TypeError as e:  # a missing required field
        raise LangNeuronsError(f"{cls.__name__}: {e}") from e


def cache_dir() -> Path:
    """User cache folder (``$TL_LANGNEURONS_CACHE``, else ``~/.cache/tl_langneurons``): converted models,
    offload folders."""
    return Path(os.environ.get("TL_LANGNEURONS_CACHE", Path.home() / ".cache" / "tl_langneurons"))
