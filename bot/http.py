"""The HTTP server `serve` always runs on PORT, in the same event loop as everything else.

- `GET /healthz`: the scheduler, the database and each platform connection, as JSON; 200 when
  all are well, 503 otherwise.
- `POST /slack/events` (Slack HTTP mode): handed to Bolt, which verifies the signature over the
  raw body first (a bad or stale signature gets 401) and answers within Slack's 3 s.
- `POST /telegram` (webhook mode): the `X-Telegram-Bot-Api-Secret-Token` header is checked in
  constant time before anything is read (missing or wrong: 403, nothing processed); the update
  is queued and 200 returned at once, so Telegram does not redeliver it.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

Health = Callable[[], Awaitable[dict[str, Any]]]


class HttpServer:
    def __init__(self, port: int, health: Health, *, host: str = "0.0.0.0") -> None:
        self.port = port
        self.host = host
        self.health = health
        self.app = web.Application(client_max_size=2 * 1024 * 1024)
        self.app.router.add_get("/healthz", self._healthz)
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    def mount_slack(self, bolt_app: Any) -> None:
        from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

        async def slack_events(request: web.Request) -> web.Response:
            bolt_request = await to_bolt_request(request)
            return await to_aiohttp_response(await bolt_app.async_dispatch(bolt_request))

        self.app.router.add_post("/slack/events", slack_events)

    def mount_telegram(
        self, secret: str, accept: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        expected = secret.encode()

        async def telegram_webhook(request: web.Request) -> web.Response:
            given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "").encode()
            if not given or not hmac.compare_digest(given, expected):
                return web.json_response({"ok": False, "error": "forbidden"}, status=403)
            try:
                payload = json.loads(await request.read())
            except (ValueError, UnicodeDecodeError):
                return web.json_response({"ok": False, "error": "not JSON"}, status=400)
            if not isinstance(payload, dict) or "update_id" not in payload:
                return web.json_response({"ok": False, "error": "not an update"}, status=400)
            await accept(payload)
            return web.json_response({"ok": True})

        self.app.router.add_post("/telegram", telegram_webhook)

    async def _healthz(self, request: web.Request) -> web.Response:
        report = await self.health()
        ok = all(v.get("ok", True) for v in report.values() if isinstance(v, dict))
        return web.json_response({"ok": ok, **report}, status=200 if ok else 503)

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        return self.bound_port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
