"""The one door to the LLM: an OpenAI-compatible Chat Completions client with bounded failure.

Every call ends in a value or an `LLMError` within `timeout_seconds × attempts` (plus short
backoffs). Retries follow the one policy (digest_core.retry) and are the only layer: the
openai package's own retries are off, because its rules would wait out any 429 (even
insufficient_quota, or a Retry-After of an hour) and hide the attempts we count and record. Structured output walks a ladder (json_schema → json_object → schema in the prompt)
and remembers the rung an endpoint accepts. Whatever the server promises, the JSON is parsed
and validated here. A plain completion can be streamed (`text(on_delta=…)`): the text reaches
the caller as the model writes it, and the call still ends in one `LLMResult`; once text was
shown, a failure is final (a retry would show a second, different beginning). Errors carry a short reason safe to show in a chat message: never the key,
never a response body (OpenAI's 401 message echoes a masked key).

This is the only module in the project that imports openai, and it does so on the first LLM
request, in a worker thread: the package builds some 700 pydantic models when imported (about a
CPU-second), which a run that makes no LLM call (no key, a cached re-run, `serve` before its
first question) skips, and which must not stall the event loop (its timers and sockets: Slack's
acks, the deep dive's concurrent link lookups) when it does happen.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2

from digest_core.config import LLMSettings
from digest_core.proxy import RoutedHttpx2Transport
from digest_core.retry import RetryPolicy, retry_after, time_left

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

T = TypeVar("T")

# Structured-output rungs, strictest first. "text" is the plain completion of `text()`.
MODES: tuple[str, ...] = ("json_schema", "json_object", "prompt")

_NOTE_CHARS = 200  # how much of a validator's complaint goes back to the model

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_SAFE_CODE = re.compile(r"[a-z0-9_.-]{1,40}")
_FORMAT_WORDS = re.compile(r"response_format|json_schema|json_object|schema", re.IGNORECASE)


class LLMError(Exception):
    """A call failed after its bounded retries. `str()` is short and safe to post in a chat.

    `kind` is one of: timeout, rate_limit, quota, auth, server, bad_request, refusal,
    truncated, invalid, blank, connection.
    """

    def __init__(self, reason: str, kind: str, *, attempts: int = 1) -> None:
        super().__init__(reason)
        self.kind = kind
        self.attempts = attempts


@dataclass
class LLMCall:
    """What the store keeps about one call (all attempts together)."""

    purpose: str
    model: str
    prompt_version: str
    mode: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    outcome: str  # "ok" or "error:<kind>"
    attempts: int
    started_at: str  # ISO 8601 UTC, seconds
    cached_tokens: int = 0  # prompt tokens the provider served from its prompt cache
    # Names this call for later notes on it (the number guard's counts, see
    # LLMClient.record_grounding); the LLMResult of a successful call carries the same id.
    call_id: str = ""


@dataclass
class LLMResult:
    """A successful call. Token counts cover every attempt, since each one was billed."""

    content: str
    data: object | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    mode: str
    cached_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache
    call_id: str = ""

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class _Failure(Exception):
    """One attempt went wrong. The loop in `_call` decides whether to try again."""

    def __init__(
        self,
        kind: str,
        reason: str,
        *,
        retry: bool = False,
        wait: float | None = None,
        note: str | None = None,
        downgrade: bool = False,
        use_completion_tokens: bool = False,
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry = retry
        self.wait = wait  # seconds the server asked for, if it did
        self.note = note  # appended to the prompt on the next attempt
        self.downgrade = downgrade  # the endpoint rejected this response_format
        self.use_completion_tokens = use_completion_tokens  # it wants max_completion_tokens
        self.validation = False  # the JSON parsed but the caller's validator refused it

    def describe(self, attempts: int) -> str:
        if attempts <= 1:
            return self.reason
        if " after " in self.reason:  # "timed out after 120 s" reads badly with a second "after"
            return f"{self.reason} ({attempts} attempts)"
        return f"{self.reason} after {attempts} attempts"


@dataclass
class _Tally:
    """Running totals over the attempts of one call."""

    started: float
    started_at: str
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def add_usage(self, completion: Any) -> None:
        usage = getattr(completion, "usage", None)
        self.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
        self.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
        # OpenAI (and compatible servers that cache) report the cached part of the prompt
        # here; servers without a cache leave it out.
        details = getattr(usage, "prompt_tokens_details", None)
        self.cached_tokens += int(getattr(details, "cached_tokens", 0) or 0)


class LLMClient:
    """Async client for one OpenAI-compatible endpoint, shared by scoring, analysis and Q&A."""

    def __init__(
        self,
        settings: LLMSettings,
        on_call: Callable[[LLMCall], None] | None = None,
        *,
        on_grounding: Callable[[str, int, int], None] | None = None,
        backoff_base: float | None = None,
        retry_after_cap: float | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if settings.api_key is None or not settings.api_key.get():
            raise ValueError("LLMClient needs settings.api_key (check settings.enabled first)")
        self.settings = settings
        self.on_call = on_call
        self.on_grounding = on_grounding
        attempts = settings.max_retries + 1
        policy = RetryPolicy.from_settings(
            settings.retry,
            attempts=attempts,
            # Every attempt's own deadline, plus the waits between them at their longest.
            deadline=settings.timeout_seconds * attempts
            + settings.retry.max_retry_after_seconds * settings.max_retries,
        )
        if backoff_base is not None:
            policy = policy.with_(backoff_base=backoff_base)
        if retry_after_cap is not None:
            policy = policy.with_(retry_after_cap=retry_after_cap)
        self.policy = policy
        # A longer server-requested wait fails fast instead of stalling a job.
        self.retry_after_cap = policy.retry_after_cap
        self._sleep = sleep or asyncio.sleep
        self._client: openai.AsyncOpenAI | None = None
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        mode = settings.structured_output
        self._mode_index = MODES.index("json_schema" if mode == "auto" else mode)
        # Compatible servers read max_tokens; some OpenAI models refuse it (see _call).
        self._token_param = "max_tokens"

    @property
    def mode(self) -> str:
        """The structured-output rung the next `json()` call starts on."""
        return MODES[self._mode_index]

    async def json(
        self,
        *,
        system: str,
        user: str,
        schema: dict[str, Any],
        schema_name: str,
        purpose: str,
        prompt_version: str,
        max_tokens: int,
        validate: Callable[[object], T] | None = None,
    ) -> tuple[T | object, LLMResult]:
        """Ask for JSON matching `schema`; return `(validate(data) or data, result)`.

        `validate` raises ValueError on data the caller cannot use; the model then gets one
        more try with the complaint appended.
        """
        mode_index = self._mode_index

        def request(note: str | None) -> dict[str, Any]:
            return self._json_request(
                MODES[mode_index], system, user, schema, schema_name, max_tokens, note
            )

        def on_downgrade() -> bool:
            nonlocal mode_index
            if mode_index + 1 >= len(MODES):
                return False
            mode_index += 1
            self._lower_mode(mode_index)
            return True

        def parse(completion: Any) -> tuple[object, str]:
            content = _json_content(completion)
            data = _parse_json(content)
            if validate is not None:
                data = _validated(validate, data)
            return data, content

        return await self._call(
            purpose=purpose,
            prompt_version=prompt_version,
            mode=lambda: MODES[mode_index],
            request=request,
            parse=parse,
            on_downgrade=on_downgrade,
        )

    async def text(
        self,
        *,
        system: str,
        messages: list[dict[str, Any]] | None = None,
        user: str | None = None,
        purpose: str,
        prompt_version: str,
        max_tokens: int,
        on_delta: Callable[[str], Awaitable[None]] | None = None,
    ) -> LLMResult:
        """A plain completion. `messages` are earlier turns (user/assistant) after the system
        prompt; `user` is appended last. A reply cut at `max_tokens` is returned as it is.

        With `on_delta` the completion is streamed and `on_delta` is awaited with each new
        piece of visible text (reasoning in `<think>` is held back); the result is the same
        as without it."""
        turns = [{"role": "system", "content": system}, *(messages or [])]
        if user is not None:
            turns.append({"role": "user", "content": user})
        if len(turns) == 1:
            raise ValueError("text() needs a user message or earlier turns")

        def request(note: str | None) -> dict[str, Any]:
            params: dict[str, Any] = {"messages": turns, self._token_param: max_tokens}
            if on_delta is not None:
                # include_usage: the last chunk (choices: []) carries the token counts.
                params["stream"] = True
                params["stream_options"] = {"include_usage": True}
            return params

        def parse(completion: Any) -> tuple[object, str]:
            return None, _text_content(completion)

        _, result = await self._call(
            purpose=purpose,
            prompt_version=prompt_version,
            mode=lambda: "text",
            request=request,
            parse=parse,
            on_downgrade=lambda: False,
            on_delta=on_delta,
        )
        return result

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- the retry loop ------------------------------------------------------------------------

    async def _call(
        self,
        *,
        purpose: str,
        prompt_version: str,
        mode: Callable[[], str],
        request: Callable[[str | None], dict[str, Any]],
        parse: Callable[[Any], tuple[object, str]],
        on_downgrade: Callable[[], bool],
        on_delta: Callable[[str], Awaitable[None]] | None = None,
    ) -> tuple[Any, LLMResult]:
        tally = _Tally(time.monotonic(), datetime.now(UTC).isoformat(timespec="seconds"))
        validation_retried = False
        note: str | None = None
        shown = _Shown(on_delta)

        async def attempt(_: int) -> tuple[Any, object, str]:
            nonlocal validation_retried, note
            while True:
                tally.attempts += 1
                try:
                    completion = await self._attempt(request(note), shown)
                    tally.add_usage(completion)
                    data, content = parse(completion)
                    return completion, data, content
                except _Failure as failure:
                    if shown.any:
                        failure.retry = False  # the person already reads this attempt's text
                    if self._adapted(failure, on_downgrade):
                        continue  # a different request, not a repeat: no retry budget spent
                    if failure.validation:
                        # The complaint goes back to the model once; a second is final.
                        failure.retry = failure.retry and not validation_retried
                        validation_retried = True
                    note = failure.note or note
                    raise

        # A person's request bounds every attempt and wait by what is left of its deadline.
        left = time_left()
        try:
            if left is not None and left <= 0:
                raise _Failure("timeout", "LLM not asked: the request's time ran out", retry=False)
            completion, data, content = await self.policy.within(left).run(
                attempt, what=f"LLM {purpose}", retryable=_retryable, sleep=self._sleep
            )
        except _Failure as failure:
            raise self._give_up(failure, tally, purpose, prompt_version, mode()) from None
        else:
            model = str(getattr(completion, "model", "") or self.settings.model)
            result = LLMResult(
                content=content,
                data=data,
                model=model,
                prompt_tokens=tally.prompt_tokens,
                completion_tokens=tally.completion_tokens,
                mode=mode(),
                cached_tokens=tally.cached_tokens,
                call_id=tally.call_id,
            )
            self._record(tally, purpose, prompt_version, mode(), "ok")
            return data, result

    def _adapted(self, failure: _Failure, on_downgrade: Callable[[], bool]) -> bool:
        """Change the request to suit what the endpoint said it cannot take; False if no change."""
        if failure.downgrade and on_downgrade():
            return True
        if failure.use_completion_tokens and self._token_param == "max_tokens":
            self._token_param = "max_completion_tokens"
            log.warning("LLM endpoint wants max_completion_tokens; using it from now on")
            return True
        return False

    async def _attempt(self, params: dict[str, Any], shown: _Shown | None = None) -> Any:
        """One HTTP request under the concurrency cap and a total deadline (a streamed one:
        the whole stream within it)."""
        await _load_openai()
        import openai  # loaded just above; this only binds the name

        client = self._openai()
        timeout = self.settings.timeout_seconds
        left = time_left()
        if left is not None:
            timeout = max(0.001, min(timeout, left))
        async with self._semaphore:
            try:
                if params.get("stream"):
                    return await asyncio.wait_for(
                        self._streamed(client, params, shown or _Shown(None)), timeout
                    )
                return await asyncio.wait_for(
                    client.chat.completions.create(model=self.settings.model, **params),
                    timeout,
                )
            except (TimeoutError, openai.APITimeoutError):
                raise _Failure(
                    "timeout", f"LLM timed out after {timeout:g} s", retry=True
                ) from None
            except openai.APIConnectionError:
                raise _Failure(
                    "connection", "LLM unreachable (connection failed)", retry=True
                ) from None
            except openai.APIStatusError as exc:
                raise self._status_failure(exc) from None
            except openai.APIError:
                # e.g. a 200 whose body is not a completion; worth another try, never worth quoting
                raise _Failure(
                    "server", "LLM returned an unreadable response", retry=True
                ) from None

    async def _streamed(
        self, client: openai.AsyncOpenAI, params: dict[str, Any], shown: _Shown
    ) -> SimpleNamespace:
        """Read a streamed completion, passing visible text on as it comes; returns an object
        shaped like a completion (choices[0].message, finish_reason, usage, model), so the
        same reading and accounting apply as to an unstreamed call."""
        stream = await client.chat.completions.create(model=self.settings.model, **params)
        content: list[str] = []
        refusal: list[str] = []
        finish_reason: str | None = None
        usage: Any = None
        model = ""
        got_choice = False
        async for chunk in stream:
            model = getattr(chunk, "model", None) or model
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
            # The usage-only last chunk has no choices: nothing to read but the counts.
            if not chunk.choices:
                continue
            got_choice = True
            choice = chunk.choices[0]
            delta = choice.delta
            if delta is not None and getattr(delta, "refusal", None):
                refusal.append(delta.refusal)
            if delta is not None and delta.content:
                content.append(delta.content)
                await shown.update("".join(content))
            if choice.finish_reason:
                finish_reason = choice.finish_reason
        message = SimpleNamespace(
            content="".join(content), refusal="".join(refusal) or None, role="assistant"
        )
        choices = [SimpleNamespace(message=message, finish_reason=finish_reason)]
        return SimpleNamespace(
            choices=choices if got_choice else [], usage=usage, model=model or None
        )

    def _status_failure(self, exc: openai.APIStatusError) -> _Failure:
        """Map an HTTP error to a decision. Reads the body's code/param, never quotes it."""
        status = exc.status_code
        code = _safe_code(exc.code) or _safe_code(getattr(exc, "type", None))
        message = exc.message or ""
        if status in (400, 404, 422, 501) and (
            exc.param == "response_format" or _FORMAT_WORDS.search(message)
        ):
            return _Failure(
                "bad_request", f"LLM rejected response_format ({status})", downgrade=True
            )
        if status == 400 and (exc.param == "max_tokens" or "max_completion_tokens" in message):
            return _Failure(
                "bad_request", "LLM rejected max_tokens (400)", use_completion_tokens=True
            )
        if status == 401:
            return _Failure("auth", "LLM authentication failed (401)")
        if status == 403:
            return _Failure("auth", "LLM access denied (403)")
        if status == 429:
            return self._rate_limit_failure(exc)
        if status >= 500 or status in (408, 409):
            wait = retry_after(exc.response.headers)
            if self.policy.refuses(wait):
                return _Failure("server", f"LLM unavailable ({status}); asked to wait {wait:.0f} s")
            kind = "timeout" if status == 408 else "server"
            return _Failure(kind, f"LLM server error ({status})", retry=True, wait=wait)
        if code == "context_length_exceeded":
            return _Failure("bad_request", "LLM rejected the request: input too long (400)")
        detail = f"{status} {code}" if code else str(status)
        return _Failure("bad_request", f"LLM rejected the request ({detail})")

    def _rate_limit_failure(self, exc: openai.APIStatusError) -> _Failure:
        # openai-python retries insufficient_quota like any 429; waiting never fixes billing.
        if "insufficient_quota" in (exc.code, getattr(exc, "type", None)):
            return _Failure("quota", "LLM quota exhausted (429 insufficient_quota)")
        wait = retry_after(exc.response.headers)
        if self.policy.refuses(wait):
            return _Failure("rate_limit", f"LLM rate-limited (429); asked to wait {wait:.0f} s")
        return _Failure("rate_limit", "LLM rate-limited (429)", retry=True, wait=wait)

    def _give_up(
        self, failure: _Failure, tally: _Tally, purpose: str, prompt_version: str, mode: str
    ) -> LLMError:
        self._record(tally, purpose, prompt_version, mode, f"error:{failure.kind}")
        # The chained openai error quotes the response body (a 401 echoes a masked key); error
        # reporters walk __context__ even when a traceback hides it.
        failure.__context__ = None
        reason = failure.describe(tally.attempts)
        log.warning("LLM %s failed: %s", purpose, reason)
        return LLMError(reason, failure.kind, attempts=tally.attempts)

    def _record(
        self, tally: _Tally, purpose: str, prompt_version: str, mode: str, outcome: str
    ) -> None:
        if self.on_call is None:
            return
        call = LLMCall(
            purpose=purpose,
            model=self.settings.model,
            prompt_version=prompt_version,
            mode=mode,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
            latency_s=round(time.monotonic() - tally.started, 3),
            outcome=outcome,
            attempts=tally.attempts,
            started_at=tally.started_at,
            cached_tokens=tally.cached_tokens,
            call_id=tally.call_id,
        )
        try:
            self.on_call(call)
        except Exception as exc:  # a bookkeeping failure must not discard a paid-for answer
            log.warning("recording an LLM call failed: %s", type(exc).__name__)

    def record_grounding(self, result: LLMResult, checked: int, unverified: int) -> None:
        """Note on the call that produced `result` how many of the numbers and citations in
        its text the number guard checked, and how many it could not find."""
        if self.on_grounding is None or not result.call_id:
            return
        try:
            self.on_grounding(result.call_id, checked, unverified)
        except Exception as exc:  # bookkeeping again: never lose the answer over it
            log.warning("recording the number guard's counts failed: %s", type(exc).__name__)

    # -- requests --------------------------------------------------------------------------------

    def _json_request(
        self,
        mode: str,
        system: str,
        user: str,
        schema: dict[str, Any],
        schema_name: str,
        max_tokens: int,
        note: str | None,
    ) -> dict[str, Any]:
        if mode != "json_schema":
            # json_object needs the word "JSON" in the prompt (DeepSeek, OpenAI); the prompt
            # rung has nothing else to go on.
            system = f"{system}\n\n{_schema_instruction(schema)}"
        if note:
            user = f"{user}\n\n{note}"
        params: dict[str, Any] = {
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            self._token_param: max_tokens,
        }
        if mode == "json_schema":
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": schema, "strict": True},
            }
        elif mode == "json_object":
            params["response_format"] = {"type": "json_object"}
        return params

    def _lower_mode(self, index: int) -> None:
        """Remember a rejected rung for later calls. Only ever moves down the ladder."""
        if index > self._mode_index:
            self._mode_index = index
            log.warning(
                "LLM endpoint rejected structured output; using %s from now on", MODES[index]
            )

    def _openai(self) -> openai.AsyncOpenAI:
        if self._client is None:
            import openai  # loaded by _load_openai(): see the module docstring

            assert self.settings.api_key is not None
            self._client = openai.AsyncOpenAI(
                api_key=self.settings.api_key.get(),
                base_url=self.settings.base_url,
                max_retries=0,  # ours are counted and bounded; stacking both multiplies waits
                timeout=self.settings.timeout_seconds,
                # The proxy rule of digest_core.proxy, not httpx2's own reading of the
                # variables; otherwise the SDK's client defaults. Limits go to the transport
                # (a client's do not reach an explicit one); max_concurrency is far below.
                http_client=openai.DefaultAsyncHttpx2Client(
                    transport=RoutedHttpx2Transport(limits=httpx2.Limits(max_connections=20))
                ),
            )
        return self._client


