"""The request journal: nothing a person asked is lost to a crash, and nothing runs twice.

Every accepted request (an /analyze, a thread question; Slack or Telegram, webhook or
polling) is recorded in SQLite (`bot.chatstore`, table `journal`) before its work is
acknowledged, under the platform's redelivery key, and marked done once its answer, refusal
or failure line is posted. The same record is the redelivery check: a redelivered event whose
request is done is dropped; one whose request is still pending under a live process is left
to that process (it will answer); one pending under a process that is gone is taken over and
run here.

At start-up `serve` calls `recover`: every pending request of a process that is gone is
either finished (re-run through the same conversation flow; the posting ledger skips what was
already posted, the analysis cache what was already paid for) or, when it is older than
`interactive.resume_within_minutes`, answered with one line saying it failed and how to ask
again, in the place it was asked. Never both, never neither.

    adapter ── admit(key, request) ──► journal row (pending)  ─┐
       │ NEW / TAKEN_OVER                                      │ crash: row stays pending
       ▼                                                       ▼
    run(key, work) ── work posts its answer ── finish   recover() at start-up: re-run or tell
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot.chatstore import Admission, ChatStore, JournalEntry, ThreadRecord
from digest_core.store import process_owner

if TYPE_CHECKING:
    from bot.assistant import Request

log = logging.getLogger(__name__)

# A running request's hold on its journal row is renewed every LEASE_SECONDS / 3; a row not
# renewed for LEASE_SECONDS (its process hung or is gone) may be taken over by a redelivery.
LEASE_SECONDS = 60.0

Resume = Callable[["Request", dict[str, Any]], Awaitable[Any]]
Tell = Callable[["Request", dict[str, Any], str], Awaitable[Any]]


def request_record(req: Request) -> dict[str, Any]:
    """A Request as plain JSON values, for the journal."""
    return dataclasses.asdict(req)


def request_from_record(data: dict[str, Any]) -> Request:
    from bot.assistant import Request

    values = dict(data)
    thread = values.get("thread")
    if isinstance(thread, dict):
        values["thread"] = ThreadRecord(**{**thread, "papers": tuple(thread["papers"])})
    names = {f.name for f in dataclasses.fields(Request)}
    return Request(**{k: v for k, v in values.items() if k in names})


def gave_up_line(req: Request) -> str:
    """What a person is told when their request, cut off by a restart, is too old to finish."""
    if req.command and req.command != "pick":  # a "which paper?" press answers a question
        asked = f"/{req.command} {req.text}".strip()
        return f"⚠️ digestbot restarted and could not finish {asked}; please send it again."
    return "⚠️ digestbot restarted and could not answer your question; please ask it again."


class Journal:
    """The journal of one process (or one in-process bot, in tests)."""

    def __init__(self, chat: ChatStore, *, lease_seconds: float = LEASE_SECONDS) -> None:
        self.chat = chat
        self.owner = process_owner(f"j{id(self):x}")
        self.lease_seconds = lease_seconds

    async def admit(self, key: str, req: Request, extra: dict[str, Any] | None = None) -> bool:
        """Record a request as it arrives. True: run it now (new, or taken over from a process
        that is gone). False: a redelivery, answered or being answered; drop it. Raises when
        the database cannot be written (the adapter then tells the person)."""
        verdict = await self.chat.journal_accept(
            key,
            req.platform,
            req.chat,
            request_record(req),
            extra or {},
            self.owner,
            self.lease_seconds,
        )
        if verdict is Admission.TAKEN_OVER:
            log.warning("%s: request %s was cut off elsewhere; running it here", req.platform, key)
        elif verdict is Admission.RUNNING:
            log.info("%s: request %s redelivered while in progress", req.platform, key)
        return verdict in (Admission.NEW, Admission.TAKEN_OVER)

    async def run(self, key: str, work: Coroutine[Any, Any, Any]) -> Any:
        """Run a request's work, holding its journal row; mark it done when the work is over
        (its answer or failure line posted; or, on shutdown, the "restarting" line)."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease_seconds / 3)
                try:
                    await self.chat.journal_renew([key], self.owner)
                except Exception:
                    log.warning("request %s: journal hold not renewed", key, exc_info=True)

        renewing = asyncio.create_task(renew())
        try:
            result = await work
        except asyncio.CancelledError:
            await self._finish(key)  # the flow said "restarting, ask again" before stopping
            raise
        except Exception:
            # Left pending: nobody was told anything, so the next start-up tries again.
            log.error("request %s: failed without an answer; left for the next start-up", key)
            raise
        finally:
            renewing.cancel()
        await self._finish(key)
        return result

    async def _finish(self, key: str) -> None:
        try:
            await asyncio.shield(self.chat.journal_finish(key))
        except Exception:
            # The answer went out but cannot be recorded (the database broke): a restart
            # will run it again, and the ledger may not know what was posted.
            log.error("request %s: answered, but not marked done in the journal", key)

    async def recover(
        self,
        resumers: dict[str, tuple[Resume, Tell]],
        spawn: Callable[[Coroutine[Any, Any, Any]], Any],
        within: timedelta,
    ) -> int:
        """Take over what a crash cut off and start finishing it (as tracked tasks): re-run
        each request accepted within `within`, tell the older ones they failed. Requests of
        a platform not running now stay pending for a start-up that runs it. Returns how many
        were started."""
        pending = await self.chat.journal_take_pending(self.owner, self.lease_seconds)
        started = 0
        now = datetime.now(UTC)
        for entry in pending:
            pair = resumers.get(entry.platform)
            if pair is None:
                continue
            started += 1
            spawn(self.run(entry.key, self._resume(entry, pair, now - entry.accepted_at > within)))
        if started:
            log.warning("finishing %d request(s) cut off by a restart", started)
        return started

    async def _resume(self, entry: JournalEntry, pair: tuple[Resume, Tell], too_old: bool) -> None:
        resume, tell = pair
        req = request_from_record(entry.request)
        if too_old:
            log.warning("%s: request %s too old to finish; saying so", entry.platform, entry.key)
            await tell(req, entry.extra, gave_up_line(req))
        else:
            await resume(req, entry.extra)
