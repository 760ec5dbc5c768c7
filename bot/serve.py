"""`digestbot serve`: the scheduler, Slack, Telegram and the HTTP server in one asyncio loop.

Start-up checks every configured token (`auth.test`, `getMe`) and stops with one line on a bad
one; only platforms with credentials start. SIGTERM and SIGINT stop intake first (Socket Mode,
polling, the HTTP server), let in-flight work finish (a digest, an analysis, an answer), then
close every client. Nothing here decides what to post: that is the assistant's and the
scheduler's job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any

from bot.assistant import Assistant
from bot.chatstore import open_pipeline
from bot.http import HttpServer
from bot.scheduler import DailyJob, start_scheduler
from bot.service import Destination
from bot.settings import AppSettings as Settings
from digest_core.pipeline import Pipeline

log = logging.getLogger(__name__)

DRAIN_SECONDS = 60.0


class StartupError(RuntimeError):
    """A platform cannot be started; the message is one line naming the variable."""


class Work:
    """Slow work started by handlers and the scheduler, tracked so shutdown can drain it."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def drain(self, within: float) -> None:
        """Wait for every task, including those started while waiting (a handler still running
        may spawn one), for at most `within` seconds in all; then cancel what is left."""
        if not self.tasks:
            return
        log.info("waiting for %d task(s) in flight", len(self.tasks))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.tasks and loop.time() < deadline:
            await asyncio.wait(set(self.tasks), timeout=deadline - loop.time())
        pending = set(self.tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)


class SlackRuntime:
    platform = "slack"

    def __init__(self, settings: Settings, assistant: Assistant, work: Work) -> None:
        from bot.channels.slack import slack_channel
        from bot.slack_app import build_slack_app, slack_resumers

        cfg = settings.slack
        assert cfg.bot_token is not None
        self.settings = settings
        self.socket_mode = cfg.app_token is not None
        if not self.socket_mode and cfg.signing_secret is None:
            raise StartupError(
                "SLACK_SIGNING_SECRET: required in HTTP mode (or set SLACK_APP_TOKEN for Socket Mode)"
            )
        self.channel = slack_channel(settings)
        signing = None if self.socket_mode else cfg.signing_secret.get()  # type: ignore[union-attr]
        self.app = build_slack_app(self.channel, assistant, work.spawn, signing_secret=signing)
        self.resumers = slack_resumers(self.channel, assistant)  # for bot.journal.recover
        self.handler: Any = None

    async def check(self) -> None:
        from slack_sdk.errors import SlackApiError

        try:
            await self.channel.client.auth_test()
        except SlackApiError as exc:
            code = exc.response.get("error", "error") if exc.response is not None else "error"
            raise StartupError(f"SLACK_BOT_TOKEN: Slack rejected the token ({code})") from None
        except Exception as exc:
            raise StartupError(
                f"SLACK_API_URL: Slack cannot be reached ({type(exc).__name__})"
            ) from None

    async def start(self, http: HttpServer) -> None:
        if self.socket_mode:
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            app_token = self.settings.slack.app_token.get()  # type: ignore[union-attr]
            self.handler = AsyncSocketModeHandler(self.app, app_token=app_token)
            try:
                await self.handler.connect_async()
            except Exception as exc:
                raise StartupError(
                    f"SLACK_APP_TOKEN: Socket Mode did not connect ({type(exc).__name__})"
                ) from None
        else:
            http.mount_slack(self.app)

    async def health(self) -> dict[str, Any]:
        if not self.socket_mode:
            return {"ok": True, "mode": "http"}
        client = getattr(self.handler, "client", None)
        connected = bool(client is not None and await client.is_connected())
        return {"ok": connected, "mode": "socket"}

    async def stop_intake(self) -> None:
        if self.handler is not None:
            await self.handler.close_async()

    async def close(self) -> None:
        await self.channel.aclose()

    def destinations(self) -> list[Destination]:
        return [Destination(self.channel, chat) for chat in self.settings.slack.channels]


class TelegramRuntime:
    platform = "telegram"

    def __init__(self, settings: Settings, assistant: Assistant, work: Work) -> None:
        from bot.channels.telegram import TelegramChannel, make_telegram_application
        from bot.telegram_app import install_handlers, telegram_resumers

        cfg = settings.telegram
        assert cfg.bot_token is not None
        self.settings = settings
        self.webhook = bool(cfg.webhook_url and cfg.webhook_secret)
        self.app = make_telegram_application(
            cfg.bot_token.get(), cfg.api_url, updater=not self.webhook
        )
        self.channel = TelegramChannel(self.app.bot, settings.digest.language)
        install_handlers(self.app, self.channel, assistant, work.spawn, cfg.chats)
        self.resumers = telegram_resumers(self.channel, assistant)  # for bot.journal.recover
        self.started = False

    async def check(self) -> None:
        from telegram.error import InvalidToken, NetworkError, TelegramError

        try:
            await self.app.initialize()  # calls getMe: the username /analyze@BotName needs
        except InvalidToken:
            raise StartupError("TELEGRAM_BOT_TOKEN: Telegram rejected the token") from None
        except NetworkError as exc:
            raise StartupError(
                f"TELEGRAM_API_URL: Telegram cannot be reached ({type(exc).__name__})"
            ) from None
        except TelegramError as exc:
            raise StartupError(f"TELEGRAM_BOT_TOKEN: getMe failed ({type(exc).__name__})") from None

    async def start(self, http: HttpServer) -> None:
        from telegram import Update
        from telegram.error import TelegramError

        await self.app.start()
        self.started = True
        cfg = self.settings.telegram
        if self.webhook:
            secret = cfg.webhook_secret.get()  # type: ignore[union-attr]

            async def accept(payload: dict[str, Any]) -> None:
                await self.app.update_queue.put(Update.de_json(payload, self.app.bot))

            http.mount_telegram(secret, accept)
            try:
                await self.app.bot.set_webhook(
                    url=cfg.webhook_url,
                    secret_token=secret,
                    allowed_updates=Update.ALL_TYPES,  # type: ignore[arg-type]
                )
            except TelegramError as exc:
                raise StartupError(
                    f"TELEGRAM_WEBHOOK_URL: Telegram refused the webhook ({exc.message})"
                ) from None
        else:
            await self.app.bot.delete_webhook()
            await self.app.updater.start_polling(allowed_updates=Update.ALL_TYPES)  # type: ignore[union-attr]

    async def health(self) -> dict[str, Any]:
        if self.webhook:
            return {"ok": self.started, "mode": "webhook"}
        running = bool(self.app.updater and self.app.updater.running)
        return {"ok": running, "mode": "polling"}

    async def stop_intake(self) -> None:
        """Stop polling, then let PTB handle the updates it already holds (fetched, or accepted
        by the webhook with a 200): their handlers spawn work that the drain then waits for."""
        if self.app.updater is not None and self.app.updater.running:
            await self.app.updater.stop()
        if self.app.running:
            await self.app.stop()

    async def close(self) -> None:
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()

    def destinations(self) -> list[Destination]:
        return [Destination(self.channel, chat) for chat in self.settings.telegram.chats]


