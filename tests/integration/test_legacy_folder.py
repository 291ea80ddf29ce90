"""A result folder made before the redesign of the interventions and the sweep (issue 40) is read back whole:
tests/data/legacy_run was written by the code of 08d142e (find on the tiny Llama, then evaluate, an add sweep, a
sparse sweep and a diffmean cross-steer; tests/data/legacy_run/MADE_BY.md says how, figures left out). Run
again on it, ``evaluate``, ``sweep`` and ``cross-steer`` generate nothing (generation raises) and give the same
numbers: every cell and sample is found under its old key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tl_langneurons.evaluate.cells as pipeline
from tl_langneurons.cli import main

from helpers import make_tiny

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_run"
QUICK = ["--max-new-tokens", "3", "--quiet"]
COMMANDS = [  # as they were run on the old code (MADE_BY.md)
    ["evaluate", "--neurons", "run", "--samples", "2", "--languages", "de,ja", "--ablation-ks", "1,5", *QUICK],
    ["sweep", "--neurons", "run", "--method", "add", "--languages", "de", "--k-fractions", "5%", "--alphas", "0.5,3",
     "--layer-sets", "all,last", "--val-samples", "1", "--test-samples", "1", *QUICK],
    ["sweep", "--neurons", "run", "--method", "sparse", "--languages", "ja", "--resid-layers", "1", "--dim-fractions",
     "0.1", "--coefs", "1", "--val-samples", "1", "--test-samples", "1", *QUICK],
    ["cross-steer", "--neurons", "run", "--heldout", "bundled", "--method", "diffmean", "--layer", "1", "--alpha", "0.5",
     "--n-prompts", "1", "--samples", "1", *QUICK],
]


def _numbers(path: Path) -> dict:
    """What a result file says, without what varies from run to run (timings, versions, run counts)."""
    data = json.loads(path.read_text(encoding="utf-8"))

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("timings", "versions", "run", "meta", "seconds")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return strip(data)


@pytest.mark.slow  # four commands on the tiny model
def test_a_folder_made_before_the_redesign_is_read_back_whole(tokenizer_dir, tmp_path, monkeypatch):
    make_tiny("llama", tokenizer_dir, tmp_path / "legacy-tiny")  # the same seed and tokenizer: the same weights
    shutil.copytree(LEGACY, tmp_path / "run")
    monkeypatch.chdir(tmp_path)  # the model is recorded by the name it was asked for: legacy-tiny/llama
    before = {f: _numbers(tmp_path / "run" / f) for f in ("control/evaluation.json", "sweep-add/sweep.json",
                                                        "sweep-sparse/sweep.json", "analyses/cross_steering.json")}

    def no_generation(*a, **k):
        raise AssertionError("a cell or sample made before the redesign was generated again")

    monkeypatch.setattr(pipeline, "generate_many", no_generation)
    for cmd in COMMANDS:
        assert main([cmd[0], *(["--model", "legacy-tiny/llama"] if cmd[0] != "find" else []), *cmd[1:]]) == 0, cmd
    for f, want in before.items():
        assert _numbers(tmp_path / "run" / f) == want, f
