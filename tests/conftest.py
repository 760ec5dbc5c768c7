"""Shared test set-up: no test may reach beyond 127.0.0.1; child-process tests are `slow`."""

from __future__ import annotations

import ast
import inspect
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import FunctionType, ModuleType

import pytest

# Every xdist worker imports every test module, and pytest rewrites each module's asserts on
# import: ~6 CPU seconds a worker. Its cache of rewritten modules (in __pycache__, git-ignored)
# is skipped when bytecode writing is off (PYTHONDONTWRITEBYTECODE, set on some machines),
# and then every worker of every run pays again. The tests' own cache is written regardless.
sys.dont_write_bytecode = False

# A test that starts a child process (the CLI through run_cli, `serve`, a second scheduler,
# `python -c`, git) is `slow`: `pytest -m "not slow"` runs the fast, in-process layer. The
# marker is found by reading the test's source and, transitively, the source of the module's
# own helpers and fixtures it calls (run_parallel → run_cli → create_subprocess_exec); the
# `_no_child_process_in_the_fast_layer` guard below fails any test the reading missed.
_CHILD_PROCESS = ("run_cli(", "start_child(", "create_subprocess", "subprocess.")


# Top-level definitions' source per module, parsed once: inspect.getsource re-reads and, for a
# class, re-parses the whole defining module on every call, which made collecting the suite
# cost about 10 CPU seconds per xdist worker.
_DEFINITIONS: dict[str, dict[str, str]] = {}


def _definitions(module_name: str) -> dict[str, str]:
    if module_name not in _DEFINITIONS:
        found: dict[str, str] = {}
        module = sys.modules.get(module_name)
        try:
            text = inspect.getsource(module)  # type: ignore[arg-type]
            tree = ast.parse(text)
        except (OSError, TypeError, SyntaxError):
            tree = None
        if tree is not None:
            lines = text.splitlines(keepends=True)
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    found[node.name] = "".join(lines[first - 1 : node.end_lineno])
        _DEFINITIONS[module_name] = found
    return _DEFINITIONS[module_name]


def _source(obj: object) -> str:
    name = getattr(obj, "__qualname__", "")
    module_name = getattr(obj, "__module__", None)
    if isinstance(name, str) and isinstance(module_name, str) and name.isidentifier():
        text = _definitions(module_name).get(name)
        if text is not None:
            return text
    try:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""


_TESTS = Path(__file__).resolve().parent


def _ours(obj: object) -> bool:
    """Whether `obj` is defined under tests/: only the tests' own code starts child processes
    (the product never does), so imported library and product code need not be read (that
    reading cost ~0.7 CPU seconds per xdist worker)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    return bool(path) and Path(path).resolve().is_relative_to(_TESTS)


def _spawning_names(module: ModuleType, cache: dict[str, set[str]]) -> set[str]:
    """Names of the module's functions that start a child process, directly or through
    another of its functions (a fixed point over the module's globals)."""
    if module.__name__ in cache:
        return cache[module.__name__]
    sources: dict[str, str] = {}
    for name, value in vars(module).items():
        fn = value
        if hasattr(value, "_get_wrapped_function"):  # a fixture: read its own function
            fn = value._get_wrapped_function()
        if (isinstance(fn, FunctionType) or inspect.isclass(fn)) and _ours(fn):
            text = _source(fn)
            if text:
                sources[name] = text
    spawning = {n for n, s in sources.items() if any(p in s for p in _CHILD_PROCESS)}
    grew = True
    while grew:
        grew = False
        for name, text in sources.items():
            if name not in spawning and any(f"{s}(" in text for s in spawning):
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    cache: dict[str, set[str]] = {}
    for item in items:
        fn = getattr(item, "function", None)
        if fn is None:
            continue
        source = _source(fn)
        spawning = _spawning_names(item.module, cache)
        calls = any(p in source for p in _CHILD_PROCESS) or any(f"{s}(" in source for s in spawning)
        uses = any(name in spawning for name in getattr(item, "fixturenames", ()))
        if item.module.__name__ == "test_serve" or calls or uses:
            item.add_marker(pytest.mark.slow)


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
