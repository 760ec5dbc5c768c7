"""The HTTP server `serve` always runs on HOST:PORT, in the same event loop as everything else.

- `GET /healthz`: the scheduler, the database (a real write) and each platform connection, as
  JSON; 200 when all are well, 503 otherwise, naming the part that failed.
- `POST /slack/events` (Slack HTTP mode): the signature is checked first, over the raw body
  (missing, stale or wrong, or a timestamp that is not a number: 401); a signed body that is
  not a Slack payload is a 400; the rest goes to Bolt, which answers within Slack's 3 s.
- `POST /telegram` (webhook mode): the `X-Telegram-Bot-Api-Secret-Token` header is checked in
  constant time before the body is read (missing or wrong: 403, nothing processed); the update
  is queued and 200 returned at once, so Telegram does not redeliver it.

Hostile or broken clients cannot hold the server: a request's head must arrive within
`header_timeout` and its body within `body_timeout` (then the connection is closed), and at
most `max_connections` are open at once (also kept under the process's descriptor limit, so
accept() never runs out of them). At the cap, the oldest connection that has not yet sent a
whole request head is closed to make room, so a flood of slow clients cannot lock out
/healthz or Slack. Every refusal is logged as one line; repeats are folded by bot.logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

Health = Callable[[], Awaitable[dict[str, Any]]]

# asyncio accepts up to BACKLOG connections per wake-up, and a connection the guard closes
# frees its descriptor only on a later turn of the loop, so the cap leaves a few bursts' worth
# free, plus FD_OTHERS beyond what the process already holds (new clients to Slack, Telegram,
# the LLM and the paper sources).
BACKLOG = 32
LISTEN_QUEUE = 1024
ACCEPT_BURSTS = 3
FD_OTHERS = 32
SLACK_MAX_AGE = 300  # seconds; Slack's own rule for X-Slack-Request-Timestamp


class _Refused(asyncio.Protocol):
    """A connection accepted only to be closed at once: every slot holds a request in flight."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class ConnectionGuard:
    """The protocol factory behind the listening socket: caps open connections and gives each
    one `header_timeout` seconds to deliver a request head (again after every response)."""

    def __init__(self, *, cap: int, header_timeout: float) -> None:
        self.server: web.Server | None = None  # set once the runner has made it
        self.cap = cap
        self.header_timeout = header_timeout
        self.busy: set[RequestHandler] = set()  # connections with a request being handled
        # When each open connection last finished a request (RequestHandler has __slots__
        # without __weakref__; entries go when their connection's deadline finds it closed).
        self._done_at: dict[RequestHandler, float] = {}
        self.evicted = 0
        self.refused = 0
        self.expired = 0

    def factory(self) -> asyncio.Protocol:
        assert self.server is not None
        connections = self.server.connections
        if len(connections) >= self.cap:
            # Oldest first: aiohttp appends connections as they are made.
            victim = next((c for c in connections if c not in self.busy), None)
            if victim is None:
                self.refused += 1
                log.warning("http: %d connections all busy; a new one was refused", self.cap)
                return _Refused()
            self.evicted += 1
            log.warning(
                "http: %d connections open (the cap); the oldest idle one was closed", self.cap
            )
            victim.force_close()
        handler = self.server()
        self.arm(handler)
        return handler

    def arm(self, handler: RequestHandler) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(self.header_timeout, self._expire, handler, time.monotonic())

    def _expire(self, handler: RequestHandler, armed_at: float) -> None:
        if handler.transport is None:
            self._done_at.pop(handler, None)
            return
        if handler in self.busy:
            return
        if self._done_at.get(handler, 0.0) > armed_at:
            return  # a request came and went since: its end re-armed the deadline
        self.expired += 1
        log.warning(
            "http: a client sent no complete request in %.0f s; connection closed",
            self.header_timeout,
        )
        handler.force_close()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        proto = request.protocol
        self.busy.add(proto)
        try:
            return await handler(request)
        finally:
            self.busy.discard(proto)
            self._done_at[proto] = time.monotonic()
            self.arm(proto)


def connection_cap(wanted: int) -> int:
    """`wanted`, lowered so that open connections never take the descriptors asyncio's accept
    burst and the rest of the process need (accept() then never fails for want of them)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    try:
        held = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: assume a busy process
        held = 64
    return max(8, min(wanted, soft - held - BACKLOG * ACCEPT_BURSTS - FD_OTHERS))


async def read_body(request: web.Request, within: float) -> bytes | None:
    """The whole body, or None when the client did not send it within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            return await request.read()
    except TimeoutError:
        return None


def slack_signature_problem(secret: str, headers: Any, body: bytes, now: float) -> str | None:
    """Why this request is not signed by Slack (None: it is). Checked before anything else:
    HMAC-SHA256 of `v0:{timestamp}:{body}` with the signing secret, in constant time, and a
    timestamp within five minutes."""
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    signature = headers.get("X-Slack-Signature", "")
    if not timestamp or not signature:
        return "no signature"
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return "bad timestamp"
    if abs(now - int(timestamp)) > SLACK_MAX_AGE:
        return "stale timestamp"
    # Over the raw bytes: slack_sdk's SignatureVerifier decodes the body as UTF-8 first and
    # raises on anything else, which would turn an unsigned binary body into a 500.
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return "bad signature"
    return None


