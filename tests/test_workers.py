"""The forked xdist workers (tests/fakes/workers.py): a client hands its stdin, stdout,
stderr, directory and environment to a child of the server and exits with the child's code;
without a server it runs the code in a new interpreter, so nothing depends on the server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "fakes" / "workers.py"
CHILD = (
    "import os, sys; line = sys.stdin.readline().strip();"
    " print(line, os.getpid(), os.getcwd(), os.environ.get('WORKER_TEST'));"
    " print('to stderr', file=sys.stderr); sys.exit(int(line))"
)


def client(socket: Path, stdin: str, cwd: Path) -> tuple[int, list[str], str]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "client", str(socket), "-u", "-c", CHILD],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "WORKER_TEST": f"env of {stdin.strip()}"},
        timeout=60,
    )
    return done.returncode, done.stdout.split(), done.stderr


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    socket = tmp_path / "workers.sock"
    (tmp_path / "workers.sock.starting").touch()
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "server", str(socket)],
        stdin=subprocess.PIPE,
        cwd=SCRIPT.parent.parent.parent,
    )
    try:
        yield socket, proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(30) == 0
        assert not socket.exists()  # it cleaned up after itself


def test_a_client_becomes_a_forked_child_with_its_stdio_directory_and_environment(
    server: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    socket, proc = server
    results = [client(socket, f"{code}\n", tmp_path) for code in (0, 3)]
    for (status, out, err), code in zip(results, (0, 3), strict=True):
        assert status == code
        line, pid, cwd, *env = out
        assert line == str(code) and cwd == str(tmp_path) and env == ["env", "of", str(code)]
        assert err.strip() == "to stderr"
        assert pid != str(proc.pid)
    assert results[0][1][1] != results[1][1][1]  # a process each


def test_without_a_server_the_client_runs_a_new_interpreter(tmp_path: Path) -> None:
    # No server is starting (no WORKERS.sock.starting): the client does not wait for one.
    status, out, err = client(tmp_path / "nobody.sock", "5\n", tmp_path)
    assert status == 5 and out[0] == "5" and out[2] == str(tmp_path)
    assert err.strip() == "to stderr"
