"""Telegram channel: the digest as HTML messages, deep dives as replies to the table of contents.

A configured chat is `"<chat_id>"` or `"<chat_id>:<thread_id>"` for a forum topic. `send` posts
one message and survives what the Bot API throws at long LLM-written text:

* "can't parse entities" -> the same content again as plain text;
* "message is too long" -> split at line boundaries (tags closed and reopened) and sent in order;
* reply target or forum topic gone -> sent without it, so nothing is lost;
* flood control -> PTB's AIORateLimiter waits `retry_after` and retries; if a RetryAfter still
  gets through, this module waits and retries a bounded number of times itself;
* group upgraded to a supergroup (ChatMigrated) -> followed to the new id, with a warning;
* bot kicked or blocked, chat not found, token rejected -> DeliveryError(permanent=True);
* timeouts and network errors -> DeliveryError(permanent=False). A timeout does not prove the
  message was not delivered, so it is not retried here (at most once; the ledger decides).

No DeliveryError reason or log line from this module contains the bot token. The token is in
every Bot API URL, so httpx (which logs URLs at INFO) is held at WARNING by the factories.
"""

from __future__ import annotations

import datetime as dtm
import html
import logging
import re
import warnings
from collections.abc import Awaitable, Callable
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import telegram
from telegram import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    LinkPreviewOptions,
    ReplyParameters,
)
from telegram.constants import ChatAction, FloodLimit, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, BaseRateLimiter, ExtBot
from telegram.request import HTTPXRequest

from bot.channels.base import STREAM_INTERVAL, DeliveryError, Outgoing
from digest_core.config import RetrySettings
from digest_core.models import Answer, Digest, DigestEntry, FigureImage
from digest_core.proxy import ProxyRoutes, RoutedHttpxTransport
from digest_core.render.telegram import utf16_len
from digest_core.retry import RetryPolicy, TryAgain
from digest_core.sources import quiet_http_logs

if TYPE_CHECKING:
    from bot.channels.progress import TelegramAnalysisProgress
    from bot.channels.streaming import AnswerStream
    from bot.history import Listing

_log = logging.getLogger(__name__)

T = TypeVar("T")

# Telegram counts 4096 UTF-16 units of visible text; stay under it so a re-split is rare.
SPLIT_LIMIT = 4000
# Production pacing = Telegram's published limits (PTB's defaults): 30 requests/s overall and
# 20 messages/min per group. A 10-paper digest therefore takes one to two minutes in a group.
DEFAULT_GROUP_MAX_RATE: float = FloodLimit.MESSAGES_PER_MINUTE_PER_GROUP
DEFAULT_OVERALL_MAX_RATE: float = FloodLimit.MESSAGES_PER_SECOND
# PTB's AIORateLimiter defaults to max_retries=0 (a 429 is raised at once); we want it to wait.
DEFAULT_LIMITER_RETRIES = 5
# Timeouts: PTB's 5 s read timeout is short for a slow Bot API, and a timed-out send may still
# have been delivered; a longer read timeout makes that ambiguous case rarer.
READ_TIMEOUT = 20.0
WRITE_TIMEOUT = 20.0
CONNECT_TIMEOUT = 10.0
POOL_TIMEOUT = 5.0

_TOKEN_SHAPE = re.compile(r"\b[0-9]{3,12}:[A-Za-z0-9_-]{20,}")
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)[^>]*>")


def make_rate_limiter(
    *,
    max_retries: int = DEFAULT_LIMITER_RETRIES,
    group_max_rate: float = DEFAULT_GROUP_MAX_RATE,
    overall_max_rate: float = DEFAULT_OVERALL_MAX_RATE,
) -> AIORateLimiter:
    """PTB's limiter with retries on. Tests pass a high `group_max_rate` to skip the pacing."""
    return AIORateLimiter(
        overall_max_rate=overall_max_rate,
        group_max_rate=group_max_rate,
        max_retries=max_retries,
    )


def normalize_base_url(base_url: str) -> str:
    """The Bot API base in PTB's form, the part the token is appended to.

    "https://api.telegram.org" and ".../" become "https://api.telegram.org/bot"; a URL ending
    in "/bot", or holding a "{token}" placeholder (PTB >= 21.11), is kept as it is.
    """
    url = base_url.strip()
    if "{token}" in url or url.endswith("/bot"):
        return url
    return url.rstrip("/") + "/bot"


