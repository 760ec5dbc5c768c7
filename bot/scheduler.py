"""The daily digest and the weekly roundup on a schedule: APScheduler 3.x cron, catch-up
after downtime, one post a day (a week).

APScheduler's defaults drop a run that is a second late and forget runs missed while the
process was down, so the job runs with a misfire grace of minutes, and at start-up the last
due run is caught up if it is still within the configured window. Exactly-once does not rest
on the scheduler: every run first claims its day in SQLite (with a lease that a live run keeps
renewing), so a restart, a second process or a daylight-saving night never posts twice.
The weekly roundup ([roundup] day and time; off by default) claims its week the same way, in
the same runs table (`roundup:<date>`), and posts through the ledger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot import history
from bot.channels.base import Channel
from bot.chatstore import ChatStore
from bot.service import (
    LOCAL_PLATFORMS,
    Delivered,
    Destination,
    deliver,
    digests_for,
)
from bot.settings import AppSettings as Settings
from bot.team import Team
from digest_core.models import Paper
from digest_core.pipeline import Pipeline
from digest_core.retry import RetryPolicy, TryAgain
from digest_core.sources import SourceError
from digest_core.sources.hf import fetch_daily_papers

log = logging.getLogger(__name__)

LEASE_SECONDS = 600.0
HEARTBEAT_SECONDS = 60.0
DELIVERY_ATTEMPTS = 3


class DailyTrigger(CronTrigger):
    """A cron trigger at HH:MM local time that fires exactly once per local date.

    APScheduler 3.11's cron arithmetic adds days in wall time, and across a daylight-saving
    change that goes wrong both ways: a job in the hour after midnight skips the day after a
    spring-forward (00:00 in Europe/Berlin fires on 29 March 2026, then on 31 March), and a
    time inside the repeated hour of a fall-back night fires twice. Here the next fire is
    worked out date by date: the first occurrence of HH:MM on each local date, or, on the night
    that time does not exist, the moment it would have been (an hour later by the clock).
    """

    def __init__(self, hour: int, minute: int, timezone: Any, weekday: int | None = None) -> None:
        super().__init__(hour=hour, minute=minute, timezone=timezone)
        self.at = time(hour, minute)
        self.weekday = weekday  # only on this day of the week (Monday 0): a weekly trigger

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        # As CronTrigger: the first fire after the previous one, or from `now` without one.
        start = now.astimezone(UTC)
        if previous_fire_time is not None:
            after = previous_fire_time.astimezone(UTC) + timedelta(microseconds=1)
            start = min(start, after)
        day = start.astimezone(self.timezone).date()
        for offset in range(-1, 3 if self.weekday is None else 9):
            date = day + timedelta(days=offset)
            if self.weekday is not None and date.weekday() != self.weekday:
                continue
            # fold=0: the first of a repeated time; a missing time resolves an hour later
            fire = datetime.combine(date, self.at, self.timezone)
            fire = fire.astimezone(UTC).astimezone(self.timezone)
            if fire.astimezone(UTC) >= start:
                return fire
        return None  # pragma: no cover - a day always has one


def make_trigger(settings: Settings) -> CronTrigger | None:
    if settings.digest.time is None:
        return None
    hour, minute = (int(x) for x in settings.digest.time.split(":"))
    return DailyTrigger(hour, minute, settings.digest.tz)


def make_roundup_trigger(settings: Settings) -> DailyTrigger | None:
    """The weekly roundup's trigger, or None when [roundup] day is "off"."""
    cfg = settings.roundup
    if cfg.weekday is None:
        return None
    hour, minute = (int(x) for x in cfg.time.split(":"))
    return DailyTrigger(hour, minute, settings.digest.tz, weekday=cfg.weekday)


def last_due(trigger: CronTrigger, now: datetime, days: int = 2) -> datetime | None:
    """The most recent fire time at or before `now` (looking back `days` days).

    Steps and comparisons are made in UTC: aware datetimes sharing a zone compare and add by
    wall clock, so on a fall-back night `fire + 1 s` would land before a repeated local time
    (02:30 fold=1) and the loop would find the same fire time forever.
    """
    now_utc = now.astimezone(UTC)
    fire = trigger.get_next_fire_time(None, now_utc - timedelta(days=days))
    last = None
    while fire is not None and fire.astimezone(UTC) <= now_utc:
        if last is not None and fire.astimezone(UTC) <= last.astimezone(UTC):
            break  # the trigger did not move on: never loop
        last = fire
        fire = trigger.get_next_fire_time(fire, fire.astimezone(UTC) + timedelta(seconds=1))
    return last


