"""The Telegram channel, driven through real python-telegram-bot over HTTP against FakeTelegram.

Nothing here patches PTB or the channel: faults (429, kicked, too long, bad markup, deleted
reply targets, timeouts) are injected at the fake, and the outcome is read back from what the
fake accepted and how many requests it saw.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import telegram
from fakes.telegram import DEFAULT_TOKEN, FakeTelegram, parse_html, utf16_len
from telegram import Update
from telegram.ext import CommandHandler, ContextTypes, ExtBot, MessageHandler, filters

from bot.channels.base import DeliveryError
from bot.channels.telegram import (
    TelegramChannel,
    file_url_for,
    make_bot,
    make_rate_limiter,
    make_telegram_application,
    normalize_base_url,
    parse_chat,
    split_text,
)
from bot.logs import RedactingFilter
from digest_core.models import Answer, DeepDive, Digest, DigestEntry, Paper, Score

FIXTURES = Path(__file__).parent / "fixtures" / "telegram"
# PTB's own RetryAfter constructor reads its deprecated int `retry_after`; not our code.
pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")
TOKEN = DEFAULT_TOKEN  # "123456:TEST-SECRET-…": must never show up in reasons or our logs
GROUP = -100555
FORUM = -100123
TOPIC = 7


def fast_limiter() -> Any:
    # Production paces 20 msgs/min per group (PTB default); tests only want the retry logic.
    return make_rate_limiter(group_max_rate=100_000, overall_max_rate=100_000)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(TOKEN)
    server.add_chat(GROUP, title="CV papers")
    server.add_chat(FORUM, title="Lab", topics=[TOPIC])
    async with server:
        yield server


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[ExtBot]:
    async with make_bot(TOKEN, f"{fake.url}/bot", rate_limiter=fast_limiter()) as b:
        yield b


@pytest.fixture
def channel(bot: ExtBot) -> TelegramChannel:
    return TelegramChannel(bot, language="zh")


# ------------------------------------------------------------------------- data


def _entry(i: int, body_chars: int = 1200) -> DigestEntry:
    arxiv_id = f"2602.1494{i}"
    paragraph = "我们提出一种新的视觉表征学习方法，在检测与分割上均有提升。" * 4
    text = ""
    while len(text) < body_chars // 4:
        text += paragraph + "\n\n"
    sections = {
        "contribution": text,
        "methodology": "- **Backbone**: ViT-L\n- `loss = a < b & c`\n\n" + text,
        "takeaway": text,
        "limitations": text,
    }
    dive = DeepDive(
        arxiv_id, f"Paper {i}", sections, "zh", "full text (arXiv HTML)", "gpt-x", "v1", 1234
    )
    paper = Paper(
        arxiv_id,
        f"Paper {i}: <Segment> & Track",
        "Abstract.",
        ("Ann", "李明"),
        abs_url=f"https://arxiv.org/abs/{arxiv_id}",
    )
    return DigestEntry(
        paper, Score(arxiv_id, 90 - i, "relevant to open-vocabulary detection"), dive
    )


def _digest(*entries: DigestEntry) -> Digest:
    others = tuple(
        DigestEntry(Paper(f"2602.2000{k}", f"Other {k}", "x"), Score(f"2602.2000{k}", 10, "no"))
        for k in range(3)
    )
    return Digest("2026-02-18", tuple(entries) + others, "cv", "zh", 70)


async def _post(channel: TelegramChannel, chat: str, digest: Digest) -> list[tuple[str, str]]:
    """What the service does: TOC first, then every other message as a reply to it."""
    out = channel.render_digest(digest)
    root = await channel.send(chat, out[0].payload, None)
    posted = [(out[0].key, root)]
    for msg in out[1:]:
        posted.append((msg.key, await channel.send(chat, msg.payload, root)))
    return posted


# ------------------------------------------------------------------------- threads


async def test_digest_is_toc_then_replies_in_a_group(
    fake: FakeTelegram, channel: TelegramChannel
) -> None:
    digest = _digest(_entry(1), _entry(2))
    posted = await _post(channel, str(GROUP), digest)

    keys = [k for k, _ in posted]
    assert keys[0] == "toc"
    # TOC continuation parts (if any), then each picked paper's parts in order, 0-based.
    rest = [k for k in keys[1:] if not k.startswith("toc#")]
    papers = [k.split("#")[0] for k in rest]
    assert papers == sorted(papers) and set(papers) == {"2602.14941", "2602.14942"}
    for arxiv_id in ("2602.14941", "2602.14942"):
        mine = [k for k in rest if k.startswith(arxiv_id)]
        assert mine == [f"{arxiv_id}#{j}" for j in range(len(mine))]
    sent = fake.sent(GROUP)
    assert [str(m["message_id"]) for m in sent] == [ref for _, ref in posted]
    toc_id = sent[0]["message_id"]
    assert sent[0]["reply_to_message_id"] is None
    assert all(m["reply_to_message_id"] == toc_id for m in sent[1:])
    assert all(m["parse_mode"] == "HTML" and m["message_thread_id"] is None for m in sent)
    # every rendered message was accepted first time: no fallback resends
    assert len(fake.method_calls("sendMessage")) == len(posted)
    # link previews stay off (a digest full of arXiv links would otherwise unfurl each)
    preview = json.loads(fake.method_calls("sendMessage")[0]["link_preview_options"])
    assert preview == {"is_disabled": True}


async def test_digest_in_a_forum_topic(fake: FakeTelegram, channel: TelegramChannel) -> None:
    await _post(channel, f"{FORUM}:{TOPIC}", _digest(_entry(1), _entry(2)))

    sent = fake.sent(FORUM)
    assert len(sent) >= 3
    assert all(m["message_thread_id"] == TOPIC for m in sent)
    toc_id = sent[0]["message_id"]
    assert all(m["reply_to_message_id"] == toc_id for m in sent[1:])


async def test_long_deep_dive_chunks_are_all_accepted(
    fake: FakeTelegram, channel: TelegramChannel
) -> None:
    entry = _entry(1, body_chars=12_000)
    parts = [o for o in channel.render_digest(_digest(entry)) if o.key.startswith("2602.14941#")]
    assert len(parts) >= 3
    assert [o.key for o in parts] == [f"2602.14941#{j}" for j in range(len(parts))]

    await _post(channel, str(GROUP), _digest(entry))

    sent = fake.sent(GROUP)
    assert len(fake.method_calls("sendMessage")) == len(sent)  # no rejection, no resend
    assert all(m["parse_mode"] == "HTML" for m in sent)
    assert all(utf16_len(m["visible"]) <= 4096 for m in sent)
    total = sum(len(m["visible"]) for m in sent)
    assert total >= 12_000


async def test_analysis_and_answer_keys(channel: TelegramChannel) -> None:
    out = channel.render_analysis(_entry(1))
    assert out[0].key == "root"
    assert [o.key for o in out[1:]] == [f"2602.14941#{j}" for j in range(len(out) - 1)]
    answer = channel.render_answer(
        Answer("2602.14941", "**短答**：可以。\n\n" + "细节。" * 3000, "m")
    )
    assert [o.key for o in answer] == [f"answer#{j}" for j in range(len(answer))]
    assert len(answer) >= 2
    for o in answer:
        parse_html(str(o.payload))  # each piece is valid Telegram HTML on its own


# ------------------------------------------------------------------------- fallbacks


async def test_unparseable_html_is_resent_as_plain_text(
    fake: FakeTelegram, channel: TelegramChannel
) -> None:
    ref = await channel.send(str(GROUP), "<p>Hello <b>world</b> &amp; co</p>", None)

    calls = fake.method_calls("sendMessage")
    assert len(calls) == 2 and calls[0]["parse_mode"] == "HTML"
    assert "parse_mode" not in calls[1]
    sent = fake.sent(GROUP)
    assert len(sent) == 1 and str(sent[0]["message_id"]) == ref
    assert sent[0]["parse_mode"] is None
    assert "<" not in sent[0]["visible"] and "Hello world & co" in sent[0]["visible"]


async def test_too_long_message_is_split_in_order(
    fake: FakeTelegram, channel: TelegramChannel
) -> None:
    toc = await channel.send(str(GROUP), "<b>TOC</b>", None)
    lines = [f"<b>{n:04d}</b> 视觉 line with text &lt;x&gt;" for n in range(230)]
    payload = "\n".join(lines)
    assert 6_000 <= len(parse_html(payload)[0]) <= 8_000

    first = await channel.send(str(GROUP), payload, toc)

    sent = fake.sent(GROUP)[1:]
    assert len(sent) >= 2 and str(sent[0]["message_id"]) == first
    assert all(m["reply_to_message_id"] == int(toc) for m in sent)
    assert all(m["parse_mode"] == "HTML" for m in sent)
    joined = "".join(m["visible"] for m in sent)
    numbers = [int(line.split()[0]) for line in joined.splitlines() if line.strip()]
    assert numbers == list(range(230))  # nothing lost, nothing repeated, in order


async def test_too_long_root_keeps_its_pieces_together(
    fake: FakeTelegram, channel: TelegramChannel
) -> None:
    first = await channel.send(str(GROUP), "长" * 6_000, None)
    sent = fake.sent(GROUP)
    assert len(sent) == 2
    assert sent[0]["reply_to_message_id"] is None
    assert sent[1]["reply_to_message_id"] == int(first)


async def test_deleted_reply_target_is_sent_without_reply(
    fake: FakeTelegram, channel: TelegramChannel
) -> None:
    toc = await channel.send(str(GROUP), "<b>TOC</b>", None)
    fake.delete_message(GROUP, int(toc))

    # Telegram honours allow_sending_without_reply: delivered, just not threaded.
    await channel.send(str(GROUP), "reply one", toc)
    # Where the API rejects it anyway, the channel drops the reply target itself.
    fake.strict_replies = True
    await channel.send(str(GROUP), "reply two", toc)

    sent = fake.sent(GROUP)
    assert [m["visible"] for m in sent[1:]] == ["reply one", "reply two"]
    assert all(m["reply_to_message_id"] is None for m in sent[1:])
    assert "reply_parameters" not in fake.method_calls("sendMessage")[-1]


async def test_deleted_topic_falls_back_to_the_chat(
    fake: FakeTelegram, channel: TelegramChannel
) -> None:
    fake.delete_topic(FORUM, TOPIC)
    await channel.send(f"{FORUM}:{TOPIC}", "still delivered", None)
    sent = fake.sent(FORUM)
    assert len(sent) == 1 and sent[0]["message_thread_id"] is None


# ------------------------------------------------------------------------- flood control


async def test_429_is_retried_by_the_rate_limiter_and_delivered_once(
    fake: FakeTelegram, channel: TelegramChannel
) -> None:
    fake.flood_next(1, retry_after=1)
    await channel.send(str(GROUP), "after the flood", None)
    assert fake.too_early == []  # retry_after was honoured (bench/deliver.py times it)
    assert len(fake.method_calls("sendMessage")) == 2
    assert [m["visible"] for m in fake.sent(GROUP)] == ["after the flood"]


async def test_429_without_a_limiter_is_waited_out_by_the_channel(fake: FakeTelegram) -> None:
    async with telegram.Bot(TOKEN, base_url=f"{fake.url}/bot") as plain:
        channel = TelegramChannel(plain)
        fake.flood_next(1, retry_after=1)
        await channel.send(str(GROUP), "waited", None)
        assert len(fake.sent(GROUP)) == 1 and fake.too_early == []

        # A wait beyond the channel's ceiling is a transient failure, not an hour-long stall.
        fake.flood_next(1, retry_after=3600)
        with pytest.raises(DeliveryError) as err:
            await channel.send(str(GROUP), "too late", None)
        assert not err.value.permanent and "3600" in err.value.reason
        assert len(fake.sent(GROUP)) == 1


# ------------------------------------------------------------------------- hard failures


async def test_kicked_is_permanent_without_a_retry_storm(
    fake: FakeTelegram, channel: TelegramChannel
) -> None:
    fake.kick(GROUP)
    with pytest.raises(DeliveryError) as err:
        await channel.send(str(GROUP), "hello", None)
    assert err.value.permanent and "kicked" in err.value.reason
    assert len(fake.method_calls("sendMessage")) == 1


async def test_unknown_chat_is_permanent(fake: FakeTelegram, channel: TelegramChannel) -> None:
    with pytest.raises(DeliveryError) as err:
        await channel.send("-100999", "hello", None)
    assert err.value.permanent and "chat not found" in err.value.reason
    assert len(fake.method_calls("sendMessage")) == 1


async def test_rejected_token_is_permanent(fake: FakeTelegram) -> None:
    wrong = "123456:WRONG-SECRET-abcdefghijklmnopqrstuvwxyz0123"
    bot = make_bot(wrong, f"{fake.url}/bot", rate_limiter=fast_limiter())
    try:
        channel = TelegramChannel(bot)
        with pytest.raises(DeliveryError) as err:
            await channel.send(str(GROUP), "hello", None)
        assert err.value.permanent
        assert wrong not in err.value.reason and "WRONG-SECRET" not in err.value.reason
    finally:
        await bot.shutdown()


async def test_server_error_is_transient_and_not_resent(
    fake: FakeTelegram, channel: TelegramChannel
) -> None:
    fake.server_error_next(1, status=502)
    with pytest.raises(DeliveryError) as err:
        await channel.send(str(GROUP), "hello", None)
    assert not err.value.permanent
    assert len(fake.method_calls("sendMessage")) == 1


async def test_timeout_is_transient_and_at_most_once(fake: FakeTelegram) -> None:
    bot = make_bot(TOKEN, f"{fake.url}/bot", rate_limiter=fast_limiter(), read_timeout=0.3)
    async with bot:
        channel = TelegramChannel(bot)
        fake.delay_next(1.0)
        with pytest.raises(DeliveryError) as err:
            await channel.send(str(GROUP), "slow", None)
    assert not err.value.permanent and "may have been delivered" in err.value.reason
    # The fake did deliver it; the channel did not send a second copy.
    assert len(fake.sent(GROUP)) == 1 and len(fake.method_calls("sendMessage")) == 1


async def test_unreachable_api_is_transient() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bot = make_bot(TOKEN, f"http://127.0.0.1:{port}/bot", rate_limiter=fast_limiter())
    try:
        with pytest.raises(DeliveryError) as err:
            await TelegramChannel(bot).send(str(GROUP), "hello", None)
        assert not err.value.permanent and TOKEN not in err.value.reason
    finally:
        await bot.shutdown()


async def test_token_stays_out_of_errors_and_logs(
    fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reasons: list[str] = []
    async with make_bot(TOKEN, f"{fake.url}/bot", rate_limiter=fast_limiter()) as bot:
        channel = TelegramChannel(bot)
        await channel.send(str(GROUP), "<p>bad markup</p>", None)
        fake.kick(GROUP)
        for chat in (str(GROUP), "-100999"):
            with pytest.raises(DeliveryError) as err:
                await channel.send(chat, "x", None)
            reasons.append(err.value.reason)
        fake.server_error_next(1)
        with pytest.raises(DeliveryError) as err:
            await channel.send(f"{FORUM}:{TOPIC}", "x", None)
        reasons.append(err.value.reason)

    secret = TOKEN.split(":", 1)[1]
    assert reasons and all(secret not in r for r in reasons)
    leaking = {r.name for r in caplog.records if secret in r.getMessage()}
    # Ours never logs it; httpx (request URLs at INFO) is held at WARNING by the factories.
    assert not {n for n in leaking if n.startswith(("bot.", "httpx", "httpcore"))}
    assert any(r.name == "bot.channels.telegram" for r in caplog.records)
    # PTB itself writes the API URL (with the token) at DEBUG ("Set Bot API URL"): production
    # must not run PTB's loggers at DEBUG without bot.logs' redacting filter.
    assert leaking <= {"telegram.Bot", "telegram.ext.ExtBot"}
    # ... which the production log filter scrubs.
    scrub = RedactingFilter([TOKEN])
    for record in caplog.records:
        scrub.filter(record)
        assert secret not in record.getMessage()


async def test_migrated_group_is_followed(fake: FakeTelegram, channel: TelegramChannel) -> None:
    fake.migrate(GROUP, -100777)
    ref = await channel.send(str(GROUP), "first", None)
    await channel.send(str(GROUP), "second", ref)  # the new id is remembered
    assert [m["visible"] for m in fake.sent(-100777)] == ["first", "second"]
    assert fake.sent(-100777)[1]["reply_to_message_id"] == int(ref)
    assert len(fake.method_calls("sendMessage")) == 3


# ------------------------------------------------------------------------- edit and typing


async def test_edit_and_typing(fake: FakeTelegram, channel: TelegramChannel) -> None:
    chat = f"{FORUM}:{TOPIC}"
    ref = await channel.send(chat, "正在分析…", None)
    await channel.edit(chat, ref, "<b>完成</b>")
    await channel.edit(chat, ref, "<b>完成</b>")  # "message is not modified" is not an error
    await channel.send_typing(chat)

    sent = fake.sent(FORUM)
    assert len(sent) == 1 and sent[0]["visible"] == "完成" and sent[0]["edited"]
    action = fake.method_calls("sendChatAction")[0]
    assert action["action"] == "typing" and action["message_thread_id"] == str(TOPIC)

    # An edit too long for one message keeps the head and sends the rest as replies.
    await channel.edit(chat, ref, "\n".join(f"<i>{n:04d}</i> {'字' * 40}" for n in range(150)))
    sent = fake.sent(FORUM)
    assert len(sent) >= 2 and sent[0]["visible"].startswith("0000")
    assert all(m["reply_to_message_id"] == int(ref) for m in sent[1:])


async def test_typing_failure_is_only_logged(
    fake: FakeTelegram, channel: TelegramChannel, caplog: pytest.LogCaptureFixture
) -> None:
    fake.kick(GROUP)
    with caplog.at_level(logging.INFO, logger="bot.channels.telegram"):
        await channel.send_typing(str(GROUP))  # raises nothing: the indicator is cosmetic

    # One line in our log names the chat and Telegram's reason, without the token ...
    ours = [r for r in caplog.records if r.name == "bot.channels.telegram"]
    assert [r.levelno for r in ours] == [logging.INFO]
    line = ours[0].getMessage()
    assert "typing indicator failed" in line and str(GROUP) in line and "kicked" in line
    assert TOKEN not in caplog.text
    # ... and the chat saw nothing: one refused attempt (a 403 is not retried), no message.
    assert len(fake.method_calls("sendChatAction")) == 1
    assert fake.sent(GROUP) == []


# ------------------------------------------------------------------------- commands via polling


def _command_update(text: str) -> dict[str, Any]:
    """The real `/start@swantabot PingGroup` update, its text swapped, chat made ours."""
    data = json.loads(
        (FIXTURES / "getUpdates_supergroup_bot_command_with_botname_suffix.json").read_text()
    )
    update = copy.deepcopy(data["result"][0])
    del update["update_id"]
    message = update["message"]
    message["text"] = text
    message["entities"][0]["length"] = utf16_len(text.split()[0])
    message["chat"]["id"] = GROUP
    return update


async def test_analyze_command_reaches_handler_via_get_updates(fake: FakeTelegram) -> None:
    app = make_telegram_application(TOKEN, f"{fake.url}/bot", rate_limiter=fast_limiter())
    got: asyncio.Queue[tuple[list[str], int]] = asyncio.Queue()
    seen: list[Update] = []

    async def on_analyze(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_chat is not None and update.effective_user is not None
        await got.put((list(context.args or []), update.effective_chat.id))

    async def on_topic_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        seen.append(update)

    app.add_handler(CommandHandler("analyze", on_analyze))
    app.add_handler(MessageHandler(filters.ALL, on_topic_message))

    await app.initialize()
    await app.start()
    assert app.updater is not None
    await app.updater.start_polling(poll_interval=0.0, timeout=5)
    try:
        # Real forum updates first (their update_ids are the lowest): PTB must parse the thread
        # id and the auto-filled topic-creation reply.
        forum = json.loads((FIXTURES / "getUpdates_forum_topics_reply_to_message.json").read_text())
        for update in forum["result"]:
            fake.push_update(update)
        # Then the real command sample, addressed to another bot: must NOT trigger /analyze ...
        data = json.loads(
            (FIXTURES / "getUpdates_supergroup_bot_command_with_botname_suffix.json").read_text()
        )
        fake.push_update(data["result"][0])
        # ... then the same shape addressed to us (the fake gives it the next update_id).
        ours = fake.push_update(_command_update("/analyze@DigestBot 2602.14941"))
        args, chat_id = await asyncio.wait_for(got.get(), 3)
        assert args == ["2602.14941"] and chat_id == GROUP

        for _ in range(100):
            if len(seen) >= len(forum["result"]) + 1:
                break
            await asyncio.sleep(0.02)
        reply = next(u for u in seen if u.update_id == 291365947).effective_message
        assert reply is not None and reply.message_thread_id == 2391 and reply.is_topic_message
        assert reply.reply_to_message is not None
        assert reply.reply_to_message.forum_topic_created is not None
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()

    assert got.empty()  # /start@swantabot was not taken for ours
    assert fake.method_calls("getMe") and fake.method_calls("deleteWebhook")
    # every queued update was confirmed (offset advanced) before shutdown finished
    assert fake.method_calls("getUpdates")[-1]["offset"] == str(ours["update_id"] + 1)


async def test_webhook_mode_application_has_no_updater(fake: FakeTelegram) -> None:
    app = make_telegram_application(TOKEN, f"{fake.url}/bot", updater=False)
    assert app.updater is None
    async with app:
        assert app.bot.username == "DigestBot"
        assert await app.bot.set_webhook("https://example.invalid/tg", secret_token="s3cret_ok")
        info = await app.bot.get_webhook_info()
        assert info.url == "https://example.invalid/tg"
        with pytest.raises(telegram.error.Conflict):
            await app.bot.get_updates()
        assert await app.bot.delete_webhook()


# ------------------------------------------------------------------------- pure helpers


def test_base_urls() -> None:
    assert normalize_base_url("https://api.telegram.org") == "https://api.telegram.org/bot"
    assert normalize_base_url("http://127.0.0.1:9/tg/bot") == "http://127.0.0.1:9/tg/bot"
    assert normalize_base_url("http://h/bot{token}/test") == "http://h/bot{token}/test"
    assert file_url_for("http://127.0.0.1:9/tg/bot") == "http://127.0.0.1:9/tg/file/bot"
    assert file_url_for("http://h/bot{token}/test") == "http://h/file/bot{token}/test"


def test_parse_chat() -> None:
    assert parse_chat("-100123") == (-100123, None)
    assert parse_chat("-100123:7") == (-100123, 7)
    assert parse_chat("@papers") == ("@papers", None)
    with pytest.raises(ValueError):
        parse_chat("")


def test_split_text_keeps_every_piece_well_formed() -> None:
    html = "<blockquote><b>" + "一段很长的文字 &amp; more text.\n" * 600 + "</b></blockquote>"
    pieces = split_text(html, 1000)
    assert len(pieces) >= 10
    texts = []
    for piece in pieces:
        visible, entities = parse_html(piece)  # raises if a piece is unbalanced
        assert utf16_len(visible) <= 1000
        assert {e["type"] for e in entities} == {"blockquote", "bold"}
        texts.append(visible)
    assert "".join(texts) == parse_html(html)[0]
    emoji = "🙂" * 3000  # two UTF-16 units each; never cut inside a pair
    assert all(utf16_len(p) <= 1000 for p in split_text(emoji, 1000, is_html=False))
    assert "".join(split_text(emoji, 1000, is_html=False)) == emoji


def test_fake_parser_matches_telegram_errors() -> None:
    with pytest.raises(ValueError, match=r'Unsupported start tag "p" at byte offset 6'):
        parse_html("视觉<p>x</p>")  # two CJK characters = 6 UTF-8 bytes
    with pytest.raises(ValueError, match=r'expected "</i>", found "</b>"'):
        parse_html("<i>x</b>")
    with pytest.raises(ValueError, match=r"Can't find end tag"):
        parse_html("<b>x")
    assert parse_html("a &lt; b &amp; c &nbsp;")[0] == "a < b & c &nbsp;"
    text, entities = parse_html('<pre><code class="language-py">x = 1</code></pre>')
    assert entities == [{"offset": 0, "length": 5, "type": "pre", "language": "py"}]


async def test_fake_rejects_wrong_token_and_confirms_offsets(fake: FakeTelegram) -> None:
    async with telegram.Bot(TOKEN, base_url=f"{fake.url}/bot") as good:
        me = await good.get_me()
        assert me.username == "DigestBot" and me.is_bot
        first = fake.push_message(GROUP, "hi")["update_id"]
        fake.push_message(GROUP, "there")
        assert [u.update_id for u in await good.get_updates()] == [first, first + 1]
        assert [u.update_id for u in await good.get_updates(offset=first + 1)] == [first + 1]
        assert await good.get_updates(offset=first + 2, timeout=0) == ()
    with pytest.raises(telegram.error.InvalidToken):
        async with telegram.Bot("1:nope", base_url=f"{fake.url}/bot"):
            pass
