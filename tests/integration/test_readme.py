"""README.md says what runs: at most 150 lines, its REPL example runs as written (on the real Gemma-3-270M, in a
temporary folder), and every relative link in it names a file of the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def repl_example() -> str:
    """The Python block under '## In a REPL'."""
    section = README.split("## In a REPL", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_fits_on_two_screens():
    assert len(README.splitlines()) <= 150


def test_readme_links_name_files():
    links = [m for m in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README) if "://" not in m]
    assert links, "the README links its documentation pages"
    missing = [m for m in links if not (ROOT / m).exists()]
    assert missing == []


def test_readme_install_line_is_the_clone():
    """The package is not on the index: the README installs it from the clone (CI runs that line)."""
    assert "```bash\npip install .\n```" in README
    assert "pip install tl-langneurons" not in README


@pytest.mark.real
def test_readme_repl_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = repl_example()
    assert 8 <= len(code.splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "Language neurons of gemma-3-270m" in out
    assert out.count("clamp: ") == 3 and out.count("add:   ") == 3
    import tl_langneurons as tln

    saved = tln.LanguageNeurons.load(tmp_path / "runs" / "gemma")
    assert saved.k == 1000 and list(saved.languages) == list(tln.PAPER_LANGUAGES)
