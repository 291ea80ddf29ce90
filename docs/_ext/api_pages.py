"""The API reference pages, written at build time (into docs/api/, git-ignored) from
``tl_langneurons.__all__``: one page per stage of the method, each name documented once by autodoc from
its docstring. Only the exported names appear; a name exported later appears on the next build. Modules
meant to be imported by name (not re-exported) are listed in ``MODULES``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

# (page, title, what it holds, the subpackages whose names go there)
STAGES = [
    ("models", "Models", "Loading a model, its hook sites and the hooked-model protocol.", ("model",)),
    ("finding", "Finding neurons", "The corpus, pooled activations, the selectors and the neurons they find.",
     ("detect",)),
    ("steering", "Steering and generation", "Interventions as TransformerLens hooks, and batched sampling.",
     ("steer",)),
    ("evaluation", "Evaluation and sweeps", "The control experiment (Table 2) and the settings sweep.",
     ("evaluate",)),
    ("analyses", "Analyses", "Configurations of the analyses run on a neurons folder.", ("analyses",)),
    ("study", "Studies and errors", "One result folder and every experiment on it; the tool's error.",
     ("study", "errors")),
]
# names whose object has no __module__ of its own (constants)
CONSTANTS = {"DEFAULT_MODEL": "model", "PAPER_LANGUAGES": "detect"}
MODULES = [("tl_langneurons.analyses.sae_directions", "SAE directions",
            "Language directions read through an SAE (SAELens), and steering by an SAE latent.")]


def stage_of(name: str, obj) -> str:
    if name in CONSTANTS:
        return CONSTANTS[name]
    return obj.__module__.split(".")[1]


def write_pages(srcdir: Path) -> None:
    import tl_langneurons as tln

    out = srcdir / "api"
    out.mkdir(exist_ok=True)
    by_page: dict[str, list[str]] = {page: [] for page, *_ in STAGES}
    for name in tln.__all__:
        sub = stage_of(name, getattr(tln, name))
        page = next(p for p, _, _, subs in STAGES if sub in subs)
        by_page[page].append(name)
    pages = []
    for page, title, what, _ in STAGES:
        lines = [title, "=" * len(title), "", what, "", ".. currentmodule:: tl_langneurons", ""]
        for name in by_page[page]:
            obj = getattr(tln, name)
            if inspect.isclass(obj):
                lines += [f".. autoclass:: {name}", ""]
            elif callable(obj):
                lines += [f".. autofunction:: {name}", ""]
            else:
                lines += [f".. autodata:: {name}", "   :annotation:", "", f"   ``{obj!r}``", ""]
        _write(out / f"{page}.rst", "\n".join(lines))
        pages.append(page)
    for mod, title, what in MODULES:
        page = mod.rsplit(".", 1)[1]
        lines = [title, "=" * len(title), "", what, "", f".. automodule:: {mod}", ""]
        _write(out / f"{page}.rst", "\n".join(lines))
        pages.append(page)
    index = ["API reference", "=============", "",
             "The names ``import tl_langneurons as tln`` exports (``tln.__all__``), by stage, from their "
             "docstrings; and the modules imported by name.", "", ".. toctree::", "   :maxdepth: 2", ""]
    index += [f"   {p}" for p in pages]
    _write(out / "index.rst", "\n".join(index) + "\n")


def _write(path: Path, text: str) -> None:
    # rewrite only on change: Sphinx then rebuilds only what changed
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def setup(app):
    app.connect("builder-inited", lambda app: write_pages(Path(app.srcdir)))
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
