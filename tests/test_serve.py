"""`digestbot serve` as an operator runs it: one child process against local fakes.

Each test starts `python -m bot.cli serve` with the contract's environment pointing at fakes of
Hugging Face, arXiv, an OpenAI-compatible server, Slack (Web API and Socket Mode) and the
Telegram Bot API, all on 127.0.0.1, with PORT on a free port. It waits for the banner line,
talks to the bot the way Slack and Telegram do (Socket Mode envelopes, signed POSTs to
/slack/events, long-polled updates, webhook POSTs to /telegram), sends SIGTERM, and then reads
what the fakes recorded. DIGEST_TIME=off keeps the daily job out of the way.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from fakes.slack import FakeSlack
from fakes.telegram import FakeTelegram
from fakes.world import ROOT, TEST_KEY, World

FIXTURES = Path(__file__).parent / "fixtures" / "slack"
DOCS_BODY = (FIXTURES / "slash_command_body_docs_example.txt").read_text(encoding="utf-8")

# Real-looking credentials: each has the shape of the real thing, so a leak would be caught by
# a shape-matching scan as well as by the exact value.
SLACK_TOKEN = "xoxb-2718281828-3141592653589-SERVEtestBOTtokenXyZ0123"
APP_TOKEN = "xapp-1-A0APP0001-1618033988749-0123456789abcdefSERVEapp"
SIGNING_SECRET = "c0ffee5e7b2a4f19a8d3e6b1d2c4f5a6"
TG_TOKEN = "7123456789:AAHserveTESTtoken_abcdefghijklmnopqrs"
WEBHOOK_SECRET = "wh_SERVE-test-secret_0123456789abcdef"
WEBHOOK_URL = "https://digestbot.example.org/telegram"

CHANNEL = "C0DIGEST01"
GROUP = -1001234567890
PAPER_A = "1605.08386"  # in the fake arXiv's recorded entries
PAPER_B = "1707.08567"
BANNER = "digestbot: serving: "


# ------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    """A free port for the child's PORT, below the kernel's ephemeral range: every fake binds
    port 0 and so draws from that range, so none can take this port between the check here and
    the child's own bind. Each xdist worker draws from its own thousand ports."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    low = 20_000 + 1000 * (int(worker or 0) % 12)
    for candidate in random.sample(range(low, low + 1000), 1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError(f"no free port in {low}-{low + 999}")


async def until(check: Callable[[], Any], within: float, what: str) -> None:
    """Poll `check` until it is true; fail naming `what` after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


class Serve:
    """`digestbot [ARGS] serve` in a child process, its stdout and stderr captured as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
        self.env.update(env)
        self.args = args
        self.port = int(env.get("PORT", "3000"))
        self._out = bytearray()
        self._err = bytearray()
        self._tasks: list[asyncio.Task[Any]] = []
        self.preexec: Callable[[], None] | None = None  # run in the child before it starts

    async def start(self) -> Serve:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            *self.args,
            "serve",
            env=self.env,
            cwd=str(ROOT),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=self.preexec,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._pump(self.proc.stdout, self._out)),
            asyncio.create_task(self._pump(self.proc.stderr, self._err)),
        ]
        self._exit = asyncio.create_task(self.proc.wait())
        return self

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, into: bytearray) -> None:
        while chunk := await stream.read(65536):
            into.extend(chunk)

    @property
    def out(self) -> str:
        return self._out.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self._err.decode("utf-8", "replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def banner(self, within: float = 20.0) -> str:
        """The "serving" line, once the bot is up; fails if it exits first."""
        await until(lambda: BANNER in self.err or self._exit.done(), within, "the banner")
        line = next((x for x in self.err.splitlines() if x.startswith(BANNER)), None)
        assert line is not None, f"serve ended ({self.proc.returncode}) before serving:\n{self.err}"
        return line

    async def exited(self, within: float = 30.0) -> int:
        """The exit code, once the process has ended and its output is all read."""
        try:
            code = await asyncio.wait_for(asyncio.shield(self._exit), within)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(f"serve still running after {within} s:\n{self.err}") from None
        await asyncio.gather(*self._tasks)
        return code

    async def stop(self, sig: int = signal.SIGTERM, within: float = 30.0) -> int:
        self.proc.send_signal(sig)
        return await self.exited(within)

    async def kill(self) -> None:
        if not self._exit.done():
            self.proc.kill()
            await self._exit
        for task in self._tasks:
            task.cancel()


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, timeout=10.0)


