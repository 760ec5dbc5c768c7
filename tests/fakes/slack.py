"""A fake Slack: the Web API methods digestbot calls, plus a Socket Mode WebSocket.

Point the real client at it with `AsyncWebClient(token=fake.token, base_url=fake.url + "/api/")`.
It keeps every channel's messages in order with string `ts` values like Slack's
("1700000000.000100", increasing), threads them by `thread_ts`, enforces the message-size
limits that make real Slack reject a post, and lets a test inject the faults that matter for
delivery: 429 with Retry-After, 5xx, permanent channel errors and "accepted, then the
connection dropped" (the post exists but the client saw a failure). `latency` adds a fixed
delay to every Web API answer, for benchmarks.

Chat streaming: `chat.startStream` / `chat.appendStream` / `chat.stopStream` keep a streamed
message (its text grows with every `markdown_text` chunk) and record every call, in order, in
`stream_calls`; `refuse_streaming = "unknown_method"` (or "missing_scope", "not_allowed")
makes all three answer that error, as an older workspace or a token without the scope would.
`chat.delete` and `assistant.threads.setStatus` (every call recorded in `statuses`, with
`messages_before`, the channel's message count at the time; an empty `status` clears it; a
`thread_ts` that names no message is `invalid_thread_ts`; `refuse_status = "missing_scope"`
or "not_allowed" answers that error, as a workspace or token that cannot use it would)
complete the set.

Socket Mode: `apps.connections.open` hands out `ws://127.0.0.1:PORT/socket`; the socket says
`hello`, a test pushes envelopes with `push_envelope()`, and every ack the app sends back is
recorded in `acks`. `socket_outage()` drops every open socket and refuses reconnects (the
WebSocket upgrade is answered 503 and `apps.connections.open` `internal_error`, as when Slack's
Socket Mode is down) until `socket_outage(False)`; `refused_reconnects` counts the refusals.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from fakes.base import FakeServer

DEFAULT_BOT_TOKEN = "xoxb-test-SECRET-123456"
DEFAULT_APP_TOKEN = "xapp-1-test-APPSECRET-654321"
DEFAULT_CHANNEL = "C0DIGEST01"

# Documented Block Kit limits (platform-contracts.md §3.4). The total-text limit is the
# markdown-block one; real Slack has answered msg_blocks_too_long somewhat above it.
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_SECTION_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_HEADER_TEXT = 150
MAX_MARKDOWN_TEXT = 12000
MAX_TOTAL_BLOCK_TEXT = 12000
MAX_TEXT = 40000  # Slack truncates `text` beyond this rather than refusing the post
MAX_ACTIONS = 25  # elements of an actions block
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2000
MAX_ACTION_ID = 255


def _block_texts(node: Any) -> list[str]:
    """Every string under a "text" key, at any depth (section, fields, rich_text, markdown)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "text" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_block_texts(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_block_texts(item))
    return found


def _text_of(obj: Any) -> str:
    """The string inside a text object ({"type": "mrkdwn", "text": ...}) or a bare string."""
    if isinstance(obj, dict):
        value = obj.get("text", "")
        return value if isinstance(value, str) else ""
    return obj if isinstance(obj, str) else ""


def check_blocks(blocks: Any) -> tuple[str, str] | None:
    """Why Slack would refuse these blocks, as (error code, detail), or None if they pass."""
    if not isinstance(blocks, list):
        return "invalid_blocks_format", "blocks must be an array"
    if len(blocks) > MAX_BLOCKS:
        return "invalid_blocks", f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]"
    for i, block in enumerate(blocks):
        where = f"[json-pointer:/blocks/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return "invalid_blocks", f"missing required field: type {where}]"
        kind = block["type"]
        if kind == "section":
            if len(_text_of(block.get("text"))) > MAX_SECTION_TEXT:
                return "invalid_blocks", f"must be less than 3001 characters {where}/text/text]"
            fields = block.get("fields") or []
            if len(fields) > MAX_SECTION_FIELDS:
                return "invalid_blocks", f"no more than 10 items allowed {where}/fields]"
            for j, f in enumerate(fields):
                if len(_text_of(f)) > MAX_FIELD_TEXT:
                    return (
                        "invalid_blocks",
                        f"must be less than 2001 characters {where}/fields/{j}]",
                    )
        elif kind == "header":
            if len(_text_of(block.get("text"))) > MAX_HEADER_TEXT:
                return "invalid_blocks", f"must be less than 151 characters {where}/text/text]"
        elif kind == "markdown":
            if len(_text_of(block)) > MAX_MARKDOWN_TEXT:
                return "invalid_blocks", f"must be less than 12001 characters {where}/text]"
        elif kind == "actions":
            problem = _check_actions(block.get("elements"), where)
            if problem:
                return "invalid_blocks", problem
    total = sum(len(t) for t in _block_texts(blocks))
    if total > MAX_TOTAL_BLOCK_TEXT:
        return "msg_blocks_too_long", f"total block text {total} characters"
    return None


