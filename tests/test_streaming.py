"""Streamed thread answers: the real openai client reading SSE from the fake LLM, the real
slack_sdk and python-telegram-bot clients against FakeSlack and FakeTelegram, and the one
conversation flow (`Assistant.handle`) in between.

What must hold: the platform's streaming calls come in order; the final message(s) are exactly
what the unstreamed path posts (same render, same split, same ledger entries); a refused
streaming method means a normal post and nothing odd; Telegram edits are throttled.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes.slack import FakeSlack
from fakes.telegram import FakeTelegram
from fakes.world import World, fast_config, platform_channels, research_responder

from bot.assistant import Assistant, Request
from bot.channels.slack import SlackChannel
from bot.channels.streaming import STREAM_INTERVAL
from bot.channels.telegram import TelegramChannel
from bot.chatstore import PostStatus, ThreadRecord, open_pipeline
from digest_core.llm import LLMClient
from digest_core.pipeline import Pipeline

PAPER = "1605.08386"
CHANNEL = "C0DIGEST01"
TEAM = "T0TEAM001"
TG_GROUP = -100123
TG_USER = 4242  # a private chat with the bot
FIXTURES = Path(__file__).parent / "fixtures" / "openai"

# A long answer, so it streams in many pieces and, on Telegram, splits into two messages.
LONG = " ".join(
    f"Point {i}: the heat-bath walk mixes fast on this fiber (Sec. 1)." for i in range(90)
)
# The model's pace and the channels' throttle, a quarter of real time: the product throttles
# at STREAM_INTERVAL (1 s); these tests drive the same ratios four times faster.
INTERVAL = STREAM_INTERVAL / 4
FIRST_TOKEN = 0.075
DURATION = 1.0
WORDS_PER_CHUNK = 4  # ~250 pieces for the long answer instead of ~1000: cheaper to parse
# The first four words, then a pause shorter than the interval: shown at once, they are all
# the first preview holds (a preview held back for an interval would hold more).
PAUSE_AFTER_FIRST = INTERVAL / 2


def spacings(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


# The throttle waits `interval` after a call returns before the next: calls arrive at least
# that far apart (a little slack for the clocks' rounding).
MIN_SPACING = INTERVAL * 0.95


def unpaced(env: Env) -> None:
    """The model writes its answer at once, still in many pieces: for tests of what happens
    around a stream (a refusal, a retry), not of its pace."""
    env.world.llm.stream_first_token = env.world.llm.stream_duration = 0.0
    env.world.llm.stream_pause_after_first = 0.0


def long_responder(body: dict[str, Any]) -> str:
    answer = research_responder()(body)
    return f"{answer}\n\n{LONG}" if answer.startswith("Answer to:") else answer


@dataclass
class Env:
    world: World
    pipeline: Pipeline
    assistant: Assistant
    slack: FakeSlack
    tg: FakeTelegram
    slack_channel: SlackChannel
    tg_channel: TelegramChannel
    n: int = 0

    async def slack_thread(self) -> ThreadRecord:
        """A bot thread in Slack (its root posted in the fake) about PAPER."""
        root = await self.slack_channel.send(CHANNEL, _line("digest"), None)
        thread = ThreadRecord("slack", CHANNEL, root, "digest", f"digest:{root}", (PAPER,))
        await self.assistant.chat.save_thread(thread)
        return thread

    async def ask_slack(self, thread: ThreadRecord, text: str) -> Request:
        self.n += 1
        person = await self.slack_channel.send(CHANNEL, _line(text), thread.thread_ref)
        req = Request(
            "slack",
            CHANNEL,
            "U1",
            text,
            person,
            reply_to=thread.thread_ref,
            thread=thread,
            team=TEAM,
        )
        await self.assistant.handle(self.slack_channel, req)
        return req

    async def tg_thread(self, chat: int) -> ThreadRecord:
        root = await self.tg_channel.send(str(chat), "digest", None)
        thread = ThreadRecord(
            "telegram", str(chat), root, "digest", f"digest:{chat}:{root}", (PAPER,)
        )
        await self.assistant.chat.save_thread(thread)
        return thread

    async def ask_tg(self, chat: int, thread: ThreadRecord, text: str) -> Request:
        message = self.tg.push_message(chat, text, reply_to_message_id=int(thread.thread_ref))
        mid = str(message["message"]["message_id"])
        req = Request(
            "telegram",
            str(chat),
            "7",
            text,
            mid,
            reply_to=mid,
            thread=thread,
            replied_to=thread.thread_ref,
        )
        await self.assistant.handle(self.tg_channel, req)
        return req

    async def ledger(self, req: Request) -> list[Any]:
        state = await self.assistant.chat.post_state(f"reply:{req.message}", req.platform, req.chat)
        return sorted(state.values(), key=lambda r: r.seq)


def _line(text: str) -> Any:
    from bot.channels.slack import line_message

    return line_message(text)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    world = World(tmp_path)
    world.llm.responder = long_responder
    world.llm.stream_first_token = FIRST_TOKEN
    world.llm.stream_duration = DURATION
    world.llm.stream_words_per_chunk = WORDS_PER_CHUNK
    world.llm.stream_pause_after_first = PAUSE_AFTER_FIRST
    async with world, FakeSlack() as slack:
        tg = FakeTelegram()
        tg.add_chat(TG_GROUP)
        tg.add_chat(TG_USER, type="private", title="Ada")
        await tg.start()
        world.config.write_text(fast_config(), encoding="utf-8")
        pipeline = await open_pipeline(world.settings(DIGEST_DB=":memory:"))
        try:
            async with platform_channels(slack, tg) as (slack_channel, tg_channel):
                slack_channel.stream_interval = tg_channel.stream_interval = INTERVAL
                assistant = Assistant(pipeline, pipeline.settings)
                yield Env(world, pipeline, assistant, slack, tg, slack_channel, tg_channel)
        finally:
            await pipeline.aclose()
            await tg.stop()


def _final(slack: FakeSlack, ts: str) -> dict[str, Any]:
    (message,) = [m for m in slack.messages(CHANNEL) if m["ts"] == ts]
    return {"text": message["text"], "blocks": message["blocks"]}


# == the LLM client ===========================================================================


async def test_a_recorded_stream_is_read_piece_by_piece_and_its_usage_chunk_counted(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.llm.stream_body = (FIXTURES / "stream_plain_text.sse.txt").read_bytes()
    async with world:
        llm = LLMClient(world.settings().llm)
        pieces: list[str] = []

        async def on_delta(piece: str) -> None:
            pieces.append(piece)

        try:
            result = await llm.text(
                system="s",
                user="u",
                purpose="answer",
                prompt_version="t",
                max_tokens=50,
                on_delta=on_delta,
            )
        finally:
            await llm.aclose()
    assert result.content.startswith("I'm unable to provide") and len(pieces) > 5
    assert "".join(pieces) == result.content  # the pieces are the answer, in order
    # The last chunk has `choices: []` and the usage: it is read, not tripped over.
    assert (result.prompt_tokens, result.completion_tokens) == (14, 30)
    (call,) = world.llm.calls
    assert call["stream"] is True and call["stream_options"] == {"include_usage": True}


async def test_a_reasoning_preamble_is_not_shown_while_streaming(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.llm.responder = lambda body: (
        "<think>\nLet me look at Sec. 2 first.\n</think>\nThe walk mixes fast."
    )
    async with world:
        llm = LLMClient(world.settings().llm)
        pieces: list[str] = []

        async def on_delta(piece: str) -> None:
            pieces.append(piece)

        try:
            result = await llm.text(
                system="s",
                user="u",
                purpose="answer",
                prompt_version="t",
                max_tokens=50,
                on_delta=on_delta,
            )
        finally:
            await llm.aclose()
    assert result.content == "The walk mixes fast."
    assert "".join(pieces) == "The walk mixes fast." and "think" not in "".join(pieces)


# == Slack ====================================================================================


async def test_slack_streams_in_the_thread_and_ends_with_the_unstreamed_render(env: Env) -> None:
    streamed_thread = await env.slack_thread()
    req = await env.ask_slack(streamed_thread, "How fast does it mix?")

    methods = [m for m, _, _ in env.slack.stream_calls]
    assert methods[0] == "chat.startStream" and methods[-1] == "chat.stopStream"
    assert set(methods[1:-1]) == {"chat.appendStream"} and len(methods) >= 3
    start = env.slack.streamed("chat.startStream")[0]
    assert start["thread_ts"] == streamed_thread.thread_ref
    assert (start["recipient_user_id"], start["recipient_team_id"]) == ("U1", TEAM)
    ts = env.slack.stream_calls[1][1]["ts"]
    # Appends are paced: no more than one per interval over the model's writing time.
    assert len(methods) - 2 <= int((FIRST_TOKEN + PAUSE_AFTER_FIRST + DURATION) / INTERVAL) + 2
    appends = [at for m, _, at in env.slack.stream_calls if m == "chat.appendStream"]
    assert min(spacings(appends)) >= MIN_SPACING
    # What was streamed is the model's text, escaped.
    streamed_text = "".join(c["text"] for p in env.slack.streamed() for c in p.get("chunks") or [])
    assert streamed_text.startswith("Answer to: How fast does it mix?")

    (entry,) = await env.ledger(req)
    assert (entry.key, entry.status, entry.message_ref) == ("answer#0", PostStatus.SENT, ts)
    streamed = _final(env.slack, ts)

    # The same question, unstreamed, in a thread of its own (same context, same answer).
    env.slack_channel.streaming = False
    plain_thread = await env.slack_thread()
    before = len(env.slack.stream_calls)
    plain_req = await env.ask_slack(plain_thread, "How fast does it mix?")
    assert len(env.slack.stream_calls) == before
    (plain_entry,) = await env.ledger(plain_req)
    assert streamed == _final(env.slack, plain_entry.message_ref)
    assert "Answer to: How fast does it mix?" in json.dumps(streamed["blocks"])

    # The placeholder gave way to the stream: the thread holds the question and the answer.
    thread = env.slack.thread(CHANNEL, streamed_thread.thread_ref)
    assert [m["ts"] for m in thread[2:]] == [ts] and len(env.slack.deleted) == 1


async def test_slack_refusing_streaming_gets_a_normal_answer_and_no_more_attempts(
    env: Env,
) -> None:
    unpaced(env)  # the pace is not what this test checks
    env.slack.refuse_streaming = "unknown_method"  # an older workspace
    thread = await env.slack_thread()
    req = await env.ask_slack(thread, "How fast does it mix?")
    assert [m for m, _, _ in env.slack.stream_calls] == ["chat.startStream"]
    (entry,) = await env.ledger(req)
    assert entry.status is PostStatus.SENT
    # The placeholder became the answer, as without streaming; nothing else was posted.
    replies = env.slack.thread(CHANNEL, thread.thread_ref)[2:]
    assert [m["ts"] for m in replies] == [entry.message_ref]
    assert "Answer to: How fast does it mix?" in json.dumps(replies[0]["blocks"])
    assert "🤔" not in json.dumps(replies[0]) and env.slack.deleted == []

    await env.ask_slack(thread, "And the diameter?")
    assert len(env.slack.stream_calls) == 1  # refused once: not asked again


async def test_slack_a_missing_scope_is_a_refusal_too(env: Env) -> None:
    unpaced(env)  # the pace is not what this test checks
    env.slack.refuse_streaming = "missing_scope"
    thread = await env.slack_thread()
    req = await env.ask_slack(thread, "How fast does it mix?")
    (entry,) = await env.ledger(req)
    assert entry.status is PostStatus.SENT and env.slack_channel.streaming is False


async def test_slack_a_retried_request_streams_and_posts_nothing_again(env: Env) -> None:
    unpaced(env)  # the pace is not what this test checks
    thread = await env.slack_thread()
    req = await env.ask_slack(thread, "How fast does it mix?")
    calls, messages = len(env.slack.stream_calls), len(env.slack.messages(CHANNEL))
    methods = [m for m, _, _ in env.slack.stream_calls]
    assert (methods[0], methods[-1]) == ("chat.startStream", "chat.stopStream")  # it streamed
    await env.assistant.handle(env.slack_channel, req)  # the same event, delivered again
    assert len(env.slack.stream_calls) == calls
    # At most the "Reading the paper…" placeholder of the retry is new; no second answer.
    new = env.slack.messages(CHANNEL)[messages:]
    assert all("Answer to" not in json.dumps(m) for m in new)


# == Telegram =================================================================================


async def test_telegram_group_edits_one_message_at_most_once_a_second(env: Env) -> None:
    thread = await env.tg_thread(TG_GROUP)
    req = await env.ask_tg(TG_GROUP, thread, "How fast does it mix?")

    entries = await env.ledger(req)
    assert len(entries) >= 2  # long: split into several messages
    assert [e.key for e in entries] == [f"answer#{j}" for j in range(len(entries))]
    assert all(e.status is PostStatus.SENT for e in entries)
    sent = env.tg.sent(TG_GROUP)
    first = next(m for m in sent if str(m["message_id"]) == entries[0].message_ref)
    assert first["edited"] and first["reply_to_message_id"] == int(req.reply_to or 0)

    # Edits while the model wrote (all but the final one), against its writing time.
    edits = env.tg.method_calls("editMessageText")
    assert len(edits) >= 3  # it did stream
    budget = int((FIRST_TOKEN + PAUSE_AFTER_FIRST + DURATION) / INTERVAL) + 1
    assert len(edits) - 1 <= budget
    # At most one edit per interval while it wrote (the last edit is the final answer's).
    assert min(spacings(env.tg.call_times("editMessageText")[:-1])) >= MIN_SPACING

    # The final messages are what the unstreamed path sends.
    env.tg_channel.streaming = False
    plain_thread = await env.tg_thread(TG_GROUP)
    plain_req = await env.ask_tg(TG_GROUP, plain_thread, "How fast does it mix?")
    plain = await env.ledger(plain_req)
    assert len(env.tg.method_calls("editMessageText")) == len(edits)

    def texts(rows: list[Any]) -> list[str]:
        by_id = {str(m["message_id"]): m for m in env.tg.sent(TG_GROUP)}
        return [by_id[r.message_ref]["text"] for r in rows]

    assert texts(entries) == texts(plain)


async def test_telegram_private_chat_streams_a_draft_then_sends_the_answer(env: Env) -> None:
    thread = await env.tg_thread(TG_USER)
    req = await env.ask_tg(TG_USER, thread, "How fast does it mix?")
    drafts = env.tg.drafts
    assert len(drafts) >= 3 and len({d["draft_id"] for d in drafts}) == 1
    assert len(drafts) <= int((FIRST_TOKEN + PAUSE_AFTER_FIRST + DURATION) / INTERVAL) + 2
    assert min(spacings(env.tg.call_times("sendMessageDraft"))) >= MIN_SPACING
    entries = await env.ledger(req)
    assert len(entries) >= 2 and entries[0].key == "answer#0"
    sent = {str(m["message_id"]): m for m in env.tg.sent(TG_USER)}
    final = sent[entries[0].message_ref]
    assert not final["edited"] and final["reply_to_message_id"] == int(req.message)
    # Each draft showed the beginning of what was then sent.
    # The first words went out as they came, before the model had written a sentence.
    assert "Answer to: How fast does it mix?".startswith(drafts[0]["visible"])
    assert drafts[-1]["visible"].startswith("Answer to: How fast does it mix?")
    whole = "".join(sent[e.message_ref]["visible"] for e in entries)
    assert all(
        whole.replace("\n", "").startswith(d["visible"][:200].replace("\n", "")) for d in drafts
    )


async def test_telegram_refusing_drafts_sends_the_answer_normally(env: Env) -> None:
    unpaced(env)  # the pace is not what this test checks
    env.tg.refuse_drafts = True  # a Bot API server without sendMessageDraft: 404
    thread = await env.tg_thread(TG_USER)
    req = await env.ask_tg(TG_USER, thread, "How fast does it mix?")
    entries = await env.ledger(req)
    assert len(entries) >= 2 and all(e.status is PostStatus.SENT for e in entries)
    assert len(env.tg.method_calls("sendMessageDraft")) == 1 and env.tg.drafts == []
    assert env.tg.method_calls("editMessageText") == []
    # The bot sent the root and the answer's parts, nothing more.
    assert len(env.tg.sent(TG_USER)) == 1 + len(entries)
    await env.ask_tg(TG_USER, thread, "And the diameter?")
    assert len(env.tg.method_calls("sendMessageDraft")) == 1  # not asked again


async def test_channels_stream_at_most_once_a_second_unless_told_otherwise(env: Env) -> None:
    # The tests above run the throttle at INTERVAL; a channel as built for serve uses 1 s.
    fresh_slack = SlackChannel(env.slack_channel.client, "en")
    fresh_tg = TelegramChannel(env.tg_channel.bot, "en")
    assert fresh_slack.stream_interval == fresh_tg.stream_interval == STREAM_INTERVAL == 1.0
    thread = await env.tg_thread(TG_GROUP)
    stream = fresh_tg.answer_stream(str(TG_GROUP), thread.thread_ref, placeholder=None)
    assert stream is not None and stream.interval == 1.0
