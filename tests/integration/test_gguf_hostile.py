"""Hostile and broken GGUF files (issue 39): none becomes a model. Each is built here with the ``gguf``
package or by hand (no binaries committed); each gets one line and exit status 2 before anything is
converted or cached, in bounded time and memory; the cache's own failures name TL_LANGNEURONS_CACHE;
a killed conversion's temporaries are removed by the next run; converted copies follow the umask."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.model import gguf_models
from tl_langneurons.model.gguf_header import MAX_NESTING

from test_gguf import cache, info, no_conversion, one_line, split, tiny_gguf, write_gguf  # noqa: F401 - fixtures


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def raw_gguf(path: Path, kv: bytes, n_kv: int, n_tensors: int = 0, tail: bytes = b"") -> Path:
    """A GGUF v3 file written byte by byte: ``n_kv`` metadata entries ``kv`` (already encoded), the
    architecture ``llama`` first; ``tail`` after them (a tensor table, data)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv + 1)
    data = head + _s("general.architecture") + struct.pack("<I", 8) + _s("llama") + kv + tail
    path.write_bytes(data + bytes(-len(data) % 32))  # the data section starts aligned
    return path


def converted(cache: Path) -> list[str]:
    d = cache / "models"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# ---- bounded cost --------------------------------------------------------------------------------------------
def test_a_claimed_huge_array_is_refused_at_once(tmp_path, cache, capsys, monkeypatch):
    """A float64 array of 2^32 items (32 GiB) in a 100-byte file: refused from the claim, nothing read."""
    no_conversion(monkeypatch)
    kv = _s("x.huge") + struct.pack("<IIQ", 9, 12, 1 << 32)
    bad = raw_gguf(tmp_path / "huge.gguf", kv, 1)
    t = time.perf_counter()
    one_line(capsys, info(str(bad)), "claims 34359738368 bytes", "an array of 4294967296 items")
    assert time.perf_counter() - t < 5
    # a string claiming a terabyte, and more tensors than the file could hold
    one_line(capsys, info(str(raw_gguf(tmp_path / "s.gguf", _s("x.s")[:0] + struct.pack("<Q", 1 << 40), 1))),
             "a metadata key of 1099511627776 bytes")
    one_line(capsys, info(str(raw_gguf(tmp_path / "t.gguf", b"", 0, n_tensors=1 << 40))), "cannot fit")


def test_an_array_the_file_holds_is_skipped_not_read(tmp_path, cache, capsys, monkeypatch):
    """A 16 MiB array of numbers that is really in the file is passed over in blocks (the header parses);
    the file then fails on its own terms (no tokenizer), not on memory."""
    import resource

    no_conversion(monkeypatch)
    n = 1 << 21
    kv = _s("x.big") + struct.pack("<IIQ", 9, 12, n) + bytes(8 * n)
    bad = raw_gguf(tmp_path / "big.gguf", kv, 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hdr = gguf_models.read_header(gguf_models.gguf_source(str(bad)))
    assert hdr.metadata["x.big"] == ("array", n)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 12 * 1024  # KiB: under 12 MiB more
    one_line(capsys, info(str(bad)), "holds no tokenizer")


def test_deeply_nested_arrays_are_refused_without_recursion(tmp_path, cache, capsys, monkeypatch):
    no_conversion(monkeypatch)
    depth = 3000
    kv = _s("x.deep") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 4, 0)
    one_line(capsys, info(str(raw_gguf(tmp_path / "deep.gguf", kv, 1))), f"nested more than {MAX_NESTING} deep")
    # nesting within the bound parses, and counts the outer array's items
    kv = _s("x.ok") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 4, 1) + bytes(4) \
        + struct.pack("<IQ", 4, 0)
    hdr = gguf_models.read_header(gguf_models.gguf_source(str(raw_gguf(tmp_path / "ok.gguf", kv, 1))))
    assert hdr.metadata["x.ok"] == ("array", 2)


