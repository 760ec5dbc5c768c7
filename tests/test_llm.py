"""LLMClient against a fake OpenAI-compatible server, with the real openai client over HTTP.

Faults are injected at the fake; assertions are on what the server received (how many
requests, which response_format) and on what callers get back (data, LLMError.kind, LLMCall).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fakes.llm import FakeLLM, mask_key

from digest_core.config import LLMSettings, Secret
from digest_core.llm import LLMCall, LLMClient, LLMError, extract_json

KEY = "sk-test-SECRET-1234567890abcdef"
FIXTURES = Path(__file__).parent / "fixtures" / "openai"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "reason": {"type": "string"}},
    "required": ["score", "reason"],
    "additionalProperties": False,
}
GOOD = '{"score": 72, "reason": "close to the profile"}'


def check_score(data: object) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("score"), int):
        raise ValueError("expected an object with an integer 'score'")
    if not 0 <= data["score"] <= 100:
        raise ValueError(f"score {data['score']} is outside 0-100")
    return data


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    server = FakeLLM(responder=lambda request: GOOD)
    await server.start()
    yield server
    await server.stop()


class Harness:
    """Builds clients against a base URL and keeps what they record."""

    def __init__(self) -> None:
        self.calls: list[LLMCall] = []
        self.sleeps: list[float] = []
        self.clients: list[LLMClient] = []

    def client(self, base: str, *, real_sleep: bool = True, **overrides: Any) -> LLMClient:
        values: dict[str, Any] = {"timeout_seconds": 5.0, "max_retries": 2, "max_concurrency": 4}
        values.update(overrides)
        settings = LLMSettings(
            api_key=Secret(KEY), base_url=f"{base}/v1", model="gpt-test", **values
        )

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            if real_sleep:
                await asyncio.sleep(seconds)

        client = LLMClient(settings, on_call=self.calls.append, backoff_base=0.01, sleep=sleep)
        self.clients.append(client)
        return client


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    yield h
    for client in h.clients:
        await client.aclose()


async def ask(client: LLMClient, validate: Callable[[object], Any] | None = check_score) -> Any:
    data, _ = await client.json(
        system="You score papers.",
        user="Paper: a diffusion model for 3D scenes.",
        schema=SCHEMA,
        schema_name="paper_score",
        purpose="score",
        prompt_version="score-v1",
        max_tokens=200,
        validate=validate,
    )
    return data


async def failure(client: LLMClient) -> LLMError:
    with pytest.raises(LLMError) as info:
        await ask(client)
    return info.value


def formats(fake: FakeLLM) -> list[str | None]:
    return [(c.get("response_format") or {}).get("type") for c in fake.calls]


# -- structured output ladder --------------------------------------------------------------------


async def test_json_schema_happy_path(fake: FakeLLM, harness: Harness) -> None:
    client = harness.client(fake.url)
    data, result = await client.json(
        system="You score papers.",
        user="Paper: X",
        schema=SCHEMA,
        schema_name="paper_score",
        purpose="score",
        prompt_version="score-v1",
        max_tokens=200,
        validate=check_score,
    )
    assert data == {"score": 72, "reason": "close to the profile"}
    assert result.mode == "json_schema" and result.data == data
    assert result.model == fake.model and result.tokens > 0
    [request] = fake.calls
    assert request["model"] == "gpt-test"
    assert request["max_tokens"] == 200
    assert request["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "paper_score", "schema": SCHEMA, "strict": True},
    }
    assert [m["role"] for m in request["messages"]] == ["system", "user"]


async def test_falls_back_to_json_object_and_remembers(fake: FakeLLM, harness: Harness) -> None:
    fake.supports_json_schema = False
    client = harness.client(fake.url)
    assert await ask(client) == json.loads(GOOD)
    assert formats(fake) == ["json_schema", "json_object"]
    system = fake.calls[1]["messages"][0]["content"]
    assert "JSON" in system and '"score"' in system  # the schema travels in the prompt
    assert client.mode == "json_object"

    await ask(client)
    assert formats(fake) == ["json_schema", "json_object", "json_object"]
    # A rejected response_format is a different request, not a retry: one call, two attempts.
    assert [c.attempts for c in harness.calls] == [2, 1]
    assert [c.mode for c in harness.calls] == ["json_object", "json_object"]


async def test_prompt_only_when_no_response_format_works(fake: FakeLLM, harness: Harness) -> None:
    fake.supports_json_schema = False
    fake.supports_json_object = False
    client = harness.client(fake.url)
    assert await ask(client) == json.loads(GOOD)
    await ask(client)
    assert formats(fake) == ["json_schema", "json_object", None, None]
    assert "JSON Schema" in fake.calls[-1]["messages"][0]["content"]
    assert harness.calls[-1].mode == "prompt"


async def test_configured_mode_is_the_starting_rung(fake: FakeLLM, harness: Harness) -> None:
    client = harness.client(fake.url, structured_output="json_object")
    await ask(client)
    assert formats(fake) == ["json_object"]


async def test_one_shot_json_schema_rejection(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("reject_json_schema")
    client = harness.client(fake.url)
    await ask(client)
    assert formats(fake) == ["json_schema", "json_object"]


@pytest.mark.parametrize(
    "content",
    [
        f"```json\n{GOOD}\n```",
        f"Sure! Here is the JSON:\n```\n{GOOD}\n```\nAnything else?",
        f"<think>The paper is about {{3D}} scenes [maybe].</think>\n{GOOD}",
        f"reasoning without an opening tag</think>{GOOD}",
        f"Here are [2] thoughts. {GOOD} Hope that helps {{:)}}",
    ],
)
async def test_wrapped_json_is_extracted(fake: FakeLLM, harness: Harness, content: str) -> None:
    fake.responder = lambda request: content
    assert await ask(harness.client(fake.url)) == json.loads(GOOD)
    assert len(fake.calls) == 1


async def test_fenced_fault(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("fenced")
    assert await ask(harness.client(fake.url)) == json.loads(GOOD)
    assert len(fake.calls) == 1


def test_extract_json_rejects_prose() -> None:
    with pytest.raises(ValueError):
        extract_json("I could not find any papers today.")
    assert extract_json('[{"id": "2401.00001"}]') == [{"id": "2401.00001"}]


# -- bad output ------------------------------------------------------------------------------------


async def test_truncated_json_is_retried(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("truncated")
    assert await ask(harness.client(fake.url)) == json.loads(GOOD)
    assert len(fake.calls) == 2
    assert "cut off" in fake.calls[1]["messages"][1]["content"]


async def test_truncated_every_time(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("truncated", times=10)
    error = await failure(harness.client(fake.url, max_retries=1))
    assert error.kind == "truncated" and len(fake.calls) == 2


async def test_blank_is_retried(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("blank", content="   ")
    assert await ask(harness.client(fake.url)) == json.loads(GOOD)
    assert len(fake.calls) == 2


async def test_refusal_is_not_retried(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("refusal")
    error = await failure(harness.client(fake.url))
    assert error.kind == "refusal" and str(error) == "LLM refused"
    assert len(fake.calls) == 1
    assert harness.calls[0].outcome == "error:refusal"


async def test_invalid_json_exhausts_retries(fake: FakeLLM, harness: Harness) -> None:
    fake.responder = lambda request: "I think this paper scores about seventy."
    error = await failure(harness.client(fake.url, max_retries=2))
    assert error.kind == "invalid" and str(error) == "LLM returned invalid JSON after 3 attempts"
    assert len(fake.calls) == 3


async def test_validation_error_retried_once_with_note(fake: FakeLLM, harness: Harness) -> None:
    replies = iter(['{"score": 150, "reason": "x"}', GOOD])
    fake.responder = lambda request: next(replies)
    assert await ask(harness.client(fake.url)) == json.loads(GOOD)
    assert len(fake.calls) == 2
    assert "score 150 is outside 0-100" in fake.calls[1]["messages"][1]["content"]


async def test_validation_error_only_once(fake: FakeLLM, harness: Harness) -> None:
    fake.responder = lambda request: '{"score": 150, "reason": "x"}'
    error = await failure(harness.client(fake.url, max_retries=5))
    assert error.kind == "invalid" and len(fake.calls) == 2


# -- HTTP faults ---------------------------------------------------------------------------------


async def test_429_honours_retry_after(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("429", retry_after=1)
    client = harness.client(fake.url, real_sleep=False)
    assert await ask(client) == json.loads(GOOD)
    assert len(fake.calls) == 2 and harness.sleeps == [1.0]
    assert harness.calls[0].attempts == 2 and harness.calls[0].outcome == "ok"


async def test_429_retry_after_ms_wins(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("429", retry_after=2, retry_after_ms=250)
    await ask(harness.client(fake.url, real_sleep=False))
    assert harness.sleeps == [0.25]


async def test_429_long_retry_after_fails_fast(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("429", retry_after=3600)
    error = await failure(harness.client(fake.url, real_sleep=False))
    assert error.kind == "rate_limit" and "3600" in str(error)
    assert len(fake.calls) == 1 and harness.sleeps == []


async def test_429_always(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("429", times=10)
    error = await failure(harness.client(fake.url))
    assert error.kind == "rate_limit" and str(error) == "LLM rate-limited (429) after 3 attempts"
    assert len(fake.calls) == 3 and len(harness.sleeps) == 2


async def test_429_insufficient_quota_is_not_retried(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("429", code="insufficient_quota", retry_after=1)
    error = await failure(harness.client(fake.url))
    assert error.kind == "quota" and len(fake.calls) == 1
    assert "billing" not in str(error)


async def test_500_twice_then_success(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("500", times=2)
    assert await ask(harness.client(fake.url)) == json.loads(GOOD)
    assert len(fake.calls) == 3
    assert harness.calls[0].attempts == 3 and harness.calls[0].outcome == "ok"


async def test_server_errors_exhaust_retries(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("500")
    fake.fail_next("502_html", times=10)
    error = await failure(harness.client(fake.url, max_retries=2))
    assert error.kind == "server" and error.attempts == 3
    assert str(error) == "LLM server error (502) after 3 attempts"  # no HTML, no body
    assert len(fake.calls) == 3
    assert harness.calls[0].outcome == "error:server"


async def test_html_page_with_status_200(fake: FakeLLM, harness: Harness) -> None:
    fake.responder = lambda request: {
        "status": 200,
        "text": "<html><body>Sign in to the proxy</body></html>",
        "headers": {"Content-Type": "text/html"},
    }
    error = await failure(harness.client(fake.url, max_retries=1))
    assert error.kind == "server" and "<" not in str(error) and len(fake.calls) == 2


async def test_context_length_is_not_retried(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("context_length")
    error = await failure(harness.client(fake.url))
    assert error.kind == "bad_request" and "too long" in str(error)
    assert len(fake.calls) == 1


async def test_hang_ends_within_the_deadline(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("hang", times=5)
    client = harness.client(fake.url, timeout_seconds=0.3, max_retries=1)
    error = await failure(client)
    # The fake answers a hung request only after 60 s, and then with a 504: a "timeout" naming
    # the 0.3 s deadline means the client gave up itself. bench/digest.py times it.
    assert error.kind == "timeout" and "0.3 s" in str(error)
    assert len(fake.calls) == 2 and fake.answered == 0


async def test_connection_refused(harness: Harness) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = await failure(harness.client(f"http://127.0.0.1:{port}", max_retries=1))
    assert error.kind == "connection" and error.attempts == 2
    assert harness.calls[0].outcome == "error:connection"


async def test_max_tokens_switches_to_max_completion_tokens(
    fake: FakeLLM, harness: Harness
) -> None:
    fake.accepts_max_tokens = False
    client = harness.client(fake.url)
    await ask(client)
    await ask(client)
    assert ["max_tokens" in c for c in fake.calls] == [True, False, False]
    assert [c.get("max_completion_tokens") for c in fake.calls] == [None, 200, 200]


# -- secrets -------------------------------------------------------------------------------------


async def test_401_never_leaks_the_key(
    fake: FakeLLM, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.fail_next("401")
    error = await failure(harness.client(fake.url))
    assert error.kind == "auth" and str(error) == "LLM authentication failed (401)"
    assert len(fake.calls) == 1
    masked = mask_key(KEY)
    texts = [str(error), repr(error), *(repr(c) for c in harness.calls), caplog.text]
    for text in texts:
        for secret in (KEY, masked, "sk-", KEY[-8:], masked[-4:]):
            assert secret not in text
    chained = error.__context__
    while chained is not None:
        assert "sk-" not in str(chained) and masked not in repr(chained.args)
        chained = chained.__context__


def test_requires_a_key() -> None:
    settings = LLMSettings(api_key=None, base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(ValueError):
        LLMClient(settings)


# -- records and concurrency ---------------------------------------------------------------------


async def test_one_llm_call_per_call(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("500")
    client = harness.client(fake.url)
    await ask(client)
    fake.fail_next("refusal")
    with pytest.raises(LLMError):
        await ask(client)
    ok, refused = harness.calls
    assert (ok.purpose, ok.prompt_version, ok.model, ok.mode) == (
        "score",
        "score-v1",
        "gpt-test",
        "json_schema",
    )
    assert ok.outcome == "ok" and ok.attempts == 2
    assert ok.prompt_tokens > 0 and ok.completion_tokens == len(GOOD) // 4
    assert ok.latency_s >= 0
    assert datetime.fromisoformat(ok.started_at).utcoffset().total_seconds() == 0
    assert refused.outcome == "error:refusal" and refused.attempts == 1


async def test_tokens_summed_over_attempts(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("blank", content="")
    _, result = await harness.client(fake.url).json(
        system="s",
        user="u" * 400,
        schema=SCHEMA,
        schema_name="paper_score",
        purpose="score",
        prompt_version="v",
        max_tokens=50,
    )
    [call] = harness.calls
    assert call.prompt_tokens == result.prompt_tokens
    assert call.prompt_tokens >= 2 * 100  # both attempts were billed


async def test_semaphore_caps_requests_in_flight(fake: FakeLLM, harness: Harness) -> None:
    fake.latency = 0.15
    client = harness.client(fake.url, max_concurrency=2)
    results = await asyncio.gather(*(ask(client) for _ in range(6)))
    assert len(results) == 6 and len(fake.calls) == 6
    assert fake.max_in_flight == 2


# -- plain text ----------------------------------------------------------------------------------


async def test_text_with_thread_history(fake: FakeLLM, harness: Harness) -> None:
    fake.responder = lambda request: "<think>hmm</think>It uses a diffusion prior."
    history = [
        {"role": "user", "content": "What is the paper about?"},
        {"role": "assistant", "content": "3D scene generation."},
    ]
    result = await harness.client(fake.url).text(
        system="Answer about the paper.",
        messages=history,
        user="How does it work?",
        purpose="answer",
        prompt_version="qa-v1",
        max_tokens=300,
    )
    assert result.content == "It uses a diffusion prior." and result.mode == "text"
    [request] = fake.calls
    assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user"]
    assert "response_format" not in request
    assert harness.calls[0].mode == "text"


async def text(client: LLMClient) -> str:
    result = await client.text(
        system="s", user="q", purpose="answer", prompt_version="qa-v1", max_tokens=50
    )
    return result.content


async def test_text_blank_retried_and_length_accepted(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("blank")
    fake.responder = lambda request: {"content": "A partial answ", "finish_reason": "length"}
    assert await text(harness.client(fake.url)) == "A partial answ"
    assert len(fake.calls) == 2


async def test_text_refusal(fake: FakeLLM, harness: Harness) -> None:
    fake.fail_next("refusal")
    with pytest.raises(LLMError) as info:
        await text(harness.client(fake.url))
    assert info.value.kind == "refusal" and len(fake.calls) == 1


# -- recorded payloads ---------------------------------------------------------------------------


def test_fake_reply_has_the_recorded_shape() -> None:
    recorded = fixture("chat_completion_plain_text.json")
    made = FakeLLM()._completion(
        {"messages": [{"role": "user", "content": "hi"}]}, {"content": "x"}
    )
    assert made.keys() == recorded.keys()
    assert made["choices"][0].keys() == recorded["choices"][0].keys()
    assert made["choices"][0]["message"].keys() == recorded["choices"][0]["message"].keys()
    # The recording (Sept. 2024) predates prompt caching; OpenAI's usage has carried
    # prompt_tokens_details.cached_tokens since Oct. 2024, and the fake reports it.
    assert made["usage"].keys() - {"prompt_tokens_details"} == recorded["usage"].keys()
    assert made["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # a first request


async def test_recorded_structured_output(fake: FakeLLM, harness: Harness) -> None:
    fake.responder = lambda request: {
        "raw": fixture("chat_completion_structured_output_json_schema.json")
    }
    data, result = await harness.client(fake.url).json(
        system="s",
        user="u",
        schema={"type": "object"},
        schema_name="Location",
        purpose="test",
        prompt_version="v",
        max_tokens=50,
    )
    assert data == {"city": "San Francisco", "temperature": 65, "units": "f"}
    assert (result.model, result.prompt_tokens, result.completion_tokens) == (
        "gpt-4o-2024-08-06",
        79,
        14,
    )


@pytest.mark.parametrize(
    ("name", "kind", "requests"),
    [
        ("chat_completion_structured_output_refusal.json", "refusal", 1),
        ("chat_completion_finish_reason_length_truncated.json", "truncated", 2),
    ],
)
async def test_recorded_failures(
    fake: FakeLLM, harness: Harness, name: str, kind: str, requests: int
) -> None:
    fake.responder = lambda request: {"raw": fixture(name)}
    error = await failure(harness.client(fake.url, max_retries=1))
    assert error.kind == kind and len(fake.calls) == requests
