"""python-telegram-bot handlers: turn Telegram updates into `assistant.Request`s, nothing more.

`/analyze` and `/analyze@BotName` (groups, forum topics), and `/digest` (help, subscribe,
profile …) the same way, are answered by the one flow in
`bot.assistant`: a short reply and the typing action, then a thread of the paper's root
message and the deep dive as replies to it. A reply to one of the bot's messages is a question
about that thread's paper; in a forum topic the bot posts its digest to, any message in the
topic is one. Every reply goes to the person's message, through the ledger. Every update is
handled once (Telegram redelivers by `update_id`); edits and other bots are ignored. Handlers
never block: slow work runs as a tracked task. A 👍/👎 press under a deep dive arrives as a
`callback_query`: counted once per press, answered at once (answerCallbackQuery), and the
message's buttons then show the counts (editMessageReplyMarkup). A press on a "which paper do
you mean?" button is answered at once with a toast; the first press answers the kept question
(`Assistant.pick`) as a reply to it, through the journal like a typed question.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from telegram import CallbackQuery, Message, Update
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.assistant import (
    ANALYZE,
    DIGEST,
    PICK_STALE,
    UNRECORDED,
    Assistant,
    Request,
    vote_line,
)
from bot.channels.telegram import TelegramChannel
from bot.chatstore import ThreadRecord
from digest_core.render.parse import truncate
from digest_core.render.telegram import (
    PICK_PREFIX,
    RATE_PREFIX,
    parse_pick_data,
    parse_rating_data,
)

log = logging.getLogger(__name__)

TOAST_LIMIT = 200  # answerCallbackQuery's text: 0-200 characters

Spawn = Callable[[Coroutine[Any, Any, Any]], Any]


def telegram_resumers(channel: TelegramChannel, assistant: Assistant) -> tuple[Any, Any]:
    """How `serve` finishes, or reports, a Telegram request cut off by a crash (bot.journal)."""

    async def resume(req: Request, extra: dict[str, Any]) -> None:
        await assistant.handle(channel, req)

    async def tell(req: Request, extra: dict[str, Any], line: str) -> None:
        await assistant.tell(channel, req, line)

    return resume, tell


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
    # A request is recorded in the journal before its work is acknowledged ("Analysing…");
    # if that fails (the database is full or read-only) the handler raises and `on_error`
    # tells the person, so nobody is left without a reply.
    async def admitted(update: Update, req: Request) -> None:
        key = f"tg-update:{update.update_id}"
        if await assistant.journal.admit(key, req):
            spawn(assistant.journal.run(key, assistant.handle(channel, req)))

    async def on_analyze(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None:
            return
        await admitted(update, _request(message, " ".join(context.args or []), command=ANALYZE))

    async def on_digest(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or not await assistant.chat.first_sight(f"tg-update:{update.update_id}"):
            return
        req = _request(message, " ".join(context.args or []), command=DIGEST)
        spawn(assistant.handle(channel, req))

    async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message  # not edited_message: edits are ignored
        if message is None or message.from_user is None or message.from_user.is_bot:
            return
        thread = await _thread_for(message, assistant, context.bot.id, digest_chats)
        if thread is None:
            return
        replied = message.reply_to_message
        req = _request(
            message,
            message.text or "",
            thread=thread,
            replied_to=(
                str(replied.message_id)
                if replied is not None and replied.forum_topic_created is None
                else None
            ),
        )
        await admitted(update, req)

    async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A handler failed before the request was recorded (PTB calls this instead of
        logging "No error handlers are registered"): tell the person who asked, directly."""
        log.error("telegram: a handler failed", exc_info=context.error)
        message = update.effective_message if isinstance(update, Update) else None
        if message is None or message.from_user is None or message.from_user.is_bot:
            return
        if not _addressed_to_bot(message, context.bot.id):
            return  # a message in a group the bot would not have answered anyway
        req = _request(message, "")
        await assistant.say_directly(channel, req, UNRECORDED)

    app.add_error_handler(on_error)

    async def on_rate(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        # A 👍/👎 press (callback_query): counted once per press (Telegram redelivers an update
        # by its id; the query id names the press), answered at once, then the counts shown.
        query = update.callback_query
        if query is None:
            return
        parsed = parse_rating_data(query.data or "")
        message = query.message
        vote = None
        if parsed is not None and message is not None and isinstance(message, Message):
            arxiv_id, liked = parsed
            chat = chat_key(message)
            try:
                vote = await assistant.press(
                    "telegram",
                    chat,
                    str(query.from_user.id),
                    arxiv_id,
                    liked,
                    event_key=f"tg-callback:{query.id}",
                )
            except Exception:  # the database cannot be written: the presser is told so
                log.exception("telegram %s: a rating press not recorded", chat)
                await _toast(query, UNRECORDED)
                return
        try:
            await query.answer(vote_line(vote) if vote is not None else None)
        except TelegramError as exc:  # a redelivered press whose query was already answered
            log.info("telegram: callback query not answered: %s", exc)
        if vote is not None and parsed is not None and isinstance(message, Message):
            arxiv_id = parsed[0]
            chat, ref = chat_key(message), str(message.message_id)

            async def show(up: int, down: int) -> None:
                await channel.set_rating_counts(chat, ref, arxiv_id, up, down)

            spawn(assistant.show_counts("telegram", chat, ref, arxiv_id, show))

    async def on_pick(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        # A "which paper?" press: the toast says what it came to (answering, already
        # answered, stale); only the first press of a question is answered, in the chat.
        query = update.callback_query
        if query is None:
            return
        parsed = parse_pick_data(query.data or "")
        message = query.message
        line: str | None = PICK_STALE
        if parsed is not None and isinstance(message, Message):
            person = query.from_user
            picked = await assistant.pick(
                "telegram",
                chat_key(message),
                str(person.id),
                *parsed,
                message=str(message.message_id),
                event_key=f"tg-callback:{query.id}",
                user_name=f"@{person.username}" if person.username else person.full_name,
            )
            if picked.line is None:
                return  # a redelivered press: its first delivery answers the query
            line = picked.line
            req = picked.request
            if req is not None and not await assistant.start_pick(
                channel, req, f"tg-pick:{req.text}", spawn
            ):
                line = UNRECORDED
        await _toast(query, line)

    app.add_handler(
        CommandHandler("analyze", on_analyze, filters=filters.UpdateType.MESSAGE, block=False)
    )
    app.add_handler(CallbackQueryHandler(on_rate, pattern=f"^{RATE_PREFIX}:", block=False))
    app.add_handler(CallbackQueryHandler(on_pick, pattern=f"^{PICK_PREFIX}:", block=False))
    app.add_handler(
        CommandHandler("digest", on_digest, filters=filters.UpdateType.MESSAGE, block=False)
    )
    app.add_handler(
        MessageHandler(
            filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, on_text, block=False
        )
    )


async def _toast(query: CallbackQuery, line: str | None) -> None:
    """Answer a button press (a toast with `line`, or nothing shown)."""
    try:
        await query.answer(truncate(line, TOAST_LIMIT) if line else None)
    except TelegramError as exc:  # a redelivered press whose query was already answered
        log.info("telegram: callback query not answered: %s", exc)


def _request(
    message: Message,
    text: str,
    *,
    command: str | None = None,
    thread: ThreadRecord | None = None,
    replied_to: str | None = None,
) -> Request:
    """Every reply goes to the person's own message."""
    return Request(
        "telegram",
        chat_key(message),
        str(message.from_user.id) if message.from_user else "?",
        text,
        message=str(message.message_id),
        command=command,
        reply_to=str(message.message_id),
        thread=thread,
        replied_to=replied_to,
        user_name=_name(message),
    )


def _name(message: Message) -> str | None:
    """How an announcement names the person: @username, else their name."""
    user = message.from_user
    if user is None:
        return None
    return f"@{user.username}" if user.username else (user.full_name or None)


def _addressed_to_bot(message: Message, bot_id: int) -> bool:
    """A command, or a reply to one of the bot's messages, or anything in a forum topic."""
    target = message.reply_to_message
    if (message.text or "").startswith(("/analyze", "/digest")):
        return True
    if target is not None and target.from_user is not None and target.from_user.id == bot_id:
        return True
    return bool(message.is_topic_message)


async def _thread_for(
    message: Message, assistant: Assistant, bot_id: int, digest_chats: tuple[str, ...]
) -> ThreadRecord | None:
    chat = chat_key(message)
    target = message.reply_to_message
    # In a forum topic every message carries reply_to_message = the topic's creation message;
    # only a reply to a message the bot sent counts as a reply to the bot.
    if target is not None and target.forum_topic_created is None and target.from_user is not None:
        if target.from_user.id == bot_id:
            return await assistant.thread_of("telegram", chat, str(target.message_id))
        return None
    if message.is_topic_message and chat in digest_chats:
        return await assistant.chat.latest_thread("telegram", chat, kind="digest")
    return None
