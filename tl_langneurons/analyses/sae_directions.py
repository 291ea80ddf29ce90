"""Language directions read through a sparse autoencoder (SAELens), and steering by an SAE latent beside
steering by language neurons: the machinery of ``examples/sae_language_directions.py``.

On a ``HookedTransformer`` (``tln.load_model(..., backend="hooked")``; SAELens' SAEs read TransformerLens
hook points such as ``blocks.L.hook_resid_post``):

1. per language, the diffmean steering direction at layer L (the unit difference of the language's mean
   residual and the other languages' mean, as ``SteeringConfig(method="diffmean")`` adds it) is read
   through an SAE on ``blocks.L.hook_resid_post`` (:func:`read_directions`, :func:`latents_table`): the
   latents whose decoder rows point along the direction, the latents whose activation on held-out text of
   the language exceeds their activation on the other languages most, and how much of the direction the
   SAE's reconstruction of the two means keeps;
2. steering towards a target language by the SAE latent most specific to it (``h += alpha * ||h_L|| *
   W_dec[j] / ||W_dec[j]||`` at ``blocks.L.hook_resid_post``, a plain TransformerLens fwd hook,
   :func:`latent_hooks`) beside steering by its neurons (``clamp``, ``add``) and by the diffmean direction,
   on the same seeds, with the lid.176 rate of the target language (:func:`compare_steering`).

The SAE is yours (:func:`load_sae`: ``SAE.load_from_disk`` of a folder written by ``sae.save_model``, or a
release of SAELens' directory, which needs the hub), or a small TopK SAE trained here by SAELens' own
``SAETrainer`` on the model's activations of a few texts held in memory (:func:`train_sae`). Needs
transformer-lens 3.x (``HookedTransformer``, which SAELens drives) and sae-lens: :func:`check_environment`
says so in one line.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..detect.neurons import LanguageNeurons
from ..errors import LangNeuronsError
from ..evaluate.metrics import LID_THRESHOLD, identify
from ..steer.generation import Sample, generate_many
from ..registry import intervention
from ..steer.setting import SteeringConfig
from ..tables import markdown_table

Hooks = list[tuple[str, Callable]]


def resid_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def _device(model) -> torch.device:
    return next(model.parameters()).device


def default_layer(n_layers: int) -> int:
    """The layer an SAE is trained on when none is given: ``round(0.6 * n_layers)``, the residual steering
    methods' default (middle-to-late)."""
    return min(n_layers - 1, round(0.6 * n_layers))


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


def direction(neurons: LanguageNeurons, lang: str, layer: int) -> torch.Tensor:
    """The unit diffmean direction of ``lang`` at ``layer``: ``mu_L(lang) - mean_{l != lang} mu_L(l)`` of the
    residual means ``find`` records, normalised; the vector ``SteeringConfig(method="diffmean")`` adds,
    divided by its length."""
    means = neurons.residual()[0][:, layer].double()
    if lang not in neurons.languages or len(neurons.languages) < 2:
        raise LangNeuronsError(f"{lang!r} is not one of two or more languages: {', '.join(neurons.languages)}")
    t = neurons.languages.index(lang)
    diff = means[t] - means[[i for i in range(len(means)) if i != t]].mean(0)
    return (diff / diff.norm().clamp_min(1e-12)).float()


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
def read_directions(model, neurons: LanguageNeurons, sae, texts: dict[str, list[str]], layer: int,
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
    if positions == "generated":
        from ..steer.positions import only_generated  # inactive in the prompt pass, as the methods' "generated"

        hooks = only_generated(hooks)
    return hooks


@dataclass
class Condition:
    name: str
    samples: list[Sample]
    languages: list[tuple[str, float]]  # lid.176 (label, score) of each sample

    def rate(self, lang: str) -> float:
        """Share of samples lid.176 gives ``lang`` with a score above 0.5 (the project's rate)."""
        hits = [l == lang and p > LID_THRESHOLD for l, p in self.languages]
        return sum(hits) / len(hits)


def compare_steering(model, neurons: LanguageNeurons, sae, layer: int, lang: str, latent: int, *,
                     alpha: float = 1.0, methods: Sequence[str] = ("clamp", "add", "diffmean"),
                     seeds: Sequence[int] = (1, 2, 3), prompt: str | None = None, max_new_tokens: int = 32,
                     positions: str = "generated") -> list[Condition]:
    """Samples on the same seeds: unsteered, each method of ``SteeringConfig`` towards ``lang`` (diffmean at
    ``layer`` with ``alpha``), and the SAE ``latent`` added with ``alpha`` times the layer's typical residual
    norm (the scale diffmean uses, so alpha means the same for both). All in one batched run."""
    hooks: dict[str, Hooks] = {"unsteered": []}
    for method in methods:
        residual = not intervention(method).neuron_level  # steers the residual stream: at the SAE's layer
        cfg = SteeringConfig(method=method, positions=positions, **({"layer": layer, "alpha": alpha} if residual else {}))
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


def check_environment() -> None:
    """SAELens drives a HookedTransformer: both must be importable (transformer-lens 3.x and sae-lens);
    one line otherwise, before any model loads."""
    from importlib import util
    from importlib.metadata import PackageNotFoundError, version

    if util.find_spec("sae_lens") is None:
        raise LangNeuronsError("this example needs sae-lens: pip install sae-lens \"transformer-lens>=3.9,<4\"")
    try:
        from transformer_lens import HookedTransformer  # noqa: F401 - transformer-lens 3.x only
    except ImportError:
        try:
            tl = version("transformer-lens")
        except PackageNotFoundError:
            tl = "not installed"
        raise LangNeuronsError(f"this example needs transformer-lens 3.x (HookedTransformer, which SAELens "
                                   f"drives); it has {tl}: pip install sae-lens \"transformer-lens>=3.9,<4\"")