def slack_env(fake: FakeSlack, *, socket_mode: bool = True, signing: bool = True) -> dict:
    env = {
        "SLACK_BOT_TOKEN": fake.token,
        "SLACK_API_URL": f"{fake.url}/api/",
        "SLACK_CHANNELS": CHANNEL,
    }
    if socket_mode:
        env["SLACK_APP_TOKEN"] = fake.app_token
    if signing:
        env["SLACK_SIGNING_SECRET"] = SIGNING_SECRET
    return env


def telegram_env(fake: FakeTelegram, *, webhook: bool = False) -> dict:
    env = {
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_URL": f"{fake.url}/bot",
        "TELEGRAM_CHATS": str(GROUP),
    }
    if webhook:
        env.update(TELEGRAM_WEBHOOK_URL=WEBHOOK_URL, TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET)
    return env


def slash_form(fake: FakeSlack, text: str) -> dict[str, str]:
    """The docs' real slash-command body, turned into `/analyze TEXT` in the test channel."""
    form = dict(parse_qsl(DOCS_BODY, keep_blank_values=True))
    form.update(
        command="/analyze",
        text=text,
        channel_id=CHANNEL,
        team_id=fake.team_id,
        response_url=f"{fake.url}/response_url",
    )
    return form


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """As Slack signs: `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{raw body}`."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def signed(body: bytes, *, secret: str = SIGNING_SECRET, at: float | None = None) -> dict:
    timestamp = str(int(time.time() if at is None else at))
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": slack_signature(secret, timestamp, body),
    }


def slack_done(fake: FakeSlack) -> bool:
    """The /analyze result is in: the requester's closing ephemeral line was posted."""
    return any((e["text"] or "").startswith("✅") for e in fake.ephemerals)


def slack_thread(fake: FakeSlack) -> tuple[dict, list[dict]]:
    """The one analysis root in the channel and its replies."""
    messages = fake.messages(CHANNEL)
    roots = [m for m in messages if not m["thread_ts"]]
    assert len(roots) == 1, [m["text"][:60] for m in messages]
    replies = [m for m in messages if m["thread_ts"] == roots[0]["ts"]]
    assert len(replies) + 1 == len(messages), "a message outside the analysis thread"
    return roots[0], replies


def tg_thread(fake: FakeTelegram, paper: str) -> tuple[dict | None, list[dict]]:
    """The analysis root for `paper` in the group (a message linking the paper that replies to
    nothing) and the messages replying to it."""
    sent = fake.sent(GROUP)
    roots = [m for m in sent if f"/abs/{paper}" in m["text"] and m["reply_to_message_id"] is None]
    if not roots:
        return None, []
    return roots[0], [m for m in sent if m["reply_to_message_id"] == roots[0]["message_id"]]


def tg_done(fake: FakeTelegram, paper: str) -> bool:
    root, replies = tg_thread(fake, paper)
    return root is not None and bool(replies)


def analysing_lines(fake: FakeTelegram) -> list[dict]:
    """The opening lines: "🔎 Analysing…" (with the stage while it works), "✅ Analysed…" once
    the analysis is posted."""
    return [m for m in fake.sent(GROUP) if m["text"].startswith(("🔎 Analysing", "✅ Analysed"))]


def no_duplicates(texts: list[str]) -> None:
    assert len(texts) == len(set(texts)), "a message was posted twice"


def llm_calls_about(world: World, paper: str) -> list[dict]:
    return [c for c in world.llm.calls if paper in json.dumps(c)]


def no_repeated_llm_call(world: World) -> None:
    bodies = [json.dumps(c, sort_keys=True) for c in world.llm.calls]
    assert len(bodies) == len(set(bodies)), "an LLM request was made twice"


# ------------------------------------------------------------------------------------ fixtures


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
def port() -> int:
    return free_port()


