"""Result files and folders get the modes the umask gives ordinary files (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from tl_langneurons.provenance import atomic_write_bytes, follow_umask, write_md_json
from tl_langneurons.results import MARKER, staged_folder


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                      (0o002, 0o664, 0o775)], ids=["022", "077", "002"])
def test_results_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        out = tmp_path / "result"
        with staged_folder(out, "compare", {"dirs": []}) as stage:  # the way every result folder is written
            write_md_json(stage, "placement", "# x\n", {"rows": []})
        atomic_write_bytes(tmp_path / "loose.bin", b"x")
        made = Path(tempfile.mkdtemp(dir=tmp_path))
        fd, name = tempfile.mkstemp(dir=made)
        os.close(fd)
        follow_umask(made)
        follow_umask(Path(name))
    finally:
        os.umask(old)
    assert _mode(out) == dir_mode and _mode(made) == dir_mode
    files = [out / "placement.md", out / "placement.json", out / MARKER, tmp_path / "loose.bin",
             Path(name)]
    assert {f.name: _mode(f) for f in files} == {f.name: file_mode for f in files}
