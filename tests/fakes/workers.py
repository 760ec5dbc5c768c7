"""xdist workers forked from a parent that has already imported the libraries and the product.

Every xdist worker is a new interpreter that imports pytest, its plugins, the product and the
libraries behind it (openai, telegram, slack_bolt, aiohttp, numpy for bm25s...) before it runs
its first test: about 3 CPU seconds a worker, a quarter of the fast layer's CPU on the 2-CPU
machine with its four workers. So `pytest -n` (see tests/conftest.py) starts each worker as

    python tests/fakes/workers.py client SOCKET -u -c "<execnet's bootstrap>"

and the client asks the `server` (started once by the controller; it imports everything a
worker would, then waits) to fork a child that becomes the worker: it takes the client's
stdin, stdout and stderr (the execnet channel), working directory and environment, runs the
bootstrap as `python -u -c` would, and its exit code becomes the client's.

A worker is still a process of its own. Test modules are not imported here: each worker
imports (and pytest rewrites) them itself, as before. Whatever goes wrong on the way (no server, a refused
connection) the client runs the bootstrap in a new interpreter, as xdist would have.

The server runs no thread of its own and no event loop. Its imports leave one: numpy's OpenBLAS
starts a thread pool, and registers fork handlers for it (numpy under multiprocessing's fork
relies on the same).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import NoReturn

MAX_HEADER = 1 << 20
CONNECT_WITHIN = 60.0  # the server is still importing when the first clients start
_SERVER_PID: list[int] = []


def preload() -> None:
    """What a worker imports: pytest and its plugins, then every module of the product and
    the test fakes, and what the product imports lazily (openai, bm25s...)."""
    import importlib
    import pkgutil

    import _pytest.pytester  # noqa: F401
    import execnet  # noqa: F401
    import pytest  # noqa: F401
    import pytest_asyncio  # noqa: F401
    import xdist.plugin  # noqa: F401
    import xdist.remote  # noqa: F401

    for name in ("digest_core", "bot", "fakes"):
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if info.name not in ("fakes.workers", "fakes.zygote"):
                importlib.import_module(info.name)
    for name in ("openai", "bm25s", "telegram.ext", "slack_bolt.async_app", "aiohttp.web"):
        importlib.import_module(name)


# -- what a forked child does to become a process of its own (here and in fakes/zygote.py) -----


def become(cwd: str, env: dict[str, str]) -> None:
    """Take on a process's working directory, environment and time zone."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    time.tzset()


def exit_code(code: object) -> int:
    """What the interpreter makes of `sys.exit(code)`: a text goes to stderr and means 1."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def finish(code: int) -> NoReturn:
    """End as an interpreter ends: the exit handlers (logging's among them) run and the
    streams are flushed; `os._exit`, so nothing of the forking parent runs on."""
    try:
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


# -- the client (xdist's "python") -------------------------------------------------------------


def client(path: str, argv: list[str]) -> None:
    """Hand this process's stdio, directory and environment to a forked worker; exit with its
    code. Falls back to running `argv` in a new interpreter."""
    conn = _connect(path)
    if conn is None:
        os.execv(sys.executable, [sys.executable, *argv])
    header = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    try:
        socket.send_fds(conn, [struct.pack("!I", len(header)) + header], [0, 1, 2])
        reply = conn.makefile("rb").readline()  # b"+PID\n" once forked
    except OSError:
        reply = b""
    if not reply.startswith(b"+") or not reply[1:].strip().isdigit():
        # Nothing read from the channel yet: a new interpreter can still take it.
        os.execv(sys.executable, [sys.executable, *argv])
    child = int(reply[1:])
    # The worker has the channel now: this process must neither read nor hold it. Ctrl-C
    # reaches the worker itself (the same process group); a TERM for this process is for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGTERM))
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    code = conn.recv(16)  # the exit code, once the worker has ended; nothing if it was lost
    os._exit(int(code) if code.strip().lstrip(b"-").isdigit() else 1)


def _connect(path: str) -> socket.socket | None:
    deadline = time.monotonic() + CONNECT_WITHIN
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
            return conn
        except OSError:
            conn.close()
            if time.monotonic() > deadline or not os.path.exists(path + ".starting"):
                return None
            time.sleep(0.02)


# -- the server ----------------------------------------------------------------------------------


def server(path: str) -> None:
    """Import, then fork a worker per connection until stdin (the controller) closes."""
    # Run as a script, this file's folder (with fakes' telegram.py and slack.py) would be first
    # on the path and hide the libraries: the working directory and tests/ are what pytest's
    # `pythonpath` setting puts there.
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[0:1] = [os.path.dirname(tests), tests]
    _SERVER_PID.append(os.getpid())
    # Ctrl-C reaches the whole process group: the workers handle it, and the server ends when
    # the controller closes its stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # the controller made PATH.starting: clients wait for the socket while it exists
        preload()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
    finally:
        os.unlink(path + ".starting")
    running: dict[int, socket.socket] = {}
    controller = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([listener, controller], [], [], 0.05)
        if controller in ready and not os.read(controller, 4096):
            break
        if listener in ready:
            conn, _ = listener.accept()
            pid = _fork(conn, listener, running)
            if pid:
                running[pid] = conn
            else:
                conn.close()
        _reap(running)
    listener.close()
    os.unlink(path)
    for pid in list(running):  # the controller is gone: so are its workers
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def _reap(running: dict[int, socket.socket]) -> None:
    while running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())
            except OSError:
                pass
            conn.close()


def _fork(conn: socket.socket, listener: socket.socket, running: dict[int, socket.socket]) -> int:
    """Read the client's request and fork its worker; 0 when the request was unreadable."""
    try:
        data, fds, _, _ = socket.recv_fds(conn, MAX_HEADER, 3)
        (size,) = struct.unpack("!I", data[:4])
        while len(data) - 4 < size:
            more = conn.recv(size - len(data) + 4)
            if not more:
                raise OSError("short request")
            data += more
        request = json.loads(data[4:])
    except (OSError, ValueError, struct.error):
        return 0
    if len(fds) != 3:
        return 0
    try:
        pid = os.fork()
    except OSError:
        pid = 0
    if pid == 0 and os.getpid() != _SERVER_PID[0]:  # the child
        listener.close()
        for other in running.values():
            other.close()
        _worker(request, fds, conn)
    for fd in fds:
        os.close(fd)
    if pid:
        try:
            conn.sendall(b"+%d\n" % pid)
        except OSError:
            pass  # the client is gone: the child's watch ends it
    return pid


def _worker(request: dict, fds: list[int], conn: socket.socket) -> None:
    """In the child: become `python -u -c BOOTSTRAP` with the client's stdio. Never returns."""
    import io
    import threading

    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd, target in zip(fds, (0, 1, 2), strict=True):
            os.dup2(fd, target)
            os.close(fd)
        become(request["cwd"], request["env"])
        # As `-u` makes them: text streams on the new fds, stdout and stderr unbuffered.
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace"
        )

        def watch() -> None:  # the client killed (xdist gave up on this worker): stop too
            try:
                conn.recv(1)
            finally:
                os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
        argv = request["argv"]
        source = argv[argv.index("-c") + 1]
        sys.argv = ["-c", *argv[argv.index("-c") + 2 :]]
        import types

        main = types.ModuleType("__main__")  # as `-c` runs it: a fresh __main__, no __file__
        sys.modules["__main__"] = main
        exec(compile(source, "<string>", "exec"), vars(main))  # noqa: S102
        code = 0
    except SystemExit as exc:
        code = exit_code(exc.code)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        finish(code)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2])
    else:
        client(sys.argv[2], sys.argv[3:])
