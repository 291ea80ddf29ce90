"""Token view: per-token activation of each language's top neurons on one text, and a per-token
language score from the neurons alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..detect.neurons import LanguageNeurons
from ..model.driver import Runner
from ..model.protocol import HookedModel
from ..model.sites import flat_units
from ..tables import markdown_table


@dataclass
class TokenViewResult:
    """Per-token scores of one text ([languages, tokens] each); ``save`` writes tokens.png."""

    tokens: list[str]
    activation: np.ndarray  # mean over each language's top neurons of (activation - overall mean)
    score: np.ndarray  # activation minus the same over the bottom neurons
    languages: list[str]

    def best(self) -> list[str]:
        """The language of each token: the highest score."""
        return [self.languages[i] for i in self.score.argmax(0)]

    def lines(self) -> list[str]:
        """One line per token: the token, its language and every language's score."""
        return [f"{t!r:>16}  {b}  " + " ".join(f"{l}:{v:+.2f}" for l, v in zip(self.languages, col))
                for t, b, col in zip(self.tokens, self.best(), self.score.T)]

    def markdown(self) -> str:
        return markdown_table(["token", "language", *self.languages],
                              [[repr(t), b, *col] for t, b, col in zip(self.tokens, self.best(), self.score.T)], "+.2f")

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "activation": self.activation.tolist(), "score": self.score.tolist(),
                "languages": self.languages}

    def save(self, directory: str | Path) -> list[Path]:
        """Write the figure ``tokens.png``."""
        from ..report import plots

        path = Path(directory) / "tokens.png"
        plots.token_strip(self.tokens, self.score, self.languages, path)
        return [path]


@torch.no_grad()
def token_view(model: HookedModel, neurons: LanguageNeurons, text: str) -> TokenViewResult:
    """Tokens, activation [L, T] and score [L, T] of one text.

    activation: mean over each language's top neurons of (activation - overall mean);
    score: that minus the same for its bottom neurons; the per-token language is the argmax.
    """
    runner = Runner(model)
    ids = ([runner.bos_id] if runner.bos_id is not None else []) + runner.tokenizer(text, add_special_tokens=False)["input_ids"]
    want = torch.cat([torch.cat([neurons.sets[l]["top"].neurons, neurons.sets[l]["bottom"].neurons])
                      for l in neurons.languages]).unique()
    acts: dict[int, torch.Tensor] = {}

    def make(sl):
        units = want[(want >= sl.offset) & (want < sl.offset + sl.size)]

        def grab(x, hook):
            flat = flat_units(x)[0].float()
            for n in units.tolist():
                acts[n] = flat[:, n - sl.offset].cpu()
        return grab

    hooks = [(sl.hook, make(sl)) for sl in neurons.index.slices
             if ((want >= sl.offset) & (want < sl.offset + sl.size)).any()]
    with runner.hooks(hooks):
        runner.trunk(torch.tensor([ids], device=runner.device), torch.ones((1, len(ids)), dtype=torch.long, device=runner.device))
    L, T = len(neurons.languages), len(ids)
    act, score = np.zeros((L, T)), np.zeros((L, T))
    for i, l in enumerate(neurons.languages):
        top = neurons.sets[l]["top"].neurons.tolist()
        bot = neurons.sets[l]["bottom"].neurons.tolist()
        a = torch.stack([acts[n] - neurons.mean_all[n] for n in top]).mean(0)
        b = torch.stack([acts[n] - neurons.mean_all[n] for n in bot]).mean(0)
        act[i], score[i] = a.numpy(), (a - b).numpy()
    tokens = [runner.tokenizer.decode([t]) for t in ids]
    return TokenViewResult(tokens, act, score, list(neurons.languages))
