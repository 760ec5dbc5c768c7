"""Showing the requester where an analysis is while it runs, one display per platform.

An analysis comes back as structured output, so it cannot be streamed like a thread answer
(bot.channels.streaming); instead the core reports its stages (`digest_core.analysis.
AnalysisStage`: fetching the paper, reading the full text with its number of sections,
writing) and the conversation flow (bot.assistant) hands them to an `AnalysisProgress`:

* `report(stage)` returns at once and never raises: a background task shows the newest
  stage, the first at once and then at most once per `interval`, so a progress display can
  neither slow nor fail the analysis, and a burst of stages costs one platform call.
* `still_working()` is the "still working" moment: True when the display shows it in place
  (then no separate line is posted).
* `finish(final)` stops the display once the result is posted (or the analysis failed): it
  waits for a call in flight (never cancels one, so nothing stale lands after the clear) and
  then clears the display, so no status outlives the analysis.

* Slack: `assistant.threads.setStatus` ("digestbot is reading the full text (12 sections)…")
  in the thread the request came from, cleared with an empty status at the end. Since
  2026-03-05 the method accepts the `chat:write` scope and works in channel threads, not only
  in the assistant split view. A workspace or token that refuses it (an error in
  `SLACK_STATUS_REFUSED`) turns it off for the channel, with one log line and nothing in the
  chat. A slash command has no thread to show a status in, and its ephemeral opening line
  cannot be edited (neither chat.update nor the command's response_url replaces it), so
  there the stage only goes into the "still working" line.
* Telegram: the typing action, repeated every `TYPING_EVERY` seconds (it lasts about 5 s)
  until the result is posted, and the opening "Analysing…" message edited with the stage,
  within the edit limits (at most one edit per `interval`, and a flood-control answer pauses
  the edits for as long as Telegram asks). At the end the opening line says it is done (or,
  after a failure, goes back to what it said, the failure line following it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from bot.channels.paced import PacedDisplay
from bot.channels.streaming import SLACK_STREAM_REFUSED, slack_error_code
from digest_core.analysis import AnalysisStage, Stage

# slack_sdk and telegram are imported where a platform's progress needs them: this module is
# part of every `serve` (through bot.assistant), and a platform that is not configured is not
# loaded.

if TYPE_CHECKING:
    from bot.channels.slack import SlackChannel
    from bot.channels.telegram import TelegramChannel

log = logging.getLogger(__name__)

# At most one display call per this many seconds per analysis. Telegram: edits count toward
# "about 20 messages a minute in a group" (an analysis has 3-4 stages, so a handful of edits).
PROGRESS_INTERVAL = 2.0
# Telegram's chat action lasts about 5 s ("or less, when a message arrives from the bot").
TYPING_EVERY = 4.0
# How long `finish` waits for a display call in flight before it gives up on it.
FINISH_WAIT = 10.0

# Slack's answers to setStatus that mean this workspace, app or token cannot use it.
SLACK_STATUS_REFUSED = SLACK_STREAM_REFUSED | {
    "method_not_supported_for_channel_type",
    "access_denied",
}

_ICONS = {Stage.FETCHING: "📥", Stage.READING: "📖", Stage.WRITING: "✍️"}


def stage_line(stage: AnalysisStage) -> str:
    """The stage as a line for a person: "📖 Reading the full text (12 sections)…"."""
    text = stage.describe()
    return f"{_ICONS[stage.stage]} {text[:1].upper()}{text[1:]}…"


class AnalysisProgress(PacedDisplay):
    """Shows an analysis's newest stage on one platform; subclasses say how (`_show`,
    `_clear`)."""

    displays = True  # whether the requester sees the stages (else they are only kept)

    def __init__(self, interval: float = PROGRESS_INTERVAL) -> None:
        super().__init__(interval)
        self.stage: AnalysisStage | None = None
        self.shown = False  # whether anything is on display (and must be cleared)
        self._still = False
        self._on_display: tuple[AnalysisStage | None, bool] | None = None
        self._pause_until = 0.0

    def start(self) -> None:
        """Begin whatever the display does before the first stage (Telegram: typing)."""

    def report(self, stage: AnalysisStage) -> None:
        """The analysis reached `stage` (the core's `on_stage`). Returns at once."""
        self.stage = stage
        if self._edits and self.live:
            self._poke()

    @property
    def _edits(self) -> bool:
        """Whether a stage is shown by a display call (else it is only kept)."""
        return self.displays

    def still_working(self) -> bool:
        """The analysis is taking long: True when the display says so in place."""
        return False

    async def finish(self, final: str | None = None) -> None:
        """Stop showing stages and clear the display. `final`: what the platform leaves in
        place of the stages, where it shows them in a message of its own."""
        self._halt()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), FINISH_WAIT)
            except TimeoutError:
                log.info("analysis progress: a display call is still in flight; left behind")
            except Exception:  # the task logs its own failures
                pass
        await self._stop_extras()
        if not self.shown:
            return
        try:
            await self._clear(final)
            self.shown = False
        except Exception as exc:
            log.info("analysis progress not cleared: %s", _reason(exc))

    async def _update(self) -> bool:
        pause = self._pause_until - asyncio.get_running_loop().time()
        if pause > 0 and not await self._rest(pause):  # flood control: as long as asked
            return True  # finished meanwhile: the task ends
        want = (self.stage, self._still)
        if self.stage is None or want == self._on_display:
            return True
        # Counted as shown before the call: one that times out on our side may still land,
        # and then only the clear at the end takes it back.
        before, self.shown = self.shown, True
        try:
            await self._show(self.stage, self._still)
            self._on_display = want
        except Exception as exc:
            if not _may_have_landed(exc):
                self.shown = before  # the platform said no: nothing to take back
            if not self._failed(exc):
                return False
            self._wake.set()  # paused: show the newest stage after the pause
        return True

    async def _show(self, stage: AnalysisStage, still: bool) -> None:
        raise NotImplementedError

    async def _clear(self, final: str | None) -> None:
        raise NotImplementedError

    async def _stop_extras(self) -> None:
        return None

    def _failed(self, exc: BaseException) -> bool:
        """A display call failed: True to keep going (after a pause), False to stop."""
        log.info("analysis progress display stopped: %s", _reason(exc))
        return False


