"""An ablation sweep from a REPL: zero-ablate more and more of one language's neurons with
``model.hooks(...)`` and watch the next-token loss on that language and on another one.

    python examples/ablation_sweep.py
"""

from __future__ import annotations

import tl_langneurons as tln
from tl_langneurons.evaluate.metrics import text_losses


def main(model="gemma-3-270m", lang: str = "fr", other: str = "en", n_per_lang: int = 100,
         ks=(10, 100, 1000), n_eval: int = 20) -> list[tuple[int, float, float]]:
    model = tln.load_model(model)
    select, heldout = tln.MultilingualCorpus.bundled().split(n_eval, seed=0)
    neurons = tln.find_neurons(model, select.sample(n_per_lang, seed=0), k=max(ks), progress=False)

    def loss(texts):
        total, count = text_losses(model, texts)
        return total / count

    base_l, base_o = loss(heldout.texts[lang]), loss(heldout.texts[other])
    print(f"baseline loss: {lang} {base_l:.3f}, {other} {base_o:.3f}")
    rows = []
    for k in ks:
        with model.hooks(fwd_hooks=neurons.hooks(lang, which="both", value="zero", k=k)):
            dl, do = loss(heldout.texts[lang]) - base_l, loss(heldout.texts[other]) - base_o
        rows.append((k, dl, do))
        print(f"k={k:5d}: loss change {lang} {dl:+.3f}, {other} {do:+.3f}")
    return rows


if __name__ == "__main__":
    main()
