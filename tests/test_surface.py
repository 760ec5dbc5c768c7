"""`serve` against what the outside really does: refused and broken start-up answers, hostile
HTTP clients, and the parts /healthz must report (issue 10, items 2 to 5).

The slow tests run `digestbot serve` as a child process (as tests/test_serve.py does) against
the local fakes on 127.0.0.1; the fast ones drive the log filter, the request checks and the
ephemeral fallback in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.slack import FakeSlack
from fakes.telegram import FakeTelegram
from fakes.world import World, fast_config
from test_serve import (
    APP_TOKEN,
    CHANNEL,
    GROUP,
    SIGNING_SECRET,
    SLACK_TOKEN,
    TG_TOKEN,
    Serve,
    client,
    free_port,
    signed,
    slack_env,
    slash_form,
    telegram_env,
    until,
)

from bot.channels.slack import SlackChannel, make_slack_client
from bot.http import slack_shape_problem, slack_signature_problem
from bot.logs import RedactingFilter, RepeatFilter
from bot.slack_app import _ephemeral

slow = pytest.mark.slow


# ------------------------------------------------------------------------------------ set-up


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with World(tmp_path) as w:
        yield w


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(token=SLACK_TOKEN, app_token=APP_TOKEN, channels={CHANNEL}) as fake:
        yield fake  # type: ignore[misc]


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram(TG_TOKEN)
    fake.add_chat(GROUP, title="CV papers")
    async with fake:
        yield fake  # type: ignore[misc]


@pytest.fixture
async def launch() -> AsyncIterator[Callable[..., Awaitable[Serve]]]:
    started: list[Serve] = []

    async def go(env: dict[str, str], preexec: Callable[[], None] | None = None) -> Serve:
        serve = Serve(env)
        serve.preexec = preexec
        started.append(serve)
        return await serve.start()

    yield go
    for serve in started:
        await serve.kill()


def env_for(world: World, *, serve: dict[str, str] | None = None, **more: str) -> dict[str, str]:
    """The world's environment on a free port, the daily job off, `[serve]` keys as given."""
    changes = {f"{k} =": f"{k} = {v}" for k, v in (serve or {}).items()}
    world.config.write_text(fast_config(**changes), encoding="utf-8")
    return world.env(PORT=str(free_port()), DIGEST_TIME="off", **more)


def digestbot_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("digestbot: ")]


async def healthz(serve: Serve) -> tuple[int, dict[str, Any]]:
    async with client() as http:
        answer = await http.get(serve.url("/healthz"))
        return answer.status_code, answer.json()