@pytest.fixture
async def launch() -> AsyncIterator[Callable[..., Awaitable[Serve]]]:
    """Start `serve`; whatever a test leaves running is killed afterwards."""
    started: list[Serve] = []

    async def go(env: dict[str, str], *args: str) -> Serve:
        serve = await Serve(env, *args).start()
        started.append(serve)
        return serve

    yield go
    for serve in started:
        await serve.kill()


def base_env(world: World, port: int, **more: str) -> dict[str, str]:
    return world.env(PORT=str(port), DIGEST_TIME="off", **more)


# ---------------------------------------------------------------- Socket Mode + long polling


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_socket_mode_and_polling_health_then_a_stop_signal_exits_cleanly(
    world: World, slack: FakeSlack, tg: FakeTelegram, port: int, launch, sig: int
) -> None:
    env = base_env(world, port, **slack_env(slack), **telegram_env(tg))
    serve = await launch(env)
    banner = await serve.banner()
    assert f"http :{port}" in banner
    assert "slack (socket mode)" in banner and "telegram (polling)" in banner
    assert "daily digest off" in banner

    async with client() as c:
        r = await c.get(serve.url("/healthz"))
    assert r.status_code == 200
    health = r.json()
    assert health["ok"] is True
    assert health["scheduler"]["ok"] is True and health["scheduler"]["next_run"] is None
    assert health["database"] == {"ok": True}
    assert health["slack"] == {"ok": True, "mode": "socket"}
    assert health["telegram"] == {"ok": True, "mode": "polling"}
    # start-up checked both tokens and opened both kinds of intake
    assert slack.api_calls("auth.test") == 1 and slack.api_calls("apps.connections.open") >= 1
    assert tg.method_calls("getMe") and tg.method_calls("deleteWebhook")
    await until(lambda: tg.method_calls("getUpdates"), 5, "the first long poll")

    assert await serve.stop(sig) == 0
    assert serve.proc.returncode == 0
    lines = serve.err.splitlines()
    # a clean stop: the banner, the stopping line, and nothing else (no traceback, no
    # "Unclosed client session", no shutdown warning)
    assert lines == [banner, "digestbot: stopping: finishing work in flight…"], serve.err
    assert serve.out == ""
    with pytest.raises(httpx.ConnectError):
        async with client() as c:
            await c.get(serve.url("/healthz"))


async def test_sigterm_during_analyze_lets_it_finish_and_posts_nothing_twice(
    world: World, slack: FakeSlack, tg: FakeTelegram, port: int, launch
) -> None:
    world.llm.latency = 3.0
    env = base_env(world, port, **slack_env(slack), **telegram_env(tg))
    serve = await launch(env)
    await serve.banner()

    await slack.push_envelope("slash_commands", slash_form(slack, PAPER_A), envelope_id="drain-1")
    tg.push_message(GROUP, f"/analyze@DigestBot {PAPER_B}")
    ack = await slack.wait_for_ack("drain-1", within=3.0)
    assert "Analysing arXiv:1605.08386" in ack["payload"]["text"]
    assert slack.messages(CHANNEL) == []  # acked before the 3 s LLM call could finish
    # both analyses are inside the LLM (a score and a deep dive each) when SIGTERM comes
    await until(
        lambda: (
            world.llm.in_flight > 0
            and llm_calls_about(world, PAPER_A)
            and llm_calls_about(world, PAPER_B)
        ),
        5,
        "both analyses to reach the LLM",
    )

    assert await serve.stop(within=30) == 0

    root, replies = slack_thread(slack)
    assert "1605.08386" in json.dumps(root["blocks"]) + root["text"]
    assert replies, "the deep dive was not posted before exit"
    no_duplicates([m["text"] for m in slack.messages(CHANNEL)])
    assert [e["text"][:1] for e in slack.ephemerals] == ["✅"]

    root_tg, replies_tg = tg_thread(tg, PAPER_B)
    assert root_tg is not None and replies_tg, tg.sent(GROUP)
    assert len(analysing_lines(tg)) == 1
    no_duplicates([m["text"] for m in tg.sent(GROUP)])
    no_repeated_llm_call(world)
    assert "Traceback" not in serve.err


