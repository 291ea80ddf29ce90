"""A sweep's search space: the setting it starts from and its stages (name, field or fields, values), from the
intervention's :attr:`~tl_langneurons.steer.base.Intervention.axes` and the config's values for each
(:data:`AXES`), the later stages of issue 29's ideas (:func:`_later_stages`) and the stages of the shared search
(:func:`_shared_stages`). A stage's value sets its field(s) on the setting so far (:func:`_with`)."""

from __future__ import annotations

from ...detect.neurons import LanguageNeurons
from ...registry import intervention, owners, spoken
from ...steer.base import ks
from ...steer.residual import default_layer, residual_layers
from .config import SweepConfig
from .rows import _DEPENDENT, _with

__all__ = ["AXES", "_DEPENDENT", "_later_stages", "_search_space", "_shared_stages", "_with"]

def _search_space(cfg: SweepConfig, neurons: LanguageNeurons, n: int) -> tuple[dict, list, list[str]]:
    """The starting setting and the stages (name, field, values) searched for the intervention: a source stage
    first where asked for, then its :attr:`~tl_langneurons.steer.base.Intervention.axes` in order, each with the
    values the config gives (:data:`AXES`); a single value is not a stage (every setting tried has it)."""
    cls = intervention(cfg.method)
    notes = []
    first = [("source", "source", [None if x == "none" else x for x in cfg.sources])] if len(cfg.sources) > 1 else []
    # positions searched: "last" (clamp's) from BOS with the KV cache equals "all"
    if "last" in cls.positions and (cfg.heldout or cfg.lcb):
        moved = list(cfg.positions)
    else:
        moved = [p for p in cfg.positions if p != "last"] or ["all"]
        if "last" in cfg.positions and "last" in cls.positions:
            notes.append("positions=last skipped: from BOS with the KV cache it equals positions=all")
        elif "last" in cfg.positions and tuple(cfg.positions) != tuple(SweepConfig.positions):
            notes.append(f"positions=last skipped: it is for {spoken(owners('last', 'positions'))}, not {cfg.method}")
    fixed = {"positions": moved[0]} if len(moved) == 1 and moved[0] != "all" else {}
    if len(cfg.sources) == 1 and cfg.sources[0] != "none":  # one source (prompt or a language): every setting's
        fixed["source"] = cfg.sources[0]
    start = {"method": cfg.method, **cls.sweep_start(cfg, neurons, n), **fixed}
    if "which" in cls.axes and (len(cfg.neuron_sets) > 1 or list(cfg.neuron_sets) != ["both"]):
        start["which"] = cfg.neuron_sets[0]
    stages = list(first)
    for axis in cls.axes:
        values, more = AXES[axis](cfg, neurons, n, moved)
        notes += more
        if values is not None and (len(values) > 1 or axis not in ("which", "positions")):
            stages.append((axis, axis, values))
    return start, stages, notes


def _residual_shape(neurons: LanguageNeurons) -> tuple[int, int]:
    means, _ = neurons.residual()
    return means.shape[1], means.shape[2]


# the values a sweep searches for each field an intervention names in its axes: (config, neurons, n, positions)
# -> (values, notes)
AXES = {
    "k": lambda cfg, neurons, n, moved: ks(cfg.k_fractions, n),
    "scale": lambda cfg, neurons, n, moved: (list(cfg.scales), []),
    "alpha": lambda cfg, neurons, n, moved: (list(cfg.alphas), []),
    "layers": lambda cfg, neurons, n, moved: ([None if x == "all" else x for x in cfg.layer_sets], []),
    "which": lambda cfg, neurons, n, moved: (list(cfg.neuron_sets), []),
    "positions": lambda cfg, neurons, n, moved: (moved, []),
    "layer": lambda cfg, neurons, n, moved: (residual_layers(_residual_shape(neurons)[0], cfg.resid_layers), []),
    "n_dims": lambda cfg, neurons, n, moved: (sorted({max(1, round(f * _residual_shape(neurons)[1]))
                                                     for f in cfg.dim_fractions}), []),
    "coef": lambda cfg, neurons, n, moved: (list(cfg.coefs), []),
}


def _later_stages(cfg: SweepConfig, neurons: LanguageNeurons) -> list[tuple[str, str | tuple[str, ...], list]]:
    """The stages after the method's own (issue 29's ideas, each only where asked for): the k neurons spread over
    the layers (clamp, add), strength per layer band and a diffmean term (add), norm preservation (diffmean, add's
    term), the first N tokens only, and a two-phase strength (the first N tokens at full strength, the rest at a
    share of it)."""
    stages: list[tuple[str, str | tuple[str, ...], list]] = []
    if cfg.spreads:
        stages.append(("spread", "spread", list(cfg.spreads)))
    if cfg.band_alphas:
        stages.append(("bands", "band_alphas", list(cfg.band_alphas)))
    if cfg.resid_alphas:
        means, _ = neurons.residual()
        layers = list(cfg.resid_layers) if cfg.resid_layers is not None else [default_layer(means.shape[1])]
        norms = [False, True] if cfg.keep_norm_stage else [False]  # the term as it is and norm-preserving
        stages.append(("diffmean term", ("layer", "resid_alpha", "keep_norm"),
                       [(L, a, kn) for L in layers for a in cfg.resid_alphas for kn in norms]))
    elif cfg.keep_norm_stage:  # diffmean
        stages.append(("keep_norm", "keep_norm", [True]))
    if cfg.steer_tokens:  # the best setting, steered only while its first N tokens are written
        stages.append(("steer_tokens", "steer_tokens", list(cfg.steer_tokens)))
    if cfg.after_scales:
        stages.append(("two-phase", ("steer_tokens", "after_scale"),
                       [(n, a) for n in cfg.steer_tokens for a in cfg.after_scales]))
    return stages


def _shared_stages(cfg: SweepConfig, neurons: LanguageNeurons, n: int) -> list[tuple[str, str | tuple[str, ...], list]]:
    """The stages of the shared search (``--shared-search``): equal norms first (so the strength stages after it
    tune the equalised addition), the method's own stages, then the later stages each with its idea off among
    the values (the start may carry it: a language's pick)."""
    _, own, _ = _search_space(cfg, neurons, n)
    out: list[tuple[str, str | tuple[str, ...], list]] = (
        [("equal norm", "equal_norm", [None, *cfg.equal_norms])] if cfg.equal_norms else [])
    out += own
    for stage, key, values in _later_stages(cfg, neurons):
        if stage == "two-phase":  # off: the first N tokens at full strength then unsteered, or every token steered
            off = [(None, None), *((n_tokens, None) for n_tokens in cfg.steer_tokens)]
        elif isinstance(key, tuple):  # the diffmean term: none (its layer and norm preservation with it)
            off = [tuple(False if f == "keep_norm" else None for f in key)]
        else:
            off = [False if key == "keep_norm" else None]
        out.append((stage, key, [*off, *values]))
    return out