_openai_loaded = False


async def _load_openai() -> None:
    """Import openai in a worker thread, once: the loop goes on serving meanwhile. A second
    caller during the first import waits on Python's import lock for the whole module."""
    global _openai_loaded
    if not _openai_loaded:
        await asyncio.to_thread(importlib.import_module, "openai")
        _openai_loaded = True


# -- reading a completion ------------------------------------------------------------------------


class _Shown:
    """Passes the visible part of a growing streamed text to `on_delta`, piece by piece.

    A reasoning model's `<think>…</think>` preamble is held back (the finished answer drops it
    too); a callback that fails is logged once and not called again: showing the text early
    is a courtesy, the answer itself still comes back."""

    def __init__(self, on_delta: Callable[[str], Awaitable[None]] | None) -> None:
        self.on_delta = on_delta
        self.sent = 0  # characters of the visible text passed on so far
        self.any = False

    async def update(self, raw: str) -> None:
        if self.on_delta is None:
            return
        visible = _visible_while_streaming(raw)
        if len(visible) <= self.sent:
            return
        piece, self.sent = visible[self.sent :], len(visible)
        self.any = True
        try:
            await self.on_delta(piece)
        except Exception as exc:
            log.warning("showing a streamed answer failed: %s", type(exc).__name__)
            self.on_delta = None


