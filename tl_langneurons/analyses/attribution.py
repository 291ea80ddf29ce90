"""Direct logit attribution: the tokens each selected ``mlp_post`` neuron's output direction
promotes and suppresses through the unembedding, and how many belong to the neuron's language."""

from __future__ import annotations

import unicodedata
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..detect.neurons import LanguageNeurons
from ..errors import LangNeuronsError
from ..evaluate.metrics import identify
from ..model.driver import Runner
from ..model.hf_hooked import find_layers


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
