"""Direct logit attribution: the tokens each selected ``mlp_post`` neuron's output direction
promotes and suppresses through the unembedding, and how many belong to the neuron's language."""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..config import LANGUAGES, check_options, option
from ..detect.neurons import LanguageNeurons
from ..errors import LangNeuronsError
from ..evaluate.metrics import identify
from ..model.driver import Runner
from ..model.hf_hooked import find_layers
from ..model.protocol import HookedModel
from ..provenance import write_md_json
from ..tables import markdown_table


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


def neuron_directions(model: HookedModel, neurons_idx: torch.Tensor, index) -> torch.Tensor:
    """Output direction [n, d_model] of ``mlp_post`` neurons: the down-projection's column, times
    the elementwise gains of a post-MLP norm and the final norm where the architecture has them."""
    runner = Runner(model)
    if runner.hf is None:
        return _hooked_directions(model, neurons_idx, index)
    layers = find_layers(runner.hf)
    final = _gain(_sub(runner.hf.base_model, ["norm", "final_layernorm", "ln_f", "layer_norm"]))
    out = []
    for layer_i, unit in _mlp_post_units(neurons_idx, index):
        layer = layers[layer_i]
        down = _sub(layer, ["mlp.down_proj", "fc2", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.fc_out"])
        out.append(_scaled(_weight(down)[:, unit], _gain(_sub(layer, ["post_feedforward_layernorm"])), final))
    return torch.stack(out)


def _mlp_post_units(neurons_idx: torch.Tensor, index) -> list[tuple[int, int]]:
    """(layer, unit) of each neuron; logit attribution reads ``mlp_post`` neurons only."""
    out = []
    for n in neurons_idx.tolist():
        site, unit = index.locate(n)
        if not site.hook.endswith("mlp.hook_post"):
            raise LangNeuronsError(f"logit attribution works on mlp_post neurons; {site.hook} is another site")
        out.append((site.layer, unit))
    return out


def _scaled(direction: torch.Tensor, *gains: torch.Tensor | None) -> torch.Tensor:
    """``direction`` times each elementwise gain that exists (a copy)."""
    d = direction.detach().float().clone()
    for g in gains:
        if g is not None:
            d = d * g
    return d


def _hooked_directions(model: HookedModel, neurons_idx: torch.Tensor, index) -> torch.Tensor:
    """:func:`neuron_directions` of a HookedTransformer: rows of ``W_out`` times the gains of ``ln2_post``
    and ``ln_final`` where it has them (transformer-lens stores Gemma's norm weights as 1 + w already;
    a model with folded norms has none left to apply)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "W_U"):
        raise LangNeuronsError(f"logit attribution cannot read the weights of {type(model).__name__}")

    def gain(mod):
        w = getattr(mod, "w", None)
        return None if not isinstance(w, torch.Tensor) else w.detach().float()

    final = gain(getattr(model, "ln_final", None))
    out = [_scaled(blocks[layer].mlp.W_out[unit], gain(getattr(blocks[layer], "ln2_post", None)), final)
           for layer, unit in _mlp_post_units(neurons_idx, index)]
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


@dataclass
class NeuronAttribution:
    """One neuron: where it sits, its promoted and suppressed tokens, and the share of promoted
    tokens that belong to its language."""

    lang: str
    neuron: int
    layer: int
    unit: int
    match_share: float
    promoted: list[str]
    suppressed: list[str]


@dataclass
class AttributionResult:
    """Rows of ``logit_attribution``; ``save`` writes attribution.md and attribution.json."""

    rows: list[NeuronAttribution]
    meta: dict = field(default_factory=dict)

    def markdown(self) -> str:
        rows = self.rows
        langs = list(dict.fromkeys(r.lang for r in rows))
        layers = sorted({r.layer for r in rows})
        table = []
        for lang in langs:
            rs = [r for r in rows if r.lang == lang]
            cells = []
            for l in layers:
                rl = [r.match_share for r in rs if r.layer == l]
                cells.append(f"{np.mean(rl):.2f} ({len(rl)})" if rl else "")
            table.append([lang, f"{np.mean([r.match_share for r in rs]):.2f}", *cells])
        out = ["Share of each neuron's top promoted tokens that belong to its language (Unicode script for zh/ja, "
               "lid.176 for the others), mean per language and layer (count of neurons in brackets)", "",
               markdown_table(["lang", "all", *[f"L{l}" for l in layers]], table).rstrip("\n"),
               "", "Examples (first 3 neurons per language):", ""]
        for lang in langs:
            for r in [r for r in rows if r.lang == lang][:3]:
                out.append(f"- {lang} L{r.layer}#{r.unit}: promotes {' | '.join(repr(s) for s in r.promoted[:8])}")
        return "\n".join(out) + "\n"

    def to_json(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], "meta": self.meta}

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``attribution.md`` and ``attribution.json``."""
        return write_md_json(directory, "attribution", self.markdown(), self.to_json())


@dataclass
class AttributionConfig:
    """Which neurons :func:`logit_attribution` reads and how many tokens it lists."""

    languages: list[str] | None = option(None, "comma-separated languages (none: all)", items=LANGUAGES)
    n_neurons: int = option(50, "top neurons per language", at_least=1)
    top_tokens: int = option(20, "promoted and suppressed tokens per neuron", at_least=1)

    def __post_init__(self) -> None:
        check_options(self)


def unembedding(model: HookedModel) -> torch.Tensor:
    """The unembedding matrix [vocab, d_model] (float32) of a bridge, fallback or HookedTransformer model."""
    runner = Runner(model)
    if runner.hf is None:  # a HookedTransformer
        return model.W_U.detach().float().T
    return _weight(runner.hf.get_output_embeddings())


@torch.no_grad()
def logit_attribution(model: HookedModel, neurons: LanguageNeurons, config: AttributionConfig | None = None,
                      **overrides) -> AttributionResult:
    """For the first ``n_neurons`` top neurons of each language: promoted and suppressed tokens and
    the share of promoted tokens that match the language. One row per neuron."""
    cfg = replace(config or AttributionConfig(), **overrides)
    languages, n_neurons, top_tokens = cfg.languages, cfg.n_neurons, cfg.top_tokens
    runner = Runner(model)
    W_U = unembedding(model)  # [vocab, d_model]
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
            rows.append(NeuronAttribution(lang, n, site.layer, unit, sum(token_matches(s, lang) for s in up_s) / len(up_s),
                                          up_s, down_s))
    return AttributionResult(rows, {"n_neurons": n_neurons, "top_tokens": top_tokens, "k": neurons.k})