def _check_actions(elements: Any, where: str) -> str | None:
    """Why Slack would refuse an actions block's elements (Block Kit reference: at most 25
    elements; a button's label at most 75 characters, its value 2,000, its action_id 255,
    and an action_id used once per block)."""
    if not isinstance(elements, list) or not 1 <= len(elements) <= MAX_ACTIONS:
        return f"must provide 1 to {MAX_ACTIONS} items {where}/elements]"
    seen: set[str] = set()
    for j, element in enumerate(elements):
        at = f"{where}/elements/{j}"
        action_id = str(element.get("action_id") or "")
        if len(action_id) > MAX_ACTION_ID:
            return f"must be less than {MAX_ACTION_ID + 1} characters {at}/action_id]"
        if action_id and action_id in seen:
            return f"duplicate action_id {at}/action_id]"
        seen.add(action_id)
        if element.get("type") == "button":
            if not 1 <= len(_text_of(element.get("text"))) <= MAX_BUTTON_TEXT:
                return f"must be less than {MAX_BUTTON_TEXT + 1} characters {at}/text/text]"
            if len(str(element.get("value") or "")) > MAX_BUTTON_VALUE:
                return f"must be less than {MAX_BUTTON_VALUE + 1} characters {at}/value]"
    return None


def _maybe_json(value: Any) -> Any:
    """Form-encoded calls carry `blocks` and `metadata` as JSON strings."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes")


# How early a retry may arrive and still count as waiting out Retry-After: timer granularity.
_CLOCK_SLACK = 0.01


@dataclass
class FakeSlack(FakeServer):
    """Fake Slack Web API + Socket Mode endpoint. See the module docstring."""

    token: str = DEFAULT_BOT_TOKEN
    app_token: str = DEFAULT_APP_TOKEN
    channels: set[str] = field(default_factory=lambda: {DEFAULT_CHANNEL})
    # Channels the bot has joined; None means every channel in `channels`.
    member_of: set[str] | None = None
    user_id: str = "U0BOT0001"
    bot_id: str = "B0BOT0001"
    team_id: str = "T0TEAM001"
    app_id: str = "A0APP0001"
    # Seconds added before every Web API answer (not the socket), like a far-away Slack.
    latency: float = 0.0

    # Chat streaming: every call as (method, params, loop time), and the refusal knob.
    stream_calls: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    refuse_streaming: str | None = None
    statuses: list[dict[str, Any]] = field(default_factory=list)
    refuse_status: str | None = None
    deleted: list[str] = field(default_factory=list)

    acks: list[dict[str, Any]] = field(default_factory=list)
    # Socket Mode outage (see socket_outage): reconnects refused, and how many were.
    socket_down: bool = False
    refused_reconnects: int = 0
    ephemerals: list[dict[str, Any]] = field(default_factory=list)
    # Calls that came back to a rate-limited method before its Retry-After had passed, as
    # (method, seconds too early): a client that honours Retry-After leaves this empty.
    too_early: list[tuple[str, float]] = field(default_factory=list)

    _store: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _next_ts: int = 1_700_000_000_000_100  # microseconds; formatted as "1700000000.000100"
    _rate_limits: list[tuple[str | None, int]] = field(default_factory=list)
    _limited_until: dict[str, float] = field(default_factory=dict)  # method -> loop time
    _server_errors: list[tuple[str | None, int]] = field(default_factory=list)
    _permanent: dict[str, str] = field(default_factory=dict)
    _drops: list[str] = field(default_factory=list)
    _raw: list[tuple[str, int, str, str]] = field(default_factory=list)
    _sockets: list[web.WebSocketResponse] = field(default_factory=list)
    # The external file upload: files.getUploadURLExternal hands out /upload/<file_id> on
    # this fake, the client POSTs the bytes there, files.completeUploadExternal shares them.
    # `uploads` holds each shared file: id, bytes, title, channel_id, thread_ts,
    # initial_comment, and a `ts` from the same clock as messages (to compare the order).
    uploads: list[dict[str, Any]] = field(default_factory=list)
    _pending_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ack_event: asyncio.Event = field(default_factory=asyncio.Event)
    _connected: asyncio.Event = field(default_factory=asyncio.Event)

    # ------------------------------------------------------------------ knobs

    def rate_limit_next(
        self, n: int = 1, retry_after: int = 1, method: str | None = "chat.postMessage"
    ) -> None:
        """The next `n` calls to `method` (None: any method) get HTTP 429 + Retry-After."""
        self._rate_limits.extend([(method, retry_after)] * n)

    def server_error_next(
        self, n: int = 1, status: int = 500, method: str | None = "chat.postMessage"
    ) -> None:
        """The next `n` calls to `method` get an HTML 5xx page; nothing is stored."""
        self._server_errors.extend([(method, status)] * n)

    def answer_next(
        self,
        method: str,
        *,
        status: int = 200,
        body: str = "",
        content_type: str = "text/html",
        n: int = 1,
    ) -> None:
        """The next `n` calls to `method` get exactly this answer, whatever they asked: an HTML
        502 from a proxy, an empty 200, a 503 with `{"ok":false,"error":"internal_error"}`."""
        self._raw.extend([(method, status, body, content_type)] * n)

    def permanent_error(self, channel: str, error: str | None = "not_in_channel") -> None:
        """Every post/update/read in `channel` fails with `error` (e.g. is_archived); None
        clears it (the bot was invited after all)."""
        if error is None:
            self._permanent.pop(channel, None)
        else:
            self._permanent[channel] = error

    def accept_then_drop_next(self, mode: str = "reset") -> None:
        """The next chat.postMessage is stored, but the client sees a failure.

        mode "reset": the connection is cut before any response byte (client: disconnected).
        mode "500": an HTML 500 is returned after storing.
        """
        if mode not in ("reset", "500"):
            raise ValueError(mode)
        self._drops.append(mode)

    async def socket_outage(self, down: bool = True) -> None:
        """Socket Mode goes down (True): every open socket is closed, and until it comes back
        (False) each WebSocket upgrade gets HTTP 503 and each `apps.connections.open` an
        `internal_error`, so the app cannot reconnect however it tries."""
        self.socket_down = down
        if down:
            await self.close_sockets()

    # ---------------------------------------------------------------- helpers

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Everything posted to `channel` (roots and replies) in posting order."""
        return [self._public(m) for m in self._store.get(channel, [])]

    def thread(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """The parent `ts` followed by its replies, in order."""
        return [
            self._public(m)
            for m in self._store.get(channel, [])
            if m["ts"] == ts or m.get("thread_ts") == ts
        ]

    def api_calls(self, method: str) -> int:
        """How many HTTP requests reached `method` (retries included)."""
        return len(self.paths(f"/api/{method}"))

    async def push_envelope(
        self,
        payload_type: str,
        payload: dict[str, Any],
        *,
        envelope_id: str | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        within: float = 3.0,
    ) -> str:
        """Send one Socket Mode envelope to the connected app; returns its envelope_id."""
        await asyncio.wait_for(self._connected.wait(), within)
        envelope_id = envelope_id or str(uuid.uuid4())
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "payload": payload,
            "type": payload_type,
            # Slack lets the app answer slash commands and interactions in the ack itself.
            "accepts_response_payload": payload_type in ("slash_commands", "interactive"),
        }
        if payload_type == "events_api":
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        live = [ws for ws in self._sockets if not ws.closed]
        if not live:
            raise RuntimeError("no Socket Mode connection is open")
        await live[-1].send_str(json.dumps(envelope))
        return envelope_id

    async def wait_for_ack(self, envelope_id: str, within: float = 3.0) -> dict[str, Any]:
        """The ack the app sent for `envelope_id` (waits up to `within` seconds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            for ack in self.acks:
                if ack.get("envelope_id") == envelope_id:
                    return ack
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no ack for envelope {envelope_id}")
            self._ack_event.clear()
            try:
                await asyncio.wait_for(self._ack_event.wait(), remaining)
            except TimeoutError:
                pass

    async def close_sockets(self) -> None:
        for ws in list(self._sockets):
            if not ws.closed:
                await ws.close()
        self._connected.clear()

    async def stop(self) -> None:
        # Open WebSockets would hold the runner's shutdown until its timeout.
        await self.close_sockets()
        await super().stop()

    # ----------------------------------------------------------------- routes

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)

    def _public(self, m: dict[str, Any]) -> dict[str, Any]:
        return {k: m.get(k) for k in ("ts", "thread_ts", "text", "blocks", "metadata")}

    def _new_ts(self) -> str:
        value = self._next_ts
        self._next_ts += 100
        return f"{value // 1_000_000}.{value % 1_000_000:06d}"

    def _find(self, channel: str, ts: str) -> dict[str, Any] | None:
        for m in self._store.get(channel, []):
            if m["ts"] == ts:
                return m
        return None

    @staticmethod
    def _pop_fault(queue: list[tuple[str | None, int]], method: str) -> int | None:
        for i, (wanted, value) in enumerate(queue):
            if wanted is None or wanted == method:
                del queue[i]
                return value
        return None

    async def _params(self, request: web.Request) -> dict[str, Any]:
        """Query string, then a form or JSON body, merged the way Slack reads them."""
        params: dict[str, Any] = dict(request.query)
        body = await request.read()
        if body:
            if request.content_type == "application/json":
                data = json.loads(body)
                if isinstance(data, dict):
                    params.update(data)
            else:
                params.update(parse_qsl(body.decode(), keep_blank_values=True))
        return {k: _maybe_json(v) for k, v in params.items() if v is not None}

    def _token(self, request: web.Request, params: dict[str, Any]) -> str:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer ") :]
        return str(params.get("token", ""))

    @staticmethod
    def _ok(**data: Any) -> web.Response:
        return web.json_response({"ok": True, **data})

    @staticmethod
    def _error(error: str, **extra: Any) -> web.Response:
        # Slack reports API errors with HTTP 200 and ok=false.
        return web.json_response({"ok": False, "error": error, **extra})

    @staticmethod
    def _html_error(status: int) -> web.Response:
        return web.Response(
            status=status,
            text=f"<html><body><h1>{status} Server Error</h1></body></html>",
            content_type="text/html",
        )

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        now = asyncio.get_running_loop().time()
        early = self._limited_until.pop(method, now) - now
        if early > _CLOCK_SLACK:
            self.too_early.append((method, early))
        if self.latency:
            await asyncio.sleep(self.latency)
        retry_after = self._pop_fault(self._rate_limits, method)
        if retry_after is not None:
            self._limited_until[method] = asyncio.get_running_loop().time() + retry_after
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(retry_after)},
            )
        status = self._pop_fault(self._server_errors, method)
        if status is not None:
            return self._html_error(status)
        raw = next((r for r in self._raw if r[0] == method), None)
        if raw is not None:
            self._raw.remove(raw)
            return web.Response(status=raw[1], body=raw[2].encode(), content_type=raw[3])

        params = await self._params(request)
        token = self._token(request, params)
        if method == "apps.connections.open":
            if token != self.app_token:
                return self._error("invalid_auth")
            if self.socket_down:
                self.refused_reconnects += 1
                return self._error("internal_error")
            return self._ok(url=f"ws://{request.host}/socket")
        if token != self.token:
            return self._error("not_authed" if not token else "invalid_auth")

        handler = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "conversations.replies": self._replies,
            "conversations.history": self._history,
            "chat.startStream": self._start_stream,
            "chat.appendStream": self._append_stream,
            "chat.stopStream": self._stop_stream,
            "chat.delete": self._delete,
            "assistant.threads.setStatus": self._set_status,
            "files.getUploadURLExternal": self._upload_url,
            "files.completeUploadExternal": self._complete_upload,
            "chat.getPermalink": self._permalink,
        }.get(method)
        if handler is None:
            return self._error("unknown_method")
        return await handler(request, params)

    async def _upload_url(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        filename, length = params.get("filename"), str(params.get("length") or "")
        if not filename or not length.isdigit():
            return self._error("invalid_arguments")
        file_id = f"F{len(self._pending_files) + len(self.uploads) + 1:09d}"
        self._pending_files[file_id] = {"id": file_id, "filename": filename, "length": int(length)}
        return self._ok(upload_url=f"http://{request.host}/upload/{file_id}", file_id=file_id)

    async def _upload(self, request: web.Request) -> web.Response:
        pending = self._pending_files.get(request.match_info["file_id"])
        if pending is None:
            return web.Response(status=404, text="unknown upload")
        pending["data"] = await request.read()
        return web.Response(text=f"OK - {len(pending['data'])}")

    async def _complete_upload(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        files = params.get("files")
        if not isinstance(files, list) or not files:
            return self._error("invalid_arguments")
        channel = params.get("channel_id")
        if channel is not None:
            error = self._channel_error(channel)
            if error:
                return self._error(error)
        thread_ts = params.get("thread_ts") or None
        if thread_ts is not None and (
            channel is None or self._find(channel, str(thread_ts)) is None
        ):
            return self._error("invalid_thread_ts")
        done = []
        for item in files:
            pending = self._pending_files.pop(str(item.get("id")), None)
            if pending is None or "data" not in pending:
                return self._error("file_not_found")
            if len(pending["data"]) != pending["length"]:
                return self._error("file_upload_size_mismatch")
            self.uploads.append(
                {
                    "id": pending["id"],
                    "data": pending["data"],
                    "title": item.get("title"),
                    "channel_id": channel,
                    "thread_ts": thread_ts,
                    "initial_comment": params.get("initial_comment"),
                    "ts": self._new_ts(),
                }
            )
            done.append({"id": pending["id"], "title": item.get("title") or pending["filename"]})
        return self._ok(files=done)

    def _channel_error(self, channel: Any) -> str | None:
        if not channel:
            return "channel_not_found"
        if channel in self._permanent:
            return self._permanent[channel]
        if channel not in self.channels:
            return "channel_not_found"
        if self.member_of is not None and channel not in self.member_of:
            return "not_in_channel"
        return None

    async def _auth_test(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        return self._ok(
            url="https://fake-workspace.slack.com/",
            team="Fake Workspace",
            user="digestbot",
            team_id=self.team_id,
            user_id=self.user_id,
            bot_id=self.bot_id,
            is_enterprise_install=False,
        )

    async def _post_message(
        self, request: web.Request, params: dict[str, Any]
    ) -> web.StreamResponse:
        channel = params.get("channel")
        error = self._channel_error(channel)
        if error:
            return self._error(error)
        text = params.get("text")
        blocks = params.get("blocks")
        if not text and not blocks:
            return self._error("no_text")
        if blocks is not None:
            problem = check_blocks(blocks)
            if problem:
                code, detail = problem
                return self._error(
                    code, errors=[detail], response_metadata={"messages": [f"[ERROR] {detail}"]}
                )
        metadata = params.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict)
            and isinstance(metadata.get("event_type"), str)
            and isinstance(metadata.get("event_payload"), dict)
        ):
            return self._error("invalid_metadata_format")
        thread_ts = params.get("thread_ts") or None
        if thread_ts is not None:
            parent = self._find(channel, str(thread_ts))
            if parent is None:
                return self._error("thread_not_found")
            # Slack threads are one level deep: replying to a reply joins the parent's thread.
            thread_ts = parent.get("thread_ts") or parent["ts"]

        ts = self._new_ts()
        message = {
            "type": "message",
            "user": self.user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "ts": ts,
            "thread_ts": thread_ts,
            "text": (text or "")[:MAX_TEXT],
            "blocks": blocks,
            "metadata": metadata,
        }
        self._store.setdefault(channel, []).append(message)

        if self._drops:
            mode = self._drops.pop(0)
            if mode == "500":
                return self._html_error(500)
            # Cut the TCP connection before a single response byte: to the client this is
            # indistinguishable from a post that never arrived.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=200)  # never reaches the client

        return self._ok(channel=channel, ts=ts, message=self._as_api(message, True))

    async def _update(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        channel = params.get("channel")
        error = self._channel_error(channel)
        if error:
            return self._error(error)
        message = self._find(channel, str(params.get("ts", "")))
        if message is None:
            return self._error("message_not_found")
        blocks = params.get("blocks")
        if blocks is not None:
            problem = check_blocks(blocks)
            if problem:
                return self._error(problem[0], errors=[problem[1]])
        if "text" in params:
            message["text"] = str(params["text"])[:MAX_TEXT]
        if blocks is not None:
            message["blocks"] = blocks
        if isinstance(params.get("metadata"), dict):
            message["metadata"] = params["metadata"]
        message["edited"] = True
        return self._ok(
            channel=channel,
            ts=message["ts"],
            text=message["text"],
            message=self._as_api(message, True),
        )

    @staticmethod
    def _stream_text(params: dict[str, Any]) -> str:
        """The markdown a streaming call adds: `markdown_text` and markdown_text chunks."""
        text = str(params.get("markdown_text") or "")
        for chunk in params.get("chunks") or []:
            if isinstance(chunk, dict) and chunk.get("type") == "markdown_text":
                text += str(chunk.get("text") or "")
        return text

    def _streaming_call(self, method: str, params: dict[str, Any]) -> web.Response | None:
        self.stream_calls.append((method, params, asyncio.get_running_loop().time()))
        if self.refuse_streaming:
            return self._error(self.refuse_streaming)
        error = self._channel_error(params.get("channel"))
        return self._error(error) if error else None

    async def _start_stream(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        refused = self._streaming_call("chat.startStream", params)
        if refused is not None:
            return refused
        channel = params["channel"]
        if not str(channel).startswith("D") and not (
            params.get("recipient_user_id") and params.get("recipient_team_id")
        ):
            return self._error("invalid_arguments")  # required when streaming in a channel
        parent = self._find(channel, str(params.get("thread_ts", "")))
        if parent is None:
            return self._error("thread_not_found")
        ts = self._new_ts()
        message = {
            "type": "message",
            "user": self.user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "ts": ts,
            "thread_ts": parent.get("thread_ts") or parent["ts"],
            "text": self._stream_text(params),
            "blocks": None,
            "metadata": None,
            "streaming": True,
        }
        self._store.setdefault(channel, []).append(message)
        return self._ok(channel=channel, ts=ts)

    def _streamed(self, params: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        message = self._find(params["channel"], str(params.get("ts", "")))
        if message is None:
            return None, "message_not_found"
        if not message.get("streaming"):
            return None, "message_not_in_streaming_state"
        return message, None

    def _stream_step(
        self, method: str, params: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, web.Response | None]:
        """The streamed message with this call's text appended, or the refusal to answer."""
        refused = self._streaming_call(method, params)
        if refused is not None:
            return None, refused
        message, error = self._streamed(params)
        if message is None:
            return None, self._error(error or "message_not_found")
        message["text"] += self._stream_text(params)
        return message, None

    async def _append_stream(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        message, refusal = self._stream_step("chat.appendStream", params)
        if message is None:
            assert refusal is not None
            return refusal
        return self._ok(channel=params["channel"], ts=message["ts"])

    async def _stop_stream(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        message, refusal = self._stream_step("chat.stopStream", params)
        if message is None:
            assert refusal is not None
            return refusal
        message["streaming"] = False
        if isinstance(params.get("blocks"), list):
            message["blocks"] = params["blocks"]
        if isinstance(params.get("metadata"), dict):
            message["metadata"] = params["metadata"]
        return self._ok(
            channel=params["channel"], ts=message["ts"], message=self._as_api(message, True)
        )

    async def _delete(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        channel = params.get("channel")
        error = self._channel_error(channel)
        if error:
            return self._error(error)
        message = self._find(channel, str(params.get("ts", "")))
        if message is None:
            return self._error("message_not_found")
        self._store[channel].remove(message)
        self.deleted.append(message["ts"])
        return self._ok(channel=channel, ts=message["ts"])

    async def _set_status(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        channel = str(params.get("channel_id", ""))
        # `messages_before`: how many messages the channel held when the status came, so a
        # test can tell a status set (or cleared) before the result from one after it.
        self.statuses.append({**params, "messages_before": len(self._store.get(channel, []))})
        if self.refuse_status:
            return self._error(self.refuse_status)
        error = self._channel_error(channel)
        if error:
            return self._error(error)
        if "status" not in params:
            return self._error("invalid_arguments")
        if self._find(channel, str(params.get("thread_ts", ""))) is None:
            return self._error("invalid_thread_ts")  # as Slack: the thread must exist
        return self._ok()

    def streamed(self, method: str | None = None) -> list[dict[str, Any]]:
        """The parameters of every streaming call (of `method`), in order."""
        return [p for m, p, _ in self.stream_calls if method is None or m == method]

    async def _permalink(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        channel, ts = str(params.get("channel")), str(params.get("message_ts", ""))
        if self._find(channel, ts) is None:
            return self._error("message_not_found")
        link = f"https://fake-workspace.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        return self._ok(channel=channel, permalink=link)

    async def _post_ephemeral(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        channel = params.get("channel")
        error = self._channel_error(channel)
        if error:
            return self._error(error)
        if not params.get("user"):
            return self._error("user_not_in_channel")
        if not params.get("text") and not params.get("blocks"):
            return self._error("no_text")
        message_ts = self._new_ts()
        self.ephemerals.append(
            {
                "channel": channel,
                "user": params["user"],
                "text": params.get("text"),
                "blocks": params.get("blocks"),
                "thread_ts": params.get("thread_ts"),
                "message_ts": message_ts,
            }
        )
        return self._ok(message_ts=message_ts)

    def _as_api(self, m: dict[str, Any], with_metadata: bool) -> dict[str, Any]:
        """A stored message as conversations.* returns it."""
        out: dict[str, Any] = {
            "type": "message",
            "user": m["user"],
            "bot_id": m["bot_id"],
            "app_id": m["app_id"],
            "text": m["text"],
            "ts": m["ts"],
            "team": self.team_id,
        }
        if m.get("blocks") is not None:
            out["blocks"] = m["blocks"]
        if m.get("thread_ts"):
            out["thread_ts"] = m["thread_ts"]
            out["parent_user_id"] = self.user_id
        if m.get("edited"):
            out["edited"] = {"user": self.user_id, "ts": m["ts"]}
        if with_metadata and m.get("metadata") is not None:
            out["metadata"] = m["metadata"]
        return out

    @staticmethod
    def _page(items: list[Any], params: dict[str, Any], default: int) -> tuple[list[Any], str]:
        try:
            limit = max(1, min(int(params.get("limit") or default), 1000))
            start = int(params.get("cursor") or 0)
        except ValueError:
            limit, start = default, 0
        chunk = items[start : start + limit]
        nxt = str(start + limit) if start + limit < len(items) else ""
        return chunk, nxt

    async def _replies(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        channel = params.get("channel")
        error = self._channel_error(channel)
        if error:
            return self._error(error)
        parent = self._find(channel, str(params.get("ts", "")))
        if parent is None:
            return self._error("thread_not_found")
        root_ts = parent.get("thread_ts") or parent["ts"]
        with_meta = _truthy(params.get("include_all_metadata", ""))
        thread = [
            m
            for m in self._store.get(channel, [])
            if m["ts"] == root_ts or m.get("thread_ts") == root_ts
        ]
        out = [self._as_api(m, with_meta) for m in thread]
        if out and len(out) > 1:
            out[0]["thread_ts"] = root_ts
            out[0]["reply_count"] = len(out) - 1
            out[0].pop("parent_user_id", None)
        page, nxt = self._page(out, params, 1000)
        return self._ok(messages=page, has_more=bool(nxt), response_metadata={"next_cursor": nxt})

    async def _history(self, request: web.Request, params: dict[str, Any]) -> web.Response:
        channel = params.get("channel")
        error = self._channel_error(channel)
        if error:
            return self._error(error)
        with_meta = _truthy(params.get("include_all_metadata", ""))
        # Top-level messages only, newest first, as Slack returns them.
        roots = [m for m in self._store.get(channel, []) if not m.get("thread_ts")]
        out = [self._as_api(m, with_meta) for m in reversed(roots)]
        page, nxt = self._page(out, params, 100)
        return self._ok(messages=page, has_more=bool(nxt), response_metadata={"next_cursor": nxt})

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if self.socket_down:
            self.refused_reconnects += 1
            return web.Response(status=503, text="Socket Mode is down")
        # autoping answers the SDK's "sdk-ping-pong:<t>" pings with the same data, which is
        # how it decides the connection is alive.
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len([s for s in self._sockets if not s.closed]),
                    "debug_info": {
                        "host": "fake-slack",
                        "build_number": 1,
                        "approximate_connection_time": 18060,
                    },
                    "connection_info": {"app_id": self.app_id},
                }
            )
        )
        self._connected.set()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(data, dict) and "envelope_id" in data:
                    self.acks.append(data)
                    self._ack_event.set()
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
            if not any(not s.closed for s in self._sockets):
                self._connected.clear()
        return ws
