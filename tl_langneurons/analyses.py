"""Analyses that compose with TransformerLens, built from the same hooks as detection and control.

- ``deactivation``: ablate one language's neurons (zero or mean) and measure the next-token loss
  on held-out texts of every language; a random control with the same per-site counts.
- ``logit_attribution``: the tokens each selected ``mlp_post`` neuron's output direction promotes
  and suppresses through the unembedding, and how many match the neuron's language.
- ``token_view``: per-token activation of each language's top neurons on one text, and a per-token
  language score from the neurons alone.
- ``cross_steering``: prompt in one language, clamp another's neurons, measure the target rate.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .activations import make_batches, tokenize
from .backend import find_layers
from .corpus import MultilingualCorpus
from .errors import LangNeuronsError
from .evaluation import identify, is_language
from .generation import GenerationConfig, generate
from .intervention import clamp_hooks
from .neurons import LanguageNeurons
from .runner import Runner


def _md_matrix(rows: Sequence[str], cols: Sequence[str], m: np.ndarray, fmt: str) -> str:
    out = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    out += [f"| {r} | " + " | ".join(format(v, fmt) for v in m[i]) + " |" for i, r in enumerate(rows)]
    return "\n".join(out) + "\n"


def _pick(texts: Sequence[str], n: int, seed: int, lang: str) -> list[str]:
    """At most ``n`` of ``texts``, drawn with ``seed`` (the same draw as MultilingualCorpus.sample)."""
    if n < 1:
        raise LangNeuronsError(f"need at least 1 held-out text per language, got {n}")
    return list(texts) if len(texts) <= n else random.Random(f"{seed}-{lang}").sample(list(texts), n)


# ---- deactivation ----------------------------------------------------------------------------
@torch.no_grad()
def text_losses(model, texts: Sequence[str], fwd_hooks=(), batch_size: int = 16, max_length: int = 256) -> tuple[float, int]:
    """Summed next-token cross-entropy over the texts' real tokens, and the token count."""
    runner = Runner(model)
    tokd = tokenize(runner, texts, max_length)
    lengths = [len(t) for t in tokd.ids]
    total, count = 0.0, 0
    with runner.hooks(list(fwd_hooks)):
        for b in make_batches(lengths, batch_size, 8192):
            ids, mask = runner.pad([tokd.ids[i] for i in b])
            total += float(-runner.next_token_logprobs(ids, mask).sum())
            count += int(mask[:, 1:].sum())
    return total, count


