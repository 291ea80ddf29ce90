"""Hostile and broken GGUF files: wall time, peak RSS and outcome of `tl-langneurons info --model FILE`
for each, in a fresh cache, here and (with --baseline) in another checkout, side by side in one run.

    python benchmarks/bench_gguf_header.py [--baseline /path/to/old/checkout] [--timeout 60]

The files are built here: a tiny Llama written to GGUF (as the tests do) with its header altered, and
the real Gemma-3-270M header (from the builtin chunks) with a 32 GiB array claimed in it; sparse files
stand in for large ones. Each run is one process; its peak RSS is its own (``wait4``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path[1:1] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "integration")]
from _common import record, table  # noqa: E402


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def insert_kv(src: bytes, kv: bytes) -> bytes:
    """``src`` (a GGUF's first bytes) with one metadata entry ``kv`` put first (n_kv + 1)."""
    magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", src[:24])
    return struct.pack("<4sIQQ", magic, version, n_tensors, n_kv + 1) + kv + src[24:]


def sparse(path: Path, head: bytes, size: int) -> Path:
    with path.open("wb") as f:
        f.write(head)
        f.truncate(max(size, len(head)))
    return path


def build(folder: Path) -> list[tuple[str, str]]:
    """(case, model argument) for each hostile file, built in ``folder``."""
    from helpers import make_tiny, train_tokenizer  # the tests' tiny tokenizer and model
    from test_gguf import split, write_gguf

    tok = folder / "tok"
    tok.mkdir()
    train_tokenizer(tok)
    llama = make_tiny("llama", tok, folder)
    good = write_gguf(llama, folder / "good.gguf")
    cases = [("tiny llama, intact (control)", str(good))]
    for n in (200, 20000):
        cases.append((f"block_count {n} (3 blocks of tensors)", str(write_gguf(llama, folder / f"bc{n}.gguf",
                                                                              block_count=n))))
    cases.append(("block_count 20 (3 blocks)", str(write_gguf(llama, folder / "bc20.gguf", block_count=20))))
    cases.append(("blk.2.ffn_down removed", str(write_gguf(llama, folder / "drop.gguf", drop=("blk.2.ffn_down.weight",)))))
    cases.append(("llama tensors under mamba", str(write_gguf(llama, folder / "mamba.gguf", architecture="mamba"))))
    parts = split(good, folder / "chunks", 3)
    (folder / "chunks" / "part2.bin").write_bytes(parts[1].read_bytes())
    cases.append(("chunks part01 part02 part2 part03", str(folder / "chunks")))
    src = good.read_bytes()
    deep = _s("x.deep") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 3000 + struct.pack("<IQ", 4, 0)
    cases.append(("arrays nested 3000 deep", str(sparse(folder / "deep.gguf", insert_kv(src, deep), 0))))
    gib = 1 << 30
    claim = _s("x.claim") + struct.pack("<IIQ", 9, 12, gib // 8)
    cases.append(("1 GiB array claimed, 300 MB file", str(sparse(folder / "claim.gguf", insert_kv(src, claim), 300 << 20))))
    cases.append(("1 GiB array present (sparse 1.1 GB file)",
                  str(sparse(folder / "present.gguf", insert_kv(src[:24], claim), gib + (64 << 20)))))
    from tl_langneurons.model import gguf_models

    gemma = gguf_models.gguf_source("gemma-3-270m")
    with gemma.parts[0].open("rb") as f:
        head = f.read(16 << 20)  # the whole header (its 262k-token vocabulary) and some tensor data
    huge = _s("x.huge") + struct.pack("<IIQ", 9, 12, 1 << 32)
    cases.append(("Gemma header + 2^32 float64 array claimed",
                  str(sparse(folder / "gemma-huge.gguf", insert_kv(head, huge), gemma.size + len(huge)))))
    return cases


def run(tree: Path, model: str, cache: Path, timeout: float) -> tuple[str, float, float, str]:
    """(exit, seconds, peak RSS MiB, first line of stderr) of ``info --model model`` with ``tree`` first on
    the path and an empty cache."""
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "TL_LANGNEURONS_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    code = ("import sys; from tl_langneurons.cli import main; sys.exit(main(['info', '--model', sys.argv[1]]))")
    err = tempfile.TemporaryFile()
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code, model], env=env, stdout=subprocess.DEVNULL, stderr=err,
                         start_new_session=True, cwd=tree)  # python -c puts the working folder first on the path
    status, rusage = None, None
    while time.perf_counter() - t < timeout:
        pid, status, rusage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.05)
    else:
        os.killpg(p.pid, signal.SIGKILL)
        _, status, rusage = os.wait4(p.pid, 0)
        return f"killed at {timeout:.0f} s", time.perf_counter() - t, rusage.ru_maxrss / 1024, ""
    took = time.perf_counter() - t
    err.seek(0)
    lines = [l for l in err.read().decode(errors="replace").splitlines() if l.strip() and "it/s]" not in l]
    first = next((l for l in lines if "error" in l.lower()), lines[-1] if lines else "")
    return str(os.waitstatus_to_exitcode(status)), took, rusage.ru_maxrss / 1024, first[:140]


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def check_in_process(model: str, cache: Path) -> tuple[float, float]:
    """(seconds, growth of this process's peak RSS in MiB) of the checks that need no weights
    (:func:`check_gguf`: files, chunks, the header walk, its structure), this checkout's code."""
    from tl_langneurons.errors import LangNeuronsError
    from tl_langneurons.model.gguf_models import check_gguf

    os.environ["TL_LANGNEURONS_CACHE"] = str(cache)
    shutil.rmtree(cache, ignore_errors=True)
    before, t = _hwm_mib(), time.perf_counter()
    try:
        check_gguf(model)
    except LangNeuronsError:
        pass
    return time.perf_counter() - t, _hwm_mib() - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to run side by side (e.g. main at "
                                                                "an older commit, as a git worktree)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a run is killed")
    args = ap.parse_args()
    if args.baseline is not None and not (args.baseline / "tl_langneurons").is_dir():
        ap.error(f"--baseline {args.baseline}: not a checkout of tl-langneurons (no tl_langneurons/ in it)")
    here = HERE.parent
    trees = [("baseline", args.baseline)] if args.baseline else []
    trees.append(("this checkout", here))
    with tempfile.TemporaryDirectory(prefix="tlln-gguf-bench-") as d:
        folder = Path(d)
        cases = build(folder)
        rows, notes = [], []
        for case, model in cases:
            row = [case]
            for label, tree in trees:
                code, took, rss, line = run(tree, model, folder / "cache", args.timeout)
                row += [code, f"{took:.2f}", f"{rss:.0f}"]
                if label == "this checkout":
                    s_in, grew = check_in_process(model, folder / "cache")
                    row += [f"{s_in:.3f}", f"{grew:.0f}"]
                if line:
                    notes.append(f"- {case} ({label}): `{line.split('error: ', 1)[-1].replace(str(folder), '…')}`")
            rows.append(row)
            print(" | ".join(row), *notes[-len(trees):], sep="\n", flush=True)
    header = ["case"]
    for label, tree in trees:
        header += [f"{label}: exit", "s", "peak RSS MiB"]
    header += ["checks alone s", "their peak RSS growth MiB"]
    base = ""
    if args.baseline:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=args.baseline).stdout.strip()
        base = f"Baseline: commit {commit or '?'} ({args.baseline}). "
    record("Hostile GGUF files: time and memory of `info` (issue 39)", table(header, rows),
           base + f"Timeout {args.timeout:.0f} s. Exit 2 is one line; the control converts (exit 0). The s and RSS "
           "of a run include starting Python and importing torch and transformers (about 5 s and 580 MiB here); "
           "'checks alone' times check_gguf (files, chunks, header walk, structure) in this process, this "
           "checkout's code. What the baseline and this checkout said (first line of stderr):\n" + "\n".join(notes))

if __name__ == "__main__":
    main()
