"""Read the residual stream while a language's neurons are clamped: ``neurons.hooks(...)`` composes
with ``run_with_cache`` like any other TransformerLens hook.

    python examples/clamped_residual_stream.py

Prints, per layer, how far the clamp moves the residual stream at the last position (relative
L2 change), and the top next tokens with and without the clamp.
"""

from __future__ import annotations

import torch

import tl_langneurons as tln


def main(model="gemma-3-270m", lang: str = "de", n_per_lang: int = 100, k: int = 1000,
         text: str = "The weather today is") -> list[float]:
    model = tln.load_model(model)
    neurons = tln.find_neurons(model, tln.MultilingualCorpus.bundled().sample(n_per_lang, seed=0), k=k, progress=False)
    ids = model.tokenizer(text, return_tensors="pt").input_ids
    n_layers = neurons.index.n_layers
    want = lambda name: name.endswith("hook_resid_post")  # noqa: E731
    with torch.no_grad():
        logits, plain = model.run_with_cache(ids, names_filter=want)
        with model.hooks(fwd_hooks=neurons.hooks(lang)):
            logits_c, clamped = model.run_with_cache(ids, names_filter=want)
    changes = []
    for layer in range(n_layers):
        name = f"blocks.{layer}.hook_resid_post"
        a, b = plain[name][0, -1], clamped[name][0, -1]
        changes.append(float((b - a).norm() / a.norm()))
        print(f"layer {layer:2d}: residual stream moved by {changes[-1]:.3f} (relative L2)")
    for tag, lg in (("plain", logits), ("clamped", logits_c)):
        top = torch.topk(lg[0, -1], 5).indices.tolist()
        print(f"{tag:8s} next tokens: {[model.tokenizer.decode([t]) for t in top]}")
    return changes


if __name__ == "__main__":
    main()
