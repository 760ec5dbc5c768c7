"""The daily job: when it fires, which day it covers, and that each day is posted exactly once.

`DailyJob` runs with an injected clock (`now`, and a `sleep` that moves the clock instead of
waiting), the real pipeline against the fakes of Hugging Face, arXiv and the LLM (World), and
the real Slack channel against FakeSlack. What is checked is what a user would see: which
digests reached the channel, in which thread, how many times, and the state the run ledger
records. Processes that die or race are real child processes where that is cheap, and second
`DailyJob`s on the same database file otherwise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from fakes.slack import FakeSlack
from fakes.telegram import DEFAULT_TOKEN as TELEGRAM_TOKEN
from fakes.telegram import FakeTelegram
from fakes.world import CONFIG, ROOT, World
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from bot.channels.slack import SlackChannel, make_slack_client
from bot.channels.telegram import TelegramChannel, make_bot, make_rate_limiter
from bot.chatstore import ChatStore, open_pipeline
from bot.scheduler import DailyJob, digest_day, last_due, make_trigger, start_scheduler
from bot.service import Destination
from bot.settings import AppSettings as Settings
from bot.settings import load_settings
from digest_core.pipeline import Pipeline
from digest_core.render.labels import label

DAY = "2026-01-23"  # a recorded HF day with 18 papers
EMPTY_DAY = "2026-01-24"  # HF lists nothing
SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")


def local(day: str, hhmm: str, tz: ZoneInfo = SHANGHAI, fold: int = 0) -> datetime:
    return datetime.combine(date.fromisoformat(day), time.fromisoformat(hhmm), tz).replace(
        fold=fold
    )


def with_digest(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"digest": settings.digest.model_copy(update=changes)})


def plain_settings(tmp_path: Path, **env: str) -> Settings:
    return load_settings(
        env={
            "DIGEST_CONFIG": str(CONFIG),
            "DIGEST_DB": str(tmp_path / "digestbot.db"),
            "DIGEST_LLM_MODEL": "gpt-test",
            **env,
        }
    )


def fire_times(trigger: CronTrigger, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time in [start, end), stepping in UTC as the scheduler does."""
    out: list[datetime] = []
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire.astimezone(UTC) < end.astimezone(UTC):
        out.append(fire)
        fire = trigger.get_next_fire_time(fire, fire.astimezone(UTC) + timedelta(seconds=1))
    return out


def finishes(fn: Callable[[], Any], within: float = 10.0) -> Any:
    """Run `fn` on a daemon thread: a hang fails the test instead of hanging the suite."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    worker.start()
    worker.join(within)
    assert not worker.is_alive(), "did not return: looping forever?"
    return result[0]


class Clock:
    """The job's `now` and `sleep`: sleeping moves the clock, it never waits."""

    def __init__(self, start: datetime) -> None:
        self.at = start.astimezone(UTC)
        self.slept: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def now(self) -> datetime:
        return self.at

    def set(self, when: datetime) -> None:
        self.at = when.astimezone(UTC)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.at += timedelta(seconds=seconds)
        if self.on_sleep is not None:
            self.on_sleep()
        await asyncio.sleep(0)


def run_row(db: Path, day: str) -> tuple[str, str | None, str] | None:
    """(status, detail, owner) of the day's run, read straight from the file."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "select status, detail, owner from runs where digest_date = ?", [day]
        ).fetchone()
    finally:
        conn.close()
    return row


def expire_lease(db: Path, day: str) -> None:
    """What ten quiet minutes do to a dead owner's claim: its last heartbeat is long past."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(
                "update runs set heartbeat_at = '2000-01-01T00:00:00+00:00' where digest_date = ?",
                [day],
            )
    finally:
        conn.close()


# ------------------------------------------------------------------------------ fixtures


