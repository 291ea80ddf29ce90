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
from typing import Any, Callable, Sequence

from .errors import LangNeuronsError


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
           parse: Callable[[str], Any] | None = None, choices: Sequence[str] | None = None,
           metavar: str | None = None, default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field that is also a command-line option (``--name-with-dashes`` unless ``flag``)."""
    meta = {"help": help, "flag": flag, "parse": parse, "choices": choices, "metavar": metavar}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def comma_list(s: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    return [x.strip() for x in s.split(",") if x.strip()]


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
        flag = m["flag"] or "--" + f.name.replace("_", "-")
        if default is dataclasses.MISSING:
            parser.add_argument(flag, dest=f.name, required=True, help=m["help"], metavar=m["metavar"])
            continue
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", help=m["help"])
            continue
        kind = m["parse"] or (type(default) if default is not None and not isinstance(default, (list, tuple)) else str)
        help_text = m["help"].replace("%", "%%")
        if default is not None:
            help_text += f" (default {_show(default).replace('%', '%%')})"
        parser.add_argument(flag, dest=f.name, default=default, type=kind, choices=m["choices"], help=help_text,
                            metavar=m["metavar"])


def from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """An instance of ``cls`` from the parsed options (plus ``extra`` fields)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    for f in dataclasses.fields(cls):
        if _nested(f) and f.name not in extra:
            values[f.name] = from_args(f.default_factory, args)  # type: ignore[arg-type]
    values.update(extra)
    try:
        return cls(**values)
    except TypeError as e:  # a missing required field
        raise LangNeuronsError(f"{cls.__name__}: {e}") from e
