"""Cross-language steering: prompt in one language, clamp another's neurons, measure how often the
continuation is in the clamped language."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..config import option
from ..detect.corpus import MultilingualCorpus, draw
from ..detect.neurons import LanguageNeurons
from ..errors import LangNeuronsError
from ..evaluate.metrics import is_language
from ..model.protocol import HookedModel
from ..provenance import write_md_json
from ..report.tables import markdown_matrix
from ..steer.generation import GenerationConfig, generate


def prompt_of(text: str, lang: str, words: int = 5) -> str:
    """The first words of a text (first characters for zh/ja) as a prompt."""
    if lang in ("zh", "ja"):
        return text[: 2 * words]
    return " ".join(text.split()[:words])


@dataclass
class CrossSteeringResult:
    """Rates of ``cross_steering`` [prompt language, target language]; ``save`` writes
    cross_steering.md, .json and .png."""

    languages: list[str]
    rate: np.ndarray  # target rate with the target's neurons clamped
    none: np.ndarray  # target rate without clamping
    n_prompts: int
    samples: int
    max_new_tokens: int
    which: str
    k: int

    def markdown(self) -> str:
        L = self.languages
        return (f"Target-language rate when continuing {self.n_prompts} held-out prompts x {self.samples} samples "
                f"({self.max_new_tokens} tokens) of the row language with the column language's {self.which}-{self.k} "
                "neurons clamped\n\n" + markdown_matrix(L, L, self.rate, ".2f")
                + "\nWithout clamping (rate of the column language)\n\n" + markdown_matrix(L, L, self.none, ".2f"))

    def to_json(self) -> dict:
        return {"languages": self.languages, "rate": self.rate.tolist(), "none": self.none.tolist(),
                "n_prompts": self.n_prompts, "samples": self.samples, "max_new_tokens": self.max_new_tokens,
                "which": self.which, "k": self.k}

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``cross_steering.md``, ``cross_steering.json`` and the heatmap ``cross_steering.png``."""
        from ..report import plots

        paths = write_md_json(directory, "cross_steering", self.markdown(), self.to_json()) + [Path(directory) / "cross_steering.png"]
        plots.matrix_heatmap(self.rate, self.languages, self.languages,
                             "Target rate: row = prompt language, column = clamped language", paths[2])
        return paths


@dataclass
class CrossSteerConfig:
    """How many held-out prompts, samples and tokens :func:`cross_steering` generates."""

    n_prompts: int = option(10, "held-out prompts per language")
    samples: int = option(2, "samples per prompt")
    max_new_tokens: int = option(32, "tokens to generate")
    seed: int = option(0, "seed of the prompt draw")
    which: str = option("both", "which neurons to clamp", choices=("both", "top", "bottom"))

    def __post_init__(self) -> None:
        if min(self.n_prompts, self.samples, self.max_new_tokens) < 1:
            raise LangNeuronsError("n_prompts, samples and max_new_tokens must be at least 1")


def cross_steering(model: HookedModel, neurons: LanguageNeurons, heldout: MultilingualCorpus,
                   config: CrossSteerConfig | None = None, *, progress: bool = True,
                   **overrides) -> CrossSteeringResult:
    """Occurrence rate of the target language [source prompt language, target] when the target's
    neurons are clamped while continuing held-out prompts of the source language; plus the
    unclamped rate of each target under each source ("none")."""
    cfg = replace(config or CrossSteerConfig(), **overrides)
    n_prompts, samples, max_new_tokens, seed, which = cfg.n_prompts, cfg.samples, cfg.max_new_tokens, cfg.seed, cfg.which
    neurons.check_model(model)
    langs = [l for l in neurons.languages if l in heldout.texts]
    prompts = {l: [prompt_of(t, l) for t in draw(heldout.texts[l], n_prompts, seed, l)] for l in langs}
    L = len(langs)
    rate, base = np.zeros((L, L)), np.zeros((L, L))
    seeds = list(range(1, samples + 1))
    bar = tqdm(total=L * (L + 1) * n_prompts, desc="cross-steering", disable=not progress)
    for i, src in enumerate(langs):
        plain = []
        for p in prompts[src]:
            plain += [s.text for s in generate(model, GenerationConfig(max_new_tokens=max_new_tokens, seeds=seeds, prompt=p))]
            bar.update(1)
        for j, tgt in enumerate(langs):
            base[i, j] = np.mean(is_language(plain, tgt))
            hooks = neurons.hooks(tgt, which)
            outs = []
            for p in prompts[src]:
                outs += [s.text for s in generate(model, GenerationConfig(max_new_tokens=max_new_tokens, seeds=seeds, prompt=p), hooks)]
                bar.update(1)
            rate[i, j] = np.mean(is_language(outs, tgt))
    bar.close()
    return CrossSteeringResult(langs, rate, base, n_prompts, samples, max_new_tokens, which, neurons.k)