@dataclass
class Env:
    world: World
    slack: FakeSlack
    channel: SlackChannel
    pipelines: list[Pipeline] = field(default_factory=list)

    def settings(self, **digest: Any) -> Settings:
        return with_digest(self.world.settings(), **digest)

    async def job(
        self, settings: Settings, clock: Clock, owner: str = "host-a:100", channel: Any = None
    ) -> DailyJob:
        """A DailyJob as one process would run it: its own pipeline and store on the file."""
        pipeline = await open_pipeline(settings)
        self.pipelines.append(pipeline)
        destinations = [Destination(channel or self.channel, "C1")]
        return DailyJob(pipeline, destinations, settings, owner, now=clock.now, sleep=clock.sleep)

    def posts(self) -> list[dict[str, Any]]:
        return self.slack.messages("C1")

    def child_env(self) -> dict[str, str]:
        return self.world.env(
            SLACK_BOT_TOKEN=self.slack.token,
            SLACK_API_URL=f"{self.slack.url}/api/",
            SLACK_CHANNELS="C1",
        )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with World(tmp_path) as world, FakeSlack(channels={"C1"}) as slack:
        client = make_slack_client(
            slack.token, slack.url + "/api/", retry_interval=FixedValueRetryIntervalCalculator(0.01)
        )
        channel = SlackChannel(client, language="zh")
        box = Env(world, slack, channel)
        try:
            yield box
        finally:
            for pipeline in box.pipelines:
                await pipeline.aclose()
            await channel.aclose()


def assert_one_digest_thread(posts: list[dict[str, Any]], day: str, replies: int) -> None:
    """One TOC for `day`, then its `replies` deep dives in its thread, each once."""
    assert len(posts) == 1 + replies, [p["text"][:60] for p in posts]
    root = posts[0]
    assert root["thread_ts"] is None and root["text"].startswith(f"🚀 CV 论文日报 | {day}")
    assert [p["thread_ts"] for p in posts[1:]] == [root["ts"]] * replies
    keys = [p["metadata"]["event_payload"]["key"] for p in posts]
    assert len(set(keys)) == len(keys)
    assert [p["text"].split(".")[0] for p in posts[1:]] == [str(i + 1) for i in range(replies)]


# ---------------------------------------------------------------- last_due and digest_day


def test_last_due_is_the_latest_fire_at_or_before_now(tmp_path: Path) -> None:
    trigger = make_trigger(
        plain_settings(tmp_path, DIGEST_TIMEZONE="Asia/Shanghai", DIGEST_TIME="09:00")
    )
    assert trigger is not None
    assert last_due(trigger, local(DAY, "08:30")) == local("2026-01-22", "09:00")
    assert last_due(trigger, local(DAY, "09:00")) == local(DAY, "09:00")
    assert last_due(trigger, local(DAY, "09:30")) == local(DAY, "09:00")
    assert last_due(trigger, local(DAY, "23:59")) == local(DAY, "09:00")
    # `now` in another zone means the same instant
    assert last_due(trigger, local(DAY, "09:30").astimezone(UTC)) == local(DAY, "09:00")


def test_digest_day_is_the_local_date_but_never_after_the_utc_date() -> None:
    assert digest_day(local(DAY, "09:00")) == DAY  # 01:00 UTC the same day
    assert digest_day(local(DAY, "07:59")) == "2026-01-22"  # 23:59 UTC the day before
    la = ZoneInfo("America/Los_Angeles")
    assert digest_day(local("2026-01-22", "20:00", la)) == "2026-01-22"  # 04:00 UTC the 23rd


def test_last_due_on_a_fall_back_night_is_the_first_0230_and_returns(tmp_path: Path) -> None:
    settings = plain_settings(tmp_path, DIGEST_TIMEZONE="Europe/Berlin", DIGEST_TIME="02:30")
    trigger = make_trigger(settings)
    assert trigger is not None
    first = local("2026-10-25", "02:30", BERLIN, fold=0).astimezone(UTC)  # 00:30 UTC, summer
    second = local("2026-10-25", "02:30", BERLIN, fold=1).astimezone(UTC)  # 01:30 UTC, winter
    assert second - first == timedelta(hours=1)

    # after the repeated hour, on the day and the day after (inside the two-day look-back)
    for now in (second + timedelta(minutes=1), local("2026-10-25", "10:00", BERLIN)):
        due = finishes(lambda now=now: last_due(trigger, now))
        assert due is not None and due.astimezone(UTC) == first
    day_after = finishes(lambda: last_due(trigger, local("2026-10-26", "01:00", BERLIN)))
    assert day_after is not None and day_after.astimezone(UTC) == first
    # before the first 02:30 the last fire is the day before
    before = finishes(lambda: last_due(trigger, first - timedelta(minutes=1)))
    assert before is not None and before.astimezone(UTC) == local(
        "2026-10-24", "02:30", BERLIN
    ).astimezone(UTC)


