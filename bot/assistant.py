"""The one conversation flow: what the bot does when a person asks, on any platform.

The Slack and Telegram adapters translate a platform payload into a `Request` (plain values:
who, where, which thread, the text, the command) and call `Assistant.handle`; everything after
that is the same on both platforms: admit (allow-list, per-user rate limit, daily token
budget), find which paper, analyse or answer, and post, every line through the posting
ledger (`bot.service.post_thread`): answers, refusals, "which paper?" and error lines alike.
The only platform choice left to the adapter is where the platform requires it: Slack's
slash command is acknowledged at once (`opening`) and its result lines are shown only to the
requester (`Request.private`: returned, not posted).

A new command or a button press is one more `Request.command` and one more branch in
`handle`, not another copy of the flow: a press on a "which paper do you mean?" button
(`pick`, then `PICK`) answers the kept question the way a typed reply does. An analysis thread is started once per paper per
chat (concurrent requests share it, and the deep dive is shared across chats by the
pipeline); a question is matched to the paper it means before it is answered with the
thread's earlier turns as memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bot import history
from bot.channels.base import Channel, Outgoing
from bot.channels.progress import FINISH_WAIT, AnalysisProgress, StagesOnly
from bot.channels.streaming import AnswerStream
from bot.chatstore import ChatStore, PaperChoice, PostStatus, ThreadRecord, Vote
from bot.history import Listing
from bot.journal import Journal
from bot.service import Delivered, Destination, destination_profile, post_figure, post_thread
from bot.settings import AppSettings as Settings
from bot.team import Team
from digest_core.analysis import OnStage
from digest_core.arxiv_id import ArxivId, InvalidArxivId, parse_arxiv_id
from digest_core.models import Answer
from digest_core.pipeline import PaperNotFound, Pipeline
from digest_core.retry import deadline_in
from digest_core.sources import SourceError
from digest_core.store import ORIGIN

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 4000

# Lines a requester sees when something went wrong on our side (both platforms).
RESTARTING = "⚠️ digestbot is restarting and could not finish this; please ask again in a minute."
FAILED_ANALYSIS = "⚠️ Sorry, the analysis failed; please try again in a few minutes."
FAILED_ANSWER = "⚠️ Sorry, I could not answer that just now; please ask again in a few minutes."
NOT_ENABLED = "digestbot is not enabled for this workspace or chat."
STILL_WORKING = "⏳ Still working on it; the answer will follow here."
# When the bot cannot record a request (its database is full or read-only), it says so.
UNRECORDED = "⚠️ Sorry, digestbot cannot take requests right now; please try again later."
USAGE = "Usage: /analyze ARXIV_ID_OR_URL (e.g. /analyze 2602.14941)"
RATE_USAGE = "Usage: /digest like ARXIV_ID or /digest dislike ARXIV_ID"
PENDING = "pending"  # a question kept while the bot asks which paper it is about
ANALYZE = "analyze"  # Request.command of /analyze (and of a Slack mention with an ID)
DIGEST = "digest"  # Request.command of /digest (help, subscribe, profile …; bot.team)
PICK = "pick"  # Request.command of a "which paper?" button press; its text is the choice key
# What a press on a "which paper?" button is told when it cannot be served (toast/ephemeral).
PICK_STALE = "⚠️ This button no longer works; please ask your question again."
ASK_WHICH = "Which paper do you mean? Press its button, or reply with its number, ID or a word of its title:"

# "#2", "no. 2", "paper 2", "第2篇": a paper by its number in the table of contents.
_NUMBER = re.compile(
    r"(?:#\s*|\bno\.?\s*|\bpaper\s+|\bnumber\s+|第\s*)(\d{1,2})(?![0-9A-Za-z])(?:\s*篇)?",
    re.IGNORECASE,
)
# A reply that is only a number ("2", "2.", "#2").
_SELECTOR = re.compile(r"\W*(\d{1,2})\W*")
_ID_LIKE = re.compile(r"(?:arxiv:)?\d{4}\.\d{4,5}(?:v\d+)?|[a-z-]+(?:\.[A-Z]{2})?/\d{7}", re.I)
_TITLE_WORD = re.compile(r"[A-Za-z][A-Za-z0-9-]{3,}")
# Words that name no particular paper: question words and the vocabulary of every abstract.
_NOT_DISTINCTIVE = frozenset(
    """about also approach based does done from have here into large learning make method
    methods model models more most much only over paper papers results show shows some such
    than that their them then there these they this those towards used uses using very what
    when where which while with work works would your""".split()
)


def _title_words(text: str) -> set[str]:
    return {w.lower() for w in _TITLE_WORD.findall(text)} - _NOT_DISTINCTIVE


def _only_names_a_paper(text: str) -> bool:
    """A reply that only picks a paper ("2", "#2", "paper 2", an ID) and asks nothing new."""
    rest = _ID_LIKE.sub(" ", _NUMBER.sub(" ", text))
    return not re.sub(r"[\W_]+", "", rest) or bool(_SELECTOR.fullmatch(text))


def parse_rating(text: str) -> tuple[bool, str] | None:
    """`like ID` / `dislike ID` (the words after `/digest`) → (liked, the ID as written);
    None when the text is not a rating command. The ID itself is checked by `Assistant.rate`."""
    verb, _, rest = text.strip().partition(" ")
    if verb.lower() not in ("like", "dislike"):
        return None
    return verb.lower() == "like", rest.strip()


def _told_when_not_recorded(
    pick: Callable[..., Awaitable[Picked]],
) -> Callable[..., Awaitable[Picked]]:
    """`Assistant.pick`, but a press the database cannot record gets the presser the
    UNRECORDED line (logged once) instead of an error, on every platform."""

    @functools.wraps(pick)
    async def told(self: Assistant, platform: str, chat: str, *args: Any, **kw: Any) -> Picked:
        try:
            return await pick(self, platform, chat, *args, **kw)
        except Exception:
            log.exception("%s %s: a paper pick not recorded", platform, chat)
            return Picked(UNRECORDED)

    return told


def still_working_line(progress: AnalysisProgress) -> str:
    """The "still working" line of an analysis: it names the stage when one is known."""
    if progress.stage is None:
        return STILL_WORKING
    return f"⏳ Still working on it: {progress.stage.describe()}; the analysis will follow."


def vote_line(vote: Vote) -> str:
    """The acknowledgement of a 👍/👎 press (Telegram shows it as a toast)."""
    if vote.liked is None:
        head = "Vote withdrawn"
    else:
        head = ("👍" if vote.liked else "👎") + " Counted for this channel's profile"
    return f"{head} · 👍 {vote.up} · 👎 {vote.down}"


@dataclass(frozen=True)
class Request:
    """One thing a person asked, in plain values, from either adapter."""

    platform: str
    chat: str  # as the ledger names it: a Slack channel ID; a Telegram `chat_id[:topic]`
    user: str
    text: str  # the question, or the command's argument
    message: str  # the person's message (Slack ts, Telegram message_id): the ledger scope
    command: str | None = None  # ANALYZE; None: a question in one of the bot's threads
    reply_to: str | None = None  # where replies go: Slack thread_ts; Telegram a message_id
    thread: ThreadRecord | None = None  # the bot thread a question belongs to
    replied_to: str | None = None  # the bot message a (Telegram) question replies to
    team: str | None = None  # the Slack workspace, for the allow-list
    private: bool = False  # lines go back to the adapter (Slack ephemeral), not into the chat
    user_name: str | None = None  # how an announcement names the person ("@ana"; else the ID)
    # Where the platform can show this request's progress: Slack, the thread of the message
    # that asked (a mention), for the thread status of an analysis.
    status_thread: str | None = None


@dataclass(frozen=True)
class Opening:
    """What the requester is told at once, before any slow work, and whether work follows."""

    line: str
    proceed: bool
    paper: ArxivId | None = None


@dataclass
class Handled:
    """What `handle` did. `private` holds the lines for the requester alone (when the request
    was private), in order; `thread` the thread that holds the result, if any."""

    # a Listing: search results, rendered with their links by the adapter (bot.history)
    private: list[str | Listing] = field(default_factory=list)
    thread: str | None = None


@dataclass(frozen=True)
class Picked:
    """What a "which paper?" button press came to: `line` is the one short line for the
    presser alone (a Telegram toast, a Slack ephemeral), None for a redelivered press;
    `request` the answer to run (through the journal and `handle`), if the press won."""

    line: str | None
    request: Request | None = None


@dataclass(frozen=True)
class Outcome:
    """What a request came to: `line` is the short text shown to the requester (ephemeral on
    Slack where possible); `thread` the thread that holds the result, if any."""

    ok: bool
    line: str
    thread: str | None = None
    delivered: Delivered | None = None


class Assistant:
    def __init__(
        self, pipeline: Pipeline, settings: Settings, chat: ChatStore | None = None
    ) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.store = pipeline.store
        self.chat = chat or ChatStore(pipeline.store)
        self.team = Team(settings, self.chat)
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self.journal = Journal(self.chat)
        self._count_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._count_pending: set[tuple[str, str, str]] = set()

    # -- the flow --------------------------------------------------------------------------------

    async def opening(self, req: Request) -> Opening:
        """The first line, with no LLM call and no post: refusals that need no I/O, bad input,
        or "Analysing…". Slack puts it in the slash command's acknowledgement."""
        if req.command == ANALYZE:
            if not self.allowed(req.platform, team=req.team, chat=req.chat):
                return Opening(f"⚠️ {NOT_ENABLED}", False)
            if not req.text.strip():
                return Opening(USAGE, False)
            parsed = self.parse(req.text)
            if isinstance(parsed, str):
                return Opening(f"⚠️ {parsed}", False)
            title = await self.known_title(parsed)
            line = f"🔎 Analysing arXiv:{parsed}" + (f" — {title}" if title else "") + " …"
            return Opening(line, True, parsed)
        if req.command == DIGEST:
            if not self.allowed(req.platform, team=req.team, chat=req.chat):
                return Opening(f"⚠️ {NOT_ENABLED}", False)
            return Opening("", True)
        if req.command == PICK:  # admitted when pressed (`pick`)
            return Opening("", req.thread is not None)
        return Opening("", bool(req.text.strip()) and req.thread is not None)

    async def handle(
        self,
        channel: Channel,
        req: Request,
        *,
        opened: bool = False,
        tell: Callable[[str], Awaitable[object]] | None = None,
    ) -> Handled:
        """Serve one request to the end. `opened`: the adapter already showed the opening line
        (Slack's ack). `tell`: how to reach the requester of a private request while it runs
        (the "still working" line). Never raises but for cancellation (shutdown), after saying
        so. The whole request (all its LLM attempts and waits) has one deadline,
        `interactive.request_deadline_seconds`; past it the labelled fallback is the answer."""
        done = Handled()
        failed = FAILED_ANALYSIS if req.command == ANALYZE else FAILED_ANSWER
        try:
            with deadline_in(self.settings.interactive.request_deadline_seconds):
                opening = await self.opening(req)
                if not opening.proceed:
                    if not opened and opening.line:
                        await self._say(channel, req, done, opening.line, "opening")
                    return done
                if req.command == ANALYZE:
                    assert opening.paper is not None
                    await self._analyze(channel, req, done, opening, opened=opened, tell=tell)
                elif req.command == DIGEST:
                    await self._digest(channel, req, done)
                elif req.command == PICK:
                    await self._picked(channel, req, done, tell=tell)
                else:
                    await self._question(channel, req, done, tell=tell)
        except asyncio.CancelledError:  # shutdown ran out of time: say so, then stop
            await asyncio.wait_for(self._last_word(channel, req, done, RESTARTING, "restarting"), 5)
            raise
        except Exception:
            log.exception("%s %s: request failed", req.platform, req.chat)
            await self._last_word(channel, req, done, failed, "failed")
        return done

    async def _last_word(
        self, channel: Channel, req: Request, done: Handled, text: str, key: str
    ) -> None:
        """A failure line that reaches the requester even when the ledger cannot be written
        (the database is full or read-only): then it is sent directly, unrecorded."""
        try:
            await self._say(channel, req, done, text, key)
            return
        except Exception:
            log.exception("%s %s: failure line not recorded; sent directly", req.platform, req.chat)
        await self.say_directly(channel, req, text)

    async def say_directly(self, channel: Channel, req: Request, text: str) -> None:
        """One line to the requester without the ledger: only for when it cannot be written."""
        if req.private:
            return  # the adapter shows private lines itself, with no database involved
        try:
            line = channel.render_line(text)
            mark = f"reply:{req.message}/direct"
            await channel.send(req.chat, line.payload, req.reply_to, key=mark)
        except Exception:
            log.exception("%s %s: the requester could not be told", req.platform, req.chat)

    async def tell(self, channel: Channel, req: Request, text: str) -> None:
        """One line to the requester of a request, through the ledger (once), as a reply."""
        await self._last_word(channel, req, Handled(), text, "gave-up")

    @contextlib.asynccontextmanager
    async def _still_working(
        self,
        channel: Channel,
        req: Request,
        done: Handled,
        tell: Callable[[str], Awaitable[object]] | None,
        placeholder: str | None = None,
        *,
        unless: Callable[[], bool] | None = None,
        text: Callable[[], str] | None = None,
    ) -> AsyncIterator[None]:
        """Post one short "still working" line if the block takes longer than
        `interactive.still_working_after_seconds`; it is never posted after the block ends.
        Where a placeholder stands ("Reading the paper…"), it becomes that line instead, so
        the answer that replaces it still comes first in the thread. `unless` is asked when
        the time comes (True: no line, e.g. the progress display says it in place); `text`
        gives the line then (an analysis names its stage)."""
        delay = self.settings.interactive.still_working_after_seconds

        async def later() -> None:
            await asyncio.sleep(delay)
            if unless is not None and unless():
                return
            said = text() if text is not None else STILL_WORKING
            try:
                if placeholder is not None:
                    line = channel.render_line(said)
                    await channel.replace(req.chat, placeholder, line.payload)
                elif req.private:
                    if tell is not None:
                        await tell(said)
                else:
                    await self._say(channel, req, done, said, "still-working")
            except Exception:  # a courtesy line: the answer still comes
                log.warning("%s %s: still-working line not sent", req.platform, req.chat)

        timer = asyncio.create_task(later()) if delay > 0 else None
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer

    async def _analyze(
        self,
        channel: Channel,
        req: Request,
        done: Handled,
        opening: Opening,
        *,
        opened: bool,
        tell: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        aid = opening.paper
        assert aid is not None
        refusal = await self.admit(req.platform, req.user, team=req.team, chat=req.chat, paper=aid)
        if refusal is not None:
            await self._say(channel, req, done, f"⚠️ {refusal}", "refusal")
            return
        if not opened:  # said once admitted: "Analysing…" and then "no" would be a mixed message
            await self._say(channel, req, done, opening.line, "opening")
        progress = await self._analysis_progress(channel, req, opening.line)
        if progress.displays:
            progress.start()
        elif not req.private:
            await channel.working(req.chat, None)
        outcome: Outcome | None = None
        try:
            # The stage shows where the platform can show it; the "still working" line names it
            # (or is said in place by the display).
            async with self._still_working(
                channel,
                req,
                done,
                tell,
                unless=progress.still_working,
                text=lambda: still_working_line(progress),
            ):
                outcome = await self.analyze(
                    Destination(channel, req.chat), aid, on_stage=progress.report
                )
        finally:
            # After the result is posted (or the failure): no status outlives the work.
            final = f"✅ {outcome.line}" if outcome is not None and outcome.ok else opening.line
            try:
                await asyncio.wait_for(progress.finish(final), FINISH_WAIT + 5)
            except Exception:
                log.info("%s %s: analysis progress not finished", req.platform, req.chat)
        assert outcome is not None  # analyze returns one or raises
        done.thread = outcome.thread
        if req.private:
            done.private.append(("✅ " if outcome.ok else "⚠️ ") + outcome.line)
        elif not outcome.ok or outcome.delivered is None:
            # Failures, and "already analysed here" (said in that thread), are answered in the
            # chat; a new analysis thread speaks for itself.
            line = ("" if outcome.ok else "⚠️ ") + outcome.line
            await self._say(channel, req, done, line, "outcome", where=outcome.thread)

    async def _analysis_progress(
        self, channel: Channel, req: Request, line: str
    ) -> AnalysisProgress:
        """The channel's display of an analysis's stages (bot.channels.progress), where it has
        one: where the opening line was posted (Telegram), it is edited with the stage.
        Otherwise the stages are only kept, for the "still working" line."""
        try:
            opening: tuple[str, str] | None = None
            if not req.private:
                state = await self.chat.post_state(f"reply:{req.message}", req.platform, req.chat)
                row = state.get("opening")
                if row is not None and row.status is PostStatus.SENT and row.message_ref:
                    opening = (row.message_ref, line)
            progress = channel.analysis_progress(
                req.chat, thread=req.status_thread, opening=opening
            )
        except Exception:  # a display: never the reason an analysis fails
            log.warning("%s %s: no analysis progress", req.platform, req.chat, exc_info=True)
            progress = None
        return progress or StagesOnly()

    async def _digest(self, channel: Channel, req: Request, done: Handled) -> None:
        """/digest: the team's commands (bot.team). A change is announced in the channel
        (not only to the requester), through the ledger, once per request."""
        who = req.user_name or req.user
        reply = await self.team.command(req.platform, req.chat, req.user, who, req.text)
        lines = list(reply.lines)
        if reply.rate is not None:
            lines.append(await self.rate(req, *reply.rate))  # (arXiv ID, liked)
        if reply.announce is not None:
            line = dataclasses.replace(channel.render_line(reply.announce), key="announce")
            delivered = await post_thread(
                self.chat,
                Destination(channel, req.chat),
                f"announce:{req.message}",
                [line],
                kind="reply",
                papers=[],
                thread=None if req.private else req.reply_to,
                retry_permanent=True,
                retry=self.settings.retry,
            )
            if not delivered.ok:
                log.error(
                    "%s %s: announcement not posted: %s", req.platform, req.chat, delivered.error
                )
                lines = [f"Saved, but the announcement could not be posted here: {delivered.error}"]
            elif not req.private:
                lines = []  # in the chat, the announcement is the answer
        for i, text in enumerate(lines):
            await self._say(channel, req, done, text, f"digest-{i}")
        if reply.listing is not None or reply.post is not None:
            await self._history(channel, req, done, reply.listing, reply.post)

    async def _history(
        self,
        channel: Channel,
        req: Request,
        done: Handled,
        listing: Listing | None,
        post: Listing | None,
    ) -> None:
        """Search results for the requester, the week's roundup for the channel (bot.team,
        bot.history): each thread linked, posted through the ledger once per request."""
        if listing is not None:
            listing = await history.linked(listing, channel, req.chat)
            if req.private:
                done.private.append(listing)
            else:
                await self._post(channel, req, [history.render(channel, listing, "search")])
        if post is not None:
            delivered = await history.post_roundup(
                self.chat,
                Destination(channel, req.chat),
                f"roundup:{req.message}",
                post,
                self.settings.retry,
                thread=None if req.private else req.reply_to,
                retry_permanent=True,
            )
            if not delivered.ok:
                log.error("%s %s: roundup not posted: %s", req.platform, req.chat, delivered.error)
                await self._say(
                    channel, req, done, f"The roundup could not be posted: {delivered.error}", "w"
                )
            elif req.private:
                done.private.append("Posted this week's roundup in the channel.")

    async def _question(
        self,
        channel: Channel,
        req: Request,
        done: Handled,
        *,
        tell: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        thread = req.thread
        assert thread is not None
        refusal = await self.admit(req.platform, req.user, team=req.team, chat=req.chat)
        if refusal is not None:
            await self._say(channel, req, done, f"⚠️ {refusal}", "refusal")
            return
        target = await self.which_paper(thread, req.text, replied_to=req.replied_to)
        if isinstance(target, list):
            await self._ask_which(channel, req, thread, target)
            return
        await self._typed_pick(channel, req, thread, target)
        await self._answer_in_thread(channel, req, done, thread, target, req.text, tell=tell)

    async def _answer_in_thread(
        self,
        channel: Channel,
        req: Request,
        done: Handled,
        thread: ThreadRecord,
        target: str,
        question: str,
        *,
        tell: Callable[[str], Awaitable[object]] | None = None,
        kept: bool = False,
    ) -> None:
        """Answer `question` about paper `target` in the thread: streamed where the channel
        streams, then posted through the ledger. `kept`: the question is the one a "which
        paper?" button kept, answered as it is (not read as a reply to "which paper?")."""
        placeholder = await channel.working(req.chat, req.reply_to)
        stream = await self._answer_stream(channel, req, placeholder)
        try:
            # Once the first words show, the answer speaks for itself: no "still working".
            async with self._still_working(
                channel,
                req,
                done,
                tell,
                placeholder,
                unless=lambda: stream is not None and bool(stream.text),
            ):
                answer = await self.answer(
                    req.platform,
                    req.chat,
                    thread.thread_ref,
                    target,
                    question,
                    on_delta=stream.push if stream is not None else None,
                    kept=kept,
                )
        except Exception:
            # Never leave "Reading the paper…" (or half an answer) standing: say the answer
            # failed, in its place.
            log.exception("%s %s: answering failed", req.platform, req.chat)
            ref = await stream.finish() if stream is not None else placeholder
            await self._say(channel, req, done, FAILED_ANSWER, "failed", replacing=ref)
            return
        except asyncio.CancelledError:
            if stream is not None:
                await asyncio.shield(stream.finish())
            raise
        # The streamed text was a preview: the answer is posted as an unstreamed one is, in
        # the streamed message's place, through the ledger.
        ref = await stream.finish() if stream is not None else placeholder
        await self._post(
            channel, req, channel.render_answer(answer), papers=[target], replacing=ref
        )

    async def _answer_stream(
        self, channel: Channel, req: Request, placeholder: str | None
    ) -> AnswerStream | None:
        """The channel's poster that shows the answer as it is written, if it has one and the
        answer was not posted already (a retried request repeats nothing)."""
        if req.private or self.pipeline.llm is None:
            return None
        state = await self.chat.post_state(f"reply:{req.message}", req.platform, req.chat)
        if any(r.status is PostStatus.SENT for r in state.values()):
            return None
        return channel.answer_stream(
            req.chat, req.reply_to, placeholder=placeholder, user=req.user, team=req.team
        )

    async def _say(
        self,
        channel: Channel,
        req: Request,
        done: Handled,
        text: str,
        key: str,
        *,
        where: str | None = None,
        replacing: str | None = None,
    ) -> None:
        """One line to the requester: kept for the adapter if the request is private,
        otherwise posted through the ledger as a reply."""
        if req.private and replacing is None:
            done.private.append(text)
            return
        line = dataclasses.replace(channel.render_line(text), key=key)
        await self._post(channel, req, [line], where=where, replacing=replacing)

    async def _post(
        self,
        channel: Channel,
        req: Request,
        messages: list[Outgoing],
        *,
        papers: list[str] | None = None,
        where: str | None = None,
        replacing: str | None = None,
    ) -> Delivered:
        """Replies to a request, through the ledger, as part of the bot thread the request is
        in (so a reply to any of them is a follow-up in that thread)."""
        delivered = await post_thread(
            self.chat,
            Destination(channel, req.chat),
            f"reply:{req.message}",
            messages,
            kind="reply",
            papers=papers or [],
            thread=where or req.reply_to,
            belongs_to=req.thread.thread_ref if req.thread else where,
            replacing=replacing,
            retry_permanent=True,
            retry=self.settings.retry,
        )
        if not delivered.ok:
            log.error("%s %s: reply not delivered: %s", req.platform, req.chat, delivered.error)
        return delivered

    # -- admission -------------------------------------------------------------------------------

    def allowed(self, platform: str, *, team: str | None = None, chat: str | None = None) -> bool:
        cfg = self.settings.interactive
        if platform == "slack" and cfg.allowed_slack_teams:
            return team in cfg.allowed_slack_teams
        if platform == "telegram" and cfg.allowed_telegram_chats:
            return (chat or "").split(":")[0] in cfg.allowed_telegram_chats
        return True

    async def admit(
        self,
        platform: str,
        user: str,
        *,
        team: str | None = None,
        chat: str | None = None,
        paper: ArxivId | None = None,
    ) -> str | None:
        """None when the request may spend LLM work; otherwise the one line to answer with.
        An /analyze of a paper whose analysis is already stored costs nothing: only the
        allow-list applies to it."""
        if not self.allowed(platform, team=team, chat=chat):
            return NOT_ENABLED
        if paper is not None:
            profile = await self.team.profile_for(platform, chat or "")
            if await self.pipeline.cached_analysis(paper, profile) is not None:
                return None
        cfg = self.settings.interactive
        if self.pipeline.llm is not None:
            midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            spent = await self.store.tokens_since(midnight, "interactive")
            if spent >= cfg.daily_token_budget:
                return "Today's budget for on-demand analysis is spent; try again after 00:00 UTC."
        wait = await self.chat.count_request(
            f"{platform}:{user}", timedelta(hours=1), cfg.user_requests_per_hour
        )
        if wait is not None:
            return f"You have reached {cfg.user_requests_per_hour} requests this hour; try again in {wait} s."
        return None

    # -- /analyze --------------------------------------------------------------------------------

    @staticmethod
    def parse(text: str) -> ArxivId | str:
        """The ArxivId, or the one line that says why the input cannot be served."""
        try:
            return parse_arxiv_id(text)
        except InvalidArxivId as exc:
            return str(exc)

    async def known_title(self, aid: ArxivId) -> str | None:
        paper = await self.store.get_paper(aid.base)
        return paper.title if paper else None

    async def analyze(
        self, dest: Destination, aid: ArxivId, *, on_stage: OnStage | None = None
    ) -> Outcome:
        """Start (once) the analysis thread of a paper in a chat, or point at the one there is.
        `on_stage` hears the stages of a new deep dive (none when it is cached)."""
        ORIGIN.set("interactive")
        scope = f"analysis:{aid.base}"
        lock = self._locks.setdefault((dest.channel.platform, dest.chat, aid.base), asyncio.Lock())
        async with lock:
            state = await self.chat.post_state(scope, dest.channel.platform, dest.chat)
            root = state.get("root")
            if (
                root
                and root.status is PostStatus.SENT
                and all(r.status is PostStatus.SENT for r in state.values())
            ):
                return Outcome(
                    True, f"Already analysed here: arXiv:{aid.base}", thread=root.message_ref
                )
            profile = await self.team.profile_for(dest.channel.platform, dest.chat)
            try:
                # The key figure is fetched while the analysis runs, posted after its text.
                entry, figure = await self.pipeline.analyze_with_figure(aid, profile, on_stage)
            except PaperNotFound as exc:
                return Outcome(False, str(exc))
            except SourceError as exc:
                log.warning("analyze %s: %s", aid, exc)
                return Outcome(
                    False, "arXiv cannot be reached right now; try again in a few minutes."
                )
            try:
                messages = dest.channel.render_analysis(entry)
                # A person asking again is the retry of an earlier failure (the bot invited
                # since).
                delivered = await post_thread(
                    self.chat,
                    dest,
                    scope,
                    messages,
                    kind="analysis",
                    papers=[entry.paper.arxiv_id],
                    retry_permanent=True,
                    retry=self.settings.retry,
                )
                state = await self.chat.post_state(scope, dest.channel.platform, dest.chat)
                root = state.get("root")
                thread = root.message_ref if root else None
                if delivered.ok and thread:
                    await post_figure(self.chat, dest, scope, thread, aid.base, figure)
            finally:
                figure.cancel()  # no-op once it finished; stops it when the text failed
        if not delivered.ok:
            return Outcome(
                False, f"Could not post the analysis: {delivered.error}", thread, delivered
            )
        return Outcome(
            True, f"Analysed: {entry.paper.title} (arXiv:{entry.paper.arxiv_id})", thread, delivered
        )

    # -- ratings (👍/👎 buttons, /digest like|dislike) ------------------------------------------

    async def press(
        self,
        platform: str,
        chat: str,
        user: str,
        arxiv_id: str,
        liked: bool,
        *,
        event_key: str,
        team: str | None = None,
    ) -> Vote | None:
        """A 👍/👎 button press on a deep dive: counted once per person (the same button again
        withdraws the vote, the other one switches it) for the destination's profile. None
        when it is not counted: a platform's redelivery of a press already seen (`event_key`
        names the press itself), a paper ID that is no ID, or a workspace/chat not enabled."""
        if not self.allowed(platform, team=team, chat=chat):
            return None
        if isinstance(self.parse(arxiv_id), str):
            log.warning("%s %s: a rating button with a bad paper ID was ignored", platform, chat)
            return None
        if not await self.chat.first_sight(event_key):
            return None
        paper = await self.store.get_paper(arxiv_id)
        profile = await destination_profile(self.settings, self.chat, platform, chat)
        return await self.chat.vote(
            platform,
            chat,
            arxiv_id,
            user,
            profile=profile.name,
            liked=liked,
            title=paper.title if paper else arxiv_id,
        )

    async def show_counts(
        self,
        platform: str,
        chat: str,
        message: str,
        arxiv_id: str,
        update: Callable[[int, int], Awaitable[None]],
    ) -> None:
        """Put the paper's current counts on the pressed message. One update at a time per
        message, each reading the counts afresh, so the last one shown is the stored count
        however the presses interleave; and at most one waiting behind it: a burst of presses
        costs a few edits, not one each (the waiting one reads the counts after every vote
        that found it waiting was stored). A failed update is logged: the vote stands."""
        key = (platform, chat, message)
        if key in self._count_pending:
            return  # the update already waiting will show this vote too
        self._count_pending.add(key)
        lock = self._count_locks.setdefault(key, asyncio.Lock())
        async with lock:
            self._count_pending.discard(key)
            up, down = await self.chat.votes(platform, chat, arxiv_id)
            try:
                await update(up, down)
            except Exception as exc:
                log.warning("%s %s: rating counts not shown: %s", platform, chat, exc)

    async def rate(self, req: Request, arxiv_id: str, liked: bool) -> str:
        """`/digest like ID`, `/digest dislike ID`: rate any paper (one the scorer missed, one
        never deep-dived) for this destination's profile. Returns the one line to answer with.
        Saying it again changes nothing; the other verb switches the verdict."""
        if not self.allowed(req.platform, team=req.team, chat=req.chat):
            return f"⚠️ {NOT_ENABLED}"
        if not arxiv_id.strip():
            return RATE_USAGE
        parsed = self.parse(arxiv_id)
        if isinstance(parsed, str):
            return f"⚠️ {parsed}"
        paper = await self.store.get_paper(parsed.base)
        if paper is None:
            try:
                paper = await self.pipeline.resolve(parsed)
            except PaperNotFound as exc:
                return f"⚠️ {exc}"
            except SourceError as exc:
                log.warning("rate %s: %s", parsed, exc)
                return "⚠️ arXiv cannot be reached right now; try again in a few minutes."
        profile = await destination_profile(self.settings, self.chat, req.platform, req.chat)
        vote = await self.chat.vote(
            req.platform,
            req.chat,
            paper.arxiv_id,
            req.user,
            profile=profile.name,
            liked=liked,
            title=paper.title,
            toggle=False,
        )
        mark = "👍" if liked else "👎"
        return (
            f"{mark} arXiv:{paper.arxiv_id} — {paper.title}: rated for the profile "
            f"“{profile.name}” (here 👍 {vote.up} · 👎 {vote.down}); it counts from the next digest."
        )

    # -- questions in threads ----------------------------------------------------------------------

    async def thread_of(self, platform: str, chat: str, ref: str) -> ThreadRecord | None:
        """The bot's thread that `ref` belongs to (root or one of its messages), if any."""
        return await self.chat.find_thread(platform, chat, ref)

    async def which_paper(
        self, thread: ThreadRecord, question: str, *, replied_to: str | None = None
    ) -> str | list[str]:
        """The arXiv ID the question means, or the candidates to ask about.

        In order: an ID in the question; a number as the table of contents numbers the picks
        ("#2", "paper 2", or a bare "2" answering "which paper?"); the paper whose deep dive
        the question replies to (`replied_to`, a message of the thread); the one title that
        shares the most distinctive words with the question; the paper the thread last
        talked about. Otherwise (or on a tie between titles) it is not a guess: the caller
        asks, listing the picked papers."""
        papers = list(thread.papers)
        if len(papers) == 1:
            return papers[0]
        for pid in papers:
            if pid in question:
                return pid
        number = _NUMBER.search(question) or _SELECTOR.fullmatch(question)
        if number and 1 <= int(number.group(1)) <= len(papers):
            return papers[int(number.group(1)) - 1]
        platform, chat = thread.platform, thread.chat
        if replied_to is not None:
            # Deep-dive messages are in the ledger under "<arxiv_id>#<part>".
            state = await self.chat.post_state(thread.scope, platform, chat)
            for key, row in state.items():
                if row.message_ref == replied_to and key.split("#")[0] in papers:
                    return key.split("#")[0]
        words = _title_words(question)
        hits: dict[str, int] = {}
        for pid in papers:
            paper = await self.store.get_paper(pid)
            if paper is not None:
                hits[pid] = len(words & _title_words(paper.title))
        best = max(hits.values(), default=0)
        leaders = [pid for pid, n in hits.items() if n == best]
        if best > 0 and len(leaders) == 1:
            return leaders[0]
        last = await self.chat.turns(platform, chat, thread.thread_ref, 1)
        if last and last[-1].arxiv_id in papers:
            return last[-1].arxiv_id  # a follow-up: "and its limitations?"
        day = thread.scope.removeprefix("digest:")
        # The digest this chat got: the one built for its profile (else the day's main one).
        profile = await self.team.profile_for(platform, chat)
        digest = await self.store.load_digest(day, profile.content_key)
        digest = digest or await self.store.load_digest(day)
        picked = [e.paper.arxiv_id for e in digest.picked] if digest else []
        return picked[0] if len(picked) == 1 else (picked or papers)

    async def ask_which(
        self,
        platform: str,
        chat: str,
        thread_ref: str,
        question: str,
        titled: list[tuple[str, str]],
    ) -> str:
        """The "which paper do you mean?" line for these (arXiv ID, title) pairs. The
        question is kept, so a reply that only names the paper ("2", an ID) gets it answered."""
        await self.chat.add_turn(
            platform, chat, thread_ref, "", PENDING, question.strip()[:MAX_QUESTION_CHARS]
        )
        return describe(titled)

    async def _ask_which(
        self, channel: Channel, req: Request, thread: ThreadRecord, ids: list[str]
    ) -> None:
        """Ask which paper, with one button per paper where the channel has buttons. The
        question is kept twice over: as the thread's PENDING turn (for a typed reply) and as
        a choice whose short key the buttons carry (the question may be 4,000 characters)."""
        question = req.text.strip()[:MAX_QUESTION_CHARS]
        titled = await self._titled(ids)
        text = await self.ask_which(req.platform, req.chat, thread.thread_ref, question, titled)
        line = channel.render_line(text)
        if channel.buttons:
            choice = await self.chat.save_choice(
                req.platform,
                req.chat,
                thread.thread_ref,
                message=req.message,
                reply_to=req.reply_to,
                asker=req.user,
                question=question,
                papers=ids,
            )
            options = [(pid, f"{n}. {title}") for n, (pid, title) in enumerate(titled, 1)]
            line = channel.render_choices(text, choice.key, options)
        await self._post(channel, req, [dataclasses.replace(line, key="ask")])

    async def _typed_pick(
        self, channel: Channel, req: Request, thread: ThreadRecord, target: str
    ) -> None:
        """A typed reply that only names a paper ("2", an ID) answers the kept question: it is
        that question's pick, so its buttons give way to the choice (a later press is told
        it was answered)."""
        last = await self.chat.turns(req.platform, req.chat, thread.thread_ref, 1)
        if not last or last[-1].role != PENDING:
            return
        # Cut as `answer` cuts it: the patterns are slow on a 50,000-character question.
        if not _only_names_a_paper(req.text.strip()[:MAX_QUESTION_CHARS]):
            return
        choice = await self.chat.latest_choice(req.platform, req.chat, thread.thread_ref)
        if choice is None or choice.question != last[-1].text or target not in choice.papers:
            return
        if await self.chat.claim_choice(choice.key, target, req.user):
            await self.show_choice(channel, dataclasses.replace(choice, chosen=target))

    @_told_when_not_recorded
    async def pick(
        self,
        platform: str,
        chat: str,
        user: str,
        key: str,
        paper: str,
        *,
        message: str,
        event_key: str,
        team: str | None = None,
        user_name: str | None = None,
    ) -> Picked:
        """A press on a "which paper?" button (`key` names the kept question, `paper` is the
        arXiv ID or the number the button carries; `message` is the pressed message). The
        first press wins: it is admitted like a typed question (allow-list, rate limit,
        budget) and returns the request that answers the kept question about that paper.
        Every other press gets one line and nothing is posted: a redelivery (no line), a
        second press or one after a typed reply ("already answered"), a button that is not
        this chat's, not this message's or not this question's (stale or forged). A database
        that cannot be written gets the presser the UNRECORDED line."""
        if not self.allowed(platform, team=team, chat=chat):
            return Picked(f"⚠️ {NOT_ENABLED}")
        if not await self.chat.first_sight(event_key):
            return Picked(None)
        choice = await self.chat.choice(key)
        arxiv_id = _chosen_paper(choice, paper) if choice is not None else None
        if (
            choice is None
            or arxiv_id is None
            or (choice.platform, choice.chat)
            != (
                platform,
                chat,
            )
        ):
            log.info("%s %s: a stale or unknown paper button was pressed", platform, chat)
            return Picked(PICK_STALE)
        thread = await self.chat.find_thread(platform, chat, choice.thread_ref)
        if thread is None or await self._asked_ref(choice) != message:
            log.info("%s %s: a paper button not on its question was pressed", platform, chat)
            return Picked(PICK_STALE)
        if choice.chosen is not None:
            return Picked(await self._already(choice))
        refusal = await self.admit(platform, user, team=team, chat=chat)
        if refusal is not None:
            return Picked(f"⚠️ {refusal}")
        if not await self.chat.claim_choice(key, arxiv_id, user):  # another press came first
            latest = await self.chat.choice(key)
            return Picked(await self._already(latest or choice))
        title = await self._title(arxiv_id)
        req = Request(
            platform,
            chat,
            user,
            key,
            message=f"pick-{key}",  # the ledger scope of the answer: one per question
            command=PICK,
            reply_to=choice.reply_to,
            thread=thread,
            team=team,
            user_name=user_name,
        )
        return Picked(f"Answering about: {title}", req)

    async def start_pick(
        self,
        channel: Channel,
        req: Request,
        key: str,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
    ) -> bool:
        """Record the answer of a won pick (`req`, from `pick`) in the journal under `key` and
        start it with `spawn`. False when the journal cannot be written: the pick is undone,
        so the question is not left marked answered with no answer, and a later press can
        still answer it; the adapter tells the presser."""
        try:
            if await self.journal.admit(key, req):
                spawn(self.journal.run(key, self.handle(channel, req)))
            return True
        except Exception:
            log.exception("%s %s: a paper pick not recorded", req.platform, req.chat)
        try:
            await self.chat.release_choice(req.text, req.user)
        except Exception:
            log.warning(
                "%s %s: a pick not recorded could not be undone either; the question stays"
                " marked answered",
                req.platform,
                req.chat,
            )
        return False

    async def _picked(
        self,
        channel: Channel,
        req: Request,
        done: Handled,
        *,
        tell: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        """The answer to a won press: the "which paper?" message shows the choice, then the
        kept question is answered about the chosen paper, as a typed question is."""
        choice = await self.chat.choice(req.text)
        if choice is None or choice.chosen is None or req.thread is None:
            log.error("%s %s: a pick without its choice", req.platform, req.chat)
            return
        await self.show_choice(channel, choice)
        await self._answer_in_thread(
            channel, req, done, req.thread, choice.chosen, choice.question, tell=tell, kept=True
        )

    async def show_choice(self, channel: Channel, choice: PaperChoice) -> None:
        """The "which paper?" message, its list kept, now says which paper was chosen and has
        no buttons (Slack chat.update; Telegram editMessageText, which drops the keyboard)."""
        ref = await self._asked_ref(choice)
        if ref is None or choice.chosen is None:
            return
        titled = await self._titled(list(choice.papers))
        n = choice.papers.index(choice.chosen) + 1
        title = titled[n - 1][1]
        text = describe(titled) + f"\n✅ Chosen: {n}. {title} (arXiv:{choice.chosen})"
        try:
            await channel.replace(choice.chat, ref, channel.render_line(text).payload)
        except Exception as exc:  # cosmetic: the answer still comes, a press is still refused
            log.warning("%s %s: the chosen paper not shown: %s", choice.platform, choice.chat, exc)

    async def _asked_ref(self, choice: PaperChoice) -> str | None:
        """The "which paper?" message of a choice, as the ledger recorded it."""
        state = await self.chat.post_state(f"reply:{choice.message}", choice.platform, choice.chat)
        row = state.get("ask")
        return row.message_ref if row is not None and row.status is PostStatus.SENT else None

    async def _already(self, choice: PaperChoice) -> str:
        title = await self._title(choice.chosen) if choice.chosen else "another paper"
        return f"Already answered, about: {title}"

    async def _title(self, pid: str) -> str:
        paper = await self.store.get_paper(pid)
        return paper.title if paper else pid

    async def _titled(self, ids: list[str]) -> list[tuple[str, str]]:
        titles = await self.store.titles(ids)  # one read for the whole list
        return [(pid, titles.get(pid, pid)) for pid in ids]

    async def answer(
        self,
        platform: str,
        chat: str,
        thread_ref: str,
        paper_id: str,
        question: str,
        *,
        on_delta: Callable[[str], Awaitable[None]] | None = None,
        kept: bool = False,
    ) -> Answer:
        """Answer with the thread's earlier turns as memory, and remember this turn.
        `on_delta` sees the model's text as it is written. A reply that only names a paper
        answers the question kept by "which paper?" instead, unless the question is itself
        a kept one (`kept`: a button press)."""
        ORIGIN.set("interactive")
        question = question.strip()[:MAX_QUESTION_CHARS]
        limit = self.settings.interactive.thread_memory_turns * 2
        earlier = await self.chat.turns(platform, chat, thread_ref, limit + 1)
        pending = bool(earlier) and earlier[-1].role == PENDING
        if pending and not kept and _only_names_a_paper(question):
            question = earlier[-1].text  # the reply to "which paper?" names it; answer that
        turns = [t for t in earlier if t.role != PENDING][-limit:] if limit else []
        history = [(t.role, t.text) for t in turns if t.arxiv_id == paper_id]
        profile = await self.team.profile_for(platform, chat)
        answer = await self.pipeline.answer(paper_id, question, history, on_delta, profile)
        await self.chat.add_turn(platform, chat, thread_ref, paper_id, "user", question)
        await self.chat.add_turn(platform, chat, thread_ref, paper_id, "assistant", answer.text)
        return answer


def describe(titled: list[tuple[str, str]]) -> str:
    """A short numbered list of (arXiv ID, title) pairs, for 'which paper do you mean?'."""
    lines = [f"{i}. {title} (arXiv:{pid})" for i, (pid, title) in enumerate(titled, start=1)]
    return ASK_WHICH + "\n" + "\n".join(lines)


def _chosen_paper(choice: PaperChoice, paper: str) -> str | None:
    """The candidate a button names, by arXiv ID or by its number; None if it is none."""
    if paper.isdigit():
        n = int(paper)
        return choice.papers[n - 1] if 1 <= n <= len(choice.papers) else None
    return paper if paper in choice.papers else None