def _visible_while_streaming(raw: str) -> str:
    """The part of a partial reply a person may see: none of a `<think>` preamble, and no
    leading whitespace."""
    text = raw.lstrip()
    lowered = text.lower()
    if len(text) < len("<think>") and "<think>".startswith(lowered):
        return ""  # could still become "<think>"
    if lowered.startswith("<think>"):
        end = lowered.find("</think>")
        return "" if end < 0 else text[end + len("</think>") :].lstrip()
    return text


def _message(completion: Any) -> tuple[Any, str | None]:
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list):  # e.g. a proxy's HTML page served with status 200
        raise _Failure("server", "LLM returned an unreadable response", retry=True)
    if not choices:
        raise _Failure("blank", "LLM returned no choices", retry=True)
    choice = choices[0]
    message = getattr(choice, "message", None)
    if getattr(message, "refusal", None):
        raise _Failure("refusal", "LLM refused")
    if choice.finish_reason == "content_filter":
        raise _Failure("refusal", "LLM output blocked by its content filter")
    return message, choice.finish_reason


def _text_content(completion: Any) -> str:
    message, _ = _message(completion)
    text = _strip_thinking(getattr(message, "content", None) or "").strip()
    if not text:
        raise _Failure("blank", "LLM returned a blank answer", retry=True)
    return text