# ------------------------------------------------------------------------------------ DST


@pytest.mark.parametrize("at", ["02:30", "00:00", "09:00"])
async def test_one_digest_per_local_date_through_both_dst_nights(env: Env, at: str) -> None:
    settings = env.settings(
        timezone="Europe/Berlin", time=at, wait_until="00:00", empty_day_notice=True
    )
    trigger = make_trigger(settings)
    assert trigger is not None
    fires = fire_times(
        trigger, local("2026-03-28", "00:00", BERLIN), local("2026-04-01", "00:00", BERLIN)
    ) + fire_times(
        trigger, local("2026-10-24", "00:00", BERLIN), local("2026-10-28", "00:00", BERLIN)
    )
    # One fire on every local date: none skipped after the spring-forward (APScheduler's own
    # cron arithmetic loses 30 March for a 00:00 job), none repeated in the fall-back hour.
    local_dates = [fire.astimezone(BERLIN).date() for fire in fires]
    assert local_dates == [date(2026, 3, d) for d in range(28, 32)] + [
        date(2026, 10, d) for d in range(24, 28)
    ]
    if at == "02:30":  # a time that does not exist that night comes an hour late by the clock
        assert fires[1].astimezone(BERLIN).strftime("%H:%M %Z") == "03:30 CEST"

    clock = Clock(fires[0])
    job = await env.job(settings, clock, owner="host-a:1")
    restarted = await env.job(settings, clock, owner="host-b:2")
    outcome: dict[date, list[str]] = {}
    days: list[str] = []
    for fire in fires:
        clock.set(fire)
        day = digest_day(fire.astimezone(BERLIN))
        for process in (job, restarted):  # the scheduler, then a restart at the same instant
            statuses = outcome.setdefault(fire.astimezone(BERLIN).date(), [])
            statuses.append(await process.fire())
        days.append(day)
    for local_date, statuses in outcome.items():
        assert statuses.count("done") == 1, (local_date, statuses)
        assert set(statuses) == {"done", "skipped"}
    distinct = list(dict.fromkeys(days))
    assert len(distinct) == 8
    line = "{} · " + label("zh", "empty")
    assert [p["text"] for p in env.posts()] == [
        line.format(label("zh", "title", date=d)) for d in distinct
    ]


# ------------------------------------------------------------------- one claim per day


async def test_two_jobs_racing_for_the_day_on_one_database_post_once(env: Env) -> None:
    settings = env.settings()
    clock = Clock(local(DAY, "09:00"))
    first = await env.job(settings, clock, owner="host-a:1")
    second = await env.job(settings, clock, owner="host-b:2")
    statuses = await asyncio.gather(first.run(DAY), second.run(DAY))
    assert sorted(statuses) == ["done", "skipped"]
    assert_one_digest_thread(env.posts(), DAY, replies=2)
    status, _, owner = run_row(env.world.db, DAY) or ("", "", "")
    assert status == "done" and owner == ("host-a:1" if statuses[0] == "done" else "host-b:2")