# ------------------------------------------------------------------------------ Slack HTTP mode


async def test_http_mode_accepts_only_correctly_signed_requests(
    world: World, slack: FakeSlack, port: int, launch
) -> None:
    world.llm.latency = 3.0
    env = base_env(world, port, **slack_env(slack, socket_mode=False))
    serve = await launch(env)
    banner = await serve.banner()
    assert "slack (http mode)" in banner

    body = urlencode(slash_form(slack, PAPER_A)).encode()
    # the rejected requests ask for another paper, so any trace of them is easy to find
    bad = urlencode(slash_form(slack, PAPER_B)).encode()
    events = serve.url("/slack/events")
    async with client() as c:
        assert (await c.get(serve.url("/healthz"))).json()["slack"] == {"ok": True, "mode": "http"}
        unsigned = await c.post(
            events, content=bad, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        wrong = await c.post(events, content=bad, headers=signed(bad, secret="0" * 32))
        stale = await c.post(events, content=bad, headers=signed(bad, at=time.time() - 600))
        tampered = await c.post(events, content=bad, headers=signed(body))
        for name, r in (
            ("unsigned", unsigned),
            ("wrong secret", wrong),
            ("stale", stale),
            ("tampered", tampered),
        ):
            assert r.status_code == 401, (name, r.status_code, r.text)
        assert slack.api_calls("chat.postMessage") == 0
        assert slack.api_calls("chat.postEphemeral") == 0
        assert world.llm.calls == []

        good = await c.post(events, content=body, headers=signed(body))
        # Slack's 3 s deadline: the answer came before the 3 s LLM answered anything (the
        # acknowledgement's speed is timed by bench/interactive.py).
        acked_before_llm = world.llm.answered == 0
    assert good.status_code == 200, good.text
    assert "Analysing arXiv:1605.08386" in good.text
    assert acked_before_llm
    assert slack.messages(CHANNEL) == []

    await until(lambda: slack_done(slack), 15, "the analysis to be posted")
    root, replies = slack_thread(slack)
    assert replies and all(m["thread_ts"] == root["ts"] for m in replies)
    assert await serve.stop() == 0  # after the drain: whatever was started is finished
    assert llm_calls_about(world, PAPER_B) == []
    posted = json.dumps([slack.messages(CHANNEL), slack.ephemerals])
    assert PAPER_B not in posted and PAPER_A in posted
    assert len(slack.ephemerals) == 1


async def test_http_mode_without_signing_secret_stops_with_one_line(
    world: World, slack: FakeSlack, port: int, launch
) -> None:
    env = base_env(world, port, **slack_env(slack, socket_mode=False, signing=False))
    serve = await launch(env)
    assert await serve.exited(20) == 2
    assert serve.out == ""
    lines = serve.err.strip().splitlines()
    assert len(lines) == 1, serve.err
    assert lines[0].startswith("digestbot: SLACK_SIGNING_SECRET")


# ---------------------------------------------------------------------------- Telegram webhook


async def test_webhook_mode_checks_the_secret_and_handles_an_update_once(
    world: World, tg: FakeTelegram, port: int, launch
) -> None:
    env = base_env(world, port, **telegram_env(tg, webhook=True))
    serve = await launch(env)
    banner = await serve.banner()
    assert "telegram (webhook)" in banner
    assert tg.webhook == {"url": WEBHOOK_URL, "secret_token": WEBHOOK_SECRET}
    assert tg.method_calls("setWebhook")[-1]["secret_token"] == WEBHOOK_SECRET

    # the rejected update asks for another paper, so any trace of it is easy to find
    rejected = tg.push_message(GROUP, f"/analyze@DigestBot {PAPER_A}")
    update = tg.push_message(GROUP, f"/analyze@DigestBot {PAPER_B}")
    hook = serve.url("/telegram")
    async with client() as c:
        assert (await c.get(serve.url("/healthz"))).json()["telegram"] == {
            "ok": True,
            "mode": "webhook",
        }
        missing = await c.post(hook, json=rejected)
        wrong = await c.post(
            hook, json=rejected, headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET[:-1]}
        )
        assert (missing.status_code, wrong.status_code) == (403, 403)
        await asyncio.sleep(0.3)  # what a rejected update would have started, had it been read
        assert tg.method_calls("sendMessage") == [] and tg.method_calls("sendChatAction") == []
        assert world.llm.calls == []

        right = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
        first = await c.post(hook, json=update, headers=right)
        again = await c.post(hook, json=update, headers=right)  # Telegram redelivers
        assert (first.status_code, again.status_code) == (200, 200)
        assert first.json() == {"ok": True}
        await until(lambda: tg_done(tg, PAPER_B), 15, "the analysis to be posted")
        late = await c.post(hook, json=update, headers=right)  # and redelivers later
        assert late.status_code == 200

    assert await serve.stop() == 0  # the drain: anything the redeliveries started is done
    assert tg.method_calls("getUpdates") == []  # a webhook bot never polls
    assert len(analysing_lines(tg)) == 1
    assert analysing_lines(tg)[0]["reply_to_message_id"] == update["message"]["message_id"]
    no_duplicates([m["text"] for m in tg.sent(GROUP)])
    no_repeated_llm_call(world)
    # after the drain, still no trace of the rejected update
    assert llm_calls_about(world, PAPER_A) == []
    assert all(PAPER_A not in m["text"] for m in tg.sent(GROUP))
    rejected_id = rejected["message"]["message_id"]
    assert all(m["reply_to_message_id"] != rejected_id for m in tg.sent(GROUP))


