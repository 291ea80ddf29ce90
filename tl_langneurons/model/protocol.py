"""What tl-langneurons needs of a model: a TransformerLens hooked root module.

``TransformerBridge``, a legacy ``HookedTransformer`` and :class:`HFHookedModel` all satisfy
:class:`HookedModel`; every function that takes a ``model`` is typed with it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class HookedModel(Protocol):
    """A model with TransformerLens hook points (``hook_dict``), the ``hooks()`` context,
    ``run_with_hooks``, ``run_with_cache`` and a tokenizer."""

    tokenizer: Any

    @property
    def hook_dict(self) -> dict[str, Any]: ...

    def hooks(self, fwd_hooks: Any = ..., bwd_hooks: Any = ..., reset_hooks_end: bool = ...,
              clear_contexts: bool = ...) -> Any: ...

    def run_with_hooks(self, *model_args: Any, **model_kwargs: Any) -> Any: ...

    def run_with_cache(self, *model_args: Any, **kwargs: Any) -> Any: ...
