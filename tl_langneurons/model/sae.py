"""A plain SAELens ``SAE`` applied by the tool: its latents become units that ``find`` ranks and clamp/add steer.

:func:`attach_sae` splices an SAE (an ``sae_lens.SAE``, or a folder written by ``sae.save_model``) into a model the
tool loaded, at the hook it reads (``sae.cfg.metadata.hook_name``), through SAELens itself: the model becomes the
``HookedSAETransformer`` (``SAETransformerBridge`` for transformer-lens 3.x's bridge) it would have been had the
user built one, as SAELens' own ``SAETransformerBridge.boot_transformers`` does, and ``add_sae(sae,
use_error_term=True)`` puts SAELens' wrapper there. With the error term the block's output is
``decode(latents') + (x - decode(latents))``: the model computes what it computed without the SAE, and writes
to the latents (``<hook>.hook_sae_acts_post``) reach the rest of the model through the decoder.

The SAE is recorded beside the neurons found on it (:func:`sae_record`: folder, sha256 of its weights file, hook,
d_sae, architecture), so commands that load a neurons folder re-attach it (:func:`reattach`), refusing in one
line when the folder is gone or its weights changed. Needs sae-lens and transformer-lens 3.x
(:func:`check_sae_environment`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import LangNeuronsError
from .driver import Runner
from .protocol import HookedModel

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"  # what sae.save_model writes (sae_lens.constants)
LATENTS = "hook_sae_acts_post"
_ATTACHED = "_tl_langneurons_saes"  # on the model: {latents hook: record} of the SAEs this module attached


def check_sae_environment() -> None:
    """sae-lens importable beside transformer-lens 3.x (SAELens splices SAEs into a HookedTransformer or the 3.x
    bridge); one line otherwise, before any model loads."""
    from importlib import util
    from importlib.metadata import PackageNotFoundError, version

    fix = 'pip install sae-lens "transformer-lens>=3.9,<4"'
    if util.find_spec("sae_lens") is None:
        raise LangNeuronsError(f"--sae needs sae-lens, which is not installed: {fix}")
    try:
        from transformer_lens import HookedTransformer  # noqa: F401 - transformer-lens 3.x only
    except ImportError:
        try:
            tl = version("transformer-lens")
        except PackageNotFoundError:
            tl = "none"
        raise LangNeuronsError(f"--sae needs transformer-lens 3.x, where SAELens attaches SAEs (this environment has "
                               f"transformer-lens {tl}): {fix}") from None


def weights_sha256(folder: str | Path) -> str:
    """sha256 of an SAE folder's weights file."""
    h = hashlib.sha256()
    with open(Path(folder) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sae_folder(folder: str | Path) -> Path:
    """``folder`` exists and holds what ``sae.save_model`` writes; one line otherwise."""
    path = Path(folder)
    if not path.is_dir():
        raise LangNeuronsError(f"--sae {folder}: no such folder (give a folder written by sae.save_model)")
    missing = [f for f in (CFG_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
    if missing:
        raise LangNeuronsError(f"--sae {folder} is not an SAE folder: it lacks {' and '.join(missing)} (what "
                               "SAELens' sae.save_model writes)")
    return path.resolve()


def load_sae_folder(folder: str | Path, device: Any = "cpu"):
    """``SAE.load_from_disk`` of a checked folder, its failures in one line."""
    check_sae_environment()
    path = check_sae_folder(folder)
    from sae_lens import SAE

    try:
        return SAE.load_from_disk(path, device=str(device))
    except Exception as e:  # a cfg.json SAELens cannot read, weights of other shapes: SAELens' own message
        raise LangNeuronsError(f"--sae {folder}: SAELens could not load it: {str(e).splitlines()[0][:300]}") from e


def sae_record(sae, path: Path | None, backend: str) -> dict:
    """What a neurons folder records of the SAE its latents come from (``backend``: the kind of model it was
    attached to, which names the latents' hook)."""
    return {"path": str(path) if path is not None else None, "backend": backend,
            "sha256": weights_sha256(path) if path is not None else None,
            "hook_name": sae.cfg.metadata.hook_name, "d_in": int(sae.cfg.d_in), "d_sae": int(sae.cfg.d_sae),
            "architecture": sae.cfg.architecture()}


def _as_sae_model(model: HookedModel) -> HookedModel:
    """The model as SAELens' SAE-holding class of its kind (in place, as ``SAETransformerBridge.boot_transformers``
    converts a bridge); one line for models SAELens cannot attach SAEs to."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformer

    if isinstance(model, HookedSAETransformer) or hasattr(model, "add_sae"):
        return model
    try:
        from sae_lens import SAETransformerBridge
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # an SAELens without bridge support
        SAETransformerBridge = TransformerBridge = None  # noqa: N806
    if isinstance(model, HookedTransformer):
        model.__class__ = HookedSAETransformer
    elif TransformerBridge is not None and isinstance(model, TransformerBridge):
        model.__class__ = SAETransformerBridge
    else:
        raise LangNeuronsError(f"SAELens attaches SAEs to a HookedTransformer or a TransformerBridge; this model is a "
                               f"{type(model).__name__} (load it with --backend hooked or bridge)")
    model._acts_to_saes, model._transcoder_output_hooks = {}, {}
    return model


def latents_hook(model: HookedModel, sae) -> str:
    """The hook point of ``sae``'s latents on ``model`` (the bridge names the block's output ``hook_out``)."""
    get = getattr(model, "get_sae_hook_name", None)
    return get(sae, LATENTS) if get is not None else f"{sae.cfg.metadata.hook_name}.{LATENTS}"


def attach_sae(model: HookedModel, sae: Any) -> str:
    """Splice ``sae`` (an ``sae_lens.SAE`` or a folder written by ``sae.save_model``) into ``model`` (in place) at
    the hook it reads, with SAELens' error term: the model's outputs are unchanged, and its latents are the units at
    the returned hook name (``blocks.L.hook_resid_post.hook_sae_acts_post``), for ``find_neurons(model, corpus,
    sites=...)``, clamp and add, exactly as on a ``HookedSAETransformer``. Neurons found there record the SAE (its
    folder and weights' sha256) when it came from a folder; commands on their folder re-attach it."""
    check_sae_environment()
    path = None
    if isinstance(sae, (str, Path)):
        path = check_sae_folder(sae)
        sae = load_sae_folder(path, Runner(model).device)
    hook = sae.cfg.metadata.hook_name
    if sae.cfg.metadata.hook_name_out not in (None, hook):
        raise LangNeuronsError(f"this is a transcoder (reads {hook}, writes {sae.cfg.metadata.hook_name_out}); "
                               "--sae takes an SAE that reads and writes one hook")
    runner = Runner(model)
    aliases = getattr(model, "hook_aliases", None) or {}
    if not hook or (hook not in runner.hook_names and hook not in aliases and hook not in getattr(
            model, "_acts_to_saes", {})):
        raise LangNeuronsError(f"this SAE reads {hook!r}, which this model lacks; `tl-langneurons info --model M "
                               "--hooks` lists its hooks")
    if hook in runner.hook_names and runner.hook_size(hook) != sae.cfg.d_in:
        raise LangNeuronsError(f"this SAE reads {sae.cfg.d_in} values at {hook}; this model has "
                               f"{runner.hook_size(hook)} there (an SAE of another model)")
    model = _as_sae_model(model)
    model.add_sae(sae.to(runner.device), use_error_term=True)
    site = latents_hook(model, sae)
    if site not in model.hook_dict:
        raise LangNeuronsError(f"SAELens did not attach this SAE at {hook!r} on this model")
    from sae_lens import HookedSAETransformer

    record = sae_record(sae, path, "hooked" if isinstance(model, HookedSAETransformer) else "bridge")
    setattr(model, _ATTACHED, {**getattr(model, _ATTACHED, {}), site: record})
    return site


def sae_meta(model: HookedModel, hooks: list[str]) -> dict:
    """``{"sae": record}`` of the SAE :func:`attach_sae` put on ``model`` whose latents are among ``hooks`` (what
    ``find`` records, so that commands on its folder re-attach it); ``{}`` if none."""
    for hook in hooks:
        record = getattr(model, _ATTACHED, {}).get(hook)
        if record is not None:
            return {"sae": {**record, "site": hook}}
    return {}


def check_recorded(record: dict) -> Path:
    """The recorded SAE folder, refused in one line when it is gone or its weights changed (before the model
    loads)."""
    check_sae_environment()
    if not record.get("path"):
        raise LangNeuronsError("these units are the latents of an SAE that was not loaded from a folder, so it "
                               "cannot be re-attached: save it with sae.save_model(DIR) and find with --sae DIR")
    path = Path(record["path"])
    if not (path / WEIGHTS_FILE).is_file():
        raise LangNeuronsError(f"these units are the latents of the SAE in {path}, which is gone; put it back (or "
                               "find again with --sae on the SAE you have)")
    sha = weights_sha256(path)
    if sha != record.get("sha256"):
        raise LangNeuronsError(f"the SAE in {path} has changed since these units were found (weights sha256 "
                               f"{sha[:12]}, recorded {str(record.get('sha256'))[:12]}); find again with --sae {path}")
    return path


def reattach(model: HookedModel, record: dict) -> HookedModel:
    """``model`` with the recorded SAE attached (nothing done where its latents are already there)."""
    if record.get("site") in Runner(model).hook_names:
        return model
    site = attach_sae(model, check_recorded(record))
    if site != record.get("site"):
        raise LangNeuronsError(f"these units are the SAE's latents at {record.get('site')}; on this model they are at "
                               f"{site} (another backend): use the backend they were found on")
    return model


def latent_sites(folder: str | Path, sites: str, default: str) -> str:
    """The site spec of a find on the SAE in ``folder`` (checked, before the model loads): its latents,
    ``<hook_name>.hook_sae_acts_post``. ``sites`` must be ``default`` (replaced) or name those latents."""
    sae = load_sae_folder(folder)
    site = f"{sae.cfg.metadata.hook_name}.{LATENTS}"
    if sites not in (default, site):
        raise LangNeuronsError(f"--sae ranks that SAE's latents ({site}); --sites {sites} names other units: leave "
                               "--sites out, or find those without --sae")
    return site