async def test_webhook_url_telegram_refuses_stops_with_one_line(
    world: World, tg: FakeTelegram, port: int, launch
) -> None:
    env = base_env(world, port, **telegram_env(tg, webhook=True))
    env["TELEGRAM_WEBHOOK_URL"] = "http://digestbot.example.org/telegram"  # not HTTPS
    serve = await launch(env)
    assert await serve.exited(20) == 2
    lines = serve.err.strip().splitlines()
    assert len(lines) == 1, serve.err
    assert lines[0].startswith("digestbot: TELEGRAM_WEBHOOK_URL:") and "https" in lines[0].lower()
    assert WEBHOOK_SECRET not in serve.err and TG_TOKEN not in serve.err


async def test_webhook_updates_accepted_just_before_sigterm_are_all_answered(
    world: World, tg: FakeTelegram, port: int, launch
) -> None:
    """A 200 tells Telegram never to send the update again, so each one answered 200 must be
    handled even when SIGTERM follows at once."""
    env = base_env(world, port, **telegram_env(tg, webhook=True))
    serve = await launch(env)
    await serve.banner()
    updates = [
        tg.push_message(
            GROUP,
            f"/analyze@DigestBot {PAPER_B}",
            user={"id": 500 + i, "is_bot": False, "first_name": f"User{i}"},
        )
        for i in range(5)
    ]
    right = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    async with client() as c:
        answers = await asyncio.gather(
            *(c.post(serve.url("/telegram"), json=u, headers=right) for u in updates)
        )
    serve.proc.send_signal(signal.SIGTERM)
    assert [r.status_code for r in answers] == [200] * 5
    assert await serve.exited() == 0

    answered = {m["reply_to_message_id"] for m in tg.sent(GROUP)}
    assert [
        u["message"]["message_id"] for u in updates if u["message"]["message_id"] not in answered
    ] == []
    assert tg_done(tg, PAPER_B)
    assert "Traceback" not in serve.err and "ERROR" not in serve.err, serve.err


# -------------------------------------------------------------------------------- credentials


async def test_slack_rejecting_the_token_stops_with_one_line_without_the_token(
    world: World, slack: FakeSlack, port: int, launch
) -> None:
    revoked = "xoxb-2718281828-3141592653589-REVOKEDtokenAbC987654"
    env = base_env(world, port, **{**slack_env(slack), "SLACK_BOT_TOKEN": revoked})
    serve = await launch(env)
    assert await serve.exited(20) == 2
    lines = serve.err.strip().splitlines()
    assert len(lines) == 1, serve.err
    assert lines[0].startswith("digestbot: SLACK_BOT_TOKEN:") and "invalid_auth" in lines[0]
    assert serve.out == ""
    for part in (revoked, revoked[5:], "REVOKED", APP_TOKEN):
        assert part not in serve.err
    assert slack.api_calls("apps.connections.open") == 0  # nothing started


