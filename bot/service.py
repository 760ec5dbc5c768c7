"""The one place where core, store and channels meet.

Delivery walks the messages a channel renders and passes each through the ledger: record the
intent, post, record the result. A re-run skips what was sent, a crashed run resumes into the
same thread, and a post whose outcome is unknown is looked for before it is sent again (on
platforms that can be searched). One destination's failure never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from typing import Any

from bot.channels.base import Channel, DeliveryError, Outgoing
from digest_core.config import Settings
from digest_core.models import Digest
from digest_core.store import Store

log = logging.getLogger(__name__)

LOCAL_PLATFORMS = ("console", "markdown")
SEND_ATTEMPTS = 3


@dataclass(frozen=True)
class Destination:
    channel: Channel
    chat: str

    @property
    def label(self) -> str:
        return f"{self.channel.platform}:{self.chat}"


@dataclass(frozen=True)
class Delivered:
    destination: str
    ok: bool
    posted: int
    skipped: int
    error: str | None = None


class UnknownDestination(ValueError):
    """`--to` names a destination that does not exist or is not configured (one line)."""


def parse_destinations(
    to: str | None, settings: Settings, *, dry_run: bool = False
) -> list[Destination]:
    """`--to console,slack,telegram`; without it every configured platform, or the console."""
    from bot.channels.console import ConsoleChannel, MarkdownFileChannel

    if dry_run:
        return [Destination(ConsoleChannel(), "stdout")]
    names = [n.strip() for n in to.split(",") if n.strip()] if to else []
    for name in names:
        if name not in ("console", "slack", "telegram", "markdown"):
            raise UnknownDestination(
                f"--to: unknown destination {name!r} (console, slack, telegram, markdown)"
            )
    if not names:
        names = [
            n
            for n, on in (("slack", settings.slack.channels), ("telegram", settings.telegram.chats))
            if on
        ]
        names = names or ["console"]
    out: list[Destination] = []
    for name in names:
        if name == "console":
            out.append(Destination(ConsoleChannel(), "stdout"))
        elif name == "markdown":
            out.append(Destination(MarkdownFileChannel(), "exports"))
        elif name == "slack":
            out.extend(_slack_destinations(settings))
        elif name == "telegram":
            out.extend(_telegram_destinations(settings))
    return out


def _slack_destinations(settings: Settings) -> list[Destination]:
    from bot.channels.slack import SlackChannel, make_slack_client

    if not settings.slack.bot_token or not settings.slack.channels:
        raise UnknownDestination("--to slack: set SLACK_BOT_TOKEN and SLACK_CHANNELS")
    client = make_slack_client(settings.slack.bot_token.get(), settings.slack.api_url)
    channel = SlackChannel(client, settings.digest.language)
    return [Destination(channel, c) for c in settings.slack.channels]


def _telegram_destinations(settings: Settings) -> list[Destination]:
    from bot.channels.telegram import TelegramChannel, make_bot

    if not settings.telegram.bot_token or not settings.telegram.chats:
        raise UnknownDestination("--to telegram: set TELEGRAM_BOT_TOKEN and TELEGRAM_CHATS")
    bot = make_bot(settings.telegram.bot_token.get(), settings.telegram.api_url)
    channel = TelegramChannel(bot, settings.digest.language)
    return [Destination(channel, c) for c in settings.telegram.chats]


async def deliver_digest(pipeline: Any, digest: Digest, destinations: list[Destination]) -> int:
    """Deliver to every destination; exit code 0 when all of them got the whole digest."""
    results = []
    for dest in destinations:
        # An explicit run is the operator's retry: destinations that failed permanently before
        # (the bot was not in the channel yet) are tried again.
        results.append(
            await deliver(pipeline.store, dest, digest, pipeline.settings, retry_permanent=True)
        )
    await _close_channels(destinations)
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"digestbot: {r.destination}: not delivered: {r.error}", file=sys.stderr)
    return 1 if failed else 0


async def _close_channels(destinations: list[Destination]) -> None:
    seen: set[int] = set()
    for dest in destinations:
        close = getattr(dest.channel, "aclose", None)
        if close is not None and id(dest.channel) not in seen:
            seen.add(id(dest.channel))
            await close()


async def deliver(
    store: Store,
    dest: Destination,
    digest: Digest,
    settings: Settings,
    *,
    retry_permanent: bool = False,
) -> Delivered:
    channel = dest.channel
    if (
        digest.empty
        and not settings.digest.empty_day_notice
        and channel.platform not in LOCAL_PLATFORMS
    ):
        log.info("no papers for %s: nothing posted to %s", digest.date, dest.label)
        return Delivered(dest.label, True, 0, 0)
    messages = channel.render_digest(digest)
    if channel.platform in LOCAL_PLATFORMS:
        for out in messages:
            await channel.send(dest.chat, out.payload, None, key=out.key)
        return Delivered(dest.label, True, len(messages), 0)
    return await post_thread(
        store,
        dest,
        f"digest:{digest.date}",
        messages,
        kind="digest",
        papers=[e.paper.arxiv_id for e in digest.entries],
        retry_permanent=retry_permanent,
    )


async def post_thread(
    store: Store,
    dest: Destination,
    scope: str,
    messages: list[Outgoing],
    *,
    kind: str,
    papers: list[str],
    thread: str | None = None,
    retry_pause: float = 1.0,
    retry_permanent: bool = False,
) -> Delivered:
    """Post a root and its replies exactly once through the ledger (or only replies, into an
    existing `thread`). Returns what happened; never raises DeliveryError.

    A destination that failed permanently (not_in_channel, bot kicked) is not tried again
    unless `retry_permanent`: an operator re-running `digestbot digest` after fixing it."""
    channel, chat = dest.channel, dest.chat
    state = await store.post_state(scope, channel.platform, chat)
    posted = skipped = 0
    for seq, out in enumerate(messages):
        row = state.get(out.key)
        if row and row["status"] == "sent":
            skipped += 1
            if seq == 0 and thread is None:
                thread = row["message_ref"]
            continue
        permanent = (
            row and row["status"] == "failed" and (row["error"] or "").startswith("permanent:")
        )
        if permanent and not retry_permanent:
            return Delivered(
                dest.label, False, posted, skipped, row["error"].removeprefix("permanent: ")
            )
        reply_to = thread if (seq > 0 or thread is not None) else None
        ref = None
        if row and row["status"] in ("intent", "failed"):
            ref = await _find_previous(channel, chat, reply_to, out.key)
        if ref is None:
            await store.record_post(
                scope,
                channel.platform,
                chat,
                out.key,
                seq=seq,
                status="intent",
                thread_ref=reply_to,
            )
            try:
                ref = await _send_once(channel, chat, out, reply_to, retry_pause)
            except DeliveryError as exc:
                tag = "permanent" if exc.permanent else "transient"
                await store.record_post(
                    scope,
                    channel.platform,
                    chat,
                    out.key,
                    seq=seq,
                    status="failed",
                    thread_ref=reply_to,
                    error=f"{tag}: {exc.reason}",
                )
                log.error("%s: %s post failed (%s): %s", dest.label, out.summary, tag, exc.reason)
                return Delivered(dest.label, False, posted, skipped, exc.reason)
            posted += 1
        else:
            skipped += 1
        await store.record_post(
            scope,
            channel.platform,
            chat,
            out.key,
            seq=seq,
            status="sent",
            thread_ref=reply_to,
            message_ref=ref,
        )
        if seq == 0 and thread is None:
            thread = ref
            await store.save_thread(channel.platform, chat, ref, kind, scope, papers)
    return Delivered(dest.label, True, posted, skipped)


async def _send_once(
    channel: Channel, chat: str, out: Outgoing, thread: str | None, pause: float
) -> str:
    """Send, and after a transient failure look for the message before sending it again: a
    5xx or a dropped connection can come after the platform stored the post. A platform that
    cannot be searched (Telegram) is tried once more only, so an unknown outcome costs at most
    one duplicate, never a run of them."""
    attempts = SEND_ATTEMPTS if hasattr(channel, "find_posted") else 2
    for attempt in range(attempts):
        try:
            return await channel.send(chat, out.payload, thread, key=out.key)
        except DeliveryError as exc:
            if exc.permanent or attempt == attempts - 1:
                raise
            log.warning(
                "%s: transient failure (%s); checking, then trying again", out.summary, exc.reason
            )
            await asyncio.sleep(pause * (2**attempt))
            found = await _find_previous(channel, chat, thread, out.key)
            if found is not None:
                return found
    raise AssertionError("unreachable")


async def _find_previous(channel: Channel, chat: str, thread: str | None, key: str) -> str | None:
    """A post recorded as intended but not confirmed may have landed: look before resending."""
    finder = getattr(channel, "find_posted", None)
    if finder is None:
        return None
    try:
        return await finder(chat, thread, key)
    except DeliveryError as exc:
        log.warning("could not check for an earlier post of %s: %s", key, exc.reason)
        return None
