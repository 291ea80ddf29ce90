"""``backend="hooked"``: a transformer-lens 3.x ``HookedTransformer`` with a Hugging Face model's weights, built
offline (no hub call) and unprocessed, as ``from_pretrained_no_processing`` builds it.

It is built with its parameters on the meta device (no memory, no random initialisation) and then given the
converted tensors themselves: the MLP matrices and the unembedding stay views of the Hugging Face weights (in the
layout ``nn.Linear`` has, which the classic build reaches by copying), the rest is made contiguous as the classic
build's copies are. The parameters equal the classic build's value for value and stride for stride, so every
output is bit-identical (tests/integration/test_hooked.py compares the two), at about half its peak memory.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import LangNeuronsError
from .fingerprint import hf_fingerprint

_LINEAR_LAYOUT = ("W_U", "W_in", "W_gate", "W_out")
"""2-d parameters kept in the layout ``nn.Linear`` has (the transpose contiguous): transformer-lens 3.x calls
``W.T.contiguous()`` on them in every forward, which is then free."""


def hooked_transformer_class() -> type:
    """``transformer_lens.HookedTransformer``, or one line saying which transformer-lens has it."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError as e:
        from importlib.metadata import version

        raise LangNeuronsError(
            f"backend hooked needs HookedTransformer, which transformer-lens {version('transformer-lens')} does not "
            "have (4.x has only TransformerBridge); install the 3.x line beside this package: "
            "pip install 'transformer-lens>=3.9,<4' (or use --backend bridge)") from e
    return HookedTransformer


_NAME_ONLY = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")
"""Architectures whose HookedTransformer config transformer-lens takes from the official model name only."""


def _hooked_name(c: Any, tmp: Path) -> str:
    """What to give transformer-lens' loaders for a model of Hugging Face config ``c``: for a name-only
    architecture the official name whose config matches ``c``'s sizes, else a folder holding only ``c``
    as config.json (a neutral name: transformer-lens guesses the architecture from substrings such as
    "llama" in a name)."""
    from transformer_lens import loading_from_pretrained as loading

    arch = (getattr(c, "architectures", None) or [type(c).__name__])[0]
    if arch in _NAME_ONLY:
        want = (c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size)
        for name in loading.OFFICIAL_MODEL_NAMES:
            if "gemma" not in name.lower():
                continue
            try:
                d = loading.convert_hf_model_config(name)
            except Exception:  # noqa: BLE001 - a name whose config needs the hub: not this model
                continue
            if (d.get("d_model"), d.get("n_layers"), d.get("d_mlp"), d.get("d_vocab")) == want:
                return name
        raise LangNeuronsError(f"transformer-lens knows no {arch} with d_model={want[0]}, {want[1]} layers, "
                               f"d_mlp={want[2]}; use --backend bridge")
    folder = tmp / "model"
    folder.mkdir()
    c.to_json_file(str(folder / "config.json"))
    return str(folder)


@contextlib.contextmanager
def hooked_config(config: Any, dtype: torch.dtype, device: str) -> Iterator[tuple[str, Any]]:
    """(name for transformer-lens' loaders, ``HookedTransformerConfig``) of a Hugging Face config, or one
    line saying that transformer-lens cannot build it; needs no weights, so it runs before they load."""
    from transformer_lens import loading_from_pretrained as loading

    arch = (getattr(config, "architectures", None) or ["this model"])[0]
    with tempfile.TemporaryDirectory(prefix=".hooked-") as tmp, _quiet_transformer_lens():
        try:
            name = _hooked_name(config, Path(tmp))
            cfg = loading.get_pretrained_model_config(name, hf_cfg=config.to_dict(), fold_ln=False, device=device,
                                                      dtype=dtype)
        except LangNeuronsError:
            raise
        except Exception as e:  # noqa: BLE001 - transformer-lens raises many kinds for an architecture it lacks
            raise LangNeuronsError(f"HookedTransformer cannot build {arch} ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:200] if str(e) else ''}); use --backend bridge or hf"
                                   ) from e
        yield name, cfg


@contextlib.contextmanager
def _quiet_transformer_lens() -> Iterator[None]:
    """transformer-lens warns and logs for every weight it fills in; a failure is reported by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)



@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside register their parameters on the meta device (no memory, no random initialisation);
    their buffers (rotary tables, masks) are computed as usual."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _in_place(name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` as the classic build leaves parameter ``name``: in ``like``'s dtype, contiguous, except the
    ``_LINEAR_LAYOUT`` matrices, whose transpose is (a Hugging Face weight's ``.T`` is that already: no copy)."""
    t = t.detach().to(like.dtype)
    if name.rsplit(".", 1)[-1] in _LINEAR_LAYOUT and t.dim() == 2:
        return t if t.T.is_contiguous() else t.T.contiguous().T
    return t.contiguous()


def _assigned(cls: type, cfg: Any, tok: Any, state: dict[str, torch.Tensor]) -> nn.Module | None:
    """A ``cls`` built on the meta device and given ``state``'s tensors (views where the layout allows); None
    where ``state`` does not hold every parameter in its shape (the classic build then fills in defaults)."""
    with _parameters_on_meta():
        model = cls(cfg, tokenizer=tok, move_to_device=False, default_padding_side="left")
    params = dict(model.named_parameters())
    if any(n not in state or state[n].shape != p.shape for n, p in params.items()):
        return None
    for name, p in params.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        module._parameters[leaf] = nn.Parameter(_in_place(name, state[name], p), requires_grad=p.requires_grad)
    return model


def _classic(cls: type, cfg: Any, tok: Any, state: dict[str, torch.Tensor]) -> nn.Module:
    """The build of ``from_pretrained_no_processing``: every parameter allocated and initialised, then copied
    from ``state``; the ``_LINEAR_LAYOUT`` matrices are copied once more into ``nn.Linear``'s layout."""
    model = cls(cfg, tokenizer=tok, move_to_device=False, default_padding_side="left")
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False, refactor_factored_attn_matrices=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in _LINEAR_LAYOUT and p.dim() == 2:
                p.data = p.data.T.contiguous().T
    return model


def to_hooked(hf: nn.Module, tok: Any, dtype: torch.dtype, classic: bool = False) -> nn.Module:
    """A ``HookedTransformer`` with ``hf``'s weights, unprocessed: no LayerNorm folding or centering, so its
    activations are the Hugging Face model's, as the bridge's are. It records ``hf``'s weights fingerprint, so
    neurons found with the bridge steer it and back. It shares ``hf``'s MLP and unembedding tensors (``classic``:
    copies every weight, as transformer-lens' own build does; the outputs are the same bit for bit)."""
    HookedTransformer = hooked_transformer_class()
    from transformer_lens import loading_from_pretrained as loading

    fingerprint = hf_fingerprint(hf)
    dev = str(next(hf.parameters()).device)  # where _load_hf put the weights
    with hooked_config(hf.config, dtype, dev) as (name, cfg), _quiet_transformer_lens():
        try:
            state = loading.get_pretrained_state_dict(name, cfg, hf, dtype=dtype)
            model = None if classic else _assigned(HookedTransformer, cfg, tok, state)
            model = model if model is not None else _classic(HookedTransformer, cfg, tok, state)
        except Exception as e:  # noqa: BLE001 - transformer-lens raises many kinds for an architecture it lacks
            raise LangNeuronsError(f"HookedTransformer cannot build {type(hf).__name__} ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:200] if str(e) else ''}); use --backend bridge or hf"
                                   ) from e
    del state
    model.to(dev, print_details=False)
    model.eval()
    model._tl_langneurons_fingerprint = fingerprint
    return model
