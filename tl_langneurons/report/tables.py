"""The one way tables are written: Markdown (for people, the report and the terminal) and CSV
(``csv.DictWriter``, for programs), from the same rows."""

from __future__ import annotations


def markdown_matrix(rows: Sequence[str], cols: Sequence[str], m: np.ndarray, fmt: str) -> str:
    out = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    out += [f"| {r} | " + " | ".join(format(v, fmt) for v in m[i]) + " |" for i, r in enumerate(rows)]
    return "\n".join(out) + "\n"
