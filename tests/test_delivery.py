"""Delivering a digest to Slack and Telegram exactly once: threads, reruns, crashes, faults.

The real channels (slack_sdk, python-telegram-bot) post over HTTP to FakeSlack and FakeTelegram
on 127.0.0.1. The end-to-end tests run `digestbot digest` in a child process against those two
and the fakes of Hugging Face, arXiv and the LLM (World); the in-process tests drive
`bot.service.deliver` / `post_thread` with a digest built here. Every test asserts what the
fakes recorded as posted (where, in which thread, in which order, how many times) and that the
posting ledger in SQLite agrees with it. Faults are injected at the fakes; a process killed in
the middle of a digest is a channel wrapper that stops the run at a chosen send.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes.slack import FakeSlack
from fakes.telegram import DEFAULT_TOKEN as TELEGRAM_TOKEN
from fakes.telegram import FakeTelegram, parse_html, utf16_len
from fakes.world import (
    CONFIG,
    World,
    fast_config,
    migrated_database,
    research_responder,
    run_cli,
)
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from bot.channels.base import ErrorKind, Outgoing
from bot.channels.slack import SlackChannel, make_slack_client
from bot.channels.telegram import TelegramChannel, make_bot, make_rate_limiter
from bot.chatstore import ChatStore, PostRecord
from bot.service import Delivered, Destination, deliver, post_thread
from bot.settings import AppSettings as Settings
from bot.settings import load_settings
from digest_core.models import (
    SECTION_KEYS,
    SOURCE_ABSTRACT,
    DeepDive,
    Digest,
    DigestEntry,
    Paper,
    Score,
)
from digest_core.render.labels import label

# PTB's RetryAfter reads its own deprecated int `retry_after` when the fake answers 429.
pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")

DAY = "2026-01-23"  # a recorded HF day: 18 papers, the top 15 scanned, 2 deep dives
EMPTY_DAY = "2026-01-24"  # a Saturday: HF lists nothing
SLACK_CHANNELS = ("C1", "C2")
FORUM, TOPIC, GROUP = -100123, 7, -100456
TELEGRAM_CHATS = f"{FORUM}:{TOPIC},{GROUP}"
TELEGRAM_DESTINATIONS = ((FORUM, TOPIC), (GROUP, None))
PLATFORMS = ("slack", "telegram")
HOSTILE = "<!channel> <@U123> a<b & c>d <script>alert(1)</script>"
SPOOF = "<https://evil.example|Official PDF>"  # in a title: must not become a link


# ------------------------------------------------------------------------ what was posted


@dataclass(frozen=True)
class Post:
    """One message as the fake platform stored it."""

    ref: str  # Slack ts / Telegram message_id
    reply_to: str | None  # Slack thread_ts / Telegram reply target
    text: str  # Slack notification text / Telegram visible text
    topic: int | None = None  # Telegram message_thread_id


def slack_posts(slack: FakeSlack, channel: str) -> list[Post]:
    return [Post(m["ts"], m["thread_ts"], m["text"]) for m in slack.messages(channel)]


def telegram_posts(telegram: FakeTelegram, chat_id: int) -> list[Post]:
    posts = []
    for m in telegram.sent(chat_id):
        target = m["reply_to_message_id"]
        posts.append(
            Post(
                str(m["message_id"]),
                None if target is None else str(target),
                m["visible"],
                m["message_thread_id"],
            )
        )
    return posts


def block_texts(node: Any) -> list[str]:
    """Every string under a "text" key in Slack blocks, in order."""
    if isinstance(node, dict):
        out: list[str] = []
        for key, value in node.items():
            out.extend([value] if key == "text" and isinstance(value, str) else block_texts(value))
        return out
    if isinstance(node, list):
        return [t for item in node for t in block_texts(item)]
    return []


def slack_metadata_keys(slack: FakeSlack, channel: str) -> list[str]:
    return [m["metadata"]["event_payload"]["key"] for m in slack.messages(channel)]


def slack_post_requests(slack: FakeSlack, channel: str) -> int:
    """chat.postMessage requests that reached the fake for `channel` (rejected ones included)."""
    count = 0
    for request in slack.requests:
        if request.path != "/api/chat.postMessage":
            continue
        try:
            body = request.json()
        except ValueError:
            body = request.form()
        count += isinstance(body, dict) and body.get("channel") == channel
    return count


def telegram_send_requests(telegram: FakeTelegram, chat_id: int) -> int:
    return sum(str(p.get("chat_id")) == str(chat_id) for p in telegram.method_calls("sendMessage"))


def assert_one_thread(posts: list[Post]) -> None:
    """One root first; every other post is a reply to it."""
    assert posts, "nothing was posted"
    root = posts[0]
    assert root.reply_to is None, posts
    assert [p.reply_to for p in posts[1:]] == [root.ref] * (len(posts) - 1), posts


async def ledger(db: Path, platform: str, chat: str, day: str = DAY) -> list[PostRecord]:
    """The posting ledger of one destination for one digest, in thread order."""
    store = await ChatStore.open(db)
    try:
        rows = await store.post_state(f"digest:{day}", platform, chat)
    finally:
        await store.close()
    return sorted(rows.values(), key=lambda r: r.seq)


def assert_ledger_matches(rows: list[PostRecord], posts: list[Post]) -> None:
    """The DB's record is the visible state: every post sent, no missing or extra message."""
    assert [r.status for r in rows] == ["sent"] * len(posts), rows
    assert [r.message_ref for r in rows] == [p.ref for p in posts]
    assert [r.thread_ref for r in rows] == [p.reply_to for p in posts]