async def serve(
    settings: Settings, *, ready: Callable[[int], Awaitable[None]] | None = None
) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit code; a start-up failure prints one line."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pipeline = await open_pipeline(settings)
    work = Work()
    runtimes: list[Any] = []
    http: HttpServer | None = None
    scheduler = None
    try:
        assistant = Assistant(pipeline, settings)
        await assistant.chat.prune()  # the daily job prunes too; this covers DIGEST_TIME=off
        if settings.slack.enabled:
            runtimes.append(SlackRuntime(settings, assistant, work))
        if settings.telegram.enabled:
            runtimes.append(TelegramRuntime(settings, assistant, work))
        for runtime in runtimes:
            await runtime.check()
        # Requests a crash cut off are taken over before intake opens, so a redelivery of
        # one of them finds it in progress here and is not run a second time.
        await assistant.journal.recover(
            {r.platform: r.resumers for r in runtimes},
            work.spawn,
            timedelta(minutes=settings.interactive.resume_within_minutes),
        )

        owner = f"{socket.gethostname()}:{os.getpid()}"
        destinations = [d for r in runtimes for d in r.destinations()]
        job = DailyJob(pipeline, destinations, settings, owner)

        async def health() -> dict[str, Any]:
            return await _health(pipeline, scheduler, runtimes)

        http = HttpServer(settings.port, health)
        for runtime in runtimes:
            await runtime.start(http)
        try:
            port = await http.start()
        except OSError as exc:
            raise StartupError(
                f"PORT: cannot listen on :{settings.port} ({exc.strerror or exc})"
            ) from None

        async def fire() -> None:
            await work.spawn(job.fire())

        scheduler = start_scheduler(job, settings, target=fire)
        work.spawn(job.catch_up())
        print(_banner(settings, runtimes, port), file=sys.stderr, flush=True)
        if ready is not None:
            await ready(port)
        await stop.wait()
        print("digestbot: stopping: finishing work in flight…", file=sys.stderr, flush=True)
    except StartupError as exc:
        print(f"digestbot: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        # Intake first: the HTTP server (Slack HTTP mode, the Telegram webhook) before the
        # runtimes, so no webhook update is answered 200 after Telegram stopped reading its queue.
        if http is not None:
            await http.stop()
        for runtime in runtimes:
            await _quietly(runtime.stop_intake())
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        await work.drain(DRAIN_SECONDS)
        for runtime in runtimes:
            await _quietly(runtime.close())
        await pipeline.aclose()
    return 0


async def _quietly(step: Awaitable[Any]) -> None:
    try:
        await step
    except Exception:
        log.warning("error while shutting down", exc_info=True)


async def _health(pipeline: Pipeline, scheduler: Any, runtimes: list[Any]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    job = scheduler.get_job("daily_digest") if scheduler is not None else None
    report["scheduler"] = {
        "ok": bool(scheduler is not None and scheduler.running),
        "next_run": job.next_run_time.isoformat() if job and job.next_run_time else None,
    }
    try:
        await pipeline.store.ping()
        report["database"] = {"ok": True}
    except Exception as exc:
        report["database"] = {"ok": False, "error": type(exc).__name__}
    for runtime in runtimes:
        name = "slack" if isinstance(runtime, SlackRuntime) else "telegram"
        try:
            report[name] = await runtime.health()
        except Exception as exc:
            report[name] = {"ok": False, "error": type(exc).__name__}
    return report


def _banner(settings: Settings, runtimes: list[Any], port: int) -> str:
    parts = [f"http :{port}"]
    slack = next((r for r in runtimes if isinstance(r, SlackRuntime)), None)
    telegram = next((r for r in runtimes if isinstance(r, TelegramRuntime)), None)
    if slack is None:
        parts.append("slack off (SLACK_BOT_TOKEN not set)")
    else:
        parts.append("slack (" + ("socket mode" if slack.socket_mode else "http mode") + ")")
    if telegram is None:
        parts.append("telegram off (TELEGRAM_BOT_TOKEN not set)")
    else:
        parts.append("telegram (" + ("webhook" if telegram.webhook else "polling") + ")")
    when = settings.digest.time
    parts.append(
        f"daily digest at {when} {settings.digest.timezone}" if when else "daily digest off"
    )
    if not runtimes:
        parts.append("no chat platform configured")
    return "digestbot: serving: " + ", ".join(parts)
