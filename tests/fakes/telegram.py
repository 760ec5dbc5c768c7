"""A fake Telegram Bot API served over real HTTP, for python-telegram-bot pointed at it.

Routes are `{url}/bot{token}/{method}`, so PTB is built with `base_url=f"{fake.url}/bot"`.
Bodies may be form-encoded (what PTB sends; nested objects such as `reply_parameters` arrive
JSON-encoded inside a form field), JSON, or multipart; query-string parameters also count.

The fake enforces the rules the bot's channel has to survive, with the real error texts:
HTML parse mode accepts only Telegram's tag whitelist (errors name the UTF-8 byte offset, as
the real API does), visible text is limited to 4096 UTF-16 code units, reply targets must
exist unless `allow_sending_without_reply`, forum topics must exist, kicked chats answer 403,
a webhook URL must be HTTPS, and knobs inject 429 flood control, 5xx errors and slow
(delivered-but-timed-out) responses; `latency` adds a fixed delay to every answer, for
benchmarks.

`sendMessageDraft` (private chats only, as the Bot API) records every draft with its time in
`drafts`; `refuse_drafts` makes it answer 404 like a Bot API server without the method.
`call_times(method)` gives the loop time of every call, e.g. to count edits per second.

Message ids are per chat and increase; every accepted message is kept so tests can read the
thread back with `sent(chat_id)`. Response objects copy the shapes of the real `getUpdates`
samples in `tests/fixtures/telegram/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .base import FakeServer

DEFAULT_TOKEN = "123456:TEST-SECRET-abcdefghijklmnopqrstuvwxyz012345"
MAX_TEXT_UTF16 = 4096
# The fake never holds a long poll longer than this, whatever `timeout` the client asks for,
# so polling tests stay fast while still exercising the "wait for new updates" path.
LONG_POLL_CAP = 1.0
# How early a retry may arrive and still count as waiting out retry_after: timer granularity.
_CLOCK_SLACK = 0.01

# HTML parse mode: tag name -> entity type (None: accepted but yields no entity here).
_TAG_ENTITY: dict[str, str | None] = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
    "tg-time": None,
}
_ENTITY_REF = re.compile(r"&(#[xX][0-9a-fA-F]{1,6}|#[0-9]{1,7}|[a-zA-Z]{1,10});")
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ATTRIBUTE = re.compile(r"\s*([^\s=>]+)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s>\"']+))?")


class HtmlParseError(ValueError):
    """The text Telegram would put after "Bad Request: can't parse entities: "."""


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram counts text and entity offsets in."""
    return len(text.encode("utf-16-le")) // 2


def parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Parse Telegram HTML like the Bot API does: (visible text, entities) or HtmlParseError.

    Follows tdlib's rules: tags are matched by name, unknown tags are rejected, only four named
    entities are decoded (others stay literal), and error offsets are UTF-8 byte offsets.
    """
    out: list[str] = []
    out_len = 0  # UTF-16 length of the visible text so far
    stack: list[dict[str, Any]] = []
    entities: list[dict[str, Any]] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "&":
            m = _ENTITY_REF.match(text, i)
            decoded = _decode_entity(m.group(1)) if m else None
            if m and decoded is not None:
                out.append(decoded)
                out_len += utf16_len(decoded)
                i = m.end()
            else:
                out.append("&")
                out_len += 1
                i += 1
            continue
        if ch != "<":
            j = i
            while j < n and text[j] not in "<&":
                j += 1
            chunk = text[i:j]
            out.append(chunk)
            out_len += utf16_len(chunk)
            i = j
            continue

        offset = len(text[:i].encode("utf-8"))
        if text.startswith("</", i):
            if not stack:
                raise HtmlParseError(f"Unexpected end tag at byte offset {offset}")
            end = text.find(">", i)
            if end < 0:
                raise HtmlParseError(f"Unclosed end tag at byte offset {offset}")
            name = text[i + 2 : end].strip().lower()
            top = stack[-1]
            if name and name != top["tag"]:
                raise HtmlParseError(
                    f'Unmatched end tag at byte offset {offset}, expected "</{top["tag"]}>", '
                    f'found "</{name}>"'
                )
            stack.pop()
            _close_entity(top, out_len, stack, entities)
            i = end + 1
            continue

        j = i + 1
        while j < n and not text[j].isspace() and text[j] != ">":
            j += 1
        if j >= n:
            raise HtmlParseError(f"Unclosed start tag at byte offset {offset}")
        name = text[i + 1 : j].lower()
        if name not in _TAG_ENTITY:
            raise HtmlParseError(f'Unsupported start tag "{name}" at byte offset {offset}')
        attrs: dict[str, str] = {}
        while j < n and text[j] != ">":
            m = _ATTRIBUTE.match(text, j)
            if not m or m.end() == j:
                if text[j].isspace():
                    j += 1
                    continue
                raise HtmlParseError(f"Unclosed start tag at byte offset {offset}")
            value = m.group(2) or ""
            if value[:1] in "\"'":
                value = value[1:-1]
            attrs[m.group(1).lower()] = html.unescape(value)
            j = m.end()
        if j >= n:
            raise HtmlParseError(f"Unclosed start tag at byte offset {offset}")
        if name == "span" and attrs.get("class") != "tg-spoiler":
            raise HtmlParseError(f'Tag "span" must have class "tg-spoiler" at byte offset {offset}')
        stack.append({"tag": name, "start": out_len, "attrs": attrs})
        i = j + 1

    if stack:
        raise HtmlParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1]["tag"]}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


def _decode_entity(ref: str) -> str | None:
    if ref.startswith("#"):
        try:
            code = int(ref[2:], 16) if ref[1:2] in "xX" else int(ref[1:])
            return chr(code)
        except (ValueError, OverflowError):
            return None
    return _NAMED_ENTITIES.get(ref)


def _close_entity(
    node: dict[str, Any], end: int, stack: list[dict[str, Any]], entities: list[dict[str, Any]]
) -> None:
    kind = _TAG_ENTITY[node["tag"]]
    attrs = node["attrs"]
    if node["tag"] == "code" and stack and stack[-1]["tag"] == "pre":
        # <pre><code class="language-x"> is one pre entity with a language, not two entities.
        lang = attrs.get("class", "")
        if lang.startswith("language-"):
            stack[-1]["language"] = lang.removeprefix("language-")
        return
    length = end - node["start"]
    if kind is None or length <= 0:
        return
    entity: dict[str, Any] = {"offset": node["start"], "length": length, "type": kind}
    if kind == "text_link":
        if not attrs.get("href"):
            return
        entity["url"] = attrs["href"]
    elif kind == "pre" and node.get("language"):
        entity["language"] = node["language"]
    elif kind == "blockquote" and "expandable" in attrs:
        entity["type"] = "expandable_blockquote"
    elif kind == "custom_emoji":
        entity["custom_emoji_id"] = attrs.get("emoji-id", "")
    entities.append(entity)


@dataclass
class FakeChat:
    """A chat the fake knows. Forum topics are kept as their creation messages' ids."""

    id: int
    type: str = "supergroup"
    title: str = "Paper digest"
    username: str | None = None
    is_forum: bool = False
    topics: set[int] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        if self.type == "private":
            data: dict[str, Any] = {"id": self.id, "first_name": self.title, "type": "private"}
        else:
            data = {"id": self.id, "title": self.title, "type": self.type}
        if self.username:
            data["username"] = self.username
        if self.is_forum:
            data["is_forum"] = True
        return data


@dataclass
class _Fault:
    remaining: int
    method: str
    extra: dict[str, Any] = field(default_factory=dict)


