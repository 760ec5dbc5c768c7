"""Lists of past papers for a chat (`/digest search`, `/digest week`, the weekly roundup):
values first, then links, then one message per platform.

`bot.team` builds a `Listing` from the stores: lines of plain text in which a paper's title
names the thread it was posted in (a thread ref, no URL yet). `linked` asks the channel for
each thread's link (Slack `chat.getPermalink`; Telegram's t.me message link, as the "seen
here before" mark of a digest does), and `render` makes the one message for the platform:
Slack mrkdwn with `<url|title>`, Telegram HTML with `<a href>`, plain text elsewhere. Every
text that came from a person or a paper is escaped for the platform, and a link is used only
when it is a plain https URL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.channels.base import Channel, Outgoing
from digest_core.render.parse import one_line, truncate

if TYPE_CHECKING:
    from bot.chatstore import ChatStore
    from bot.service import Delivered, Destination
    from digest_core.config import RetrySettings

# Slack's and Telegram's own links are plain https URLs; anything else is shown without one.
_SAFE_URL = re.compile(r"^https://[A-Za-z0-9.-]+/[A-Za-z0-9/._~%?=&+-]*$")


def safe_link(url: str | None) -> bool:
    """An https link a platform gave us (a permalink) that is safe inside `<url|…>` or href."""
    return bool(url) and _SAFE_URL.match(url or "") is not None


MAX_TITLE_CHARS = 120


@dataclass(frozen=True)
class Line:
    """`text`, then `title` (linked to `thread` once `url` is known), then `after`."""

    text: str
    title: str = ""
    after: str = ""
    thread: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class Listing:
    """A message of lines; `papers` are the arXiv IDs it is about (a reply in the roundup's
    thread may ask about them)."""

    lines: tuple[Line, ...]
    papers: tuple[str, ...] = ()

    def summary(self, key: str) -> str:
        """What the ledger records of it: the first line's start, else `key`."""
        first = self.lines[0] if self.lines else None
        return (first.text + first.title)[:80] if first else key

    def plain(self) -> str:
        """The text without markup, links written out after their titles."""
        return "\n".join(
            f"{ln.text}{ln.title}{f' <{ln.url}>' if ln.url else ''}{ln.after}" for ln in self.lines
        )


def short(title: str) -> str:
    """A title on one line, at most MAX_TITLE_CHARS (never halving an emoji)."""
    return truncate(one_line(title), MAX_TITLE_CHARS)


async def linked(listing: Listing, channel: Channel, chat: str) -> Listing:
    """The listing with each thread's link, where the platform gives one (asked together)."""
    refs = sorted({ln.thread for ln in listing.lines if ln.thread})
    if not refs:
        return listing
    found = await asyncio.gather(
        *(channel.permalink(chat, ref) for ref in refs), return_exceptions=True
    )
    urls = {
        ref: url
        for ref, url in zip(refs, found, strict=True)
        if isinstance(url, str) and safe_link(url)
    }
    return dataclasses.replace(
        listing,
        lines=tuple(
            dataclasses.replace(ln, url=urls.get(ln.thread)) if ln.thread else ln
            for ln in listing.lines
        ),
    )


def slack_mrkdwn(listing: Listing) -> str:
    """Slack mrkdwn: `& < >` escaped, titles as `<url|title>`."""
    from digest_core.render.slack import escape as esc

    out = []
    for ln in listing.lines:
        title = esc(ln.title).replace("|", "¦")
        title = f"<{ln.url}|{title}>" if ln.url and title else title
        out.append(f"{esc(ln.text)}{title}{esc(ln.after)}")
    return "\n".join(out)


def telegram_html(listing: Listing) -> str:
    """Telegram HTML: escaped text, titles as `<a href>`."""
    from digest_core.render.telegram import escape

    out = []
    for ln in listing.lines:
        title = escape(ln.title)
        if ln.url and title:
            title = f'<a href="{escape(ln.url, quote=True)}">{title}</a>'
        out.append(f"{escape(ln.text)}{title}{escape(ln.after)}")
    return "\n".join(out)


def render(channel: Channel, listing: Listing, key: str) -> Outgoing:
    """The one message of a listing on this channel's platform (`Channel.render_listing`)."""
    return channel.render_listing(listing, key)


async def post_roundup(
    store: ChatStore,
    dest: Destination,
    scope: str,
    roundup: Listing,
    retry: RetrySettings,
    *,
    thread: str | None = None,
    retry_permanent: bool = False,
) -> Delivered:
    """Post a week's roundup in `dest` through the ledger under `scope`, each paper linked to
    its thread there: the scheduled roundup (bot.scheduler) and `/digest week` (bot.assistant)."""
    from bot.service import post_thread

    roundup = await linked(roundup, dest.channel, dest.chat)
    return await post_thread(
        store,
        dest,
        scope,
        [render(dest.channel, roundup, "roundup")],
        kind="roundup",
        papers=list(roundup.papers),
        thread=thread,
        retry=retry,
        retry_permanent=retry_permanent,
    )
