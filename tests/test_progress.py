"""An analysis shows its progress: the core's stages, Slack's thread status, Telegram's typing
action and edited opening line. Real clients (openai, slack_sdk, python-telegram-bot) against
the fakes, a real arXiv HTML page as the full text, and the one conversation flow
(`Assistant.handle`) in between.

What must hold: the stages come in order with the full text's real section count, and a
cached analysis has none; Slack's status is set in the requester's thread and cleared after
the result (or the failure); a refused setStatus changes nothing the person sees and is not
asked again; Telegram types while the work lasts and stops, and the opening line shows the
stage, edited within the throttle, then says it is done (or, after a failure, what it said).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes.slack import FakeSlack
from fakes.telegram import FakeTelegram
from fakes.world import World, fast_config, platform_channels, research_responder

from bot.assistant import ANALYZE, Assistant, Handled, Request
from bot.channels.slack import SlackChannel, line_message
from bot.channels.telegram import TelegramChannel, make_bot
from bot.chatstore import PostStatus, open_pipeline
from digest_core.analysis import AnalysisStage, Stage
from digest_core.arxiv_id import parse_arxiv_id
from digest_core.pipeline import Pipeline

PAPER = "1605.08386"
OTHER = "1707.08567"
CHANNEL = "C0DIGEST01"
CHANNEL2 = "C0OTHER002"
TEAM = "T0TEAM001"
TG_GROUP = -100123
TG_GROUP2 = -100456
PAGE = (Path(__file__).parent / "fixtures" / "arxiv_html" / "2501.11120v1.html").read_text(
    encoding="utf-8"
)
INTERVAL = 0.2  # the display's pace in these tests
TYPING_EVERY = 0.1
# The model takes this long in the tests that watch the display while it works (they set it):
# long enough for the first stage, the writing stage one interval later and the "still
# working" moment to be shown before the answer. The others answer at once.
LLM_LATENCY = 0.6
STILL_WORKING_AFTER = 0.2


def sections_on_the_page(page: str) -> int:
    """What a reader counts on the page: the abstract, every section and appendix heading,
    but not the acknowledgements (references are no section heading of LaTeXML's)."""
    headings = re.findall(
        r'<h2 class="ltx_title ltx_title_(?:section|appendix)">(.*?)</h2>', page, re.DOTALL
    )
    kept = [h for h in headings if "acknowledg" not in h.lower()]
    return 1 + len(kept)  # + the abstract


SECTIONS = sections_on_the_page(PAGE)
FETCHING = "fetching the paper"
READING = f"reading the full text ({SECTIONS} sections)"
WRITING = f"writing the deep dive from the full text ({SECTIONS} sections)"


@dataclass
class Env:
    world: World
    pipeline: Pipeline
    assistant: Assistant
    slack: FakeSlack
    tg: FakeTelegram
    slack_channel: SlackChannel
    tg_channel: TelegramChannel

    async def mention(self, paper: str, channel: str = CHANNEL) -> tuple[Request, Handled]:
        """`@digestbot PAPER` in a channel, as bot.slack_app turns it into a request."""
        ts = await self.slack_channel.send(channel, line_message(f"<@U0BOT0001> {paper}"), None)
        req = Request(
            "slack",
            channel,
            "U1",
            paper,
            ts,
            command=ANALYZE,
            team=TEAM,
            private=True,
            status_thread=ts,
        )
        return req, await self.assistant.handle(self.slack_channel, req, opened=True)

    def hold_the_model_with_still_working_after(self, seconds: float) -> None:
        """The "still working" moment after `seconds`, and the model holding its answer (for
        the test to release with `world.llm.answer_now()` once it has seen what it waits for)."""
        settings = self.pipeline.settings
        interactive = settings.interactive.model_copy(
            update={"still_working_after_seconds": seconds}
        )
        self.assistant = Assistant(
            self.pipeline, settings.model_copy(update={"interactive": interactive})
        )
        self.world.llm.latency = 30

    async def slash(
        self, paper: str, on_line: Callable[[str], None] = lambda line: None
    ) -> tuple[list[str], Handled]:
        """`/analyze PAPER` in a channel: no thread; lines go to the requester alone."""
        told: list[str] = []

        async def tell(line: str) -> None:
            told.append(line)
            on_line(line)

        req = Request(
            "slack", CHANNEL, "U1", paper, "trigger-1", command=ANALYZE, team=TEAM, private=True
        )
        done = await self.assistant.handle(self.slack_channel, req, opened=True, tell=tell)
        return told, done

    async def analyze_tg(self, chat: int, paper: str) -> Request:
        """`/analyze PAPER` in a Telegram group, as bot.telegram_app turns it into a request."""
        message = self.tg.push_message(chat, f"/analyze {paper}")
        mid = str(message["message"]["message_id"])
        req = Request("telegram", str(chat), "7", paper, mid, command=ANALYZE, reply_to=mid)
        await self.assistant.handle(self.tg_channel, req)
        return req

    async def opening_id(self, req: Request) -> int:
        state = await self.assistant.chat.post_state(f"reply:{req.message}", "telegram", req.chat)
        row = state["opening"]
        assert row.status is PostStatus.SENT and row.message_ref
        return int(row.message_ref)


def slow_deep_dive(env_world: World, before: Any = None) -> Any:
    """The research responder, with `before()` run when the deep dive is asked for."""
    respond = research_responder()

    def responder(body: dict[str, Any]) -> Any:
        if before is not None and "You write a deep dive" in str(body["messages"][0]["content"]):
            before()
        return respond(body)

    return responder


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    world = World(tmp_path)
    world.arxiv.html[PAPER] = PAGE
    world.arxiv.html[OTHER] = PAGE
    async with world, FakeSlack(channels={CHANNEL, CHANNEL2}) as slack:
        tg = FakeTelegram()
        tg.add_chat(TG_GROUP)
        tg.add_chat(TG_GROUP2)
        await tg.start()
        still = {
            "still_working_after_seconds =": f"still_working_after_seconds = {STILL_WORKING_AFTER}"
        }
        world.config.write_text(fast_config(**still), encoding="utf-8")
        pipeline = await open_pipeline(world.settings(DIGEST_DB=":memory:"))
        try:
            async with platform_channels(slack, tg) as (slack_channel, tg_channel):
                slack_channel.progress_interval = tg_channel.progress_interval = INTERVAL
                tg_channel.typing_every = TYPING_EVERY
                assistant = Assistant(pipeline, pipeline.settings)
                yield Env(world, pipeline, assistant, slack, tg, slack_channel, tg_channel)
        finally:
            await pipeline.aclose()
            await tg.stop()


def in_order(seen: list[str], order: list[str]) -> bool:
    """`seen` is `order` with some entries left out (a display shows only the newest)."""
    positions = [order.index(s) for s in seen if s in order]
    return len(positions) == len(seen) and positions == sorted(set(positions))


# == the core ===================================================================================


async def test_the_stages_come_in_order_with_the_real_section_count_and_none_when_cached(
    env: Env,
) -> None:
    assert SECTIONS == 12  # the page: abstract, 8 sections, 3 appendices (not the thanks)
    seen: list[AnalysisStage] = []
    entry, figure = await env.pipeline.analyze_with_figure(parse_arxiv_id(PAPER), None, seen.append)
    figure.cancel()
    assert [s.stage for s in seen] == [Stage.FETCHING, Stage.READING, Stage.WRITING]
    assert [s.describe() for s in seen] == [FETCHING, READING, WRITING]
    assert entry.deep_dive is not None and entry.deep_dive.source_read == "full text (arXiv HTML)"

    again: list[AnalysisStage] = []
    _, figure = await env.pipeline.analyze_with_figure(parse_arxiv_id(PAPER), None, again.append)
    figure.cancel()
    assert again == []  # the cached analysis: nothing to wait for


async def test_without_a_full_text_the_stage_says_abstract_only(env: Env) -> None:
    del env.world.arxiv.html[OTHER]  # no HTML, no PDF: the abstract is all there is
    seen: list[AnalysisStage] = []
    _, figure = await env.pipeline.analyze_with_figure(parse_arxiv_id(OTHER), None, seen.append)
    figure.cancel()
    assert [s.describe() for s in seen] == [
        FETCHING,
        "reading the abstract only (no full text)",
        "writing the deep dive from the abstract only (no full text)",
    ]


async def test_a_failing_progress_display_does_not_fail_the_analysis(env: Env) -> None:
    def broken(stage: AnalysisStage) -> None:
        raise RuntimeError("the display broke")

    entry, figure = await env.pipeline.analyze_with_figure(parse_arxiv_id(PAPER), None, broken)
    figure.cancel()
    assert entry.deep_dive is not None and entry.deep_dive.llm_used


# == Slack ======================================================================================


async def test_slack_shows_the_stage_as_the_thread_status_and_clears_it_after_the_result(
    env: Env,
) -> None:
    env.world.llm.latency = LLM_LATENCY  # watched while the model works
    req, done = await env.mention(PAPER)
    assert done.thread and done.private[-1].startswith("✅ Analysed")

    calls = env.slack.statuses
    texts = [c["status"] for c in calls]
    assert texts[0] == f"is {FETCHING}…" and texts[-2] == f"is {WRITING}…" and texts[-1] == ""
    assert in_order(texts[:-1], [f"is {FETCHING}…", f"is {READING}…", f"is {WRITING}…"])
    assert {(c["channel_id"], c["thread_ts"]) for c in calls} == {(CHANNEL, req.message)}
    # The stages were shown while nothing but the mention was there; the status was cleared
    # after the whole analysis (root, deep dive, figure) was posted.
    assert all(c["messages_before"] == 1 for c in calls[:-1])
    assert calls[-1]["messages_before"] == len(env.slack.messages(CHANNEL)) > 2


@pytest.mark.parametrize("refusal", ["missing_scope", "not_allowed"])
async def test_slack_refusing_the_status_changes_nothing_the_person_sees(
    env: Env, refusal: str
) -> None:
    env.slack.refuse_status = refusal
    _, done = await env.mention(PAPER)
    assert done.private[-1].startswith("✅ Analysed") and done.thread
    assert len(env.slack.statuses) == 1  # tried once, refused, never cleared
    assert env.slack_channel.thread_status is False
    assert env.slack.ephemerals == []  # no chat noise about it
    texts = " ".join(str(m.get("text")) for m in env.slack.messages(CHANNEL))
    assert "status" not in texts.lower() and refusal not in texts

    _, later = await env.mention(OTHER)  # a new analysis: not asked again
    assert later.private[-1].startswith("✅ Analysed") and len(env.slack.statuses) == 1


async def test_slack_a_failed_analysis_clears_the_status_too(env: Env) -> None:
    def archive_on_writing() -> None:  # the channel is archived while the model writes
        env.slack.answer_next(
            "chat.postMessage",
            body='{"ok": false, "error": "is_archived"}',
            content_type="application/json",
            n=5,
        )

    env.world.llm.responder = slow_deep_dive(env.world, archive_on_writing)
    _, done = await env.mention(PAPER)
    assert done.private[-1].startswith("⚠️ Could not post the analysis")
    texts = [c["status"] for c in env.slack.statuses]
    assert texts[0] == f"is {FETCHING}…" and texts[-1] == ""
    assert len(env.slack.messages(CHANNEL)) == 1  # only the mention: nothing was posted


async def test_slack_a_slash_command_has_no_thread_so_the_still_working_line_names_the_stage(
    env: Env,
) -> None:
    # The still-working line comes after 1 s here, and the model answers only once it is out:
    # by then the analysis has begun even on a loaded machine (before its first stage the line
    # can only say that it is still working).
    env.hold_the_model_with_still_working_after(1.0)

    def on_line(line: str) -> None:
        if line.startswith("⏳"):
            env.world.llm.answer_now()

    told, done = await env.slash(PAPER, on_line)
    assert env.slack.statuses == []  # no thread to show a status in
    (still,) = [line for line in told if line.startswith("⏳")]
    stage = still.removeprefix("⏳ Still working on it: ").removesuffix(
        "; the analysis will follow."
    )
    assert stage in (FETCHING, READING, WRITING)
    assert done.private[-1].startswith("✅ Analysed")


async def test_slack_a_cached_analysis_shows_no_stages(env: Env) -> None:
    await env.mention(PAPER)
    before = len(env.slack.statuses)
    _, done = await env.mention(PAPER, channel=CHANNEL2)  # same profile: the cached deep dive
    assert done.private[-1].startswith("✅ Analysed")
    assert len(env.slack.statuses) == before


# == Telegram ===================================================================================


async def test_telegram_types_while_working_and_edits_the_opening_line_within_the_throttle(
    env: Env,
) -> None:
    # The model answers once it has worked LLM_LATENCY and the opening line has said "still
    # working" (paced, that edit can come after a fixed latency on a loaded machine); the
    # moment comes after 1 s, when the analysis has reported a stage even on a loaded machine.
    env.hold_the_model_with_still_working_after(1.0)

    async def answer_when_still_working_was_shown() -> None:
        await asyncio.sleep(LLM_LATENCY)
        for _ in range(1500):  # the edit is the fake's record: nothing to wait on but it
            edits = env.tg.method_calls("editMessageText")
            if any("⏳ still working" in p["text"] for p in edits):
                break
            await asyncio.sleep(0.02)
        env.world.llm.answer_now()

    watcher = asyncio.create_task(answer_when_still_working_was_shown())
    req = await env.analyze_tg(TG_GROUP, PAPER)
    watcher.cancel()
    opening = await env.opening_id(req)
    edits = [
        (p["text"], at)
        for p, at in zip(
            env.tg.method_calls("editMessageText"),
            env.tg.call_times("editMessageText"),
            strict=True,
        )
        if int(p["message_id"]) == opening
    ]
    texts = [t for t, _ in edits]
    head = f"🔎 Analysing arXiv:{PAPER}"
    assert all(t.startswith(head) for t in texts[:-1])
    assert "📥 Fetching the paper…" in texts[0]
    assert any(
        f"✍️ Writing the deep dive from the full text ({SECTIONS} sections)…" in t for t in texts
    )
    # The "still working" moment is said in place, not as another message.
    assert any("⏳ still working" in t for t in texts)
    assert not any("Still working on it" in m["text"] for m in env.tg.sent(TG_GROUP))
    # At most one edit per interval while the work lasted (the final one comes after the
    # result was posted).
    times = [at for _, at in edits[:-1]]
    assert all(b - a >= INTERVAL - 0.05 for a, b in zip(times, times[1:], strict=False))
    assert len(edits) <= 5

    # Done: the opening line says so, and the deep dive followed it.
    (shown,) = [m for m in env.tg.sent(TG_GROUP) if m["message_id"] == opening]
    assert shown["visible"].startswith("✅ Analysed:") and f"arXiv:{PAPER}" in shown["visible"]

    # Typing was repeated while the model worked, and stopped with the result.
    typing = env.tg.call_times("sendChatAction")
    assert len(typing) >= int(LLM_LATENCY / TYPING_EVERY) - 2
    assert max(typing) < edits[-1][1]
    count = len(typing)
    await asyncio.sleep(TYPING_EVERY * 3)
    assert len(env.tg.call_times("sendChatAction")) == count


async def test_telegram_a_cached_analysis_edits_nothing(env: Env) -> None:
    await env.analyze_tg(TG_GROUP, PAPER)
    edits = len(env.tg.method_calls("editMessageText"))
    req = await env.analyze_tg(TG_GROUP2, PAPER)  # the same profile: the cached deep dive
    assert len(env.tg.method_calls("editMessageText")) == edits
    opening = await env.opening_id(req)
    (shown,) = [m for m in env.tg.sent(TG_GROUP2) if m["message_id"] == opening]
    assert not shown.get("edited")


async def test_telegram_a_failed_analysis_leaves_the_opening_line_and_stops_typing(
    env: Env,
) -> None:
    env.world.llm.latency = LLM_LATENCY  # watched while the model works

    def fail_posts() -> None:  # Telegram fails every post while the model writes
        env.tg.server_error_next(20, status=500, method="sendMessage")

    env.world.llm.responder = slow_deep_dive(env.world, fail_posts)
    req = await env.analyze_tg(TG_GROUP, PAPER)
    opening = await env.opening_id(req)
    (shown,) = [m for m in env.tg.sent(TG_GROUP) if m["message_id"] == opening]
    assert shown["edited"]  # it showed the stages
    assert shown["visible"] == f"🔎 Analysing arXiv:{PAPER} …"  # and no stale stage now
    count = len(env.tg.call_times("sendChatAction"))
    import asyncio

    await asyncio.sleep(TYPING_EVERY * 3)
    assert len(env.tg.call_times("sendChatAction")) == count


async def test_telegram_still_working_right_after_the_first_stage_is_said_with_its_edit(
    env: Env,
) -> None:
    """The "still working" moment can come after a stage is reported but before its edit has
    gone out (a busy loop): the display still says it in place, with that edit."""
    sent = await env.tg_channel.send(
        str(TG_GROUP), env.tg_channel.render_line("🔎 Analysing"), None
    )
    progress = env.tg_channel.analysis_progress(
        str(TG_GROUP), thread=None, opening=(sent, "🔎 Analysing")
    )
    progress.report(AnalysisStage(Stage.FETCHING))
    assert progress.still_working()  # the edit has not been made yet
    for _ in range(500):  # until the display made its edit (the fake's record)
        if env.tg.method_calls("editMessageText"):
            break
        await asyncio.sleep(0.01)
    await progress.finish("✅ Analysed")
    edits = [p["text"] for p in env.tg.method_calls("editMessageText")]
    assert edits == [
        "🔎 Analysing\n📥 Fetching the paper… ⏳ still working; the analysis will follow.",
        "✅ Analysed",
    ]


async def test_telegram_an_edit_that_timed_out_but_landed_is_taken_back_at_the_end(
    env: Env,
) -> None:
    """The first stage edit is carried out by Telegram but answered after the client stopped
    waiting: the display stops, and the line still ends as "✅ Analysed", not on that stage."""
    bot = make_bot(env.tg.token, f"{env.tg.url}/bot", read_timeout=1.0)
    await bot.initialize()
    try:
        channel = TelegramChannel(bot, "en")
        channel.progress_interval = INTERVAL
        channel.typing_every = TYPING_EVERY
        env.tg_channel = channel
        env.tg.delay_next(3.0, method="editMessageText")
        req = await env.analyze_tg(TG_GROUP, PAPER)
        opening = await env.opening_id(req)
        edits = [p["text"] for p in env.tg.method_calls("editMessageText")]
        assert "📥 Fetching the paper…" in edits[0]  # the one that timed out, yet landed
        (shown,) = [m for m in env.tg.sent(TG_GROUP) if m["message_id"] == opening]
        assert shown["visible"].startswith("✅ Analysed:")
    finally:
        await bot.shutdown()
