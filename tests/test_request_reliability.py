"""Requests that meet a broken database, a second process or a hung LLM (issue 10, items 1, 6, 7).

In-process, against the fakes over real HTTP, with the real Slack and Telegram clients (the
`Bot` harness of test_interactive builds serve's pieces as serve does):

- a database that refuses writes (SQLite's own `query_only` read-only mode on the store's one
  connection: every write fails with "attempt to write a readonly database") before or during
  a request: the person still gets one line, on Telegram (PTB's error handler) and on Slack;
- two pipelines on one database file asked for the same deep dive make one LLM call; a claim
  whose owner stopped renewing it is taken over;
- a hung LLM: the request's total deadline ends it with the labelled fallback, after one
  "still working" line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes.world import World
from test_interactive import PAPER, TG_GROUP, Bot, eventually, kind_of

from bot.assistant import STILL_WORKING, UNRECORDED
from bot.chatstore import open_pipeline
from digest_core.analysis import analysis_cache_key


async def read_only(bot: Bot) -> None:
    """Make the store's connection refuse every write, as a read-only database file does."""
    store = bot.pipeline.store
    await store.run(lambda: store.db.execute("pragma query_only = on"))


def deep_dive_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in calls if kind_of(c) == "deep_dive"]


# -- a database that cannot be written -----------------------------------------------------------


async def test_telegram_request_on_a_read_only_database_gets_one_line(tmp_path: Path) -> None:
    async with Bot(tmp_path, slack=None, telegram=True) as bot:
        await read_only(bot)
        update = bot.tg.push_message(TG_GROUP, f"/analyze@DigestBot {PAPER}")
        await eventually(lambda: bot.tg_sent(TG_GROUP), "a reply")
        await bot.settle()
        sent = bot.tg_sent(TG_GROUP)
        assert [m["visible"] for m in sent] == [UNRECORDED]
        assert sent[0]["reply_to_message_id"] == update["message"]["message_id"]
        assert bot.llm_calls() == []  # nothing unrecorded was worked on


async def test_telegram_database_failing_mid_analysis_still_gets_a_failure_line(
    tmp_path: Path,
) -> None:
    async with Bot(tmp_path, slack=None, telegram=True, llm_latency=1.0) as bot:
        update = bot.tg.push_message(TG_GROUP, f"/analyze@DigestBot {PAPER}")
        await eventually(lambda: bot.world.llm.in_flight, "the analysis inside the LLM")
        await read_only(bot)  # the disk goes read-only while the model writes
        await eventually(lambda: len(bot.tg_sent(TG_GROUP)) >= 2, "the failure line")
        await bot.settle()
        texts = [m["visible"] for m in bot.tg_sent(TG_GROUP)]
        assert texts[0].startswith("🔎 Analysing")
        assert texts[1:] == ["⚠️ Sorry, the analysis failed; please try again in a few minutes."]
        mid = update["message"]["message_id"]
        assert all(m["reply_to_message_id"] == mid for m in bot.tg_sent(TG_GROUP))


async def test_slack_requests_on_a_read_only_database_get_one_line(tmp_path: Path) -> None:
    async with Bot(tmp_path) as bot:
        root = await bot.analysed_in_slack(PAPER, user="U1")
        await read_only(bot)
        # a slash command: the acknowledgement itself says so
        ack = await bot.analyze_slack(PAPER, user="U2")
        assert ack == UNRECORDED
        # a question in the thread: one line in the thread
        replies = await bot.ask_slack("What is the main limitation?", root)
        assert [m["text"] for m in replies] == [UNRECORDED]
        assert bot.llm_calls("answer") == []


# -- work done once across processes ----------------------------------------------------------


async def test_two_pipelines_on_one_database_make_one_deep_dive_call(tmp_path: Path) -> None:
    async with World(tmp_path) as world:
        world.llm.latency = 1.0
        settings = world.settings()
        first, second = await open_pipeline(settings), await open_pipeline(settings)
        try:
            paper = await first.resolve(PAPER)
            one, two = await asyncio.gather(first.deep_dive(paper), second.deep_dive(paper))
        finally:
            await first.aclose()
            await second.aclose()
        assert len(deep_dive_calls(world.llm.calls)) == 1
        assert one.llm_used and two.llm_used
        assert one.sections == two.sections


async def test_a_claim_nobody_renews_is_taken_over(tmp_path: Path) -> None:
    async with World(tmp_path) as world:
        settings = world.settings()
        pipeline = await open_pipeline(settings)
        try:
            paper = await pipeline.resolve(PAPER)
            key = analysis_cache_key(
                paper,
                pipeline.analyst.prompt_version,
                pipeline.model,
                settings.digest.language,
                pipeline.profile,
            )
            # a process on another host claimed it, then went silent
            assert await pipeline.store.claim_analysis(key, "elsewhere:4242:dead0000", 60)
            pipeline.claim_lease = 0.5
            dive = await asyncio.wait_for(pipeline.deep_dive(paper), 20)
        finally:
            await pipeline.aclose()
        assert dive.llm_used
        assert len(deep_dive_calls(world.llm.calls)) == 1


