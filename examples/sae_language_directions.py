"""Language directions read through a sparse autoencoder (SAELens), and steering by an SAE latent beside
steering by language neurons.

What it shows, on a ``HookedTransformer`` (``tln.load_model(..., backend="hooked")``; SAELens' SAEs read
TransformerLens hook points such as ``blocks.L.hook_resid_post``):

1. the language neurons of the model, found on a sample of the bundled corpus (``tln.find_neurons``);
2. per language, the diffmean steering direction at layer L (the unit difference of the language's mean
   residual and the other languages' mean, as ``SteeringConfig(method="diffmean")`` adds it) read through an
   SAE on ``blocks.L.hook_resid_post``: the latents whose decoder rows point along the direction, the latents
   whose activation on held-out text of the language exceeds their activation on the other languages most,
   and how much of the direction the SAE's reconstruction of the two means keeps; one Markdown table;
3. steering towards a target language by the SAE latent most specific to it (``h += alpha * ||h_L|| *
   W_dec[j] / ||W_dec[j]||`` at ``blocks.L.hook_resid_post``, a plain TransformerLens fwd hook) beside
   steering by its neurons (``clamp``, ``add``) and by the diffmean direction, on the same seeds, with the
   lid.176 rate of the target language.

Run it in an environment with transformer-lens 3.x (which has ``HookedTransformer``; 4.x does not) and
sae-lens::

    pip install tl-langneurons sae-lens "transformer-lens>=3.9,<4"
    python examples/sae_language_directions.py --train-steps 300 --layer 6     # Gemma-3-270M, an SAE trained here
                                                                                # (minutes on a CPU)
    python examples/sae_language_directions.py --sae-path runs/my-sae          # your own SAE from a folder
    python examples/sae_language_directions.py --sae-release gemma-scope-2-270m-pt-res \\
        --sae-id layer_12_width_16k_l0_medium                                   # a released SAE (needs the hub)
    python examples/sae_language_directions.py --model path/to/hf-folder --train-steps 300 --layer 3

Your own SAE, in Python or with the options above: it must read ``blocks.L.hook_resid_post`` of this model
(its ``cfg.metadata.hook_name``; the layer is taken from there) and have ``d_in`` equal to the model's width::

    from sae_lens import SAE
    sae = SAE.load_from_disk("runs/my-sae")        # a folder written by sae.save_model(...) (cfg.json + weights)
    sae = SAE.from_pretrained("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")   # from the hub

``--train-steps N`` trains a small TopK SAE with SAELens itself (its ``SAETrainer``, on the model's activations
of the bundled corpus held in memory: no hub), ``--save-sae DIR`` keeps it.
From a notebook: ``from examples.sae_language_directions import main; main(["--train-steps", "300"])``, or
call the functions (``train_sae``, ``read_directions``, ``latents_table``, ``compare_steering``) yourself.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

import tl_langneurons as tln
from tl_langneurons.evaluate.metrics import LID_THRESHOLD, identify
from tl_langneurons.report.tables import markdown_table
from tl_langneurons.steer.generation import Sample, generate_many
from tl_langneurons.steer.methods import SteeringConfig, default_layer, diffmean, only_generated

Hooks = list[tuple[str, Callable]]


def resid_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ---- the SAE: yours, a released one, or one trained here ----------------------------------------

def load_sae(path: str | None = None, release: str | None = None, sae_id: str | None = None, device: str = "cpu"):
    """An SAE from a folder (``SAE.load_from_disk``: what ``sae.save_model`` writes) or a release of SAELens'
    directory (``SAE.from_pretrained``; this downloads from the Hugging Face hub)."""
    from sae_lens import SAE

    if path is not None:
        return SAE.load_from_disk(path, device=device)
    if release is None or sae_id is None:
        raise ValueError("give an SAE folder, or a release and an SAE id")
    return SAE.from_pretrained(release, sae_id, device=device)  # needs the hub


def sae_layer(sae, model) -> int:
    """The layer L whose ``blocks.L.hook_resid_post`` the SAE reads (from its metadata), checked against
    the model."""
    name = sae.cfg.metadata.hook_name or ""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", name)
    if m is None:
        raise ValueError(f"this example reads SAEs on blocks.L.hook_resid_post; this SAE reads {name!r}")
    layer = int(m.group(1))
    if layer >= model.cfg.n_layers or sae.cfg.d_in != model.cfg.d_model:
        raise ValueError(f"the SAE (layer {layer}, d_in {sae.cfg.d_in}) does not fit this model "
                         f"({model.cfg.n_layers} layers, d_model {model.cfg.d_model})")
    return layer


def train_sae(model, texts: Sequence[str], layer: int, steps: int, *, d_sae: int | None = None,
              k: int | None = None, batch_tokens: int = 1024, lr: float = 2e-3, seed: int = 0,
              save_to: str | None = None):
    """A TopK SAE on ``blocks.L.hook_resid_post`` trained by SAELens' ``SAETrainer`` for ``steps`` steps of
    ``batch_tokens`` token activations; returns the inference SAE (``sae_lens.SAE``), saved to ``save_to``
    when given.

    The activations of ``texts`` (BOS and the text, as ``find`` tokenizes them; the BOS position, an outlier
    in many models, left out) are computed once and kept in memory; the trainer draws shuffled batches from
    them, epoch after epoch, so a small corpus costs one forward pass however many steps are taken. Inputs
    are normalised to norm sqrt(d_model) while training and the scale is folded into the weights at the end;
    the learning rate decays linearly to 0 over the last fifth of the steps. For a corpus too large for
    memory, SAELens' ``LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=ds)`` streams
    the activations from the model instead (same trainer)."""
    from sae_lens import SAE, LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    device = str(_device(model))
    acts = torch.cat(token_residuals(model, texts, layer))
    if len(acts) < batch_tokens:
        raise ValueError(f"{len(acts)} tokens of text are fewer than one batch of {batch_tokens}; give more texts")
    gen = torch.Generator().manual_seed(seed)

    def batches():
        while True:  # one epoch after another, reshuffled
            for idx in torch.randperm(len(acts), generator=gen).split(batch_tokens):
                if len(idx) == batch_tokens:
                    yield acts[idx].to(device)

    d_model = model.cfg.d_model
    d_sae = d_sae or 4 * d_model
    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_model, d_sae=d_sae, k=k or min(32, max(8, d_sae // 32)),
                                                normalize_activations="expected_average_only_in", device=device))
    meta = sae.cfg.metadata  # what an SAE records of where it reads (SAELens' runner sets the same)
    meta.hook_name, meta.model_name, meta.prepend_bos = resid_hook(layer), getattr(model.cfg, "model_name", None), True
    cfg = SAETrainerConfig(total_training_samples=steps * batch_tokens, train_batch_size_samples=batch_tokens, lr=lr,
                           lr_end=lr / 10, lr_decay_steps=steps // 5, device=device, n_batches_for_norm_estimate=8,
                           logger=LoggingConfig(log_to_wandb=False))
    trained = SAETrainer(cfg=cfg, sae=sae, data_provider=batches()).fit()
    if save_to is not None:
        trained.save_inference_model(save_to)
        return SAE.load_from_disk(save_to, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_inference_model(tmp)
        return SAE.load_from_disk(tmp, device=device)


# ---- reading the language directions through the SAE ----------------------------------------------

@torch.no_grad()
def token_residuals(model, texts: Sequence[str], layer: int, batch_size: int = 16,
                    max_tokens: int = 128) -> list[torch.Tensor]:
    """Per text, the residual stream at ``blocks.L.hook_resid_post`` of its tokens [n_tokens, d_model]: BOS,
    then the text (as ``find`` tokenizes it), with the BOS position left out."""
    tok, hook = model.tokenizer, resid_hook(layer)
    bos = tok.bos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = []
    for i in range(0, len(texts), batch_size):
        seqs = [([bos] if bos is not None else []) + ids[:max_tokens]
                for ids in tok(list(texts[i:i + batch_size]), add_special_tokens=False)["input_ids"]]
        ids = torch.full((len(seqs), max(map(len, seqs))), pad, dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.long)
        for r, s in enumerate(seqs):  # right padding: the text's positions never see the padding
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        dev = _device(model)
        _, cache = model.run_with_cache(ids.to(dev), attention_mask=mask.to(dev), names_filter=hook,
                                        stop_at_layer=layer + 1)
        first = 0 if bos is None else 1
        out += [cache[hook][r, first:len(s)].float().cpu() for r, s in enumerate(seqs)]
    return out


@torch.no_grad()
def explained_variance(sae, acts: torch.Tensor) -> float:
    """1 - (squared reconstruction error) / (total variance) of the SAE on activations [n, d_model]."""
    x = acts.to(sae.W_dec.device, sae.W_dec.dtype)
    return 1.0 - float((x - sae.decode(sae.encode(x))).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@torch.no_grad()
def mean_latents(model, sae, texts: Sequence[str], layer: int) -> torch.Tensor:
    """Per text, the SAE latents' activations averaged over its tokens [n_texts, d_sae]."""
    dev, dtype = sae.W_dec.device, sae.W_dec.dtype
    return torch.stack([sae.encode(h.to(dev, dtype)).float().mean(0).cpu()
                        for h in token_residuals(model, texts, layer)])


