"""`digestbot serve`: the scheduler, Slack, Telegram and the HTTP server in one asyncio loop.

Start-up checks every configured token (`auth.test`, `apps.connections.open`, `getMe`); only
platforms with credentials start. Every start-up failure is one line and exit code 2: a token
the platform refuses stops at once; an outage (5xx, an answer that is not JSON, a host that
cannot be reached) is retried with the [retry] backoff for `serve.startup_retry_seconds`, then
stops naming the outage. SIGTERM and SIGINT are honoured at every moment: during start-up they
abandon it and exit 0; once serving, they stop intake first (Socket Mode, polling, the HTTP
server), let in-flight work finish (a digest, an analysis, an answer), then close every client.

Health is judged here (`/healthz`): the database must take a write, Socket Mode must not have
been down longer than `serve.unhealthy_after_seconds`, and Telegram polling must not be stuck
in 409 conflicts. A process that meets another poller of the same bot token within that time
of starting to poll says so in one line and stops polling (the one already running keeps it).
Nothing here decides what to post: that is the assistant's and the scheduler's job.
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
from bot.scheduler import DailyJob, RoundupJob, start_scheduler
from bot.service import Destination
from bot.settings import AppSettings as Settings
from digest_core.pipeline import Pipeline
from digest_core.retry import RetryPolicy, TryAgain
from digest_core.store import StoreError

log = logging.getLogger(__name__)

DRAIN_SECONDS = 60.0
CLOSE_SECONDS = 10.0  # each shutdown step; a client that hangs on close cannot hold the exit
CONFLICTS_STUCK = 3  # 409s from getUpdates in a row: the poller is stuck
POLL_BACKOFF_MAX = 30.0  # PTB's longest wait between failed getUpdates
POLL_SLACK = 2.0
DB_PROBE_SECONDS = 2.0

# Slack error codes that mean Slack itself is in trouble, not the credentials.
SLACK_OUTAGE_CODES = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
)


class StartupError(RuntimeError):
    """A platform cannot be started; the message is one line naming the variable."""


def startup_policy(settings: Settings) -> RetryPolicy:
    """The [retry] backoff, bounded by `serve.startup_retry_seconds` rather than a count."""
    deadline = settings.serve.startup_retry_seconds
    return RetryPolicy.from_settings(settings.retry, attempts=10_000, deadline=deadline)


async def _with_policy(
    attempt: Callable[[int], Awaitable[Any]], policy: RetryPolicy, outage: str, what: str
) -> Any:
    """Run `attempt` under the start-up policy: TryAgain is an outage, retried until the
    deadline, then one line naming it; StartupError (refused credentials) passes at once."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        return await policy.run(attempt, what=what)
    except TryAgain as exc:
        waited = loop.time() - started
        raise StartupError(
            f"{outage} is unavailable ({exc.reason}); gave up after {waited:.0f} s "
            "(serve.startup_retry_seconds)"
        ) from None


async def _startup_call(
    call: Callable[[], Awaitable[Any]], policy: RetryPolicy, *, refused: str, outage: str
) -> Any:
    """One Slack Web API call at start-up: `refused` (a credential Slack turned down) stops at
    once with the error code; an outage is retried, then named."""

    async def attempt(n: int) -> Any:
        try:
            return await call()
        except Exception as exc:
            kind, detail = slack_failure(exc)
            if kind == "refused":
                raise StartupError(f"{refused} ({detail})") from None
            raise TryAgain(detail) from None

    return await _with_policy(attempt, policy, outage, "Slack start-up check")


def slack_failure(exc: BaseException) -> tuple[str, str]:
    """("refused", code) when Slack turned the credentials or request down, ("outage", what)
    when Slack could not answer properly: a 5xx, a 429, an error code that names Slack's own
    trouble, an answer that is not JSON (an HTML error page, an empty body), or no answer."""
    from slack_sdk.errors import SlackApiError

    if isinstance(exc, SlackApiError):
        response = exc.response
        # A JSON answer is a SlackResponse (status_code, data); a body that would not parse
        # leaves the raw aiohttp response (status) in its place.
        status = getattr(response, "status_code", None) or getattr(response, "status", 0) or 0
        data = getattr(response, "data", None)
        code = data.get("error") if isinstance(data, dict) else None
        if not isinstance(code, str) or not code:
            return "outage", f"an answer that is not Slack's JSON, http {status}"
        if status == 429 or status >= 500 or code in SLACK_OUTAGE_CODES:
            return "outage", f"{code}, http {status}"
        return "refused", code if code.replace("_", "").isalnum() else "error"
    if isinstance(exc, TimeoutError):
        return "outage", "no answer in time"
    # Connection refused, DNS, TLS, resets: only the class name (texts carry addresses).
    return "outage", f"cannot be reached, {type(exc).__name__}"