async def test_a_writer_finishing_between_a_look_and_a_claim_is_not_paid_twice(
    tmp_path: Path,
) -> None:
    """The second process looked for the analysis just before the first stored it and
    released its claim; its claim then wins, but the stored analysis is the answer."""
    async with World(tmp_path) as world:
        settings = world.settings()
        first, second = await open_pipeline(settings), await open_pipeline(settings)
        try:
            paper = await first.resolve(PAPER)
            written = await first.deep_dive(paper)  # stored; the claim released as done
            language = settings.digest.language
            key = analysis_cache_key(
                paper, second.analyst.prompt_version, second.model, language, second.profile
            )
            # The second one's look came before that: it goes straight on to the claim.
            again = await second._claimed(key, paper, language, second.profile)
            state = await second.store.claim_state(key)
        finally:
            await first.aclose()
            await second.aclose()
        assert len(deep_dive_calls(world.llm.calls)) == 1
        assert again.llm_used and again.sections == written.sections
        assert state is not None and state[0] == "done"


async def test_a_claim_that_failed_while_waited_for_is_not_taken(tmp_path: Path) -> None:
    async with World(tmp_path) as world:
        pipeline = await open_pipeline(world.settings())
        try:
            store, key = pipeline.store, "some-deep-dive"
            waiting_since = datetime.now(UTC) - timedelta(seconds=1)
            assert await store.claim_analysis(key, "elsewhere:4242:dead0000", 60)
            await store.release_claim(key, "elsewhere:4242:dead0000", "failed")
            # The waiter answers with the fallback instead of a second try at once ...
            assert not await store.claim_analysis(key, "me", 60, failed_since=waiting_since)
            # ... while a request that came after the failure may try again.
            later = datetime.now(UTC) + timedelta(seconds=1)
            assert await store.claim_analysis(key, "me", 60, failed_since=later)
        finally:
            await pipeline.aclose()


async def test_a_waiter_whose_writer_failed_does_not_call_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer's LLM call failed (its fallback is not stored): the waiter answers with the
    labelled fallback too, instead of paying for a second try at once."""
    caplog.set_level(logging.INFO, logger="digest_core.pipeline")
    async with World(tmp_path) as world:
        world.llm.latency = 60  # the writer is held in the model until the waiter waits
        world.llm.fail_next("500", times=20)
        settings = world.settings()
        first, second = await open_pipeline(settings), await open_pipeline(settings)
        try:
            paper = await first.resolve(PAPER)
            writer = asyncio.create_task(first.deep_dive(paper))
            await eventually(lambda: world.llm.in_flight, "the writer inside the LLM")
            waiting = asyncio.create_task(second.deep_dive(paper))
            await eventually(
                lambda: "another process is writing it; waiting" in caplog.text, "the waiter"
            )
            world.llm.answer_now()  # now the writer's attempts fail
            waiter = await waiting
            written = await writer
        finally:
            await first.aclose()
            await second.aclose()
        assert not written.llm_used and not waiter.llm_used
        attempts = len(deep_dive_calls(world.llm.calls))
        assert attempts == 2  # the writer's two attempts (max_retries = 1), none by the waiter


# -- a hung LLM --------------------------------------------------------------------------------


async def test_a_hung_llm_ends_at_the_deadline_after_one_still_working_line(
    tmp_path: Path,
) -> None:
    config = {
        "request_deadline_seconds =": "request_deadline_seconds = 3",
        "still_working_after_seconds =": "still_working_after_seconds = 1",
    }
    async with Bot(tmp_path, slack=None, telegram=True, config=config) as bot:
        bot.world.llm.fail_next("hang", times=20, seconds=120)
        update = bot.tg.push_message(TG_GROUP, f"/analyze@DigestBot {PAPER}")
        mid = update["message"]["message_id"]
        await eventually(lambda: len(bot.tg_sent(TG_GROUP)) >= 3, "the fallback analysis", 30)
        await bot.settle()
        sent = bot.tg_sent(TG_GROUP)
        lines = [m for m in sent if m["reply_to_message_id"] == mid]
        # The opening line showed the stage and, once, that it is still working (said in
        # place: no line of its own); it says "done" now, and nothing came after it.
        (opening,) = lines
        shown = [
            p["text"]
            for p in bot.tg.method_calls("editMessageText")
            if int(p["message_id"]) == opening["message_id"]
        ]
        assert shown[0].startswith(f"🔎 Analysing arXiv:{PAPER} …\n📥 Fetching the paper…")
        assert sum("⏳ still working" in t for t in shown) == 1
        assert opening["visible"].startswith("✅ Analysed:")
        assert STILL_WORKING not in [m["visible"] for m in sent]
        root = next(m for m in sent if m["reply_to_message_id"] is None)
        assert root["message_id"] > opening["message_id"]
        dive = " ".join(
            m["visible"] for m in sent if m["reply_to_message_id"] == root["message_id"]
        )
        assert "LLM" in dive and (
            "不可用" in dive or "unavailable" in dive
        )  # the labelled fallback
        # one attempt of each call, cut at the deadline: no second 120 s attempt
        assert len(bot.llm_calls()) == 2, json.dumps([kind_of(c) for c in bot.llm_calls()])


async def test_a_fast_answer_gets_no_still_working_line(tmp_path: Path) -> None:
    config = {"still_working_after_seconds =": "still_working_after_seconds = 1"}
    async with Bot(tmp_path, slack=None, telegram=True, config=config) as bot:
        sent = await bot.tg_say(TG_GROUP, f"/analyze@DigestBot {PAPER}")
        await asyncio.sleep(1.2)  # past the delay: a timer left running would post now
        await bot.settle()
        assert STILL_WORKING not in [m["visible"] for m in bot.tg_sent(TG_GROUP)]
        assert len(sent) >= 3