def random_like(neurons: LanguageNeurons, selected: torch.Tensor, seed: int) -> torch.Tensor:
    """Random neurons with the same count per site as ``selected`` (the control)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for sl in neurons.index.slices:
        n = int(((selected >= sl.offset) & (selected < sl.offset + sl.size)).sum())
        if n:
            out.append(sl.offset + torch.randperm(sl.size, generator=gen)[:n])
    return torch.cat(out) if out else selected.new_empty(0)


@dataclass
class DeactivationResult:
    languages: list[str]
    baseline: np.ndarray  # [eval] mean loss per token
    delta: np.ndarray  # [ablated, eval] loss change
    delta_random: np.ndarray  # [ablated, eval] loss change with random neurons
    meta: dict = field(default_factory=dict)

    def markdown(self) -> str:
        L = self.languages
        return (f"Next-token loss change (nats/token) on held-out texts when a language's neurons are "
                f"{self.meta.get('mode')}-ablated ({self.meta.get('which')}, k={self.meta.get('k')}); rows: ablated "
                f"language, columns: evaluated language. Baseline loss: "
                + ", ".join(f"{l} {b:.3f}" for l, b in zip(L, self.baseline)) + "\n\n"
                + _md_matrix(L, L, self.delta, "+.3f")
                + "\nControl: random neurons, same count per site\n\n" + _md_matrix(L, L, self.delta_random, "+.3f"))


def deactivation(model, neurons: LanguageNeurons, heldout: MultilingualCorpus, mode: str = "zero",
                 which: str = "both", n_texts: int = 50, seed: int = 0, progress: bool = True) -> DeactivationResult:
    """Loss change matrix [ablated language, evaluated language] (and its random control)."""
    if mode not in ("zero", "mean"):
        raise LangNeuronsError(f"unknown ablation mode {mode!r}; use zero or mean")
    neurons.check_model(model)
    langs = [l for l in neurons.languages if l in heldout.texts]
    if not langs:
        raise LangNeuronsError("the held-out corpus has none of the neurons' languages")
    texts = {l: _pick(heldout.texts[l], n_texts, seed, l) for l in langs}

    def hooks_for(sel: torch.Tensor):
        vals = torch.zeros(len(sel)) if mode == "zero" else neurons.mean_all[sel]
        return clamp_hooks(neurons.index, sel, vals)

    def losses(hooks):
        return np.array([(lambda t, c: t / c)(*text_losses(model, texts[e], hooks)) for e in langs])

    base = losses([])
    delta = np.zeros((len(langs), len(langs)))
    rand = np.zeros_like(delta)
    for i, l in enumerate(tqdm(langs, desc="deactivation", disable=not progress)):
        sel, _ = neurons.selected(l, which)
        delta[i] = losses(hooks_for(sel)) - base
        rand[i] = losses(hooks_for(random_like(neurons, sel, seed + i))) - base
    return DeactivationResult(langs, base, delta, rand, {"mode": mode, "which": which, "k": neurons.k,
                                                         "n_texts": n_texts, "seed": seed, "heldout": heldout.name})


# ---- direct logit attribution ----------------------------------------------------------------
def _weight(mod: nn.Module) -> torch.Tensor:
    w = getattr(mod, "weight", None)
    if w is None and hasattr(mod, "original_component"):
        w = mod.original_component.weight
    if w is None:
        raise LangNeuronsError(f"cannot read the weights of {type(mod).__name__}")
    return w.detach().float()


def _gain(mod: nn.Module | None) -> torch.Tensor | None:
    """Elementwise gain of a normalisation layer (Gemma's RMSNorm scales by 1 + weight)."""
    if mod is None:
        return None
    inner = getattr(mod, "original_component", mod)
    w = getattr(inner, "weight", None)
    if w is None:
        return None
    return (1.0 + w.detach().float()) if "Gemma" in type(inner).__name__ else w.detach().float()


def _sub(mod: nn.Module, names: Sequence[str]) -> nn.Module | None:
    for n in names:
        cur = mod
        for part in n.split("."):
            cur = getattr(cur, part, None)
            if cur is None:
                break
        if isinstance(cur, nn.Module):
            return cur
    return None


def neuron_directions(model, neurons_idx: torch.Tensor, index) -> torch.Tensor:
    """Output direction [n, d_model] of ``mlp_post`` neurons: the down-projection's column, times
    the elementwise gains of a post-MLP norm and the final norm where the architecture has them."""
    runner = Runner(model)
    if runner.hf is None:
        raise LangNeuronsError("logit attribution needs a Hugging Face based model (bridge or fallback)")
    layers = find_layers(runner.hf)
    final = _gain(_sub(runner.hf.base_model, ["norm", "final_layernorm", "ln_f", "layer_norm"]))
    out = []
    for n in neurons_idx.tolist():
        site, unit = index.locate(n)
        if not site.hook.endswith("mlp.hook_post"):
            raise LangNeuronsError(f"logit attribution works on mlp_post neurons; {site.hook} is another site")
        layer = layers[site.layer]
        down = _sub(layer, ["mlp.down_proj", "fc2", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.fc_out"])
        d = _weight(down)[:, unit].clone()
        post = _gain(_sub(layer, ["post_feedforward_layernorm"]))
        if post is not None:
            d = d * post
        if final is not None:
            d = d * final
        out.append(d)
    return torch.stack(out)


def token_script(token: str) -> set[str]:
    """Languages a token's characters can belong to by Unicode script: zh (Han), ja (kana or Han),
    latin (en de fr es and others)."""
    langs: set[str] = set()
    for ch in token:
        name = unicodedata.name(ch, "")
        if "HIRAGANA" in name or "KATAKANA" in name:
            langs.add("ja")
        elif "CJK UNIFIED" in name:
            langs.update({"zh", "ja"})
        elif "LATIN" in name:
            langs.add("latin")
    return langs


def token_matches(token: str, lang: str) -> bool:
    """Whether a token string belongs to ``lang``: Unicode script for zh/ja, lid.176 for the rest."""
    scripts = token_script(token)
    if lang in ("zh", "ja"):
        return lang in scripts and not (lang == "zh" and "ja" in scripts and any(
            "HIRAGANA" in unicodedata.name(c, "") or "KATAKANA" in unicodedata.name(c, "") for c in token))
    if "latin" not in scripts or len(token.strip()) < 3:
        return False
    return identify([token.strip()])[0][0] == lang


@torch.no_grad()
def logit_attribution(model, neurons: LanguageNeurons, languages: Sequence[str] | None = None, n_neurons: int = 50,
                      top_tokens: int = 20) -> list[dict]:
    """For the first ``n_neurons`` top neurons of each language: promoted and suppressed tokens and
    the share of promoted tokens that match the language. One row per neuron."""
    runner = Runner(model)
    unembed = runner.hf.get_output_embeddings()
    W_U = _weight(unembed)  # [vocab, d_model]
    tok = runner.tokenizer
    rows = []
    for lang in languages or neurons.languages:
        sel = neurons.sets[lang]["top"].neurons[:n_neurons]
        dirs = neuron_directions(model, sel, neurons.index)
        logits = dirs @ W_U.T  # [n, vocab]
        for r, n in enumerate(sel.tolist()):
            up = torch.topk(logits[r], top_tokens).indices.tolist()
            down = torch.topk(-logits[r], top_tokens).indices.tolist()
            up_s = [tok.decode([t]) for t in up]
            down_s = [tok.decode([t]) for t in down]
            site, unit = neurons.index.locate(n)
            rows.append({"lang": lang, "neuron": n, "layer": site.layer, "unit": unit,
                         "match_share": sum(token_matches(s, lang) for s in up_s) / len(up_s),
                         "promoted": up_s, "suppressed": down_s})
    return rows


def attribution_markdown(rows: list[dict]) -> str:
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    layers = sorted({r["layer"] for r in rows})
    out = ["Share of each neuron's top promoted tokens that belong to its language (Unicode script for zh/ja, "
           "lid.176 for the others), mean per language and layer (count of neurons in brackets)", "",
           "| lang | all | " + " | ".join(f"L{l}" for l in layers) + " |", "|---|---|" + "---|" * len(layers)]
    for lang in langs:
        rs = [r for r in rows if r["lang"] == lang]
        cells = []
        for l in layers:
            rl = [r["match_share"] for r in rs if r["layer"] == l]
            cells.append(f"{np.mean(rl):.2f} ({len(rl)})" if rl else "")
        out.append(f"| {lang} | {np.mean([r['match_share'] for r in rs]):.2f} | " + " | ".join(cells) + " |")
    out += ["", "Examples (first 3 neurons per language):", ""]
    for lang in langs:
        for r in [r for r in rows if r["lang"] == lang][:3]:
            out.append(f"- {lang} L{r['layer']}#{r['unit']}: promotes {' | '.join(repr(s) for s in r['promoted'][:8])}")
    return "\n".join(out) + "\n"


# ---- token view --------------------------------------------------------------------------------
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


# ---- cross-language steering -------------------------------------------------------------------
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
    prompts = {l: [prompt_of(t, l) for t in _pick(heldout.texts[l], n_prompts, seed, l)] for l in langs}
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
            "neurons clamped\n\n" + _md_matrix(L, L, np.array(res["rate"]), ".2f")
            + "\nWithout clamping (rate of the column language)\n\n" + _md_matrix(L, L, np.array(res["none"]), ".2f"))
