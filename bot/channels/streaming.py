"""Showing a thread answer while the model writes it, one poster per platform.

The conversation flow (bot.assistant) opens an `AnswerStream` for a question, feeds it the
model's text as it arrives (`push`), and when the answer is done calls `finish`, which returns
the message the final answer takes the place of (or None: post it as new). The final answer
is then posted exactly as an unstreamed one, through the ledger (`post_thread(replacing=…)`),
so its text, its split into messages and its ledger entries are the same either way; what
was shown while streaming is only ever a preview.

* Slack: the chat streaming methods (`chat.startStream` / `chat.appendStream` /
  `chat.stopStream`) through slack_sdk's `AsyncChatStream`, in the thread. The stream starts
  with the first words; the "Reading the paper…" placeholder is then removed, and the final
  answer replaces the streamed message (`chat.update`).
* Telegram, private chat: `sendMessageDraft` (an animated preview); the answer is then sent.
* Telegram, group: one message, sent with the first words and edited at most once per
  `interval`; the final answer replaces it.

Pushing never waits for the platform: a background task shows the newest text at most once
per `interval` (the first words at once). A platform that refuses streaming (an older Slack
workspace, a missing scope, a Bot API without drafts) turns it off for the channel and the
answer is posted the normal way; any other failure only ends this preview.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import TYPE_CHECKING, Any

import aiohttp

from bot.channels.base import STREAM_INTERVAL
from bot.channels.paced import PacedDisplay
from digest_core.models import Answer

# slack_sdk and telegram are imported inside the platform's own stream classes: this module is
# part of every `serve` (through bot.assistant), and a platform that is not configured is not
# loaded.

if TYPE_CHECKING:
    from slack_sdk.web.async_chat_stream import AsyncChatStream

    from bot.channels.slack import SlackChannel
    from bot.channels.telegram import TelegramChannel

log = logging.getLogger(__name__)

# Slack's answers to a streaming method this workspace or token cannot use: post normally.
SLACK_STREAM_REFUSED = frozenset(
    {
        "unknown_method",
        "not_allowed",
        "missing_scope",
        "not_allowed_token_type",
        "method_deprecated",
        "feature_not_enabled",
        "channel_type_not_supported",
        "team_not_allowed",
        "not_supported",
    }
)


class AnswerStream(PacedDisplay):
    """Shows a growing answer on one platform; subclasses say how (`_show`, `_close`)."""

    def __init__(self, interval: float = STREAM_INTERVAL) -> None:
        super().__init__(interval)
        self.text = ""
        self.calls = 0  # platform calls made to show the preview (for benches and logs)
        self._shown = ""

    async def push(self, delta: str) -> None:
        """More of the answer. Returns at once; the text is shown by the background task."""
        if not self.live:
            return
        self.text += delta
        self._poke()

    async def finish(self) -> str | None:
        """Stop showing; returns the reference of the message the final answer replaces, or
        None to post it as a new message. Waits for a call in flight (never cancels one: a
        message sent but not known would stay behind)."""
        self._halt()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        try:
            return await self._close()
        except Exception as exc:  # the final post must still happen
            log.warning("ending a streamed answer failed: %s", type(exc).__name__)
            return self._fallback_ref()

    async def _update(self) -> bool:
        snapshot = self.text
        if snapshot.strip() and snapshot != self._shown:
            try:
                await self._show(snapshot, self._shown)
                self.calls += 1
            except Exception as exc:
                self._dead = True
                self._failed(exc)
                return False
            self._shown = snapshot
        return True

    async def _show(self, text: str, shown: str) -> None:
        raise NotImplementedError

    async def _close(self) -> str | None:
        raise NotImplementedError

    def _fallback_ref(self) -> str | None:
        return None

    def _failed(self, exc: BaseException) -> None:
        log.info("streamed answer preview stopped: %s", type(exc).__name__)


class SlackAnswerStream(AnswerStream):
    """Streams into the thread with slack_sdk's AsyncChatStream (one append per call)."""

    def __init__(
        self,
        channel: SlackChannel,
        chat: str,
        thread: str,
        *,
        placeholder: str | None,
        user: str | None,
        team: str | None,
        interval: float = STREAM_INTERVAL,
    ) -> None:
        super().__init__(interval)
        self.channel = channel
        self.chat = chat
        self.thread = thread
        self.placeholder = placeholder
        self.user = user
        self.team = team
        self._stream: AsyncChatStream | None = None

    async def _show(self, text: str, shown: str) -> None:
        from slack_sdk.errors import SlackClientError

        from digest_core.render.slack import escape

        if self._stream is None:
            # Our own pacing decides when to call Slack: buffer_size=1 flushes every append.
            kwargs: dict[str, Any] = {"channel": self.chat, "thread_ts": self.thread}
            if self.user and self.team:  # required when streaming in a channel
                kwargs.update(recipient_user_id=self.user, recipient_team_id=self.team)
            self._stream = await self.channel.client.chat_stream(buffer_size=1, **kwargs)
        # Escaped like every Slack text of ours: nothing the model writes becomes a ping.
        await self._stream.append(markdown_text=escape(text[len(shown) :]))
        if self.placeholder is not None and self._stream.ts:
            placeholder, self.placeholder = self.placeholder, None
            try:
                await self.channel.client.chat_delete(channel=self.chat, ts=placeholder)
            except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
                log.info("could not remove the placeholder: %s", slack_error_code(exc))
                self.placeholder = placeholder

    async def _close(self) -> str | None:
        from slack_sdk.errors import SlackClientError

        stream = self._stream
        if stream is None or not stream.ts:
            return self.placeholder
        try:
            await stream.stop()
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            # The message exists; chat.update replaces it all the same.
            log.info("slack chat.stopStream failed: %s", slack_error_code(exc))
        if self.placeholder is not None:  # could not be removed earlier: the answer stays one
            with contextlib.suppress(SlackClientError, aiohttp.ClientError, TimeoutError):
                await self.channel.client.chat_delete(channel=self.chat, ts=self.placeholder)
        return stream.ts

    def _fallback_ref(self) -> str | None:
        if self._stream is not None and self._stream.ts:
            return self._stream.ts
        return self.placeholder

    def _failed(self, exc: BaseException) -> None:
        code = slack_error_code(exc)
        if code in SLACK_STREAM_REFUSED:
            # This workspace or token cannot stream: answer the normal way from now on.
            self.channel.streaming = False
            log.info("slack refused chat streaming (%s); answers are posted whole", code)
        else:
            log.info("slack streamed answer preview stopped: %s", code)


