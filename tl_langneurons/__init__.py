"""tl-langneurons: find the language-specific neurons of a multilingual decoder LM and steer the
language it writes by clamping them (Kojima et al., NAACL 2024), on TransformerLens hook points."""

from .activations import PooledActivations, collect
from .backend import HFHookedModel
from .corpus import PAPER_LANGUAGES, MultilingualCorpus
from .errors import LangNeuronsError
from .models import DEFAULT_MODEL, load_model
from .sites import NeuronIndex, resolve_sites

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL", "HFHookedModel", "LangNeuronsError", "MultilingualCorpus", "NeuronIndex",
    "PAPER_LANGUAGES", "PooledActivations", "collect", "load_model", "resolve_sites",
]
