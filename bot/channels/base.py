"""The small protocol every destination speaks: render messages, send one, find one again.

A channel never calls the LLM and never decides what to post: the service walks the list a
`render_*` method returns, records each message in the ledger, and calls `send` for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from digest_core.models import Answer, Digest, DigestEntry, FigureImage

if TYPE_CHECKING:
    from bot.channels.progress import AnalysisProgress
    from bot.channels.streaming import AnswerStream
    from bot.history import Listing

# A streamed answer makes at most one platform call per this many seconds: within Slack's
# Tier 4 for chat.appendStream and Telegram's "about one message per second per chat". Each
# channel carries it as `stream_interval` (tests shorten it to drive the throttle quickly).
STREAM_INTERVAL = 1.0


@dataclass(frozen=True)
class Outgoing:
    """One message to send. `key` is stable across runs so the ledger can tell what was sent.

    The first Outgoing of a digest is the root (table of contents); the rest are replies in its
    thread, in order.
    """

    key: str
    payload: Any  # platform-specific: a SlackMessage, a Telegram HTML string, plain text...
    summary: str  # a short plain line for logs and the ledger (never a secret)


class ErrorKind(StrEnum):
    """Why a post failed, as the ledger records it and delivery acts on it."""

    TRANSIENT = "transient"  # the platform or the network faltered: a later run may succeed
    PERMANENT = "permanent"  # the destination refuses (not_in_channel, bot kicked): not retried
    CONTENT = "content"  # the platform refused this message only: the thread goes on without it


class DeliveryError(Exception):
    """Sending failed after the channel's own retries.

    `permanent` errors (channel_not_found, not_in_channel, invalid_auth, bot kicked...) must not
    be retried; transient ones may be retried by a later run. `maybe_delivered` says the
    platform may have stored the message anyway (a timeout after the request was sent).
    """

    def __init__(
        self, reason: str, *, permanent: bool, maybe_delivered: bool = False, content: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.maybe_delivered = maybe_delivered
        # The platform refused this message (its blocks, its length), not the destination:
        # the messages after it can still be posted.
        self.content = content

    @property
    def kind(self) -> ErrorKind:
        if self.content:
            return ErrorKind.CONTENT
        return ErrorKind.PERMANENT if self.permanent else ErrorKind.TRANSIENT


class Channel(Protocol):
    platform: str
    # Whether `find_posted` can find a message again (Slack: by its metadata). Where it cannot
    # (Telegram), a send whose outcome is unknown is repeated at most a bounded number of times.
    searchable: bool
    buttons: bool  # whether a message can carry buttons (render_choices)

    def render_digest(self, digest: Digest) -> list[Outgoing]:
        """Root message first, then every reply in thread order."""
        ...

    def render_analysis(self, entry: DigestEntry) -> list[Outgoing]:
        """An on-demand analysis: a root naming the paper, then the deep dive as replies."""
        ...

    def render_answer(self, answer: Answer) -> list[Outgoing]:
        """A thread answer, split as the platform needs."""
        ...

    def render_line(self, text: str) -> Outgoing:
        """One short plain-text line from the bot (a refusal, "which paper?", a status line),
        escaped for the platform."""
        ...

    async def send(self, chat: str, payload: Any, thread: str | None, *, key: str) -> str:
        """Post one message, as a reply in `thread` when given. `key` is the ledger's mark of
        this post, unique per scope, that `find_posted` looks for. Returns the message's
        reference (Slack `ts`, Telegram `message_id` as a string). Raises DeliveryError."""
        ...

    async def send_image(
        self, chat: str, image: FigureImage, caption: str, thread: str | None, *, key: str
    ) -> str:
        """Post an image (a paper's key figure) with a plain-text `caption`, as a reply in
        `thread` when given; the channel escapes and shortens the caption to its platform's
        limit. Returns a reference to the post. Raises DeliveryError."""
        ...

    async def find_posted(self, chat: str, thread: str | None, key: str) -> str | None:
        """The reference of a message sent earlier with `key`, or None (always None where the
        platform cannot be searched). Raises DeliveryError."""
        ...

    async def working(self, chat: str, thread: str | None) -> str | None:
        """Show the requester that slow work began: Slack posts a placeholder in the thread and
        returns its reference, which `replace` later turns into the first message of the
        result; Telegram shows "typing…" and returns None."""
        ...

    async def replace(self, chat: str, ref: str, payload: Any) -> None:
        """Replace the content of message `ref` (a placeholder). Raises DeliveryError."""
        ...

    async def permalink(self, chat: str, ref: str) -> str | None:
        """A link to message `ref`, or None where the platform has none."""
        ...

    def render_choices(self, text: str, key: str, options: list[tuple[str, str]]) -> Outgoing:
        """The "which paper?" line with one button per (arXiv ID, label) of `options`, the
        buttons naming the kept question by `key` (where `buttons`; else the line alone)."""
        ...

    def render_listing(self, listing: Listing, key: str) -> Outgoing:
        """A listing (bot.history: search results, a week's roundup) as one message, each
        title linked to its thread where the listing has the link."""
        ...

    def answer_stream(
        self,
        chat: str,
        thread: str | None,
        *,
        placeholder: str | None,
        user: str | None = None,
        team: str | None = None,
    ) -> AnswerStream | None:
        """What shows a thread answer as it is written (bot.channels.streaming), or None
        where the answer is posted whole."""
        ...

    def analysis_progress(
        self, chat: str, *, thread: str | None, opening: tuple[str, str] | None = None
    ) -> AnalysisProgress | None:
        """What shows an analysis's stages (bot.channels.progress), or None where nothing
        can show them."""
        ...

    async def aclose(self) -> None:
        """Release the channel's HTTP client."""
        ...


class PlainText:
    """What a destination without buttons, message links or live displays (the terminal, a
    file, the tests' recording channel) answers for them: none of each. Its `render_line`
    renders the "which paper?" list, which is then answered by typing."""

    buttons = False

    def render_line(self, text: str) -> Outgoing:
        raise NotImplementedError

    async def permalink(self, chat: str, ref: str) -> str | None:
        return None

    def render_choices(self, text: str, key: str, options: list[tuple[str, str]]) -> Outgoing:
        return self.render_line(text)

    def render_listing(self, listing: Listing, key: str) -> Outgoing:
        return dataclasses.replace(self.render_line(listing.plain()), key=key)

    def answer_stream(self, chat: str, thread: str | None, **_: Any) -> None:
        return None  # the answer is posted whole

    def analysis_progress(self, chat: str, **_: Any) -> None:
        return None