# ------------------------------------------------------------------------------- fixtures


@dataclass
class Fakes:
    world: World
    slack: FakeSlack
    telegram: FakeTelegram

    def env(self, **overrides: str) -> dict[str, str]:
        """The contract's environment with both platforms configured."""
        values = {
            "SLACK_BOT_TOKEN": self.slack.token,
            "SLACK_API_URL": f"{self.slack.url}/api/",
            "SLACK_CHANNELS": ",".join(SLACK_CHANNELS),
            "TELEGRAM_BOT_TOKEN": self.telegram.token,
            "TELEGRAM_API_URL": f"{self.telegram.url}/bot",
            "TELEGRAM_CHATS": TELEGRAM_CHATS,
        }
        values.update(overrides)
        return self.world.env(**values)

    def send_counts(self) -> tuple[int, int]:
        return self.slack.api_calls("chat.postMessage"), len(
            self.telegram.method_calls("sendMessage")
        )


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FakeSlack, FakeTelegram]]:
    slack = FakeSlack(channels=set(SLACK_CHANNELS))
    telegram = FakeTelegram(TELEGRAM_TOKEN)
    telegram.add_chat(FORUM, title="Lab", topics=[TOPIC])
    telegram.add_chat(GROUP, title="CV papers")
    async with slack, telegram:
        yield slack, telegram


@pytest.fixture
async def fakes(tmp_path: Path, servers: tuple[FakeSlack, FakeTelegram]) -> AsyncIterator[Fakes]:
    async with World(tmp_path) as world:
        yield Fakes(world, *servers)


class Live:
    """Both real channels pointed at the fakes, for in-process delivery."""

    chats = {"slack": "C1", "telegram": f"{FORUM}:{TOPIC}"}

    def __init__(
        self, slack: FakeSlack, telegram: FakeTelegram, sc: SlackChannel, tc: TelegramChannel
    ) -> None:
        self.slack, self.telegram = slack, telegram
        self.channels: dict[str, Any] = {"slack": sc, "telegram": tc}

    def destination(self, platform: str, wrap: Callable[[Any], Any] | None = None) -> Destination:
        channel = self.channels[platform]
        return Destination(wrap(channel) if wrap else channel, self.chats[platform])

    def posts(self, platform: str) -> list[Post]:
        if platform == "slack":
            return slack_posts(self.slack, "C1")
        posts = telegram_posts(self.telegram, FORUM)
        assert {p.topic for p in posts} <= {TOPIC}
        return posts

    def expected(self, platform: str, digest: Digest) -> list[str]:
        """What the fake should show, in order: the rendered messages' texts."""
        return [
            self.visible(platform, out) for out in self.channels[platform].render_digest(digest)
        ]

    @staticmethod
    def visible(platform: str, out: Outgoing) -> str:
        return out.payload.text if platform == "slack" else parse_html(str(out.payload))[0]


@pytest.fixture
async def live(servers: tuple[FakeSlack, FakeTelegram]) -> AsyncIterator[Live]:
    slack, telegram = servers
    client = make_slack_client(
        slack.token, slack.url + "/api/", retry_interval=FixedValueRetryIntervalCalculator(0.01)
    )
    slack_channel = SlackChannel(client, language="zh")
    limiter = make_rate_limiter(group_max_rate=100_000, overall_max_rate=100_000)
    async with make_bot(telegram.token, f"{telegram.url}/bot", rate_limiter=limiter) as bot:
        yield Live(slack, telegram, slack_channel, TelegramChannel(bot, language="zh"))
    await slack_channel.aclose()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ChatStore]:
    opened = await ChatStore.open(await migrated_database(tmp_path / "ledger.db"))
    yield opened
    await opened.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        env={
            "DIGEST_CONFIG": str(CONFIG),
            "DIGEST_DB": str(tmp_path / "ledger.db"),
            "DIGEST_LLM_MODEL": "gpt-test",
        }
    )


