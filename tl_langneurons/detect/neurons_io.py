"""Saving, loading and describing a :class:`~tl_langneurons.detect.neurons.LanguageNeurons` (a find folder's
``neurons.safetensors``, ``neurons.json``, ``neurons.csv`` and ``summary.md``): kept apart from the container,
which calls these (``save``, ``load``, ``table``, ``summary``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

from safetensors import SafetensorError
from torch import Tensor

from ..errors import LangNeuronsError
from ..model.sites import NeuronIndex
from ..provenance import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..results import describe_kind, result_kind
from ..tables import csv_text, markdown_table
from .neuron_sets import WHICH, NeuronSet
from .selectors import ONE_SIDED

@runtime_checkable
class FoundNeurons(Protocol):
    """What saving and describing read of a :class:`~tl_langneurons.detect.neurons.LanguageNeurons` (named here
    so that this module, which ``neurons.py`` imports, need not import it back)."""

    languages: list[str]
    index: NeuronIndex
    k: int
    sets: dict
    meta: dict

FORMAT_VERSION = 2


def read_neurons_json(path: str | Path) -> dict:
    """The contents of a ``neurons.json``, checked field by field (one clear error naming the field)."""
    path = Path(path)
    again = "run find again"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LangNeuronsError(f"{path} is not readable JSON ({type(e).__name__}: {e}); {again}") from e

    def bad(field_: str, want: str, got) -> LangNeuronsError:
        return LangNeuronsError(f"{path}: field {field_!r} must be {want}, got {json.dumps(got)[:60]}; {again}")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(info, dict):
        raise LangNeuronsError(f"{path} must hold a JSON object, got a JSON {type(info).__name__}; {again}")
    for key in ("format", "languages", "k", "index"):
        if key not in info:
            raise LangNeuronsError(f"{path}: field {key!r} is missing; {again}")
    if not is_int(info["format"]) or info["format"] != FORMAT_VERSION:
        raise LangNeuronsError(f"{path}: field 'format' is {json.dumps(info['format'])[:60]}, this version reads "
                               f"{FORMAT_VERSION}; {again}")
    langs = info["languages"]
    if not isinstance(langs, list) or not langs or not all(isinstance(l, str) for l in langs):
        raise bad("languages", 'a non-empty list of language codes such as ["en", "de"]', langs)
    if len(set(langs)) != len(langs):
        raise bad("languages", "a list without repeats", langs)
    if not is_int(info["k"]) or info["k"] < 1:
        raise bad("k", "an integer of at least 1", info["k"])
    if not isinstance(info["index"], dict):
        raise bad("index", "an object with spec and slices", info["index"])
    if not isinstance(info.get("meta", {}), dict):
        raise bad("meta", "an object", info["meta"])
    return info


def neuron_table(self: FoundNeurons, lang: str, which: str = "top") -> list[dict]:
    """One row per selected neuron of ``lang``'s set ``which``: rank, hook, layer, unit, AP and statistics."""
    s = self.sets[lang][which]
    rows = self.index.table(s.neurons.tolist())
    for r, row in enumerate(rows):
        row.update({"lang": lang, "which": which, "rank": r + 1, "ap": float(s.ap[r]),
                    "median_on": float(s.median_on[r]), "mean_on": float(s.mean_on[r]),
                    "mean_off": float(s.mean_off[r])})
        if self.score is not None:
            row["score"] = float(self.score[self.languages.index(lang)][int(s.neurons[r])])
    return rows

def summary_markdown(self: FoundNeurons) -> str:
    """Markdown table: per language the mean AP of top/middle/bottom and their mean values."""
    rows = []

    def f(x: Tensor, how: str, fmt: str = ".3f") -> str:  # "-" for an empty set (lape/actprob bottom)
        return format(float(getattr(x, how)()), fmt) if len(x) else "-"

    for lang in self.languages:
        t, mi, b = (self.sets[lang][w] for w in ("top", "middle", "bottom"))
        rows.append([lang, f(t.ap, "mean"), f(t.ap, "min"), f(mi.ap, "mean"), f(b.ap, "mean"), f(b.ap, "max"),
                     f"{f(t.mean_on, 'mean', '+.3f')} / {f(t.mean_off, 'mean', '+.3f')}",
                     f"{f(b.mean_on, 'mean', '+.3f')} / {f(b.mean_off, 'mean', '+.3f')}"])
    header = ["lang", "top mean AP", "top min AP", "middle mean AP", "bottom mean AP", "bottom max AP",
              "top mean on/off", "bottom mean on/off"]
    if self.method != "ap":
        header.insert(1, "set size (top / bottom)")
        for lang, row in zip(self.languages, rows):
            row.insert(1, f"{len(self.sets[lang]['top'].neurons)} / {len(self.sets[lang]['bottom'].neurons)}")
    method = "" if self.method == "ap" else f", selected by {self.method}" + (
        " (top only: no bottom set)" if self.one_sided else "")
    return (f"Language neurons of {self.meta.get('model', '?')} at {self.index.spec} "
            f"({self.index.n_neurons} neurons, k={self.k}, pooling={self.meta.get('pooling')}{method})\n\n"
            + markdown_table(header, rows).rstrip("\n"))