def direction(neurons: tln.LanguageNeurons, lang: str, layer: int) -> torch.Tensor:
    """The unit diffmean direction of ``lang`` at ``layer``: the vector ``SteeringConfig(method="diffmean")``
    adds (from the residual means ``find`` records), normalised."""
    (_, add_fn), = diffmean(neurons, lang, layer=layer, alpha=1.0)
    v = add_fn(torch.zeros(neurons.residual()[0].shape[2]), None)  # 0 + resid_norms[L] * u
    return v / v.norm().clamp_min(1e-12)


@dataclass
class LanguageLatents:
    """What an SAE says about one language's steering direction u."""

    lang: str
    by_cosine: list[tuple[int, float]]  # latents whose decoder row is nearest u: (latent, cos(W_dec[j], u))
    by_activation: list[tuple[int, float]]  # latents most active on the language: (latent, mean act - others')
    steer_cosine: float  # cos(W_dec[steer latent], u)
    kept: float  # cos(u, SAE(mu_lang) - SAE(mu_others)): the part of u the SAE's reconstruction keeps

    @property
    def steer_latent(self) -> int:
        """The latent that steers towards the language: the one most active on it."""
        return self.by_activation[0][0]


@torch.no_grad()
def read_directions(model, neurons: tln.LanguageNeurons, sae, texts: dict[str, list[str]], layer: int,
                    top: int = 3) -> dict[str, LanguageLatents]:
    """Per language of ``neurons``: its diffmean direction at ``layer`` read through ``sae`` (on
    ``blocks.L.hook_resid_post``); latent activations are measured on ``texts`` (per language, held out)."""
    dev, dtype = sae.W_dec.device, sae.W_dec.dtype
    w = sae.W_dec.float().cpu()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    acts = {lang: mean_latents(model, sae, texts[lang], layer).mean(0) for lang in neurons.languages}
    means = neurons.residual()[0][:, layer].float()

    def recon(x: torch.Tensor) -> torch.Tensor:
        return sae.decode(sae.encode(x.to(dev, dtype)[None]))[0].float().cpu()

    out = {}
    for li, lang in enumerate(neurons.languages):
        u = direction(neurons, lang, layer)
        cos = w @ u
        rest = [l for l in neurons.languages if l != lang]
        delta = acts[lang] - torch.stack([acts[l] for l in rest]).mean(0)
        by_cos = [(int(j), float(cos[j])) for j in torch.topk(cos, top).indices]
        by_act = [(int(j), float(delta[j])) for j in torch.topk(delta, top).indices]
        others = means[[neurons.languages.index(l) for l in rest]].mean(0)
        kept = torch.nn.functional.cosine_similarity(recon(means[li]) - recon(others), u, dim=0)
        out[lang] = LanguageLatents(lang, by_cos, by_act, float(cos[by_act[0][0]]), float(kept))
    return out


