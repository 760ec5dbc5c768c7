"""Bolt listeners: turn Slack events into assistant calls, nothing more.

`/analyze` is acknowledged at once (the work runs after `ack()`, never inside it) with an
ephemeral line naming the paper; the analysis then goes into a thread of its own. Any message
in a thread the bot started, and an @mention there, is a question: answered once per message
(Slack redelivers; both `message` and `app_mention` fire for one mention), in the thread,
behind a placeholder that the answer replaces. The bot never answers itself or other bots,
and ignores edits and deletions.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.assistant import FAILED_ANALYSIS, FAILED_ANSWER, NOT_ENABLED, RESTARTING, Assistant
from bot.channels.base import DeliveryError
from bot.channels.slack import SlackChannel
from bot.service import Destination
from digest_core.render.slack import SlackMessage, escape

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], Any]

THINKING = "🤔 Reading the paper…"
_MENTION = re.compile(r"<@[A-Z0-9]+>")
_SAFE_LINK = re.compile(r"^https://[A-Za-z0-9.-]+/[A-Za-z0-9/._-]*$")
_QUESTION_SUBTYPES = (None, "thread_broadcast", "file_share")
_RESPONSE_URL = re.compile(r"^https?://[^\s]+$")


class _ClientGivenFilter(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment and warns that it is unused when a
    client is given; the client (with our retry policy) carries that same token."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("As you gave `client` as well")


logging.getLogger("slack_bolt.AsyncApp").addFilter(_ClientGivenFilter())


def build_slack_app(
    channel: SlackChannel,
    assistant: Assistant,
    spawn: Spawn,
    *,
    signing_secret: str | None,
) -> AsyncApp:
    """The Bolt app. `spawn` runs slow work as a tracked task, so shutdown can drain it."""
    app = AsyncApp(
        client=channel.client,
        signing_secret=signing_secret or "socket-mode-unused",
        request_verification_enabled=signing_secret is not None,
        # Bolt's own middleware drops events from this bot; other bots are dropped below.
        ignoring_self_events_enabled=True,
    )

    @app.command("/analyze")
    async def on_analyze(ack: Any, body: dict[str, Any]) -> None:
        # The allow-list needs no I/O: a workspace that may not use the bot is told so in the
        # acknowledgement itself, not "Analysing…" first.
        if not assistant.allowed("slack", team=body.get("team_id"), chat=body.get("channel_id")):
            await ack(escape(f"⚠️ {NOT_ENABLED}"))
            return
        text = (body.get("text") or "").strip()
        if not text:
            await ack("Usage: /analyze ARXIV_ID_OR_URL  (e.g. /analyze 2602.14941)")
            return
        parsed = assistant.parse(text)
        if isinstance(parsed, str):
            await ack(escape(f"⚠️ {parsed}"))
            return
        title = await assistant.known_title(parsed)
        await ack(escape(f"🔎 Analysing arXiv:{parsed}" + (f" — {title}" if title else "") + " …"))
        spawn(_analyze(channel, assistant, body, parsed))

    @app.event("message")
    async def on_message(event: dict[str, Any], body: dict[str, Any]) -> None:
        await _question(channel, assistant, spawn, event, body)

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], body: dict[str, Any]) -> None:
        if event.get("thread_ts"):
            await _question(channel, assistant, spawn, event, body)
            return
        # A mention outside a thread with an arXiv ID in it is a request for an analysis.
        text = _MENTION.sub("", event.get("text") or "").strip()
        parsed = assistant.parse(text) if text else "empty"
        if isinstance(parsed, str):
            return
        if not await assistant.store.first_sight(
            f"slack-msg:{event.get('channel')}:{event.get('ts')}"
        ):
            return
        spawn(
            _analyze(
                channel,
                assistant,
                {
                    "channel_id": event["channel"],
                    "user_id": event.get("user"),
                    "team_id": body.get("team_id"),
                },
                parsed,
            )
        )

    return app


async def _analyze(
    channel: SlackChannel, assistant: Assistant, body: dict[str, Any], aid: Any
) -> None:
    try:
        await _analyze_steps(channel, assistant, body, aid)
    except asyncio.CancelledError:  # shutdown ran out of time: say so, then stop
        user = body.get("user_id") or "?"
        await asyncio.wait_for(
            _ephemeral(
                channel, body["channel_id"], user, escape(RESTARTING), body.get("response_url")
            ),
            5,
        )
        raise
    except Exception:
        log.exception("slack %s: analysis of %s failed", body.get("channel_id"), aid)
        user = body.get("user_id") or "?"
        await _ephemeral(
            channel, body["channel_id"], user, escape(FAILED_ANALYSIS), body.get("response_url")
        )


async def _analyze_steps(
    channel: SlackChannel, assistant: Assistant, body: dict[str, Any], aid: Any
) -> None:
    chat, user, team = body["channel_id"], body.get("user_id") or "?", body.get("team_id")
    reply_to = body.get("response_url")
    refusal = await assistant.admit("slack", user, team=team, chat=chat, paper=aid)
    if refusal is not None:
        await _ephemeral(channel, chat, user, escape(f"⚠️ {refusal}"), reply_to)
        return
    outcome = await assistant.analyze(Destination(channel, chat), aid)
    line = escape(("✅ " if outcome.ok else "⚠️ ") + outcome.line)
    if outcome.thread:
        link = await _permalink(channel, chat, outcome.thread)
        line += f" — <{link}|open the thread>" if link and _SAFE_LINK.match(link) else ""
    await _ephemeral(channel, chat, user, line, reply_to)


async def _question(
    channel: SlackChannel,
    assistant: Assistant,
    spawn: Spawn,
    event: dict[str, Any],
    body: dict[str, Any],
) -> None:
    # A reply also sent to the channel (thread_broadcast) or with a file is still a question;
    # edits, deletions, joins, and every bot (this one included) are not.
    if (
        event.get("subtype") not in _QUESTION_SUBTYPES
        or event.get("bot_id")
        or event.get("bot_profile")
    ):
        return  # edits, deletions, joins, and every bot (this one included)
    thread_ts, ts, chat = event.get("thread_ts"), event.get("ts"), event.get("channel")
    if not thread_ts or thread_ts == ts or not chat:
        return  # only replies inside a thread are questions
    thread = await assistant.thread_of("slack", chat, thread_ts)
    if thread is None:
        return  # a thread the bot did not start
    # One answer per user message, whatever Slack redelivers and whichever event names it.
    if not await assistant.store.first_sight(f"slack-msg:{chat}:{ts}"):
        return
    spawn(_answer(channel, assistant, event, body, thread))


async def _answer(
    channel: SlackChannel,
    assistant: Assistant,
    event: dict[str, Any],
    body: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    chat, thread_ts, user = event["channel"], event["thread_ts"], event.get("user") or "?"
    question = _MENTION.sub("", event.get("text") or "").strip()
    if not question:
        return
    try:
        refusal = await assistant.admit("slack", user, team=body.get("team_id"), chat=chat)
        if refusal is not None:
            await channel.send(chat, SlackMessage(escape(refusal), _text_block(refusal)), thread_ts)
            return
        target = await assistant.which_paper(thread, question)
        if isinstance(target, list):
            ask = await assistant.ask_which("slack", chat, thread_ts, question, target)
            await channel.send(chat, SlackMessage(escape(ask)[:300], _text_block(ask)), thread_ts)
            return
        placeholder = await channel.send(
            chat, SlackMessage(THINKING, _text_block(THINKING)), thread_ts
        )
        try:
            answer = await assistant.answer("slack", chat, thread_ts, target, question)
        except Exception:
            # Never leave "Reading the paper…" standing: say the answer failed, in its place.
            log.exception("slack %s: answering failed", chat)
            await channel.update(
                chat, placeholder, SlackMessage(FAILED_ANSWER, _text_block(FAILED_ANSWER))
            )
            return
        parts = channel.render_answer(answer)
        await channel.update(chat, placeholder, parts[0].payload)
        for part in parts[1:]:
            await channel.send(chat, part.payload, thread_ts)
    except DeliveryError as exc:
        log.error("slack %s: answer not delivered: %s", chat, exc.reason)
    except asyncio.CancelledError:  # shutdown ran out of time: say so, then stop
        await asyncio.wait_for(_quiet_send(channel, chat, RESTARTING, thread_ts), 5)
        raise
    except Exception:
        log.exception("slack %s: answering failed", chat)
        try:
            await channel.send(
                chat, SlackMessage(FAILED_ANSWER, _text_block(FAILED_ANSWER)), thread_ts
            )
        except DeliveryError:
            pass  # nothing more can reach the thread


async def _quiet_send(channel: SlackChannel, chat: str, text: str, thread_ts: str) -> None:
    try:
        await channel.send(chat, SlackMessage(escape(text), _text_block(text)), thread_ts)
    except DeliveryError:
        pass  # the last word could not be posted either; it is in the log


def _text_block(text: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": escape(text)[:2900], "verbatim": True},
        }
    ]


async def _ephemeral(
    channel: SlackChannel, chat: str, user: str, text: str, response_url: str | None = None
) -> None:
    """A line only the requester sees. Where the bot cannot post (not in the channel), the
    slash command's own response_url still reaches the requester."""
    try:
        await channel.post_ephemeral(chat, user, text)
        return
    except DeliveryError as exc:
        log.warning("slack %s: ephemeral line not delivered: %s", chat, exc.reason)
    # response_url arrives inside a signed (or Socket Mode) request, so it is Slack's own.
    if response_url and _RESPONSE_URL.match(response_url):
        try:
            await AsyncWebhookClient(response_url).send(text=text, response_type="ephemeral")
        except Exception as exc:  # the last way to reach the requester; say it failed
            log.warning("slack %s: response_url not reachable: %s", chat, type(exc).__name__)


async def _permalink(channel: SlackChannel, chat: str, ts: str) -> str | None:
    try:
        answer = await channel.client.chat_getPermalink(channel=chat, message_ts=ts)
        return answer.get("permalink")
    except Exception:  # a link is a convenience; the thread exists either way
        return None