async def test_telegram_rejecting_the_token_stops_with_one_line_without_the_token(
    world: World, tg: FakeTelegram, port: int, launch
) -> None:
    revoked = "7123456789:AAHrevokedTOKEN_zyxwvutsrqponmlkjihg"
    env = base_env(world, port, **{**telegram_env(tg), "TELEGRAM_BOT_TOKEN": revoked})
    serve = await launch(env)
    assert await serve.exited(20) == 2
    lines = serve.err.strip().splitlines()
    assert len(lines) == 1, serve.err
    assert lines[0].startswith("digestbot: TELEGRAM_BOT_TOKEN:")
    assert serve.out == ""
    for part in (revoked, revoked.split(":")[1], "revokedTOKEN"):
        assert part not in serve.err
    assert tg.method_calls("getUpdates") == [] and tg.method_calls("sendMessage") == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SLACK_BOT_TOKEN", "xoxp-2718281828-user-token-NOTaBOT0123456"),
        ("SLACK_APP_TOKEN", "xoxb-2718281828-3141592653589-NOTanAPPtoken01"),
        ("TELEGRAM_BOT_TOKEN", "AAHmissingTheBotIdPart_abcdefghijklmn"),
    ],
)
async def test_malformed_token_stops_with_one_line_naming_it(
    world: World, slack: FakeSlack, tg: FakeTelegram, port: int, launch, name: str, value: str
) -> None:
    env = base_env(world, port, **{**slack_env(slack), **telegram_env(tg), name: value})
    serve = await launch(env)
    assert await serve.exited(20) == 2
    lines = serve.err.strip().splitlines()
    assert len(lines) == 1, serve.err
    assert lines[0].startswith(f"digestbot: {name}:")
    assert value not in serve.err and value[8:24] not in serve.err
    assert slack.requests == [] and tg.requests == []  # refused before any request


@pytest.mark.parametrize("configured", ["telegram", "slack", "none"])
async def test_only_platforms_with_credentials_start(
    world: World, slack: FakeSlack, tg: FakeTelegram, port: int, launch, configured: str
) -> None:
    env = base_env(world, port)
    if configured == "slack":
        env.update(slack_env(slack))
    if configured == "telegram":
        env.update(telegram_env(tg))
    serve = await launch(env)
    banner = await serve.banner()
    async with client() as c:
        health = (await c.get(serve.url("/healthz"))).json()
    assert await serve.stop() == 0

    assert health["ok"] is True
    expected = {"ok", "scheduler", "database"} | ({configured} - {"none"})
    assert set(health) == expected
    for platform, variable in (("slack", "SLACK_BOT_TOKEN"), ("telegram", "TELEGRAM_BOT_TOKEN")):
        if platform == configured:
            assert f"{platform} (" in banner
        else:
            assert f"{platform} off ({variable} not set)" in banner
    if configured == "none":
        assert "no chat platform configured" in banner
    assert (slack.requests != []) == (configured == "slack")
    assert (tg.requests != []) == (configured == "telegram")


# -------------------------------------------------------------------------------- secrets sweep

SECRETS = {
    "SLACK_BOT_TOKEN": SLACK_TOKEN,
    "SLACK_APP_TOKEN": APP_TOKEN,
    "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    "TELEGRAM_BOT_TOKEN": TG_TOKEN,
    "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "OPENAI_API_KEY": TEST_KEY,
}
TOKEN_SHAPES = re.compile(
    r"xox[abprs]-[0-9A-Za-z-]{10,}|xapp-[0-9A-Za-z-]{10,}|\bsk-[A-Za-z0-9_-]{12,}"
    r"|bot[0-9]+:[A-Za-z0-9_-]{20,}|\b[0-9]{6,12}:[A-Za-z0-9_-]{30,}"
)