class FakeTelegram(FakeServer):
    """The Bot API subset digestbot uses. Build PTB with `base_url=f"{fake.url}/bot"`."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        chats: tuple[int, ...] | list[int] = (),
        username: str = "DigestBot",
        latency: float = 0.0,
    ) -> None:
        super().__init__()
        self.token = token
        # Seconds added before every method's answer (a long poll's wait comes on top).
        self.latency = latency
        self.bot_user: dict[str, Any] = {
            "id": int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 1,
            "is_bot": True,
            "first_name": username,
            "username": username,
        }
        self.chats: dict[int, FakeChat] = {}
        self.kicked: set[int] = set()
        self.migrated: dict[int, int] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.webhook: dict[str, Any] = {}
        # When True, a missing reply target is a 400 even with allow_sending_without_reply, so
        # tests can drive a client's own "message to be replied not found" fallback.
        self.strict_replies = False
        self._messages: dict[int, dict[int, dict[str, Any]]] = {}
        self._sent: dict[int, list[dict[str, Any]]] = {}
        self._next_id: dict[int, int] = {}
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 100_000
        self._new_update: asyncio.Event | None = None
        self._held_poll: asyncio.Event | None = None
        # getUpdates calls answered 409 because another one came for the same token
        self.conflicts = 0
        self._closing = asyncio.Event()
        self._floods: list[_Fault] = []
        self._flooded_until: dict[str, float] = {}  # method -> loop time
        # Calls that came back to a flooded method before its retry_after had passed, as
        # (method, seconds too early): a client that honours retry_after leaves this empty.
        self.too_early: list[tuple[str, float]] = []
        self._server_errors: list[_Fault] = []
        self._delays: list[_Fault] = []
        self.drafts: list[dict[str, Any]] = []
        self.refuse_drafts = False
        self._callbacks: set[str] = set()  # callback query ids handed out by push_callback
        # Answered callback queries: id -> {"text", "at" (time.monotonic())}.
        self.answered: dict[str, dict[str, Any]] = {}
        for chat_id in chats:
            self.add_chat(chat_id)

    # ---------------------------------------------------------------- set-up and knobs

    def add_chat(
        self,
        chat_id: int,
        *,
        type: str = "supergroup",  # noqa: A002 - the Bot API's own field name
        title: str = "Paper digest",
        username: str | None = None,
        is_forum: bool = False,
        topics: tuple[int, ...] | list[int] = (),
    ) -> FakeChat:
        """Register a chat the bot is a member of. `topics` makes it a forum with those topics."""
        chat = FakeChat(chat_id, type, title, username, is_forum or bool(topics))
        self.chats[chat_id] = chat
        self._messages.setdefault(chat_id, {})
        self._sent.setdefault(chat_id, [])
        self._next_id.setdefault(chat_id, 100)
        for topic in topics:
            self.add_topic(chat_id, topic)
        return chat

    def add_topic(self, chat_id: int, thread_id: int, name: str = "Daily papers") -> None:
        """A forum topic is identified by the id of its `forum_topic_created` service message."""
        chat = self.chats[chat_id]
        chat.is_forum = True
        chat.topics.add(thread_id)
        self._messages[chat_id][thread_id] = {
            "message_id": thread_id,
            "from": self.bot_user,
            "chat": chat.as_json(),
            "date": int(time.time()),
            "message_thread_id": thread_id,
            "forum_topic_created": {"name": name, "icon_color": 7322096},
            "is_topic_message": True,
        }
        self._next_id[chat_id] = max(self._next_id[chat_id], thread_id + 1)

    def delete_topic(self, chat_id: int, thread_id: int) -> None:
        self.chats[chat_id].topics.discard(thread_id)
        self._messages[chat_id].pop(thread_id, None)

    def delete_message(self, chat_id: int, message_id: int) -> None:
        """Make a message disappear, e.g. a reply target a user deleted."""
        self._messages[chat_id].pop(message_id, None)

    def kick(self, chat_id: int) -> None:
        self.kicked.add(chat_id)

    def migrate(self, chat_id: int, new_chat_id: int) -> None:
        """The group was upgraded to a supergroup: the old id answers 400 with the new one."""
        old = self.chats[chat_id]
        self.migrated[chat_id] = new_chat_id
        self.add_chat(new_chat_id, title=old.title, username=old.username)

    def flood_next(self, n: int = 1, retry_after: int = 1, *, method: str = "sendMessage") -> None:
        """The next `n` calls of `method` answer 429 with `retry_after`."""
        self._floods.append(_Fault(n, method, {"retry_after": retry_after}))

    def server_error_next(
        self, n: int = 1, *, status: int = 500, method: str = "sendMessage"
    ) -> None:
        """The next `n` calls of `method` answer a 5xx without doing anything."""
        self._server_errors.append(_Fault(n, method, {"status": status}))

    def delay_next(self, seconds: float, n: int = 1, *, method: str = "sendMessage") -> None:
        """The next `n` calls of `method` are carried out, then answered only after `seconds`:
        with a shorter client read timeout this is the delivered-but-timed-out case."""
        self._delays.append(_Fault(n, method, {"seconds": seconds}))

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates; an `update_id` is assigned when missing."""
        update = dict(update)
        if "update_id" not in update:
            update["update_id"] = self._next_update_id
        self._next_update_id = max(self._next_update_id, int(update["update_id"])) + 1
        self._updates.append(update)
        message = update.get("message") or update.get("channel_post")
        if isinstance(message, dict):
            chat_id = message.get("chat", {}).get("id")
            if chat_id in self._messages:
                self._messages[chat_id][message["message_id"]] = message
                self._next_id[chat_id] = max(self._next_id[chat_id], message["message_id"] + 1)
        if self._new_update is not None:
            self._new_update.set()
        return update

    def push_message(
        self,
        chat_id: int,
        text: str,
        *,
        user: dict[str, Any] | None = None,
        reply_to_message_id: int | None = None,
        message_thread_id: int | None = None,
    ) -> dict[str, Any]:
        """Queue a user's text message (a command gets its `bot_command` entity)."""
        chat = self.chats[chat_id]
        message: dict[str, Any] = {
            "message_id": self._take_id(chat_id),
            "from": user
            or {"id": 4242, "is_bot": False, "first_name": "Ann", "username": "ann_cv"},
            "chat": chat.as_json(),
            "date": int(time.time()),
            "text": text,
        }
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            message["entities"] = [
                {"offset": 0, "length": utf16_len(command), "type": "bot_command"}
            ]
        if message_thread_id is not None:
            message["message_thread_id"] = message_thread_id
            if chat.is_forum:
                message["is_topic_message"] = True
        target = reply_to_message_id or (message_thread_id if chat.is_forum else None)
        if target is not None and target in self._messages[chat_id]:
            message["reply_to_message"] = _one_level(self._messages[chat_id][target])
        return self.push_update({"message": message})

    # ---------------------------------------------------------------- read-back helpers

    def sent(self, chat_id: int | str) -> list[dict[str, Any]]:
        """The bot's accepted messages in `chat_id`, oldest first.

        Each dict: message_id, text (as sent), visible (after HTML parsing), parse_mode,
        message_thread_id, reply_to_message_id (the reply actually made), entities, edited.
        """
        return [dict(r) for r in self._sent.get(int(chat_id), [])]

    def call_times(self, name: str) -> list[float]:
        """The loop time at which each call of `name` arrived."""
        return [r.at for r in self.requests if r.path.endswith(f"/{name}")]

    def method_calls(self, name: str) -> list[dict[str, Any]]:
        """The decoded parameters of every call of `name`, including rejected ones."""
        return [params for method, params in self.calls if method == name]

    # ---------------------------------------------------------------- HTTP

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/{method}", self._dispatch)

    async def start(self) -> str:
        self._new_update = asyncio.Event()
        self._closing = asyncio.Event()
        return await super().start()

    async def stop(self) -> None:
        # Wake held long polls and delayed answers: aiohttp waits for running handlers.
        self._closing.set()
        if self._new_update is not None:
            self._new_update.set()
        await super().stop()

    async def _dispatch(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await _read_params(request)
        self.calls.append((method, params))
        now = asyncio.get_running_loop().time()
        early = self._flooded_until.pop(method, now) - now
        if early > _CLOCK_SLACK:
            self.too_early.append((method, early))
        if self.latency:
            await asyncio.sleep(self.latency)
        for fault in self._floods:
            if fault.method == method and fault.remaining > 0:
                fault.remaining -= 1
                seconds = fault.extra["retry_after"]
                self._flooded_until[method] = asyncio.get_running_loop().time() + seconds
                return _error(
                    429,
                    f"Too Many Requests: retry after {seconds}",
                    {"retry_after": seconds},
                )
        for fault in self._server_errors:
            if fault.method == method and fault.remaining > 0:
                fault.remaining -= 1
                return _error(fault.extra["status"], "Internal Server Error")
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _error(404, "Not Found")
        response: web.Response = await handler(params)
        for fault in self._delays:
            if fault.method == method and fault.remaining > 0:
                fault.remaining -= 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), fault.extra["seconds"])
                break
        return response

    # ---------------------------------------------------------------- methods

    async def _m_getMe(self, params: dict[str, Any]) -> web.Response:
        return _ok(
            {
                **self.bot_user,
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
                "can_connect_to_business": False,
                "has_main_web_app": False,
            }
        )

    async def _m_sendMessage(self, params: dict[str, Any]) -> web.Response:
        chat, failure = self._writable_chat(params.get("chat_id"))
        if failure is not None:
            return failure
        assert chat is not None
        text = str(params.get("text") or "")
        parse_mode = params.get("parse_mode")
        parsed = _parse_text(text, parse_mode, params.get("entities"))
        if isinstance(parsed, web.Response):
            return parsed
        visible, entities = parsed

        thread = _int(params.get("message_thread_id"))
        if thread is not None and chat.is_forum and thread not in chat.topics:
            return _error(400, "Bad Request: message thread not found")

        reply = _obj(params.get("reply_parameters")) or {}
        reply_to = _int(reply.get("message_id")) or _int(params.get("reply_to_message_id"))
        allow = _bool(reply.get("allow_sending_without_reply")) or _bool(
            params.get("allow_sending_without_reply")
        )
        messages = self._messages[chat.id]
        if reply_to is not None and reply_to not in messages:
            if not allow or self.strict_replies:
                return _error(400, "Bad Request: message to be replied not found")
            reply_to = None

        message_id = self._take_id(chat.id)
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": self.bot_user,
            "chat": chat.as_json(),
            "date": int(time.time()),
        }
        if thread is not None:
            message["message_thread_id"] = thread
            if chat.is_forum:
                message["is_topic_message"] = True
        # In a forum topic an un-targeted message still carries reply_to_message: the topic's
        # creation message (see the forum fixture).
        target = reply_to if reply_to is not None else (thread if chat.is_forum else None)
        if target is not None and target in messages:
            message["reply_to_message"] = _one_level(messages[target])
        message["text"] = visible
        if entities:
            message["entities"] = entities
        preview = _obj(params.get("link_preview_options"))
        if preview:
            message["link_preview_options"] = preview
        markup = _obj(params.get("reply_markup"))
        problem = _check_inline_keyboard(markup)
        if problem:
            return _error(400, f"Bad Request: {problem}")
        if markup:
            message["reply_markup"] = markup
        messages[message_id] = message
        self._sent[chat.id].append(
            {
                "message_id": message_id,
                "text": text,
                "visible": visible,
                "parse_mode": parse_mode,
                "message_thread_id": thread,
                "reply_to_message_id": reply_to,
                "entities": entities,
                "edited": False,
                "reply_markup": markup or None,
            }
        )
        return _ok(message)

    async def _m_sendPhoto(self, params: dict[str, Any]) -> web.Response:
        """A photo uploaded as multipart (field `photo`, or `attach://name`), with an
        optional plain caption of at most 1,024 characters; recorded in `sent` with
        `photo` (the bytes) and `caption`."""
        chat, failure = self._writable_chat(params.get("chat_id"))
        if failure is not None:
            return failure
        assert chat is not None
        files = params.get("_files") or {}
        ref = str(params.get("photo") or "")
        data = files.get(ref.removeprefix("attach://")) if ref else files.get("photo")
        if data is None:
            data = files.get("photo")
        if not data:
            return _error(400, "Bad Request: there is no photo in the request")
        caption = str(params.get("caption") or "")
        if len(caption) > 1024:
            return _error(400, "Bad Request: message caption is too long")
        reply = _obj(params.get("reply_parameters")) or {}
        reply_to = _int(reply.get("message_id")) or _int(params.get("reply_to_message_id"))
        messages = self._messages[chat.id]
        if reply_to is not None and reply_to not in messages:
            if not _bool(reply.get("allow_sending_without_reply")) or self.strict_replies:
                return _error(400, "Bad Request: message to be replied not found")
            reply_to = None
        thread = _int(params.get("message_thread_id"))
        message_id = self._take_id(chat.id)
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": self.bot_user,
            "chat": chat.as_json(),
            "date": int(time.time()),
            "photo": [
                {
                    "file_id": f"photo{message_id}",
                    "file_unique_id": f"u{message_id}",
                    "width": 640,
                    "height": 480,
                    "file_size": len(data),
                }
            ],
        }
        if caption:
            message["caption"] = caption
        if reply_to is not None:
            message["reply_to_message"] = _one_level(messages[reply_to])
        messages[message_id] = message
        self._sent[chat.id].append(
            {
                "message_id": message_id,
                "text": "",
                "visible": "",
                "parse_mode": params.get("parse_mode"),
                "message_thread_id": thread,
                "reply_to_message_id": reply_to,
                "entities": [],
                "edited": False,
                "photo": bytes(data),
                "caption": caption,
            }
        )
        return _ok(message)

    def _message_to_edit(
        self, params: dict[str, Any]
    ) -> tuple[Any, int | None, dict[str, Any] | None, web.Response | None]:
        """(chat, message id, message, None), or the refusal an edit of it gets."""
        chat, failure = self._writable_chat(params.get("chat_id"))
        if failure is not None:
            return None, None, None, failure
        assert chat is not None
        message_id = _int(params.get("message_id"))
        message = self._messages[chat.id].get(message_id or -1)
        if message is None:
            return None, None, None, _error(400, "Bad Request: message to edit not found")
        return chat, message_id, message, None

    async def _m_editMessageText(self, params: dict[str, Any]) -> web.Response:
        chat, message_id, message, refusal = self._message_to_edit(params)
        if refusal is not None:
            return refusal
        assert chat is not None and message is not None
        if message.get("from", {}).get("id") != self.bot_user["id"] or "text" not in message:
            return _error(400, "Bad Request: message can't be edited")
        text = str(params.get("text") or "")
        parse_mode = params.get("parse_mode")
        parsed = _parse_text(text, parse_mode, params.get("entities"))
        if isinstance(parsed, web.Response):
            return parsed
        visible, entities = parsed
        # As the Bot API does: an edit without reply_markup drops the inline keyboard.
        markup = _obj(params.get("reply_markup")) or None
        problem = _check_inline_keyboard(markup)
        if problem:
            return _error(400, f"Bad Request: {problem}")
        if (
            visible == message["text"]
            and entities == message.get("entities", [])
            and markup == message.get("reply_markup")
        ):
            return _error(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        message["text"] = visible
        message["edit_date"] = int(time.time())
        if entities:
            message["entities"] = entities
        else:
            message.pop("entities", None)
        if markup:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        for record in self._sent[chat.id]:
            if record["message_id"] == message_id:
                record.update(text=text, visible=visible, parse_mode=parse_mode, entities=entities)
                record["reply_markup"] = markup
                record["edited"] = True
        return _ok(message)

    async def _m_sendMessageDraft(self, params: dict[str, Any]) -> web.Response:
        if self.refuse_drafts:
            return _error(404, "Not Found")
        chat, failure = self._writable_chat(params.get("chat_id"))
        if failure is not None:
            return failure
        assert chat is not None
        if chat.type != "private":
            return _error(400, "Bad Request: drafts can be sent only to private chats")
        if not _int(params.get("draft_id")):
            return _error(400, "Bad Request: draft_id must be non-zero")
        parsed = _parse_text(str(params.get("text") or ""), params.get("parse_mode"), None)
        if isinstance(parsed, web.Response):
            return parsed
        self.drafts.append(
            {
                "chat_id": chat.id,
                "draft_id": _int(params.get("draft_id")),
                "text": params.get("text"),
                "visible": parsed[0],
                "at": asyncio.get_running_loop().time(),
            }
        )
        return _ok(True)

    async def _m_editMessageReplyMarkup(self, params: dict[str, Any]) -> web.Response:
        chat, message_id, message, refusal = self._message_to_edit(params)
        if refusal is not None:
            return refusal
        assert chat is not None and message is not None
        markup = _obj(params.get("reply_markup")) or None
        problem = _check_inline_keyboard(markup)
        if problem:
            return _error(400, f"Bad Request: {problem}")
        if markup == message.get("reply_markup"):
            return _error(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        if markup:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        for row in self._sent[chat.id]:
            if row["message_id"] == message_id:
                row["reply_markup"] = markup
        return _ok(message)

    async def _m_answerCallbackQuery(self, params: dict[str, Any]) -> web.Response:
        query_id = str(params.get("callback_query_id") or "")
        if query_id not in self._callbacks:
            return _error(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        if query_id in self.answered:
            return _error(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        if len(str(params.get("text") or "")) > 200:  # the Bot API's 0-200 characters
            return _error(400, "Bad Request: MESSAGE_TOO_LONG")
        self.answered[query_id] = {"text": params.get("text"), "at": time.monotonic()}
        return _ok(True)

    def push_callback(
        self,
        chat_id: int,
        message_id: int,
        data: str,
        *,
        user: dict[str, Any] | None = None,
        query_id: str | None = None,
        update_id: int | None = None,
    ) -> dict[str, Any]:
        """Queue a button press on the bot's message `message_id`: a `callback_query` update in
        the shape of the recorded one (tests/fixtures/telegram/callback_query_*), carrying the
        pressed message as the chat holds it. The same `update_id` again is a redelivery."""
        message = self._messages[chat_id][message_id]
        query_id = query_id or str(next(_callback_ids))
        self._callbacks.add(query_id)
        query = {
            "id": query_id,
            "from": user
            or {"id": 4242, "is_bot": False, "first_name": "Ann", "username": "ann_cv"},
            "message": _one_level(message)
            | ({"reply_markup": message["reply_markup"]} if "reply_markup" in message else {}),
            "chat_instance": "-2955349629926715065",
            "data": data,
        }
        update: dict[str, Any] = {"callback_query": query}
        if update_id is not None:
            update["update_id"] = update_id
        return self.push_update(update)

    async def _m_sendChatAction(self, params: dict[str, Any]) -> web.Response:
        chat, failure = self._writable_chat(params.get("chat_id"))
        if failure is not None:
            return failure
        assert chat is not None
        thread = _int(params.get("message_thread_id"))
        if thread is not None and chat.is_forum and thread not in chat.topics:
            return _error(400, "Bad Request: message thread not found")
        return _ok(True)

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook = {}
        if _bool(params.get("drop_pending_updates")):
            self._updates.clear()
        return _ok(True, "Webhook was deleted")

    async def _m_setWebhook(self, params: dict[str, Any]) -> web.Response:
        url = str(params.get("url") or "")
        if not url:
            return await self._m_deleteWebhook(params)
        if not url.startswith("https://"):
            return _error(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            return _error(400, "Bad Request: secret token contains unallowed characters")
        self.webhook = {"url": url, "secret_token": secret}
        if _bool(params.get("drop_pending_updates")):
            self._updates.clear()
        return _ok(True, "Webhook was set")

    async def _m_getWebhookInfo(self, params: dict[str, Any]) -> web.Response:
        return _ok(
            {
                "url": self.webhook.get("url", ""),
                "has_custom_certificate": False,
                "pending_update_count": len(self._updates),
            }
        )

    async def _m_getUpdates(self, params: dict[str, Any]) -> web.Response:
        if self.webhook.get("url"):
            return _error(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use "
                "deleteWebhook to delete the webhook first",
            )
        offset = _int(params.get("offset")) or 0
        limit = _int(params.get("limit")) or 100
        timeout = float(params.get("timeout") or 0)
        # As the real Bot API: a getUpdates ends the one still being held for this token with
        # 409, so two processes polling one bot keep knocking each other out.
        mine = asyncio.Event()
        previous, self._held_poll = self._held_poll, mine
        if previous is not None:
            previous.set()
        try:
            self._confirm(offset)
            ready = self._ready(offset)
            if not ready and timeout > 0 and self._new_update is not None:
                self._new_update.clear()
                waits = [
                    asyncio.ensure_future(self._new_update.wait()),
                    asyncio.ensure_future(mine.wait()),
                    asyncio.ensure_future(self._closing.wait()),
                ]
                await asyncio.wait(
                    waits, timeout=min(timeout, LONG_POLL_CAP), return_when=asyncio.FIRST_COMPLETED
                )
                for w in waits:
                    w.cancel()
                if mine.is_set():
                    self.conflicts += 1
                    return _error(
                        409,
                        "Conflict: terminated by other getUpdates request; make sure that only "
                        "one bot instance is running",
                    )
                ready = self._ready(offset)
            return _ok(ready[:limit])
        finally:
            if self._held_poll is mine:
                self._held_poll = None

    # ---------------------------------------------------------------- internals

    def _confirm(self, offset: int) -> None:
        """Calling getUpdates with an offset confirms every update below it (Bot API rule);
        a negative offset keeps only the last -offset updates."""
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]

    def _ready(self, offset: int) -> list[dict[str, Any]]:
        return [u for u in self._updates if offset <= 0 or u["update_id"] >= offset]

    def _take_id(self, chat_id: int) -> int:
        message_id = self._next_id[chat_id]
        self._next_id[chat_id] = message_id + 1
        return message_id

    def _find_chat(self, raw: Any) -> FakeChat | None:
        if raw is None:
            return None
        text = str(raw)
        if text.startswith("@"):
            return next((c for c in self.chats.values() if c.username == text[1:]), None)
        try:
            return self.chats.get(int(text))
        except ValueError:
            return None

    def _writable_chat(self, raw: Any) -> tuple[FakeChat | None, web.Response | None]:
        chat = self._find_chat(raw)
        if chat is None:
            return None, _error(400, "Bad Request: chat not found")
        if chat.id in self.migrated:
            return None, _error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": self.migrated[chat.id]},
            )
        if chat.id in self.kicked:
            if chat.type == "private":
                return None, _error(403, "Forbidden: bot was blocked by the user")
            where = {"supergroup": "supergroup chat", "group": "group chat"}.get(
                chat.type, "channel chat"
            )
            return None, _error(403, f"Forbidden: bot was kicked from the {where}")
        return chat, None


def _parse_text(
    text: str, parse_mode: Any, raw_entities: Any
) -> tuple[str, list[dict[str, Any]]] | web.Response:
    """Visible text and entities as Telegram stores them, or the 400 it would answer."""
    if parse_mode and str(parse_mode).upper() == "HTML":
        try:
            visible, entities = parse_html(text)
        except HtmlParseError as exc:
            return _error(400, f"Bad Request: can't parse entities: {exc}")
    else:
        # Markdown modes are not emulated: digestbot sends HTML or plain text only.
        visible, entities = text, list(_obj(raw_entities) or [])
    if not visible.strip():
        return _error(400, "Bad Request: message text is empty")
    if utf16_len(visible) > MAX_TEXT_UTF16:
        return _error(400, "Bad Request: message is too long")
    return visible, entities


_callback_ids = itertools.count(586534174085442072)


def _check_inline_keyboard(markup: Any) -> str | None:
    """Why the Bot API would refuse this inline keyboard, or None (callback_data 1-64 bytes)."""
    if not markup:
        return None
    rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
    if not isinstance(rows, list):
        return "can't parse reply keyboard markup JSON object"
    for row in rows:
        for button in row:
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= 64:
                return "BUTTON_DATA_INVALID"
            if not button.get("text"):
                return "text buttons are unallowed in the inline keyboard"
    return None


def _one_level(message: dict[str, Any]) -> dict[str, Any]:
    """Telegram nests reply_to_message one level deep only."""
    return {k: v for k, v in message.items() if k != "reply_to_message"}


async def _read_params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query)
    body = await request.read()
    if not body:
        return params
    if request.content_type == "application/json":
        data = json.loads(body)
        if isinstance(data, dict):
            params.update(data)
    elif request.content_type == "multipart/form-data":
        # The recording middleware already read the body, so parse the bytes themselves.
        fields, files = _multipart(request.headers.get("Content-Type", ""), body)
        params.update(fields)
        if files:
            params["_files"] = files  # uploads (sendPhoto's photo), as bytes by field name
    elif request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """(text fields, file fields) of a multipart/form-data body."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            files[name] = data
        else:
            fields[name] = data.decode("utf-8", "replace")
    return fields, files


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _bool(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1")


def _obj(value: Any) -> Any:
    """Nested objects arrive JSON-encoded inside form fields, or as-is in JSON bodies."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _ok(result: Any, description: str | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": True, "result": result}
    if description:
        body["description"] = description
    return web.json_response(body)


def _error(code: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)