def make_digest(picks: int = 3, others: int = 3, day: str = DAY) -> Digest:
    """A digest with `picks` short deep dives: one TOC and one reply per pick on both platforms."""
    entries = []
    for i in range(picks + others):
        arxiv_id = f"2601.{20000 + i}"
        paper = Paper(
            arxiv_id,
            f"Paper {i + 1}: diffusion priors for restoration",
            "An abstract.",
            authors=("A. Author",),
            upvotes=50 - i,
            abs_url=f"https://arxiv.org/abs/{arxiv_id}",
        )
        dive = None
        if i < picks:
            sections = {k: f"{k} of paper {i + 1}." for k in SECTION_KEYS}
            dive = DeepDive(
                arxiv_id, paper.title, sections, "zh", SOURCE_ABSTRACT, "gpt-test", "v1"
            )
        entries.append(DigestEntry(paper, Score(arxiv_id, 90 - i, f"reason {i + 1}"), dive))
    return Digest(day, tuple(entries), "Tester", "zh", 60, None, len(entries))


async def post_digest(store: ChatStore, dest: Destination, digest: Digest) -> Delivered:
    """`deliver`, with the pause before a re-check after a transient failure kept tiny."""
    return await post_thread(
        store,
        dest,
        f"digest:{digest.date}",
        dest.channel.render_digest(digest),
        kind="digest",
        papers=[e.paper.arxiv_id for e in digest.entries],
        retry_pause=0.01,
    )


class Killed(BaseException):
    """The process died here: nothing after this point of the run happens."""


class Scripted:
    """A channel that does something just before its n-th send: arm a fault at the fake, or
    die (before the platform got the message, or just after it stored it)."""

    def __init__(
        self,
        inner: Any,
        before: dict[int, Callable[[], None]] | None = None,
        *,
        die_on: int | None = None,
        die_after_post: bool = False,
    ) -> None:
        self.inner = inner
        self.before = before or {}
        self.die_on = die_on
        self.die_after_post = die_after_post
        self.sends = 0

    @property
    def platform(self) -> str:
        return self.inner.platform

    def __getattr__(self, name: str) -> Any:
        # render_digest, searchable, find_posted: as the real channel has them.
        return getattr(self.inner, name)

    async def send(self, chat: str, payload: Any, thread: str | None, *, key: str | None = None):
        self.sends += 1
        if self.sends in self.before:
            self.before[self.sends]()
        if self.sends == self.die_on:
            if self.die_after_post:
                await self.inner.send(chat, payload, thread, key=key)
            raise Killed
        return await self.inner.send(chat, payload, thread, key=key)


# -------------------------------------------------------------------- end to end (the CLI)


async def test_digest_is_one_thread_per_destination_and_a_rerun_posts_nothing(
    fakes: Fakes,
) -> None:
    env = fakes.env()
    code, _, err = await run_cli(["digest", "--date", DAY], env)
    assert code == 0, err

    for channel in SLACK_CHANNELS:
        posts = slack_posts(fakes.slack, channel)
        assert_one_thread(posts)
        assert len(posts) == 3  # the TOC, then the two deep dives
        assert posts[0].text.startswith(f"🚀 CV 论文日报 | {DAY}")
        assert posts[1].text.startswith("1. ") and posts[2].text.startswith("2. ")
        rows = await ledger(fakes.world.db, "slack", channel)
        assert_ledger_matches(rows, posts)
        keys = [r.key for r in rows]
        assert keys[0] == "toc" and all(re.fullmatch(r"\d{4}\.\d{5}#0", k) for k in keys[1:])
        # each post carries its ledger key qualified by the day (see bot.service.post_thread)
        assert slack_metadata_keys(fakes.slack, channel) == [f"digest:{DAY}/{k}" for k in keys]
    for chat_id, topic in TELEGRAM_DESTINATIONS:
        posts = telegram_posts(fakes.telegram, chat_id)
        assert_one_thread(posts)
        assert len(posts) == 3
        assert [p.topic for p in posts] == [topic] * 3  # the forum topic on every message
        assert posts[0].text.startswith(f"🚀 CV 论文日报 | {DAY}")
        assert posts[1].text.startswith("1. ") and posts[2].text.startswith("2. ")
        chat = f"{chat_id}:{topic}" if topic else str(chat_id)
        assert_ledger_matches(await ledger(fakes.world.db, "telegram", chat), posts)

    sent = fakes.send_counts()
    assert sent == (6, 6)  # nothing was rejected or repeated on the way
    code, _, err = await run_cli(["digest", "--date", DAY], env)
    assert code == 0, err
    assert fakes.send_counts() == sent  # the rerun posted nothing
    assert [len(slack_posts(fakes.slack, c)) for c in SLACK_CHANNELS] == [3, 3]