async def until_health(serve: Serve, want: Callable[[int, dict[str, Any]], bool], what: str):
    seen: list[tuple[int, dict[str, Any]]] = []

    async def probe() -> bool:
        seen.append(await healthz(serve))
        return want(*seen[-1])

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"/healthz never showed {what}; last: {seen[-1]}")
        await asyncio.sleep(0.2)
    return seen[-1]


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """A host that accepts connections and never answers (a hung Slack, a black hole); also
    yields the connections it holds."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", held
    finally:
        for writer in held:
            writer.close()
        server.close()


# ------------------------------------------------------------------- item 2: start-up, SIGTERM


@slow
async def test_a_refused_app_token_stops_at_once_with_one_line(world, slack, launch) -> None:
    """Today the SDK retries a refused SLACK_APP_TOKEN forever; now: one line, exit 2."""
    wrong = "xapp-1-A0APP0001-1618033988749-WRONGwrongWRONGwrong0000"
    env = env_for(world, **{**slack_env(slack), "SLACK_APP_TOKEN": wrong})
    serve = await launch(env)
    code = await serve.exited(within=30)
    assert code == 2, serve.err
    lines = digestbot_lines(serve.err)
    assert lines == [
        "digestbot: SLACK_APP_TOKEN: Slack rejected the app-level token (invalid_auth)"
    ], serve.err
    assert "Traceback" not in serve.err and wrong not in serve.err
    assert slack.api_calls("apps.connections.open") == 1  # refused: not retried


@slow
async def test_an_unreachable_slack_is_an_outage_named_in_one_line(world, launch) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api/"
    env = env_for(
        world,
        serve={"startup_retry_seconds": "1.5"},
        SLACK_BOT_TOKEN=SLACK_TOKEN,
        SLACK_API_URL=dead,
        SLACK_APP_TOKEN=APP_TOKEN,
    )
    serve = await launch(env)
    assert await serve.exited(within=30) == 2
    lines = digestbot_lines(serve.err)
    assert len(lines) == 1 and lines[0].startswith(
        "digestbot: SLACK_API_URL: Slack is unavailable (cannot be reached"
    ), serve.err
    assert "gave up after" in lines[0] and "Traceback" not in serve.err


@slow
async def test_sigterm_during_a_hanging_start_up_call_exits_promptly(world, launch) -> None:
    """auth.test never answers (the client would wait 30 s, the policy 120 s): SIGTERM ends
    serve at once, cleanly."""
    async with silent_server() as (url, held):
        env = env_for(
            world,
            SLACK_BOT_TOKEN=SLACK_TOKEN,
            SLACK_API_URL=url + "/api/",
            SLACK_APP_TOKEN=APP_TOKEN,
        )
        serve = await launch(env)
        await until(lambda: held, 30, "serve to call auth.test")  # start-up now waits on it
        await asyncio.sleep(0.5)
        assert serve.proc.returncode is None, serve.err
        started = time.monotonic()
        code = await serve.stop(signal.SIGTERM, within=10)
        took = time.monotonic() - started
    assert code == 0, serve.err
    assert "digestbot: stopped during start-up" in serve.err
    assert "Traceback" not in serve.err
    assert took < 10  # bounded by `stop`'s own wait; a hang would have failed there


# ------------------------------------------------------- item 3: answers that are not answers


OUTAGES = {
    "html-502": dict(status=502, body="<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "empty-200": dict(status=200, body=""),
    "503-internal_error": dict(
        status=503,
        body=json.dumps({"ok": False, "error": "internal_error"}),
        content_type="application/json",
    ),
}


@slow
@pytest.mark.parametrize("answer", list(OUTAGES), ids=list(OUTAGES))
async def test_an_outage_answer_at_start_up_is_retried_then_serve_comes_up(
    world, slack, launch, answer
) -> None:
    slack.answer_next("auth.test", n=2, **OUTAGES[answer])  # type: ignore[arg-type]
    env = env_for(world, **slack_env(slack))
    serve = await launch(env)
    await serve.banner(within=60)
    assert slack.api_calls("auth.test") >= 3  # two outage answers, then the real one
    assert "Traceback" not in serve.err and "rejected" not in serve.err
    assert (await healthz(serve))[0] == 200
    assert await serve.stop() == 0


@slow
@pytest.mark.parametrize("answer", list(OUTAGES), ids=list(OUTAGES))
async def test_an_outage_that_lasts_is_reported_as_an_outage_not_a_bad_token(
    world, slack, launch, answer
) -> None:
    slack.answer_next("auth.test", n=1000, **OUTAGES[answer])  # type: ignore[arg-type]
    env = env_for(world, serve={"startup_retry_seconds": "2.0"}, **slack_env(slack))
    serve = await launch(env)
    assert await serve.exited(within=60) == 2
    lines = digestbot_lines(serve.err)
    assert len(lines) == 1, serve.err
    assert lines[0].startswith("digestbot: SLACK_API_URL: Slack is unavailable ("), lines
    assert "rejected" not in lines[0] and "Traceback" not in serve.err
    detail = {
        "html-502": "not Slack's JSON, http 502",
        "empty-200": "not Slack's JSON, http 200",
        "503-internal_error": "internal_error, http 503",
    }[answer]
    assert detail in lines[0]
    assert slack.api_calls("auth.test") >= 2  # retried with backoff before giving up


async def test_a_non_json_ephemeral_answer_still_reaches_the_requester_by_response_url(
    slack: FakeSlack,
) -> None:
    from aiohttp import web

    received: list[dict[str, Any]] = []

    async def response_url(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", response_url)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    channel = SlackChannel(make_slack_client(slack.token, f"{slack.url}/api/"))
    try:
        for status, body in ((502, "<html>Bad Gateway</html>"), (200, "")):
            slack.answer_next("chat.postEphemeral", status=status, body=body)
            await _ephemeral(channel, CHANNEL, "U1", f"line after {status}", hook)
    finally:
        await channel.aclose()
        await runner.cleanup()
    assert [r["text"] for r in received] == ["line after 502", "line after 200"]
    assert all(r["response_type"] == "ephemeral" for r in received)
    assert slack.ephemerals == []  # Slack itself never took them


# ------------------------------------------------------------- item 4: a hardened HTTP surface


def _nofile(limit: int) -> Callable[[], None]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return lower


@slow
async def test_500_slow_connections_do_not_take_healthz_or_slack_down(world, slack, launch) -> None:
    """500 clients each sending half a request head, slowly, to a serve that may hold only
    256 descriptors: /healthz and a signed /analyze still answer, and asyncio's accept errors
    do not flood the log."""
    env = env_for(
        world, serve={"header_timeout_seconds": "3.0"}, **slack_env(slack, socket_mode=False)
    )
    serve = await launch(env, preexec=_nofile(256))
    await serve.banner()
    writers: list[asyncio.StreamWriter] = []
    stop = asyncio.Event()

    async def slow_client() -> None:
        # Reconnect when closed, as an attacker would, until the test ends (bounded by `stop`).
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", serve.port)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            writers.append(writer)
            try:
                writer.write(b"POST /slack/events HTTP/1.1\r\nHost: x\r\n")
                for _ in range(60):
                    if stop.is_set() or reader.at_eof():
                        break
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(1), 0.5)
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

    attackers = [asyncio.create_task(slow_client()) for _ in range(500)]
    try:
        await asyncio.sleep(2.0)  # all 500 are connecting and dripping
        for _ in range(5):
            status, report = await healthz(serve)
            assert status == 200, report
            await asyncio.sleep(0.3)
        body = _form_body(slack)
        async with client() as http:
            answer = await http.post(serve.url("/slack/events"), content=body, headers=signed(body))
        assert answer.status_code == 200, answer.text
    finally:
        stop.set()
        await asyncio.wait(attackers, timeout=30)
    assert serve.proc.returncode is None, serve.err  # still up
    assert await serve.stop() == 0
    # asyncio's accept errors (if the descriptors ran out at all) and the guard's own lines are
    # folded: one line per kind, never one per client
    assert serve.err.count("out of system resource") <= 1, serve.err[-3000:]
    assert serve.err.count("http: ") <= 6, serve.err[-3000:]


def _form_body(slack: FakeSlack, text: str = "2401.00001") -> bytes:
    from urllib.parse import urlencode

    return urlencode(slash_form(slack, text)).encode()


@slow
async def test_unsigned_garbage_is_401_signed_garbage_400_and_the_log_does_not_flood(
    world, slack, launch
) -> None:
    env = env_for(world, **slack_env(slack, socket_mode=False))
    serve = await launch(env)
    await serve.banner()
    url = serve.url("/slack/events")
    junk = bytes(range(256)) * 4
    now = str(int(time.time()))
    async with client() as http:

        async def post(body: bytes, headers: dict[str, str]) -> int:
            return (await http.post(url, content=body, headers=headers)).status_code

        # unsigned, or signed with a timestamp that is not one: 401, whatever the body
        assert await post(junk, {}) == 401
        assert await post(b"command=/analyze&text=1", {"Content-Type": "text/plain"}) == 401
        for stamp in ("abc", "1e9", "-1", "99999999999999999999", "0x10", ""):
            headers = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": "v0=00"}
            assert await post(junk, headers) == 401, stamp
        stale = signed(b"x=1", at=time.time() - 3600)
        assert await post(b"x=1", stale) == 401
        wrong = signed(b"x=1", secret="not-the-secret")
        assert await post(b"x=1", wrong) == 401
        assert now  # the signature helper stamps with the current time itself

        # signed but not something Slack sends: 400
        for body, ctype in (
            (junk, "application/x-www-form-urlencoded"),
            (b"{not json", "application/json"),
            (b'{"no": "type"}', "application/json"),
            (b"hello=world", "application/x-www-form-urlencoded"),
            (b"payload=%7Bnot", "application/x-www-form-urlencoded"),
        ):
            headers = {**signed(body), "Content-Type": ctype}
            assert await post(body, headers) == 400, body[:20]

        # a flood of unsigned requests: answered, logged once (with a count later)
        statuses = await asyncio.gather(*(post(junk, {}) for _ in range(200)))
        assert set(statuses) == {401}
        # and the real thing still works
        body = _form_body(slack)
        assert await post(body, signed(body)) == 200
    assert await serve.stop() == 0
    refused = [line for line in serve.err.splitlines() if "refused" in line]
    # one line per kind of refusal (no signature, bad or stale timestamp, bad signature),
    # however many requests: the 200+ unsigned ones are a single line
    assert len(refused) <= 4, refused
    assert len([line for line in refused if "no signature" in line]) == 1, refused
    assert "Traceback" not in serve.err and SIGNING_SECRET not in serve.err


@slow
async def test_host_sets_the_bind_address(world, launch) -> None:
    env = env_for(world, HOST="127.0.0.1")
    serve = await launch(env)
    banner = await serve.banner()
    assert f"http 127.0.0.1:{serve.port}" in banner
    assert (await healthz(serve))[0] == 200
    assert await serve.stop() == 0


def test_signature_is_checked_before_the_body_is_looked_at() -> None:
    body = bytes(range(256))
    now = time.time()
    assert slack_signature_problem(SIGNING_SECRET, {}, body, now) == "no signature"
    bad_stamp = {"X-Slack-Request-Timestamp": "12ab", "X-Slack-Signature": "v0=1"}
    assert slack_signature_problem(SIGNING_SECRET, bad_stamp, body, now) == "bad timestamp"
    headers = signed(body)
    assert slack_signature_problem(SIGNING_SECRET, headers, body, time.time()) is None
    assert slack_signature_problem(SIGNING_SECRET, headers, body + b"x", time.time()) == (
        "bad signature"
    )
    assert slack_signature_problem(SIGNING_SECRET, headers, body, time.time() + 600) == (
        "stale timestamp"
    )
    # the real shapes pass, from the recorded docs example
    from test_serve import DOCS_BODY

    assert slack_shape_problem("application/x-www-form-urlencoded", DOCS_BODY.encode()) is None
    event = json.dumps({"type": "event_callback", "event": {}}).encode()
    assert slack_shape_problem("application/json", event) is None
    assert slack_shape_problem("application/json", body) == "not UTF-8"


# ---------------------------------------------------------------- repeated log lines, folded


def test_identical_warnings_are_written_once_per_interval_with_a_count() -> None:
    now = [1000.0]
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect()
    handler.addFilter(RepeatFilter(60.0, clock=lambda: now[0]))
    handler.addFilter(RedactingFilter([SLACK_TOKEN]))
    logger = logging.getLogger("test_surface.flood")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for fd in range(1000):
            logger.error("socket.accept() out of system resource\nsocket: <fd=%d>", fd)
        logger.warning("a different warning with %s", SLACK_TOKEN)
        logger.error("%s: post failed: %s", "slack:C1", "not_in_channel")
        logger.error("%s: post failed: %s", "telegram:-100123", "kicked")  # another: written
        logger.error("%s: post failed: %s", "slack:C1", "not_in_channel")  # the same: folded
        logger.info("progress %d", 1)
        logger.info("progress %d", 2)  # below WARNING: never folded
        now[0] += 61
        logger.error("socket.accept() out of system resource\nsocket: <fd=%d>", 7)
    finally:
        logger.removeHandler(handler)
    assert len(lines) == 7, lines
    assert lines[0].startswith("socket.accept() out of system resource")
    assert lines[1] == "a different warning with ***"
    assert lines[2:4] == [
        "slack:C1: post failed: not_in_channel",
        "telegram:-100123: post failed: kicked",
    ]
    assert lines[4:6] == ["progress 1", "progress 2"]
    assert "[999 more like this in the last 61 s]" in lines[6]


# --------------------------------------------------------------- item 5: health tells the truth


@slow
async def test_a_database_that_cannot_be_written_fails_healthz(world, launch) -> None:
    env = env_for(world)
    serve = await launch(env)
    await serve.banner()
    assert (await healthz(serve))[0] == 200
    blocker = sqlite3.connect(str(world.db), timeout=1, isolation_level=None)
    try:
        blocker.execute("begin immediate")  # another writer holds the database
        _, report = await until_health(
            serve, lambda status, r: status == 503, "the database failing"
        )
        assert report["failed"] == ["database"], report
        assert "locked" in report["database"]["error"]
    finally:
        blocker.execute("rollback")
        blocker.close()
    await until_health(serve, lambda status, r: status == 200, "the database writable again")
    assert await serve.stop() == 0


@slow
async def test_a_poller_stuck_in_409_conflicts_fails_healthz(world, tg, launch) -> None:
    env = env_for(world, serve={"unhealthy_after_seconds": "2.0"}, **telegram_env(tg))
    serve = await launch(env)
    await serve.banner()
    await asyncio.sleep(2.5)  # polling for longer than the window: not a newcomer
    assert (await healthz(serve))[0] == 200
    tg.webhook = {"url": "https://elsewhere.example.org/hook"}  # set by someone else
    _, report = await until_health(serve, lambda s, r: s == 503, "telegram failing")
    assert report["failed"] == ["telegram"], report
    assert "409 Conflict" in report["telegram"]["error"]
    tg.webhook = {}
    await until_health(serve, lambda s, r: s == 200, "telegram healthy again")
    assert "another process is polling" not in serve.err  # it was not the newcomer
    assert await serve.stop() == 0


@slow
async def test_socket_mode_down_longer_than_the_limit_fails_healthz_until_it_reconnects(
    world, slack, launch
) -> None:
    env = env_for(world, serve={"unhealthy_after_seconds": "2.0"}, **slack_env(slack))
    serve = await launch(env)
    await serve.banner()
    status, report = await healthz(serve)
    assert status == 200 and report["slack"] == {"ok": True, "mode": "socket"}, report

    await slack.socket_outage()  # the socket is dropped and every reconnect refused
    _, report = await until_health(serve, lambda s, r: s == 503, "slack failing")
    assert report["failed"] == ["slack"], report
    assert report["slack"]["mode"] == "socket"
    assert report["slack"]["error"].startswith("Socket Mode disconnected for "), report
    await until(lambda: slack.refused_reconnects > 0, 30, "the bot trying to reconnect")
    assert (await healthz(serve))[0] == 503  # still down: refused reconnects do not count
    await until(
        lambda: "slack: Socket Mode disconnected for 2 s" in serve.err, 10, "the outage logged"
    )

    await slack.socket_outage(False)
    _, report = await until_health(serve, lambda s, r: s == 200, "slack healthy again")
    assert report["slack"] == {"ok": True, "mode": "socket"}, report
    await until(lambda: "slack: Socket Mode connected again" in serve.err, 10, "the return logged")
    # really back: a command sent over the new socket is acknowledged
    sent = await slack.push_envelope("slash_commands", slash_form(slack, "not-a-paper"))
    assert (await slack.wait_for_ack(sent, within=10.0))["envelope_id"] == sent
    assert await serve.stop() == 0


@slow
async def test_a_second_process_polling_the_same_bot_says_so_and_stops_polling(
    world, tg, launch
) -> None:
    first = await launch(
        env_for(world, serve={"unhealthy_after_seconds": "2.0"}, **telegram_env(tg))
    )
    await first.banner()
    await asyncio.sleep(2.5)
    second_env = env_for(world, **telegram_env(tg), DIGEST_DB=str(world.tmp / "second.db"))
    second = await launch(second_env)
    await second.banner()
    await until(lambda: "another process is polling" in second.err, 20, "the second to yield")
    lines = [line for line in digestbot_lines(second.err) if "TELEGRAM_BOT_TOKEN" in line]
    assert lines == [
        "digestbot: TELEGRAM_BOT_TOKEN: another process is polling this bot (409 Conflict on "
        "getUpdates); this one stops polling and takes no Telegram updates"
    ]
    status, report = await healthz(second)
    assert status == 503 and report["failed"] == ["telegram"], report
    # the first keeps the token and stays healthy
    await until_health(first, lambda s, r: s == 200, "the first healthy")
    polls = len(tg.method_calls("getUpdates"))
    await asyncio.sleep(2.0)
    assert len(tg.method_calls("getUpdates")) > polls  # someone (the first) still polls
    assert "another process is polling" not in first.err
    assert (await healthz(second))[0] == 503
    assert await second.stop() == 0
    assert await first.stop() == 0
