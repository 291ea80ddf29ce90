"""Collection over several processes (torch.distributed, gloo on the CPU): the result must be byte-identical
to one process. The tests launch 2 CPU processes with torchrun (``--standalone``: a free port) on the tiny
Llama of conftest, loaded from its folder; this file is also the worker that torchrun runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
SETTINGS = dict(k=20, batch_size=5)  # 72 texts -> 15 batches, spread 8 / 7 over two ranks
TIMEOUT = 150


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("TL_LANGNEURONS_FAULT", None)
    return env


def _torchrun(*args: str, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _arrays(neurons, pooled) -> dict[str, np.ndarray]:
    """Everything a find result holds that must not depend on the number of processes."""
    out = {"values": pooled.values, "hist": pooled.tokens["hist"], "n_tokens": pooled.tokens["n_tokens"],
           "ap": neurons.ap, "medians": neurons.medians, "means": neurons.means, "mean_all": neurons.mean_all,
           "resid_means": neurons.resid_means, "resid_norms": neurons.resid_norms}
    for lang, sets in neurons.sets.items():
        for which, s in sets.items():
            out.update({f"{lang}.{which}.{f}": getattr(s, f) for f in s.FIELDS})
    return {k: v.numpy() for k, v in out.items()}


def test_two_processes_find_the_same_neurons_byte_for_byte(tiny_dirs, tiny_llama, tiny_corpus, tmp_path):
    """find_neurons under torchrun (2 ranks, gloo): rank 0 returns the pooled matrix and neurons of one
    process, bit for bit (and writes the same neurons.safetensors); rank 1 returns None; an error raised
    on one rank only ends the other with the same message."""
    from tl_langneurons import find_neurons

    r = _torchrun(str(HERE), str(tiny_dirs["llama"]), str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    info = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert info[0]["result"] == "neurons" and info[1]["result"] is None
    assert info[0]["world"] == info[1]["world"] == 2
    # both ranks raise the error that only rank 1 met
    assert info[0]["agreed_error"] == info[1]["agreed_error"] == "bad input on rank 1 only"
    got = dict(np.load(tmp_path / "rank0.npz"))

    one, pooled, _ = find_neurons(tiny_llama, tiny_corpus, progress=False, return_activations=True, **SETTINGS)
    want = _arrays(one, pooled)
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
    assert got["values"].shape == (72, 144)
    one.save(tmp_path / "single")
    assert (tmp_path / "single" / "neurons.safetensors").read_bytes() == (tmp_path / "dist" / "neurons.safetensors").read_bytes()


def test_batches_are_spread_whole_over_ranks(tiny_llama, tiny_corpus):
    """Each rank runs the batches one process forms, every batch on exactly one rank (batch i on rank i % 2)."""
    from tl_langneurons.detect.activations import CollectSettings, _Collection

    texts, _ = tiny_corpus.flat()
    settings = CollectSettings(batch_size=5)
    one = _Collection(tiny_llama, texts, "mlp_post", settings)
    ranks = [_Collection(tiny_llama, texts, "mlp_post", settings, shard=(r, 2)) for r in (0, 1)]
    assert all(r.batches == one.batches for r in ranks)
    assert ranks[0].mine == list(range(0, len(one.batches), 2)) and ranks[1].mine == list(range(1, len(one.batches), 2))
    rows = torch.cat([r.rows for r in ranks]).sort().values
    assert torch.equal(rows, torch.arange(len(texts)))
    assert ranks[0].out.shape[0] + ranks[1].out.shape[0] == len(texts)


def test_find_cli_under_torchrun_writes_the_single_process_folder(tiny_dirs, tmp_path):
    """`torchrun --nproc_per_node 2 -m tl_langneurons.cli find ...` writes (rank 0 only) the neurons and the
    activation cache that one process writes, byte for byte."""
    from tl_langneurons.cli import main

    args = ["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "12", "--k", "20",
            "--batch-size", "5", "--device", "cpu", "--quiet"]
    r = _torchrun("-m", "tl_langneurons.cli", *args, "--out", str(tmp_path / "two"),
                  "--cache", str(tmp_path / "two.safetensors"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("Language neurons of") == 1  # rank 0 alone prints the summary
    assert main([*args, "--out", str(tmp_path / "one"), "--cache", str(tmp_path / "one.safetensors")]) == 0
    for name in ("neurons.safetensors", "neurons.json", "neurons.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    # the cache keeps the residual means too (a later find from it records them)
    assert set(a) == set(b) == {"values", "tokens.hist", "tokens.n_tokens", "resid.mean", "resid.norm_sum",
                                "resid.norm_count"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "one.safetensors", "two", "two.safetensors"]


def _same_files(a: Path, b: Path, names) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_evaluate_and_sweep_under_torchrun_equal_one_process(tiny_dirs, tmp_path):
    """`evaluate` and `sweep` under torchrun (2 ranks, gloo) spread the batches over the ranks and write
    (rank 0 only) what one process writes: the same tables, cells and cached samples, byte for byte. A
    second run over a partly filled cache generates only the missing seeds, on both ranks alike."""
    import shutil

    from tl_langneurons.cli import main

    common = ["--device", "cpu", "--quiet"]
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "12", "--k", "20",
                 "--out", str(tmp_path / "found"), *common]) == 0
    for name in ("one", "two"):
        shutil.copytree(tmp_path / "found", tmp_path / name)

    def both(*args: str) -> subprocess.CompletedProcess:
        r = _torchrun("-m", "tl_langneurons.cli", *args, "--neurons", str(tmp_path / "two"), *common)
        assert r.returncode == 0, r.stderr[-3000:]
        assert main([*args, "--neurons", str(tmp_path / "one"), *common]) == 0
        return r

    # none, top / bottom / both for 2 langs, k=10 ablation: 6 + 36 + 6 = 48 samples, 12 batches of 4, 6 per rank
    ev = ["evaluate", "--languages", "de,ja", "--samples", "6", "--max-new-tokens", "5", "--batch-size", "4",
          "--ablation-ks", "10", "--ablation-samples", "3"]
    r = both(*ev)
    assert r.stdout.count("Occurrence rate of the target language") == 1  # rank 0 alone prints
    one, two = tmp_path / "one", tmp_path / "two"
    cells = sorted(p.name for p in (one / "control" / "cells").iterdir())
    assert cells == sorted(p.name for p in (two / "control" / "cells").iterdir()) and len(cells) == 9
    _same_files(one / "control", two / "control", ["table2.csv", "k_ablation.csv", "samples.md",
                                                    *(f"cells/{c}" for c in cells)])
    cache = sorted(p.name for p in (one / "samples").iterdir())
    assert cache == sorted(p.name for p in (two / "samples").iterdir())
    _same_files(one / "samples", two / "samples", cache)
    run = json.loads((two / "control" / "evaluation.json").read_text())["meta"]["run"]
    assert run["samples_generated"] == 48 and run["sample_cache"]["misses"] == 48
    assert run["samples_per_rank"] == [24, 24]  # batches 0, 2, .. on rank 0; 1, 3, .. on rank 1

    # more seeds: only the new ones are generated (rank 0's cache decides for both ranks)
    both(*[("8" if a == "6" else a) for a in ev], "--overwrite")
    _same_files(one / "control", two / "control", ["table2.csv", "k_ablation.csv"])
    run = json.loads((two / "control" / "evaluation.json").read_text())["meta"]["run"]
    # seeds 7, 8 of the 7 Table 2 cells are new; 1..6 come from the cache, the ablation's cells from their files
    assert run["samples_generated"] == 2 * 7 and run["sample_cache"]["hits"] == 6 * 7
    assert run["samples_per_rank"] == [8, 6]  # 14 samples: batches of 4, 4 (rank 0), 4, 2 (rank 1)

    # a sweep: every stage's decision is taken from rank 0's samples, the same on both ranks
    both("sweep", "--method", "add", "--languages", "de,ja", "--k-fractions", "1%,10%", "--alphas", "0.5,2",
         "--layer-sets", "all", "--val-samples", "3", "--test-samples", "3", "--max-new-tokens", "5",
         "--batch-size", "4")
    a, b = (json.loads((d / "sweep-add" / "sweep.json").read_text()) for d in (one, two))
    assert a["best"] == b["best"] and a["stages"] == b["stages"] and a["test"] == b["test"]
    _same_files(one / "sweep-add", two / "sweep-add", ["sweep.md"])

    # cross-steer: the same cell pipeline, so the same spreading; rank 0 writes the matrices one process writes
    # (6 languages x 1 prompt x 2 seeds x (unsteered + 6 targets) = 84 samples, 21 batches of 4)
    r = both("cross-steer", "--heldout", "bundled", "--n-prompts", "1", "--samples", "2", "--max-new-tokens", "4",
             "--batch-size", "4")
    assert r.stdout.count("Target-language rate") == 1
    _same_files(one / "analyses", two / "analyses", ["cross_steering.md"])
    a, b = (json.loads((d / "analyses" / "cross_steering.json").read_text()) for d in (one, two))
    assert b.pop("run")["samples_per_rank"] == [44, 40] and a.pop("run")["samples_generated"] == 84 and a == b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_input_ends_every_rank_with_one_line(tiny_dirs, tmp_path):
    """With a missing corpus, both ranks of a 2-process find print the same one-line error and exit 2."""
    port, procs = _free_port(), []
    for rank in (0, 1):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tl_langneurons.cli", "find", "--model", str(tiny_dirs["llama"]), "--corpus",
             str(tmp_path / "missing"), "--device", "cpu", "--quiet", "--out", str(tmp_path / "out")],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 2, err[-2000:]
        errs.append(err.strip().splitlines())
    assert errs[0] == errs[1] and len(errs[0]) == 1 and errs[0][0].startswith("tl-langneurons: error: ")
    assert "missing" in errs[0][0]
    assert not (tmp_path / "out").exists()


def _worker(model_dir: str, out: str) -> None:
    """One rank of the first test: find_neurons over the process group torchrun describes."""
    import torch.distributed as dist

    from tl_langneurons import MultilingualCorpus, find_neurons, load_model
    from tl_langneurons.distributed import agreed, context
    from tl_langneurons.errors import LangNeuronsError

    dist.init_process_group("gloo")
    rank, out = dist.get_rank(), Path(out)
    model = load_model(model_dir)
    corpus = MultilingualCorpus.bundled().sample(12, seed=3)  # tiny_corpus
    res = find_neurons(model, corpus, progress=False, return_activations=True, **SETTINGS)
    info = {"world": dist.get_world_size(), "result": None if res is None else "neurons"}
    if res is not None:
        neurons, pooled, _ = res
        np.savez(out / f"rank{rank}.npz", **_arrays(neurons, pooled))
        neurons.save(out / "dist")
    try:
        with agreed(context()):
            if rank == 1:
                raise LangNeuronsError("bad input on rank 1 only")
    except LangNeuronsError as e:
        info["agreed_error"] = str(e)
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
    # past the interpreter's shutdown, which gloo can abort (as the CLI: distributed.exit_if_left_group)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