def test_a_large_block_count_is_refused_before_transformers(tiny_dirs, tmp_path, cache, capsys, monkeypatch):
    """block_count 20000 over 2 blocks of tensors took transformers minutes; now a header check, at once."""
    no_conversion(monkeypatch)
    bad = write_gguf(tiny_dirs["llama"], tmp_path / "bc.gguf", block_count=20000)
    t = time.perf_counter()
    one_line(capsys, info(str(bad)), "llama.block_count is 20000", "no tensor of block 3", "random weights")
    assert time.perf_counter() - t < 10


# ---- broken files never become random weights -------------------------------------------------------------------
def test_more_blocks_than_tensors(tiny_dirs, tmp_path, cache, capsys, monkeypatch):
    no_conversion(monkeypatch)
    one_line(capsys, info(str(write_gguf(tiny_dirs["llama"], tmp_path / "bc.gguf", block_count=20))),
             "block_count is 20", "no tensor of block 3", "17 of 20 blocks empty")
    one_line(capsys, info(str(write_gguf(tiny_dirs["llama"], tmp_path / "b1.gguf", block_count=1))),
             "block_count is 1", "holds block 1")
    assert converted(cache) == []


def test_a_missing_tensor(tiny_dirs, tmp_path, cache, capsys, monkeypatch):
    no_conversion(monkeypatch)
    bad = write_gguf(tiny_dirs["llama"], tmp_path / "drop.gguf", drop=("blk.1.ffn_down.weight",))
    one_line(capsys, info(str(bad)), "tensor blk.1.ffn_down.weight is missing", "random weight")
    assert converted(cache) == []


def test_the_conversion_refuses_random_or_unused_weights(tiny_dirs, tmp_path, cache, monkeypatch):
    """Behind the header check, transformers' own loading report: with the header check off, a dropped
    tensor (left random) and a tensor of the wrong shape are each refused, and nothing is cached."""
    monkeypatch.setattr(gguf_models, "check_structure", lambda header, label: None)
    bad = write_gguf(tiny_dirs["llama"], tmp_path / "drop.gguf", drop=("blk.1.ffn_down.weight",))
    with pytest.raises(LangNeuronsError, match=r"weight model\.layers\.1\.mlp\.down_proj\.weight was not in the "
                                               r"file and would be random"):
        gguf_models.gguf_model_dir(str(bad))
    shapes = {"blk.0.ffn_up.weight": np.zeros((3, 5), np.float32)}
    bad = write_gguf(tiny_dirs["llama"], tmp_path / "shape.gguf", shapes=shapes)
    with pytest.raises(LangNeuronsError, match="transformers cannot convert"):
        gguf_models.gguf_model_dir(str(bad))
    assert [n for n in converted(cache) if not n.endswith(".json")] == []


def test_a_mis_shaped_tensor(tiny_dirs, tmp_path, cache, capsys, monkeypatch):
    no_conversion(monkeypatch)
    shapes = {"blk.0.ffn_down.weight": np.zeros((8, 5), np.float32)}
    one_line(capsys, info(str(write_gguf(tiny_dirs["llama"], tmp_path / "shape.gguf", shapes=shapes))),
             "tensor blk.0.ffn_down.weight has shape [5, 8]", "embedding_length is 32")


def test_tensors_of_another_architecture(tiny_dirs, tmp_path, cache, capsys, monkeypatch):
    """Llama tensors under general.architecture mamba: every weight would have been random."""
    no_conversion(monkeypatch)
    one_line(capsys, info(str(write_gguf(tiny_dirs["llama"], tmp_path / "mamba.gguf", architecture="mamba"))),
             "is not a tensor of architecture 'mamba'")
    extra = {"blk.0.not_a_tensor.weight": np.zeros(4, np.float32)}
    one_line(capsys, info(str(write_gguf(tiny_dirs["llama"], tmp_path / "extra.gguf", extra=extra))),
             "blk.0.not_a_tensor.weight is not a tensor of architecture 'llama'")
    assert converted(cache) == []


