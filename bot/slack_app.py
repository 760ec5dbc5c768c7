"""Bolt listeners: turn Slack payloads into `assistant.Request`s, nothing more.

A 👍/👎 press on a deep dive (`block_actions`) is acknowledged at once, counted once per
person, and the pressed message then shows the counts (chat.update). A press on a "which
paper do you mean?" button is acknowledged at once too; the first press answers the kept
question in the thread (`Assistant.pick`), every other one gets one line only the presser
sees.

`/analyze` is acknowledged at once (the work runs after `ack()`, never inside it) with the
flow's opening line; the analysis then goes into a thread of its own, and the result line is
shown only to the requester (ephemeral, or the slash command's response_url). Any message in
a thread the bot started, and an @mention there, is a question: answered once per message
(Slack redelivers; both `message` and `app_mention` fire for one mention) by the one flow in
`bot.assistant`, which posts in the thread through the ledger. The bot never answers itself
or other bots, and ignores edits and deletions.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.assistant import (
    ANALYZE,
    DIGEST,
    PICK_STALE,
    RESTARTING,
    UNRECORDED,
    Assistant,
    Request,
)
from bot.channels.base import DeliveryError
from bot.channels.slack import SlackChannel, send_to_response_url
from bot.history import safe_link, slack_mrkdwn
from digest_core.render.slack import PICK_ACTION, RATE_DOWN, RATE_UP, escape, parse_pick_value

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], Any]

_MENTION = re.compile(r"<@[A-Z0-9]+>")
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
        # Named, or Bolt names the app after its caller's file by walking the whole stack with
        # inspect.stack(): ~0.1 s of CPU for each app built.
        name="digestbot",
        client=channel.client,
        signing_secret=signing_secret or "socket-mode-unused",
        request_verification_enabled=signing_secret is not None,
        # Bolt's own middleware drops events from this bot; other bots are dropped below.
        ignoring_self_events_enabled=True,
    )

    @app.command("/analyze")
    async def on_analyze(ack: Any, body: dict[str, Any]) -> None:
        # The opening line needs no LLM and no post: a refusal, bad input or "Analysing…" is
        # the acknowledgement itself; the work runs after it, never inside it.
        req = _slash_request(body)
        opening = await assistant.opening(req)
        key = f"slack-cmd:{req.message}"
        response_url = body.get("response_url")
        if opening.proceed:
            # Recorded before the acknowledgement, so a crash after it leaves work to finish.
            try:
                fresh = await assistant.journal.admit(key, req, {"response_url": response_url})
            except Exception:
                log.exception("slack %s: request not recorded", req.chat)
                await ack(escape(UNRECORDED))
                return
            if not fresh:
                await ack()
                return
        await ack(escape(opening.line))
        if opening.proceed:
            spawn(assistant.journal.run(key, _analyze(channel, assistant, req, response_url)))

    @app.command("/digest")
    async def on_digest(ack: Any, body: dict[str, Any]) -> None:
        # Acknowledged at once; the reply lines go to the requester alone, and a change is
        # announced in the channel by the flow (bot.assistant, bot.team).
        req = _slash_request(body, command=DIGEST)
        opening = await assistant.opening(req)
        await ack(escape(opening.line))
        if opening.proceed:
            spawn(_analyze(channel, assistant, req, body.get("response_url")))

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
        if not text or isinstance(assistant.parse(text), str):
            return
        req = Request(
            "slack",
            event["channel"],
            event.get("user") or "?",
            text,
            message=str(event.get("ts")),
            command=ANALYZE,
            team=body.get("team_id"),
            private=True,
            # The mention's own thread shows the analysis's stage (assistant.threads.setStatus).
            status_thread=str(event.get("ts")),
        )
        key = f"slack-msg:{req.chat}:{req.message}"
        try:
            if not await assistant.journal.admit(key, req):
                return
        except Exception:
            log.exception("slack %s: request not recorded", req.chat)
            await _ephemeral(channel, req.chat, req.user, escape(UNRECORDED))
            return
        spawn(assistant.journal.run(key, _analyze(channel, assistant, req, None)))

    @app.action(re.compile(f"^({RATE_UP}|{RATE_DOWN})$"))
    async def on_rate(ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        # A 👍/👎 press (block_actions, HTTP or Socket Mode): acknowledged first, counted after.
        await ack()
        spawn(_rate(channel, assistant, body, action))

    @app.action(re.compile(f"^{PICK_ACTION}_[0-9]+$"))
    async def on_pick(ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        # A "which paper?" press: acknowledged first (within Slack's 3 s), served after.
        await ack()
        spawn(_pick(channel, assistant, spawn, body, action))

    return app


def slack_resumers(channel: SlackChannel, assistant: Assistant) -> tuple[Any, Any]:
    """How `serve` finishes, or reports, a Slack request cut off by a crash (bot.journal)."""

    async def resume(req: Request, extra: dict[str, Any]) -> None:
        if req.private:
            await _analyze(channel, assistant, req, extra.get("response_url"))
        else:
            await assistant.handle(channel, req)

    async def tell(req: Request, extra: dict[str, Any], line: str) -> None:
        if req.private:
            await _ephemeral(channel, req.chat, req.user, escape(line), extra.get("response_url"))
        else:
            await assistant.tell(channel, req, line)

    return resume, tell


async def _rate(
    channel: SlackChannel, assistant: Assistant, body: dict[str, Any], action: dict[str, Any]
) -> None:
    """Count one press and show the new counts on the pressed message. The press is named by
    its message, person and `action_ts`, so a redelivered envelope counts once."""
    message = body.get("message") or {}
    container = body.get("container") or {}
    chat = (body.get("channel") or {}).get("id") or container.get("channel_id")
    ts = message.get("ts") or container.get("message_ts")
    user = (body.get("user") or {}).get("id")
    arxiv_id = str(action.get("value") or "")
    if not chat or not ts or not user or not arxiv_id:
        log.warning("slack: a rating press without channel, message, user or paper was ignored")
        return
    try:
        vote = await assistant.press(
            "slack",
            chat,
            user,
            arxiv_id,
            action.get("action_id") == RATE_UP,
            event_key=f"slack-press:{chat}:{ts}:{user}:{action.get('action_ts')}",
            team=(body.get("team") or {}).get("id"),
        )
    except Exception:  # the database cannot be written: the presser is told so
        log.exception("slack %s: a rating press not recorded", chat)
        thread = message.get("thread_ts") or container.get("thread_ts")
        try:
            await channel.post_ephemeral(chat, user, escape(UNRECORDED), thread=thread)
        except DeliveryError as exc:
            log.warning("slack %s: the presser could not be told: %s", chat, exc.reason)
        return
    blocks = message.get("blocks")
    if vote is None or not isinstance(blocks, list):
        return

    async def update(up: int, down: int) -> None:
        await channel.set_rating_counts(
            chat, ts, str(message.get("text") or ""), blocks, arxiv_id, up, down
        )

    await assistant.show_counts("slack", chat, ts, arxiv_id, update)


async def _pick(
    channel: SlackChannel,
    assistant: Assistant,
    spawn: Spawn,
    body: dict[str, Any],
    action: dict[str, Any],
) -> None:
    """Serve one press on a "which paper?" button. The press is named by its message,
    person and `action_ts`, so a redelivered envelope is served once; the answer runs
    through the journal like a typed question."""
    message = body.get("message") or {}
    container = body.get("container") or {}
    chat = (body.get("channel") or {}).get("id") or container.get("channel_id")
    ts = message.get("ts") or container.get("message_ts")
    thread = message.get("thread_ts") or container.get("thread_ts")
    user = (body.get("user") or {}).get("id")
    parsed = parse_pick_value(str(action.get("value") or ""))
    if not chat or not user:
        log.warning("slack: a paper button press without channel or user was ignored")
        return
    line: str | None = PICK_STALE
    if ts and parsed is not None:
        name = (body.get("user") or {}).get("username")
        picked = await assistant.pick(
            "slack",
            chat,
            user,
            *parsed,
            message=str(ts),
            event_key=f"slack-press:{chat}:{ts}:{user}:{action.get('action_ts')}",
            team=(body.get("team") or {}).get("id"),
            user_name=f"@{name}" if name else None,
        )
        line = picked.line
        if picked.request is not None:
            req, line = picked.request, None  # the chosen paper and the answer speak for it
            if not await assistant.start_pick(channel, req, f"slack-pick:{req.text}", spawn):
                line = UNRECORDED
    if line:
        try:
            await channel.post_ephemeral(chat, user, escape(line), thread=thread)
        except DeliveryError as exc:
            log.warning("slack %s: the presser could not be told: %s", chat, exc.reason)


def _slash_request(body: dict[str, Any], command: str = ANALYZE) -> Request:
    return Request(
        "slack",
        body.get("channel_id") or "",
        body.get("user_id") or "?",
        (body.get("text") or "").strip(),
        message=str(body.get("trigger_id") or uuid.uuid4().hex),
        command=command,
        team=body.get("team_id"),
        private=True,  # Slack gives a slash command a line only the requester sees
        user_name=f"@{body['user_name']}" if body.get("user_name") else None,
    )


async def _analyze(
    channel: SlackChannel,
    assistant: Assistant,
    req: Request,
    response_url: str | None,
) -> None:
    """Run a slash command (/analyze, /digest); its lines go to the requester alone, with a
    link to the thread where there is one."""

    async def tell(line: str) -> None:
        await _ephemeral(channel, req.chat, req.user, escape(line), response_url)

    try:
        done = await assistant.handle(channel, req, opened=True, tell=tell)
    except asyncio.CancelledError:  # shutdown ran out of time: say so, then stop
        await asyncio.wait_for(
            _ephemeral(channel, req.chat, req.user, escape(RESTARTING), response_url), 5
        )
        raise
    # A listing (search results) comes with its links, as mrkdwn; a line is plain text.
    lines = [
        escape(line) if isinstance(line, str) else slack_mrkdwn(line)
        for line in done.private
        if line
    ]
    if lines and done.thread:
        link = await channel.permalink(req.chat, done.thread)
        lines[-1] += f" — <{link}|open the thread>" if safe_link(link) else ""
    for line in lines:
        await _ephemeral(channel, req.chat, req.user, line, response_url)


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
    req = Request(
        "slack",
        chat,
        event.get("user") or "?",
        _MENTION.sub("", event.get("text") or "").strip(),
        message=str(ts),
        reply_to=thread_ts,
        thread=thread,
        team=body.get("team_id"),
    )
    # One answer per user message, whatever Slack redelivers and whichever event names it.
    key = f"slack-msg:{chat}:{ts}"
    try:
        if not await assistant.journal.admit(key, req):
            return
    except Exception:
        log.exception("slack %s: question not recorded", chat)
        await assistant.say_directly(channel, req, UNRECORDED)
        return
    spawn(assistant.journal.run(key, assistant.handle(channel, req)))


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
    except Exception as exc:  # whatever Slack answered (an HTML page…), response_url is next
        log.warning("slack %s: ephemeral line not delivered: %s", chat, type(exc).__name__)
    # response_url arrives inside a signed (or Socket Mode) request, so it is Slack's own.
    if response_url and _RESPONSE_URL.match(response_url):
        try:
            await send_to_response_url(response_url, text)
        except Exception as exc:  # the last way to reach the requester; say it failed
            log.warning("slack %s: response_url not reachable: %s", chat, type(exc).__name__)