async def test_to_slack_posts_to_slack_only(fakes: Fakes) -> None:
    code, _, err = await run_cli(["digest", "--date", DAY, "--to", "slack"], fakes.env())
    assert code == 0, err
    for channel in SLACK_CHANNELS:
        posts = slack_posts(fakes.slack, channel)
        assert_one_thread(posts)
        assert len(posts) == 3
    assert fakes.telegram.method_calls("sendMessage") == []


async def test_dry_run_posts_nothing_anywhere(fakes: Fakes) -> None:
    code, out, err = await run_cli(["digest", "--date", DAY, "--dry-run"], fakes.env())
    assert code == 0, err
    assert out.startswith(f"# 🚀 CV 论文日报 | {DAY}")
    assert fakes.slack.requests == []
    assert fakes.telegram.method_calls("sendMessage") == []


async def test_permanent_failures_are_recorded_reported_once_and_retried_only_on_request(
    fakes: Fakes,
) -> None:
    fakes.slack.permanent_error("C1", "not_in_channel")
    fakes.telegram.kick(GROUP)
    env = fakes.env()

    code, _, err = await run_cli(["digest", "--date", DAY], env)
    assert code == 1
    summary = sorted(line for line in err.splitlines() if line.startswith("digestbot: "))
    assert summary == [
        "digestbot: slack:C1: not delivered: slack chat.postMessage: not_in_channel",
        f"digestbot: telegram:{GROUP}: not delivered: telegram forbidden in {GROUP}: "
        "Forbidden: bot was kicked from the supergroup chat",
    ], err
    # one attempt each
    assert slack_post_requests(fakes.slack, "C1") == 1
    assert telegram_send_requests(fakes.telegram, GROUP) == 1
    failures = [line for line in err.splitlines() if "post failed" in line]
    assert len(failures) == 2  # logged once each
    assert any("slack:C1:" in f for f in failures) and any(
        f"telegram:{GROUP}:" in f for f in failures
    )
    # the reason is in the ledger
    (row,) = await ledger(fakes.world.db, "slack", "C1")
    assert (row.key, row.status) == ("toc", "failed")
    assert row.error_kind is ErrorKind.PERMANENT
    assert row.error == "slack chat.postMessage: not_in_channel"
    (row,) = await ledger(fakes.world.db, "telegram", str(GROUP))
    assert row.status == "failed" and row.error_kind is ErrorKind.PERMANENT
    assert "kicked" in (row.error or "")
    # the others got everything, in their threads
    c2 = slack_posts(fakes.slack, "C2")
    assert_one_thread(c2)
    assert len(c2) == 3
    forum = telegram_posts(fakes.telegram, FORUM)
    assert_one_thread(forum)
    assert len(forum) == 3

    # An operator's re-run is the retry: one more knock on each closed door, no storm, the
    # same two lines, nothing repeated where it was delivered.
    code, _, err = await run_cli(["digest", "--date", DAY], env)
    assert code == 1
    assert slack_post_requests(fakes.slack, "C1") == 2
    assert telegram_send_requests(fakes.telegram, GROUP) == 2
    assert len([line for line in err.splitlines() if line.startswith("digestbot: ")]) == 2
    assert len(slack_posts(fakes.slack, "C2")) == 3
    assert len(telegram_posts(fakes.telegram, FORUM)) == 3

    # Once the bot is invited to C1, the next re-run delivers there, once.
    fakes.slack.permanent_error("C1", None)
    code, _, err = await run_cli(["digest", "--date", DAY, "--to", "slack"], env)
    assert code == 0, err
    c1 = slack_posts(fakes.slack, "C1")
    assert_one_thread(c1)
    assert len(c1) == 3
    assert len(slack_posts(fakes.slack, "C2")) == 3


# A section of about 3,500 characters; four of them make a deep dive of about 14,000.
PARAGRAPHS = 22
FILLER = (
    "The method trains a diffusion prior on pairs of degraded and clean images, then restores "
    "a photo in a few sampling steps guided by the measurement."
)