def file_url_for(base_url: str) -> str:
    """The file-download base matching a Bot API base: `.../bot` -> `.../file/bot`."""
    head, sep, tail = base_url.rpartition("/bot")
    if not sep:
        return base_url.rstrip("/") + "/file/bot"
    return f"{head}/file/bot{tail}"


def make_request(
    pool_size: int = 1,
    *,
    read_timeout: float = READ_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
    routes: ProxyRoutes | None = None,
) -> HTTPXRequest:
    """PTB's HTTPXRequest for Bot API calls, with the proxy rule of digest_core.proxy."""
    return HTTPXRequest(
        connection_pool_size=pool_size,
        read_timeout=read_timeout,
        write_timeout=WRITE_TIMEOUT,
        connect_timeout=connect_timeout,
        pool_timeout=POOL_TIMEOUT,
        httpx_kwargs=routed_httpx_kwargs(pool_size, routes),
    )


def routed_httpx_kwargs(pool_size: int, routes: ProxyRoutes | None = None) -> dict[str, Any]:
    """What PTB's HTTPXRequest needs to route requests as every other digestbot client.

    PTB leaves proxies to httpx, which reads the variables its own way (and PTB documents SOCKS
    as not settable by them); an explicit transport turns that off. The client's `limits` do
    not reach an explicit transport, so the pool size goes to the transport.
    """
    limits = httpx.Limits(max_connections=pool_size)
    return {"transport": RoutedHttpxTransport(routes, limits=limits)}


