"""Progress for people and for logs: a tqdm bar on a terminal; elsewhere (CI, a log file) a few
plain lines (at 0%, every quarter and the end, with rate and ETA) instead of thousands of
carriage-return updates.

Example:
    >>> with progress_bar(total=4, desc="demo", disable=True) as bar:
    ...     bar.update(4)
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any


class LogBar:
    """The plain-line progress of a run that is not on a terminal."""

    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0, file: io.TextIOBase | None = None,
                 steps: int = 4):
        self.total, self.desc, self.unit, self.n = max(1, int(total)), desc, unit, int(initial)
        self.file, self.steps = file or sys.stderr, steps
        self.t0 = time.perf_counter()
        self._next = 1
        self._line(f"{desc}: started, {total} {unit}" + (f" ({initial} done before)" if initial else ""))
        self._start_n = self.n

    def _line(self, s: str) -> None:
        print(s, file=self.file, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        frac = self.n / self.total
        if frac >= self._next / self.steps and self.n < self.total:
            while frac >= self._next / self.steps:
                self._next += 1
            dt = time.perf_counter() - self.t0
            rate = (self.n - self._start_n) / dt if dt > 0 else float("nan")
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            pace = f"{rate:.1f} {self.unit}/s" if not 0 < rate < 1 else f"{1 / rate:.0f} s/{self.unit}"  # slow: s each
            self._line(f"{self.desc}: {100 * frac:.0f}% ({self.n}/{self.total} {self.unit}, {pace}, ETA {eta:.0f}s)")

    def close(self) -> None:
        if self.n >= self.total:
            self._line(f"{self.desc}: done in {time.perf_counter() - self.t0:.1f}s")
        self.n = -10**18  # close once

    def __enter__(self) -> "LogBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Off":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str = "it", disable: bool = False, initial: int = 0) -> Any:
    """A tqdm bar on a terminal, :class:`LogBar` lines elsewhere, nothing when ``disable``."""
    if disable:
        return _Off()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial)
    return LogBar(total, desc, unit, initial)
