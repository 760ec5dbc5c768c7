"""The one conversation flow, in process and in milliseconds: `Assistant.handle` with a
recording channel, the real pipeline against the fake LLM and arXiv on 127.0.0.1, and the
store in SQLite `:memory:`. Each case runs as Slack (a placeholder the answer replaces) and as
Telegram (typing, replies to the person's message); every post, refusals included, must be
in the ledger, as part of the bot thread the question was asked in.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes.recording import RecordingChannel
from fakes.world import World, fast_config

from bot.assistant import ANALYZE, Assistant, Request
from bot.chatstore import ChatStore, PostStatus, ThreadRecord, open_pipeline
from digest_core.pipeline import Pipeline

PAPER = "1605.08386"  # "Heat-bath random walks with Markov bases"
OTHER = "1707.08567"
CHAT = "C1"
ROOT = "root-1"


@dataclass
class Flow:
    world: World
    pipeline: Pipeline
    assistant: Assistant
    chat: ChatStore
    channel: RecordingChannel
    n: int = 0

    def request(
        self,
        text: str,
        *,
        user: str = "U1",
        thread: ThreadRecord | None = None,
        command: str | None = None,
    ) -> Request:
        self.n += 1
        return Request(
            self.channel.platform,
            CHAT,
            user,
            text,
            message=f"u{self.n}",
            command=command,
            reply_to=ROOT if self.channel.platform == "slack" else f"u{self.n}",
            thread=thread,
        )

    async def ask(self, text: str, thread: ThreadRecord, **kw: Any) -> Request:
        req = self.request(text, thread=thread, **kw)
        await self.assistant.handle(self.channel, req)
        return req

    async def replies(self, req: Request) -> list[Any]:
        state = await self.chat.post_state(f"reply:{req.message}", self.channel.platform, CHAT)
        return sorted(state.values(), key=lambda r: r.seq)

    def answers(self) -> list[dict[str, Any]]:
        return [
            c
            for c in self.world.llm.calls
            if str(c["messages"][0]["content"]).startswith("You answer")
        ]


async def _thread(chat: ChatStore, platform: str, papers: tuple[str, ...]) -> ThreadRecord:
    thread = ThreadRecord(platform, CHAT, ROOT, "digest", "digest:2026-01-23", papers)
    await chat.save_thread(thread)
    return thread


@pytest.fixture(params=["slack", "telegram"])
async def flow(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Flow]:
    async with World(tmp_path) as world:
        config = getattr(request, "param_config", None) or {}
        world.config.write_text(fast_config(**config), encoding="utf-8")
        pipeline = await open_pipeline(world.settings(DIGEST_DB=":memory:"))
        assistant = Assistant(pipeline, pipeline.settings)
        try:
            yield Flow(world, pipeline, assistant, assistant.chat, RecordingChannel(request.param))
        finally:
            await pipeline.aclose()


async def _configured(flow: Flow, **config: str) -> Flow:
    """The same flow with other [interactive] limits (a fresh pipeline on a fresh store)."""
    await flow.pipeline.aclose()
    flow.world.config.write_text(fast_config(**config), encoding="utf-8")
    flow.pipeline = await open_pipeline(flow.world.settings(DIGEST_DB=":memory:"))
    flow.assistant = Assistant(flow.pipeline, flow.pipeline.settings)
    flow.chat = flow.assistant.chat
    return flow


async def test_an_answer_is_posted_in_the_thread_through_the_ledger(flow: Flow) -> None:
    thread = await _thread(flow.chat, flow.channel.platform, (PAPER,))
    req = await flow.ask("What is a Markov basis?", thread)
    (answer,) = await flow.replies(req)
    assert answer.key == "answer#0" and answer.status is PostStatus.SENT
    assert answer.thread_ref == ROOT  # part of the bot thread: a reply to it is a follow-up
    posted = next(s for s in flow.channel.sent if s.ref == answer.message_ref)
    assert "What is a Markov basis?" in posted.text and posted.reply_to == req.reply_to
    assert await flow.chat.find_thread(flow.channel.platform, CHAT, answer.message_ref) == thread
    if flow.channel.platform == "slack":  # the placeholder became the answer
        assert len(flow.channel.sent) == 1
    else:
        assert flow.channel.typing == 1
    assert len(flow.answers()) == 1


async def test_thread_memory_carries_the_earlier_turn(flow: Flow) -> None:
    thread = await _thread(flow.chat, flow.channel.platform, (PAPER,))
    await flow.ask("What is a fiber?", thread)
    await flow.ask("And its diameter?", thread)
    second = str(flow.answers()[-1]["messages"])
    assert "What is a fiber?" in second and "And its diameter?" in second


async def test_an_ambiguous_question_asks_which_paper_then_answers_the_kept_question(
    flow: Flow,
) -> None:
    thread = await _thread(flow.chat, flow.channel.platform, (PAPER, OTHER))
    req = await flow.ask("Which dataset do they use?", thread)
    (ask,) = await flow.replies(req)
    assert ask.key == "ask" and ask.status is PostStatus.SENT and ask.thread_ref == ROOT
    assert flow.channel.texts()[-1].startswith("Which paper do you mean?")
    assert flow.answers() == []
    reply = await flow.ask("2", thread)
    (answer,) = await flow.replies(reply)
    assert answer.key == "answer#0"
    assert "Which dataset do they use?" in str(flow.answers()[-1]["messages"][-1])
    assert OTHER in str(flow.answers()[-1]["messages"])


async def test_rate_limit_refuses_in_the_thread_and_spends_nothing(flow: Flow) -> None:
    flow = await _configured(flow, **{"user_requests_per_hour =": "user_requests_per_hour = 1"})
    thread = await _thread(flow.chat, flow.channel.platform, (PAPER,))
    await flow.ask("What is a fiber?", thread)
    req = await flow.ask("And the diameter?", thread)
    (refusal,) = await flow.replies(req)
    assert refusal.key == "refusal" and refusal.status is PostStatus.SENT
    text = flow.channel.texts()[-1]
    assert re.fullmatch(r"⚠️ You have reached 1 requests this hour; try again in \d+ s\.", text)
    assert len(flow.answers()) == 1
    await flow.ask("Me too?", thread, user="U2")  # someone else is not held back
    assert len(flow.answers()) == 2


async def test_a_spent_budget_refuses_questions(flow: Flow) -> None:
    flow = await _configured(flow, **{"daily_token_budget =": "daily_token_budget = 1"})
    thread = await _thread(flow.chat, flow.channel.platform, (PAPER,))
    await flow.ask("What is a fiber?", thread)  # spends more than the whole budget
    req = await flow.ask("And the diameter?", thread, user="U2")
    (refusal,) = await flow.replies(req)
    assert refusal.key == "refusal"
    assert "budget for on-demand analysis is spent" in flow.channel.texts()[-1]
    assert len(flow.answers()) == 1


async def test_allow_list_refuses_and_the_refusal_is_in_the_ledger(flow: Flow) -> None:
    key = (
        "allowed_slack_teams =" if flow.channel.platform == "slack" else "allowed_telegram_chats ="
    )
    value = key.replace(" =", ' = ["elsewhere"]')
    flow = await _configured(flow, **{key: value})
    thread = await _thread(flow.chat, flow.channel.platform, (PAPER,))
    req = await flow.ask("What is a fiber?", thread)
    (refusal,) = await flow.replies(req)
    assert refusal.key == "refusal" and "not enabled" in flow.channel.texts()[-1]
    assert flow.answers() == []


async def test_analyze_starts_one_thread_and_bad_input_is_one_line(flow: Flow) -> None:
    req = flow.request("not-an-id", command=ANALYZE)
    await flow.assistant.handle(flow.channel, req)
    (line,) = await flow.replies(req)
    assert line.key == "opening" and flow.channel.texts()[-1].startswith("⚠️")
    req = flow.request(PAPER, command=ANALYZE)
    await flow.assistant.handle(flow.channel, req)
    state = await flow.chat.post_state(f"analysis:{PAPER}", flow.channel.platform, CHAT)
    assert {r.status for r in state.values()} == {PostStatus.SENT}
    thread = await flow.chat.latest_thread(flow.channel.platform, CHAT, "analysis")
    assert thread is not None and thread.papers == (PAPER,)
    (opening,) = await flow.replies(req)
    assert opening.key == "opening" and "Analysing arXiv:1605.08386" in flow.channel.texts()[1]
