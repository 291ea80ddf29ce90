"""Deactivation: ablate one language's neurons (zero or mean) and measure the next-token loss on
held-out texts of every language, beside a random control with the same per-site counts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..config import check_options, option
from ..detect.corpus import MultilingualCorpus, draw
from ..detect.neurons import LanguageNeurons
from ..errors import LangNeuronsError
from ..evaluate.metrics import text_losses
from ..model.protocol import HookedModel
from ..progress import progress_bar
from ..provenance import write_md_json
from ..tables import markdown_matrix
from ..steer.interventions import clamp_hooks


def random_like(neurons: LanguageNeurons, selected: torch.Tensor, seed: int) -> torch.Tensor:
    """Random neurons with the same count per site as ``selected`` (the control)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for sl in neurons.index.slices:
        n = int(((selected >= sl.offset) & (selected < sl.offset + sl.size)).sum())
        if n:
            out.append(sl.offset + torch.randperm(sl.size, generator=gen)[:n])
    return torch.cat(out) if out else selected.new_empty(0)


@dataclass
class DeactivationResult:
    """Loss changes of ``deactivation``; ``save`` writes deactivation.md, .json and .png."""

    languages: list[str]
    baseline: np.ndarray  # [eval] mean loss per token
    delta: np.ndarray  # [ablated, eval] loss change
    delta_random: np.ndarray  # [ablated, eval] loss change with random neurons
    meta: dict = field(default_factory=dict)

    def markdown(self) -> str:
        L = self.languages
        return (f"Next-token loss change (nats/token) on held-out texts when a language's neurons are "
                f"{self.meta.get('mode')}-ablated ({self.meta.get('which')}, k={self.meta.get('k')}); rows: ablated "
                f"language, columns: evaluated language. Baseline loss: "
                + ", ".join(f"{l} {b:.3f}" for l, b in zip(L, self.baseline)) + "\n\n"
                + markdown_matrix(L, L, self.delta, "+.3f")
                + "\nControl: random neurons, same count per site\n\n" + markdown_matrix(L, L, self.delta_random, "+.3f"))

    def to_json(self) -> dict:
        return {"languages": self.languages, "baseline": self.baseline.tolist(), "delta": self.delta.tolist(),
                "delta_random": self.delta_random.tolist(), "meta": self.meta}

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``deactivation.md``, ``deactivation.json`` and the heatmap ``deactivation.png``."""
        from ..report import plots

        paths = write_md_json(directory, "deactivation", self.markdown(), self.to_json()) + [Path(directory) / "deactivation.png"]
        plots.matrix_heatmap(self.delta, self.languages, self.languages,
                             f"Loss change when the row language's neurons are {self.meta.get('mode')}-ablated",
                             paths[2], "+.2f", "RdBu_r", center=True)
        return paths


@dataclass
class DeactivationConfig:
    """How :func:`deactivation` ablates and how many held-out texts it scores."""

    mode: str = option("zero", "set the neurons to zero, or to their mean over all texts", choices=("zero", "mean"))
    which: str = option("both", "which neurons to ablate", choices=("both", "top", "bottom"))
    n_texts: int = option(50, "held-out texts per language", at_least=1)
    seed: int = option(0, "seed of the text draw and of the random control")

    def __post_init__(self) -> None:
        if self.mode not in ("zero", "mean"):
            raise LangNeuronsError(f"unknown ablation mode {self.mode!r}; use zero or mean")
        check_options(self)


def deactivation(model: HookedModel, neurons: LanguageNeurons, heldout: MultilingualCorpus,
                 config: DeactivationConfig | None = None, *, progress: bool = True,
                 **overrides) -> DeactivationResult:
    """Loss change matrix [ablated language, evaluated language] (and its random control).

    ``overrides`` set :class:`DeactivationConfig` fields (``n_texts=3``, ``mode="mean"``).
    """
    cfg = replace(config or DeactivationConfig(), **overrides)
    mode, which, n_texts, seed = cfg.mode, cfg.which, cfg.n_texts, cfg.seed
    if mode not in ("zero", "mean"):
        raise LangNeuronsError(f"unknown ablation mode {mode!r}; use zero or mean")
    neurons.check_model(model)
    langs = [l for l in neurons.languages if l in heldout.texts]
    if not langs:
        raise LangNeuronsError("the held-out corpus has none of the neurons' languages")
    texts = {l: draw(heldout.texts[l], n_texts, seed, l) for l in langs}

    def hooks_for(sel: torch.Tensor):
        vals = torch.zeros(len(sel)) if mode == "zero" else neurons.mean_all[sel]
        return clamp_hooks(neurons.index, sel, vals)

    def losses(hooks):
        return np.array([(lambda t, c: t / c)(*text_losses(model, texts[e], hooks)) for e in langs])

    base = losses([])
    delta = np.zeros((len(langs), len(langs)))
    rand = np.zeros_like(delta)
    with progress_bar(len(langs), "deactivation", "language", disable=not progress) as bar:
        for i, l in enumerate(langs):
            sel, _ = neurons.selected(l, which)
            delta[i] = losses(hooks_for(sel)) - base
            rand[i] = losses(hooks_for(random_like(neurons, sel, seed + i))) - base
            bar.update(1)
    return DeactivationResult(langs, base, delta, rand, {"mode": mode, "which": which, "k": neurons.k,
                                                         "n_texts": n_texts, "seed": seed, "heldout": heldout.name})