def long_dive_responder() -> Callable[[dict[str, Any]], Any]:
    """The research responder, with deep dives of numbered paragraphs: `(id-section-NN) …`."""
    normal = research_responder()

    def respond(body: dict[str, Any]) -> Any:
        system = str(body["messages"][0]["content"])
        if "deep dive" not in system:
            return normal(body)
        user = "\n".join(str(m["content"]) for m in body["messages"] if m["role"] == "user")
        found = re.search(r"arXiv: (\S+)", user)
        assert found, user[:300]
        aid = re.sub(r"v\d+$", "", found.group(1))
        return json.dumps(
            {
                key: "\n\n".join(f"({aid}-{key}-{n:02d}) {FILLER}" for n in range(PARAGRAPHS))
                for key in SECTION_KEYS
            }
        )

    return respond


def assert_whole_and_in_order(text: str, aid: str) -> None:
    markers = [f"({aid}-{key}-{n:02d})" for key in SECTION_KEYS for n in range(PARAGRAPHS)]
    assert [text.count(m) for m in markers] == [1] * len(markers)  # nothing lost or repeated
    positions = [text.find(m) for m in markers]
    assert positions == sorted(positions)  # in order across the split


async def test_a_12000_character_deep_dive_is_split_into_replies_on_both_platforms(
    fakes: Fakes,
) -> None:
    fakes.world.llm.responder = long_dive_responder()
    code, _, err = await run_cli(["digest", "--date", DAY], fakes.env())
    assert code == 0, err

    for channel in SLACK_CHANNELS:
        rows = await ledger(fakes.world.db, "slack", channel)
        posts = slack_posts(fakes.slack, channel)
        assert_one_thread(posts)
        assert_ledger_matches(rows, posts)
        by_ts = {m["ts"]: m for m in fakes.slack.messages(channel)}
        picked = list(dict.fromkeys(r.key.split("#")[0] for r in rows[1:]))
        assert len(picked) == 2
        for aid in picked:
            parts = [by_ts[r.message_ref] for r in rows if r.key.startswith(f"{aid}#")]
            assert len(parts) >= 2  # over Slack's 12,000 characters of blocks per message
            text = "\n".join(t for m in parts for t in block_texts(m["blocks"]))
            assert len(text) > 12_000
            assert_whole_and_in_order(text, aid)
    for chat_id, topic in TELEGRAM_DESTINATIONS:
        chat = f"{chat_id}:{topic}" if topic else str(chat_id)
        rows = await ledger(fakes.world.db, "telegram", chat)
        posts = telegram_posts(fakes.telegram, chat_id)
        assert_one_thread(posts)
        assert_ledger_matches(rows, posts)
        assert all(utf16_len(p.text) <= 4096 for p in posts)
        by_id = {p.ref: p for p in posts}
        picked = list(dict.fromkeys(r.key.split("#")[0] for r in rows[1:]))
        assert len(picked) == 2
        for aid in picked:
            parts = [by_id[r.message_ref] for r in rows if r.key.startswith(f"{aid}#")]
            assert len(parts) >= 3  # 4,096 characters a message
            assert_whole_and_in_order("\n".join(p.text for p in parts), aid)
    # every message was accepted the first time: no size or markup rejections
    assert fakes.send_counts() == (
        sum(len(slack_posts(fakes.slack, c)) for c in SLACK_CHANNELS),
        sum(len(telegram_posts(fakes.telegram, c)) for c, _ in TELEGRAM_DESTINATIONS),
    )


def hostile_responder() -> Callable[[dict[str, Any]], Any]:
    """The research responder with mentions and markup in every reason and section."""
    normal = research_responder()

    def respond(body: dict[str, Any]) -> Any:
        answer = normal(body)
        try:
            data = json.loads(answer)
        except ValueError:
            return answer
        if "scores" in data:
            for item in data["scores"]:
                item["reason"] += f" {HOSTILE}"
            return json.dumps(data)
        return json.dumps({k: f"{v}\n\n{HOSTILE}" for k, v in data.items()})

    return respond