def slack_error_code(exc: BaseException) -> str:
    """A Slack API error's code ("missing_scope"), else "http N" or the class name: short, and
    never a URL or a token (exception texts can quote the request)."""
    if not type(exc).__module__.startswith("slack_sdk"):
        return type(exc).__name__  # and a Telegram-only bot never loads slack_sdk for it
    from slack_sdk.errors import SlackApiError

    if isinstance(exc, SlackApiError):
        data = getattr(exc.response, "data", None)
        code = data.get("error") if isinstance(data, dict) else None
        if isinstance(code, str) and code.isidentifier():
            return code
        return f"http {getattr(exc.response, 'status_code', 0)}"
    return type(exc).__name__


def telegram_preview(text: str) -> str:
    """The partial answer as Telegram HTML, rendered as the final answer is, cut to one
    message (the final answer is split as it needs)."""
    from digest_core.render import telegram as render

    return render.render_answer(Answer(arxiv_id="", text=text, model=None))[0]


class TelegramDraftStream(AnswerStream):
    """A private chat: the answer as an animated draft (`sendMessageDraft`), then sent."""

    def __init__(
        self, channel: TelegramChannel, chat_id: int, topic: int | None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.channel = channel
        self.chat_id = chat_id
        self.topic = topic
        self.draft_id = random.randint(1, 2**31 - 1)  # non-zero; one per answer

    async def _show(self, text: str, shown: str) -> None:
        from telegram.constants import ParseMode

        await self.channel.bot.send_message_draft(
            chat_id=self.chat_id,
            draft_id=self.draft_id,
            text=telegram_preview(text),
            message_thread_id=self.topic,
            parse_mode=ParseMode.HTML,
        )

    async def _close(self) -> str | None:
        return None  # the answer is sent as a message of its own; the draft gives way to it

    def _failed(self, exc: BaseException) -> None:
        if not self.calls:  # refused at once (400/404: an older Bot API): don't ask again
            self.channel.drafts = False
            log.info("telegram refused sendMessageDraft (%s); answers are sent whole", exc)
        else:
            log.info("telegram draft preview stopped: %s", type(exc).__name__)


class TelegramEditStream(AnswerStream):
    """A group: one message with the first words, edited as the answer grows."""

    def __init__(
        self, channel: TelegramChannel, chat: str, reply_to: str | None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.channel = channel
        self.chat = chat
        self.reply_to = reply_to
        self.message_id: str | None = None

    async def _show(self, text: str, shown: str) -> None:
        html = telegram_preview(text)
        if self.message_id is None:
            self.message_id = await self.channel.send(self.chat, html, self.reply_to)
            return
        await self.channel.edit_once(self.chat, self.message_id, html)

    async def _close(self) -> str | None:
        return self.message_id

    def _fallback_ref(self) -> str | None:
        return self.message_id

    def _failed(self, exc: BaseException) -> None:
        from telegram.error import TelegramError

        reason = exc.message if isinstance(exc, TelegramError) else type(exc).__name__
        log.info("telegram streamed answer preview stopped: %s", reason)
