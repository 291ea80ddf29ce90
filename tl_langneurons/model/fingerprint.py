"""What results record of a model: its name, where and in which precision it runs, the GGUF it was made from,
and its weights fingerprint (a fast hash that tells two models apart; :mod:`.identity` adds the activation
signature that recognises the same weights under another wrapper)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .protocol import HookedModel


def _hf(model: nn.Module) -> nn.Module:
    return getattr(model, "original_model", None) or model


def runtime_info(model: HookedModel) -> dict:
    """Where and in which precision the model runs, recorded in results beside its name:
    ``{"device": "cuda:0", "dtype": "bfloat16", "device_map": {...} or None}``."""
    hf = _hf(model)
    params = list(hf.parameters())
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.is_floating_point()})
    devices = sorted({str(p.device) for p in params if p.device.type != "meta"})
    dmap = getattr(hf, "hf_device_map", None)
    placed = sorted({str(v) if not isinstance(v, int) else f"cuda:{v}" for v in dmap.values()}) if dmap else devices
    return {"device": ",".join(placed) or "cpu", "dtype": ",".join(dtypes) or "float32",
            "device_map": {str(k): str(v) for k, v in dmap.items()} if dmap and len(set(dmap.values())) > 1 else None}


def model_source(model: HookedModel) -> dict | None:
    """What a model loaded from a GGUF was made from (``gguf_sha256``, ``architecture``, the GGUF's name
    and parts), recorded in results beside its name; None for other models."""
    source = getattr(model, "_tl_langneurons_source", None)
    return dict(source) if source else None


def model_dtype(model: HookedModel) -> str:
    """The dtype of the model's floating-point weights (``"float32"``, ``"bfloat16"``, ...)."""
    return runtime_info(model)["dtype"]


def model_name(model: HookedModel) -> str:
    """A readable name for a hooked model, recorded in results."""
    name = getattr(model, "_tl_langneurons_name", None)
    if name:
        return name
    cfg = getattr(model, "cfg", None)
    for attr in ("model_name", "name_or_path"):
        if cfg is not None and getattr(cfg, attr, None):
            return str(getattr(cfg, attr))
    hf = getattr(model, "original_model", None)
    if hf is not None and getattr(getattr(hf, "config", None), "_name_or_path", ""):
        return hf.config._name_or_path
    return type(model).__name__


def weights_fingerprint(model: HookedModel) -> str:
    """A hash of the model's parameter names, shapes and a strided sample of their values: tells
    two models apart in milliseconds (results record it; steering checks it)."""
    recorded = getattr(model, "_tl_langneurons_fingerprint", None)
    if recorded:  # a HookedTransformer built from a Hugging Face model: that model's fingerprint
        return recorded
    return hf_fingerprint(_hf(model))


def legacy_fingerprint(model: HookedModel) -> str | None:
    """The fingerprint of versions before 0.2, which hashed the bridge's wrapper names
    (``._original_component``) too: neurons recorded then still steer the same model. None where it is
    the current one."""
    hf = _hf(model)
    if getattr(model, "_tl_langneurons_fingerprint", None) or not any(
            "._original_component" in n for n, _ in hf.named_parameters()):
        return None
    return hf_fingerprint(hf, legacy=True)


def hf_fingerprint(hf: nn.Module, legacy: bool = False) -> str:
    """Names without the bridge's wrappers: the bridge, the fallback and a HookedTransformer built from
    the same Hugging Face model share it."""
    import hashlib

    offloaded = _offloaded_weights(hf)
    h = hashlib.sha256()
    named = sorted(hf.named_parameters(), key=lambda kv: kv[0] if legacy else kv[0].replace("._original_component", ""))
    for name, p in named:
        key = name.replace("._original_component", "")  # the bridge's wrappers are not in the HF names
        if not legacy and name.endswith("bias") and p.device.type != "meta" and not p.any():
            continue  # a zero bias changes nothing (the bridge adds one to a head that has none)
        h.update(f"{name if legacy else key}:{tuple(p.shape)}".encode())
        if p.device.type == "meta":  # offloaded by accelerate (device map with disk or CPU offload)
            if offloaded is None or key not in offloaded:
                continue
            p = offloaded[key]
        flat = p.detach().reshape(-1)
        h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _offloaded_weights(hf: nn.Module) -> Any:
    """The store of the weights accelerate offloaded (indexable by full parameter name), or None."""
    for module in hf.modules():
        hook = getattr(module, "_hf_hook", None)
        for hk in [hook, *getattr(hook, "hooks", [])]:
            wm = getattr(hk, "weights_map", None)
            if wm is not None:
                return getattr(wm, "dataset", wm)
    return None
