"""A parent for the CLI tests' child processes that has already imported the CLI.

Each `digestbot ARGS` run of the tests is a process of its own: its own environment, argv,
stdin, stdout, stderr and exit code, and nothing shared with the test or with other runs. What
a fresh interpreter would add is the import of bot.cli and the libraries behind it (openai,
pydantic, sqlite-utils and numpy, httpx, aiohttp): about a CPU-second per run, and the CLI
tests start some sixty of them. So the tests' `run_cli` asks this process to fork one instead:
the child sets the run's environment, points fds 0–2 at the run's files, calls `bot.cli.main`
and exits with its code. The parent never runs an event loop or a thread, so forking it is
safe. Tests whose point is the interpreter's start-up use `run_cli(..., fresh=True)`.

Protocol (one JSON object per line on stdin): {"dir": D, "args": [...], "env": {...},
"cwd": C}. The child's pid goes to D/pid, its exit code to D/code once it has ended; its
stdin is D/stdin when that file exists, its output D/stdout and D/stderr. EOF on stdin ends
the parent (and, through the same pipe closing, tells nobody else anything).
"""

from __future__ import annotations

import json
import os
import select
import sys
from pathlib import Path
from typing import Any


def preload() -> None:
    """What a CLI run imports, and what it imports on its first LLM request or question."""
    import openai  # noqa: F401
    import slack_sdk.web.async_client  # noqa: F401
    import sqlite_utils  # noqa: F401
    import telegram.ext  # noqa: F401

    import bot.cli  # noqa: F401
    import bot.serve  # noqa: F401
    import digest_core.pipeline  # noqa: F401


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # whole, or not at all: the reader polls for it


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become the run, then exit with its code. Never returns."""
    from fakes.workers import become, exit_code, finish

    code = 1
    try:
        run = Path(request["dir"])
        become(request["cwd"], request["env"])
        stdin = run / "stdin"
        fd = os.open(stdin if stdin.exists() else os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        for name, target in (("stdout", 1), ("stderr", 2)):
            fd = os.open(run / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, target)
        sys.argv = ["digestbot", *request["args"]]
        import bot.cli

        code = exit_code(bot.cli.main(request["args"]))
    except SystemExit as exc:  # argparse, and sys.exit inside a command
        code = exit_code(exc.code)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        finish(code)


def serve() -> None:
    # Run as a script, this file's folder (tests/fakes, with its telegram.py and slack.py)
    # would be first on the path; `python -m bot.cli` has the working directory there.
    sys.path[0:1] = [os.getcwd(), str(Path(__file__).resolve().parent.parent)]
    import fakes.workers  # noqa: F401 - what each child ends with (become, finish)

    preload()
    print("ready", flush=True)
    running: dict[int, Path] = {}
    pending = b""
    fd = sys.stdin.fileno()
    open_ = True
    while open_ or running:
        while running:  # reap what has ended
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            run = running.pop(pid, None)
            if run is not None:
                _write(run / "code", str(os.waitstatus_to_exitcode(status)))
        if not open_:
            select.select([], [], [], 0.02)
            continue
        ready, _, _ = select.select([fd], [], [], 0.02)
        if not ready:
            continue
        data = os.read(fd, 65536)
        if not data:
            open_ = False
            continue
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _child(request)
            run = Path(request["dir"])
            running[pid] = run
            _write(run / "pid", str(pid))


if __name__ == "__main__":
    serve()
