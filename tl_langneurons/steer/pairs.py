"""Side by side: the same seeds sampled without and with steering towards one language (any intervention)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

from ..config import check_options, option
from ..detect.neurons import LanguageNeurons
from ..errors import LangNeuronsError
from ..model.protocol import HookedModel
from .generation import GenerationConfig, Sample, generate
from .methods import SteeringConfig, check_not_empty, full_count, neuron_count


@dataclass
class SteerPairsConfig:
    """What ``steer`` samples (:func:`steer_pairs`): a few seeds, without and with steering towards the
    language (earlier name: ``SteerConfig``)."""

    lang: str = option(help="target language code")
    prompt: str = ""  # BOS only when empty
    which: str = option("both", "which neurons to steer (clamp, add)", choices=("both", "top", "bottom", "middle"))
    k: int | None = option(None, "neurons per set (none: the k of the folder)", parse=int)
    seed: int = option(1, "first seed")
    samples: int = option(3, "samples, seeds SEED..SEED+N-1", at_least=1)
    max_new_tokens: int = option(48, "tokens to generate", at_least=1)
    temperature: float = option(GenerationConfig.temperature, "sampling temperature over the full vocabulary",
                                positive=True)
    batch_size: int = option(GenerationConfig.batch_size, "samples per batch", at_least=1)
    # the intervention (clamp by default: the paper); its options come from SteeringConfig
    steering: SteeringConfig = field(default_factory=SteeringConfig)

    def __post_init__(self) -> None:
        check_options(self)
        self.generation()  # the prompt

    def generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                seeds=list(range(self.seed, self.seed + self.samples)), batch_size=self.batch_size,
                                prompt=self.prompt or None)


def with_sweep_pick(config: SteerPairsConfig, picks: dict[str, SteeringConfig], where: str = "the sweep"
                    ) -> tuple[SteerPairsConfig, str | None]:
    """``config`` steering with a sweep's pick for its language (``picks`` from
    :func:`~tl_langneurons.evaluate.sweep.sweep_settings`), and a note to show or None. A pick that steered
    away from each prompt's language (``source="prompt"``) takes ``config.steering.source`` as the source here."""
    if config.lang not in picks:
        raise LangNeuronsError(f"{where} has no setting for {config.lang!r} (it searched {', '.join(picks)})")
    st, note = picks[config.lang], None
    if st.source == "prompt":
        st = st.for_prompt(config.steering.source)
        if st.source is None:
            note = "the sweep steered away from each prompt's language; give --source LANG for yours (now: no source)"
    return replace(config, steering=st, which=st.which, k=st.k), note


@dataclass
class SteerPair:
    """The samples of one seed: ``without`` steering and ``steered`` (by any method)."""

    without: Sample
    steered: Sample

    @property
    def with_clamp(self) -> Sample:
        """Deprecated name of :attr:`steered` (it holds the sample of any method, not only clamp)."""
        warnings.warn("SteerPair.with_clamp is deprecated; use SteerPair.steered", DeprecationWarning, stacklevel=2)
        return self.steered


def __getattr__(name: str):
    if name == "SteerConfig":  # the earlier name, easy to confuse with SteeringConfig
        warnings.warn("SteerConfig is deprecated; use SteerPairsConfig", DeprecationWarning, stacklevel=2)
        return SteerPairsConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def steering_of(config: SteerPairsConfig) -> SteeringConfig:
    """The intervention ``steer`` applies: the config's steering on its neuron set and k."""
    return replace(config.steering, which=config.which, k=config.k)


def check_steer(neurons: LanguageNeurons, config: SteerPairsConfig) -> None:
    """What ``steer`` asks of the neurons, before the model loads: a setting that acts on at least one neuron."""
    check_not_empty(neurons, steering_of(config), config.lang)


def steer_label(neurons: LanguageNeurons, config: SteerPairsConfig) -> str:
    """What ``steer`` applies, in words: for clamp and add the neuron set with its k, and the real number of
    neurons where the selector chose fewer (lape, actprob); for diffmean and sparse their setting."""
    st = steering_of(config)
    if not st.neuron_level:
        return st.resolved(neurons).label()
    k = config.k or neurons.k
    n = neuron_count(neurons, st, config.lang)
    real = "" if n == full_count(neurons, st) else f" ({n} neuron{'s' if n != 1 else ''}: {neurons.method} chose fewer)"
    return f"{st.method} {config.which}-{k} neurons{real}"


def steer_pairs(model: HookedModel, neurons: LanguageNeurons, config: SteerPairsConfig) -> list[SteerPair]:
    """One (unsteered, steered) pair of samples per seed, on the same seeds; a setting that would steer no
    neuron (an empty set of lape or actprob) is refused."""
    check_steer(neurons, config)
    neurons.check_model(model)
    hooks = steering_of(config).hooks(neurons, config.lang)
    gcfg = config.generation()
    return [SteerPair(a, b) for a, b in zip(generate(model, gcfg), generate(model, gcfg, hooks))]