class StagesOnly(AnalysisProgress):
    """Where the platform has no way to show a stage (a Slack slash command, the console):
    the stages are only kept, for the "still working" line to name."""

    displays = False


class SlackThreadStatus(AnalysisProgress):
    """The stage as the thread's status under the bot's name (assistant.threads.setStatus)."""

    def __init__(
        self, channel: SlackChannel, chat: str, thread: str, *, interval: float = PROGRESS_INTERVAL
    ) -> None:
        super().__init__(interval)
        self.channel = channel
        self.chat = chat
        self.thread = thread

    async def _show(self, stage: AnalysisStage, still: bool) -> None:
        # Slack shows it after the app's name: "digestbot is reading the full text (…)…".
        await self.channel.client.assistant_threads_setStatus(
            channel_id=self.chat, thread_ts=self.thread, status=f"is {stage.describe()}…"
        )

    async def _clear(self, final: str | None) -> None:
        # An empty status clears it (a reply in the thread would too, but the result of an
        # analysis goes into a thread of its own).
        await self.channel.client.assistant_threads_setStatus(
            channel_id=self.chat, thread_ts=self.thread, status=""
        )

    def _failed(self, exc: BaseException) -> bool:
        code = slack_error_code(exc)
        if code in SLACK_STATUS_REFUSED:
            self.channel.thread_status = False
            log.info("slack refused assistant.threads.setStatus (%s); no thread status", code)
        else:
            log.info("slack thread status stopped: %s", code)
        return False


class TelegramAnalysisProgress(AnalysisProgress):
    """Typing while the analysis lasts; the opening "Analysing…" message shows the stage."""

    def __init__(
        self,
        channel: TelegramChannel,
        chat: str,
        opening: tuple[str, str] | None,
        *,
        interval: float = PROGRESS_INTERVAL,
        typing_every: float = TYPING_EVERY,
    ) -> None:
        super().__init__(interval)
        self.channel = channel
        self.chat = chat
        # (message id, plain text) of the opening line, when it was posted.
        self.opening = opening
        self.typing_every = typing_every
        self._typing: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._typing is None:
            self._typing = asyncio.create_task(self._type())

    @property
    def _edits(self) -> bool:
        return self.opening is not None  # else the typing action is the whole display

    def still_working(self) -> bool:
        # Said in place once a stage is known: on the line now, or with the next edit (on a
        # loaded machine the first edit can still be on its way). Before any stage there is
        # nothing to say it with: the flow posts its own line.
        if not (self.live and self.opening is not None and self.stage is not None):
            return False
        self._still = True
        self._poke()
        return True

    async def _type(self) -> None:
        from telegram.constants import ChatAction
        from telegram.error import RetryAfter

        chat_id, topic = self.channel.target(self.chat)
        while not self._stop.is_set():
            try:
                await self.channel.bot.send_chat_action(
                    chat_id=chat_id, action=ChatAction.TYPING, message_thread_id=topic
                )
            except RetryAfter as exc:  # never queue behind flood control: skip a beat
                log.info("telegram typing paused by flood control: %s", exc.retry_after)
            except Exception as exc:  # cosmetic: the analysis goes on
                log.info("telegram typing stopped: %s", self.channel._reason(exc))
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.typing_every)

    async def _stop_extras(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._typing

    async def _edit(self, text: str) -> None:
        assert self.opening is not None
        html = self.channel.render_line(text).payload
        await self.channel.edit_once(self.chat, self.opening[0], html)

    async def _show(self, stage: AnalysisStage, still: bool) -> None:
        assert self.opening is not None
        line = stage_line(stage)
        if still:
            line += " ⏳ still working; the analysis will follow."
        await self._edit(f"{self.opening[1]}\n{line}")

    async def _clear(self, final: str | None) -> None:
        assert self.opening is not None
        await self._edit(final or self.opening[1])

    def _failed(self, exc: BaseException) -> bool:
        from telegram.error import RetryAfter

        if isinstance(exc, RetryAfter):
            wait = exc.retry_after
            seconds = wait.total_seconds() if hasattr(wait, "total_seconds") else float(wait)
            self._pause_until = asyncio.get_running_loop().time() + seconds
            log.info("telegram progress edits paused by flood control for %.0f s", seconds)
            return True
        log.info("telegram progress edits stopped: %s", self.channel._reason(exc))
        return False


# Failures after which a display call may still have reached the platform (we stopped
# waiting, or the connection broke after sending): by class name along the MRO, so this module
# needs neither platform's library (telegram's TimedOut and NetworkError, httpx's and aiohttp's
# timeouts and client errors, asyncio's TimeoutError).
_UNCERTAIN = {
    "TimeoutError",
    "TimedOut",
    "NetworkError",
    "TimeoutException",
    "TransportError",
    "ClientError",
    "ServerTimeoutError",
}


def _may_have_landed(exc: BaseException) -> bool:
    return any(cls.__name__ in _UNCERTAIN for cls in type(exc).__mro__)


def _reason(exc: BaseException) -> str:
    """A short reason for a log line: an API error code or a class name, never a URL or
    token (exception texts can quote the request URL)."""
    return slack_error_code(exc)  # a Slack API error's code, else the class name