def database_text(path: Path) -> str:
    """Every row of every table, plus the raw bytes of the file and its journal."""
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert tables, "no tables: the sweep would read nothing"
        rows = [repr(row) for t in tables for row in con.execute(f'SELECT * FROM "{t}"')]
    finally:
        con.close()
    raw = [p.read_bytes().decode("latin-1") for p in path.parent.glob(path.name + "*")]
    return "\n".join(rows + raw)


def leaks(where: str, text: str) -> list[str]:
    found = [f"{where}: {name}" for name, value in SECRETS.items() if value in text]
    found += [f"{where}: token-shaped {m.group(0)[:12]}…" for m in TOKEN_SHAPES.finditer(text)]
    for name, value in SECRETS.items():  # a tail of a token is a leak too
        if value[-12:] in text:
            found.append(f"{where}: the end of {name}")
    return found


@pytest.mark.parametrize("mode", ["socket+webhook", "http+polling"])
async def test_no_secret_in_logs_database_or_anything_posted(
    world: World, slack: FakeSlack, tg: FakeTelegram, port: int, launch, mode: str
) -> None:
    socket_mode = mode == "socket+webhook"
    env = base_env(
        world,
        port,
        **slack_env(slack, socket_mode=socket_mode),
        **telegram_env(tg, webhook=socket_mode),
    )
    serve = await launch(env, "-v")
    await serve.banner()
    async with client() as c:
        if socket_mode:
            await slack.push_envelope("slash_commands", slash_form(slack, PAPER_A))
            update = tg.push_message(GROUP, f"/analyze@DigestBot {PAPER_B}")
            hook = serve.url("/telegram")
            bad = await c.post(hook, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "x"})
            assert bad.status_code == 403
            good = await c.post(
                hook, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
            )
            assert good.status_code == 200
        else:
            body = urlencode(slash_form(slack, PAPER_A)).encode()
            events = serve.url("/slack/events")
            bad = await c.post(events, content=body, headers=signed(body, secret="f" * 32))
            assert bad.status_code == 401
            good = await c.post(events, content=body, headers=signed(body))
            assert good.status_code == 200
            tg.push_message(GROUP, f"/analyze@DigestBot {PAPER_B}")
        await until(
            lambda: slack_done(slack) and tg_done(tg, PAPER_B), 20, "both analyses to be posted"
        )
    assert await serve.stop() == 0
    assert " INFO " in serve.err  # -v really logged at INFO: the sweep read real log lines

    found = leaks("stdout", serve.out) + leaks("stderr", serve.err)
    found += leaks("database", database_text(world.db))
    posted = {
        "slack messages": json.dumps(slack.messages(CHANNEL), ensure_ascii=False),
        "slack ephemerals": json.dumps(slack.ephemerals, ensure_ascii=False),
        "slack acks": json.dumps(slack.acks, ensure_ascii=False),
        # what the bot sent to Slack, minus the Authorization header that must carry the token
        "slack request bodies": "\n".join(
            r.body.decode("utf-8", "replace") for r in slack.requests
        ),
        # what it sent to Telegram, minus the URL path that must carry the token and the
        # setWebhook call that must carry the webhook secret
        "telegram calls": json.dumps(
            [(m, p) for m, p in tg.calls if m != "setWebhook"], ensure_ascii=False, default=str
        ),
        "llm prompts": json.dumps(world.llm.calls, ensure_ascii=False),
        "hf and arxiv requests": "\n".join(
            f"{r.path}?{r.query} {r.headers} {r.body!r}"
            for fake in (world.hf, world.arxiv)
            for r in fake.requests
        ),
    }
    for where, text in posted.items():
        found += leaks(where, text)
    assert found == []
    assert tg.sent(GROUP) and slack.messages(CHANNEL)  # the sweep read real posts


async def test_a_port_in_use_stops_serve_with_one_line(tmp_path: Path) -> None:
    import socket

    from fakes.world import World, run_cli

    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        async with World(tmp_path) as world:
            code, out, err = await run_cli(["serve"], world.env(PORT=str(port), DIGEST_TIME="off"))
    finally:
        taken.close()
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith(f"digestbot: PORT: cannot listen on :{port}")
    assert "Traceback" not in err