def save_neurons(self: FoundNeurons, directory: str | Path) -> Path:
    """Write ``neurons.safetensors``, ``neurons.json``, ``neurons.csv`` and ``summary.md`` (each atomically)."""
    from safetensors.torch import save

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {"ap": self.ap.double().contiguous(), "medians": self.medians.float().contiguous(),
               "means": self.means.float().contiguous(), "mean_all": self.mean_all.float().contiguous()}
    if self.resid_means is not None and self.resid_norms is not None:
        tensors["resid_means"] = self.resid_means.float().contiguous()
        tensors["resid_norms"] = self.resid_norms.float().contiguous()
    if self.score is not None:
        tensors["score"] = self.score.double().contiguous()
    if self.eligible is not None:
        tensors["eligible"] = self.eligible.bool().contiguous()
    for name, t in (self.token_stats or {}).items():
        tensors[f"tokens.{name}"] = t.contiguous()
    for lang, sets in self.sets.items():
        for which, s in sets.items():
            for f in NeuronSet.FIELDS:
                tensors[f"{lang}.{which}.{f}"] = getattr(s, f).contiguous()
    atomic_write_bytes(d / "neurons.safetensors", save(tensors))
    atomic_write_json(d / "neurons.json", {
        "format": FORMAT_VERSION, "languages": self.languages, "k": self.k,
        "index": self.index.to_dict(), "meta": {k: v for k, v in self.meta.items() if k != "timings"},
    })
    if "timings" in self.meta:  # kept apart so that neurons.json is byte-identical across runs
        atomic_write_json(d / "timings.json", self.meta["timings"])
    rows = [r for lang in self.languages for w in WHICH for r in neuron_table(self, lang, w)]
    cols = ["lang", "which", "rank", "neuron", "hook", "layer", "unit", "ap", "median_on", "mean_on", "mean_off"]
    if self.score is not None:
        cols.append("score")
    atomic_write_text(d / "neurons.csv", csv_text(cols, rows))
    atomic_write_text(d / "summary.md", summary_markdown(self) + "\n")
    return d

def load_fields(directory: str | Path) -> dict:
    """The fields of the ``LanguageNeurons`` a find folder holds (its constructor's keywords), every file
    and field checked: one clear error naming what is wrong and what to do."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / "neurons.json").exists() or not (d / "neurons.safetensors").exists():
        kind = result_kind(d) if d.is_dir() else None
        if kind not in (None, "find"):  # a control or sweep folder inside a find folder
            raise LangNeuronsError(f"{d} holds a {describe_kind(kind)}, not neurons; pass the find folder it "
                                   f"belongs to (such as {d.parent})")
        raise LangNeuronsError(f"{d} holds no neurons (neurons.json and neurons.safetensors); run `tl-langneurons find --out {d}` first")
    info = read_neurons_json(d / "neurons.json")
    try:
        tensors = load_file(str(d / "neurons.safetensors"))
        index = NeuronIndex.from_dict(info["index"])
        sets = {lang: {w: NeuronSet(**{f: tensors[f"{lang}.{w}.{f}"] for f in NeuronSet.FIELDS}) for w in WHICH}
                for lang in info["languages"]}
        ap, medians, means, mean_all = tensors["ap"], tensors["medians"], tensors["means"], tensors["mean_all"]
    except LangNeuronsError:
        raise
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, TypeError, RuntimeError) as e:
        raise LangNeuronsError(f"neurons in {d} are corrupt or incomplete ({type(e).__name__}: {e}); run find again") from e
    if (ap.shape != (len(info["languages"]), index.n_neurons) or medians.shape != ap.shape
            or means.shape != ap.shape or mean_all.shape != (index.n_neurons,)):
        raise LangNeuronsError(f"neurons in {d} are inconsistent (AP shape {tuple(ap.shape)}); run find again")
    k = info["k"]
    if k > index.n_neurons:
        raise LangNeuronsError(f"{d}/neurons.json: field 'k' is {k}, more than the {index.n_neurons} neurons; run find again")
    meta = info.get("meta", {})
    one_sided = meta.get("method", "ap") in ONE_SIDED
    for lang, kinds in sets.items():
        for w, s in kinds.items():
            n = len(s.neurons) if one_sided and w != "middle" else k  # lape/actprob sets hold up to k
            for f in NeuronSet.FIELDS:
                if tuple(getattr(s, f).shape) != (n,) or n > k:
                    raise LangNeuronsError(
                        f"{d}/neurons.json: field 'k' is {k} but the {lang} {w} set holds "
                        f"{tuple(getattr(s, f).shape)} {f}; run find again")
    score, eligible = tensors.get("score"), tensors.get("eligible")
    for name, t in (("score", score), ("eligible", eligible)):
        if t is not None and t.shape != ap.shape:
            raise LangNeuronsError(f"neurons in {d} are inconsistent ({name} shape {tuple(t.shape)}); run find again")
    token_stats = {key[len("tokens."):]: t for key, t in tensors.items() if key.startswith("tokens.")} or None
    return dict(languages=info["languages"], index=index, k=k, sets=sets, ap=ap, medians=medians, means=means,
                mean_all=mean_all, meta=meta, resid_means=tensors.get("resid_means"),
                resid_norms=tensors.get("resid_norms"), score=score, eligible=eligible, token_stats=token_stats)
