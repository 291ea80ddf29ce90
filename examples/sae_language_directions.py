"""Language directions read through a sparse autoencoder (SAELens), and steering by an SAE latent beside
steering by language neurons (the calls of ``tl_langneurons.analyses.sae_directions``).

Needs transformer-lens 3.x (``HookedTransformer``, which SAELens drives) and sae-lens, e.g. the environment
``TL_LANGNEURONS_VENV=.venv-tl3 TL_LANGNEURONS_EXTRA="transformer-lens>=3.9,<4 sae-lens" ./run.sh info`` makes:

    .venv-tl3/bin/python examples/sae_language_directions.py --train-steps 300   # an SAE trained here (minutes)
    .venv-tl3/bin/python examples/sae_language_directions.py --sae-path runs/my-sae   # yours (sae.save_model)
"""

from __future__ import annotations

import argparse
import sys

import torch

import tl_langneurons as tln
from tl_langneurons.analyses import sae_directions as sd


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--model", default="gemma-3-270m", help="gemma-3-270m (offline) or a local model folder")
    sae = p.add_mutually_exclusive_group(required=True)
    sae.add_argument("--sae-path", help="an SAE folder (SAE.load_from_disk; written by sae.save_model)")
    sae.add_argument("--train-steps", type=int, help="train a TopK SAE with SAELens for this many steps")
    p.add_argument("--save-sae", help="--train-steps: keep the trained SAE in this folder")
    p.add_argument("--layer", type=int, help="layer of blocks.L.hook_resid_post (default 0.6 x the layers)")
    p.add_argument("--n-train", type=int, default=128, help="--train-steps: texts per language to train on")
    p.add_argument("--batch-tokens", type=int, default=1024, help="--train-steps: tokens per training step")
    p.add_argument("--n-per-lang", type=int, default=50, help="texts per language for find")
    p.add_argument("--n-read", type=int, default=64, help="held-out texts per language read through the SAE")
    p.add_argument("--k", type=int, default=100, help="neurons per set (top and bottom)")
    p.add_argument("--lang", default="de", help="target language of the steering")
    p.add_argument("--methods", default="clamp,add,diffmean", help="neuron/residual methods beside the latent")
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=32)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sd.check_environment()  # one line, before any model loads, without transformer-lens 3.x and sae-lens
    model = tln.load_model(args.model, backend="hooked")
    select, held = tln.MultilingualCorpus.bundled().split(0.2, seed=0)
    neurons = tln.find_neurons(model, select.sample(args.n_per_lang, seed=0), k=args.k, progress=False)
    if args.train_steps is not None:
        layer = sd.default_layer(model.cfg.n_layers) if args.layer is None else args.layer
        texts = select.sample(args.n_train, seed=1).flat()[0]
        sae = sd.train_sae(model, texts, layer, args.train_steps, batch_tokens=args.batch_tokens, save_to=args.save_sae)
        print("trained the SAE", file=sys.stderr)
    else:
        sae = sd.load_sae(args.sae_path, device=str(next(model.parameters()).device))
    layer = sd.sae_layer(sae, model)  # the layer the SAE reads, from its metadata
    if args.layer is not None and args.layer != layer:
        raise SystemExit(f"the SAE reads layer {layer}, not --layer {args.layer}")
    read = held.sample(args.n_read, seed=0)
    ev = sd.explained_variance(sae, torch.cat(sd.token_residuals(model, read.flat()[0], layer)))
    print(f"SAE: {sae.cfg.architecture()} with {sae.cfg.d_sae} latents on {sd.resid_hook(layer)}, "
          f"explained variance {ev:.3f} on held-out tokens\n")
    found = sd.read_directions(model, neurons, sae, read.texts, layer)  # per language: its direction's latents
    print(sd.latents_table(found, layer))
    conditions = sd.compare_steering(model, neurons, sae, layer, args.lang, found[args.lang].steer_latent,
                                     methods=[m for m in args.methods.split(",") if m],
                                     seeds=range(1, args.samples + 1), max_new_tokens=args.max_new_tokens)
    print(sd.steering_table(conditions, args.lang))
    for c in conditions:
        print(f"## {c.name}")
        for s, (lang, p) in zip(c.samples, c.languages):
            print(f"  seed {s.seed} [{lang} {p:.2f}]: {s.text!r}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except tln.LangNeuronsError as e:  # a tool error is one line and exit status 2, as the command line's
        print(f"sae_language_directions: error: {e}", file=sys.stderr)
        raise SystemExit(2)
