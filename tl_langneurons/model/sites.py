"""Neuron sites: which hook points' output units count as "neurons", and the index table that
maps a column of the pooled matrix to (hook, layer, unit).

Presets:
- ``mlp_post`` (default): ``blocks.{l}.mlp.hook_post``, the MLP activation (input of the down-projection).
- ``mlp_pre``: ``blocks.{l}.mlp.hook_pre``, the MLP pre-activation (the gate projection for gated MLPs).
- ``paper``: the output units of every linear layer in every block, as counted in the paper's
  Table 3: attention q, k, v (or fused qkv), o; MLP input (gate and up for gated MLPs); MLP out.

A site spec is a preset name, or a comma-separated list of hook templates with ``{l}`` for the layer
(``"blocks.{l}.hook_resid_post"``), or of single hook names that exist on one layer (an SAE's latents on a
``HookedSAETransformer``: ``"blocks.6.hook_resid_post.hook_sae_acts_post"``), or a mix.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Sequence

import einops
import numpy as np
from jaxtyping import Float
from torch import Tensor

from ..errors import LangNeuronsError
from .driver import Runner
from .protocol import HookedModel

PRESETS: dict[str, tuple[str, ...]] = {
    "mlp_post": ("blocks.{l}.mlp.hook_post",),
    "mlp_pre": ("blocks.{l}.mlp.hook_pre",),
    "paper": (
        "blocks.{l}.attn.q.hook_out", "blocks.{l}.attn.k.hook_out", "blocks.{l}.attn.v.hook_out",
        "blocks.{l}.attn.qkv.hook_out", "blocks.{l}.attn.o.hook_out",
        "blocks.{l}.mlp.gate.hook_out", "blocks.{l}.mlp.in.hook_out", "blocks.{l}.mlp.out.hook_out",
    ),
}
_ONE_LAYER = re.compile(r"^blocks\.(\d+)\.")  # a single hook (no {l}) names its layer

# In `paper`, these templates may be absent on an architecture (fused qkv, no gate) without error.
_OPTIONAL = {"blocks.{l}.attn.qkv.hook_out", "blocks.{l}.mlp.gate.hook_out",
             "blocks.{l}.attn.q.hook_out", "blocks.{l}.attn.k.hook_out", "blocks.{l}.attn.v.hook_out"}


# One canonical naming: the bridge's (the fallback's too), which neuron folders and caches record. A
# HookedTransformer names the paper's sites its own way; where its hook holds the same tensor (the same values, and
# a change there acts the same downstream) the index keeps the canonical template and binds the HookedTransformer's
# hook. Its hook_attn_out / hook_mlp_out follow a post-norm where the model has one (Gemma's sandwich norms), not
# the o / down projection as the bridge's hooks do: there they are sites of their own, named the HookedTransformer's
# way, without a counterpart on the bridge (and the bridge's o / down outputs have none on a HookedTransformer).
_HOOKED_EQUIV = {
    "blocks.{l}.attn.q.hook_out": "blocks.{l}.attn.hook_q", "blocks.{l}.attn.k.hook_out": "blocks.{l}.attn.hook_k",
    "blocks.{l}.attn.v.hook_out": "blocks.{l}.attn.hook_v", "blocks.{l}.attn.o.hook_out": "blocks.{l}.hook_attn_out",
    "blocks.{l}.mlp.out.hook_out": "blocks.{l}.hook_mlp_out",
}
_AFTER_PROJECTION = {"blocks.{l}.attn.o.hook_out", "blocks.{l}.mlp.out.hook_out"}
_POST_NORM_ARCHITECTURES = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")  # transformer-lens: the norm follows the sublayer


def _post_norm(model: HookedModel) -> bool:
    """Whether a HookedTransformer normalises the attention and MLP outputs before hook_attn_out / hook_mlp_out."""
    cfg = getattr(model, "cfg", None)
    return bool(getattr(cfg, "use_normalization_before_and_after", False)) or \
        getattr(cfg, "original_architecture", None) in _POST_NORM_ARCHITECTURES


def _hooked_site(template: str, layer: int, names: set[str], post_norm: bool) -> tuple[str, str] | None:
    """(hook, template to record) of a bridge-named template on a HookedTransformer, where it has the hook: the
    canonical template where the hook is its exact counterpart, the hook's own template where it is not."""
    gated = f"blocks.{layer}.mlp.hook_pre_linear" in names
    if template == "blocks.{l}.mlp.gate.hook_out":
        alt = "blocks.{l}.mlp.hook_pre" if gated else None
    elif template == "blocks.{l}.mlp.in.hook_out":
        alt = "blocks.{l}.mlp.hook_pre_linear" if gated else "blocks.{l}.mlp.hook_pre"
    else:
        alt = _HOOKED_EQUIV.get(template)
    name = None if alt is None else alt.replace("{l}", str(layer))
    if name not in names:
        return None
    return name, alt if post_norm and template in _AFTER_PROJECTION else template


