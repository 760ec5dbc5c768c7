"""Issue 9 item 2: the deep dive's links and its key figure, on Slack, Telegram and Markdown.

Real clients against the fakes: the HF paper and repo-list APIs (FakeHF), a real arXiv HTML
page and its image (FakeArxiv), Slack's external upload (FakeSlack) and Telegram's sendPhoto
(FakeTelegram). The paper is 2601.15165, whose HF record (a recorded payload) has a GitHub
repository and a project page; its full text is the real arXiv page of 2501.11120v1, whose
first figure is `x1.png` under `<base href="/html/2501.11120v1/">`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import pytest
from fakes.papers import FakeArxiv, FakeHF
from fakes.slack import FakeSlack
from fakes.telegram import FakeTelegram
from fakes.world import World, fast_config

from bot.assistant import Assistant
from bot.channels.slack import SlackChannel, make_slack_client
from bot.channels.telegram import TelegramChannel, make_bot, make_rate_limiter
from bot.chatstore import ChatStore, PostRecord, PostStatus, open_pipeline
from bot.service import Destination, deliver
from digest_core.arxiv_id import parse_arxiv_id
from digest_core.models import Digest, Paper
from digest_core.pipeline import LINK_LOOKUPS_AT_ONCE

FIXTURES = Path(__file__).parent / "fixtures"
PAPER = "2601.15165"
PAGE = (FIXTURES / "arxiv_html" / "2501.11120v1.html").read_text(encoding="utf-8")
FIGURE_PATH = "2501.11120v1/x1.png"
CAPTION_START = "Figure 1: Models can describe a learned behavioral policy"
HF_PAPER = json.loads((FIXTURES / "hf" / f"paper_{PAPER}.json").read_text(encoding="utf-8"))
MODEL_ITEM = json.loads(
    (FIXTURES / "hf" / "models_filter_arxiv_2605.31268.json").read_text(encoding="utf-8")
)[0]
TG_CHAT = -100777


def png(size: int = 2000) -> bytes:
    """A valid PNG of about `size` bytes (noise does not compress)."""
    import random

    rng = random.Random(size)
    width = max(1, size // 3)
    raw = b"\x00" + bytes(rng.randrange(256) for _ in range(width * 3))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


IMAGE = png()


def arxiv_entry(arxiv_id: str, title: str) -> bytes:
    return (
        f"<entry><id>http://arxiv.org/abs/{arxiv_id}v1</id>"
        f"<published>2026-01-21T10:00:00Z</published><title>{escape(title)}</title>"
        f"<summary>{escape(HF_PAPER['summary'])}</summary>"
        "<author><name>Ada Example</name></author></entry>"
    ).encode()


@dataclass
class Setup:
    world: World
    assistant: Assistant
    slack: FakeSlack
    tg: FakeTelegram
    slack_channel: SlackChannel
    tg_channel: TelegramChannel


@contextlib.asynccontextmanager
async def make_setup(tmp_path: Path, **config: Any) -> AsyncIterator[Setup]:
    """Everything running; `config` may hold `page` and `image` (None: no image served) for
    FakeArxiv, the rest are fast_config line replacements."""
    hf = FakeHF.with_fixture_days()
    hf.papers[PAPER] = HF_PAPER
    hf.repos[("models", PAPER)] = [
        MODEL_ITEM,
        {**MODEL_ITEM, "id": "LeapLab/JustGRPO-7B"},
        {**MODEL_ITEM, "id": "LeapLab/JustGRPO-1B"},
        {**MODEL_ITEM, "id": "LeapLab/JustGRPO-tiny"},  # over the 3 per kind
    ]
    hf.repos[("datasets", PAPER)] = [{**MODEL_ITEM, "id": "LeapLab/flex-trap-data"}]
    hf.repos[("spaces", PAPER)] = [{**MODEL_ITEM, "id": "LeapLab/justgrpo-demo"}]
    arxiv = FakeArxiv(entries={PAPER: arxiv_entry(PAPER, HF_PAPER["title"])})
    arxiv.html[PAPER] = config.pop("page", PAGE)
    image = config.pop("image", IMAGE)
    if image is not None:
        arxiv.images[FIGURE_PATH] = image
    async with World(tmp_path, hf=hf, arxiv=arxiv) as world:
        world.config.write_text(fast_config(**config), encoding="utf-8")
        slack, tg = FakeSlack(channels={"C1"}), FakeTelegram()
        await slack.start()
        await tg.start()
        tg.add_chat(TG_CHAT)
        settings = world.settings(DIGEST_TIME="off")
        pipeline = await open_pipeline(settings)
        slack_channel = SlackChannel(make_slack_client(slack.token, slack.url + "/api/"), "en")
        bot = make_bot(
            tg.token,
            tg.url + "/bot",
            rate_limiter=make_rate_limiter(group_max_rate=10_000, overall_max_rate=10_000),
        )
        await bot.initialize()
        tg_channel = TelegramChannel(bot, "en")
        try:
            yield Setup(world, Assistant(pipeline, settings), slack, tg, slack_channel, tg_channel)
        finally:
            await slack_channel.aclose()
            await bot.shutdown()
            await pipeline.aclose()
            await slack.stop()
            await tg.stop()


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with make_setup(tmp_path) as s:
        yield s


def slack_thread(s: Setup, root_ts: str) -> list[dict[str, Any]]:
    return [m for m in s.slack.messages("C1") if m.get("thread_ts") == root_ts]


def block_text(message: dict[str, Any]) -> str:
    return "\n".join(b["text"]["text"] for b in message.get("blocks") or [] if "text" in b)


def expected_links(s: Setup) -> list[str]:
    hub = s.world.hf.url
    return [
        HF_PAPER["githubRepo"],
        HF_PAPER["projectPage"],
        f"{hub}/{MODEL_ITEM['id']}",
        f"{hub}/LeapLab/JustGRPO-7B",
        f"{hub}/LeapLab/JustGRPO-1B",
        f"{hub}/datasets/LeapLab/flex-trap-data",
        f"{hub}/spaces/LeapLab/justgrpo-demo",
    ]


# -- the figure and the links, on both platforms ----------------------------------------------


async def test_slack_posts_the_figure_in_the_thread_after_the_text(setup: Setup) -> None:
    s = setup
    outcome = await s.assistant.analyze(Destination(s.slack_channel, "C1"), parse_arxiv_id(PAPER))
    assert outcome.ok and outcome.thread
    replies = slack_thread(s, outcome.thread)
    assert replies, "the deep dive is in the thread"
    header = block_text(replies[0])
    for url in expected_links(s):
        assert f"<{url}|" in header, url
    assert "JustGRPO-tiny" not in header  # at most links_per_kind a kind
    # The upload: into the same channel and thread, after every text message, with the
    # caption and the image's bytes.
    assert len(s.slack.uploads) == 1
    upload = s.slack.uploads[0]
    assert upload["channel_id"] == "C1" and upload["thread_ts"] == outcome.thread
    assert upload["data"] == IMAGE
    assert float(upload["ts"]) > max(float(m["ts"]) for m in replies)
    assert upload["initial_comment"].startswith(CAPTION_START)
    calls = [r.path.rsplit("/", 1)[-1] for r in s.slack.requests if "/api/files." in r.path]
    assert calls == ["files.getUploadURLExternal", "files.completeUploadExternal"]


async def test_telegram_sends_the_photo_as_a_reply_after_the_text(setup: Setup) -> None:
    s = setup
    outcome = await s.assistant.analyze(
        Destination(s.tg_channel, str(TG_CHAT)), parse_arxiv_id(PAPER)
    )
    assert outcome.ok and outcome.thread
    sent = s.tg.sent(TG_CHAT)
    texts, photos = [m for m in sent if "photo" not in m], [m for m in sent if "photo" in m]
    assert len(photos) == 1 and sent[-1] is not None and "photo" in sent[-1]  # last of all
    photo = photos[0]
    assert photo["photo"] == IMAGE
    assert photo["reply_to_message_id"] == int(outcome.thread)
    assert photo["caption"].startswith(CAPTION_START) and len(photo["caption"]) <= 1024
    header = next(m["text"] for m in texts if HF_PAPER["githubRepo"] in m["text"])
    for url in expected_links(s):
        assert f'<a href="{url}">' in header, url


async def test_telegram_caption_is_cut_to_1024_characters(tmp_path: Path) -> None:
    long_page = PAGE.replace("Chain-of-Thought reasoning.", "x " * 700, 1)
    async with make_setup(tmp_path, page=long_page) as s:
        outcome = await s.assistant.analyze(
            Destination(s.tg_channel, str(TG_CHAT)), parse_arxiv_id(PAPER)
        )
    assert outcome.ok
    photo = next(m for m in s.tg.sent(TG_CHAT) if "photo" in m)
    assert 1000 <= len(photo["caption"]) <= 1024
    assert photo["caption"].startswith(CAPTION_START) and photo["caption"].endswith("…")


# -- a figure that cannot be had never blocks the text -----------------------------------------

BROKEN_CASES = {
    "missing": ({"image": None}, "answered 404"),
    "huge": ({"image": png(40_000), "figure_max_bytes =": "figure_max_bytes = 20000"}, "cap"),
    "broken": ({"image": b"<html>not an image</html>"}, "not a PNG"),
    "other host": (
        {
            "page": PAGE.replace(
                '<base href="/html/2501.11120v1/"/>',
                '<base href="http://images.example.org/html/2501.11120v1/"/>',
            )
        },
        "not the arXiv host",
    ),
}


@pytest.mark.parametrize("platform", ["slack", "telegram"])
@pytest.mark.parametrize("case", list(BROKEN_CASES))
async def test_a_bad_image_skips_the_figure_with_one_log_line(
    tmp_path: Path, case: str, platform: str, caplog: pytest.LogCaptureFixture
) -> None:
    config, reason = BROKEN_CASES[case]
    async with make_setup(tmp_path, **config) as s:
        chat = "C1" if platform == "slack" else str(TG_CHAT)
        channel = s.slack_channel if platform == "slack" else s.tg_channel
        caplog.clear()
        with caplog.at_level(logging.INFO):
            outcome = await s.assistant.analyze(Destination(channel, chat), parse_arxiv_id(PAPER))
        assert outcome.ok, outcome.line
        lines = [r.getMessage() for r in caplog.records if "key figure" in r.getMessage()]
        assert len(lines) == 1 and reason in lines[0], lines
        assert all(r.levelno < logging.ERROR for r in caplog.records if "figure" in r.getMessage())
        if platform == "slack":
            assert s.slack.uploads == []
            assert len(slack_thread(s, outcome.thread or "")) >= 1  # the text is there
        else:
            sent = s.tg.sent(TG_CHAT)
            assert sent and all("photo" not in m for m in sent)
        if case == "other host":  # refused before any request to it
            assert not any("images.example.org" in str(r.headers) for r in s.world.arxiv.requests)


# -- the Markdown export, and a retry posts no second figure -----------------------------------


def digest_of(entry: Any) -> Digest:
    return Digest("2026-01-23", (entry,), "CV", "en", 60, None, 1)


async def test_many_papers_links_are_looked_up_two_papers_at_a_time_and_all_arrive(
    setup: Setup,
) -> None:
    """Each lookup is four Hugging Face requests on the sources client's 10 connections, which
    arXiv shares: eight papers at once must not queue 32 (and arXiv behind them)."""
    hf = setup.world.hf
    hf.lookup_delay = 0.1
    papers = [Paper(f"2601.{20000 + i}", f"Paper {i}", "abstract") for i in range(8)]
    for paper in papers:
        hf.repos[("models", paper.arxiv_id)] = [{**MODEL_ITEM, "id": f"lab/{paper.arxiv_id}"}]
    pipeline = setup.assistant.pipeline
    found = await asyncio.gather(*(pipeline.links(paper) for paper in papers))
    assert [[link.url for link in links] for links in found] == [
        [f"{hf.url}/lab/{paper.arxiv_id}"] for paper in papers
    ]
    per_paper = 4  # the paper API and three repo lists
    assert per_paper < hf.lookups_max_in_flight <= per_paper * LINK_LOOKUPS_AT_ONCE


async def test_with_hugging_face_hanging_an_analysis_comes_without_links_not_after_the_queue(
    tmp_path: Path,
) -> None:
    """Twenty papers' lookups are queued ahead (two at a time, each running out its deadline
    on a Hugging Face that does not answer): the analysis asked after them is posted without
    links once its deep dive is done, not when its turn comes."""
    extras = {"extras_timeout_seconds =": "extras_timeout_seconds = 0.3"}
    async with make_setup(tmp_path, **extras) as setup:
        setup.world.hf.lookup_delay = 60
        pipeline = setup.assistant.pipeline
        queued = [
            asyncio.ensure_future(pipeline.links(Paper(f"2601.{30000 + i}", "t", "a")))
            for i in range(20)
        ]
        entry = await pipeline.analyze(PAPER)
        assert entry.deep_dive.llm_used and entry.links == ()
        assert not all(lookup.done() for lookup in queued)  # the queue was not waited out
        for lookup in queued:
            lookup.cancel()
        await asyncio.gather(*queued, return_exceptions=True)


async def test_markdown_export_has_the_links_from_the_hf_paper_api(setup: Setup) -> None:
    s = setup
    pipeline = s.assistant.pipeline
    entry = await pipeline.analyze(PAPER)
    assert {link.kind for link in entry.links} == {"code", "project", "model", "dataset", "space"}
    await pipeline.store.save_digest(digest_of(entry))
    report = await pipeline.export("2026-01-23")
    assert report is not None
    links_line = next(line for line in report.splitlines() if line.startswith("**🔗 Links**"))
    assert f"[github.com/LeapLabTHU/JustGRPO]({HF_PAPER['githubRepo']})" in links_line
    for url in expected_links(s):
        assert f"]({url})" in links_line, url


async def test_a_digest_rerun_posts_no_second_figure(setup: Setup) -> None:
    s = setup
    pipeline = s.assistant.pipeline
    digest = digest_of(await pipeline.analyze(PAPER))
    chat = ChatStore(pipeline.store)
    for dest in (Destination(s.slack_channel, "C1"), Destination(s.tg_channel, str(TG_CHAT))):
        for _ in range(2):  # the operator re-runs the day
            done = await deliver(chat, dest, digest, pipeline.settings, figures=pipeline.key_figure)
            assert done.ok, done.error
    assert len(s.slack.uploads) == 1
    assert s.slack.uploads[0]["initial_comment"].startswith(
        f"1. {HF_PAPER['title'][:30]}"
    )  # the digest names the paper the figure belongs to
    assert len([m for m in s.tg.sent(TG_CHAT) if "photo" in m]) == 1
    image_gets = [r for r in s.world.arxiv.requests if r.path.endswith("x1.png")]
    assert len(image_gets) == 2  # once per platform: the re-run did not even fetch it


async def test_an_upload_cut_off_mid_way_is_not_repeated_after_a_restart(setup: Setup) -> None:
    s = setup
    pipeline = s.assistant.pipeline
    digest = digest_of(await pipeline.analyze(PAPER))
    chat = ChatStore(pipeline.store)
    # A crash after the intent was recorded: the upload may have landed, and cannot be looked
    # up again, so it is not sent a second time.
    await chat.record_post(
        PostRecord("figure:digest:2026-01-23", "slack", "C1", PAPER, 0, PostStatus.INTENT)
    )
    done = await deliver(
        chat,
        Destination(s.slack_channel, "C1"),
        digest,
        pipeline.settings,
        figures=pipeline.key_figure,
    )
    assert done.ok
    assert s.slack.uploads == []
    assert slack_thread(s, s.slack.messages("C1")[0]["ts"])  # the text went out