def _bare_client(client: Any) -> Any:
    """A copy of the channel's Slack client without its retry handlers, sharing its session,
    address and proxy: start-up checks run under the start-up policy alone (no stacked
    retries)."""
    from slack_sdk.web.async_client import AsyncWebClient

    return AsyncWebClient(
        token=client.token,
        base_url=client.base_url,
        timeout=client.timeout,
        ssl=client.ssl,
        proxy=client.proxy,
        session=client.session,
        trust_env_in_session=client.trust_env_in_session,
        headers=dict(client.headers or {}),
        retry_handlers=[],
    )


def _short_tg(exc: BaseException) -> str:
    # PTB messages are Telegram's descriptions (no token); keep them short and on one line.
    text = " ".join(str(getattr(exc, "message", "") or exc).split())[:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
        self.signing = signing
        self.app = build_slack_app(self.channel, assistant, work.spawn, signing_secret=signing)
        self.resumers = slack_resumers(self.channel, assistant)  # for bot.journal.recover
        self.handler: Any = None
        self.policy = startup_policy(settings)
        self.down_since: float | None = None  # loop time Socket Mode was last seen down
        self._watch: asyncio.Task[None] | None = None

    async def check(self) -> None:
        """auth.test: a refused token stops at once; an outage is retried within the policy."""
        client = _bare_client(self.channel.client)
        await _startup_call(
            lambda: client.auth_test(),
            self.policy,
            refused="SLACK_BOT_TOKEN: Slack rejected the token",
            outage="SLACK_API_URL: Slack",
        )

    async def start(self, http: HttpServer) -> None:
        if not self.socket_mode:
            http.mount_slack(self.app, self.signing or "")
            return
        from bot.channels.slack import RoutedSocketModeHandler

        app_token = self.settings.slack.app_token.get()  # type: ignore[union-attr]
        client = _bare_client(self.channel.client)
        # Asked here, once, because the SDK's own connect loop retries a refused app token
        # forever; the URL it returns is the one the handler then connects to.
        answer = await _startup_call(
            lambda: client.apps_connections_open(app_token=app_token),
            self.policy,
            refused="SLACK_APP_TOKEN: Slack rejected the app-level token",
            outage="SLACK_API_URL: Slack",
        )
        self.handler = RoutedSocketModeHandler(self.app, app_token=app_token)
        self.handler.client.wss_uri = answer.get("url")
        within = max(10.0, self.policy.deadline or 0.0)
        try:
            await asyncio.wait_for(self.handler.connect_async(), within)
        except TimeoutError:
            raise StartupError(
                f"SLACK_APP_TOKEN: Socket Mode did not connect within {within:.0f} s"
            ) from None
        self._watch = asyncio.get_running_loop().create_task(self._watch_socket())

    async def _connected(self) -> bool:
        client = getattr(self.handler, "client", None)
        return bool(client is not None and await client.is_connected())

    async def _watch_socket(self) -> None:
        """Notes when Socket Mode went down (the SDK reconnects by itself), so health can tell
        a blip from an outage; says so once when it has been down too long, and when back."""
        loop = asyncio.get_running_loop()
        limit = self.settings.serve.unhealthy_after_seconds
        told = False
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            if await self._connected():
                if told:
                    log.warning("slack: Socket Mode connected again")
                self.down_since, told = None, False
                continue
            if self.down_since is None:
                self.down_since = loop.time()
            if not told and loop.time() - self.down_since >= limit:
                told = True
                log.error("slack: Socket Mode disconnected for %.0f s", limit)

    async def health(self) -> dict[str, Any]:
        if not self.socket_mode:
            return {"ok": True, "mode": "http"}
        if await self._connected():
            return {"ok": True, "mode": "socket"}
        down = 0.0
        if self.down_since is not None:
            down = asyncio.get_running_loop().time() - self.down_since
        limit = self.settings.serve.unhealthy_after_seconds
        report: dict[str, Any] = {"ok": down < limit, "mode": "socket"}
        report["error"] = f"Socket Mode disconnected for {down:.0f} s"
        return report

    async def stop_intake(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
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
        self.channel = TelegramChannel(self.app.bot, settings.digest.language, retry=settings.retry)
        install_handlers(self.app, self.channel, assistant, work.spawn, cfg.chats)
        self.resumers = telegram_resumers(self.channel, assistant)  # for bot.journal.recover
        self.started = False
        self.policy = startup_policy(settings)
        self.polling_since: float | None = None
        self.conflicts: list[float] = []  # loop times of 409s from getUpdates
        self.yielded = False  # stopped polling: another process polls this token

    async def check(self) -> None:
        """getMe (through `initialize`): a refused token stops at once; an outage (network,
        5xx, an answer that is not JSON) is retried within the policy."""
        from telegram.error import Forbidden, InvalidToken, NetworkError, TelegramError

        async def attempt(n: int) -> None:
            try:
                await self.app.initialize()  # calls getMe: the username /analyze@BotName needs
            except (InvalidToken, Forbidden):
                raise StartupError("TELEGRAM_BOT_TOKEN: Telegram rejected the token") from None
            except NetworkError as exc:  # includes TimedOut and PTB's "Bad Gateway" for 502
                raise TryAgain(_short_tg(exc)) from None
            except TelegramError as exc:
                raise TryAgain(_short_tg(exc)) from None

        await _with_policy(attempt, self.policy, "TELEGRAM_API_URL: Telegram", "Telegram getMe")

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
            self.polling_since = asyncio.get_running_loop().time()
            await self.app.updater.start_polling(  # type: ignore[union-attr]
                allowed_updates=Update.ALL_TYPES, error_callback=self._polling_error
            )

    def _polling_error(self, exc: Exception) -> None:
        """PTB's polling loop reports each failed getUpdates here (it retries by itself).

        A 409 Conflict is another getUpdates for this token (another process, or a webhook set
        elsewhere). Met within `unhealthy_after_seconds` of starting to poll, this process is
        the newcomer: it says so once and stops polling, leaving the token to the other one.
        Later, the conflicts are counted for /healthz. Must not raise (PTB's rule)."""
        from telegram.error import Conflict

        loop = asyncio.get_running_loop()
        now = loop.time()
        if not isinstance(exc, Conflict):
            log.warning("telegram: getUpdates failed (%s); retrying", _short_tg(exc))
            return
        # A streak of conflicts: PTB retries after 1, 1.5, 2.25 … (at most 30) s, so a gap
        # longer than that means a poll in between went through and a new streak begins.
        if self.conflicts and now - self.conflicts[-1] > POLL_BACKOFF_MAX + POLL_SLACK:
            self.conflicts = []
        self.conflicts = [*self.conflicts[-(CONFLICTS_STUCK - 1) :], now]
        young = self.polling_since is not None and now - self.polling_since < self._window()
        if young and not self.yielded:
            self.yielded = True
            print(
                "digestbot: TELEGRAM_BOT_TOKEN: another process is polling this bot "
                "(409 Conflict on getUpdates); this one stops polling and takes no Telegram "
                "updates",
                file=sys.stderr,
                flush=True,
            )
            loop.create_task(self._stop_polling())
        elif not young:
            log.warning("telegram: getUpdates refused: 409 Conflict (another poller or a webhook)")

    async def _stop_polling(self) -> None:
        if self.app.updater is not None and self.app.updater.running:
            await _quietly(self.app.updater.stop())

    def _stuck(self, now: float) -> bool:
        """CONFLICTS_STUCK conflicts in a row, and the next retry (PTB waits 1.5 times the
        last gap, at most 30 s) not yet past without another one."""
        if len(self.conflicts) < CONFLICTS_STUCK:
            return False
        gap = self.conflicts[-1] - self.conflicts[-2]
        return now - self.conflicts[-1] < min(POLL_BACKOFF_MAX, 1.5 * gap) + POLL_SLACK

    def _window(self) -> float:
        return self.settings.serve.unhealthy_after_seconds

    async def health(self) -> dict[str, Any]:
        if self.webhook:
            return {"ok": self.started, "mode": "webhook"}
        if self.yielded:
            return {
                "ok": False,
                "mode": "polling",
                "error": "stopped polling: another process polls this bot token (409 Conflict)",
            }
        if self._stuck(asyncio.get_running_loop().time()):
            return {
                "ok": False,
                "mode": "polling",
                "error": f"getUpdates refused with 409 Conflict {CONFLICTS_STUCK} times in a "
                "row (another poller of this bot token, or a webhook set elsewhere)",
            }
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

    async def start_up() -> int:
        nonlocal http, scheduler
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
        # Each platform's channel also serves chats subscribed with `/digest subscribe`.
        channels = {r.channel.platform: r.channel for r in runtimes}
        job = DailyJob(pipeline, destinations, settings, owner, channels=channels)

        async def health() -> dict[str, Any]:
            return await _health(pipeline, scheduler, runtimes)

        http = HttpServer(
            settings.port,
            health,
            host=settings.host,
            header_timeout=settings.serve.header_timeout_seconds,
            body_timeout=settings.serve.body_timeout_seconds,
            max_connections=settings.serve.max_connections,
        )
        for runtime in runtimes:
            await runtime.start(http)
        try:
            port = await http.start()
        except OSError as exc:
            where = "" if settings.host == "0.0.0.0" else settings.host
            raise StartupError(
                f"PORT: cannot listen on {where}:{settings.port} ({exc.strerror or exc})"
            ) from None

        async def fire() -> None:
            await work.spawn(job.fire())

        roundup = RoundupJob(job)

        async def fire_roundup() -> None:
            await work.spawn(roundup.fire())

        scheduler = start_scheduler(
            job, settings, target=fire, roundup=roundup, roundup_target=fire_roundup
        )
        work.spawn(job.catch_up())
        work.spawn(roundup.catch_up())
        return port

    try:
        try:
            port = await _unless_stopped(start_up(), stop)
        except (StartupError, StoreError):
            raise
        except Exception as exc:  # anything else at start-up is still one line, exit 2
            log.debug("start-up failed", exc_info=True)
            raise StartupError(f"start-up failed ({type(exc).__name__})") from None
        if port is None:
            print("digestbot: stopped during start-up", file=sys.stderr, flush=True)
            return 0
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
            await _quietly(http.stop())
        for runtime in runtimes:
            await _quietly(runtime.stop_intake())
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        await work.drain(DRAIN_SECONDS)
        for runtime in runtimes:
            await _quietly(runtime.close())
        await pipeline.aclose()
    return 0


async def _unless_stopped(start: Coroutine[Any, Any, int], stop: asyncio.Event) -> int | None:
    """`start`'s result, or None when a stop signal comes first: start-up is then cancelled
    wherever it waits (a platform that does not answer, a backoff between retries)."""
    task = asyncio.ensure_future(start)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        stopped.cancel()
        return task.result()
    task.cancel()
    await asyncio.wait({task}, timeout=CLOSE_SECONDS)
    if task.done() and not task.cancelled():
        task.exception()  # consumed: start-up was abandoned, its failure no longer matters
    return None


async def _quietly(step: Awaitable[Any], within: float = CLOSE_SECONDS) -> None:
    """A shutdown step: its failure is logged, and it cannot hold the exit longer than
    `within` seconds."""
    try:
        await asyncio.wait_for(step, within)
    except TimeoutError:
        log.warning("a shutdown step took longer than %.0f s; skipped", within)
    except Exception:
        log.warning("error while shutting down", exc_info=True)


async def _health(pipeline: Pipeline, scheduler: Any, runtimes: list[Any]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    job = scheduler.get_job("daily_digest") if scheduler is not None else None
    report["scheduler"] = {
        "ok": bool(scheduler is not None and scheduler.running),
        "next_run": job.next_run_time.isoformat() if job and job.next_run_time else None,
    }
    report["database"] = await _database_health(pipeline)
    for runtime in runtimes:
        name = "slack" if isinstance(runtime, SlackRuntime) else "telegram"
        try:
            report[name] = await runtime.health()
        except Exception as exc:
            report[name] = {"ok": False, "error": type(exc).__name__}
    return report


_db_checked: dict[int, tuple[float, dict[str, Any]]] = {}  # id(pipeline) -> (when, report)


async def _database_health(pipeline: Pipeline) -> dict[str, Any]:
    """Whether the database takes a write now (a read alone says nothing of a full disk or a
    lock held by another writer). The answer is reused for a second, so a burst of health
    checks costs one write."""
    loop = asyncio.get_running_loop()
    cached = _db_checked.get(id(pipeline))
    if cached is not None and loop.time() - cached[0] < 1.0:
        return cached[1]
    try:
        await asyncio.wait_for(pipeline.store.check_writable(), DB_PROBE_SECONDS)
        report: dict[str, Any] = {"ok": True}
    except TimeoutError:
        report = {"ok": False, "error": f"no answer within {DB_PROBE_SECONDS:.0f} s (busy)"}
    except Exception as exc:
        # sqlite3's messages are short and hold no secret ("database is locked", "disk I/O
        # error", "attempt to write a readonly database").
        report = {"ok": False, "error": f"cannot write: {str(exc)[:120] or type(exc).__name__}"}
    _db_checked[id(pipeline)] = (loop.time(), report)
    return report


def _banner(settings: Settings, runtimes: list[Any], port: int) -> str:
    host = "" if settings.host == "0.0.0.0" else settings.host
    parts = [f"http {host}:{port}"]
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