def counterpart_note(recorded: str, here: str) -> str:
    """Why site ``recorded`` (a template) is not ``here`` (this model's template at the same place), in words."""
    hooked_out = {"blocks.{l}.hook_attn_out": "attention", "blocks.{l}.hook_mlp_out": "MLP"}
    if here in hooked_out and recorded in _AFTER_PROJECTION:
        return (f"this HookedTransformer's {here.rsplit('.', 1)[-1]} comes after the norm that follows its "
                f"{hooked_out[here]}, not straight from the projection")
    if recorded in hooked_out:
        return (f"{recorded.rsplit('.', 1)[-1]} is a HookedTransformer's {hooked_out[recorded]} output, after its "
                "post-norm where the model has one, and not among this model's sites")
    if recorded in {*_HOOKED_EQUIV.values(), "blocks.{l}.mlp.hook_pre_linear"}:
        return (f"{recorded.split('.', 2)[2]} is a HookedTransformer's own name, recorded by a version before site "
                "names were recorded the bridge's way")
    return f"this model has {here} there"


@dataclass(frozen=True)
class SiteSlice:
    """One hook at one layer: its units are columns ``offset .. offset+size`` of the pooled matrix."""

    hook: str
    template: str
    layer: int
    size: int
    offset: int


@dataclass
class NeuronIndex:
    """The neuron index table: every column of the pooled matrix as (hook, layer, unit)."""

    spec: str
    slices: list[SiteSlice]

    @property
    def n_neurons(self) -> int:
        return sum(s.size for s in self.slices)

    @property
    def n_layers(self) -> int:
        return max(s.layer for s in self.slices) + 1

    def layers(self) -> np.ndarray:
        """Layer of every neuron, [n_neurons]."""
        return np.concatenate([np.full(s.size, s.layer, dtype=np.int64) for s in self.slices])

    def locate(self, neuron: int) -> tuple[SiteSlice, int]:
        """(site, unit) of a global neuron index."""
        offsets = np.array([s.offset for s in self.slices])
        i = int(np.searchsorted(offsets, neuron, side="right") - 1)
        if neuron < 0 or neuron >= self.n_neurons:
            raise IndexError(f"neuron {neuron} out of range 0..{self.n_neurons - 1}")
        return self.slices[i], neuron - self.slices[i].offset

    def describe(self, neuron: int) -> str:
        site, unit = self.locate(neuron)
        return f"{site.hook}[{unit}]"

    def table(self, neurons: Sequence[int]) -> list[dict]:
        """Rows (neuron, hook, layer, unit) for a list of global indices."""
        rows = []
        for n in neurons:
            site, unit = self.locate(int(n))
            rows.append({"neuron": int(n), "hook": site.hook, "layer": site.layer, "unit": unit})
        return rows

    def to_dict(self) -> dict:
        """What folders and caches record: every site by its canonical name (:func:`canonical_hook`)."""
        return {"spec": self.spec, "slices": [{**asdict(s), "hook": canonical_hook(s)} for s in self.slices]}

    @classmethod
    def from_dict(cls, d: dict) -> "NeuronIndex":
        return cls(spec=d["spec"], slices=[SiteSlice(**s) for s in d["slices"]])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NeuronIndex) and self.to_dict() == other.to_dict()

    def mismatch(self, other: "NeuronIndex") -> tuple[SiteSlice, SiteSlice] | None:
        """The first pair of sites (this index's, ``other``'s) that differ, None where ``other`` is this index
        on another backend: the same units, each site the same by canonical name or by the hook it binds (a
        folder that recorded a HookedTransformer's own names). A pair (slice, None) where one is longer."""
        for a, b in zip(self.slices, other.slices):
            if (a.layer, a.size, a.offset) != (b.layer, b.size, b.offset) or (
                    canonical_hook(a) != canonical_hook(b) and a.hook != b.hook):
                return a, b
        if len(self.slices) != len(other.slices):
            longer = self if len(self.slices) > len(other.slices) else other
            return longer.slices[min(len(self.slices), len(other.slices))], None
        return None


def canonical_hook(site: SiteSlice) -> str:
    """The name a site is recorded under, the same on every backend: its template at its layer (the bridge's
    name; a HookedTransformer binds its own hook to it, :func:`resolve_sites`)."""
    return site.template.replace("{l}", str(site.layer))


