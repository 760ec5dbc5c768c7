"""Shared test set-up: no test may reach beyond 127.0.0.1; child-process tests are `slow`."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import CodeType, FunctionType, ModuleType

import pytest

# Every xdist worker imports every test module, and pytest rewrites each module's asserts on
# import: ~6 CPU seconds a worker. Its cache of rewritten modules (in __pycache__, git-ignored)
# is skipped when bytecode writing is off (PYTHONDONTWRITEBYTECODE, set on some machines),
# and then every worker of every run pays again. The tests' own cache is written regardless.
sys.dont_write_bytecode = False

# A test that starts a child process (the CLI through run_cli, `serve`, a second scheduler,
# `python -c`, git) is `slow`: `pytest -m "not slow"` runs the fast, in-process layer. The
# marker is found from the names the test's compiled code refers to and, transitively, those of
# the module's own helpers, classes and fixtures it calls (run_parallel → run_cli →
# create_subprocess_exec); the `_no_child_process_in_the_fast_layer` guard below fails any test
# the reading missed. Reading code objects, not source: parsing every module's source in every
# xdist worker cost ~0.9 CPU seconds a worker.
_CHILD_PROCESS = frozenset(
    {"run_cli", "start_child", "create_subprocess_exec", "create_subprocess_shell", "subprocess"}
)

_TESTS = Path(__file__).resolve().parent


def _code_names(code: CodeType) -> frozenset[str]:
    """Every global and attribute name `code` and the functions nested in it refer to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _code_names(const)
    return frozenset(names)


def _unwrap(obj: object) -> object:
    """A fixture's own function; anything else as it is."""
    wrapped = getattr(obj, "_get_wrapped_function", None)
    return wrapped() if wrapped is not None else obj


def _refers_to(obj: object) -> frozenset[str]:
    """Names a function, a fixture or a class (all its methods) refers to."""
    obj = _unwrap(obj)
    if isinstance(obj, FunctionType):
        return _code_names(obj.__code__)
    if isinstance(obj, type):
        names: set[str] = set()
        for member in vars(obj).values():
            member = getattr(member, "__func__", getattr(member, "fget", member))
            if isinstance(member, FunctionType):
                names |= _code_names(member.__code__)
        return frozenset(names)
    return frozenset()


def _ours(obj: object) -> bool:
    """Whether `obj` is defined under tests/: only the tests' own code starts child processes
    (the product never does), so imported library and product code need not be read."""
    obj = _unwrap(obj)
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    return bool(path) and Path(path).resolve().is_relative_to(_TESTS)


def _spawning_names(module: ModuleType, cache: dict[str, set[str]]) -> set[str]:
    """Names of the module's functions, classes and fixtures that start a child process,
    directly or through another of them (a fixed point over the module's globals)."""
    if module.__name__ in cache:
        return cache[module.__name__]
    refers: dict[str, frozenset[str]] = {}
    for name, value in vars(module).items():
        if (
            isinstance(value, (FunctionType, type)) or hasattr(value, "_get_wrapped_function")
        ) and _ours(value):
            refers[name] = _refers_to(value)
    spawning = {n for n, names in refers.items() if names & _CHILD_PROCESS}
    grew = True
    while grew:
        grew = False
        for name, names in refers.items():
            if name not in spawning and names & spawning:
                spawning.add(name)
                grew = True
    cache[module.__name__] = spawning
    return spawning