async def test_mentions_and_markup_in_titles_and_model_output_arrive_inert(fakes: Fakes) -> None:
    payload = copy.deepcopy(fakes.world.hf.days[DAY])
    for item in payload:
        item["paper"]["title"] += f" {HOSTILE} {SPOOF}"
        item["title"] = item["paper"]["title"]
    fakes.world.hf.days[DAY] = payload
    fakes.world.llm.responder = hostile_responder()
    code, _, err = await run_cli(["digest", "--date", DAY], fakes.env())
    assert code == 0, err

    abs_prefix = f"{fakes.world.arxiv.url}/abs/"
    # The deep dives' header links (issue 9): the code and project pages HF gives, and HF repos.
    header_links = tuple(
        url
        for item in payload
        for url in (item["paper"].get("githubRepo"), item["paper"].get("projectPage"))
        if url
    ) + (f"{fakes.world.hf.url}/",)
    for channel in SLACK_CHANNELS:
        messages = fakes.slack.messages(channel)
        assert len(messages) == 3
        texts = [t for m in messages for t in [m["text"], *block_texts(m["blocks"])]]
        everything = "\n".join(texts)
        assert "<!" not in everything and "<@" not in everything
        # the only <…> tokens are the paper links the renderer built
        for token in re.findall(r"<[^>]*>", everything):
            assert re.fullmatch(r"<https?://[^|<>\s]+\|[^<>]*>", token), token
            assert token[1:].startswith((abs_prefix, *header_links)), token
        # shown, escaped, not dropped
        assert "&lt;!channel&gt;" in everything and "a&lt;b &amp; c&gt;d" in everything
        assert "&lt;script&gt;" in everything and "&lt;@U123&gt;" in everything
        assert "&lt;https://evil.example|Official PDF&gt;" in everything
    for chat_id, _topic in TELEGRAM_DESTINATIONS:
        sent = fakes.telegram.sent(chat_id)
        assert len(sent) == 3
        assert telegram_send_requests(fakes.telegram, chat_id) == 3  # no rejected markup
        assert {m["parse_mode"] for m in sent} == {"HTML"}
        visible = "\n".join(m["visible"] for m in sent)
        for literal in ("<!channel>", "<@U123>", "a<b & c>d", "<script>alert(1)</script>", SPOOF):
            assert literal in visible
        links = [e["url"] for m in sent for e in m["entities"] if e["type"] == "text_link"]
        odd = [u for u in links if not u.startswith((abs_prefix, *header_links))]
        assert links and not odd, odd


async def test_a_day_without_papers_posts_nothing_by_default(fakes: Fakes) -> None:
    code, _, err = await run_cli(["digest", "--date", EMPTY_DAY], fakes.env())
    assert code == 0, err
    assert fakes.send_counts() == (0, 0)


async def test_a_day_without_papers_posts_one_line_when_configured(
    fakes: Fakes, tmp_path: Path
) -> None:
    config = tmp_path / "notice.toml"
    config.write_text(
        fast_config(**{"empty_day_notice =": "empty_day_notice = true"}), encoding="utf-8"
    )
    env = fakes.env(DIGEST_CONFIG=str(config))
    line = f"{label('zh', 'title', date=EMPTY_DAY)} · {label('zh', 'empty')}"
    code, _, err = await run_cli(["digest", "--date", EMPTY_DAY], env)
    assert code == 0, err
    for channel in SLACK_CHANNELS:
        assert [p.text for p in slack_posts(fakes.slack, channel)] == [line]
    for chat_id, topic in TELEGRAM_DESTINATIONS:
        posts = telegram_posts(fakes.telegram, chat_id)
        assert [(p.text, p.topic) for p in posts] == [(line, topic)]
    assert fakes.send_counts() == (2, 2)


# ------------------------------------------------------------- crash and resume (in-process)


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_a_run_killed_after_the_toc_and_one_reply_resumes_in_the_same_thread(
    live: Live, store: ChatStore, settings: Settings, platform: str
) -> None:
    digest = make_digest(picks=3)
    expected = live.expected(platform, digest)
    assert len(expected) == 4

    killer = live.destination(platform, lambda c: Scripted(c, die_on=3))
    with pytest.raises(Killed):
        await deliver(store, killer, digest, settings)
    assert [p.text for p in live.posts(platform)] == expected[:2]
    state = await store.post_state(f"digest:{DAY}", platform, live.chats[platform])
    assert sorted(r.status for r in state.values()) == ["intent", "sent", "sent"]

    result = await deliver(store, live.destination(platform), digest, settings)
    assert (result.ok, result.posted, result.skipped) == (True, 2, 2)
    posts = live.posts(platform)
    assert [p.text for p in posts] == expected  # the rest, once, in order
    assert_one_thread(posts)  # into the thread the dead run started
    rows = sorted(
        (await store.post_state(f"digest:{DAY}", platform, live.chats[platform])).values(),
        key=lambda r: r.seq,
    )
    assert_ledger_matches(rows, posts)

    again = await deliver(store, live.destination(platform), digest, settings)
    assert (again.ok, again.posted, again.skipped) == (True, 0, 4)
    assert len(live.posts(platform)) == 4