def templates_for(spec: str) -> list[tuple[str, bool]]:
    """(hook template, required) pairs of a site spec; unknown names are an error."""
    if not spec or not spec.strip():
        raise LangNeuronsError("empty site spec; use mlp_post, mlp_pre, paper or hook templates with {l}")
    out: dict[str, bool] = {}
    for part in (p.strip() for p in spec.split(",")):
        if part in PRESETS:
            for t in PRESETS[part]:
                out[t] = out.get(t, False) or not (part == "paper" and t in _OPTIONAL)
        elif part.startswith("blocks.") and ("{l}" in part or _ONE_LAYER.match(part)):
            out[part] = True
        else:
            raise LangNeuronsError(
                f"unknown site {part!r}; use one of {', '.join(PRESETS)}, a hook template with {{l}} "
                "such as 'blocks.{l}.hook_resid_post', or one hook name such as 'blocks.6.hook_resid_post'"
            )
    return list(out.items())



def site_layer(template: str) -> int | None:
    """The layer of a single-hook site (``blocks.6.hook_resid_post`` -> 6); None for a template with ``{l}``."""
    m = None if "{l}" in template else _ONE_LAYER.match(template)
    return int(m.group(1)) if m else None


def resolve_sites(model: HookedModel | Runner, spec: str = "mlp_post") -> NeuronIndex:
    """The neuron index table of ``spec`` on ``model`` (a hooked model or a Runner)."""

    runner = model if isinstance(model, Runner) else Runner(model)
    templates = templates_for(spec)
    names = set(runner.hook_names)
    beyond = [t for t, _ in templates if (site_layer(t) or 0) >= runner.n_layers]
    if beyond:
        raise LangNeuronsError(f"site {beyond[0]!r} is beyond this model's {runner.n_layers} layers (site spec {spec!r})")
    chosen: list[tuple[str, str, int]] = []
    post_norm = _post_norm(runner.model)
    for layer in range(runner.n_layers):
        found = []
        for t, required in templates:
            one = site_layer(t)
            if one is not None and one != layer:  # a single hook: only at its own layer
                continue
            name = t.replace("{l}", str(layer))
            if name not in names and runner.hf is None:  # a HookedTransformer: its own name for the site
                name, t = _hooked_site(t, layer, names, post_norm) or (name, t)
            if name in names:
                found.append((name, t, layer))
            elif required:
                raise LangNeuronsError(
                    f"site {name!r} does not exist on this model (site spec {spec!r}); "
                    "`tl-langneurons info --model M` lists the hooks it has"
                )
        if any(".attn.q." in n for n, _, _ in found):  # the bridge splits fused qkv: don't count it twice
            found = [f for f in found if ".attn.qkv." not in f[0] or f[1] not in _OPTIONAL]
        if "paper" in [p.strip() for p in spec.split(",")] and not any(
            ".attn.q." in n or ".attn.qkv." in n or n.endswith(".attn.hook_q") for n, _, _ in found
        ):
            raise LangNeuronsError(
                f"the paper site preset found no attention q/qkv projection in block {layer}; "
                "this architecture is not supported for `paper`: use mlp_post"
            )
        chosen.extend(found)
    if not chosen:
        raise LangNeuronsError(f"site spec {spec!r} matched no hook on this model")
    if not hasattr(runner.model, "hook_size"):
        runner.probe([c[0] for c in chosen])
    slices, offset = [], 0
    for name, t, layer in chosen:
        size = runner.hook_size(name)
        slices.append(SiteSlice(hook=name, template=t, layer=layer, size=size, offset=offset))
        offset += size
    return NeuronIndex(spec=spec, slices=slices)


def flat_units(x: Float[Tensor, "batch pos *unit"]) -> Float[Tensor, "batch pos n"]:
    """A site's activations with its units flattened (q/k/v: heads x d_head), the order in which the
    neuron index counts them; a view where the layout allows, so writes reach ``x``."""
    return einops.rearrange(x, "batch pos ... -> batch pos (...)")


def describe(model: HookedModel, list_hooks: bool = False) -> str:
    """What ``info`` prints: backend, layers and the neuron count of every site preset (with the
    hook names of the model when ``list_hooks``)."""

    runner = Runner(model)
    lines = [f"backend: {type(model).__name__}", f"layers: {runner.n_layers}"]
    for preset in PRESETS:
        try:
            idx = resolve_sites(runner, preset)
        except LangNeuronsError as e:
            lines.append(f"site {preset}: unavailable ({e})")
            continue
        per_layer = idx.n_neurons // max(1, runner.n_layers)
        hooks = sorted({s.template for s in idx.slices})
        lines.append(f"site {preset}: {idx.n_neurons} neurons ({per_layer} per layer) at {', '.join(hooks)}")
    if list_hooks:
        lines += [f"  {name}" for name in runner.hook_names]
    return "\n".join(lines)
