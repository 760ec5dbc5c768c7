"""A fake OpenAI-compatible Chat Completions server, served over real loopback HTTP.

The openai package 3.x talks through httpx2, which transport mocks cannot reach, so tests point
the real client at this server (`base_url=fake.url + "/v1"`). Replies copy the shape of the
recorded completions in tests/fixtures/openai/. Faults are scripted per request with
`fail_next`; what an endpoint supports (json_schema, json_object, max_tokens) is a knob.

Responder contract: `responder(request_json)` returns the reply content as a string, or a
dict for anything else:
  {"content": str | None, "refusal": str | None, "finish_reason": str}  a completion
  {"status": int, "json": obj} or {"status": int, "text": str}, optional "headers"  an error
  {"raw": obj}  served verbatim as a 200 JSON body (e.g. a recorded fixture)

Streaming: a request with `"stream": true` is answered as Server-Sent Events shaped like the
recorded `tests/fixtures/openai/stream_*.sse.txt` (a role chunk, content chunks, a finish
chunk, then, with `stream_options.include_usage`, a usage-only chunk with `choices: []`, and
`data: [DONE]`). `stream_first_token` delays the first content chunk; the rest are spread
over `stream_duration` seconds, like a model writing, `stream_words_per_chunk` words a chunk
(one, like a model's tokens; more keeps a long answer's client-side parsing cheap in tests that
only need it to arrive in many pieces), with `stream_pause_after_first` seconds after the first
chunk (a model that writes its first words, then thinks). `stream_body` serves recorded SSE bytes
verbatim instead. `content_chunks_at` records when each content chunk left (loop time).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fakes.base import FakeServer

CHAT_PATH = "/v1/chat/completions"
DEFAULT_TEXT = "This is a fixed answer from the fake LLM."
REFUSAL_TEXT = "I'm very sorry, but I can't assist with that."  # as in the recorded refusal

FAULT_KINDS = frozenset(
    {
        "429",
        "500",
        "502_html",
        "401",
        "hang",
        "truncated",
        "refusal",
        "blank",
        "fenced",
        "reject_json_schema",
        "context_length",
    }
)

_BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def default_responder(request: dict[str, Any]) -> str | dict[str, Any]:
    return DEFAULT_TEXT


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def mask_key(key: str) -> str:
    """How OpenAI echoes a wrong key in its 401 message: the first and last characters."""
    return f"{key[:7]}{'*' * max(3, len(key) - 11)}{key[-4:]}" if len(key) > 11 else "***"


@dataclass
class _Fault:
    kind: str
    opts: dict[str, Any]


@dataclass
class FakeLLM(FakeServer):
    responder: Callable[[dict[str, Any]], str | dict[str, Any]] = default_responder
    supports_json_schema: bool = True
    supports_json_object: bool = True
    accepts_max_tokens: bool = True  # False: answer like OpenAI's reasoning models do
    require_json_word: bool = True  # json_object needs "json" in the messages, as on OpenAI
    latency: float = 0.0
    model: str = "gpt-4o-2024-08-06"
    # Streamed answers: seconds to the first content chunk, and over which the rest are spread.
    stream_first_token: float = 0.0
    stream_duration: float = 0.0
    stream_words_per_chunk: int = 1
    stream_pause_after_first: float = 0.0
    stream_body: bytes | None = None  # recorded SSE served verbatim to a streamed request
    content_chunks_at: list[float] = field(default_factory=list)
    # Prompt caching as OpenAI reports it: the longest prefix shared with an earlier request,
    # in tokens (~4 chars each), counted only from cache_min_tokens up and in whole blocks
    # (OpenAI: 1024 and 128). The defaults count any shared prefix, so small tests see it.
    cache_min_tokens: int = 0
    cache_block_tokens: int = 1
    cache_window: int = 64  # how many earlier requests the cache remembers
    _seen: deque[str] = field(default_factory=deque)
    in_flight: int = 0
    max_in_flight: int = 0
    answered: int = 0  # chat completion requests answered so far (any status)
    _faults: deque[_Fault] = field(default_factory=deque)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _hurry: asyncio.Event = field(default_factory=asyncio.Event)  # set: latency is over
    _ids: itertools.count = field(default_factory=itertools.count)

    def routes(self, app: web.Application) -> None:
        app.router.add_post(CHAT_PATH, self._chat)

    def fail_next(self, kind: str, times: int = 1, **opts: Any) -> None:
        """Script a fault for each of the next `times` requests (after capability checks).

        429: retry_after (seconds, header), retry_after_ms, code (rate_limit_exceeded |
        insufficient_quota). blank: content (default whitespace). hang: seconds (default 60).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {sorted(FAULT_KINDS)}")
        for _ in range(times):
            self._faults.append(_Fault(kind, opts))

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The parsed JSON of every chat completion request, in order."""
        return [r.json() for r in self.requests if r.method == "POST" and r.path == CHAT_PATH]

    def answer_now(self) -> None:
        """End the latency wait of every request in flight and to come: a test that holds the
        model with a long latency until it has checked what happened meanwhile lets it go."""
        self._hurry.set()

    async def stop(self) -> None:
        self._release.set()  # let hung handlers finish so the runner can shut down
        self._hurry.set()  # and requests still sitting out their latency
        await super().stop()

    # -- handling ------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self.latency)
            response = await self._answer(body, request.headers.get("Authorization", ""))
            if isinstance(response, _Deferred):
                response = await response.writer(request)
            self.answered += 1
            return response
        finally:
            self.in_flight -= 1

    async def _answer(self, body: dict[str, Any], authorization: str) -> web.StreamResponse:
        rejected = self._capability_error(body)
        if rejected is not None:
            return rejected
        fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            reply = await self._fault_reply(fault, body, authorization)
            if reply is not None:
                return reply
        return self._reply(body, self.responder(body))

    def _capability_error(self, body: dict[str, Any]) -> web.Response | None:
        fmt = (body.get("response_format") or {}).get("type")
        if fmt == "json_schema" and not self.supports_json_schema:
            return _reject_format("json_schema")
        if fmt == "json_object" and not self.supports_json_object:
            return _reject_format("json_object")
        if fmt == "json_object" and self.require_json_word and "json" not in _prompt(body).lower():
            message = (
                "'messages' must contain the word 'json' in some form, to use 'response_format'"
                " of type 'json_object'."
            )
            return web.json_response(
                error_body(message, "invalid_request_error", "messages"), status=400
            )
        if "max_tokens" in body and not self.accepts_max_tokens:
            message = (
                "Unsupported parameter: 'max_tokens' is not supported with this model."
                " Use 'max_completion_tokens' instead."
            )
            return web.json_response(
                error_body(message, "invalid_request_error", "max_tokens", "unsupported_parameter"),
                status=400,
            )
        return None

    async def _fault_reply(
        self, fault: _Fault, body: dict[str, Any], authorization: str
    ) -> web.StreamResponse | None:
        kind, opts = fault.kind, fault.opts
        if kind == "429":
            return _rate_limited(opts)
        if kind == "500":
            body_500 = error_body(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
            return web.json_response(body_500, status=500)
        if kind == "502_html":
            return web.Response(text=_BAD_GATEWAY_HTML, status=502, content_type="text/html")
        if kind == "401":
            key = authorization.removeprefix("Bearer ").strip()
            message = (
                f"Incorrect API key provided: {opts.get('masked') or mask_key(key)}. You can find"
                " your API key at https://platform.openai.com/account/api-keys."
            )
            return web.json_response(
                error_body(message, "invalid_request_error", None, "invalid_api_key"), status=401
            )
        if kind == "context_length":
            message = (
                "This model's maximum context length is 128000 tokens. However, your messages"
                " resulted in 131072 tokens. Please reduce the length of the messages."
            )
            return web.json_response(
                error_body(message, "invalid_request_error", "messages", "context_length_exceeded"),
                status=400,
            )
        if kind == "hang":
            try:
                await asyncio.wait_for(self._release.wait(), opts.get("seconds", 60.0))
            except TimeoutError:
                pass
            return web.json_response(
                error_body("hung request released", "server_error"), status=504
            )
        if kind == "reject_json_schema":
            fmt = (body.get("response_format") or {}).get("type")
            return _reject_format("json_schema") if fmt == "json_schema" else None
        return self._content_fault(kind, opts, body)

    def _content_fault(self, kind: str, opts: dict[str, Any], body: dict[str, Any]) -> web.Response:
        if kind == "truncated":
            return self._reply(body, {"content": '{"', "finish_reason": "length"})
        if kind == "refusal":
            return self._reply(body, {"content": None, "refusal": opts.get("text", REFUSAL_TEXT)})
        if kind == "blank":
            return self._reply(body, {"content": opts.get("content", "  \n")})
        # fenced: what the responder would have said, wrapped the way chatty models do
        reply = self.responder(body)
        content = reply if isinstance(reply, str) else str(reply.get("content") or "")
        return self._reply(body, {"content": f"```json\n{content}\n```"})

    def _reply(self, body: dict[str, Any], reply: str | dict[str, Any]) -> web.StreamResponse:
        if isinstance(reply, str):
            reply = {"content": reply}
        if "raw" in reply:
            return web.json_response(reply["raw"])
        if "status" in reply:
            headers = reply.get("headers")
            if "json" in reply:
                return web.json_response(reply["json"], status=reply["status"], headers=headers)
            return web.Response(text=reply.get("text", ""), status=reply["status"], headers=headers)
        completion = self._completion(body, reply)
        if body.get("stream"):
            return _Deferred(lambda request: self._stream(request, body, completion))
        return web.json_response(completion)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], completion: dict[str, Any]
    ) -> web.StreamResponse:
        """The completion as SSE chunks, written over time like a model writes."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if self.stream_body is not None:
            await response.write(self.stream_body)
            await response.write_eof()
            return response
        choice = completion["choices"][0]
        message = choice["message"]
        head = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
        head["object"] = "chat.completion.chunk"

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            chunk = {**head, "choices": choices, **extra}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        def delta(d: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]

        await send(delta({"role": "assistant", "content": "", "refusal": None}))
        words = re.findall(r"\s*\S+", message["content"] or "") or []
        size = max(1, self.stream_words_per_chunk)
        pieces = ["".join(words[i : i + size]) for i in range(0, len(words), size)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.stream_first_token:
            await asyncio.sleep(self.stream_first_token)
        step = self.stream_duration / max(1, len(pieces) - 1) if self.stream_duration else 0.0
        for i, piece in enumerate(pieces):
            due = start + self.stream_first_token + i * step
            if i:
                due += self.stream_pause_after_first
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            self.content_chunks_at.append(loop.time())
            await send(delta({"content": piece}))
        if message.get("refusal"):
            await send(delta({"refusal": message["refusal"]}))
        await send(delta({}, choice["finish_reason"]))
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=completion["usage"])
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _completion(self, body: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
        content = reply.get("content")
        refusal = reply.get("refusal")
        prompt_tokens = max(1, len(_prompt(body)) // 4)
        completion_tokens = len(content or refusal or "") // 4
        cached_tokens = min(prompt_tokens, self._cached_tokens(body))
        return {
            "id": f"chatcmpl-fake{next(self._ids):06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "logprobs": None,
                    "finish_reason": reply.get("finish_reason", "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            "system_fingerprint": "fp_fake",
        }

    def _cached_tokens(self, body: dict[str, Any]) -> int:
        """Tokens of the longest prefix this request shares with one of the recent ones."""
        text = _serialized(body)
        shared = max((_common_prefix(text, seen) for seen in self._seen), default=0)
        self._seen.append(text)
        while len(self._seen) > self.cache_window:
            self._seen.popleft()
        tokens = shared // 4
        if tokens < self.cache_min_tokens:
            return 0
        return tokens - tokens % max(1, self.cache_block_tokens)


def _serialized(body: dict[str, Any]) -> str:
    """The request as a provider's cache sees it: every message, role and text, in order."""
    return "".join(
        f"<|{m.get('role')}|>{m.get('content')}<|end|>" for m in body.get("messages", [])
    )


def _common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def _prompt(body: dict[str, Any]) -> str:
    """All message text of a request, for the token estimate and the "json" word check."""
    parts: list[str] = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content parts
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


class _Deferred(web.Response):
    """A streamed answer, written by the handler after `_reply` chose it."""

    def __init__(self, writer: Any) -> None:
        super().__init__()
        self.writer = writer


def _reject_format(fmt: str) -> web.Response:
    return web.json_response(
        error_body(
            f"response_format {fmt} is not supported", "invalid_request_error", "response_format"
        ),
        status=400,
    )


def _rate_limited(opts: dict[str, Any]) -> web.Response:
    code = opts.get("code", "rate_limit_exceeded")
    if code == "insufficient_quota":
        body = error_body(
            "You exceeded your current quota, please check your plan and billing details. For"
            " more information on this error, read the docs:"
            " https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            None,
            "insufficient_quota",
        )
    else:
        body = error_body(
            "Rate limit reached for gpt-4o in organization org-fake on tokens per min (TPM):"
            " Limit 30000, Used 29500, Requested 1200. Please try again in 1.4s. Visit"
            " https://platform.openai.com/account/rate-limits to learn more.",
            "tokens",
            None,
            code,
        )
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "0"}
    if opts.get("retry_after") is not None:
        headers["retry-after"] = str(opts["retry_after"])
    if opts.get("retry_after_ms") is not None:
        headers["retry-after-ms"] = str(opts["retry_after_ms"])
    return web.json_response(body, status=429, headers=headers)
