"""Fault injection: `find` and `evaluate` killed with SIGKILL at every stage (in a subprocess, on the
tiny model), then rerun. The rerun's result folder is byte-identical to an uninterrupted run's,
and no half-written folder is ever visible under the final name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tl_langneurons.results import MARKER, staging_dir
from warm import run_cli

FIND_STAGES = ["collect", "rank", "analysis", "write", "swap"]
EVALUATE_STAGES = ["batch", "cell", "write", "swap"]


def cli(args: list[str], fault: str | None = None, cwd: Path | None = None, fresh: bool = False
        ) -> subprocess.CompletedProcess:
    """The command line in a process of its own: forked warm (tests/warm.py), or with ``fresh`` a new
    interpreter (the reference runs: another hash seed than the warm reruns compared with them)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TL_LANGNEURONS_FAULT", None)
    if fault:
        env["TL_LANGNEURONS_FAULT"] = fault
    if fresh:
        return subprocess.run([sys.executable, "-m", "tl_langneurons.cli", *args], env=env, capture_output=True,
                              text=True, timeout=300, cwd=cwd)
    return run_cli(args, env, cwd, timeout=300)


def files(folder: Path, skip: tuple[str, ...] = ("timings.json",)) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), without run timings."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in skip:
            data = p.read_bytes()
            if p.name == "evaluation.json":  # per-cell generation times and cache hits differ between runs
                obj = json.loads(data)
                obj["meta"].pop("timings", None)
                obj["meta"].pop("run", None)
                data = json.dumps(obj, sort_keys=True).encode()
            out[str(p.relative_to(folder))] = data
    return out


def complete_or_absent(out: Path) -> None:
    """The final name holds nothing, or a whole result (its marker is written last)."""
    if out.exists():
        assert (out / MARKER).exists(), f"half-written folder visible at {out}: {sorted(os.listdir(out))}"


@pytest.fixture(scope="module")
def find_args(tiny_dirs):
    return ["find", "--model", str(tiny_dirs["llama"]), "--n-per-lang", "6", "--k", "5", "--batch-size", "4",
            "--languages", "en,de,ja", "--quiet"]


