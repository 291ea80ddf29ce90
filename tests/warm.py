"""The command line in a child process that starts warm: forked from a server that has already imported
the package and its heavy dependencies (torch, transformers, transformer-lens), so a run costs what the
command does, not the 3-5 s of imports a fresh interpreter pays. The fault-injection tests start about
thirty such runs and kill many of them with SIGKILL.

The child is still a process of its own: its own pid, environment, working folder, and stdout/stderr in
files; a SIGKILL it sends itself (``TL_LANGNEURONS_FAULT``) ends it alone and shows as return code -9,
as ``subprocess.run`` reports it. The server imports modules only (no model, no torch operation, no
thread pool), so every child starts from the state a fresh interpreter would reach by importing them;
it imports the package without the tests' type-checking hook, as ``python -m tl_langneurons.cli`` does.
Unlike a fresh interpreter, every child shares the server's hash seed and the settings its imports read from
the environment (the tests' own: HF_HUB_OFFLINE, HF_HOME); the fault tests therefore make their reference
runs in fresh processes, so a result that depended on the hash seed would differ from the warm reruns.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ["tl_langneurons.cli", "torch", "transformers", "transformer_lens", "numpy", "safetensors"]
_ctx = None


def _context():
    global _ctx
    if _ctx is None:
        _ctx = multiprocessing.get_context("forkserver")
        _ctx.set_forkserver_preload(PRELOAD)
    return _ctx


def _child(args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    # line-buffered, as a terminal-less interpreter's stderr: what was printed before a SIGKILL is kept
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)
    from tl_langneurons.cli import main

    try:
        code = main(args)
    finally:  # a multiprocessing child leaves by os._exit: run the exit handlers a fresh interpreter would
        atexit._run_exitfuncs()
    sys.exit(code)


def run_cli(args: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m tl_langneurons.cli ARGS`` with ``env`` (default: this process's) in ``cwd``, started warm;
    the result as ``subprocess.run(..., capture_output=True, text=True)`` gives it."""
    env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        p = _context().Process(target=_child, args=(list(args), env, str(cwd or os.getcwd()), out, err))
        p.start()
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
            raise subprocess.TimeoutExpired(["tl-langneurons", *args], timeout)
        read = lambda path: Path(path).read_text(encoding="utf-8", errors="replace") if os.path.exists(path) else ""  # noqa: E731
        return subprocess.CompletedProcess(["tl-langneurons", *args], p.exitcode, read(out), read(err))
