"""One report of a study: every table and figure of detection and control, the settings and the
package versions, as ``report.md`` and a self-contained-looking ``report.html``."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from ..errors import LangNeuronsError
from ..provenance import atomic_write_text
from ..results import describe_kind, read_json, result_kind
from ..steer.setting import SteeringConfig
from .html import markdown_to_html
from ..tables import markdown_table


# the fields of evaluation.json and sweep.json the report reads, and what each must be
EVALUATION_FIELDS = {
    "meta": ("object",), "meta.seeds": ("string", "null"), "meta.config": ("object",),
    "meta.config.prompt": ("string", "null"), "meta.config.temperature": ("number", "null"),
    "meta.config.max_new_tokens": ("integer", "null"), "meta.config.samples": ("integer", "null"),
    "meta.config.ablation_samples": ("integer", "null"), "meta.config.steering": ("object", "null"),
    "meta.config.steering.method": ("string", "absent"),
}
SWEEP_FIELDS = {
    "meta": ("object",), "meta.config": ("object",), "meta.config.method": ("string", "absent"),
    "meta.config.heldout": ("string", "null"), "stages": ("list",), "stages.[]": ("object",),
    "stages.[].lang": ("string",), "stages.[].label": ("string",), "stages.[].rate": ("number",),
    "stages.[].retention": ("number", "null"),
}


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip() if path.exists() else ""


def _read_sweep(folder: Path) -> dict:
    """A sweep folder's ``sweep.json``, the fields the report reads checked (one clear line otherwise)."""
    return read_json(folder / "sweep.json", SWEEP_FIELDS, f"run the sweep again into {folder} (with --overwrite), "
                     "or move it away")


def _steering(cfg: dict) -> str:
    """The intervention of a control experiment's config, by its label (a config of before interventions were
    recorded holds a clamp's value, scale and positions at its top level)."""
    st = cfg.get("steering") or {k: cfg.get(k) for k in ("value", "scale", "positions") if cfg.get(k) is not None}
    names = {f.name for f in fields(SteeringConfig)}
    try:
        return SteeringConfig(**{k: v for k, v in st.items() if k in names and k not in ("which", "k")}).label()
    except (LangNeuronsError, TypeError):  # a setting this version cannot build: its fields as recorded
        return ", ".join(f"{k} {v}" for k, v in st.items() if v is not None)


def build_report(directory: str | Path) -> Path:
    """Write ``report.md`` and ``report.html`` into a ``find`` output folder (with ``control/`` if evaluated);
    ``layers.png`` and ``overlap.png`` are drawn again from the saved neurons (no model needed)."""
    d = Path(directory)
    if not (d / "neurons.json").exists():
        kind = result_kind(d) if d.is_dir() else None
        if kind is not None:  # a control or sweep folder: the report is of the find folder that holds it
            raise LangNeuronsError(f"{d} holds a {describe_kind(kind)}, not neurons; run report on the find folder "
                                   f"it belongs to (such as {d.parent})")
        raise LangNeuronsError(f"{d} is not a tl-langneurons result folder (no neurons.json); run `tl-langneurons find "
                               f"--out {d}` first")
    from ..detect.neurons_io import read_neurons_json  # checked like LanguageNeurons.load checks it

    info = read_neurons_json(d / "neurons.json")
    if (d / "neurons.safetensors").exists():  # the placement figures as this version draws them, from the neurons
        from ..analyses.placement import draw_placement
        from ..detect.neurons import LanguageNeurons

        draw_placement(LanguageNeurons.load(d), d)
    meta = info.get("meta", {})
    parts = [f"# Language-specific neurons of {meta.get('model', '?')}", "",
             "Method: Kojima et al. (NAACL 2024). Neurons ranked by average precision of their pooled activation "
             "for each language; top-k and bottom-k are the language's neurons; control clamps them to their median.",
             "", "## Settings", ""]
    parts += _detection(d, meta)
    parts += _control(d / "control")
    if (d / "selectors" / "selectors.md").exists():  # written by benchmarks/bench_selectors.py --out
        parts += ["## Neuron selectors compared (ap, lape, actprob, meandiff)", "", _read(d / "selectors" / "selectors.md"), ""]
    if (d / "steering" / "steering.md").exists():  # written by benchmarks/bench_steering.py
        parts += ["## Steering interventions compared (clamp, add, diffmean, sparse)", "",
                  _read(d / "steering" / "steering.md"), ""]
    parts += _sweeps(d)
    parts += _analyses(d / "analyses")
    versions = meta.get("versions", {})
    parts += ["## Package versions", "", markdown_table(["package", "version"], versions.items())]
    md = "\n".join(parts)
    atomic_write_text(d / "report.md", md)
    atomic_write_text(d / "report.html", markdown_to_html(md, title=f"tl-langneurons: {meta.get('model', '')}"))
    return d / "report.md"


def _detection(d: Path, meta: dict) -> list[str]:
    """The report's settings table and its detection section (summary, layers, overlap, distributions)."""
    parts: list[str] = []
    settings = [[key, meta[key]] for key in ("model", "method", "thresholds", "sites", "pooling", "include_bos", "k", "k_fraction", "n_neurons",
                                              "corpus", "corpus_spec", "texts_per_language", "corpus_sha256",
                                              "padded_share") if key in meta]
    src = meta.get("model_source")
    if isinstance(src, dict):  # a model converted from a GGUF: which file made it
        settings.insert(1, ["model made from", " ".join(str(x) for x in (
            "GGUF", src.get("architecture"), f"({src['name']})" if src.get("name") else None,
            f"sha256 {src.get('gguf_sha256')}") if x)])
    timings = d / "timings.json"
    if timings.exists():
        settings.append(["detection timings (s)", _read(timings)])
    parts += [markdown_table(["setting", "value"], settings), "## Detection", "", _read(d / "summary.md"), "",
              "### Where the neurons sit (paper Figure 2)", "", "![layers](layers.png)", "", _read(d / "layers.md"), "",
              "### Overlap between languages (paper Table 1)", "", "![overlap](overlap.png)", "", _read(d / "overlap.md"), ""]
    if (d / "distributions.png").exists():
        parts += ["### Activation on and off the language (paper Figure 4)", "", "![distributions](distributions.png)", ""]
    return parts