@pytest.fixture(scope="module")
def reference(find_args, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    ref = root / "ref"
    r = cli(find_args + ["--out", str(ref)], fresh=True)
    assert r.returncode == 0, r.stderr
    return root, ref


@pytest.mark.parametrize("stage", FIND_STAGES)
def test_find_killed_at_every_stage_resumes_byte_identical(find_args, reference, stage):
    root, ref = reference
    out = root / f"find-{stage}"
    r = cli(find_args + ["--out", str(out)], fault=stage)
    assert r.returncode == -signal.SIGKILL, (stage, r.returncode, r.stderr[-2000:])
    complete_or_absent(out)
    if stage in ("rank", "analysis"):  # the whole collection was kept for the rerun
        assert (staging_dir(out) / ".partial-activations.safetensors").exists()
    r = cli(find_args + ["--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert files(out) == files(ref)
    assert not staging_dir(out).exists() and not (root / f".find-{stage}.lock").exists()


@pytest.mark.parametrize("stage", ["analysis", "swap"])
def test_find_over_an_existing_result_never_leaves_half_a_folder(find_args, reference, stage):
    root, ref = reference
    out = root / f"over-{stage}"
    assert cli(find_args + ["--out", str(out)]).returncode == 0
    before = files(out)
    r = cli(find_args[:-3] + ["--k", "7", "--quiet", "--out", str(out), "--overwrite"], fault=stage)
    assert r.returncode == -signal.SIGKILL
    complete_or_absent(out)
    if stage == "analysis":
        assert files(out) == before  # the old result is untouched until the new one is complete
    r = cli(find_args[:-3] + ["--k", "7", "--quiet", "--out", str(out), "--overwrite"])
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "neurons.json").read_text())["k"] == 7


@pytest.mark.parametrize("stage", EVALUATE_STAGES)
def test_evaluate_killed_at_every_stage_resumes_byte_identical(reference, stage):
    root, ref = reference
    args = ["evaluate", "--neurons", str(ref), "--samples", "2", "--max-new-tokens", "4", "--ablation-ks", "1,5",
            "--languages", "en,ja", "--quiet"]
    clean = root / "control-ref"
    if not clean.exists():
        assert cli(args + ["--out", str(clean)], fresh=True).returncode == 0
    out = root / f"control-{stage}"
    if stage == "batch":  # the clean run filled the neurons folder's sample cache: start without it
        import shutil

        shutil.rmtree(ref / "samples")
    r = cli(args + ["--out", str(out)], fault=stage)
    assert r.returncode == -signal.SIGKILL, (stage, r.stderr[-2000:])
    complete_or_absent(out)
    if stage == "cell":  # the finished cell is kept for the rerun
        assert any((staging_dir(out) / "cells").iterdir())
    if stage == "batch":  # the first batch is in the neurons folder's sample cache
        assert any((ref / "samples").iterdir())
    r = cli(args + ["--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert files(out) == files(clean)


def test_second_writer_is_refused_and_a_dead_lock_is_taken_over(reference, find_args):
    root, ref = reference
    out = root / "locked"
    lock = root / ".locked.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{holder.pid}\n")
        r = cli(find_args + ["--out", str(out)])
        errors = [line for line in r.stderr.splitlines() if line.startswith("tl-langneurons: error:")]
        assert r.returncode == 2 and len(errors) == 1 and f"process {holder.pid}" in errors[0]
        assert "Loading weights" not in r.stderr  # refused before the model loads
    finally:
        holder.kill()
        holder.wait()
    r = cli(find_args + ["--out", str(out)])  # the holder is dead: its lock is taken over
    assert r.returncode == 0, r.stderr
    assert "no longer running" in r.stderr and not lock.exists()


def test_cross_steer_killed_after_a_batch_resumes_from_the_sample_cache(reference):
    """cross-steer killed after its first batch (the batch's samples are in the neurons folder's sample
    cache) resumes there: the rerun generates only the rest and writes the uninterrupted run's matrices;
    a third run generates nothing."""
    import shutil

    from tl_langneurons import MultilingualCorpus

    root, ref = reference
    held = root / "cs-held"
    if not held.exists():
        held.mkdir()
        for lang, texts in MultilingualCorpus.bundled().sample(4, seed=9).texts.items():
            (held / f"{lang}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    clean, killed = root / "cs-clean", root / "cs-killed"
    for d in (clean, killed):
        shutil.copytree(ref, d, ignore=shutil.ignore_patterns("samples"))
    # 3 languages x 2 prompts x 2 seeds x (unsteered + 3 targets) = 48 samples, 6 batches of 8
    args = ["cross-steer", "--heldout", str(held), "--n-prompts", "2", "--samples", "2", "--max-new-tokens", "4",
            "--batch-size", "8", "--quiet"]

    def result(d: Path) -> tuple[dict, str]:
        data = json.loads((d / "analyses" / "cross_steering.json").read_text())
        return data, (d / "analyses" / "cross_steering.md").read_text()

    assert cli([*args, "--neurons", str(clean)]).returncode == 0
    want, want_md = result(clean)
    assert want.pop("run")["samples_generated"] == 48
    r = cli([*args, "--neurons", str(killed)], fault="batch")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not (killed / "analyses" / "cross_steering.json").exists()
    assert any((killed / "samples").iterdir())  # the first batch is cached
    r = cli([*args, "--neurons", str(killed)])
    assert r.returncode == 0, r.stderr
    got, got_md = result(killed)
    run = got.pop("run")
    assert run["samples_generated"] == 48 - 8 and run["sample_cache"]["hits"] == 8
    assert got == want and got_md == want_md
    assert cli([*args, "--neurons", str(killed)]).returncode == 0
    assert result(killed)[0]["run"]["samples_generated"] == 0
