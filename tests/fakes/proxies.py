"""Two small proxies on 127.0.0.1 that record which hosts reached them and relay to the fakes.

`HttpProxy` speaks HTTP proxying (CONNECT tunnels, and absolute-form requests for plain http),
`Socks5Proxy` speaks SOCKS5 (RFC 1928; optional user/password, RFC 1929). Each keeps `hosts`,
the "host:port" targets in the order they were asked for, as the client named them (a name
sent through SOCKS stays a name: the proxy, not the client, resolved it).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    await asyncio.gather(_pipe(client[0], upstream[1]), _pipe(upstream[0], client[1]))
    upstream[1].close()


@dataclass
class _Proxy:
    hosts: list[str] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    scheme = "http"

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{self.scheme}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> _Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@dataclass
class HttpProxy(_Proxy):
    """CONNECT host:port (any port), or `GET http://host:port/path` relayed as origin-form."""

    scheme = "http"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        first, *lines = [line for line in head.split("\r\n") if line]
        method, target, version = first.split(" ")
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            self.hosts.append(target)
            upstream = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _relay((reader, writer), upstream)
            return
        url = urlsplit(target)
        port = url.port or 80
        self.hosts.append(f"{url.hostname}:{port}")
        upstream = await asyncio.open_connection(url.hostname, port)
        upgrade = any(line.lower().startswith("upgrade:") for line in lines)
        kept = [
            line
            for line in lines
            if not line.lower().startswith(("proxy-", "connection:", "keep-alive:"))
        ]
        # One request per upstream connection (unless it upgrades to a WebSocket), so a client
        # reusing its proxy connection for another host cannot be relayed to the wrong one.
        kept.append("Connection: Upgrade" if upgrade else "Connection: close")
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        request = "\r\n".join([f"{method} {path} {version}", *kept, "", ""])
        upstream[1].write(request.encode("latin-1"))
        await _relay((reader, writer), upstream)


@dataclass
class Socks5Proxy(_Proxy):
    """SOCKS5 CONNECT; with `credentials`, only that user/password is let in."""

    credentials: tuple[str, str] | None = None
    refused: int = 0  # logins turned away
    scheme = "socks5"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        if version != 5:
            return
        if self.credentials is None:
            writer.write(b"\x05\x00")
        elif 2 in methods:
            writer.write(b"\x05\x02")
            _, size = await reader.readexactly(2)
            user = (await reader.readexactly(size)).decode()
            size = (await reader.readexactly(1))[0]
            password = (await reader.readexactly(size)).decode()
            if (user, password) != self.credentials:
                self.refused += 1
                writer.write(b"\x01\x01")
                return
            writer.write(b"\x01\x00")
        else:
            writer.write(b"\x05\xff")
            return
        _, command, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = socket.inet_ntoa(await reader.readexactly(4))
        elif kind == 3:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        else:
            host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        port = int.from_bytes(await reader.readexactly(2), "big")
        if command != 1:  # CONNECT only
            writer.write(b"\x05\x07\x00\x01" + bytes(6))
            return
        self.hosts.append(f"{host}:{port}")
        try:
            upstream = await asyncio.open_connection(host, port)
        except OSError:
            writer.write(b"\x05\x05\x00\x01" + bytes(6))  # connection refused
            return
        writer.write(b"\x05\x00\x00\x01" + bytes(6))
        await writer.drain()
        await _relay((reader, writer), upstream)
