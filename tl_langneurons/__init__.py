"""tl-langneurons: find the language-specific neurons of a multilingual decoder LM and steer the
language it writes by clamping them (Kojima et al., NAACL 2024), on TransformerLens hook points.

Subpackages follow the stages of the method: ``model`` (loading, hook sites, the fallback hooked
module), ``detect`` (corpus, pooled activations, AP ranking, ``LanguageNeurons``), ``steer``
(interventions, generation), ``evaluate`` (metrics, control experiment, sweep), ``analyses``
(placement, deactivation, attribution, token view, cross-steering) and ``report``. :class:`Study`
runs them on one result folder; the command line is a thin layer over it.
"""

from .analyses.attribution import AttributionConfig
from .analyses.cross_steering import CrossSteerConfig
from .analyses.deactivation import DeactivationConfig
from .detect.activations import PooledActivations, collect, collect_poolings
from .detect.corpus import PAPER_LANGUAGES, CorpusConfig, MultilingualCorpus
from .detect.neurons import FindConfig, LanguageNeurons, find_neurons
from .detect.rank import rank_units
from .errors import LangNeuronsError
from .evaluate.control import ControlResult, EvaluateConfig, evaluate_control
from .evaluate.sweep import SweepConfig, run_sweep
from .model.hf_hooked import HFHookedModel
from .model.load import DEFAULT_MODEL, ModelConfig, load_model
from .model.protocol import HookedModel
from .model.sae import attach_sae
from .model.sites import NeuronIndex, resolve_sites
from .steer.pairs import SteerPairsConfig
from .steer.generation import GenerationConfig, generate, generate_many
from .steer.interventions import clamp_hooks
from .steer.setting import SteeringConfig
from .study import DemoConfig, Study, run_demo

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "SteerConfig":  # the earlier name, easy to confuse with SteeringConfig
        import warnings

        warnings.warn("SteerConfig is deprecated; use SteerPairsConfig", DeprecationWarning, stacklevel=2)
        return SteerPairsConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DEFAULT_MODEL", "AttributionConfig", "ControlResult", "CorpusConfig", "CrossSteerConfig", "DeactivationConfig",
    "DemoConfig", "EvaluateConfig", "FindConfig", "GenerationConfig", "HFHookedModel", "HookedModel",
    "LangNeuronsError", "LanguageNeurons", "ModelConfig", "MultilingualCorpus", "NeuronIndex", "PAPER_LANGUAGES",
    "PooledActivations", "SteerPairsConfig", "SteeringConfig", "Study", "SweepConfig", "attach_sae", "clamp_hooks", "collect", "collect_poolings",
    "evaluate_control", "find_neurons", "generate", "generate_many", "load_model", "rank_units", "resolve_sites", "run_demo",
    "run_sweep",
]