def latents_table(found: dict[str, LanguageLatents], layer: int) -> str:
    """One Markdown row per language."""
    def cell(pairs, fmt):
        return ", ".join(f"{j} ({v:{fmt}})" for j, v in pairs)

    header = ["lang", f"latents along u (cos W_dec, u) at L{layer}", "latents most active on lang (act - others)",
              "steer latent", "cos(W_dec[steer], u)", "cos(u, SAE(mu_lang) - SAE(mu_others))"]
    rows = [[r.lang, cell(r.by_cosine, ".2f"), cell(r.by_activation, "+.3g"), r.steer_latent,
             f"{r.steer_cosine:+.2f}", f"{r.kept:+.2f}"] for r in found.values()]
    return markdown_table(header, rows)


# ---- steering by a latent beside steering by neurons ------------------------------------------------

def latent_hooks(sae, latent: int, layer: int, scale: float, positions: str = "all") -> Hooks:
    """``h <- h + scale * W_dec[latent] / ||W_dec[latent]||`` at ``blocks.L.hook_resid_post``: a plain
    TransformerLens fwd hook (``positions="generated"`` leaves the prompt pass unsteered, as the methods do)."""
    d = sae.W_dec[latent].detach().float().cpu()
    vec = scale * d / d.norm().clamp_min(1e-12)

    def add_latent(resid, hook):
        return resid + vec.to(resid.device, resid.dtype)

    hooks = [(resid_hook(layer), add_latent)]
    return only_generated(hooks) if positions == "generated" else hooks


