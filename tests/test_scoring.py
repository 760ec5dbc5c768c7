"""Scoring against the research profile: what the model says is checked, never trusted.

In process against the fake OpenAI-compatible server: the Pipeline (or its Scorer) is built
from the same settings the CLI would load, so the real client, retries and deadlines run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fakes.papers import hf_day
from fakes.world import World, research_responder

from digest_core.models import Paper
from digest_core.pipeline import Pipeline
from digest_core.scoring import coerce_score
from digest_core.sources.hf import parse_daily_papers

DAY = "2026-01-23"  # 18 papers on Hugging Face; the digest scans the top 15


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    # The core alone opens the database: one the bot had migrated would be "newer".
    async with World(tmp_path, new_db=True) as w:
        yield w


@asynccontextmanager
async def pipeline_of(world: World, **llm: Any) -> AsyncIterator[Pipeline]:
    """A Pipeline on the world's settings, with LLM settings overridden by `llm`."""
    settings = world.settings()
    if llm:
        settings = settings.model_copy(update={"llm": settings.llm.model_copy(update=llm)})
    pipeline = await Pipeline.open(settings)
    try:
        yield pipeline
    finally:
        await pipeline.aclose()


def day_papers(count: int) -> list[Paper]:
    return parse_daily_papers(hf_day(DAY), "https://arxiv.org")[:count]


def is_scoring(call: dict[str, Any]) -> bool:
    return str(call["messages"][0]["content"]).startswith("You rate research papers")


def scoring_calls(world: World) -> list[dict[str, Any]]:
    return [c for c in world.llm.calls if is_scoring(c)]


def asked_ids(call: dict[str, Any]) -> list[str]:
    user = "\n".join(m["content"] for m in call["messages"] if m["role"] == "user")
    block = re.search(r"<papers>\n(.*?)\n</papers>", user, re.DOTALL)
    assert block is not None
    return [p["id"] for p in json.loads(block.group(1))]


# -- coerce_score ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (87, 87),
        (0, 0),
        (100, 100),
        (87.0, 87),
        (99.6, 100),
        ("87", 87),
        (" 42 ", 42),
        ("9/10", 90),
        ("8.5/10", 85),
        ("87/100", 87),
        ("9 / 10", 90),
        (150, None),
        (-1, None),
        ("-1", None),
        (100.5, None),
        ("11/10", None),
        ("NaN", None),
        (math.nan, None),
        (math.inf, None),
        ("1e2", None),
        ("high", None),
        ("", None),
        (None, None),
        (True, None),
        ([87], None),
        ({"score": 87}, None),
        ("9/5", None),
    ],
)
def test_coerce_score(value: object, expected: int | None) -> None:
    assert coerce_score(value) == expected


# -- untrustworthy answers -------------------------------------------------------------------


async def test_bad_items_are_asked_again_once_then_fall_back(world: World) -> None:
    papers = day_papers(8)
    ids = [p.arxiv_id for p in papers]
    research = research_responder()
    rounds: list[list[str]] = []

    def respond(body: dict[str, Any]) -> Any:
        if not is_scoring(body):
            return research(body)
        rounds.append(asked_ids(body))
        if len(rounds) == 1:
            items = [
                {"id": ids[0], "score": "9/10", "reason": "diffusion restoration"},
                {"id": ids[1], "score": 150, "reason": "out of range"},
                {"id": ids[2], "score": -1, "reason": "negative"},
                {"id": ids[3], "score": "NaN", "reason": "not a number"},
                {"id": ids[4], "score": 70, "reason": "first answer"},
                {"id": ids[4], "score": 10, "reason": "duplicate"},
                {"id": "9999.99999", "score": 99, "reason": "never asked for"},
                # ids[5]: missing
                {"id": ids[6], "score": 80, "reason": "flow matching"},
                {"id": f"arXiv:{ids[7]}", "score": "87/100", "reason": "prefixed id"},
            ]
        else:
            items = [
                {"id": ids[1], "score": 55, "reason": "asked again"},
                {"id": ids[2], "score": 101, "reason": "still out of range"},
                {"id": ids[3], "score": "high", "reason": "still not a number"},
                {"id": ids[0], "score": 5, "reason": "not asked this time"},
            ]
        return json.dumps({"scores": items})

    world.llm.responder = respond
    async with pipeline_of(world) as pipeline:
        digest = await pipeline.build_digest(DAY, papers=papers)

    assert len(rounds) == 2  # one call, then one more for what was missing or invalid
    assert rounds[0] == ids
    assert sorted(rounds[1]) == sorted([ids[1], ids[2], ids[3], ids[5]])
    scores = {e.paper.arxiv_id: e.score for e in digest.entries}
    assert len(scores) == 8  # bad items never sink the digest
    assert {pid: scores[pid].score for pid in (ids[0], ids[1], ids[4], ids[6], ids[7])} == {
        ids[0]: 90,
        ids[1]: 55,
        ids[4]: 70,  # the first of the duplicates
        ids[6]: 80,
        ids[7]: 87,
    }
    assert scores[ids[0]].reason == "diffusion restoration" and scores[ids[0]].by_llm
    fallen = {pid for pid, s in scores.items() if not s.by_llm}
    assert fallen == {ids[2], ids[3], ids[5]}
    assert all(0 <= s.score <= 100 for s in scores.values())
    assert digest.llm_note is not None and digest.llm_note.startswith(
        "3 paper(s) ranked by keyword relevance"
    )