def make_telegram_application(
    token: str,
    base_url: str = "https://api.telegram.org/bot",
    *,
    updater: bool = True,
    rate_limiter: BaseRateLimiter | None = None,
    read_timeout: float = READ_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> Application:
    """The long-running PTB Application (polling, or `updater=False` for a custom webhook).

    `base_url` is the part before the token (PTB appends it): "https://api.telegram.org/bot",
    or f"{fake.url}/bot" in tests. Start it with the manual lifecycle
    (initialize, start, updater.start_polling; then updater.stop, stop, shutdown).
    """
    quiet_http_logs()
    base_url = normalize_base_url(base_url)
    builder = (
        ApplicationBuilder()
        .token(token)
        .base_url(base_url)
        .base_file_url(file_url_for(base_url))
        .rate_limiter(rate_limiter or make_rate_limiter())
        .job_queue(None)  # scheduling is APScheduler's job, not PTB's
        .concurrent_updates(True)  # one slow /analyze must not stall every other update
        # PTB's own pool sizes: 256 for calls; getUpdates keeps PTB's defaults (one
        # connection, PTB's timeouts; the long-poll timeout is added per call).
        .request(make_request(256, read_timeout=read_timeout, connect_timeout=connect_timeout))
        .get_updates_request(HTTPXRequest(httpx_kwargs=routed_httpx_kwargs(1)))
    )
    if not updater:
        builder = builder.updater(None)
    return builder.build()


def make_bot(
    token: str,
    base_url: str = "https://api.telegram.org/bot",
    *,
    rate_limiter: BaseRateLimiter | None = None,
    read_timeout: float = READ_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> ExtBot:
    """A bare bot for one-shot posting (CLI). Use it as `async with make_bot(...) as bot:`."""
    quiet_http_logs()
    base_url = normalize_base_url(base_url)
    request = make_request(read_timeout=read_timeout, connect_timeout=connect_timeout)
    return ExtBot(
        token,
        base_url=base_url,
        base_file_url=file_url_for(base_url),
        request=request,
        # PTB builds a getUpdates request of its own otherwise: an httpx client with its own
        # TLS context (~40 ms of CPU to load the CAs) that routes by httpx's proxy rules.
        get_updates_request=HTTPXRequest(httpx_kwargs=routed_httpx_kwargs(1)),
        rate_limiter=rate_limiter or make_rate_limiter(),
    )


@lru_cache(maxsize=256)
def parse_chat(chat: str) -> tuple[int | str, int | None]:
    """`"-100123"` -> (-100123, None); `"-100123:7"` -> (-100123, 7); `"@name"` stays a str."""
    text = chat.strip()
    head, sep, tail = text.rpartition(":")
    topic: int | None = None
    if sep and tail.isdigit():
        text, topic = head, int(tail)
    try:
        return int(text), topic
    except ValueError:
        if not text:
            raise ValueError(f"not a Telegram chat: {chat!r}") from None
        return text, topic


def split_text(text: str, limit: int = SPLIT_LIMIT, *, is_html: bool = True) -> list[str]:
    """Split into pieces of at most `limit` visible UTF-16 units, preferring line breaks.

    With `is_html`, tags open at a cut are closed at the end of the piece and reopened at the
    start of the next, so every piece parses on its own; entities are decoded for counting and
    re-escaped. Without it the text is literal.
    """
    tokens = re.split(r"(<[^>]*>)", text) if is_html else [text]
    pieces: list[str] = []
    current: list[str] = []
    stack: list[tuple[str, str]] = []  # (tag name, the opening tag as written)
    visible = 0

    def flush() -> None:
        nonlocal visible
        closing = "".join(f"</{name}>" for name, _ in reversed(stack))
        pieces.append("".join(current) + closing)
        current[:] = [opening for _, opening in stack]
        visible = 0

    for token in tokens:
        if not token:
            continue
        if is_html and token.startswith("<"):
            m = _TAG.fullmatch(token)
            if m and m.group(1):
                if stack and stack[-1][0] == m.group(2).lower():
                    stack.pop()
            elif m:
                stack.append((m.group(2).lower(), token))
            current.append(token)
            continue
        rest = html.unescape(token) if is_html else token
        while rest:
            room = limit - visible
            if utf16_len(rest) <= room:
                current.append(_escape(rest) if is_html else rest)
                visible += utf16_len(rest)
                break
            cut = _cut_index(rest, room)
            if cut == 0:
                if visible == 0:  # an empty piece must take something: cut hard
                    cut = max(1, _fit(rest, room))
                else:
                    flush()
                    continue
            part = rest[:cut]
            current.append(_escape(part) if is_html else part)
            visible += utf16_len(part)
            rest = rest[cut:]
            flush()
    if visible > 0:
        flush()
    return [p for p in pieces if _visible_strip(p, is_html)]


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def _visible_strip(piece: str, is_html: bool) -> str:
    return html.unescape(re.sub(r"<[^>]*>", "", piece)).strip() if is_html else piece.strip()


def _fit(text: str, room: int) -> int:
    """How many characters of `text` fit in `room` UTF-16 units (never splits a surrogate)."""
    used = 0
    for i, ch in enumerate(text):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > room:
            return i
    return len(text)


def _cut_index(text: str, room: int) -> int:
    """Where to cut `text` so the head fits: after a newline, else a space, else hard.

    Returns 0 when only a small fraction of the room would be used; the caller then starts a
    new piece instead, so a paragraph is not orphaned at the end of a nearly full message.
    """
    fit = _fit(text, room)
    if fit <= 0:
        return 0
    head = text[:fit]
    for sep in ("\n\n", "\n", "。", ". ", " "):
        at = head.rfind(sep)
        if at > 0 and at + len(sep) >= fit // 3:
            return at + len(sep)
    return fit if room >= SPLIT_LIMIT // 4 or fit == len(text) else 0


def _split_smaller(text: str, limit: int, is_html: bool) -> list[str]:
    """Split for a message Telegram called too long: if our count thought it fitted (one
    piece), Telegram counts differently, so halve the limit until it yields two pieces."""
    pieces = split_text(text, limit, is_html=is_html)
    while len(pieces) < 2 and limit > 256:
        limit //= 2
        pieces = split_text(text, limit, is_html=is_html)
    return pieces or [text]


def _markup(keyboard: Any) -> InlineKeyboardMarkup | None:
    """PTB's inline keyboard from the renderer's rows of (text, callback_data)."""
    if not keyboard:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(text, callback_data=data) for text, data in row] for row in keyboard]
    )


def _retry_seconds(exc: RetryAfter) -> float:
    # retry_after is an int (deprecated, with a warning) or a timedelta under PTB_TIMEDELTA.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def _render() -> Any:
    # Imported on use: the renderer is a separate module that may be swapped in tests.
    from digest_core.render import telegram as render

    return render


