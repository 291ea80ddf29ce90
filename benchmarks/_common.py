"""Shared helpers of the benchmarks: machine description, a Markdown table, the tests' tiny model, the split of
texts into two halves, the sets' held-out AP, and appending the results (with machine, versions and date) to
benchmarks/RESULTS.md, or printing them with --no-record."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores{mem}, {dev}, torch threads {torch.get_num_threads()}"


def versions() -> str:
    from tl_langneurons.provenance import package_versions

    v = package_versions()
    return ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "transformer-lens", "transformers", "numpy", "scikit-learn"))


def table(header: list[str], rows: list[list]) -> str:
    from tl_langneurons.report.tables import markdown_table

    return markdown_table(header, rows).rstrip("\n")


def tiny_model(root: Path) -> str:
    """The tiny random Llama of the tests (tests/helpers.py), saved under ``root``: a run in seconds."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import make_tiny, train_tokenizer

    train_tokenizer(root / "tokenizer")
    return str(make_tiny("llama", root / "tokenizer", root))


def halves(labels, seed: int = 0):
    """0/1 per text: two disjoint halves, each with half of every language (for split-half stability)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    half = np.ones(len(labels), dtype=np.int64)
    for l in np.unique(labels):
        idx = np.flatnonzero(labels == l)
        half[rng.permutation(idx)[: len(idx) // 2]] = 0
    return half


def heldout_ap(neurons, values, labels, langs: list[str], which: str) -> float:
    """The ``which`` sets' AP for their language recomputed on held-out pooled ``values`` (texts never used for
    selection), mean over the languages whose set is not empty (nan where none is)."""
    import numpy as np

    from tl_langneurons.detect.ranking import average_precision

    vals = []
    for li, l in enumerate(langs):
        idx = neurons.sets[l][which].neurons
        if len(idx):
            vals.append(average_precision(values[:, idx], labels, len(langs))[li].mean().item())
    return float(np.mean(vals)) if vals else float("nan")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def record(title: str, body: str, notes: str = "") -> None:
    """Print the result and append it to RESULTS.md."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "?"
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n## {title}\n\n{when}, commit {commit}\n\nMachine: {machine()}\n\nVersions: {versions()}\n\n"
            f"{body}\n" + (f"\n{notes}\n" if notes else ""))
    print(text)
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is appended by a script under benchmarks/; "
                           "ratios are measured side by side in one run.\n", encoding="utf-8")
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(text)


def publish(title: str, body: str, notes: str, no_record: bool, heading: bool = False) -> None:
    """With --no-record print the result (under its title with ``heading``), else record it in RESULTS.md."""
    if no_record:
        print((f"## {title}\n\n" if heading else "") + f"{body}\n\n{notes}")
    else:
        record(title, body, notes)
