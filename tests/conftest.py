"""Shared test set-up: no test may reach beyond 127.0.0.1."""

from __future__ import annotations

import inspect
import socket

import pytest

# A test whose body starts a child process (the CLI through run_cli, `serve`, a second
# scheduler) is `slow`: `pytest -m "not slow"` runs the fast, in-process layer.
_CHILD_PROCESS = ("run_cli(", "start_child(", "create_subprocess", "subprocess.")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "function", None)
        if fn is None:
            continue
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            continue
        if item.module.__name__ == "test_serve" or any(s in source for s in _CHILD_PROCESS):
            item.add_marker(pytest.mark.slow)


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
