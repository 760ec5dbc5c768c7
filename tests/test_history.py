"""Search and history (issue 9, part 4): `/digest search`, `/digest week` and the weekly
roundup on a schedule.

The core's full-text index is tested on a real store (SQLite FTS5 through sqlite-utils);
the commands run end to end as `serve` builds them (the `Bot` rig of test_interactive:
Bolt over Socket Mode, PTB polling getUpdates) against FakeSlack, FakeTelegram, the fake
LLM, Hugging Face and arXiv; the schedule drives `RoundupJob` directly with a stated clock.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes.world import research_responder
from test_interactive import (
    DAY,
    PAPER,
    PAPER_TITLE,
    PICK_1,
    PICK_2,
    TG_GROUP,
    Bot,
    _deliver_digest,
    eventually,
    permalink,
    slash,
)

from bot.assistant import DIGEST, Request
from bot.chatstore import ChatStore, open_pipeline, open_store
from bot.history import Listing
from bot.scheduler import DailyJob, RoundupJob, make_roundup_trigger, start_scheduler
from bot.service import Destination
from bot.settings import load_settings
from bot.team import Team
from digest_core.models import DeepDive, Paper, Score
from digest_core.search import BadQuery, fts_query
from digest_core.store import Store

FIXTURES = Path(__file__).parent / "fixtures"


def paper(arxiv_id: str, title: str) -> Paper:
    return Paper(
        arxiv_id=arxiv_id,
        title=title,
        abstract="",
        authors=(),
        version=1,
        upvotes=0,
        published="2026-01-20",
    )


def dive(arxiv_id: str, title: str, text: str, language: str = "zh") -> DeepDive:
    sections = {"contribution": text, "methodology": "-", "takeaway": "-", "limitations": "-"}
    return DeepDive(arxiv_id, title, sections, language, "abstract", "m", "v1")


async def found(store: Store, words: str, **kw: Any) -> list[str]:
    return [h.arxiv_id for h in await store.search(fts_query(words), **kw)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(tmp_path / "search.db")
    try:
        yield s
    finally:
        await s.close()


# == the query: one line for bad input, never FTS syntax ========================================


@pytest.mark.parametrize(
    ("words", "says"),
    [
        ("", "Search for what? Try /digest search diffusion (or 扩散模型)."),
        ("   \t ", "Search for what? Try /digest search diffusion (or 扩散模型)."),
        ("?! … — ！ ，。 ___", "Search for words, not only punctuation: e.g. /digest search diffusion."),
        ("x" * 1000, "Search words can be at most 200 characters (yours have 1000)."),
        ("word " * 13, "At most 12 search words, please (you gave 13)."),
    ],
)
def test_bad_search_words_get_one_line(words: str, says: str) -> None:
    with pytest.raises(BadQuery) as caught:
        fts_query(words)
    assert str(caught.value) == says


# == the index: English and Chinese, ranked ======================================================

A, B, C, D, E, F, G = (f"2601.0000{i}" for i in range(1, 8))


async def _corpus(store: Store) -> None:
    await store.save_papers(
        [
            paper(A, "Video Diffusion Models for Long Video Generation"),
            paper(B, "Organ Segmentation with Transformers"),
            paper(C, "A GAN Benchmark for Art"),
            paper(D, "Masked Autoregressive Image Generation"),
            paper(E, "Twin paper about tokenizers"),
            paper(F, "Twin paper about tokenizers"),
            paper(G, "Weather forecasting at scale"),
        ]
    )
    scores = [
        (A, 85, "扩散模型用于视频生成，与主题高度相关"),
        (B, 30, "医学图像分割，与扩散无关"),
        (C, 40, "GAN 评测"),
        (D, 70, "autoregressive image generation"),
        (E, 40, "tokenizers"),
        (F, 90, "tokenizers"),
        (G, 10, "天气预报"),
    ]
    await store.save_scores(
        [(f"{aid}|fp|v|m|zh", Score(aid, n, reason), "m", "v") for aid, n, reason in scores]
    )
    await store.save_analysis(
        f"{A}|key", dive(A, "Video Diffusion", "本文提出一种视频扩散模型，视频生成更长更稳。"), 1
    )
    await store.save_analysis(
        f"{D}|key", dive(D, "MAR", "Compared with one diffusion baseline.", "en"), 1
    )


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("diffusion", [A, D]),  # in A's title and deep dive; in D's deep dive only
        ("Diffusion MODELS", [A]),  # every word must match
        # stemmed: "generation" in both titles, and in D's reason too
        ("generations", [D, A]),
        ("GAN", [C]),  # a word, not a substring: "Organ" does not match
        ("art", [C]),
        ("扩散模型", [A]),
        ("视频生成", [A]),
        ("扩散", [A, B]),  # two characters: A has it in its reason and deep dive, B once
        ("视频", [A]),
        ("天气", [G]),
        ("图像 分割", [B]),
        ("tokenizers", [F, E]),  # identical text: the higher score first
        (A, [A]),  # an arXiv ID
        ("quantum", []),
    ],
)
async def test_search_finds_and_ranks_english_and_chinese(
    store: Store, words: str, expected: list[str]
) -> None:
    await _corpus(store)
    assert await found(store, words) == expected


async def test_search_is_restricted_to_the_papers_given(store: Store) -> None:
    await _corpus(store)
    assert await found(store, "diffusion", among={D: "2026-01-20"}) == [D]
    assert await found(store, "diffusion", among={}) == []


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ('"diffusion', [A, D]),
        ("diffusion*", [A, D]),
        ("-video", [A]),  # not "without video"
        ("NEAR(video diffusion)", []),  # the phrase "near video", then "diffusion)"
        ("video AND OR NOT", []),  # AND, OR, NOT are words here, found nowhere
        ("title:video", []),  # not a column filter: the phrase "title video"
        ("(video", [A]),
        ("^video", [A]),
        ("video + diffusion", [A]),
        ("video' OR 1=1; --", []),
    ],
)
async def test_fts_syntax_in_search_words_is_plain_text(
    store: Store, words: str, expected: list[str]
) -> None:
    await _corpus(store)
    assert await found(store, words) == expected


async def test_the_index_follows_every_write(store: Store) -> None:
    await store.save_papers([paper(A, "Plain title"), paper(G, "Weather forecasting at scale")])
    await store.save_papers([paper(B, "Something else"), paper(C, "Yet another paper")])
    assert await found(store, "plain") == [A]
    assert await found(store, "flowmatch") == []
    await store.save_scores([(f"{A}|fp|v|m|zh", Score(A, 70, "about flowmatch"), "m", "v")])
    assert await found(store, "flowmatch") == [A]
    await store.save_analysis(f"{A}|k", dive(A, "Plain title", "去噪扩散"), 1)
    assert await found(store, "去噪") == [A]
    # The same analysis written again: its old words leave the index.
    await store.save_analysis(f"{A}|k", dive(A, "Plain title", "超分辨率"), 1)
    assert await found(store, "去噪") == []
    assert await found(store, "超分辨率") == [A]
    # A new title (a new version of the paper) replaces the old one.
    await store.save_papers([paper(A, "Renamed work")])
    assert await found(store, "plain") == []
    assert await found(store, "renamed") == [A]


async def test_latest_scores_prefer_the_profile_asked_about(store: Store) -> None:
    await store.save_scores([(f"{A}|fp2|v|m|zh", Score(A, 80, "r"), "m", "v")])
    await asyncio.sleep(1.1)  # created_at has seconds: the next score is newer
    await store.save_scores([(f"{A}|fp1|v|m|zh", Score(A, 30, "r"), "m", "v")])
    assert await store.latest_scores([A], "fp2") == {A: 80}
    assert await store.latest_scores([A], "fp1") == {A: 30}
    assert await store.latest_scores([A], "other") == {A: 30}  # none of its own: the newest
    assert await store.latest_scores([A, B]) == {A: 30}


async def test_an_existing_database_gets_its_rows_indexed(tmp_path: Path) -> None:
    """A database written by digestbot v1 (before the index): opening it indexes what it has,
    and a search in a chat finds the paper with the thread it was posted in."""
    path = tmp_path / "v1.db"
    shutil.copy(FIXTURES / "db" / "digestbot_v1.sqlite", path)
    conn = sqlite3.connect(path)
    assert not conn.execute("select name from sqlite_master where name = 'search_docs'").fetchall()
    conn.close()
    store = await open_store(path)
    try:
        assert await found(store, "flexibility") == ["2601.15165"]
        assert await found(store, "DiTs") == ["2601.16208"]
        team = Team(load_settings(env={"DIGEST_DB": str(path)}), ChatStore(store))
        reply = await team.search("slack", "C1", "flexibility")
        assert reply.listing is not None
        (head, line) = reply.listing.lines
        assert head.text == "🔎 1 paper(s) posted here matching “flexibility”:"
        # Posted in C1's digest and analysed there later: the newer thread, the analysis.
        assert line.thread == "1700000000.000004"
        # v1 kept no score; the date is the analysis thread's (written when the file was made).
        assert (line.title, line.after) == ("The Flexibility Trap", " · 2026-11-29 · arXiv:2601.15165")
        # Nothing was posted in C9; nothing is found there.
        assert (await team.search("slack", "C9", "flexibility")).lines == [
            "No paper matches “flexibility”: nothing has been posted here yet."
        ]
    finally:
        await store.close()
