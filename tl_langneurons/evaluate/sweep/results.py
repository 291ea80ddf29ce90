"""A sweep's result as ``sweep.json`` holds it (:class:`SweepResult`), and a finished sweep's picks read back
(:func:`sweep_settings`) for ``steer``/``cross-steer --from-sweep`` and the benchmarks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ...detect.neurons import LanguageNeurons
from ...errors import LangNeuronsError
from ...results import read_json
from ...steer.setting import SteeringConfig, setting_from_json
from .writer import sweep_markdown


@dataclass
class SweepResult:
    """A sweep's result in the form ``sweep.json`` holds it: each language's pick with its validation scores
    (``best``), every setting tried (``stages``), the test split (``test``) and what the sweep was and did
    (``meta``). The search's typed rows (:mod:`.rows`) become these dicts once, at the end of the sweep."""

    best: dict[str, dict]
    stages: list[dict]
    test: list[dict]
    meta: dict = field(default_factory=dict)

    def markdown(self) -> str:
        return sweep_markdown(self)

    def to_json(self) -> dict:
        """What ``sweep.json`` holds."""
        return {"best": self.best, "stages": self.stages, "test": self.test, "meta": self.meta}

    @classmethod
    def from_json(cls, data: dict) -> "SweepResult":
        """A result read back from ``sweep.json``."""
        return cls(data["best"], data.get("stages", []), data.get("test", []), data.get("meta") or {})


def sweep_settings(directory: str | Path, pick: str = "best", neurons: LanguageNeurons | None = None
                   ) -> dict[str, SteeringConfig]:
    """The settings a finished sweep picked, ``{lang: SteeringConfig}``: each language's own (``best``) or
    the one shared by all (``shared``), for ``steer``/``cross-steer --from-sweep`` and the benchmarks.
    With ``neurons``, a sweep made on other neurons (another AP: model, corpus or sites) is refused.

    Example:
        >>> per_lang = sweep_settings("runs/gemma/sweep-add")                      # doctest: +SKIP
        >>> cross_steering(model, neurons, held, CrossSteerConfig(per_target=per_lang))  # doctest: +SKIP
    """
    if pick not in ("best", "shared"):
        raise LangNeuronsError(f"a sweep's pick is best or shared, got {pick!r}")
    f = Path(directory) / "sweep.json"
    if not f.is_file():
        raise LangNeuronsError(f"{f} is not a finished sweep's result (there is no such file); run the sweep first")
    again = "run the sweep again, or name another sweep"
    data = read_json(f, {"best": ("object",), "best.*": ("object",), "meta": ("object", "null"),
                         "meta.ap_sha": ("string", "null"), "meta.shared": ("object", "null")}, again)
    meta = data.get("meta") or {}
    if neurons is not None:
        made_on = meta.get("ap_sha")
        if made_on != hashlib.sha256(neurons.ap.numpy().tobytes()).hexdigest()[:16]:
            raise LangNeuronsError(f"the sweep in {directory} was made on other neurons (AP {made_on}); its settings "
                                   "(k, layers) do not carry over: sweep these neurons")
    # a language whose every setting steered no neuron (or did not apply) has no pick: it was never scored
    best = {lang: st for lang, st in data["best"].items() if "val" not in st or st["val"] is not None}
    if not best:
        raise LangNeuronsError(f"{f}: field 'best' holds no setting that was scored; {again}")
    if pick == "shared":
        shared = meta.get("shared")
        if not shared:
            raise LangNeuronsError(f"{f} has no shared setting (no setting applied to every language)")
        setting = setting_from_json(shared, str(f), "meta.shared", again)
        return {lang: setting for lang in best}
    return {lang: setting_from_json(st, str(f), f"best.{lang}", again) for lang, st in best.items()}