@pytest.hookimpl(optionalhook=True)  # only when pytest-xdist is loaded
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: two workers per CPU. Much of the suite's time is waiting, not computing:
    child processes starting, fakes holding answers, the platforms' whole-second pauses. On
    the 2-CPU machine, idle, 2026-11-29: the whole suite took 169 s with two workers and 131 s
    with four, for about the same CPU time (204 and 217 s); the fast layer 48.7 s and 39.6 s."""
    return 2 * len(os.sched_getaffinity(0))


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """`-n` without `--dist` hands tests out by work-stealing instead of xdist's fixed shares:
    the suite's long waits (whole-second Retry-Afters, deadlines) land unevenly, and an idle
    worker takes over a busy one's queue instead of waiting at the end. Runs before xdist's
    own hook, which would otherwise pick `load`."""
    option = config.option
    if getattr(option, "numprocesses", None) and getattr(option, "dist", None) == "no":
        option.dist = "worksteal"


_FORKED_WORKERS: list[subprocess.Popen[bytes]] = []
_RUN_FOLDER = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """With `-n`, workers are forked from one parent that has imported what they would
    (tests/fakes/workers.py) instead of each importing it anew. DIGESTBOT_FORK_WORKERS=0
    starts them as plain interpreters."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        # A folder for what the whole run shares and pytest's tmp_path does not hold (the
        # migrated template database of tests/fakes/world.py, the forked workers' socket),
        # removed at the end of the run: workers may end without running their exit handlers.
        shared = tempfile.mkdtemp(prefix="digestbot-tests-")
        config.stash[_RUN_FOLDER] = shared
        os.environ["DIGESTBOT_TESTS_FOLDER"] = shared
    option = config.option
    specs = getattr(option, "tx", None) or []
    if (
        os.environ.get("PYTEST_XDIST_WORKER")
        or os.environ.get("DIGESTBOT_FORK_WORKERS") == "0"
        or getattr(option, "dist", "no") == "no"
        or not specs
        or any(spec != "popen" for spec in specs)
        or sys.platform != "linux"
        or any(  # no tests will run: no workers to start
            getattr(option, name, False)
            for name in ("collectonly", "help", "version", "showfixtures", "markers")
        )
    ):
        return
    import shlex

    path = Path(config.stash[_RUN_FOLDER]) / "workers.sock"
    Path(f"{path}.starting").touch()
    script = _TESTS / "fakes" / "workers.py"
    server = subprocess.Popen(
        [sys.executable, str(script), "server", str(path)], stdin=subprocess.PIPE, cwd=_TESTS.parent
    )
    _FORKED_WORKERS.append(server)
    python = shlex.join([sys.executable, str(script), "client", str(path)])  # execnet splits it
    option.tx = [f"popen//python={python}" for _ in specs]


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    for server in _FORKED_WORKERS:
        assert server.stdin is not None
        server.stdin.close()  # the server ends (and ends any worker left)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    _FORKED_WORKERS.clear()
    shared = config.stash.get(_RUN_FOLDER, None)
    if shared is not None:
        shutil.rmtree(shared, ignore_errors=True)
        os.environ.pop("DIGESTBOT_TESTS_FOLDER", None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    cache: dict[str, set[str]] = {}
    for item in items:
        fn = getattr(item, "function", None)
        if fn is None:
            continue
        names = _refers_to(fn)
        spawning = _spawning_names(item.module, cache)
        calls = bool(names & _CHILD_PROCESS) or bool(names & spawning)
        uses = any(name in spawning for name in getattr(item, "fixturenames", ()))
        if item.module.__name__ == "test_serve" or calls or uses:
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what collection built (every module the tests import, ~140,000 objects) out of
    the garbage collector's reach: each full collection during the run, and pytest's five at
    the end of it, would otherwise walk all of it again (measured: ~1.1 CPU seconds a worker
    before, ~0.7 after)."""
    gc.freeze()


@pytest.fixture(autouse=True)
def _no_child_process_in_the_fast_layer(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test that is not marked `slow` may not start a child process (asyncio's subprocesses
    go through subprocess.Popen too): the fast layer stays in-process and honest."""
    if request.node.get_closest_marker("slow") is not None:
        return
    test = request.node.nodeid

    def refuse(self: subprocess.Popen, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            f"{test} starts a child process but is not marked slow: add what it calls to"
            " _CHILD_PROCESS in tests/conftest.py"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that tries to connect anywhere but the loopback address."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        if isinstance(address, tuple) and address:
            host = str(address[0])
            if not (host.startswith("127.") or host in ("::1", "localhost")):
                raise RuntimeError(f"test tried to reach {host}: tests stay on 127.0.0.1")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