def _json_content(completion: Any) -> str:
    message, finish_reason = _message(completion)
    # A cut-off reply can still contain a complete inner object, which would parse as the
    # wrong thing, so a length stop is never parsed.
    if finish_reason == "length":
        raise _Failure(
            "truncated",
            "LLM output was truncated (max_tokens reached)",
            retry=True,
            note="Your previous reply was cut off at the length limit. Be more concise.",
        )
    content = getattr(message, "content", None) or ""
    if not content.strip():
        raise _Failure("blank", "LLM returned a blank answer", retry=True)
    return content


def _parse_json(content: str) -> object:
    try:
        return extract_json(content)
    except ValueError:
        raise _Failure(
            "invalid",
            "LLM returned invalid JSON",
            retry=True,
            note="Your previous reply was not valid JSON. Reply with the JSON only.",
        ) from None


def _validated(validate: Callable[[object], T], data: object) -> T:
    try:
        return validate(data)
    except (ValueError, TypeError, KeyError) as exc:
        complaint = " ".join(str(exc).split())[:_NOTE_CHARS] or type(exc).__name__
        failure = _Failure(
            "invalid",
            "LLM returned JSON that failed validation",
            retry=True,
            note=f"Your previous reply was rejected: {complaint}. Reply with corrected JSON only.",
        )
        failure.validation = True
        raise failure from None


