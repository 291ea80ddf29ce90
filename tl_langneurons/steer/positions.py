"""Which forward passes are the prompt: generation runs its prompt pass inside :func:`prompt_pass`,
and hooks for ``positions="generated"`` leave those passes alone (the prompt's keys and values in
the KV cache stay unsteered). Generation also numbers its forward passes (:data:`GEN_STEP`: 0 for
the prompt pass, t for the pass on the t-th generated token), so hooks with ``steer_tokens=N`` steer
only the passes that write the first N tokens and then let the model write on unsteered."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

PROMPT_PASS: contextvars.ContextVar[bool] = contextvars.ContextVar("tl_langneurons_prompt_pass", default=False)
GEN_STEP: contextvars.ContextVar[int | None] = contextvars.ContextVar("tl_langneurons_gen_step", default=None)


@contextlib.contextmanager
def prompt_pass() -> Iterator[None]:
    """Mark the forward passes inside as the prompt pass."""
    token = PROMPT_PASS.set(True)
    try:
        yield
    finally:
        PROMPT_PASS.reset(token)


@contextlib.contextmanager
def generation_step(step: int, prompt: bool = False) -> Iterator[None]:
    """Mark the forward passes inside as generation step ``step`` (and the prompt pass if ``prompt``)."""
    token = GEN_STEP.set(step)
    try:
        if prompt:
            with prompt_pass():
                yield
        else:
            yield
    finally:
        GEN_STEP.reset(token)