def test_a_tensor_twice(tmp_path, cache, capsys, monkeypatch):
    no_conversion(monkeypatch)
    row = _s("output_norm.weight") + struct.pack("<I", 1) + struct.pack("<Q", 4) + struct.pack("<IQ", 0, 0)
    kv = _s("llama.block_count") + struct.pack("<II", 4, 0)
    bad = raw_gguf(tmp_path / "twice.gguf", kv, 1, n_tensors=2, tail=row + row + bytes(64))
    with pytest.raises(LangNeuronsError, match="holds output_norm.weight 2 times"):
        gguf_models.check_structure(gguf_models.read_header(gguf_models.gguf_source(str(bad))), "twice.gguf")


def test_a_chunk_number_twice(tiny_gguf, tmp_path, cache, capsys, monkeypatch):
    """part01 part02 part2 part03: accepted before, the data after chunk 2 shifted."""
    no_conversion(monkeypatch)
    parts = split(tiny_gguf, tmp_path / "chunks", 3)
    (tmp_path / "chunks" / "part2.bin").write_bytes(parts[1].read_bytes())
    one_line(capsys, info(str(tmp_path / "chunks")), "chunk 2 appears 2 times", "part02.bin", "part2.bin")


# ---- the cache ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the file case below still runs")
def test_a_read_only_cache(tiny_gguf, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    monkeypatch.setenv("TL_LANGNEURONS_CACHE", str(ro / "cache"))
    one_line(capsys, info(str(tiny_gguf)), "TL_LANGNEURONS_CACHE")


def test_a_cache_without_write_permission(tiny_gguf, tmp_path, capsys, monkeypatch):
    """As the read-only case, for a root user (who may write anywhere): the folder reads as not writable."""
    monkeypatch.setenv("TL_LANGNEURONS_CACHE", str(tmp_path / "cache"))
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p).parent.name == "cache" or
                        Path(p).name == "cache" else real(p, mode, **k))
    one_line(capsys, info(str(tiny_gguf)), "is not writable", "TL_LANGNEURONS_CACHE")


def test_a_cache_that_is_a_file(tiny_gguf, tmp_path, capsys, monkeypatch):
    f = tmp_path / "cache"
    f.write_text("not a folder")
    monkeypatch.setenv("TL_LANGNEURONS_CACHE", str(f))
    one_line(capsys, info(str(tiny_gguf)), "TL_LANGNEURONS_CACHE", str(f))
    monkeypatch.setenv("TL_LANGNEURONS_CACHE", str(f / "sub"))
    one_line(capsys, info(str(tiny_gguf)), "TL_LANGNEURONS_CACHE")
    one_line(capsys, info("gemma-3-270m"), "TL_LANGNEURONS_CACHE")  # the builtin too


def test_a_killed_conversions_temporaries_are_removed_by_the_next_run(tiny_gguf, tmp_path, cache, monkeypatch):
    """The concatenated chunks and a half-written copy of a process that is gone are deleted; a running
    process's are kept, as are old-style names until they are an hour old."""
    import subprocess
    import sys

    host = socket.gethostname()
    models = cache / "models"
    models.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [models / f".concat-{host}-{dead.pid}-abc123.gguf", models / f".convert-{host}-{dead.pid}-xyz"]
        stale[0].write_bytes(b"x" * 1000)
        stale[1].mkdir()
        (stale[1] / "model.safetensors").write_bytes(b"half")
        running = models / f".concat-{host}-{alive.pid}-def456.gguf"
        running.write_bytes(b"y")
        old, new = models / ".concat-a1b2c3d4.gguf", models / ".concat-e5f6g7h8.gguf"
        old.write_bytes(b"old")
        new.write_bytes(b"new")
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        split(tiny_gguf, tmp_path / "chunks", 3)
        gguf_models.gguf_model_dir(str(tmp_path / "chunks"))
        assert not any(p.exists() for p in stale) and not old.exists()
        assert running.exists() and new.exists()
        assert not list(models.glob(f".concat-{host}-{os.getpid()}-*"))  # this run's own, removed after use
    finally:
        alive.kill()
        alive.wait()


def test_converted_copies_follow_the_umask(tiny_gguf, cache):
    old = os.umask(0o022)
    try:
        target, _ = gguf_models.gguf_model_dir(str(tiny_gguf))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o755
    files = [p for p in target.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == 0o644 for p in files), \
        [(p.name, oct(p.stat().st_mode)) for p in files]