def extract_json(text: str) -> object:
    """The JSON value in a model's reply, tolerating what models wrap around it.

    Drops `<think>…</think>`, unwraps a ```json fence, and otherwise takes the longest value
    that starts at the first `{` or `[` (so a stray "[1]" in prose loses to the real object).
    Raises ValueError when there is none.
    """
    text = _strip_thinking(text).strip()
    fence = _FENCE.search(text)
    if fence:
        text = fence.group(1).strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    best: tuple[int, object] | None = None
    for opener in "{[":
        start = text.find(opener)
        if start < 0:
            continue
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if best is None or end - start > best[0]:
            best = (end - start, value)
    if best is None:
        raise ValueError("no JSON object or array found")
    return best[1]


def _strip_thinking(text: str) -> str:
    text = _THINK_BLOCK.sub("", text)
    # Some servers drop the opening tag of a reasoning model's preamble.
    closing = text.lower().rfind("</think>")
    return text[closing + len("</think>") :] if closing >= 0 else text


def _schema_instruction(schema: dict[str, Any]) -> str:
    return (
        "Reply with a single JSON value, and nothing else, that matches this JSON Schema:\n"
        + json.dumps(schema, ensure_ascii=False)
    )


def _safe_code(value: object) -> str | None:
    """An error code worth naming in a message: a short identifier, nothing free-form."""
    if isinstance(value, str) and _SAFE_CODE.fullmatch(value):
        return value
    return None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Failure) and exc.retry