def _control(ctl: Path) -> list[str]:
    """The control section (Table 2, the k ablation), where ``evaluate`` wrote one."""
    parts: list[str] = []
    if (ctl / "table2.md").exists():
        ev = read_json(ctl / "evaluation.json", EVALUATION_FIELDS,
                       f"run evaluate again into {ctl} (with --overwrite), or move it away")["meta"]
        cfg = ev["config"]
        parts += ["## Control (paper Table 2)", "",
                  f"Generation: {'BOS only' if not cfg.get('prompt') else 'prompt ' + repr(cfg.get('prompt'))}, "
                  f"temperature {cfg.get('temperature')}, {cfg.get('max_new_tokens')} new tokens, seeds {ev.get('seeds')}, "
                  f"intervention {_steering(cfg)}. "
                  "Language-ID rates are shown beside a quality measure: lid.176 labels degenerate repetition as the language.",
                  ""]
        n_seeds = cfg.get("samples") or 0
        if n_seeds < 100 or (cfg.get("max_new_tokens") or 0) < 64:
            parts += [f"**Size:** {n_seeds} samples x {cfg.get('max_new_tokens')} tokens per cell, smaller than the "
                      "paper's 100 x 64 (a quick run such as the demo): rates move by several points between seeds "
                      "(see the Wilson intervals). `tl-langneurons evaluate` runs the full protocol.", ""]
        parts += [_read(ctl / "table2.md"), ""]
        if (ctl / "k_ablation.md").exists():
            parts += ["## Intervention strength (paper Figure 5)", ""]
            n_ab = cfg.get("ablation_samples")
            if n_ab and n_ab != n_seeds:
                parts += [f"{n_ab} samples per language and k (seeds 1..{n_ab}).", ""]
            parts += ["![k ablation](control/k_ablation.png)", "", _read(ctl / "k_ablation.md"), ""]
        parts += ["Sample generations: [control/samples.md](control/samples.md)", ""]
    return parts


def _sweeps(d: Path) -> list[str]:
    """The sweeps' sections: the methods' sweeps together by protocol, each sweep, LCB's table and sweeps."""
    parts: list[str] = []
    sweeps = []  # (folder, method, protocol, stages) of every sweep folder, each sweep.json read once
    for p in sorted(d.glob("sweep*")):
        if (p / "sweep.md").exists() and (p / "sweep.json").exists():
            data = _read_sweep(p)
            config = data["meta"]["config"]
            sweeps.append((p, config.get("method", "clamp"), "prompts" if config.get("heldout") else "BOS",
                           data["stages"]))
    for protocol, figure in (("BOS", "sweeps.png"), ("prompts", "sweeps-prompts.png")):
        together = [(p, method, stages) for p, method, proto, stages in sweeps if proto == protocol]
        if len(together) > 1:  # several sweeps of one protocol: every setting of every method in one figure
            from . import plots

            plots.pareto_methods({f"{method} ({p.name})": stages for p, method, stages in together}, d / figure,
                                 title=f"Every setting tried from {protocol}, by method: target rate against "
                                       "fluency retention")
            parts += [f"## Fluent steering: the methods' sweeps together, from {protocol}", "",
                      f"![sweeps]({figure})", ""]
    for p, method, protocol, _ in sweeps:
        parts += [f"## Fluent steering: {method} settings sweep from {protocol} ({p.name})", "",
                  f"![trade-off]({p.name}/tradeoff.png)", ""]
        if (p / "genres.png").exists():  # a sweep on several genres
            parts += [f"![by genre]({p.name}/genres.png)", ""]
        parts += [_read(p / "sweep.md"), ""]
    if (d / "lcb" / "lcb.md").exists():  # written by the lcb command from the lcb-METHOD (lcb-system-METHOD) sweeps
        parts += ["## Language confusion (LCB)", "", _read(d / "lcb" / "lcb.md"), ""]
    for p in sorted(d.glob("lcb-*")):
        if (p / "sweep.md").exists():
            cfg = _read_sweep(p)["meta"]["config"] if (p / "sweep.json").exists() else {}
            where = ("LCB's requests behind the system prompt" if cfg.get("lcb_system") else "LCB's requests")
            parts += [f"## Language confusion: {cfg.get('method', p.name[4:])} settings sweep on {where} ({p.name})", "",
                      f"![trade-off]({p.name}/tradeoff.png)", "", _read(p / "sweep.md"), ""]
    return parts


def _analyses(an: Path) -> list[str]:
    """The analyses' sections (deactivation, attribution, cross-steering, tokens)."""
    parts: list[str] = []
    for name, title, fig in (("deactivation", "Deactivation: loss change on held-out texts", "deactivation.png"),
                             ("attribution", "Direct logit attribution of the top neurons", None),
                             ("cross_steering", "Cross-language steering", "cross_steering.png")):
        if (an / f"{name}.md").exists():
            parts += [f"## {title}", ""]
            if fig and (an / fig).exists():
                parts += [f"![{name}](analyses/{fig})", ""]
            parts += [_read(an / f"{name}.md"), ""]
    if (an / "tokens.png").exists():
        parts += ["## Token-level view", "", "![tokens](analyses/tokens.png)", ""]
    return parts

