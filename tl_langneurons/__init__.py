"""tl-langneurons: find the language-specific neurons of a multilingual decoder LM and steer the
language it writes by clamping them (Kojima et al., NAACL 2024), on TransformerLens hook points."""

from .activations import PooledActivations, collect, collect_poolings
from .backend import HFHookedModel
from .control import ControlResult, EvaluateConfig, evaluate_control
from .corpus import PAPER_LANGUAGES, MultilingualCorpus
from .errors import LangNeuronsError
from .generation import GenerationConfig, generate
from .intervention import clamp_hooks
from .models import DEFAULT_MODEL, load_model
from .neurons import FindConfig, LanguageNeurons, find_neurons
from .sites import NeuronIndex, resolve_sites

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL", "ControlResult", "EvaluateConfig", "FindConfig", "GenerationConfig", "HFHookedModel",
    "LangNeuronsError", "LanguageNeurons", "MultilingualCorpus", "NeuronIndex", "PAPER_LANGUAGES",
    "PooledActivations", "clamp_hooks", "collect", "collect_poolings", "evaluate_control", "find_neurons", "generate", "load_model",
    "resolve_sites",
]
