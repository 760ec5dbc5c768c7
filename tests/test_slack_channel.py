"""SlackChannel against FakeSlack: the real slack_sdk AsyncWebClient over real HTTP on 127.0.0.1.

Covers ordering in threads, the retry policy (429, 5xx, no blind re-post after a dropped
connection), permanent errors, reconciliation by metadata key, limits the fake enforces,
secrets staying out of errors and logs, and a Socket Mode round trip through slack_bolt.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from fakes.slack import DEFAULT_CHANNEL, FakeSlack
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from bot.channels.base import DeliveryError
from bot.channels.slack import SlackChannel, make_slack_client
from digest_core.models import Answer, DeepDive, Digest, DigestEntry, Paper, Score
from digest_core.render.slack import SlackMessage

FIXTURES = Path(__file__).parent / "fixtures" / "slack"
SECRET_TOKEN = "xoxb-test-SECRET-123456"
CHAT = DEFAULT_CHANNEL
FAST_BACKOFF = FixedValueRetryIntervalCalculator(0.05)


def msg(text: str, n_blocks: int = 1, chars: int | None = None) -> SlackMessage:
    body = text if chars is None else text * (chars // max(len(text), 1))
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": body}} for _ in range(n_blocks)
    ]
    return SlackMessage(text=text[:100], blocks=blocks)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(token=SECRET_TOKEN) as server:
        yield server


@pytest.fixture
def channel(fake: FakeSlack) -> SlackChannel:
    client = make_slack_client(fake.token, fake.url + "/api/", retry_interval=FAST_BACKOFF)
    return SlackChannel(client, language="zh")


async def test_toc_then_replies_land_in_thread_in_order(
    fake: FakeSlack, channel: SlackChannel
) -> None:
    root = await channel.send(CHAT, msg("TOC"), None, key="toc")
    replies = [
        await channel.send(CHAT, msg(f"part {i}"), root, key=f"2408.00714#{i}") for i in (1, 2, 3)
    ]

    thread = fake.thread(CHAT, root)
    assert [m["text"] for m in thread] == ["TOC", "part 1", "part 2", "part 3"]
    assert [m["ts"] for m in thread] == [root, *replies]
    assert thread[0]["thread_ts"] is None
    assert all(m["thread_ts"] == root for m in thread[1:])
    # Slack ts are strings that sort in posting order.
    assert all(isinstance(ts, str) and "." in ts for ts in [root, *replies])
    assert sorted([root, *replies], key=float) == [root, *replies]
    assert fake.api_calls("chat.postMessage") == 4


async def test_every_post_carries_its_key_and_never_pings(
    fake: FakeSlack, channel: SlackChannel
) -> None:
    root = await channel.send(CHAT, msg("TOC"), None, key="toc")
    await channel.send(CHAT, msg("part"), root, key="2408.00714#1")

    assert [m["metadata"] for m in fake.messages(CHAT)] == [
        {"event_type": "digestbot_post", "event_payload": {"key": "toc"}},
        {"event_type": "digestbot_post", "event_payload": {"key": "2408.00714#1"}},
    ]
    for request in fake.requests:
        if request.path == "/api/chat.postMessage":
            body = request.json()
            assert body["unfurl_links"] is False and body["unfurl_media"] is False
            assert "link_names" not in body and "parse" not in body


async def test_429_on_second_reply_posts_everything_once_in_order(
    fake: FakeSlack, channel: SlackChannel
) -> None:
    root = await channel.send(CHAT, msg("TOC"), None, key="toc")
    await channel.send(CHAT, msg("part 1"), root, key="p#1")
    fake.rate_limit_next(1, retry_after=1)
    await channel.send(CHAT, msg("part 2"), root, key="p#2")
    await channel.send(CHAT, msg("part 3"), root, key="p#3")

    assert [m["text"] for m in fake.thread(CHAT, root)] == ["TOC", "part 1", "part 2", "part 3"]
    # 4 posts + 1 rejected by the 429, which stored nothing.
    assert fake.api_calls("chat.postMessage") == 5
    assert fake.too_early == []  # the retry waited out Retry-After (bench/deliver.py times it)


async def test_retry_after_beyond_the_cap_fails_fast_and_transient(
    fake: FakeSlack, channel: SlackChannel
) -> None:
    fake.rate_limit_next(1, retry_after=3600)
    with pytest.raises(DeliveryError) as info:
        await channel.send(CHAT, msg("TOC"), None, key="toc")
    assert info.value.permanent is False
    assert "ratelimited" in info.value.reason
    assert fake.api_calls("chat.postMessage") == 1
    assert fake.messages(CHAT) == []


@pytest.mark.parametrize(
    ("setup", "chat", "code"),
    [
        (lambda f: setattr(f, "member_of", set()), CHAT, "not_in_channel"),
        (lambda f: None, "C0NOSUCH", "channel_not_found"),
        (lambda f: f.permanent_error(CHAT, "is_archived"), CHAT, "is_archived"),
    ],
)
async def test_permanent_errors_are_not_retried(
    fake: FakeSlack, channel: SlackChannel, setup, chat: str, code: str
) -> None:
    setup(fake)
    with pytest.raises(DeliveryError) as info:
        await channel.send(chat, msg("TOC"), None, key="toc")
    assert info.value.permanent is True
    assert code in info.value.reason
    assert fake.api_calls("chat.postMessage") == 1


async def test_unknown_thread_is_permanent(fake: FakeSlack, channel: SlackChannel) -> None:
    with pytest.raises(DeliveryError) as info:
        await channel.send(CHAT, msg("reply"), "1600000000.000001", key="x#1")
    assert info.value.permanent is True
    assert "thread_not_found" in info.value.reason


async def test_a_post_answered_500_is_not_repeated_blindly(
    fake: FakeSlack, channel: SlackChannel
) -> None:
    # Slack may have stored the message before answering 500: repeating it here could post it
    # twice. The ledger (bot.service.post_thread) looks for it first, then posts again.
    fake.server_error_next(1)
    with pytest.raises(DeliveryError) as info:
        await channel.send(CHAT, msg("TOC"), None, key="toc")
    assert info.value.permanent is False and "500" in info.value.reason
    assert fake.api_calls("chat.postMessage") == 1


async def test_reads_are_retried_after_5xx(fake: FakeSlack, channel: SlackChannel) -> None:
    root = await channel.send(CHAT, msg("TOC"), None, key="toc")
    fake.server_error_next(2, status=503, method="conversations.replies")
    assert await channel.find_posted(CHAT, root, "toc") == root
    assert fake.api_calls("conversations.replies") == 3


async def test_accepted_then_dropped_reply_is_found_not_reposted(
    fake: FakeSlack, channel: SlackChannel
) -> None:
    root = await channel.send(CHAT, msg("TOC"), None, key="toc")
    await channel.send(CHAT, msg("part 1"), root, key="2408.00714#1")
    fake.accept_then_drop_next()
    with pytest.raises(DeliveryError) as info:
        await channel.send(CHAT, msg("part 2"), root, key="2408.00714#2")
    assert info.value.permanent is False
    # The client did not blindly re-send: exactly one request reached Slack for part 2.
    assert fake.api_calls("chat.postMessage") == 3

    stored = fake.thread(CHAT, root)[-1]
    assert await channel.find_posted(CHAT, root, "2408.00714#2") == stored["ts"]
    assert await channel.find_posted(CHAT, root, "2408.00714#1") == fake.thread(CHAT, root)[1]["ts"]
    assert await channel.find_posted(CHAT, root, "2408.00714#3") is None
    assert [m["text"] for m in fake.thread(CHAT, root)] == ["TOC", "part 1", "part 2"]


async def test_accepted_then_dropped_root_is_found_in_history(
    fake: FakeSlack, channel: SlackChannel
) -> None:
    await channel.send(CHAT, msg("yesterday"), None, key="toc-yesterday")
    fake.accept_then_drop_next()
    with pytest.raises(DeliveryError):
        await channel.send(CHAT, msg("TOC"), None, key="toc")
    ts = await channel.find_posted(CHAT, None, "toc")
    assert ts == fake.messages(CHAT)[-1]["ts"]
    assert await channel.find_posted(CHAT, None, "toc-other") is None


async def test_find_posted_reports_when_slack_cannot_be_asked(
    fake: FakeSlack, channel: SlackChannel
) -> None:
    root = await channel.send(CHAT, msg("TOC"), None, key="toc")
    fake.server_error_next(3, method="conversations.replies")
    with pytest.raises(DeliveryError) as info:
        await channel.find_posted(CHAT, root, "x#1")
    assert info.value.permanent is False


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (msg("b", n_blocks=60), "invalid_blocks"),
        (msg("x", chars=3001), "invalid_blocks"),
        (msg("y", n_blocks=5, chars=2900), "msg_blocks_too_long"),
    ],
)
async def test_fake_enforces_slack_limits(
    fake: FakeSlack, channel: SlackChannel, payload: SlackMessage, code: str
) -> None:
    with pytest.raises(DeliveryError) as info:
        await channel.send(CHAT, payload, None, key="toc")
    assert info.value.permanent is True
    assert code in info.value.reason
    assert fake.messages(CHAT) == []


async def test_replace_replaces_placeholder_and_ephemeral_reaches_one_user(
    fake: FakeSlack, channel: SlackChannel
) -> None:
    ts = await channel.send(CHAT, SlackMessage(text="working on it…", blocks=[]), None, key="root")
    await channel.replace(CHAT, ts, msg("the answer"))
    [stored] = fake.messages(CHAT)
    assert stored["text"] == "the answer"
    assert stored["blocks"][0]["text"]["text"] == "the answer"

    await channel.post_ephemeral(CHAT, "U123", "only you")
    assert fake.ephemerals[-1]["user"] == "U123"
    assert fake.ephemerals[-1]["text"] == "only you"

    with pytest.raises(DeliveryError) as info:
        await channel.replace(CHAT, "1600000000.000009", msg("nope"))
    assert info.value.permanent is True


async def test_token_never_in_errors_or_logs(
    fake: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "xoxb-test-SECRET-999999"
    good = SlackChannel(
        make_slack_client(fake.token, fake.url + "/api/", retry_interval=FAST_BACKOFF)
    )
    bad = SlackChannel(make_slack_client(wrong, fake.url + "/api/"))
    errors: list[DeliveryError] = []

    async def attempt(ch: SlackChannel, chat: str = CHAT) -> None:
        try:
            await ch.send(chat, msg("TOC"), None, key="toc")
        except DeliveryError as exc:
            errors.append(exc)

    await attempt(bad)  # invalid_auth
    await attempt(good, "C0NOSUCH")  # channel_not_found
    fake.server_error_next(3)
    await attempt(good)  # 500 after retries
    fake.rate_limit_next(1, retry_after=3600)
    await attempt(good)  # 429 beyond the cap
    fake.accept_then_drop_next()
    await attempt(good)  # connection dropped

    assert [e.permanent for e in errors] == [True, True, False, False, False]
    assert "invalid_auth" in errors[0].reason
    texts = [e.reason for e in errors] + [str(e) for e in errors] + [repr(e) for e in errors]
    texts += [caplog.text] + [r.getMessage() for r in caplog.records]
    # The SDK's own DEBUG request/response logs were captured, not just ours.
    assert any(
        r.name.startswith("slack_sdk") and r.levelno == logging.DEBUG for r in caplog.records
    )
    assert any("chat.postMessage" in r.getMessage() for r in caplog.records)
    for text in texts:
        assert fake.token not in text and wrong not in text and "SECRET" not in text


def _digest() -> Digest:
    def entry(arxiv_id: str, score: int, picked: bool) -> DigestEntry:
        paper = Paper(
            arxiv_id=arxiv_id,
            title=f"Paper {arxiv_id}",
            abstract="An abstract.",
            authors=("A. Author",),
            abs_url=f"https://arxiv.org/abs/{arxiv_id}",
        )
        dive = (
            DeepDive(
                arxiv_id=arxiv_id,
                title=paper.title,
                sections={
                    "contribution": "C",
                    "methodology": "M",
                    "takeaway": "T",
                    "limitations": "L",
                },
                language="zh",
                source_read="abstract only",
                model="m",
                prompt_version="v1",
            )
            if picked
            else None
        )
        return DigestEntry(paper, Score(arxiv_id, score, "why"), dive)

    return Digest(
        date="2026-01-23",
        entries=(
            entry("2601.00001", 90, True),
            entry("2601.00002", 80, True),
            entry("2601.00003", 10, False),
        ),
        profile_name="cv",
        language="zh",
        threshold=60,
    )


async def test_render_keys_are_stable_and_ordered(channel: SlackChannel) -> None:
    out = channel.render_digest(_digest())
    keys = [o.key for o in out]
    assert keys[0] == "toc"
    ids = [k.split("#")[0] for k in keys[1:]]
    assert ids == sorted(ids) and set(ids) == {"2601.00001", "2601.00002"}
    assert "2601.00001#0" in keys and "2601.00002#0" in keys
    assert keys == [o.key for o in channel.render_digest(_digest())]
    assert all(hasattr(o.payload, "blocks") and o.summary for o in out)

    analysis = channel.render_analysis(_digest().entries[0])
    assert [o.key for o in analysis][:2] == ["root", "2601.00001#0"]

    answer = channel.render_answer(Answer(arxiv_id="2601.00001", text="**Yes.**", model="m"))
    assert [o.key for o in answer] == [f"answer#{j}" for j in range(len(answer))]


async def test_socket_mode_slash_command_is_acked(fake: FakeSlack) -> None:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
    from slack_bolt.async_app import AsyncApp

    client = make_slack_client(fake.token, fake.url + "/api/")
    app = AsyncApp(client=client)
    channel = SlackChannel(client)
    posted = asyncio.Event()

    @app.command("/analyze")
    async def analyze(ack, command) -> None:  # noqa: ANN001 - bolt injects by name
        await ack(f"正在分析 {command['text']} …")
        # After the ack: the slow part (here just one post) runs while Slack is already happy.
        await channel.send(command["channel_id"], msg("root"), None, key="root")
        posted.set()

    form = dict(
        parse_qsl(
            (FIXTURES / "slash_command_body_docs_example.txt").read_text(), keep_blank_values=True
        )
    )
    form.update(
        command="/analyze",
        text="2408.00714",
        channel_id=CHAT,
        team_id=fake.team_id,
        response_url=f"{fake.url}/response_url",
        api_app_id=fake.app_id,
    )

    handler = AsyncSocketModeHandler(app, app_token=fake.app_token)
    try:
        await asyncio.wait_for(handler.connect_async(), 3)
        envelope_id = await fake.push_envelope("slash_commands", form, envelope_id="env-1")
        ack = await fake.wait_for_ack(envelope_id, within=3)
        await asyncio.wait_for(posted.wait(), 3)
    finally:
        await handler.close_async()

    assert ack["envelope_id"] == "env-1"
    assert ack["payload"]["text"] == "正在分析 2408.00714 …"
    assert fake.api_calls("apps.connections.open") == 1
    assert fake.api_calls("auth.test") == 1
    # The app token went to apps.connections.open only, never to the Web API calls.
    for request in fake.requests:
        auth = request.headers.get("Authorization", "")
        expected = fake.app_token if request.path == "/api/apps.connections.open" else fake.token
        if request.path.startswith("/api/"):
            assert auth == f"Bearer {expected}"
    assert [m["metadata"]["event_payload"]["key"] for m in fake.messages(CHAT)] == ["root"]
    assert json.dumps(form)  # the fixture-derived payload is plain JSON
