"""No code branches on an intervention's name outside the registry and the interventions' own modules: a new
intervention lands as one module and one ``register`` call. The check: in every module of the package and the
benchmarks, no comparison (``==``, ``!=``, ``in``, ``not in``) has an intervention's name as a string literal on
either side (alone, or inside a tuple, list or set literal), and no dict literal is keyed by the names (a table of
builders by name). Reading recorded data with a default (``cfg.get("method", "clamp")``: results written before
the method was recorded) is not a branch and is allowed.

The command that checks it by hand: ``python -m pytest tests/unit/test_no_name_branches.py``."""

from __future__ import annotations

import ast
from pathlib import Path

import tl_langneurons  # noqa: F401  (fills the registry)
from tl_langneurons.registry import INTERVENTIONS

ROOT = Path(__file__).resolve().parents[2]
# where a name may be named: the registry, each intervention's module, and the module that keeps the old names
ALLOWED = {"tl_langneurons/registry.py", "tl_langneurons/steer/methods.py",
           *(f"tl_langneurons/steer/{n}.py" for n in INTERVENTIONS)}


def _names_in(node: ast.AST) -> set[str]:
    """The intervention names a literal (a string, or a tuple/list/set of them) holds."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & set(INTERVENTIONS)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {x for e in node.elts for x in _names_in(e)}
    return set()


def branches(source: str) -> list[tuple[int, str]]:
    """(line, code) of each comparison on an intervention's name and each dict literal keyed by the names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(_names_in(x) for x in [node.left, *node.comparators]):
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Dict) and sum(bool(_names_in(k)) for k in node.keys if k is not None) >= 2:
            found.append((node.lineno, ast.unparse(node)[:80]))
    return found


def test_no_branch_on_an_intervention_name():
    files = sorted([*ROOT.glob("tl_langneurons/**/*.py"), *ROOT.glob("benchmarks/*.py")])
    assert len(files) > 50
    bad = [f"{f.relative_to(ROOT)}:{line}: {code}" for f in files if str(f.relative_to(ROOT)) not in ALLOWED
           for line, code in branches(f.read_text(encoding="utf-8"))]
    assert bad == []


def test_the_check_sees_a_branch():
    assert branches('if cfg.method in ("clamp", "add"):\n    pass\n') == [(1, "cfg.method in ('clamp', 'add')")]
    assert branches('x = s == "sparse"\n') == [(1, "s == 'sparse'")]
    assert branches('B = {"clamp": f, "add": g}\n') == [(1, "{'clamp': f, 'add': g}")]
    assert branches('m = cfg.get("method", "clamp")\n') == []
