"""python-telegram-bot handlers: turn Telegram updates into assistant calls, nothing more.

`/analyze` and `/analyze@BotName` (groups, forum topics) answer at once with a short reply
and the typing action, then start a thread: the paper's root message and the deep dive as
replies to it. A reply to one of the bot's messages is a question about that thread's paper;
in a forum topic the bot posts its digest to, any message in the topic is one. Every update is
handled once (Telegram redelivers by `update_id`); edits and other bots are ignored. Handlers
never block: slow work runs as a tracked task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from telegram import Message, Update
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

from bot.assistant import FAILED_ANALYSIS, FAILED_ANSWER, RESTARTING, Assistant
from bot.channels.base import DeliveryError
from bot.channels.telegram import TelegramChannel
from bot.service import Destination

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], Any]


def chat_key(message: Message) -> str:
    """The chat as TELEGRAM_CHATS writes it: `chat_id`, or `chat_id:topic` inside a forum topic."""
    if message.is_topic_message and message.message_thread_id:
        return f"{message.chat_id}:{message.message_thread_id}"
    return str(message.chat_id)


def install_handlers(
    app: Application,
    channel: TelegramChannel,
    assistant: Assistant,
    spawn: Spawn,
    digest_chats: tuple[str, ...],
) -> None:
    async def on_analyze(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or not await assistant.store.first_sight(
            f"tg-update:{update.update_id}"
        ):
            return
        spawn(_analyze(channel, assistant, message, " ".join(context.args or [])))

    async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message  # not edited_message: edits are ignored
        if message is None or message.from_user is None or message.from_user.is_bot:
            return
        thread = await _thread_for(message, assistant, context.bot.id, digest_chats)
        if thread is None:
            return
        if not await assistant.store.first_sight(f"tg-update:{update.update_id}"):
            return
        spawn(_answer(channel, assistant, message, thread))

    app.add_handler(
        CommandHandler("analyze", on_analyze, filters=filters.UpdateType.MESSAGE, block=False)
    )
    app.add_handler(
        MessageHandler(
            filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, on_text, block=False
        )
    )


async def _thread_for(
    message: Message, assistant: Assistant, bot_id: int, digest_chats: tuple[str, ...]
) -> dict[str, Any] | None:
    chat = chat_key(message)
    target = message.reply_to_message
    # In a forum topic every message carries reply_to_message = the topic's creation message;
    # only a reply to a message the bot sent counts as a reply to the bot.
    if target is not None and target.forum_topic_created is None and target.from_user is not None:
        if target.from_user.id == bot_id:
            return await assistant.thread_of("telegram", chat, str(target.message_id))
        return None
    if message.is_topic_message and chat in digest_chats:
        return await assistant.store.latest_thread("telegram", chat, kind="digest")
    return None


async def _analyze(
    channel: TelegramChannel, assistant: Assistant, message: Message, text: str
) -> None:
    try:
        await _analyze_steps(channel, assistant, message, text)
    except asyncio.CancelledError:  # shutdown ran out of time: say so, then stop
        await asyncio.wait_for(
            _line(channel, chat_key(message), RESTARTING, str(message.message_id)), 5
        )
        raise
    except Exception:
        log.exception("telegram %s: analysis failed", chat_key(message))
        await _line(channel, chat_key(message), FAILED_ANALYSIS, str(message.message_id))


async def _analyze_steps(
    channel: TelegramChannel, assistant: Assistant, message: Message, text: str
) -> None:
    chat = chat_key(message)
    user = str(message.from_user.id) if message.from_user else "?"
    reply = str(message.message_id)
    if not text.strip():
        await _line(
            channel, chat, "Usage: /analyze ARXIV_ID_OR_URL (e.g. /analyze 2602.14941)", reply
        )
        return
    parsed = assistant.parse(text)
    if isinstance(parsed, str):
        await _line(channel, chat, f"⚠️ {parsed}", reply)
        return
    refusal = await assistant.admit("telegram", user, chat=chat, paper=parsed)
    if refusal is not None:
        await _line(channel, chat, f"⚠️ {refusal}", reply)
        return
    title = await assistant.known_title(parsed)
    await _line(
        channel,
        chat,
        f"🔎 Analysing arXiv:{parsed}" + (f" — {title}" if title else "") + " …",
        reply,
    )
    await channel.send_typing(chat)
    outcome = await assistant.analyze(Destination(channel, chat), parsed)
    if not outcome.ok or outcome.delivered is None:
        # Failures, and "already analysed here", are answered where the request was made.
        await _line(
            channel, chat, ("" if outcome.ok else "⚠️ ") + outcome.line, outcome.thread or reply
        )


async def _answer(
    channel: TelegramChannel, assistant: Assistant, message: Message, thread: dict[str, Any]
) -> None:
    chat = chat_key(message)
    user = str(message.from_user.id) if message.from_user else "?"
    reply = str(message.message_id)
    question = message.text or ""
    try:
        refusal = await assistant.admit("telegram", user, chat=chat)
        if refusal is not None:
            await _line(channel, chat, f"⚠️ {refusal}", reply)
            return
        replied = message.reply_to_message
        target = await assistant.which_paper(
            thread,
            question,
            replied_to=(
                str(replied.message_id)
                if replied is not None and replied.forum_topic_created is None
                else None
            ),
        )
        if isinstance(target, list):
            ask = await assistant.ask_which(
                "telegram", chat, thread["thread_ref"], question, target
            )
            asked = await _line(channel, chat, ask, reply)
            if asked is not None:
                # Part of the thread: the natural answer is a reply to this question.
                await assistant.store.record_post(
                    f"ask:{reply}",
                    "telegram",
                    chat,
                    "ask",
                    seq=0,
                    status="sent",
                    thread_ref=thread["thread_ref"],
                    message_ref=asked,
                )
            return
        await channel.send_typing(chat)
        answer = await assistant.answer("telegram", chat, thread["thread_ref"], target, question)
        previous = reply
        for seq, part in enumerate(channel.render_answer(answer)):
            previous = await channel.send(chat, part.payload, previous)
            # Recorded as part of the thread, so a reply to the answer is a follow-up too.
            await assistant.store.record_post(
                f"answer:{reply}",
                "telegram",
                chat,
                part.key,
                seq=seq,
                status="sent",
                thread_ref=thread["thread_ref"],
                message_ref=previous,
            )
    except DeliveryError as exc:
        log.error("telegram %s: answer not delivered: %s", chat, exc.reason)
    except asyncio.CancelledError:  # shutdown ran out of time: say so, then stop
        await asyncio.wait_for(_line(channel, chat, RESTARTING, reply), 5)
        raise
    except Exception:
        log.exception("telegram %s: answering failed", chat)
        await _line(channel, chat, FAILED_ANSWER, reply)


async def _line(channel: TelegramChannel, chat: str, text: str, reply_to: str | None) -> str | None:
    """Send one line of text; its message id, or None if it could not be sent."""
    from digest_core.render.telegram import escape

    try:
        return await channel.send(chat, escape(text), reply_to)
    except DeliveryError as exc:
        log.warning("telegram %s: line not delivered: %s", chat, exc.reason)
        return None
