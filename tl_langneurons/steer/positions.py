"""Which forward passes are the prompt: generation runs its prompt pass inside :func:`prompt_pass`,
and hooks for ``positions="generated"`` leave those passes alone (the prompt's keys and values in
the KV cache stay unsteered)."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

PROMPT_PASS: contextvars.ContextVar[bool] = contextvars.ContextVar("tl_langneurons_prompt_pass", default=False)


@contextlib.contextmanager
def prompt_pass() -> Iterator[None]:
    """Mark the forward passes inside as the prompt pass."""
    token = PROMPT_PASS.set(True)
    try:
        yield
    finally:
        PROMPT_PASS.reset(token)
