"""tl-langneurons: find the language-specific neurons of a multilingual decoder LM and steer the
language it writes by clamping them (Kojima et al., NAACL 2024), on TransformerLens hook points."""

from .detect.activations import PooledActivations, collect, collect_poolings
from .detect.corpus import PAPER_LANGUAGES, MultilingualCorpus
from .detect.neurons import FindConfig, LanguageNeurons, find_neurons
from .errors import LangNeuronsError
from .evaluate.control import ControlResult, EvaluateConfig, evaluate_control
from .model.hf_hooked import HFHookedModel
from .model.load import DEFAULT_MODEL, load_model
from .model.sites import NeuronIndex, resolve_sites
from .steer.generation import GenerationConfig, generate
from .steer.interventions import clamp_hooks

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL", "ControlResult", "EvaluateConfig", "FindConfig", "GenerationConfig", "HFHookedModel",
    "LangNeuronsError", "LanguageNeurons", "MultilingualCorpus", "NeuronIndex", "PAPER_LANGUAGES",
    "PooledActivations", "clamp_hooks", "collect", "collect_poolings", "evaluate_control", "find_neurons", "generate", "load_model",
    "resolve_sites",
]
