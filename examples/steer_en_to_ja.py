"""Find language neurons, then steer generation from an English prompt into Japanese.

    python examples/steer_en_to_ja.py            # Gemma-3-270M and the bundled corpus

From a notebook: ``from examples.steer_en_to_ja import main; main()``.
"""

from __future__ import annotations

import tl_langneurons as tln
from tl_langneurons.evaluate.metrics import is_language


def main(model="gemma-3-270m", n_per_lang: int = 100, k: int = 100, prompt: str = "My favourite season is",
         samples: int = 3, max_new_tokens: int = 32) -> list[tuple[str, str]]:
    model = tln.load_model(model)
    corpus = tln.MultilingualCorpus.bundled().sample(n_per_lang, seed=0)
    neurons = tln.find_neurons(model, corpus, k=k, progress=False)
    cfg = tln.GenerationConfig(max_new_tokens=max_new_tokens, seeds=list(range(1, samples + 1)), prompt=prompt)
    plain = tln.generate(model, cfg)
    # the clamp is an ordinary list of TransformerLens fwd_hooks
    with model.hooks(fwd_hooks=neurons.hooks("ja", which="both")):
        steered = tln.generate(model, cfg)
    pairs = []
    for a, b in zip(plain, steered):
        print(f"seed {a.seed}\n  plain:   {a.text!r}\n  steered: {b.text!r}")
        pairs.append((a.text, b.text))
    rate = sum(is_language([b for _, b in pairs], "ja")) / len(pairs)
    print(f"Japanese (lid.176 > 0.5) with the clamp: {rate:.0%}")
    return pairs


if __name__ == "__main__":
    main()
