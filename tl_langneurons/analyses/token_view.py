"""Token view: per-token activation of each language's top neurons on one text, and a per-token
language score from the neurons alone."""

from __future__ import annotations

import numpy as np
import torch

from ..detect.neurons import LanguageNeurons
from ..model.driver import Runner


@torch.no_grad()
def token_view(model, neurons: LanguageNeurons, text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(tokens, activation [L, T], score [L, T]) for one text.

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
            flat = x.reshape(x.shape[0], x.shape[1], -1)[0].float()
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
    return tokens, act, score
