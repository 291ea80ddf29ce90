"""SAE latents vs MLP neurons as a language's units, on one model, one corpus split and the same settings.

    .venv-tl3/bin/python benchmarks/bench_sae_units.py [--model gemma-3-270m] [--k 10] [--train-steps 300]
        [--samples 12] [--no-record]

Needs transformer-lens 3.x and sae-lens (``.venv-tl3``). The model is loaded as a HookedTransformer; a TopK SAE is
trained by SAELens (``sae_directions.train_sae``, as ``examples/sae_language_directions.py`` does) on the default
layer's ``hook_resid_post`` from selection texts, and attached by the tool (``attach_sae``: SAELens' error term,
so the model's outputs, and its neurons' activations, are what they were). The bundled corpus is split into
selection (find) and held-out parts. Per language, for the top ``k`` units of each kind (the SAE's latents, the
``mlp_post`` neurons of every layer): their mean AP on the selection texts, the mean AP of the same units on the
held-out texts, and steering from BOS with the same settings (clamp and add of the top set, seeds 1..N, one
``CellRunner``): lid.176 rate of the target, gated rate (target and fluent), retention (fluent share against the
unsteered samples of the same seeds).

Why the same k as a count: the steering compares interventions that touch as many units; the paper's k=1000 is
2.7% of Gemma-3-270M's 36,864 neurons but 39% of a 2,560-latent SAE, and per-language SAE selections (LangFIR,
Chou et al.) keep a few latents, so k is small (10 by default) for both.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_gib, publish, table  # noqa: E402

import tl_langneurons as tln  # noqa: E402
from tl_langneurons.analyses import sae_directions as sd  # noqa: E402
from tl_langneurons.evaluate.cells import CellRunner, steered  # noqa: E402
from tl_langneurons.evaluate.control import EvaluateConfig  # noqa: E402
from tl_langneurons.steer.setting import SteeringConfig  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--k", type=int, default=10, help="top units per language, of each kind")
    ap.add_argument("--n-per-lang", type=int, default=60, help="selection texts per language for find")
    ap.add_argument("--n-train", type=int, default=96, help="selection texts per language the SAE is trained on")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--heldout", type=float, default=0.2, help="share of the bundled corpus held out")
    ap.add_argument("--samples", type=int, default=12, help="steering samples per language and setting (seeds 1..N)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--clamp-scales", default="1,4", help="clamp settings: multiples of the median clamp value")
    ap.add_argument("--add-alphas", default="1,4", help="add settings: alpha x (mu_on - mu_off)")
    ap.add_argument("--work", default=str(Path(__file__).parent / ".work" / "sae_units"))
    ap.add_argument("--no-record", action="store_true")
    return ap.parse_args()


def settings(args) -> dict[str, SteeringConfig]:
    out = {f"clamp x{s:g}": SteeringConfig(method="clamp", scale=s) for s in map(float, args.clamp_scales.split(","))}
    out.update({f"add a={a:g}": SteeringConfig(method="add", alpha=a) for a in map(float, args.add_alphas.split(","))})
    return out


def ap_rows(units: dict[str, tln.LanguageNeurons], held: dict[str, tln.LanguageNeurons], langs: list[str]) -> list:
    """Per language and kind: mean AP of the top set on the selection texts, and of the same units held out."""
    rows = []
    for lang in langs:
        li = langs.index(lang)
        row = [lang]
        for kind in units:
            idx = units[kind].sets[lang]["top"].neurons
            row += [f"{units[kind].sets[lang]['top'].ap.mean().item():.3f}",
                    f"{held[kind].ap[li, idx].mean().item():.3f}"]
        rows.append(row)
    return rows


def steering_rows(model, units, langs, args, refs) -> list:
    """Per setting, language and kind: lid.176 rate / gated rate / retention of the top set steered from BOS."""
    cfg = EvaluateConfig(samples=args.samples, max_new_tokens=args.max_new_tokens, batch_size=64,
                         reference_nll_texts=4)
    seeds = range(1, args.samples + 1)
    out, base = {}, {}
    for kind, neurons in units.items():
        runner = CellRunner(model, neurons, cfg, refs, None, progress=False)
        keys = [(name, lang) for name in settings(args) for lang in langs]
        groups = [[steered(lang, settings(args)[name], "top", args.k, seeds)] for name, lang in keys]
        for (name, lang), m in zip(keys, runner.measure(groups)):
            out[(name, lang, kind)] = m.row()
            base[lang] = m.baseline  # the unsteered samples of the same seeds, scored on the target
    # the baseline: rate / gated rate / fluent share (retention divides the steered fluent share by it)
    rows = [["unsteered", lang, *[f"{base[lang].rate:.2f} / {base[lang].gated_rate:.2f} / fluent "
                                  f"{base[lang].fluent:.2f}"] * len(units)] for lang in langs]
    for name in settings(args):
        for lang in langs:
            cells = [out[(name, lang, kind)] for kind in units]
            rows.append([name, lang, *[f"{c['rate']:.2f} / {c['gated_rate']:.2f} / "
                                       f"{'-' if c['retention'] is None else format(c['retention'], '.2f')}"
                                       for c in cells]])
        mean = [np.nanmean([np.nan if out[(name, l, kind)][m] is None else out[(name, l, kind)][m] for l in langs])
                for kind in units for m in ("rate", "gated_rate", "retention")]
        rows.append([name, "**mean**", *[f"{mean[3 * i]:.2f} / {mean[3 * i + 1]:.2f} / {mean[3 * i + 2]:.2f}"
                                         for i in range(len(units))]])
    return rows


def main() -> None:
    args = parse_args()
    sd.check_environment()
    t0 = time.perf_counter()
    model = tln.load_model(args.model, backend="hooked")
    layer = sd.default_layer(model.cfg.n_layers)
    select, held = tln.MultilingualCorpus.bundled().split(args.heldout, seed=0)
    langs = select.languages
    t = {"load": time.perf_counter() - t0}
    t0 = time.perf_counter()
    sae_dir = Path(args.work) / "sae"
    sae = sd.train_sae(model, select.sample(args.n_train, seed=1).flat()[0], layer, args.train_steps,
                       batch_tokens=args.batch_tokens, seed=0, save_to=str(sae_dir))
    ev = sd.explained_variance(sae, torch.cat(sd.token_residuals(model, held.flat()[0][::4], layer)))
    t["train_sae"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    site = tln.attach_sae(model, sae_dir)  # outputs unchanged: the neurons' activations are as without it
    find = select.sample(args.n_per_lang, seed=0)
    units = {"latents": tln.find_neurons(model, find, sites=site, k=args.k, progress=False),
             "neurons": tln.find_neurons(model, find, sites="mlp_post", k=args.k, progress=False)}
    held_found = {kind: tln.find_neurons(model, held, sites=u.index.spec, k=args.k, progress=False)
                  for kind, u in units.items()}
    t["find"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    refs = {l: held.texts[l] for l in langs}  # the fluency gate is set on held-out text of each language
    steer = steering_rows(model, units, langs, args, refs)
    t["steer"] = time.perf_counter() - t0
    kinds = list(units)
    ap_table = table(["lang", *[f"{k} {w}" for k in kinds for w in ("AP (selection)", "AP (held-out)")]],
                     ap_rows(units, held_found, langs))
    st_table = table(["setting", "target", *[f"top {args.k} {k}: rate / gated / retention" for k in kinds]], steer)
    n_units = {k: u.index.n_neurons for k, u in units.items()}
    body = (f"Top {args.k} units per language: {n_units['latents']} SAE latents ({sae.cfg.architecture()}, k="
            f"{sae.cfg.k}, at {site}, explained variance {ev:.3f} on held-out tokens) vs {n_units['neurons']} "
            f"mlp_post neurons. Selection: {args.n_per_lang} texts per language; held out: "
            f"{len(held.texts[langs[0]])} per language (bundled corpus, split {args.heldout:g}, seed 0).\n\n"
            f"{ap_table}\n\nSteering from BOS, seeds 1..{args.samples}, {args.max_new_tokens} new tokens, the top "
            f"set (which=top, k={args.k}); the same settings and seeds for both kinds:\n\n{st_table}")
    notes = (f"SAE: {args.train_steps} steps x {args.batch_tokens} tokens on {args.n_train} texts per language "
             f"(sae_directions.train_sae). Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in t.items())
             + f"; peak RSS {peak_rss_gib():.2f} GiB. Command: {' '.join(sys.argv)}")
    publish(f"SAE latents vs MLP neurons as units ({args.model}, backend hooked)", body, notes, args.no_record)


if __name__ == "__main__":
    main()
