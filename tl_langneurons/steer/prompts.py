"""Prompts for prompted steering: the first tokens of held-out sentences, never used for selection."""

from __future__ import annotations

import random
from typing import Sequence

from ..errors import LangNeuronsError


def token_prompts(tokenizer, texts: Sequence[str], n: int, seed: int, lang: str, lo: int = 10, hi: int = 16,
                  exclude: Sequence[Sequence[int]] = ()) -> list[list[int]]:
    """Prompts of ``lo``..``hi`` tokens: the first tokens of ``n`` held-out texts that are longer than
    ``lo`` + 4 tokens (so the prompt stops inside the sentence), drawn with ``seed``; each prompt's
    length is drawn in ``lo..hi`` and kept at least 4 tokens short of its text. Texts that begin with
    one of the ``exclude`` prompts are not drawn (validation prompts apart from test prompts).

    Example:
        >>> from transformers import AutoTokenizer  # doctest: +SKIP
        >>> token_prompts(AutoTokenizer.from_pretrained("gpt2"), texts, 20, 0, "en")  # doctest: +SKIP
    """
    rng = random.Random(f"prompt-{seed}-{lang}")
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    long_enough = [x for x in ids if len(x) >= lo + 4 and not any(x[:len(e)] == list(e) for e in exclude)]
    if not long_enough:
        raise LangNeuronsError(f"no held-out {lang} text has {lo + 4} tokens or more for a {lo}-{hi} token prompt"
                               + (" apart from the texts already used for prompts" if exclude else ""))
    picked = long_enough if len(long_enough) <= n else rng.sample(long_enough, n)
    return [x[: min(rng.randint(lo, hi), len(x) - 4)] for x in picked]


def split_prompts(tokenizer, texts: Sequence[str], n_test: int, n_val: int, lang: str, seed: int = 0
                  ) -> tuple[list[list[int]], list[list[int]]]:
    """Test and validation prompts of one language from disjoint texts: the test prompts are those
    :func:`token_prompts` draws with ``seed`` (the prompts of ``cross-steer`` with that seed), the
    validation prompts are drawn with ``seed + 1`` from the other texts."""
    test = token_prompts(tokenizer, texts, n_test, seed, lang)
    return test, token_prompts(tokenizer, texts, n_val, seed + 1, lang, exclude=test)


def chat_ids(tokenizer, user: str, system: str | None = None) -> list[int]:
    """Token ids of one user turn as the model's chat template writes it, ending where the assistant's
    answer begins (``add_generation_prompt``); ``system`` is a system message in front. A tokenizer
    without a chat template (a base model) gets the plain text and a blank line, the system message
    before it: what a base model continues as an answer.

    Example:
        >>> tok = AutoTokenizer.from_pretrained(qwen_folder)  # doctest: +SKIP
        >>> tok.decode(chat_ids(tok, "Reply in German. Explain photosynthesis."))  # doctest: +SKIP
        '<|im_start|>system\\nYou are Qwen, ...<|im_start|>user\\nReply in German. ...<|im_start|>assistant\\n'
    """
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return [int(t) for t in ids]
    text = (f"{system}\n\n" if system else "") + f"{user}\n\n"
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
