"""The one way tables are written: Markdown (for people, the report and the terminal) and CSV
(``csv.DictWriter``, for programs), from the same rows."""

from __future__ import annotations

import csv
import io
import math
import numbers
from typing import Any, Iterable, Mapping, Sequence

import numpy as np


def cell(value: Any, fmt: str | None = None) -> str:
    """One Markdown cell: numbers through ``fmt`` (when given), None empty, ``|`` escaped, newlines
    as spaces (either would break the row)."""
    if value is None:
        text = ""
    elif fmt is not None and isinstance(value, numbers.Number) and not isinstance(value, bool):
        text = format(value, fmt)
    else:
        text = str(value)
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("|", "\\|")


def dashed(value: Any, fmt: str = ".2f") -> str:
    """A number through ``fmt``; "-" for a value that is missing (None) or not a number (nan)."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]], fmt: str | None = None) -> str:
    """A Markdown (GFM) table ending in a newline; ``fmt`` formats the numeric cells of ``rows``."""
    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v, fmt) for v in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def markdown_matrix(rows: Sequence[str], cols: Sequence[str], m: np.ndarray, fmt: str) -> str:
    """A labelled matrix: one row per ``rows`` label, one column per ``cols`` label."""
    m = np.asarray(m)
    return markdown_table(["", *cols], ([r, *m[i]] for i, r in enumerate(rows)), fmt)


def csv_text(fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV with a header line (``csv.DictWriter``: quoting of commas, quotes and newlines), as a
    string for ``atomic_write_text``. Keys of ``rows`` outside ``fieldnames`` are left out."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