class TelegramChannel:
    """The Channel protocol over a PTB bot. Payloads are Telegram-HTML strings."""

    platform = "telegram"
    searchable = False  # the Bot API cannot list a chat's messages
    buttons = True

    def __init__(
        self,
        bot: telegram.Bot,
        language: str = "zh",
        *,
        flood_retries: int = 3,
        max_flood_wait: float = 900.0,
        retry: RetrySettings | None = None,
    ) -> None:
        self.bot = bot
        self.language = language
        # Our own RetryAfter handling, behind the limiter's: how often, and how long at most.
        self.flood_retries = flood_retries
        self.max_flood_wait = max_flood_wait
        self.flood_policy = RetryPolicy.from_settings(
            retry or RetrySettings(),
            attempts=flood_retries + 1,
            retry_after_cap=max_flood_wait + 1.0,  # the longer waits are refused in `_call`
        )
        self._migrated: dict[int | str, int] = {}
        # Thread answers are shown as they are written; in private chats with sendMessageDraft,
        # until the Bot API refuses it; one call per stream_interval at most.
        self.streaming = True
        self.stream_interval = STREAM_INTERVAL
        self.drafts = True
        # An analysis's display pace (None: bot.channels.progress's defaults).
        self.progress_interval: float | None = None
        self.typing_every: float | None = None

    async def aclose(self) -> None:
        """Close the bot's HTTP client (one-shot use from the CLI)."""
        await self.bot.shutdown()

    # ---------------------------------------------------------------- rendering

    def render_digest(self, digest: Digest) -> list[Outgoing]:
        render = _render()
        out: list[Outgoing] = []
        toc = render.render_toc(digest)
        for j, part in enumerate(toc):
            key = "toc" if j == 0 else f"toc#{j}"
            out.append(Outgoing(key, part, _summary(f"toc {digest.date}", j, len(toc))))
        language = digest.language or self.language
        for i, entry in enumerate(digest.picked, start=1):
            out.extend(self._deep_dive(entry, i, language))
        return out

    def render_analysis(self, entry: DigestEntry) -> list[Outgoing]:
        render = _render()
        # In the language it was written in: the language of the chat's profile.
        language = entry.deep_dive.language if entry.deep_dive else self.language
        root = render.render_paper_root(entry, language)
        out = [Outgoing("root", root, f"analysis {entry.paper.arxiv_id}")]
        out.extend(self._deep_dive(entry, 1, language))
        return out

    def render_answer(self, answer: Answer) -> list[Outgoing]:
        parts = _render().render_answer(answer)
        return [
            Outgoing(f"answer#{j}", part, _summary(f"answer {answer.arxiv_id}", j, len(parts)))
            for j, part in enumerate(parts)
        ]

    def render_line(self, text: str) -> Outgoing:
        """A short line from the bot, escaped so nothing in it is read as markup."""
        return Outgoing("line", _render().escape(text), text.splitlines()[0][:80])

    def render_listing(self, listing: Listing, key: str) -> Outgoing:
        """Telegram HTML, titles as `<a href>`."""
        from bot.history import telegram_html

        return Outgoing(key, telegram_html(listing), listing.summary(key))

    def render_choices(self, text: str, key: str, options: list[tuple[str, str]]) -> Outgoing:
        """The "which paper do you mean?" line with an inline keyboard, one paper per row
        (`options`: arXiv ID and label), the buttons naming the kept question by its `key`."""
        render = _render()
        payload = render.TelegramMessage(render.escape(text), render.pick_keyboard(key, options))
        return Outgoing("line", payload, text.splitlines()[0][:80])

    def _deep_dive(self, entry: DigestEntry, index: int, language: str) -> list[Outgoing]:
        render = _render()
        parts: list[Any] = list(render.render_deep_dive(entry, index, language))
        arxiv_id = entry.paper.arxiv_id
        keyboard = render.rating_keyboard(arxiv_id)
        if parts and keyboard:  # 👍/👎 under the end of the deep dive
            parts[-1] = render.TelegramMessage(str(parts[-1]), keyboard)
        return [
            Outgoing(f"{arxiv_id}#{j}", part, _summary(arxiv_id, j, len(parts)))
            for j, part in enumerate(parts)
        ]

    # ---------------------------------------------------------------- sending

    async def send(
        self, chat: str, payload: Any, thread: str | None, *, key: str | None = None
    ) -> str:
        """Post one HTML message (a reply to message `thread` when given); returns its id."""
        chat_id, topic = parse_chat(chat)
        reply_to = int(thread) if thread else None
        markup = _markup(getattr(payload, "keyboard", ()))
        return await self._deliver(
            chat_id, topic, reply_to, str(payload), ParseMode.HTML, 0, markup=markup
        )

    async def permalink(self, chat: str, message_id: str) -> str | None:
        """A t.me link to a message, where Telegram has one: supergroups and channels
        (ids -100…) as https://t.me/c/<id>/<message>; none for basic groups and private chats."""
        chat_id, _ = parse_chat(chat)
        chat_id = self._migrated.get(chat_id, chat_id)
        text = str(chat_id)
        if not text.startswith("-100") or not message_id.isdigit():
            return None
        return f"https://t.me/c/{text.removeprefix('-100')}/{message_id}"

    async def set_rating_counts(
        self, chat: str, message_id: str, arxiv_id: str, up: int, down: int
    ) -> None:
        """Show a deep dive's current 👍/👎 counts on its buttons (editMessageReplyMarkup)."""
        chat_id, _ = parse_chat(chat)
        keyboard = _render().rating_keyboard(arxiv_id, up, down)
        try:
            await self._call(
                partial(
                    self.bot.edit_message_reply_markup,
                    chat_id=self._migrated.get(chat_id, chat_id),
                    message_id=int(message_id),
                    reply_markup=_markup(keyboard),
                )
            )
        except BadRequest as exc:
            if "message is not modified" not in exc.message.lower():
                raise self._failure(exc, chat_id) from None
        except TelegramError as exc:
            raise self._failure(exc, chat_id) from None

    async def send_image(
        self, chat: str, image: FigureImage, caption: str, thread: str | None, *, key: str
    ) -> str:
        """`sendPhoto` (multipart) as a reply to message `thread`, with the caption as plain
        text within Telegram's 1,024 characters. Returns the message id."""
        from digest_core.render.telegram import figure_caption

        chat_id, topic = parse_chat(chat)
        target = self._migrated.get(chat_id, chat_id)
        try:
            message = await self._call(
                partial(
                    self.bot.send_photo,
                    chat_id=target,
                    photo=InputFile(image.data, filename=image.filename),
                    caption=figure_caption(caption) or None,
                    message_thread_id=topic,
                    reply_parameters=(
                        ReplyParameters(message_id=int(thread), allow_sending_without_reply=True)
                        if thread
                        else None
                    ),
                )
            )
        except TelegramError as exc:
            raise self._failure(exc, target) from None
        return str(message.message_id)

    async def find_posted(self, chat: str, thread: str | None, key: str) -> str | None:
        """Never found: a sent message cannot be looked up (see `searchable`)."""
        return None

    async def working(self, chat: str, thread: str | None) -> str | None:
        """The typing action; no placeholder message to replace."""
        await self.send_typing(chat)
        return None

    async def replace(self, chat: str, ref: str, payload: Any) -> None:
        await self.edit(chat, ref, str(payload))

    def target(self, chat: str) -> tuple[int | str, int | None]:
        """The chat id to address (followed through a migration) and the forum topic."""
        chat_id, topic = parse_chat(chat)
        return self._migrated.get(chat_id, chat_id), topic

    def answer_stream(
        self,
        chat: str,
        thread: str | None,
        *,
        placeholder: str | None,
        user: str | None = None,
        team: str | None = None,
    ) -> AnswerStream | None:
        """A poster that shows a thread answer as it is written (bot.channels.streaming):
        a draft in a private chat (a positive chat id), else one message edited as it grows."""
        from bot.channels.streaming import TelegramDraftStream, TelegramEditStream

        if not self.streaming:
            return None
        chat_id, topic = self.target(chat)
        if isinstance(chat_id, int) and chat_id > 0:
            if not self.drafts:
                return None
            return TelegramDraftStream(self, chat_id, topic, interval=self.stream_interval)
        return TelegramEditStream(self, chat, thread, interval=self.stream_interval)

    def analysis_progress(
        self, chat: str, *, thread: str | None, opening: tuple[str, str] | None = None
    ) -> TelegramAnalysisProgress:
        """How an analysis shows its stages (bot.channels.progress): the typing action while
        it lasts, and the opening line (`opening`: its message id and plain text, when it
        was posted) edited with the stage."""
        from bot.channels.progress import (
            PROGRESS_INTERVAL,
            TYPING_EVERY,
            TelegramAnalysisProgress,
        )

        return TelegramAnalysisProgress(
            self,
            chat,
            opening,
            interval=self.progress_interval or PROGRESS_INTERVAL,
            typing_every=self.typing_every or TYPING_EVERY,
        )

    async def send_typing(self, chat: str) -> None:
        """Show "typing…" while an answer is prepared. Cosmetic: failures are only logged."""
        chat_id, topic = parse_chat(chat)
        try:
            await self._call(
                partial(
                    self.bot.send_chat_action,
                    chat_id=self._migrated.get(chat_id, chat_id),
                    action=ChatAction.TYPING,
                    message_thread_id=topic,
                )
            )
        except (TelegramError, DeliveryError) as exc:
            _log.info("telegram typing indicator failed in %s: %s", chat_id, self._reason(exc))

    async def edit_once(self, chat: str, message_id: str, html: str) -> None:
        """One `editMessageText` of a live display (a streamed preview, an analysis's stage):
        no waiting out flood control (RetryAfter reaches the caller, whose pace decides), no
        fallback; an edit to the same text is not an error."""
        chat_id, _ = self.target(chat)
        try:
            await self.bot.edit_message_text(
                html, chat_id=chat_id, message_id=int(message_id), parse_mode=ParseMode.HTML
            )
        except BadRequest as exc:
            if "not modified" not in exc.message.lower():
                raise

    async def edit(self, chat: str, message_id: str, payload: str) -> None:
        """Replace a message's text. Content beyond one message is sent as replies to it."""
        chat_id, topic = parse_chat(chat)
        chat_id = self._migrated.get(chat_id, chat_id)
        text, mode = str(payload), ParseMode.HTML
        rest: list[str] = []
        for _ in range(4):  # plain-text fallback and one split at most, then give up
            try:
                await self._call(
                    partial(
                        self.bot.edit_message_text,
                        text,
                        chat_id=chat_id,
                        message_id=int(message_id),
                        parse_mode=mode,
                        link_preview_options=LinkPreviewOptions(is_disabled=True),
                    )
                )
                break
            except BadRequest as exc:
                desc = exc.message.lower()
                if "message is not modified" in desc:
                    break
                if "can't parse entities" in desc and mode is not None:
                    _log.warning("telegram edit in %s: markup rejected, using plain text", chat_id)
                    text, mode = _render().html_to_plain(text), None
                    continue
                if "message is too long" in desc and not rest:
                    pieces = _split_smaller(text, SPLIT_LIMIT, mode is not None)
                    text, rest = pieces[0], pieces[1:]
                    continue
                raise self._failure(exc, chat_id) from None
            except TelegramError as exc:
                raise self._failure(exc, chat_id) from None
        else:
            raise DeliveryError(f"telegram {chat_id}: edit kept failing", permanent=True)
        for piece in rest:
            await self._deliver(chat_id, topic, int(message_id), piece, mode, 1)

    async def _deliver(
        self,
        chat_id: int | str,
        topic: int | None,
        reply_to: int | None,
        text: str,
        mode: ParseMode | None,
        depth: int,
        *,
        markup: InlineKeyboardMarkup | None = None,
    ) -> str:
        migrated = False
        while True:
            target = self._migrated.get(chat_id, chat_id)
            try:
                message = await self._call(
                    partial(
                        self.bot.send_message,
                        chat_id=target,
                        text=text,
                        parse_mode=mode,
                        message_thread_id=topic,
                        reply_parameters=(
                            ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
                            if reply_to is not None
                            else None
                        ),
                        link_preview_options=LinkPreviewOptions(is_disabled=True),
                        reply_markup=markup,
                    )
                )
                return str(message.message_id)
            except BadRequest as exc:
                desc = exc.message.lower()
                if "can't parse entities" in desc and mode is not None:
                    _log.warning(
                        "telegram %s: markup rejected (%s); resending as plain text",
                        target,
                        self._reason(exc),
                    )
                    text, mode = _render().html_to_plain(text), None
                    continue
                if "message is too long" in desc and depth < 3:
                    return await self._send_pieces(
                        chat_id, topic, reply_to, text, mode, depth, markup=markup
                    )
                if reply_to is not None and "replied" in desc and "not found" in desc:
                    _log.warning(
                        "telegram %s: reply target %s gone; sending unthreaded", target, reply_to
                    )
                    reply_to = None
                    continue
                if topic is not None and "thread not found" in desc:
                    _log.warning("telegram %s: topic %s gone; sending to the chat", target, topic)
                    topic = None
                    continue
                raise self._failure(exc, target) from None
            except ChatMigrated as exc:
                if migrated:
                    raise self._failure(exc, target) from None
                migrated = True
                # A group upgraded to a supergroup gets a new id; follow it, and say so once
                # so the operator can update the configuration.
                _log.warning(
                    "telegram chat %s migrated to %s: update the configured chat id",
                    chat_id,
                    exc.new_chat_id,
                )
                self._migrated[chat_id] = exc.new_chat_id
            except TelegramError as exc:
                raise self._failure(exc, target) from None

    async def _send_pieces(
        self,
        chat_id: int | str,
        topic: int | None,
        reply_to: int | None,
        text: str,
        mode: ParseMode | None,
        depth: int,
        *,
        markup: InlineKeyboardMarkup | None = None,
    ) -> str:
        """Too long for one message: send it in pieces, in order, in the same thread (the
        buttons, if any, go under the first piece: the ledger knows only its id)."""
        pieces = _split_smaller(text, SPLIT_LIMIT >> depth, mode is not None)
        _log.info("telegram %s: message too long, sending %d pieces", chat_id, len(pieces))
        first = await self._deliver(
            chat_id, topic, reply_to, pieces[0], mode, depth + 1, markup=markup
        )
        # Without a thread, the later pieces hang under the first so they stay together.
        follow = reply_to if reply_to is not None else int(first)
        for piece in pieces[1:]:
            await self._deliver(chat_id, topic, follow, piece, mode, depth + 1)
        return first

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Bot API call, waiting out flood control that got past the rate limiter."""

        async def attempt(_: int) -> T:
            try:
                return await call()
            except RetryAfter as exc:
                wait = _retry_seconds(exc)
                if wait > self.max_flood_wait:
                    raise DeliveryError(
                        f"telegram flood control: retry after {wait:.0f}s", permanent=False
                    ) from None
                _log.warning("telegram flood control: asked to wait %.0fs", wait)
                # A little over what Telegram asked: coming back a moment early costs a 429.
                reason = f"telegram flood control: retry after {wait:.0f}s"
                raise TryAgain(reason, wait=wait + 0.1) from None

        try:
            return await self.flood_policy.run(attempt, what="telegram")
        except TryAgain as exc:
            raise DeliveryError(exc.reason, permanent=False) from None

    def _failure(self, exc: TelegramError, chat_id: int | str) -> DeliveryError:
        """Map a PTB error to a DeliveryError with a short, token-free reason."""
        reason = self._reason(exc)
        desc = reason.lower()
        if isinstance(exc, Forbidden):
            result = DeliveryError(f"telegram forbidden in {chat_id}: {reason}", permanent=True)
        elif isinstance(exc, InvalidToken):
            result = DeliveryError("telegram rejected the bot token", permanent=True)
        elif isinstance(exc, BadRequest):
            # A 400 will fail the same way next time: chat not found, no rights, bad request.
            what = "chat not found" if "chat not found" in desc else reason
            about_chat = any(
                w in desc for w in ("chat not found", "rights", "administrator", "topic")
            )
            result = DeliveryError(
                f"telegram {chat_id}: {what}", permanent=True, content=not about_chat
            )
        elif isinstance(exc, ChatMigrated):
            result = DeliveryError(
                f"telegram chat {chat_id} migrated to {exc.new_chat_id}", permanent=True
            )
        elif isinstance(exc, TimedOut):
            result = DeliveryError(
                f"telegram {chat_id}: timed out (the message may have been delivered)",
                permanent=False,
                maybe_delivered=True,
            )
        elif isinstance(exc, NetworkError):
            result = DeliveryError(f"telegram {chat_id}: network error: {reason}", permanent=False)
        else:
            result = DeliveryError(f"telegram {chat_id}: {reason}", permanent=False)
        _log.debug("telegram delivery failed: %s", result.reason)  # the caller reports it once
        return result

    def _reason(self, exc: BaseException) -> str:
        """One short line, never containing the token (httpx errors may quote URLs)."""
        text = str(exc) or exc.__class__.__name__
        token = getattr(self.bot, "token", "")
        if token:
            text = text.replace(token, "***")
        text = _TOKEN_SHAPE.sub("***", text)
        text = " ".join(text.split())
        return text[:200]


def _summary(what: str, j: int, total: int) -> str:
    return what if total <= 1 else f"{what} ({j + 1}/{total})"
