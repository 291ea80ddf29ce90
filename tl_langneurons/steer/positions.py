"""Where in a generation the hooks act: the one list of positions, and the one mechanism behind them.

Positions (:data:`POSITIONS`), the argument every hook builder receives (``positions=``):

- ``all``: every position of every forward pass (the paper);
- ``last``: the newest position only (with a KV cache, the token being produced); clamp's alone;
- ``generated``: only the positions the model writes.

``generated`` and ``steer_tokens`` need to know which forward pass of a generation is running, which a hook
cannot see in its arguments. Generation says it through two context variables: it runs its prompt pass (the
first forward of a KV-cached generation) inside :func:`prompt_pass` (:data:`PROMPT_PASS` True), and numbers its
passes (:data:`GEN_STEP`: 0 for the prompt pass, t for the pass on the t-th generated token). :func:`gate`
wraps hooks so they leave the activation alone in the passes they are not for; outside generation the
variables are unset and ``generated`` acts on every pass like ``all`` (wrap a forward pass in
``with prompt_pass():`` to run it unsteered). Being ``contextvars.ContextVar``, they are per thread and per
asyncio task. This module is the only place that reads them.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

from ..errors import LangNeuronsError
from ..registry import Hooks

POSITIONS = ("all", "last", "generated")

PROMPT_PASS: contextvars.ContextVar[bool] = contextvars.ContextVar("tl_langneurons_prompt_pass", default=False)
GEN_STEP: contextvars.ContextVar[int | None] = contextvars.ContextVar("tl_langneurons_gen_step", default=None)


def check_positions(positions: str, allowed: tuple[str, ...] = POSITIONS, what: str = "") -> None:
    """One clear line unless ``positions`` is one of ``allowed`` (a subset of :data:`POSITIONS`)."""
    if positions not in allowed:
        known = "" if positions in POSITIONS else "unknown "
        raise LangNeuronsError(f"{known}positions {positions!r}{' for ' + what if what else ''}; use "
                               f"{', '.join(allowed)}")


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


def _inactive_when(hooks: Hooks, off: Callable[[], bool]) -> Hooks:
    """The same hooks, leaving the activation alone in the passes where ``off()`` is true."""
    def wrap(fn: Callable) -> Callable:
        def gated(x, hook):
            return None if off() else fn(x, hook)
        return gated
    return [(name, wrap(fn)) for name, fn in hooks]


def only_generated(hooks: Hooks) -> Hooks:
    """The same hooks, inactive during the prompt pass."""
    return _inactive_when(hooks, PROMPT_PASS.get)


def gate(hooks: Hooks, positions: str) -> Hooks:
    """Hooks built for every position, limited to ``positions`` by pass: ``generated`` leaves the prompt pass
    alone; ``all`` (and ``last``, which the builder itself limits within a pass) returns them unchanged."""
    return only_generated(hooks) if positions == "generated" else hooks


def only_first_tokens(hooks: Hooks, n: int) -> Hooks:
    """The same hooks, active only in the generation passes that write the first ``n`` tokens (steps
    0 .. n-1, step 0 being the prompt pass); outside generation they act on every pass."""
    def past_n() -> bool:
        step = GEN_STEP.get()
        return step is not None and step >= n
    return _inactive_when(hooks, past_n)


def only_after_tokens(hooks: Hooks, n: int) -> Hooks:
    """The same hooks, active only in the generation passes after the first ``n`` tokens (steps n, n+1, ...):
    the second phase of a two-phase strength; outside generation they act on no pass (the first phase's
    hooks, :func:`only_first_tokens`, act there)."""
    def before_n() -> bool:
        step = GEN_STEP.get()
        return step is None or step < n
    return _inactive_when(hooks, before_n)