@dataclass
class Condition:
    name: str
    samples: list[Sample]
    languages: list[tuple[str, float]]  # lid.176 (label, score) of each sample

    def rate(self, lang: str) -> float:
        """Share of samples lid.176 gives ``lang`` with a score above 0.5 (the project's rate)."""
        hits = [l == lang and p > LID_THRESHOLD for l, p in self.languages]
        return sum(hits) / len(hits)


def compare_steering(model, neurons: tln.LanguageNeurons, sae, layer: int, lang: str, latent: int, *,
                     alpha: float = 1.0, methods: Sequence[str] = ("clamp", "add", "diffmean"),
                     seeds: Sequence[int] = (1, 2, 3), prompt: str | None = None, max_new_tokens: int = 32,
                     positions: str = "generated") -> list[Condition]:
    """Samples on the same seeds: unsteered, each method of ``SteeringConfig`` towards ``lang`` (diffmean at
    ``layer`` with ``alpha``), and the SAE ``latent`` added with ``alpha`` times the layer's typical residual
    norm (the scale diffmean uses, so alpha means the same for both). All in one batched run."""
    hooks: dict[str, Hooks] = {"unsteered": []}
    for method in methods:
        extra = {"layer": layer, "alpha": alpha} if method in ("diffmean", "sparse") else {}
        cfg = SteeringConfig(method=method, positions=positions, **extra)
        hooks[cfg.label()] = cfg.hooks(neurons, lang)
    norm = float(neurons.residual()[1][layer])
    where = "" if positions == "all" else f" {positions} positions"
    hooks[f"SAE latent {latent} L{layer} a={alpha:g}{where}"] = latent_hooks(sae, latent, layer, alpha * norm,
                                                                             positions)
    names = list(hooks)
    requests = [(prompt, int(s)) for _ in names for s in seeds]
    groups = [g for g in range(len(names)) for _ in seeds]
    samples = generate_many(model, requests, max_new_tokens=max_new_tokens, groups=groups,
                            group_hooks=[hooks[n] for n in names])
    n = len(seeds)
    out = []
    for g, name in enumerate(names):
        mine = samples[g * n:(g + 1) * n]
        out.append(Condition(name, mine, identify([s.text for s in mine])))
    return out


def steering_table(conditions: Sequence[Condition], lang: str) -> str:
    rows = [[c.name, f"{c.rate(lang):.2f}", " / ".join(f"{l} {p:.2f}" for l, p in c.languages)] for c in conditions]
    return markdown_table(["condition", f"lid.176 rate of {lang}", "lid.176 label and score per seed"], rows)


# ---- command line -----------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m", help="gemma-3-270m (offline) or a local model folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sae-path", help="an SAE folder (SAE.load_from_disk; written by sae.save_model)")
    src.add_argument("--sae-release", help="an SAELens release for SAE.from_pretrained (needs the hub), with --sae-id")
    src.add_argument("--train-steps", type=int, help="train a TopK SAE with SAELens for this many steps")
    p.add_argument("--sae-id", help="the SAE id within --sae-release")
    p.add_argument("--layer", type=int, help="layer of blocks.L.hook_resid_post (a given SAE's own layer; "
                   "--train-steps: default 0.6 x the layers)")
    p.add_argument("--d-sae", type=int, help="--train-steps: latents (default 4 x d_model)")
    p.add_argument("--sae-k", type=int, help="--train-steps: active latents per token (TopK)")
    p.add_argument("--n-train", type=int, default=128, help="--train-steps: texts per language the SAE trains on")
    p.add_argument("--batch-tokens", type=int, default=1024, help="--train-steps: tokens per training step")
    p.add_argument("--save-sae", help="--train-steps: keep the trained SAE in this folder")
    p.add_argument("--n-per-lang", type=int, default=50, help="texts per language for find")
    p.add_argument("--n-read", type=int, default=64, help="held-out texts per language for the latents' activations")
    p.add_argument("--k", type=int, default=100, help="neurons per set (top and bottom)")
    p.add_argument("--lang", default="de", help="target language of the steering")
    p.add_argument("--alpha", type=float, default=1.0, help="strength of diffmean and of the latent, times the "
                   "layer's typical residual norm")
    p.add_argument("--methods", default="clamp,add,diffmean", help="neuron/residual methods beside the latent")
    p.add_argument("--positions", default="generated", choices=("all", "generated"))
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--prompt", default=None, help="prompt (default: BOS only, as the paper)")
    p.add_argument("--top", type=int, default=3, help="latents shown per language")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if bool(args.sae_release) != bool(args.sae_id):
        p.error("--sae-release and --sae-id go together")
    _check_environment()
    return args