def slack_shape_problem(content_type: str, body: bytes) -> str | None:
    """Why a signed body is not something Slack sends (None: it looks like one): an event
    (JSON with a `type`), a slash command, an interaction (`payload` holding a JSON object) or
    an `ssl_check`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    if content_type == "application/json":
        try:
            data = json.loads(text)
        except ValueError:
            return "not JSON"
        return None if isinstance(data, dict) and isinstance(data.get("type"), str) else "no type"
    if content_type != "application/x-www-form-urlencoded":
        return "unexpected content type"
    try:
        form = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        return "not a form"
    if "command" in form or "ssl_check" in form:
        return None
    if "payload" in form:
        try:
            payload = json.loads(form["payload"][0])
        except ValueError:
            return "payload not JSON"
        return None if isinstance(payload, dict) else "payload not an object"
    return "not a Slack payload"


class HttpServer:
    def __init__(
        self,
        port: int,
        health: Health,
        *,
        host: str = "0.0.0.0",
        header_timeout: float = 10.0,
        body_timeout: float = 10.0,
        max_connections: int = 256,
    ) -> None:
        self.port = port
        self.host = host
        self.health = health
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.guard = ConnectionGuard(
            cap=connection_cap(max_connections), header_timeout=header_timeout
        )
        self.app = web.Application(
            client_max_size=2 * 1024 * 1024,
            middlewares=[self.guard.middleware],  # type: ignore[list-item]
        )
        self.app.router.add_get("/healthz", self._healthz)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self.bound_port: int | None = None

    def mount_slack(self, bolt_app: Any, signing_secret: str) -> None:
        from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

        async def slack_events(request: web.Request) -> web.Response:
            body = await read_body(request, self.body_timeout)
            if body is None:
                log.warning("slack /slack/events: body not sent in time (408)")
                return _closing(web.json_response({"error": "timeout"}, status=408))
            problem = slack_signature_problem(signing_secret, request.headers, body, time.time())
            if problem is not None:
                log.warning("slack /slack/events: refused, %s (401)", problem)
                return web.json_response({"error": "invalid request"}, status=401)
            problem = slack_shape_problem(request.content_type, body)
            if problem is not None:
                log.warning("slack /slack/events: signed but malformed, %s (400)", problem)
                return web.json_response({"error": "malformed request"}, status=400)
            bolt_request = await to_bolt_request(request)  # reads the cached body
            return await to_aiohttp_response(await bolt_app.async_dispatch(bolt_request))

        self.app.router.add_post("/slack/events", slack_events)

    def mount_telegram(
        self, secret: str, accept: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        expected = secret.encode()

        async def telegram_webhook(request: web.Request) -> web.Response:
            given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "").encode()
            if not given or not hmac.compare_digest(given, expected):
                log.warning("telegram /telegram: refused, missing or wrong secret (403)")
                return web.json_response({"ok": False, "error": "forbidden"}, status=403)
            body = await read_body(request, self.body_timeout)
            if body is None:
                log.warning("telegram /telegram: body not sent in time (408)")
                return _closing(web.json_response({"ok": False, "error": "timeout"}, status=408))
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                return web.json_response({"ok": False, "error": "not JSON"}, status=400)
            if not isinstance(payload, dict) or "update_id" not in payload:
                return web.json_response({"ok": False, "error": "not an update"}, status=400)
            await accept(payload)
            return web.json_response({"ok": True})

        self.app.router.add_post("/telegram", telegram_webhook)

    async def _healthz(self, request: web.Request) -> web.Response:
        report = await self.health()
        failed = [k for k, v in report.items() if isinstance(v, dict) and not v.get("ok", True)]
        if not failed:
            return web.json_response({"ok": True, **report})
        return web.json_response({"ok": False, "failed": failed, **report}, status=503)

    async def start(self) -> int:
        # keepalive_timeout (aiohttp's own option) closes idle keep-alive connections; the
        # guard's deadline covers a request head that never completes.
        self._runner = web.AppRunner(
            self.app, access_log=None, keepalive_timeout=self.header_timeout
        )
        await self._runner.setup()
        self.guard.server = self._runner.server
        loop = asyncio.get_running_loop()
        family, *_rest, address = (
            await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        )[0]
        sock = socket.create_server(address[:2], family=family, backlog=LISTEN_QUEUE)
        self._listener = await loop.create_server(self.guard.factory, sock=sock, backlog=BACKLOG)
        # asyncio re-listened with BACKLOG (also its accept burst); a deep kernel queue lets a
        # health check wait its turn behind a flood instead of having its SYN dropped.
        sock.listen(LISTEN_QUEUE)
        sockets = [sock]
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        return self.bound_port

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            await asyncio.wait([asyncio.ensure_future(self._listener.wait_closed())], timeout=5)
            self._listener = None


def _closing(response: web.Response) -> web.Response:
    response.force_close()
    return response