def digest_day(fire_time: datetime) -> str:
    """The HF date a run covers: its local date, never later than today in UTC (HF answers
    400 for a date after today in UTC)."""
    local = fire_time.date()
    utc_today = fire_time.astimezone(UTC).date()
    return min(local, utc_today).isoformat()


class DailyJob:
    """One day's digest: claim, wait for the list to fill, build, deliver, record."""

    def __init__(
        self,
        pipeline: Pipeline,
        destinations: Sequence[Destination],
        settings: Settings,
        owner: str,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        channels: Mapping[str, Channel] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.destinations = list(destinations)
        # A platform's channel, for chats subscribed from chat (`/digest subscribe`).
        self.channels = dict(channels or {d.channel.platform: d.channel for d in destinations})
        self.settings = settings
        self.owner = owner
        self.now = now
        self.sleep = sleep
        self.trigger = make_trigger(settings)

    @property
    def store(self) -> ChatStore:
        """The bot's state (runs, ledger) in the pipeline's database."""
        return ChatStore(self.pipeline.store)

    async def fire(self) -> str:
        """The scheduler's entry point: the day of this fire time. Returns the run's status."""
        return await self.run(digest_day(self.now().astimezone(self.settings.digest.tz)))

    async def catch_up(self) -> str | None:
        """At start-up: run the last due digest if it was missed and is still within the window."""
        due = self.missed(self.trigger)
        if due is None:
            return None
        day = digest_day(due)
        if await self.store.run_status(day) == "done":
            return None
        log.info("catching up the digest of %s (due %s)", day, due.isoformat())
        return await self.catching_up(day, due, lambda: self.run(day))

    def missed(
        self, trigger: CronTrigger | None, days: int = 2, now: datetime | None = None
    ) -> datetime | None:
        """`trigger`'s last fire time (looking back `days` days from `now`) when it is at most
        `catch_up_hours` ago, else None."""
        if trigger is None:
            return None
        now = (now or self.now()).astimezone(self.settings.digest.tz)
        due = last_due(trigger, now, days=days)
        # Elapsed real time, in UTC: in one zone, aware datetimes subtract by wall clock, which
        # is an hour off across a daylight-saving change.
        late = now.astimezone(UTC) - due.astimezone(UTC) if due is not None else None
        if late is None or late > timedelta(hours=self.settings.digest.catch_up_hours):
            return None
        return due

    async def catching_up(
        self,
        key: str,
        due: datetime,
        run: Callable[[], Awaitable[str]],
        now: Callable[[], datetime] | None = None,
    ) -> str:
        """`run` the missed run `key` (due at `due`; `now`: the caller's clock). Claimed by
        another owner, alive or dead (a hard kill) with its lease not yet lapsed: look again
        when it would have lapsed, until the catch-up window closes, so a killed run is not
        lost."""
        window_end = due.astimezone(UTC) + timedelta(hours=self.settings.digest.catch_up_hours)
        while True:
            status = await run()
            if status != "skipped" or await self.store.run_status(key) != "running":
                return status
            if (now or self.now)().astimezone(UTC) >= window_end:
                return status
            await self.sleep(LEASE_SECONDS / 2)

    async def claimed(
        self, key: str, work: Callable[[], Awaitable[tuple[str, str]]], what: str = ""
    ) -> str:
        """Run `work` (which returns its status and detail) under the claim of `key` in the runs
        table, once: "skipped" when another owner holds or finished it. The lease is renewed
        for the whole run (building against a slow LLM or waiting out a flood limit can take
        longer than the lease, and a second process must not take a live run over), and the
        run's end is recorded whatever happened. `what` names the run in log lines."""
        what = what or key
        if not await self.store.claim_run(key, self.owner, LEASE_SECONDS):
            log.info("%s already claimed or done: not posting", what)
            return "skipped"
        status, detail = "failed", ""
        keep_alive = asyncio.get_running_loop().create_task(self._keep_alive(key))
        try:
            status, detail = await work()
        except SourceError as exc:
            detail = str(exc)
            log.error("%s failed: %s", what, exc)
        except Exception as exc:
            detail = type(exc).__name__
            log.exception("%s failed", what)
        finally:
            keep_alive.cancel()
            await self.store.finish_run(key, status, detail[:500], owner=self.owner)
        return status

    async def run(self, day: str) -> str:
        await self.store.prune()  # once a day is often enough for the dedupe and rate tables

        async def work() -> tuple[str, str]:
            # Each destination with its profile; one digest per distinct profile.
            team = Team(self.settings, self.store)
            destinations = await team.destinations(self.destinations, self.channels)
            plan = await team.plan(destinations)
            digests = await digests_for(
                self.pipeline,
                self.store,
                day,
                plan,
                papers=lambda: self.wait_for_papers(day),
            )
            pairs = {id(dest): digests[profile.content_key] for dest, profile in plan}

            async def send(dest: Destination) -> Delivered:
                digest = pairs[id(dest)]
                return await deliver(
                    self.store, dest, digest, self.settings, pipeline=self.pipeline
                )

            failed = await self.deliver_all([dest for dest, _ in plan], day, send)
            return failed_status(failed)

        return await self.claimed(day, work, f"digest {day}")

    async def _keep_alive(self, day: str) -> None:
        """Renew the day's lease on the real clock until cancelled."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.store.heartbeat(day, self.owner)
            except Exception:  # a missed beat is retried next time; the run goes on
                log.warning("could not renew the lease of %s", day, exc_info=True)

    async def wait_for_papers(self, day: str) -> list[Paper]:
        """Poll HF until the day's list holds top_n papers or the cut-off passes."""
        cfg = self.settings.digest
        cutoff_time = time.fromisoformat(cfg.wait_until)
        cutoff = datetime.combine(datetime.fromisoformat(day).date(), cutoff_time, tzinfo=cfg.tz)
        while True:
            try:
                papers = await fetch_daily_papers(self.pipeline.http, self.settings.sources, day)
            except SourceError:
                if self.now() >= cutoff:
                    raise
                papers = None
            if papers is not None and (len(papers) >= cfg.top_n or self.now() >= cutoff):
                return papers
            if self.now() >= cutoff:
                return papers or []
            have = "unreachable" if papers is None else f"{len(papers)} paper(s)"
            log.info("HF list for %s: %s; looking again in %.0f min", day, have, cfg.poll_minutes)
            await self._wait(day, min(cfg.poll_minutes * 60, (cutoff - self.now()).total_seconds()))

    async def _wait(self, day: str, seconds: float) -> None:
        """Sleep, renewing the day's lease so no other process takes it over."""
        remaining = max(0.0, seconds)
        while remaining > 0:
            step = min(remaining, HEARTBEAT_SECONDS)
            await self.sleep(step)
            remaining -= step
            await self.store.heartbeat(day, self.owner)

    async def deliver_all(
        self,
        destinations: Sequence[Destination],
        run_key: str,
        send: Callable[[Destination], Awaitable[Delivered | None]],
    ) -> list[Delivered]:
        """`send` to every destination (None: nothing to send there); transient failures are
        tried again a few times, permanent ones are reported once and left. Between rounds
        the run `run_key` (a day, a week's roundup) keeps its lease."""
        pending = list(destinations)
        last: dict[int, Delivered] = {}  # each destination's latest result, across rounds
        # Rounds a minute apart, then two: long enough for a platform's hiccup to pass.
        policy = RetryPolicy.from_settings(
            self.settings.retry,
            attempts=DELIVERY_ATTEMPTS,
            backoff_base=60.0,
            backoff_max=600.0,
            retry_after_cap=float("inf"),
        )

        async def round_(_: int) -> None:
            nonlocal pending
            retry = []
            for dest in pending:
                result = await send(dest)
                if result is None:
                    continue
                last[id(dest)] = result
                if not result.ok and result.retryable:
                    retry.append(dest)
            if retry:
                pending = retry
                raise TryAgain(f"{len(retry)} destination(s) failed for now")

        async def wait(seconds: float) -> None:
            await self._wait(run_key, seconds)

        try:
            await policy.run(round_, what=f"delivery of {run_key}", sleep=wait)
        except TryAgain:
            pass  # the last round's failures are reported below
        return [r for r in last.values() if not r.ok]


class RoundupJob:
    """The weekly roundup: on its day, each destination of the daily digest (configured or
    subscribed from chat) gets its `/digest week` in the channel. The week is claimed in the
    runs table as `roundup:<local date>`, so two processes post it once; each post goes
    through the ledger, so a run taken over after a crash sends only what was missing."""

    def __init__(
        self,
        daily: DailyJob,
        *,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.daily = daily
        self.settings = daily.settings
        self.owner = daily.owner
        self.now = now or daily.now
        self.trigger = make_roundup_trigger(self.settings)

    @property
    def store(self) -> ChatStore:
        return self.daily.store

    async def fire(self) -> str:
        """The scheduler's entry point: this week's roundup. Returns the run's status."""
        return await self.run(self.now())

    async def catch_up(self) -> str | None:
        """At start-up: post the last due roundup if it was missed, within the digest's
        catch-up window (waiting out a killed run's lease, as the digest does)."""
        due = self.daily.missed(self.trigger, days=8, now=self.now())
        if due is None:
            return None
        key = roundup_key(due.astimezone(self.settings.digest.tz))
        if await self.store.run_status(key) == "done":
            return None
        log.info("catching up the weekly roundup due %s", due.isoformat())
        return await self.daily.catching_up(key, due, lambda: self.run(due), self.now)

    async def run(self, at: datetime) -> str:
        """The roundup of the seven days before `at`, to every destination, once."""
        key = roundup_key(at.astimezone(self.settings.digest.tz))

        async def work() -> tuple[str, str]:
            team = Team(self.settings, self.store)
            daily = self.daily
            destinations = await team.destinations(daily.destinations, daily.channels)

            async def send(dest: Destination) -> Delivered | None:
                return await self._post(team, dest, key, at)

            # Rounds like the daily digest's: a platform's hiccup does not lose the roundup.
            return failed_status(await daily.deliver_all(destinations, key, send))

        return await self.daily.claimed(key, work)

    async def _post(
        self, team: Team, dest: Destination, key: str, at: datetime
    ) -> Delivered | None:
        if dest.channel.platform in LOCAL_PLATFORMS:
            return None
        roundup = await team.week(dest.channel.platform, dest.chat, at)
        if roundup is None:
            log.info("%s: nothing posted in %s this week: no roundup", key, dest.label)
            return None
        return await history.post_roundup(self.store, dest, key, roundup, self.settings.retry)


def failed_status(failed: list[Delivered]) -> tuple[str, str]:
    """A run's status and detail from the destinations that failed in its last round."""
    detail = "; ".join(f"{r.destination}: {r.error}" for r in failed)
    return ("failed" if failed else "done"), detail


def roundup_key(at: datetime) -> str:
    """The runs-table key (and ledger scope) of the roundup due at `at` (local time)."""
    return f"roundup:{at.date().isoformat()}"


def start_scheduler(
    job: DailyJob,
    settings: Settings,
    target: Callable[[], Awaitable[Any]] | None = None,
    *,
    roundup: RoundupJob | None = None,
    roundup_target: Callable[[], Awaitable[Any]] | None = None,
) -> AsyncIOScheduler:
    """Start the scheduler in the running loop, with the cron job unless DIGEST_TIME=off and
    the weekly roundup when [roundup] sets a day. `target` (`roundup_target`) replaces
    `job.fire` (`roundup.fire`) as what runs (serve wraps them so shutdown can drain them)."""
    trigger = make_trigger(settings)
    scheduler = AsyncIOScheduler(timezone=settings.digest.tz)
    weekly = roundup.trigger if roundup is not None else None
    # Both jobs: one run at a time, missed runs folded into one, and late by up to 15 minutes
    # still run (catching up beyond that is the jobs' own `catch_up`).
    once: dict[str, Any] = {
        "replace_existing": True,
        "coalesce": True,
        "max_instances": 1,
        "misfire_grace_time": 15 * 60,
    }
    if weekly is not None and roundup is not None:
        scheduler.add_job(roundup_target or roundup.fire, weekly, id="weekly_roundup", **once)
    if trigger is not None:
        scheduler.add_job(target or job.fire, trigger, id="daily_digest", **once)
    scheduler.start()
    return scheduler
