"""No module of the package over 500 lines and no function over 80 (the package and the benchmarks): a longer
one is a sign it does several jobs (issue 40's bar)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE, MAX_FUNCTION = 500, 80



def long_functions() -> dict[str, int]:
    """``path:Qualified.name`` -> lines of every function over :data:`MAX_FUNCTION` lines."""
    out = {}
    for folder in ("tl_langneurons", "benchmarks"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()

            def visit(node: ast.AST, prefix: str) -> None:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        name = f"{prefix}{child.name}"
                        if not isinstance(child, ast.ClassDef):
                            n = child.end_lineno - child.lineno + 1
                            if n > MAX_FUNCTION:
                                out[f"{rel}:{name}"] = n
                        visit(child, name + ".")
                    else:
                        visit(child, prefix)

            visit(ast.parse(f.read_text(encoding="utf-8")), "")
    return out


def test_no_module_over_500_lines():
    long = {f.relative_to(ROOT).as_posix(): n for f in (ROOT / "tl_langneurons").rglob("*.py")
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_MODULE}
    assert long == {}


def test_no_function_over_80_lines():
    long = long_functions()
    assert long == {}
