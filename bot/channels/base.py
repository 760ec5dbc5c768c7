"""The small protocol every destination speaks: render a digest into messages, send one.

A channel never calls the LLM and never decides what to post: the service walks the list
`render_digest` returns, records each message in the ledger, and calls `send` for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from digest_core.models import Answer, Digest, DigestEntry


@dataclass(frozen=True)
class Outgoing:
    """One message to send. `key` is stable across runs so the ledger can tell what was sent.

    The first Outgoing of a digest is the root (table of contents); the rest are replies in its
    thread, in order.
    """

    key: str
    payload: Any  # platform-specific: a SlackMessage, a Telegram HTML string, plain text...
    summary: str  # a short plain line for logs and the ledger (never a secret)


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


class Channel(Protocol):
    platform: str

    def render_digest(self, digest: Digest) -> list[Outgoing]:
        """Root message first, then every reply in thread order."""
        ...

    def render_analysis(self, entry: DigestEntry) -> list[Outgoing]:
        """An on-demand analysis: a root naming the paper, then the deep dive as replies."""
        ...

    def render_answer(self, answer: Answer) -> list[Outgoing]:
        """A thread answer, split as the platform needs."""
        ...

    async def send(self, chat: str, payload: Any, thread: str | None) -> str:
        """Post one message, as a reply in `thread` when given. Returns the message's reference
        (Slack `ts`, Telegram `message_id` as a string). Raises DeliveryError."""
        ...
