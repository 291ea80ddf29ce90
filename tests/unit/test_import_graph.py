"""The package's import graph (module-level, function-local and ``if TYPE_CHECKING:`` imports alike: a type-only
import is still a dependency) has no circle, and no module imports a stage above its own. The stages, lowest first,
are the method's: base modules, model, detect, steer, evaluate, analyses, report, study, cli; every module is on
one, with no exception list."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "tl_langneurons"

# lowest first; a module may import its own stage and those below. The base modules hold what every stage uses
# (errors, configs, tables, provenance, result files, the intervention registry, the plots that draw the data they
# are given); distributed.py sits on model (it resolves the device of each rank).
LAYERS = ["errors", "config progress provenance tables results registry report.plots", "model distributed", "detect",
          "steer", "evaluate", "analyses", "report", "study", "cli"]


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(tree: ast.AST) -> list[ast.AST]:
    """Every import statement of a module, wherever it stands (``if TYPE_CHECKING:`` blocks included)."""
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def graph(unresolved: list | None = None) -> dict[str, set[str]]:
    """Module -> the package's modules it imports; relative imports that name no module of the package
    (such as ``..x`` from a top-level module) are added to ``unresolved``."""
    mods = modules()
    out: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        base = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in imports(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                prefix = (".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                          if node.level else node.module or "")
                names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
            for n in names:
                if isinstance(node, ast.ImportFrom) and node.level and (
                        node.level > len(base) or not n.startswith("tl_langneurons")):
                    (unresolved if unresolved is not None else []).append((m, ast.unparse(node)))
                    continue
                while n and n not in mods:
                    n = n.rpartition(".")[0]
                if n and n != m and n != "tl_langneurons" and not m.startswith(n + "."):
                    out[m].add(n)
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return found


def layer(m: str) -> int | None:
    for i, names in enumerate(LAYERS):
        for n in names.split():
            if m == f"tl_langneurons.{n}" or m.startswith(f"tl_langneurons.{n}."):
                return i
    return None


def test_no_import_circle():
    unresolved: list = []
    assert cycles(graph(unresolved)) == []
    assert unresolved == []  # e.g. ``from ..model import x`` in a top-level module fails only when it runs


def test_no_upward_import():
    g = graph()
    assert sorted(m for m in g if layer(m) is None) == ["tl_langneurons"]  # the package's own __init__
    up = sorted((m, t) for m, ts in g.items() for t in ts
                if layer(m) is not None and layer(t) is not None and layer(t) > layer(m))
    assert up == []


def test_the_checker_sees_a_circle_through_a_function_local_import():
    g = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(g) == [["a", "b"]]
    tree = ast.parse("def f():\n    from .x import y\nif TYPE_CHECKING:\n    from .z import w\n")
    assert sorted(n.module for n in imports(tree)) == ["x", "z"]
