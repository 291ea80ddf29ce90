"""Sphinx configuration of the tl-langneurons documentation (``./run.sh docs`` builds it offline into
docs/_build/html with warnings as errors).

Sphinx because TransformerLens and SAELens publish Sphinx sites: autodoc reads the package's docstrings
(reStructuredText, doctested), myst-parser lets the guide be Markdown, myst-nb executes the tutorial
notebook during the build, and a small extension (``_ext/cli_reference.py``) renders the command line's
own argparse parser, so no option is written twice. The API pages are generated here, at build time,
from ``tl_langneurons.__all__``: a name exported later appears without editing the docs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # the package of this checkout, even where it is not installed

import tl_langneurons  # noqa: E402

project = "tl-langneurons"
author = "tl-langneurons contributors"
copyright = "the tl-langneurons contributors"
release = version = tl_langneurons.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
    "sphinx_copybutton",
    "myst_nb",
    "cli_reference",
    "api_pages",
]
exclude_patterns = ["_build", "jupyter_execute", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

html_theme = "furo"
html_title = f"tl-langneurons {release}"
html_static_path: list[str] = []
html_theme_options = {"navigation_with_keys": True}

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# the tutorial runs on every build (a fresh clone has no cache); an error in a cell fails the build
nb_execution_mode = os.environ.get("TL_LANGNEURONS_DOCS_EXECUTE", "force")
nb_execution_timeout = 1200
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
# progress bars and library warnings on stderr are not part of the tutorial
nb_output_stderr = "remove"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
typehints_fully_qualified = False
always_document_param_types = False
typehints_document_rtype = True
# jaxtyping's shapes (Float[Tensor, "layer neuron"]) and TYPE_CHECKING-only names are shown as written
suppress_warnings = ["myst.header", "sphinx_autodoc_typehints.forward_reference",
                     "sphinx_autodoc_typehints.guarded_import"]
