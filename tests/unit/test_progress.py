"""Progress off a terminal is a few plain lines with rate and ETA, not carriage-return updates."""

import io

from tl_langneurons.progress import LogBar, progress_bar


def test_log_bar_prints_quarters_and_end():
    out = io.StringIO()
    bar = LogBar(1000, "generate", "tok", file=out)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "generate: started, 1000 tok"
    assert [ln.split(":")[1].split("%")[0].strip() for ln in lines[1:-1]] == ["25", "50", "75"]
    assert all("ETA" in ln for ln in lines[1:-1]) and lines[-1].startswith("generate: done in")


def test_progress_bar_off_a_terminal_is_a_log_bar(capsys):
    with progress_bar(10, "x", disable=False) as bar:  # pytest's stderr is not a terminal
        bar.update(10)
    assert isinstance(bar, LogBar)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "x: started, 10 it" and err[-1].startswith("x: done in") and len(err) == 2
    with progress_bar(10, "y", disable=True) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""


def test_log_bar_gives_a_slow_pace_in_seconds_each(monkeypatch):
    """A unit that takes minutes (a test row scored) reads as seconds per unit, not 0.0 per second."""
    import tl_langneurons.progress as progress

    clock = iter([0.0, 100.0, 200.0, 300.0, 400.0, 400.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    bar = LogBar(4, "score", "cell", file=out)
    for _ in range(4):
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[1] == "score: 25% (1/4 cell, 100 s/cell, ETA 300s)"
    assert lines[3] == "score: 75% (3/4 cell, 100 s/cell, ETA 100s)"