async def test_a_slack_post_that_landed_just_before_the_kill_is_found_not_repeated(
    live: Live, store: ChatStore, settings: Settings
) -> None:
    digest = make_digest(picks=3)
    expected = live.expected("slack", digest)
    killer = live.destination("slack", lambda c: Scripted(c, die_on=3, die_after_post=True))
    with pytest.raises(Killed):
        await deliver(store, killer, digest, settings)
    assert [p.text for p in live.posts("slack")] == expected[:3]  # reply 2 is on Slack...
    state = await store.post_state(f"digest:{DAY}", "slack", "C1")
    landed = next(r for r in state.values() if r.seq == 2)
    assert landed.status == "intent"  # ...but the ledger never heard back

    result = await deliver(store, live.destination("slack"), digest, settings)
    assert result.ok
    posts = live.posts("slack")
    assert [p.text for p in posts] == expected
    assert_one_thread(posts)
    assert live.slack.api_calls("chat.postMessage") == 4  # reply 2 was not sent again
    assert live.slack.api_calls("conversations.replies") >= 1  # it was looked for
    rows = sorted(
        (await store.post_state(f"digest:{DAY}", "slack", "C1")).values(), key=lambda r: r.seq
    )
    assert_ledger_matches(rows, posts)


async def test_a_telegram_post_that_landed_just_before_the_kill_is_repeated_at_most_once(
    live: Live, store: ChatStore, settings: Settings
) -> None:
    # Telegram cannot be searched: a post whose outcome was never recorded is sent again.
    # The documented cost is one duplicate of that message, never more, and nothing lost.
    digest = make_digest(picks=3)
    expected = live.expected("telegram", digest)
    killer = live.destination("telegram", lambda c: Scripted(c, die_on=3, die_after_post=True))
    with pytest.raises(Killed):
        await deliver(store, killer, digest, settings)
    for _ in range(2):
        result = await deliver(store, live.destination("telegram"), digest, settings)
        assert result.ok
    posts = live.posts("telegram")
    assert [p.text for p in posts] == expected[:3] + expected[2:]
    assert_one_thread(posts)


async def test_telegram_timeouts_after_delivery_never_make_a_third_copy(
    live: Live, store: ChatStore, settings: Settings
) -> None:
    # Telegram stores every TOC but answers after the client gave up, each time. The outcome
    # is unknown and Telegram cannot be searched: at most one duplicate, then the ledger stops
    # sending blindly and says so, however often the job (or a restart) tries again.
    from bot.channels.telegram import TelegramChannel, make_bot, make_rate_limiter

    live.telegram.delay_next(0.6, n=50)  # twice the client's read timeout
    limiter = make_rate_limiter(group_max_rate=100_000, overall_max_rate=100_000)
    async with make_bot(
        TELEGRAM_TOKEN, f"{live.telegram.url}/bot", rate_limiter=limiter, read_timeout=0.3
    ) as bot:
        dest = Destination(TelegramChannel(bot, language="zh"), f"{FORUM}:{TOPIC}")
        digest = make_digest(picks=1)
        results = [await deliver(store, dest, digest, settings) for _ in range(4)]
    await live.telegram.none_held()  # let the fake finish answering the last delayed send
    assert not any(r.ok for r in results)
    assert "may have landed" in (results[-1].error or "")
    copies = [p for p in live.posts("telegram") if p.text.startswith("🚀")]
    assert len(copies) == 2


# ------------------------------------------------------------------ faults at the platforms


async def test_slack_429_on_a_reply_is_waited_out_and_everything_lands_once_in_order(
    live: Live, store: ChatStore, settings: Settings
) -> None:
    digest = make_digest(picks=3)
    expected = live.expected("slack", digest)
    dest = live.destination(
        "slack", lambda c: Scripted(c, {3: lambda: live.slack.rate_limit_next(1, retry_after=1)})
    )
    result = await deliver(store, dest, digest, settings)
    assert result.ok and result.posted == 4
    posts = live.posts("slack")
    assert [p.text for p in posts] == expected
    assert_one_thread(posts)
    assert live.slack.api_calls("chat.postMessage") == 5  # the 429, then the same post again


@pytest.mark.parametrize("mode", ["500", "reset"])
async def test_a_slack_post_stored_before_a_failure_is_reconciled_not_duplicated(
    live: Live, store: ChatStore, mode: str
) -> None:
    digest = make_digest(picks=3)
    expected = live.expected("slack", digest)
    dest = live.destination(
        "slack", lambda c: Scripted(c, {3: lambda: live.slack.accept_then_drop_next(mode)})
    )
    result = await post_digest(store, dest, digest)
    assert result.ok
    posts = live.posts("slack")
    assert [p.text for p in posts] == expected  # no duplicate, no gap
    assert_one_thread(posts)
    assert live.slack.api_calls("chat.postMessage") == 4
    rows = sorted(
        (await store.post_state(f"digest:{DAY}", "slack", "C1")).values(), key=lambda r: r.seq
    )
    assert_ledger_matches(rows, posts)