async def test_two_stores_opening_a_new_database_at_once_both_work(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "digestbot.db"
    stores = await asyncio.gather(ChatStore.open(path), ChatStore.open(path))
    try:
        claims = await asyncio.gather(stores[0].claim_run(DAY, "a"), stores[1].claim_run(DAY, "b"))
        assert sorted(claims) == [False, True]
    finally:
        for store in stores:
            await store.close()


CHILD = """
import asyncio, sys
from bot.scheduler import DailyJob
from bot.service import parse_destinations
from bot.settings import load_settings
from bot.chatstore import open_pipeline

async def main(owner, day):
    settings = load_settings()
    pipeline = await open_pipeline(settings)
    destinations = parse_destinations(None, settings)
    try:
        print(await DailyJob(pipeline, destinations, settings, owner).run(day), flush=True)
    finally:
        for channel in {id(d.channel): d.channel for d in destinations}.values():
            await channel.aclose()
        await pipeline.aclose()

asyncio.run(main(*sys.argv[1:]))
"""


async def start_child(env: Env, owner: str) -> asyncio.subprocess.Process:
    """A separate digestbot process running the day's job (its clock is the real one)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        owner,
        DAY,
        env={"PATH": os.environ.get("PATH", ""), **env.child_env()},
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_two_processes_starting_at_once_on_a_new_database_post_once(env: Env) -> None:
    env.world.db.unlink()  # a first start: no database yet (World puts a migrated one there)
    children = [await start_child(env, f"host-{i}:{i}") for i in (1, 2)]
    results = await asyncio.gather(*(c.communicate() for c in children))
    assert [c.returncode for c in children] == [0, 0], [err.decode()[-800:] for _, err in results]
    assert sorted(out.decode().strip() for out, _ in results) == ["done", "skipped"]
    assert_one_digest_thread(env.posts(), DAY, replies=2)


@dataclass
class StallingSlack(FakeSlack):
    """FakeSlack that stores the first `stall_after` posts and leaves every later one
    unanswered, so a test can kill the poster at a known point."""

    stall_after: int | None = None
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def _post_message(self, request: Any, params: dict[str, Any]) -> Any:
        if self.stall_after is not None and len(self.messages("C1")) >= self.stall_after:
            self.stalled.set()
            await self.release.wait()
            return self._html_error(503)
        return await super()._post_message(request, params)

    async def stop(self) -> None:
        self.release.set()
        await super().stop()


async def test_a_process_killed_mid_digest_is_finished_by_catch_up_once_its_lease_expires(
    tmp_path: Path,
) -> None:
    slack = StallingSlack(channels={"C1"}, stall_after=2)  # the TOC and the first reply
    async with World(tmp_path) as world, slack:
        client = make_slack_client(slack.token, slack.url + "/api/")
        box = Env(world, slack, SlackChannel(client, language="zh"))
        try:
            child = await start_child(box, "host-a:1")
            stalled = asyncio.ensure_future(slack.stalled.wait())
            exited = asyncio.ensure_future(child.wait())
            await asyncio.wait({stalled, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not stalled.done():
                stalled.cancel()
                err = await child.stderr.read() if child.stderr else b""
                pytest.fail(f"the child ended before reply 2: {err.decode()[-800:]}")
            exited.cancel()
            child.send_signal(signal.SIGKILL)  # kill -9 while reply 2 is on the wire
            await child.wait()
            slack.stall_after = None
            slack.release.set()
            posted = box.posts()
            assert len(posted) == 2  # the TOC and reply 1; reply 2 never arrived
            assert (run_row(world.db, DAY) or ("",))[0] == "running"

            clock = Clock(local(DAY, "10:30"))  # the restart, within the catch-up window
            restarted = await box.job(box.settings(), clock, owner="host-b:2")
            # The dead owner's lease is still fresh: it might be alive, so catch-up posts
            # nothing and looks again when the lease would have lapsed (here: it has).
            seen_while_waiting: list[int] = []

            def lease_lapses() -> None:
                seen_while_waiting.append(len(box.posts()))
                expire_lease(world.db, DAY)

            clock.on_sleep = lease_lapses
            assert await restarted.catch_up() == "done"
            assert seen_while_waiting == [2] and clock.slept == [300.0]
            posts = box.posts()
            assert_one_digest_thread(posts, DAY, replies=2)
            assert posts[:2] == posted  # resumed in the same thread, nothing repeated
            assert run_row(world.db, DAY) == ("done", "", "host-b:2")
            assert await restarted.catch_up() is None
        finally:
            for pipeline in box.pipelines:
                await pipeline.aclose()
            await box.channel.aclose()


# ---------------------------------------------------------------------------- catch-up


async def test_catch_up_runs_a_missed_digest_only_within_the_window(env: Env) -> None:
    settings = env.settings(timezone="Asia/Shanghai", time="09:00", catch_up_hours=6.0)

    too_late = await env.job(settings, Clock(local(DAY, "16:00")))
    assert await too_late.catch_up() is None  # 7 h after 09:00: left alone
    assert env.world.hf.daily_requests() == [] and env.posts() == []
    assert run_row(env.world.db, DAY) is None

    in_time = await env.job(settings, Clock(local(DAY, "10:30")), owner="host-b:2")
    assert await in_time.catch_up() == "done"
    assert_one_digest_thread(env.posts(), DAY, replies=2)

    again = await env.job(settings, Clock(local(DAY, "10:45")), owner="host-c:3")
    assert await again.catch_up() is None  # done already: not even a claim
    assert len(env.posts()) == 3


async def test_catch_up_measures_the_window_in_real_hours_across_spring_forward(
    env: Env,
) -> None:
    # Due at 00:00 CET (23:00 UTC); at 06:30 CEST (04:30 UTC) 5.5 real hours have passed,
    # though the wall clock moved 6.5.
    settings = env.settings(
        timezone="Europe/Berlin",
        time="00:00",
        catch_up_hours=6.0,
        wait_until="00:00",
        empty_day_notice=True,
    )
    job = await env.job(settings, Clock(local("2026-03-29", "06:30", BERLIN)))
    assert await job.catch_up() == "done"
    assert [p["text"] for p in env.posts()] == [
        f"{label('zh', 'title', date='2026-03-28')} · {label('zh', 'empty')}"
    ]


# ----------------------------------------------------------------- waiting for the list


async def test_the_job_polls_until_the_list_holds_top_n_then_goes(env: Env) -> None:
    hf = env.world.hf
    full = hf.days[DAY]
    hf.days[DAY] = full[:5]

    def fill_after_two_polls() -> None:
        if len(hf.daily_requests()) >= 2:
            hf.days[DAY] = full

    clock = Clock(local(DAY, "09:00"))
    clock.on_sleep = fill_after_two_polls
    settings = env.settings()
    job = await env.job(settings, clock)
    assert await job.run(DAY) == "done"
    assert len(hf.daily_requests()) == 3  # 5, 5, then 18 papers
    assert sum(clock.slept) == 2 * settings.digest.poll_minutes * 60
    assert_one_digest_thread(env.posts(), DAY, replies=2)
    assert "扫描 15 篇" in env.posts()[0]["text"]


async def test_at_the_cut_off_the_job_goes_with_what_there_is(env: Env) -> None:
    hf = env.world.hf
    hf.days[DAY] = hf.days[DAY][:5]
    clock = Clock(local(DAY, "12:00"))
    job = await env.job(env.settings(), clock)
    assert await job.run(DAY) == "done"
    assert clock.now() == local(DAY, "13:00")  # it waited exactly until the cut-off
    assert len(hf.daily_requests()) == 4  # 12:00, 12:20, 12:40, 13:00
    assert "扫描 5 篇" in env.posts()[0]["text"]
    assert len(env.posts()) == 3


async def test_hugging_face_down_until_the_cut_off_fails_the_day_with_the_reason(
    env: Env,
) -> None:
    hf = env.world.hf
    hf.status = 503
    settings = env.settings()
    settings = settings.model_copy(
        update={"sources": settings.sources.model_copy(update={"retries": 0})}
    )
    clock = Clock(local(DAY, "12:00"))
    job = await env.job(settings, clock)
    assert await job.run(DAY) == "failed"
    status, detail, _ = run_row(env.world.db, DAY) or ("", "", "")
    assert status == "failed" and "Hugging Face" in (detail or "")
    assert len(hf.daily_requests()) == 4 and env.posts() == []

    hf.status = None  # back later: the failed day can still be posted, once
    assert await job.run(DAY) == "done"
    assert await job.run(DAY) == "skipped"
    assert_one_digest_thread(env.posts(), DAY, replies=2)


async def test_a_day_without_papers_posts_nothing_and_is_done(env: Env) -> None:
    clock = Clock(local(EMPTY_DAY, "12:40"))
    job = await env.job(env.settings(), clock)
    assert await job.run(EMPTY_DAY) == "done"
    assert env.posts() == []
    assert (run_row(env.world.db, EMPTY_DAY) or ("",))[0] == "done"


# ------------------------------------------------------------------ delivery in the job


async def test_a_permanent_failure_is_not_retried_and_fails_the_day_with_the_reason(
    env: Env,
) -> None:
    env.slack.permanent_error("C1", "not_in_channel")
    clock = Clock(local(DAY, "09:00"))
    job = await env.job(env.settings(), clock)
    assert await job.run(DAY) == "failed"
    assert clock.slept == []  # no waiting for a retry that cannot help
    assert env.slack.api_calls("chat.postMessage") == 1
    status, detail, _ = run_row(env.world.db, DAY) or ("", "", "")
    assert status == "failed"
    assert detail == "slack:C1: slack chat.postMessage: not_in_channel"


async def test_a_transient_failure_is_retried_by_the_job_after_a_pause_and_lands_once(
    env: Env,
) -> None:
    telegram = FakeTelegram(TELEGRAM_TOKEN)
    telegram.add_chat(-100456)
    telegram.server_error_next(3)  # the TOC fails three times: this attempt at the chat gives up
    limiter = make_rate_limiter(group_max_rate=100_000, overall_max_rate=100_000)
    async with (
        telegram,
        make_bot(telegram.token, f"{telegram.url}/bot", rate_limiter=limiter) as bot,
    ):
        clock = Clock(local(DAY, "09:00"))
        settings = env.settings()
        pipeline = await open_pipeline(settings)
        env.pipelines.append(pipeline)
        destinations = [
            Destination(env.channel, "C1"),
            Destination(TelegramChannel(bot, language="zh"), "-100456"),
        ]
        job = DailyJob(
            pipeline, destinations, settings, "host-a:1", now=clock.now, sleep=clock.sleep
        )
        assert await job.run(DAY) == "done"
        # One pause of a minute (stretched by at most the policy's jitter), then the chat again.
        assert 60.0 <= sum(clock.slept) <= 60.0 * (1 + settings.retry.jitter)
        sent = telegram.sent(-100456)
        assert len(sent) == 3 and len(telegram.method_calls("sendMessage")) == 6
        assert [m["reply_to_message_id"] for m in sent] == [None] + [sent[0]["message_id"]] * 2
        assert_one_digest_thread(env.posts(), DAY, replies=2)  # Slack was not held up


async def test_a_permanent_failure_is_still_reported_after_another_destination_recovers(
    env: Env,
) -> None:
    # C2 refuses the bot for good; Telegram fails three times, then recovers on the job's
    # second round. The day is not "done": C2 never got its digest, and the record says so.
    env.slack.permanent_error("C2", "not_in_channel")
    telegram = FakeTelegram(TELEGRAM_TOKEN)
    telegram.add_chat(-100456)
    telegram.server_error_next(3)
    limiter = make_rate_limiter(group_max_rate=100_000, overall_max_rate=100_000)
    async with (
        telegram,
        make_bot(telegram.token, f"{telegram.url}/bot", rate_limiter=limiter) as bot,
    ):
        clock = Clock(local(DAY, "09:00"))
        settings = env.settings()
        pipeline = await open_pipeline(settings)
        env.pipelines.append(pipeline)
        destinations = [
            Destination(env.channel, "C2"),
            Destination(TelegramChannel(bot, language="zh"), "-100456"),
        ]
        job = DailyJob(
            pipeline, destinations, settings, "host-a:1", now=clock.now, sleep=clock.sleep
        )
        assert await job.run(DAY) == "failed"
        assert len(telegram.sent(-100456)) == 3  # Telegram did get everything, once
    status, detail, _ = run_row(env.world.db, DAY) or ("", "", "")
    assert (
        status == "failed" and "slack:C2" in (detail or "") and "not_in_channel" in (detail or "")
    )


# ---------------------------------------------------------------------- the scheduler


async def test_start_scheduler_registers_one_coalescing_cron_job_in_the_zone(
    tmp_path: Path,
) -> None:
    settings = plain_settings(tmp_path, DIGEST_TIMEZONE="Asia/Shanghai", DIGEST_TIME="09:00")
    job = DailyJob(None, [], settings, "host-a:1")
    scheduler = start_scheduler(job, settings)
    try:
        (scheduled,) = scheduler.get_jobs()
        trigger = scheduled.trigger
        assert isinstance(trigger, CronTrigger)
        assert str(trigger.timezone) == "Asia/Shanghai"
        fields = {f.name: str(f) for f in trigger.fields}
        assert (fields["hour"], fields["minute"]) == ("9", "0")
        assert scheduled.coalesce is True
        assert scheduled.max_instances == 1
        assert scheduled.misfire_grace_time >= 60
        assert scheduled.func == job.fire
        next_run = scheduled.next_run_time.astimezone(SHANGHAI)
        assert (next_run.hour, next_run.minute) == (9, 0)
    finally:
        scheduler.shutdown(wait=False)


async def test_digest_time_off_schedules_nothing(tmp_path: Path) -> None:
    settings = plain_settings(tmp_path, DIGEST_TIME="off")
    job = DailyJob(None, [], settings, "host-a:1")
    scheduler = start_scheduler(job, settings)
    try:
        assert scheduler.get_jobs() == []
    finally:
        scheduler.shutdown(wait=False)
    assert make_trigger(settings) is None
    assert await job.catch_up() is None
