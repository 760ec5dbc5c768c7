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
from fakes.world import migrated_database, research_responder
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
from bot.scheduler import DailyJob, RoundupJob, make_roundup_trigger, start_scheduler
from bot.service import Destination
from bot.settings import load_settings
from bot.team import Team
from digest_core import store as store_module
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
    s = await open_store(await migrated_database(tmp_path / "search.db"))
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
        (
            "?! … — ！ ，。 ___",
            "Search for words, not only punctuation: e.g. /digest search diffusion.",
        ),
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


async def test_latest_scores_prefer_the_profile_asked_about(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # created_at has whole seconds: the store's clock is stated so the second score is newer.
    monkeypatch.setattr(store_module, "_now", lambda: "2026-01-20T09:00:00+00:00")
    await store.save_scores([(f"{A}|fp2|v|m|zh", Score(A, 80, "r"), "m", "v")])
    monkeypatch.setattr(store_module, "_now", lambda: "2026-01-20T09:00:01+00:00")
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
        assert (line.title, line.after) == (
            "The Flexibility Trap",
            " · 2026-11-29 · arXiv:2601.15165",
        )
        # Nothing was posted in C9; nothing is found there.
        assert (await team.search("slack", "C9", "flexibility")).lines == [
            "No paper matches “flexibility”: nothing has been posted here yet."
        ]
    finally:
        await store.close()


# == /digest search and /digest week, end to end =================================================

LISTED = {  # the day's 15 papers by upvotes that mention diffusion in their title
    PICK_1,  # The Flexibility Trap: ... in Diffusion Language Models (picked)
    PICK_2,  # Scaling Text-to-Image Diffusion Transformers ... (picked)
    "2601.15892",  # Stable-DiffCoder: ... Code Diffusion Large Language Model
}
UNLISTED = "2601.15440"  # "... Diffusion-Limited Aggregation": 17th by upvotes, never posted
_LINK = re.compile(r"<(https://[^|>]+)\|([^>]+)>")


async def slack_digest(bot: Bot, text: str, *, user: str = "U1", channel: str = "C1") -> list[str]:
    """One `/digest TEXT` over Socket Mode, to the end; the requester's new ephemeral lines."""
    seen = len(bot.ephemerals(user))
    payload = slash(text, user=user, channel=channel) | {"command": "/digest"}
    await bot.slack.wait_for_ack(await bot.slack.push_envelope("slash_commands", payload))
    await eventually(lambda: len(bot.ephemerals(user)) > seen, f"the answer to {text[:30]!r}")
    await bot.settle()
    return bot.ephemerals(user)[seen:]


def ids_in(text: str) -> list[str]:
    return re.findall(r"arXiv:(\d{4}\.\d{5})", text)


async def test_slack_search_ranks_and_links_each_paper_to_its_thread_here(tmp_path: Path) -> None:
    async with Bot(tmp_path) as bot:
        assert bot.slack_rt is not None
        await _deliver_digest(bot, [Destination(bot.slack_rt.channel, "C1")])
        (toc,) = bot.roots("C1")
        analysis = await bot.analysed_in_slack(PAPER)
        calls = len(bot.llm_calls())

        (listing,) = await slack_digest(bot, "search diffusion")
        head, *rows = listing.split("\n")
        assert head == "🔎 4 paper(s) posted here matching “diffusion”:"
        found_ids = [ids_in(r)[0] for r in rows]
        # The two deep-dived picks (the word in their titles and deep dives, and the best
        # scores) come first; then the listed paper with it in its title; then the analysed
        # paper whose deep dive names it once. A paper of the day never posted here is not
        # found.
        assert set(found_ids[:2]) == {PICK_1, PICK_2}
        assert found_ids[2:] == ["2601.15892", PAPER]
        assert UNLISTED not in listing
        for i, row in enumerate(rows[:3], start=1):
            (url, title), *_ = _LINK.findall(row)
            assert row.startswith(f"{i}. <") and url == permalink("C1", toc["ts"])
            assert "diffusion" in title.lower()
            assert re.search(r" · score \d+ · 2026-01-23 · arXiv:", row)
        # The analysed paper links to its analysis thread, dated the day it was posted.
        assert _LINK.findall(rows[3]) == [(permalink("C1", analysis), PAPER_TITLE)]
        today = datetime.now(UTC).date().isoformat()
        assert rows[3].endswith(f" · {today} · arXiv:{PAPER}")
        scores = [int(s) for s in re.findall(r"score (\d+)", listing)]
        assert scores[:2] == sorted(scores[:2], reverse=True)

        (listing,) = await slack_digest(bot, "search markov bases")
        assert _LINK.findall(listing) == [(permalink("C1", analysis), PAPER_TITLE)]

        # No match, and bad input: one line each.
        assert await slack_digest(bot, "search quantum gravity") == [
            "No paper posted here matches “quantum gravity”."
        ]
        assert await slack_digest(bot, "search") == [
            "Search for what? Try /digest search diffusion (or 扩散模型)."
        ]
        assert await slack_digest(bot, 'search "*" (-) ...') == [
            "Search for words, not only punctuation: e.g. /digest search diffusion."
        ]
        assert await slack_digest(bot, "search " + "扩" * 1000) == [
            "Search words can be at most 200 characters (yours have 1000)."
        ]
        assert await slack_digest(bot, 'search NEAR("video" diffusion*') == [
            'No paper posted here matches “NEAR("video" diffusion*”.'
        ]
        # Another channel has its own history: nothing was posted in C2.
        assert await slack_digest(bot, "search diffusion", channel="C2") == [
            "No paper matches “diffusion”: nothing has been posted here yet."
        ]
        assert len(bot.llm_calls()) == calls  # searching costs no LLM call
        assert len(bot.roots("C1")) == 2  # and posts nothing in the channel


async def test_slack_week_roundup_by_score_and_by_likes_of_this_channel(tmp_path: Path) -> None:
    async with Bot(tmp_path) as bot:
        assert bot.slack_rt is not None
        channel = bot.slack_rt.channel
        await _deliver_digest(bot, [Destination(channel, "C1")])
        (toc,) = bot.roots("C1")
        analysis = await bot.analysed_in_slack(PAPER, channel="C2")
        for user, verb, paper_id in [
            ("U1", "like", PICK_2),
            ("U2", "like", PICK_2),
            ("U3", "dislike", PICK_2),
            ("U1", "like", "2601.15892"),
            ("U2", "dislike", PICK_1),  # only 👎: not a top paper by 👍
        ]:
            await slack_digest(bot, f"{verb} {paper_id}", user=user)
        await slack_digest(bot, "like 2601.15369", user="U4", channel="C2")  # voted in C2

        assert await slack_digest(bot, "week", user="U5") == [
            "Posted this week's roundup in the channel."
        ]
        roundup = bot.roots("C1")[-1]
        assert roundup["ts"] != toc["ts"] and not roundup.get("thread_ts")
        text = roundup["text"]
        lines = text.split("\n")
        assert re.fullmatch(
            r"📅 This week here \(\w{3} \d\d – \w{3} \d\d\): 15 paper\(s\) posted, 2 deep dive\(s\)\.",
            lines[0],
        )
        by_score = lines[
            lines.index("Top by score for default:") + 1 : lines.index("Top by 👍 here:")
        ]
        by_likes = lines[lines.index("Top by 👍 here:") + 1 :]
        assert len(by_score) == 5  # [roundup] top
        scores = [int(re.search(r"score (\d+)", r).group(1)) for r in by_score]  # type: ignore[union-attr]
        assert scores == sorted(scores, reverse=True)
        # The best scores of the day's list for this channel's profile (both picks among them).
        day = await bot.pipeline.store.load_digest(DAY)
        assert day is not None
        best = sorted((e.score.score for e in day.entries), reverse=True)[:5]
        assert scores == best
        assert {PICK_1, PICK_2} <= {ids_in(r)[0] for r in by_score}
        assert [ids_in(r)[0] for r in by_likes] == [PICK_2, "2601.15892"]
        assert "👍 2 👎 1" in by_likes[0] and by_likes[1].endswith("👍 1 · arXiv:2601.15892")
        for row in by_score + by_likes:
            assert _LINK.findall(row)[0][0] == permalink("C1", toc["ts"])
        # This channel only: C2's analysis and C2's vote are not in C1's roundup.
        assert PAPER not in text and "2601.15369" not in text

        # C2's roundup is its own: its analysis (scored when analysed) and its vote, on a
        # paper never posted in C2 (so shown without a link).
        await slack_digest(bot, "week", channel="C2")
        c2 = bot.roots("C2")[-1]["text"].split("\n")
        assert "1 paper(s) posted, 1 deep dive(s)" in c2[0]
        assert [ids_in(r) for r in c2[1:]] == [[], [PAPER], [], ["2601.15369"]]
        assert _LINK.findall(c2[2]) == [(permalink("C2", analysis), PAPER_TITLE)]
        assert _LINK.findall(c2[4]) == [] and PICK_2 not in str(c2)

        # An empty week: one line, nothing posted.
        assert await slack_digest(bot, "week", channel="C3") == [
            "Nothing was posted here in the last 7 days."
        ]
        assert bot.roots("C3") == []

        # Once per request: the same request handled again (a redelivery, a resumed journal
        # entry) posts nothing more.
        req = Request("slack", "C1", "U1", "week", message="trig-1", command=DIGEST, private=True)
        before = len(bot.roots("C1"))
        for _ in range(2):
            await bot.assistant.handle(channel, req)
        assert len(bot.roots("C1")) == before + 1


def zh_responder() -> Any:
    """The research responder, with reasons and deep dives in Chinese: 扩散模型 for papers
    about diffusion, 视频生成 for papers about video."""
    import json

    english = research_responder()

    def topics(title: str) -> str:
        words = [
            w for k, w in (("diffusion", "扩散模型"), ("video", "视频生成")) if k in title.lower()
        ]
        return "、".join(words) or "其他方向"

    def respond(body: dict[str, Any]) -> Any:
        answer = english(body)
        system = str(body["messages"][0]["content"])
        if "rate research papers" in system:
            user = "\n".join(str(m["content"]) for m in body["messages"] if m["role"] == "user")
            papers = json.loads(re.search(r"<papers>\n(.*)\n</papers>", user, re.S).group(1))  # type: ignore[union-attr]
            titles = {p["id"]: p["title"] for p in papers}
            data = json.loads(str(answer))
            for s in data["scores"]:
                s["reason"] = f"关于{topics(titles[s['id']])}的研究"
            return json.dumps(data, ensure_ascii=False)
        if "You write a deep dive" in system:
            data = json.loads(str(answer))
            user = "\n".join(str(m["content"]) for m in body["messages"] if m["role"] == "user")
            title = re.search(r"Title: (.*)", user)
            data["contribution"] = f"本文研究{topics(title.group(1) if title else '')}。"
            return json.dumps(data, ensure_ascii=False)
        return answer

    return respond


async def test_telegram_search_in_chinese_and_week_with_tme_links(tmp_path: Path) -> None:
    async with Bot(tmp_path, slack=None, telegram=True) as bot:
        bot.world.llm.responder = zh_responder()
        group = Destination(bot.tg_channel, str(TG_GROUP))
        await _deliver_digest(bot, [group])
        toc = bot.tg.sent(TG_GROUP)[0]["message_id"]
        link = f"https://t.me/c/123/{toc}"

        def linked(message: dict[str, Any]) -> list[str]:
            return [e["url"] for e in message["entities"] if e["type"] == "text_link"]

        async def search(words: str) -> dict[str, Any]:
            (reply,) = await bot.tg_say(TG_GROUP, f"/digest search {words}")
            return reply

        # Three and four characters, and two: each found where the characters stand together.
        reply = await search("扩散模型")
        assert reply["parse_mode"] == "HTML"
        head, *rows = reply["visible"].split("\n")
        assert head == "🔎 3 paper(s) posted here matching “扩散模型”:"
        assert {ids_in(r)[0] for r in rows} == LISTED
        assert linked(reply) == [link] * 3
        video = {  # the day's papers listed here with "video" in their title
            "2601.14724",
            "2601.16163",
            "2601.15549",
            "2601.16192",
        }
        for words in ("视频生成", "视频"):
            reply = await search(words)
            assert {i for r in reply["visible"].split("\n")[1:] for i in ids_in(r)} == video
        assert {i for i in ids_in((await search("扩散 视频"))["visible"])} == set()
        assert (await search("天气预报"))["visible"] == "No paper posted here matches “天气预报”."
        assert (await search("（）！"))["visible"] == (
            "Search for words, not only punctuation: e.g. /digest search diffusion."
        )

        like = await bot.tg_say(TG_GROUP, f"/digest like {PICK_2}")
        assert like and "👍" in like[0]["visible"]
        (roundup,) = await bot.tg_say(TG_GROUP, "/digest week")
        lines = roundup["visible"].split("\n")
        assert lines[0].startswith("📅 This week here (")
        assert ids_in(lines[-1]) == [PICK_2] and lines[-2] == "Top by 👍 here:"
        assert set(linked(roundup)) == {link}
        # Posted in the chat through the ledger, as the reply to the command.
        assert roundup["reply_to_message_id"] is not None


# == the weekly roundup on a schedule ============================================================

CONFIG = Path(__file__).resolve().parent.parent / "config" / "digestbot.toml"
SHANGHAI = "Asia/Shanghai"


async def test_the_weekly_roundup_is_off_by_default(tmp_path: Path) -> None:
    settings = load_settings(env={"DIGEST_CONFIG": str(CONFIG), "DIGEST_DB": str(tmp_path / "d")})
    assert settings.roundup.day == "off" and make_roundup_trigger(settings) is None
    pipeline = await open_pipeline(settings, offline=True)
    try:
        daily = DailyJob(pipeline, [], settings, "host-a:1")
        scheduler = start_scheduler(daily, settings, roundup=RoundupJob(daily))
        try:
            assert scheduler.get_job("weekly_roundup") is None
            assert scheduler.get_job("daily_digest") is not None
        finally:
            scheduler.shutdown(wait=False)
        assert await RoundupJob(daily).catch_up() is None
    finally:
        await pipeline.aclose()


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('day = "friday"', "roundup.day"),
        ('time = "25:00"', "roundup.time"),
        ("top = 11", "roundup.top"),
    ],
)
def test_bad_roundup_settings_name_the_key(tmp_path: Path, line: str, says: str) -> None:
    from bot.settings import ConfigError

    conf = tmp_path / "digestbot.toml"
    conf.write_text(f"[roundup]\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"DIGEST_CONFIG": str(conf)})
    assert says in str(caught.value) and "\n" not in str(caught.value)


async def test_the_roundup_fires_on_its_day_and_time_and_posts_once_from_two_processes(
    tmp_path: Path,
) -> None:
    # Friday 18:30 in Shanghai ([digest] timezone), set in the config file as a person would.
    config = {"day =": 'day = "Fri"', "top =": "top = 3", "timezone =": f'timezone = "{SHANGHAI}"'}
    async with Bot(tmp_path, config=config) as bot:
        assert bot.slack_rt is not None
        channel = bot.slack_rt.channel
        settings = bot.settings.model_copy(
            update={"roundup": bot.settings.roundup.model_copy(update={"time": "18:30"})}
        )
        trigger = make_roundup_trigger(settings)
        assert trigger is not None
        wednesday = datetime.fromisoformat("2026-01-21T12:00:00+08:00")
        friday = trigger.get_next_fire_time(None, wednesday)
        assert friday is not None and friday.isoformat() == "2026-01-23T18:30:00+08:00"
        assert trigger.get_next_fire_time(friday, friday + timedelta(seconds=1)).isoformat() == (
            "2026-01-30T18:30:00+08:00"
        )

        await _deliver_digest(bot, [Destination(channel, "C1")])
        await slack_digest(bot, f"like {PICK_1}")
        roots = len(bot.roots("C1"))
        # The next Friday 18:30 from now: the scheduler holds the job for it.
        due = trigger.get_next_fire_time(None, datetime.now(UTC))
        assert due is not None

        async def process(owner: str) -> RoundupJob:
            """A second serve on the same file: its own store and jobs."""
            pipeline = await open_pipeline(settings)
            opened.append(pipeline)
            daily = DailyJob(pipeline, [Destination(channel, "C1")], settings, owner)
            return RoundupJob(daily, now=lambda: due)

        opened: list[Any] = []
        try:
            first, second = await process("host-a:1"), await process("host-b:2")
            scheduler = start_scheduler(first.daily, settings, roundup=first)
            try:
                job = scheduler.get_job("weekly_roundup")
                assert job is not None and job.next_run_time == due
            finally:
                scheduler.shutdown(wait=False)
            # Both schedulers fire at the same moment: one posts.
            statuses = await asyncio.gather(first.fire(), second.fire())
            assert sorted(statuses) == ["done", "skipped"]
            assert len(bot.roots("C1")) == roots + 1
            roundup = bot.roots("C1")[-1]["text"].split("\n")
            assert roundup[1] == "Top by score for default:" and len(roundup) == 1 + 1 + 3 + 2
            assert ids_in(roundup[-1]) == [PICK_1] and "👍 1" in roundup[-1]
            assert bot.roots("C2") == []  # only the destinations of the daily digest
            # A restart after it: the catch-up and the next fire find the week done.
            restarted = await process("host-c:3")
            restarted.now = lambda: due + timedelta(hours=1)
            assert await restarted.catch_up() is None
            restarted.now = lambda: due
            assert await restarted.fire() == "skipped"
            assert len(bot.roots("C1")) == roots + 1
        finally:
            for pipeline in opened:
                await pipeline.aclose()


async def test_a_roundup_missed_while_down_is_caught_up_once(tmp_path: Path) -> None:
    async with Bot(tmp_path, config={"day =": 'day = "mon"'}) as bot:
        assert bot.slack_rt is not None
        channel = bot.slack_rt.channel
        await _deliver_digest(bot, [Destination(channel, "C1")])
        trigger = make_roundup_trigger(bot.settings)
        assert trigger is not None
        due = trigger.get_next_fire_time(None, datetime.now(UTC))
        assert due is not None
        daily = DailyJob(bot.pipeline, [Destination(channel, "C1")], bot.settings, "host-a:1")
        roots = len(bot.roots("C1"))
        # Started two hours after the fire time (within catch_up_hours): posted now, once.
        late = RoundupJob(daily, now=lambda: due + timedelta(hours=2))
        assert await late.catch_up() == "done"
        assert await late.catch_up() is None
        assert len(bot.roots("C1")) == roots + 1
        # Started a day late (past catch_up_hours): that week is let go.
        other = RoundupJob(daily, now=lambda: due + timedelta(days=7, hours=30))
        assert await other.catch_up() is None
        assert len(bot.roots("C1")) == roots + 1


async def test_a_roundup_cut_off_by_a_killed_process_is_caught_up_once_its_lease_lapses(
    tmp_path: Path,
) -> None:
    """A process that claimed the week's roundup was killed: its lease is still fresh at the
    restart, so catch-up posts nothing yet and looks again when the lease would have lapsed,
    then posts the roundup once (as the daily digest's catch-up does)."""
    from bot.scheduler import LEASE_SECONDS, roundup_key

    async with Bot(tmp_path, config={"day =": 'day = "mon"'}) as bot:
        assert bot.slack_rt is not None
        channel = bot.slack_rt.channel
        await _deliver_digest(bot, [Destination(channel, "C1")])
        trigger = make_roundup_trigger(bot.settings)
        assert trigger is not None
        due = trigger.get_next_fire_time(None, datetime.now(UTC))
        assert due is not None
        key = roundup_key(due.astimezone(bot.settings.digest.tz))
        store = ChatStore(bot.pipeline.store)
        assert await store.claim_run(key, "host-killed:9", LEASE_SECONDS)  # then kill -9
        roots = len(bot.roots("C1"))
        slept: list[float] = []

        async def lease_lapses(seconds: float) -> None:
            slept.append(seconds)
            db = bot.pipeline.store.db
            await bot.pipeline.store.run(
                lambda: db.execute(
                    "update runs set heartbeat_at = '2000-01-01T00:00:00+00:00'"
                    " where digest_date = ?",
                    [key],
                )
            )

        daily = DailyJob(
            bot.pipeline,
            [Destination(channel, "C1")],
            bot.settings,
            "host-b:2",
            sleep=lease_lapses,
        )
        restarted = RoundupJob(daily, now=lambda: due + timedelta(hours=1))
        assert await restarted.catch_up() == "done"
        assert slept == [LEASE_SECONDS / 2]
        assert len(bot.roots("C1")) == roots + 1
        assert await restarted.catch_up() is None


async def test_a_roundup_that_fails_for_now_is_posted_on_the_next_round(tmp_path: Path) -> None:
    """Slack answers 5xx to every try of one post: the roundup is not lost, it is posted once
    after the job's pause, as the daily digest is."""
    async with Bot(tmp_path, config={"day =": 'day = "mon"'}) as bot:
        assert bot.slack_rt is not None
        channel = bot.slack_rt.channel
        await _deliver_digest(bot, [Destination(channel, "C1")])
        trigger = make_roundup_trigger(bot.settings)
        assert trigger is not None
        due = trigger.get_next_fire_time(None, datetime.now(UTC))
        assert due is not None
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        daily = DailyJob(
            bot.pipeline, [Destination(channel, "C1")], bot.settings, "host-a:1", sleep=sleep
        )
        roots = len(bot.roots("C1"))
        bot.slack.server_error_next(3)  # this round's tries at the post all fail
        assert await RoundupJob(daily, now=lambda: due).fire() == "done"
        assert len(bot.roots("C1")) == roots + 1
        assert bot.roots("C1")[-1]["text"].startswith("📅 This week here")
        assert 60.0 <= sum(slept) <= 60.0 * (1 + bot.settings.retry.jitter)


def test_help_readme_manifest_and_botfather_list_the_same_commands() -> None:
    from bot.team import HELP_COMMANDS

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    manifest = (root / "config" / "slack-app-manifest.yaml").read_text(encoding="utf-8")
    verbs = set(re.findall(r"/digest (\w+)", HELP_COMMANDS))
    assert {"search", "week"} <= verbs
    assert verbs <= set(re.findall(r"`/digest (\w+)", readme))
    hint = re.search(r"command: /digest\n.*\n\s+usage_hint: \"(.*)\"", manifest)
    assert hint is not None
    botfather = re.search(r"^\s+digest - (.*)$", readme, re.MULTILINE)
    assert botfather is not None
    for verb in verbs - {"help", "unsubscribe", "dislike"}:
        assert verb in hint.group(1) and verb in botfather.group(1), verb


def test_a_long_slack_listing_takes_several_sections_with_every_line_whole() -> None:
    """Two lists of ten linked titles run past one section's 3,000 characters: the roundup
    is split between sections at line ends, and nothing is cut off."""
    from bot import history
    from bot.channels.slack import SlackChannel, make_slack_client

    title = "A long paper title about diffusion transformers and their scaling laws " * 2
    lines = [history.Line("📅 This week here")] + [
        history.Line(f"{i}. ", title.strip(), f" · score 9{i % 10} · arXiv:2601.{10000 + i}")
        for i in range(20)
    ]
    lines = [
        history.Line(ln.text, ln.title, ln.after, url=f"https://fake.slack.com/archives/C1/p{i}")
        if ln.title
        else ln
        for i, ln in enumerate(lines)
    ]
    channel = SlackChannel(make_slack_client("xoxb-test", "http://127.0.0.1:9/api/"), "en")
    message = history.render(channel, history.Listing(tuple(lines)), "roundup").payload
    sections = [block["text"]["text"] for block in message.blocks]
    assert len(sections) >= 2 and all(len(s) <= 3000 for s in sections)
    assert "\n".join(sections).split("\n") == message.text.split("\n")
    assert len(message.text.split("\n")) == 21 and "arXiv:2601.10019" in sections[-1]