async def test_a_slack_500_before_storing_is_sent_again_once(live: Live, store: ChatStore) -> None:
    digest = make_digest(picks=3)
    expected = live.expected("slack", digest)
    dest = live.destination(
        "slack", lambda c: Scripted(c, {3: lambda: live.slack.server_error_next(1, 503)})
    )
    result = await post_digest(store, dest, digest)
    assert result.ok
    assert [p.text for p in live.posts("slack")] == expected
    assert live.slack.api_calls("chat.postMessage") == 5


async def test_telegram_flood_control_is_waited_out_and_delivered_once(
    live: Live, store: ChatStore, settings: Settings
) -> None:
    digest = make_digest(picks=3)
    expected = live.expected("telegram", digest)
    dest = live.destination(
        "telegram", lambda c: Scripted(c, {3: lambda: live.telegram.flood_next(1, retry_after=1)})
    )
    result = await deliver(store, dest, digest, settings)
    assert result.ok
    posts = live.posts("telegram")
    assert [p.text for p in posts] == expected
    assert_one_thread(posts)
    assert [p.topic for p in posts] == [TOPIC] * 4
    assert len(live.telegram.method_calls("sendMessage")) == 5


async def test_one_destination_failing_for_good_does_not_stop_the_next(
    live: Live, store: ChatStore, settings: Settings
) -> None:
    live.slack.permanent_error("C1", "channel_not_found")
    digest = make_digest(picks=2)
    slack = await deliver(store, live.destination("slack"), digest, settings)
    telegram = await deliver(store, live.destination("telegram"), digest, settings)
    assert not slack.ok and slack.error == "slack chat.postMessage: channel_not_found"
    assert telegram.ok and [p.text for p in live.posts("telegram")] == live.expected(
        "telegram", digest
    )
    again = await deliver(store, live.destination("slack"), digest, settings)
    assert not again.ok
    assert slack_post_requests(live.slack, "C1") == 1  # not retried, not even by a rerun


async def test_a_rerun_finishes_the_digest_it_started_even_when_the_list_has_grown(
    fakes: Fakes,
) -> None:
    # Early in the day HF lists only part of the day; the run posts to Slack but Telegram is
    # down. Later the list has grown (other papers would now be picked). The re-run finishes
    # the digest it started: Telegram gets that same digest, Slack gets nothing more.
    full = fakes.world.hf.days[DAY]
    by_upvotes = sorted(full, key=lambda item: item["paper"]["upvotes"])
    fakes.world.hf.days[DAY] = by_upvotes[:6]  # the six least upvoted: a different top
    fakes.telegram.server_error_next(100)
    code, _, _ = await run_cli(["digest", "--date", DAY], fakes.env())
    assert code == 1
    first = {c: slack_posts(fakes.slack, c) for c in SLACK_CHANNELS}
    assert all(len(posts) >= 2 for posts in first.values())

    fakes.world.hf.days[DAY] = full
    fakes.telegram._server_errors.clear()  # Telegram is back
    code, _, err = await run_cli(["digest", "--date", DAY], fakes.env())
    assert code == 0, err
    assert {c: slack_posts(fakes.slack, c) for c in SLACK_CHANNELS} == first
    forum = telegram_posts(fakes.telegram, FORUM)
    assert_one_thread(forum)
    assert len(forum) == len(first[SLACK_CHANNELS[0]])  # the same TOC and deep dives


class Oversized(Scripted):
    """The channel, but its n-th message carries 60 blocks: the platform refuses that one."""

    def __init__(self, inner: Any, n: int) -> None:
        super().__init__(inner)
        self.n = n

    async def send(self, chat: str, payload: Any, thread: str | None, *, key: str | None = None):
        if self.sends + 1 == self.n:
            block = {"type": "section", "text": {"type": "mrkdwn", "text": "x"}}
            payload = type(payload)(payload.text, [block] * 60)
        return await super().send(chat, payload, thread, key=key)


async def test_one_refused_message_does_not_stop_the_rest_of_the_thread(
    live: Live, store: ChatStore, settings: Settings
) -> None:
    digest = make_digest(picks=3)
    expected = live.expected("slack", digest)
    dest = live.destination("slack", lambda c: Oversized(c, 3))  # the second deep dive
    result = await deliver(store, dest, digest, settings)
    assert not result.ok and "invalid_blocks" in (result.error or "")
    posts = live.posts("slack")
    assert [p.text for p in posts] == expected[:2] + expected[3:]  # the others, in order
    assert_one_thread(posts)
    calls = live.slack.api_calls("chat.postMessage")
    again = await deliver(store, live.destination("slack"), digest, settings)
    assert not again.ok and live.slack.api_calls("chat.postMessage") == calls  # not resent
