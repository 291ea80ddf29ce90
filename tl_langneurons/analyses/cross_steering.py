"""Cross-language steering: prompt in one language, clamp another's neurons, measure how often the
continuation is in the clamped language."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ..detect.corpus import MultilingualCorpus, draw
from ..detect.neurons import LanguageNeurons
from ..evaluate.metrics import is_language
from ..report.tables import markdown_matrix
from ..steer.generation import GenerationConfig, generate


def prompt_of(text: str, lang: str, words: int = 5) -> str:
    """The first words of a text (first characters for zh/ja) as a prompt."""
    if lang in ("zh", "ja"):
        return text[: 2 * words]
    return " ".join(text.split()[:words])


def cross_steering(model, neurons: LanguageNeurons, heldout: MultilingualCorpus, n_prompts: int = 10,
                   samples: int = 2, max_new_tokens: int = 32, seed: int = 0, which: str = "both",
                   progress: bool = True) -> dict:
    """Occurrence rate of the target language [source prompt language, target] when the target's
    neurons are clamped while continuing held-out prompts of the source language; plus the
    unclamped rate of each target under each source ("none")."""
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
            plain += [s.text for s in generate(model, GenerationConfig(max_new_tokens, seeds=seeds, prompt=p))]
            bar.update(1)
        for j, tgt in enumerate(langs):
            base[i, j] = np.mean(is_language(plain, tgt))
            hooks = neurons.hooks(tgt, which)
            outs = []
            for p in prompts[src]:
                outs += [s.text for s in generate(model, GenerationConfig(max_new_tokens, seeds=seeds, prompt=p), hooks)]
                bar.update(1)
            rate[i, j] = np.mean(is_language(outs, tgt))
    bar.close()
    return {"languages": langs, "rate": rate.tolist(), "none": base.tolist(), "n_prompts": n_prompts,
            "samples": samples, "max_new_tokens": max_new_tokens, "which": which, "k": neurons.k}


def cross_steering_markdown(res: dict) -> str:
    L = res["languages"]
    return (f"Target-language rate when continuing {res['n_prompts']} held-out prompts x {res['samples']} samples "
            f"({res['max_new_tokens']} tokens) of the row language with the column language's {res['which']}-{res['k']} "
            "neurons clamped\n\n" + markdown_matrix(L, L, np.array(res["rate"]), ".2f")
            + "\nWithout clamping (rate of the column language)\n\n" + markdown_matrix(L, L, np.array(res["none"]), ".2f"))