def _check_environment() -> None:
    """SAELens drives a HookedTransformer: both must be importable (transformer-lens 3.x and sae-lens);
    one line otherwise, before any model loads."""
    from importlib import util
    from importlib.metadata import PackageNotFoundError, version

    if util.find_spec("sae_lens") is None:
        raise tln.LangNeuronsError("this example needs sae-lens: pip install sae-lens \"transformer-lens>=3.9,<4\"")
    try:
        from transformer_lens import HookedTransformer  # noqa: F401 - transformer-lens 3.x only
    except ImportError:
        try:
            tl = version("transformer-lens")
        except PackageNotFoundError:
            tl = "not installed"
        raise tln.LangNeuronsError(f"this example needs transformer-lens 3.x (HookedTransformer, which SAELens "
                                   f"drives); it has {tl}: pip install sae-lens \"transformer-lens>=3.9,<4\"")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()

    def stage(what: str) -> None:
        print(f"[{time.perf_counter() - t0:5.0f} s] {what}", file=sys.stderr, flush=True)

    model = tln.load_model(args.model, backend="hooked")
    stage(f"loaded {args.model} as a {type(model).__name__}")
    select, held = tln.MultilingualCorpus.bundled().split(0.2, seed=args.seed)
    neurons = tln.find_neurons(model, select.sample(args.n_per_lang, seed=args.seed), k=args.k, progress=False)
    stage(f"found the language neurons (k={neurons.k})")
    if args.train_steps is not None:
        layer = default_layer(model.cfg.n_layers) if args.layer is None else args.layer
        texts = select.sample(args.n_train, seed=args.seed + 1).flat()[0]
        sae = train_sae(model, texts, layer, args.train_steps, d_sae=args.d_sae, k=args.sae_k,
                        batch_tokens=args.batch_tokens, seed=args.seed, save_to=args.save_sae)
    else:
        sae = load_sae(args.sae_path, args.sae_release, args.sae_id, device=str(_device(model)))
    stage("trained the SAE" if args.train_steps is not None else "loaded the SAE")
    layer = sae_layer(sae, model)
    if args.layer is not None and args.layer != layer:
        raise SystemExit(f"the SAE reads layer {layer}, not --layer {args.layer}")
    read = held.sample(args.n_read, seed=args.seed)
    ev = explained_variance(sae, torch.cat(token_residuals(model, read.flat()[0], layer)))
    print(f"SAE: {sae.cfg.architecture()} with {sae.cfg.d_sae} latents on {resid_hook(layer)}, "
          f"explained variance {ev:.3f} on held-out tokens\n")

    found = read_directions(model, neurons, sae, read.texts, layer, top=args.top)
    print(latents_table(found, layer))
    stage("read the directions through the SAE")
    if args.lang not in found:
        raise SystemExit(f"--lang {args.lang} is not among {', '.join(found)}")
    latent = found[args.lang].steer_latent
    methods = [m for m in args.methods.split(",") if m]
    conditions = compare_steering(model, neurons, sae, layer, args.lang, latent, alpha=args.alpha, methods=methods,
                                  seeds=range(1, args.samples + 1), prompt=args.prompt,
                                  max_new_tokens=args.max_new_tokens, positions=args.positions)
    stage("generated")
    print(steering_table(conditions, args.lang))
    for c in conditions:
        print(f"## {c.name}")
        for s, (l, p) in zip(c.samples, c.languages):
            print(f"  seed {s.seed} [{l} {p:.2f}]: {s.text!r}")
    return 0


def _main() -> int:
    """``main`` as a command: a tool error is one line and exit status 2, as the tool's own command line."""
    try:
        return main()
    except tln.LangNeuronsError as e:
        print(f"sae_language_directions: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(_main())