async def test_a_full_days_digest_scores_in_one_call(world: World) -> None:
    async with pipeline_of(world) as pipeline:
        digest = await pipeline.build_digest(DAY)
    calls = scoring_calls(world)
    assert len(calls) == 1
    assert len(asked_ids(calls[0])) == 15 and digest.available == 18
    assert len(digest.entries) == 15 and all(e.score.by_llm for e in digest.entries)
    assert digest.llm_note is None
    assert len(digest.picked) == 2
    assert len(world.llm.calls) == 3  # the scores, then the two deep dives


# -- LLM faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["truncated", "500", "blank"])
async def test_one_bad_reply_is_retried_and_the_scores_come(world: World, fault: str) -> None:
    world.llm.fail_next(fault)
    async with pipeline_of(world) as pipeline:
        result = await pipeline.scorer.score(day_papers(5))
    assert result.note is None
    assert len(result.scores) == 5 and all(s.by_llm for s in result.scores.values())
    assert len(scoring_calls(world)) == 2


async def test_a_refusal_falls_back_to_keywords_and_says_so(world: World) -> None:
    world.llm.fail_next("refusal")
    async with pipeline_of(world) as pipeline:
        result = await pipeline.scorer.score(day_papers(5))
    assert result.note == "LLM unavailable (LLM refused): ranked by keyword relevance"
    assert len(result.scores) == 5 and not any(s.by_llm for s in result.scores.values())
    assert len(scoring_calls(world)) == 1  # a refusal is not asked again


async def test_a_hanging_llm_falls_back_within_the_deadline(world: World) -> None:
    world.llm.fail_next("hang", times=10, seconds=30)
    async with pipeline_of(world, timeout_seconds=0.3) as pipeline:
        result = await pipeline.scorer.score(day_papers(5))
        # Both attempts were given up by the client: the fake, hanging 30 s each, answered
        # neither. bench/digest.py times the fallback.
        assert world.llm.answered == 0
    assert result.note is not None and "timed out after 0.3 s" in result.note
    assert not any(s.by_llm for s in result.scores.values())
    assert len(scoring_calls(world)) == 2  # max_retries = 1 in the test config


async def test_rate_limit_waits_as_asked_then_scores(world: World) -> None:
    # OpenAI's retry-after-ms, well above the test config's backoff, so only it explains a wait
    world.llm.fail_next("429", retry_after=1, retry_after_ms=300)
    async with pipeline_of(world) as pipeline:
        result = await pipeline.scorer.score(day_papers(5))
    assert result.note is None and all(s.by_llm for s in result.scores.values())
    first, second = [r for r in world.llm.requests if r.path == "/v1/chat/completions"]
    assert second.at - first.at >= 0.27  # retry-after-ms: 300 was honoured


async def test_scores_are_cached_for_the_next_run(world: World) -> None:
    papers = day_papers(6)
    async with pipeline_of(world) as pipeline:
        first = await pipeline.scorer.score(papers)
    async with pipeline_of(world) as pipeline:
        second = await pipeline.scorer.score(papers)
    assert second == first
    assert len(scoring_calls(world)) == 1


async def test_a_second_round_with_nothing_valid_is_not_asked_a_third_time(world: World) -> None:
    papers = day_papers(4)
    ids = [p.arxiv_id for p in papers]
    research = research_responder()

    def respond(body: dict[str, Any]) -> Any:
        if not is_scoring(body):
            return research(body)
        if len(scoring_calls(world)) == 1:
            items = [{"id": ids[0], "score": 75, "reason": "on topic"}]
        else:
            items = [{"id": pid, "score": 250, "reason": "out of range"} for pid in ids[1:]]
        return json.dumps({"scores": items})

    world.llm.responder = respond
    async with pipeline_of(world) as pipeline:
        result = await pipeline.scorer.score(papers)
    assert len(scoring_calls(world)) == 2
    assert result.scores[ids[0]].score == 75 and result.scores[ids[0]].by_llm
    assert not any(result.scores[pid].by_llm for pid in ids[1:])
    assert result.note is not None and result.note.startswith("3 paper(s) ranked by keyword")
